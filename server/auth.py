"""Who may call: the server's TLS identity, client certificates (mutual TLS) and bearer tokens.

Every secret comes from a file and is read again when the file changes (a Kubernetes Secret or
cert-manager rotating it, a person editing it), so rotating one never needs a restart:

- ``TlsFiles``: the certificate chain, its key and optionally the CA that client certificates must chain
  to. gRPC asks for them at every new connection; they are loaded again only when a file's size, time or
  inode changed, and a half-written or mismatched pair (the key not yet matching the certificate) is
  ignored, with a warning, until it is whole: connections keep the last good identity.
- ``TokenFile``: one token per line, optionally after the caller's name (``web-frontend 3f9a...``; ``#``
  comments, blank lines ignored). Several lines let tokens be rotated (add the new one, move the
  clients, remove the old) or given one per calling service, whose name the logs and the queue's turns
  then use. ``NAME TOKEN front`` marks a front end that serves many people (adain-web, an API gateway): its
  calls may name their end user (``x-adain-end-user``), and each end user is then a caller of their own,
  ``NAME/USER``, with their own turn and queue share; other callers' end-user metadata is ignored. A file
  that becomes empty or unreadable keeps the last good tokens (a failed write must neither lock every
  client out nor let everyone in); to revoke a token, write the file without it.
- ``TokenAuth``: the interceptor that answers UNAUTHENTICATED to a call without a listed
  ``authorization: Bearer <token>``. gRPC health stays open: kubelet probes and load balancers send no token.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from adain.wire import AUTH_KEY, END_USER_KEY, PEM_CERTIFICATE_RE, REQUEST_ID_KEY, SERVED_BY_KEY, TOKEN_RE

from .errors import request_id, trace_id
from .logs import log_fields

log = logging.getLogger("adain.server")

MIN_TOKEN_CHARS = 16  # a guessable token is no protection
FRONT = "front"  # the third word of a token line: this caller speaks for many end users
MAX_END_USER_CHARS = 128
NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
RECHECK_S = 1.0  # a token file is looked at no more often than this


def _signature(paths: Sequence[str]) -> tuple[tuple[int, int, int], ...] | None:
    """What changes when a file is replaced or rewritten (None: one is missing)."""
    try:
        return tuple((s.st_mtime_ns, s.st_size, s.st_ino) for s in (os.stat(p) for p in paths))
    except OSError:
        return None


class TlsFiles:
    """The server's certificate, key and client CA, as gRPC server credentials that follow the files."""

    def __init__(self, cert: str, key: str, client_ca: str | None = None) -> None:
        self.paths = [cert, key] + ([client_ca] if client_ca else [])
        self.require_client_auth = client_ca is not None
        self._lock = threading.Lock()
        self._seen = _signature(self.paths)
        self.config = self._load()  # at start a bad file is an error (OSError / ValueError), not a warning

    def _load(self) -> Any:
        cert, key = self.paths[0], self.paths[1]
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)  # the key fits the chain
        except ssl.SSLError as e:
            raise ValueError(f"{cert} and {key} are not a certificate chain and its private key: {e}") from None
        _check_dates(cert)
        client_ca = None
        if self.require_client_auth:
            client_ca = Path(self.paths[2]).read_bytes()
            if b"-----BEGIN CERTIFICATE-----" not in client_ca:
                raise ValueError(f"{self.paths[2]} holds no PEM certificate")
            _check_ca_dates(self.paths[2], client_ca)
        return grpc.ssl_server_certificate_configuration(
            [(Path(key).read_bytes(), Path(cert).read_bytes())], root_certificates=client_ca
        )

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self.config, self._fetch, require_client_authentication=self.require_client_auth
        )

    def _fetch(self) -> Any:
        """Called by gRPC at each new connection: a new configuration when the files changed, else None."""
        try:
            with self._lock:
                now = _signature(self.paths)
                if now is None or now == self._seen:
                    return None
                self._seen = now  # a bad version is reported once, and tried again when the files change
                try:
                    self.config = self._load()
                except (OSError, ValueError) as e:
                    log.warning("TLS files changed but cannot be used yet (keeping the last good ones): %s", e)
                    return None
                log.info("TLS files reloaded (%s)", ", ".join(self.paths))
                return self.config
        except Exception:  # never let an exception reach gRPC's handshake
            log.exception("TLS reload failed")
            return None


EXPIRY_WARNING_S = 14 * 86400  # a certificate this close to its end is warned of as it is loaded
# The near ends warned of, (file, the certificate's end): the start reads the files twice (before the model loads,
# and as it listens), and the warning came twice.
_warned_expiry: set[tuple[str, str]] = set()


def _decoded(cert: str) -> dict | None:
    """A PEM file's first certificate as CPython's own decoder reads it (no cryptography package); None where that
    decoder is missing or the file is not one (read by load_cert_chain already: left to gRPC)."""
    decode = getattr(getattr(ssl, "_ssl", None), "_test_decode_cert", None)
    try:
        return decode(cert) if decode is not None else None
    except (ssl.SSLError, OSError, ValueError):
        return None


def _check_dates(cert: str, what: str = "the certificate", shown: str | None = None,
                 info: dict | None = None) -> None:
    """ValueError for a certificate outside its validity dates: an expired one was served (SERVING, the plaintext
    health probe said so) while every client refused the handshake, and a rotation to one replaced the last good
    ones. A warning for one that ends within two weeks. Where it cannot be decoded, nothing is checked. ``shown``:
    the file named in messages, where ``cert`` is a copy; ``info``: ``cert`` decoded already."""
    info = info or _decoded(cert)
    try:
        not_before, not_after = (ssl.cert_time_to_seconds(info[k]) for k in ("notBefore", "notAfter"))
    except (TypeError, KeyError, ValueError):  # not decoded, or no dates
        return
    now, shown = time.time(), shown or cert
    if now > not_after:
        raise ValueError(f"{shown}: {what} expired on {info['notAfter']}; clients refuse it")
    if now < not_before:
        raise ValueError(f"{shown}: {what} is not valid before {info['notBefore']}; clients refuse it")
    if not_after - now < EXPIRY_WARNING_S and (shown, info["notAfter"]) not in _warned_expiry:
        _warned_expiry.add((shown, info["notAfter"]))
        log.warning("%s: %s expires on %s, in %.1f days", shown, what, info["notAfter"], (not_after - now) / 86400)


def _check_ca_dates(path: str, pem: bytes) -> None:
    """Each certificate of the client CA file within its dates: an expired CA was taken (SERVING) and every mTLS
    client then failed the handshake. CPython's decoder reads a file's first certificate: each is copied alone."""
    import tempfile

    blocks = PEM_CERTIFICATE_RE.findall(pem)
    with tempfile.TemporaryDirectory(prefix="adain-ca-") as folder:
        for n, block in enumerate(blocks, 1):
            one = Path(folder) / f"{n}.pem"
            one.write_bytes(block + b"\n")
            info = _decoded(str(one))
            what = "the client CA certificate" + (f" ({_subject(info)}, {n} of {len(blocks)})" if len(blocks) > 1
                                                  else "")
            _check_dates(str(one), what, shown=f"--tls-client-ca {path}", info=info)


def _subject(info: dict | None) -> str:
    """A certificate's common name, to tell which of a CA file's it is (its place in the file where it has none)."""
    subject = (info or {}).get("subject", ())
    return next((f"CN={v}" for rdn in subject for k, v in rdn if k == "commonName"), "no common name")


def read_tokens(path: str) -> list[tuple[str, str, bool]]:
    """The (name, token, front) triples of a token file (name "" where a line has none; front: the line ends
    with "front"); ValueError when it has none, or a line is not ``[NAME] TOKEN`` or ``NAME TOKEN front``
    with a token of at least MIN_TOKEN_CHARS, a token is on two lines or the file is not UTF-8."""
    tokens = []
    lines: dict[str, int] = {}  # token -> the line it is on
    try:
        text = Path(path).read_text(encoding="utf-8-sig")  # (a BOM: Notepad writes one)
    except UnicodeDecodeError as e:  # (was "'utf-8' codec can't decode byte 0xff in position 1", no file named)
        line = e.object[: e.start].count(b"\n") + 1
        raise ValueError(f"{path} line {line}: not UTF-8 text (byte 0x{e.object[e.start]:02x}); a token file is "
                         "text, one [NAME] TOKEN a line") from None
    for n, line in enumerate(text.splitlines(), 1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        front = len(words) == 3 and words[2] == FRONT
        if front:
            words = words[:2]
        name, token = ("", words[0]) if len(words) == 1 else (words[0], words[-1])
        if (len(words) > 2 or len(token) < MIN_TOKEN_CHARS or not TOKEN_RE.fullmatch(token)  # (none could send it)
                or not NAME_RE.fullmatch(name or "x")):
            raise ValueError(
                f"{path} line {n}: expected [NAME] TOKEN or NAME TOKEN front (a name of ASCII letters, digits, '.', "
                f"'_', '-'; a token of at least {MIN_TOKEN_CHARS} printable ASCII characters)"
            )
        if token in lines:  # one token, two callers: its calls were the last line's without a word
            raise ValueError(f"{path} lines {lines[token]} and {n}: the same token twice (a token names one caller)")
        lines[token] = n
        tokens.append((name, token, front))
    if not tokens:
        raise ValueError(f"{path} holds no token")
    return tokens


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _anonymous(digest: bytes) -> str:
    """A stable name for a token that has none: not the token, only 32 bits of its digest."""
    return "token-" + digest[:4].hex()


class TokenFile:
    """The accepted tokens, from a file read again when it changes (kept as digests, with their names)."""

    def __init__(self, path: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._clock = clock
        self._seen = _signature([path])
        self._digests = self._load()  # at start a bad file is an error
        self._checked = clock()
        self._lock = threading.Lock()

    def _load(self) -> list[tuple[bytes, str, bool]]:
        return [(d := _digest(token), name or _anonymous(d), front) for name, token, front in read_tokens(self.path)]

    def __len__(self) -> int:
        return len(self._digests)

    def _refresh(self) -> None:
        now = self._clock()
        if now - self._checked < RECHECK_S:
            return
        with self._lock:
            self._checked = now
            sig = _signature([self.path])
            if sig == self._seen:
                return
            self._seen = sig
            try:
                self._digests = self._load()
            except (OSError, ValueError, UnicodeDecodeError) as e:
                log.warning("token file changed but cannot be used (keeping the last good tokens): %s", e)
                return
            log.info("token file reloaded: %d token(s)", len(self._digests))

    def lookup(self, token: str | None) -> tuple[str, bool] | None:
        """(name, front) of a listed token; None: not listed."""
        self._refresh()
        if not token:
            return None
        digest = _digest(token)
        found = None
        for known, name, front in self._digests:  # no early exit: the time taken says nothing about which matched
            if hmac.compare_digest(digest, known):
                found = (name, front)
        return found

    def caller(self, token: str | None) -> str | None:
        """The name of a listed token (None: not listed)."""
        found = self.lookup(token)
        return found[0] if found else None

    def allows(self, token: str | None) -> bool:
        return self.lookup(token) is not None


def bearer_token(metadata: Sequence[tuple[str, Any]] | None) -> str | None:
    """The token of an ``authorization: Bearer <token>`` entry, if any."""
    for key, value in metadata or ():
        if key == AUTH_KEY and isinstance(value, str):
            scheme, _, token = value.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def end_user(metadata: Sequence[tuple[str, Any]] | None) -> str | None:
    """The ``x-adain-end-user`` a front end names (printable ASCII, at most MAX_END_USER_CHARS; else None)."""
    for key, value in metadata or ():
        if key == END_USER_KEY and isinstance(value, str):
            value = value.strip()
            if value and len(value) <= MAX_END_USER_CHARS and value.isascii() and value.isprintable():
                return value
    return None


def caller_of(context: grpc.aio.ServicerContext, tokens: TokenFile | None) -> str:
    """Who calls, for the queue's turns and the logs: the name of the caller's token where the server
    checks tokens, else the peer's address (an unchecked token would let one caller pose as many)."""
    if tokens is not None:
        metadata = context.invocation_metadata()
        found = tokens.lookup(bearer_token(metadata))
        if found is not None:
            name, front = found
            user = end_user(metadata) if front else None
            return f"{name}/{user}" if user else name
    peer = context.peer() or "unknown"
    return peer.rsplit(":", 1)[0] if peer.startswith(("ipv4:", "ipv6:")) else peer


class TokenAuth(grpc.aio.ServerInterceptor):
    """UNAUTHENTICATED for a call without a listed bearer token (health excepted). ``on_denied(method)``
    counts it; the log line names the method, the peer and whether a token came, never the token."""

    def __init__(self, tokens: TokenFile, on_denied: Callable[[str], None] = lambda method: None,
                 replica: Callable[[], str] = lambda: "") -> None:
        self.tokens = tokens
        self.on_denied = on_denied
        self.replica = replica  # this replica's name (known once the port is bound), as every reply says it

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Any], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_PREFIXES):
            return handler
        metadata = details.invocation_metadata
        token = bearer_token(metadata)
        if self.tokens.allows(token):
            return handler
        return _denial(handler, details.method, metadata, token is not None, self.on_denied, self.replica())


def _denial(handler: Any, method: str, metadata: Any, had_token: bool, on_denied: Callable[[str], None],
            replica: str) -> Any:
    """A handler of the same kind as ``handler`` that ends the call with UNAUTHENTICATED, naming the replica as
    every reply does (which one has a stale token file is what an operator asks)."""
    name = method.rsplit("/", 1)[-1]
    message = "the token is not valid" if had_token else "this server needs an 'authorization: Bearer <token>'"
    if not had_token and any(key == AUTH_KEY for key, _ in metadata or ()):  # sent, in another form
        message = "the authorization entry must read 'Bearer <token>' (the word Bearer, a space, the token)"

    rid = request_id(metadata)

    async def deny(context: grpc.aio.ServicerContext) -> None:
        on_denied(name)
        # the fields of every call's line (the caller: its address, as no token names it), and what came
        log_fields(log, logging.WARNING, request_id=rid, method=name, code="UNAUTHENTICATED", ms=0.0,
                   caller=caller_of(context, None), trace_id=trace_id(metadata), detail=message,
                   token="wrong" if had_token else "none")
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message,
                            trailing_metadata=((REQUEST_ID_KEY, rid), (SERVED_BY_KEY, replica)))

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> None:
        await deny(context)

    async def streaming(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await deny(context)
        yield  # an async generator, as a streaming handler must be

    kind = {(False, False): grpc.unary_unary_rpc_method_handler, (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler, (True, True): grpc.stream_stream_rpc_method_handler}
    make = kind[(handler.request_streaming, handler.response_streaming)]
    return make(
        streaming if handler.response_streaming else unary,
        request_deserializer=None,  # the bytes, never parsed: a refused caller's 32 MB request cost 1.2 GB parsed
        response_serializer=handler.response_serializer,
    )

"""An outside tester's abuse of the server, each on the real server: streams that never send their message, more
calls than the server can hold, idle connections, forged log fields and one caller's registrations evicting
everyone else's styles."""

from __future__ import annotations

import shlex
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from adain.client import StyleTransferClient
from adain.v1 import style_transfer_pb2 as pb
from adain.v1 import style_transfer_pb2_grpc as pb_grpc
from helpers import NO_REFINE, ServerProcess, free_port, health_status
from synth import make_image

ALICE, BOB, WEB = "alice-token-0123456789", "bob-token-9876543210ab", "web-token-0123456789abcd"
CONTENT = make_image(48, 32, seed=71)
STYLE = make_image(32, 32, seed=72, kind="noise")
TIMEOUT_S = 1.5  # --message-timeout-s
SERVICE = "/adain.v1.StyleTransfer/"
# what the tester's idle connections sent: the HTTP/2 client preface and an empty SETTINGS frame
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


@pytest.fixture(scope="module")
def srv(decoder_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Small limits, so that a test reaches each with a few calls: 3 calls on the server, 2 a caller, 2 streams a
    connection. A batch waits 60 s (the longest allowed) to fill, so a Stylize call stays in flight until its
    test cancels it: at 20 s a loaded machine's test sometimes took longer than that, and the batch went out."""
    tokens = tmp_path_factory.mktemp("abuse") / "tokens"
    tokens.write_text(f"alice {ALICE}\nbob {BOB}\nweb {WEB} front\n")
    server = ServerProcess(decoder_path, *NO_REFINE, "--auth-tokens-file", str(tokens), "--log-level", "INFO",
                           "--health-port", str(free_port()), "--max-concurrent-rpcs", "3", "--max-calls-per-caller",
                           "2", "--max-concurrent-streams", "2", "--max-connection-idle-s", "1",
                           "--message-timeout-s", str(TIMEOUT_S), "--max-batch-size", "8",
                           "--max-batch-delay-ms", "60000",
                           "--style-registry-size", "4")
    try:
        server.wait_serving()
        yield server
    finally:
        server.kill()


def _channel(srv: ServerProcess) -> grpc.Channel:
    """A channel on a connection of its own (channels to one target otherwise share one)."""
    return grpc.insecure_channel(srv.target, options=[("grpc.use_local_subchannel_pool", 1)])


def _auth(token: str, **more: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"), *((k.replace("_", "-"), v) for k, v in more.items()))


def _request(**fields) -> pb.StylizeRequest:
    request = pb.StylizeRequest(content=CONTENT, **fields)
    request.styles.add(image=STYLE)
    return request


def _code(call) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as e:
        return e.code()
    return grpc.StatusCode.OK


def test_calls_beyond_the_limits_are_refused_and_probes_keep_a_port(srv: ServerProcess) -> None:
    """Streams a connection, calls a caller and calls on the server are bounded (the tester held 20,000 on one
    connection: 220 MB): beyond, a caller's own connection makes it wait, the server refuses at once; health
    keeps answering on --health-port."""
    a1, a2, b1 = _channel(srv), _channel(srv), _channel(srv)
    alice, alice2, bob = (pb_grpc.StyleTransferStub(c) for c in (a1, a2, b1))
    held = [alice.Stylize.future(_request(), metadata=_auth(ALICE), timeout=90) for _ in range(2)]
    try:
        srv.wait_queued(2)
        info = pb.GetServerInfoRequest()
        # a third call on alice's connection waits on her side for one of its 2 streams: the server never sees it
        with pytest.raises(grpc.RpcError) as waited:
            alice.GetServerInfo(info, metadata=_auth(ALICE, x_request_id="waited"), timeout=1)
        assert waited.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # on another connection: her 2 calls in flight are her share
        with pytest.raises(grpc.RpcError) as share:
            alice2.GetServerInfo(info, metadata=_auth(ALICE, x_request_id="over-her-share"), timeout=10)
        assert share.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_calls_per_caller=2" in share.value.details(), share.value.details()
        # its request id and replica come back as every reply's (a reviewer's: this refusal had neither)
        trailers = dict(share.value.trailing_metadata())
        assert trailers.get("x-request-id") == "over-her-share" and trailers.get("x-served-by"), trailers
        _hold_third(srv, bob, held)
        # 3 calls on the server: gRPC refuses the next at once, health on the main port too
        with pytest.raises(grpc.RpcError) as full:
            bob.GetServerInfo(info, metadata=_auth(BOB, x_request_id="over-the-cap"), timeout=10)
        assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, full.value.details()
        main_health = health_pb2_grpc.HealthStub(b1).Check
        assert _code(lambda: main_health(health_pb2.HealthCheckRequest(), timeout=10)) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED)
        probe = f"127.0.0.1:{srv.proc.args[srv.proc.args.index('--health-port') + 1]}"
        assert health_status(probe) == health_pb2.HealthCheckResponse.SERVING
    finally:
        for call in held:
            call.cancel()
    end = time.monotonic() + 30  # the cancelled calls' places come back
    while _code(lambda: bob.GetServerInfo(pb.GetServerInfoRequest(), metadata=_auth(BOB), timeout=10)) != (
            grpc.StatusCode.OK):
        assert time.monotonic() < end
        time.sleep(0.1)
    log = srv.wait_logged(lambda log: "request_id=over-the-cap" in log)
    line = next(x for x in log.splitlines() if "request_id=over-the-cap" in x)
    assert "code=RESOURCE_EXHAUSTED" in line and "max_concurrent_rpcs=3" in line, line
    assert "request_id=waited" not in log
    line = next(x for x in log.splitlines() if "request_id=over-her-share" in x)
    assert "code=RESOURCE_EXHAUSTED" in line and "caller=alice" in line, line
    metrics = srv.metrics_text()
    for reason in ("max_concurrent_rpcs", "max_calls_per_caller"):
        assert f'adain_queue_refused_total{{reason="{reason}"}}' in metrics, reason
    for c in (a1, a2, b1):
        c.close()


def _hold_third(srv: ServerProcess, bob: pb_grpc.StyleTransferStub, held: list) -> None:
    """Bob's call, queued as the server's third. gRPC counts a call out of max_concurrent_rpcs as the call's task
    ends on the server, a moment after its status reached the client: sent on the heels of alice's refusal, it
    was now and then refused as a fourth (a loaded machine). Such a refusal is sent again; nothing else is."""
    end = time.monotonic() + 30
    held.append(bob.Stylize.future(_request(), metadata=_auth(BOB), timeout=90))
    while srv.metric("adain_queue_depth") < 3:
        assert time.monotonic() < end, f"bob's call was not queued in 30 s: {held[-1]}"
        if held[-1].done():
            assert held[-1].code() == grpc.StatusCode.RESOURCE_EXHAUSTED, held[-1].exception()
            held.append(bob.Stylize.future(_request(), metadata=_auth(BOB), timeout=90))
        time.sleep(0.05)

def _without_message(srv: ServerProcess, method: str, timeout: float, request_id: str) -> grpc.RpcError:
    """A call that sends its headers and never its message (a request iterator that yields nothing)."""
    release = threading.Event()

    def nothing() -> Iterator[bytes]:
        release.wait(30)
        return
        yield b""

    with _channel(srv) as channel:
        call = channel.stream_unary(SERVICE + method)
        try:
            call(nothing(), metadata=_auth(BOB, x_request_id=request_id), timeout=timeout)
        except grpc.RpcError as e:
            return e
        finally:
            release.set()
    raise AssertionError("answered without a request message")


def test_a_call_whose_message_never_comes_is_ended(srv: ServerProcess) -> None:
    """gRPC waits for a unary call's message as long as its connection lives (and checks no token until then):
    --message-timeout-s ends the call and frees its place; the log says why it ended, a deadline apart."""
    t0 = time.monotonic()
    err = _without_message(srv, "GetServerInfo", 30, "no-message")
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "message_timeout_s" in err.details(), err.details()
    assert TIMEOUT_S <= time.monotonic() - t0 < 15
    err = _without_message(srv, "ListStyles", 0.5, "short-deadline")
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    log = srv.wait_logged(lambda log: "request_id=no-message" in log and "request_id=short-deadline" in log)
    lines = {rid: next(x for x in log.splitlines() if f"request_id={rid} " in x)
             for rid in ("no-message", "short-deadline")}
    assert "outcome=unread" in lines["no-message"] and f"within {TIMEOUT_S:g} s" in lines["no-message"], lines
    # not "over the limit of ... bytes": the client's deadline passed, and the server can tell
    assert "the client's deadline passed" in lines["short-deadline"] and "bytes" not in lines["short-deadline"]


def test_an_idle_connection_is_closed_and_the_client_reconnects(srv: ServerProcess) -> None:
    """--max-connection-idle-s closes a connection with no call (the tester's 21,000 connections that sent the
    HTTP/2 preface alone took every file the server could open); a channel's next call opens a new one."""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=15) as raw:
        raw.sendall(PREFACE)
        end = time.monotonic() + 15
        while raw.recv(4096):  # the server's SETTINGS, then its GOAWAY, then the end
            assert time.monotonic() < end, "the idle connection is still open"
    with grpc.insecure_channel(srv.target) as channel:
        states: list[grpc.ChannelConnectivity] = []
        idle = threading.Event()

        def seen(state: grpc.ChannelConnectivity) -> None:
            states.append(state)
            if state == grpc.ChannelConnectivity.IDLE and grpc.ChannelConnectivity.READY in states:
                idle.set()

        channel.subscribe(seen, try_to_connect=True)
        stub = pb_grpc.StyleTransferStub(channel)
        assert stub.GetServerInfo(pb.GetServerInfoRequest(), metadata=_auth(BOB), timeout=30).device == "cpu"
        assert idle.wait(20), states  # READY, then IDLE once the server closed it
        assert stub.GetServerInfo(pb.GetServerInfoRequest(), metadata=_auth(BOB), timeout=30).device == "cpu"
        channel.unsubscribe(seen)
    # adain's client checks health on its connection (a Watch held open): never idle, and it calls on
    with StyleTransferClient(srv.target, token=BOB, timeout=30) as client:
        assert client.server_info()["device"] == "cpu"
        time.sleep(1.5)  # over --max-connection-idle-s: nothing to wait for, the connection is not idle
        assert client.server_info()["device"] == "cpu"


def test_an_end_user_cannot_forge_log_fields(srv: ServerProcess) -> None:
    """A front end's end user ``a b code=OK`` was logged as ``caller=web/a b code=OK``: a second code field."""
    with _channel(srv) as channel:
        stub = pb_grpc.StyleTransferStub(channel)
        stub.GetServerInfo(pb.GetServerInfoRequest(), metadata=_auth(WEB, x_request_id="forger",
                                                                      x_adain_end_user='a b code=OK "x"'), timeout=30)
    log = srv.wait_logged(lambda log: "request_id=forger" in log)
    line = next(x for x in log.splitlines() if "request_id=forger" in x)
    assert 'caller="web/a b code=OK \\"x\\""' in line, line
    words = shlex.split(line.split("adain.server: ", 1)[1])  # as a logfmt reader splits it
    fields = [word.split("=", 1) for word in words]
    assert [k for k, _ in fields].count("code") == 1 and dict(fields)["caller"] == 'web/a b code=OK "x"', words


def test_one_callers_registrations_evict_its_own(srv: ServerProcess) -> None:
    """A registry of 4: Bob registering 6 styles keeps Alice's one (he evicts his own, oldest first); an image
    is kept once whoever sends it."""

    def register(stub, token: str, seed: int) -> str:
        return stub.RegisterStyle(pb.RegisterStyleRequest(image=make_image(64, 64, seed=seed, kind="noise")),
                                  metadata=_auth(token), timeout=30).style_id

    def known(stub, token: str, style_id: str) -> bool:
        """Whether the registry holds ``style_id``: a request with no content names every problem, an unknown
        style among them, and renders nothing."""
        request = pb.StylizeRequest()
        request.styles.add(style_id=style_id)
        with pytest.raises(grpc.RpcError) as bad:
            stub.Stylize(request, metadata=_auth(token), timeout=30)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        return "unknown style id" not in bad.value.details()

    with _channel(srv) as a, _channel(srv) as b:
        alice, bob = pb_grpc.StyleTransferStub(a), pb_grpc.StyleTransferStub(b)
        mine = register(alice, ALICE, 100)
        his = [register(bob, BOB, 200 + i) for i in range(6)]
        assert known(alice, ALICE, mine)
        assert [known(bob, BOB, key) for key in his] == [False, False, False, True, True, True]
        assert register(bob, BOB, 100) == mine  # content-addressed: one copy, now counted for Bob's use
        info = bob.GetServerInfo(pb.GetServerInfoRequest(), metadata=_auth(BOB), timeout=30)
        assert info.registered_styles == 4


def test_many_channels_from_one_host_are_served(server: ServerProcess) -> None:
    """Each channel of our client holds a health Watch open (client-side health checking): a cap of 64 Watches a
    caller failed the 65th channel of one host (a process pool) with UNAVAILABLE on every call."""
    from adain.client._client import service_config

    options = [("grpc.service_config", service_config(0)), ("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.insecure_channel(server.target, options=options) for _ in range(70)]
    try:
        failed = [i for i, c in enumerate(channels)
                  if _code(lambda c=c: pb_grpc.StyleTransferStub(c).GetServerInfo(pb.GetServerInfoRequest(),
                                                                                   timeout=30)) != grpc.StatusCode.OK]
        assert not failed, failed
    finally:
        for c in channels:
            c.close()


def test_a_cancel_before_the_message_is_logged_as_one(srv: ServerProcess) -> None:
    """gRPC ends a cancelled call's requests a moment before it marks it cancelled: a reviewer's 32 cancels before
    their message were logged, 8 of them, as calls that "ended the request side without one"."""
    with _channel(srv) as channel:
        for i in range(8):
            release = threading.Event()

            def nothing(release: threading.Event = release) -> Iterator[bytes]:
                release.wait(30)
                return
                yield b""

            call = channel.stream_unary(SERVICE + "GetServerInfo").future(
                nothing(), metadata=_auth(ALICE, x_request_id=f"cancelled-{i}"), timeout=30)
            time.sleep(0.2)  # its headers at the server
            call.cancel()
            release.set()
    log = srv.wait_logged(lambda log: all(f"request_id=cancelled-{i}" in log for i in range(8)))
    lines = [x for x in log.splitlines() if "request_id=cancelled-" in x]
    assert not [x for x in lines if "without one" in x], lines

"""A Prometheus registry of its own, served over HTTP on a port of its own: what adain-server's and adain-web's
metrics share (each process may hold several registries, so tests run servers side by side). Needs
prometheus-client (the server and web extras); the model library never imports it."""

from __future__ import annotations

from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server


class Exporter:
    """Subclasses add their metrics to ``registry``; ``serve`` and ``close`` start and stop its endpoint."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._http: WSGIServer | None = None

    def serve(self, host: str, port: int) -> int:
        """Start the exporter on ``port`` (0: any free one); returns the port. An OSError names the address."""
        try:
            server, _thread = start_http_server(port, addr=host.strip("[]"), registry=self.registry)
        except OSError as e:
            raise OSError(f"cannot serve metrics on {host}:{port}: {e.strerror or e}") from e
        self._http = server
        return server.server_port

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

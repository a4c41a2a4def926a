"""``adain-web`` / ``python -m adain.web``: serve the page and the HTTP API in front of adain-server."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from adain.argtypes import int_in_range, positive_float, positive_int
from adain.client.cli import CliError, add_connection_args, connect


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="adain-web", description=__doc__)
    add_connection_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                   "only; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int_in_range(1, 65535), default=8080, help="HTTP port (default 8080)")
    p.add_argument("--max-upload-mb", type=positive_float, default=20.0, metavar="MB",
                   help="largest request body (content, styles and mask together), MB (default 20)")
    p.add_argument("--max-video-mb", type=positive_float, default=200.0, metavar="MB",
                   help="largest clip upload (with its styles), MB (default 200)")
    p.add_argument("--max-video-frames", type=positive_int, default=900,
                   help="most frames a clip may have (default 900: 30 s at 30 fps); the server's own limit holds too")
    p.add_argument("--max-video-jobs", type=positive_int, default=1,
                   help="clips stylized at once (default 1); more get 429 and try again")
    p.add_argument("--video-abandon-s", type=positive_float, default=300.0, metavar="S",
                   help="cancel a running clip nobody has asked about for this long (default 300; the page asks "
                   "every second)")
    p.add_argument("--max-live", type=positive_int, default=2, metavar="N",
                   help="live camera sessions at once (default 2; each holds one of the server's video streams)")
    p.add_argument("--live-max-s", type=positive_float, default=300.0, metavar="S",
                   help="longest live camera session, seconds (default 300: a forgotten tab lets go)")
    p.add_argument("--live-idle-s", type=positive_float, default=30.0, metavar="S",
                   help="end a live camera session whose page sends nothing (or whose server sends no frame back) "
                   "for this long, seconds (default 30)")
    p.add_argument("--forwarded-for", action="store_true",
                   help="behind a reverse proxy: a page's visitor is the last X-Forwarded-For address, not the "
                   "proxy's (the server gives each visitor a turn where adain-web's token is marked front)")
    p.add_argument("--allowed-origin", action="append", default=[], metavar="ORIGIN",
                   help="another site (https://example.org) whose pages may call this API from a browser; by "
                   "default only this page may (repeat for more)")
    p.add_argument("--metrics-port", type=int_in_range(0, 65535), default=0, metavar="PORT",
                   help="serve Prometheus metrics (requests by route and status, live sessions, clip jobs) on this "
                   "port of --host (default 0: none; a port of its own, so the public never sees them)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import uvicorn

    from .app import WebSettings, create_app
    from .live import LiveSettings
    from .metrics import WebMetrics

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    max_message_mb = max(args.max_upload_mb * 1.1 + 1, 64)  # a whole upload fits in one request
    try:
        client = connect(args, max_message_mb=max_message_mb)
    except CliError as e:
        print(f"adain-web: error: {e}", file=sys.stderr, flush=True)
        return 2
    with client:
        settings = WebSettings(max_upload_bytes=int(args.max_upload_mb * 2**20), timeout=args.timeout,
                               max_video_bytes=int(args.max_video_mb * 2**20), max_video_frames=args.max_video_frames,
                               max_video_jobs=args.max_video_jobs, video_abandon_s=args.video_abandon_s,
                               live=LiveSettings(max_sessions=args.max_live, max_seconds=args.live_max_s,
                                                 idle_seconds=args.live_idle_s),
                               forwarded_for=args.forwarded_for, allowed_origins=tuple(args.allowed_origin))
        metrics = WebMetrics() if args.metrics_port > 0 else None
        app = create_app(client, settings, metrics)
        if metrics is not None:
            try:
                metrics.serve(args.host, args.metrics_port)
            except OSError as e:
                print(f"adain-web: error: {e}", file=sys.stderr, flush=True)
                return 2
        print(f"adain-web: http://{args.host}:{args.port}/ (server {args.server})", file=sys.stderr, flush=True)
        # proxy_headers off: uvicorn's default takes X-Forwarded-For from a peer at 127.0.0.1 as the client's
        # address, so any local process could name the visitor; --forwarded-for is the one switch for that
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=10,
                    proxy_headers=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())

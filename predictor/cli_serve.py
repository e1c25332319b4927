"""`latpred serve`: run the HTTP JSON prediction service (`predictor.serve`) with uvicorn."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from predictor.cli_measure import add_plugin_argument
from predictor.errors import PredictorError

log = logging.getLogger(__name__)

DEFAULT_PORT = 8765


def require_serve_dependencies() -> None:
    """Fail with one clear line when the optional `serve` extra is not installed."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise PredictorError(f"`latpred serve` needs FastAPI and uvicorn ({exc.name or exc} is "
                             "not installed); install them with: pip install 'latpred[serve]'"
                             ) from None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cmd_serve(args: argparse.Namespace) -> int:
    require_serve_dependencies()
    import uvicorn

    from predictor.api import Predictor
    from predictor.device_store import device_dirs
    from predictor.serve import create_app
    from predictor.spaces.custom import load_plugins

    if args.max_body_mb <= 0:
        raise PredictorError(f"--max-body-mb must be positive, got {args.max_body_mb}")
    if not _is_loopback(args.host):
        log.warning("serving on %s: reachable from other machines, and the service has no "
                    "authentication; put it behind a proxy that has", args.host)
    load_plugins(args.plugin)
    predictor = Predictor.load(args.checkpoint)
    app = create_app(predictor, max_body_bytes=int(args.max_body_mb * 2**20))
    print(f"latpred serve: http://{args.host}:{args.port} (docs at /docs); calibrated "
          f"devices go to {device_dirs()[0]} (set LATPRED_DEVICE_DIR to change)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="HTTP JSON service: predict, list devices, calibrate")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--checkpoint", type=Path, default=None)
    p.add_argument("--max-body-mb", type=float, default=16.0,
                   help="largest request body accepted, in MiB (default 16); larger gets 413")
    add_plugin_argument(p)
    p.add_argument("--log-level", default="info",
                   choices=("critical", "error", "warning", "info", "debug"))
    p.set_defaults(handler=cmd_serve)


def main(argv: Sequence[str] | None = None) -> int:
    """Run `serve` on its own (`python -m predictor.cli_serve`), as `latpred serve` does."""
    parser = argparse.ArgumentParser(prog="latpred")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["serve", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.handler(args)
    except PredictorError as exc:
        print(f"latpred: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

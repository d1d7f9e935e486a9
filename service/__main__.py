"""``poolserve``: serve the app (see :mod:`service.server`)."""

from __future__ import annotations

import argparse
import os

from .server import serve

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="poolserve", description="Serve poolcore's pooling methods over HTTP."
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--fd", type=int, help="serve on this already-bound socket instead of --host/--port")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N (sets POOLSERVE_DEVICE; default auto)")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes (default 1; the SIGTERM drain, POOLSERVE_DRAIN_SECONDS, needs 1)",
    )
    parser.add_argument("--log-level", default="info", help="uvicorn log level (default info)")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be at least 1 (got {args.workers})")
    if args.device:
        # The environment reaches every worker process, which each build the app from settings.
        os.environ["POOLSERVE_DEVICE"] = args.device
    serve(args.host, args.port, fd=args.fd, workers=args.workers, log_level=args.log_level)


if __name__ == "__main__":
    main()

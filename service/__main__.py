"""``poolserve``: serve the app (see :mod:`service.server`)."""

from __future__ import annotations

import argparse
import os

from pydantic import ValidationError

from .config import get_settings
from .logs import LEVELS, check_level
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
    parser.add_argument(
        "--log-level",
        type=_level,
        help=f"level of poolserve's and uvicorn's log lines: {', '.join(LEVELS)} "
        "(default POOLSERVE_LOG_LEVEL, or INFO)",
    )
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be at least 1 (got {args.workers})")
    if args.device:
        # The environment reaches every worker process, which each build the app from settings.
        os.environ["POOLSERVE_DEVICE"] = args.device
    # Every setting is checked before anything starts: a bad one stops here with what is wrong with it.
    get_settings.cache_clear()
    try:
        settings = get_settings()
    except ValidationError as error:
        parser.exit(2, f"poolserve: {_problems(error)}\n")
    level = args.log_level or settings.log_level
    serve(args.host, args.port, fd=args.fd, workers=args.workers, log_level=level.lower())


def _level(value: str) -> str:
    try:
        return check_level(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _problems(error: ValidationError) -> str:
    """Each bad setting as its variable and what is wrong with it (pydantic's message, without its
    links and input echo)."""
    problems = []
    for item in error.errors(include_url=False):
        name = "POOLSERVE_" + "_".join(str(part) for part in item["loc"]).upper()
        problems.append(f"{name}: {item['msg'].removeprefix('Value error, ')}")
    return "; ".join(problems)


if __name__ == "__main__":
    main()

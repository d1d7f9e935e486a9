"""``poolserve`` console script (placeholder: the service issue adds --device and --workers)."""

from __future__ import annotations

import argparse

import uvicorn


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="poolserve", description="Serve poolcore's pooling methods over HTTP."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    uvicorn.run("service.app:app", host=args.host, port=args.port)


if __name__ == "__main__":
    main()

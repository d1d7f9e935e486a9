"""Request parameters from the query string, form fields and JSON body, plus ``mode`` and ``seed``.

Text values (query string, form fields) are written ``kernel_size=2,3``; a ``null`` entry is None
(``output_size=null,7``); ``true``/``false`` are booleans. Each comma-separated token is read as a JSON
scalar, or kept as a string when it is not one; the method's pydantic model then validates the result,
so the rules for each parameter live in poolcore only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from .errors import Unprocessable, shorten

__all__ = ["gather", "parse_text", "split_run_options"]


def _scalar(token: str) -> Any:
    token = token.strip()
    if token.lower() in ("null", "none"):
        return None
    try:
        value = orjson.loads(token)
    except orjson.JSONDecodeError:
        return token
    return value if isinstance(value, (int, float, bool)) else token


def parse_text(value: str) -> Any:
    """``"2"`` → 2, ``"2,3"`` → [2, 3], ``"null,7"`` → [None, 7], ``"7,"`` → [7]."""
    if "," not in value:
        return _scalar(value)
    tokens = value.split(",")
    if tokens[-1].strip() == "":
        tokens = tokens[:-1]
    return [_scalar(t) for t in tokens]


def gather(
    query: Iterable[tuple[str, str]], form: Mapping[str, str], body: Mapping[str, Any]
) -> dict[str, Any]:
    """One dict of parameters; a name given twice (repeated, or in two places) is a 422."""
    params: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for source, items in (
        ("query string", list(query)),
        ("form fields", [(k, v) for k, v in form.items()]),
    ):
        for key, text in items:
            if key in params:
                raise Unprocessable(
                    f"parameter {shorten(key)} is given more than once ({sources[key]} and {source})"
                )
            params[key], sources[key] = parse_text(text), source
    for key, value in body.items():
        if key in params:
            raise Unprocessable(
                f"parameter {shorten(key)} is given more than once ({sources[key]} and JSON params)"
            )
        params[key] = value
    return params


def split_run_options(params: Mapping[str, Any]) -> tuple[dict[str, Any], Any, Any]:
    """Take ``mode`` (default ``eval``) and ``seed`` out; the rest is the method's own. ``run_pool``
    validates both."""
    rest = dict(params)
    mode = rest.pop("mode", None)
    return rest, "eval" if mode is None else mode, rest.pop("seed", None)

"""The ``curl`` and Python ``httpx`` calls that do over HTTP what the page just did in process.

The route is the service's ``POST /pool/{method}``: images and ``.npy`` bodies take their parameters in the
query string (tuples as ``2,3``, None as ``null``); a JSON body carries them in ``"params"``.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

from .controls import format_value

__all__ = [
    "DEFAULT_BASE",
    "compare_snippet",
    "image_snippet",
    "json_snippet",
    "query_params",
    "request_params",
]

DEFAULT_BASE = "http://127.0.0.1:8000"


def request_params(params: Mapping[str, Any], mode: str, seed: int | str | None) -> dict[str, Any]:
    """Method parameters plus ``mode`` and ``seed`` (only what differs from the service's defaults)."""
    out = dict(params)
    if mode != "eval":
        out["mode"] = mode
    if seed is not None:
        out["seed"] = seed
    return out


def query_params(params: Mapping[str, Any]) -> dict[str, str]:
    """Parameters in the query-string syntax of the route."""
    return {name: format_value(value) for name, value in params.items()}


def _url(base: str, method: str, query: Mapping[str, str] | None = None) -> str:
    url = f"{base.rstrip('/')}/pool/{method}"
    return f"{url}?{urlencode(query, safe=',')}" if query else url


def image_snippet(base: str, method: str, params: Mapping[str, Any], *, filename: str = "input.png") -> str:
    """Markdown with the curl and httpx calls for an image body; ``params`` include mode and seed."""
    query = query_params(params)
    curl = (
        f"curl -X POST {shlex.quote(_url(base, method, query))} \\\n"
        f"  -H 'Content-Type: image/png' --data-binary @{filename} -o pooled.png"
    )
    py = (
        "import httpx\n\n"
        f"with open({filename!r}, 'rb') as f:\n"
        "    r = httpx.post(\n"
        f"        {_url(base, method)!r},\n"
        f"        params={query!r},\n"
        "        content=f.read(),\n"
        "        headers={'Content-Type': 'image/png'},\n"
        "    )\n"
        "r.raise_for_status()\n"
        "open('pooled.png', 'wb').write(r.content)"
    )
    return _markdown(curl, py)


def json_snippet(base: str, method: str, data: Sequence[Any], params: Mapping[str, Any]) -> str:
    """Markdown with the curl and httpx calls for a JSON body; ``params`` include mode and seed."""
    body = {"data": data, "params": dict(params)}
    text = json.dumps(body, separators=(", ", ": "))
    curl = (
        f"curl -X POST {shlex.quote(_url(base, method))} \\\n"
        f"  -H 'Content-Type: application/json' \\\n  -d {shlex.quote(text)}"
    )
    py = (
        "import httpx\n\n"
        f"r = httpx.post({_url(base, method)!r}, json={body!r})\n"
        "r.raise_for_status()\n"
        "print(r.json()['data'])"
    )
    return _markdown(curl, py)


def compare_snippet(base: str, calls: Mapping[str, Mapping[str, Any]], *, filename: str = "input.png") -> str:
    """Markdown with one curl line per method and an httpx loop over all of them."""
    lines = [
        f"curl -sX POST {shlex.quote(_url(base, method, query_params(params)))} "
        f"-H 'Content-Type: image/png' --data-binary @{filename} -o {method}.png"
        for method, params in calls.items()
    ]
    table = {method: query_params(params) for method, params in calls.items()}
    py = (
        "import httpx\n\n"
        f"calls = {table!r}\n"
        f"body = open({filename!r}, 'rb').read()\n"
        "for method, params in calls.items():\n"
        f"    r = httpx.post(f'{base.rstrip('/')}/pool/{{method}}', params=params, content=body,\n"
        "                   headers={'Content-Type': 'image/png'})\n"
        "    r.raise_for_status()\n"
        "    open(f'{method}.png', 'wb').write(r.content)"
    )
    return _markdown("\n".join(lines), py)


def _markdown(curl: str, py: str) -> str:
    return f"**curl**\n```bash\n{curl}\n```\n**Python (httpx)**\n```python\n{py}\n```"

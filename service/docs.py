"""OpenAPI description of ``POST /pool/{method}``: a worked example per content type, and the query
parameters of every registered method, all derived from the registry when the app is built."""

from __future__ import annotations

from typing import Any

import torch

import poolcore

from .codecs.json import DTYPES
from .pooling import MAX_SEED, run_pool

__all__ = ["ERRORS", "TRANSPORT_ERRORS", "error_responses", "pool_operation", "query_parameters"]

_BASE = "http://127.0.0.1:8000"
_ERROR = {
    "type": "object",
    "properties": {"detail": {"type": "string", "description": "What was wrong, naming the value."}},
    "required": ["detail"],
}
# Every error status a route can answer, with a sample message. The server's and the middleware's checks
# (Content-Length, body and head limits, timeouts, API keys) apply to every route; the rest are the pool
# route's own.
ERRORS: dict[int, tuple[str, str]] = {
    400: (
        "A malformed body (JSON, .npy, image, multipart) or Content-Length.",
        "malformed JSON: unexpected character: line 1 column 2 (char 1)",
    ),
    401: (
        "No or wrong API key, when POOLSERVE_API_KEYS is set: send `Authorization: Bearer <key>`.",
        "this route needs an API key: send Authorization: Bearer <key>",
    ),
    404: ("Unknown method.", "unknown pooling method 'foo'; known methods: avg, max, ..."),
    406: ("Accept cannot be met.", "cannot produce any type in Accept 'text/html'; available: ..."),
    408: (
        "The body did not arrive within POOLSERVE_BODY_TIMEOUT seconds.",
        "the request body did not arrive within 30 s",
    ),
    413: (
        "Body, JSON body, elements, output elements or pixels over the limit (see GET /methods).",
        "request body is over the limit of 67108864 bytes",
    ),
    415: ("Unsupported Content-Type.", "unsupported Content-Type 'text/plain'; send one of: ..."),
    422: (
        "Invalid parameters, or input the method cannot take (the tensor's shape against the window, "
        "a ragged or non-numeric array, a non-finite result).",
        "invalid parameters for 'avg': kernel_size: unknown parameter",
    ),
    431: ("Request line and headers over the limit.", "the request head is over the limit of 65536 bytes"),
    503: (
        "Not ready, shutting down, queue full or a device fault: try again after Retry-After.",
        "the server is busy; try again",
    ),
}
# The statuses every route can answer, whatever it does: the server's and the middleware's checks.
TRANSPORT_ERRORS = (400, 401, 408, 413, 431)


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses for these error statuses, each ``{"detail": str}`` with a sample message; the
    form FastAPI's ``responses=`` takes, and the pool operation's."""
    responses: dict[int | str, dict[str, Any]] = {}
    for code in sorted(set(codes)):
        text, example = ERRORS[code]
        content = {"application/json": {"schema": _ERROR, "example": {"detail": example}}}
        responses[code] = {"description": text, "content": content}
        if code in (401, 503):
            header = "WWW-Authenticate" if code == 401 else "Retry-After"
            responses[code]["headers"] = {header: {"schema": {"type": "string"}}}
    return responses


def method_parameter() -> dict[str, Any]:
    """The ``{method}`` path parameter: the route reads it from the path itself (an unknown name is a 404
    listing the known ones) rather than have FastAPI resolve a parameter on every request."""
    return {
        "name": "method",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "enum": poolcore.methods()},
        "description": "A registered method or preset (see GET /methods).",
    }


def _strip(schema: dict[str, Any], *, text: bool) -> dict[str, Any]:
    """A pydantic field schema as the wire carries it: titles and defaults dropped; arrays hold 1 to 3
    entries (one per spatial dim, which poolcore checks). With ``text`` (query string, form fields) a
    null is the word ``null``."""
    variants = []
    for variant in schema.get("anyOf", [schema]):
        kept = {k: v for k, v in variant.items() if k not in ("title", "default", "description")}
        if text and kept.get("type") == "null":
            kept = _NULL_TEXT
        elif kept.get("type") == "array":
            kept.update(items=_strip(kept["items"], text=text), minItems=1, maxItems=3)
        variants.append(kept)
    return variants[0] if len(variants) == 1 else {"anyOf": variants}


def _fields(*, text: bool) -> dict[str, tuple[dict[str, Any], str, list[str]]]:
    """Every parameter any method takes: (its wire schema, the union over the methods that take it; its
    description; those methods)."""
    found: dict[str, tuple[list[dict[str, Any]], str, list[str]]] = {}
    for name in poolcore.methods():
        for field, info in poolcore.get_spec(name).params.model_json_schema()["properties"].items():
            schemas, _, names = found.setdefault(field, ([], info.get("description", ""), []))
            wire = _strip(info, text=text)
            schemas.extend(v for v in wire.get("anyOf", [wire]) if v not in schemas)
            names.append(name)
    return {
        field: (schemas[0] if len(schemas) == 1 else {"anyOf": schemas}, description, names)
        for field, (schemas, description, names) in found.items()
    }


# None written as text (query string, form fields): a parameter's default.
_NULL_TEXT = {"type": "string", "enum": ["null"]}
# What a multipart `file` part may hold: the types the API names (the bytes are checked, not trusted).
FILE_TYPES = ("application/x-npy", "image/png", "image/jpeg")


def _scalar_forms(schema: dict[str, Any]) -> dict[str, Any]:
    variants = [v for v in schema.get("anyOf", [schema]) if v.get("type") != "array"]
    return variants[0] if len(variants) == 1 else {"anyOf": variants}


_MODE = {"type": "string", "enum": ["eval", "train"], "default": "eval"}
_SEED = {"type": "integer", "minimum": 0, "maximum": MAX_SEED}
_NULL = {"type": "null"}


def query_parameters() -> list[dict[str, Any]]:
    """``mode``, ``seed`` and every parameter name any registered method takes, as query parameters,
    typed as each method's model has them. A list is written comma-separated (``2,3``: OpenAPI's form
    style, not exploded); None is the word ``null`` (``null,7``)."""
    params: list[dict[str, Any]] = [
        {
            "name": "mode",
            "in": "query",
            "required": False,
            "schema": {"anyOf": [_MODE, _NULL_TEXT]},
            "description": "eval (test-time behaviour, the default) or train (random methods sample).",
        },
        {
            "name": "seed",
            "in": "query",
            "required": False,
            "schema": {"anyOf": [_SEED, _NULL_TEXT]},
            "description": "Train-mode seed. Without it the server draws one and returns it (X-Pool-Seed, "
            "params.seed); the same request with that seed returns the same bytes.",
        },
    ]
    for field, (schema, description, names) in _fields(text=True).items():
        params.append(
            {
                "name": field,
                "in": "query",
                "required": False,
                "schema": schema,
                "style": "form",
                "explode": False,
                "description": f"{description} Written as text: `2`, `2,3`, `null,7`, `true`. "
                f"Methods: {', '.join(names)}.",
            }
        )
    return params


def _nested(leaf: dict[str, Any], *, min_items: int) -> dict[str, Any]:
    """Nested lists of ``leaf`` values, rank 1 to 5: one schema per rank (no ``$ref`` recursion, so it
    stays inline in the operation)."""
    ranks = []
    schema = leaf
    for _ in range(5):
        schema = {"type": "array", "items": schema, "minItems": min_items}
        ranks.append(schema)
    return {"anyOf": ranks}


def _example_run() -> tuple[list, dict[str, Any]]:
    data = [[[[1.0, 2.0, 0.5, 0.0], [3.0, 4.0, 1.5, 1.0], [0.0, 1.0, 2.0, 2.0], [1.0, 0.0, 2.0, 6.0]]]]
    outcome = run_pool(torch.tensor(data), "avg", {"kernel_size": 2})
    response = {
        "method": outcome.method,
        "params": outcome.params,
        "shape": list(outcome.output.shape),
        "dtype": "float32",
        "data": outcome.output.tolist(),
    }
    return data, response


def pool_operation() -> dict[str, Any]:
    """The OpenAPI operation of ``POST /pool/{method}``, built from the registry when the schema is."""
    data, response = _example_run()
    binary = {"type": "string", "format": "binary"}
    npy_example = {
        "summary": ".npy body, parameters in the query string",
        "description": "```\npython -c \"import numpy as np; np.save('x.npy', np.random.rand(1, 3, 8, 8)"
        ".astype('float32'))\"\n"
        f"curl -s -X POST '{_BASE}/pool/avg?kernel_size=2,2&stride=2' \\\n"
        "  -H 'Content-Type: application/x-npy' --data-binary @x.npy -o out.npy\n```\n"
        "The resolved parameters come back in the X-Pool-Params header.",
        # No "value": a binary body has no inline form, and an empty one would be a malformed .npy.
    }
    image_example = {
        "summary": "An image, pooled to a smaller image",
        "description": f"```\ncurl -s -X POST '{_BASE}/pool/max?kernel_size=4' -H 'Content-Type: image/png' "
        "--data-binary @photo.png -o pooled.png\n```\nThe image becomes float32 C×H×W in [0, 1] "
        "(L, RGB or RGBA kept); the PNG result is clamped to [0, 1]. Add `-H 'Accept: application/json'` "
        "for the numbers.",
    }
    multipart_example = {
        "summary": "A file upload, parameters as form fields",
        "description": f"```\ncurl -s -X POST '{_BASE}/pool/adaptive_avg' -F file=@x.npy "
        "-F output_size=null,7 "
        "-H 'Accept: application/json'\n```\nField `file` holds .npy, PNG, JPEG or JSON.",
        "value": {"file": "(binary)", "output_size": "null,7"},
    }
    json_examples: dict[str, Any] = {
        "kernel": {
            "summary": "2×2 average pooling of a 1×1×4×4 tensor",
            "value": {"data": data, "params": {"kernel_size": 2}},
        },
        "adaptive": {
            "summary": "Adaptive output size, None keeps that input size",
            "value": {"data": data, "params": {"output_size": [None, 2]}, "dtype": "float64"},
        },
    }
    random_methods = [n for n in poolcore.methods() if poolcore.get_spec(n).random]
    if random_methods:
        json_examples["train"] = {
            "summary": f"Train mode with a seed ({random_methods[0]}): same seed, same bytes",
            "value": {"data": data, "params": {"kernel_size": 2, "mode": "train", "seed": 1234}},
        }
    json_fields = {field: schema for field, (schema, _, _) in _fields(text=False).items()}
    # Form fields are text like the query string; OpenAPI has no comma-separated form for multipart,
    # so only their single-value forms are declared (`2,3` and `null,7` are accepted as well).
    form_fields = {field: _scalar_forms(schema) for field, (schema, _, _) in _fields(text=True).items()}
    request_body = {
        "required": True,
        "description": "The tensor, by Content-Type. JSON carries its parameters in `params`; the other "
        "types take them in the query string (or form fields).",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["data"],
                    "properties": {
                        "data": {
                            **_nested({"type": "number"}, min_items=1),
                            "description": "Nested lists of numbers, rank 1 to 5, every list at one depth "
                            "of the same length.",
                        },
                        "params": {
                            "type": "object",
                            "properties": {
                                "mode": {"anyOf": [_MODE, _NULL]},
                                "seed": {"anyOf": [_SEED, _NULL]},
                                **json_fields,
                            },
                            "additionalProperties": False,
                            "description": "The method's parameters (GET /methods), plus mode and seed.",
                        },
                        "dtype": {
                            "anyOf": [{"type": "string", "enum": list(DTYPES)}, _NULL],
                            "default": "float32",
                        },
                    },
                    "additionalProperties": False,
                },
                "examples": json_examples,
            },
            "application/x-npy": {"schema": binary, "examples": {"npy": npy_example}},
            "application/octet-stream": {"schema": binary, "examples": {"npy": npy_example}},
            "image/png": {"schema": binary, "examples": {"png": image_example}},
            "image/jpeg": {"schema": binary, "examples": {"jpeg": image_example}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {**binary, "description": "The tensor: .npy, PNG or JPEG (or a JSON body)."},
                        "mode": {"anyOf": [_MODE, _NULL_TEXT]},
                        "seed": {"anyOf": [_SEED, _NULL_TEXT]},
                        **form_fields,
                    },
                    "additionalProperties": False,
                },
                # The file is read by its bytes: .npy, PNG and JPEG (JSON too, sniffed); nothing else.
                "encoding": {"file": {"contentType": ", ".join(FILE_TYPES)}},
                "examples": {"upload": multipart_example},
            },
        },
    }
    headers = {
        name: {"description": text, "schema": {"type": "string"}}
        for name, text in {
            "X-Pool-Method": "The method run (an alias resolves to its name).",
            "X-Pool-Params": "Resolved parameters as JSON, with mode and the seed actually used.",
            "X-Pool-Seed": "The train-mode seed used (random methods only).",
            "X-Pool-Shape": "Output shape, comma-separated.",
            "X-Pool-Dtype": "Output dtype.",
            "X-Pool-Device": "Where it ran.",
            "X-Pool-Elapsed-Ms": "Time in the pooling operator itself.",
            "X-Pool-Batch": "Requests answered by the same operator call as this one (1: it ran alone).",
            "Server-Timing": "read (body) and run (decode, pool, encode in a worker) durations, in ms.",
        }.items()
    }
    result = {
        "type": "object",
        "required": ["method", "params", "shape", "dtype", "data"],
        "properties": {
            "method": {"type": "string"},
            "params": {"type": "object", "description": "Resolved parameters, with mode and seed."},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "dtype": {"type": "string", "enum": list(DTYPES)},
            # Every number finite: a result that is not is a 422, never a null.
            "data": _nested({"type": "number"}, min_items=0),
        },
    }
    responses: dict[str, dict[str, Any]] = {
        "200": {
            "description": "The pooled tensor, in the type Accept asks for (default: the request's kind).",
            "headers": headers,
            "content": {
                "application/json": {"schema": result, "example": response},
                "application/x-npy": {"schema": binary},
                "image/png": {"schema": binary},
            },
        }
    }
    errors = error_responses(*TRANSPORT_ERRORS, 404, 406, 415, 422, 503)
    responses.update({str(code): response for code, response in errors.items()})
    return {
        "tags": ["pooling"],
        "summary": "Pool a tensor or an image with one method",
        "operationId": "pool",
        "parameters": [method_parameter(), *query_parameters()],
        "requestBody": request_body,
        "responses": responses,
    }

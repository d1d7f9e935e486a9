"""OpenAPI description of ``POST /pool/{method}``: a worked example per content type, and the query
parameters of every registered method, all derived from the registry when the app is built."""

from __future__ import annotations

from typing import Any

import torch

import poolcore

from .pooling import run_pool

__all__ = ["pool_operation", "query_parameters"]

_BASE = "http://127.0.0.1:8000"
_ERROR = {
    "type": "object",
    "properties": {"detail": {"type": "string", "description": "What was wrong, naming the value."}},
    "required": ["detail"],
}
_ERRORS = {
    400: ("Malformed JSON, .npy or image.", "malformed JSON: unexpected character: line 1 column 2 (char 1)"),
    404: ("Unknown method.", "unknown pooling method 'foo'; known methods: avg, max, ..."),
    406: ("Accept cannot be met.", "cannot produce any type in Accept 'text/html'; available: ..."),
    413: ("Body, elements or pixels over the limit.", "request body is over the limit of 67108864 bytes"),
    415: ("Unsupported Content-Type.", "unsupported Content-Type 'text/plain'; send one of: ..."),
    422: (
        "Invalid parameters or input.",
        "invalid parameters for 'avg': kernel_size: unknown parameter",
    ),
}


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


def query_parameters() -> list[dict[str, Any]]:
    """``mode``, ``seed`` and every parameter name any registered method takes, as text query params."""
    applies: dict[str, list[str]] = {}
    describe: dict[str, str] = {}
    for name in poolcore.methods():
        for field, info in poolcore.get_spec(name).params.model_fields.items():
            applies.setdefault(field, []).append(name)
            describe.setdefault(field, info.description or "")
    params: list[dict[str, Any]] = [
        {
            "name": "mode",
            "in": "query",
            "required": False,
            "schema": {"type": "string", "enum": ["eval", "train"], "default": "eval"},
            "description": "eval (test-time behaviour, the default) or train (random methods sample).",
        },
        {
            "name": "seed",
            "in": "query",
            "required": False,
            "schema": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
            "description": "Train-mode seed. Without it the server draws one and returns it (X-Pool-Seed, "
            "params.seed); the same request with that seed returns the same bytes.",
        },
    ]
    for field, names in applies.items():
        params.append(
            {
                "name": field,
                "in": "query",
                "required": False,
                "schema": {"type": "string"},
                "description": f"{describe[field]} Written as text: `2`, `2,3`, `null,7`, `true`. "
                f"Methods: {', '.join(names)}.",
            }
        )
    return params


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
        "value": "",
    }
    image_example = {
        "summary": "An image, pooled to a smaller image",
        "description": f"```\ncurl -s -X POST '{_BASE}/pool/max?kernel_size=4' -H 'Content-Type: image/png' "
        "--data-binary @photo.png -o pooled.png\n```\nThe image becomes float32 C×H×W in [0, 1] "
        "(L, RGB or RGBA kept); the PNG result is clamped to [0, 1]. Add `-H 'Accept: application/json'` "
        "for the numbers.",
        "value": "",
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
                        "data": {"type": "array", "description": "Nested lists of numbers, rank 1 to 5."},
                        "params": {
                            "type": "object",
                            "description": "The method's parameters (GET /methods), plus mode and seed.",
                        },
                        "dtype": {
                            "type": "string",
                            "enum": ["float16", "float32", "float64"],
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
                    "properties": {"file": binary},
                    "additionalProperties": {"type": "string"},
                },
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
    responses: dict[str, dict[str, Any]] = {
        "200": {
            "description": "The pooled tensor, in the type Accept asks for (default: the request's kind).",
            "headers": headers,
            "content": {
                "application/json": {"example": response},
                "application/x-npy": {"schema": binary},
                "image/png": {"schema": binary},
            },
        }
    }
    for code, (text, example) in _ERRORS.items():
        content = {"application/json": {"schema": _ERROR, "example": {"detail": example}}}
        responses[str(code)] = {"description": text, "content": content}
    return {
        "tags": ["pooling"],
        "summary": "Pool a tensor or an image with one method",
        "operationId": "pool",
        "parameters": [method_parameter(), *query_parameters()],
        "requestBody": request_body,
        "responses": responses,
    }

"""OpenAPI description of ``POST /pool/{method}``: a worked example per content type, and the query
parameters of every registered method, all derived from the registry when the app is built."""

from __future__ import annotations

from typing import Any

import poolcore

from .codecs import oip
from .codecs.json import DTYPES
from .pooling import MAX_SEED

__all__ = [
    "ERRORS",
    "TRANSPORT_ERRORS",
    "error_responses",
    "oip_error_responses",
    "pool_operation",
    "query_parameters",
    "v2_paths",
]

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
    429: (
        "Too many wrong API keys from this address within a minute: refused for a minute, even with a right "
        "key; retry after Retry-After.",
        "too many wrong API keys from this address: retry after 60 s",
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
        if code in (401, 429, 503):
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
    found: dict[str, tuple[list[dict[str, Any]], list[str], list[str]]] = {}
    for name in poolcore.methods():
        for field, info in poolcore.get_spec(name).params.model_json_schema()["properties"].items():
            schemas, descriptions, names = found.setdefault(field, ([], [], []))
            wire = _strip(info, text=text)
            schemas.extend(v for v in wire.get("anyOf", [wire]) if v not in schemas)
            descriptions.append(info.get("description", ""))
            names.append(name)
    return {
        field: (
            schemas[0] if len(schemas) == 1 else {"anyOf": schemas},
            _describe(descriptions, names),
            names,
        )
        for field, (schemas, descriptions, names) in found.items()
    }


def _describe(descriptions: list[str], names: list[str]) -> str:
    """One description where every method says the same, else each method's own, by name."""
    if len(set(descriptions)) == 1:
        return descriptions[0]
    return " ".join(f"{name}: {text}" for name, text in zip(names, descriptions) if text)


def _defaults(field: str) -> dict[str, Any]:
    """Each method's default of ``field`` (methods where it is required are left out)."""
    defaults = {}
    for name in poolcore.methods():
        info = poolcore.get_spec(name).params.model_fields.get(field)
        if info is not None and not info.is_required():
            default = info.get_default(call_default_factory=True)
            defaults[name] = list(default) if isinstance(default, tuple) else default
    return defaults


def _as_text(value: Any) -> str:
    """A default as the query string writes it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(_as_text(v) for v in value)
    return str(value)


def _text_form(schema: dict[str, Any]) -> str:
    """How a value of ``schema`` is written in the query string or a form field."""
    variants = schema.get("anyOf", [schema])
    arrays = [v for v in variants if v.get("type") == "array"]
    if arrays:
        items = arrays[0]["items"].get("anyOf", [arrays[0]["items"]])
        if any(item.get("enum") == ["null"] for item in items):
            return "One value, or one per spatial dim: `7`, `5,7`; `null` keeps that dim's size (`null,7`)."
        return "One value, or one per spatial dim: `2` or `2,3`."
    enums = [v["enum"] for v in variants if "enum" in v and v["enum"] != ["null"]]
    if enums:
        return "One of: " + ", ".join(f"`{v}`" for v in enums[0]) + "."
    if any(v.get("type") == "boolean" for v in variants):
        return "`true` or `false`."
    return ""


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
        defaults = _defaults(field)
        parameter: dict[str, Any] = {
            "name": field,
            "in": "query",
            "required": False,
            "schema": schema,
            "style": "form",
            "explode": False,
        }
        if len({repr(v) for v in defaults.values()}) == 1 and len(defaults) == len(names):
            default = next(iter(defaults.values()))
            default_text = f"Default: `{_as_text(default)}`."
            if default is not None:
                parameter["schema"] = {
                    **schema,
                    "default": _as_text(default) if isinstance(default, list) else default,
                }
        elif defaults:
            default_text = (
                "Default: " + ", ".join(f"`{_as_text(v)}` ({n})" for n, v in defaults.items()) + "."
            )
        else:
            default_text = "Required."
        if len(defaults) < len(names) and defaults:
            required = [n for n in names if n not in defaults]
            default_text += f" Required by {', '.join(required)}."
        parts = [description, _text_form(schema), default_text, f"Methods: {', '.join(names)}."]
        parameter["description"] = " ".join(part for part in parts if part)
        params.append(parameter)
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


_EXAMPLE = [[[[1.0, 2.0, 0.5, 0.0], [3.0, 4.0, 1.5, 1.0], [0.0, 1.0, 2.0, 2.0], [1.0, 0.0, 2.0, 6.0]]]]


def _example_run() -> tuple[list, dict[str, Any]]:
    """The JSON example, ``avg`` with ``kernel_size=2``: each output the mean of its 2×2 window, worked out
    here (the schema is built without running an operator; a test checks the server answers this)."""
    (plane,) = _EXAMPLE[0]
    means = [
        [sum(plane[2 * i + a][2 * j + b] for a in (0, 1) for b in (0, 1)) / 4 for j in range(2)]
        for i in range(2)
    ]
    # The resolved parameters as the server reports them: the registry's defaults (pydantic only).
    params = {**poolcore.get_spec("avg").resolve({"kernel_size": 2}), "mode": "eval", "seed": None}
    response = {
        "method": "avg",
        "params": params,
        "shape": [1, 1, 2, 2],
        "dtype": "float32",
        "data": [[means]],
    }
    return _EXAMPLE, response


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
    jpeg_example = {
        "summary": "A JPEG photo, pooled to a smaller image",
        "description": f"```\ncurl -s -X POST '{_BASE}/pool/avg?kernel_size=8' -H 'Content-Type: image/jpeg' "
        "--data-binary @photo.jpg -o pooled.png\n```\nA JPEG becomes float32 C×H×W in [0, 1] (grey or "
        "RGB); the answer is a PNG unless Accept asks for JSON or .npy. A truncated JPEG, or one of more "
        "scans than POOLSERVE_MAX_JPEG_SCANS, is refused with 422 before it is decoded.",
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
            "image/jpeg": {"schema": binary, "examples": {"jpeg": jpeg_example}},
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


# -- The Open Inference Protocol (KServe v2) over REST: documented beside /pool, errors as {"error": ...} --

_OIP_ERROR = {
    "type": "object",
    "properties": {"error": {"type": "string", "description": "What was wrong, naming the value."}},
    "required": ["error"],
}


def oip_error_responses(*codes: int) -> dict[str, dict[str, Any]]:
    """The protocol's error responses: 400 stands for every invalid request (/pool's 422 included)."""
    texts = {
        400: "Invalid request: its JSON, a tensor, a parameter the method refuses.",
        401: "No or wrong API key, when POOLSERVE_API_KEYS is set.",
        404: "Unknown model (method) or version.",
        429: "Too many wrong API keys from this address within a minute: retry after Retry-After.",
        413: "Body, elements, output or answer over a limit (see GET /methods).",
        503: "Not ready, shutting down, queue full or a device fault: try again after Retry-After.",
    }
    return {
        str(code): {"description": texts[code], "content": {"application/json": {"schema": _OIP_ERROR}}}
        for code in codes
    }


def _oip_tensor(*, request: bool) -> dict[str, Any]:
    datatypes = {"type": "string", "enum": list(oip.DATATYPES)} if request else {"type": "string"}
    properties: dict[str, Any] = {
        "name": {"type": "string", "description": f"`{oip.INPUT_NAME}` in, `{oip.OUTPUT_NAME}` out."},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1, "maxItems": 5},
        "datatype": datatypes,
        "parameters": {
            "anyOf": [{"type": "object"}, _NULL],
            "description": "binary_data_size with the binary extension.",
        },
        "data": {"type": "array", "description": "The elements in row-major order, flat or nested."},
    }
    return {"type": "object", "required": ["name", "shape", "datatype"], "properties": properties}


def v2_paths() -> dict[str, Any]:
    """OpenAPI paths of the protocol's REST routes (service/routes/v2.py): every method is a model."""
    name = {
        "name": "name",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "enum": poolcore.methods()},
        "description": "The model: a registered method or preset (see GET /methods).",
    }
    version = {
        "name": "version",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "enum": ["1"]},
        "description": "The model version; each method has one, `1`.",
    }
    tags = ["inference protocol"]

    def ok(description: str, schema: dict[str, Any]) -> dict[str, Any]:
        return {"description": description, "content": {"application/json": {"schema": schema}}}

    boolean = {"type": "boolean"}
    infer_request = {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"anyOf": [{"type": "string"}, _NULL], "description": "Echoed in the response."},
            "parameters": {
                "anyOf": [{"type": "object"}, _NULL],
                "description": "The method's parameters (GET /methods) plus mode and seed, as scalars: a "
                'tuple is text (`"2,3"`); binary_data_output asks for the binary extension.',
            },
            "inputs": {"type": "array", "items": _oip_tensor(request=True), "minItems": 1, "maxItems": 1},
            "outputs": {
                "anyOf": [
                    {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["name"],
                            "properties": {
                                "name": {"type": "string", "enum": [oip.OUTPUT_NAME]},
                                "parameters": {"anyOf": [{"type": "object"}, _NULL]},
                            },
                        },
                    },
                    _NULL,
                ],
            },
        },
    }
    infer_response = {
        "type": "object",
        "required": ["model_name", "outputs"],
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "parameters": {"type": "object", "description": "The resolved parameters, mode and seed."},
            "outputs": {"type": "array", "items": _oip_tensor(request=False)},
        },
    }
    example = {
        "inputs": [
            {
                "name": oip.INPUT_NAME,
                "shape": [1, 1, 4, 4],
                "datatype": "FP32",
                "data": [value for row in _EXAMPLE[0][0] for value in row],
            }
        ],
        "parameters": {"kernel_size": 2},
    }
    metadata = {
        "type": "object",
        "required": ["name", "versions", "platform", "inputs", "outputs"],
        "properties": {
            "name": {"type": "string"},
            "versions": {"type": "array", "items": {"type": "string"}},
            "platform": {"type": "string"},
            "inputs": {"type": "array", "items": {"type": "object"}},
            "outputs": {"type": "array", "items": {"type": "object"}},
        },
    }
    paths: dict[str, Any] = {
        "/v2": {
            "get": {
                "tags": tags,
                "summary": "Server metadata",
                "responses": {
                    "200": ok("The server's name, version and protocol extensions.", {"type": "object"}),
                    **oip_error_responses(401),
                },
            }
        },
        "/v2/health/live": {
            "get": {
                "tags": tags,
                "summary": "Liveness (no API key needed)",
                "responses": {
                    "200": ok("The process answers.", {"type": "object", "properties": {"live": boolean}})
                },
            }
        },
        "/v2/health/ready": {
            "get": {
                "tags": tags,
                "summary": "Readiness (no API key needed)",
                "responses": {
                    "200": ok("Ready to serve.", {"type": "object", "properties": {"ready": boolean}}),
                    "503": ok("Starting or draining.", {"type": "object", "properties": {"ready": boolean}}),
                },
            }
        },
    }
    for prefix, parameters in (
        ("/v2/models/{name}", [name]),
        ("/v2/models/{name}/versions/{version}", [name, version]),
    ):
        paths[prefix] = {
            "get": {
                "tags": tags,
                "summary": "Model metadata: the method's tensors and datatypes",
                "parameters": parameters,
                "responses": {"200": ok("The model's metadata.", metadata), **oip_error_responses(401, 404)},
            }
        }
        paths[f"{prefix}/ready"] = {
            "get": {
                "tags": tags,
                "summary": "Model readiness",
                "parameters": parameters,
                "responses": {
                    "200": ok(
                        "Ready.",
                        {"type": "object", "properties": {"name": {"type": "string"}, "ready": boolean}},
                    ),
                    "503": ok("Not ready.", {"type": "object"}),
                    **oip_error_responses(401, 404),
                },
            }
        }
        paths[f"{prefix}/infer"] = {
            "post": {
                "tags": tags,
                "summary": "Pool with the model's method (the protocol's infer)",
                "description": "JSON, or the binary tensor extension (Inference-Header-Content-Length) both "
                "ways; runs like POST /pool/{method}. See docs/inference-protocol.md.",
                "parameters": parameters,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": infer_request, "example": example}},
                },
                "responses": {
                    "200": ok("The pooled tensor as the protocol's output.", infer_response),
                    **oip_error_responses(400, 401, 404, 413, 503),
                },
            }
        }
    return paths

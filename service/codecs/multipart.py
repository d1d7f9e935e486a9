"""``multipart/form-data``: the tensor in field ``file`` (.npy, PNG, JPEG or JSON), parameters in the
other form fields (strings, parsed like the query string)."""

from __future__ import annotations

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MAX_BOUNDARY_LENGTH, MultipartParser, parse_options_header

from ..errors import BadRequest, Unprocessable, UnsupportedMediaType, shorten
from . import image, json, npy
from .base import Decoded, Limits

__all__ = ["decode", "split_parts"]

_MAX_FIELDS = 64


def split_parts(
    body: bytes | bytearray, content_type: str
) -> list[tuple[str, str | None, str | None, bytes]]:
    """``(name, filename, content_type, data)`` of each part.

    A ``bytearray`` body is copied to ``bytes`` first: the parser is typed for ``bytes`` only, and one
    memcpy is small next to its pure-Python parsing.
    """
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise BadRequest("malformed multipart/form-data: the Content-Type has no boundary")
    if len(boundary) > MAX_BOUNDARY_LENGTH:  # the parser's own limit, which it raises as a plain error
        raise BadRequest(
            f"malformed multipart/form-data: the boundary is {len(boundary)} characters long, over the "
            f"limit of {MAX_BOUNDARY_LENGTH}"
        )
    parts: list[tuple[str, str | None, str | None, bytes]] = []
    headers: dict[bytes, bytes] = {}
    field_name = b""
    field_value = b""
    data: list[bytes] = []

    ended: list[bool] = []

    def on_end() -> None:
        ended.append(True)

    def on_part_begin() -> None:
        headers.clear()
        data.clear()

    def on_part_data(buf: bytes, start: int, end: int) -> None:
        data.append(buf[start:end])

    def on_header_field(buf: bytes, start: int, end: int) -> None:
        nonlocal field_name
        field_name += buf[start:end]

    def on_header_value(buf: bytes, start: int, end: int) -> None:
        nonlocal field_value
        field_value += buf[start:end]

    def on_header_end() -> None:
        nonlocal field_name, field_value
        headers[field_name.lower()] = field_value
        field_name = field_value = b""

    def on_part_end() -> None:
        if len(parts) >= _MAX_FIELDS:
            raise BadRequest(f"malformed multipart/form-data: more than {_MAX_FIELDS} parts")
        _, disposition = parse_options_header(headers.get(b"content-disposition", b""))
        name = disposition.get(b"name", b"").decode("latin-1")
        filename = disposition.get(b"filename")
        part_type = headers.get(b"content-type")
        parts.append(
            (
                name,
                None if filename is None else filename.decode("latin-1"),
                None if part_type is None else part_type.decode("latin-1"),
                b"".join(data),
            )
        )

    try:
        parser = MultipartParser(
            boundary,
            {
                "on_part_begin": on_part_begin,
                "on_part_data": on_part_data,
                "on_part_end": on_part_end,
                "on_header_field": on_header_field,
                "on_header_value": on_header_value,
                "on_header_end": on_header_end,
                "on_end": on_end,
            },
        )
        parser.write(bytes(body) if isinstance(body, bytearray) else body)
        parser.finalize()
    except FormParserError as error:  # the parser's errors, the boundary's included: the client's fault
        raise BadRequest(f"malformed multipart/form-data: {error}") from None
    if not ended:
        raise BadRequest("malformed multipart/form-data: the body ends before the closing boundary")
    return parts


def _sniff(data: bytes, part_type: str | None) -> str:
    media = (part_type or "").split(";", 1)[0].strip().lower()
    if data.startswith(b"\x93NUMPY"):
        return "npy"
    if data.startswith((b"\x89PNG", b"\xff\xd8\xff")) or media.startswith("image/"):
        return "image"
    if media == "application/json" or data.lstrip()[:1] in (b"{", b"["):
        return "json"
    if media in ("application/x-npy", "application/octet-stream"):
        return "npy"
    raise Unprocessable(
        f"cannot tell the format of the uploaded file (Content-Type {shorten(part_type)}); "
        "upload .npy, PNG, JPEG or JSON"
    )


def _image_type(part_type: str | None) -> str | None:
    """The image media type a part declares (its format is then the only one opened), None for an
    undeclared one (PNG or JPEG by their bytes); any other ``image/*`` is a 415."""
    media = (part_type or "").split(";", 1)[0].strip().lower()
    if media in image.FORMATS:
        return media
    if media.startswith("image/"):
        raise UnsupportedMediaType(
            f"the uploaded file's Content-Type {shorten(media)} is not accepted; upload PNG (image/png) "
            "or JPEG (image/jpeg)"
        )
    return None


def decode(body: bytes | bytearray, content_type: str, limits: Limits) -> Decoded:
    fields: dict[str, str] = {}
    upload: tuple[str | None, bytes] | None = None
    for name, filename, part_type, data in split_parts(body, content_type):
        if name == "file":
            if upload is not None:
                raise Unprocessable("give one field 'file' (got several)")
            upload = (part_type, data)
        elif name in fields:
            raise Unprocessable(f"form field {shorten(name)} is given more than once")
        elif filename is not None:
            raise Unprocessable(
                f"unexpected file in form field {shorten(name)}; the tensor goes in field 'file'"
            )
        else:
            try:
                fields[name] = data.decode("utf-8")
            except UnicodeDecodeError:
                raise BadRequest(f"form field {shorten(name)} is not UTF-8 text") from None
    if upload is None:
        raise Unprocessable(
            "multipart/form-data needs a field 'file' holding the tensor (.npy, PNG, JPEG or JSON)"
        )
    part_type, data = upload
    family = _sniff(data, part_type)
    if family == "npy":
        return Decoded(npy.decode(data, limits), "npy", form=fields)
    if family == "image":
        return Decoded(image.decode(data, limits, _image_type(part_type)), "png", form=fields)
    inner = json.decode(data, limits)
    return Decoded(inner.tensor, "json", inner.params, form=fields)

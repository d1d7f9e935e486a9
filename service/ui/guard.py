"""An ASGI guard in front of the mounted Gradio app: what reaches Gradio is checked here first.

- **Files** (issue 9, finding 1). Gradio 6.31 copies any server file named in an event's data into its cache
  and then serves it, because ``processing_utils._check_allowed`` returns early while
  ``blocks.has_launched`` is False, and ``gr.mount_gradio_app`` never sets it. :func:`close_upstream_hole`
  sets the flag; independently of it, every request body but the login form's is searched for file
  objects, and one whose path is not a file in the upload directory is refused with 403 before Gradio sees
  it. ``/gradio_api/file=`` serves only the upload directory and the page's own assets; ``/proxy=`` and
  remote URLs are refused. Only ``/gradio_api/upload`` takes multipart bodies.
- **Cache size** (finding 5; issue 17, finding 7). An upload must state its length; it is refused with 413
  when it alone is over ``POOLSERVE_UI_CACHE_BYTES`` or over one client's share (an eighth), with 429 while
  that client's uploads still arriving hold its share, and with 503 while others hold the rest. Files are
  evicted only for bytes that arrive. No answer tells how full the cache is.
- **Unknown functions** (finding 12). An ``fn_index`` or API name the page does not have gets 404 here;
  Gradio answers both with a 500.
- **Gradio's 500s** (issue 18, bug 2). Gradio answers 500 both to inputs it cannot take and to a failure in
  the page's own code or its output. :func:`mark_page_code` tells them apart: a call refused before any of
  the page's functions ran is the client's mistake (422, with Gradio's reason); one that failed after is a
  bug (a logged 500 that names only the request id).
- **API keys**. With ``POOLSERVE_API_KEYS`` set, every route but the login page and its static files needs
  Gradio's login cookie or ``Authorization: Bearer <key>``; the rest get 401. Keys are checked by
  :func:`service.keys.key_problem`; wrong ones, at the login or in a Bearer header, are counted per client
  address by :class:`service.keys.AuthThrottle`, and an address locked out gets 429 (issue 17, finding 9).
- **Sessions** (issue 17, finding 10). Gradio's login tokens never expire; the guard notes when each was
  issued and forgets it after ``POOLSERVE_UI_SESSION_SECONDS``. The login cookies are ``SameSite=Lax`` (not
  Gradio's ``None``, which is for pages in other sites' iframes, and the page forbids framing) with a
  ``Max-Age`` of the session's length.
- **Cross-site writes** (issue 17, finding 10). A write (POST, PUT, PATCH, DELETE) whose ``Origin`` is
  neither the server's own (the request's scheme, or a trusted proxy's ``X-Forwarded-Proto``, and ``Host``)
  nor in ``POOLSERVE_CORS_ORIGINS`` gets 403.
  A write without ``Origin`` passes: scripts and ``gradio_client`` send none, and browsers always do.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from typing import Any

import anyio.to_thread
import gradio as gr
import orjson
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import error_body
from ..keys import AuthThrottle, client_address, encode_keys, key_problem
from .cache import CacheFull, ClientShareFull, UICache, UploadTooLarge

__all__ = ["BEARER_USER", "UIGuard", "close_upstream_hole", "file_paths", "key_checker", "mark_page_code"]

log = logging.getLogger("poolserve")

BEARER_USER = "api-key"  # the Gradio user name of requests that came with a Bearer key

# Reachable without logging in: the login page itself, its form, and Gradio's static front end.
_PUBLIC_EXACT = frozenset(
    {
        ("GET", "/"),
        ("HEAD", "/"),
        ("POST", "/login"),
        ("POST", "/login/"),
        ("GET", "/logout"),
        ("GET", "/theme.css"),
        ("GET", "/gradio_api/theme.css"),
        ("GET", "/favicon.ico"),
        ("GET", "/robots.txt"),
        ("GET", "/manifest.json"),
        ("GET", "/pwa_icon"),
    }
)
_PUBLIC_PREFIXES = ("/assets/", "/static/", "/svelte/", "/pwa_icon/")

_CALL = re.compile(r"^/gradio_api/(?:call/v2|call|run|api)/(?P<name>[^/]+)/?$")
_RESULT = re.compile(r"^/gradio_api/call/(?:v2/)?(?P<name>[^/]+)/[^/]+/?$")
_FILE_PREFIXES = ("/gradio_api/file=", "/gradio_api/file/")
_UPLOAD = ("/gradio_api/upload", "/gradio_api/upload/")
_API_INFO = re.compile(rb"window\.gradio_api_info = .*?;</script>", re.DOTALL)
_NO_API_INFO = b'window.gradio_api_info = {"named_endpoints": {}, "unnamed_endpoints": {}};</script>'
_NAME_SHOWN = 60  # characters of a client-supplied name or path echoed in a message
_WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_TOKEN_COOKIE = b"access-token-"  # Gradio's login cookies: access-token[-unsecure]-<app's cookie id>

# Set by the guard around Gradio's login route, which calls the ``auth`` callable with a user name and a
# password only: how that callable reports a wrong key for the request's client address.
_ON_WRONG_KEY: ContextVar[Callable[[], None] | None] = ContextVar("poolserve_on_wrong_key", default=None)


def close_upstream_hole(blocks: gr.Blocks) -> None:
    """Gradio 6.31 workaround: mark mounted ``blocks`` as launched, so ``_check_allowed`` checks paths.

    ``gr.mount_gradio_app`` leaves ``has_launched`` False, and ``processing_utils._check_allowed`` returns
    without checking anything while it is. ``tests/service/test_ui_security.py`` pins the upstream
    behaviour; when that test fails, Gradio sets the flag itself and this line can go (the guard stays).
    """
    blocks.has_launched = True


class _Call:
    """One UI call through the guard: whether it reached any of the page's own functions."""

    reached = False


# Set by the guard around a call; Gradio runs the page's functions in threads that copy the context.
_THIS_CALL: ContextVar[_Call | None] = ContextVar("poolserve_ui_call", default=None)


def mark_page_code(blocks: gr.Blocks) -> None:
    """Wrap each of the page's functions (Gradio 6.31's ``blocks.fns``) so a call notes that it reached them.

    Gradio checks a call's inputs (count, choices, file data) before it calls the function, and answers a
    failure there or later with the same 500; only the mark tells the guard whose fault it was. The page's
    functions are plain ones: a coroutine or generator function is refused here rather than wrapped wrong
    (Gradio inspects the function for those).
    """

    def marked(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)  # Gradio reads the signature through __wrapped__
        def call(*args: Any, **kwargs: Any) -> Any:
            current = _THIS_CALL.get()
            if current is not None:
                current.reached = True
            return fn(*args, **kwargs)

        return call

    for block_fn in blocks.fns.values():
        fn = block_fn.fn
        if fn is None:
            continue  # a browser-only event (js=...)
        special = (inspect.iscoroutinefunction, inspect.isgeneratorfunction, inspect.isasyncgenfunction)
        if any(test(fn) for test in special):
            raise TypeError(f"page function {fn.__name__!r} is not a plain function: it can't be marked")
        block_fn.fn = marked(fn)


def key_checker(keys: Iterable[str]) -> Callable[[str, str], bool]:
    """Gradio's ``auth`` callable: any user name; the password must be one of ``keys``
    (:func:`service.keys.key_problem`, every key compared in constant time). A wrong one is reported to
    the guard, which counts it against the client's address."""
    encoded = encode_keys(keys)

    def check(username: str, password: str) -> bool:
        problem = key_problem(b"Bearer " + password.encode("utf-8", "replace"), encoded)
        if problem is not None and problem.wrong_key:
            report = _ON_WRONG_KEY.get()
            if report is not None:
                report()
        return problem is None

    return check


def file_paths(value: Any) -> Iterator[Any]:
    """The ``path`` of every file object in a decoded JSON value: any object with a ``path`` key or
    Gradio's file marker ``meta._type == "gradio.FileData"``."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            meta = item.get("meta")
            marked = isinstance(meta, dict) and meta.get("_type") == "gradio.FileData"
            if "path" in item or marked:
                yield item.get("path")
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _shown(text: str) -> str:
    return repr(text if len(text) <= _NAME_SHOWN else text[:_NAME_SHOWN] + "…")


def _inside(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


class _Refused(Exception):
    def __init__(self, status: int, detail: str, headers: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, list(headers)


class UIGuard:
    """Wraps the Gradio app mounted at ``/ui``; see the module docstring for what it checks."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        blocks: gr.Blocks,
        gradio_app: Any,
        cache: UICache,
        keys: Iterable[str] = (),
        served: Iterable[str] = (),
        max_json_bytes: int,
        throttle: AuthThrottle | None = None,
        trusted_proxies: Iterable[str] = (),
        origins: Iterable[str] = (),
        session_seconds: float = 12 * 3600.0,
    ) -> None:
        self.app = app
        self.blocks = blocks
        self.gradio_app = gradio_app
        self.cache = cache
        self.keys = encode_keys(keys)
        self.auth = bool(self.keys)
        self.throttle = throttle
        self.trusted_proxies = frozenset(trusted_proxies)
        self.origins = frozenset(o.strip().rstrip("/").lower() for o in origins)
        self.session_seconds = session_seconds
        self.clock: Callable[[], float] = time.monotonic  # tests pass time with a clock of their own
        self._issued: dict[str, float] = {}  # login token -> when it was issued (self.clock)
        self.uploads = os.path.realpath(gradio_app.uploaded_file_dir)
        self.served = [self.uploads, *(os.path.realpath(d) for d in served)]
        self.max_json_bytes = max_json_bytes
        self._bearer_token = secrets.token_urlsafe(24)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path = _route_path(scope)
        method = scope.get("method", "GET")
        try:
            if scope["type"] == "http" and method in _WRITES:
                self._check_origin(scope)
            login = method == "POST" and path.rstrip("/") == "/login"
            if self.auth and (login or not _public(method, path) or _header(scope, b"authorization")):
                self._check_throttle(scope)
            if self.auth and login:
                await self._log_in(scope, receive, send)
                return
            if self.auth and not _public(method, path):
                scope = self._authenticated(scope)
            elif self.auth and path == "/" and self._login(scope) is None:
                await self._login_page(scope, receive, send)
                return
            if scope["type"] == "websocket":
                await self.app(scope, receive, send)
                return
            if path.startswith("/gradio_api/proxy="):
                raise _Refused(403, "this page loads no remote apps: /gradio_api/proxy= is disabled")
            if path.startswith(_FILE_PREFIXES):
                self._check_served(path)
            elif method == "POST" and path in _UPLOAD:
                await self._upload(scope, receive, send)
                return
            elif method in ("POST", "PUT", "PATCH") and path.rstrip("/") != "/login":
                receive = await self._checked_body(scope, receive, path)
                await self._without_500(scope, receive, send, path)
                await anyio.to_thread.run_sync(self.cache.sweep_soon)  # results may have landed in the cache
                return
            elif method == "GET" and (_RESULT.match(path) or path == "/gradio_api/queue/data"):
                self._check_result_name(path)
                await self.app(scope, receive, send)
                await anyio.to_thread.run_sync(self.cache.sweep_soon)
                return
        except _Refused as refused:
            await _respond(scope, send, refused)
            return
        await self.app(scope, receive, send)

    # ---- API keys -----------------------------------------------------------------------------------------
    def _authenticated(self, scope: Scope) -> Scope:
        """:meth:`_login`'s scope, or 401."""
        logged_in = self._login(scope)
        if logged_in is None:
            raise _Refused(
                401,
                "the UI needs an API key: log in at /ui/ with the key as the password, "
                "or send Authorization: Bearer <key>",
                [("WWW-Authenticate", "Bearer")],
            )
        return logged_in

    def _login(self, scope: Scope) -> Scope | None:
        """``scope`` when it carries Gradio's login cookie; for a valid Bearer key, ``scope`` with a cookie
        Gradio's own checks accept; otherwise None."""
        cookie_id = self.gradio_app.cookie_id
        tokens = self.gradio_app.tokens
        headers = list(scope.get("headers", []))
        cookies: dict[str, str] = {}
        authorization = ""
        for name, value in headers:
            if name == b"cookie":
                cookies.update(cookie_parser(value.decode("latin-1")))
            elif name == b"authorization":
                authorization = value.decode("latin-1")
        for name in (f"access-token-{cookie_id}", f"access-token-unsecure-{cookie_id}"):
            token = cookies.get(name)
            if token and token in tokens and self._session_open(token):
                return scope
        if not authorization:
            return None
        problem = key_problem(authorization, self.keys)
        if problem is None:
            tokens[self._bearer_token] = BEARER_USER  # again after a /logout dropped it
            cookie = f"access-token-unsecure-{cookie_id}={self._bearer_token}".encode()
            headers = [(n, v) for n, v in headers if n != b"cookie"] + [(b"cookie", cookie)]
            return {**scope, "headers": headers}
        if problem.wrong_key:
            self._wrong_key(scope, "UI request")
        return None

    # ---- the throttle on guessing, sessions, origins ----------------------------------------------------
    def _client(self, scope: Scope) -> str:
        peer = (scope.get("client") or (None,))[0]
        forwarded = [v.decode("latin-1") for n, v in scope.get("headers", []) if n == b"x-forwarded-for"]
        return client_address(peer, ",".join(forwarded), self.trusted_proxies)

    def _check_throttle(self, scope: Scope) -> None:
        """429 while the client's address is locked out for guessing keys (HTTP's rule, service.keys)."""
        if self.throttle is None:
            return
        client = self._client(scope)
        wait = self.throttle.retry_after(client)
        if wait is not None:
            log.warning("UI request %s from %s: refused, too many wrong API keys", _request_id(scope), client)
            raise _Refused(
                429,
                f"too many wrong API keys from this address; retry after {wait} s",
                [("Retry-After", str(wait))],
            )

    def _wrong_key(self, scope: Scope, what: str) -> None:
        client = self._client(scope)
        log.warning("%s %s from %s: wrong API key refused", what, _request_id(scope), client)
        if self.throttle is not None:
            self.throttle.failed(client)

    async def _log_in(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Gradio's login, with wrong keys counted and its session cookies noted and made Lax."""

        async def issued(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": self._session_cookies(message.get("headers", []))}
            await send(message)

        reset = _ON_WRONG_KEY.set(lambda: self._wrong_key(scope, "UI login"))
        try:
            await self.app(scope, receive, issued)
        finally:
            _ON_WRONG_KEY.reset(reset)

    def _session_cookies(self, headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """The login response's headers, its token cookies noted as issued now and rewritten: SameSite=Lax
        and a Max-Age of the session's length."""
        out = []
        now = self.clock()
        for name, value in headers:
            if name.lower() == b"set-cookie" and value.startswith(_TOKEN_COOKIE):
                pair, *attributes = (part.strip() for part in value.split(b";"))
                self._issued[pair.partition(b"=")[2].decode("latin-1")] = now
                kept = [
                    a for a in attributes if a.split(b"=")[0].strip().lower() not in (b"samesite", b"max-age")
                ]
                kept += [b"SameSite=Lax", b"Max-Age=%d" % max(1, round(self.session_seconds))]
                value = b"; ".join([pair, *kept])
            out.append((name, value))
        self._forget_expired(now)
        return out

    def _session_open(self, token: str) -> bool:
        """Whether the login ``token`` was issued here less than ``session_seconds`` ago; an expired or
        unknown one is dropped from Gradio's tokens, so Gradio refuses it too."""
        issued = self._issued.get(token)
        if issued is not None and self.clock() - issued < self.session_seconds:
            return True
        self._issued.pop(token, None)
        if token != self._bearer_token:
            self.gradio_app.tokens.pop(token, None)
        return False

    def _forget_expired(self, now: float) -> None:
        for token in [t for t, issued in self._issued.items() if now - issued >= self.session_seconds]:
            del self._issued[token]
            self.gradio_app.tokens.pop(token, None)

    def _check_origin(self, scope: Scope) -> None:
        """403 for a write from another site: its Origin is neither this server's nor a CORS origin."""
        origin = _header(scope, b"origin")
        if origin is None:
            return
        host = (_header(scope, b"host") or "").lower()
        schemes = {str(scope.get("scheme", "http"))}
        peer = (scope.get("client") or (None,))[0]
        if peer in self.trusted_proxies:  # a TLS proxy that uvicorn was not told to trust says https
            schemes.add((_header(scope, b"x-forwarded-proto") or "").split(",")[0].strip())
        seen = origin.strip().rstrip("/").lower()
        if seen not in {f"{scheme.lower()}://{host}" for scheme in schemes} and seen not in self.origins:
            raise _Refused(
                403,
                f"cross-site write refused: Origin {_shown(origin)} is neither this server's nor listed in "
                "POOLSERVE_CORS_ORIGINS",
            )

    async def _login_page(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Gradio's login page without the API description it embeds (endpoint and parameter names are
        for logged-in users). Asked for uncompressed, so that it can be edited."""
        headers = [(n, v) for n, v in scope.get("headers", []) if n != b"accept-encoding"]
        start: Message | None = None
        chunks: list[bytes] = []

        async def edit(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
                return
            if message["type"] != "http.response.body" or start is None:
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = _API_INFO.sub(_NO_API_INFO, b"".join(chunks), count=1)
            kept = [(n, v) for n, v in start.get("headers", []) if n.lower() != b"content-length"]
            await send({**start, "headers": [*kept, (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})

        await self.app({**scope, "headers": headers}, receive, edit)

    # ---- files --------------------------------------------------------------------------------------------
    def _is_upload(self, value: Any) -> bool:
        """True for the path of a regular file in the upload directory (symlinks resolved)."""
        if not isinstance(value, str) or not value or "\x00" in value or "://" in value:
            return False
        real = os.path.realpath(value)
        return _inside(real, self.uploads) and real != self.uploads and os.path.isfile(real)

    def _check_served(self, path: str) -> None:
        name = path[len("/gradio_api/file") :]
        name = name[1:] if name.startswith("=") else name
        refused = _Refused(
            403, f"file not allowed: {_shown(name)}; only uploads and the page's own files are served"
        )
        if not name or "\x00" in name or "://" in name:
            raise refused
        real = os.path.realpath(name)
        if not any(_inside(real, d) for d in self.served) or not os.path.isfile(real):
            raise refused

    def _check_files(self, data: Any) -> None:
        for value in file_paths(data):
            if not self._is_upload(value):
                shown = _shown(value) if isinstance(value, str) else repr(type(value).__name__)
                raise _Refused(
                    403,
                    f"file not allowed: {shown} is not a file uploaded to this server (or it has expired); "
                    "upload it with POST /ui/gradio_api/upload and pass the path that returns",
                )

    # ---- functions ----------------------------------------------------------------------------------------
    def _fns(self, body: Any) -> dict[int, Any]:
        """The page's functions, and those a session rendered for itself (``gr.render``), as Gradio's own
        lookup sees them."""
        fns: dict[int, Any] = dict(self.blocks.fns)
        session = body.get("session_hash") if isinstance(body, dict) else None
        holder = getattr(self.gradio_app, "state_holder", None)
        if isinstance(session, str) and holder is not None and session in holder:
            fns.update(holder[session].blocks_config.fns)
        return fns

    def _check_fn(self, path: str, body: Any) -> None:
        fn_index = body.get("fn_index") if isinstance(body, dict) else None
        if fn_index is not None:
            index = _as_index(fn_index)
            if index is None:
                raise _Refused(422, f"fn_index must be an integer (got {_shown(str(fn_index))})")
            fns = self._fns(body)
            if index not in fns:
                ids = sorted(fns)
                raise _Refused(
                    404, f"no UI function with fn_index {index}; they run from {ids[0]} to {ids[-1]}"
                )
            return
        match = _CALL.match(path)
        if match:
            self._check_name(match["name"], self._fns(body))
        elif path.rstrip("/") == "/gradio_api/queue/join":
            raise _Refused(422, "fn_index is required to join the queue")

    def _check_result_name(self, path: str) -> None:
        match = _RESULT.match(path)
        if match:
            self._check_name(match["name"], self.blocks.fns)

    def _check_name(self, name: str, fns: dict[int, Any]) -> None:
        names = sorted({fn.api_name for fn in fns.values() if isinstance(fn.api_name, str)})
        if name not in names:
            raise _Refused(404, f"no UI endpoint named {_shown(name)}; known: {', '.join(names)}")

    async def _without_500(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        """Run a call; a 500 from Gradio for inputs it could not take becomes 422 with its reason.

        Gradio answers 500 to a call whose inputs it cannot take (too few values, a value a component
        rejects, an unknown argument or component), before any of the page's functions runs. A 500 after
        one ran (:func:`mark_page_code`) is a bug in the page's code or its output: logged with the request
        id, and answered 500 naming only the request id."""
        swapped = False
        started = False
        body: list[bytes] = []

        async def watch(message: Message) -> None:
            nonlocal swapped, started
            if message["type"] == "http.response.start" and not started and message["status"] == 500:
                swapped = True
                return
            if swapped:
                if message["type"] == "http.response.body":
                    body.append(message.get("body", b""))
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        call = _Call()
        token = _THIS_CALL.set(call)
        reason = ""
        try:
            await self.app(scope, receive, watch)
        except Exception as error:
            if started:
                raise
            if call.reached:
                rid = _request_id(scope)
                log.error("UI request %s (%s) failed in the page's code", rid, path, exc_info=True)
                await _respond(scope, send, _internal(scope))
                return
            log.warning("UI request %s failed; answered 422", path, exc_info=True)
            swapped, reason = True, f"{type(error).__name__}: {error}"
        finally:
            _THIS_CALL.reset(token)
        if not swapped:
            return
        if not reason:
            try:
                reason = str(orjson.loads(b"".join(body)).get("error") or "")
            except (orjson.JSONDecodeError, AttributeError):
                reason = ""
        if call.reached:
            log.error(
                "UI request %s (%s): Gradio answered 500 after the page's code ran: %s",
                _request_id(scope),
                path,
                reason[:300],
            )
            await _respond(scope, send, _internal(scope))
            return
        log.warning("UI request %s: Gradio answered 500 (%s); answered 422", path, reason[:300])
        reason = re.sub(r" object at 0x[0-9a-f]+", "", " ".join(reason.split()))[:300] or "unknown error"
        detail = f"the UI could not process this request: {reason}"
        await _respond(scope, send, _Refused(422, detail))

    # ---- bodies -------------------------------------------------------------------------------------------
    async def _checked_body(self, scope: Scope, receive: Receive, path: str) -> Receive:
        """Read the body (within max_json_bytes), check its file objects and function, and return a
        ``receive`` that replays it."""
        if _media_type(scope).startswith("multipart/"):
            raise _Refused(415, "the UI takes files only through POST /ui/gradio_api/upload")
        length = _content_length(scope)
        if length is not None and length > self.max_json_bytes:
            raise _Refused(413, self._too_large(length))
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Refused(400, "the client went away before the body arrived")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_json_bytes:
                raise _Refused(413, self._too_large(size))
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            data = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            data = None  # not JSON: Gradio finds no event data in it either, and answers 422
        self._check_files(data)
        self._check_fn(path, data)
        return _replay(body, receive)

    def _too_large(self, size: int) -> str:
        return (
            f"UI request body of {size} bytes is over the limit of {self.max_json_bytes} bytes "
            "(POOLSERVE_MAX_JSON_BYTES)"
        )

    async def _upload(self, scope: Scope, receive: Receive, send: Send) -> None:
        length = _content_length(scope)
        if length is None:
            raise _Refused(411, "uploads to the UI must state their Content-Length")
        client = self._client(scope)
        try:
            upload = await anyio.to_thread.run_sync(self.cache.reserve, length, client)
        except UploadTooLarge as error:
            # The answer names the setting, never the cache's sizes (issue 17, finding 7).
            log.info("UI upload %s from %s refused: %s", _request_id(scope), client, error)
            whole = length > self.cache.max_bytes
            limit = "the UI cache limit" if whole else "one client's share of the UI cache"
            setting = "POOLSERVE_UI_CACHE_BYTES" if whole else "POOLSERVE_UI_CACHE_BYTES / 8"
            raise _Refused(413, f"upload of {length} bytes is over {limit} ({setting})") from None
        except ClientShareFull as error:
            log.warning("UI upload %s from %s refused: %s", _request_id(scope), client, error)
            detail = (
                "this client's uploads still arriving hold its share of the UI cache; try again when done"
            )
            raise _Refused(429, detail, [("Retry-After", "5")]) from None
        except CacheFull as error:
            log.warning("UI upload %s from %s refused: %s", _request_id(scope), client, error)
            raise _Refused(503, "the UI cache is busy; try again shortly", [("Retry-After", "5")]) from None

        async def counted() -> Message:
            message = await receive()
            if message["type"] == "http.request" and self.cache.arrived(
                upload, len(message.get("body", b""))
            ):
                await anyio.to_thread.run_sync(self.cache.make_room)  # for the bytes that came, no more
            return message

        try:
            await self.app(scope, counted, send)
        finally:
            await anyio.to_thread.run_sync(self.cache.release, upload)


def _route_path(scope: Scope) -> str:
    """The path inside the mount (``/`` for the page itself)."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path or "/"


def _public(method: str, path: str) -> bool:
    if method == "HEAD":
        method = "GET"
    return (method, path) in _PUBLIC_EXACT or (method == "GET" and path.startswith(_PUBLIC_PREFIXES))


def _internal(scope: Scope) -> _Refused:
    """The 500 of a bug: the request id, nothing internal (as :func:`service.errors.describe` answers)."""
    return _Refused(500, f"internal server error (request id {_request_id(scope)})")


def _request_id(scope: Scope) -> str:
    return str(scope.get("state", {}).get("request_id", "-"))


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _media_type(scope: Scope) -> str:
    return (_header(scope, b"content-type") or "").split(";", 1)[0].strip().lower()


def _content_length(scope: Scope) -> int | None:
    text = _header(scope, b"content-length")
    if text is None or not text.strip().isdecimal():
        return None
    return int(text)


def _as_index(value: Any) -> int | None:
    """``value`` as pydantic's lax mode reads an int, or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d{1,18}\s*", value):
        return int(value)
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # later calls wait for the disconnect, as the server's receive does

    return replay


async def _respond(scope: Scope, send: Send, refused: _Refused) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008, "reason": refused.detail[:120]})
        return
    body = error_body("detail", refused.detail)  # under 4 KiB, whatever the detail
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in refused.headers]
    await send({"type": "http.response.start", "status": refused.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})

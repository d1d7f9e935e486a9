"""Service settings from the environment (prefix ``POOLSERVE_``), read once and cached.

Tests build their own :class:`Settings` and pass it to ``create_app``; ``get_settings.cache_clear()``
re-reads the environment.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .logs import check_format, check_level

__all__ = ["MIN_KEY_LENGTH", "Settings", "get_settings"]

MIN_KEY_LENGTH = 16  # characters of an API key: short ones can be guessed, throttle or not


class Settings(BaseSettings):
    """Every knob of the service; each field is also ``POOLSERVE_<NAME>`` in the environment."""

    # hide_input_in_errors: a start-up error must not print POOLSERVE_API_KEYS; the validators below name
    # the offending value themselves where it is not a secret.
    model_config = SettingsConfigDict(
        env_prefix="POOLSERVE_", extra="ignore", frozen=True, hide_input_in_errors=True
    )

    device: str = Field(default="auto", description="auto (CUDA when available), cpu, cuda or cuda:N.")
    max_body_bytes: Annotated[int, Field(ge=1)] = Field(
        default=64 * 1024 * 1024, description="Largest request body; counted while it streams in."
    )
    max_elements: Annotated[int, Field(ge=1)] = Field(
        default=2**24, description="Largest input tensor, in elements."
    )
    max_image_pixels: Annotated[int, Field(ge=1)] = Field(
        default=4096 * 4096, description="Largest image (width × height), checked before it is decoded."
    )
    max_concurrency: Annotated[int, Field(ge=1)] = Field(
        default=4,
        description="Torch worker threads: requests (or batches of small ones) decoded, pooled and "
        "encoded at once, the UI's included; the rest wait their turn in a queue.",
    )
    torch_threads: Annotated[int, Field(ge=1)] | None = Field(
        default=None,
        description="torch intra-op threads (torch.set_num_threads) shared by the requests running at "
        "once: one large request gets them all, two get half each, a small one (under 64 KiB) one. "
        "Unset: torch's default, the core count.",
    )
    reuse_freed_memory: bool = Field(
        default=True,
        description="Keep freed large buffers for later requests (glibc mallopt) instead of returning them "
        "to the kernel, so each request's body-sized buffers don't page-fault afresh; the process keeps "
        "its peak heap. See service.memory.",
    )
    max_json_bytes: Annotated[int, Field(ge=1)] = Field(
        default=8 * 1024 * 1024,
        description="Largest JSON request body (application/json): parsing expands it several times in "
        "memory, so it has a limit of its own, well below max_body_bytes.",
    )
    max_scratch_elements: Annotated[int, Field(ge=1)] = Field(
        default=2**27,
        description="Most working memory, in 4-byte units, one request's operator may need beyond its input "
        "and output (stochastic pooling's blocks: at most twice the input, so the default admits the "
        "largest float64 input); a request that would need more gets 413.",
    )
    max_work: Annotated[int, Field(ge=1)] = Field(
        default=2**33,
        description="Most window visits one request may cost: output elements × window elements (an lp or "
        "gem visit counts 20, for the power its overflow-safe form may take per visit). Bounds the CPU or "
        "GPU time a small request can demand with a large overlapping window; over it: 413.",
    )
    body_timeout: Annotated[float, Field(gt=0)] = Field(
        default=30.0,
        description="Seconds a request's body may take to arrive in full; past that the answer is 408 and "
        "the connection is closed.",
    )
    header_timeout: Annotated[float, Field(gt=0)] = Field(
        default=10.0,
        description="Seconds a connection may take to send a complete request head (line and headers); "
        "past that it is closed. Idle keep-alive connections are closed after 5 s.",
    )
    max_header_bytes: Annotated[int, Field(ge=1024)] = Field(
        default=64 * 1024, description="Largest request head (request line and headers); over it: 431."
    )
    drain_seconds: Annotated[float, Field(ge=0)] = Field(
        default=0.0,
        description="On SIGTERM: seconds during which /ready answers 503 while requests are still served, "
        "so load balancers stop sending new ones; then the listener closes, in-flight requests finish, and "
        "the process exits 0. Set it to a little over the readiness probe's period in a cluster.",
    )
    api_keys: str = Field(
        default="",
        repr=False,
        description="Comma-separated API keys, each of 16 characters or more. When set, every route but "
        "the health probes needs `Authorization: Bearer <key>`; the UI asks for a key as its password. "
        "Empty: no authentication. A value that holds no key (only commas or blanks) stops start-up.",
    )
    max_queue: Annotated[int, Field(ge=0)] = Field(
        default=256,
        description="Requests that may wait for a torch worker; one more gets 503 with Retry-After.",
    )
    request_timeout: Annotated[float, Field(gt=0)] = Field(
        default=30.0,
        description="Seconds a request may wait for a torch worker, and again seconds it may run in one; "
        "past either it gets 503 instead of a late answer (a worker still running is replaced, its result "
        "dropped).",
    )
    max_stuck_workers: Annotated[int, Field(ge=0)] | None = Field(
        default=None,
        description="Worker threads that may be stuck at once on requests past request_timeout while a "
        "replacement takes new work (a thread in C code can't be stopped). Past it a stuck thread is not "
        "replaced and capacity drops until one finishes. Unset: max_concurrency.",
    )
    cors_origins: str = Field(
        default="",
        description="Comma-separated origins allowed by CORS (`*` for any). Unset: no CORS headers. The "
        "origins listed (not `*`) may also write to the page (/ui), besides the server's own.",
    )
    ui_cache_bytes: Annotated[int, Field(ge=0)] = Field(
        default=1024**3,
        description="Most bytes the UI's upload cache (GRADIO_TEMP_DIR) holds; the oldest files go first.",
    )
    ui_cache_max_age: Annotated[float, Field(gt=0)] = Field(
        default=3600.0, description="Seconds a file stays in the UI's upload cache."
    )
    # -- Open Inference Protocol over gRPC (issue 11) --
    grpc_port: Annotated[int, Field(ge=0, le=65535)] | None = Field(
        default=None,
        description="Serve the Open Inference Protocol's gRPC service (KServe v2) on this port, in the same "
        "process; unset: no gRPC. 8001 is Triton's convention.",
    )
    grpc_host: str = Field(
        default="127.0.0.1",
        description="Address the gRPC service binds (0.0.0.0 in a container, like the HTTP --host).",
    )
    # -- end of issue 11's settings --
    # -- limits of security round 2: gRPC streams, responses, connections, the page, logging --
    grpc_max_streams: Annotated[int, Field(ge=1)] = Field(
        default=100,
        description="Most concurrent gRPC streams per connection, advertised as HTTP/2 "
        "SETTINGS_MAX_CONCURRENT_STREAMS.",
    )
    grpc_idle_seconds: Annotated[float, Field(gt=0)] = Field(
        default=300.0,
        description="Seconds a gRPC connection may stay without a call before it is closed (HTTP/2 GOAWAY).",
    )
    grpc_max_buffered_bytes: Annotated[int, Field(ge=1)] = Field(
        default=256 * 1024 * 1024,
        description="Most bytes buffered, across all gRPC connections, for messages still arriving. A "
        "message is read only once max_body_bytes (the most it can be) of this is reserved for it, so "
        "this over max_body_bytes messages arrive at once; a call that gets no room within a second is "
        "refused with RESOURCE_EXHAUSTED.",
    )
    max_response_bytes: Annotated[int, Field(ge=1)] = Field(
        default=64 * 1024 * 1024,
        description="Largest answer, decided from the output's shape and the encoding before encoding; "
        "over it: 413 (ask for .npy, or pool with a larger window).",
    )
    max_jpeg_scans: Annotated[int, Field(ge=1)] = Field(
        default=64,
        description="Most scans (SOS markers) a JPEG may hold; each progressive scan costs a pass over "
        "the whole image when decoding, so more is refused with 422 before decoding.",
    )
    max_connections: Annotated[int, Field(ge=1)] | None = Field(
        default=None,
        description="Most open HTTP connections (the page's event streams included); at the cap the "
        "connection idle longest (no head yet, a head or body still arriving, or kept alive), else the "
        "oldest event stream, is closed to admit a new one, else the new one gets 503. Unset: "
        "min(4096, N − max(64, N/4)) for the process's file limit N, which poolserve raises to its hard "
        "limit at start: a quarter stays for gRPC, the page's cache and other files.",
    )
    trusted_proxies: str = Field(
        default="",
        description="Comma-separated addresses of reverse proxies whose X-Forwarded-For names the client "
        "(for the key-guessing throttle and the upload-cache share). Unset: the connection's peer is the "
        "client.",
    )
    ui_session_seconds: Annotated[float, Field(gt=0)] = Field(
        default=12 * 3600.0,
        description="Seconds a login to the page lasts (also its cookie's Max-Age); then the page asks "
        "for the key again.",
    )
    log_level: str = Field(
        default="INFO",
        description="Level of poolserve's and uvicorn's log lines: DEBUG, INFO, WARNING, ERROR or CRITICAL "
        "(other libraries log warnings and worse). `poolserve --log-level` overrides it.",
    )
    log_format: str = Field(
        default="text",
        description="text (one readable line per event) or json (one JSON object per line), for every line "
        "the server writes, uvicorn's access log included.",
    )
    # -- end of security round 2's settings --
    ui: bool = Field(
        default=True,
        description="Serve the page at /ui (Gradio) on the same server. Off: an API-only server, for "
        "deployments that serve no page; Gradio is then not even imported, which takes two thirds of the "
        "start-up time and about 80 MB of memory off, and / points to the API docs.",
    )
    opentelemetry: bool = Field(
        default=False,
        description="FastAPI's native OpenTelemetry spans, metrics and logs, sent to the providers you "
        "configure (opentelemetry-instrument, OTEL_*). Off by default: poolserve's own metrics are at "
        "/metrics, and FastAPI looks the providers up on every request, a tenth of a small request's time "
        "on the event loop.",
    )

    @property
    def api_key_list(self) -> tuple[str, ...]:
        """The API keys, blanks dropped; empty when authentication is off."""
        return _split(self.api_keys)

    @property
    def cors_origin_list(self) -> tuple[str, ...]:
        return _split(self.cors_origins)

    @property
    def trusted_proxy_list(self) -> tuple[str, ...]:
        """Addresses of the reverse proxies whose X-Forwarded-For is believed; empty: none."""
        return _split(self.trusted_proxies)

    @field_validator("api_keys")
    @classmethod
    def _keys_form(cls, value: str) -> str:
        # Empty is "keys off" (compose passes an unset variable as ""); anything else must hold keys, so a
        # stray "," or " " cannot turn authentication off unnoticed. The keys never enter the message.
        if value == "":
            return value
        keys = _split(value)
        if not keys:
            raise ValueError(
                "POOLSERVE_API_KEYS holds no key (only commas or blanks); leave it empty to turn keys off"
            )
        short = [str(i) for i, key in enumerate(keys, 1) if len(key) < MIN_KEY_LENGTH]
        if short:
            raise ValueError(
                f"POOLSERVE_API_KEYS: every key needs at least {MIN_KEY_LENGTH} characters (shorter: "
                f"{'the key' if len(short) == 1 else 'the keys'} at {', '.join(short)} of {len(keys)})"
            )
        return value

    @field_validator("device")
    @classmethod
    def _device_form(cls, value: str) -> str:
        value = value.strip().lower()
        if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
            return value
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N (got {value!r})")

    @field_validator("log_level")
    @classmethod
    def _log_level_name(cls, value: str) -> str:
        return check_level(value)

    @field_validator("log_format")
    @classmethod
    def _log_format_name(cls, value: str) -> str:
        return check_format(value)


def _split(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read from the environment on first use."""
    return Settings()

"""Service settings from the environment (prefix ``POOLSERVE_``), read once and cached.

Tests build their own :class:`Settings` and pass it to ``create_app``; ``get_settings.cache_clear()``
re-reads the environment.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "get_settings"]


class Settings(BaseSettings):
    """Every knob of the service; each field is also ``POOLSERVE_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="POOLSERVE_", extra="ignore", frozen=True)

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
        description="torch intra-op threads per request (torch.set_num_threads); unset keeps torch's "
        "default. On CPU, 1 with max_concurrency near the core count avoids thread oversubscription.",
    )
    reuse_freed_memory: bool = Field(
        default=True,
        description="Keep freed large buffers for later requests (glibc mallopt) instead of returning them "
        "to the kernel, so each request's body-sized buffers don't page-fault afresh; the process keeps "
        "its peak heap. See service.memory.",
    )
    bench_routes: bool = Field(
        default=False,
        description="Add /bench/constant and /bench/echo, the baseline routes of bench/service.py (not for "
        "production).",
    )

    @field_validator("device")
    @classmethod
    def _device_form(cls, value: str) -> str:
        value = value.strip().lower()
        if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
            return value
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N (got {value!r})")


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read from the environment on first use."""
    return Settings()

"""Routers, one per resource: pooling, method discovery, and operations (health, readiness, metrics)."""

from __future__ import annotations

from .info import info_router
from .pool import pool_routes

__all__ = ["info_router", "pool_routes"]

"""Service settings, read from the environment (``REACH_*``) by pydantic-settings."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Everything the service can be configured with.

    Every field is read from the environment variable ``REACH_<FIELD>`` (case-insensitive), e.g.
    ``REACH_STORE=/data/store REACH_TOKEN=s3cret REACH_CORS_ORIGINS=https://a.example,https://b.example``.
    """

    model_config = SettingsConfigDict(env_prefix="REACH_", extra="ignore", frozen=True)

    store: Path = Field(default=Path("store"), description="Path of the value-function store (read only).")
    token: str | None = Field(
        default=None,
        description="Bearer token required on the /v1 endpoints and /metrics (not on /healthz, /readyz and the API "
        "docs); unset = no auth.",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated origins allowed by CORS; empty = CORS off.",
    )
    max_points: int = Field(default=1_000_000, ge=1, description="Most states accepted in one query.")
    max_body_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024, description="Largest request body accepted, in bytes."
    )
    reload_interval: float = Field(
        default=1.0,
        ge=0.0,
        description="Seconds between checks of a value function's published version (0 = every request).",
    )
    preload: bool = Field(default=True, description="Load every value function at start-up.")
    threadpool_points: int = Field(
        default=4096,
        ge=1,
        description="Batches with at least this many states are evaluated in worker threads, not on the event loop "
        "(split in up to `eval_threads` parts of at least half this size; the kernel releases the GIL).",
    )
    eval_threads: int = Field(
        default_factory=lambda: os.cpu_count() or 1,
        ge=1,
        description="Most worker threads one large batch is split across (default: the number of CPUs).",
    )
    otel: bool = Field(default=False, description="Keep FastAPI's built-in OpenTelemetry instrumentation on.")

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, v: object) -> object:
        if isinstance(v, str):
            return [o.strip() for o in v.split(",") if o.strip()]
        return v

    @field_validator("token", mode="before")
    @classmethod
    def _empty_token_is_none(cls, v: object) -> object:
        if isinstance(v, str) and not v.strip():
            return None
        return v

"""All service settings in one typed place, read from the environment with the prefix CANDOR_."""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _default_data_dir() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "candor"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CANDOR_", env_file=".env", extra="ignore")

    database_url: str = Field(
        "postgresql+psycopg://postgres@127.0.0.1:5432/candor",
        description="SQLAlchemy URL of the database (PostgreSQL; SQLite only in embedded mode)",
    )
    broker_url: str = Field("redis://127.0.0.1:6379/0", description="Celery broker (Redis)")
    embedded: bool = Field(False, description="SQLite + an in-process worker; no PostgreSQL, no Redis")
    data_dir: Path = Field(default_factory=_default_data_dir, description="embedded mode's database folder")
    device: str = Field("auto", description="torch device for workers and /predict: auto, cpu, cuda, cuda:1")
    max_batch_items: int = Field(500, ge=1, description="items in one POST /items batch")
    max_upload_bytes: int = Field(2 << 30, ge=1, description="largest accepted import upload")
    max_image_bytes: int = Field(20 << 20, ge=1, description="largest accepted single image")
    max_image_pixels: int = Field(
        40_000_000,
        ge=1,
        description="largest accepted image in pixels (width x height), read from the header before decoding; "
        "applies to uploads, imports, /predict and the workers",
    )
    max_predict_pixels: int = Field(
        256 << 20,
        ge=1,
        description="most pixels (width x height, summed over the images) one /predict request may bring; "
        "read from the headers before decoding (default: 256 one-megapixel images)",
    )
    max_json_bytes: int = Field(
        128 << 20,
        ge=1,
        description="largest request body of every route but ZIP imports (checked before it is buffered); "
        "fits a full POST /items batch of max_batch_items images averaging 190 KiB",
    )
    max_manifest_line_bytes: int = Field(16 << 20, ge=1, description="longest line of an imported manifest.jsonl")
    upload_read_timeout_seconds: float = Field(
        30.0, gt=0.0, description="a request whose body sends nothing for this long gets 408"
    )
    feature_chunk_size: int = Field(256, ge=1, description="images per featurisation task")
    backbone_cache_size: int = Field(2, ge=1, description="backbones kept warm per process (LRU)")
    classifier_cache_size: int = Field(16, ge=1, description="classifier artifacts kept in memory per process")
    idempotency_ttl_hours: int = Field(24, ge=1, description="how long Idempotency-Key responses are replayed")
    visibility_timeout: int = Field(6 * 3600, ge=60, description="Redis redelivery timeout; above the longest task")
    auth_cache_seconds: float = Field(
        10.0,
        ge=0.0,
        description="verified API keys are trusted this long; a classifier cached for /predict is looked up again "
        "after this long, so one deleted through another process stops answering within it",
    )
    ui_secret: str = Field(
        "",
        description="key that signs the web UI's session cookies and CSRF tokens; empty: a random key made once and "
        "kept in the database, shared by every API process",
    )
    ui_cookie_secure: bool = Field(False, description="mark the web UI's session cookie Secure (serve it over HTTPS)")
    ui_session_hours: float = Field(12.0, gt=0, description="how long a web UI sign-in lasts")
    progress_interval: float = Field(1.0, ge=0.0, description="seconds between progress/cancel checks in training")
    checkpoint_dirs: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="directories backbone checkpoint files may come from (os.pathsep-separated or a JSON list); "
        "empty: jobs may name no checkpoint file",
    )
    db_pool_timeout_seconds: float = Field(
        10.0, gt=0.0, description="seconds a request waits for a pooled database connection before a 503"
    )
    db_retry_after_seconds: int = Field(
        5, ge=1, description="Retry-After of the 503 answered while the database is down"
    )

    @field_validator("checkpoint_dirs", mode="before")
    @classmethod
    def _split_dirs(cls, value):
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [p for p in text.split(os.pathsep) if p.strip()]
        return value

    job_heartbeat_seconds: float = Field(
        10.0, gt=0.0, description="a working step renews its job's lease at least this often"
    )
    job_lease_seconds: float = Field(
        60.0, gt=0.0, description="a live job whose heartbeat is older than this is driven on by the reaper"
    )
    job_max_attempts: int = Field(3, ge=1, description="deliveries of a job (or a chunk) before it fails for good")
    reaper_interval_seconds: float = Field(15.0, gt=0.0, description="how often the reaper looks for stale jobs")
    db_retry_seconds: float = Field(
        60.0, ge=0.0, description="workers retry database errors with backoff for this long before giving up"
    )

    webhook_allow_private: bool = Field(
        False,
        description="webhook URLs may resolve to loopback and private addresses (link-local and cloud metadata "
        "addresses are refused whatever this says)",
    )
    webhook_timeout_seconds: float = Field(
        10.0, gt=0.0, description="a webhook request that has not answered within this many seconds has failed"
    )
    webhook_retry_seconds: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [30.0, 120.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0],
        min_length=1,
        description="waits before each retry of a failed webhook delivery (comma-separated seconds); one attempt "
        "plus one per value, then the delivery is given up",
    )
    public_url: str | None = Field(
        None,
        description="the address users reach this API at (https://candor.example.com); when set, webhook "
        "messages carry absolute links, else paths",
    )
    webhook_disable_after: int = Field(
        5,
        ge=0,
        description="an endpoint is disabled after this many deliveries in a row were given up (0: never); "
        "POST /v1/webhooks/{id}/enable turns it back on",
    )
    webhook_sweep_seconds: float = Field(
        30.0, gt=0.0, description="how often deliveries that are due (retries, lost messages) are sent again"
    )

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            raise ValueError(
                "CANDOR_PUBLIC_URL must be an http(s) URL without a query, such as https://candor.example.com"
            )
        return value.rstrip("/")

    labelstudio_allow_private: bool = Field(
        False,
        description="the Label Studio ML backend may fetch task images from loopback and private addresses (a Label "
        "Studio on the same host or network); link-local and cloud metadata addresses are refused whatever this says",
    )
    labelstudio_timeout_seconds: float = Field(
        15.0, gt=0.0, description="a task image Label Studio's ML backend fetches must arrive within this many seconds"
    )
    labelstudio_token_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        repr=False,
        description="Fernet keys, comma-separated, that encrypt the Label Studio tokens the ML backend's /setup "
        "stores: the first encrypts, every one decrypts (rotate by putting a new key first, then `candor "
        "labelstudio rekey`); empty: tokens are stored as given",
    )

    @field_validator("labelstudio_token_keys")
    @classmethod
    def _fernet_keys(cls, value: list[str]) -> list[str]:
        from cryptography.fernet import Fernet

        for n, key in enumerate(value, start=1):
            try:
                Fernet(key)
            except (ValueError, TypeError):
                raise ValueError(
                    f"key {n} of CANDOR_LABELSTUDIO_TOKEN_KEYS is not a Fernet key (32 url-safe base64 bytes; "
                    "make one with: python -c 'from cryptography.fernet import Fernet; "
                    "print(Fernet.generate_key().decode())')"
                ) from None
        return value

    @field_validator("webhook_retry_seconds", "labelstudio_token_keys", mode="before")
    @classmethod
    def _split_commas(cls, value):
        if isinstance(value, str):
            return [p for p in value.replace(" ", "").split(",") if p]
        return value

    @field_validator("webhook_retry_seconds")
    @classmethod
    def _positive_seconds(cls, value: list[float]) -> list[float]:
        if any(not 0 < v < 7 * 24 * 3600 for v in value):
            raise ValueError("every wait must be above 0 and below a week")
        return value

    @property
    def effective_database_url(self) -> str:
        if self.embedded and self.database_url.startswith("postgresql"):
            return f"sqlite:///{self.data_dir / 'candor.sqlite'}"
        return self.database_url

    def torch_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


@lru_cache
def get_settings() -> Settings:
    return Settings()

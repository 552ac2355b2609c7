"""Settings: environment variables ``CHARGEGRID_*`` over an optional TOML file over defaults.

The TOML file is named by ``CHARGEGRID_CONFIG`` (or ``--config`` on the command line); its keys are
the field names below, e.g. ``heartbeat_interval = 300``. Environment variables win over the file.
"""

from __future__ import annotations

import ipaddress
import json
import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./chargegrid.db"
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


class UnknownChargePointPolicy(StrEnum):
    """What the gateway does with a charge point identity it does not know (CONFORMANCE H4)."""

    REJECT = "reject"  # HTTP 404 before the upgrade
    PENDING = "pending"  # register it, answer its BootNotification with Pending
    ACCEPT = "accept"  # register it and accept it


class RegistrationStatus(StrEnum):
    """The answer a charge point's BootNotification gets (OCPP 1.6 §4.2, §7.45)."""

    ACCEPTED = "Accepted"
    PENDING = "Pending"
    REJECTED = "Rejected"


class TraceLevel(StrEnum):
    """What the per-charge-point OCPP message trace records (observability)."""

    OFF = "off"
    ERRORS = "errors"  # CALLERRORs both ways, the CALL each answers, frames ignored
    ALL = "all"  # every frame in and out


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"  # one JSON object per line (observability)


class Settings(BaseSettings):
    """Every setting of a chargegrid node. See docs/configuration.md."""

    model_config = SettingsConfigDict(env_prefix="CHARGEGRID_", extra="forbid")

    # Network
    host: str = "127.0.0.1"
    port: int = Field(default=8180, ge=0, le=65535)
    tls_certfile: Path | None = None
    tls_keyfile: Path | None = None
    # Security Profile 3 on the node's own TLS listener: every client must present a certificate
    # signed by one of these CAs (TLS-level CERT_REQUIRED). uvicorn does not hand the certificate
    # to the application, so its CN is not compared with the identity: see docs/deployment.md.
    tls_client_ca_file: Path | None = None

    # Behind a TLS-terminating proxy (docs/deployment.md): X-Forwarded-Proto and the client
    # certificate header are believed only from these addresses or networks; empty: from nobody.
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)
    client_cert_header: str = Field(default="X-SSL-Client-Cert", pattern=r"^[A-Za-z0-9-]+$")
    client_cert_ca_file: Path | None = None  # forwarded certificates must be issued by these CAs
    client_cert_organization: str | None = None  # Security Whitepaper A00.FR.404: subject O

    # Storage
    database_url: str = DEFAULT_DATABASE_URL
    sqlite_synchronous: str = Field(default="FULL", pattern="^(OFF|NORMAL|FULL|EXTRA)$")
    migrate_on_start: bool = True
    # PostgreSQL: bounds on a database that stops answering (store/database.py). The server's
    # statements are short; maintenance commands (rollups rebuild, retention) run without.
    database_connect_timeout: float = Field(default=5.0, gt=0)
    database_statement_timeout: float = Field(default=15.0, gt=0)

    # Group commit (DESIGN.md guarantee 1): a batch is written when it is this old or this large.
    commit_interval_ms: float = Field(default=4.0, gt=0, le=1000)
    commit_max_items: int = Field(default=1000, ge=1)
    commit_queue_limit: int = Field(default=50_000, ge=1)
    # The longest a charge point's message waits for its commit before it is answered with a
    # CALLERROR (store/group_commit.py): a stalled database must not hold every charge point.
    commit_wait_timeout: float = Field(default=10.0, gt=0)
    # SQLite: hourly/daily rollups of the values committed in this window are merged together
    # (metering/rollups.py, "Deferred merging"); 0 merges them in every batch, as PostgreSQL
    # always does.
    rollup_merge_interval_ms: float = Field(default=1000.0, ge=0, le=60_000)
    # SQLite: copy the write-ahead log into the database file this often, in a thread of its
    # own (store/sqlite_checkpoint.py) rather than in whichever commit fills it; 0: only
    # SQLite's automatic checkpoints.
    sqlite_checkpoint_interval: float = Field(default=1.0, ge=0, le=3600)

    # Charge point admission
    unknown_charge_points: UnknownChargePointPolicy = UnknownChargePointPolicy.REJECT
    heartbeat_interval: int = Field(default=300, gt=0)
    boot_retry_interval: int = Field(default=60, gt=0)
    reject_calls_before_accepted: bool = True

    # WebSocket transport
    ws_ping_interval: float | None = 30.0
    ws_ping_timeout: float | None = 30.0
    ws_max_size: int = Field(default=1024 * 1024, ge=1024)
    ws_per_message_deflate: bool = False
    # uvicorn's WebSocket protocol with ~8 KiB less per connection (gateway/uvicorn_protocol.py)
    ws_lean_protocol: bool = True
    handshake_timeout: float = Field(default=10.0, gt=0)

    # CSMS -> CP calls
    call_timeout: float = Field(default=30.0, gt=0)

    # Business rules
    authorize_concurrent_tx: bool = True  # CONFORMANCE A3: tag busy elsewhere -> ConcurrentTx
    liveness_flush_seconds: float = Field(default=1.0, gt=0)

    # Credential hashing
    auth_key_hash_iterations: int = Field(default=5_000, ge=1_000)

    log_level: str = "info"

    # Embedding: "module:function" callables run with the node at build time (docs/embedding.md)
    plugins: list[str] = Field(default_factory=list)

    # Event bus: in-process by default; Redis (redis://HOST:PORT/DB) for several nodes.
    bus_url: str | None = None
    bus_prefix: str = "chargegrid:"  # Redis channel names start with this
    node_id: str | None = None  # default: a random id per process
    # Scale-out (issue 8, with bus_url): a node's claim on a charge point lives this long
    # unless refreshed (every third of it); a crashed node's charge points show "not connected"
    # within about 3 TTLs. A routed command's requester waits call timeout + route margin.
    cluster_ownership_ttl: float = Field(default=15.0, ge=0.3)
    cluster_route_margin: float = Field(default=5.0, ge=0)
    cluster_redis_timeout: float = Field(default=1.0, gt=0)  # per Redis command of the cluster
    # Live statistics in Redis (with bus_url): a charge point's figures live this long unless
    # its node extends them (every third of it); a finished session's final figures this long.
    cluster_live_stats_ttl: float = Field(default=5.0, ge=0.3)
    cluster_live_stats_finished_ttl: float = Field(default=3600.0, gt=0)

    # Live streams (WebSocket /api/v1/live, Server-Sent Events)
    live_meter_values_interval: float = Field(default=0.0, ge=0)  # 0: every value, coalesced
    live_max_pending: int = Field(default=1000, ge=10)  # events a slow subscriber may owe
    live_keepalive_seconds: float = Field(default=15.0, gt=0)
    live_replay_buffer: int = Field(default=500, ge=0)  # events kept per channel for resuming
    live_replay_grace_seconds: float = Field(default=60.0, ge=0)
    live_stats_interval: float = Field(default=2.0, gt=0)  # fleet stats checked this often
    live_stats_publish_interval: float = Field(default=1.0, gt=0)  # per-CP live statistics

    # Observability: log format, and the OCPP message trace (a charge point's trace_level
    # overrides trace_default; rows older than trace_retention_hours are purged).
    log_format: LogFormat = LogFormat.TEXT
    trace_default: TraceLevel = TraceLevel.OFF
    trace_retention_hours: float = Field(default=72.0, gt=0)

    # Meter-value pipeline (issue 4): live statistics, alerts, rollups, retention.
    live_stats_window_seconds: float = Field(default=900.0, gt=0)  # the rolling window
    live_stats_stopped_sessions: int = Field(default=1000, ge=0)  # finished sessions kept
    alert_rules_file: Path | None = None  # TOML with [[rules]]; synced into the database at start
    alert_webhook_url: str | None = None  # POSTed every alert change as JSON
    alert_webhook_timeout: float = Field(default=5.0, gt=0)
    retention_raw_days: float = Field(default=30.0, gt=0)
    retention_hourly_days: float = Field(default=30.0, gt=0)
    retention_daily_days: float = Field(default=365.0, gt=0)
    retention_interval_seconds: float = Field(default=300.0, gt=0)  # how often a purge runs
    retention_batch_size: int = Field(default=2000, ge=1)  # rows per delete (one short write)
    history_raw_max_hours: float = Field(default=6.0, gt=0)  # longer spans use rollups
    history_hourly_max_days: float = Field(default=31.0, gt=0)  # longer spans use daily rollups

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.lower()
        if level not in LOG_LEVELS:
            raise ValueError(f"log_level must be one of {', '.join(LOG_LEVELS)}")
        return level

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _proxy_networks(cls, value: Any) -> Any:
        # The environment gives a string: "10.0.0.2,10.0.1.0/24" (or a JSON list).
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [item.strip() for item in text.split(",") if item.strip()]
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _valid_networks(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry.strip(), strict=False)
            except ValueError:
                raise ValueError(f"not an IP address or network: {entry!r}") from None
        return value

    @model_validator(mode="after")
    def _client_ca_needs_tls(self) -> Settings:
        if self.tls_client_ca_file is not None and self.tls_certfile is None:
            raise ValueError("tls_client_ca_file needs tls_certfile and tls_keyfile")
        return self

    @field_validator("bus_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("bus_url must be a redis://, rediss:// or unix:// URL")
        return value or None

    @field_validator("database_url")
    @classmethod
    def _known_driver(cls, value: str) -> str:
        if not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError(
                "database_url must start with sqlite+aiosqlite:// or postgresql+asyncpg://"
            )
        return value

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = settings_cls.model_config.get("toml_file") or os.environ.get(
            "CHARGEGRID_CONFIG"
        )
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(str(config_file))))
        return tuple(sources)


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Settings from, lowest first: defaults, the TOML file, the environment, ``overrides``."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    if config_file is None:
        return Settings(**clean)
    path = Path(config_file)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")

    class FileSettings(Settings):
        # The file is this call's alone: nothing leaks into os.environ or later Settings().
        model_config = SettingsConfigDict(**{**Settings.model_config, "toml_file": path})

    return FileSettings(**clean)

"""Typed settings read from KASVU_* environment variables; one object per process."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.runtime.catalog import UnknownService, entry
from services.runtime.natsaccess import NatsAccess, tls_context


def _addresses_in_environment() -> dict[str, str]:
    # The catalog, not this class, knows the services, so their KASVU_<NAME>_ADDRESS
    # variables cannot be fields; they are read with the rest, once, at start-up.
    return {k: v for k, v in os.environ.items() if k.startswith("KASVU_") and k.endswith("_ADDRESS")}


class Settings(BaseSettings):
    """Everything a Kasvu process needs to start; no secrets live in code.

    Defaults run the whole suite on one machine (SQLite files in the data folder,
    a local nats-server); production sets URLs for PostgreSQL and a NATS cluster.
    """

    model_config = SettingsConfigDict(env_prefix="KASVU_", extra="ignore")

    service: str = Field(default="", description="Which service this process runs; set by its entry point.")
    data_dir: Path = Path(".kasvu")
    database_url: str = Field(
        default="", description="SQLAlchemy async URL; default: a SQLite file per service."
    )
    nats_url: str = "nats://127.0.0.1:4222"
    nats_user: str = Field(default="", description="This process's NATS user; empty: anonymous.")
    nats_password: SecretStr = SecretStr("")
    nats_tls_ca: Path | None = Field(default=None, description="CA file that verifies the NATS servers.")
    nats_tls_cert: Path | None = Field(default=None, description="Client certificate, for mutual TLS.")
    nats_tls_key: Path | None = None
    nats_server_tls_cert: Path | None = Field(
        default=None, description="`kasvu run` only: nats-server's certificate; set, it serves TLS."
    )
    nats_server_tls_key: Path | None = None
    nats_server_tls_ca: Path | None = Field(
        default=None, description="`kasvu run` only: nats-server then requires client certificates."
    )
    grpc_address: str = Field(default="", description="host:port this service listens on.")
    http_address: str = "127.0.0.1:8080"
    token_public_key_file: Path | None = None
    token_private_key_file: Path | None = None
    revoked_tokens_file: Path | None = Field(
        default=None, description="Token ids no longer accepted, one per line (default: in the keys folder)."
    )
    log_level: str = "INFO"
    call_timeout_s: float = Field(default=10.0, gt=0, description="Deadline of every outbound call.")
    shutdown_grace_s: float = Field(default=5.0, ge=0)
    shutdown_drain_s: float = Field(
        default=2.0,
        ge=0,
        description="On SIGTERM, after in-flight calls: the most the relay's last pass may take to "
        "publish what they committed (0: no last pass).",
    )
    stream_replicas: int = Field(
        default=1, ge=1, le=5, description="JetStream replicas per stream (3 on a cluster)."
    )
    stream_max_age_days: float = Field(
        default=0,
        ge=0,
        description="History the service's stream keeps when created (0: all); alert streams replay from it.",
    )
    stream_max_bytes: int = Field(
        default=0, ge=0, description="Size cap of the stream when created (0: none)."
    )
    outbox_batch: int = Field(default=200, ge=1)
    write_batch: int = Field(
        default=128, ge=1, description="SQLite: most units of work committed in one transaction."
    )
    lease_ttl_s: float = Field(
        default=10.0, gt=0, description="How long the worker lease lasts unless renewed (relay, scheduler)."
    )
    worker_poll_s: float = Field(
        default=1.0, gt=0, description="How often the worker looks for due timers and unsent events."
    )
    consumer_batch: int = Field(default=64, ge=1)
    consumer_ack_wait_s: float = Field(
        default=5.0,
        gt=0,
        description="How long an unacknowledged event waits before redelivery; slow handlers send "
        "in-progress acks, so this only delays events whose consumer died.",
    )
    consumer_max_deliveries: int = Field(
        default=5, ge=1, description="Deliveries of a failing event before it becomes a dead letter."
    )
    bus_lag_s: float = Field(
        default=30.0, gt=0, description="Health reports events not flowing when one has waited this long."
    )
    max_event_bytes: int = Field(
        default=1024 * 1024 - 16 * 1024,
        gt=0,
        description="The largest event a change may produce (NATS's max_payload less room for headers); "
        "a change that would produce a larger one is refused.",
    )
    replica_id: str = Field(
        default="",
        description="Names this replica as a lease holder; stable across restarts (default: the host "
        "name), so a restarted replica takes its own lease back at once.",
    )
    gateway_streams_per_principal: int = Field(
        default=5, ge=1, description="Gateway: most event streams one caller may hold open at once."
    )
    crash_point: str = Field(
        default="",
        description="Fault injection for tests only: the process exits hard at this named point.",
    )
    _addresses: dict[str, str] = PrivateAttr(default_factory=_addresses_in_environment)

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError(f"unknown log level {value!r}")
        return level

    @model_validator(mode="after")
    def _nats_sign_in_is_whole(self) -> Settings:
        if self.nats_password.get_secret_value() and not self.nats_user:
            raise ValueError("KASVU_NATS_PASSWORD is set but KASVU_NATS_USER is not")
        if (self.nats_tls_cert is None) != (self.nats_tls_key is None):
            raise ValueError("KASVU_NATS_TLS_CERT and KASVU_NATS_TLS_KEY go together")
        if (self.nats_server_tls_cert is None) != (self.nats_server_tls_key is None):
            raise ValueError("KASVU_NATS_SERVER_TLS_CERT and KASVU_NATS_SERVER_TLS_KEY go together")
        return self

    def nats_access(self) -> NatsAccess:
        """The user, password and TLS context this process connects to NATS with."""
        return NatsAccess(
            user=self.nats_user,
            password=self.nats_password.get_secret_value(),
            tls=tls_context(self.nats_tls_ca, self.nats_tls_cert, self.nats_tls_key),
        )

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.data_dir / (self.service + '.db')}"

    def resolved_grpc_address(self) -> str:
        if self.grpc_address:
            return self.grpc_address
        try:
            return entry(self.service).default_address
        except UnknownService:
            return "127.0.0.1:0"  # not a catalog service (a test's): any free port

    def address_of(self, service: str) -> str:
        """Where `service` of the catalog is reached: KASVU_<SERVICE>_ADDRESS, else its local default."""
        known = entry(service)
        return self._addresses.get(known.address_variable) or known.default_address

    def resolved_public_key_file(self) -> Path:
        return self.token_public_key_file or self.data_dir / "keys" / "token-public.pem"

    def resolved_revoked_tokens_file(self) -> Path:
        return self.revoked_tokens_file or self.data_dir / "keys" / "revoked-tokens.txt"

    def resolved_private_key_file(self) -> Path:
        return self.token_private_key_file or self.data_dir / "keys" / "token-private.pem"


def load_settings(service: str) -> Settings:
    """Reads the environment once, at start-up, for the named service."""
    return Settings(service=service)

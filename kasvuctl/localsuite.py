"""Starts the whole suite as real processes on free loopback ports: nats-server with
JetStream and a user per service (as `kasvu run` makes them), the catalog's services and the
gateway, with SQLite files or given database URLs. Used by the end-to-end tests, the
benchmarks and `kasvu demo --local`."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nats
from nats.aio.client import Client as NatsClient

from kasvuctl.launcher import wait_for_tcp, write_nats_config
from kasvuctl.natsauth import ADMIN_USER, AUTH_DIR, NatsAuth, ensure_auth
from kasvuctl.readiness import grpc_serving, http_ok
from services.runtime.auth import Principal, Role, generate_keypair, mint_token
from services.runtime.catalog import CATALOG, GATEWAY, ServiceEntry, module_of, process_names
from services.runtime.natsaccess import NatsAccess

STOP_TIMEOUT_S = 15.0
LISTEN_PORTS = range(20000, 32768)
"""Where free ports are picked: below Linux's ephemeral range (32768-60999), so the client
sockets of other processes (another test worker's gRPC channels, say) cannot take a port
between its pick and the listener's bind, as a port the kernel hands out as free can."""
LOG_TAIL_LINES = 20


def free_port() -> int:
    """A loopback port that nothing listens on now, picked at random from `LISTEN_PORTS`."""
    for _ in range(100):
        port = random.choice(LISTEN_PORTS)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {LISTEN_PORTS.start}-{LISTEN_PORTS.stop - 1}")


@dataclass
class LocalSuite:
    """A running suite in `data_dir`; `database_urls` maps a service to a URL (default SQLite).

    `ports` gets a free port for every process of `catalog` (and the gateway) not given one.
    """

    data_dir: Path
    database_urls: Mapping[str, str] = field(default_factory=dict)
    extra_env: Mapping[str, str] = field(default_factory=dict)
    catalog: Sequence[ServiceEntry] = CATALOG
    nats_port: int = field(default_factory=free_port)
    ports: dict[str, int] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    auth: NatsAuth | None = None
    """The NATS users, made by `start_nats`; until then processes get no credentials."""

    def __post_init__(self) -> None:
        for name in self.process_names:
            self.ports.setdefault(name, free_port())

    @property
    def process_names(self) -> tuple[str, ...]:
        """The suite's processes but nats-server, in start order."""
        return process_names(self.catalog)

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.nats_port}"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.ports[GATEWAY]}"

    def address(self, service: str) -> str:
        return f"127.0.0.1:{self.ports[service]}"

    def env(self, service: str, overrides: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KASVU_")}
        env.update(
            {
                "KASVU_DATA_DIR": str(self.data_dir),
                "KASVU_NATS_URL": self.nats_url,
                **{peer.address_variable: self.address(peer.name) for peer in self.catalog},
                "KASVU_HTTP_ADDRESS": self.address(GATEWAY),
                "KASVU_GRPC_ADDRESS": self.address(service),
                "KASVU_LOG_LEVEL": "INFO",
            }
        )
        if self.auth is not None and service in self.auth.permissions:
            env.update(self.auth.environment(service))
        if service in self.database_urls:
            env["KASVU_DATABASE_URL"] = self.database_urls[service]
        env.update(self.extra_env)
        env.update(overrides or {})
        return env

    def _log(self, name: str) -> int:
        return os.open(self.data_dir / f"{name}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        """Starts `argv` as the suite's process `name`, its output appended to `name`.log."""
        log = self._log(name)
        try:
            self.processes[name] = subprocess.Popen(
                argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        finally:
            os.close(log)

    def private_key(self) -> bytes:
        return (self.data_dir / "keys" / "token-private.pem").read_bytes()

    def token(self, role: Role, organisation: str) -> str:
        return mint_token(self.private_key(), Principal(role=role, organisation=organisation, subject="test"))

    def nats_access(self, user: str = ADMIN_USER) -> NatsAccess:
        """How `user` (by default the administrator) signs in to the suite's nats-server."""
        if self.auth is None:
            raise RuntimeError("nats-server has not been started, so it has no users yet")
        return self.auth.access(user)

    async def connect_nats(self, user: str = ADMIN_USER) -> NatsClient:
        """A plain client connection as `user`; the caller closes it."""
        return await nats.connect(self.nats_url, **self.nats_access(user).connect_options())

    # -- lifecycle --------------------------------------------------------------------

    def start_nats(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.auth is None:
            self.auth = ensure_auth(self.data_dir / AUTH_DIR, self.catalog)
        config = write_nats_config(self.data_dir, self.nats_port, self.auth)
        nats_server = Path(sys.executable).parent / "nats-server"
        self.spawn("nats", [str(nats_server), "-c", str(config)], dict(os.environ))
        if not wait_for_tcp("127.0.0.1", self.nats_port, timeout_s=15):
            raise RuntimeError(f"nats-server did not start; the end of nats.log:\n{self.log_tail('nats')}")

    def start_service(self, name: str, overrides: Mapping[str, str] | None = None) -> None:
        self.spawn(name, [sys.executable, "-m", module_of(name)], self.env(name, overrides))

    async def start(self, timeout_s: float = 90.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        generate_keypair(self.data_dir / "keys")
        self.start_nats()
        for name in self.process_names:
            self.start_service(name)
        await asyncio.gather(*(self.wait_ready(name, timeout_s) for name in self.process_names))

    async def wait_ready(self, name: str, timeout_s: float = 90.0) -> None:
        """gRPC health SERVING for the gRPC services; /healthz for the gateway."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            process = self.processes.get(name)
            if process is not None and process.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {process.returncode}; the end of {name}.log:\n{self.log_tail(name)}"
                )
            if await self._healthy(name):
                return
            await asyncio.sleep(0.1)
        raise TimeoutError(
            f"{name} not ready after {timeout_s} s; the end of {name}.log:\n{self.log_tail(name)}"
        )

    async def _healthy(self, name: str) -> bool:
        if name == GATEWAY:
            return await http_ok(f"{self.gateway_url}/healthz")
        return await grpc_serving(self.address(name))

    def kill(self, name: str) -> None:
        """SIGKILL: no shutdown code runs, as in a crash or an OOM kill."""
        process = self.processes.pop(name)
        process.send_signal(signal.SIGKILL)
        process.wait(10)

    def stop_process(self, name: str, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        return self.stop_processes([name], timeout_s).get(name)

    def stop_processes(self, names: Sequence[str], timeout_s: float = STOP_TIMEOUT_S) -> dict[str, int]:
        """SIGTERM to each, then waits for all of them together; SIGKILL after `timeout_s`."""
        stopping = {name: self.processes.pop(name) for name in names if name in self.processes}
        for process in stopping.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for process in stopping.values():
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        return {name: process.returncode for name, process in stopping.items()}

    def stop(self) -> None:
        # The gateway first, so it stops calling services; then the services together;
        # nats-server last, once they have drained their connections to it.
        self.stop_processes([GATEWAY])
        self.stop_processes([service.name for service in self.catalog])
        self.stop_processes(["nats"])

    def log_tail(self, name: str, lines: int = LOG_TAIL_LINES) -> str:
        """The log's last lines, so a failure read in CI's output says why without the file."""
        return "\n".join(self.log_text(name).splitlines()[-lines:])

    def log_text(self, name: str) -> str:
        path = self.data_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

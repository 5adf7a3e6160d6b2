"""`kasvu run`'s supervisor, with small stand-in processes: it stops the gateway, then the
services, then nats-server, each stage once the one before is gone, and kills only a process
that outlives its stage's time."""

from __future__ import annotations

import io
import sys
from datetime import datetime

from honcho.printer import Printer

from kasvuctl.launcher import NATS, Plan, Stage, Supervisor, stop_stages
from services.runtime.catalog import GATEWAY

# Prints when it gets SIGTERM, takes `linger` seconds to stop (or never, given "stubborn"),
# and exits by itself after `lifetime` seconds if that is given.
STAND_IN = """
import signal, sys, time
name, linger, lifetime = sys.argv[1], sys.argv[2], float(sys.argv[3])
def stop(*_):
    print(f"{name} got SIGTERM", flush=True)
    if linger == "stubborn":
        return
    time.sleep(float(linger))
    print(f"{name} exits", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print(f"{name} running", flush=True)
started = time.monotonic()
while lifetime <= 0 or time.monotonic() - started < lifetime:
    time.sleep(0.05)
print(f"{name} ends by itself", flush=True)
"""


def stand_in(name: str, linger: str = "0", lifetime: float = 0) -> tuple[str, list[str], dict[str, str]]:
    return (name, [sys.executable, "-c", STAND_IN, name, linger, str(lifetime)], {})


def run(plan: Plan, stages: list[Stage]) -> tuple[int, list[str]]:
    out = io.StringIO()
    supervisor = Supervisor(plan, stages, Printer(out, colour=False, prefix=False))
    code = supervisor.run()
    return code, out.getvalue().splitlines()


def position(lines: list[str], text: str) -> int:
    found = [index for index, line in enumerate(lines) if text in line]
    assert found, f"{text!r} not in:\n" + "\n".join(lines)
    return found[0]


def test_when_one_process_ends_the_gateway_stops_first_and_nats_server_last() -> None:
    plan = [
        stand_in(NATS),
        stand_in("registry", linger="0.5"),
        stand_in("selfmonitoring", linger="0.2"),
        stand_in("tendering", lifetime=1.0),
        stand_in(GATEWAY, linger="0.3"),
    ]
    started = datetime.now()
    code, lines = run(plan, stop_stages(plan, shutdown_grace_s=5))

    assert code == 0
    assert (datetime.now() - started).total_seconds() < 10
    gateway_gone = position(lines, f"{GATEWAY} stopped")
    assert position(lines, "tendering ends by itself") < position(lines, f"sending SIGTERM to {GATEWAY}")
    assert gateway_gone < position(lines, "sending SIGTERM to registry")
    assert gateway_gone < position(lines, "sending SIGTERM to selfmonitoring")
    nats_told = position(lines, f"sending SIGTERM to {NATS}")
    assert position(lines, "registry exits") < nats_told
    assert position(lines, "selfmonitoring exits") < nats_told
    assert not [line for line in lines if "SIGKILL" in line]


def test_a_process_that_outlives_its_stage_is_killed_and_the_next_stage_still_stops() -> None:
    plan = [stand_in(NATS), stand_in("stubborn", linger="stubborn"), stand_in("short", lifetime=0.5)]
    stages = [Stage(("short", "stubborn"), timeout_s=0.5), Stage((NATS,), timeout_s=5)]
    code, lines = run(plan, stages)

    assert code == 0  # the first process to end, ended well
    killed = position(lines, "stubborn still running after 0.5 s: sending SIGKILL")
    assert position(lines, "stubborn got SIGTERM") < killed < position(lines, f"sending SIGTERM to {NATS}")
    assert position(lines, f"{NATS} exits") > killed

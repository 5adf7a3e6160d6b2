"""Wires tendering: its database (migrated), its stream, health and reflection. Calls for
tenders, sealed bids and framework agreements arrive with their issue and plug in here."""

from __future__ import annotations

from pathlib import Path

from services.runtime.host import ServiceHost
from services.runtime.settings import Settings

MIGRATIONS = Path(__file__).parent / "migrations"


async def run(settings: Settings) -> None:
    host = ServiceHost(settings, migrations=MIGRATIONS)
    await host.start_server([])
    try:
        await host.start_infrastructure()
        await host.mark_serving()
        await host.wait_for_signal()
    finally:
        await host.shutdown()

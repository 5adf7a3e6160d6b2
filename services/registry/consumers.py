"""Events the registry reacts to, turned into the same commands a gRPC call would give."""

from __future__ import annotations

import logging

from kasvu.selfmonitoring.v1 import events_pb2 as selfmonitoring_events
from kasvu.selfmonitoring.v1 import selfmonitoring_pb2

from services.registry.handlers import RegistryHandlers, SuspendProvider
from services.runtime.db import UnitOfWork

log = logging.getLogger(__name__)

BREACHES_SUBJECT = "kasvu.selfmonitoring.v1.BreachOpened.*"
BREACHES_STREAM = "KASVU_SELFMONITORING"
BREACHES_DURABLE = "registry-breaches"


def on_breach_opened(use_cases: RegistryHandlers):  # type: ignore[no-untyped-def]
    """A serious breach suspends the provider in the breach's region, for its service."""

    async def handle(uow: UnitOfWork, event_id: str, event: selfmonitoring_events.BreachOpened) -> None:
        breach = event.breach
        if breach.severity != selfmonitoring_pb2.SEVERITY_SERIOUS:
            log.info("breach below suspending severity", extra={"event_id": event_id, "breach": breach.name})
            return
        await use_cases.suspend_provider(
            uow,
            SuspendProvider(
                region=event.region, business_id=breach.provider, service=breach.service, breach=breach.name
            ),
        )

    return handle

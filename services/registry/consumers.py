"""Events the registry reacts to, turned into the same commands a gRPC call would give."""

from __future__ import annotations

import logging

from kasvu.selfmonitoring.v1 import events_pb2 as selfmonitoring_events
from kasvu.selfmonitoring.v1 import selfmonitoring_pb2

from services.registry.handlers import SuspendProvider
from services.runtime import catalog

log = logging.getLogger(__name__)

# Named in the catalog, from which the registry's NATS user gets leave to read them.
BREACHES = catalog.consumption("registry", "registry-breaches")
BREACHES_SUBJECT = BREACHES.subject
BREACHES_STREAM = catalog.entry(BREACHES.stream_of).stream
BREACHES_DURABLE = BREACHES.durable


def suspension_for(event: selfmonitoring_events.BreachOpened, subject: str) -> SuspendProvider | None:
    """A serious breach suspends the provider in the breach's region, for its service."""
    breach = event.breach
    if breach.severity != selfmonitoring_pb2.SEVERITY_SERIOUS:
        log.info("breach below suspending severity", extra={"breach": breach.name})
        return None
    return SuspendProvider(
        region=event.region, business_id=breach.provider, service=breach.service, breach=breach.name
    )

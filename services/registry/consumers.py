"""Events the registry reacts to, turned into the same commands a gRPC call would give."""

from __future__ import annotations

import logging

from kasvu.selfmonitoring.v1 import events_pb2 as selfmonitoring_events
from kasvu.selfmonitoring.v1 import selfmonitoring_pb2

from services.registry.handlers import SuspendProvider
from services.runtime import catalog

log = logging.getLogger(__name__)

BREACHES_SUBJECT = f"{selfmonitoring_events.BreachOpened.DESCRIPTOR.full_name}.*"
BREACHES_STREAM = catalog.entry("selfmonitoring").stream
BREACHES_DURABLE = "registry-breaches"


def suspension_for(event: selfmonitoring_events.BreachOpened, subject: str) -> SuspendProvider | None:
    """A breach, for the region's breach policy to decide whether it suspends the provider in the
    breach's region and service."""
    breach = event.breach
    if breach.severity == selfmonitoring_pb2.SEVERITY_UNSPECIFIED:
        log.info("breach without a severity ignored", extra={"breach": breach.name})
        return None
    severity = selfmonitoring_pb2.Severity.Name(breach.severity).removeprefix("SEVERITY_")
    return SuspendProvider(
        region=event.region,
        business_id=breach.provider,
        service=breach.service,
        breach=breach.name,
        severity=severity,
    )

"""Events the registry reacts to, turned into the same commands a gRPC call would give."""

from __future__ import annotations

import logging

from kasvu.selfmonitoring.v1 import events_pb2 as selfmonitoring_events
from kasvu.selfmonitoring.v1 import selfmonitoring_pb2
from kasvu.tendering.v1 import events_pb2 as tendering_events

from services.registry.handlers import (
    LiftMarketFailure,
    RecordMarketFailure,
    ReinstateAfterResolution,
    SuspendProvider,
)
from services.runtime import catalog
from services.runtime.protoconv import from_timestamp

log = logging.getLogger(__name__)

# Named in the catalog, from which the registry's NATS user gets leave to read them.
BREACHES = catalog.consumption("registry", "registry-breaches")
BREACHES_SUBJECT = BREACHES.subject
BREACHES_STREAM = catalog.entry(BREACHES.stream_of).stream
BREACHES_DURABLE = BREACHES.durable

RESOLUTIONS = catalog.consumption("registry", "registry-breach-resolutions")
RESOLUTIONS_SUBJECT = RESOLUTIONS.subject
RESOLUTIONS_STREAM = catalog.entry(RESOLUTIONS.stream_of).stream
RESOLUTIONS_DURABLE = RESOLUTIONS.durable

TENDERING_STREAM = catalog.entry("tendering").stream
MARKET_FAILURES_DECLARED_SUBJECT = f"{tendering_events.MarketFailureDeclared.DESCRIPTOR.full_name}.*"
MARKET_FAILURES_DECLARED_DURABLE = "registry-market-failures-declared"
MARKET_FAILURES_LIFTED_SUBJECT = f"{tendering_events.MarketFailureLifted.DESCRIPTOR.full_name}.*"
MARKET_FAILURES_LIFTED_DURABLE = "registry-market-failures-lifted"


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


def reinstatement_for(event: selfmonitoring_events.BreachResolved, subject: str) -> ReinstateAfterResolution:
    """A resolved breach, for the region's breach policy to decide whether it reinstates the
    provider the breach suspended."""
    breach = event.breach
    return ReinstateAfterResolution(
        region=event.region, business_id=breach.provider, service=breach.service, breach=breach.name
    )


def market_failure_declared(
    event: tendering_events.MarketFailureDeclared, subject: str
) -> RecordMarketFailure:
    """A finding opens the service in its municipalities to municipal providers while it is valid."""
    valid_from = event.valid_from if event.HasField("valid_from") else event.declare_time
    return RecordMarketFailure(
        finding=event.finding,
        region=event.region,
        service=event.service,
        municipalities=tuple(event.municipalities),
        valid_from=from_timestamp(valid_from),
        valid_until=from_timestamp(event.valid_until) if event.HasField("valid_until") else None,
    )


def market_failure_lifted(event: tendering_events.MarketFailureLifted, subject: str) -> LiftMarketFailure:
    return LiftMarketFailure(
        finding=event.finding,
        region=event.region,
        service=event.service,
        lift_time=from_timestamp(event.lift_time),
    )

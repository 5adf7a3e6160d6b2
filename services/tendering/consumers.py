"""Events tendering reacts to: the registry's suspensions (and reinstatements, when the registry
publishes them), turned into the command that keeps call-off eligibility current."""

from __future__ import annotations

from kasvu.registry.v1 import events_pb2 as registry_events

from services.runtime import catalog
from services.tendering.handlers import SetSupplierEligibility

REGISTRY_STREAM = catalog.entry("registry").stream
# Names as the catalog declares them, which is also what the NATS permissions are made from.
SUSPENSIONS = catalog.consumption("tendering", "tendering-suspensions")
SUSPENSIONS_SUBJECT = SUSPENSIONS.subject
SUSPENSIONS_DURABLE = SUSPENSIONS.durable
SUSPENDED_TYPE = registry_events.ProviderSuspended
REINSTATED_TYPE = getattr(registry_events, "ProviderReinstated", None)
"""The registry's reinstatement event, once its engineer lands it; until then reinstatement
reaches tendering through nothing, and the README says so."""
REINSTATEMENTS_DURABLE = catalog.consumption("tendering", "tendering-reinstatements").durable


def suspension_for(event: registry_events.ProviderSuspended, subject: str) -> SetSupplierEligibility:
    return SetSupplierEligibility(
        region=event.region,
        service=event.service,
        business_id=event.business_id,
        eligible=False,
        breach=event.breach,
    )


def reinstatement_for(event: object, subject: str) -> SetSupplierEligibility:
    return SetSupplierEligibility(
        region=getattr(event, "region"),  # noqa: B009 - the message type is optional at import
        service=getattr(event, "service"),  # noqa: B009
        business_id=getattr(event, "business_id"),  # noqa: B009
        eligible=True,
    )

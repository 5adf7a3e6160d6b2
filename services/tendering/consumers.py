"""Events tendering reacts to: the registry's suspensions and reinstatements, turned into the
command that keeps call-off eligibility current."""

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
REINSTATEMENTS = catalog.consumption("tendering", "tendering-reinstatements")
REINSTATEMENTS_SUBJECT = REINSTATEMENTS.subject
REINSTATEMENTS_DURABLE = REINSTATEMENTS.durable
REINSTATED_TYPE = registry_events.ProviderReinstated


def suspension_for(event: registry_events.ProviderSuspended, subject: str) -> SetSupplierEligibility:
    return SetSupplierEligibility(
        region=event.region,
        service=event.service,
        business_id=event.business_id,
        eligible=False,
        breach=event.breach,
    )


def reinstatement_for(event: registry_events.ProviderReinstated, subject: str) -> SetSupplierEligibility:
    return SetSupplierEligibility(
        region=event.region, service=event.service, business_id=event.business_id, eligible=True
    )

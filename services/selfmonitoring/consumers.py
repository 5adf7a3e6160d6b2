"""The registry's events self-monitoring follows, turned into commands: the registration
lifecycle (admitted, suspended, reinstated, lapsed, revoked, withdrawn) feeds the
equal-availability view, and an admission makes a serious breach opened before it take effect.
To follow another registry event, add a translate and a line to REGISTRY_EVENTS (and its
consumer to the catalog's entry, which grants the NATS permission)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from kasvu.registry.v1 import events_pb2 as registry_events

from services.runtime import catalog
from services.runtime.domain import Command
from services.selfmonitoring import handlers, model

REGISTRY_STREAM = catalog.entry("registry").stream


def _time(stamp: Timestamp) -> datetime:
    """The event's own time (the epoch when unset), so changes apply in the registry's order."""
    return stamp.ToDatetime(tzinfo=UTC)


def admission(event: registry_events.RegistrationAdmitted, subject: str) -> Command | None:
    return handlers.RecordAdmission(
        model.AdmittedProvider(
            region=event.region,
            service=event.service,
            business_id=event.business_id,
            municipalities=tuple(event.municipalities),
            languages=tuple(event.languages),
        ),
        _time(event.admit_time),
    )


def _change(change: model.AvailabilityChange, time_field: str) -> Callable[[Any, str], Command | None]:
    def translate(event: Any, subject: str) -> Command | None:
        return handlers.RecordAvailabilityChange(
            event.region, event.service, event.business_id, change, _time(getattr(event, time_field))
        )

    return translate


suspension = _change(model.AvailabilityChange.SUSPENDED, "suspend_time")
reinstatement = _change(model.AvailabilityChange.REINSTATED, "reinstate_time")
lapse = _change(model.AvailabilityChange.ENDED, "lapse_time")
revocation = _change(model.AvailabilityChange.ENDED, "revoke_time")
withdrawal = _change(model.AvailabilityChange.ENDED, "withdraw_time")


@dataclass(frozen=True)
class Followed:
    """One registry event type: its durable consumer's name and its translate."""

    event_type: Any
    durable: str
    translate: Callable[[Any, str], Command | None]

    @property
    def subject(self) -> str:
        return f"{self.event_type.DESCRIPTOR.full_name}.*"


REGISTRY_EVENTS = (
    Followed(registry_events.RegistrationAdmitted, "selfmonitoring-admissions", admission),
    Followed(registry_events.ProviderSuspended, "selfmonitoring-suspensions", suspension),
    Followed(registry_events.ProviderReinstated, "selfmonitoring-reinstatements", reinstatement),
    Followed(registry_events.RegistrationLapsed, "selfmonitoring-lapses", lapse),
    Followed(registry_events.ProviderRevoked, "selfmonitoring-revocations", revocation),
    Followed(registry_events.RegistrationWithdrawn, "selfmonitoring-withdrawals", withdrawal),
)

"""The registry's events self-monitoring follows, turned into commands: admissions and
suspensions feed the equal-availability view, and an admission makes a serious breach opened
before it take effect. To follow another registry event, add a translate and a line to
REGISTRY_EVENTS."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kasvu.registry.v1 import events_pb2 as registry_events

from services.runtime import catalog
from services.runtime.domain import Command
from services.selfmonitoring import handlers, model

REGISTRY_STREAM = catalog.entry("registry").stream


def admission(event: registry_events.RegistrationAdmitted, subject: str) -> Command | None:
    return handlers.RecordAdmission(
        model.AdmittedProvider(
            region=event.region,
            service=event.service,
            business_id=event.business_id,
            municipalities=tuple(event.municipalities),
            languages=tuple(event.languages),
        )
    )


def suspension(event: registry_events.ProviderSuspended, subject: str) -> Command | None:
    return handlers.RecordSuspension(event.region, event.service, event.business_id)


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
)

"""The envelope every event carries in its NATS headers: id, type, time, actor, correlation and
causation. Identifiers only: the actor is a role, an organisation id and a token subject."""

from __future__ import annotations

from datetime import datetime

from services.runtime.uow import Context

MSG_ID = "Nats-Msg-Id"
"""JetStream de-duplicates on it; it is also the event id consumers' inboxes record."""
EVENT_TYPE = "Kasvu-Event-Type"
OCCURRED_AT = "Kasvu-Occurred-At"
ACTOR = "Kasvu-Actor"
CORRELATION_ID = "Kasvu-Correlation-Id"
CAUSATION_ID = "Kasvu-Causation-Id"


def headers_for(*, event_id: str, event_type: str, occurred_at: datetime, context: Context) -> dict[str, str]:
    headers = {
        MSG_ID: event_id,
        EVENT_TYPE: event_type,
        OCCURRED_AT: occurred_at.isoformat(),
        ACTOR: context.who,
        CORRELATION_ID: context.correlation_id,
    }
    if context.causation_id:
        headers[CAUSATION_ID] = context.causation_id
    return headers

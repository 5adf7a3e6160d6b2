"""Wires tendering: settings → database, receipt key, dispatcher with its handlers, servicer, and
the consumer of the registry's suspensions. The one place where tendering's parts meet."""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)
from kasvu.tendering.v1 import (
    alliance_events_pb2,
    alliance_pb2,
    alliance_pb2_grpc,
    events_pb2,
    tendering_pb2,
    tendering_pb2_grpc,
)

from services.runtime.bus import EventConsumer
from services.runtime.clock import SYSTEM_CLOCK, Clock
from services.runtime.dispatch import EventTypes
from services.runtime.domain import Event
from services.runtime.host import ServiceHost
from services.runtime.settings import Settings
from services.tendering import (
    alliance,
    alliance_handlers,
    alliance_store,
    bidder_keys,
    consumers,
    handlers,
    market_failure,
    model,
    store,
)
from services.tendering.alliance_api import AllianceServicer
from services.tendering.grpc_api import TenderingServicer

MIGRATIONS = Path(__file__).parent / "migrations"
TEST_CLOCK_VARIABLE = "KASVU_TENDERING_TEST_CLOCK_FILE"
SERVICE_NAME = tendering_pb2.DESCRIPTOR.services_by_name["TenderingService"].full_name
# Alliances and market failure (issue 10): their own servicer, events in alliance_events.proto
# (MarketFailureDeclared/Lifted in events.proto, which the registry consumes) and handlers,
# on tendering's dispatcher and unit of work (alliance_store's, which adds their repositories).
ALLIANCE_SERVICE_NAME = alliance_pb2.DESCRIPTOR.services_by_name["AllianceService"].full_name
_EVENT_GROUPS: tuple[tuple[tuple[type[Event], ...], Any], ...] = (
    ((*model.EVENTS, *market_failure.EVENTS, *bidder_keys.EVENTS), events_pb2),
    ((*alliance.EVENTS, market_failure.DirectAwardMade), alliance_events_pb2),
)
EVENT_TYPES = EventTypes(
    pair
    for events, module in _EVENT_GROUPS
    for pair in zip(events, EventTypes.by_name(events, module).protos, strict=True)
)
HANDLERS = handlers.HANDLERS | alliance_handlers.HANDLERS
log = logging.getLogger(__name__)


def receipt_key(data_dir: Path) -> store.ReceiptKey:
    """The service's Ed25519 receipt key, created on first start (PEM, readable by its owner only).

    It signs receipts and opens nothing: whoever holds it can forge a receipt, not read a bid.
    """
    path = data_dir / "tendering-receipt-key.pem"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        pem = Ed25519PrivateKey.generate().private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            file.write(pem)
    key = load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} does not hold an Ed25519 private key")
    return store.ReceiptKey(key)


class OffsetClock(Clock):
    """For end-to-end tests only: the wall clock moved on by the seconds written in a file, so a
    test can let a 14-day standstill pass. Never set in production: it moves deadlines, though
    not the committee's threshold (k shares are still needed to open anything)."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def now(self) -> datetime:
        try:
            offset = float(self._path.read_text(encoding="ascii") or 0)
        except (FileNotFoundError, ValueError):
            offset = 0.0
        return datetime.now(UTC) + timedelta(seconds=offset)


def clock_from_environment() -> Clock:
    path = os.environ.get(TEST_CLOCK_VARIABLE)
    if not path:
        return SYSTEM_CLOCK
    log.warning("tendering runs on a test clock", extra={"file": path})
    return OffsetClock(Path(path))


async def run(settings: Settings) -> None:
    host = ServiceHost(settings, migrations=MIGRATIONS, clock=clock_from_environment())
    key = receipt_key(settings.data_dir)
    dispatcher = host.dispatcher(
        unit_of_work=alliance_store.unit_of_work_factory(key), event_types=EVENT_TYPES, handlers=HANDLERS
    )
    await host.start_server(
        [
            (
                tendering_pb2_grpc.add_TenderingServiceServicer_to_server,
                TenderingServicer(dispatcher, key.public),
                SERVICE_NAME,
            ),
            (
                alliance_pb2_grpc.add_AllianceServiceServicer_to_server,
                AllianceServicer(dispatcher),
                ALLIANCE_SERVICE_NAME,
            ),
        ]
    )
    try:
        await host.start_infrastructure()
        host.add_consumer(
            lambda js: EventConsumer(
                dispatcher,
                js,
                stream=consumers.REGISTRY_STREAM,
                durable=consumers.SUSPENSIONS_DURABLE,
                subject=consumers.SUSPENSIONS_SUBJECT,
                event_type=consumers.SUSPENDED_TYPE,
                translate=consumers.suspension_for,
                batch=settings.consumer_batch,
                ack_wait_s=settings.consumer_ack_wait_s,
                max_deliveries=settings.consumer_max_deliveries,
                crash_point=settings.crash_point,
            )
        )
        host.add_consumer(
            lambda js: EventConsumer(
                dispatcher,
                js,
                stream=consumers.REGISTRY_STREAM,
                durable=consumers.REINSTATEMENTS_DURABLE,
                subject=consumers.REINSTATEMENTS_SUBJECT,
                event_type=consumers.REINSTATED_TYPE,
                translate=consumers.reinstatement_for,
                batch=settings.consumer_batch,
                ack_wait_s=settings.consumer_ack_wait_s,
                max_deliveries=settings.consumer_max_deliveries,
                crash_point=settings.crash_point,
            )
        )
        await host.mark_serving()
        await host.wait_for_signal()
    finally:
        await host.shutdown()

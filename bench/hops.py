"""Where one breach -> suspension spends its time, hop by hop.

After the breach figure, the timestamps every party recorded anyway are read back: the
client's (sent, accepted, first SUSPENDED read), self-monitoring's outbox (the observation's
unit of work and when the relay marked its event published), the JetStream stream (when the
event was stored) and the registry's inbox (the suspending unit of work). They come from
different processes, but all on this host and all from its one wall clock (Python's
datetime.now / time.time and Go's time.Now read the same CLOCK_REALTIME), so differences
across processes are meaningful to a few microseconds.

Each instant is an anchor on one breach's timeline; a hop is the difference of two. A breach
missing an instant (a row pruned, a message not found) is left out of the hops that need
it and counted in those that do not.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import nats
from kasvu.selfmonitoring.v1 import events_pb2 as selfmonitoring_events
from nats.js.errors import NotFoundError

from bench.stats import format_value, percentile, render_cells
from services.runtime import catalog, envelope
from services.runtime.natsaccess import NatsAccess

# The instants of one breach, in the order they happen.
SENT = "sent"  # the client sends RecordObservation
OBSERVATION_UNIT = "observation_unit"  # self-monitoring's unit of work starts (outbox.created_at)
ACCEPTED = "accepted"  # the client has the reply: the breach figure's clock starts
STORED = "stored"  # JetStream stored the BreachOpened event (the stream's own timestamp)
MARKED = "marked"  # the relay marked the outbox row published (outbox.published_at)
REGISTRY_UNIT = "registry_unit"  # the registry's suspending unit of work starts (inbox.handled_at)
READ_SENT = "read_sent"  # the client sends the read that will show SUSPENDED
SEEN = "seen"  # that read's reply is in: the breach figure's clock stops
TIMELINE = (SENT, OBSERVATION_UNIT, ACCEPTED, STORED, MARKED, REGISTRY_UNIT, READ_SENT, SEEN)

Instants = dict[str, float]
"""Instant name -> seconds since the epoch, for one breach."""


@dataclass(frozen=True)
class Hop:
    name: str
    start: str
    end: str
    what: str


HOPS = (
    Hop("observation_call", SENT, OBSERVATION_UNIT, "gRPC in, token check, queue on the write path"),
    Hop("observation_commit_reply", OBSERVATION_UNIT, ACCEPTED, "handler, batch commit (fsync), reply"),
    Hop("observation_to_stream", OBSERVATION_UNIT, STORED, "commit, relay wake-up, outbox read, publish"),
    # The relay is woken right after the commit, before the reply leaves: this hop overlaps
    # the reply's way back and can be negative.
    Hop("accepted_to_stream", ACCEPTED, STORED, "relay pick-up and publish, after the reply"),
    Hop("stream_to_marked", STORED, MARKED, "publish ack to the relay, mark-published commit (off the path)"),
    Hop("stream_to_registry_unit", STORED, REGISTRY_UNIT, "consumer fetch, decode, queue on the write path"),
    Hop("registry_unit_to_read", REGISTRY_UNIT, SEEN, "handler, batch commit (fsync), poll wait, read"),
    Hop("suspended_read", READ_SENT, SEEN, "the GetRegistration call that saw SUSPENDED"),
)
"""accepted_to_stream + stream_to_registry_unit + registry_unit_to_read = the breach figure,
sample by sample (medians do not add up exactly)."""


@dataclass
class BreachTiming:
    """What the client saw of one breach, on the wall clock."""

    breach: str
    sent_at: float
    accepted_at: float
    read_sent_at: float = 0.0
    seen_at: float = 0.0
    latency_ms: float = 0.0
    """Accepted to seen on the monotonic clock: the breach figure's sample."""


def hop_samples(timelines: Iterable[Instants]) -> dict[str, list[float]]:
    """Milliseconds per hop, from every breach that has both of the hop's instants."""
    samples: dict[str, list[float]] = {hop.name: [] for hop in HOPS}
    for instants in timelines:
        for hop in HOPS:
            if hop.start in instants and hop.end in instants:
                samples[hop.name].append((instants[hop.end] - instants[hop.start]) * 1000)
    return samples


def hop_figures(samples: Mapping[str, Sequence[float]], breaches: int) -> dict[str, float]:
    """hop_<name>_p50_ms, _p99_ms and _samples for each hop with samples, and hop_breaches."""
    figures: dict[str, float] = {"hop_breaches": breaches}
    for hop in HOPS:
        values = samples.get(hop.name, ())
        figures[f"hop_{hop.name}_samples"] = len(values)
        if values:
            figures[f"hop_{hop.name}_p50_ms"] = percentile(values, 50)
            figures[f"hop_{hop.name}_p99_ms"] = percentile(values, 99)
    return figures


def render_hops(results: Mapping[str, float | str]) -> str:
    """The second table: one line per hop, its anchors, p50, p99 and sample count."""
    header = ("hop", "from -> to", "p50 ms", "p99 ms", "n", "what")
    cells: list[tuple[str, ...]] = [header]
    for hop in HOPS:
        p50 = results.get(f"hop_{hop.name}_p50_ms")
        p99 = results.get(f"hop_{hop.name}_p99_ms")
        cells.append(
            (
                hop.name,
                f"{hop.start} -> {hop.end}",
                "-" if p50 is None else format_value(float(p50)),
                "-" if p99 is None else format_value(float(p99)),
                str(int(float(results.get(f"hop_{hop.name}_samples", 0)))),
                hop.what,
            )
        )
    return render_cells(cells, right_aligned={2, 3, 4})


# -- reading the servers' timestamps back ------------------------------------------------


def epoch(value: object) -> float | None:
    """Seconds since the epoch from a stored UTC datetime (SQLite keeps naive text), or None."""
    if value is None or value == "":
        return None
    moment = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


def _read(database: Path, sql: str, parameters: Sequence[object] = ()) -> list[sqlite3.Row]:
    # Read-only, while the services still run: WAL lets a reader in beside their writer.
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)
    try:
        connection.row_factory = sqlite3.Row
        return connection.execute(sql, parameters).fetchall()
    finally:
        connection.close()


@dataclass(frozen=True)
class OutboxTimes:
    event_id: str
    created_at: float | None
    published_at: float | None


def breach_events(selfmonitoring_db: Path) -> dict[str, OutboxTimes]:
    """Breach name -> its BreachOpened outbox row's id and times."""
    event_type = selfmonitoring_events.BreachOpened.DESCRIPTOR.full_name
    rows = _read(
        selfmonitoring_db,
        "SELECT event_id, payload, headers, created_at, published_at FROM outbox WHERE event_type = ?",
        (event_type,),
    )
    events = {}
    for row in rows:
        breach = selfmonitoring_events.BreachOpened.FromString(row["payload"]).breach.name
        created = epoch(row["created_at"])
        if created is None:
            # The envelope carries the same instant, should the column ever be empty.
            created = epoch(json.loads(row["headers"] or "{}").get(envelope.OCCURRED_AT))
        events[breach] = OutboxTimes(row["event_id"], created, epoch(row["published_at"]))
    return events


def registry_units(registry_db: Path) -> tuple[dict[str, float], dict[str, float]]:
    """Event id -> the consuming unit's instant (inbox), and breach name -> the suspending
    unit's instant (the registration's updated_at, the same instant: a fallback)."""
    inbox = {
        row["event_id"]: moment
        for row in _read(registry_db, "SELECT event_id, handled_at FROM inbox")
        if (moment := epoch(row["handled_at"])) is not None
    }
    suspended = {
        row["suspended_by_breach"]: moment
        for row in _read(
            registry_db,
            "SELECT suspended_by_breach, updated_at FROM registry_registrations"
            " WHERE suspended_by_breach != ''",
        )
        if (moment := epoch(row["updated_at"])) is not None
    }
    return inbox, suspended


async def stored_times(
    nats_url: str, access: NatsAccess, stream: str, event_ids: set[str]
) -> dict[str, float]:
    """Event id (Nats-Msg-Id) -> when the stream stored it, for the wanted ids; `access` signs
    in as a user that may read the stream (the administrator)."""
    nc = await nats.connect(nats_url, **access.connect_options())
    try:
        js = nc.jetstream()
        state = (await js.stream_info(stream)).state
        stored: dict[str, float] = {}
        for seq in range(state.first_seq, state.last_seq + 1):
            if len(stored) == len(event_ids):
                break
            try:
                message = await js.get_msg(stream, seq)
            except NotFoundError:
                continue  # deleted or never there: the sample goes without this instant
            event_id = (message.headers or {}).get(envelope.MSG_ID, "")
            if event_id in event_ids and message.time is not None:
                stored[event_id] = message.time.timestamp()
        return stored
    finally:
        await nc.close()


async def timelines(
    data_dir: Path, nats_url: str, access: NatsAccess, timings: Sequence[BreachTiming]
) -> list[Instants]:
    """Every instant known of each measured breach, client's and servers'."""
    events = breach_events(data_dir / "selfmonitoring.db")
    inbox, suspended = registry_units(data_dir / "registry.db")
    wanted = {events[t.breach].event_id for t in timings if t.breach in events}
    stored = await stored_times(nats_url, access, catalog.entry("selfmonitoring").stream, wanted)
    result = []
    for timing in timings:
        instants: Instants = {SENT: timing.sent_at, ACCEPTED: timing.accepted_at}
        if timing.seen_at:
            instants[READ_SENT], instants[SEEN] = timing.read_sent_at, timing.seen_at
        event = events.get(timing.breach)
        if event is not None:
            optional = {
                OBSERVATION_UNIT: event.created_at,
                MARKED: event.published_at,
                STORED: stored.get(event.event_id),
                REGISTRY_UNIT: inbox.get(event.event_id, suspended.get(timing.breach)),
            }
            instants.update({name: moment for name, moment in optional.items() if moment is not None})
        result.append(instants)
    return result

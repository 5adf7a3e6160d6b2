"""Self-monitoring storage: tables for indicators, observations and breaches, repositories that
take and return domain objects, and the service's unit of work that carries them."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import ColumnElement, Index, Table, bindparam, delete, update
from sqlalchemy import false as sa_false
from sqlalchemy import select as sa_select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel import Field, SQLModel, col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from services.runtime.db import connection_of, older_than, serialize_on
from services.runtime.fastinsert import TableInserter
from services.runtime.prepared import Prepared, with_lists
from services.runtime.tables import utc_field, utcnow
from services.runtime.uow import Context, UnitOfWork
from services.selfmonitoring import model


class IndicatorRow(SQLModel, table=True):
    __tablename__ = "selfmonitoring_indicators"

    region: str = Field(primary_key=True, max_length=63)
    indicator_id: str = Field(primary_key=True, max_length=63)
    display_name: str = Field(max_length=200)
    service: str = Field(max_length=63)
    deadline_days: int
    minimum_share: float
    """The threshold, of any kind (named for the first kind there was)."""
    window_days: int
    minimum_sample: int
    severity: str = Field(max_length=16)
    # 0 for indicators defined before hysteresis: they recover at their threshold.
    recovery_threshold: float = Field(default=0.0, sa_column_kwargs={"server_default": "0"})
    kind: str = Field(
        default="SHARE_WITHIN_DEADLINE",
        max_length=32,
        sa_column_kwargs={"server_default": "SHARE_WITHIN_DEADLINE"},
    )
    created_at: datetime = utc_field(default_factory=utcnow)
    # None: the indicator raises no warnings (as every indicator did before warnings).
    warning_threshold: float | None = None
    scope: str = Field(default="PROVIDER", max_length=16, sa_column_kwargs={"server_default": "PROVIDER"})


class ObservationRow(SQLModel, table=True):
    """One case event; the case key is a pseudonym, never a person's identity. Its id is unique
    within its source, so a provider's report can never take the id of the region's own."""

    __tablename__ = "selfmonitoring_observations"
    # Serves the window count of one provider on one indicator.
    __table_args__ = (
        Index("ix_selfmonitoring_observations_window", "region", "indicator_id", "provider", "completed_on"),
        # Serves a batch's "which of these ids exist already", whatever their indicators.
        Index("ix_selfmonitoring_observations_id", "region", "observation_id"),
    )

    region: str = Field(primary_key=True, max_length=63)
    indicator_id: str = Field(primary_key=True, max_length=63)
    source: str = Field(primary_key=True, max_length=24)
    observation_id: str = Field(primary_key=True, max_length=128)
    provider: str = Field(max_length=9)
    case_key: str = Field(max_length=128)
    started_on: date
    completed_on: date
    within_deadline: bool
    value: float | None = None
    recorded_at: datetime = utc_field(default_factory=utcnow)
    # The scope keys besides the provider: empty when not given.
    service: str = Field(default="", max_length=63, sa_column_kwargs={"server_default": ""})
    municipality: str = Field(default="", max_length=3, sa_column_kwargs={"server_default": ""})
    # A pseudonymous customer-group category, for equal treatment.
    group_key: str = Field(default="", max_length=64, sa_column_kwargs={"server_default": ""})


class PendingCaseRow(SQLModel, table=True):
    """A case started and not completed yet, until it completes; counted_on once the deadline
    sweep counted it late."""

    __tablename__ = "selfmonitoring_pending_cases"
    __table_args__ = (
        Index("ix_selfmonitoring_pending_cases_due", "region", "indicator_id", "due_on"),
        Index("ix_selfmonitoring_pending_cases_id", "region", "observation_id"),
    )

    region: str = Field(primary_key=True, max_length=63)
    indicator_id: str = Field(primary_key=True, max_length=63)
    source: str = Field(primary_key=True, max_length=24)
    observation_id: str = Field(primary_key=True, max_length=128)
    provider: str = Field(max_length=9)
    case_key: str = Field(max_length=128)
    started_on: date
    due_on: date
    counted_on: date | None = None
    service: str = Field(default="", max_length=63, sa_column_kwargs={"server_default": ""})
    municipality: str = Field(default="", max_length=3, sa_column_kwargs={"server_default": ""})


class DayBucketRow(SQLModel, table=True):
    """One scope group's observations (a provider's, a service's, a municipality's, the
    region's) on one indicator completed on one day, summed as they arrive: a window's value
    is the sum of at most window_days rows, whatever the history's size."""

    __tablename__ = "selfmonitoring_day_buckets"

    region: str = Field(primary_key=True, max_length=63)
    indicator_id: str = Field(primary_key=True, max_length=63)
    scope_key: str = Field(primary_key=True, max_length=63)
    day: date = Field(primary_key=True)
    sample_size: int
    weight: float
    weighted_value: float


class GroupBucketRow(SQLModel, table=True):
    """For equal treatment: one customer group's observations within one scope group on one
    day, summed as they arrive (the scope group's overall sums are its day bucket)."""

    __tablename__ = "selfmonitoring_group_buckets"

    region: str = Field(primary_key=True, max_length=63)
    indicator_id: str = Field(primary_key=True, max_length=63)
    scope_key: str = Field(primary_key=True, max_length=63)
    group_key: str = Field(primary_key=True, max_length=64)
    day: date = Field(primary_key=True)
    sample_size: int
    weight: float
    weighted_value: float


class BreachRow(SQLModel, table=True):
    __tablename__ = "selfmonitoring_breaches"
    # Serves "resolved lately?" for each breach a corrective-action policy opens: breaches are
    # kept once resolved, so the region's index alone made each lookup read all of them.
    __table_args__ = (
        Index("ix_selfmonitoring_breaches_recurrence", "region", "indicator_id", "provider", "resolved_at"),
    )

    id: str = Field(primary_key=True, max_length=64)
    region: str = Field(max_length=63, index=True)
    indicator_id: str = Field(max_length=63)
    provider: str = Field(max_length=9)
    service: str = Field(max_length=63)
    severity: str = Field(max_length=16)
    value: float
    threshold: float
    sample_size: int
    state: str = Field(default="OPEN", max_length=16)
    # Set while open: at most one open breach per indicator and provider, enforced by the database.
    open_key: str | None = Field(default=None, unique=True, max_length=140)
    opened_at: datetime = utc_field()
    recovery_threshold: float = Field(default=0.0, sa_column_kwargs={"server_default": "0"})
    resolved_at: datetime | None = utc_field(default=None, nullable=True)
    window_start: date | None = None
    window_end: date | None = None
    # A warning (past the warning threshold only); its open key ends in "/warning".
    warning: bool = Field(default=False, sa_column_kwargs={"server_default": sa_false()})
    scope: str = Field(default="PROVIDER", max_length=16, sa_column_kwargs={"server_default": "PROVIDER"})
    # The scope's group (the provider's business ID for the provider scope).
    scope_key: str = Field(default="", max_length=63, sa_column_kwargs={"server_default": ""})
    # For equal treatment: the customer group compared.
    group_key: str = Field(default="", max_length=64, sa_column_kwargs={"server_default": ""})


class ProgrammeRow(SQLModel, table=True):
    """A version of a region's programme; its indicators and policies as JSON, as it was drafted."""

    __tablename__ = "selfmonitoring_programmes"

    region: str = Field(primary_key=True, max_length=63)
    version: int = Field(primary_key=True)
    display_name: str = Field(max_length=200)
    indicators: str
    policies: str
    state: str = Field(max_length=16)
    created_at: datetime = utc_field()
    published_at: datetime | None = utc_field(default=None, nullable=True)
    publication_date: date | None = None


class AlertRow(SQLModel, table=True):
    """An alert, written with the breach event it reports; the stream carries it live."""

    __tablename__ = "selfmonitoring_alerts"
    __table_args__ = (Index("ix_selfmonitoring_alerts_listing", "region", "created_at", "alert_id"),)

    region: str = Field(primary_key=True, max_length=63)
    alert_id: str = Field(primary_key=True, max_length=64)
    breach_id: str = Field(max_length=64)
    kind: str = Field(max_length=16)
    created_at: datetime = utc_field()
    acknowledged_by: str = Field(default="", max_length=200)
    acknowledged_at: datetime | None = utc_field(default=None, nullable=True)


class CorrectiveActionRow(SQLModel, table=True):
    __tablename__ = "selfmonitoring_corrective_actions"
    __table_args__ = (
        Index("ix_selfmonitoring_corrective_actions_listing", "region", "requested_at", "breach_id"),
    )

    region: str = Field(primary_key=True, max_length=63)
    breach_id: str = Field(primary_key=True, max_length=64)
    provider: str = Field(max_length=9, index=True)
    due_on: date
    requested_at: datetime = utc_field()
    state: str = Field(max_length=16)
    response: str = Field(default="", max_length=4000)
    responded_at: datetime | None = utc_field(default=None, nullable=True)


class AdmittedProviderRow(SQLModel, table=True):
    """The registry's admitted providers, as its events tell (a read model)."""

    __tablename__ = "selfmonitoring_admitted_providers"

    region: str = Field(primary_key=True, max_length=63)
    service: str = Field(primary_key=True, max_length=63)
    business_id: str = Field(primary_key=True, max_length=9)
    municipalities: str = Field(default="[]")
    languages: str = Field(default="[]")
    suspended: bool = False
    updated_at: datetime = utc_field()
    # Its admission lapsed, was revoked or withdrawn.
    ended: bool = Field(default=False, sa_column_kwargs={"server_default": sa_false()})
    # When the registry made the last change applied (None before changes were timed).
    changed_at: datetime | None = utc_field(default=None, nullable=True)


SELFMONITORING_TABLES = (
    "selfmonitoring_indicators",
    "selfmonitoring_observations",
    "selfmonitoring_day_buckets",
    "selfmonitoring_group_buckets",
    "selfmonitoring_pending_cases",
    "selfmonitoring_breaches",
    "selfmonitoring_programmes",
    "selfmonitoring_alerts",
    "selfmonitoring_corrective_actions",
    "selfmonitoring_admitted_providers",
)

INDICATORS: Table = IndicatorRow.__table__  # type: ignore[attr-defined]
OBSERVATIONS: Table = ObservationRow.__table__  # type: ignore[attr-defined]
PENDING_CASES: Table = PendingCaseRow.__table__  # type: ignore[attr-defined]
BUCKETS: Table = DayBucketRow.__table__  # type: ignore[attr-defined]
GROUP_BUCKETS: Table = GroupBucketRow.__table__  # type: ignore[attr-defined]
BREACHES: Table = BreachRow.__table__  # type: ignore[attr-defined]
PROGRAMMES: Table = ProgrammeRow.__table__  # type: ignore[attr-defined]
ALERTS: Table = AlertRow.__table__  # type: ignore[attr-defined]
CORRECTIVE_ACTIONS: Table = CorrectiveActionRow.__table__  # type: ignore[attr-defined]
AVAILABILITY: Table = AdmittedProviderRow.__table__  # type: ignore[attr-defined]


def _equal(table: Table, *names: str, prefix: str = "") -> tuple[ColumnElement[bool], ...]:
    """The conditions that each named column equals the bind parameter of its name (after
    `prefix`: an UPDATE's condition must not name its parameters after columns, which SQLAlchemy
    would take for columns to set)."""
    return tuple(table.c[name] == bindparam(prefix + name) for name in names)


# The statements of an observation's path (the indicator, repeats, its window, open breaches, the
# programme in force), built once: through SQLAlchemy each cost more than SQLite's answer does.
_INDICATOR_KEY = _equal(INDICATORS, "region", "indicator_id")
_INDICATOR = Prepared(sa_select(INDICATORS).where(*_INDICATOR_KEY))
_INDICATOR_FOR_UPDATE = Prepared(
    sa_select(INDICATORS).where(*_INDICATOR_KEY),
    elsewhere=sa_select(INDICATORS).where(*_INDICATOR_KEY).with_for_update(),
)
_OBSERVATIONS_BY_ID = with_lists(
    lambda one_of: sa_select(
        OBSERVATIONS.c.indicator_id,
        OBSERVATIONS.c.source,
        OBSERVATIONS.c.observation_id,
        OBSERVATIONS.c.provider,
        OBSERVATIONS.c.case_key,
        OBSERVATIONS.c.started_on,
        OBSERVATIONS.c.completed_on,
        OBSERVATIONS.c.value,
        OBSERVATIONS.c.service,
        OBSERVATIONS.c.municipality,
        OBSERVATIONS.c.group_key,
    ).where(OBSERVATIONS.c.region == bindparam("region"), one_of(OBSERVATIONS.c.observation_id, "ids"))
)
_PENDING_BY_ID = with_lists(
    lambda one_of: sa_select(PENDING_CASES).where(
        PENDING_CASES.c.region == bindparam("region"), one_of(PENDING_CASES.c.observation_id, "ids")
    )
)


def _sums(table: Table, *keys: str) -> list[Any]:
    """The key columns and the window's sums of a bucket table, for a grouped select."""
    return [
        *(table.c[key] for key in keys),
        func.sum(table.c.sample_size).label("sample_size"),
        func.sum(table.c.weight).label("weight"),
        func.sum(table.c.weighted_value).label("weighted_value"),
    ]


def _in_window(table: Table) -> tuple[ColumnElement[bool], ...]:
    return (
        *_equal(table, "region", "indicator_id"),
        table.c.day >= bindparam("start"),
        table.c.day <= bindparam("end"),
    )


_WINDOWS = with_lists(
    lambda one_of: (
        sa_select(*_sums(BUCKETS, "scope_key"))
        .where(*_in_window(BUCKETS), one_of(BUCKETS.c.scope_key, "keys"))
        .group_by(BUCKETS.c.scope_key)
    )
)
_GROUP_WINDOWS = with_lists(
    lambda one_of: (
        sa_select(*_sums(GROUP_BUCKETS, "scope_key", "group_key"))
        .where(*_in_window(GROUP_BUCKETS), one_of(GROUP_BUCKETS.c.scope_key, "keys"))
        .group_by(GROUP_BUCKETS.c.scope_key, GROUP_BUCKETS.c.group_key)
    )
)
_ALL_GROUP_WINDOWS = Prepared(
    sa_select(*_sums(GROUP_BUCKETS, "scope_key", "group_key"))
    .where(*_in_window(GROUP_BUCKETS))
    .group_by(GROUP_BUCKETS.c.scope_key, GROUP_BUCKETS.c.group_key)
)
_OPEN_BREACHES = with_lists(lambda one_of: sa_select(BREACHES).where(one_of(BREACHES.c.open_key, "keys")))
_BREACH = Prepared(sa_select(BREACHES).where(BREACHES.c.id == bindparam("breach_id")))
_RESOLVED_SINCE = Prepared(
    sa_select(BREACHES)
    .where(
        *_equal(BREACHES, "region", "indicator_id", "provider"),
        BREACHES.c.state == str(model.BreachState.RESOLVED),
        BREACHES.c.warning.is_(False),
        BREACHES.c.resolved_at >= bindparam("since"),
    )
    .order_by(BREACHES.c.resolved_at.desc())
    .limit(1)
)
_IN_FORCE = Prepared(
    sa_select(PROGRAMMES)
    .where(
        PROGRAMMES.c.region == bindparam("region"), PROGRAMMES.c.state == str(model.ProgrammeState.PUBLISHED)
    )
    .order_by(PROGRAMMES.c.version.desc())
    .limit(1)
)
# And its writes: rows added go straight to sqlite3 when the unit of work is saved (`_Added`).
_INSERT_INDICATOR = TableInserter(INDICATORS)
_INSERT_PENDING_CASE = TableInserter(PENDING_CASES)
_INSERT_BREACH = TableInserter(BREACHES)
_INSERT_ALERT = TableInserter(ALERTS)
_INSERT_CORRECTIVE_ACTION = TableInserter(CORRECTIVE_ACTIONS)
_PENDING_KEY = ("region", "indicator_id", "source", "observation_id")
_COMPLETE_PENDING = Prepared(delete(PENDING_CASES).where(*_equal(PENDING_CASES, *_PENDING_KEY)))
_COUNT_PENDING = Prepared(
    update(PENDING_CASES)
    .where(*_equal(PENDING_CASES, *_PENDING_KEY, prefix="case_"))
    .values(counted_on=bindparam("counted_on"))
)
_OVERDUE = Prepared(
    sa_select(PENDING_CASES).where(
        *_equal(PENDING_CASES, "region", "indicator_id"),
        PENDING_CASES.c.due_on < bindparam("today"),
        PENDING_CASES.c.counted_on.is_(None),
    )
)
_BREACH_CHANGES: dict[str, Any] = {
    name: bindparam(name) for name in ("state", "value", "sample_size", "severity", "resolved_at")
}
_UPDATE_BREACH = update(BREACHES).where(BREACHES.c.id == bindparam("breach_id"))
_UPDATE_OPEN_BREACH = Prepared(_UPDATE_BREACH.values(_BREACH_CHANGES))
_UPDATE_CLOSED_BREACH = Prepared(_UPDATE_BREACH.values({**_BREACH_CHANGES, "open_key": None}))
"""A breach no longer open frees its open key for the next breach of its indicator and scope group."""

_AVAILABILITY_KEY = ("region", "service", "business_id")
_AVAILABILITY = Prepared(sa_select(AVAILABILITY).where(*_equal(AVAILABILITY, *_AVAILABILITY_KEY)))


def _put_availability(insert: Any) -> Any:
    columns = [column.name for column in AVAILABILITY.columns]
    statement = insert(AVAILABILITY).values({name: bindparam(name) for name in columns})
    return statement.on_conflict_do_update(
        index_elements=[AVAILABILITY.c[name] for name in _AVAILABILITY_KEY],
        set_={name: statement.excluded[name] for name in columns if name not in _AVAILABILITY_KEY},
    )


_PUT_AVAILABILITY = Prepared(_put_availability(sqlite.insert), elsewhere=_put_availability(postgresql.insert))
_OPEN_SERIOUS = Prepared(
    sa_select(BREACHES).where(
        *_equal(BREACHES, "region", "provider", "service"),
        BREACHES.c.open_key.is_not(None),
        BREACHES.c.severity == str(model.Severity.SERIOUS),
        BREACHES.c.warning.is_(False),
        BREACHES.c.scope == str(model.Scope.PROVIDER),
    )
)
_INSERT_OBSERVATIONS = TableInserter(OBSERVATIONS)


_SUMS = ("sample_size", "weight", "weighted_value")
_BUCKET_KEYS = ("region", "indicator_id", "scope_key", "day")
_GROUP_BUCKET_KEYS = ("region", "indicator_id", "scope_key", "group_key", "day")
_ADD_TO_BUCKETS = TableInserter(BUCKETS, add_on_conflict=(_BUCKET_KEYS, _SUMS))
_ADD_TO_GROUP_BUCKETS = TableInserter(GROUP_BUCKETS, add_on_conflict=(_GROUP_BUCKET_KEYS, _SUMS))


async def _add_sums(
    uow: UnitOfWork, upsert: TableInserter, names: tuple[str, ...], buckets: dict[Any, model.DayBucket]
) -> None:
    """Add sums to their buckets (keyed as `names` say): one upsert for them all."""
    names = (*names, *_SUMS)
    await upsert.insert(
        uow.connection,
        [
            dict(zip(names, (*key, bucket.sample_size, bucket.weight, bucket.weighted_value), strict=True))
            for key, bucket in buckets.items()
        ],
    )


class _Added:
    """The rows a unit of work's repositories added, inserted when it is saved (or when a
    statement must see them first), one insert per table: `add` stays synchronous for handlers,
    as with the ORM's session.add, without the ORM's flush, which cost more than the rest of an
    observation that opens a breach (the breach, its alert, its corrective action)."""

    def __init__(self) -> None:
        self._rows: dict[TableInserter, list[dict[str, Any]]] = {}

    def add(self, inserter: TableInserter, row: dict[str, Any]) -> None:
        self._rows.setdefault(inserter, []).append(row)

    async def insert(self, connection: AsyncConnection) -> None:
        rows, self._rows = self._rows, {}
        for inserter, added in rows.items():
            await inserter.insert(connection, added)


def indicator_from_row(row: Any) -> model.Indicator:
    """An indicator from its row: an ORM IndicatorRow or a Core row of the same table."""
    return model.Indicator(
        region=row.region,
        indicator_id=row.indicator_id,
        display_name=row.display_name,
        service=row.service,
        deadline_days=row.deadline_days,
        threshold=row.minimum_share,
        window_days=row.window_days,
        minimum_sample=row.minimum_sample,
        severity=model.Severity(row.severity),
        recovery_threshold=row.recovery_threshold or row.minimum_share,
        kind=model.MetricKind(row.kind),
        created_at=row.created_at,
        warning_threshold=row.warning_threshold,
        scope=model.Scope(row.scope),
    )


def open_key(region: str, indicator_id: str, key: str, *, warning: bool = False) -> str:
    """At most one open breach, and one open warning, per indicator and scope group (for the
    provider scope, the provider)."""
    return f"{region}/{indicator_id}/{key}" + ("/warning" if warning else "")


def breach_from_row(row: Any) -> model.Breach:
    """A breach from its row: an ORM BreachRow or a Core row of the same table."""
    return model.Breach(
        id=row.id,
        region=row.region,
        indicator_id=row.indicator_id,
        provider=row.provider,
        service=row.service,
        severity=model.Severity(row.severity),
        value=row.value,
        threshold=row.threshold,
        sample_size=row.sample_size,
        opened_at=row.opened_at,
        state=model.BreachState(row.state),
        recovery_threshold=row.recovery_threshold or row.threshold,
        resolved_at=row.resolved_at,
        window_start=row.window_start,
        window_end=row.window_end,
        warning=row.warning,
        scope=model.Scope(row.scope),
        scope_key=row.scope_key or row.provider,
        group=row.group_key,
    )


class IndicatorRepository:
    async def page(self, region: str, after: str, limit: int) -> list[model.Indicator]:
        query = select(IndicatorRow).where(
            IndicatorRow.region == region, col(IndicatorRow.indicator_id) > after
        )
        result = await self._session.exec(query.order_by(col(IndicatorRow.indicator_id)).limit(limit))
        return [indicator_from_row(row) for row in result.all()]

    async def of_region(self, region: str) -> list[model.Indicator]:
        result = await self._session.exec(
            select(IndicatorRow).where(IndicatorRow.region == region).order_by(col(IndicatorRow.indicator_id))
        )
        return [indicator_from_row(row) for row in result.all()]

    def __init__(self, session: AsyncSession, uow: UnitOfWork, added: _Added) -> None:
        self._session = session
        self._uow = uow
        self._added = added
        self._new: dict[tuple[str, str], model.Indicator] = {}
        """Indicators this unit of work added: their rows are inserted when it is saved."""

    async def get(
        self, region: str, indicator_id: str, *, for_update: bool = False
    ) -> model.Indicator | None:
        if (new := self._new.get((region, indicator_id))) is not None:
            return new
        # Locking the indicator serialises evaluations of it on PostgreSQL, so two concurrent
        # late cases cannot each miss the other and both skip the breach. (SQLite's single
        # writer serialises them already.)
        statement = _INDICATOR_FOR_UPDATE if for_update and not self._uow.read_only else _INDICATOR
        key = {"region": region, "indicator_id": indicator_id}
        row = (await statement.execute(self._uow.connection, key)).first()
        return indicator_from_row(row) if row is not None else None

    def add(self, indicator: model.Indicator) -> None:
        assert indicator.created_at is not None, "only created indicators are stored"
        self._added.add(
            _INSERT_INDICATOR,
            {
                "region": indicator.region,
                "indicator_id": indicator.indicator_id,
                "display_name": indicator.display_name,
                "service": indicator.service,
                "deadline_days": indicator.deadline_days,
                "minimum_share": indicator.threshold,
                "window_days": indicator.window_days,
                "minimum_sample": indicator.minimum_sample,
                "severity": str(indicator.severity),
                "recovery_threshold": indicator.recovery_threshold,
                "kind": str(indicator.kind),
                "created_at": indicator.created_at,
                "warning_threshold": indicator.warning_threshold,
                "scope": str(indicator.scope),
            },
        )
        self._new[(indicator.region, indicator.indicator_id)] = indicator
        self._uow.track(indicator, indicator.name)


class ObservationRepository:
    """Observations through Core on the hot path: one select for a batch's ids, one insert."""

    def __init__(self, uow: UnitOfWork) -> None:
        self._uow = uow

    async def existing(self, region: str, ids: list[str]) -> list[tuple[str, model.Observation]]:
        """The region's observations under these ids, of any indicator and source."""
        rows = await _OBSERVATIONS_BY_ID.execute(self._uow.connection, {"region": region, "ids": ids})
        return [
            (
                indicator_id,
                model.Observation(
                    oid, provider, key, started, completed, model.ObservationSource(source), value, *keys
                ),
            )
            for indicator_id, source, oid, provider, key, started, completed, value, *keys in rows.all()
        ]

    async def insert(
        self, observations: list[tuple[model.Indicator, model.Observation]], recorded_at: datetime
    ) -> None:
        await _INSERT_OBSERVATIONS.insert(
            self._uow.connection,
            [
                {
                    "region": indicator.region,
                    "indicator_id": indicator.indicator_id,
                    "source": str(observation.source),
                    "observation_id": observation.observation_id,
                    "provider": observation.provider,
                    "case_key": observation.case_key,
                    "started_on": observation.started_on,
                    "completed_on": observation.completed_on,
                    "within_deadline": model.is_within_deadline(indicator, observation),
                    "value": observation.value,
                    "recorded_at": recorded_at,
                    "service": observation.service,
                    "municipality": observation.municipality,
                    "group_key": observation.group,
                }
                for indicator, observation in observations
            ],
        )

    async def behind(
        self, breach: model.Breach, before: tuple[date, str, str] | None, limit: int
    ) -> list[model.Observation]:
        """The breach's evidence: its scope group's observations on its indicator in its window,
        newest first; keyset on (completed_on, source, observation_id)."""
        table = OBSERVATIONS.c
        query = sa_select(
            table.observation_id,
            table.provider,
            table.case_key,
            table.started_on,
            table.completed_on,
            table.source,
            table.value,
            table.service,
            table.municipality,
            table.group_key,
        ).where(table.region == breach.region, table.indicator_id == breach.indicator_id)
        if grouped_by := model.SCOPE_FIELDS[breach.scope]:
            query = query.where(table[grouped_by] == breach.scope_key)
        if breach.window_start is not None and breach.window_end is not None:
            query = query.where(
                table.completed_on >= breach.window_start, table.completed_on <= breach.window_end
            )
        if before is not None:
            day, source, last_id = before
            query = query.where(
                (table.completed_on < day)
                | ((table.completed_on == day) & (table.source < source))
                | ((table.completed_on == day) & (table.source == source) & (table.observation_id < last_id))
            )
        query = query.order_by(
            table.completed_on.desc(), table.source.desc(), table.observation_id.desc()
        ).limit(limit)
        rows = await self._uow.connection.execute(query)
        return [
            model.Observation(
                oid, provider, key, started, completed, model.ObservationSource(source), value, *keys
            )
            for oid, provider, key, started, completed, source, value, *keys in rows
        ]


def pending_from_row(row: Any) -> model.PendingCase:
    """A pending case from its row: an ORM PendingCaseRow or a Core row of the same table."""
    observation = model.Observation(
        row.observation_id,
        row.provider,
        row.case_key,
        row.started_on,
        row.started_on,
        model.ObservationSource(row.source),
        service=row.service,
        municipality=row.municipality,
    )
    return model.PendingCase(observation, row.due_on, row.counted_on)


class PendingCaseRepository:
    def __init__(self, uow: UnitOfWork, added: _Added) -> None:
        self._uow = uow
        self._added = added

    async def existing(self, region: str, ids: list[str]) -> list[tuple[str, model.PendingCase]]:
        """The region's pending cases under these ids, of any indicator and source."""
        rows = await _PENDING_BY_ID.execute(self._uow.connection, {"region": region, "ids": ids})
        return [(row.indicator_id, pending_from_row(row)) for row in rows.all()]

    def add(self, indicator: model.Indicator, case: model.PendingCase) -> None:
        observation = case.observation
        self._added.add(
            _INSERT_PENDING_CASE,
            {
                **_pending_key(indicator, case),
                "provider": observation.provider,
                "case_key": observation.case_key,
                "started_on": observation.started_on,
                "due_on": case.due_on,
                "counted_on": None,
                "service": observation.service,
                "municipality": observation.municipality,
            },
        )

    async def completed(self, indicator: model.Indicator, case: model.PendingCase) -> None:
        # A batch may start a case and complete it: the row it added goes in first, then out.
        await self._added.insert(self._uow.connection)
        await _COMPLETE_PENDING.execute(self._uow.connection, _pending_key(indicator, case))

    async def overdue(self, indicator: model.Indicator, today: date) -> list[model.PendingCase]:
        """Cases past their deadline (due before today) not counted yet."""
        found = await _OVERDUE.execute(
            self._uow.connection,
            {"region": indicator.region, "indicator_id": indicator.indicator_id, "today": today},
        )
        return [pending_from_row(row) for row in found.all()]

    async def mark_counted(
        self, indicator: model.Indicator, cases: list[model.PendingCase], today: date
    ) -> None:
        for case in cases:
            key = {f"case_{name}": value for name, value in _pending_key(indicator, case).items()}
            await _COUNT_PENDING.execute(self._uow.connection, {**key, "counted_on": today})


def _pending_key(indicator: model.Indicator, case: model.PendingCase) -> dict[str, Any]:
    observation = case.observation
    return {
        "region": indicator.region,
        "indicator_id": indicator.indicator_id,
        "source": str(observation.source),
        "observation_id": observation.observation_id,
    }


def _window(indicator: model.Indicator, as_of: date) -> dict[str, Any]:
    """The parameters of a window statement: the indicator and the window's first and last day."""
    start, end = model.window_bounds(indicator, as_of)
    return {"region": indicator.region, "indicator_id": indicator.indicator_id, "start": start, "end": end}


def _stats(row: Any) -> model.WindowStats:
    return model.WindowStats(
        int(row.sample_size or 0), float(row.weight or 0), float(row.weighted_value or 0)
    )


class DayBucketRepository:
    def __init__(self, uow: UnitOfWork) -> None:
        self._uow = uow

    async def add(self, buckets: dict[tuple[str, str, str, date], model.DayBucket]) -> None:
        """Add sums to their days' buckets (keyed region, indicator, scope key, day)."""
        await _add_sums(self._uow, _ADD_TO_BUCKETS, _BUCKET_KEYS, buckets)

    async def window_of_all(self, indicator: model.Indicator, as_of: date) -> dict[str, model.WindowStats]:
        """Every scope group's window on the indicator, summed from the day buckets."""
        start, end = model.window_bounds(indicator, as_of)
        table = BUCKETS.c
        query = (
            sa_select(
                table.scope_key,
                func.sum(table.sample_size),
                func.sum(table.weight),
                func.sum(table.weighted_value),
            )
            .where(
                table.region == indicator.region,
                table.indicator_id == indicator.indicator_id,
                table.day >= start,
                table.day <= end,
            )
            .group_by(table.scope_key)
            .order_by(table.scope_key)
        )
        return {
            key: model.WindowStats(int(sample or 0), float(weight or 0), float(weighted or 0))
            for key, sample, weight, weighted in await self._uow.connection.execute(query)
        }

    async def window(
        self, indicator: model.Indicator, providers: list[str], as_of: date
    ) -> dict[str, model.WindowStats]:
        """Each scope group's window (keyed as the buckets are), summed from its day buckets."""
        rows = await _WINDOWS.execute(self._uow.connection, {**_window(indicator, as_of), "keys": providers})
        return {row.scope_key: _stats(row) for row in rows.all()}


class GroupBucketRepository:
    """Equal treatment's customer-group sums per scope group and day."""

    def __init__(self, uow: UnitOfWork) -> None:
        self._uow = uow

    async def add(self, buckets: dict[tuple[str, str, str, str, date], model.DayBucket]) -> None:
        """Add sums (keyed region, indicator, scope key, group, day)."""
        await _add_sums(self._uow, _ADD_TO_GROUP_BUCKETS, _GROUP_BUCKET_KEYS, buckets)

    async def window(
        self, indicator: model.Indicator, keys: list[str] | None, as_of: date
    ) -> dict[str, dict[str, model.WindowStats]]:
        """Each scope group's customer groups' windows (every scope group's when keys is None)."""
        window = _window(indicator, as_of)
        if keys is None:
            rows = await _ALL_GROUP_WINDOWS.execute(self._uow.connection, window)
        else:
            rows = await _GROUP_WINDOWS.execute(self._uow.connection, {**window, "keys": keys})
        found: dict[str, dict[str, model.WindowStats]] = {}
        for row in rows.all():
            found.setdefault(row.scope_key, {})[row.group_key] = _stats(row)
        return found


class BreachRepository:
    def __init__(self, session: AsyncSession, uow: UnitOfWork, added: _Added) -> None:
        self._session = session
        self._uow = uow
        self._added = added

    async def get(self, breach_id: str) -> model.Breach | None:
        row = (await _BREACH.execute(self._uow.connection, {"breach_id": breach_id})).first()
        return breach_from_row(row) if row is not None else None

    async def open_of_many(
        self, region: str, indicator_id: str, providers: list[str], *, warning: bool = False
    ) -> dict[str, model.Breach]:
        """The providers' open breaches (or warnings) on the indicator, by their unique open
        keys: one query for them all (a row by row ORM load of every open breach made each
        evaluation slower as breaches stayed open)."""
        keys = [open_key(region, indicator_id, p, warning=warning) for p in providers]
        rows = await _OPEN_BREACHES.execute(self._uow.connection, {"keys": keys})
        return {breach.scope_key: breach for breach in map(breach_from_row, rows.all())}

    async def open_serious(self, region: str, provider: str, service: str) -> list[model.Breach]:
        """Asked for every admission the registry reports: prepared once."""
        result = await _OPEN_SERIOUS.execute(
            await connection_of(self._session), {"region": region, "provider": provider, "service": service}
        )
        return [breach_from_row(row) for row in result.all()]

    async def resolved_since(
        self, region: str, indicator_id: str, provider: str, since: datetime
    ) -> model.Breach | None:
        """The pair's latest breach resolved at or after `since`, if any."""
        result = await _RESOLVED_SINCE.execute(
            self._uow.connection,
            {"region": region, "indicator_id": indicator_id, "provider": provider, "since": since},
        )
        row = result.first()
        return breach_from_row(row) if row is not None else None

    async def update(self, breach: model.Breach) -> None:
        """Write back a breach's state; a resolved one frees its indicator and provider for a new one."""
        # At once, not when the unit is saved: the freed open key must be gone before a new
        # breach of the same pair takes it.
        statement = _UPDATE_OPEN_BREACH if breach.state is model.BreachState.OPEN else _UPDATE_CLOSED_BREACH
        updated = await statement.execute(
            self._uow.connection,
            {
                "breach_id": breach.id,
                "state": str(breach.state),
                "value": breach.value,
                "sample_size": breach.sample_size,
                "severity": str(breach.severity),
                "resolved_at": breach.resolved_at,
            },
        )
        assert updated.rowcount == 1, f"{breach.name} is stored"
        self._uow.track(breach, breach.name)

    def add(self, breach: model.Breach) -> None:
        self._added.add(
            _INSERT_BREACH,
            {
                "id": breach.id,
                "region": breach.region,
                "indicator_id": breach.indicator_id,
                "provider": breach.provider,
                "service": breach.service,
                "severity": str(breach.severity),
                "value": breach.value,
                "threshold": breach.threshold,
                "sample_size": breach.sample_size,
                "state": str(breach.state),
                "open_key": open_key(
                    breach.region, breach.indicator_id, breach.scope_key, warning=breach.warning
                ),
                "opened_at": breach.opened_at,
                "recovery_threshold": breach.recovery_threshold,
                "resolved_at": breach.resolved_at,
                "window_start": breach.window_start,
                "window_end": breach.window_end,
                "warning": breach.warning,
                "scope": str(breach.scope),
                "scope_key": breach.scope_key,
                "group_key": breach.group,
            },
        )
        self._uow.track(breach, breach.name)

    async def page(
        self,
        region: str,
        before: tuple[datetime, str] | None,
        limit: int,
        *,
        state: model.BreachState | None = None,
        severity: model.Severity | None = None,
        provider: str = "",
    ) -> list[model.Breach]:
        """Newest first; keyset on (opened_at, id) so pages stay stable as breaches open."""
        query = select(BreachRow).where(BreachRow.region == region)
        if state is not None:
            query = query.where(BreachRow.state == str(state))
        if severity is not None:
            query = query.where(BreachRow.severity == str(severity))
        if provider:
            query = query.where(BreachRow.provider == provider)
        if before is not None:
            query = query.where(older_than(col(BreachRow.opened_at), col(BreachRow.id), before))
        query = query.order_by(col(BreachRow.opened_at).desc(), col(BreachRow.id).desc()).limit(limit)
        return [breach_from_row(row) for row in (await self._session.exec(query)).all()]


def programme_from_row(row: Any) -> model.Programme:
    """A programme from its row: an ORM ProgrammeRow or a Core row of the same table."""
    return model.Programme(
        region=row.region,
        version=row.version,
        display_name=row.display_name,
        indicators=tuple(model.WatchedIndicator(**item) for item in json.loads(row.indicators)),
        policies=tuple(
            model.SeverityPolicy(
                model.Severity(item["severity"]),
                model.PolicyAction(item["action"]),
                item["corrective_action_days"],
                item.get("recurrence_days", 0),
            )
            for item in json.loads(row.policies)
        ),
        state=model.ProgrammeState(row.state),
        created_at=row.created_at,
        published_at=row.published_at,
        publication_date=row.publication_date,
    )


class ProgrammeRepository:
    def __init__(self, session: AsyncSession, uow: UnitOfWork) -> None:
        self._session = session
        self._uow = uow
        self._in_force: dict[str, model.Programme | None] = {}
        """By region, as this unit of work read it: once, however many breaches it opens."""

    async def get(self, region: str, version: int) -> model.Programme | None:
        row = await self._session.get(ProgrammeRow, (region, version))
        return programme_from_row(row) if row is not None else None

    async def next_version(self, region: str) -> int:
        await serialize_on(self._session, f"selfmonitoring-programme/{region}")
        result = await self._session.exec(
            select(func.max(ProgrammeRow.version)).where(ProgrammeRow.region == region)
        )
        return int(result.one() or 0) + 1

    async def in_force(self, region: str) -> model.Programme | None:
        """The newest published version."""
        if region not in self._in_force:
            row = (await _IN_FORCE.execute(self._uow.connection, {"region": region})).first()
            self._in_force[region] = programme_from_row(row) if row is not None else None
        return self._in_force[region]

    async def page(
        self, region: str, before: int | None, limit: int, published_only: bool
    ) -> list[model.Programme]:
        query = select(ProgrammeRow).where(ProgrammeRow.region == region)
        if published_only:
            query = query.where(ProgrammeRow.state == str(model.ProgrammeState.PUBLISHED))
        if before is not None:
            query = query.where(col(ProgrammeRow.version) < before)
        query = query.order_by(col(ProgrammeRow.version).desc()).limit(limit)
        return [programme_from_row(row) for row in (await self._session.exec(query)).all()]

    def add(self, programme: model.Programme) -> None:
        assert programme.created_at is not None, "only created programmes are stored"
        self._session.add(
            ProgrammeRow(
                region=programme.region,
                version=programme.version,
                display_name=programme.display_name,
                indicators=json.dumps([asdict(item) for item in programme.indicators]),
                policies=json.dumps(
                    [
                        {
                            "severity": str(p.severity),
                            "action": str(p.action),
                            "corrective_action_days": p.corrective_action_days,
                            "recurrence_days": p.recurrence_days,
                        }
                        for p in programme.policies
                    ]
                ),
                state=str(programme.state),
                created_at=programme.created_at,
            )
        )
        self._uow.track(programme, programme.name)

    async def publish(self, programme: model.Programme) -> None:
        row = await self._session.get(ProgrammeRow, (programme.region, programme.version))
        assert row is not None, f"{programme.name} is stored"
        row.state = str(programme.state)
        row.published_at = programme.published_at
        row.publication_date = programme.publication_date
        self._session.add(row)
        self._in_force.pop(programme.region, None)
        self._uow.track(programme, programme.name)


def alert_from_row(row: AlertRow) -> model.Alert:
    return model.Alert(
        region=row.region,
        breach_id=row.breach_id,
        kind=model.AlertKind(row.kind),
        created_at=row.created_at,
        acknowledged_by=row.acknowledged_by,
        acknowledged_at=row.acknowledged_at,
    )


class AlertRepository:
    def __init__(self, session: AsyncSession, uow: UnitOfWork, added: _Added) -> None:
        self._session = session
        self._uow = uow
        self._added = added

    def add(self, alert: model.Alert) -> None:
        self._added.add(
            _INSERT_ALERT,
            {
                "region": alert.region,
                "alert_id": alert.id,
                "breach_id": alert.breach_id,
                "kind": str(alert.kind),
                "created_at": alert.created_at,
                "acknowledged_by": alert.acknowledged_by,
                "acknowledged_at": alert.acknowledged_at,
            },
        )

    async def get(self, region: str, alert_id: str) -> model.Alert | None:
        row = await self._session.get(AlertRow, (region, alert_id))
        return alert_from_row(row) if row is not None else None

    async def acknowledge(self, alert: model.Alert) -> None:
        row = await self._session.get(AlertRow, (alert.region, alert.id))
        assert row is not None, f"{alert.name} is stored"
        row.acknowledged_by = alert.acknowledged_by
        row.acknowledged_at = alert.acknowledged_at
        self._session.add(row)
        self._uow.track(alert, alert.name)

    async def page(
        self, region: str, before: tuple[datetime, str] | None, limit: int
    ) -> list[tuple[model.Alert, model.Breach]]:
        """Newest first, each with its breach; keyset on (created_at, alert_id)."""
        query = (
            select(AlertRow, BreachRow)
            .join(BreachRow, col(BreachRow.id) == col(AlertRow.breach_id))
            .where(AlertRow.region == region)
        )
        if before is not None:
            query = query.where(older_than(col(AlertRow.created_at), col(AlertRow.alert_id), before))
        query = query.order_by(col(AlertRow.created_at).desc(), col(AlertRow.alert_id).desc()).limit(limit)
        return [(alert_from_row(a), breach_from_row(b)) for a, b in (await self._session.exec(query)).all()]


def action_from_row(row: CorrectiveActionRow) -> model.CorrectiveAction:
    return model.CorrectiveAction(
        region=row.region,
        breach_id=row.breach_id,
        provider=row.provider,
        due_on=row.due_on,
        requested_at=row.requested_at,
        state=model.CorrectiveActionState(row.state),
        response=row.response,
        responded_at=row.responded_at,
    )


class CorrectiveActionRepository:
    def __init__(self, session: AsyncSession, uow: UnitOfWork, added: _Added) -> None:
        self._session = session
        self._uow = uow
        self._added = added

    def add(self, action: model.CorrectiveAction) -> None:
        self._added.add(
            _INSERT_CORRECTIVE_ACTION,
            {
                "region": action.region,
                "breach_id": action.breach_id,
                "provider": action.provider,
                "due_on": action.due_on,
                "requested_at": action.requested_at,
                "state": str(action.state),
                "response": action.response,
                "responded_at": action.responded_at,
            },
        )
        self._uow.track(action, action.name)

    async def get(self, region: str, action_id: str) -> model.CorrectiveAction | None:
        row = await self._session.get(CorrectiveActionRow, (region, action_id))
        return action_from_row(row) if row is not None else None

    async def update(self, action: model.CorrectiveAction) -> None:
        row = await self._session.get(CorrectiveActionRow, (action.region, action.id))
        assert row is not None, f"{action.name} is stored"
        row.state = str(action.state)
        row.response = action.response
        row.responded_at = action.responded_at
        self._session.add(row)
        self._uow.track(action, action.name)

    async def page(
        self, region: str, provider: str, before: tuple[datetime, str] | None, limit: int
    ) -> list[model.CorrectiveAction]:
        query = select(CorrectiveActionRow).where(CorrectiveActionRow.region == region)
        if provider:
            query = query.where(CorrectiveActionRow.provider == provider)
        if before is not None:
            query = query.where(
                older_than(col(CorrectiveActionRow.requested_at), col(CorrectiveActionRow.breach_id), before)
            )
        query = query.order_by(
            col(CorrectiveActionRow.requested_at).desc(), col(CorrectiveActionRow.breach_id).desc()
        ).limit(limit)
        return [action_from_row(row) for row in (await self._session.exec(query)).all()]


class AdmittedProviderRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    # Every registration's admission and change passes here (prepared statements: the ORM's
    # get-and-flush cost more than the rest of the consumer's unit of work).
    async def _row(self, region: str, service: str, business_id: str, now: datetime) -> dict[str, Any]:
        key = {"region": region, "service": service, "business_id": business_id}
        # Read, then write back: concurrent changes of one provider take turns (PostgreSQL).
        await serialize_on(self._session, f"selfmonitoring:availability:{region}/{service}/{business_id}")
        found = (await _AVAILABILITY.execute(await connection_of(self._session), key)).first()
        if found is not None:
            return found._asdict()  # type: ignore[no-any-return]
        return {
            **key,
            "municipalities": "[]",
            "languages": "[]",
            "suspended": False,
            "updated_at": now,
            "ended": False,
            "changed_at": None,
        }

    async def _put(self, row: dict[str, Any]) -> None:
        await _PUT_AVAILABILITY.execute(await connection_of(self._session), row)

    async def admitted(self, provider: model.AdmittedProvider, at: datetime, now: datetime) -> None:
        """Upsert: an admission gives where and in which languages; unless a later change was
        applied already (its event arrived first), it makes the provider admitted and active."""
        row = await self._row(provider.region, provider.service, provider.business_id, now)
        row["municipalities"] = json.dumps(sorted(provider.municipalities))
        row["languages"] = json.dumps(sorted(provider.languages))
        if _newer(at, row["changed_at"]):
            row["suspended"] = row["ended"] = False
            row["changed_at"] = at
        row["updated_at"] = now
        await self._put(row)

    async def changed(  # noqa: PLR0917 - the key, the change and its times
        self,
        region: str,
        service: str,
        business_id: str,
        change: model.AvailabilityChange,
        at: datetime,
        now: datetime,
    ) -> bool:
        """Apply a change made at `at`, unless a later one was applied already; a change arriving
        before the admission it follows is kept, and the admission fills in where and how."""
        row = await self._row(region, service, business_id, now)
        if not _newer(at, row["changed_at"]):
            return False
        row["suspended"] = change is model.AvailabilityChange.SUSPENDED
        row["ended"] = change is model.AvailabilityChange.ENDED
        row["changed_at"] = at
        row["updated_at"] = now
        await self._put(row)
        return True

    async def of_region(self, region: str) -> list[model.AdmittedProvider]:
        result = await self._session.exec(
            select(AdmittedProviderRow).where(AdmittedProviderRow.region == region)
        )
        return [
            model.AdmittedProvider(
                row.region,
                row.service,
                row.business_id,
                tuple(json.loads(row.municipalities)),
                tuple(json.loads(row.languages)),
                row.suspended,
                row.ended,
            )
            for row in result.all()
        ]


def _newer(at: datetime, last: datetime | None) -> bool:
    """Whether a change at `at` comes after (or with) the last one applied; SQLite returns naive
    UTC times, PostgreSQL aware ones."""
    if last is None:
        return True
    if last.tzinfo is None:
        last = last.replace(tzinfo=UTC)
    return at >= last


class SelfMonitoringUnitOfWork(UnitOfWork):
    """Self-monitoring's unit of work: indicators, observations and breaches."""

    indicators: IndicatorRepository
    observations: ObservationRepository
    buckets: DayBucketRepository
    group_buckets: GroupBucketRepository
    pending: PendingCaseRepository
    breaches: BreachRepository
    programmes: ProgrammeRepository
    alerts: AlertRepository
    corrective_actions: CorrectiveActionRepository
    admitted: AdmittedProviderRepository

    async def bind(self, session: AsyncSession) -> None:
        await super().bind(session)
        self._added = added = _Added()
        self.indicators = IndicatorRepository(session, self, added)
        self.observations = ObservationRepository(self)
        self.buckets = DayBucketRepository(self)
        self.group_buckets = GroupBucketRepository(self)
        self.pending = PendingCaseRepository(self, added)
        self.breaches = BreachRepository(session, self, added)
        self.programmes = ProgrammeRepository(session, self)
        self.alerts = AlertRepository(session, self, added)
        self.corrective_actions = CorrectiveActionRepository(session, self, added)
        self.admitted = AdmittedProviderRepository(session)

    async def save(self) -> None:
        await super().save()
        await self._added.insert(self.connection)


def unit_of_work_factory() -> Callable[[Context, datetime, bool], SelfMonitoringUnitOfWork]:
    def make(context: Context, now: datetime, read_only: bool) -> SelfMonitoringUnitOfWork:
        return SelfMonitoringUnitOfWork(context, now, read_only=read_only)

    return make

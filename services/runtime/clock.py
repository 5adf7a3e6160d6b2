"""The suite's clock: aware UTC instants and "today in Finland", injectable in tests."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from services.runtime.domain import FINLAND, finnish_date

__all__ = ["FINLAND", "SYSTEM_CLOCK", "Clock", "ManualClock", "finnish_date"]


class Clock:
    """The wall clock. Handlers read time only through the unit of work's clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def today(self) -> date:
        """Today in Finland."""
        return finnish_date(self.now())


class ManualClock(Clock):
    """A clock that moves only when told to: for tests of deadlines, timers and expiry."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime.now(UTC)
        if self._now.tzinfo is None:
            raise ValueError("a clock's time must be timezone-aware")

    def now(self) -> datetime:
        return self._now

    def advance(self, by: timedelta) -> None:
        self._now += by

    def set(self, moment: datetime) -> None:
        if moment.tzinfo is None:
            raise ValueError("a clock's time must be timezone-aware")
        self._now = moment


SYSTEM_CLOCK = Clock()

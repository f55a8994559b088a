"""An ISO week in UTC: what a weekly report covers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from ntds.errors import InputError
from ntds.wire.schema import TIME_MAX, TIME_MIN


@dataclass(frozen=True)
class Week:
    """An ISO week in UTC, Monday 00:00 to the next Monday."""

    year: int
    number: int

    @classmethod
    def parse(cls, text: str) -> Week:
        """An ISO week such as 2026-W47, within the span of times the wire accepts."""
        try:
            year, _, num = text.upper().partition("-W")
            week = cls(int(year), int(num))
            date.fromisocalendar(week.year, week.number, 1)
        except ValueError:
            raise InputError(f"--week {text!r:.40}: expected an ISO week such as 2026-W47") from None
        if not cls.containing(TIME_MIN.date()) <= week <= cls.containing(TIME_MAX.date()):
            raise InputError(
                f"--week {text}: outside the weeks ntds holds data for "
                f"({cls.containing(TIME_MIN.date())} .. {cls.containing(TIME_MAX.date())})"
            )
        return week

    def __le__(self, other: Week) -> bool:
        return (self.year, self.number) <= (other.year, other.number)

    @property
    def start_s(self) -> float:
        """Monday 00:00 UTC, seconds since the epoch."""
        return datetime.combine(self.first, datetime.min.time(), UTC).timestamp()

    @property
    def end_s(self) -> float:
        return self.start_s + 7 * 86400

    @classmethod
    def containing(cls, day: date) -> Week:
        y, w, _ = day.isocalendar()
        return cls(y, w)

    @classmethod
    def previous_complete(cls, now: datetime | None = None) -> Week:
        return cls.containing((now or datetime.now(UTC)).date() - timedelta(days=7))

    @property
    def first(self) -> date:
        return date.fromisocalendar(self.year, self.number, 1)

    @property
    def days(self) -> list[date]:
        return [self.first + timedelta(days=i) for i in range(7)]

    def shifted(self, weeks: int) -> Week:
        return Week.containing(self.first + timedelta(weeks=weeks))

    def __str__(self) -> str:
        return f"{self.year}-W{self.number:02d}"

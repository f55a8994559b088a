"""What every report section reads: one archive table over a span of days, as a Dask DataFrame.

Each archive file becomes one Dask partition (`dd.from_map`), read with the
archive's own schema, so an empty week is a typed empty frame rather than an
error, and the partitions are the same on one machine and on workers (which
must see the archive at the same path).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import dask.dataframe as dd
import pandas as pd
import pyarrow.parquet as pq

from aggregator.archive import TABLES, Archive, only
from aggregator.report.week import Week
from ntds.wire.schema import TIERS

HISTORY_WEEKS = 12
"""Weeks in the throughput history, this week included."""
TIER_COLUMNS = [f"tier{k}" for k in range(TIERS)]


def _read(path: str, table: str, sensors: list[str] | None = None, filesystem=None) -> pd.DataFrame:
    return only(pq.read_table(path, schema=TABLES[table], filesystem=filesystem), sensors).to_pandas()


@dataclass(frozen=True)
class Query:
    """The archive, the week and the sensor filter of one report."""

    archive: Archive
    week: Week
    sensors: list[str] | None = None

    @property
    def first(self) -> date:
        return self.week.first

    @property
    def last(self) -> date:
        return self.week.first + timedelta(days=6)

    @property
    def history_first(self) -> date:
        return self.week.shifted(-(HISTORY_WEEKS - 1)).first

    @property
    def previous_first(self) -> date:
        return self.week.shifted(-1).first

    def frame(self, table: str, first: date | None = None) -> dd.DataFrame:
        """One archive table from `first` (default: the week's Monday) to the week's Sunday."""
        files = self.archive.files(table, first or self.first, self.last, self.sensors)
        if not files:
            return dd.from_pandas(TABLES[table].empty_table().to_pandas(), npartitions=1)
        return dd.from_map(_read, files, table=table, sensors=self.sensors, filesystem=self.archive.filesystem,
                           meta=TABLES[table].empty_table().to_pandas())  # fmt: skip


def day_index(times: dd.Series, first: date) -> dd.Series:
    """Whole days since `first` (UTC) of each time."""
    origin = pd.Timestamp(first, tz="UTC")
    return ((times - origin) // pd.Timedelta(days=1)).astype("int64")


def ints(values) -> list[int]:
    return [int(v) for v in values]

"""Flow records to CSV or Parquet.

CSV follows the data set: one header row of the column names, `Infinity` and
`NaN` spelled as Java prints them (Flow.Bytes.s of a zero-duration flow).
Parquet carries the same columns with explicit types, non-finite floats native.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import IO

from ntds.flows.columns import COLUMNS, FLOAT_COLUMNS, STRING_COLUMNS
from ntds.flows.meter import EXTRA_COLUMNS, FlowRecord

EXTRA_STRINGS = frozenset(
    {
        "application_name",
        "application_category",
        "requested_server_name",
        "client_fingerprint",
        "server_fingerprint",
        "user_agent",
        "flow_end_reason",
        "flow_start_utc",
    }
)


def _java(v: float) -> str:
    """A non-finite float as Java prints it."""
    if math.isnan(v):
        return "NaN"
    return "Infinity" if v > 0 else "-Infinity"


_FLOAT_POSITIONS = tuple(i for i, name in enumerate(COLUMNS) if name in FLOAT_COLUMNS)
"""Where a non-finite value can be: the float columns (the extra fields hold none)."""


class CsvWriter:
    def __init__(self, stream: IO[str], extra: bool, owns_stream: bool = False) -> None:
        self._w = csv.writer(stream, lineterminator="\n")
        self._stream = stream
        self._owns = owns_stream
        self.extra = extra
        self._w.writerow(COLUMNS + (EXTRA_COLUMNS if extra else ()))

    @classmethod
    def to_file(cls, path: Path, extra: bool) -> CsvWriter:
        return cls(open(path, "w", newline="", encoding="utf-8"), extra, owns_stream=True)  # noqa: SIM115

    def write(self, rec: FlowRecord) -> None:
        row = list(rec.features + rec.extra if self.extra else rec.features)
        isfinite = math.isfinite
        for i in _FLOAT_POSITIONS:
            v = row[i]
            if not isfinite(v):
                row[i] = _java(v)
        self._w.writerow(row)

    def close(self) -> None:
        if self._owns:
            self._stream.close()
        else:
            self._stream.flush()


class ParquetWriter:
    """Buffers rows and writes row groups, so memory stays bounded on long inputs."""

    BATCH = 65536

    def __init__(self, path: Path, extra: bool, batch: int = BATCH) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._pa = pa
        names = COLUMNS + (EXTRA_COLUMNS if extra else ())
        fields = []
        for name in names:
            if name in STRING_COLUMNS or name in EXTRA_STRINGS:
                kind = pa.string()
            elif name in FLOAT_COLUMNS:
                kind = pa.float64()
            else:
                kind = pa.int64()
            fields.append(pa.field(name, kind))
        self.schema = pa.schema(fields)
        self.extra = extra
        self.batch = batch
        self._rows: list[tuple] = []
        self._writer = pq.ParquetWriter(str(path), self.schema)

    def write(self, rec: FlowRecord) -> None:
        self._rows.append(rec.features + rec.extra if self.extra else rec.features)
        if len(self._rows) >= self.batch:
            self.flush()

    @property
    def buffered(self) -> int:
        """Rows not yet written as a row group."""
        return len(self._rows)

    def flush(self) -> None:
        """Write the buffered rows as one row group (the file grows on disk)."""
        if not self._rows:
            return
        columns = list(zip(*self._rows))
        arrays = [self._pa.array(col, type=f.type) for col, f in zip(columns, self.schema)]
        self._writer.write_table(self._pa.Table.from_arrays(arrays, schema=self.schema))
        self._rows.clear()

    def close(self) -> None:
        self.flush()
        self._writer.close()

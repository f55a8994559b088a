"""Reading flow records back: CSV or Parquet files of the 87 columns, or captures metered on the fly.

Both the sensor (`score`) and the aggregator (`baseline build`) read flows this way,
in chunks, so a 3.6-million-row data set never has to fit in memory at once.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from ntds.errors import InputError
from ntds.flows.columns import COLUMNS
from ntds.times import iso
from ntds.wire.schema import TIME_MAX, TIME_MIN

CAPTURE_SUFFIXES = (".pcap", ".pcapng", ".cap")
CHUNK_ROWS = 200_000


def kind_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in CAPTURE_SUFFIXES:
        return "capture"
    if suffix == ".csv":
        return "csv"
    if suffix == ".parquet":
        return "parquet"
    raise InputError(f"{path}: unknown input type (expected .pcap/.pcapng, .csv or .parquet)")


def read_flow_table(
    path: Path, columns: list[str], progress: Callable[[int], None] | None = None
) -> Iterator[dict[str, np.ndarray]]:
    """Chunks of the named columns as numpy arrays; progress(bytes_read) after each chunk."""
    import pandas as pd

    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory")
    kind = kind_of(path)
    try:
        if kind == "csv":
            with open(path, "rb") as fh:
                header = fh.readline().decode("utf-8", "replace").strip().split(",")
                missing = [c for c in columns if c not in header]
                if missing:
                    raise InputError(f"{path}: not a flow file of the 87 columns (missing {', '.join(missing[:3])})")
                fh.seek(0)
                dtypes = {c: str for c in columns if c in ("ProtocolName", "Source.IP", "Destination.IP")}
                reader = pd.read_csv(fh, usecols=columns, chunksize=CHUNK_ROWS, dtype=dtypes, na_filter=True)
                for chunk in reader:
                    yield {c: chunk[c].to_numpy() for c in columns}
                    if progress:
                        progress(fh.tell())
        else:
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(path)
            missing = [c for c in columns if c not in pf.schema_arrow.names]
            if missing:
                raise InputError(f"{path}: not a flow file of the 87 columns (missing {', '.join(missing[:3])})")
            done = 0
            for batch in pf.iter_batches(batch_size=CHUNK_ROWS, columns=columns):
                yield {c: batch.column(c).to_numpy(zero_copy_only=False) for c in columns}
                done += batch.nbytes
                if progress:
                    progress(done)
    except InputError:
        raise
    except (ValueError, OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read flows: {str(e).splitlines()[0]}") from None
    except Exception as e:  # pyarrow and pandas parser errors have many types
        raise InputError(f"{path}: cannot read flows: {type(e).__name__}: {str(e).splitlines()[0]}") from None


def records_to_columns(records, columns: list[str]) -> dict[str, np.ndarray]:
    """FlowRecords (from the meter) -> the same column arrays a flow file gives."""
    idx = [COLUMNS.index(c) for c in columns]
    rows = [r.features for r in records]
    return {c: np.array([row[i] for row in rows], dtype=object if c in _TEXT else float) for c, i in zip(columns, idx)}


_TEXT = {"Flow.ID", "Source.IP", "Destination.IP", "Timestamp", "Label", "ProtocolName"}


_UNICAUCA_TIME = re.compile(r"^(\d{2})/(\d{2})/(\d{4,})(\d{2}):(\d{2}):(\d{2})$")


def table_time(text) -> str | None:
    """A flow file's Timestamp as the ISO-8601 UTC time alerts carry; None for a time no message can carry
    (a capture with a bogus clock writes years like 58455: the flow is skipped and counted, not fatal).

    Unicauca timestamps (dd/MM/yyyyhh:mm:ss) have a 12-hour clock without AM/PM
    and no zone: the hour is taken as written and the zone as UTC, so a time
    from a flow file can be 12 hours early. Captures do not have this problem.
    """
    text = str(text)
    m = _UNICAUCA_TIME.match(text)
    try:
        if m:
            day, month, year, hour, minute, second = map(int, m.groups())
            if year > 9999:
                return None
            t = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
        else:
            t = datetime.fromisoformat(text)
            t = t if t.tzinfo is not None else t.replace(tzinfo=UTC)
        return iso(t) if TIME_MIN <= t <= TIME_MAX else None
    except (ValueError, OverflowError):
        raise InputError(f"unreadable Timestamp {text[:40]!r} in a flow file") from None

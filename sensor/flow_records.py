"""The sensor's own flow records: rotated local Parquet files with a size cap (off by default).

For forensics (what exactly did this host do last Tuesday) and for exact
baseline rebuilds (`ntds-aggregator baseline build FOLDER/*.parquet`), the sensor
can keep every flow it meters with the 87 columns and the extra fields
(`ntds-sensor features --extra`). The file being written is
`flows-START.parquet.open` (a Parquet file is readable only once closed); at
`flow_records_file_mb` it is closed and renamed `flows-START.parquet`, and the
oldest closed files are deleted while the folder holds more than
`flow_records_max_mb` (deletions are logged). At stop the open file is closed.
Single-packet flows have no columns (CICFlowMeter does not record them) and are
not written.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ntds.flows.meter import FlowRecord
from ntds.flows.writers import ParquetWriter

log = logging.getLogger("ntds.sensor.flow_records")

OPEN_SUFFIX = ".open"
ROW_GROUP = 8192
"""Rows per Parquet row group: what the sensor buffers (a few MB), not the 65,536 of `features -o`."""
ROW_ESTIMATE = 256
"""Bytes a buffered row will take once compressed (about what the generated and real captures give)."""


class FlowRecords:
    def __init__(self, folder: Path, file_mb: int, max_mb: int) -> None:
        self.folder = folder
        self.file_bytes = file_mb * 2**20
        self.max_bytes = max_mb * 2**20
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(f"flows-*.parquet{OPEN_SUFFIX}"):  # a crash left it without its footer
            log.warning("%s: left open by a crash (no Parquet footer); deleted", stale.name)
            stale.unlink()
        self._writer: ParquetWriter | None = None
        self._path: Path | None = None
        self.written = 0
        self.deleted = 0

    def write(self, records: list[FlowRecord]) -> None:
        for r in records:
            if r.features is None:
                continue
            if self._writer is None:
                self._open()
            self._writer.write(r)
            self.written += 1
        if self._path is None or self._size() < self.file_bytes:
            return
        self._writer.flush()  # the estimate says it may be full: write what is buffered and look at the real size
        if self._path.stat().st_size >= self.file_bytes:
            self._close()
            self._enforce_cap()

    def close(self) -> None:
        self._close()
        self._enforce_cap()

    def files(self) -> list[Path]:
        """Closed files, oldest first."""
        return sorted(self.folder.glob("flows-*.parquet"))

    def _open(self) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        name = f"flows-{stamp}-{time.monotonic_ns() % 10**9:09d}.parquet"
        self._path = self.folder / (name + OPEN_SUFFIX)
        self._writer = ParquetWriter(self._path, extra=True, batch=ROW_GROUP)

    def _size(self) -> int:
        """Bytes on disk plus an estimate for the rows still buffered."""
        on_disk = self._path.stat().st_size if self._path and self._path.exists() else 0
        return on_disk + self._writer.buffered * ROW_ESTIMATE if self._writer else on_disk

    def _close(self) -> None:
        if self._writer is None or self._path is None:
            return
        self._writer.close()
        self._path.rename(self._path.with_name(self._path.name[: -len(OPEN_SUFFIX)]))
        self._writer, self._path = None, None

    def _enforce_cap(self) -> None:
        files = self.files()
        total = sum(f.stat().st_size for f in files)
        while files and total > self.max_bytes:
            oldest = files.pop(0)
            total -= oldest.stat().st_size
            oldest.unlink()
            self.deleted += 1
            log.info("flow records: deleted %s to stay under %d MB", oldest.name, self.max_bytes // 2**20)

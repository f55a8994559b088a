"""Pcap jobs on the sensor: find the packets a job asks for, cut them into `evidence` parts, keep alerts' packets.

Where packets are looked for, in order:

1. **kept**: the packets kept for that very alert when it went out (live capture:
   copied from the ring a few seconds after the alert, so the ring's rotation
   cannot take them; `evidence_keep_days`, `evidence_keep_mb`);
2. **ring**: the packet ring a live sensor writes (`ring_mb`, `ring_max_age_s`);
3. **replay**: the capture files `ntds-sensor replay` read, as it remembered them
   (`replayed.json` in the evidence folder: path, size, modification time and how
   many records were metered, so a file changed since is refused, not misread),
   with, made at the first job and kept in `index/`, each pcap file's index by
   time (the byte offset of every 4,096th record and the block's time span), so
   a job reads only the blocks of its time range.

A job that finds nothing is answered with one line saying why (never silence):
the aggregator shows it to the analyst.

The work runs in a thread of its own (`EvidenceWorker`): reading a ring can take
seconds, and flows must not wait for it. The worker hands finished answers back;
the pipeline's main thread spools them like any other message (the spool is
that thread's), so an answer is durable and resent until acknowledged.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ntds.atomic import atomic_write_text
from ntds.wire.schema import EVIDENCE_CHUNK, EVIDENCE_MAX_PARTS, packets_behind, wire_time
from sensor.evidence.packets import CaptureProblem, Match, PcapWriter, Record, index, read, read_block
from sensor.evidence.ring import ring_files

log = logging.getLogger("ntds.sensor.evidence")

REPLAYED = "replayed.json"
REPLAYED_MAX = 1000
"""Replayed files remembered (the newest)."""
KEEP_DELAY_S = 3.0
"""An alert's packets are copied from the ring this long after it went out: the meters write the ring in
blocks and flush at least once a second."""


@dataclass
class Counts:
    kept_alerts: int = 0
    jobs_served: int = 0
    jobs_failed: int = 0


def match_of(body: dict) -> Match:
    """A pcap job's (or an alert's) packet selection."""
    since = int(wire_time(body["since"]).timestamp() * 1000)
    until = int(wire_time(body["until"]).timestamp() * 1000)
    return Match(body["host"], since, until, body["peer"], body["host_port"], body["peer_port"], body["protocol"])


class Evidence:
    """The sensor's evidence room: its folder, the ring it reads, the answers it makes."""

    def __init__(self, folder: Path, ring_dir: Path | None, *, max_mb: int = 64, keep_mb: int = 1024,
                 keep_days: float = 30.0) -> None:  # fmt: skip
        self.folder = folder
        self.kept_dir = folder / "kept"
        self.kept_dir.mkdir(parents=True, exist_ok=True)
        self.ring_dir = ring_dir
        self.max_bytes = max_mb * 2**20
        self.keep_bytes = keep_mb * 2**20
        self.keep_s = keep_days * 86400
        self.counts = Counts()

    # -- replayed files ------------------------------------------------------------------

    def remember_replay(self, files: Iterable[tuple[Path, int | None]]) -> None:
        """The files a replay reads (path, records metered or None for all), for the jobs that come later."""
        known = self._replayed()
        for path, records in files:
            p = Path(path).resolve()
            st = p.stat()
            entry = {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "records": records}
            known = [e for e in known if e["path"] != entry["path"]] + [entry]
        atomic_write_text(self.folder / REPLAYED, json.dumps(known[-REPLAYED_MAX:], indent=1) + "\n")

    def _replayed(self) -> list[dict]:
        try:
            known = json.loads((self.folder / REPLAYED).read_text())
            return [e for e in known if isinstance(e, dict) and {"path", "size", "mtime_ns", "records"} <= set(e)]
        except (OSError, ValueError):
            return []

    # -- answering -----------------------------------------------------------------------

    def answer(self, job: int, body: dict) -> list[dict]:
        """The `evidence` bodies answering one pcap job (one body with the reason when it cannot be served)."""
        try:
            match = match_of(body)
            cap = min(self.max_bytes, body["max_bytes"]) if body["max_bytes"] else self.max_bytes
            source, sources, why_none = self._sources(body, match)
            if not sources:
                return self._failed(job, why_none)
            data, packets, total = self._extract(sources, match, cap)
        except (CaptureProblem, OSError, ValueError) as e:
            return self._failed(job, f"cannot read the packets: {e}")
        if not packets:
            return self._failed(job, f"no packet matches in {why_none}")
        self.counts.jobs_served += 1
        return parts(job, data, packets, total, source)

    def _failed(self, job: int, why: str) -> list[dict]:
        self.counts.jobs_failed += 1
        log.warning("pcap job %d not served: %s", job, why)
        return [failure(job, why)]

    def _sources(self, body: dict, match: Match) -> tuple[str, list[tuple[Path, int | None]], str]:
        """(source name, files with their record limits, where was looked) for a job."""
        if body["alert_spool"] and body["alert_seq"]:
            kept = self.kept_dir / kept_name(body["alert_spool"], body["alert_seq"])
            if kept.exists():
                return "kept", [(kept, None)], "the packets kept for this alert"
        looked = []
        if self.ring_dir is not None:
            files = ring_files(self.ring_dir)
            hits = [(f.path, None) for f in files if f.overlaps(match.since_ms, match.until_ms)]
            if hits:
                return "ring", hits, "the packet ring"
            oldest = min((f.first_ms for f in files), default=None)
            looked.append(
                "the packet ring (empty)" if oldest is None else
                f"the packet ring (its oldest packet is from {_iso(oldest)}: rotated away?)"
            )  # fmt: skip
        replayed, changed = [], 0
        for e in self._replayed():
            p = Path(e["path"])
            try:
                st = p.stat()
            except OSError:
                changed += 1
                continue
            if st.st_size != e["size"] or st.st_mtime_ns != e["mtime_ns"]:
                changed += 1
                continue
            replayed.append((p, e["records"]))
        if replayed:
            return "replay", replayed, f"the {len(replayed)} replayed files"
        looked.append("no replayed files" + (f" ({changed} changed or removed since)" if changed else ""))
        return "", [], "; ".join(looked)

    def _extract(self, sources: list[tuple[Path, int | None]], match: Match, cap: int) -> tuple[bytes, int, int]:
        """The matching packets as one pcap in memory (at most `cap` bytes: it is sent whole, in parts), with how
        many it holds and how many matched."""
        out = io.BytesIO()
        w = PcapWriter(out)
        total = 0
        for path, records in sources:
            for r in self._records(path, records, match):
                if match.wants(r):
                    total += 1
                    if w.bytes + 16 + len(r.data) <= cap:
                        w.add(r)
        w.finish()
        return out.getvalue(), w.packets, total

    def _records(self, path: Path, records: int | None, match: Match) -> Iterator[Record]:
        """The records of a file that can match: for a replayed pcap file, only the blocks its index by time says
        overlap (the index is made at the first job and kept beside replayed.json); otherwise all of them."""
        if records is None and path.parent in (self.kept_dir, self.ring_dir):
            yield from read(path)
            return
        blocks = self._index(path, records)
        if blocks is None:
            yield from read(path, records)
            return
        for offset, n, first_ms, last_ms in blocks:
            if first_ms <= match.until_ms and last_ms >= match.since_ms:
                yield from read_block(path, offset, n)

    def _index(self, path: Path, records: int | None) -> list[tuple[int, int, int, int]] | None:
        st = path.stat()
        key = hashlib.sha256(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0{records}".encode()).hexdigest()[:32]
        cached = self.folder / "index" / f"{key}.json"
        try:
            return [tuple(b) for b in json.loads(cached.read_text())]
        except (OSError, ValueError, TypeError):
            pass
        blocks = index(path, records)
        if blocks is not None:
            with contextlib.suppress(OSError):
                cached.parent.mkdir(exist_ok=True)
                atomic_write_text(cached, json.dumps(blocks))
        return blocks

    # -- kept for alerts -----------------------------------------------------------------

    def keep(self, spool: str, seq: int, alert: dict) -> None:
        """Copy an alert's packets from the ring into the kept folder (capped like a job's answer)."""
        if self.ring_dir is None or not alert.get("src_ip"):
            return
        match = match_of(packets_behind(alert))
        files = [(f.path, None) for f in ring_files(self.ring_dir) if f.overlaps(match.since_ms, match.until_ms)]
        if not files:
            return
        data, packets, _ = self._extract(files, match, self.max_bytes)
        if packets:
            path = self.kept_dir / kept_name(spool, seq)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
            self.counts.kept_alerts += 1

    def prune_kept(self, now: float | None = None) -> int:
        """Kept packets past their retention, or beyond the folder's cap (oldest first); returns files removed."""
        now = time.time() if now is None else now
        files = sorted((p.stat().st_mtime, p.stat().st_size, p) for p in self.kept_dir.glob("*.pcap"))
        total = sum(s for _, s, _ in files)
        removed = 0
        for mtime, size, p in files:
            if now - mtime > self.keep_s or total > self.keep_bytes:
                p.unlink(missing_ok=True)
                total -= size
                removed += 1
        return removed


def kept_name(spool: str, seq: int) -> str:
    safe = "".join(c for c in spool if c.isalnum())[:64]
    return f"{safe}-{int(seq)}.pcap"


def parts(job: int, data: bytes, packets: int, total: int, source: str) -> list[dict]:
    """A pcap file as the parts of one answer."""
    digest = hashlib.sha256(data).hexdigest()
    chunks = [data[i : i + EVIDENCE_CHUNK] for i in range(0, len(data), EVIDENCE_CHUNK)][:EVIDENCE_MAX_PARTS]
    return [
        {"job": job, "part": i, "parts": len(chunks), "packets": packets, "packets_total": total, "sha256": digest,
         "source": source, "data": base64.b64encode(chunk).decode("ascii"), "error": ""}
        for i, chunk in enumerate(chunks)
    ]  # fmt: skip


def failure(job: int, why: str) -> dict:
    return {"job": job, "part": 0, "parts": 0, "packets": 0, "packets_total": 0, "sha256": "", "source": "",
            "data": "", "error": why[:512]}  # fmt: skip


def _iso(ms: int) -> str:
    from ntds.detect.alerts import iso_ms

    return iso_ms(ms)


class EvidenceWorker(threading.Thread):
    """Answers pcap jobs and keeps alerts' packets beside the pipeline; `take()` hands back answers to spool."""

    def __init__(self, evidence: Evidence) -> None:
        super().__init__(name="evidence", daemon=True)
        self.evidence = evidence
        self.inbox: queue.Queue = queue.Queue(10_000)
        self.outbox: queue.Queue = queue.Queue()
        self._keeps: list[tuple[float, str, int, dict]] = []
        self._halt = threading.Event()
        self._busy: set[int] = set()
        """Jobs waiting or being answered."""

    def job(self, seq: int, body: dict) -> None:
        if seq in self._busy:
            return  # asked again while it is being answered (a slow ring read): one answer
        try:
            self.inbox.put_nowait(("job", seq, body))
            self._busy.add(seq)
        except queue.Full:
            log.warning("pcap job %d dropped: too many waiting (the aggregator asks again)", seq)

    def keep(self, spool: str, seq: int, alert: dict) -> None:
        try:
            self.inbox.put_nowait(("keep", time.monotonic() + KEEP_DELAY_S, spool, seq, alert))
        except queue.Full:
            log.warning("packets of alert %s/%d not kept: too many alerts waiting", spool, seq)

    def take(self) -> list[dict]:
        out = []
        while True:
            try:
                out.extend(self.outbox.get_nowait())
            except queue.Empty:
                return out

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        last_prune = 0.0
        while not self._halt.is_set():
            try:
                item = self.inbox.get(timeout=0.2)
            except queue.Empty:
                item = None
            if item is not None and item[0] == "job":
                _, seq, body = item
                try:
                    self.outbox.put(self.evidence.answer(seq, body))
                finally:
                    self._busy.discard(seq)
            elif item is not None:
                self._keeps.append(item[1:])
            now = time.monotonic()
            due = [k for k in self._keeps if k[0] <= now]
            self._keeps = [k for k in self._keeps if k[0] > now]
            for _, spool, seq, alert in due:
                try:
                    self.evidence.keep(spool, seq, alert)
                except (OSError, CaptureProblem, ValueError) as e:
                    log.warning("packets of alert %s/%d not kept: %s", spool, seq, e)
            if now - last_prune > 60:
                last_prune = now
                try:
                    self.evidence.prune_kept()
                except OSError as e:
                    log.warning("cannot prune kept packets: %s", e)

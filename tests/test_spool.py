"""The durable spool: order, acknowledgements, sequence numbers across restarts, the size limit, kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from ntds.wire.schema import EXAMPLES, Message, decode, encode, now_iso
from sensor.spool import Spool


def test_messages_leave_only_when_acknowledged(tmp_path):
    s = Spool(tmp_path / "spool.db", "tap-01")
    seqs = s.append([("alert", EXAMPLES["alert"]), ("summary", EXAMPLES["summary"]), ("health", EXAMPLES["health"])])
    assert seqs == [1, 2, 3]
    pending = s.pending()
    assert [seq for seq, _ in pending] == [1, 2, 3]
    assert [decode(f).type for _, f in pending] == ["alert", "summary", "health"]
    assert decode(pending[0][1]).sensor == "tap-01" and decode(pending[0][1]).seq == 1
    assert s.ack([2, 99]) == 1
    assert [seq for seq, _ in s.pending()] == [1, 3]
    assert [seq for seq, _ in s.pending(after=1)] == [3]


def test_sequence_numbers_continue_after_a_restart(tmp_path):
    s = Spool(tmp_path / "spool.db", "tap-01")
    s.append([("summary", EXAMPLES["summary"])] * 3)
    s.ack([1, 2, 3])
    s.close()
    again = Spool(tmp_path / "spool.db", "tap-01")
    assert again.append([("summary", EXAMPLES["summary"])]) == [4]


def test_size_limit_drops_evidence_then_health_then_statistics_then_summaries_and_alerts_last(tmp_path):
    def size(kind: str) -> int:
        return len(encode(Message(kind, "tap-01", 1, now_iso(), EXAMPLES[kind], "0123456789abcdef")))

    limit = 5 * size("alert") + 20 * size("summary") + 3 * size("stats") + 5 * size("health")
    s = Spool(tmp_path / "spool.db", "tap-01", max_bytes=limit)
    s.append([("evidence", EXAMPLES["evidence"])] * 2)  # a pcap job's answer: the aggregator asks again
    s.append([("alert", EXAMPLES["alert"])] * 5)
    s.append([("summary", EXAMPLES["summary"])] * 20)
    s.append([("stats", EXAMPLES["stats"])] * 3)
    s.append([("health", EXAMPLES["health"])] * 20)
    st = s.stats()
    assert st.bytes <= limit
    assert st.dropped == {"evidence": 2, "health": st.dropped["health"], "stats": 0, "context": 0, "summary": 0,
                          "hello": 0, "alert": 0}  # fmt: skip
    assert 0 < st.dropped["health"] < 20  # the oldest health went first, the newest stayed
    s.append([("summary", EXAMPLES["summary"])] * 5)  # more summaries: every health message goes first, then stats
    st = s.stats()
    kinds = [decode(f).type for _, f in s.pending(10_000)]
    assert st.bytes <= limit and "health" not in kinds and st.dropped["health"] == 20
    assert "stats" not in kinds and st.dropped["stats"] == 3
    assert st.dropped["summary"] > 0 and kinds.count("alert") == 5 and st.dropped["alert"] == 0
    s.close()
    assert Spool(tmp_path / "spool.db", "tap-01").stats().dropped == st.dropped  # counts survive restarts


WRITER = """
import sys
from sensor.spool import Spool
from ntds.wire.schema import EXAMPLES
s = Spool(sys.argv[1], "tap-01")
while True:
    seqs = s.append([("alert", EXAMPLES["alert"])] * 50)
    print(seqs[-1], flush=True)
"""


def test_kill_9_loses_no_committed_message(tmp_path):
    db = tmp_path / "spool.db"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE, text=True, env=env)
    committed = 0
    for _ in range(20):
        committed = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    s = Spool(db, "tap-01")
    seqs = [seq for seq, _ in s.pending(10**6)]
    assert seqs[:committed] == list(range(1, committed + 1))  # everything reported committed is there, in order
    assert seqs == list(range(1, len(seqs) + 1))  # and nothing half-written
    assert s.append([("health", EXAMPLES["health"])]) == [len(seqs) + 1]

"""`ntds-sensor features` as a user runs it: real processes, real files."""

from __future__ import annotations

import csv
import math
import struct
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import FIXTURES, ROOT, SHARED

from ntds.flows.columns import COLUMNS
from ntds.flows.meter import EXTRA_COLUMNS

BIN = Path(sys.executable).parent / "ntds-sensor"
SENSOR = [str(BIN)] if BIN.exists() else [sys.executable, "-m", "sensor.cli"]


def run(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([*SENSOR, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300)


def read_csv(text: str) -> list[list[str]]:
    return list(csv.reader(text.splitlines()))


def one_line_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert lines[0].startswith("ntds-sensor: error: ")
    for w in words:
        assert w in lines[0], lines[0]


def test_csv_to_stdout_has_the_87_columns(fixtures_dir):
    proc = run("features", FIXTURES / "psh_both.pcap")
    assert proc.returncode == 0, proc.stderr
    rows = read_csv(proc.stdout)
    assert tuple(rows[0]) == COLUMNS
    assert len(rows) == 2 and len(rows[1]) == 87


def test_infinity_and_nan_are_written_as_java_does(fixtures_dir):
    rows = read_csv(run("features", FIXTURES / "submillisecond.pcap").stdout)
    row = dict(zip(rows[0], rows[1]))
    assert row["Flow.Packets.s"] == "Infinity"
    assert row["Flow.Bytes.s"] == "NaN"


def test_extra_columns(fixtures_dir):
    rows = read_csv(run("features", "--extra", FIXTURES / "fin_appendix.pcap").stdout)
    assert tuple(rows[0]) == COLUMNS + EXTRA_COLUMNS
    reasons = [dict(zip(rows[0], r))["flow_end_reason"] for r in rows[1:]]
    assert sorted(reasons) == ["end-of-capture", "fin"]


def test_parquet_equals_csv(tmp_path, fixtures_dir):
    out = tmp_path / "flows.parquet"
    src = FIXTURES.parent / "sample.pcap"
    assert run("features", src, "-o", out).returncode == 0
    table = pq.read_table(out)
    assert tuple(table.column_names) == COLUMNS
    csv_rows = read_csv(run("features", src).stdout)[1:]
    assert table.num_rows == len(csv_rows) > 10
    pq_rows = table.to_pylist()
    for a, b in zip(pq_rows, csv_rows):
        for col, text in zip(COLUMNS, b):
            v = a[col]
            if isinstance(v, float):
                assert (math.isnan(v) and text == "NaN") or v == float(text.replace("Infinity", "inf"))
            else:
                assert str(v) == text


def _split_pcap(src: Path, at: int, a: Path, b: Path) -> None:
    data = src.read_bytes()
    off, n = 24, 0
    while n < at:
        (caplen,) = struct.unpack("<I", data[off + 8 : off + 12])
        off += 16 + caplen
        n += 1
    a.write_bytes(data[:off])
    b.write_bytes(data[:24] + data[off:])


def test_several_files_are_one_stream(tmp_path, fixtures_dir):
    """A flow cut across two files (as a rotating capture does) is one flow."""
    whole = FIXTURES / "idle_pause.pcap"
    a, b = tmp_path / "a.pcap", tmp_path / "b.pcap"
    _split_pcap(whole, 4, a, b)
    split = run("features", a, b)
    assert split.returncode == 0, split.stderr
    assert split.stdout == run("features", whole).stdout
    assert len(read_csv(split.stdout)) == 2


def test_pcapng_reads_like_pcap(tmp_path, fixtures_dir):
    from scapy.utils import rdpcap, wrpcapng

    src = FIXTURES / "handshake_options.pcap"
    ng = tmp_path / "same.pcapng"
    wrpcapng(str(ng), rdpcap(str(src)))
    assert ng.read_bytes()[:4] == b"\x0a\x0d\x0d\x0a"
    assert run("features", ng).stdout == run("features", src).stdout


# -- bad input: one line naming the file and the problem, non-zero exit, no traceback


def test_missing_file(tmp_path):
    one_line_error(run("features", tmp_path / "nope.pcap"), "nope.pcap", "no such file")


def test_directory(tmp_path):
    one_line_error(run("features", tmp_path), str(tmp_path), "directory")


def test_empty_file(tmp_path):
    (tmp_path / "empty.pcap").write_bytes(b"")
    one_line_error(run("features", tmp_path / "empty.pcap"), "empty.pcap", "empty")


def test_not_a_capture(tmp_path):
    (tmp_path / "notes.pcap").write_text("these are not packets\n")
    one_line_error(run("features", tmp_path / "notes.pcap"), "notes.pcap", "not a pcap or pcapng")


def test_unsupported_link_type(tmp_path):
    data = bytearray((FIXTURES / "padding.pcap").read_bytes())
    struct.pack_into("<I", data, 20, 147)  # LINKTYPE_USER0
    (tmp_path / "user0.pcap").write_bytes(bytes(data))
    one_line_error(run("features", tmp_path / "user0.pcap"), "user0.pcap", "unsupported link type 147")


def test_bad_file_among_good_ones_fails_before_any_output(tmp_path, fixtures_dir):
    proc = run("features", FIXTURES / "padding.pcap", tmp_path / "missing.pcap", "-o", tmp_path / "out.csv")
    one_line_error(proc, "missing.pcap")
    assert not (tmp_path / "out.csv").exists()


def test_bad_output_suffix(tmp_path, fixtures_dir):
    one_line_error(run("features", FIXTURES / "padding.pcap", "-o", tmp_path / "out.json"), "out.json")


def test_unwritable_output(tmp_path, fixtures_dir):
    one_line_error(
        run("features", FIXTURES / "padding.pcap", "-o", tmp_path / "no" / "dir" / "out.csv"), "cannot write"
    )


def test_truncated_capture_keeps_what_was_read(tmp_path, fixtures_dir):
    src = FIXTURES.parent / "sample.pcap"
    data = src.read_bytes()
    cut = len(data) * 2 // 3
    (tmp_path / "cut.pcap").write_bytes(data[:cut])
    proc = run("features", tmp_path / "cut.pcap")
    assert proc.returncode == 0
    warning = proc.stderr.strip().splitlines()
    assert len(warning) == 1 and warning[0].startswith("ntds-sensor: warning: ")
    assert "cut.pcap" in warning[0] and "cut short" in warning[0]
    # the flows are exactly those of the intact records before the cut
    off, end = 24, 24
    while off + 16 <= cut:
        (caplen,) = struct.unpack("<I", data[off + 8 : off + 12])
        if off + 16 + caplen > cut:
            break
        off += 16 + caplen
        end = off
    (tmp_path / "intact.pcap").write_bytes(data[:end])
    intact = run("features", tmp_path / "intact.pcap")
    assert intact.stderr == ""
    assert proc.stdout == intact.stdout
    assert 3 < len(read_csv(proc.stdout)) < len(read_csv(run("features", src).stdout))


def test_parquet_output_is_not_a_traceback_on_a_missing_folder(tmp_path, fixtures_dir):
    one_line_error(run("features", FIXTURES / "padding.pcap", "-o", tmp_path / "none" / "x.parquet"), "cannot write")


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/pcaps not present")
def test_corrupt_fuzzed_capture_is_a_warning_not_a_crash():
    proc = run("features", SHARED / "ndpi" / "fuzz-2021-10-13.pcap")
    assert proc.returncode == 0
    assert "corrupt record at byte 24" in proc.stderr and "Traceback" not in proc.stderr
    assert read_csv(proc.stdout) == [list(COLUMNS)]


def test_every_shared_capture_runs_without_traceback():
    """The shared README: a meter that claims to read captures reads every one of them."""
    if not SHARED.is_dir():
        pytest.skip("../shared/pcaps not present")
    captures = sorted(p for p in SHARED.rglob("*") if p.suffix in (".pcap", ".pcapng"))
    proc = run("features", "-q", *captures)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(read_csv(proc.stdout)) > 1000


def test_a_sparse_file_with_a_pcap_header_is_a_warning_at_once(tmp_path):
    """2 GB of zeros after a pcap header: zero-length records are damage at the first one, nothing is copied."""
    sparse = tmp_path / "sparse.pcap"
    with open(sparse, "wb") as fh:
        fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        fh.truncate(2 * 1024**3)
    proc = run("features", sparse)
    assert proc.returncode == 0 and "zero-length record at byte 24" in proc.stderr, proc.stderr
    assert read_csv(proc.stdout) == [list(COLUMNS)]


def _pcapng(interface_id: int, caplen: int = 60) -> bytes:
    shb = struct.pack("<IIIHHq", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1) + struct.pack("<I", 28)
    idb = struct.pack("<IIHHI", 1, 20, 1, 0, 65535) + struct.pack("<I", 20)
    data = bytes(caplen) + bytes(-caplen % 4)
    epb_len = 32 + len(data)
    epb = struct.pack("<IIIIIII", 6, epb_len, interface_id, 0, 0, caplen, caplen) + data + struct.pack("<I", epb_len)
    return shb + idb + epb


def test_pcapng_packets_naming_a_missing_interface_are_damage(tmp_path):
    bad = tmp_path / "noiface.pcapng"
    bad.write_bytes(_pcapng(interface_id=5))
    proc = run("features", bad)
    assert proc.returncode == 0 and "names interface 5, which the file never described" in proc.stderr, proc.stderr
    zero = tmp_path / "zero.pcapng"
    zero.write_bytes(_pcapng(interface_id=0, caplen=0))
    assert "zero-length packet" in run("features", zero).stderr


def test_packets_without_a_flow_are_said(tmp_path):
    """200 ARP packets: read, but no flow; the user is told rather than handed an empty table."""
    arp = bytes.fromhex("ffffffffffff0200000000010806") + bytes(28)
    path = tmp_path / "arp.pcap"
    with open(path, "wb") as fh:
        fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for i in range(200):
            fh.write(struct.pack("<IIII", 1_794_816_000 + i, 0, len(arp), len(arp)) + arp)
    proc = run("features", path)
    assert proc.returncode == 0 and "200 packets read but no flow" in proc.stderr, proc.stderr


def test_score_skips_flows_with_a_bogus_clock_instead_of_refusing_the_file(tmp_path):
    """A capture with a bogus clock writes Timestamps with five-digit years: those flows are skipped, counted."""
    out = tmp_path / "flows.csv"
    assert run("features", FIXTURES.parent / "sample.pcap", "-o", out).returncode == 0
    rows = read_csv(out.read_text())
    rows[1][COLUMNS.index("Timestamp")] = "30/03/5845560102:40:19"
    with out.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    proc = run("score", out, "--baseline", ROOT / "config" / "baseline.json", "--all")
    assert proc.returncode == 0, proc.stderr

    def scorable(r):  # answered, and for TCP carrying payload: what a baseline judges
        c = {
            name: float(r[COLUMNS.index(name)])
            for name in (
                "Total.Backward.Packets",
                "Protocol",
                "Total.Length.of.Fwd.Packets",
                "Total.Length.of.Bwd.Packets",
            )
        }
        return c["Total.Backward.Packets"] > 0 and (c["Protocol"] != 6 or c["Total.Length.of.Fwd.Packets"]
                                                    + c["Total.Length.of.Bwd.Packets"] > 0)  # fmt: skip

    want = sum(1 for k, r in enumerate(rows[1:], 1) if k != 1 and scorable(r))
    assert "1 flows skipped" in proc.stderr and len(proc.stdout.splitlines()) == want > 0

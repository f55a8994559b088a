"""The project's captures are reproducible: the generator writes the committed bytes again."""

from __future__ import annotations

from conftest import ROOT

from pcaps.generate import write_all


def test_generator_is_deterministic_and_matches_committed_captures(tmp_path):
    written = write_all(tmp_path)
    assert len(written) == 24
    for path in written:
        committed = ROOT / "pcaps" / path.relative_to(tmp_path)
        assert committed.read_bytes() == path.read_bytes(), committed


def test_committed_captures_stay_small():
    total = sum(p.stat().st_size for p in (ROOT / "pcaps").rglob("*.pcap"))
    assert total < 1_000_000

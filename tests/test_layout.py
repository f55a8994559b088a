"""Layout shows architecture: two programs over one shared core, and each idea declared once."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import ROOT

PROGRAMS = ("sensor", "aggregator")


def imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def top_level(folder: str) -> dict[str, set[str]]:
    return {str(p.relative_to(ROOT)): {n.split(".")[0] for n in imports(p)} for p in (ROOT / folder).rglob("*.py")}


@pytest.mark.parametrize("program", PROGRAMS)
def test_the_two_programs_never_import_each_other(program):
    other = next(p for p in PROGRAMS if p != program)
    offenders = [path for path, names in top_level(program).items() if other in names]
    assert offenders == []


def test_the_core_imports_neither_program():
    offenders = [path for path, names in top_level("ntds").items() if names & set(PROGRAMS)]
    assert offenders == []


def test_scapy_stays_out_of_what_runs_on_a_tap_host():
    """scapy generates the project's captures (pcaps/, demo/, tests, benchmarks); no program needs it."""
    for folder in ("ntds", *PROGRAMS):
        offenders = [path for path, names in top_level(folder).items() if "scapy" in names]
        assert offenders == [], folder


def test_no_catch_all_modules():
    assert not [p for p in ROOT.glob("*/utils.py")] + [p for p in ROOT.glob("*/*/utils.py")]


def test_reference_meter_is_independent_of_the_sensor():
    """The reference shares only the column list with the product and never touches NFStream."""
    imported = imports(ROOT / "tests" / "reference_meter.py")
    assert not any(m.startswith("nfstream") for m in imported)
    assert {m for m in imported if m.startswith(("sensor", "ntds", "aggregator"))} == {"ntds.flows.columns"}

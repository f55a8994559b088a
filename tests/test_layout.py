"""Layout shows architecture: the sensor never depends on the aggregator."""

from __future__ import annotations

import ast

from conftest import ROOT


def test_sensor_never_imports_aggregator():
    offenders = []
    for path in (ROOT / "sensor").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "aggregator"]
    assert offenders == []


def test_reference_meter_is_independent_of_the_sensor():
    """The reference shares only the column list with sensor/ and never touches NFStream."""
    tree = ast.parse((ROOT / "tests" / "reference_meter.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    assert not any(m.startswith("nfstream") for m in imported)
    assert {m for m in imported if m.startswith(("sensor", "ntds", "aggregator"))} == {"ntds.flows.columns"}

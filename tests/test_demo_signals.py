"""`make ui` and `make demo` stop every child they started on SIGTERM and SIGINT (a service manager, `kill`,
Ctrl-C): the wrapper's children are looked up in /proc before the signal and must all be gone after it."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_transport import free_port, wait

ROOT = Path(__file__).resolve().parent.parent
PYTHON = str(Path(sys.executable))


def children(pid: int) -> list[int]:
    """Every live descendant of `pid`."""
    out = []
    todo = [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            kids = (task / "children").read_text().split() if (task / "children").exists() else []
            out += map(int, kids)
            todo += map(int, kids)
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def demo_store(tmp_path: Path) -> Path:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "aggregator.yaml").write_text(f"store: store.db\nui_listen: 127.0.0.1:{free_port()}\n")
    return tmp_path


def stop_and_check(proc: subprocess.Popen, sig: int, started: str) -> None:
    kids = children(proc.pid)
    assert kids, f"{started}: no child to stop; the test proves nothing"
    proc.send_signal(sig)
    proc.wait(30)
    end = time.monotonic() + 20
    while time.monotonic() < end and any(alive(k) for k in kids):
        time.sleep(0.1)
    left = [k for k in kids if alive(k)]
    for k in left:  # the test's own clean-up of what the feature failed to stop
        subprocess.run(["kill", "-9", str(k)], check=False)
    assert left == [], f"{started}: children left running after {signal.Signals(sig).name}"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_the_ui_wrapper_stops_the_alert_manager(tmp_path, sig):
    work = demo_store(tmp_path)
    log = tmp_path / "ui.log"
    proc = subprocess.Popen([PYTHON, "-m", "demo.ui", "--workdir", str(work)], cwd=ROOT, stdout=log.open("w"),
                            stderr=subprocess.STDOUT)  # fmt: skip
    wait(lambda: "Serving on" in log.read_text(), 30, "the alert manager")
    stop_and_check(proc, sig, "python -m demo.ui")


def test_make_ui_stops_the_alert_manager_on_sigterm(tmp_path):
    """make passes SIGTERM to its recipe's process (started without a shell), which stops its own child."""
    work = demo_store(tmp_path)
    log = tmp_path / "ui.log"
    proc = subprocess.Popen(["make", "--no-print-directory", "-o", ".venv/.installed-stamp", "ui",
                             f"DEMO_DIR={work}"], cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT)  # fmt: skip
    wait(lambda: "Serving on" in log.read_text(), 30, "the alert manager under make")
    stop_and_check(proc, signal.SIGTERM, "make ui")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_the_demo_stops_its_generators(tmp_path, sig):
    """Interrupted while scapy writes the captures (its first step, in worker processes): the workers stop
    too, and no half-written capture is left to be taken for a whole one next time."""
    log = tmp_path / "demo.log"
    proc = subprocess.Popen([PYTHON, "-m", "demo", "--workdir", str(tmp_path)], cwd=ROOT, stdout=log.open("w"),
                            stderr=subprocess.STDOUT)  # fmt: skip
    wait(lambda: len(children(proc.pid)) >= 2, 60, "the capture generators")
    time.sleep(1)
    stop_and_check(proc, sig, "python -m demo")
    assert proc.returncode == 130 and "every process it started has been stopped" in log.read_text()
    assert not list(tmp_path.glob("*.pcap"))


def test_the_demo_stops_the_aggregator_and_the_sensor_on_sigterm(tmp_path):
    """Interrupted while the sensor replays the week into the aggregator: both stop with it."""
    log = tmp_path / "demo.log"
    proc = subprocess.Popen([PYTHON, "-m", "demo", "--workdir", str(tmp_path)], cwd=ROOT, stdout=log.open("w"),
                            stderr=subprocess.STDOUT)  # fmt: skip
    wait(lambda: "replaying" in log.read_text() and len(children(proc.pid)) >= 2, 120, "the replay")
    stop_and_check(proc, signal.SIGTERM, "python -m demo (replaying)")
    assert proc.returncode == 130

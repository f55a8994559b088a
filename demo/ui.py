"""`make ui`: the alert manager over the store `make demo` left behind.

A demo operator account ("analyst", role analyst) gets a fresh one-time password each run,
printed with the address; the UI runs in the foreground until Ctrl-C (or SIGTERM, SIGHUP), which stops it.
Nothing is started if the demo has not run yet.

    python -m demo.ui [--workdir build/demo]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from demo.__main__ import BIN, ROOT, UI_PORT, say, stop_children_on_signals

USER = "analyst"


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m demo.ui", description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=ROOT / "build" / "demo")
    args = ap.parse_args()
    cfg = args.workdir / "run" / "aggregator.yaml"
    if not cfg.exists():
        say(f"no demo store under {args.workdir}: run `make demo` first")
        return 2
    aggregator = str(BIN / "ntds-aggregator")
    # A fresh one-time password: the old account (and its sessions) goes, the new one works for one login.
    subprocess.run([aggregator, "user", "remove", USER, "--config", str(cfg)], capture_output=True)
    made = subprocess.run(
        [aggregator, "user", "add", USER, "--role", "analyst", "--one-time", "--config", str(cfg)],
        capture_output=True, text=True,
    )  # fmt: skip
    if made.returncode != 0:
        say(f"could not create the demo operator: {made.stderr.strip()}")
        return 1
    print(f"alert manager: http://127.0.0.1:{UI_PORT}/  user {USER}, one-time password {made.stdout.strip()}")
    say("Ctrl-C stops it")
    stop_children_on_signals()
    ui = subprocess.Popen([aggregator, "ui", "--config", str(cfg)])
    try:
        return ui.wait()
    except KeyboardInterrupt:
        ui.terminate()
        try:
            ui.wait(15)
        except subprocess.TimeoutExpired:
            ui.kill()
            ui.wait()
        return 0


if __name__ == "__main__":
    sys.exit(main())

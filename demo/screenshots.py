"""The README's pictures of the alert manager, taken from the demo's own store in headless Chromium.

Run after `make demo`; writes docs/ui-queue.png and docs/ui-alert.png. It starts its own
`ntds-aggregator ui` on a free port with a throwaway one-time account and stops it.

    python -m demo.screenshots [--workdir build/demo]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from demo.__main__ import BIN, ROOT, free_port, say

CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
USER = "screenshots"


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m demo.screenshots", description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=ROOT / "build" / "demo")
    args = ap.parse_args()
    run = args.workdir / "run"
    if not (run / "aggregator.yaml").exists():
        say(f"no demo store under {args.workdir}: run `make demo` first")
        return 2
    port = free_port()
    cfg = run / "aggregator-screenshots.yaml"
    cfg.write_text(
        re.sub(r"(?m)^ui_listen: .*$", f"ui_listen: 127.0.0.1:{port}", (run / "aggregator.yaml").read_text())
    )
    aggregator = str(BIN / "ntds-aggregator")
    subprocess.run([aggregator, "user", "remove", USER, "--config", str(cfg)], capture_output=True)
    password = subprocess.run([aggregator, "user", "add", USER, "--role", "viewer", "--one-time", "--config",
                               str(cfg)], capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    ui = subprocess.Popen([aggregator, "ui", "--config", str(cfg)], stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.common.by import By

        for _ in range(100):
            try:
                urllib.request.urlopen(base + "/login", timeout=1).read()
                break
            except OSError:
                time.sleep(0.1)
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,720"):
            options.add_argument(flag)
        browser = webdriver.Chrome(service=Service(str(DRIVER)), options=options)
        try:
            browser.get(base + "/")
            browser.find_element(By.ID, "name").send_keys(USER)
            browser.find_element(By.ID, "password").send_keys(password)
            browser.find_element(By.ID, "login").click()
            browser.find_element(By.ID, "queue")
            browser.save_screenshot(str(ROOT / "docs" / "ui-queue.png"))
            browser.find_element(By.CSS_SELECTOR, "a.alert-link").click()
            browser.find_element(By.ID, "explanation")
            browser.save_screenshot(str(ROOT / "docs" / "ui-alert.png"))
        finally:
            browser.quit()
    finally:
        ui.terminate()
        ui.wait(20)
        subprocess.run([aggregator, "user", "remove", USER, "--config", str(cfg)], capture_output=True)
        cfg.unlink()
    say("wrote docs/ui-queue.png and docs/ui-alert.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())

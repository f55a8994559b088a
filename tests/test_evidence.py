"""The evidence behind alerts: the flows an alert lists and its packets, fetched from the sensor that saw them.

Real processes throughout: a real aggregator on 127.0.0.1, the real `ntds-sensor replay` answering pcap jobs
over its link, the real `ntds-aggregator pcap` command. Expected packets come from an independent extraction of
the original capture with scapy's raw readers (not ntds's reader): the responsible host's packets with the
peer and ports the alert names, within its first and last seen, compared byte for byte with their timestamps.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
from frames import ether
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.utils import RawPcapNgReader, RawPcapReader
from test_sensor_agent import Agent
from test_transport import wait

SHARED = Path(__file__).resolve().parents[2] / "shared" / "pcaps" / "attacks"
BIN = Path(sys.executable).parent


def _ns(meta, pcapng: bool, nano: bool = False) -> int:
    """A record's time in nanoseconds, from what scapy's raw readers report."""
    if pcapng:
        ts = (meta.tshigh << 32) | meta.tslow
        return ts * 1_000_000_000 // meta.tsresol
    return meta.sec * 1_000_000_000 + (meta.usec if nano else meta.usec * 1000)


def independent_packets(pcap: Path, sel: dict) -> list[tuple[int, bytes]]:
    """(time in ns, frame bytes) of the packets a selection names, read with scapy (Ethernet captures)."""
    pcapng = pcap.suffix == ".pcapng"
    reader = (RawPcapNgReader if pcapng else RawPcapReader)(str(pcap))
    since = datetime.fromisoformat(sel["since"].replace("Z", "+00:00")).timestamp()
    until = datetime.fromisoformat(sel["until"].replace("Z", "+00:00")).timestamp()
    since_ms, until_ms = round(since * 1000), round(until * 1000)
    out = []
    nano = getattr(reader, "nano", False)
    for data, meta in reader:
        ns = _ns(meta, pcapng, nano)
        if not since_ms <= ns // 1_000_000 <= until_ms:
            continue
        frame = Ether(data)
        ip = frame.getlayer(IP) or frame.getlayer(IPv6)
        if ip is None:
            continue
        l4 = ip.getlayer(TCP) or ip.getlayer(UDP)
        sport, dport = (l4.sport, l4.dport) if l4 is not None else (0, 0)
        proto = ip.proto if ip.version == 4 else ip.nh
        if sel["protocol"] and proto != sel["protocol"]:
            continue
        src, dst = ipaddress.ip_address(ip.src), ipaddress.ip_address(ip.dst)
        host = ipaddress.ip_address(sel["host"])
        peer = ipaddress.ip_address(sel["peer"]) if sel["peer"] else None
        if src == host and (peer is None or dst == peer):
            mine, theirs = sport, dport
        elif dst == host and (peer is None or src == peer):
            mine, theirs = dport, sport
        else:
            continue
        if (sel["host_port"] and mine != sel["host_port"]) or (sel["peer_port"] and theirs != sel["peer_port"]):
            continue
        out.append((ns, bytes(data)))
    return out


def fetched_packets(pcap: Path) -> list[tuple[int, bytes]]:
    with RawPcapReader(str(pcap)) as r:
        assert r.nano  # ntds writes nanosecond pcap
        return [(_ns(meta, False, True), bytes(data)) for data, meta in r]


def alerts_in(store: Path) -> list[dict]:
    out = subprocess.run([str(BIN / "ntds-aggregator"), "alerts", "--config", str(store.parent / "agg.yaml"),
                          "--json"], capture_output=True, text=True, check=True)  # fmt: skip
    return [json.loads(line) for line in out.stdout.splitlines()]


def pcap_cli(agent: Agent, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "ntds-aggregator"), "pcap", *args, "--config", str(agent.root / "agg.yaml"), "--timeout", "60"],
        capture_output=True, text=True, timeout=timeout + 30,
    )  # fmt: skip


@pytest.fixture
def replayed(tmp_path):
    """An SSH brute force (hydra, one task) replayed by a real sensor that stays to serve pcap jobs."""
    pcap = SHARED / "traceshare__ssh_hydra-1.pcapng"
    if not pcap.exists():
        pytest.skip("../shared/pcaps/attacks is not here")
    agent = Agent(tmp_path, min_alert_tier=3, min_flow_tier=1, alert_grouping={}, detectors={},
                  local_networks=["240.0.0.0/8"])  # fmt: skip
    agent.aggregator()
    p = agent.sensor("replay", str(pcap), "--serve-evidence", "300")
    try:
        wait(lambda: "serving pcap jobs" in agent.log() or p.poll() is not None, 120, "the replay")
        assert p.poll() is None, agent.log()
        wait(lambda: any(a["kind"] == "brute-force" for a in alerts_in(agent.store)), 30, "the alerts")
        yield agent, pcap, p
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            p.wait(30)
        agent.stop()


def test_alert_packets_are_the_capture_s_own_bytes_and_times(replayed, tmp_path):
    agent, pcap, sensor = replayed
    alerts = alerts_in(agent.store)
    brute = next(a for a in alerts if a["kind"] == "brute-force" and a["src_ip"] == "240.0.1.2")
    flow = min((a for a in alerts if a["kind"] == "flow"), key=lambda a: a["count"])
    for alert in (brute, flow):
        out = tmp_path / f"alert-{alert['id']}.pcap"
        done = pcap_cli(agent, str(alert["id"]), "-o", str(out))
        assert done.returncode == 0, done.stderr + agent.log()
        from ntds.wire.schema import packets_behind

        sel = packets_behind(alert)
        expected = independent_packets(pcap, sel)
        got = fetched_packets(out)
        assert expected and got == expected, (len(got), len(expected))
        assert f"{len(expected):,} packets" in done.stderr and "replay" in done.stderr
        # tshark (Wireshark's reader) opens it as it is and counts the same packets
        if (tshark := _which("tshark")) is not None:
            t = subprocess.run([tshark, "-r", str(out)], capture_output=True, text=True)
            assert t.returncode == 0 and len(t.stdout.splitlines()) == len(expected), t.stderr
    # the brute force lists the SSH connections its detector counted, each the attacker's to the server's port 22
    assert brute["flows"] and brute["flows_total"] >= len(brute["flows"])
    assert {(f["src_ip"], f["dst_ip"], f["dst_port"]) for f in brute["flows"]} == {("240.0.1.2", "240.125.0.2", 22)}
    assert all(brute["first_seen"] <= f["first_seen"] <= brute["last_seen"] for f in brute["flows"])
    # a flow alert lists its own flow, and the repeats grouped into it
    assert len(flow["flows"]) == min(flow["count"], 32) and flow["flows_total"] == flow["count"]
    assert {(f["src_ip"], f["dst_ip"], f["dst_port"]) for f in flow["flows"]} == {
        (flow["src_ip"], flow["dst_ip"], flow["dst_port"])}  # fmt: skip


def test_jobs_that_cannot_be_served_end_with_one_line(replayed, tmp_path):
    agent, pcap, sensor = replayed
    # a host with no packets in the capture: the sensor answers why
    done = pcap_cli(agent, "--sensor", "tap-01", "--host", "10.9.9.9", "--since", "1970-01-01T00:00:00Z",
                    "--until", "1970-01-01T01:00:00Z", "-o", str(tmp_path / "none.pcap"))  # fmt: skip
    assert done.returncode == 2 and "could not serve it: no packet matches" in done.stderr, done.stderr
    assert done.stderr.count("error:") == 1 and "Traceback" not in done.stderr
    for args, words in [
        (["999999", "-o", "x.pcap"], "no alert 999999"),
        (
            ["--sensor", "tap-01", "--host", "not-an-ip", "--since", "2026-01-01", "--until", "2026-01-02", "-o", "x"],
            "is not an IP address",
        ),
        (
            ["--sensor", "tap-01", "--host", "10.0.0.1", "--since", "2025-01-01", "--until", "2026-01-02", "-o", "x"],
            "spans at most 7 days",
        ),
        (
            ["--sensor", "nobody", "--host", "10.0.0.1", "--since", "2026-01-01", "--until", "2026-01-02", "-o", "x"],
            "no sensor 'nobody'",
        ),
        (["-o", "x.pcap"], "give an ALERT_ID"),
    ]:
        r = pcap_cli(agent, *args)
        assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)


def ftp_brute_force(tmp_path: Path) -> tuple[Path, Agent]:
    """Zeek's FTP brute force, and an agent whose detection runs at its defaults (grouping off)."""
    pcap = SHARED / "zeek__ftp_bruteforce.pcap"
    if not pcap.exists():
        pytest.skip("../shared/pcaps/attacks is not here")
    return pcap, Agent(tmp_path, min_alert_tier=3, alert_grouping={}, detectors={}, local_networks=["192.168.0.0/16"])


def test_a_job_waits_for_an_offline_sensor_and_survives_an_aggregator_restart(tmp_path):
    """A job for a sensor that is not connected stays pending (one clear line, exit 3); an aggregator restarted
    with the job pending sends it when the sensor comes; the packets arrive."""
    pcap, agent = ftp_brute_force(tmp_path)
    try:
        agent.aggregator()
        p = agent.sensor("replay", str(pcap))
        assert p.wait(120) == 0, agent.log()
        brute = next(a for a in alerts_in(agent.store) if a["kind"] == "brute-force")
        out = tmp_path / "late.pcap"
        cmd = [str(BIN / "ntds-aggregator"), "pcap", str(brute["id"]), "-o", str(out)]
        r = subprocess.run([*cmd, "--config", str(agent.root / "agg.yaml"), "--timeout", "2"], capture_output=True,
                           text=True)  # fmt: skip
        assert r.returncode == 3 and "stays open" in r.stderr, r.stderr
        # restart the aggregator with the job pending
        agent.procs[0].send_signal(signal.SIGTERM)
        agent.procs[0].wait(60)
        agent.procs.pop(0)
        agent.aggregator()
        p = agent.sensor("replay", str(pcap), "--serve-evidence", "120")
        done = pcap_cli(agent, str(brute["id"]), "-o", str(out))
        assert done.returncode == 0, done.stderr + agent.log()
        from ntds.wire.schema import packets_behind

        assert fetched_packets(out) == independent_packets(pcap, packets_behind(brute))
        with sqlite3.connect(agent.store) as db:
            assert db.execute("SELECT COUNT(*) FROM pcap_jobs").fetchone()[0] == 1  # the same job, not a new one
            assert db.execute("SELECT COUNT(*) FROM pcap_parts").fetchone()[0] == 0  # parts forgotten once written
        assert oct(os.stat(next((agent.root / "evidence").glob("job-*.pcap"))).st_mode & 0o777) == "0o600"
        p.send_signal(signal.SIGTERM)
        assert p.wait(60) == 0, agent.log()
    finally:
        agent.stop()


def _which(name: str) -> str | None:
    import shutil

    return shutil.which(name)


CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.mark.skipif(not (CHROMIUM.exists() and DRIVER.exists()), reason="chromium/chromedriver missing")
def test_alert_page_lists_the_flows_and_an_analyst_downloads_the_packets(replayed, tmp_path):
    """Headless Chromium against a real `ntds-aggregator ui`: the alert page lists the flows behind the alert; an
    analyst's Download packets asks the sensor and hands over its packets; a viewer sees no button and is refused;
    the audit log says who downloaded what."""
    import urllib.error
    import urllib.request

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from test_transport import free_port
    from test_ui import _up, follow

    from ntds.wire.schema import packets_behind

    agent, pcap, _ = replayed
    port = free_port()
    config = agent.root / "agg.yaml"
    config.write_text(config.read_text() + f"ui_listen: 127.0.0.1:{port}\n")
    base = f"http://127.0.0.1:{port}"
    for name, role in (("ana", "analyst"), ("vic", "viewer")):
        pw = tmp_path / f"{name}.pw"
        pw.write_text("correct horse battery staple\n")
        subprocess.run([str(BIN / "ntds-aggregator"), "user", "add", name, "--role", role, "--password-file", str(pw),
                        "--config", str(config)], check=True, capture_output=True)  # fmt: skip
    ui = subprocess.Popen([str(BIN / "ntds-aggregator"), "ui", "--config", str(config)],
                          stderr=(tmp_path / "ui.log").open("w"))  # fmt: skip
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(str(DRIVER)), options=options)
    try:
        wait(lambda: _up(base), 30, "the UI")
        brute = next(a for a in alerts_in(agent.store) if a["kind"] == "brute-force")

        def login(name: str) -> str:
            browser.delete_all_cookies()
            browser.get(base + "/login")
            browser.find_element(By.ID, "name").send_keys(name)
            browser.find_element(By.ID, "password").send_keys("correct horse battery staple")
            follow(browser, browser.find_element(By.ID, "login"))
            return browser.get_cookie("ntds_session")["value"]

        def get(path: str, cookie: str) -> tuple[int, bytes]:
            req = urllib.request.Request(base + path, headers={"Cookie": f"ntds_session={cookie}"})
            try:
                with urllib.request.urlopen(req) as r:
                    return r.status, r.read()
            except urllib.error.HTTPError as e:
                return e.code, e.read()

        cookie = login("ana")
        browser.get(f"{base}/alerts/{brute['id']}")
        shown = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#flows-behind tr")[1:]]
        assert len(shown) == len(brute["flows"]) > 0
        for row, f in zip(shown, brute["flows"]):
            assert f"{f['src_ip']}:{f['src_port']} → {f['dst_ip']}:{f['dst_port']}" in row and "SSH" in row
            assert f"{f['packets']:,}" in row
        follow(browser, browser.find_element(By.ID, "download-packets"))
        wait(lambda: browser.find_elements(By.ID, "packets-file"), 60, "the packets")  # the page refreshes itself
        link = browser.find_element(By.ID, "packets-file").get_attribute("href")
        code, data = get(link.removeprefix(base), cookie)
        assert code == 200
        out = tmp_path / "download.pcap"
        out.write_bytes(data)
        assert fetched_packets(out) == independent_packets(pcap, packets_behind(brute))
        browser.get(base + "/audit")
        audit = browser.find_element(By.ID, "audit").text
        assert f"ana packets download alert {brute['id']}" in audit and "ana packets request" in audit

        viewer = login("vic")
        browser.get(f"{base}/alerts/{brute['id']}")
        assert browser.find_elements(By.CSS_SELECTOR, "#flows-behind tr") and not browser.find_elements(
            By.ID, "download-packets"
        )  # the flows, but no button
        assert get(f"/alerts/{brute['id']}/packets", viewer)[0] == 403
        assert get(link.removeprefix(base), viewer)[0] == 403
        assert get(f"/api/pcap-jobs/{link.rsplit('/', 2)[-2]}/download", viewer)[0] == 403
        assert "vic packets" not in (tmp_path / "ui.log").read_text()
    finally:
        browser.quit()
        ui.terminate()
        ui.wait(20)

    try:
        urllib.request.urlopen(base + "/login", timeout=1)
        return True
    except (urllib.error.URLError, OSError):
        return False


# -- the pieces, on the project's own scapy packets ----------------------------------------------------------


def _scapy_packets():
    from scapy.layers.inet import ICMP
    from scapy.layers.l2 import Dot1Q

    base = 1_700_000_000
    pkts = [
        ether() / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=40000, dport=22) / b"a",
        ether() / IP(src="10.0.0.2", dst="10.0.0.1") / TCP(sport=22, dport=40000) / b"bb",
        ether() / Dot1Q(vlan=7) / IP(src="10.0.0.1", dst="10.0.0.3") / UDP(sport=5353, dport=53) / b"q",
        ether() / IPv6(src="fd00::1", dst="fd00::2") / TCP(sport=1, dport=443),
        ether() / IP(src="10.0.0.9", dst="10.0.0.1") / ICMP(),
        ether() / IP(src="10.0.0.4", dst="10.0.0.5") / TCP(sport=1, dport=2),
    ]
    for k, p in enumerate(pkts):
        p.time = base + k + 0.000123 * (k + 1)
    return pkts


@pytest.mark.parametrize("kind", ["pcap-us", "pcap-ns", "pcapng"])
def test_reader_gives_every_record_s_bytes_and_time_exactly(tmp_path, kind):
    from scapy.utils import PcapNgWriter, PcapWriter

    from sensor.evidence.packets import read

    pkts = _scapy_packets()
    path = tmp_path / f"x.{kind}"
    if kind == "pcapng":
        w = PcapNgWriter(str(path))
    else:
        w = PcapWriter(str(path), nano=kind == "pcap-ns")
    for p in pkts:
        w.write(p)
    w.close()
    got = [(r.ts_ns, r.data, r.orig_len) for r in read(path)]
    reader = (RawPcapNgReader if kind == "pcapng" else RawPcapReader)(str(path))
    nano = getattr(reader, "nano", False)
    want = [(_ns(m, kind == "pcapng", nano), bytes(d), m.wirelen) for d, m in reader]
    assert got == want and len(got) == len(pkts)
    # a file cut in the middle of its last record: everything before it, quietly
    cut = tmp_path / "cut"
    cut.write_bytes(path.read_bytes()[:-7])
    assert [r.data for r in read(cut)] == [d for _, d, _ in want[:-1]]


def test_match_picks_the_host_s_packets_with_the_named_peer_ports_and_protocol(tmp_path):
    from sensor.evidence.packets import Match, read

    pkts = _scapy_packets()
    path = tmp_path / "m.pcap"
    from scapy.utils import wrpcap

    wrpcap(str(path), pkts)
    records = list(read(path))
    t0, t_end = 1_700_000_000_000, 1_700_000_010_000

    def picked(**kw) -> list[int]:
        m = Match(kw.pop("host"), kw.pop("since", t0), kw.pop("until", t_end), **kw)
        return [i for i, r in enumerate(records) if m.wants(r)]

    assert picked(host="10.0.0.1") == [0, 1, 2, 4]  # both directions, through a VLAN tag, ICMP too
    assert picked(host="10.0.0.1", peer="10.0.0.2") == [0, 1]
    assert picked(host="10.0.0.1", peer="10.0.0.2", host_port=40000, peer_port=22, protocol=6) == [0, 1]
    assert picked(host="10.0.0.2", host_port=22) == [0, 1]
    assert picked(host="10.0.0.1", protocol=17) == [2]
    assert picked(host="fd00::2") == [3]
    assert picked(host="10.0.0.1", since=t0 + 1000, until=t0 + 2000) == [1, 2]  # whole milliseconds, inclusive
    with pytest.raises(ValueError, match="not an IP address"):
        Match("nope", t0, t_end)


def test_ring_keeper_removes_the_oldest_beyond_size_and_age_never_a_file_being_written(tmp_path):
    from sensor.evidence.ring import prune, ring_files

    now = time.time()
    sizes = {}
    for k, (meter, age) in enumerate([(1, 5000), (1, 4000), (2, 3000), (1, 2000), (2, 30)]):
        t = now - age
        p = tmp_path / f"ring-{meter}-{int(t):010d}-{int(t % 1 * 1e9):09d}.pcap"
        p.write_bytes(b"x" * (100 + k))
        os.utime(p, (t + 10, t + 10))
        sizes[p.name] = 100 + k
    (tmp_path / "not-a-ring-file.pcap").write_bytes(b"y" * 10_000)
    files = ring_files(tmp_path)
    assert [f.size for f in files] == [100, 101, 102, 103, 104]  # oldest first, other files ignored
    removed, left = prune(tmp_path, max_bytes=300, max_age_s=0, now=now)
    assert removed == 3 and left == 103 + 104  # the oldest three; meter 2's file being written stays
    removed, left = prune(tmp_path, max_bytes=10**9, max_age_s=1000, now=now)
    # meter 1's newest is old: not being written any more, so it goes by age; meter 2's is fresh and stays
    assert removed == 1 and [f.size for f in ring_files(tmp_path)] == [104]


def test_flows_behind_a_scan_are_its_failed_attempts_newest_32(tmp_path):
    from ntds.detect.behind import FlowsBehind
    from ntds.detect.hosts.scans import PortScan
    from ntds.flows.traffic import FlowTraffic

    det = PortScan()
    behind = FlowsBehind()
    found = []
    for k in range(100):
        t = 1_700_000_000_000 + k * 100
        failed = FlowTraffic(t, "10.0.0.66", "10.0.0.2", 50000 + k, 1000 + k, 6, 1, 60, 0, 0, "Unknown", end_ms=t)
        ok = FlowTraffic(t + 1, "10.0.0.66", "8.8.8.8", 40000 + k, 53, 17, 1, 70, 1, 90, "DNS", end_ms=t + 20,
                         payload=100)  # fmt: skip
        for flow in (failed, ok):
            behind.add(flow, None)
            for f in det.findings(flow):
                found.append((f, behind.behind(f, det)))
    assert len(found) >= 2 and found[-1][0].count > 32  # fired at each tier, the last past the 32 listed
    for finding, flows in found:
        n = finding.count  # ports 1000 .. 1000 + n - 1 failed so far: the newest 32 are listed, oldest first
        assert [f["dst_port"] for f in flows] == list(range(1000 + n - min(n, 32), 1000 + n))
        assert all(f["dst_ip"] == "10.0.0.2" and f["tier"] == -1 and f["packets"] == 1 for f in flows)


@pytest.mark.skipif(os.geteuid() != 0 or _which("tcpreplay") is None or _which("ip") is None,
                    reason="needs root, iproute2 and tcpreplay (make test installs them)")  # fmt: skip
def test_live_capture_keeps_the_packets_behind_each_alert(tmp_path):
    """A real sensor captures in a network namespace while tcpreplay sends a real FTP brute force from the other
    end of a veth pair: the sensor writes its packet ring, keeps each alert's packets, and a pcap job for a flow
    alert answers with exactly the frames of that flow as sent, at the times the ring recorded them (read back
    independently with scapy), within the alert's first and last seen."""
    from netns import veth_namespaces

    pcap = SHARED / "zeek__ftp_bruteforce.pcap"
    if not pcap.exists():
        pytest.skip("../shared/pcaps/attacks is not here")
    agent = Agent(tmp_path, bpf_filter="ip", ring_file_mb=1)
    try:
        with veth_namespaces() as (cap, snd):
            p = agent.run_live(cap)
            sent = subprocess.run(["ip", "netns", "exec", snd, _which("tcpreplay"), "-i", "vsnd", "--pps", "2000",
                                   str(pcap)], capture_output=True, text=True, timeout=60)  # fmt: skip
            assert sent.returncode == 0, sent.stderr
            kept = tmp_path / "spool" / "evidence" / "kept"
            wait(lambda: alerts_in(agent.store) and len(list(kept.glob("*.pcap"))) >= 1, 30, "the kept packets")
            alerts = [a for a in alerts_in(agent.store) if a["kind"] == "flow"]
            alert = max(alerts, key=lambda a: a["flows"][0]["packets"])
            out = tmp_path / "live.pcap"
            done = pcap_cli(agent, str(alert["id"]), "-o", str(out))
            assert done.returncode == 0 and "from the sensor's kept" in done.stderr, done.stderr + agent.log()
            ring = sorted((tmp_path / "spool" / "evidence" / "ring").glob("ring-*.pcap"))
            p.send_signal(signal.SIGTERM)
            assert p.wait(60) == 0, agent.log()
            health = agent.rows("health")[-1]["evidence"]
    finally:
        agent.stop()
    from ntds.wire.schema import packets_behind

    sel = packets_behind(alert)
    got = fetched_packets(out)
    # the wire: the original frames of this 5-tuple, in order (tcpreplay sends them as they are, at its own pace):
    # the flow's own packets, and any of the same 5-tuple within its last millisecond (the FIN rule leaves a last
    # ACK to a flow of its own: packets are chosen by time, not by flow)
    conversation = independent_packets(pcap, sel | {"since": "1970-01-01T00:00:00Z", "until": "2106-01-01T00:00:00Z"})
    n = alert["flows"][0]["packets"]
    assert [d for _, d in got] == [d for _, d in conversation][: len(got)] and n <= len(got) <= n + 1
    # the times: as the ring recorded them, read with scapy, and within the alert's first and last seen
    recorded = [pkt for f in ring for pkt in independent_packets(f, sel)]
    assert got == recorded
    first = round(datetime.fromisoformat(sel["since"].replace("Z", "+00:00")).timestamp() * 1000)
    last = round(datetime.fromisoformat(sel["until"].replace("Z", "+00:00")).timestamp() * 1000)
    assert all(first <= ns // 1_000_000 <= last for ns, _ in got)
    assert health["ring_packets"] >= 606 and health["ring_errors"] == 0 and health["kept_alerts"] >= 1
    assert len(ring) >= 1


@pytest.mark.skipif(os.geteuid() != 0 or _which("tcpreplay") is None or _which("mount") is None,
                    reason="needs root (tmpfs, network namespaces) and tcpreplay")  # fmt: skip
def test_a_full_ring_disk_never_stops_capture(tmp_path, site_pcap):
    """The ring's folder on a tiny tmpfs that fills: capture and metering go on (every packet sent is metered and
    summarised), one warning, the failed writes counted in health, no traceback."""
    import re

    from netns import veth_namespaces
    from test_full_disk import tmpfs

    with tmpfs(tmp_path / "small", "512k") as small:  # the site capture is 900 kB: the ring fills part-way
        agent = Agent(tmp_path, bpf_filter="ip", evidence_dir=str(small), ring_file_mb=1)
        try:
            with veth_namespaces() as (cap, snd):
                agent.aggregator(netns=cap)
                p = agent.sensor("run", "--interface", "vcap", netns=cap)
                wait(lambda: "capturing from vcap" in agent.log() or p.poll() is not None, 30, "the sensor")
                assert p.poll() is None, agent.log()
                cmd = ["ip", "netns", "exec", snd, _which("tcpreplay"), "-i", "vsnd", "--pps", "2000", str(site_pcap)]
                sent = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
                assert sent.returncode == 0, sent.stderr
                packets = int(re.search(r"Actual: (\d+) packets", sent.stdout).group(1))
                time.sleep(7)  # the ring keeper looks every 5 s
                assert p.poll() is None, agent.log()
                p.send_signal(signal.SIGTERM)
                assert p.wait(60) == 0, agent.log()
                summaries, health = agent.rows("summary"), agent.rows("health")
        finally:
            agent.stop()
    log = agent.log()
    assert sum(s["packets"] for s in summaries) == packets
    assert health[-1]["packets_seen"] == packets and health[-1]["evidence"]["ring_errors"] > 0
    assert 0 < health[-1]["evidence"]["ring_packets"] < packets
    assert log.count("cannot be written") == 1 and "Traceback" not in log


def test_a_sensor_killed_in_the_middle_of_a_job_answers_it_after_its_restart(tmp_path):
    """kill -9 of the sensor as it takes a pcap job: the job is sent again on the restarted sensor's new connection
    and completes, each part stored once; nothing already accepted is lost."""
    from scapy.utils import wrpcap

    pcap, agent = ftp_brute_force(tmp_path)
    try:
        agent.aggregator()
        p = agent.sensor("replay", str(pcap), "--serve-evidence", "120")
        wait(lambda: "serving pcap jobs" in agent.log(), 120, "the replay")
        alerts = alerts_in(agent.store)
        brute = next(a for a in alerts if a["kind"] == "brute-force")
        job = subprocess.Popen([str(BIN / "ntds-aggregator"), "pcap", str(brute["id"]), "-o", str(tmp_path / "k.pcap"),
                                "--config", str(agent.root / "agg.yaml"), "--timeout", "90"], stderr=subprocess.PIPE,
                               text=True)  # fmt: skip
        wait(lambda: "pcap job 1" in agent.log(), 30, "the job at the sensor")
        p.kill()
        p.wait(10)
        tiny = tmp_path / "tiny.pcap"
        wrpcap(str(tiny), [ether() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2)])
        again = agent.sensor("replay", str(tiny), "--serve-evidence", "120")
        assert job.wait(120) == 0, job.stderr.read() + agent.log()
        from ntds.wire.schema import packets_behind

        assert fetched_packets(tmp_path / "k.pcap") == independent_packets(pcap, packets_behind(brute))
        with sqlite3.connect(agent.store) as db:
            assert db.execute("SELECT COUNT(*) FROM pcap_parts").fetchone()[0] == 0
            assert db.execute("SELECT state FROM pcap_jobs").fetchall() == [("done",)]
        assert len(alerts_in(agent.store)) == len(alerts)  # what was accepted before the kill is all there
        # stopped once it is up (its SIGTERM handler set): on a fast run the job can finish before it is
        wait(lambda: "serving pcap jobs" in agent.log(), 60, "the restarted sensor")
        again.send_signal(signal.SIGTERM)
        assert again.wait(60) == 0
    finally:
        agent.stop()


def test_fetched_packets_are_kept_for_their_days_and_space_then_asked_for_again(tmp_path):
    """The aggregator's evidence folder is bounded: files past evidence_days, or beyond evidence_mb (oldest first),
    are removed and their jobs say so; asking again for the alert makes a new job."""
    from aggregator import evidence
    from aggregator.store import Store
    from ntds.wire.schema import EXAMPLES, Message

    store = Store(tmp_path / "store.db")
    store.store([Message("alert", "tap-01", 1, "2026-11-16T08:00:00Z", EXAMPLES["alert"], "s1")])
    (alert_id,) = store.db.execute("SELECT id FROM alerts").fetchone()
    folder = evidence.folder_of(store.path)
    folder.mkdir()
    now = time.time()
    jobs = []
    for age_days, size in ((40, 100), (10, 3 * 2**20), (5, 2 * 2**20), (0, 1 * 2**20)):
        sel = {"host": "10.1.0.10", "peer": "", "host_port": 0, "peer_port": 0, "protocol": 0,
               "since": "2026-11-16T08:00:00Z", "until": "2026-11-16T09:00:00Z"}  # fmt: skip
        job = evidence.request_for_host(store.db, "tap-01", sel, "test")
        path = folder / f"job-{job}.pcap"
        path.write_bytes(b"x" * size)
        store.db.execute("UPDATE pcap_jobs SET state = 'done', file = ?, bytes = ?, updated = ?, alert_id = ? "
                         "WHERE id = ?", (str(path), size, now - age_days * 86400, alert_id, job))  # fmt: skip
        jobs.append((job, path))
    lines = evidence.prune(store.db, 30 * 86400, 4 * 2**20, now)
    states = {j: evidence.job(store.db, j) for j, _ in jobs}
    # the 40-day-old file goes by age; then the oldest beyond 4 MB (10 days, 3 MB): 3 MB left
    assert [states[j]["state"] for j, _ in jobs] == ["expired", "expired", "done", "done"]
    assert [p.exists() for _, p in jobs] == [False, False, True, True] and len(lines) == 2
    assert "after 30 days; ask again" in states[jobs[0][0]]["error"]
    assert "beyond the space for 4 MB" in states[jobs[1][0]]["error"]
    # the newest done job for the alert is still used; once it expires too, asking again makes a new one
    assert evidence.request_for_alert(store.db, alert_id) == jobs[-1][0]
    evidence.prune(store.db, 0, 0, now + 1)
    assert evidence.request_for_alert(store.db, alert_id) not in {j for j, _ in jobs}
    store.close()


def test_a_replayed_file_is_read_by_its_index_by_time(tmp_path):
    """A replayed pcap's index by time (every 4,096th record's offset and its block's time span): a job reads
    only the blocks of its range and finds exactly what reading the whole file finds, out-of-order times
    included; the index is kept and reused; a file changed since the replay is refused."""
    import struct

    from sensor.evidence.jobs import Evidence
    from sensor.evidence.packets import BLOCK, Match, index, read

    frame = bytes(ether() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1000, dport=53) / b"q")
    other = bytes(ether() / IP(src="10.0.0.3", dst="10.0.0.4") / UDP(sport=1000, dport=53) / b"q")
    path = tmp_path / "long.pcap"
    base = 1_700_000_000
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for k in range(5 * BLOCK):
            sec = base + k // 10 - (5 if k % 997 == 0 else 0)  # ten a second, now and then one from the past
            data = frame if k % 3 == 0 else other
            f.write(struct.pack("<IIII", sec, (k % 10) * 100_000, len(data), len(data)))
            f.write(data)
    blocks = index(path)
    assert [n for _, n, _, _ in blocks] == [BLOCK] * 5 and blocks[0][0] == 24
    evidence = Evidence(tmp_path / "ev", None)
    evidence.remember_replay([(path, None)])
    since, until = (base + 1000) * 1000, (base + 1300) * 1000  # inside the third block
    job = {"alert_spool": "", "alert_seq": 0, "host": "10.0.0.1", "peer": "", "host_port": 0, "peer_port": 0,
           "protocol": 0, "since": _iso_ms(since), "until": _iso_ms(until), "max_bytes": 0}  # fmt: skip
    answer = evidence.answer(1, job)
    match = Match("10.0.0.1", since, until)
    expected = [r for r in read(path) if match.wants(r)]
    assert answer[0]["packets"] == len(expected) > 0 and answer[0]["source"] == "replay"
    import base64

    served = tmp_path / "served.pcap"
    served.write_bytes(b"".join(base64.b64decode(p["data"]) for p in answer))
    assert [(r.ts_ns, r.data) for r in read(served)] == [(r.ts_ns, r.data) for r in expected]
    read_blocks = [b for b in blocks if b[2] <= until and b[3] >= since]
    assert len(read_blocks) < len(blocks)  # only the blocks of the range
    assert len(list((tmp_path / "ev" / "index").glob("*.json"))) == 1
    with open(path, "ab") as f:  # the file changed since the replay: refused, not misread
        f.write(b"\0" * 16)
    assert "changed or removed since" in evidence.answer(2, job)[0]["error"]


def _iso_ms(ms: int) -> str:
    from ntds.detect.alerts import iso_ms

    return iso_ms(ms)

"""Meter speed: `ntds-sensor features` against bare NFStream on the same capture, same streamer settings.

Two captures, written once under bench/data/:
- generated: TCP conversations (handshake, 16 data packets, FIN exchange), 256 of
  them interleaved at a time, templates built by scapy, addresses patched in;
  every conversation ends with FIN, so the FIN rule makes two flows of each;
- real-mix: every intact Ethernet capture of ../shared/pcaps one after the other
  (times rebased), repeated to --mix-packets (skipped without ../shared).
For each, bare NFStream (no plugin), NFStream with an empty NFPlugin and
`ntds-sensor features` alternate, each in a fresh process, --runs times; the
median packets per second, the ratios and the peak memory of each process tree
are reported. Memory is also measured on a generated capture half the size, to
show it does not grow with the number of packets (both span more than the 120 s
flow timeout, so the flow table is in its steady state).

    python bench/bench_meter.py [--packets 1000000] [--mix-packets 500000] [--runs 5] [--only generated|real-mix]
                                [--base CHECKOUT]

With --base (a checkout of another commit, its C part built in place with `python setup.py build_ext --inplace`),
that checkout's `features` replaces NFStream with an empty plugin: the cost of a change, measured alternating.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
BIN = Path(sys.executable).parent

BARE = """
import sys
from nfstream import NFStreamer
n = 0
# The streamer settings `ntds-sensor features` uses (ntds.flows.meter.FlowMeter._streamer), without ntds.
for flow in NFStreamer(source=sys.argv[1], decode_tunnels=False, bpf_filter=None, promiscuous_mode=True,
                       snapshot_length=1536, idle_timeout=120, active_timeout=120, accounting_mode=1,
                       n_dissections=20, statistical_analysis=False, splt_analysis=0, n_meters=1, max_nflows=0,
                       performance_report=0, system_visibility_mode=0):
    n += 1
print(n)
"""

EMPTY_PLUGIN = """
import sys
from nfstream import NFPlugin, NFStreamer
class Nothing(NFPlugin):
    def on_init(self, packet, flow): pass
    def on_update(self, packet, flow): pass
n = 0
for flow in NFStreamer(source=sys.argv[1], decode_tunnels=False, bpf_filter=None, promiscuous_mode=True,
                       snapshot_length=1536, idle_timeout=120, active_timeout=120, accounting_mode=1,
                       n_dissections=20, statistical_analysis=False, splt_analysis=0, n_meters=1, max_nflows=0,
                       performance_report=0, system_visibility_mode=0, udps=[Nothing()]):
    n += 1
print(n)
"""

AT_BASE = """
import sys
sys.path.insert(0, sys.argv[1])  # another checkout of ntds, its C part built in place
from sensor.cli import main
sys.exit(main(sys.argv[2:]))
"""
"""`ntds-sensor` of another checkout (--base): the same command, the code before a change."""

PEAK = """
import resource, subprocess, sys
subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, check=True)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def templates() -> list[tuple[bool, bytes]]:
    from scapy.all import IP, TCP, Ether, Raw

    def pkt(fwd: bool, flags: str, payload: bytes = b"") -> tuple[bool, bytes]:
        s, d = ("10.0.0.1", "10.200.0.1") if fwd else ("10.200.0.1", "10.0.0.1")
        sp, dp = (1024, 443) if fwd else (443, 1024)
        p = (
            Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
            / IP(src=s, dst=d)
            / TCP(sport=sp, dport=dp, flags=flags)
        )
        return fwd, bytes(p / Raw(payload)) if payload else bytes(p)

    conv = [pkt(True, "S"), pkt(False, "SA"), pkt(True, "A")]
    for i in range(8):
        conv.append(pkt(True, "PA", b"q" * (40 + 10 * i)))
        conv.append(pkt(False, "PA", b"r" * (200 + 60 * i)))
    conv += [pkt(True, "FA"), pkt(False, "FA"), pkt(True, "A")]
    return conv


def generate(path: Path, packets: int) -> None:
    """Write `packets` packets of interleaved conversations, 500 µs apart.

    At 2,000 packets/s the capture spans well over the 120 s flow timeout, so the
    flow table reaches its steady state and memory can be compared across sizes."""
    conv = templates()
    per = len(conv)
    width = 256
    path.parent.mkdir(parents=True, exist_ok=True)
    t = 1_794_816_000_000_000
    with open(path, "wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        written = 0
        batch = 0
        while written < packets:
            for step in range(per):
                fwd, frame = conv[step]
                for k in range(width):
                    if written >= packets:
                        break
                    flow = batch * width + k
                    b = bytearray(frame)
                    host = 1 + flow // 60000
                    port = 1024 + flow % 60000
                    ip_at = 26 if fwd else 30  # client address as source or destination
                    struct.pack_into("!I", b, ip_at, (10 << 24) | host)
                    struct.pack_into("!H", b, 34 if fwd else 36, port)
                    t += 500
                    out.write(struct.pack("<IIII", t // 1_000_000, t % 1_000_000, len(b), len(b)))
                    out.write(b)
                    written += 1
            batch += 1


SHARED = HERE.parent.parent / "shared" / "pcaps"


def real_mix(path: Path, packets: int) -> int:
    """Every intact Ethernet capture of ../shared/pcaps, one after the other with their times rebased (a
    second apart; gaps inside a capture capped at a minute, as some fuzzed files jump by years), the whole
    set repeated (each round 10 minutes after the last) until `packets` packets.
    Returns the packets written; 0 when the shared captures are absent."""
    import dpkt

    from ntds.errors import InputError
    from ntds.flows.captures import inspect_capture

    sources = []
    for p in sorted(SHARED.rglob("*")) if SHARED.is_dir() else []:
        if p.suffix not in (".pcap", ".pcapng"):
            continue
        try:
            info = inspect_capture(p)
        except InputError:
            continue
        if info.link_type == 1 and not info.damaged and info.packets:
            with open(p, "rb") as fh:
                reader = dpkt.pcapng.Reader(fh) if info.format == "pcapng" else dpkt.pcap.Reader(fh)
                records = [(float(ts), bytes(buf)) for ts, buf in reader]
            base = records[0][0]
            sources.append([(ts - base, buf) for ts, buf in records])
    if not sources:
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    written, clock = 0, 1_794_816_000.0
    with open(path, "wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        while written < packets:
            for records in sources:
                span = 0.0
                for offset, buf in records:
                    t = clock + min(max(offset, span), span + 60.0)  # never backwards, no bogus jumps
                    span = t - clock
                    out.write(struct.pack("<IIII", int(t), int(round((t % 1) * 1e6)) % 1_000_000, len(buf), len(buf)))
                    out.write(buf)
                    written += 1
                clock += span + 1.0
            clock += 600.0
    return written


def timed(cmd: list[str], cpu: list[float] | None = None) -> float:
    """Wall seconds of a command; its CPU seconds (user + system, the process and its children) appended to
    `cpu`: on a shared machine CPU time says what a change costs when wall time says mostly the load."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if cpu is not None:
        cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return wall


def peak_kib(cmd: list[str]) -> int:
    out = subprocess.run([sys.executable, "-c", PEAK, *cmd], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def compare(label: str, big: Path, small: Path | None, packets: int, runs: int, base: Path | None = None) -> dict:
    """`ntds-sensor features` against bare NFStream (same streamer settings) on one capture, alternating; with
    `base`, against that checkout's `features` instead of NFStream with an empty plugin."""
    sensor_cmd = lambda p: [str(BIN / "ntds-sensor"), "features", "-q", str(p), "-o", str(DATA / "out.csv")]  # noqa: E731
    bare_cmd = lambda p: [sys.executable, "-c", BARE, str(p)]  # noqa: E731
    empty_cmd = lambda p: [sys.executable, "-c", EMPTY_PLUGIN, str(p)]  # noqa: E731
    base_cmd = lambda p: [sys.executable, "-c", AT_BASE, str(base), "features", "-q", str(p), "-o",  # noqa: E731
                          str(DATA / "out-base.csv")]  # fmt: skip
    commands = {"nfstream": bare_cmd, "nfstream_empty_plugin": empty_cmd, "sensor": sensor_cmd}
    if base is not None:
        commands = {"nfstream": bare_cmd, "sensor_base": base_cmd, "sensor": sensor_cmd}
    times: dict[str, list[float]] = {k: [] for k in commands}
    cpu: dict[str, list[float]] = {k: [] for k in commands}
    for i in range(runs):
        for name, cmd in commands.items():
            times[name].append(timed(cmd(big), cpu[name]))
        print(f"{label} run {i + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s (CPU {cpu[k][-1]:.2f} s)"
                                                   for k, v in times.items()), file=sys.stderr)  # fmt: skip
    med = {k: statistics.median(v) for k, v in times.items()}
    pps = {k: packets / v for k, v in med.items()}
    memory = {"sensor_big_kib": peak_kib(sensor_cmd(big)), "nfstream_big_kib": peak_kib(bare_cmd(big))}
    if small is not None:
        memory["sensor_small_kib"] = peak_kib(sensor_cmd(small))
    return {
        "capture": label,
        "packets": packets,
        "runs": runs,
        "median_s": med,
        "median_cpu_s": {k: statistics.median(v) for k, v in cpu.items()},
        "packets_per_s": pps,
        "ratio_sensor_to_nfstream": pps["sensor"] / pps["nfstream"],
        **(
            {
                "ratio_sensor_to_base": pps["sensor"] / pps["sensor_base"],
                "cpu_ratio_sensor_to_base": statistics.median(cpu["sensor"]) / statistics.median(cpu["sensor_base"]),
            }
            if base
            else {"ratio_empty_plugin_to_nfstream": pps["nfstream_empty_plugin"] / pps["nfstream"]}
        ),  # fmt: skip
        "peak_memory": memory,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--mix-packets", type=int, default=500_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--base", type=Path, help="another checkout (C part built in place) to measure against")
    ap.add_argument("--only", choices=("generated", "real-mix"), help="one capture only")
    args = ap.parse_args()
    big = DATA / f"spread-{args.packets}.pcap"
    small = DATA / f"spread-{args.packets // 2}.pcap"
    for path, n in ((big, args.packets), (small, args.packets // 2)):
        if not path.exists():
            print(f"generating {path} ({n} packets)", file=sys.stderr)
            generate(path, n)
    results = []
    if args.only != "real-mix":
        results.append(compare("generated", big, small, args.packets, args.runs, args.base))
    mix = DATA / f"real-mix-{args.mix_packets}.pcap"
    if not mix.exists():
        print(f"building {mix} from ../shared/pcaps", file=sys.stderr)
        real_mix(mix, args.mix_packets)
    if mix.exists() and args.only != "generated":
        n = sum(1 for _ in _records(mix))
        results.append(compare("real-mix", mix, None, n, args.runs, args.base))
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "command": "python bench/bench_meter.py " + " ".join(sys.argv[1:]),
        "when": time.strftime("%Y-%m-%d"),
        "results": results,
    }
    print(json.dumps(result, indent=2))
    return 0


def _records(path: Path):
    """Record headers of a little-endian microsecond pcap (the mix this script writes)."""
    with open(path, "rb") as fh:
        fh.seek(24)
        while header := fh.read(16):
            caplen = struct.unpack("<8xI4x", header)[0]
            fh.seek(caplen, 1)
            yield caplen


if __name__ == "__main__":
    sys.exit(main())

"""Frames NFStream's parser drops or misreads, fixed up before it parses them (ntds/flows/packet_tap.c), and a
capture whose clock goes backwards (ntds/flows/capture_next.c).

Expected values are computed here with scapy from the fixture files themselves (pcaps/generate.py), not by the
code under test; reference agreement on the same fixtures is in test_reference_agreement.py.
"""

from __future__ import annotations

from collections import defaultdict

import pytest
from conftest import FIXTURES, sensor_rows
from frames import ether
from scapy.all import IP, TCP, UDP, Dot1Q, Ether, PcapReader

from ntds.flows import _compiled
from ntds.flows.engine import CaptureControl
from ntds.flows.meter import FlowMeter


def _frames(name: str) -> list:
    with PcapReader(str(FIXTURES / f"{name}.pcap")) as reader:
        return list(reader)


def _ms(t) -> int:
    return int(t * 1000)  # NFStream's millisecond clock


def _payload(frame) -> int:
    """TCP/UDP payload length of an Ethernet frame (802.1Q tags skipped), read from its bytes: an IPv4 total
    length of 0 counts as the captured length."""
    raw = bytes(frame)
    off = 14
    while raw[off - 2 : off] == b"\x81\x00":
        off += 4
    ihl = (raw[off] & 15) * 4
    total = int.from_bytes(raw[off + 2 : off + 4], "big") or len(raw) - off
    header = (raw[off + ihl + 12] >> 4) * 4 if raw[off + 9] == 6 else 8
    return total - ihl - header


def _rows(name: str) -> dict:
    return {(r["Source.Port"], r["vlan_id"], r["flow_end_reason"]): r for r in sensor_rows([FIXTURES / f"{name}.pcap"])}


def _read_with_control(name: str) -> tuple[list, CaptureControl]:
    control = CaptureControl()
    records = list(FlowMeter("unicauca", control=control).read([FIXTURES / f"{name}.pcap"]))
    return records, control


def test_ipv4_total_length_zero_counts_by_captured_length(fixtures_dir):
    """Segmentation offload: 1.5-5.5 kB frames with IPv4 total length 0 count, with the payload the captured
    frame holds, on plain Ethernet and under an 802.1Q tag. The client's FIN ends each flow (unicauca)."""
    frames = _frames("ip_length_zero")
    zero = [f for f in frames if f[IP].len == 0]
    assert len(zero) == 6 and all(1500 < len(f) < 5500 for f in zero)
    rows = _rows("ip_length_zero")
    for sport, vlan in ((40016, 0), (40017, 7)):
        mine = [f for f in frames if f[IP][TCP].sport == sport or f[IP][TCP].dport == sport]
        fin = next(i for i, f in enumerate(mine) if "F" in f[TCP].flags)
        flow = mine[: fin + 1]  # the FIN rule: the client's FIN is the flow's last packet
        fwd = [f for f in flow if f[IP].src == "10.1.0.10"]
        bwd = [f for f in flow if f[IP].src != "10.1.0.10"]
        payload = sum(_payload(f) for f in fwd)
        r = rows[(sport, vlan, "fin")]
        assert (r["Total.Fwd.Packets"], r["Total.Backward.Packets"]) == (len(fwd), len(bwd)) == (7, 5)
        assert r["Total.Length.of.Fwd.Packets"] == payload == 1460 + 2920 + 4380 + 5440
        assert r["Fwd.Packet.Length.Max"] == 5440
        assert r["Flow.Duration"] == (_ms(flow[-1].time) - _ms(flow[0].time)) * 1000 == 12_000
        assert r["_start_ms"] == _ms(flow[0].time)
    _, control = _read_with_control("ip_length_zero")
    assert control.frame_fixups == {"ip_length_filled": 6, "fabricpath_decapsulated": 0, "fabricpath_skipped": 0}


def test_fabricpath_frames_are_metered_as_their_inner_frame(fixtures_dir):
    """EtherType 0x8903: the inner VLAN-tagged IPv4 frame is metered, so one whole flow and no flow between
    addresses read from the FabricPath header; a FabricPath frame inside FabricPath is skipped and counted."""
    frames = _frames("fabricpath")
    inner = []
    for f in frames:
        if f[Ether].type == 0x8903:
            raw = bytes(f)[16:]
            if int.from_bytes(raw[12:14], "big") == 0x8903:
                continue  # nothing to meter inside
            inner.append((f.time, Ether(raw)))
        else:
            inner.append((f.time, f))
    assert len(inner) == 9 and sum(f[Ether].type == 0x8903 for f in frames) == 5
    fin = next(i for i, (_, f) in enumerate(inner) if "F" in f[TCP].flags)
    flow = inner[: fin + 1]
    rows = sensor_rows([FIXTURES / "fabricpath.pcap"])
    assert {r["Source.IP"] for r in rows} | {r["Destination.IP"] for r in rows} == {"10.1.0.10", "93.184.216.34"}
    (r,) = [r for r in rows if r["flow_end_reason"] == "fin"]
    fwd = [f for _, f in flow if f[IP].src == "10.1.0.10"]
    bwd = [f for _, f in flow if f[IP].src != "10.1.0.10"]
    assert (r["Total.Fwd.Packets"], r["Total.Backward.Packets"]) == (len(fwd), len(bwd)) == (5, 2)
    assert r["Total.Length.of.Fwd.Packets"] == sum(len(f[TCP].payload) for f in fwd) == 300
    assert r["Total.Length.of.Bwd.Packets"] == sum(len(f[TCP].payload) for f in bwd) == 900
    assert r["Flow.Duration"] == (_ms(flow[-1][0]) - _ms(flow[0][0])) * 1000 == 6000
    assert r["_start_ms"] == _ms(flow[0][0])
    assert r["vlan_id"] == 7
    _, control = _read_with_control("fabricpath")
    assert control.frame_fixups == {"ip_length_filled": 0, "fabricpath_decapsulated": 4, "fabricpath_skipped": 1}
    assert control.frames_skipped == 1


def test_flows_keep_their_own_times_when_the_capture_clock_goes_backwards(fixtures_dir):
    """A capture merged from two clocks: flows written after a later packet keep their own first-packet time
    and duration (NFStream's meter loop would stamp them at the later time with a duration of 0); a packet
    behind its own flow's previous packet is taken at that packet's time."""
    flows = defaultdict(list)  # by the client's port
    for f in _frames("clock_backwards"):
        l4 = f[IP].payload
        flows[l4.sport if f[IP].src == "10.1.0.10" else l4.dport].append((f, _payload(f)))
    rows = {r["Source.Port"]: r for r in sensor_rows([FIXTURES / "clock_backwards.pcap"])}
    assert set(rows) == set(flows) == {7200, 7201, 40019, 7300}
    for port, packets in flows.items():
        times, latest = [], 0
        for f, _ in packets:  # a flow's times never go backwards
            latest = max(latest, _ms(f.time))
            times.append(latest)
        r = rows[port]
        fwd = [p for f, p in packets if f[IP].src == "10.1.0.10"]
        assert r["Total.Fwd.Packets"] + r["Total.Backward.Packets"] == len(packets)
        assert r["Total.Length.of.Fwd.Packets"] == sum(fwd)
        assert r["_start_ms"] == _ms(packets[0][0].time)
        assert r["Flow.Duration"] == (times[-1] - times[0]) * 1000
    assert rows[7201]["Timestamp"] == "16/11/202608:00:00" and rows[7201]["Flow.Duration"] == 120_000
    assert rows[40019]["Total.Fwd.Packets"] + rows[40019]["Total.Backward.Packets"] == 15
    assert rows[40019]["Flow.Duration"] == 51_000
    assert rows[7300]["Flow.Duration"] == 40_000  # 300, 330, 320 (taken at 330), 340 ms
    assert rows[7300]["Flow.IAT.Min"] == 0


@pytest.mark.parametrize(
    ("dlt", "frame", "filled_at"),
    [
        (1, bytes(ether() / IP(len=0, src="10.0.0.1", dst="10.0.0.2") / UDP() / bytes(100)), 14),
        (1, bytes(ether() / Dot1Q(vlan=3) / Dot1Q(vlan=4) / IP(len=0) / UDP() / bytes(100)), 22),
        (113, bytes(16)[:14] + b"\x08\x00" + bytes(IP(len=0) / UDP() / bytes(100)), 16),
        (12, bytes(IP(len=0) / UDP() / bytes(100)), 0),
        (104, b"\x0f\x00\x08\x00" + bytes(IP(len=0) / UDP() / bytes(100)), 4),
    ],
)
def test_the_fixup_works_on_a_copy(dlt, frame, filled_at):
    """The filled-in length is the captured length from the IPv4 header on; the captured bytes are untouched."""
    ffi, lib = _compiled.ffi, _compiled.lib
    buf = ffi.new("uint8_t[]", frame)
    out, caplen, length = ffi.new("uint8_t **"), ffi.new("uint32_t *"), ffi.new("uint32_t *")
    assert lib.ntds_tap_fix(dlt, buf, len(frame), len(frame), out, caplen, length) == 1
    fixed = bytes(ffi.buffer(out[0], caplen[0]))
    assert bytes(ffi.buffer(buf, len(frame))) == frame
    assert int.from_bytes(fixed[filled_at + 2 : filled_at + 4], "big") == len(frame) - filled_at
    assert fixed[: filled_at + 2] == frame[: filled_at + 2] and fixed[filled_at + 4 :] == frame[filled_at + 4 :]


def test_frames_that_need_no_fixup_are_handed_on_as_they_are():
    ffi, lib = _compiled.ffi, _compiled.lib
    for dlt, frame in (
        (1, bytes(ether() / IP() / UDP() / bytes(100))),
        (1, bytes(ether() / IP(len=0, ihl=4) / bytes(100))),  # no sane header to fill in
        (1, bytes(ether(type=0x86DD) / bytes(100))),
        (127, bytes(200)),
    ):
        out, caplen, length = ffi.new("uint8_t **"), ffi.new("uint32_t *"), ffi.new("uint32_t *")
        assert lib.ntds_tap_fix(dlt, ffi.from_buffer(frame), len(frame), len(frame), out, caplen, length) == 0


def test_installing_without_a_pcap_next_ex_slot_is_one_clear_error():
    """The stand-in is installed by symbol name; a library that does not call pcap_next_ex says so."""
    ffi, lib = _compiled.ffi, _compiled.lib
    error = ffi.new("char[256]")
    inside = int(ffi.cast("uintptr_t", ffi.addressof(lib, "ntds_tap_fix")))  # ntds's own library
    assert lib.ntds_tap_install(inside, error, 256) == -1
    assert "pcap_next_ex" in ffi.string(error).decode()


def test_the_sensor_reports_what_it_fixed_up_and_skipped_in_health(tmp_path):
    """A real replay of both fixtures to a real aggregator: its last health message counts the frames whose IPv4
    length was filled and the FabricPath frames decapsulated or skipped, as counted here from the files."""
    from test_sensor_agent import Agent

    expected = {"ip_length_filled": 0, "fabricpath_decapsulated": 0, "fabricpath_skipped": 0}
    for name in ("ip_length_zero", "fabricpath"):
        for f in _frames(name):
            raw = bytes(f)
            if f[Ether].type == 0x8903:
                inner = int.from_bytes(raw[16 + 12 : 16 + 14], "big") if len(raw) >= 16 + 14 else 0x8903
                expected["fabricpath_skipped" if inner == 0x8903 else "fabricpath_decapsulated"] += 1
            elif IP in f and f[IP].len == 0:
                expected["ip_length_filled"] += 1
    assert all(expected.values())
    agent = Agent(tmp_path)
    try:
        agent.aggregator()
        p = agent.sensor("replay", str(FIXTURES / "ip_length_zero.pcap"), str(FIXTURES / "fabricpath.pcap"))
        assert p.wait(60) == 0, agent.log()
        assert agent.rows("health")[-1]["frames"] == expected
    finally:
        agent.stop()

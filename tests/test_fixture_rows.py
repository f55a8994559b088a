"""Expected rows of the project's fixtures, worked out by hand from pcaps/generate.py.

Frames are Ethernet (14) + IPv4 (20) + TCP (20 + options) unless said otherwise;
times are the generator's offsets in µs, seen through NFStream's millisecond clock.
The comments give the arithmetic; nothing here is computed by the code under test.
"""

from __future__ import annotations

import math

import pytest
from conftest import FIXTURES, sensor_rows

C, S = "10.1.0.10", "93.184.216.34"


def rows(name: str, profile: str) -> list[dict]:
    return sensor_rows([FIXTURES / f"{name}.pcap"], profile)


def assert_row(row: dict, expected: dict) -> None:
    for col, want in expected.items():
        got = row[col]
        if isinstance(want, float) and math.isnan(want):
            assert isinstance(got, float) and math.isnan(got), (col, got)
        elif isinstance(want, float):
            assert got == pytest.approx(want, rel=1e-12), (col, got, want)
        else:
            assert got == want, (col, got, want)


def test_handshake_options_unicauca(fixtures_dir):
    (r,) = rows("handshake_options", "unicauca")
    assert_row(
        r,
        {
            "Flow.ID": f"{C}-{S}-40001-443-6",  # 10.x sorts before 93.x as signed bytes
            "Source.IP": C,
            "Source.Port": 40001,
            "Protocol": 6,
            "Timestamp": "16/11/202608:00:00",
            "Flow.Duration": 4000,
            "Total.Fwd.Packets": 3,  # SYN, ACK, PSH-ACK
            "Total.Backward.Packets": 2,  # SYN-ACK, ACK
            "Total.Length.of.Fwd.Packets": 100,
            "Total.Length.of.Bwd.Packets": 0.0,
            "Fwd.Packet.Length.Max": 100,
            "Fwd.Packet.Length.Mean": 100 / 3,
            "Fwd.Packet.Length.Std": math.sqrt(((0 - 100 / 3) ** 2 * 2 + (100 - 100 / 3) ** 2) / 2),
            "Flow.Bytes.s": 100 / 0.004,
            "Flow.Packets.s": 5 / 0.004,
            "Flow.IAT.Mean": 1000.0,
            "Flow.IAT.Std": 0.0,
            "Fwd.IAT.Total": 3000.0,  # 0 -> 2000 -> 3000
            "Fwd.IAT.Mean": 1500.0,
            "Fwd.IAT.Max": 2000.0,
            "Fwd.IAT.Min": 1000.0,
            "Bwd.IAT.Total": 3000.0,  # 1000 -> 4000
            "Fwd.Header.Length": 40 + 32 + 32,  # SYN with 20 option bytes, then timestamps only
            "Bwd.Header.Length": 40 + 32,
            "Fwd.Header.Length.1": 104,
            "min_seg_size_forward": 32,
            "Init_Win_bytes_forward": 64240,
            "Init_Win_bytes_backward": 509,  # the *last* backward packet in the dataset's tool
            "act_data_pkt_fwd": 1,
            "Min.Packet.Length": 0,
            "Max.Packet.Length": 100,
            "Packet.Length.Mean": 100 / 6,  # first packet (0) counted twice: n = 6
            "Packet.Length.Variance": (5 * (100 / 6) ** 2 + (100 - 100 / 6) ** 2) / 5,
            "Average.Packet.Size": 100 / 5,
            # first packet is a bare SYN; the SYN bit sits under PSH.Flag.Count (spec 4.2)
            "PSH.Flag.Count": 1,
            "SYN.Flag.Count": 0,
            "ACK.Flag.Count": 0,
            "FIN.Flag.Count": 0,
            "Down.Up.Ratio": 0,
            "Subflow.Fwd.Packets": 3,
            "Subflow.Fwd.Bytes": 100,
            "Fwd.Avg.Bytes.Bulk": 0,
            "Active.Mean": 0.0,
            "Idle.Mean": 0.0,
            "Label": "BENIGN",
        },
    )


def test_handshake_options_corrected(fixtures_dir):
    (r,) = rows("handshake_options", "corrected")
    assert_row(
        r,
        {
            "Init_Win_bytes_backward": 65160,  # the SYN-ACK's window
            "Packet.Length.Mean": 100 / 5,
            "Average.Packet.Size": 100 / 5,
            "SYN.Flag.Count": 2,
            "ACK.Flag.Count": 4,
            "PSH.Flag.Count": 1,
            "FIN.Flag.Count": 0,
            "Fwd.PSH.Flags": 1,
        },
    )


@pytest.mark.parametrize(("profile", "bwd_max", "bwd_total"), [("unicauca", 6, 6.0), ("corrected", 0, 0.0)])
def test_padding(profile, bwd_max, bwd_total, fixtures_dir):
    (r,) = rows("padding", profile)
    # 54-byte pure ACK padded to 60: six trailer bytes count as payload only in the dataset's tool
    assert_row(
        r,
        {
            "Bwd.Packet.Length.Max": bwd_max,
            "Total.Length.of.Bwd.Packets": bwd_total,
            "Fwd.Packet.Length.Max": 18,  # "GET / HTTP/1.1\r\n\r\n"
            "Fwd.Packet.Length.Min": 0,  # the unpadded ACK
            "act_data_pkt_fwd": 1,
        },
    )


@pytest.mark.parametrize(("profile", "fwd_psh"), [("unicauca", 0), ("corrected", 2)])
def test_psh_both_directions(profile, fwd_psh, fixtures_dir):
    (r,) = rows("psh_both", profile)
    assert_row(
        r,
        {
            "Total.Fwd.Packets": 4,
            "Total.Backward.Packets": 2,
            "Total.Length.of.Fwd.Packets": 350,
            "Total.Length.of.Bwd.Packets": 1200.0,
            "Fwd.PSH.Flags": fwd_psh,  # first packet is a SYN: no PSH in the dataset's count
            "Bwd.PSH.Flags": 1 if profile == "corrected" else 0,
            "Down.Up.Ratio": 0,  # 2 // 4
            "Bwd.Packet.Length.Mean": 600.0,
            "Bwd.Packet.Length.Std": math.sqrt((600**2 + 600**2) / 1),
        },
    )


@pytest.mark.parametrize("profile", ["unicauca", "corrected"])
def test_idle_pause(profile, fixtures_dir):
    (r,) = rows("idle_pause", profile)
    # active 0 .. 10 ms, then a 7 s gap; the last active period is never recorded
    assert_row(
        r,
        {
            "Active.Mean": 10000.0,
            "Active.Std": 0.0,
            "Active.Max": 10000.0,
            "Active.Min": 10000.0,
            "Idle.Mean": 7_000_000.0,
            "Idle.Max": 7_000_000.0,
            "Idle.Min": 7_000_000.0,
            "Flow.Duration": 7_020_000,
            "Flow.IAT.Max": 7_000_000.0,
        },
    )


def test_subflows(fixtures_dir):
    (u,) = rows("subflows", "unicauca")
    (c,) = rows("subflows", "corrected")
    assert_row(u, {"Subflow.Fwd.Packets": 5, "Subflow.Fwd.Bytes": 303, "Subflow.Bwd.Packets": 4})
    # two gaps over 1 s -> three subflows: totals // 3
    assert_row(
        c, {"Subflow.Fwd.Packets": 1, "Subflow.Fwd.Bytes": 101, "Subflow.Bwd.Packets": 1, "Subflow.Bwd.Bytes": 0}
    )
    # payload packets 1.5 s apart never form a bulk
    assert_row(c, {"Fwd.Avg.Bytes.Bulk": 0, "Fwd.Avg.Packets.Bulk": 0, "Fwd.Avg.Bulk.Rate": 0})


def test_bulk(fixtures_dir):
    (u,) = rows("bulk", "unicauca")
    (c,) = rows("bulk", "corrected")
    assert_row(u, {"Bwd.Avg.Bytes.Bulk": 0, "Bwd.Avg.Packets.Bulk": 0, "Bwd.Avg.Bulk.Rate": 0})
    # six 1000-byte packets 2 ms apart: one bulk of 6 packets, 6000 bytes over 10 ms
    assert_row(c, {"Bwd.Avg.Bytes.Bulk": 6000, "Bwd.Avg.Packets.Bulk": 6, "Bwd.Avg.Bulk.Rate": 600_000})
    assert_row(c, {"Fwd.Avg.Bytes.Bulk": 0, "Fwd.Avg.Bulk.Rate": 0})


def test_fin_closes_and_appendix_flow(fixtures_dir):
    closed, appendix = sorted(rows("fin_appendix", "unicauca"), key=lambda r: r["_start_ms"])
    # the client's FIN (5 ms) is the last packet of the first flow
    assert_row(closed, {"Source.IP": C, "Total.Fwd.Packets": 4, "Total.Backward.Packets": 2, "Flow.Duration": 5000})
    assert closed["flow_end_reason"] == "fin"
    # the server's FIN-ACK opens an appendix flow in its own direction; the client's ACK is backward
    assert_row(
        appendix,
        {
            "Source.IP": S,
            "Source.Port": 443,
            "Total.Fwd.Packets": 1,
            "Total.Backward.Packets": 1,
            "Flow.Duration": 1000,
        },
    )
    # the corrected profile ends the flow on the ACK that answers the second FIN
    (whole,) = rows("fin_appendix", "corrected")
    assert_row(whole, {"Total.Fwd.Packets": 5, "Total.Backward.Packets": 3, "Flow.Duration": 7000})
    assert whole["flow_end_reason"] == "closed"


def test_long_flow_split_keeps_orientation(fixtures_dir):
    first, second = sorted(rows("long_flow", "unicauca"), key=lambda r: r["_start_ms"])
    assert_row(first, {"Total.Fwd.Packets": 13, "Total.Backward.Packets": 1, "Flow.Duration": 110_000_000})
    assert first["flow_end_reason"] == "active-timeout"
    # 125 s: the server speaks first after the split, yet the client stays the source
    assert_row(
        second,
        {
            "Source.IP": C,
            "Source.Port": 40008,
            "Total.Fwd.Packets": 1,
            "Total.Backward.Packets": 1,
            "Flow.Duration": 1_000_000,
            "Bwd.PSH.Flags": 0,  # spec 3, 37-38: the first packet's PSH counts forward, Bwd is always 0
            "Fwd.PSH.Flags": 1,
            "Init_Win_bytes_forward": 8192,  # W_1: the server's packet opened the flow
            "Init_Win_bytes_backward": 8192,
            "Timestamp": "16/11/202608:02:05",
        },
    )
    _, second_c = sorted(rows("long_flow", "corrected"), key=lambda r: r["_start_ms"])
    assert_row(second_c, {"Source.IP": S, "Source.Port": 5001, "Total.Fwd.Packets": 1})


def test_single_packet_flow_is_not_written(fixtures_dir):
    assert rows("single_packet", "unicauca") == []


def test_udp_request_response(fixtures_dir):
    (r,) = rows("udp_request_response", "unicauca")
    # DNS query for example.com: 12 header + 13 name + 4 = 29 bytes; answer adds 13 + 10 + 4 = 27
    assert_row(
        r,
        {
            "Flow.ID": f"10.1.0.1-{C}-53-53000-17",
            "Protocol": 17,
            "Total.Length.of.Fwd.Packets": 29,
            "Total.Length.of.Bwd.Packets": 56.0,
            "Fwd.Header.Length": 8,
            "Bwd.Header.Length": 8,
            "min_seg_size_forward": 8,
            "Init_Win_bytes_forward": -1,
            "Init_Win_bytes_backward": -1,
            "Flow.Duration": 2000,  # 2.5 ms seen through the millisecond clock
        },
    )


@pytest.mark.parametrize(("profile", "proto"), [("unicauca", 0), ("corrected", 1)])
def test_icmp(profile, proto, fixtures_dir):
    (r,) = rows("icmp", profile)
    assert_row(
        r,
        {
            "Flow.ID": f"{C}-{S}-0-0-{proto}",
            "Protocol": proto,
            "Source.Port": 0,
            "Total.Fwd.Packets": 2,
            "Total.Backward.Packets": 2,
            "Total.Length.of.Fwd.Packets": 0,  # no TCP/UDP payload
            "Fwd.Header.Length": 0,
            "Flow.Duration": 1_001_000,
        },
    )


def test_ipv6_tcp(fixtures_dir):
    (r,) = rows("ipv6_tcp", "unicauca")
    assert_row(
        r,
        {
            "Flow.ID": "2001:db8::10-2001:db8:1::80-40010-80-6",
            "Source.IP": "2001:db8::10",
            "Total.Length.of.Fwd.Packets": 36,
            "Total.Length.of.Bwd.Packets": 500.0,
            "Fwd.Header.Length": 60,
            "Init_Win_bytes_forward": 8192,
        },
    )
    assert r["ip_version"] == 6


def test_submillisecond_flow(fixtures_dir):
    (r,) = rows("submillisecond", "unicauca")
    # 431 µs in truth, 0 on the millisecond clock: rates become Java's Infinity / NaN
    assert_row(r, {"Flow.Duration": 0, "Flow.Packets.s": math.inf, "Flow.Bytes.s": math.nan, "Fwd.Packets.s": 0.0})


def test_continuation_flow_takes_w1_and_the_first_psh_forward(fixtures_dir):
    """Spec 3, columns 37-40 and 73: after the 120 s split the server's packet opens the continuation flow
    (the client stays the source). Init_Win_bytes_forward is that packet's window (W_1) and its PSH counts
    as Fwd.PSH.Flags; Bwd.PSH.Flags stays 0; Init_Win_bytes_backward is the last backward window."""
    _, second = sorted(rows("continuation_flags", "unicauca"), key=lambda r: r["_start_ms"])
    assert_row(
        second,
        {
            "Source.IP": C,
            "Total.Fwd.Packets": 1,  # the client's ACK at 126 s (window 777)
            "Total.Backward.Packets": 1,  # the server's PSH at 125 s (window 333)
            "Init_Win_bytes_forward": 333,
            "Init_Win_bytes_backward": 333,
            "Fwd.PSH.Flags": 1,
            "Bwd.PSH.Flags": 0,
            "Fwd.URG.Flags": 0,
            "Bwd.URG.Flags": 0,
        },
    )


def test_udp_flow_resuming_after_an_idle_gap_starts_at_its_first_new_packet(fixtures_dir):
    first, second = sorted(rows("udp_resume", "unicauca"), key=lambda r: r["_start_ms"])
    assert_row(first, {"Timestamp": "16/11/202608:00:00", "Flow.Duration": 1_001_000, "Total.Fwd.Packets": 2})
    # 200 s of silence: a new flow at 201 s (08:03:21), in the old flow's orientation
    assert_row(
        second,
        {
            "Timestamp": "16/11/202608:03:21",
            "Source.IP": C,
            "Source.Port": 7000,
            "Flow.Duration": 1_000_000,
            "Total.Fwd.Packets": 2,
            "Total.Backward.Packets": 1,
            "Total.Length.of.Fwd.Packets": 120,
        },
    )
    assert second["flow_start_utc"] == "2026-11-16T08:03:21.000000Z"


@pytest.mark.parametrize("name", ["offload_full", "offload_cut"])
def test_segmentation_offload_counts_follow_the_ip_header(name, fixtures_dir):
    """20 kB and 63 kB IP packets (an end host's capture with segmentation offload), stored whole or cut at
    1,514 bytes: every packet counts, and L is the TCP payload the IP header announces."""
    (r,) = rows(name, "unicauca")
    assert_row(
        r,
        {
            "Total.Fwd.Packets": 4,
            "Total.Backward.Packets": 3,
            "Total.Length.of.Fwd.Packets": 20_000 + 63_000,
            "Fwd.Packet.Length.Max": 63_000,
            "Max.Packet.Length": 63_000,
        },
    )


def test_cisco_hdlc_is_metered(fixtures_dir):
    (r,) = rows("cisco_hdlc", "unicauca")
    assert_row(r, {"Flow.ID": f"{C}-{S}-40015-22-6", "Total.Fwd.Packets": 3, "Total.Backward.Packets": 2})
    assert_row(r, {"Total.Length.of.Fwd.Packets": 11, "Total.Length.of.Bwd.Packets": 11.0})  # the SSH banners


def test_garbage_frames_make_no_flow(fixtures_dir):
    """IPv4 and IPv6 ethertypes over garbage, and ARP: no flow with nonsense addresses, the real one kept."""
    (r,) = rows("garbage_frames", "unicauca")
    assert r["Flow.ID"] == f"10.1.0.1-{C}-7101-7100-17"


def test_six_in_four_is_metered_as_the_inner_flow(fixtures_dir):
    """A known deviation (README): NFStream decapsulates IP in IP, so ntds meters the inner IPv6 flow where
    the spec's CICFlowMeter would write one Protocol 0 flow between the tunnel's IPv4 ends."""
    (r,) = rows("six_in_four", "unicauca")
    assert_row(r, {"Flow.ID": "2001:db8::1-2001:db8::2-40014-80-6", "Protocol": 6, "Total.Fwd.Packets": 3})

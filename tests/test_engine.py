"""The contract with NFStream's internals (ntds/flows/engine.py): fails loudly, naming what changed, if the
pinned NFStream is replaced by one whose meter loop, flow object or engine structures differ."""

from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap

import nfstream
import nfstream.meter
import nfstream.streamer
from conftest import ROOT
from nfstream.flow import NFlow

from ntds.flows import engine

PINNED = "6.6.0"


def test_nfstream_is_the_pinned_version():
    assert nfstream.__version__ == PINNED, "ntds/flows/engine.py was written for NFStream " + PINNED


def params(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


def test_the_wrapped_functions_have_the_signatures_the_engine_assumes():
    # The flow table bound finds NFStream's table and channel as locals of consume, the caller of NFlow()
    consume = nfstream.meter.consume
    assert {"cache", "channel"} <= set(params(consume)) and "NFlow(" in inspect.getsource(consume)
    workflow = params(engine._original_workflow)
    assert workflow[6] == "root_idx" and workflow[15] == "channel"
    # capture_stats reads the meter loop's table and index two frames up (capture_track is between)
    assert "cache = NFCache()" in inspect.getsource(engine._original_workflow)
    assert "lib.capture_stats(" in inspect.getsource(nfstream.meter.capture_track)
    assert params(engine._original_flow_init)[1:] == [
        "packet", "ffi", "lib", "udps", "sync", "accounting_mode", "n_dissections", "statistics", "splt",
        "dissector", "decode_tunnels", "system_visibility_mode",
    ]  # fmt: skip
    assert params(engine._original_expire)[1:] == [
        "udps", "sync", "n_dissections", "statistics", "splt", "ffi", "lib", "dissector",
    ]  # fmt: skip
    # the batching channel: the streamer makes its channel from its context, the meter loop calls meter_scan by
    # its module name with the channel fourth, and the streamer only calls get() on it
    assert params(engine._original_scan)[:4] == ["meter_tick", "cache", "idle_timeout", "channel"]
    assert "meter_scan(" in inspect.getsource(engine._original_workflow)
    assert nfstream.meter.meter_scan is engine._scan
    iterate = inspect.getsource(nfstream.streamer.NFStreamer.__iter__)
    assert "channel = self._mp_context.Queue(maxsize=" in iterate and "channel.get()" in iterate
    # NFlow.update is replaced whole (its stock body for a streamer without plugins is three lines): same arguments
    assert params(engine._flow_update)[1:] == params(engine._original_update)[1:]
    body = inspect.getsource(engine._original_update)
    assert "meter_update_flow" in body and "self.expiration_id = ret - 1" in body


def test_the_engine_structures_hold_the_fields_the_features_read():
    ffi, lib = nfstream.meter.create_engine()
    fields = dict(ffi.typeof("struct nf_packet").fields)
    for name in ("time", "direction", "payload_size", "transport_size", "ip_size", "ip_content_len", "ip_content",
                 "fin", "syn", "rst", "psh", "ack", "urg", "cwr", "ece"):  # fmt: skip
        assert name in fields, name
    for fn in ("capture_next", "capture_stats", "meter_update_flow", "meter_initialize_flow", "meter_expire_flow"):
        assert hasattr(lib, fn), fn
    # ntds/flows/capture_next.c calls NFStream's capture_next through a pointer of exactly this type (asked of
    # NFStream's own engine: once a control is installed, create_engine hands out ntds's wrapper of it)
    ffi, lib = engine._original_create_engine()
    assert ffi.typeof(ffi.addressof(lib, "capture_next")).cname == (
        "int(*)(struct pcap *, struct nf_packet *, int, int, uint64_t, int)"
    )
    assert set(engine._SENT) <= set(NFlow.__slots__)
    flow_fields = dict(ffi.typeof("struct nf_flow").fields)
    for name in engine._FLOW_FIELDS:
        assert name in flow_fields, name
    # The lean NFlow.__init__/expire copy what NFStream's would, for the fields ntds reads
    init, sync = inspect.getsource(engine._original_flow_init), inspect.getsource(NFlow.sync)
    assert "meter_initialize_flow" in init and "src_ip_str" in init and "detection_completed < 2" in sync
    expire = inspect.getsource(engine._original_expire)
    assert expire.index("meter_expire_flow") < expire.index("self.sync(") < expire.index("meter_free_flow")


def test_the_c_step_reads_the_packet_where_nfstream_keeps_it():
    """The C step is given NFStream's own offsets and flag bits; a structure it could not read as it does is
    refused with one clear error naming the field."""
    ffi, _ = nfstream.meter.create_engine()
    layout = engine.packet_layout()
    assert layout["time"] == ffi.offsetof("struct nf_packet", "time")
    assert layout["ip_content"] == ffi.offsetof("struct nf_packet", "ip_content")
    assert sorted(layout[f"{flag}_bit"] for flag in ("fin", "syn", "rst", "psh", "ack", "urg", "cwr", "ece")) == list(
        range(8)
    )
    packet = ffi.new("struct nf_packet *")
    packet.ack = 1
    word = int.from_bytes(bytes(ffi.buffer(packet))[layout["flags"] : layout["flags"] + 2], sys.byteorder)
    assert word == 1 << layout["ack_bit"]

    from cffi import FFI

    other = FFI()
    other.cdef("struct nf_packet { uint8_t direction; uint32_t time; };")
    try:
        engine.packet_layout(other)
    except RuntimeError as e:
        assert "nf_packet.time is uint32_t, not uint64_t" in str(e) and "6.6.0" in str(e)
    else:
        raise AssertionError("a different packet structure was accepted")


def test_the_c_flow_key_groups_packets_exactly_as_nfstream_does():
    """Packets with random and deliberately colliding ends (same address, same port, swapped directions, VLANs,
    the high and low address words): two packets share a C key exactly when NFStream's own key function gives
    them the same key."""
    import random

    ffi, _ = nfstream.meter.create_engine()
    from ntds.flows.features import CicFeatures
    from ntds.flows.profiles import UNICAUCA

    c_key = engine._flow_key(CicFeatures(UNICAUCA, engine.packet_layout()).meter)
    rng = random.Random(5)
    words = [0, 1, 2**32, 2**63, 2**64 - 1, rng.getrandbits(64)]
    packets = []
    for _ in range(3000):
        p = ffi.new("struct nf_packet *")
        p.src_ip[0], p.src_ip[1] = rng.choice(words), rng.choice(words)
        if rng.random() < 0.3:
            p.dst_ip[0], p.dst_ip[1] = p.src_ip[0], p.src_ip[1]
        else:
            p.dst_ip[0], p.dst_ip[1] = rng.choice(words), rng.choice(words)
        p.src_port, p.dst_port = rng.choice((0, 80, 443, 65535)), rng.choice((0, 80, 443, 65535))
        p.protocol, p.vlan_id, p.tunnel_id = rng.choice((6, 17)), rng.choice((0, 1, 4095)), rng.choice((0, 7))
        packets.append(p)
        if rng.random() < 0.5:  # the same flow seen the other way
            q = ffi.new("struct nf_packet *")
            q.src_ip[0], q.src_ip[1], q.dst_ip[0], q.dst_ip[1] = p.dst_ip[0], p.dst_ip[1], p.src_ip[0], p.src_ip[1]
            q.src_port, q.dst_port, q.protocol, q.vlan_id, q.tunnel_id = (p.dst_port, p.src_port, p.protocol,
                                                                          p.vlan_id, p.tunnel_id)  # fmt: skip
            packets.append(q)
    theirs = [engine._original_flow_key(p) for p in packets]
    ours = [c_key(p) for p in packets]
    pairs = set(zip(theirs, ours))
    assert len(pairs) == len(set(theirs)) == len(set(ours)) < len(packets)


def test_the_patches_are_in_place():
    assert NFlow.__init__ is engine._flow_init
    assert nfstream.meter.create_engine is engine._create_engine
    assert nfstream.streamer.meter_workflow is engine._workflow
    assert NFlow.update is engine._flow_update and NFlow.expire is engine._flow_expire


def test_a_meter_that_fails_is_one_line_not_a_hang():
    """Any exception in a meter process reaches the sensor as an error (NFStream alone would wait forever)."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        import nfstream.meter
        import ntds.flows.engine
        calls = [0]
        stock = nfstream.meter.consume
        def failing(*args):
            calls[0] += 1
            if calls[0] > 10:
                raise MemoryError("simulated")
            return stock(*args)
        nfstream.meter.consume = failing
        from ntds.flows.meter import FlowMeter
        from ntds.errors import InputError
        try:
            list(FlowMeter("unicauca").read([{str(ROOT / "pcaps" / "sample.pcap")!r}]))
        except InputError as e:
            print("error:", e)
        """
    )
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert "error:" in p.stdout and "meter failed: MemoryError: simulated" in p.stdout, p.stdout + p.stderr


def test_the_batching_channel_keeps_order_and_the_end_across_processes():
    """Flows go in lists of CHANNEL_BATCH, the rest (an error, the end) after what is held; the reader gets
    everything one at a time, in the order put, and the bound on what is in flight stays about NFStream's."""
    import multiprocessing

    from nfstream.flow import NFlow

    ctx = engine._BatchingContext(multiprocessing.get_context("fork"))
    channel = ctx.Queue(maxsize=32767)
    assert channel.queue._maxsize == -(-32767 // engine.CHANNEL_BATCH)

    def meter() -> None:
        for k in range(engine.CHANNEL_BATCH * 2 + 5):
            flow = NFlow.__new__(NFlow)
            for name in engine._SENT:  # every field ntds's reduction sends, should this process have metered
                setattr(flow, name, None)
            flow.id = k
            channel.put(flow)
            if k == 3:
                channel.flush()  # an idle scan: the 4 held so far go out alone
        channel.put("error")
        channel.put(None)

    p = ctx.Process(target=meter)
    p.start()
    got = [channel.get(timeout=30) for _ in range(engine.CHANNEL_BATCH * 2 + 7)]
    p.join(10)
    assert [f.id for f in got[:-2]] == list(range(engine.CHANNEL_BATCH * 2 + 5)) and got[-2:] == ["error", None]

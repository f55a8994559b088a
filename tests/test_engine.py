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
    assert params(engine._original_consume)[:9] == [
        "packet", "cache", "active_timeout", "idle_timeout", "channel", "ffi", "lib", "udps", "sync",
    ]  # fmt: skip
    assert params(engine._original_consume)[9:14] == ["accounting_mode", "n_dissections", "statistics", "splt",
                                                      "dissector"]  # fmt: skip
    workflow = params(engine._original_workflow)
    assert workflow[6] == "root_idx" and workflow[15] == "channel"
    assert params(engine._original_flow_init)[1:] == [
        "packet", "ffi", "lib", "udps", "sync", "accounting_mode", "n_dissections", "statistics", "splt",
        "dissector", "decode_tunnels", "system_visibility_mode",
    ]  # fmt: skip
    assert params(engine._original_expire)[1:] == [
        "udps", "sync", "n_dissections", "statistics", "splt", "ffi", "lib", "dissector",
    ]  # fmt: skip
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
    assert set(engine._SENT) <= set(NFlow.__slots__)


def test_the_patches_are_in_place():
    assert nfstream.meter.consume is engine._consume
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

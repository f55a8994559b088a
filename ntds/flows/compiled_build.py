"""Builds `ntds.flows._compiled`, the parts of the meter that run per packet in C (cffi, API mode): the
feature step (accumulator.c), the numeric feature columns of a finished flow (columns_c.c), the flow table
key (flow_key.c), the capture bookkeeping (capture_next.c),
the stand-in for pcap_next_ex that fixes frames up before NFStream parses them (packet_tap.c)
and the check of a pcap file's records (pcap_walk.c).

Run by setuptools at install time (setup.py's cffi_modules); needs a C compiler.
"""

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
SOURCES = "ntds/flows"  # as setuptools wants it: relative to the project root, where it runs
PARTS = ("accumulator", "columns_c", "flow_key", "capture_next", "pcap_walk", "packet_tap", "packet_ring")

ffibuilder = FFI()
for part in PARTS:
    ffibuilder.cdef((HERE / f"{part}.h").read_text())
ffibuilder.set_source(
    "ntds.flows._compiled",
    "".join(f'#include "{part}.h"\n' for part in PARTS),
    sources=[f"{SOURCES}/{part}.c" for part in PARTS],
    include_dirs=[SOURCES],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
    libraries=["pthread", "dl"],
)

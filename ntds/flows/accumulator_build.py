"""Builds `ntds.flows._accumulator`, the per-packet feature step in C (cffi, API mode).

Run by setuptools at install time (setup.py's cffi_modules); needs a C compiler.
"""

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent

ffibuilder = FFI()
ffibuilder.cdef((HERE / "accumulator.h").read_text())
ffibuilder.set_source(
    "ntds.flows._accumulator",
    (HERE / "accumulator.c").read_text(),
    include_dirs=[str(HERE)],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=str(HERE.parent.parent / "build" / "cffi"), verbose=True)

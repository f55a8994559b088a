"""The compiled part of ntds: what the meter runs per packet (ntds/flows/*.c), built by cffi.

Everything else about the package is declared in pyproject.toml."""

from setuptools import setup

setup(cffi_modules=["ntds/flows/compiled_build.py:ffibuilder"])

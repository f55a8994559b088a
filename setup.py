"""The one compiled part of ntds: the per-packet feature step (ntds/flows/accumulator.c), built by cffi.

Everything else about the package is declared in pyproject.toml."""

from setuptools import setup

setup(cffi_modules=["ntds/flows/accumulator_build.py:ffibuilder"])

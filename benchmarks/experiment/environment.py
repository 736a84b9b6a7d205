"""The software and CPU a protocol's figures were computed with, for ``results.md``.

The replay worlds are deterministic, but the routers learn from float embeddings: MiniLM's
vectors move by about 1e-7 with the BLAS kernels a CPU gets (AVX2 or AVX-512) and with library
versions, and a router's choice at a marginal validation gate can follow. Two runs of one commit
on different machines may therefore differ in a few cells; this line says which environment
produced a table, so that such a difference can be traced.
"""
from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path

import torch

NUMERIC_PACKAGES = ("torch", "numpy", "scipy", "scikit-learn", "sentence-transformers",
                    "transformers", "tokenizers", "torch-geometric")
"""The distributions whose versions can change a router's figures."""


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def software_environment() -> str:
    """One line: Python, the CPU (model, count, the vector extension torch dispatches to) and
    the versions of :data:`NUMERIC_PACKAGES`."""
    cpu = (f"{_cpu_model()}, {os.cpu_count()} CPUs, torch kernels "
           f"{torch.backends.cpu.get_cpu_capability()}")
    packages = ", ".join(f"{name} {_version(name)}" for name in NUMERIC_PACKAGES)
    return (f"Python {platform.python_version()} on {platform.system()} {platform.machine()} "
            f"({cpu}); {packages}")

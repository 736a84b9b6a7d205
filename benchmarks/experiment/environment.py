"""The software and CPU a protocol's figures were computed with, for ``results.md``.

The replay worlds are deterministic, but the routers learn in floating point: MiniLM's
embeddings move by about 1e-7 with the batch a text is encoded in, and two runs of one commit
from nothing, on two machines with different CPUs and package versions, gave the same baselines
but differed in a few of MasRouter's validation-gate decisions (README, "The same code on
another machine"; the cause was not isolated). This line says which environment produced a
table and trained its routers, so that such a difference can be traced.
"""
from __future__ import annotations

import importlib.metadata
import os
import platform
from functools import cache
from pathlib import Path

import torch

NUMERIC_PACKAGES = ("torch", "numpy", "scipy", "scikit-learn", "sentence-transformers",
                    "transformers", "tokenizers", "torch-geometric")
"""The distributions whose versions can change a router's figures."""


def _cpu_model() -> str:
    """The CPU's model name and, on Linux, its family, model and stepping (a virtual machine's
    model name is often just the vendor's, e.g. "AMD EPYC", which does not tell two CPU
    generations apart)."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return platform.processor() or "unknown CPU"
    fields: dict[str, str] = {}
    for line in cpuinfo.read_text(errors="replace").splitlines():
        key, _, value = line.partition(":")
        if not key.strip():
            break  # the first processor's block is enough
        fields.setdefault(key.strip(), value.strip())
    identity = ", ".join(f"{name} {fields[name]}" for name in ("cpu family", "model", "stepping")
                         if name in fields)
    name = fields.get("model name", "unknown CPU")
    return f"{name} ({identity})" if identity else name


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


@cache
def software_environment() -> str:
    """One line: Python, the CPU (model, count, the vector extension torch dispatches to) and
    the versions of :data:`NUMERIC_PACKAGES` (read once per process: tables are rewritten
    after every pair and, on Ray, every 30 s)."""
    cpu = (f"{_cpu_model()}, {os.cpu_count()} CPUs, torch kernels "
           f"{torch.backends.cpu.get_cpu_capability()}")
    packages = ", ".join(f"{name} {_version(name)}" for name in NUMERIC_PACKAGES)
    return (f"Python {platform.python_version()} on {platform.system()} {platform.machine()} "
            f"({cpu}); {packages}")

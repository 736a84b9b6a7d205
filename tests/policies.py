"""Checkpoints of untrained routers over small plan libraries, for tests of what serves and
evaluates a router: they need valid plans, not good ones."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from masr_graph.benchmarks.experiment import DEFAULT_ROUTER_CONFIG
from masr_graph.benchmarks.experiment.baselines import generalist_role
from masr_graph.benchmarks.experiment.library import single_plans
from masr_graph.llm import LLMSpec
from masr_graph.plan import Plan
from masr_graph.router import MasRouter, NodeVocab, save_checkpoint


def small_library(llms: Sequence[str], domain: str) -> list[Plan]:
    """Every LLM alone, a vote and a debate of the first three: the shapes a server runs."""
    role = generalist_role(domain)
    teams = [Plan(mode, [role] * 3, list(llms[:3]), task=domain) for mode in ("IO", "Debate")
             if len(llms) >= 3]
    return [*single_plans(llms, domain), *teams]


def library_checkpoint(path: Path, specs: Sequence[LLMSpec], domain: str = "math",
                       gate: dict | None = None, origin: dict | None = None) -> Path:
    """An untrained router (seed 0) over ``specs`` with :func:`small_library`, saved at
    ``path`` (with ``origin``, what it claims to be trained on, when given)."""
    torch.manual_seed(0)
    library = small_library([spec.name for spec in specs], domain)
    return save_checkpoint(path, MasRouter(DEFAULT_ROUTER_CONFIG),
                           NodeVocab.from_registries(specs), library=library, gate=gate,
                           origin=origin)

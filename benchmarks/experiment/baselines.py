"""Baselines MasRouter is compared against. Each turns examples into plans, so every method runs
through the same runtime, evaluators and accounting
(:mod:`masr_graph.benchmarks.experiment.pipeline`):

- :class:`SingleLLM` — one agent on one LLM, IO or CoT (every LLM of the pool is one baseline);
- :class:`RandomPlans` — mode, team size, roles and LLMs drawn uniformly (seeded);

The single-agent routers are in :mod:`.routers`, the plan library (fixed modes, votes, debates,
escalations) in :mod:`.library` and the per-query oracle in :mod:`.protocol`.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Mapping, Optional, Protocol, Sequence


from masr_graph.errors import ConfigError
from masr_graph.plan import Plan
from masr_graph.runtime.roles import roles_for_domain
from masr_graph.runtime.topology import get_topology, topology_names

from ..tasks.datasets import Example

# The single-agent role per domain: a generalist, so single-LLM baselines measure the LLM.
GENERALIST_ROLES: Mapping[str, str] = {
    "math": "Step-by-Step Solver",
    "code": "Python Programmer",
    "knowledge": "Commonsense Reasoner",
}


def generalist_role(domain: str) -> str:
    """The role a single agent plays in ``domain`` (the first role of a user-added domain)."""
    names = [role.name for role in roles_for_domain(domain)]
    preferred = GENERALIST_ROLES.get(domain)
    return preferred if preferred in names else names[0]


class Method(Protocol):
    """Something that routes: a display name, a plot group and a plan per example."""

    name: str
    group: str

    def plans(self, examples: Sequence[Example]) -> list[Plan]: ...


@dataclass
class SingleLLM:
    llm: str
    mode: str = "IO"
    group: str = "single LLM"

    def __post_init__(self) -> None:
        if self.mode not in ("IO", "CoT"):
            raise ConfigError(f"a single-LLM baseline runs IO or CoT (got {self.mode!r})")

    @property
    def name(self) -> str:
        return f"{self.llm} ({self.mode})"

    def plans(self, examples: Sequence[Example]) -> list[Plan]:
        return [Plan(self.mode, [generalist_role(e.domain)], [self.llm], task=e.domain)
                for e in examples]


@dataclass
class RandomPlans:
    """Uniform draws over ``modes`` (default: every registered topology). Pass the modes
    explicitly where the draws must be the same in every process: the registry of a process
    holds whatever topologies its code registered, which other processes need not share."""

    llms: Sequence[str]
    max_agents: int = 4
    seed: int = 0
    modes: Optional[Sequence[str]] = None
    name: str = "random plans"
    group: str = "baseline"

    def plans(self, examples: Sequence[Example]) -> list[Plan]:
        rng = random.Random(self.seed)
        modes = list(self.modes) if self.modes else topology_names()
        plans = []
        for example in examples:
            mode = rng.choice(modes)
            topology = get_topology(mode)
            high = self.max_agents if topology.max_agents is None else min(
                self.max_agents, topology.max_agents)
            k = rng.randint(topology.min_agents, max(topology.min_agents, high))
            roles = [role.name for role in roles_for_domain(example.domain)]
            plans.append(Plan(mode, [rng.choice(roles) for _ in range(k)],
                              [rng.choice(list(self.llms)) for _ in range(k)],
                              task=example.domain))
        return plans



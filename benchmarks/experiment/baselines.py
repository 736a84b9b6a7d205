"""Baselines MasRouter is compared against. Each turns examples into plans, so every method runs
through the same runtime, evaluators and accounting (:mod:`masr_graph.benchmarks.experiment.pipeline`):

- :class:`SingleLLM` — one agent on one LLM, IO or CoT (every LLM of the pool is one baseline);
- :class:`FixedMode` — one collaboration mode with a fixed team size, every agent on one LLM;
- :class:`RandomPlans` — mode, team size, roles and LLMs drawn uniformly (seeded);
- :class:`LearnedLLMRouter` — a single-agent LLM router (LLMRouter / RouterDC style): one
  scikit-learn logistic regression per LLM predicts, from the query's sentence embedding, whether
  that LLM solves it; the router picks ``argmax P(correct) − λ · expected cost``;
- :func:`oracle_results` — the per-query oracle over the single LLMs: solved when any LLM solved
  it, at the price of the cheapest LLM that did.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Mapping, Optional, Protocol, Sequence

import numpy as np

from masr_graph.errors import ConfigError
from masr_graph.plan import Plan
from masr_graph.runtime.roles import roles_for_domain
from masr_graph.runtime.topology import get_topology, topology_names

from ..tasks.datasets import Example
from ..reporting.results import QueryResult

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
class FixedMode:
    mode: str
    llm: str
    k: int = 3
    group: str = "fixed mode"

    def __post_init__(self) -> None:
        topology = get_topology(self.mode)
        self.k = max(self.k, topology.min_agents)
        if topology.max_agents is not None:
            self.k = min(self.k, topology.max_agents)

    @property
    def name(self) -> str:
        return f"{self.mode} k={self.k} ({self.llm})"

    def plans(self, examples: Sequence[Example]) -> list[Plan]:
        plans = []
        for example in examples:
            roles = [role.name for role in roles_for_domain(example.domain)]
            team = [roles[i % len(roles)] for i in range(self.k)]
            plans.append(Plan(self.mode, team, [self.llm] * self.k, task=example.domain))
        return plans


@dataclass
class RandomPlans:
    llms: Sequence[str]
    max_agents: int = 4
    seed: int = 0
    name: str = "random plans"
    group: str = "baseline"

    def plans(self, examples: Sequence[Example]) -> list[Plan]:
        rng = random.Random(self.seed)
        plans = []
        for example in examples:
            mode = rng.choice(topology_names())
            topology = get_topology(mode)
            high = self.max_agents if topology.max_agents is None else min(
                self.max_agents, topology.max_agents)
            k = rng.randint(topology.min_agents, max(topology.min_agents, high))
            roles = [role.name for role in roles_for_domain(example.domain)]
            plans.append(Plan(mode, [rng.choice(roles) for _ in range(k)],
                              [rng.choice(list(self.llms)) for _ in range(k)],
                              task=example.domain))
        return plans


class LearnedLLMRouter:
    """Single-agent learned LLM router on query embeddings (scikit-learn).

    Args:
        embed: maps texts to an ``[N, D]`` array of sentence embeddings.
        llm_costs: expected $ per query of each LLM (e.g. its mean on the training split).
        cost_lambda: utility per $, as in MasRouter's reward.
        mode: IO or CoT for the chosen agent.
    """

    group = "learned LLM router"

    def __init__(self, embed, llm_costs: Mapping[str, float], *, cost_lambda: float = 0.0,
                 mode: str = "IO", seed: int = 0):
        self.embed = embed
        self.llm_costs = dict(llm_costs)
        self.cost_lambda = cost_lambda
        self.mode = mode
        self.seed = seed
        self.llms = sorted(self.llm_costs)
        self._models: dict[str, object] = {}
        self._constant: dict[str, float] = {}

    @property
    def name(self) -> str:
        return f"learned LLM router (λ={self.cost_lambda:g})"

    def fit(self, examples: Sequence[Example], solved: Mapping[str, Mapping[str, float]]) -> "LearnedLLMRouter":
        """Fit one classifier per LLM; ``solved[llm][example.id]`` is that LLM's score."""
        from sklearn.linear_model import LogisticRegression

        missing = [llm for llm in self.llms if llm not in solved]
        if missing:
            raise ConfigError(f"no training outcomes for LLMs {missing}")
        features = np.asarray(self.embed([e.query for e in examples]))
        for llm in self.llms:
            labels = np.array([solved[llm][e.id] >= 0.5 for e in examples], dtype=int)
            if labels.min() == labels.max():  # one class only: the classifier is a constant
                self._constant[llm] = float(labels[0])
                continue
            model = LogisticRegression(C=1.0, max_iter=2000, random_state=self.seed)
            self._models[llm] = model.fit(features, labels)
        return self

    def success_probabilities(self, examples: Sequence[Example]) -> np.ndarray:
        """``[N, L]`` predicted probability that each LLM (``self.llms`` order) solves each query."""
        features = np.asarray(self.embed([e.query for e in examples]))
        columns = []
        for llm in self.llms:
            if llm in self._constant:
                columns.append(np.full(len(examples), self._constant[llm]))
            else:
                columns.append(self._models[llm].predict_proba(features)[:, 1])
        return np.stack(columns, axis=1)

    def plans(self, examples: Sequence[Example]) -> list[Plan]:
        if not self._models and not self._constant:
            raise ConfigError("LearnedLLMRouter.plans called before fit")
        cost = np.array([self.llm_costs[llm] for llm in self.llms])
        utility = self.success_probabilities(examples) - self.cost_lambda * cost[None, :]
        choice = utility.argmax(axis=1)
        return [Plan(self.mode, [generalist_role(e.domain)], [self.llms[i]], task=e.domain)
                for e, i in zip(examples, choice)]


def oracle_results(single: Mapping[str, Sequence[QueryResult]], *, method: str = "oracle"
                   ) -> list[QueryResult]:
    """Per-query oracle over single-LLM results (all LLMs on the same queries)."""
    by_query: dict[str, list[QueryResult]] = {}
    for results in single.values():
        for result in results:
            by_query.setdefault(result.query_id, []).append(result)
    oracle = []
    for query_id, candidates in by_query.items():
        solved = [r for r in candidates if r.correct >= 0.5]
        pick: Optional[QueryResult] = min(solved or candidates, key=lambda r: r.would_have_cost_usd)
        oracle.append(QueryResult(
            benchmark=pick.benchmark, method=method, query_id=query_id,
            correct=max(r.correct for r in candidates),
            cost_usd=pick.would_have_cost_usd, would_have_cost_usd=pick.would_have_cost_usd,
            calls=pick.calls, prompt_tokens=pick.prompt_tokens,
            completion_tokens=pick.completion_tokens, mode=pick.mode, llms=pick.llms,
            roles=pick.roles, extracted=pick.extracted,
        ))
    return oracle

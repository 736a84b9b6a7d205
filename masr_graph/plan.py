"""The plan a router hands to the runtime: which collaboration mode, how many agents, which role and
which LLM each agent gets. It is plain data so that routers, the runtime, traces and the CLI can
share it without importing each other."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Optional

from .errors import RoutingError


@dataclass(frozen=True)
class Plan:
    """A routed multi-agent system for one query.

    Args:
        mode: name of a registered topology (collaboration mode), e.g. ``"Debate"``.
        roles: role name per agent slot; ``len(roles)`` is the number of agents ``k``.
        llms: LLM name per agent slot, same length as ``roles``.
        task: the task the router inferred for the query (``None`` when not inferred).
        decision_llm: LLM that runs an LLM-based decision node; ``None`` means the LLM of the
            first agent.
        edge_logits: optional ``k x k`` logits that override the topology's spatial edge
            probabilities (``sigmoid(logit)``); entries the topology forbids stay forbidden.
        probs: optional probabilities of each decision, for display (``masr route``).
    """

    mode: str
    roles: tuple[str, ...]
    llms: tuple[str, ...]
    task: Optional[str] = None
    decision_llm: Optional[str] = None
    edge_logits: Optional[tuple[tuple[float, ...], ...]] = None
    probs: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "roles", tuple(self.roles))
        object.__setattr__(self, "llms", tuple(self.llms))
        if not self.roles:
            raise RoutingError("a plan needs at least one agent (got no roles)")
        if len(self.roles) != len(self.llms):
            raise RoutingError(
                f"a plan needs one LLM per role (got {len(self.roles)} roles and "
                f"{len(self.llms)} LLMs)"
            )
        if self.edge_logits is not None:
            rows = tuple(tuple(float(v) for v in row) for row in self.edge_logits)
            if len(rows) != self.k or any(len(r) != self.k for r in rows):
                raise RoutingError(f"edge_logits must be {self.k}x{self.k} for {self.k} agents")
            object.__setattr__(self, "edge_logits", rows)

    @property
    def k(self) -> int:
        """Number of agents."""
        return len(self.roles)

    def with_probs(self, probs: dict[str, Any]) -> "Plan":
        """The same plan with ``probs`` (display only; plans compare equal regardless)."""
        return replace(self, probs=dict(probs))

    def team(self) -> tuple[str, int, tuple[str, ...]]:
        """``(mode, k, LLMs)``: what decides a plan's outcome and cost on recorded worlds,
        where roles change only the prompt's wording (used to count distinct plans)."""
        return self.mode, self.k, self.llms

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "k": self.k,
            "roles": list(self.roles),
            "llms": list(self.llms),
            "task": self.task,
            "decision_llm": self.decision_llm,
            "edge_logits": [list(r) for r in self.edge_logits] if self.edge_logits else None,
            "probs": self.probs,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Plan":
        return cls(
            mode=data["mode"],
            roles=tuple(data["roles"]),
            llms=tuple(data["llms"]),
            task=data.get("task"),
            decision_llm=data.get("decision_llm"),
            edge_logits=data.get("edge_logits"),
            probs=data.get("probs") or {},
        )

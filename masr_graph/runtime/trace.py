"""What happened when a multi-agent system ran on one query.

A :class:`Trace` records, round by round, which spatial edges were sampled and which temporal
edges applied, every agent call (:class:`AgentStep`: role, LLM, the ``(agent, round)`` outputs it
saw, the messages it was sent, its output or its error, the post-processing result, tokens, cost,
latency), the decision node (:class:`DecisionStep`), the final answer and the log-probability of
the sampled edges. It is plain data: ``json.dumps(trace.to_dict())`` works and
``Trace.from_dict`` restores it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from ..llm.types import CallRecord, Message

Edge = tuple[int, int]
Slot = tuple[int, int]  # (agent index, round index)


@dataclass
class AgentStep:
    """One agent's turn in one round (or the decision node's LLM call, with ``agent=None``).

    Args:
        agent: agent slot index, ``None`` for the decision node.
        role: role name (``"decision"`` for the decision node).
        llm: LLM name in the pool.
        round: 0-based round index (the decision node uses the topology's round count).
        saw: ``(agent, round)`` of every output shown to this agent, in prompt order: temporal
            predecessors (round ``r-1``) first, then spatial predecessors (round ``r``).
        output: the LLM's reply; ``None`` when the call failed.
        error: why the call failed (``None`` on success). Peers are told the agent failed.
        messages: the chat messages sent (``None`` when the executor omits them).
        postprocess: result of the role's post-processing step (e.g. ``run_python``:
            ``{"name", "ok", "stdout", "stderr", "failure"}``), ``None`` when the role has none.
        shared_text: what later agents and the decision node see of this step: the output plus
            the rendered post-processing result, or a failure note.
        prompt_tokens, completion_tokens, cost_usd, would_have_cost_usd, latency_s, attempts,
            cached: accounting from the pool's :class:`~masr_graph.llm.types.CallRecord` (zeros
            when unavailable). ``cost_usd`` is what the call cost now (0 for a cache hit);
            ``would_have_cost_usd`` what it cost when first made.
    """

    agent: Optional[int]
    role: str
    llm: str
    round: int
    saw: list[Slot] = field(default_factory=list)
    output: Optional[str] = None
    error: Optional[str] = None
    messages: Optional[list[Message]] = None
    postprocess: Optional[dict[str, Any]] = None
    shared_text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    would_have_cost_usd: float = 0.0
    latency_s: float = 0.0
    attempts: int = 0
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None

    def account(self, record: CallRecord) -> None:
        """Copy the accounting of the pool's call record into this step."""
        self.prompt_tokens = record.prompt_tokens
        self.completion_tokens = record.completion_tokens
        self.cost_usd = record.cost_usd
        self.would_have_cost_usd = record.would_have_cost_usd
        self.latency_s = record.latency_s
        self.attempts = record.attempts
        self.cached = record.cached

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["saw"] = [list(slot) for slot in self.saw]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AgentStep":
        values = dict(data)
        values["saw"] = [tuple(slot) for slot in values.get("saw", [])]
        return cls(**values)


@dataclass
class DecisionStep:
    """How the final answer was chosen.

    Args:
        method: ``"identity"`` (at most one candidate), ``"majority_vote"``,
            ``"final_refer"``, or for an escalate decision ``"unanimous"`` (the agents agreed)
            or ``"escalated"`` (the expert slot answered); a final refer or expert whose call
            failed falls back to a vote and says so in ``fallback``.
        candidates: agent indices whose last-round outputs were successful candidates.
        keys: for a vote, the answer key of each candidate (``repr``, ``None`` when none was
            extracted), aligned with ``candidates``.
        chosen_agent: agent whose output became the final answer (``None`` for a final refer
            answer or when nothing could be chosen).
        call: the final-refer LLM call, ``None`` for other methods.
        fallback: the method used instead when the configured one could not run.
        error: why no final answer could be produced, or why the final refer call failed.
    """

    method: str
    candidates: list[int] = field(default_factory=list)
    keys: list[Optional[str]] = field(default_factory=list)
    chosen_agent: Optional[int] = None
    call: Optional[AgentStep] = None
    fallback: Optional[str] = None
    error: Optional[str] = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["call"] = self.call.to_dict() if self.call else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DecisionStep":
        values = dict(data)
        values["call"] = AgentStep.from_dict(values["call"]) if values.get("call") else None
        return cls(**values)


@dataclass
class RoundRecord:
    """The communication graph of one round.

    Args:
        round: 0-based round index.
        spatial_edges: sampled edges ``(i, j)``: agent ``j`` saw agent ``i``'s output of this
            round.
        temporal_edges: edges ``(i, j)``: agent ``j`` saw agent ``i``'s output of the previous
            round (empty in round 0).
        edge_log_prob: log-probability of this round's spatial sample (0 when every edge was
            certain).
    """

    round: int
    spatial_edges: list[Edge] = field(default_factory=list)
    temporal_edges: list[Edge] = field(default_factory=list)
    edge_log_prob: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "spatial_edges": [list(e) for e in self.spatial_edges],
            "temporal_edges": [list(e) for e in self.temporal_edges],
            "edge_log_prob": self.edge_log_prob,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RoundRecord":
        return cls(
            round=data["round"],
            spatial_edges=[tuple(e) for e in data["spatial_edges"]],
            temporal_edges=[tuple(e) for e in data["temporal_edges"]],
            edge_log_prob=data["edge_log_prob"],
        )


@dataclass
class Trace:
    """Everything one multi-agent run on one query did.

    Args:
        query_id: id of the query.
        query: the query text.
        plan: the :class:`~masr_graph.plan.Plan` as a dict.
        task: task name the caller gave (``None`` when not given).
        seed: seed of the edge sampling.
        sample_index: which repeated sample of this query this run is.
        rounds: one :class:`RoundRecord` per round.
        steps: agent steps, round by round, in execution order.
        decision: how the final answer was chosen.
        final_answer: the decision node's output ("" when no agent produced an answer).
        edge_log_prob: sum of the rounds' ``edge_log_prob``: ``sum log p`` over sampled
            uncertain edges plus ``sum log(1 - p)`` over unsampled ones.
        wall_s: wall-clock seconds of the whole run.
        error: set when the run produced no usable final answer.
    """

    query_id: str
    query: str
    plan: dict[str, Any]
    task: Optional[str] = None
    seed: int = 0
    sample_index: int = 0
    rounds: list[RoundRecord] = field(default_factory=list)
    steps: list[AgentStep] = field(default_factory=list)
    decision: Optional[DecisionStep] = None
    final_answer: str = ""
    edge_log_prob: float = 0.0
    wall_s: float = 0.0
    error: Optional[str] = None

    def _calls(self) -> list[AgentStep]:
        calls = list(self.steps)
        if self.decision is not None and self.decision.call is not None:
            calls.append(self.decision.call)
        return calls

    @property
    def ok(self) -> bool:
        """The run produced a final answer."""
        return self.error is None

    @property
    def failed_steps(self) -> list[AgentStep]:
        """Agent and decision calls that failed."""
        return [step for step in self._calls() if not step.ok]

    def step(self, agent: int, round: int) -> AgentStep:
        """The step of ``agent`` in ``round``.

        Raises:
            KeyError: no such step (the run has ``k`` agents and ``len(rounds)`` rounds).
        """
        for candidate in self.steps:
            if candidate.agent == agent and candidate.round == round:
                return candidate
        raise KeyError(
            f"no step for agent {agent} in round {round}; this trace has agents "
            f"0..{self.plan.get('k', 0) - 1} and rounds 0..{len(self.rounds) - 1}"
        )

    def totals(self) -> dict[str, Any]:
        """Sums over every LLM call of the run, the decision node included."""
        calls = self._calls()
        return {
            "calls": len(calls),
            "failed_calls": sum(1 for c in calls if not c.ok),
            "cached_calls": sum(1 for c in calls if c.cached),
            "prompt_tokens": sum(c.prompt_tokens for c in calls),
            "completion_tokens": sum(c.completion_tokens for c in calls),
            "cost_usd": self.cost_usd,
            "would_have_cost_usd": self.would_have_cost_usd,
            "llm_latency_s": sum(c.latency_s for c in calls),
        }

    @property
    def cost_usd(self) -> float:
        """Dollars the run's calls cost (cache hits cost 0)."""
        return sum(c.cost_usd for c in self._calls())

    @property
    def would_have_cost_usd(self) -> float:
        """Dollars the run's calls cost when first made (cache hits count what they saved)."""
        return sum(c.would_have_cost_usd for c in self._calls())

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (``totals`` is included for readers; ignored on load)."""
        return {
            "query_id": self.query_id,
            "query": self.query,
            "plan": self.plan,
            "task": self.task,
            "seed": self.seed,
            "sample_index": self.sample_index,
            "rounds": [r.to_dict() for r in self.rounds],
            "steps": [s.to_dict() for s in self.steps],
            "decision": self.decision.to_dict() if self.decision else None,
            "final_answer": self.final_answer,
            "edge_log_prob": self.edge_log_prob,
            "wall_s": self.wall_s,
            "error": self.error,
            "totals": self.totals(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Trace":
        return cls(
            query_id=data["query_id"],
            query=data["query"],
            plan=data["plan"],
            task=data.get("task"),
            seed=data.get("seed", 0),
            sample_index=data.get("sample_index", 0),
            rounds=[RoundRecord.from_dict(r) for r in data.get("rounds", [])],
            steps=[AgentStep.from_dict(s) for s in data.get("steps", [])],
            decision=DecisionStep.from_dict(data["decision"]) if data.get("decision") else None,
            final_answer=data.get("final_answer", ""),
            edge_log_prob=data.get("edge_log_prob", 0.0),
            wall_s=data.get("wall_s", 0.0),
            error=data.get("error"),
        )

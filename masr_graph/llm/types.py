"""Data types shared by the LLM layer, its transports (OpenAI-compatible HTTP, replay) and callers.

Flow: a caller asks :class:`~masr_graph.llm.pool.LLMPool` for ``chat(llm, messages, ...)``; the pool
checks the budget, looks in the cache, and otherwise asks the LLM's :class:`Transport` for a
:class:`Completion`, retrying transient faults. Every call, cached or not, yields a
:class:`CallRecord` that the pool's ledger aggregates.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Optional, Protocol, Sequence

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": str}


@dataclass(frozen=True)
class LLMSpec:
    """One member of an LLM pool, as written in a pool YAML file.

    Args:
        name: unique name used in plans, traces and results.
        model: the provider's model id sent in the request.
        base_url: OpenAI-compatible endpoint, e.g. ``https://api.openai.com/v1``; ``replay://``
            selects the offline recorded-outcome backend.
        api_key_env: *name* of the environment variable holding the key (never the key itself);
            ``None`` for endpoints that need no key (a local llama.cpp server, replay).
        price_in: $ per 1M prompt tokens.
        price_out: $ per 1M completion tokens.
        description: free text; the LLM node's feature text in the router graph.
        max_concurrency: most requests in flight at once to this LLM's endpoint.
        timeout_s: per-attempt timeout in seconds.
        notional: why this LLM's prices are notional — nothing is paid to anyone (the replay
            pool's recorded list prices, a local model's electricity estimate) — or ``None``
            when its cost is real money. Every printed $ figure that includes such an LLM says
            so (:func:`notional_note`).
    """

    name: str
    model: str
    base_url: str
    price_in: float
    price_out: float
    description: str
    api_key_env: Optional[str] = None
    max_concurrency: int = 16
    timeout_s: float = 60.0
    notional: Optional[str] = None

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.price_in + completion_tokens * self.price_out) / 1e6


@dataclass(frozen=True)
class CallContext:
    """Who is calling and why. Carried alongside the messages for ledgers, traces and for
    backends that need structure the text does not give (the replay backend's collaboration rule).
    It never changes what a real provider receives and is not part of the cache key.

    Args:
        query_id: id of the benchmark query or request this call serves.
        agent: agent slot index in the plan, ``None`` for the decision node.
        round: round index (0-based) of the topology.
        kind: ``"agent"`` or ``"decision"``.
        role: role name of the agent.
        query: the bare query text the MAS is solving.
        candidates: for a decision node, the final outputs of the agents it aggregates.
        peers: for an agent, the outputs of the other agents it is shown (previous round and
            earlier in this round, in prompt order; failed peers are left out).
        previous: for an agent in a later round, its own previous-round output when it is shown.
        sample_index: distinguishes repeated samples of the same prompt (stochastic backends).
    """

    query_id: str = ""
    agent: Optional[int] = None
    round: int = 0
    kind: str = "agent"
    role: str = ""
    query: str = ""
    candidates: tuple[str, ...] = ()
    peers: tuple[str, ...] = ()
    previous: Optional[str] = None
    sample_index: int = 0
    run_id: str = ""


@dataclass(frozen=True)
class Completion:
    """What a transport returns for one successful attempt. Token counts are ``None`` when the
    provider did not report usage."""

    text: str
    prompt_tokens: Optional[int] = None
    completion_tokens: Optional[int] = None
    finish_reason: Optional[str] = None


@dataclass
class CallRecord:
    """Accounting for one chat call (all its attempts).

    ``cost_usd`` is what this call actually cost now (0 for a cache hit, plus billed failed
    attempts); ``would_have_cost_usd`` is what the original, uncached call cost, so re-runs can
    report both.

    Attempts whose outcome is unknown (a timeout, a connection dropped after the request was
    sent, a malformed reply, no choices and no usage, a cancelled request) may have been billed
    without the provider telling us. Each is charged what the budget charged it — the pool's
    ``unknown_outcome_cost`` policy — and counted in ``estimated_attempts`` /
    ``estimated_usd`` (part of ``cost_usd``); ``cost_estimated`` is then true, as it is when
    ``usage_estimated`` is. So the ledger's total is what the budget counted, never a silent $0.
    """

    llm: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    would_have_cost_usd: float
    latency_s: float
    attempts: int
    cached: bool
    usage_estimated: bool
    billed_failed_usd: float = 0.0
    billed_failed_attempts: int = 0
    estimated_usd: float = 0.0
    estimated_attempts: int = 0
    cost_estimated: bool = False
    error: Optional[str] = None
    query_id: str = ""
    agent: Optional[int] = None
    round: int = 0
    kind: str = "agent"
    run_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ChatResult:
    text: str
    record: CallRecord


class Transport(Protocol):
    """Makes one attempt of a chat completion for an LLM of the pool.

    Raise :class:`masr_graph.llm.transport.TransientError` (with ``retry_after`` if known) for
    faults worth retrying and any other exception for permanent ones."""

    async def complete(
        self,
        spec: LLMSpec,
        messages: Sequence[Message],
        params: dict[str, Any],
        context: CallContext,
    ) -> Completion: ...

    async def aclose(self) -> None: ...


@dataclass
class UsageTotals:
    calls: int = 0
    cached_calls: int = 0
    failed_calls: int = 0
    attempts: int = 0
    estimated_usage_calls: int = 0
    billed_failed_attempts: int = 0
    billed_failed_usd: float = 0.0
    estimated_attempts: int = 0
    estimated_usd: float = 0.0
    estimated_cost_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    would_have_cost_usd: float = 0.0
    latency_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def notional_note(specs: Iterable[LLMSpec]) -> str:
    """What to print next to $ figures of a run over ``specs``: ``""`` when every price is real
    money, otherwise why the figures are notional, e.g. ``"notional: replay pool, recorded list
    prices; nothing was paid"`` (or ``"partly notional: a, b (...)"`` for a mixed pool) — a
    replay run's dollars must never read as a bill."""
    specs = list(specs)
    notional = [s for s in specs if s.notional]
    if not notional:
        return ""
    reasons = "; ".join(sorted({s.notional for s in notional if s.notional}))
    if len(notional) == len(specs):
        return f"notional: {reasons}"
    return f"partly notional: {', '.join(s.name for s in notional)} ({reasons})"

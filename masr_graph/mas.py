"""The front door: a trained router and the LLM pool it was trained for, behind one object.

    from masr_graph import MAS

    with MAS.from_checkpoint("zeroeval-paper5-gsm8k") as mas:     # a shipped checkpoint, or a .pt
        plan = mas.route("What is 17 * 23?", cost_lambda=100)     # no LLM call
        result = mas.run(query, cost_lambda=100)                  # routes and runs the team
        result.answer, result.plan, result.cost_usd, result.cost_notional, result.trace
        print(mas.spending())

:meth:`MAS.from_checkpoint` loads the checkpoint's :class:`~masr_graph.router.library.LibraryPolicy`
(router, plan library, validation gate) and builds the pool its ``origin`` names (the recorded
world, pool, benchmark and collaboration rule it was trained on, see
:func:`masr_graph.benchmarks.experiment.wiring.checkpoint_pool`), or a pool YAML file of real
endpoints given as ``pool=``. Nothing here executes a plan on its own: a query goes the one path
of ``masr serve`` (:class:`masr_graph.serve.MasService`: the router behind a batcher, then
:class:`~masr_graph.runtime.MASExecutor` over an :class:`~masr_graph.llm.LLMPool` with its budget
cap, response cache and ledger), so a plan run here and one served answer alike.

The pool belongs to one event loop; :class:`MAS` runs it on a private loop in a background
thread, so the synchronous methods work anywhere (scripts, notebooks whose loop is running) and
the ``a``-methods can be awaited from any loop. Close it (``close()``, ``with`` or ``async with``)
to close the pool, its cache and its ledger file.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Coroutine, Optional, Sequence, TypeVar, Union

from .errors import ConfigError
from .llm import Budget, LLMPool, LLMSpec, ResponseCache, notional_note
from .plan import Plan
from .router.library import LibraryPolicy
from .runtime import MASExecutor, Trace
from .runtime.trace import AgentStep

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_COST_LAMBDA = 100.0
"""λ (utility per $) of calls that name none: the middle of the protocol's sweep (an extra
$0.0001 per query is worth one accuracy point)."""


@dataclass(frozen=True)
class MASResult:
    """One query routed and run.

    Attributes:
        query: the query.
        answer: the decision node's answer (``""`` when the run produced none, see ``error``).
        plan: the plan the router chose (equal to :meth:`MAS.route`'s for the same λ).
        cost_lambda: the λ it was routed at.
        cost_usd: what the run's LLM calls cost now (cache hits cost 0).
        would_have_cost_usd: what they cost when first made (cache hits count what they saved).
        cost_notional: the $ figures are not money (a replay pool's recorded list prices, or a
            local model's compute price): nothing was billed.
        cost_note: why they are notional (``""`` when they are real money).
        prompt_tokens, completion_tokens: summed over every call (agents and decision node).
        calls: LLM calls of the run.
        trace: the full run trace (per-agent steps, rounds, decision; see
            :class:`~masr_graph.runtime.Trace`).
    """

    query: str
    answer: str
    plan: Plan
    cost_lambda: float
    cost_usd: float
    would_have_cost_usd: float
    cost_notional: bool
    cost_note: str
    prompt_tokens: int
    completion_tokens: int
    calls: int
    trace: Trace

    @classmethod
    def of_run(cls, query: str, cost_lambda: float, plan: Plan, trace: Trace, note: str
               ) -> "MASResult":
        totals = trace.totals()
        return cls(query=query, answer=trace.final_answer, plan=plan, cost_lambda=cost_lambda,
                   cost_usd=totals["cost_usd"], would_have_cost_usd=totals["would_have_cost_usd"],
                   cost_notional=bool(note), cost_note=note,
                   prompt_tokens=totals["prompt_tokens"],
                   completion_tokens=totals["completion_tokens"], calls=totals["calls"],
                   trace=trace)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def steps(self) -> list[AgentStep]:
        """The per-agent trace: every agent's call in execution order, then the decision node's
        call when it made one (each with role, LLM, round, output or error, tokens, $)."""
        calls = list(self.trace.steps)
        if self.trace.decision is not None and self.trace.decision.call is not None:
            calls.append(self.trace.decision.call)
        return calls

    @property
    def ok(self) -> bool:
        """The run produced an answer."""
        return self.trace.error is None

    @property
    def error(self) -> Optional[str]:
        """Why the run produced no answer (``None`` when it did)."""
        return self.trace.error

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable."""
        return {"query": self.query, "answer": self.answer, "plan": self.plan.to_dict(),
                "cost_lambda": self.cost_lambda, "cost_usd": self.cost_usd,
                "would_have_cost_usd": self.would_have_cost_usd,
                "cost_notional": self.cost_notional, "cost_note": self.cost_note,
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "calls": self.calls, "error": self.error, "trace": self.trace.to_dict()}


def _cost_lambda(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            math.isfinite(value) and value >= 0):
        raise ConfigError(f"cost_lambda must be a finite number >= 0 (got {value!r})")
    return float(value)


def _query(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"a query must be a non-empty string (got {value!r:.60})")
    return value


class MAS:
    """A trained router and its LLM pool: route a query to a multi-agent system and run it.

    Build one with :meth:`from_checkpoint`; the constructor takes a policy and pool specs
    directly (the layered API: :class:`~masr_graph.router.library.LibraryPolicy`,
    :func:`~masr_graph.benchmarks.experiment.wiring.pool_specs`).

    Args:
        policy: the trained router with its plan library and gate.
        specs: the pool's LLMs. LLMs whose API key variable is unset are left out (a warning
            names them), as are the library plans that need them.
        cost_lambda: λ of calls that name none.
        max_usd: budget cap in $ for this object's lifetime (``None``: no cap); the call that
            would exceed it is not made (:class:`~masr_graph.errors.BudgetExceeded`).
        cache_path: SQLite LLM response cache (``None``: no cache).
        ledger_path: JSONL file every call record is appended to as it settles (``None``: the
            ledger is kept in memory, see :meth:`spending`).
        seed: edge-sampling seed of calls that name none.
        max_tokens: completion cap per agent call.
        temperature: sampling temperature of every agent.
        unknown_outcome_cost: what an attempt of unknown outcome is charged (see
            :class:`~masr_graph.llm.LLMPool`).
        max_concurrent_runs: most multi-agent runs at once (:meth:`run_many` queues the rest).
        request_timeout_s: longest one query may take (``None``: no limit).
        checkpoint: where the policy came from (for messages).

    Raises:
        ConfigError: no callable LLM, no plan left over the callable ones, or bad settings.
    """

    def __init__(
        self,
        policy: LibraryPolicy,
        specs: Sequence[LLMSpec],
        *,
        cost_lambda: float = DEFAULT_COST_LAMBDA,
        max_usd: Optional[float] = None,
        cache_path: Optional[Union[str, Path]] = None,
        ledger_path: Optional[Union[str, Path]] = None,
        seed: int = 0,
        max_tokens: int = 1024,
        temperature: float = 0.0,
        unknown_outcome_cost: str = "worst_case",
        max_concurrent_runs: int = 64,
        request_timeout_s: Optional[float] = None,
        checkpoint: Optional[Path] = None,
    ):
        from .serve import callable_policy

        self.cost_lambda = _cost_lambda(cost_lambda)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"seed must be an integer (got {seed!r})")
        if max_usd is not None and not (math.isfinite(max_usd) and max_usd >= 0):
            raise ConfigError(f"max_usd must be a finite number >= 0 or None (got {max_usd!r})")
        self.policy, usable = callable_policy(policy, specs)
        """The policy routed with (restricted to the callable LLMs)."""
        dropped = len(policy.library) - len(self.policy.library)
        if dropped:
            log.warning("%d of the %d library plans need LLMs this pool lacks and are left out",
                        dropped, len(policy.library))
        self.specs: list[LLMSpec] = usable
        """The pool's LLMs."""
        self.checkpoint = checkpoint
        self.seed = seed
        self.notional = notional_note(usable)
        """Why the pool's $ figures are not money (``""`` when they are)."""
        self._settings = dict(max_usd=max_usd, cache_path=cache_path, ledger_path=ledger_path,
                              max_tokens=max_tokens, temperature=temperature,
                              unknown_outcome_cost=unknown_outcome_cost,
                              max_concurrent_runs=max_concurrent_runs,
                              request_timeout_s=request_timeout_s)
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="masr-MAS",
                                        daemon=True)
        self._thread.start()
        try:
            self._submit(self._open()).result()
        except BaseException:
            self._stop_loop()
            raise

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: Union[str, Path],
        *,
        pool: Optional[Union[str, Path]] = None,
        world: Optional[str] = None,
        task: Optional[str] = None,
        rule: Optional[str] = None,
        data_dir: Optional[Union[str, Path]] = None,
        max_usd: Optional[float] = None,
        cache_path: Optional[Union[str, Path]] = None,
        ledger_path: Optional[Union[str, Path]] = None,
        seed: int = 0,
        cost_lambda: float = DEFAULT_COST_LAMBDA,
        max_tokens: Optional[int] = None,
        temperature: float = 0.0,
        unknown_outcome_cost: str = "worst_case",
        max_concurrent_runs: int = 64,
        request_timeout_s: Optional[float] = None,
    ) -> "MAS":
        """The router of ``checkpoint`` over the pool it was trained for.

        Args:
            checkpoint: a ``.pt`` file written by ``masr train`` or ``benchmarks/run_all.py``,
                or the name of a shipped checkpoint (:func:`masr_graph.checkpoints.shipped`,
                e.g. ``"zeroeval-paper5-gsm8k"``).
            pool: a pool YAML file of real OpenAI-compatible endpoints (its LLM names must be
                the checkpoint's), or a recorded pool of ``world``; default: the checkpoint's.
            world: recorded world (``"zeroeval"``, ``"llmrouter"``); default: the checkpoint's.
            task: the benchmark whose recorded pool to use; default: the checkpoint's.
            rule: replay collaboration rule; default: the checkpoint's.
            data_dir: data directory (default: ``$MASR_DATA_DIR``, then ``../shared/data``).
            max_tokens: completion cap per agent call; default: what the router was trained
                with (a recorded world's own cap, 1024 on real endpoints).
            The others: see :class:`MAS`.

        Raises:
            ConfigError: an unknown checkpoint name (the message lists the shipped ones), a
                missing or unreadable file, a checkpoint without a plan library, or one that
                does not record what it was trained on while neither ``world`` nor ``pool``
                is given.
        """
        from .benchmarks.experiment.wiring import checkpoint_pool
        from .checkpoints import resolve

        path = resolve(checkpoint)
        policy = LibraryPolicy.from_checkpoint(path)
        specs, backend = checkpoint_pool(policy.origin, policy.library, pool=pool, world=world,
                                         task=task, rule=rule, data_dir=data_dir,
                                         source=f"checkpoint {checkpoint}")
        if max_tokens is None:
            max_tokens = trained_max_tokens(backend, data_dir)
        return cls(policy, specs, cost_lambda=cost_lambda, max_usd=max_usd,
                   cache_path=cache_path, ledger_path=ledger_path, seed=seed,
                   max_tokens=max_tokens, temperature=temperature,
                   unknown_outcome_cost=unknown_outcome_cost,
                   max_concurrent_runs=max_concurrent_runs, request_timeout_s=request_timeout_s,
                   checkpoint=path)

    # ---- the pool's own event loop ---------------------------------------------------------
    async def _open(self) -> None:
        from .serve import MasService

        s = self._settings
        self._cache = ResponseCache(s["cache_path"]) if s["cache_path"] is not None else None
        self._budget = Budget(s["max_usd"]) if s["max_usd"] is not None else None
        self._pool = LLMPool(self.specs, cache=self._cache, budget=self._budget,
                             run_id="masr-MAS", unknown_outcome_cost=s["unknown_outcome_cost"],
                             fail_fast_after=None, ledger_path=s["ledger_path"])
        executor = MASExecutor(self._pool, keep_messages=False, max_tokens=s["max_tokens"],
                               temperature=s["temperature"])
        self._service = MasService(self.policy, executor, seed=self.seed,
                                   cost_lambda=self.cost_lambda,
                                   max_concurrent_runs=s["max_concurrent_runs"],
                                   max_queued=1 << 40, request_timeout_s=s["request_timeout_s"])

    async def _aclose_pool(self) -> None:
        try:
            await self._pool.aclose()
        finally:
            if self._cache is not None:
                await self._cache.aclose()

    def _submit(self, coro: Coroutine[Any, Any, T]) -> "concurrent.futures.Future[T]":
        if self._closed:
            coro.close()
            raise ConfigError("this MAS is closed; make a new one with MAS.from_checkpoint")
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("MAS's synchronous methods cannot be called from its own loop")
        return self._submit(coro).result()

    async def _await(self, coro: Coroutine[Any, Any, T]) -> T:
        return await asyncio.wrap_future(self._submit(coro))

    def _stop_loop(self) -> None:
        self._closed = True
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        if not self._thread.is_alive():
            self._loop.close()

    # ---- routing and running ---------------------------------------------------------------
    async def _route(self, query: str, cost_lambda: float) -> Plan:
        return await self._service.batcher.route(query, cost_lambda)

    async def _complete(self, query: str, cost_lambda: float, seed: Optional[int]
                        ) -> MASResult:
        plan, trace = await self._service.complete(query, seed=seed, cost_lambda=cost_lambda)
        return MASResult.of_run(query, cost_lambda, plan, trace, self.notional)

    async def _complete_many(self, queries: Sequence[str], cost_lambda: float,
                             seed: Optional[int]) -> list[MASResult]:
        done = await asyncio.gather(*(self._complete(q, cost_lambda, seed) for q in queries),
                                    return_exceptions=True)
        for item in done:
            if isinstance(item, BaseException):
                raise item
        return list(done)  # type: ignore[arg-type]

    def _lambda(self, cost_lambda: Optional[float]) -> float:
        return self.cost_lambda if cost_lambda is None else _cost_lambda(cost_lambda)

    def route(self, query: str, cost_lambda: Optional[float] = None) -> Plan:
        """The plan (mode, agent count, roles, LLMs, task) for ``query`` at ``cost_lambda``
        (default: this object's λ); no LLM is called. ``plan.probs`` says how sure the router
        is, or that the validation gate fixed the plan at this λ.

        Raises:
            ConfigError: an empty query or a bad λ.
        """
        return self._call(self._route(_query(query), self._lambda(cost_lambda)))

    async def aroute(self, query: str, cost_lambda: Optional[float] = None) -> Plan:
        """:meth:`route`, awaitable from any event loop."""
        return await self._await(self._route(_query(query), self._lambda(cost_lambda)))

    def run(self, query: str, cost_lambda: Optional[float] = None, *,
            seed: Optional[int] = None) -> MASResult:
        """Route ``query`` at ``cost_lambda`` and run the chosen multi-agent system.

        ``seed`` (default: this object's) seeds the sampling of communication edges. A run
        whose agents all failed is returned with ``ok`` false and ``error`` set.

        Raises:
            ConfigError: an empty query or a bad λ.
            BudgetExceeded: the budget cap refused a call.
            UnknownQueryError: a replay pool has no recording of ``query`` (replay worlds
                answer only the queries they recorded).
        """
        return self._call(self._complete(_query(query), self._lambda(cost_lambda), seed))

    async def arun(self, query: str, cost_lambda: Optional[float] = None, *,
                   seed: Optional[int] = None) -> MASResult:
        """:meth:`run`, awaitable from any event loop; concurrent calls share router passes."""
        return await self._await(self._complete(_query(query), self._lambda(cost_lambda),
                                                seed))

    def run_many(self, queries: Sequence[str], cost_lambda: Optional[float] = None, *,
                 seed: Optional[int] = None) -> list[MASResult]:
        """:meth:`run` on every query, concurrently (routed in shared batches, at most
        ``max_concurrent_runs`` runs at once); results in the order of ``queries``. The first
        exception (budget cap, unknown query) is raised once the others have finished."""
        checked = [_query(q) for q in queries]
        return self._call(self._complete_many(checked, self._lambda(cost_lambda), seed))

    async def arun_many(self, queries: Sequence[str], cost_lambda: Optional[float] = None, *,
                        seed: Optional[int] = None) -> list[MASResult]:
        """:meth:`run_many`, awaitable from any event loop."""
        checked = [_query(q) for q in queries]
        return await self._await(self._complete_many(checked, self._lambda(cost_lambda), seed))

    # ---- accounting and lifetime -----------------------------------------------------------
    @property
    def origin(self) -> Optional[dict[str, Any]]:
        """What the router was trained on (``None`` when its checkpoint does not say)."""
        return self.policy.origin

    @property
    def library(self) -> tuple[Plan, ...]:
        """The plans the router chooses among."""
        return self.policy.library

    @property
    def pool(self) -> LLMPool:
        """The LLM pool (its ``ledger`` holds every call record)."""
        return self._pool

    def spending(self) -> dict[str, Any]:
        """What this object spent so far: ``spent_usd`` (what the budget counted, the
        ledger's total without a cap), the estimated part, the cap, call counts and
        ``notional`` (why the figures are not money, ``""`` when they are); see
        :func:`masr_graph.benchmarks.experiment.spending_text` for one line of it."""
        from .benchmarks.experiment.wiring import pool_spending

        return pool_spending(self._pool, self._budget)

    def close(self) -> None:
        """Close the pool, its response cache and ledger file, and stop the loop thread
        (idempotent)."""
        if self._closed:
            return
        try:
            self._call(self._aclose_pool())
        finally:
            self._stop_loop()

    async def aclose(self) -> None:
        """:meth:`close`, awaitable."""
        if self._closed:
            return
        try:
            await self._await(self._aclose_pool())
        finally:
            await asyncio.to_thread(self._stop_loop)

    def __enter__(self) -> "MAS":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    async def __aenter__(self) -> "MAS":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        origin = self.origin or {}
        trained = "-".join(str(origin.get(k)) for k in ("world", "pool", "benchmark")
                           ) if origin else "unknown origin"
        return (f"MAS({self.checkpoint.name if self.checkpoint else 'policy'}: trained on "
                f"{trained}; {len(self.library)} plans over {len(self.specs)} LLMs, "
                f"λ={self.cost_lambda:g}{', closed' if self._closed else ''})")


def trained_max_tokens(backend: dict[str, Any], data_dir: Optional[Union[str, Path]]) -> int:
    """The completion cap the protocol trains with: a recorded world's own (its recordings
    replay whole), else the protocol's cap on real endpoints."""
    from .benchmarks.experiment.protocol import ProtocolSettings
    from .replay import load_world
    from .replay.backend import REPLAY_SCHEME

    kind = str(backend.get("backend", ""))
    if kind.startswith(f"{REPLAY_SCHEME}:"):
        return load_world(kind.split(":", 1)[1], data_dir).max_tokens
    return ProtocolSettings().max_tokens

"""Plans → runtime → evaluator: the one path every method (MasRouter, baselines, CLI, server) takes
from a plan per example to scored, stored results, and the reward function training uses.

Scores are cached on disk by (task, example id, sha256 of the reply): evaluators are deterministic,
and code evaluation runs a sandboxed process, so a reply scored once (by any method, any rerun) is
never executed again.
"""
from __future__ import annotations

import asyncio
import functools
import hashlib
import sqlite3
import threading
from collections import Counter
from pathlib import Path
from typing import Optional, Sequence

from masr_graph.errors import BatchBudgetExceeded, ConfigError
from masr_graph.plan import Plan
from masr_graph.runtime.engine import MASExecutor, QueryItem
from masr_graph.runtime.trace import Trace

from ..tasks.datasets import Example, Score
from ..tasks.registry import aevaluate, answer_key, scorer_fingerprint
from ..reporting.results import QueryResult, RunStore


class ScoreCache:
    """Persistent cache of evaluator verdicts (SQLite, WAL; ``path=None`` keeps it in memory)."""

    def __init__(self, path: Optional[Path | str] = None):
        self._memory: dict[str, Score] = {}
        self._lock = threading.Lock()
        self._db: Optional[sqlite3.Connection] = None
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS scores (key TEXT PRIMARY KEY, correct INTEGER, "
                "extracted TEXT, detail TEXT)"
            )

    @staticmethod
    def key(example: Example, reply: str) -> str:
        """The example, the reply's digest and the scorer's code (:func:`scorer_fingerprint`):
        a changed evaluator never reads verdicts of its earlier version."""
        digest = hashlib.sha256(reply.encode("utf-8")).hexdigest()
        scorer = scorer_fingerprint(example.task)[:16]
        return f"{example.task}\x1f{example.id}\x1f{digest}\x1f{scorer}"

    def get(self, example: Example, reply: str) -> Optional[Score]:
        key = self.key(example, reply)
        if key in self._memory:
            return self._memory[key]
        if self._db is None:
            return None
        with self._lock:
            row = self._db.execute(
                "SELECT correct, extracted, detail FROM scores WHERE key = ?", (key,)
            ).fetchone()
        if row is None:
            return None
        score = Score(bool(row[0]), row[1], row[2])
        self._memory[key] = score
        return score

    def put(self, example: Example, reply: str, score: Score) -> None:
        key = self.key(example, reply)
        self._memory[key] = score
        if self._db is not None:
            with self._lock:
                self._db.execute(
                    "INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?)",
                    (key, int(score.correct), score.extracted, score.detail),
                )

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


class Pipeline:
    """Runs plans for benchmark examples and scores the decision node's answers.

    Args:
        executor: the runtime that executes plans over the LLM pool.
        scores: evaluator verdict cache (default: in memory only).
        chunk_size: queries run (and, with a store, written) per batch; a crash loses at most
            one chunk of work, and the LLM response cache keeps even that.
        max_concurrent_evaluations: sandboxed code evaluations at once.
    """

    def __init__(
        self,
        executor: MASExecutor,
        *,
        scores: Optional[ScoreCache] = None,
        chunk_size: int = 64,
        max_concurrent_evaluations: int = 4,
    ):
        if chunk_size < 1:
            raise ConfigError(f"chunk_size must be >= 1 (got {chunk_size})")
        self.executor = executor
        self.scores = scores or ScoreCache()
        self.chunk_size = chunk_size
        self._evaluation_slots = max_concurrent_evaluations

    async def score(self, examples: Sequence[Example], replies: Sequence[str]) -> list[Score]:
        """Evaluator verdicts for ``replies[i]`` on ``examples[i]``, from the cache when known."""
        gate = asyncio.Semaphore(self._evaluation_slots)

        async def one(example: Example, reply: str) -> Score:
            cached = self.scores.get(example, reply)
            if cached is not None:
                return cached
            async with gate:
                score = await aevaluate(example, reply)
            self.scores.put(example, reply, score)
            return score

        return list(await asyncio.gather(*(one(e, r) for e, r in zip(examples, replies))))

    async def run(
        self, examples: Sequence[Example], plans: Sequence[Plan], *, seed: int = 0,
        sample_index: int = 0,
    ) -> tuple[list[Trace], list[Score]]:
        """Execute ``plans[i]`` on ``examples[i]`` and score the final answers.

        Raises:
            BatchBudgetExceeded: the budget cap stopped the batch; its ``results`` hold the
                finished traces (``None`` for the rest).
            LLMUnavailableError: an LLM failed its first calls for good (see
                :class:`~masr_graph.llm.LLMPool`'s ``fail_fast_after``), or every query of the
                batch failed before any endpoint answered a call: nothing of the batch is scored,
                stored or trained on.
        """
        if len(examples) != len(plans):
            raise ConfigError(f"got {len(examples)} examples but {len(plans)} plans")
        # A training batch may hold an example twice (it spans an epoch boundary): each
        # occurrence is its own sample.
        occurrences: Counter[str] = Counter()
        items = []
        for example, plan in zip(examples, plans):
            items.append(QueryItem(
                query=example.query,
                plan=plan,
                query_id=example.id,
                task=example.task,
                answer_key=functools.partial(answer_key, example.task),
                sample_index=sample_index + occurrences[example.id],
            ))
            occurrences[example.id] += 1
        traces = await self.executor.run_many(items, seed=seed)
        # A first batch smaller than the pool's fail-fast count can fail entirely before the
        # pool trips: its scores would be failures only, so it stops the run the same way.
        if traces and all(t.error for t in traces):
            unreachable = self.executor.pool.startup_failure()
            if unreachable is not None:
                raise unreachable
        scores = await self.score(examples, [t.final_answer for t in traces])
        return traces, scores

    async def rewards(
        self, examples: Sequence[Example], plans: Sequence[Plan], *, seed: int = 0
    ) -> list[tuple[float, float]]:
        """``(utility, cost_usd)`` per example for policy-gradient training.

        The cost is what the calls cost when first made (``would_have_cost_usd``), so the reward
        does not change when the response cache answers a repeated prompt."""
        traces, scores = await self.run(examples, plans, seed=seed)
        return [(float(s.correct), t.would_have_cost_usd) for t, s in zip(traces, scores)]

    async def evaluate_method(
        self,
        examples: Sequence[Example],
        plans: Sequence[Plan],
        *,
        benchmark: str,
        method: str,
        store: RunStore,
        seed: int = 0,
        keep_traces: bool = True,
        progress: Optional[object] = None,
    ) -> list[QueryResult]:
        """Run and score ``method``'s plans, appending one line per query to ``store``.

        Queries already in the store are skipped (resume); results come back for all examples
        in input order. ``progress`` is an optional tqdm bar advanced per finished query.
        """
        done = store.load(benchmark, method)
        todo = [(e, p) for e, p in zip(examples, plans) if e.id not in done]
        if progress is not None:
            progress.update(len(examples) - len(todo))
        for start in range(0, len(todo), self.chunk_size):
            chunk = todo[start:start + self.chunk_size]
            chunk_examples = [e for e, _ in chunk]
            try:
                traces, scores = await self.run(chunk_examples, [p for _, p in chunk], seed=seed)
            except BatchBudgetExceeded as stop:
                finished = [(e, t) for e, t in zip(chunk_examples, stop.results) if t is not None]
                scores = await self.score([e for e, _ in finished],
                                          [t.final_answer for _, t in finished])
                for (example, trace), score in zip(finished, scores):
                    done[example.id] = self._record(store, benchmark, method, example, trace,
                                                    score, keep_traces)
                raise
            for example, trace, score in zip(chunk_examples, traces, scores):
                done[example.id] = self._record(store, benchmark, method, example, trace, score,
                                                keep_traces)
            if progress is not None:
                progress.update(len(chunk))
        return [done[e.id] for e in examples]

    @staticmethod
    def _record(store: RunStore, benchmark: str, method: str, example: Example, trace: Trace,
                score: Score, keep_trace: bool) -> QueryResult:
        totals = trace.totals()
        result = QueryResult(
            benchmark=benchmark,
            method=method,
            query_id=example.id,
            correct=float(score.correct),
            cost_usd=trace.cost_usd,
            would_have_cost_usd=trace.would_have_cost_usd,
            calls=totals["calls"],
            prompt_tokens=totals["prompt_tokens"],
            completion_tokens=totals["completion_tokens"],
            mode=trace.plan.get("mode", ""),
            llms=list(trace.plan.get("llms", [])),
            roles=list(trace.plan.get("roles", [])),
            extracted=score.extracted,
            error=trace.error,
        )
        payload = trace.to_dict() if keep_trace else None
        if payload is not None:
            payload["score"] = {"correct": score.correct, "extracted": score.extracted,
                                "detail": score.detail}
        store.append(result, payload)
        return result



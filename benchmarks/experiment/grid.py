"""Running the protocol's grid (:mod:`.protocol`) as independent, resumable units, and writing
its results as units finish.

A unit (:class:`GridTask`) is one of

* ``prepare`` of a pair: the single LLMs' executions on the train and validation queries, the
  plan library they decide (``<pair>/library.json``) and the embeddings of every query;
* ``library`` of a pair, shard *i* of *n*: the executions of its share of the team plans
  (:func:`~.library.library_shard`: ±1 of every mode and size) on the train and validation
  queries (:meth:`~.protocol.PairRun.execute_library`;
  resumable, one outcome file per shard), so that the library — most of a pair's executions —
  runs on as many workers as there are shards;
* ``train`` of a pair and seed: MasRouter's training (``<pair>/masrouter-seed<seed>.pt`` and its
  ``.curve.json``; loaded when it exists);
* a *cell*, one (world, task, λ, seed, method) of :class:`~.protocol.Cell`: its method on the
  test queries into ``traces/<pair>/<cell>.jsonl``, one line per query, which is also where a
  rerun resumes.

Dependencies: prepare → every library shard → train(seed) → the MasRouter cells of that seed;
every other cell needs the library shards, and the oracle the single-LLM (IO) cells. A pair's
shards and cells are known once its prepare has defined the library (the fixed-mode cells are
library plans).

Without Ray the units run in this process in dependency order — per pair, prepare, the library
as one shard, then :meth:`PairRun.cells` in order with each seed's training just before its
first MasRouter cell — with one runtime per pair and one budget and response cache for the
invocation (the behaviour and files of the grid before Ray). With :class:`RayOptions` the same
:func:`run_task` runs in Ray workers (:mod:`.cluster`). Either way results files are rewritten
as units finish and
whenever the run stops, so a partly finished grid gives partial, marked tables, and
:class:`~masr_graph.benchmarks.reporting.progress.GridProgress` shows one line per running unit,
one summary line per finished one and a bar for the grid.
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from masr_graph.errors import BudgetExceeded, ConfigError
from masr_graph.exit_status import BudgetStop
from masr_graph.llm import DEFAULT_FAIL_FAST_AFTER, Budget, notional_note
from masr_graph.router import TextEncoder
from masr_graph.router.graph import build_static_graph

from ..reporting.fronts import utility_with_ci
from ..reporting.progress import GridProgress
from ..reporting.protocol import PairReport, TargetCheck, pair_report, write_report
from ..reporting.results import QueryResult, RunStore
from .baselines import SingleLLM
from .environment import software_environment
from .library import library_shard, plan_key
from .protocol import (MASROUTER, ORACLE, Cell, Pair, PairRun, ProtocolSettings,
                       protocol_threads)
from .wiring import Runtime, cache_dir_for, open_runtime, spending_text

PREPARE, LIBRARY, TRAIN, CELL = "prepare", "library", "train", "cell"
KINDS = (PREPARE, LIBRARY, TRAIN, CELL)
COMPLETE = "complete"
"""The status ``results.json`` and ``results.md`` give a grid that has run to its end."""
DONE, BUDGET, ERROR, SKIPPED = "done", "budget", "error", "skipped"
Reporter = Callable[..., None]
"""``report(what=..., step=..., total=..., reward=..., usd=...)``: a running unit's progress."""


@dataclass(frozen=True)
class GridTask:
    """One schedulable unit of the grid (see the module docstring).

    Args:
        kind: one of :data:`KINDS`.
        pair: the pair it belongs to.
        seed: the training seed (``train`` only).
        cell: the cell (``cell`` only).
        shard: ``(index, count)`` of the library's shards (``library`` only).
    """

    kind: str
    pair: Pair
    seed: Optional[int] = None
    cell: Optional[Cell] = None
    shard: Optional[tuple[int, int]] = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"a grid task is one of {list(KINDS)} (got {self.kind!r})")
        if ((self.kind == TRAIN) != (self.seed is not None)
                or (self.kind == CELL) != (self.cell is not None)
                or (self.kind == LIBRARY) != (self.shard is not None)):
            raise ConfigError(f"a {self.kind} task needs exactly its own fields (got "
                              f"seed={self.seed!r}, cell={self.cell!r}, shard={self.shard!r})")

    @property
    def name(self) -> str:
        """``<pair>/<cell label>``, ``<pair>/MasRouter training seed=<s>``,
        ``<pair>/library <i>/<n>`` (counting from 1) or ``<pair>/prepare``."""
        if self.cell is not None:
            return self.cell.name
        if self.kind == TRAIN:
            return f"{self.pair.name}/{MASROUTER} training seed={self.seed}"
        if self.shard is not None:
            return f"{self.pair.name}/library {self.shard[0] + 1}/{self.shard[1]}"
        return f"{self.pair.name}/prepare"

    @property
    def slug(self) -> str:
        """The name as a file name (the result store's rule)."""
        label = self.name.split("/", 1)[1]
        return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in label)


@dataclass
class TaskOutcome:
    """What a unit did, as it travels back from a worker (small and picklable).

    Args:
        name, kind: the task's.
        status: :data:`DONE`, :data:`BUDGET` (refused by the cap; what finished is stored),
            :data:`ERROR` (a :class:`~masr_graph.errors.MasrError`, ``message`` says what) or
            :data:`SKIPPED` (a unit it needs did not finish).
        message: the error or the reason for the skip.
        seconds: wall time of the unit.
        ran: work done now (queries, executions or training steps; 0: all was stored).
        metrics: a cell's test metrics (:func:`cell_metrics`), a training's curve summary, a
            prepare's library size.
        library: a prepare's plan library (plan keys, in order).
        spending: :meth:`Runtime.spending` of the unit's own runtime (Ray workers only).
        budget_stop: the cap refusal's ``(cap, committed, needed, llm)``.
        worker: ``host:pid`` of the process that ran it.
    """

    name: str
    kind: str
    status: str = DONE
    message: str = ""
    seconds: float = 0.0
    ran: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    library: Optional[list[str]] = None
    spending: Optional[dict[str, Any]] = None
    budget_stop: Optional[tuple[float, float, float, str]] = None
    worker: str = ""
    usd: float = 0.0
    """What the unit's calls cost ($, what the budget counted)."""

    def summary(self) -> str:
        """The one line shown when the unit finishes."""
        if self.status != DONE:
            return f"✗ {self.name}: {self.status}: {self.message}"
        m, now = self.metrics, f"{self.ran} now" if self.ran else "all stored"
        if self.kind == PREPARE:
            what = f"{int(m.get('plans', 0))} library plans, single-LLM executions: {now}"
        elif self.kind == LIBRARY:
            what = f"{int(m.get('plans', 0))} team plans, executions: {now}"
        elif self.kind == TRAIN:
            what = (f"best step {int(m.get('best_step', 0))}, validation utility "
                    f"{m.get('validation_utility', float('nan')):.3f}"
                    + (f", {self.ran} steps now" if self.ran else ", loaded"))
        else:
            what = (f"utility {m['utility']:.3f} [{m['utility_low']:.3f}, "
                    f"{m['utility_high']:.3f}] · accuracy {m['accuracy']:.3f} · "
                    f"${m['usd_per_query']:.1e}/query · {int(m['queries'])} queries ({now})")
        return f"✓ {self.name}: {what} · {self.seconds:.1f}s"


def library_tasks(pair: Pair, shards: int) -> list[GridTask]:
    """The ``shards`` library units of ``pair``."""
    return [GridTask(LIBRARY, pair, shard=(index, shards)) for index in range(shards)]


def pair_tasks(run: PairRun, shards: int = 1) -> list[GridTask]:
    """A prepared pair's library shards, trainings and cells, in the order a serial grid runs
    them: the shards, then the cells of :meth:`PairRun.cells`, each seed's training just before
    its first MasRouter cell."""
    tasks = library_tasks(run.pair, shards)
    trained: set[int] = set()
    for cell in run.cells():
        if cell.method == MASROUTER and cell.seed not in trained:
            assert cell.seed is not None
            trained.add(cell.seed)
            tasks.append(GridTask(TRAIN, run.pair, seed=cell.seed))
        tasks.append(GridTask(CELL, run.pair, cell=cell))
    return tasks


def task_needs(task: GridTask, run: PairRun, shards: int = 1) -> list[str]:
    """Names of the units ``task`` needs finished first (see the module docstring), with the
    pair's library in ``shards`` shards."""
    if task.kind == PREPARE:
        return []
    if task.kind == LIBRARY:
        return [GridTask(PREPARE, task.pair).name]
    cell = task.cell
    if cell is not None and cell.method == MASROUTER:
        return [GridTask(TRAIN, task.pair, seed=cell.seed).name]
    if cell is not None and cell.method == ORACLE:
        return [Cell(task.pair, SingleLLM(llm).name, "single LLM").name for llm in run.llms]
    return [shard.name for shard in library_tasks(task.pair, shards)]


class ReportingStore(RunStore):
    """The pair's result store, telling ``listener(result)`` of every query it stores (how a
    running cell's line learns its reward)."""

    listener: Optional[Callable[[QueryResult], None]] = None

    def append(self, result: QueryResult, trace: Optional[Mapping[str, Any]] = None) -> None:
        super().append(result, trace)
        if self.listener is not None:
            self.listener(result)


class _Counter:
    """A tqdm-like ``update(n)`` target that reports a count."""

    def __init__(self, report: Reporter, what: str):
        self.report, self.what, self.n = report, what, 0

    def update(self, n: int = 1) -> None:
        self.n += n
        self.report(what=self.what, step=self.n)


def embed_pair(run: PairRun) -> None:
    """Embed every query of the pair and the routing graph's texts now, in one fixed order, so
    that whichever process trains or routes later reads the same vectors (a text's embedding
    depends, at the 1e-7 level, on the batch it was encoded in)."""
    data = run.data
    run.encoder.encode([e.query for e in (*data.train, *data.validation, *data.test)])
    build_static_graph(run.vocab, run.encoder)


def cell_metrics(run: PairRun, cell: Cell, results: Sequence[QueryResult]) -> dict[str, float]:
    """A finished cell's test metrics: utility at its λ (λ-independent cells: at the middle λ,
    and ``utility.lambda_<λ>`` at each λ of the sweep) with its 95 % CI, accuracy with its CI,
    $ per query, queries and errors."""
    by_id = {r.query_id: r for r in results}
    rows = [by_id[e.id] for e in run.data.test]
    correct = np.array([r.correct for r in rows], dtype=float)
    cost = np.array([r.would_have_cost_usd for r in rows], dtype=float)
    lam = cell.cost_lambda if cell.cost_lambda is not None else run.settings.middle_lambda
    utility = utility_with_ci(correct, cost, lam)
    accuracy = utility_with_ci(correct, np.zeros_like(cost), 0.0)
    metrics = {"queries": float(len(rows)), "utility": utility[0], "utility_low": utility[1],
               "utility_high": utility[2], "accuracy": accuracy[0],
               "accuracy_low": accuracy[1], "accuracy_high": accuracy[2],
               "usd_per_query": float(cost.mean()),
               "errors": float(sum(1 for r in rows if r.error))}
    if cell.cost_lambda is None:
        for value in run.settings.lambdas:
            metrics[f"utility.lambda_{value:g}"] = float((correct - value * cost).mean())
    return metrics


async def run_task(task: GridTask, run: PairRun, runtime: Runtime,
                   report: Reporter = lambda **_: None) -> TaskOutcome:
    """Run one unit of ``run``'s pair with ``runtime`` (its prerequisites must have finished:
    a train or cell task reads the library's outcomes when ``run`` has not). What it stores is
    not run again.

    Raises:
        BudgetExceeded: the cap stopped it (what finished is stored).
        MasrError: a user or environment error (an unavailable LLM, missing data...).
    """
    started = time.perf_counter()
    outcome = TaskOutcome(task.name, task.kind)
    base_usd = runtime.pool.ledger.totals().cost_usd
    last = [0.0]

    def spent() -> float:
        return runtime.pool.ledger.totals().cost_usd - base_usd

    def throttled(**fields: Any) -> None:
        now = time.monotonic()
        if now - last[0] >= 0.5:
            last[0] = now
            report(usd=spent(), **fields)

    if task.kind in (TRAIN, CELL) and run.train_outcomes is None:
        run.load_outcomes()
    if task.kind == PREPARE:
        outcome.ran = await run.define_library(runtime.pipeline,
                                               progress=_Counter(throttled, "executions"))
        embed_pair(run)
        outcome.library = [plan_key(plan) for plan in run.library]
        outcome.metrics = {"plans": float(len(run.library)), "executions": float(outcome.ran)}
    elif task.kind == LIBRARY:
        assert task.shard is not None
        outcome.ran = await run.execute_library(runtime.pipeline, *task.shard,
                                                progress=_Counter(throttled, "executions"))
        outcome.metrics = {"plans": float(len(library_shard(run.library, *task.shard))),
                           "executions": float(outcome.ran)}
    elif task.kind == TRAIN:
        assert task.seed is not None
        path = run.out / f"masrouter-seed{task.seed}.pt"
        steps = run.settings.router_steps
        if not path.exists():
            outcome.ran = steps

        def on_step(step: int, parts: dict) -> None:
            throttled(what="training step", step=step, total=steps,
                      reward=parts.get("expected_utility"))

        run.router(task.seed, on_step=on_step)
        outcome.metrics = training_summary(path.with_suffix(".curve.json"))
    else:
        cell = task.cell
        assert cell is not None
        total = len(run.data.test)
        lam = cell.cost_lambda or 0.0
        seen = {"n": 0, "reward": 0.0}
        before = len(run.store.load(run.pair.name, cell.label))

        def listener(result: QueryResult) -> None:
            seen["n"] += 1
            seen["reward"] += result.correct - lam * result.would_have_cost_usd
            throttled(what="queries", step=before + seen["n"], total=total,
                      reward=seen["reward"] / seen["n"])

        store = run.store
        if isinstance(store, ReportingStore):
            store.listener = listener
        try:
            results = await run.run(cell, runtime.pipeline)
        finally:
            if isinstance(store, ReportingStore):
                store.listener = None
        outcome.ran = max(0, total - before)
        outcome.metrics = cell_metrics(run, cell, results)
    outcome.seconds = time.perf_counter() - started
    outcome.usd = spent()
    report(usd=outcome.usd)
    return outcome


def training_summary(curve_file: Path) -> dict[str, float]:
    """Best step and its mean validation utility from a training's ``.curve.json`` (empty when
    the file is missing)."""
    if not curve_file.exists():
        return {}
    curve = json.loads(curve_file.read_text(encoding="utf-8"))
    best = curve.get("best_step", 0)
    points = {p["step"]: p for p in curve.get("points", [])}
    chosen = points.get(best) or (list(points.values())[-1] if points else None)
    summary = {"best_step": float(best)}
    if chosen and chosen.get("validation_utility"):
        values = list(chosen["validation_utility"].values())
        summary["validation_utility"] = float(sum(values) / len(values))
    return summary


@dataclass(frozen=True)
class RayOptions:
    """Run the grid's units on Ray (:mod:`.cluster`).

    Args:
        address: a running cluster to join (``ray start --head`` prints it; ``"auto"`` finds
            the local one); ``None`` starts a local Ray instance.
        workers: CPUs of the local instance (default: every core); ignored with ``address``.
        max_retries: reruns of a unit whose worker or node died (its stored work is kept).
    """

    address: Optional[str] = None
    workers: Optional[int] = None
    max_retries: int = 3


@dataclass
class GridRun:
    """What one invocation of the grid did (for messages and results files)."""

    reports: list[PairReport] = field(default_factory=list)
    checks: list[TargetCheck] = field(default_factory=list)
    spending: list[dict[str, Any]] = field(default_factory=list)
    """:meth:`Runtime.spending` of each pair's runtime (serial) or each unit's (Ray), in order."""
    outcomes: list[TaskOutcome] = field(default_factory=list)
    """Every unit finished in this invocation, in the order they finished."""
    cluster: dict[str, Any] = field(default_factory=dict)
    """With Ray: the shared budget's and endpoint limits' final state (:mod:`.cluster`)."""

    def total_spending(self, budget: Optional[Any]) -> Optional[dict[str, Any]]:
        """The invocation's spending over every pair (what the shared budget counted), in the
        form of :meth:`Runtime.spending`; ``None`` before the first pair has run."""
        if not self.spending:
            return None
        summed = ("ledger_usd", "estimated_usd", "estimated_attempts", "would_have_cost_usd",
                  "calls", "cached_calls", "failed_calls")
        total = {**self.spending[-1], **{key: sum(s[key] for s in self.spending)
                                         for key in summed}}
        total["spent_usd"] = budget.spent_usd if budget is not None else total["ledger_usd"]
        total["notional"] = "; ".join(dict.fromkeys(s["notional"] for s in self.spending
                                                    if s["notional"]))
        return total


class GridResults:
    """Writes ``results.md`` / ``.json`` and the plots from whatever units have finished.

    Args:
        pairs, settings, out: the grid's.
        run_id: the invocation's id (ledger names).
        budget: what :attr:`Budget.spent_usd` is read from (``None``: no cap).
        ledgers: where a pair's ledgers are, by pair name (for the results file).
    """

    def __init__(self, pairs: Sequence[Pair], settings: ProtocolSettings, out: Path,
                 run_id: str, grid: GridRun, budget: Optional[Any],
                 ledgers: Callable[[PairRun], str]):
        self.pairs, self.settings, self.out, self.run_id = pairs, settings, out, run_id
        self.grid, self.budget, self.ledgers = grid, budget, ledgers
        self.runs: list[PairRun] = []
        self.status = "running"
        self.started = time.perf_counter()
        self.written = 0.0

    def write(self, *, every_s: float = 0.0) -> None:
        """Rewrite the results files (at most once per ``every_s`` seconds)."""
        if every_s and time.perf_counter() - self.written < every_s:
            return
        self.written = time.perf_counter()
        runs, grid, budget = self.runs, self.grid, self.budget
        spending = grid.total_spending(budget)
        meta: dict[str, Any] = {
            "status": self.status,
            "settings": str(self.settings),
            "pairs": ", ".join(p.name for p in self.pairs),
            "wall time": f"{time.perf_counter() - self.started:.0f} s",
            "spent (this invocation, what the budget counted)":
                spending_text(spending) if spending else "nothing yet",
            "ledgers": ", ".join(self.ledgers(run) for run in runs),
            "environment (this invocation)": software_environment(),
        }
        if runs:
            meta["$ figures"] = notional_note([s for run in runs for s in run.specs]) or "real"
            for run in runs:
                meta[f"backend of {run.pair.name}"] = {
                    k: v for k, v in run.backend.items()
                    if k in ("backend", "collaboration_rule", "token_rule", "costs")}
        grid.reports = [pair_report(run, run.cells()) for run in runs]
        meta["environments the routers were trained in"] = " | ".join(sorted(
            {env for report in grid.reports for env in report.training_environments})) or (
            "none trained yet")
        grid.checks = write_report(grid.reports, {**meta, "spending": spending}, self.out)


async def run_grid(
    pairs: Sequence[Pair],
    settings: ProtocolSettings,
    out: Path,
    *,
    cache_dir: Optional[Path] = None,
    data_dir: Optional[Path] = None,
    max_usd: Optional[float] = None,
    unknown_outcome_cost: str = "worst_case",
    fail_fast_after: Optional[int] = DEFAULT_FAIL_FAST_AFTER,
    say: Callable[[str], None] = print,
    ray: Optional[RayOptions] = None,
    tracker: Optional[Any] = None,
    interactive: Optional[bool] = None,
) -> GridRun:
    """Run every unit of ``pairs`` (what is stored is not run again) and write the results.

    Args:
        pairs, settings, out: what to run and where it is stored.
        cache_dir: where the response cache (``llm_cache.sqlite``), the score cache
            (``scores.sqlite``) and the embedding cache (``embeddings.pt``) live (``None``: the
            one recorded in ``out``, else ``out``; see
            :func:`~.wiring.cache_dir_for`). Grids that ask the same LLMs about the same
            queries — ``run_all.py``'s splits — share one, so a reply one of them paid for is
            not paid again.
        data_dir: data directory (``None``: ``$MASR_DATA_DIR``, then ``../shared/data``).
        max_usd: one cap for the whole grid (``None``: none).
        unknown_outcome_cost, fail_fast_after: as for :class:`~masr_graph.llm.LLMPool`.
        say: where lines for a person go (pair headers, summaries when not on a terminal).
        ray: run the units on Ray (:mod:`.cluster`); ``None``: in this process.
        tracker: a :class:`~masr_graph.benchmarks.reporting.tracking.GridTracker` to log every
            finished cell to (MLflow); ``None``: files only.
        interactive: draw progress bars (default: when stderr is a terminal).

    Raises:
        BudgetStop: the budget cap stopped the grid (results of what finished are written).
    """
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = cache_dir_for(out, cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    run_id = f"run_all-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
    grid = GridRun()
    view = GridProgress(len(pairs), interactive=interactive, say=say)
    if ray is not None:  # the budget is the cluster's (set by run_on_ray), ledgers one per unit
        results = GridResults(pairs, settings, out, run_id, grid, None,
                              lambda run: str(out / "ledgers" / run_id / run.pair.name))
    else:
        results = GridResults(
            pairs, settings, out, run_id, grid, Budget(max_usd) if max_usd is not None else None,
            lambda run: str(out / "ledgers" / f"{run_id}-{run.pair.name}.jsonl"))
    if tracker is not None:
        tracker.start(run_id, pairs, settings, ray=ray)
    try:
        if ray is not None:
            from .cluster import run_on_ray

            await run_on_ray(pairs, settings, out, cache_dir=cache_dir, options=ray,
                             results=results, view=view,
                             tracker=tracker, data_dir=data_dir, max_usd=max_usd,
                             unknown_outcome_cost=unknown_outcome_cost,
                             fail_fast_after=fail_fast_after)
        else:
            with protocol_threads():
                await _run_serial(pairs, settings, out, cache_dir, results=results, view=view,
                                  tracker=tracker, data_dir=data_dir, budget=results.budget,
                                  unknown_outcome_cost=unknown_outcome_cost,
                                  fail_fast_after=fail_fast_after)
        results.status = COMPLETE
        results.write()
        if tracker is not None:
            tracker.finish(out, results.status)
        return grid
    except BudgetExceeded as stop:
        results.status = f"stopped by the budget cap: {stop}"
        results.write()
        if tracker is not None:
            tracker.finish(out, results.status)
        raise BudgetStop(stop, kept=f"every finished cell is stored under {out} and "
                                    f"{out / 'results.md'} has its tables") from None
    except BaseException as exc:
        results.status = "stopped before the end: " + (
            "interrupted" if not isinstance(exc, Exception) else str(exc))
        if results.runs:
            results.write()
        if tracker is not None:
            tracker.finish(out, results.status)
        raise
    finally:
        view.close()


async def _run_serial(pairs: Sequence[Pair], settings: ProtocolSettings, out: Path,
                      cache_dir: Path, *, results: GridResults, view: GridProgress,
                      tracker: Optional[Any],
                      data_dir: Optional[Path], budget: Optional[Budget],
                      unknown_outcome_cost: str, fail_fast_after: Optional[int]) -> None:
    """The units in this process, pair by pair in dependency order (see the module docstring)."""
    encoder = TextEncoder(cache_path=cache_dir / "embeddings.pt")
    grid = results.grid
    for pair in pairs:
        run = PairRun(pair, settings, out, encoder, data_dir)
        run.store = ReportingStore(out)
        runtime: Optional[Runtime] = None
        try:
            async with open_runtime(run.specs, out, run_id=f"{results.run_id}-{pair.name}",
                                    cache_dir=cache_dir, budget=budget, max_tokens=run.max_tokens,
                                    max_concurrent_queries=128,
                                    unknown_outcome_cost=unknown_outcome_cost,
                                    fail_fast_after=fail_fast_after) as runtime:
                results.runs.append(run)
                view.note(f"== {pair.name}: {len(run.data.train)} train / "
                          f"{len(run.data.validation)} validation / {len(run.data.test)} test "
                          f"queries, {len(run.llms)} LLMs")
                outcome = await _serial_task(GridTask(PREPARE, pair), run, runtime, view, grid,
                                             tracker)
                view.note(f"   plan library: {len(run.library)} plans ({outcome.ran} "
                          "single-LLM executions now)")
                tasks = pair_tasks(run)
                view.add_total(len(tasks))
                for task in tasks:
                    await _serial_task(task, run, runtime, view, grid, tracker)
                view.note(f"   {len(run.cells())} cells done")
        finally:
            encoder.save_cache()
            if runtime is not None:  # the pool is closed: its ledger is complete
                grid.spending.append(runtime.spending())
        results.write()


async def _serial_task(task: GridTask, run: PairRun, runtime: Runtime, view: GridProgress,
                       grid: GridRun, tracker: Optional[Any]) -> TaskOutcome:
    outcome = await run_task(task, run, runtime,
                             lambda **fields: view.update(task.name, **fields))
    grid.outcomes.append(outcome)
    view.finish(task.name, outcome.summary(), usd=outcome.usd)
    if tracker is not None:
        tracker.log(outcome, run)
    return outcome

"""The evaluation grid on Ray: every unit of :mod:`.grid` is a Ray task, and what the units
share across the cluster — the budget, one concurrency limit per LLM endpoint, the response
cache, the progress board — are actors of this driver (:mod:`masr_graph.llm.shared`).

Scheduling is Ray's: one remote function runs any unit (:func:`_execute`, the same
:func:`~.grid.run_task` the serial grid runs), submitted with the unit's resource needs —
1 CPU for a training, and for a prepare, a library shard or a cell on a recorded world (replay
and scoring are local work); :data:`ENDPOINT_CPUS` for those on real endpoints, which mostly
wait on them — and with the object refs of the units it needs as arguments, so Ray starts it
when they are done, on whichever node has room. A pair's library shards (one per CPU of the
cluster when the grid starts, at most one per team plan), trainings and cells are submitted
when its prepare returns (the library decides the fixed-mode cells), longest units first. A
killed worker or node takes its running units with it; Ray reruns them (``max_retries``) and a
rerun resumes from what the lost attempt stored: every finished query is in the result store,
every answered call in the shared response cache, every settled call in the unit's ledger.

Where things go. Results, traces, checkpoints, library outcomes and ledgers are files under
``--out``, as without Ray, so on a multi-node cluster ``--out`` must be a shared file system
mounted at the same path on every node. Each unit streams its ledger to
``ledgers/<run id>/<pair>/<unit>.jsonl`` (a rerun appends to it). The caches are in the grid's
cache directory (``--out`` unless grids share one, see :func:`.grid.run_grid`). The response
cache of real endpoints is the one database ``llm_cache.sqlite`` owned by an actor on the
driver's node (why: docs/ARCHITECTURE.md, "The grid on Ray"); recorded worlds' replies, which
cost nothing and are the same on every host, and the score caches are cached per host
(``llm_cache.sqlite`` and ``scores.sqlite`` on the driver's, ``<stem>-<host>.sqlite``
elsewhere), since SQLite's WAL must not be shared across hosts; each pair's embeddings are
computed once by its prepare, merged into the cache directory's ``embeddings.pt`` (the serial
grid's file, under its lock) and read from there by every worker.

Budget. One :class:`~masr_graph.llm.shared.BudgetActor` for the grid: every attempt anywhere
reserves its worst case there before it is sent and settles after, so the counted spend never
passes ``--max-usd`` (``spent + reserved <= cap`` always holds); an attempt in flight on a worker
that died is charged its worst case when its unit reruns (or is given up), so the count stays an
upper bound of what providers may bill. The bound the issue asks — never past the cap by more
than one worst-case call per running cell — holds with room to spare; what can exceed the count
is only a provider billing more than an attempt's worst case (never, if prices and ``max_tokens``
are right) or, with ``--unknown-outcome-cost prompt_only``, what cut-short requests generated.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from masr_graph.errors import BudgetExceeded, ConfigError, MasrError
from masr_graph.llm import CallRecord, ResponseCache
from masr_graph.plan import Plan
from masr_graph.llm.shared import (
    BudgetActor,
    EndpointGate,
    LeaseHeartbeat,
    ResponseStore,
    SharedBudget,
    SharedCache,
    SharedSlot,
    actor_class,
)
from masr_graph.router import TextEncoder

from ..reporting.progress import GridProgress, ProgressBoard
from .grid import (
    BUDGET,
    DONE,
    ERROR,
    LIBRARY,
    PREPARE,
    SKIPPED,
    TRAIN,
    GridResults,
    GridTask,
    RayOptions,
    ReportingStore,
    TaskOutcome,
    pair_tasks,
    run_task,
    task_needs,
)
from .library import library_shard
from .protocol import ENDPOINTS, Pair, PairRun, ProtocolSettings, protocol_threads
from .wiring import open_runtime

ENDPOINT_CPUS = 0.25
"""CPUs a prepare or cell of real endpoints asks for: it waits on LLM calls, whose number the
endpoint gates bound, so four share a core."""
RAY_EXTRA = "pip install 'masr_graph[ray]'"
SUBMIT_ORDER = {LIBRARY: 0, TRAIN: 1}
POLL_S = 0.25
"""How often the driver collects finished units and redraws progress."""


def require_ray() -> Any:
    """The ``ray`` module.

    Raises:
        ConfigError: Ray is not installed (the message says how to install the extra).
    """
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(f"--ray needs Ray, an optional extra: {RAY_EXTRA} ({exc})") from None
    return ray


@dataclass(frozen=True)
class GridContext:
    """What every unit's task carries besides the unit: where the grid lives, how it runs and
    the handles of the shared actors (small and picklable)."""

    out: str
    cache_dir: str
    """Where the response, score and embedding caches live (see :func:`.grid.run_grid`)."""
    settings: ProtocolSettings
    data_dir: Optional[str]
    run_id: str
    unknown_outcome_cost: str
    fail_fast_after: Optional[int]
    driver_host: str
    board: Any
    store: Any
    budget: Optional[Any] = None
    max_usd: Optional[float] = None
    gates: dict[str, tuple[Any, int]] = field(default_factory=dict)
    """Per real endpoint: its gate's handle and its limit."""

    def leased(self) -> list[Any]:
        """The actors holding leases: the store, the budget, the gates."""
        return [self.store, *([self.budget] if self.budget is not None else []),
                *(gate for gate, _ in self.gates.values())]


def endpoint_limits(runs: Sequence[PairRun]) -> dict[str, int]:
    """Per real (``http(s)``) endpoint of the grid, its limit: ``min(max_concurrency)`` of the
    LLMs on it (a provider limits per account and endpoint, not per model name). Recorded
    worlds' ``replay://`` endpoints are local lookups and have none."""
    limits: dict[str, int] = {}
    for run in runs:
        for spec in run.specs:
            if spec.base_url.startswith(("http://", "https://")):
                endpoint = spec.base_url.rstrip("/")
                limits[endpoint] = min(limits.get(endpoint, spec.max_concurrency),
                                       spec.max_concurrency)
    return limits


def task_cpus(task: GridTask) -> float:
    """The CPUs ``task`` asks Ray for (see the module docstring)."""
    if task.kind != TRAIN and task.pair.world == ENDPOINTS:
        return ENDPOINT_CPUS
    return 1.0


# --------------------------------------------------------------------------- the worker side
_RUNS: dict[tuple, PairRun] = {}
"""PairRuns of this worker process, reused by the units it runs (a world loads once)."""


def _pair_run(ctx: GridContext, pair: Pair) -> PairRun:
    key = (ctx.out, pair, ctx.settings, ctx.data_dir)
    run = _RUNS.get(key)
    if run is None:
        out = Path(ctx.out)
        encoder = TextEncoder(cache_path=Path(ctx.cache_dir) / "embeddings.pt")
        run = PairRun(pair, ctx.settings, out, encoder,
                      Path(ctx.data_dir) if ctx.data_dir else None)
        run.store = ReportingStore(out)
        _RUNS[key] = run
    return run


def _host_file(ctx: GridContext, stem: str) -> Path:
    """``<cache dir>/<stem>.sqlite`` on the driver's host, ``<stem>-<host>.sqlite`` on the others
    (a SQLite file in WAL mode is shared by the processes of one host, never across hosts)."""
    host = socket.gethostname()
    return Path(ctx.cache_dir) / (f"{stem}.sqlite" if host == ctx.driver_host else
                                  f"{stem}-{host}.sqlite")


def _response_cache(ctx: GridContext, task: GridTask, lease: Any) -> Any:
    """The unit's response cache: the cluster's shared store for real endpoints, where a reply
    is money; the host's cache file for a recorded world, whose replies are deterministic local
    lookups that cost nothing — a round trip to the store actor for each (1.8–3.7 ms, measured
    by bench_sweep) would cost more than the replay, and the one actor would serve every call
    of the cluster."""
    if task.pair.world == ENDPOINTS:
        return SharedCache(ctx.store, lease)
    return ResponseCache(_host_file(ctx, "llm_cache"))


def _orphan_record(llm: str, usd: float, run_id: str) -> CallRecord:
    """The ledger's record of an attempt that was in flight on a worker that died: charged its
    worst case, as the budget did."""
    return CallRecord(llm=llm, model="", prompt_tokens=0, completion_tokens=0, cost_usd=usd,
                      would_have_cost_usd=usd, latency_s=0.0, attempts=1, cached=False,
                      usage_estimated=False, estimated_usd=usd, estimated_attempts=1,
                      cost_estimated=True, error="in flight when its worker died",
                      kind="orphan", run_id=run_id)


class _BoardReporter:
    """Posts a running unit's progress to the board (at most every half second)."""

    def __init__(self, board: Any, name: str, worker: str):
        self.board, self.name = board, name
        self.board.update.remote(name, {"what": "starting", "worker": worker})

    def __call__(self, **fields: Any) -> None:
        self.board.update.remote(self.name, fields)


def _execute(task: GridTask, ctx: GridContext, *needs: TaskOutcome) -> TaskOutcome:
    """Run one unit in a Ray worker (the remote function; ``needs`` are the outcomes of the
    units it needs, resolved by Ray before it starts)."""
    blocked = next((n for n in needs if n.status != DONE), None)
    if blocked is not None:
        return TaskOutcome(task.name, task.kind, status=SKIPPED,
                           message=f"{blocked.name} did not finish ({blocked.status})")
    with protocol_threads():
        return asyncio.run(_execute_async(task, ctx))


async def _execute_async(task: GridTask, ctx: GridContext) -> TaskOutcome:
    attempt = uuid.uuid4().hex[:12]
    with LeaseHeartbeat(ctx.leased(), (task.name, attempt)):
        return await _execute_leased(task, ctx, attempt)


async def _execute_leased(task: GridTask, ctx: GridContext, attempt: str) -> TaskOutcome:
    lease = (task.name, attempt)
    worker = f"{socket.gethostname()}:{os.getpid()}"
    # Ray reruns a unit only after its earlier attempt's worker is gone: what that attempt
    # still held (slots, claims, reservations) is released, its reservations charged in full.
    begun = await asyncio.gather(*(actor.begin.remote(task.name, attempt)
                                   for actor in ctx.leased()))
    orphans = begun[1] if ctx.budget is not None else []
    report = _BoardReporter(ctx.board, task.name, worker)
    report(pid=os.getpid())
    run = _pair_run(ctx, task.pair)
    out = Path(ctx.out)
    budget = (SharedBudget(ctx.budget, lease, ctx.max_usd)
              if ctx.budget is not None and ctx.max_usd is not None else None)
    slots = {endpoint: SharedSlot(gate, limit, lease)
             for endpoint, (gate, limit) in ctx.gates.items()}
    run_id = f"{ctx.run_id}-{task.pair.name}"
    outcome = TaskOutcome(task.name, task.kind, worker=worker)
    cache = _response_cache(ctx, task, lease)
    try:
        async with open_runtime(
                run.specs, out, run_id=run_id, budget=budget,  # type: ignore[arg-type]
                cache=cache, endpoint_slots=slots, max_tokens=run.max_tokens,
                max_concurrent_queries=128,
                ledger_path=out / "ledgers" / ctx.run_id / task.pair.name / f"{task.slug}.jsonl",
                scores_path=_host_file(ctx, "scores"),
                unknown_outcome_cost=ctx.unknown_outcome_cost,
                fail_fast_after=ctx.fail_fast_after) as runtime:
            for llm, usd in orphans:
                runtime.pool.ledger.add(_orphan_record(llm, usd, run_id))
            try:
                outcome = await run_task(task, run, runtime, report)
                outcome.worker = worker
                if task.kind == PREPARE:  # for the pair's other units, and for later grids
                    run.encoder.save_cache()
            except BudgetExceeded as stop:
                outcome.status, outcome.message = BUDGET, str(stop)
                outcome.budget_stop = (stop.cap_usd, stop.committed_usd, stop.needed_usd,
                                       stop.llm)
            except MasrError as exc:
                outcome.status, outcome.message = ERROR, str(exc)
            finally:
                if budget is not None:
                    await budget.flush()
        outcome.spending = runtime.spending()
        # This unit's own spend (the budget's total is the whole grid's).
        outcome.spending["spent_usd"] = outcome.spending["ledger_usd"]
        outcome.usd = outcome.spending["ledger_usd"]
    finally:
        if isinstance(cache, ResponseCache):
            await cache.aclose()
        await asyncio.gather(*(actor.end.remote(task.name, attempt) for actor in ctx.leased()))
        ctx.board.finish.remote(task.name)
    return outcome


# --------------------------------------------------------------------------- the driver side
class _BudgetView:
    """The driver's view of the budget actor, for results files."""

    def __init__(self, actor: Any, max_usd: float):
        self.actor, self.max_usd = actor, max_usd
        self.final: Optional[float] = None

    @property
    def spent_usd(self) -> float:
        """The actor's spent; once the grid is over (the actor gone), its last figure."""
        if self.final is not None:
            return self.final
        import ray

        return ray.get(self.actor.state.remote())["spent_usd"]


def _connect(ray: Any, options: RayOptions) -> bool:
    """Join ``options.address`` or start a local instance; ``True`` when this call started or
    joined it (and so shuts it down), ``False`` when Ray was already initialised."""
    if ray.is_initialized():
        return False
    env = {"TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    common = dict(runtime_env={"env_vars": env}, log_to_driver=False,
                  logging_level="WARNING")
    try:
        if options.address:
            ray.init(address=options.address, **common)
        else:
            ray.init(num_cpus=options.workers, include_dashboard=False, **common)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {options.address!r}" if options.address else "local Ray"
        raise ConfigError(f"cannot start or join {where}: {str(exc).splitlines()[0]}") from None
    return True


async def run_on_ray(pairs: Sequence[Pair], settings: ProtocolSettings, out: Path, *,
                     cache_dir: Path, options: RayOptions, results: GridResults,
                     view: GridProgress, tracker: Optional[Any], data_dir: Optional[Path],
                     max_usd: Optional[float],
                     unknown_outcome_cost: str, fail_fast_after: Optional[int]) -> None:
    """Run the grid's units on Ray (see the module docstring), writing results as they finish.

    Raises:
        BudgetExceeded: a unit was stopped by the cap (the others are cancelled; what finished
            is stored).
        MasrError: a unit failed with a user or environment error, or lost its worker more
            than ``options.max_retries`` times.
        ConfigError: Ray is missing or the cluster cannot be reached.
    """
    ray = require_ray()
    connected = _connect(ray, options)
    try:
        driver = _Driver(ray, pairs, settings, out, cache_dir=cache_dir, options=options,
                         results=results, view=view, tracker=tracker, data_dir=data_dir,
                         max_usd=max_usd,
                         unknown_outcome_cost=unknown_outcome_cost,
                         fail_fast_after=fail_fast_after)
        try:
            driver.run()
        finally:
            driver.close()
    finally:
        if connected:
            ray.shutdown()


class _Driver:
    """Submits the units, collects their outcomes, keeps the files and the screen current."""

    def __init__(self, ray: Any, pairs: Sequence[Pair], settings: ProtocolSettings, out: Path,
                 *, cache_dir: Path, options: RayOptions, results: GridResults,
                 view: GridProgress, tracker: Optional[Any], data_dir: Optional[Path],
                 max_usd: Optional[float],
                 unknown_outcome_cost: str, fail_fast_after: Optional[int]):
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self.ray, self.options, self.results, self.view = ray, options, results, view
        self.tracker, self.out = tracker, out
        self.runs = {pair.name: PairRun(pair, settings, out, TextEncoder(), data_dir)
                     for pair in pairs}
        results.runs.extend(self.runs.values())
        run_id = results.run_id
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(),
                                              soft=False)
        light = dict(num_cpus=0, max_restarts=0)
        self.board = actor_class(ProgressBoard).options(
            name=f"masr-board-{run_id}", **light).remote()
        self.store = actor_class(ResponseStore).options(
            name=f"masr-cache-{run_id}", max_concurrency=10_000, scheduling_strategy=here,
            **light).remote(str(cache_dir / "llm_cache.sqlite"))
        self.budget = None
        if max_usd is not None:
            self.budget = actor_class(BudgetActor).options(
                name=f"masr-budget-{run_id}", max_concurrency=10_000, **light).remote(max_usd)
            results.budget = _BudgetView(self.budget, max_usd)
        self.gates = {
            endpoint: (actor_class(EndpointGate).options(
                name=f"masr-endpoint-{run_id}-{hashlib.sha256(endpoint.encode()).hexdigest()[:8]}",
                max_concurrency=10_000, **light).remote(endpoint, limit), limit)
            for endpoint, limit in endpoint_limits(list(self.runs.values())).items()}
        self.context = GridContext(
            out=str(out), cache_dir=str(cache_dir), settings=settings,
            data_dir=str(data_dir) if data_dir else None,
            run_id=run_id, unknown_outcome_cost=unknown_outcome_cost,
            fail_fast_after=fail_fast_after, driver_host=socket.gethostname(),
            board=self.board, store=self.store, budget=self.budget, max_usd=max_usd,
            gates=self.gates)
        self.remote = ray.remote(_execute)
        self.cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.shards: dict[str, int] = {}
        """Per pair, its library's shards: one per CPU, at most one per team plan."""
        self.pending: dict[Any, GridTask] = {}
        self.refs: dict[str, Any] = {}

    def submit(self, task: GridTask, run: PairRun) -> None:
        needs = [self.refs[name]
                 for name in task_needs(task, run, self.shards.get(run.pair.name, 1))]
        ref = self.remote.options(
            num_cpus=task_cpus(task), max_retries=self.options.max_retries,
            retry_exceptions=False, name=task.name[:120],
        ).remote(task, self.context, *needs)
        self.refs[task.name] = ref
        self.pending[ref] = task

    def run(self) -> None:
        ray = self.ray
        for run in self.runs.values():
            self.submit(GridTask(PREPARE, run.pair), run)
        try:
            while self.pending:
                ready, _ = ray.wait(list(self.pending), num_returns=len(self.pending),
                                    timeout=POLL_S)
                self.view.show(ray.get(self.board.snapshot.remote()))
                for ref in ready:
                    self._finished(self.pending.pop(ref), ref)
                self.results.write(every_s=30.0)
        except BaseException:
            self._cancel()
            raise

    def _finished(self, task: GridTask, ref: Any) -> None:
        ray = self.ray
        run = self.runs[task.pair.name]
        try:
            outcome: TaskOutcome = ray.get(ref)
        except ray.exceptions.RayTaskError:
            raise  # a bug in the unit: its traceback says where
        except ray.exceptions.RayError as exc:
            self.board.finish.remote(task.name)
            for actor in self.context.leased():
                actor.end.remote(task.name, None)
            raise MasrError(f"{task.name}: its worker was lost {self.options.max_retries + 1} "
                            f"times ({type(exc).__name__}); what it finished is stored, rerun "
                            "with the same --out to resume") from None
        self.board.finish.remote(task.name)
        grid = self.results.grid
        grid.outcomes.append(outcome)
        if outcome.spending is not None:
            grid.spending.append(outcome.spending)
        self.view.finish(task.name, outcome.summary(), usd=outcome.usd)
        if self.tracker is not None:
            self.tracker.log(outcome, run)
        if outcome.status == BUDGET:
            assert outcome.budget_stop is not None
            raise BudgetExceeded(*outcome.budget_stop)
        if outcome.status in (ERROR, SKIPPED):
            raise MasrError(outcome.message)
        if task.kind == PREPARE:
            assert outcome.library is not None
            run.library = [Plan.from_dict(json.loads(key)) for key in outcome.library]
            self.view.note(f"== {run.pair.name}: {len(run.data.train)} train / "
                           f"{len(run.data.validation)} validation / {len(run.data.test)} "
                           f"test queries, {len(run.llms)} LLMs, {len(run.library)} library "
                           f"plans ({outcome.ran} executions now)")
            shards = self.shards[run.pair.name] = max(1, min(
                self.cpus, len(library_shard(run.library, 0, 1))))
            tasks = pair_tasks(run, shards)
            self.view.add_total(len(tasks))
            # Longest first where Ray has a choice: the shards, then the trainings (each the
            # length of many cells), then the cells.
            for follow in sorted(tasks, key=lambda t: SUBMIT_ORDER.get(t.kind, len(SUBMIT_ORDER))):
                self.submit(follow, run)

    def _cancel(self) -> None:
        """Cancel every unit still pending and wait (briefly) for the running ones to stop, so
        what they finished is stored and their leases end."""
        ray = self.ray
        refs = list(self.pending)
        for ref in refs:
            ray.cancel(ref)
        if refs:
            ray.wait(refs, num_returns=len(refs), timeout=30.0)
        self.pending.clear()

    def close(self) -> None:
        """Record the shared state's final figures, close the store, end the actors."""
        ray = self.ray
        cluster: dict[str, Any] = {}
        try:
            cluster["cache"] = ray.get(self.store.state.remote(), timeout=30)
            if self.budget is not None:
                cluster["budget"] = ray.get(self.budget.state.remote(), timeout=30)
                if isinstance(self.results.budget, _BudgetView):
                    self.results.budget.final = cluster["budget"]["spent_usd"]
            cluster["endpoints"] = {endpoint: ray.get(gate.state.remote(), timeout=30)
                                    for endpoint, (gate, _) in self.gates.items()}
            ray.get(self.store.close.remote(), timeout=60)
        finally:
            self.results.grid.cluster = cluster
            for actor in (self.board, self.store, self.budget,
                          *(gate for gate, _ in self.gates.values())):
                if actor is not None:
                    ray.kill(actor)

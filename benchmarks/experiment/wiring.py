"""The wiring every experiment entry point shares (``benchmarks/run_all.py``, ``masr train``,
``masr eval``, ``masr serve``, :class:`masr_graph.MAS`): which LLM pool to use
(:func:`checkpoint_pool`: the one a trained router's checkpoint names), which examples to train
and test on, the runtime (response cache, budget, pool, executor, scoring pipeline), how a
router is trained with checkpoints and how a method is evaluated into the resumable result
store.

Typical use (the protocol, :mod:`.protocol`, does this for every pair and method)::

    specs, backend = pool_specs("paper5", world="zeroeval", task="gsm8k")   # offline replay
    async with open_runtime(specs, out, max_usd=1.0, run_id="demo", max_tokens=4096) as runtime:
        results = await evaluate_method(runtime.pipeline, RunStore(out), "gsm8k", method,
                                        test_examples)
    print(spending_text(runtime.spending()))   # what the budget counted; notional for replay
"""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Mapping, Optional, Sequence

import torch
from tqdm.auto import tqdm

from masr_graph.errors import ConfigError
from masr_graph.files import write_atomically
from masr_graph.llm import (
    DEFAULT_FAIL_FAST_AFTER,
    Budget,
    LLMPool,
    LLMSpec,
    ResponseCache,
    load_pool_config,
    notional_note,
)
from masr_graph.plan import Plan
from masr_graph.router import (
    MasRouter,
    NodeVocab,
    RouterConfig,
    StepStats,
    TextEncoder,
    Trainer,
    TrainerConfig,
    load_checkpoint,
)
from masr_graph.runtime import MASExecutor

from masr_graph.replay.rules import DEFAULT_RULE

from ..data.data_dir import PathLike
from ..reporting.results import QueryResult, RunStore
from ..tasks.datasets import Example
from .pipeline import Pipeline, ScoreCache

DEFAULT_ROUTER_CONFIG = RouterConfig(max_agents=5)
"""Router size of new training runs (at most 5 agents per plan: the largest library votes)."""

ENDPOINTS = "endpoints"
"""The ``world`` of a pair whose pool is a YAML file of real OpenAI-compatible endpoints."""

DOMAIN_BENCHMARKS = {"math": "gsm8k", "code": "humaneval", "knowledge": "mmlu"}
"""The benchmark whose recorded pool serves a domain when a checkpoint does not say which."""


def is_pool_file(pool: Optional[PathLike]) -> bool:
    """Whether ``pool`` names a pool YAML file (real endpoints) rather than a recorded pool."""
    if pool is None:
        return False
    text = str(pool)
    return text.endswith((".yaml", ".yml")) or Path(text).is_file()


def pool_specs(
    pool: Optional[PathLike] = None,
    *,
    world: str = "zeroeval",
    task: Optional[str] = None,
    data_dir: Optional[PathLike] = None,
    rule: str = DEFAULT_RULE,
) -> tuple[list[LLMSpec], dict[str, Any]]:
    """The pool's LLMs and the description of the backend every result must carry.

    Args:
        pool: a pool YAML file (real OpenAI-compatible endpoints); otherwise a recorded pool of
            ``world``: a name (``"paper5"``, ``"all"``...), a comma-separated list of recorded
            LLMs, or ``None`` for every LLM recorded on ``task``.
        world: the recorded world (``"zeroeval"`` or ``"llmrouter"``) of a recorded pool.
        task: the task a recorded pool serves (membership depends on it in ZeroEval).
        data_dir: data directory (``None``: ``$MASR_DATA_DIR``, then ``../shared/data``).
        rule: replay collaboration rule.

    Raises:
        ConfigError: an invalid pool file, or an unknown world, pool, LLM or rule.
        DataError: the recorded data is missing.
    """
    if is_pool_file(pool):
        specs = load_pool_config(pool)  # type: ignore[arg-type]
        return specs, {"backend": f"pool file {pool}", "llms": [s.name for s in specs]}
    from masr_graph.replay import backend_info, replay_specs

    specs = replay_specs(world, None if pool is None else str(pool), task=task,
                         data_dir=data_dir, rule=rule)
    return specs, backend_info(specs)


def checkpoint_pool(
    origin: Optional[Mapping[str, Any]],
    library: Sequence[Plan],
    *,
    pool: Optional[PathLike] = None,
    world: Optional[str] = None,
    task: Optional[str] = None,
    rule: Optional[str] = None,
    data_dir: Optional[PathLike] = None,
    source: str = "the checkpoint",
) -> tuple[list[LLMSpec], dict[str, Any]]:
    """The pool a trained router serves (:func:`pool_specs`): the one its checkpoint's
    ``origin`` names (world, pool, benchmark, rule), each part overridable.

    Args:
        origin: the checkpoint's origin (see :data:`masr_graph.router.checkpoint.ORIGIN_KEYS`),
            ``None`` for a checkpoint that records none (then ``world`` or ``pool`` is needed).
        library: the router's plans (their domain names the benchmark when nothing else does).
        pool: a pool YAML file of real endpoints, or a recorded pool of ``world`` (default: the
            origin's when ``world`` is the origin's, else every LLM recorded on the task).
        world: a recorded world (default: the origin's, then ``"zeroeval"``).
        task: the benchmark whose recorded pool to use (default: the origin's, else the one of
            the library's domain, :data:`DOMAIN_BENCHMARKS`).
        rule: replay collaboration rule (default: the origin's, else :data:`DEFAULT_RULE`).
        data_dir: data directory.
        source: how messages name the checkpoint.

    Raises:
        ConfigError: no origin and neither ``world`` nor ``pool``; a router trained on real
            endpoints without ``pool``; or what :func:`pool_specs` raises.
    """
    origin = dict(origin or {})
    if is_pool_file(pool):
        return pool_specs(pool)
    trained = origin.get("world")
    if trained is None and world is None and pool is None:
        raise ConfigError(f"{source} does not record what it was trained on (no origin); name "
                          "its pool: a recorded world and pool (world=/pool=, --world/--pool) "
                          "or a pool YAML file of real endpoints")
    world = world or trained or "zeroeval"
    if world == ENDPOINTS:
        raise ConfigError(f"{source} was trained on the real endpoints of the pool file "
                          f"{origin.get('pool')!r}; pass that pool file (pool=FILE.yaml, "
                          "--pool FILE.yaml)")
    same = world == trained
    if pool is None and same:
        pool = origin.get("pool")
    task = task or origin.get("benchmark")
    if task is None and library:
        task = DOMAIN_BENCHMARKS.get(library[0].task or "", library[0].task)
    rule = rule or (origin.get("rule") if same else None) or DEFAULT_RULE
    return pool_specs(pool, world=world, task=task, data_dir=data_dir, rule=rule)


def pool_spending(pool: LLMPool, budget: Optional[Budget] = None) -> dict[str, Any]:
    """What ``pool`` spent so far, for results files and messages (see
    :meth:`Runtime.spending`)."""
    totals = pool.ledger.totals()
    return {
        "spent_usd": budget.spent_usd if budget is not None else totals.cost_usd,
        "ledger_usd": totals.cost_usd,
        "estimated_usd": totals.estimated_usd,
        "estimated_attempts": totals.estimated_attempts,
        "unknown_outcome_cost": pool.unknown_outcome_cost,
        "cap_usd": budget.max_usd if budget is not None else None,
        "would_have_cost_usd": totals.would_have_cost_usd,
        "calls": totals.calls,
        "cached_calls": totals.cached_calls,
        "failed_calls": totals.failed_calls,
        "notional": notional_note(pool.specs.values()),
    }


@dataclass
class Runtime:
    """What runs plans during an experiment: the pool (with its ledger), the executor, the
    scoring pipeline and the budget (``None``: no cap)."""

    pool: LLMPool
    executor: MASExecutor
    pipeline: Pipeline
    budget: Optional[Budget] = None

    def spending(self) -> dict[str, Any]:
        """What this invocation spent, for results files and messages: ``spent_usd`` is what
        the budget counted (the ledger's total when there is no cap; the two are equal, see
        :mod:`masr_graph.llm.budget`), with the part estimated for attempts of unknown outcome,
        the cap, call counts and ``notional`` (why the figures are not money, or ``""``)."""
        return pool_spending(self.pool, self.budget)


def spending_text(spending: dict[str, Any]) -> str:
    """One line for :meth:`Runtime.spending`: calls, $ spent (what the budget counted), the
    estimated part, the cap and, for notional prices, that nothing was paid."""
    cap = spending["cap_usd"]
    text = (
        f"{spending['calls']} LLM calls ({spending['cached_calls']} from cache, "
        f"{spending['failed_calls']} failed), ${spending['spent_usd']:.6f} spent"
        + (f" of the ${cap:.6f} cap" if cap is not None else "")
        + f" (${spending['estimated_usd']:.6f} of it estimated for "
        f"{spending['estimated_attempts']} attempts of unknown outcome, charged "
        f"{spending['unknown_outcome_cost'].replace('_', '-')}), "
        f"${spending['would_have_cost_usd']:.6f} without the cache"
    )
    return text + (f" [{spending['notional']}]" if spending["notional"] else "")


CACHE_DIR_RECORD = "cache_dir.json"
"""The file in an output folder that names the cache directory its grid used, when that is
not the folder itself (:func:`cache_dir_for`)."""


def cache_dir_for(out: Path, cache_dir: Optional[Path] = None) -> Path:
    """Where an experiment writing to ``out`` keeps its response, score and embedding caches:
    ``cache_dir`` when given — recorded in ``out/cache_dir.json`` (relative to ``out``) when it
    is another folder (a record is removed when it is ``out``), so that whatever later works on
    ``out`` alone (a split's run resumed by itself, ``ablations.py`` on it) finds the replies
    already paid for —, else the folder that file records, else ``out``.

    Raises:
        ConfigError: ``out/cache_dir.json`` exists but does not name a folder.
    """
    record = out / CACHE_DIR_RECORD
    if cache_dir is not None:
        if cache_dir.resolve() == out.resolve():
            record.unlink(missing_ok=True)  # an older record must not outlive this choice
        else:
            out.mkdir(parents=True, exist_ok=True)
            relative = os.path.relpath(cache_dir.resolve(), out.resolve())
            write_atomically(record, json.dumps({"cache_dir": relative}) + "\n")
        return cache_dir
    if not record.exists():
        return out
    try:
        named = json.loads(record.read_text(encoding="utf-8"))["cache_dir"]
        if not isinstance(named, str):
            raise TypeError(f"a {type(named).__name__}")
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{record} does not name the cache directory ({exc}); delete it to "
                          f"keep the caches in {out}") from None
    return out / named


@contextlib.asynccontextmanager
async def open_runtime(
    specs: Sequence[LLMSpec],
    out: Path,
    *,
    run_id: str,
    cache_dir: Optional[Path] = None,
    max_usd: Optional[float] = None,
    budget: Optional[Budget] = None,
    max_tokens: int = 512,
    max_concurrent_queries: int = 64,
    unknown_outcome_cost: str = "worst_case",
    fail_fast_after: Optional[int] = DEFAULT_FAIL_FAST_AFTER,
    cache: Optional[ResponseCache] = None,
    endpoint_slots: Optional[Mapping[str, Any]] = None,
    ledger_path: Optional[Path] = None,
    scores_path: Optional[Path] = None,
) -> AsyncIterator[Runtime]:
    """The runtime of an experiment writing to ``out``: response cache ``llm_cache.sqlite`` and
    score cache ``scores.sqlite`` in ``cache_dir`` (``None``: :func:`cache_dir_for`), a budget
    (``budget``, shared with other runtimes of the invocation, or a new one capped at
    ``max_usd``; neither: no cap), the pool
    (``unknown_outcome_cost`` and ``fail_fast_after`` as for :class:`LLMPool`), an executor that
    keeps no messages in traces and caps completions at ``max_tokens``, and the pipeline.
    Everything is closed on exit. Every call record of the invocation is appended to
    ``out/ledgers/<run_id>.jsonl`` as its call settles, so the file holds the spend even of an
    invocation that crashed or was killed; ``runtime.pool.ledger`` stays readable afterwards.

    A runtime in a worker of a grid spread over processes (:mod:`.cluster`) passes what it shares
    with them: ``cache`` (a response cache the caller owns and closes), ``endpoint_slots`` (the
    pool's per-endpoint limits, see :class:`LLMPool`), its own ``ledger_path`` and
    ``scores_path``."""
    cache_dir = cache_dir if cache_dir is not None else cache_dir_for(out)
    own_cache = cache is None
    if cache is None:
        cache = ResponseCache(cache_dir / "llm_cache.sqlite")
    if budget is None and max_usd is not None:
        budget = Budget(max_usd)
    pool = LLMPool(list(specs), cache=cache, budget=budget, run_id=run_id,
                   unknown_outcome_cost=unknown_outcome_cost, fail_fast_after=fail_fast_after,
                   ledger_path=ledger_path or out / "ledgers" / f"{run_id}.jsonl",
                   **({"endpoint_slots": endpoint_slots} if endpoint_slots else {}))
    scores = ScoreCache(scores_path or cache_dir / "scores.sqlite")
    executor = MASExecutor(pool, keep_messages=False, max_tokens=max_tokens,
                           max_concurrent_queries=max_concurrent_queries)
    try:
        yield Runtime(pool, executor, Pipeline(executor, scores=scores), budget)
    finally:
        await pool.aclose()  # also closes the ledger file
        if own_cache:
            await cache.aclose()
        scores.close()


def make_trainer(
    specs: Sequence[LLMSpec],
    pipeline: Pipeline,
    checkpoint: Path,
    *,
    encoder: TextEncoder,
    config: Optional[TrainerConfig] = None,
    init_from: Optional[Path] = None,
) -> Trainer:
    """A trainer whose rewards come from running plans through ``pipeline``.

    If ``checkpoint`` exists the run saved there is resumed exactly (its stored trainer config
    wins over ``config``); otherwise a new router is trained over ``specs``: seeded by
    ``config.seed``, with :data:`DEFAULT_ROUTER_CONFIG`, or with the weights (and router config)
    of the checkpoint ``init_from`` and a fresh optimizer.

    Raises:
        ConfigError: an unreadable checkpoint, or one holding no trainer state.
    """
    config = config or TrainerConfig()
    seed = config.seed

    async def reward_fn(items: Sequence[Example], plans: Sequence[Plan]
                        ) -> list[tuple[float, float]]:
        return await pipeline.rewards(items, plans, seed=seed)

    if checkpoint.exists():
        return Trainer.resume(checkpoint, reward_fn, encoder=encoder)
    torch.manual_seed(seed)
    if init_from is not None:
        start = load_checkpoint(init_from, encoder=encoder)
        router = start.router
        vocab = NodeVocab.from_registries(specs, tasks=start.vocab.tasks)
    else:
        router = MasRouter(DEFAULT_ROUTER_CONFIG, encoder=encoder)
        vocab = NodeVocab.from_registries(specs)
    return Trainer(router, vocab, reward_fn, config)


async def fit_trainer(
    trainer: Trainer,
    train: Sequence[Example],
    *,
    steps: int,
    checkpoint: Path,
    checkpoint_every: int = 10,
    progress: bool = True,
) -> list[StepStats]:
    """Train until ``trainer.step_count == steps`` (a resumed run does only what is left),
    saving to ``checkpoint`` every ``checkpoint_every`` steps and at the end.

    Returns:
        The stats of the steps run now (empty when nothing was left to do).
    """
    remaining = steps - trainer.step_count
    if remaining <= 0:
        return []
    return await trainer.afit(train, remaining, checkpoint_path=checkpoint,
                              checkpoint_every=checkpoint_every, progress=progress)


class RoutedMethod:
    """A trained router as a benchmark method: its plans at one cost preference.

    Args:
        name: display name (also the key of its results in the :class:`RunStore`).
        policy: anything with ``route(queries, cost_lambda) -> list[Plan]``
            (:class:`~masr_graph.router.library.LibraryPolicy`).
        cost_lambda: λ, utility per $.
    """

    group = "MasRouter"

    def __init__(self, name: str, policy: Any, cost_lambda: float):
        self.name, self.policy, self.cost_lambda = name, policy, cost_lambda

    def plans(self, examples: Sequence[Example]) -> list[Plan]:
        return self.policy.route([e.query for e in examples], self.cost_lambda)


async def evaluate_method(
    pipeline: Pipeline,
    store: RunStore,
    benchmark: str,
    method: Any,
    examples: Sequence[Example],
    *,
    label: Optional[str] = None,
    progress: bool = True,
) -> list[QueryResult]:
    """Run and score ``method``'s plans on ``examples`` into ``store`` under ``label`` (default
    ``method.name``), resuming queries already stored, with a tqdm bar.

    Raises:
        BatchBudgetExceeded: the budget cap stopped the run; finished queries are stored.
    """
    label = label or method.name
    bar = tqdm(total=len(examples), desc=f"{benchmark}: {label}", leave=False, disable=not progress)
    try:
        return await pipeline.evaluate_method(
            examples, method.plans(examples), benchmark=benchmark, method=label, store=store,
            progress=bar)
    finally:
        bar.close()

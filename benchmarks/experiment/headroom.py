"""How much the protocol's targets ask of a method that chooses on train + validation, measured
on the recorded worlds themselves.

The targets compare MasRouter with the *best* baseline on the test queries, a maximum over some
fifty methods taken after the fact; on a few hundred test queries the maximum of many noisy
means lies above the mean of the plan that is truly best. How far above, and what that leaves to
a method that must choose without seeing test, is a property of the world and the split sizes,
not of any router. This module measures it: a pair's whole plan library executed on every one of
its queries (train, validation and test: :func:`library_on_all_queries`, stored next to the run
so a rerun executes nothing), then, over many redraws of which queries are train + validation
and which are test (:func:`redraw_splits`, the run's part sizes and the world's rule of which
queries may be drawn), what the simplest chooser — the library plan of highest mean utility on
train + validation, the protocol's *best fixed plan* — gets on test against the single LLM and
the library plan best on test in hindsight (:func:`headroom`).

What it is not: a bound for per-query routers, which can beat every constant where the query
text predicts which plan succeeds (the per-query oracle shows how much could be gained; the
protocol's tables show how little of it query embeddings reach in these worlds). The library is
the run's own, built from its split's training queries, and is kept fixed across redraws.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from masr_graph.replay import load_world
from masr_graph.replay.worlds import LLMRouterWorld
from masr_graph.router.library import LibraryOutcomes

from ..tasks.datasets import Example
from ..tasks.splits import train_val_test_ids
from .library import OutcomeStore, execute, outcome_files
from .pipeline import Pipeline
from .protocol import ROUTER_CLASSES, PairRun

HEADROOM_FILE = "headroom.sqlite"
"""The library's outcomes on the pair's test queries (train and validation are the run's)."""
NO_REGRET_TOLERANCE = 0.005
"""The no-regret target's slack, as the issue states it."""
MOONSHOT_COST_SHARE = 0.25
"""The moonshot's cost cap, as a share of the best single LLM's cost per query."""
ROUTER_MARGIN = 0.01
"""The margin over the best single-agent router that the issue asks for at the middle λ."""


async def library_on_all_queries(run: PairRun, pipeline: Pipeline
                                 ) -> tuple[LibraryOutcomes, list[Example]]:
    """Every library plan's outcome on every query of the prepared ``run`` (its train and
    validation outcomes from the run's files, the test queries executed into
    :data:`HEADROOM_FILE` where missing)."""
    examples = [*run.data.train, *run.data.validation, *run.data.test]
    store = OutcomeStore(run.out / HEADROOM_FILE, others=outcome_files(run.out))
    try:
        await execute(pipeline, store, run.library, examples)
        return store.matrix(run.library, examples), examples
    finally:
        store.close()


def redraw_splits(ids: Sequence[str], train: int, validation: int, draws: int,
                  drawable: Optional[set[str]] = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """``draws`` random (train + validation, test) index arrays over ``ids`` (seeds 1, 2, ...),
    with ``train`` and ``validation`` queries drawn only from ``drawable`` (default: all); the
    first ``train`` indices of each chosen-on array are its training queries."""
    position = {example_id: i for i, example_id in enumerate(ids)}
    shares = (train / len(ids), validation / len(ids))
    splits = []
    for seed in range(1, draws + 1):
        chosen, held, test, _ = train_val_test_ids(list(ids), shares, seed, drawable=drawable)
        splits.append((np.array([position[i] for i in (*chosen, *held)]),
                       np.array([position[i] for i in test])))
    return splits


@dataclass(frozen=True)
class Headroom:
    """One pair's figures over the redraws; every array has one row per redraw.

    Attributes:
        lambdas: the λ sweep (columns of the ``[draws, λ]`` arrays).
        chosen: test utility of the plan best on train + validation.
        best_single: test utility of the single LLM best on test (hindsight).
        best_plan: test utility of the library plan best on test (hindsight).
        moonshot_possible: some library plan reaches the test accuracy of the single LLM most
            accurate on test at ≤ :data:`MOONSHOT_COST_SHARE` of its cost (hindsight).
        moonshot_chosen: ``[draws, λ]``, the chosen plan does.
        best_router: ``[draws]`` test utility, at the sweep's middle λ, of the best of the
            protocol's single-agent routers fitted on the redraw's train and validation
            queries (hindsight over the routers; ``None``: not measured).
    """

    lambdas: tuple[float, ...]
    chosen: np.ndarray
    best_single: np.ndarray
    best_plan: np.ndarray
    moonshot_possible: np.ndarray
    moonshot_chosen: np.ndarray
    best_router: Optional[np.ndarray] = None

    @property
    def draws(self) -> int:
        return len(self.chosen)

    def regret(self) -> np.ndarray:
        """``[draws, λ]``: the best single LLM's hindsight test utility − the chosen plan's."""
        return self.best_single - self.chosen

    @property
    def middle(self) -> int:
        """The column of the sweep's middle λ."""
        return len(self.lambdas) // 2

    def router_margin(self) -> Optional[np.ndarray]:
        """``[draws]``: the chosen plan's test utility − the best single-agent router's, at the
        middle λ (what the margin target asks of MasRouter, ≥ :data:`ROUTER_MARGIN`)."""
        if self.best_router is None:
            return None
        return self.chosen[:, self.middle] - self.best_router

    def no_regret_share(self) -> float:
        """Share of redraws in which the chosen plan is within the tolerance of the hindsight
        best single LLM at every λ (what the no-regret target asks, against one of the
        baselines it counts)."""
        return float((self.regret() <= NO_REGRET_TOLERANCE).all(axis=1).mean())


def headroom(correct: np.ndarray, cost: np.ndarray, single_columns: Sequence[int],
             splits: Sequence[tuple[np.ndarray, np.ndarray]],
             lambdas: Sequence[float]) -> Headroom:
    """The figures of :class:`Headroom` from ``[queries, plans]`` outcomes.

    Args:
        correct: 1.0 where a plan solved a query.
        cost: $ per (query, plan).
        single_columns: the columns that are single LLMs.
        splits: (train + validation, test) row indices per redraw.
        lambdas: utility per $.
    """
    singles = np.asarray(single_columns)
    rows: Mapping[str, list] = {name: [] for name in (
        "chosen", "best_single", "best_plan", "possible", "moonshot")}
    for choose_on, test in splits:
        test_accuracy, test_cost = correct[test].mean(0), cost[test].mean(0)
        strongest = singles[np.lexsort((test_cost[singles], -test_accuracy[singles]))[0]]
        matches = ((test_accuracy >= test_accuracy[strongest] - 1e-12)
                   & (test_cost <= MOONSHOT_COST_SHARE * test_cost[strongest]))
        rows["possible"].append(bool(matches.any()))
        known_accuracy, known_cost = correct[choose_on].mean(0), cost[choose_on].mean(0)
        chosen, best_single, best_plan, moonshot = [], [], [], []
        for cost_lambda in lambdas:
            pick = int(np.argmax(known_accuracy - cost_lambda * known_cost))
            utility = test_accuracy - cost_lambda * test_cost
            chosen.append(utility[pick])
            best_single.append(utility[singles].max())
            best_plan.append(utility.max())
            moonshot.append(bool(matches[pick]))
        rows["chosen"].append(chosen)
        rows["best_single"].append(best_single)
        rows["best_plan"].append(best_plan)
        rows["moonshot"].append(moonshot)
    return Headroom(tuple(lambdas), np.array(rows["chosen"]), np.array(rows["best_single"]),
                    np.array(rows["best_plan"]), np.array(rows["possible"]),
                    np.array(rows["moonshot"]))


def best_router_utility(embeddings: np.ndarray, correct: np.ndarray, cost: np.ndarray,
                        llms: Sequence[str], splits: Sequence[tuple[np.ndarray, np.ndarray]],
                        train_size: int, cost_lambda: float) -> np.ndarray:
    """``[draws]``: per split, the best test utility at ``cost_lambda`` among the protocol's
    single-agent routers (seed 0), each fitted on the split's first ``train_size`` chosen-on
    queries with the rest as its validation, over the single LLMs (``correct`` and ``cost``
    hold only their columns)."""
    best = []
    for choose_on, test in splits:
        train, validation = choose_on[:train_size], choose_on[train_size:]
        utilities = []
        for router_class in ROUTER_CLASSES.values():
            router = router_class().fit(
                embeddings[train], correct[train], cost[train], llms,
                validation=(embeddings[validation], correct[validation], cost[validation]),
                seed=0)
            choice = router.choose(embeddings[test], cost_lambda)
            rows = np.arange(len(test))
            utilities.append(float((correct[test][rows, choice]
                                    - cost_lambda * cost[test][rows, choice]).mean()))
        best.append(max(utilities))
    return np.array(best)


def pair_headroom(run: PairRun, outcomes: LibraryOutcomes, examples: Sequence[Example],
                  draws: int, lambdas: Sequence[float], data_dir: Optional[Path] = None
                  ) -> tuple[Headroom, Headroom]:
    """:func:`headroom` of a prepared pair (``examples`` in :func:`library_on_all_queries`'s
    order) on the run's own split and over ``draws`` redraws of it."""
    chosen_on = len(run.data.train) + len(run.data.validation)
    own = (np.arange(chosen_on), np.arange(chosen_on, len(examples)))

    ids = [e.id for e in examples]
    world = load_world(run.pair.world, data_dir)
    drawable = None
    if isinstance(world, LLMRouterWorld):
        # world_split's rule: the queries scored in LLMRouter's test.json always stay in test
        drawable = {q.id for q in world.table.task_queries(run.pair.task) if not q.in_test_file}
    redrawn = redraw_splits(ids, len(run.data.train), len(run.data.validation), draws,
                            None if drawable is None else set(ids) & drawable)

    correct, cost = outcomes.correct.numpy(), outcomes.cost.numpy()
    singles = list(range(len(run.llms)))  # the library starts with the single LLMs
    embeddings = run.encoder.encode([e.query for e in examples]).numpy()

    def measured(splits: Sequence[tuple[np.ndarray, np.ndarray]]) -> Headroom:
        figures = headroom(correct, cost, singles, splits, lambdas)
        routers = best_router_utility(embeddings, correct[:, singles], cost[:, singles],
                                      run.llms, splits, len(run.data.train),
                                      figures.lambdas[figures.middle])
        return dataclasses.replace(figures, best_router=routers)
    return measured([own]), measured(redrawn)

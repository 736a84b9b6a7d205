"""The main job: the evaluation protocol — MasRouter and every baseline, on every (world, pool,
task) pair, over a sweep of cost preferences λ and several seeds — with tables, fronts and the
targets checked.

    python benchmarks/run_all.py                 # the full protocol on the offline worlds
    python benchmarks/run_all.py --quick         # CI-sized: small samples, one seed, minutes
    python benchmarks/run_all.py --world zeroeval --pool paper5 --benchmarks gsm8k
    python benchmarks/run_all.py --lambdas 0 100 10000 --seeds 0 1
    python benchmarks/run_all.py --split-seed 0 1 2 --out runs/splits   # three splits, compared
    python benchmarks/run_all.py --pool my_pool.yaml --benchmarks gsm8k --max-usd 5   # real LLMs
    python benchmarks/run_all.py --ray --mlflow  # cells on a local Ray instance, runs in MLflow
    python benchmarks/run_all.py --ray-address auto --max-usd 50   # on a running Ray cluster

Pairs: by default the LLMRouter world's five tasks (its 9 LLMs) and the ZeroEval world's GSM8K
and MATH level 5 with the ``paper5`` and ``all`` pools; ``--world`` / ``--pool`` / ``--benchmarks``
narrow it (``--pool`` takes a named pool, a comma-separated list of recorded LLMs, or a pool YAML
file of real endpoints). Methods, splits and metrics: :mod:`masr_graph.benchmarks.experiment.
protocol` and :mod:`masr_graph.benchmarks.reporting.protocol`.

Writes to ``--out`` (default ``runs/latest``): ``results.md`` and ``results.json`` (per pair and
λ: utility with a 95 % CI, accuracy, $ per query, regret, hypervolumes, plan distributions, the
targets), ``fronts.png`` (accuracy–cost fronts), ``plans.png`` (what the routers chose), per pair
its split, plan library, outcome store, router checkpoints and training curves, per-query traces
``traces/<pair>/<cell>.jsonl``, the LLM response and score caches and ``ledgers/<run id>.jsonl``.
A rerun with the same ``--out`` resumes: every stored cell, outcome and checkpoint is reused.
Results are rewritten after every pair and whenever the run stops. With several ``--split-seed``
values each split is such a run, in ``--out/split-<seed>``, one after the other, sharing the
response, score and embedding caches in ``--out`` (a reply paid for on one split is not paid
again on the next), and ``--out/splits.md`` compares them once all have finished (as
``benchmarks/splits.py`` does: per pair and split the headline figures, their mean over the
splits and each target per split and on the means). ``--max-usd`` caps one grid, so it takes
one split seed.

The grid is independent, resumable cells (one world, task, λ, seed and method each; see
:mod:`masr_graph.benchmarks.experiment.grid`). ``--ray`` runs them on a local Ray instance and
``--ray-address`` on a running cluster (the ``ray`` extra; :mod:`masr_graph.benchmarks.
experiment.cluster`): scheduled by their CPU needs, with one budget (``--max-usd`` for the whole
grid), one concurrency limit per LLM endpoint and one response cache shared by every worker; a
killed worker's cells rerun from what they stored. Without it the same cells run in this
process. ``--mlflow`` logs every cell as an MLflow run (the ``mlflow`` extra;
:mod:`masr_graph.benchmarks.reporting.tracking`) to ``$MLFLOW_TRACKING_URI`` or ``--out/mlruns``.

Exit status (the same as ``masr``, :mod:`masr_graph.exit_status`): 0 done, 1 error (one line says
what to fix, e.g. a missing data directory, API-key variable or an unreachable LLM), 2 bad command
line, 3 stopped by ``--max-usd`` (finished results are written; rerun with a higher cap to
continue), 130 interrupted (rerun with the same ``--out`` to resume).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from masr_graph.benchmarks.experiment.grid import RayOptions, run_grid
from masr_graph.benchmarks.experiment.protocol import (
    DEFAULT_PAIRS,
    ENDPOINTS,
    LAMBDAS,
    SEEDS,
    Pair,
    ProtocolSettings,
)
from masr_graph.benchmarks.experiment.wiring import is_pool_file
from masr_graph.benchmarks.reporting.splits import load_run, split_comparison
from masr_graph.exit_status import (
    non_negative_float,
    non_negative_int,
    positive_int,
    run_command,
    usd_amount,
)
from masr_graph.files import write_atomically
from masr_graph.llm import DEFAULT_FAIL_FAST_AFTER, UNKNOWN_OUTCOME_COSTS
from masr_graph.replay import WORLDS, rule_names
from masr_graph.replay.rules import DEFAULT_RULE


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="run_all.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--world", choices=WORLDS, default=None,
                        help="only pairs of this recorded world (default: every default pair)")
    parser.add_argument("--pool", default=None,
                        help="a named pool (paper5, mix, all), a comma-separated list of recorded "
                             "LLMs, or a pool YAML file of real endpoints")
    parser.add_argument("--benchmarks", nargs="+", default=None, metavar="TASK",
                        help="only these tasks")
    parser.add_argument("--out", type=Path, default=Path("runs/latest"), help="output directory")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="data directory (default: $MASR_DATA_DIR, then ../shared/data)")
    parser.add_argument("--quick", action="store_true",
                        help="CI-sized run: small samples of each split, one seed, short training")
    parser.add_argument("--lambdas", nargs="+", type=non_negative_float, default=None,
                        help=f"the λ sweep, utility per $ (default: {' '.join(map(str, LAMBDAS))})")
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help=f"training seeds (default: {' '.join(map(str, SEEDS))}; --quick: 0)")
    parser.add_argument("--split-seed", type=non_negative_int, nargs="+", default=[0],
                        metavar="SEED", help="seed of the train / validation / test split; "
                        "several: one run per split under --out/split-SEED, compared in "
                        "--out/splits.md (default: 0)")
    parser.add_argument("--max-train", type=positive_int, default=None)
    parser.add_argument("--max-validation", type=positive_int, default=None)
    parser.add_argument("--max-test", type=positive_int, default=None)
    parser.add_argument("--router-steps", type=positive_int, default=None,
                        help="steps of MasRouter's training")
    parser.add_argument("--team-llms", type=positive_int, default=None,
                        help="most LLMs combined into library teams")
    parser.add_argument("--rule", default=DEFAULT_RULE, choices=rule_names(),
                        help=f"replay collaboration rule (default: {DEFAULT_RULE})")
    parser.add_argument("--max-tokens", type=positive_int, default=1024,
                        help="completion cap per call on real endpoints (default: 1024)")
    parser.add_argument("--max-usd", type=usd_amount, default=None,
                        help="budget cap for the whole run; the call that would exceed it is "
                             "not made")
    parser.add_argument("--unknown-outcome-cost", choices=UNKNOWN_OUTCOME_COSTS,
                        default="worst_case",
                        help="what an attempt of unknown outcome (timeout, dropped connection, "
                             "garbled reply) is charged, in the budget and the ledger alike: its "
                             "worst case (default) or its prompt only")
    parser.add_argument("--fail-fast-after", type=non_negative_int,
                        default=DEFAULT_FAIL_FAST_AFTER, metavar="N",
                        help="stop when an LLM's (or endpoint's) first N calls all fail for good "
                             f"(default: {DEFAULT_FAIL_FAST_AFTER}; 0: never)")
    parser.add_argument("--ray", action="store_true",
                        help="run the cells on a local Ray instance (the ray extra)")
    parser.add_argument("--ray-address", default=None, metavar="ADDRESS",
                        help="run the cells on the Ray cluster at ADDRESS ('auto': the one "
                             "this machine belongs to); implies --ray")
    parser.add_argument("--ray-workers", type=positive_int, default=None, metavar="N",
                        help="CPUs of the local Ray instance (default: every core)")
    parser.add_argument("--ray-retries", type=non_negative_int, default=3, metavar="N",
                        help="reruns of a cell whose worker or node died (default: 3)")
    parser.add_argument("--mlflow", action="store_true",
                        help="log every cell as an MLflow run (the mlflow extra) to "
                             "$MLFLOW_TRACKING_URI, default a file store in --out/mlruns")
    parser.add_argument("--mlflow-experiment", default="masr_graph grid", metavar="NAME",
                        help="the MLflow experiment (default: 'masr_graph grid')")
    args = parser.parse_args(argv)
    if len(set(args.split_seed)) < len(args.split_seed):
        parser.error(f"--split-seed repeats a seed ({' '.join(map(str, args.split_seed))})")
    if len(args.split_seed) > 1 and args.max_usd is not None:
        parser.error("--max-usd caps one grid; on real LLMs run one --split-seed per invocation "
                     "(each with its cap) and compare the runs with benchmarks/splits.py")
    if args.ray_workers is not None and args.ray_address is not None:
        parser.error("--ray-workers sizes a local instance; a cluster at --ray-address has "
                     "its own")
    try:
        args.pairs = select_pairs(args.world, args.pool, args.benchmarks)
    except ValueError as exc:
        parser.error(str(exc))
    return args


def select_pairs(world: Optional[str], pool: Optional[str],
                 benchmarks: Optional[Sequence[str]]) -> list[Pair]:
    """The pairs the flags select (see the module docstring).

    Raises:
        ValueError: the flags select nothing (the message lists the pairs there are).
    """
    if pool is not None and is_pool_file(pool):
        if not benchmarks:
            raise ValueError("--pool with a pool file needs --benchmarks (the tasks to run)")
        return [Pair(ENDPOINTS, pool, task) for task in benchmarks]
    if pool is not None:
        recorded = world or "zeroeval"
        tasks = benchmarks or list(dict.fromkeys(p.task for p in DEFAULT_PAIRS
                                                 if p.world == recorded))
        return [Pair(recorded, pool, task) for task in tasks]
    chosen = [p for p in DEFAULT_PAIRS if (world is None or p.world == world)
              and (not benchmarks or p.task in benchmarks)]
    if not chosen:
        raise ValueError(f"no pair of world {world!r} and tasks {benchmarks}; pairs: "
                         f"{', '.join(p.name for p in DEFAULT_PAIRS)}")
    return chosen


def settings_for(args: argparse.Namespace, split_seed: Optional[int] = None) -> ProtocolSettings:
    """The protocol's settings the flags give, on ``split_seed`` (default: the first
    ``--split-seed``)."""
    return ProtocolSettings.from_flags(
        args.quick, lambdas=tuple(args.lambdas) if args.lambdas else None,
        seeds=tuple(args.seeds) if args.seeds else None,
        split_seed=args.split_seed[0] if split_seed is None else split_seed,
        max_train=args.max_train, max_validation=args.max_validation, max_test=args.max_test,
        router_steps=args.router_steps, team_llms=args.team_llms, rule=args.rule,
        max_tokens=args.max_tokens)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns the exit status (see the module docstring)."""
    args = parse_args(argv)
    return run_command("run_all.py", lambda: _run(args))


def ray_options(args: argparse.Namespace) -> Optional[RayOptions]:
    """The Ray flags as :class:`RayOptions` (``None``: run in this process)."""
    if not (args.ray or args.ray_address or args.ray_workers):
        return None
    return RayOptions(address=args.ray_address, workers=args.ray_workers,
                      max_retries=args.ray_retries)


def split_outs(args: argparse.Namespace) -> dict[int, Path]:
    """Where each split's run goes: ``--out`` itself for one split, else ``--out/split-<seed>``."""
    if len(args.split_seed) == 1:
        return {args.split_seed[0]: args.out}
    return {seed: args.out / f"split-{seed}" for seed in args.split_seed}


async def _run(args: argparse.Namespace) -> int:
    if args.mlflow:  # the optional extra, imported only when asked for
        from masr_graph.benchmarks.reporting.tracking import GridTracker
    outs = split_outs(args)
    for split_seed, out in outs.items():
        tracker = GridTracker(out, experiment=args.mlflow_experiment) if args.mlflow else None
        # several splits share --out's caches; one split uses those its --out records, if any
        await run_grid(args.pairs, settings_for(args, split_seed), out,
                       cache_dir=args.out if len(outs) > 1 else None, data_dir=args.data_dir,
                       max_usd=args.max_usd, unknown_outcome_cost=args.unknown_outcome_cost,
                       fail_fast_after=args.fail_fast_after or None, ray=ray_options(args),
                       tracker=tracker)
    written = "results.md, results.json, fronts.png, plans.png, traces/, ledgers/"
    if len(outs) == 1:
        print((args.out / "results.md").read_text(encoding="utf-8"))
        print(f"wrote {args.out}/{written}")
        return 0
    comparison, _ = split_comparison(dict(load_run(out) for out in outs.values()))
    write_atomically(args.out / "splits.md", comparison)
    print(comparison, end="")
    print(f"wrote {args.out}/split-<seed>/{written} for the splits "
          f"{', '.join(map(str, outs))} and {args.out}/splits.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

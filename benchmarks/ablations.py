"""What each part of MasRouter's training buys: ablations, data efficiency, the inductive and
plug-in claims, on a few of the protocol's pairs.

    python benchmarks/ablations.py --out runs/latest          # after run_all.py, reusing its work
    python benchmarks/ablations.py --quick --out runs/quick   # CI-sized
    python benchmarks/ablations.py --world llmrouter --benchmarks mmlu --only "last step"

Default pairs: ZeroEval ``paper5`` on GSM8K and MATH-L5, and the LLMRouter world's MMLU (a task
where LLMs differ by subject). With the same ``--out`` as ``run_all.py`` it reuses that run's
splits, library outcomes and trained MasRouters; every variant's checkpoints and cells are
stored too, so a rerun resumes. Variants and measurements:
:mod:`masr_graph.benchmarks.experiment.ablations`. Writes ``ablations.md`` and
``ablations.json`` to ``--out``: this invocation's pairs, with the variants it ran, and the
pairs of earlier invocations into the same ``--out`` that it did not run (each section names
its settings; a pair run again is replaced whole; every cell stays stored and is reused).
Invocations into one ``--out`` may run side by side on different pairs: a file lock
(``ablations.lock``) serialises their merge, so neither drops the other's tables.

Exit status: as ``run_all.py`` (0 done, 1 error, 2 bad command line, 3 budget stop, 130
interrupted; :mod:`masr_graph.exit_status`).
"""
from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path
from typing import Optional, Sequence

from masr_graph.benchmarks.experiment.ablations import (
    INDUCTIVE,
    VARIANTS,
    AblationRun,
    data_variants,
)
from masr_graph.benchmarks.experiment.protocol import (
    MASROUTER,
    Pair,
    PairRun,
    ProtocolSettings,
    protocol_threads,
)
from masr_graph.benchmarks.experiment.wiring import cache_dir_for, open_runtime
from masr_graph.benchmarks.reporting.ablations import (
    ablations_document,
    ablations_json,
    merge_ablations,
)
from masr_graph.benchmarks.reporting.protocol import pair_report
from masr_graph.benchmarks.reporting.stored import update_tables
from masr_graph.errors import BudgetExceeded
from masr_graph.exit_status import (
    BudgetStop,
    non_negative_float,
    positive_int,
    run_command,
    usd_amount,
)
from masr_graph.llm import Budget
from masr_graph.router import TextEncoder

DEFAULT_PAIRS = (Pair("zeroeval", "paper5", "gsm8k"), Pair("zeroeval", "paper5", "math"),
                 Pair("llmrouter", "all", "mmlu"))


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="ablations.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--world", choices=("zeroeval", "llmrouter"), default=None,
                        help="pairs of this world (its default tasks unless --benchmarks)")
    parser.add_argument("--pool", default=None,
                        help="pool of the pairs (with --world; default paper5 / all)")
    parser.add_argument("--benchmarks", nargs="+", default=None, metavar="TASK",
                        help="only these tasks")
    parser.add_argument("--out", type=Path, default=Path("runs/latest"),
                        help="output directory (the run_all.py run to build on)")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="CI-sized: as run_all.py --quick")
    parser.add_argument("--lambdas", nargs="+", type=non_negative_float, default=None)
    parser.add_argument("--seeds", nargs="+", type=int, default=None)
    parser.add_argument("--split-seed", type=int, default=0,
                        help="seed of the splits: the one the run_all.py run at --out used")
    parser.add_argument("--max-train", type=positive_int, default=None)
    parser.add_argument("--max-validation", type=positive_int, default=None)
    parser.add_argument("--max-test", type=positive_int, default=None)
    parser.add_argument("--router-steps", type=positive_int, default=None)
    parser.add_argument("--only", nargs="+", default=None, metavar="VARIANT",
                        help="only these variants (names as in the tables)")
    parser.add_argument("--max-usd", type=usd_amount, default=None,
                        help="budget cap for the whole invocation")
    args = parser.parse_args(argv)
    if args.pool is not None and args.world is None:
        parser.error("--pool needs --world")
    if args.world is None:
        pairs = [p for p in DEFAULT_PAIRS if not args.benchmarks or p.task in args.benchmarks]
    else:
        pool = args.pool or ("paper5" if args.world == "zeroeval" else "all")
        tasks = args.benchmarks or [p.task for p in DEFAULT_PAIRS if p.world == args.world]
        pairs = [Pair(args.world, pool, task) for task in tasks]
    if not pairs:
        parser.error(f"no pair selected; default pairs: {', '.join(p.name for p in DEFAULT_PAIRS)}")
    args.pairs = pairs
    return args


def settings_for(args: argparse.Namespace) -> ProtocolSettings:
    return ProtocolSettings.from_flags(
        args.quick, lambdas=tuple(args.lambdas) if args.lambdas else None,
        seeds=tuple(args.seeds) if args.seeds else None, split_seed=args.split_seed,
        max_train=args.max_train, max_validation=args.max_validation, max_test=args.max_test,
        router_steps=args.router_steps)


async def _run(args: argparse.Namespace) -> int:
    settings = settings_for(args)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    # the caches of the run it ablates (those of all splits of run_all.py --split-seed S1 S2 ...)
    cache_dir = cache_dir_for(out)
    encoder = TextEncoder(cache_path=cache_dir / "embeddings.pt")
    budget = Budget(args.max_usd) if args.max_usd is not None else None
    run_id = f"ablations-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
    reports, runs = [], []
    try:
        for pair in args.pairs:
            run = PairRun(pair, settings, out, encoder, args.data_dir)
            async with open_runtime(run.specs, out, run_id=f"{run_id}-{pair.name}",
                                    cache_dir=cache_dir, budget=budget, max_tokens=run.max_tokens,
                                    max_concurrent_queries=128) as runtime:
                print(f"== {pair.name}", flush=True)
                await run.prepare(runtime.pipeline)
                variants = [*VARIANTS, *data_variants(len(run.data.train)), INDUCTIVE]
                if args.only:
                    variants = [v for v in variants if v.name in args.only]
                ablations = AblationRun(run, variants)
                masrouter = [c for c in run.cells() if c.method == MASROUTER]
                for cell in masrouter:
                    await run.run(cell, runtime.pipeline)
                cells = ablations.cells()
                for index, cell in enumerate(cells, 1):
                    await ablations.run_cell(cell, runtime.pipeline)
                    print(f"   [{index}/{len(cells)}] {cell.label}", flush=True)
                report = pair_report(run, [*masrouter, *cells])
                reports.append(report)
                runs.append(ablations)
            encoder.save_cache()
    except BudgetExceeded as stop:
        raise BudgetStop(stop, kept=f"finished cells are stored under {out}") from None
    finally:
        if reports:
            store_tables(out, ablations_json(reports, runs, str(settings)))
    print((out / "ablations.md").read_text(encoding="utf-8"))
    return 0


def store_tables(out: Path, current: dict) -> None:
    """Merge this invocation's pairs into ``out``'s ``ablations.json`` and rewrite it and
    ``ablations.md`` (:func:`~masr_graph.benchmarks.reporting.stored.update_tables`: the lock
    keeps an invocation side by side from dropping the other's pairs)."""
    update_tables(out, "ablations", lambda stored: merge_ablations(stored, current),
                  ablations_document)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    with protocol_threads():  # the routers it retrains must match run_all.py's
        return run_command("ablations.py", lambda: _run(args))


if __name__ == "__main__":
    sys.exit(main())

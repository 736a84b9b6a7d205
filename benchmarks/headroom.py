"""How much the protocol's targets ask of any method that chooses without seeing test: the plan
library of a run_all.py run on every query of each pair, and the best fixed plan chosen on train
+ validation against the single LLM and the library plan best on test in hindsight, over many
redraws of the split.

    python benchmarks/headroom.py --out runs/latest               # after run_all.py
    python benchmarks/headroom.py --out runs/latest --world zeroeval --pool all --draws 50

Reuses the run's splits, libraries and caches (give the same --split-seed, --quick and --max-*
flags as the run); executes each library plan on the pair's test queries once (offline worlds
only; stored as ``<pair>/headroom.sqlite``, so a rerun executes nothing) and writes
``headroom.md`` and ``headroom.json`` to --out, keeping there the pairs of earlier invocations
that this one did not measure. :mod:`masr_graph.benchmarks.experiment.headroom` says what is
measured and what it is not.

Exit status: as ``run_all.py`` (0 done, 1 error, 2 bad command line, 130 interrupted;
:mod:`masr_graph.exit_status`).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from masr_graph.benchmarks.experiment.headroom import library_on_all_queries, pair_headroom
from masr_graph.benchmarks.experiment.protocol import (DEFAULT_PAIRS, PairRun, ProtocolSettings,
                                                       protocol_threads)
from masr_graph.benchmarks.experiment.wiring import cache_dir_for, is_pool_file, open_runtime
from masr_graph.benchmarks.reporting.headroom import (headroom_document, headroom_from_json,
                                                      headroom_json, merge_headroom)
from masr_graph.benchmarks.reporting.stored import update_tables
from masr_graph.benchmarks.run_all import select_pairs
from masr_graph.exit_status import (non_negative_float, non_negative_int, positive_int,
                                    run_command)
from masr_graph.router import TextEncoder


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="headroom.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--out", type=Path, default=Path("runs/latest"),
                        help="the run_all.py run to measure (its --out)")
    parser.add_argument("--world", choices=sorted({p.world for p in DEFAULT_PAIRS}),
                        default=None, help="only pairs of this recorded world")
    parser.add_argument("--pool", default=None, help="a named pool or a comma-separated list "
                        "of recorded LLMs (as run_all.py)")
    parser.add_argument("--benchmarks", nargs="+", default=None, metavar="TASK",
                        help="only these tasks")
    parser.add_argument("--draws", type=positive_int, default=20,
                        help="redraws of each pair's split (default: 20)")
    parser.add_argument("--lambdas", nargs="+", type=non_negative_float, default=None,
                        help="the λ sweep (default: run_all.py's)")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--split-seed", type=non_negative_int, default=0,
                        help="seed of the run's split (default: 0)")
    parser.add_argument("--quick", action="store_true", help="the run was run_all.py --quick")
    parser.add_argument("--max-train", type=positive_int, default=None)
    parser.add_argument("--max-validation", type=positive_int, default=None)
    parser.add_argument("--max-test", type=positive_int, default=None)
    parser.add_argument("--team-llms", type=positive_int, default=None)
    args = parser.parse_args(argv)
    if args.pool is not None and is_pool_file(args.pool):
        parser.error("--pool: headroom executes the whole library on the test queries, which "
                     "the offline worlds allow for free; give a recorded pool, not a pool file")
    try:
        args.pairs = select_pairs(args.world, args.pool, args.benchmarks)
    except ValueError as exc:
        parser.error(str(exc))
    return args


def settings_for(args: argparse.Namespace) -> ProtocolSettings:
    return ProtocolSettings.from_flags(
        args.quick, split_seed=args.split_seed, max_train=args.max_train,
        max_validation=args.max_validation, max_test=args.max_test, team_llms=args.team_llms)


async def _run(args: argparse.Namespace) -> int:
    settings, out = settings_for(args), args.out
    cache_dir = cache_dir_for(out)
    encoder = TextEncoder(cache_path=cache_dir / "embeddings.pt")
    figures = {}
    for pair in args.pairs:
        run = PairRun(pair, settings, out, encoder, args.data_dir)
        async with open_runtime(run.specs, out, run_id=f"headroom-{time.strftime('%Y%m%dT%H%M%S')}"
                                f"-{pair.name}", cache_dir=cache_dir, max_tokens=run.max_tokens,
                                max_concurrent_queries=128) as runtime:
            started = time.perf_counter()
            # the run's library and its outcomes on train + validation (what is missing, say
            # of a pair the run has not reached, is executed into the run's files as by run_all)
            await run.define_library(runtime.pipeline)
            await run.execute_library(runtime.pipeline)
            outcomes, examples = await library_on_all_queries(run, runtime.pipeline)
            figures[pair.name] = pair_headroom(run, outcomes, examples, args.draws,
                                               args.lambdas or settings.lambdas, args.data_dir)
            print(f"== {pair.name}: {len(run.library)} plans on {len(examples)} queries, "
                  f"{time.perf_counter() - started:.0f} s", flush=True)
        encoder.save_cache()  # the routers' embeddings of queries the run had not embedded
    print(store_tables(out, figures), end="")
    return 0


def store_tables(out: Path, figures: dict) -> str:
    """Merge this invocation's pairs into ``out``'s ``headroom.json`` (:func:`merge_headroom`)
    and rewrite it and ``headroom.md``, under the lock of
    :func:`~masr_graph.benchmarks.reporting.stored.update_tables`; returns the markdown."""
    return update_tables(
        out, "headroom", lambda stored: merge_headroom(stored, headroom_json(figures)),
        lambda tables: headroom_document({name: headroom_from_json(entry)
                                          for name, entry in tables.items()}))


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    with protocol_threads():
        return run_command("headroom.py", lambda: _run(args))


if __name__ == "__main__":
    sys.exit(main())

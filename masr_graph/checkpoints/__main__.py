"""``python -m masr_graph.checkpoints``: list the shipped checkpoints, or export a finished run's
routers as shipped checkpoints (:mod:`masr_graph.checkpoints.export`).

    python -m masr_graph.checkpoints list
    python -m masr_graph.checkpoints export RUN_DIR [--seed 0] [--dest DIR]

Exit status as for ``masr`` (:mod:`masr_graph.exit_status`): 0 done, 1 an error (one line), 2 a
bad command line.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from ..exit_status import non_negative_int, positive_int, run_command
from . import FOLDER, shipped


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m masr_graph.checkpoints",
                                     description="Shipped router checkpoints.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("list", help="the shipped checkpoints (name and file)")
    export = commands.add_parser(
        "export", help="export the routers of a finished benchmarks/run_all.py run",
        description="For every pair folder <world>-<pool>-<task> of RUN_DIR, write its "
                    "masrouter-seed<SEED>.pt as <world>-<pool>-<task>.pt: origin filled in "
                    "from the folder name and the run's split where the checkpoint lacks it, "
                    "float16 weights (float32 if float16 changed any routing decision on the "
                    "pair's test queries), no trainer state.")
    export.add_argument("run_dir", type=Path, metavar="RUN_DIR",
                        help="a finished run_all.py output folder (its --out)")
    export.add_argument("--seed", type=non_negative_int, default=0,
                        help="which training seed's router to export (default: 0)")
    export.add_argument("--dest", type=Path, default=None,
                        help=f"destination folder (default: the package's, {FOLDER})")
    export.add_argument("--data-dir", type=Path, default=None,
                        help="data directory (default: $MASR_DATA_DIR, then ../shared/data)")
    export.add_argument("--max-queries", type=positive_int, default=200,
                        help="test queries the float16 copy must route identically "
                             "(default: 200)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        if args.command == "list":
            names = shipped()
            for name, path in names.items():
                print(f"{name}\t{path}")
            if not names:
                print(f"no checkpoint is shipped in {FOLDER}", file=sys.stderr)
            return 0
        from .export import export_run

        exported = export_run(args.run_dir, seed=args.seed, dest=args.dest,
                              data_dir=args.data_dir, max_queries=args.max_queries)
        print(f"{len(exported)} checkpoints written to {exported[0].path.parent}")
        return 0

    return run_command(f"python -m masr_graph.checkpoints {args.command}", body,
                       resumable=False)


if __name__ == "__main__":
    sys.exit(main())

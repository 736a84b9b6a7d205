"""The protocol's figures on several train / validation / test splits side by side.

    python benchmarks/run_all.py --out runs/split0
    python benchmarks/run_all.py --split-seed 1 --out runs/split1
    python benchmarks/splits.py runs/split0 runs/split1 --out runs/splits.md

(``run_all.py --split-seed 0 1 --out runs/splits`` does both runs and this comparison in one.)

Reads each finished run's ``results.json`` (runs of the same pairs and λ sweep) and prints, per
pair and split, MasRouter and the best baseline at the middle λ, the worst regret, the margin
over the best single-agent router, the hypervolumes and MasRouter's plans; then the mean over
the splits, and each target checked per run and on the means
(:mod:`masr_graph.benchmarks.reporting.splits`). ``--out`` also writes it to a file.

Exit status: as ``run_all.py`` (0 done, 1 error — e.g. a run that has not finished —, 2 bad
command line; :mod:`masr_graph.exit_status`).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

from masr_graph.benchmarks.reporting.splits import load_run, split_comparison
from masr_graph.exit_status import run_command
from masr_graph.files import write_atomically


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="splits.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("runs", nargs="+", type=Path, metavar="OUT",
                        help="the --out folders of finished run_all.py runs (two or more)")
    parser.add_argument("--out", type=Path, default=None, help="also write the comparison here")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns the exit status (see the module docstring)."""
    args = parse_args(argv)

    def body() -> None:
        text, _ = split_comparison(dict(load_run(out) for out in args.runs))
        print(text, end="")
        if args.out is not None:
            write_atomically(args.out, text)

    return run_command("splits.py", body, resumable=False)


if __name__ == "__main__":
    raise SystemExit(main())

"""Download public copies of the benchmarks from the Hugging Face Hub into the data layout the
loaders read (``shared/data/README.md``), for users who are online and have no data directory.

Needs the optional ``datasets`` package (``pip install datasets``); nothing else in masr_graph
downloads data, and tests never call this. Afterwards point ``MASR_DATA_DIR`` at ``dest``.

Sources: ``openai/gsm8k`` (main), ``openai/openai_humaneval``, ``google-research-datasets/mbpp``
(full), ``EleutherAI/hendrycks_math`` (the seven subject configs; the original
``hendrycks/competition_math`` is no longer distributed) with ``HuggingFaceH4/MATH-500``, and
``cais/mmlu`` (all). The MATH test rows are numbered in the order the Hub serves them, which need
not match other copies: a split drawn on one copy records its checksums and will not silently run
on another.
"""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from masr_graph.errors import ConfigError

from .data_dir import PathLike

LoadDataset = Callable[..., Iterable[dict[str, Any]]]

MATH_SUBJECT_CONFIGS = (
    "algebra",
    "counting_and_probability",
    "geometry",
    "intermediate_algebra",
    "number_theory",
    "prealgebra",
    "precalculus",
)


def _write_jsonl(path: Path, rows: Iterable[dict[str, Any]], *, compress: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if compress else open
    with opener(path, "wt", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def _fetch_gsm8k(load_dataset: LoadDataset, dest: Path) -> list[Path]:
    written = []
    for split in ("train", "test"):
        path = dest / "gsm8k" / f"{split}.jsonl"
        rows = load_dataset("openai/gsm8k", "main", split=split)
        _write_jsonl(path, ({"question": r["question"], "answer": r["answer"]} for r in rows))
        written.append(path)
    return written


def _fetch_humaneval(load_dataset: LoadDataset, dest: Path) -> list[Path]:
    path = dest / "humaneval" / "HumanEval.jsonl.gz"
    fields = ("task_id", "prompt", "canonical_solution", "test", "entry_point")
    rows = load_dataset("openai/openai_humaneval", split="test")
    _write_jsonl(path, ({name: r[name] for name in fields} for r in rows), compress=True)
    return [path]


def _fetch_mbpp(load_dataset: LoadDataset, dest: Path) -> list[Path]:
    path = dest / "mbpp" / "mbpp.jsonl"
    fields = ("task_id", "text", "code", "test_list", "test_setup_code", "challenge_test_list")
    rows = [
        {name: r[name] for name in fields}
        for split in ("prompt", "test", "validation", "train")
        for r in load_dataset("google-research-datasets/mbpp", "full", split=split)
    ]
    _write_jsonl(path, sorted(rows, key=lambda row: row["task_id"]))
    return [path]


def _fetch_math(load_dataset: LoadDataset, dest: Path) -> list[Path]:
    test_path = dest / "math" / "test.jsonl"
    rows = (
        r
        for config in MATH_SUBJECT_CONFIGS
        for r in load_dataset("EleutherAI/hendrycks_math", config, split="test")
    )
    _write_jsonl(
        test_path,
        (
            {
                "problem": r["problem"],
                "level": r["level"],
                "type": r["type"],
                "solution": r["solution"],
                "idx": idx,
            }
            for idx, r in enumerate(rows)
        ),
    )
    subset_path = dest / "math" / "math500_test.jsonl"
    fields = ("problem", "solution", "answer", "subject", "level", "unique_id")
    subset = load_dataset("HuggingFaceH4/MATH-500", split="test")
    _write_jsonl(subset_path, ({name: r[name] for name in fields} for r in subset))
    return [test_path, subset_path]


def _fetch_mmlu(load_dataset: LoadDataset, dest: Path) -> list[Path]:
    written = []
    for hub_split, split in (("dev", "dev"), ("validation", "val"), ("test", "test")):
        by_subject: dict[str, list[list[str]]] = {}
        for r in load_dataset("cais/mmlu", "all", split=hub_split):
            letter = "ABCD"[int(r["answer"])]
            by_subject.setdefault(r["subject"], []).append([r["question"], *r["choices"], letter])
        for subject, rows in sorted(by_subject.items()):
            path = dest / "mmlu" / split / f"{subject}_{split}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w", newline="", encoding="utf-8") as handle:
                csv.writer(handle).writerows(rows)
            written.append(path)
    return written


_FETCHERS: dict[str, Callable[[LoadDataset, Path], list[Path]]] = {
    "gsm8k": _fetch_gsm8k,
    "humaneval": _fetch_humaneval,
    "mbpp": _fetch_mbpp,
    "math": _fetch_math,
    "mmlu": _fetch_mmlu,
}


def fetch_public_copy(
    name: str, dest: PathLike, *, load_dataset: Optional[LoadDataset] = None
) -> list[Path]:
    """Download benchmark ``name`` from the Hugging Face Hub and write it under ``dest`` in the
    loaders' layout (existing files of that benchmark are overwritten).

    Args:
        name: ``"gsm8k"``, ``"humaneval"``, ``"mbpp"``, ``"math"`` or ``"mmlu"``.
        dest: the data directory to fill (then ``export MASR_DATA_DIR=dest``).
        load_dataset: a ``datasets.load_dataset``-compatible callable; defaults to the real one.

    Returns:
        The files written.

    Raises:
        ConfigError: unknown ``name``.
        ImportError: ``datasets`` is not installed (the message says ``pip install datasets``).
    """
    if name not in _FETCHERS:
        raise ConfigError(
            f"no public source known for benchmark {name!r}; choose one of {sorted(_FETCHERS)}"
        )
    if load_dataset is None:
        try:
            from datasets import load_dataset
        except ImportError:
            raise ImportError(
                "fetching public copies needs the Hugging Face 'datasets' package, which is not "
                "installed: pip install datasets (or set MASR_DATA_DIR to an existing data "
                "directory)"
            ) from None
    return _FETCHERS[name](load_dataset, Path(dest))

"""Benchmarks (GSM8K, MATH, HumanEval, MBPP, MMLU): loaders, seeded splits and evaluators.

Typical use::

    from masr_graph.benchmarks import make_split, save_split, split_examples, aevaluate_many

    split = make_split("mbpp", seed=0)           # paper protocol, data checksums recorded
    save_split(split, "results/mbpp_split.json")  # ids next to the results
    test = split_examples(split, "test")          # list[Example]; agents see example.query
    scores = await aevaluate_many(test, replies)  # list[Score], code runs in the sandbox

Data is read from ``data_dir`` > ``$MASR_DATA_DIR`` > ``../shared/data`` next to the checkout
(:mod:`.data.data_dir`).

Sub-packages, one concern each: :mod:`.data` (where the data lives, fetching it), :mod:`.tasks`
(loaders, evaluators, splits), :mod:`.experiment` (the wiring of runs: pipeline, baselines),
:mod:`.reporting` (result store, tables, plots) and :mod:`.perf` (performance scripts).
"""

from .data.data_dir import DATA_DIR_ENV, resolve_data_dir
from .tasks.datasets import TASK_DOMAINS, Example, Score
from .data.fetch import check_data, fetch_data
from .tasks.registry import (
    Benchmark,
    aevaluate,
    aevaluate_many,
    answer_key,
    benchmark_names,
    evaluate,
    get_benchmark,
    load_benchmark,
    register_benchmark,
)
from .tasks.splits import (
    Split,
    check_split_data,
    load_split,
    make_split,
    save_split,
    split_examples,
)

__all__ = [
    "DATA_DIR_ENV",
    "TASK_DOMAINS",
    "Benchmark",
    "Example",
    "Score",
    "Split",
    "aevaluate",
    "aevaluate_many",
    "answer_key",
    "benchmark_names",
    "check_split_data",
    "evaluate",
    "check_data",
    "fetch_data",
    "get_benchmark",
    "load_benchmark",
    "load_split",
    "make_split",
    "register_benchmark",
    "resolve_data_dir",
    "save_split",
    "split_examples",
]

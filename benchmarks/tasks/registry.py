"""Registry of benchmarks: one :class:`Benchmark` record per task tying its loader, evaluator and
voting key together, and task-dispatching ``evaluate`` / ``aevaluate`` / ``answer_key`` so callers
(runtime, trainer, CLI) never import a benchmark module directly.

Built-in tasks: ``gsm8k``, ``math``, ``humaneval``, ``mbpp``, ``mmlu``. A user-added benchmark is
one :func:`register_benchmark` call away.
"""

from __future__ import annotations

import asyncio
import inspect
import os
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Optional, Sequence

from tqdm.auto import tqdm

from masr_graph.errors import ConfigError

from . import gsm8k, humaneval, math_dataset, mbpp, mmlu
from ..data.data_dir import PathLike
from .datasets import TASK_DOMAINS, Example, Score


@dataclass(frozen=True)
class Benchmark:
    """How to load and score one task.

    Args:
        name: task name, also ``Example.task`` of its examples.
        domain: router domain (``"math"``, ``"code"``, ``"knowledge"`` or a user-added one).
        splits: the split names ``load`` accepts; the first is the default.
        load: ``load(split, data_dir, **options) -> list[Example]``.
        evaluate: ``evaluate(example, reply) -> Score``.
        answer_key: ``answer_key(reply) -> str | None``, the normalised answer majority voting
            groups replies by.
        aevaluate: async evaluator for scorers that wait on something (code runs in the sandbox);
            ``None`` means ``evaluate`` is quick and is called inline.
    """

    name: str
    domain: str
    splits: tuple[str, ...]
    load: Callable[..., list[Example]]
    evaluate: Callable[[Example, str], Score]
    answer_key: Callable[[str], Optional[str]]
    aevaluate: Optional[Callable[[Example, str], Awaitable[Score]]] = None


_REGISTRY: dict[str, Benchmark] = {}


def register_benchmark(benchmark: Benchmark, *, replace: bool = False) -> None:
    """Add a benchmark (or, with ``replace=True``, swap one out).

    Raises:
        ConfigError: the name is taken and ``replace`` is false, or ``splits`` is empty.
    """
    if benchmark.name in _REGISTRY and not replace:
        raise ConfigError(
            f"benchmark {benchmark.name!r} is already registered; pass replace=True to swap it out"
        )
    if not benchmark.splits:
        raise ConfigError(f"benchmark {benchmark.name!r} declares no splits")
    _REGISTRY[benchmark.name] = benchmark


def benchmark_names() -> list[str]:
    """Registered task names, sorted."""
    return sorted(_REGISTRY)


def get_benchmark(name: str) -> Benchmark:
    """The registered benchmark called ``name``.

    Raises:
        ConfigError: unknown name (the message lists the registered ones).
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown benchmark {name!r}; registered: {benchmark_names()}") from None


def load_benchmark(
    name: str, split: Optional[str] = None, data_dir: Optional[PathLike] = None, **options: Any
) -> list[Example]:
    """Load one split of a benchmark, e.g. ``load_benchmark("mbpp", "test", show_tests=True)``.

    Args:
        name: task name (see :func:`benchmark_names`).
        split: one of the benchmark's ``splits``; ``None`` is its default (the first).
        data_dir: data directory, overriding ``MASR_DATA_DIR``.
        **options: loader-specific keywords (MBPP: ``show_tests``).

    Raises:
        ConfigError: unknown benchmark, split or option.
        DataError: data files missing or malformed.
    """
    benchmark = get_benchmark(name)
    split = benchmark.splits[0] if split is None else split
    if split not in benchmark.splits:
        raise ConfigError(f"unknown {name} split {split!r}; choose one of {list(benchmark.splits)}")
    accepted = [
        parameter.name
        for parameter in inspect.signature(benchmark.load).parameters.values()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(f"{name} loader options {unknown} are not known; it accepts {accepted}")
    return benchmark.load(split, data_dir, **options)


def evaluate(example: Example, reply: str) -> Score:
    """Score ``reply`` with the evaluator of ``example.task`` (code tasks run the sandbox and
    block; prefer :func:`aevaluate` inside an event loop)."""
    return get_benchmark(example.task).evaluate(example, reply)


async def aevaluate(example: Example, reply: str) -> Score:
    """Async :func:`evaluate`: code runs in the sandbox without blocking the event loop; quick
    text scorers run inline."""
    benchmark = get_benchmark(example.task)
    if benchmark.aevaluate is None:
        return benchmark.evaluate(example, reply)
    return await benchmark.aevaluate(example, reply)


async def aevaluate_many(
    examples: Sequence[Example],
    replies: Sequence[str],
    *,
    max_concurrency: Optional[int] = None,
    progress: bool = False,
) -> list[Score]:
    """Score ``replies[i]`` against ``examples[i]`` with at most ``max_concurrency`` evaluations
    (sandbox processes) at once; scores come back in input order.

    Args:
        max_concurrency: defaults to the number of CPUs.
        progress: show a tqdm bar.

    Raises:
        ConfigError: the sequences differ in length or ``max_concurrency < 1``.
    """
    if len(examples) != len(replies):
        raise ConfigError(f"got {len(examples)} examples but {len(replies)} replies; they pair up")
    limit = max_concurrency if max_concurrency is not None else (os.cpu_count() or 1)
    if limit < 1:
        raise ConfigError(f"max_concurrency must be at least 1 (got {limit})")
    gate = asyncio.Semaphore(limit)
    bar = tqdm(total=len(examples), desc="evaluating", disable=not progress)

    async def bounded(example: Example, reply: str) -> Score:
        async with gate:
            score = await aevaluate(example, reply)
        bar.update()
        return score

    try:
        return list(
            await asyncio.gather(*(bounded(e, r) for e, r in zip(examples, replies, strict=True)))
        )
    finally:
        bar.close()


def answer_key(task: str, reply: str) -> Optional[str]:
    """Normalised final answer of ``reply`` for majority voting: GSM8K the number (``"1000"``),
    MATH the sympy form, MMLU the letter, code a hash of the program's syntax tree; ``None`` when
    the reply has no answer."""
    return get_benchmark(task).answer_key(reply)


def _register_builtins() -> None:
    for module, load, aevaluate_code in (
        (gsm8k, gsm8k.load_gsm8k, None),
        (math_dataset, math_dataset.load_math, None),
        (humaneval, humaneval.load_humaneval, humaneval.aevaluate),
        (mbpp, mbpp.load_mbpp, mbpp.aevaluate),
        (mmlu, mmlu.load_mmlu, None),
    ):
        register_benchmark(
            Benchmark(
                name=module.TASK,
                domain=TASK_DOMAINS[module.TASK],
                splits=module.SPLITS,
                load=load,
                evaluate=module.evaluate,
                answer_key=module.answer_key,
                aevaluate=aevaluate_code,
            )
        )


_register_builtins()

"""Registry of benchmarks: one :class:`Benchmark` record per task tying its loader, evaluator and
voting key together, and task-dispatching ``evaluate`` / ``aevaluate`` / ``answer_key`` so callers
(runtime, trainer, CLI) never import a benchmark module directly.

Built-in tasks: ``gsm8k``, ``math``, ``humaneval``, ``mbpp``, ``mmlu``. A user-added benchmark is
one :func:`register_benchmark` call away.

The text scorers (GSM8K, MATH, MMLU) run in scorer worker processes with a hard timeout of
:data:`.scorer_pool.TIMEOUT_S` seconds per call, whoever calls them: a reply that would hang its
scorer (``\\boxed{9^{9^{9^{9}}}}``) scores as wrong with the reason in ``Score.detail``, and its
answer key is ``None``. Results are memoised in this process, so repeated calls cost a dictionary
look-up. Code tasks run in the sandbox, which has its own limits.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import math
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Optional, Sequence

from tqdm.auto import tqdm

from masr_graph.errors import ConfigError

from ..data.data_dir import PathLike, files_sha256
from . import gsm8k, humaneval, math_dataset, mbpp, mmlu
from .datasets import TASK_DOMAINS, Example, Score
from .scorer_pool import TIMEOUT_S, default_pool


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
            ``None`` means :func:`aevaluate` uses ``evaluate``.
        timeout_s: when set, ``evaluate`` and ``answer_key`` run in a scorer worker process that
            is killed after this many seconds (the reply then scores as wrong and has no answer
            key, with the reason in the score's ``detail``), and their results are memoised by
            gold answer and reply text. Both must then be module-level functions (they are sent
            to the worker by reference) and ``evaluate`` may read nothing of the example but
            ``answer``. ``None``: they are called inline, without a time limit.
    """

    name: str
    domain: str
    splits: tuple[str, ...]
    load: Callable[..., list[Example]]
    evaluate: Callable[[Example, str], Score]
    answer_key: Callable[[str], Optional[str]]
    aevaluate: Optional[Callable[[Example, str], Awaitable[Score]]] = None
    timeout_s: Optional[float] = None


_REGISTRY: dict[str, Benchmark] = {}


def register_benchmark(benchmark: Benchmark, *, replace: bool = False) -> None:
    """Add a benchmark (or, with ``replace=True``, swap one out).

    Raises:
        ConfigError: the name is taken and ``replace`` is false, ``splits`` is empty, or
            ``timeout_s`` is set but not a positive number of seconds, or its scorers cannot be
            sent to a worker process (a lambda, a nested function).
    """
    if benchmark.name in _REGISTRY and not replace:
        raise ConfigError(
            f"benchmark {benchmark.name!r} is already registered; pass replace=True to swap it out"
        )
    if not benchmark.splits:
        raise ConfigError(f"benchmark {benchmark.name!r} declares no splits")
    if benchmark.timeout_s is not None:
        if not (
            isinstance(benchmark.timeout_s, (int, float)) and 0 < benchmark.timeout_s < math.inf
        ):
            raise ConfigError(
                f"benchmark {benchmark.name!r}: timeout_s must be a positive number of seconds or "
                f"None (got {benchmark.timeout_s!r})"
            )
        for role, function in (
            ("evaluate", benchmark.evaluate),
            ("answer_key", benchmark.answer_key),
        ):
            try:
                pickle.dumps(function)
            except (pickle.PicklingError, AttributeError, TypeError) as error:
                raise ConfigError(
                    f"benchmark {benchmark.name!r}: with timeout_s set, {role} must be a "
                    f"module-level function a worker process can import; {function!r} is not "
                    f"({error})"
                ) from None
    _REGISTRY[benchmark.name] = benchmark
    scorer_fingerprint.cache_clear()


@functools.lru_cache(maxsize=None)
def scorer_fingerprint(task: str) -> str:
    """sha256 of the code that scores ``task``: this package's sources and the file that defines
    the task's evaluator (a user's benchmark). Caches of verdicts key on it, so a changed
    evaluator never serves verdicts of its earlier version.

    Raises:
        ConfigError: unknown task.
    """
    benchmark = get_benchmark(task)
    files = sorted(Path(__file__).parent.glob("*.py"))
    for function in (benchmark.evaluate, benchmark.aevaluate, benchmark.answer_key):
        source = inspect.getsourcefile(function) if function is not None else None
        if source and Path(source).resolve() not in {f.resolve() for f in files}:
            files.append(Path(source))
    return files_sha256(files)


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
    """Score ``reply`` with the evaluator of ``example.task``. Callable from any thread,
    including an event loop's (text scorers then block it for at most their timeout; code tasks
    run the sandbox and block longer): prefer :func:`aevaluate` in coroutines."""
    benchmark = get_benchmark(example.task)
    if benchmark.timeout_s is None:
        return benchmark.evaluate(example, reply)
    return default_pool().result(
        (benchmark.evaluate, example.answer, reply),
        benchmark.evaluate,
        (example, reply),
        timeout_s=benchmark.timeout_s,
        on_failure=_unscored,
    )


async def aevaluate(example: Example, reply: str) -> Score:
    """Async :func:`evaluate` that never blocks the event loop: code runs in the sandbox, text
    scorers in a scorer worker process, and the loop serves other coroutines meanwhile."""
    benchmark = get_benchmark(example.task)
    if benchmark.aevaluate is not None:
        return await benchmark.aevaluate(example, reply)
    if benchmark.timeout_s is None:
        return benchmark.evaluate(example, reply)
    return await default_pool().aresult(
        (benchmark.evaluate, example.answer, reply),
        benchmark.evaluate,
        (example, reply),
        timeout_s=benchmark.timeout_s,
        on_failure=_unscored,
    )


def _unscored(reason: str) -> Score:
    return Score(False, None, f"not scored, counted as wrong: {reason}")


def _no_key(reason: str) -> None:
    return None


async def aevaluate_many(
    examples: Sequence[Example],
    replies: Sequence[str],
    *,
    max_concurrency: Optional[int] = None,
    progress: bool = False,
) -> list[Score]:
    """Score ``replies[i]`` against ``examples[i]`` with at most ``max_concurrency`` evaluations
    (sandbox runs, scorer-process calls) at once; scores come back in input order.

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
    the reply has no answer or its scorer timed out. Callable from any thread (in an event loop's
    it blocks for at most the scorer's timeout; repeated replies are memo hits)."""
    benchmark = get_benchmark(task)
    if benchmark.timeout_s is None:
        return benchmark.answer_key(reply)
    return default_pool().result(
        (benchmark.answer_key, reply),
        benchmark.answer_key,
        (reply,),
        timeout_s=benchmark.timeout_s,
        on_failure=_no_key,
    )


def _register_builtins() -> None:
    for module, load, aevaluate_code, timeout_s in (
        (gsm8k, gsm8k.load_gsm8k, None, TIMEOUT_S),
        (math_dataset, math_dataset.load_math, None, TIMEOUT_S),
        (humaneval, humaneval.load_humaneval, humaneval.aevaluate, None),
        (mbpp, mbpp.load_mbpp, mbpp.aevaluate, None),
        (mmlu, mmlu.load_mmlu, None, TIMEOUT_S),
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
                timeout_s=timeout_s,
            )
        )


_register_builtins()

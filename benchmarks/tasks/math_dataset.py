"""MATH (Hendrycks et al., 2021): competition mathematics with a LaTeX final answer.

Data: ``math/test.jsonl`` (5,000 problems: ``problem``, ``level`` such as ``"Level 3"``, ``type``,
``solution``, ``idx``) and ``math/math500_test.jsonl`` (MATH-500, the 500-problem subset of the
test set chosen by OpenAI for PRM800K: ``problem``, ``solution``, ``answer``, ``subject``,
``level``, ``unique_id``). Every MATH-500 problem is one of the 5,000, and both sources share the
ids ``math/<idx>`` so results on either can be joined.

Gold answer: the content of the solution's last ``\\boxed{}`` (MATH-500: its curated ``answer``).

Scoring: the reply's last ``\\boxed{}``/``\\fbox{}`` (balanced braces), else its last answer
statement (``the answer is $x$``); never a guess such as the last character. An empty box or a
reply without either is incorrect. Equivalence uses math-verify (``parse``/``verify``: sympy-based,
so ``\\frac12``, ``0.5`` and ``\\dfrac{1}{2}`` agree, as do ``(x+1)^2`` and ``x^2+2x+1``), with a
per-call timeout (math-verify's ``signal.alarm``, so only in the main thread; in worker threads
math-verify runs without one). If math-verify cannot parse either side, normalised LaTeX strings
are compared instead.
"""

from __future__ import annotations

import re
import threading
from typing import Any, Optional

import sympy
from math_verify import parse, verify
from math_verify.errors import TimeoutException

from masr_graph.errors import ConfigError, DataError

from ..data.data_dir import PathLike, data_file, read_jsonl, require_fields
from .datasets import Example, Score
from .extraction import last_answer_statement, last_boxed

TASK = "math"
SPLITS = ("test", "math500")
DATA_FILES = {"test": "math/test.jsonl", "math500": "math/math500_test.jsonl"}
VERIFY_TIMEOUT_S = 5
"""Seconds math-verify may spend parsing or comparing one answer (main thread only)."""

_INLINE_MATH = re.compile(r"\$+([^$]+)\$+|\\\((.+?)\\\)")
_TEXT_COMMAND = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")
_LATEX_NOISE = re.compile(r"\\left|\\right|\\[,;:! ]|\\displaystyle|\^\{?\\circ\}?|\\\$|\s+")


def load_math(split: str = "test", data_dir: Optional[PathLike] = None) -> list[Example]:
    """Load MATH ``"test"`` (5,000 problems) or ``"math500"`` (the MATH-500 subset).

    ``meta`` holds ``level`` (1-5, ``None`` if unknown), ``type`` (e.g. ``"Algebra"``),
    ``solution`` and, for MATH-500, ``math500_id``. Loading ``"math500"`` also reads
    ``math/test.jsonl`` to give each problem its ``math/<idx>`` id.

    Raises:
        ConfigError: unknown ``split``.
        DataError: a file is missing or malformed, or a MATH-500 problem is not in the test set.
    """
    if split not in SPLITS:
        raise ConfigError(f"unknown MATH split {split!r}; choose one of {list(SPLITS)}")
    test_path = data_file(DATA_FILES["test"], data_dir)
    test_examples = [_test_example(row, test_path) for row in read_jsonl(test_path)]
    if split == "test":
        return test_examples
    by_problem = {example.query: example for example in test_examples}
    subset_path = data_file(DATA_FILES["math500"], data_dir)
    examples = []
    for index, row in enumerate(read_jsonl(subset_path)):
        require_fields(
            row,
            ("problem", "solution", "answer", "subject", "level", "unique_id"),
            subset_path,
            f"row {index}",
        )
        original = by_problem.get(row["problem"])
        if original is None:
            raise DataError(
                f"{str(subset_path)!r} row {index} ({row['unique_id']}) is not a problem of "
                f"{str(test_path)!r}; MATH-500 must be a subset of the MATH test set"
            )
        examples.append(
            Example(
                id=original.id,
                task=TASK,
                query=row["problem"],
                answer=row["answer"],
                meta={
                    "level": int(row["level"]),
                    "type": row["subject"],
                    "solution": row["solution"],
                    "math500_id": row["unique_id"],
                },
            )
        )
    return examples


def _test_example(row: dict[str, Any], path: Any) -> Example:
    require_fields(
        row, ("problem", "level", "type", "solution", "idx"), path, f"row {row.get('idx')}"
    )
    gold = last_boxed(row["solution"])
    if not gold:
        raise DataError(
            f"{str(path)!r} problem {row['idx']}: the solution has no \\boxed{{}} answer"
        )
    level = row["level"].removeprefix("Level ").strip()
    return Example(
        id=f"{TASK}/{row['idx']}",
        task=TASK,
        query=row["problem"],
        answer=gold,
        meta={
            "level": int(level) if level.isdigit() else None,
            "type": row["type"],
            "solution": row["solution"],
        },
    )


def extract_answer(reply: str) -> Optional[str]:
    """The reply's final answer as LaTeX: the last ``\\boxed{}``/``\\fbox{}`` content (``""`` if
    that box is empty), else the math of the last answer statement, else ``None``."""
    boxed = last_boxed(reply)
    if boxed is not None:
        return boxed
    statement = last_answer_statement(reply)
    if not statement:
        return None
    inline = _INLINE_MATH.search(statement)
    if inline:
        return (inline.group(1) or inline.group(2)).strip()
    return re.split(r"\.(?:\s|$)", statement, maxsplit=1)[0].strip() or None


def _timeout_s() -> Optional[int]:
    # math-verify enforces its timeout with signal.alarm, which only the main thread may use.
    return VERIFY_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


def _parse(latex: str) -> list[Any]:
    return parse(f"\\boxed{{{latex}}}", parsing_timeout=_timeout_s())


def normalise_latex(latex: str) -> str:
    """Formatting-free LaTeX for string comparison: no spaces, ``\\left``/``\\right``, spacing
    commands, degree signs, ``\\text{}`` wrappers or trailing period; ``\\dfrac`` → ``\\frac``."""
    text = _TEXT_COMMAND.sub(r"\1", latex)
    text = _LATEX_NOISE.sub("", text).replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    return text.rstrip(".")


def is_equivalent(gold: str, predicted: str) -> tuple[bool, str]:
    """Whether two LaTeX answers are mathematically equal, and how that was decided."""
    try:
        gold_parsed, predicted_parsed = _parse(gold), _parse(predicted)
        if gold_parsed and predicted_parsed:
            return bool(
                verify(gold_parsed, predicted_parsed, timeout_seconds=_timeout_s())
            ), "math-verify"
    except TimeoutException:
        return normalise_latex(gold) == normalise_latex(
            predicted
        ), "string match (math-verify timed out)"
    return normalise_latex(gold) == normalise_latex(
        predicted
    ), "string match (math-verify could not parse)"


def evaluate(example: Example, reply: str) -> Score:
    """Equivalence of the reply's final answer with the gold answer (see the module docstring)."""
    predicted = extract_answer(reply)
    if predicted is None:
        return Score(False, None, "no \\boxed{} answer or answer statement in the reply")
    if not predicted:
        return Score(False, "", "the final \\boxed{} is empty")
    correct, method = is_equivalent(example.answer, predicted)
    verdict = "equals" if correct else "differs from"
    return Score(correct, predicted, f"{predicted} {verdict} gold {example.answer} ({method})")


def answer_key(reply: str) -> Optional[str]:
    """Voting key: the sympy form of the final answer as math-verify parses it (numbers made
    exact, so ``0.5`` and ``\\frac{1}{2}`` vote together), else its normalised LaTeX."""
    predicted = extract_answer(reply)
    if not predicted:
        return None
    try:
        parsed = _parse(predicted)
    except TimeoutException:
        parsed = []
    if not parsed:
        return normalise_latex(predicted)
    value = parsed[0]
    if isinstance(value, sympy.Number):
        value = sympy.nsimplify(value, rational=True)
    return str(value)

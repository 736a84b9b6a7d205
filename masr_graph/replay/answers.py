"""Reply synthesis for the replay backend: what a recorded LLM "says" to a recorded query.

A reply looks like a short model answer — one line of reasoning, then the answer in the
benchmark's natural form — so the real evaluators score it like any other reply:

==========  ===================================  =============================================
task        correct reply                        wrong reply (deterministic per LLM and query)
==========  ===================================  =============================================
gsm8k       ``#### <gold number>``               ``#### <another number>``: the gold number
                                                 moved by an offset chosen by a hash
math        ``\\boxed{<gold answer>}``            ``\\boxed{...}`` of a value the MATH evaluator
                                                 does *not* find equivalent to the gold answer
mmlu        ``Answer: <gold letter>``            ``Answer: <one of the three other letters>``
humaneval   the prompt's code with the           the same code with the entry point's body
            canonical solution, docstrings       replaced by a wrong one (``return None`` or
            removed, in a ```python block         ``raise NotImplementedError``), which fails
                                                 the tests when run
mbpp        the reference solution               the reference with the entry point's body
                                                 replaced likewise (a class: its constructor
                                                 raises)
==========  ===================================  =============================================

Wrong text answers are checked with the benchmark's own evaluator when synthesised: a candidate
the evaluator would accept is skipped for the next one (verdicts are memoised per query and
candidate). The exception is a MATH gold that is a plain number: another number cannot be
equivalent to it, and the sympy-based check costs ~10 ms. Code is not run here (that takes a
sandbox process); the test suite runs every synthesised code reply against its tests.

How often wrong agents agree decides what a vote is worth, so it is replayed at the rate real
LLMs show, not invented. A query has a list of wrong candidates (GSM8K 12, MATH 10, MMLU 3, code
2); its first is the query's "attractive" wrong answer, and a hash of (LLM, query) draws an LLM's
wrong answer: the attractive one with probability ``q``, else one of the others uniformly, with
``q`` set so that two wrong LLMs give the same wrong answer at :data:`WRONG_AGREEMENT`'s rate —
measured on the ZeroEval recordings (43 real LLMs' GSM8K replies: 0.412; 41 LLMs' MATH level-5
replies: 0.116; ``tests/test_replay.py`` recounts both from the data). MMLU has no recording of
wrong letters, so its three wrong letters are drawn uniformly (agreement 1/3), an assumption.

Modelling limit: every correct code reply to a query is the same program (the reference), so a
majority vote groups them; real models' correct programs differ in text, and the code answer key
(a hash of the syntax tree) would not group them. Votes over code are optimistic under replay.

HumanEval docstrings are left out of replies (the evaluator puts the prompt back in front of the
code), which keeps the longest correct reply under 512 tokens by :mod:`masr_graph.llm.tokens`'
rule — the runtime's default completion cap.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import math
import warnings
from fractions import Fraction
from typing import Callable, Sequence

from masr_graph.benchmarks.tasks import gsm8k, mmlu
from masr_graph.benchmarks.tasks.datasets import Example
from masr_graph.benchmarks.tasks.registry import evaluate

from ..errors import ConfigError, DataError

WRONG_CODE_BODIES: tuple[str, ...] = ("return None", "raise NotImplementedError({message!r})")
"""Bodies a wrong code reply's entry point gets. (Returning the first argument unchanged was
tried and rejected: it passes MBPP 698, whose tests compare dicts, which ignore order.)"""

_GSM8K_OFFSETS = (1, -1, 2, -2, 3, 5, -5, 10, -10, 4, 6, -3)
_MATH_OFFSETS = (1, -1, 2, 10, -2, 3, 5, -10, 4, 20)
_MATH_EXPRESSION_WRONGS = ("{gold}+1", "{gold}+2", "{gold}+3", "2*({gold})", "{gold}+4",
                           "{gold}+5", "0", "1", "2", "3")

WRONG_AGREEMENT: dict[str, float] = {"gsm8k": 0.412, "math": 0.116}
"""Probability that two LLMs wrong on the same question give the same wrong answer, measured
on the ZeroEval recordings with the project's evaluators (module docstring). Tasks not listed
draw their wrong candidates uniformly."""
_REASONING = {
    "gsm8k": "Working through the quantities in the problem step by step gives {answer}.",
    "math": "Solving the problem step by step leads to the result below.",
    "mmlu": "Weighing each option against the question, option {answer} fits best.",
    "humaneval": "Here is a complete implementation of the function.",
    "mbpp": "Here is a complete implementation.",
}


def _digest(*parts: str) -> int:
    """A stable 64-bit integer of ``parts`` (``hash()`` of a string differs across processes)."""
    joined = "\x1f".join(parts).encode()
    return int.from_bytes(hashlib.sha256(joined).digest()[:8], "big")


def synthesize_reply(example: Example, llm: str, correct: bool) -> str:
    """The reply ``llm`` gives to ``example`` when its recorded outcome is ``correct``.

    Deterministic: the same arguments always give the same text.

    Raises:
        ConfigError: ``example.task`` has no reply synthesiser.
        DataError: no wrong answer could be found that the evaluator rejects (never observed on
            the recorded data; the message names the example).
    """
    return _reply(example, llm, correct)


@functools.lru_cache(maxsize=65536)
def _reply(example: Example, llm: str, correct: bool) -> str:
    try:
        write = _WRITERS[example.task]
    except KeyError:
        raise ConfigError(
            f"the replay backend cannot write replies for task {example.task!r}; tasks: "
            f"{sorted(_WRITERS)}"
        ) from None
    return write(example, llm, correct)


def attractive_share(candidates: int, agreement: float) -> float:
    """``q`` such that two independent draws — the first candidate with probability ``q``, else
    one of the other ``candidates − 1`` uniformly — coincide with probability ``agreement``
    (``q² + (1 − q)² / (candidates − 1)``); ``1 / candidates`` (uniform) when ``agreement`` is
    below what uniform draws give."""
    n = candidates
    if n < 2 or agreement <= 1 / n:
        return 1 / n
    return (1 + math.sqrt(1 - n + n * agreement * (n - 1))) / n


def wrong_candidate(llm: str, example: Example, candidates: int) -> int:
    """Index of ``llm``'s wrong answer to ``example`` among ``candidates`` (see the module
    docstring): deterministic per (LLM, query), at the task's :data:`WRONG_AGREEMENT`."""
    agreement = WRONG_AGREEMENT.get(example.task, 1 / max(candidates, 1))
    q = attractive_share(candidates, agreement)
    u = _digest(llm, example.id) / 2**64
    if u < q or candidates < 2:
        return 0
    return 1 + min(int((u - q) / (1 - q) * (candidates - 1)), candidates - 2)


def _first_rejected(example: Example, llm: str, candidates: Sequence[str]) -> str:
    """The first candidate reply, starting at :func:`wrong_candidate` and wrapping around, that
    the benchmark's evaluator scores as wrong."""
    start = wrong_candidate(llm, example, len(candidates))
    for reply in (*candidates[start:], *candidates[:start]):
        if _evaluator_rejects(example, reply):
            return reply
    raise DataError(f"found no wrong answer the evaluator rejects for {example.id!r}")


@functools.lru_cache(maxsize=65536)
def _evaluator_rejects(example: Example, reply: str) -> bool:
    return not evaluate(example, reply).correct


def _gsm8k(example: Example, llm: str, correct: bool) -> str:
    if correct:
        return _text_reply("gsm8k", example.answer, f"#### {example.answer}")
    numbers = _shifted_numbers(Fraction(example.answer), _GSM8K_OFFSETS)
    return _first_rejected(
        example, llm, [_text_reply("gsm8k", number, f"#### {number}") for number in numbers]
    )


def _shifted_numbers(gold: Fraction, offsets: Sequence[int]) -> list[str]:
    """``gold`` moved by each offset, scaled with the gold's magnitude so that no wrong answer is
    within an evaluator's relative tolerance of a large gold; negative answers to non-negative
    golds are implausible and left out."""
    scale = max(1, 10 ** (len(str(abs(int(gold)))) - 2))
    shifted = [gold + offset * scale for offset in offsets]
    return [gsm8k.format_number(value) for value in shifted if value >= 0 or gold < 0]


def _math(example: Example, llm: str, correct: bool) -> str:
    if correct:
        return _math_reply(example.answer)
    number = gsm8k.parse_number(example.answer)
    if number is not None and gsm8k.format_number(number) == example.answer.strip():
        # A plain-number gold: another number can never be equivalent, so the (slow, sympy-based)
        # evaluator is not consulted.
        wrongs = _shifted_numbers(number, _MATH_OFFSETS)
        return _math_reply(wrongs[wrong_candidate(llm, example, len(wrongs))])
    # Expressions, intervals, text: shifted expressions, then plain numbers; the evaluator
    # decides which of them is really not equivalent.
    wrongs = [wrong.format(gold=example.answer) for wrong in _MATH_EXPRESSION_WRONGS]
    return _first_rejected(example, llm, [_math_reply(wrong) for wrong in wrongs])


def _math_reply(answer: str) -> str:
    return _text_reply("math", answer, f"The final answer is $\\boxed{{{answer}}}$.")


def _mmlu(example: Example, llm: str, correct: bool) -> str:
    letters = [example.answer] if correct else [x for x in mmlu.LETTERS if x != example.answer]
    replies = [_text_reply("mmlu", letter, f"Answer: {letter}") for letter in letters]
    return replies[0] if correct else _first_rejected(example, llm, replies)


def _text_reply(task: str, answer: str, final_line: str) -> str:
    return f"{_REASONING[task].format(answer=answer)}\n{final_line}"


def _code(example: Example, llm: str, correct: bool) -> str:
    entry_point = example.meta["entry_point"]
    if example.task == "humaneval":
        program = example.meta["prompt"] + example.meta["canonical_solution"]
    else:
        program = example.meta["code"]
    with warnings.catch_warnings():
        # Some reference solutions have escapes like "\w" in plain strings; not our business.
        warnings.simplefilter("ignore", (SyntaxWarning, DeprecationWarning))
        tree = _without_docstrings(ast.parse(program))
    if not correct:
        variant = _digest(llm, example.id) % len(WRONG_CODE_BODIES)
        _break_entry_point(tree, entry_point, variant, example.id)
    return f"{_REASONING[example.task]}\n```python\n{ast.unparse(tree)}\n```"


def _without_docstrings(tree: ast.Module) -> ast.Module:
    for node in ast.walk(tree):
        definition = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        if definition and _has_docstring(node):
            node.body = node.body[1:] or [ast.Pass()]
    return tree


def _has_docstring(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> bool:
    first = node.body[0] if node.body else None
    return (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
            and isinstance(first.value.value, str))


def _break_entry_point(tree: ast.Module, entry_point: str, variant: int, example_id: str) -> None:
    """Replace the body of the top-level definition named ``entry_point`` with wrong code."""
    for node in tree.body:
        if getattr(node, "name", None) != entry_point:
            continue
        message = f"{entry_point} is not implemented"
        if isinstance(node, ast.ClassDef):
            node.body = ast.parse(
                f"def __init__(self, *args, **kwargs):\n    raise NotImplementedError({message!r})"
            ).body
            return
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            parameters = [a.arg for a in (*node.args.posonlyargs, *node.args.args)]
            first = parameters[0] if parameters else "None"
            body = WRONG_CODE_BODIES[variant].format(first_argument=first, message=message)
            node.body = ast.parse(body).body
            return
    raise DataError(f"{example_id}: the reference code defines no {entry_point!r} at top level")


_WRITERS: dict[str, Callable[[Example, str, bool], str]] = {
    "gsm8k": _gsm8k,
    "math": _math,
    "mmlu": _mmlu,
    "humaneval": _code,
    "mbpp": _code,
}

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

A query has a short list of wrong candidates (GSM8K 12, MATH 4, MMLU 3, code 2) and a hash of
(LLM, query) says where in that list an LLM starts, so different LLMs usually give different
wrong answers and agreement among agents is evidence of correctness, as for real models; two
LLMs can still share a wrong answer.

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
_MATH_OFFSETS = (1, -1, 2, 10)
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


def _first_rejected(example: Example, llm: str, candidates: Sequence[str]) -> str:
    """The first candidate reply, starting at a place chosen by hashing ``(llm, example.id)`` and
    wrapping around, that the benchmark's evaluator scores as wrong."""
    start = _digest(llm, example.id) % len(candidates)
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
        return _math_reply(wrongs[_digest(llm, example.id) % len(wrongs)])
    # Expressions, intervals, text: a shifted expression, then plain numbers; the evaluator
    # decides which of them is really not equivalent.
    wrongs = [f"{example.answer}+1", f"{example.answer}+2", "1", "2"]
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

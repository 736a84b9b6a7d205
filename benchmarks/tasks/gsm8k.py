"""GSM8K (Cobbe et al., 2021): grade-school word problems with a numeric answer.

Data: ``gsm8k/{train,test}.jsonl`` with ``question`` and ``answer`` (a worked solution ending in
``#### N``). Example ids are ``gsm8k/<split>/<line index>``.

Scoring reads one number out of the reply and compares it with the gold answer by **exact
rational equality** (both sides as :class:`~fractions.Fraction`; no tolerance): GSM8K answers
are exact, and a relative tolerance of 1e-6 made ``1000001`` equal to a gold ``1000000`` (on the
ZeroEval recordings exactness costs one reply of 56,717: ``499.99999999999994`` for 500).
``18``, ``18.00`` and ``36/2`` are all 18. Where the number is taken from, first match wins:

1. the ``"answer"`` field of a JSON reply (``{"reasoning": ..., "answer": ...}``, read leniently:
   code fences, trailing prose, a cut-off reply), the number after its last ``=`` if it has one;
   when present the field decides, so a field without a number (``"Cannot be determined"``,
   ``null``, ``{"glasses": 86, "plates": 42}``) means no answer, not a number picked from the
   reasoning. A reply that opens a JSON object and is cut off before any ``"answer"`` field has
   no answer either (its last number is in the middle of the reasoning);
2. the last ``#### N`` line (GSM8K's own answer marker);
3. the last ``\\boxed{...}`` (after its last ``=`` if it holds an equation);
4. the last answer statement (``the answer is``, ``Final answer:`` ...);
5. the last number anywhere in the reply (the usual lenient GSM8K convention; this also reads
   a reply cut off mid-sentence by its last number).

Numbers keep their sign, thousands separators and decimals (``"1,000"`` is 1000, ``"-5"`` is -5,
``"3.5"`` is 3.5, ``"$1,234.50"`` is 1234.5) and simple fractions count (``1/2``,
``\\frac{1}{2}``); a minus glued to a preceding digit is an operator (``"3-5"`` reads 5), and units
or trailing periods are ignored. A number of more than :data:`MAX_DIGITS` digits is not read
(Python refuses to convert it, and no GSM8K answer is that long).

Call :func:`evaluate` and :func:`answer_key` through :mod:`masr_graph.benchmarks` (the registry),
which runs them in a scorer process with a timeout and memoises them; here they run inline.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Optional

from masr_graph.errors import ConfigError, DataError

from ..data.data_dir import PathLike, data_file, read_jsonl, require_fields
from .datasets import Example, Score
from .extraction import json_answer, json_cut_off, last_answer_statement, last_boxed

TASK = "gsm8k"
SPLITS = ("test", "train")
DATA_FILES = {"train": "gsm8k/train.jsonl", "test": "gsm8k/test.jsonl"}
MAX_DIGITS = 1000

_NUMBER = re.compile(
    r"""(?<![\w.])                      # a minus glued to a digit or word is an operator
        (?P<sign>[-−–])?\$?\s?
        (?P<body>
            \d{1,3}(?:,\d{3})+(?:\.\d+)?  # 1,000 / 1,234.50
          | \d+(?:\.\d+)?(?:\s?/\s?\d+)?    # 18 / 3.5 / 1/2
          | \.\d+                         # .5
        )""",
    re.VERBOSE,
)
_LATEX_FRACTION = re.compile(r"\\[dt]?frac\s*\{\s*([^{}]+?)\s*\}\s*\{\s*([^{}]+?)\s*\}")
_GSM8K_MARKER = re.compile(r"####\s*([^\n]*)")


def load_gsm8k(split: str = "test", data_dir: Optional[PathLike] = None) -> list[Example]:
    """Load a GSM8K split (``"train"``: 7,473 rows, ``"test"``: 1,319 rows).

    Raises:
        ConfigError: unknown ``split``.
        DataError: the file is missing or a row lacks ``question``/``answer`` or a ``####`` number.
    """
    if split not in SPLITS:
        raise ConfigError(f"unknown GSM8K split {split!r}; choose one of {list(SPLITS)}")
    path = data_file(DATA_FILES[split], data_dir)
    examples = []
    for index, row in enumerate(read_jsonl(path)):
        require_fields(row, ("question", "answer"), path, f"row {index}")
        marked = _GSM8K_MARKER.search(row["answer"])
        gold = parse_number(marked.group(1)) if marked else None
        if gold is None:
            raise DataError(f"{str(path)!r} row {index}: the answer has no '#### <number>' line")
        examples.append(
            Example(
                id=f"{TASK}/{split}/{index}",
                task=TASK,
                query=row["question"],
                answer=format_number(gold),
                meta={"solution": row["answer"]},
            )
        )
    return examples


def parse_number(text: str) -> Optional[Fraction]:
    """The first number in ``text`` as an exact fraction, or ``None``.

    >>> parse_number("$1,234.50 in total"), parse_number("-5"), parse_number("\\\\frac{1}{2}")
    (Fraction(2469, 2), Fraction(-5, 1), Fraction(1, 2))
    """
    numbers = _numbers(text)
    return numbers[0] if numbers else None


def _numbers(text: str) -> list[Fraction]:
    text = _LATEX_FRACTION.sub(r"\1/\2", text.replace("{,}", ","))
    numbers = []
    for match in _NUMBER.finditer(text):
        value = _to_fraction(match.group("body"))
        if value is not None:
            numbers.append(-value if match.group("sign") else value)
    return numbers


def _to_fraction(body: str) -> Optional[Fraction]:
    numerator, slash, denominator = body.replace(",", "").replace(" ", "").partition("/")
    if max(len(numerator), len(denominator)) > MAX_DIGITS:
        return None
    if slash and Fraction(denominator) == 0:
        return None
    value = Fraction(numerator)
    return value / Fraction(denominator) if slash else value


def format_number(value: Fraction) -> str:
    """Exact canonical text of a number: ``"1000"``, ``"-5"``, ``"3.5"``,
    ``"499.99999999999994"``, ``"1/3"`` (a fraction without a finite decimal form). Exact, so
    two numbers share a text (and a voting key) only when :func:`evaluate` finds them equal."""
    if value.denominator == 1:
        return str(value.numerator)
    denominator, twos, fives = value.denominator, 0, 0
    while denominator % 2 == 0:
        denominator, twos = denominator // 2, twos + 1
    while denominator % 5 == 0:
        denominator, fives = denominator // 5, fives + 1
    if denominator != 1:
        return f"{value.numerator}/{value.denominator}"
    places = max(twos, fives)
    digits = str(abs(value.numerator) * 10**places // value.denominator).rjust(places + 1, "0")
    sign = "-" if value < 0 else ""
    return f"{sign}{digits[:-places]}.{digits[-places:]}"


def extract_answer(reply: str) -> tuple[Optional[Fraction], str]:
    """The reply's final number and where it came from (``"json answer"``, ``"####"``,
    ``"boxed"``, ``"answer statement"``, ``"last number"``), or ``None`` and why there is none."""
    field = json_answer(reply)
    if field is not None:
        value = parse_number(field.rpartition("=")[2])
        if value is None:
            return None, f"the JSON answer {field[:60]!r} holds no number"
        return value, "json answer"
    if json_cut_off(reply):
        return None, 'the reply is cut off inside its JSON object, before an "answer" field'
    markers = _GSM8K_MARKER.findall(reply)
    if markers:
        value = parse_number(markers[-1])
        if value is not None:
            return value, "####"
    boxed = last_boxed(reply)
    if boxed:
        value = parse_number(boxed.rpartition("=")[2])
        if value is not None:
            return value, "boxed"
    statement = last_answer_statement(reply)
    if statement:
        value = parse_number(statement)
        if value is not None:
            return value, "answer statement"
    numbers = _numbers(reply)
    if numbers:
        return numbers[-1], "last number"
    return None, "no number in the reply"


def evaluate(example: Example, reply: str) -> Score:
    """Exact match of the reply's final number with the gold answer (see the module docstring)."""
    value, source = extract_answer(reply)
    if value is None:
        return Score(False, None, source)
    correct = value == Fraction(example.answer)
    extracted = format_number(value)
    verdict = "matches" if correct else "differs from"
    return Score(correct, extracted, f"{extracted} (from {source}) {verdict} gold {example.answer}")


def answer_key(reply: str) -> Optional[str]:
    """Voting key: the canonical text of the reply's final number (``"0.5"`` for ``1/2``)."""
    value, _ = extract_answer(reply)
    return None if value is None else format_number(value)

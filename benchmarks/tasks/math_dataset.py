"""MATH (Hendrycks et al., 2021): competition mathematics with a LaTeX final answer.

Data: ``math/test.jsonl`` (5,000 problems: ``problem``, ``level`` such as ``"Level 3"``, ``type``,
``solution``, ``idx``) and ``math/math500_test.jsonl`` (MATH-500, the 500-problem subset of the
test set chosen by OpenAI for PRM800K: ``problem``, ``solution``, ``answer``, ``subject``,
``level``, ``unique_id``). Every MATH-500 problem is one of the 5,000, and both sources share the
ids ``math/<idx>`` so results on either can be joined.

Gold answer: the content of the solution's last ``\\boxed{}`` (MATH-500: its curated ``answer``).

Where the final answer is read from, first match wins: the ``"answer"`` field of a JSON reply
(``{"reasoning": ..., "answer": ...}``, read leniently, see
:func:`~.extraction.json_answer`; the last box inside it if it holds one, its last ``$...$`` if
the math sits in a sentence); the reply's last complete ``\\boxed{}``/``\\fbox{}`` (balanced
braces); its last answer statement (``the answer is $x$``). Never a guess such as the last
character. When present the JSON field decides (an empty one is no answer), and a reply that
opens a JSON object and is cut off before any ``"answer"`` field has no answer. An empty box or a
reply without any of these is incorrect. Plain-text math, common in JSON answers (``sqrt(25)``,
``4√2``, ``25π``), is turned into LaTeX before math-verify reads it.

Judgement rules, applied before math-verify (each decides a case math-verify gets wrong):

* **Truncated final box = no answer.** A reply whose last box command opens ``{`` and never
  closes after the last complete box was cut off while writing its answer: it has no final
  answer, and no answer statement is read out of the unclosed box (math-verify would happily read
  ``\\boxed{4`` as 4).
* **An equation is a value only when its left side is a variable name.** Compared with a gold
  that is not an equation, ``x=4`` (or ``\\theta = 30^\\circ``, ``a_1 = 4``, ``x = 2+2 = 4``: the
  part after the last ``=``) is its right side, but ``2+2=4`` or ``f(x)=5`` is not 4 or 5
  (math-verify accepts any equation whose right side matches, ``2+2=5`` for 5 too). Golds that
  are equations (``y = 2x + 3``) are left to math-verify. The cost, measured on the ZeroEval
  recordings: 17 of 29,561 MATH replies are true worked computations ending in the gold value
  (``4*4*4*4=256``) and score as wrong.
* **A top-level comma list is a multiset.** ``1, 2`` (the answer to "enter all solutions") is
  compared item by item in any order, and both sides need the same number of items: ``2, 1``
  equals ``1, 2``, but ``1, 2, 2`` does not (math-verify turns both into the set {1, 2}), nor does
  ``3, 3`` equal ``3``. Commas inside brackets do not split, so tuples and intervals keep
  math-verify's ordered comparison (``(1, 2)`` is not ``(2, 1)``, ``[1, 2)`` is not ``(1, 2]``);
  a digit-comma-three-digits group is a thousands separator (``15,000``), as math-verify reads
  it; an item with one ``\\pm`` stands for its two values (``1 \\pm \\sqrt5``,
  ``\\frac{-1 \\pm \\sqrt5}{2}``, which math-verify cannot parse); a set ``\\{1, 2\\}`` compared
  with a list is read as its items; two sets are left to math-verify (set semantics).
* **A single letter is a letter, case-sensitively.** When the gold answer is one letter
  (``\\text{(E)}``, ``\\text{C}``, ``i``), the reply must be the same letter, up to
  ``\\text{}`` and ``( )`` wrappers: ``E`` and ``(E)`` match ``\\text{(E)}``, ``e`` does not
  (math-verify reads ``E`` and ``e`` both as Euler's number).

Otherwise equivalence is math-verify's (``parse``/``verify``: sympy-based, so ``\\frac12``,
``0.5`` and ``\\dfrac{1}{2}`` agree, as do ``(x+1)^2`` and ``x^2+2x+1``); two answers whose
normalised LaTeX is identical are equal without it, and if math-verify cannot parse a side,
normalised LaTeX strings are compared instead.

math-verify runs without its own timeout (``signal.alarm``, main thread only, cannot interrupt a
C-level big-integer power such as ``9^{9^{9^{9}}}``): the registry's :func:`evaluate` and
:func:`answer_key` run these functions in a scorer process that is killed after
:data:`~masr_graph.benchmarks.tasks.scorer_pool.TIMEOUT_S`, so call them through
:mod:`masr_graph.benchmarks`; called directly, they have no time limit.
"""

from __future__ import annotations

import re
from typing import Any, Iterator, Optional

import sympy
from math_verify import parse, verify

from masr_graph.errors import ConfigError, DataError

from ..data.data_dir import PathLike, data_file, read_jsonl, require_fields
from .datasets import Example, Score
from .extraction import (
    final_box_truncated,
    json_answer,
    json_cut_off,
    last_answer_statement,
    last_boxed,
    matching_braces,
)

TASK = "math"
SPLITS = ("test", "math500")
DATA_FILES = {"test": "math/test.jsonl", "math500": "math/math500_test.jsonl"}

_INLINE_MATH = re.compile(r"\$+([^$]+)\$+|\\\((.+?)\\\)")
_TEXT_COMMAND = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")
_LATEX_NOISE = re.compile(r"\\left|\\right|\\[,;:! ]|\\displaystyle|\^\{?\\circ\}?|\\\$|\s+")
_WRAPPER = re.compile(r"^\\(?:text|textbf|textrm|mathrm|mathbf|mbox)\s*\{")
_LETTER = re.compile(r"^\(?([A-Za-z])\)?\.?$")
_VARIABLE = re.compile(r"^(?:[A-Za-z]|\\[A-Za-z]+)(?:_(?:\{[^{}]*\}|[A-Za-z0-9]))?'*$")
_THOUSANDS = re.compile(r"(?<=\d)(?:\{,\}|,\\!)(?=\d{3}(?!\d))")
_OPEN = ("{", "(", "[", "\\{", "\\langle", "\\begin")
_CLOSE = ("}", ")", "]", "\\}", "\\rangle", "\\end")
_COMMAND = re.compile(r"\\(?:[A-Za-z]+|.|$)", re.DOTALL)
_GROUP = re.compile(r",\d{3}(?!\d)")
_PLUS_MINUS = re.compile(r"\\(?:pm|mp)(?![A-Za-z])")
_ROOT = re.compile(r"(?<![\\A-Za-z])sqrt\s*|√\s*")
_PLAIN_MATH = [
    (re.compile(r"(?<![\\A-Za-z])pi(?![A-Za-z])|π"), r"\\pi "),
    (re.compile(r"(?<![\\A-Za-z])infinity(?![A-Za-z])|∞"), r"\\infty "),
    (re.compile("·"), r"\\cdot "),
    (re.compile("²"), "^2"),
    (re.compile("³"), "^3"),
    (re.compile("°"), r"^\\circ "),
    (re.compile("⁄"), "/"),
]
_MAX_ITEMS = 20
"""Longest list compared item by item (a longer one is compared by math-verify as a whole)."""


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
    """The reply's final answer as LaTeX (``""`` if its final box is empty), or ``None``: see
    the module docstring for where it is read from."""
    return _extract(reply)[0]


def _extract(reply: str) -> tuple[Optional[str], str]:
    """The final answer and where it came from, or ``None`` and why there is none."""
    field = json_answer(reply)
    if field is not None:
        if final_box_truncated(field):
            return None, "the JSON answer's \\boxed{} never closes"
        boxed = last_boxed(field)
        answer = _math_of(field) if boxed is None else boxed
        if not answer:
            return None, "the JSON answer field holds no answer"
        return answer, "json answer"
    if json_cut_off(reply):
        return None, 'the reply is cut off inside its JSON object, before an "answer" field'
    if final_box_truncated(reply):
        return None, "the final \\boxed{} never closes (the reply was cut off)"
    boxed = last_boxed(reply)
    if boxed is not None:
        return boxed, "boxed"
    statement = last_answer_statement(reply)
    if not statement:
        return None, "no \\boxed{} answer, JSON answer or answer statement in the reply"
    inline = _INLINE_MATH.search(statement)
    if inline:
        return (inline.group(1) or inline.group(2)).strip(), "answer statement"
    sentence = re.split(r"\.(?:\s|$)", statement, maxsplit=1)[0].strip()
    if not sentence:
        return None, "the answer statement is empty"
    return sentence, "answer statement"


def _math_of(field: str) -> str:
    """The math of a JSON answer: the field itself, or its last ``$...$``/``\\(...\\)``
    when that math sits in a sentence (``"The sum is $17$."``)."""
    segments = list(_INLINE_MATH.finditer(field))
    if not segments:
        return field
    prose = _INLINE_MATH.sub(" ", field)
    if not re.search(r"[A-Za-z]{2,}", prose):
        return _unwrap(field)
    last = segments[-1]
    return (last.group(1) or last.group(2)).strip()


def _parse(latex: str) -> list[Any]:
    # No math-verify timeout (signal.alarm): the scorer process running this is killed instead.
    text = _THOUSANDS.sub("", _plain_math_to_latex(latex))
    return parse(f"\\boxed{{{text}}}", parsing_timeout=None)


def _plain_math_to_latex(text: str) -> str:
    """LaTeX for the plain-text math that JSON answers often hold, which math-verify misreads
    (``sqrt(25)`` as s·q·r·t·25, ``pi`` as p·i, ``4√2`` as 4): ``sqrt(x)``/``√(x)``/``√x`` ->
    ``\\sqrt{x}``, ``pi``/``π`` -> ``\\pi``, ``∞``/``infinity`` -> ``\\infty``, ``·`` -> ``\\cdot``,
    ``²``/``³`` -> powers, ``°`` -> ``^\\circ``, ``⁄`` -> ``/``."""
    for pattern, replacement in _PLAIN_MATH:
        text = pattern.sub(replacement, text)
    while True:
        root = _ROOT.search(text)
        if root is None:
            return text
        start = root.end()
        if start < len(text) and text[start] == "(":
            end = _closing_paren(text, start)
            if end < 0:
                return text
            text = f"{text[: root.start()]}\\sqrt{{{text[start + 1 : end]}}}{text[end + 1 :]}"
        else:
            operand = re.match(r"\d+(?:\.\d+)?|[A-Za-z]|\\[A-Za-z]+|\{[^{}]*\}", text[start:])
            if operand is None:
                return text
            body = operand.group(0).strip("{}")
            text = f"{text[: root.start()]}\\sqrt{{{body}}}{text[start + operand.end() :]}"


def _closing_paren(text: str, open_index: int) -> int:
    depth = 0
    for index in range(open_index, len(text)):
        depth += {"(": 1, ")": -1}.get(text[index], 0)
        if depth == 0:
            return index
    return -1


def normalise_latex(latex: str) -> str:
    """Formatting-free LaTeX for string comparison: no spaces, ``\\left``/``\\right``, spacing
    commands, degree signs, ``\\text{}`` wrappers or trailing period; ``\\dfrac`` → ``\\frac``."""
    text = _TEXT_COMMAND.sub(r"\1", latex)
    text = _LATEX_NOISE.sub("", text).replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    return text.rstrip(".")


def _unwrap(latex: str) -> str:
    """``latex`` without surrounding ``$``, quotes, backticks, ``\\( \\)``, ``\\[ \\]``,
    whitespace, a trailing period or a ``\\text{...}`` (``\\textbf``, ``\\mathrm`` ...) that
    wraps all of it."""
    text = latex.strip().strip('$"`').strip().removesuffix(".").strip()
    wrapped = re.fullmatch(r"\\\((.*)\\\)|\\\[(.*)\\\]", text, re.DOTALL)
    if wrapped:
        text = (wrapped.group(1) if wrapped.group(1) is not None else wrapped.group(2)).strip()
    while True:
        wrapper = _WRAPPER.match(text)
        if wrapper is None or matching_braces(text).get(wrapper.end() - 1) != len(text) - 1:
            return text
        text = text[wrapper.end() : -1].strip()


def _top_level(text: str) -> Iterator[tuple[int, str]]:
    """``(index, token)`` of each character or command (``\\pm``) outside every bracket pair:
    ``{}``, ``()``, ``[]`` (in any combination, so intervals such as ``[1, 2)`` count),
    ``\\{ \\}``, ``\\langle \\rangle`` and ``\\begin ... \\end``."""
    depth = 0
    index = 0
    while index < len(text):
        token = _COMMAND.match(text, index).group(0) if text[index] == "\\" else text[index]
        if token in _OPEN:
            depth += 1
        elif token in _CLOSE:
            depth -= 1
        elif depth == 0:
            yield index, token
        index += len(token)


def _items(latex: str) -> list[str]:
    """The items of a top-level comma list (one item if there is no such comma), each item with
    a single ``\\pm``/``\\mp`` (at any depth: ``\\frac{-1 \\pm \\sqrt5}{2}``) expanded into
    its two values."""
    text = _THOUSANDS.sub("", latex)
    cuts = [
        index
        for index, char in _top_level(text)
        if char == "," and not (text[index - 1 : index].isdigit() and _GROUP.match(text, index))
    ]
    pieces = [text[a + 1 : b].strip() for a, b in zip([-1, *cuts], [*cuts, len(text)])]
    items = []
    for piece in pieces:
        signs = list(_PLUS_MINUS.finditer(piece))
        if len(signs) != 1:
            items.append(piece)
            continue
        sign = signs[0]
        before, after = piece[: sign.start()], piece[sign.end() :]
        order = ("+", "-") if sign.group(0) == "\\pm" else ("-", "+")
        items += [f"{before}{operator}{after}" for operator in order]
    return items


def _set_items(latex: str) -> Optional[list[str]]:
    """The items of a set literal ``\\{a, b\\}`` (``\\left\\{ ... \\right\\}``), or ``None`` if
    ``latex`` is not one."""
    text = latex.strip()
    opened = re.match(r"^(?:\\left\s*)?\\\{", text)
    closed = re.search(r"(?:\\right\s*)?\\\}$", text)
    if opened is None or closed is None or opened.end() > closed.start():
        return None
    inner = text[opened.end() : closed.start()]
    depth = 0
    for index in range(len(inner)):
        if inner.startswith("\\{", index):
            depth += 1
        elif inner.startswith("\\}", index):
            depth -= 1
            if depth < 0:  # \{1\} \cup \{2\}: two sets, not one
                return None
    return _items(inner)


def _letter(latex: str) -> Optional[str]:
    """The letter, if ``latex`` is one letter (``E``, ``(E)``, ``\\text{(E)}``)."""
    match = _LETTER.match(_unwrap(latex).replace(" ", ""))
    return match.group(1) if match else None


def _equation_sides(latex: str) -> list[str]:
    """The sides of a top-level equation (``x = 2+2 = 4`` -> three sides); ``[]`` if none."""
    cuts = [
        index
        for index, char in _top_level(latex)
        if char == "="
        and latex[index - 1 : index] not in ("<", ">", "!", ":")
        and latex[index + 1 : index + 2] != "="
    ]
    if not cuts:
        return []
    return [latex[a + 1 : b].strip() for a, b in zip([-1, *cuts], [*cuts, len(latex)])]


def is_equivalent(gold: str, predicted: str) -> tuple[bool, str]:
    """Whether two LaTeX answers are mathematically equal under the module's judgement rules,
    and how that was decided."""
    gold, predicted = _unwrap(gold), _unwrap(predicted)
    if normalise_latex(gold) == normalise_latex(predicted):
        return True, "same LaTeX"
    gold_items, predicted_items = _items(gold), _items(predicted)
    if len(gold_items) == 1 and len(predicted_items) == 1:
        return _item_equivalent(gold, predicted)
    # One side is a list: a set literal on the other side is read as its items.
    if len(gold_items) == 1:
        gold_items = _set_items(gold) or gold_items
    if len(predicted_items) == 1:
        predicted_items = _set_items(predicted) or predicted_items
    if len(gold_items) != len(predicted_items):
        return False, f"a list of {len(predicted_items)} items, gold has {len(gold_items)}"
    if len(gold_items) > _MAX_ITEMS:
        return _math_verify(gold, predicted)
    return _multiset_equal(gold_items, predicted_items), "lists compared as multisets"


def _item_equivalent(gold: str, predicted: str) -> tuple[bool, str]:
    """Equivalence of two single answers (no top-level list)."""
    gold, predicted = _unwrap(gold), _unwrap(predicted)
    if normalise_latex(gold) == normalise_latex(predicted):
        return True, "same LaTeX"
    letter = _letter(gold)
    if letter is not None:
        return _letter(predicted) == letter, "compared as letters"
    sides = _equation_sides(predicted)
    if sides and not _equation_sides(gold):
        if not _VARIABLE.match(sides[0].replace(" ", "")):
            return False, f"the equation's left side {sides[0]!r} is not a variable name"
        return _item_equivalent(gold, sides[-1])
    return _math_verify(gold, predicted)


def _math_verify(gold: str, predicted: str) -> tuple[bool, str]:
    gold_parsed, predicted_parsed = _parse(gold), _parse(predicted)
    if gold_parsed and predicted_parsed:
        return bool(verify(gold_parsed, predicted_parsed, timeout_seconds=None)), "math-verify"
    return False, "math-verify could not parse, and the LaTeX differs"


def _multiset_equal(gold_items: list[str], predicted_items: list[str]) -> bool:
    """Whether the predicted items can be paired one-to-one with equivalent gold items
    (bipartite matching with augmenting paths, each pair compared at most once)."""
    verdicts: dict[tuple[int, int], bool] = {}

    def equal(g: int, p: int) -> bool:
        if (g, p) not in verdicts:
            verdicts[g, p] = _item_equivalent(gold_items[g], predicted_items[p])[0]
        return verdicts[g, p]

    owner: dict[int, int] = {}

    def assign(g: int, seen: set[int]) -> bool:
        for p in range(len(predicted_items)):
            if p not in seen and equal(g, p):
                seen.add(p)
                if p not in owner or assign(owner[p], seen):
                    owner[p] = g
                    return True
        return False

    return all(assign(g, set()) for g in range(len(gold_items)))


def evaluate(example: Example, reply: str) -> Score:
    """Equivalence of the reply's final answer with the gold answer (see the module docstring)."""
    predicted, source = _extract(reply)
    if predicted is None:
        return Score(False, None, source)
    if not predicted:
        return Score(False, "", f"the final answer is empty (from {source})")
    correct, method = is_equivalent(example.answer, predicted)
    verdict = "equals" if correct else "differs from"
    return Score(
        correct,
        predicted,
        f"{predicted} (from {source}) {verdict} gold {example.answer} ({method})",
    )


def answer_key(reply: str) -> Optional[str]:
    """Voting key: answers equivalent under the judgement rules share a key where that is cheap
    to see. A list is the sorted keys of its items; an equation whose left side is a variable
    name is its right side; a single letter is itself (case kept); anything else is its sympy
    form as math-verify parses it (numbers made exact, so ``0.5`` and ``\\frac{1}{2}`` vote
    together), else its normalised LaTeX. ``None`` without a final answer."""
    predicted = extract_answer(reply)
    if not predicted:
        return None
    items = _items(_unwrap(predicted))
    if len(items) > 1:
        return "[" + ", ".join(sorted(_item_key(item) for item in items)) + "]"
    return _item_key(predicted)


def _item_key(latex: str) -> str:
    latex = _unwrap(latex)
    letter = _letter(latex)
    if letter is not None:
        return letter
    sides = _equation_sides(latex)
    if sides and _VARIABLE.match(sides[0].replace(" ", "")):
        return _item_key(sides[-1])
    parsed = _parse(latex)
    if not parsed:
        return normalise_latex(latex)
    value = parsed[0]
    if isinstance(value, sympy.Number):
        value = sympy.nsimplify(value, rational=True)
    return str(value)

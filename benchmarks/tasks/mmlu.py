"""MMLU (Hendrycks et al., 2021): four-option multiple choice over 57 subjects.

Data: ``mmlu/{dev,val,test}/<subject>_<split>.csv`` without a header: question, the four options,
the answer letter. Example ids are ``mmlu/<split>/<subject>/<row index>``; the query is the
question followed by one ``"A. ..."`` line per option.

Scoring extracts one letter A-D, preferring explicit statements over incidental capitals (the
article "A" in a sentence is never read as an answer). The first rule that finds an answer span
decides (a later rule is not consulted when that span turns out to be no answer):

1. the ``"answer"`` field of a JSON reply (``{"reasoning": ..., "answer": "C"}``); when present
   it decides (a field naming no option is no answer);
2. the last non-empty ``\\boxed{}`` holding a letter (``\\boxed{C}``, ``\\boxed{\\text{(C)}}``);
3. the last answer statement (``Answer: C``, ``the answer is (C)``, ``The correct option is C.``);
4. the reply's last non-blank lines, when they start with an option marker (``(C) Paris``,
   ``C. Paris``, ``C)``, ``C:``), so options discussed earlier in the reasoning do not count;
5. a reply that is a bare letter, possibly wrapped in ``( )``, ``**`` or a trailing period.

Judgement rules:

* **Several distinct letters = no answer.** When the chosen span names more than one option,
  joined by ``,``, ``/``, ``&``, ``or`` or ``and`` (``Answer: A, C``, ``The answer is A or B``,
  ``\\boxed{A, C}``, ``A/B``), the reply hedges and is scored as unanswered; repeating one letter
  (``C or C``) is still that letter. Only the letters at the start of the span count, so
  ``C, because A is wrong`` is C.
* **Restated options are not an answer.** If the reply ends with option-marker lines naming
  several letters (the reply only repeats ``A. ...`` ``B. ...`` ``C. ...`` ``D. ...``, possibly
  with blank lines between them), rule 4 gives no answer; one trailing option line (``(D)
  Paris``) is an answer.
* **Lower-case letters** count when they are the whole reply (``b``, ``(c)``, ``c.``), sit in a
  box (``\\boxed{c}``), are visibly marked as an option (``the answer is (c)``) or make up the
  whole JSON answer or the whole rest of an answer statement (``Answer: b``);
  ``the answer is a prime number`` is not option A. Option-marker lines must be upper case
  (``(a)`` also numbers steps of reasoning).

An empty ``\\boxed{}`` is not an answer (never a crash); with nothing else the reply scores as
unanswered.

Call :func:`evaluate` and :func:`answer_key` through :mod:`masr_graph.benchmarks` (the registry),
which runs them in a scorer process with a timeout and memoises them; here they run inline.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Optional

from masr_graph.errors import ConfigError, DataError

from ..data.data_dir import PathLike, resolve_data_dir
from .datasets import Example, Score
from .extraction import json_answer, last_answer_statement, last_boxed

TASK = "mmlu"
SPLITS = ("test", "dev", "val")
LETTERS = ("A", "B", "C", "D")
DATA_DIRS = {split: f"mmlu/{split}" for split in SPLITS}

_LETTER_TOKEN = re.compile(
    r"[\s*_\[{]*(?:\\text\{|\\textbf\{|\\mathrm\{)?(?P<open>\()?(?P<letter>[A-Da-d])\)?\}?"
    r"(?![A-Za-z0-9])"
)
_LETTER_SEPARATOR = re.compile(r"[\s*_)\]}]*(?:,|/|&|\band/or\b|\bor\b|\band\b)", re.IGNORECASE)
_OPTION_PREFIX = re.compile(r"^(?:option|choice)\s*", re.IGNORECASE)
_SPAN_END = re.compile(r"[\s*_)\]}.!]*$")
_OPTION_LINE = re.compile(r"^[\s*_>#-]*(?:\(([A-D])\)|([A-D])[.):](?!\d))")
_BARE_LETTER = re.compile(r"^[\s*_(\[]*([A-Da-d])[\s*_)\].]*$")


def subject_files(split: str, data_dir: Optional[PathLike] = None) -> list[Path]:
    """The CSV files of one split, sorted by name (the order checksums are taken in).

    Raises:
        ConfigError: unknown ``split``.
        DataError: the split's folder is missing or holds no ``*_<split>.csv`` file.
    """
    if split not in SPLITS:
        raise ConfigError(f"unknown MMLU split {split!r}; choose one of {list(SPLITS)}")
    folder = resolve_data_dir(data_dir) / DATA_DIRS[split]
    files = sorted(folder.glob(f"*_{split}.csv"))
    if not files:
        raise DataError(
            f"no MMLU files {str(folder / f'*_{split}.csv')!r}; expected the layout "
            "mmlu/<split>/<subject>_<split>.csv of shared/data/README.md (set MASR_DATA_DIR or "
            "pass data_dir)"
        )
    return files


def format_query(question: str, choices: list[str]) -> str:
    """The text agents see: the question, then one ``"A. option"`` line per option."""
    lines = [question.strip()] + [
        f"{letter}. {choice}" for letter, choice in zip(LETTERS, choices, strict=True)
    ]
    return "\n".join(lines)


def load_mmlu(split: str = "test", data_dir: Optional[PathLike] = None) -> list[Example]:
    """Load an MMLU split (``"dev"``: 285 rows, ``"val"``: 1,531, ``"test"``: 14,042), every
    subject, ordered by subject then row. ``meta`` holds ``subject`` and ``choices``.

    Raises:
        ConfigError: unknown ``split``.
        DataError: files are missing or a row is not question, four options, a letter A-D.
    """
    examples = []
    for path in subject_files(split, data_dir):
        subject = path.name.removesuffix(f"_{split}.csv")
        with open(path, newline="", encoding="utf-8") as handle:
            for index, row in enumerate(csv.reader(handle)):
                if len(row) != 6 or row[5].strip() not in LETTERS:
                    raise DataError(
                        f"{str(path)!r} row {index}: expected question, 4 options and a letter "
                        f"{list(LETTERS)}, got {len(row)} fields ending {row[-1:]!r}"
                    )
                examples.append(
                    Example(
                        id=f"{TASK}/{split}/{subject}/{index}",
                        task=TASK,
                        query=format_query(row[0], row[1:5]),
                        answer=row[5].strip(),
                        meta={"subject": subject, "choices": row[1:5]},
                    )
                )
    return examples


def extract_letter(reply: str) -> tuple[Optional[str], str]:
    """The chosen option letter and where it came from (``"json answer"``, ``"boxed"``,
    ``"answer statement"``, ``"option line"``, ``"bare letter"``), or ``None`` and why there is
    no answer (see the module docstring)."""
    field = json_answer(reply)
    if field is not None:
        letters = _leading_letters(_OPTION_PREFIX.sub("", field), lower_case=False)
        if not letters:
            return None, f"the JSON answer {field[:60]!r} names no option"
        return _one_letter(letters, "json answer")
    boxed = last_boxed(reply)
    if boxed:
        letters = _leading_letters(boxed, lower_case=True)
        if letters:
            return _one_letter(letters, "boxed")
    statement = last_answer_statement(reply)
    if statement:
        letters = _leading_letters(_OPTION_PREFIX.sub("", statement), lower_case=False)
        if letters:
            return _one_letter(letters, "answer statement")
    trailing = _trailing_option_letters(reply)
    if trailing:
        return _one_letter(trailing, "option line")
    bare = _BARE_LETTER.match(reply)
    if bare:
        return bare.group(1).upper(), "bare letter"
    return None, "no option letter A-D in the reply"


def _leading_letters(span: str, *, lower_case: bool) -> list[str]:
    """The option letters at the start of ``span`` (``"A, C"`` -> ``["A", "C"]``), upper-cased;
    ``[]`` if it does not start with one. Without ``lower_case`` a lower-case letter counts only
    when marked as an option (``(c)``) or when the letters are all of the span (``b.``)."""
    letters = []
    matches = []
    position = 0
    while True:
        match = _LETTER_TOKEN.match(span, position)
        if match is None:
            break
        matches.append(match)
        letters.append(match.group("letter"))
        separator = _LETTER_SEPARATOR.match(span, match.end())
        if separator is None:
            break
        position = separator.end()
    if not matches:
        return []
    whole = _SPAN_END.match(span, matches[-1].end()) is not None
    for index, match in enumerate(matches):
        marked = match.group("open") is not None
        if match.group("letter").islower() and not (lower_case or marked or whole):
            # "C and a dog": an unmarked lower-case letter inside prose is an article, not B/A/...
            return [letter.upper() for letter in letters[:index]]
    return [letter.upper() for letter in letters]


def _trailing_option_letters(reply: str) -> list[str]:
    """Letters of the option-marker lines that end the reply (blank lines skipped), last first;
    ``[]`` if its last non-blank line is not one."""
    letters = []
    for line in reversed(reply.splitlines()):
        if not line.strip():
            continue
        option_line = _OPTION_LINE.match(line)
        if option_line is None:
            break
        letters.append(option_line.group(1) or option_line.group(2))
    return letters


def _one_letter(letters: list[str], source: str) -> tuple[Optional[str], str]:
    distinct = sorted(set(letters))
    if len(distinct) == 1:
        return distinct[0], source
    if source == "option line":
        return None, f"the reply ends by restating options {', '.join(distinct)}"
    span = {"boxed": "boxed answer", "json answer": "JSON answer"}.get(source, source)
    return None, f"the {span} names several options ({', '.join(distinct)})"


def evaluate(example: Example, reply: str) -> Score:
    """Exact match of the extracted option letter with the gold letter."""
    letter, source = extract_letter(reply)
    if letter is None:
        return Score(False, None, f"no answer: {source}")
    correct = letter == example.answer
    verdict = "matches" if correct else "differs from"
    return Score(correct, letter, f"{letter} (from {source}) {verdict} gold {example.answer}")


def answer_key(reply: str) -> Optional[str]:
    """Voting key: the extracted option letter."""
    return extract_letter(reply)[0]

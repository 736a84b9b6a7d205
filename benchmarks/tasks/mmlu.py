"""MMLU (Hendrycks et al., 2021): four-option multiple choice over 57 subjects.

Data: ``mmlu/{dev,val,test}/<subject>_<split>.csv`` without a header: question, the four options,
the answer letter. Example ids are ``mmlu/<split>/<subject>/<row index>``; the query is the
question followed by one ``"A. ..."`` line per option.

Scoring extracts one letter A-D, preferring explicit statements over incidental capitals (the
article "A" in a sentence is never read as an answer). First match wins:

1. the last non-empty ``\\boxed{}`` holding a letter (``\\boxed{C}``, ``\\boxed{\\text{(C)}}``);
2. the last answer statement (``Answer: C``, ``the answer is (C)``, ``The correct option is C.``);
3. the reply's last non-blank line, when it starts with an option marker (``(C) Paris``,
   ``C. Paris``, ``C)``, ``C:``), so options restated earlier in the reasoning do not count;
4. a reply that is a bare letter, possibly wrapped in ``( )``, ``**`` or a trailing period.

An empty ``\\boxed{}`` is not an answer (never a crash); with nothing else the reply scores as
unanswered.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Optional

from masr_graph.errors import ConfigError, DataError

from ..data.data_dir import PathLike, resolve_data_dir
from .datasets import Example, Score
from .extraction import last_answer_statement, last_boxed

TASK = "mmlu"
SPLITS = ("test", "dev", "val")
LETTERS = ("A", "B", "C", "D")
DATA_DIRS = {split: f"mmlu/{split}" for split in SPLITS}

_LETTER_IN_TEXT = r"[\s*_(\[{]*(?:\\text\{|\\textbf\{|\\mathrm\{)?\(?([A-D])\)?(?![A-Za-z0-9])"
_BOXED_LETTER = re.compile(r"^" + _LETTER_IN_TEXT)
_STATEMENT_LETTER = re.compile(r"^(?:option|choice)?" + _LETTER_IN_TEXT, re.IGNORECASE)
_OPTION_LINE = re.compile(r"^[\s*_>#-]*(?:\(([A-D])\)|([A-D])[.):](?!\d))")
_BARE_LETTER = re.compile(r"^[\s*_(\[]*([A-D])[\s*_)\].]*$")


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
    """The chosen option letter and where it came from (``"boxed"``, ``"answer statement"``,
    ``"option line"``, ``"bare letter"`` or ``"none"``)."""
    boxed = last_boxed(reply)
    if boxed:
        match = _BOXED_LETTER.match(boxed)
        if match:
            return match.group(1), "boxed"
    statement = last_answer_statement(reply)
    if statement:
        match = _STATEMENT_LETTER.match(statement)
        if match and _is_letter_not_word(statement, match):
            return match.group(1).upper(), "answer statement"
    lines = [line for line in reply.splitlines() if line.strip()]
    option_line = _OPTION_LINE.match(lines[-1]) if lines else None
    if option_line:
        return option_line.group(1) or option_line.group(2), "option line"
    bare = _BARE_LETTER.match(reply)
    if bare:
        return bare.group(1), "bare letter"
    return None, "none"


def _is_letter_not_word(statement: str, match: re.Match[str]) -> bool:
    # "the answer is a prime" must not read as option A: a lowercase letter only counts when
    # it is visibly marked as an option, e.g. "(c)".
    letter_at = match.start(1)
    if statement[letter_at].isupper():
        return True
    return letter_at > 0 and statement[letter_at - 1] == "("


def evaluate(example: Example, reply: str) -> Score:
    """Exact match of the extracted option letter with the gold letter."""
    letter, source = extract_letter(reply)
    if letter is None:
        return Score(False, None, "no option letter A-D in the reply")
    correct = letter == example.answer
    verdict = "matches" if correct else "differs from"
    return Score(correct, letter, f"{letter} (from {source}) {verdict} gold {example.answer}")


def answer_key(reply: str) -> Optional[str]:
    """Voting key: the extracted option letter."""
    return extract_letter(reply)[0]

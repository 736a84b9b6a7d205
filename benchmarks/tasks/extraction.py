"""Finding the final answer inside free-form LLM replies, shared by the GSM8K, MATH and MMLU
evaluators.

Two markers are recognised: a LaTeX box (``\\boxed{...}``, ``\\boxed 5``, ``\\fbox{...}``),
read with balanced braces so nested ``\\frac{a}{b}`` survives, and an answer statement (``the
answer is``, ``Final answer:``, ``Answer =`` ...). In both cases the *last* occurrence wins,
because replies often revise themselves and state the final result at the end.
"""

from __future__ import annotations

import re
from typing import Optional

_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])\s*")
_BARE_BOX_ARGUMENT = re.compile(r"[^\s$]+")
_ANSWER_STATEMENT = re.compile(
    r"(?:final\s+answer|answer|correct\s+(?:option|choice))\s*\**\s*(?:is\s*\**\s*[:=]?|[:=])\s*\**",
    re.IGNORECASE,
)


def last_boxed(text: str) -> Optional[str]:
    """Content of the last complete ``\\boxed{...}``/``\\fbox{...}`` (or ``\\boxed x``) in ``text``.

    Returns ``""`` for an empty box (the caller decides what an empty final answer means) and
    ``None`` when there is no complete box. A box whose braces never close (a truncated reply) is
    skipped in favour of an earlier complete one.
    """
    for command in reversed(list(_BOX_COMMAND.finditer(text))):
        start = command.end()
        if start < len(text) and text[start] == "{":
            content = _balanced_group(text, start)
            if content is not None:
                return content.strip()
        else:
            bare = _BARE_BOX_ARGUMENT.match(text, start)
            if bare is not None:
                return bare.group(0).rstrip(".,;")
    return None


def _balanced_group(text: str, open_index: int) -> Optional[str]:
    """Text between the ``{`` at ``open_index`` and its matching ``}``; escaped braces (``\\{``)
    do not count. ``None`` if it never closes."""
    depth = 0
    index = open_index
    while index < len(text):
        char = text[index]
        if char == "\\":
            index += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[open_index + 1 : index]
        index += 1
    return None


def last_answer_statement(text: str) -> Optional[str]:
    """What follows the last answer statement (``the answer is``, ``Final answer:``,
    ``The correct option is`` ...): the rest of that line, or the next non-blank line when the
    statement ends its line. ``None`` if the reply has no such statement."""
    statements = list(_ANSWER_STATEMENT.finditer(text))
    if not statements:
        return None
    rest = text[statements[-1].end() :]
    first_line, _, following = rest.partition("\n")
    if first_line.strip():
        return first_line.strip()
    for line in following.split("\n"):
        if line.strip():
            return line.strip()
    return ""

"""Finding the final answer inside free-form LLM replies, shared by the GSM8K, MATH and MMLU
evaluators.

Three markers are recognised: a LaTeX box (``\\boxed{...}``, ``\\boxed 5``, ``\\fbox{...}``),
read with balanced braces so nested ``\\frac{a}{b}`` survives; an answer statement (``the
answer is``, ``Final answer:``, ``Answer =`` ...); and the ``"answer"`` field of a JSON object
(``{"reasoning": ..., "answer": ...}``, the form evaluation harnesses such as ZeroEval ask for),
read leniently because models wrap it in code fences, follow it with prose, leave LaTeX
backslashes unescaped or are cut off after the field. For boxes and statements the *last*
occurrence wins, because replies often revise themselves and state the final result at the end.
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterator, Optional

_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])\s*")
_BARE_BOX_ARGUMENT = re.compile(r"[^\s$]+")
_BRACE_OR_ESCAPE = re.compile(r"\\.|[{}]", re.DOTALL)
# [\s*]* rather than \s*\**\s*: the latter backtracks quadratically over a long run of spaces
# (degenerate replies have them), 1.8 s for 16,000 spaces.
_ANSWER_STATEMENT = re.compile(
    r"(?:final\s+answer|answer|correct\s+(?:option|choice))[\s*]*(?:is[\s*]*[:=]?|[:=])[\s*]*",
    re.IGNORECASE,
)
# The key (quoted as JSON wants, or with a quote missing on one side, escaped inside a string
# or in backticks: models write all of these), then its value: a string, possibly never closed,
# a string with escaped quotes (the field quoted inside the reasoning), or a bare scalar such as
# 42 / -3.5 / null. A doubled key ("answer": "answer": "7.5") is read through.
_KEY = r'(?:(?:\\?["`])answer(?:\\?["`])?|answer\\?["`])\s*:\s*'
_JSON_ANSWER = re.compile(
    rf"{_KEY}(?:{_KEY})?"
    r'(?:\\"(?P<quoted>.*?)\\"|"(?P<string>(?:[^"\\]|\\.)*)(?P<closed>")?|(?P<scalar>[^\s,}\]]+))',
    re.DOTALL,
)
_ADJACENT_STRING = re.compile(r'\s*"((?:[^"\\]|\\.)*)"(?!\s*:)')
_FENCE = re.compile(r"^```\s*[A-Za-z]*\s*")
_DECODED_LATEX = re.compile(r"[\x08\x0c]|[\t\r\n][A-Za-z]")
_JSON_ESCAPES = {'"': '"', "/": "/", "n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f"}


def _boxes(text: str) -> Iterator[Optional[str]]:
    """Each box's content, in order; ``None`` for a ``{`` that never closes (a truncated reply).
    One pass over the text, however many boxes it has."""
    closing = matching_braces(text)
    for command in _BOX_COMMAND.finditer(text):
        start = command.end()
        if start < len(text) and text[start] == "{":
            end = closing.get(start)
            yield None if end is None else text[start + 1 : end].strip()
        else:
            bare = _BARE_BOX_ARGUMENT.match(text, start)
            if bare is not None:
                yield bare.group(0).rstrip(".,;")


def matching_braces(text: str) -> dict[int, int]:
    """Index of each ``{`` -> index of its matching ``}``; escaped braces (``\\{``) do not
    count, and a ``{`` that never closes is absent."""
    closing: dict[int, int] = {}
    opened: list[int] = []
    for match in _BRACE_OR_ESCAPE.finditer(text):
        token = match.group(0)
        if token == "{":
            opened.append(match.start())
        elif token == "}" and opened:
            closing[opened.pop()] = match.start()
    return closing


def last_boxed(text: str) -> Optional[str]:
    """Content of the last complete ``\\boxed{...}``/``\\fbox{...}`` (or ``\\boxed x``) in ``text``.

    Returns ``""`` for an empty box (the caller decides what an empty final answer means) and
    ``None`` when there is no complete box. A box whose braces never close (a truncated reply) is
    skipped in favour of an earlier complete one; :func:`final_box_truncated` tells the caller
    that happened.
    """
    complete = [content for content in _boxes(text) if content is not None]
    return complete[-1] if complete else None


def final_box_truncated(text: str) -> bool:
    """Whether the reply's last box command is a ``\\boxed{``/``\\fbox{`` that never closes (after
    the last complete box, if any): the reply was cut off while writing its final answer."""
    truncated = False
    for content in _boxes(text):
        truncated = content is None
    return truncated


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


def json_answer(text: str) -> Optional[str]:
    """The ``"answer"`` field of the reply's JSON object, as text: ``None`` if the reply has no
    such field, ``""`` if it has one that holds no answer (``null``, ``""``, an object such as
    ``{"glasses": 86, "plates": 42}``, or a string cut off before it closes).

    Strict JSON is tried first (the whole reply, else the object from the first ``{`` to the last
    ``}``, which drops code fences and trailing prose); a number becomes its text (``42`` ->
    ``"42"``), a list its items joined by commas. If that fails (unescaped LaTeX backslashes such
    as ``"\\frac{1}{2}"``, a reply cut off after the field, a doubled key ``"answer": "answer":
    "7.5"``, strings side by side ``"answer": "Cost:" "\\n- profit $60"``, the field quoted
    inside the reasoning as ``\\"answer\\": \\"3\\"``, a key missing a quote ``answer": "4"``
    or in backticks), the last ``"answer": ...`` field is read directly, keeping any backslash
    that is not a JSON escape as LaTeX.
    """
    if "answer" not in text:
        return None
    for candidate in (text, text[text.find("{") : text.rfind("}") + 1]):
        try:
            # strict=False: raw line breaks inside strings are common and harmless.
            parsed = json.loads(candidate, strict=False)
        except ValueError:
            continue
        if not (isinstance(parsed, dict) and "answer" in parsed):
            break
        value = parsed["answer"]
        # "\frac" or "\times" written unescaped is valid JSON (\f, \t): decoded, it turns into
        # a control character, so such a string is read leniently below instead.
        if not (isinstance(value, str) and _DECODED_LATEX.search(value)):
            return _json_value_text(value)
        break
    fields = list(_JSON_ANSWER.finditer(text))
    if not fields:
        return None
    field = fields[-1]
    if field.group("quoted") is not None:
        return field.group("quoted").strip()
    if field.group("scalar") is not None:
        scalar = field.group("scalar").strip()
        return "" if scalar in ("null", "{", "[") else scalar
    if field.group("closed") is None:
        return ""
    # "a" "b" "c": strings written side by side (JavaScript/Python style) continue the answer.
    pieces = [field.group("string")]
    position = field.end()
    while (more := _ADJACENT_STRING.match(text, position)) is not None:
        pieces.append(more.group(1))
        position = more.end()
    return _unescape_lenient("".join(pieces)).strip()


def json_cut_off(text: str) -> bool:
    """Whether the reply is a JSON object that was cut off: it opens with ``{`` (after an
    optional code fence), that brace never closes and the reply does not end with a closing
    code fence (a model that closed its fence finished, however malformed its JSON). Callers ask
    after :func:`json_answer` found no field: such a reply stopped in its reasoning, and its last
    number is not an answer."""
    start = _FENCE.sub("", text.lstrip(), count=1)
    offset = len(text) - len(start)
    return (
        start.startswith("{")
        and offset not in matching_braces(text)
        and not text.rstrip().endswith("```")
    )


def _json_value_text(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return ""
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list):
        return ", ".join(item for item in map(_json_value_text, value) if item)
    return ""


def _unescape_lenient(body: str) -> str:
    """JSON string escapes decoded, except that ``\\`` before anything other than ``"``, ``\\``,
    ``/`` or a JSON letter escape followed by a non-letter is kept: ``\\frac`` stays LaTeX, while
    ``\\n`` is a newline. ``\\u`` escapes are decoded when well formed."""
    out = []
    index = 0
    while index < len(body):
        char = body[index]
        if char != "\\" or index + 1 == len(body):
            out.append(char)
            index += 1
            continue
        following = body[index + 1]
        after = body[index + 2 : index + 3]
        if following == "\\":
            out.append("\\")
            index += 2
        elif following in _JSON_ESCAPES and not (following.isalpha() and after.isalpha()):
            out.append(_JSON_ESCAPES[following])
            index += 2
        elif following == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", body[index + 2 : index + 6]):
            out.append(chr(int(body[index + 2 : index + 6], 16)))
            index += 6
        else:
            out.append("\\")
            index += 1
    return "".join(out)

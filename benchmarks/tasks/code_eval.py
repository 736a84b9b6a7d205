"""Pulling a Python program out of an LLM reply and running it against tests in the sandbox;
shared by the HumanEval and MBPP evaluators.

Extraction (:func:`extract_code`) never strips characters off the code (the reference's
``lstrip("```python\\n")`` removed any leading ``p``, ``y``, ``t``, ``h``, ``o`` or ``n``, turning
``print(x)`` into ``rint(x)``). It works on whole fenced blocks:

* candidate blocks are fenced with ```` ```python ````, ```` ```py ````, ```` ```python3 ```` or
  no language; blocks labelled with another language (``text``, ``bash``, ``output`` ...) are
  ignored. A fence left open at the end of a truncated reply still counts;
* among candidates, the last block that defines the entry point at top level wins (so a trailing
  usage example does not replace the solution); without such a block, the last candidate;
* with no candidate, the reply is taken whole if it parses as Python; otherwise from its first
  line starting with ``def``/``class``/``import``/``from``/``@``, dropping trailing prose lines
  until it parses;
* a block indented as a whole (inside a markdown list) is dedented when that makes it parse; a
  bare function body keeps its indentation;
* a top-level ``if __name__ == "__main__":`` block is removed, because the program runs as the
  main module and such demos read stdin or print at length.

Pass@1 comes from the test harness (:mod:`.code_harness`), not from the program: the sandbox
runs the harness, which runs the program and then the tests (a :class:`CodeTest`), and a program
passes only if the process exited 0 *and* the sandbox's report channel holds exactly the fresh
random token that the harness writes there after the last test succeeded - so exiting early,
exit hooks, printed output or always-equal results cannot fake a pass (the harness's docstring
has the protocol and the threat model). A program may use :data:`CPU_LIMIT_S` seconds of CPU (a
hard limit it cannot raise; :data:`WALL_TIMEOUT_S` of wall time bounds code that sleeps) and
:data:`MEMORY_MB` of memory, and cannot read the benchmark data directory or the cache (where
it could look up reference solutions and tests).
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import secrets
import textwrap
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from masr_graph.errors import DataError
from masr_graph.runtime.sandbox import REPORT_FD, SandboxResult, arun_python, run_python

from ..data.data_dir import cache_dir, resolve_data_dir
from . import code_harness
from .datasets import Example, Score

PYTHON_FENCE_LABELS = frozenset({"", "python", "py", "python3", "py3"})
CPU_LIMIT_S = 10
"""CPU seconds each process of a test run may use: SIGXCPU then, SIGKILL a second later (hard
limits, set by the sandbox before the program runs). The slowest reference solution (MBPP 123,
amicable numbers below 10,000) needs about 5. A CPU-time limit, unlike a wall-clock one, does not
fail correct code when other work shares the CPUs."""
WALL_TIMEOUT_S = 60.0
"""Wall-clock backstop for programs that wait instead of computing (``time.sleep``, locks)."""
MEMORY_MB = 1024
"""Memory cap of one test program."""
# The limits above are read at each call, so they can be changed at run time.

_PROGRAM_FILE = "solution.py"

_FENCED_BLOCK = re.compile(
    r"^[ \t]*(?P<fence>`{3,}|~{3,})[ \t]*(?P<label>[\w+#.-]*)[^\n]*\n"
    r"(?P<body>.*?)"
    r"(?:^[ \t]*(?P=fence)[ \t]*$|\Z)",
    re.MULTILINE | re.DOTALL,
)
_CODE_START = re.compile(
    r"^(?:(?:async\s+)?def|class|import|from\s+\S+\s+import)\b|^@", re.MULTILINE
)


def parse_python(code: str) -> ast.Module:
    """``ast.parse`` without the warnings third-party code triggers (invalid escape sequences in
    MBPP's reference solutions, in agents' code); raises ``SyntaxError``/``ValueError`` like it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (SyntaxWarning, DeprecationWarning))
        return ast.parse(code)


def python_blocks(reply: str) -> list[str]:
    """Bodies of the fenced blocks labelled as Python (or unlabelled), in reply order."""
    return [
        match.group("body")
        for match in _FENCED_BLOCK.finditer(reply)
        if match.group("label").lower() in PYTHON_FENCE_LABELS
    ]


def as_module(code: str) -> str:
    """``code`` dedented when that is what makes it parse (a block indented inside a markdown
    list); otherwise unchanged, so a function body keeps its indentation."""
    if _parses(code):
        return code
    dedented = textwrap.dedent(code)
    return dedented if _parses(dedented) else code


def defines(code: str, name: Optional[str]) -> bool:
    """Whether ``code`` defines ``name`` (a function, class or assigned name) at top level; with
    ``name=None``, whether it defines any function or class."""
    try:
        tree = parse_python(as_module(code))
    except (SyntaxError, ValueError):
        defined_name = re.escape(name) if name else r"\w+"
        pattern = r"^\s*(?:async\s+)?(?:def|class)\s+" + defined_name + r"\b"
        return re.search(pattern, code, re.MULTILINE) is not None
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if name is None or node.name == name:
                return True
        elif isinstance(node, ast.Assign) and name is not None:
            assigned = [target.id for target in node.targets if isinstance(target, ast.Name)]
            if name in assigned:
                return True
    return False


def extract_code(reply: str, entry_point: Optional[str] = None) -> Optional[str]:
    """The program in ``reply`` (see the module docstring), or ``None`` for an empty reply.

    Args:
        reply: the agent's final answer, markdown or bare code.
        entry_point: name of the function the tests call, used to pick among several blocks;
            ``None`` picks the last block defining any function.
    """
    reply = reply.replace("\r\n", "\n")
    blocks = [block for block in python_blocks(reply) if block.strip()]
    if blocks:
        defining = [block for block in blocks if defines(block, entry_point)]
        code = (defining or blocks)[-1]
    else:
        code = _unfenced_code(reply)
    code = _without_main_guard(as_module(code.rstrip() + "\n")) if code.strip() else ""
    return code or None


def _unfenced_code(reply: str) -> str:
    if _parses(reply):
        return reply
    start = _CODE_START.search(reply)
    if start is None:
        return reply
    lines = reply[start.start() :].split("\n")
    for end in range(len(lines), 0, -1):
        candidate = "\n".join(lines[:end])
        if _parses(candidate):
            return candidate
    return "\n".join(lines)


def _parses(code: str) -> bool:
    try:
        parse_python(code)
    except (SyntaxError, ValueError):  # ValueError: null bytes in the source
        return False
    return True


def _without_main_guard(code: str) -> str:
    try:
        tree = parse_python(code)
    except (SyntaxError, ValueError):
        return code
    guards = [node for node in tree.body if isinstance(node, ast.If) and _is_main_guard(node.test)]
    if not guards:
        return code
    lines = code.split("\n")
    for guard in reversed(guards):
        del lines[guard.lineno - 1 : guard.end_lineno]
    return "\n".join(lines)


def _is_main_guard(test: ast.expr) -> bool:
    if not (
        isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)
    ):
        return False
    sides = [test.left, test.comparators[0]]
    has_name = any(isinstance(side, ast.Name) and side.id == "__name__" for side in sides)
    has_main = any(isinstance(side, ast.Constant) and side.value == "__main__" for side in sides)
    return has_name and has_main


def code_key(reply: str) -> Optional[str]:
    """Voting key of a code reply: a hash of the extracted program's syntax tree (so comments
    and formatting do not split votes), or of its whitespace-collapsed text if it does not parse."""
    code = extract_code(reply)
    if code is None:
        return None
    try:
        canonical = ast.dump(parse_python(code))
    except (SyntaxError, ValueError):
        canonical = " ".join(code.split())
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class CodeTest:
    """What the harness runs for one reply.

    Args:
        program: the program (the reply's code, with whatever the benchmark puts around it),
            run first as ``__main__``.
        tests: ``(name, source)`` chunks run in order after it, in the test namespace (see
            :mod:`.code_harness`); a name says where a failure happened.
        trusted: dataset code whose definitions the tests use (HumanEval's prompt), run on its
            own so the program cannot redefine them for the tests; ``None`` if there is none.
    """

    program: str
    tests: tuple[tuple[str, str], ...]
    trusted: Optional[str] = None

    def script(self) -> str:
        """Program and tests as one script, for reading (the harness never runs this)."""
        return (
            "\n\n".join([self.program.rstrip("\n"), *(source for _, source in self.tests)]) + "\n"
        )


TestBuilder = Callable[[Example, str], CodeTest]
"""Builds the :class:`CodeTest` from an example and the extracted code."""

_HARNESS_SOURCE = Path(code_harness.__file__).read_text(encoding="utf-8")


def _answer_sources() -> list[str]:
    """Directories holding the benchmarks' expected answers and reference solutions (the data
    directory) or verdicts (the cache), which a program could look its answer up in."""
    sources = [str(cache_dir())]
    try:
        sources.append(str(resolve_data_dir()))
    except DataError:
        pass  # examples made in code, without a data directory
    return sources


def _sandbox_arguments(test: CodeTest, entry_point: str, token: str) -> dict[str, Any]:
    config = {
        "report_fd": REPORT_FD,
        "program": _PROGRAM_FILE,
        "entry_point": entry_point,
        "trusted": test.trusted,
        "tests": [{"name": name, "source": source} for name, source in test.tests],
    }
    return {
        "code": _HARNESS_SOURCE,
        "files": {_PROGRAM_FILE: test.program, code_harness.CONFIG_FILE: json.dumps(config)},
        "stdin": token,
        "report": True,
        "hide": _answer_sources(),
        "cpu_s": CPU_LIMIT_S,
        "timeout_s": WALL_TIMEOUT_S,
        "memory_mb": MEMORY_MB,
    }


def _new_token() -> str:
    return secrets.token_hex(code_harness.TOKEN_HEX_DIGITS // 2)


def evaluate_code(example: Example, reply: str, entry_point: str, build_test: TestBuilder) -> Score:
    """Pass@1 of ``reply``: extract its code, build its test, run it in the sandbox harness."""
    code = extract_code(reply, entry_point)
    if code is None:
        return Score(False, None, "no code in the reply")
    token = _new_token()
    result = run_python(**_sandbox_arguments(build_test(example, code), entry_point, token))
    return score_run(code, result, token)


async def aevaluate_code(
    example: Example, reply: str, entry_point: str, build_test: TestBuilder
) -> Score:
    """Async :func:`evaluate_code`; many replies can be scored concurrently."""
    code = extract_code(reply, entry_point)
    if code is None:
        return Score(False, None, "no code in the reply")
    token = _new_token()
    arguments = _sandbox_arguments(build_test(example, code), entry_point, token)
    return score_run(code, await arun_python(**arguments), token)


def score_run(code: str, result: SandboxResult, token: str) -> Score:
    """The verdict on one harness run: correct only with exit status 0 *and* exactly this run's
    token on the report channel. Exit status 0 alone is what a program that skips the tests
    gets too; the harness writes the token only after the last test, and requiring both keeps
    a run that was killed or crashed after that a failure."""
    if result.ok and result.report == token:
        return Score(True, code, "all tests passed")
    if not result.ok:
        return Score(False, code, f"tests failed: {result.failure}")
    if not result.report:
        return Score(
            False,
            code,
            "tests failed: the process exited with status 0 before the test harness finished "
            "(no completion token)",
        )
    return Score(
        False,
        code,
        "tests failed: the process exited with status 0 but the report channel holds something "
        "other than this run's completion token",
    )

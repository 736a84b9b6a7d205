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

Pass@1 is the program's exit status in the sandbox: 0 means every test passed. A program may use
:data:`CPU_LIMIT_S` seconds of CPU (and :data:`WALL_TIMEOUT_S` of wall time, for code that
sleeps) and :data:`MEMORY_MB` of memory.
"""

from __future__ import annotations

import ast
import hashlib
import re
import textwrap
import warnings
from typing import Any, Callable, Optional

from masr_graph.runtime.sandbox import SandboxResult, arun_python, run_python

from .datasets import Example, Score

PYTHON_FENCE_LABELS = frozenset({"", "python", "py", "python3", "py3"})
CPU_LIMIT_S = 10
"""CPU seconds one test program may use before it is killed and fails. The slowest reference
solution (MBPP 123, amicable numbers below 10,000) needs about 5. A CPU-time limit, unlike a
wall-clock one, does not fail correct code when other work shares the CPUs."""
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


ProgramBuilder = Callable[[Example, str], str]
"""Builds the test program from an example and the extracted code."""


def _sandbox_arguments(program: str) -> dict[str, Any]:
    # The sandbox limits wall-clock time only, so a small launcher caps the CPU time and then
    # runs the program as __main__ from its own file (which keeps `from __future__` imports
    # legal and tracebacks' line numbers right). The sandbox's own hard limit stays in force.
    launcher = (
        "import resource, runpy\n"
        "_, hard = resource.getrlimit(resource.RLIMIT_CPU)\n"
        f"soft = {CPU_LIMIT_S} if hard == resource.RLIM_INFINITY else min({CPU_LIMIT_S}, hard)\n"
        "resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))\n"
        f"runpy.run_path({_PROGRAM_FILE!r}, run_name='__main__')\n"
    )
    return {
        "code": launcher,
        "files": {_PROGRAM_FILE: program},
        "timeout_s": WALL_TIMEOUT_S,
        "memory_mb": MEMORY_MB,
    }


def evaluate_code(
    example: Example, reply: str, entry_point: str, build_program: ProgramBuilder
) -> Score:
    """Pass@1 of ``reply``: extract its code, build the test program, run it in the sandbox."""
    code = extract_code(reply, entry_point)
    if code is None:
        return Score(False, None, "no code in the reply")
    return _score_run(code, run_python(**_sandbox_arguments(build_program(example, code))))


async def aevaluate_code(
    example: Example, reply: str, entry_point: str, build_program: ProgramBuilder
) -> Score:
    """Async :func:`evaluate_code`; many replies can be scored concurrently."""
    code = extract_code(reply, entry_point)
    if code is None:
        return Score(False, None, "no code in the reply")
    return _score_run(code, await arun_python(**_sandbox_arguments(build_program(example, code))))


def _score_run(code: str, result: SandboxResult) -> Score:
    if result.ok:
        return Score(True, code, "all tests passed")
    return Score(False, code, f"tests failed: {result.failure}")

"""MBPP (Austin et al., 2021): 974 short Python programming tasks checked by three asserts each.

Data: ``mbpp/mbpp.jsonl`` (``task_id``, ``text``, ``code``, ``test_list``, ``test_setup_code``,
``challenge_test_list``). Standard splits by task id: prompt 1-10, test 11-510, validation
511-600, train 601-974. Example ids are ``mbpp/<task_id>``.

What agents see (``query``): the task text and the function they must write, as a signature taken
from the reference code (``def min_cost(cost, m, n)``), since the tests call it by that name. For
the two tasks with ``test_setup_code`` (tree fixtures built with the reference's ``Node`` class)
that setup code is shown too, because the solution must provide what it uses; it holds no
expected values.

The asserts are *not* shown by default: they are the scoring tests, and showing them lets agents
fit the three cases instead of solving the task (the reference shows them, which inflates pass@1).
``show_tests=True`` appends them, as in the original MBPP prompt format, for comparability with
numbers reported that way; say so next to any such result.

Scoring is pass@1 in the sandbox's test harness (:mod:`.code_harness`): the reply's code is the
program; ``test_setup_code`` and each assert of ``test_list`` are the tests, run in order
(``challenge_test_list`` is not used, as in the standard protocol).
"""

from __future__ import annotations

import ast
import builtins
from pathlib import Path
from typing import Any, Optional

from masr_graph.errors import ConfigError, DataError

from .code_eval import CodeTest, aevaluate_code, code_key, evaluate_code, parse_python
from ..data.data_dir import PathLike, data_file, read_jsonl, require_fields
from .datasets import Example, Score

TASK = "mbpp"
DATA_FILES = {"all": "mbpp/mbpp.jsonl"}
SPLIT_TASK_IDS = {
    "test": range(11, 511),
    "train": range(601, 975),
    "validation": range(511, 601),
    "prompt": range(1, 11),
    "all": range(1, 975),
}
SPLITS = tuple(SPLIT_TASK_IDS)
_FIELDS = ("task_id", "text", "code", "test_list", "test_setup_code")


def load_mbpp(
    split: str = "test", data_dir: Optional[PathLike] = None, *, show_tests: bool = False
) -> list[Example]:
    """Load an MBPP split (``"test"``: 500 tasks, ``"train"``: 374, ``"validation"``: 90,
    ``"prompt"``: 10, ``"all"``: 974).

    Args:
        split: one of :data:`SPLITS`.
        data_dir: data directory (see :mod:`masr_graph.benchmarks.data.data_dir`).
        show_tests: append the scoring asserts to the query (off by default; see the module
            docstring).

    ``meta`` holds ``entry_point``, ``test_list``, ``test_setup_code``, ``code`` (the reference
    solution) and ``tests_shown``.

    Raises:
        ConfigError: unknown ``split``.
        DataError: the file is missing, a row lacks a field, or no function called by the first
            test is defined by the reference code.
    """
    if split not in SPLIT_TASK_IDS:
        raise ConfigError(f"unknown MBPP split {split!r}; choose one of {list(SPLITS)}")
    wanted = SPLIT_TASK_IDS[split]
    path = data_file(DATA_FILES["all"], data_dir)
    examples = []
    for index, row in enumerate(read_jsonl(path)):
        require_fields(row, _FIELDS, path, f"row {index}")
        if row["task_id"] in wanted:
            examples.append(_example(row, path, show_tests))
    return examples


def _example(row: dict[str, Any], path: Path, show_tests: bool) -> Example:
    code = row["code"].replace("\r\n", "\n")
    setup = row["test_setup_code"].replace("\r\n", "\n").strip()
    tests = [test.strip() for test in row["test_list"]]
    if not tests:
        raise DataError(f"{str(path)!r} task {row['task_id']} has an empty test_list")
    entry_point, signature = required_definition(
        code, tests[0], f"{str(path)!r} task {row['task_id']}"
    )
    parts = [row["text"].strip(), f"Write it as the Python {signature}."]
    if setup:
        needed = _names_needed(setup)
        also = f", so your code must also define {', '.join(needed)}" if needed else ""
        parts.append(f"The tests first run this setup code{also}:\n```python\n{setup}\n```")
    if show_tests:
        parts.append("Your code should pass these tests:\n" + "\n".join(tests))
    return Example(
        id=f"{TASK}/{row['task_id']}",
        task=TASK,
        query="\n".join(parts),
        answer="",
        meta={
            "entry_point": entry_point,
            "test_list": tests,
            "test_setup_code": setup,
            "code": code,
            "tests_shown": show_tests,
        },
    )


def required_definition(code: str, first_test: str, where: str) -> tuple[str, str]:
    """The name the tests call and how to tell agents about it.

    Returns ``(name, description)``, e.g. ``("min_cost", "function `def min_cost(cost, m, n)`")``
    or ``("Pair", "class `Pair`")``: the first name called in ``first_test`` that ``code`` defines
    at top level.

    Raises:
        DataError: nothing called by the test is defined by the code (``where`` names the task).
    """
    definitions = {
        node.name: node
        for node in parse_python(code).body
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
    }
    for node in ast.walk(parse_python(first_test)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in definitions
        ):
            definition = definitions[node.func.id]
            if isinstance(definition, ast.ClassDef):
                return definition.name, f"class `{definition.name}`"
            return (
                definition.name,
                f"function `def {definition.name}({ast.unparse(definition.args)})`",
            )
    raise DataError(
        f"{where}: the first test {first_test!r} calls none of the functions the reference code "
        f"defines ({sorted(definitions)})"
    )


def _names_needed(setup: str) -> list[str]:
    """Back-quoted names the setup code calls that are not builtins (the solution must define
    them)."""
    called = [
        node.func.id
        for node in ast.walk(parse_python(setup))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and not hasattr(builtins, node.func.id)
    ]
    return [f"`{name}`" for name in dict.fromkeys(called)]


def build_test(example: Example, code: str) -> CodeTest:
    """The harness's test: the code, then the setup code and each assert as a chunk of its own."""
    setup = example.meta["test_setup_code"]
    asserts = example.meta["test_list"]
    tests = [("the test setup code", setup)] if setup else []
    for number, line in enumerate(asserts, start=1):
        summary = " ".join(line.split())  # one line: failure messages end with the name
        summary = summary if len(summary) <= 80 else summary[:77] + "..."
        tests.append((f"test {number} of {len(asserts)}: {summary}", line))
    return CodeTest(program=code, tests=tuple(tests))


def build_program(example: Example, code: str) -> str:
    """The test as one script: the code, the setup code, then the asserts."""
    return build_test(example, code).script()


def evaluate(example: Example, reply: str) -> Score:
    """Pass@1 of the reply's code against the task's asserts (runs the sandbox, blocking)."""
    return evaluate_code(example, reply, example.meta["entry_point"], build_test)


async def aevaluate(example: Example, reply: str) -> Score:
    """Async :func:`evaluate`."""
    return await aevaluate_code(example, reply, example.meta["entry_point"], build_test)


answer_key = code_key
"""Voting key: a hash of the extracted program's syntax tree (:func:`code_eval.code_key`)."""

"""HumanEval (Chen et al., 2021): 164 Python functions to complete from a signature and docstring.

Data: ``humaneval/HumanEval.jsonl.gz`` (``task_id``, ``prompt``, ``canonical_solution``, ``test``,
``entry_point``). Example ids are the task ids (``"HumanEval/0"``); the query is the prompt.

Scoring is pass@1 in the sandbox's test harness (:mod:`.code_harness`). The program is the prompt,
then the reply's code; the tests are the dataset's ``check`` function and ``check(<entry_point>)``;
the prompt is also the trusted code whose helpers the tests use (a reply may call them but not
redefine them for the tests):

* a reply that defines the entry point is appended after the prompt, so it replaces the prompt's
  stub while the prompt's imports and helper functions (e.g. ``encode_cyclic`` for
  ``decode_cyclic``) stay available even when the reply omits them;
* a reply that is only the function body (what the original completion format expects) is
  appended to the prompt as the body, indented if the reply was not.
"""

from __future__ import annotations

import textwrap
from typing import Optional

from masr_graph.errors import ConfigError

from .code_eval import CodeTest, aevaluate_code, code_key, defines, evaluate_code
from ..data.data_dir import PathLike, data_file, read_jsonl, require_fields
from .datasets import Example, Score

TASK = "humaneval"
SPLITS = ("test",)
DATA_FILES = {"test": "humaneval/HumanEval.jsonl.gz"}
_FIELDS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")


def load_humaneval(split: str = "test", data_dir: Optional[PathLike] = None) -> list[Example]:
    """Load the 164 HumanEval problems. ``meta`` holds ``prompt``, ``entry_point``, ``test`` and
    ``canonical_solution`` (a function body, as in the dataset).

    Raises:
        ConfigError: ``split`` is not ``"test"`` (HumanEval has no other split).
        DataError: the file is missing or a row lacks a field.
    """
    if split not in SPLITS:
        raise ConfigError(f"unknown HumanEval split {split!r}; choose one of {list(SPLITS)}")
    path = data_file(DATA_FILES[split], data_dir)
    examples = []
    for index, row in enumerate(read_jsonl(path)):
        require_fields(row, _FIELDS, path, f"row {index}")
        examples.append(
            Example(
                id=row["task_id"],
                task=TASK,
                query=row["prompt"],
                answer="",
                meta={name: row[name] for name in _FIELDS[1:]},
            )
        )
    return examples


def build_test(example: Example, code: str) -> CodeTest:
    """The harness's test for ``code`` (see the module docstring)."""
    prompt = example.meta["prompt"]
    entry_point = example.meta["entry_point"]
    if defines(code, entry_point):
        solution = f"{prompt}\n{code}"
    else:
        first_line = next(line for line in code.split("\n") if line.strip())
        body = code if first_line[0].isspace() else textwrap.indent(code, "    ")
        solution = prompt if prompt.endswith("\n") else prompt + "\n"
        solution += body
    tests = (
        ("the dataset's test code", example.meta["test"]),
        (f"check({entry_point})", f"check({entry_point})"),
    )
    return CodeTest(program=solution, tests=tests, trusted=prompt)


def build_program(example: Example, code: str) -> str:
    """The test of ``code`` as one script: solution, ``check`` and ``check(<entry_point>)``."""
    return build_test(example, code).script()


def evaluate(example: Example, reply: str) -> Score:
    """Pass@1 of the reply's code against the problem's tests (runs the sandbox, blocking)."""
    return evaluate_code(example, reply, example.meta["entry_point"], build_test)


async def aevaluate(example: Example, reply: str) -> Score:
    """Async :func:`evaluate`."""
    return await aevaluate_code(example, reply, example.meta["entry_point"], build_test)


answer_key = code_key
"""Voting key: a hash of the extracted program's syntax tree (:func:`code_eval.code_key`)."""

"""The ZeroEval world: the real reply text of 43 LLMs to all 1,319 GSM8K test questions and of 41
LLMs to 721 MATH level-5 problems, recorded greedily (temperature 0) by ZeroEval.

Source (``<data dir>/outcomes/zeroeval``, see ``shared/data/README.md``):
``questions_{gsm8k,math_l5}.jsonl`` (``id``, ``question``, ``gold``),
``replies_{gsm8k,math_l5}.jsonl.gz`` (``model``, ``id``, ``output``: the model's own text; the
prompt asked for JSON ``{"reasoning": ..., "answer": ...}``) and ``models.csv`` (tasks, generator,
sampling settings, prices per 1M tokens with their basis, a description).

How the table is built (:func:`load_reply_table`):

* every recorded question is joined, by its exact text, to the benchmark file it comes from, so
  examples carry the benchmark's own ids, gold answers and metadata: GSM8K questions are the
  rows of ``gsm8k/test.jsonl`` (ids ``gsm8k/test/<row>``), MATH level-5 problems are problems of
  ``math/test.jsonl`` (ids ``math/<idx>``, ``meta`` with ``type`` and ``level``). A question that
  does not join, or a gold answer that differs from the benchmark's, is a :class:`DataError`;
* a model is part of a task's pool when it has a reply to every question of the task (the data
  holds only such models); ``models.csv`` must describe and price every one of them — a model
  without a price is an error, never priced at $0.

Parsing the 86k replies takes a few seconds, so the parsed table is also cached on disk
(:func:`~masr_graph.benchmarks.data.data_dir.cache_dir`), keyed by the sha256 of the source files;
a later process loads it in well under a second. What the project's own evaluators make of each
reply (right or wrong, its answer key) is cached the same way, keyed also by the evaluators'
source code, so a fix to an evaluator is never served stale verdicts (:func:`reply_verdicts`).
"""
from __future__ import annotations

import csv
import functools
import hashlib
import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Mapping, Optional, Sequence

from masr_graph.benchmarks.data.data_dir import (
    PathLike,
    cache_dir,
    data_file,
    files_sha256,
    read_jsonl,
    resolve_data_dir,
)
from masr_graph.benchmarks.tasks.datasets import Example
from masr_graph.benchmarks.tasks.registry import (
    answer_key,
    evaluate,
    load_benchmark,
    scorer_fingerprint,
)

from ..errors import ConfigError, DataError
from ..files import write_atomically

OUTCOME_SET = "zeroeval"
"""Name of this recorded set (the host of ``replay://zeroeval`` URLs)."""
OUTCOME_DIR = f"outcomes/{OUTCOME_SET}"
TASK_FILES: Mapping[str, str] = MappingProxyType({"gsm8k": "gsm8k", "math": "math_l5"})
"""The world's tasks (benchmark names) and the file stem of their recordings."""
MODEL_FIELDS = ("name", "tasks", "generator", "temperature", "max_tokens", "price_in",
                "price_out", "price_basis", "description")
PRICE_BASES = ("list", "hosted", "uncertain")
_CACHE_VERSION = 1


@dataclass(frozen=True)
class RecordedModel:
    """One LLM of ``models.csv``.

    Args:
        name: the name its replies are recorded under (``"gpt-4o-mini-2024-07-18"``).
        tasks: the world's tasks it has replies for.
        generator: the provider model id that generated them.
        price_in, price_out: $ per 1M prompt / completion tokens.
        price_basis: ``"list"`` (the provider's list price), ``"hosted"`` (a typical price for
            hosting open weights) or ``"uncertain"`` (an experimental model priced like its
            family).
        description: the LLM node's feature text.
        temperature, max_tokens: the recording's sampling settings.
    """

    name: str
    tasks: tuple[str, ...]
    generator: str
    price_in: float
    price_out: float
    price_basis: str
    description: str
    temperature: float
    max_tokens: int


@dataclass(frozen=True)
class RecordedQuestion:
    """One question with every pool model's recorded reply.

    Args:
        example: the benchmark example (``example.query`` is the question agents see).
        question: the question text exactly as recorded (it occurs in every prompt built from
            the example, up to whitespace).
        replies: reply text per model name (read-only by convention: a plain dict, so the
            table pickles into the on-disk cache).
    """

    example: Example
    question: str
    replies: Mapping[str, str]

    @property
    def id(self) -> str:
        return self.example.id

    @property
    def task(self) -> str:
        return self.example.task


class ReplyTable:
    """The recorded replies of the ZeroEval world (see the module docstring).

    Attributes:
        data_dir: the data directory it was read from.
        models: every recorded model, by name, in ``models.csv`` order.
        data_checksums: sha256 of every source file, keyed by its path under ``data_dir``.
    """

    def __init__(self, data_dir: Path, models: Mapping[str, RecordedModel],
                 questions: Mapping[str, Sequence[RecordedQuestion]],
                 data_checksums: Mapping[str, str]):
        self.data_dir = data_dir
        self.models = MappingProxyType(dict(models))
        self._questions = {task: tuple(rows) for task, rows in questions.items()}
        self._by_id = {q.id: q for rows in self._questions.values() for q in rows}
        self.data_checksums = MappingProxyType(dict(data_checksums))

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self._questions)

    def questions(self, task: str) -> tuple[RecordedQuestion, ...]:
        """The recorded questions of ``task`` in benchmark order.

        Raises:
            ConfigError: ``task`` is not a task of this world.
        """
        _check_task(task)
        return self._questions[task]

    def question(self, question_id: str) -> RecordedQuestion:
        """The recorded question with example id ``question_id``.

        Raises:
            DataError: no recorded question has that id.
        """
        try:
            return self._by_id[question_id]
        except KeyError:
            raise DataError(f"no recorded ZeroEval question with id {question_id!r}") from None

    def models_for(self, task: str) -> list[str]:
        """Names of the models with a reply to every question of ``task``, in CSV order."""
        _check_task(task)
        return [name for name, model in self.models.items() if task in model.tasks]

    def model(self, name: str, task: Optional[str] = None) -> RecordedModel:
        """The recorded model ``name`` (that has replies for ``task``, when given).

        Raises:
            ConfigError: unknown model, or one without replies for ``task`` (the message lists
                the models that have them).
        """
        recorded = self.models.get(name)
        if recorded is None or (task is not None and task not in recorded.tasks):
            where = f" for {task}" if task else ""
            known = self.models_for(task) if task else list(self.models)
            raise ConfigError(f"model {name!r} has no recorded ZeroEval replies{where}; "
                              f"recorded: {', '.join(known)}")
        return recorded

    def describe(self) -> str:
        """One line saying what the table holds (for results files)."""
        parts = [f"{task}: {len(rows)} questions x {len(self.models_for(task))} models"
                 for task, rows in self._questions.items()]
        return ("ZeroEval recorded replies (greedy, temperature 0; real reply text): "
                + "; ".join(parts))


def _check_task(task: str) -> None:
    if task not in TASK_FILES:
        raise ConfigError(f"unknown ZeroEval task {task!r}; the world's tasks are "
                          f"{list(TASK_FILES)}")


def source_files() -> list[str]:
    """Paths, relative to the data directory, of every file the world is built from."""
    files = [f"{OUTCOME_DIR}/models.csv"]
    for stem in TASK_FILES.values():
        files += [f"{OUTCOME_DIR}/questions_{stem}.jsonl", f"{OUTCOME_DIR}/replies_{stem}.jsonl.gz"]
    return files + ["gsm8k/test.jsonl", "math/test.jsonl"]


def load_reply_table(data_dir: Optional[PathLike] = None) -> ReplyTable:
    """The ZeroEval reply table of a data directory, built once per process (and cached on
    disk across processes, see the module docstring).

    Raises:
        DataError: a file is missing or malformed, a question does not join its benchmark, or a
            model with replies is not described and priced in ``models.csv``.
    """
    return _load_reply_table(resolve_data_dir(data_dir))


@functools.lru_cache(maxsize=2)
def _load_reply_table(root: Path) -> ReplyTable:
    paths = {name: data_file(name, root) for name in source_files()}
    checksums = {name: files_sha256([path]) for name, path in paths.items()}
    digest = hashlib.sha256(repr(sorted(checksums.items())).encode()).hexdigest()[:16]
    cached = cache_dir() / f"zeroeval-table-v{_CACHE_VERSION}-{digest}.pickle"
    if cached.is_file():
        try:
            models, questions = pickle.loads(cached.read_bytes())
            return ReplyTable(root, models, questions, checksums)
        except (pickle.UnpicklingError, EOFError, AttributeError, ValueError):
            pass  # a torn or outdated cache file is rebuilt below
    models = _read_models(paths[f"{OUTCOME_DIR}/models.csv"])
    questions = {task: _read_task(task, stem, paths, models, root)
                 for task, stem in TASK_FILES.items()}
    write_atomically(cached, pickle.dumps((models, questions), protocol=pickle.HIGHEST_PROTOCOL))
    return ReplyTable(root, models, questions, checksums)


def _read_models(path: Path) -> dict[str, RecordedModel]:
    text = path.read_text(encoding="utf-8")
    reader = csv.DictReader(io.StringIO(text))
    missing = [name for name in MODEL_FIELDS if name not in (reader.fieldnames or [])]
    if missing:
        raise DataError(f"{str(path)!r} lacks column(s) {missing}; expected {list(MODEL_FIELDS)}")
    models: dict[str, RecordedModel] = {}
    for line, row in enumerate(reader, start=2):
        where = f"{str(path)!r} line {line} ({row.get('name')!r})"
        try:
            price_in, price_out = float(row["price_in"]), float(row["price_out"])
            temperature, max_tokens = float(row["temperature"]), int(row["max_tokens"])
        except ValueError as exc:
            raise DataError(f"{where}: a number is malformed: {exc}") from None
        if not (price_in >= 0 and price_out >= 0):
            raise DataError(f"{where}: prices must be >= 0 (got {price_in}, {price_out})")
        if row["price_basis"] not in PRICE_BASES:
            raise DataError(f"{where}: price_basis {row['price_basis']!r} is not one of "
                            f"{list(PRICE_BASES)}")
        recorded_tasks = row["tasks"].split()
        tasks = tuple(task for task, stem in TASK_FILES.items() if stem in recorded_tasks)
        if row["name"] in models:
            raise DataError(f"{where}: the model is listed twice")
        models[row["name"]] = RecordedModel(
            name=row["name"], tasks=tasks, generator=row["generator"], price_in=price_in,
            price_out=price_out, price_basis=row["price_basis"], description=row["description"],
            temperature=temperature, max_tokens=max_tokens)
    return models


def _read_task(task: str, stem: str, paths: Mapping[str, Path],
               models: Mapping[str, RecordedModel], root: Path) -> list[RecordedQuestion]:
    questions_path = paths[f"{OUTCOME_DIR}/questions_{stem}.jsonl"]
    benchmark = {" ".join(e.query.split()): e
                 for e in load_benchmark(task, "test", root)}
    recorded: dict[str, tuple[str, Example]] = {}
    for row in read_jsonl(questions_path):
        example = benchmark.get(" ".join(row["question"].split()))
        if example is None:
            raise DataError(f"{str(questions_path)!r} question {row['id']!r} is not a {task} test "
                            "question; the world joins every recorded question to its benchmark")
        if example.answer.strip() != str(row["gold"]).strip():
            raise DataError(f"{str(questions_path)!r} question {row['id']!r}: recorded gold "
                            f"{row['gold']!r} differs from the benchmark's {example.answer!r}")
        recorded[row["id"]] = (row["question"], example)
    replies: dict[str, dict[str, str]] = {}
    replies_path = paths[f"{OUTCOME_DIR}/replies_{stem}.jsonl.gz"]
    for row in read_jsonl(replies_path):
        if row["id"] not in recorded:
            raise DataError(f"{str(replies_path)!r}: reply of {row['model']!r} to unknown "
                            f"question {row['id']!r}")
        replies.setdefault(row["model"], {})[row["id"]] = row["output"]
    for model, by_question in replies.items():
        if model not in models:
            raise DataError(f"{str(replies_path)!r} has replies of {model!r}, which models.csv "
                            "does not describe or price")
        if task not in models[model].tasks:
            raise DataError(f"models.csv does not list {stem} among the tasks of {model!r}, "
                            f"but {str(replies_path)!r} has its replies")
        if len(by_question) != len(recorded):
            raise DataError(f"{str(replies_path)!r}: {model!r} replies to {len(by_question)} of "
                            f"{len(recorded)} questions; the world keeps complete models only")
    listed = [name for name, model in models.items() if task in model.tasks]
    silent = sorted(set(listed) - set(replies))
    if silent:
        raise DataError(f"models.csv lists {stem} for {silent}, which have no replies in "
                        f"{str(replies_path)!r}")
    ordered = sorted(recorded.values(), key=lambda item: _benchmark_order(item[1]))
    by_text = {question: question_id for question_id, (question, _) in recorded.items()}
    return [
        RecordedQuestion(
            example=example, question=question,
            replies={m: replies[m][by_text[question]] for m in listed})
        for question, example in ordered
    ]


def _benchmark_order(example: Example) -> tuple[int, str]:
    tail = example.id.rpartition("/")[2]
    return (int(tail), example.id) if tail.isdigit() else (0, example.id)


@dataclass(frozen=True)
class Verdict:
    """What the project's evaluator makes of one recorded reply."""

    correct: bool
    key: Optional[str]
    """The reply's answer key (what majority votes group by), ``None`` if it has no answer."""
    extracted: Optional[str]


def reply_verdicts(table: ReplyTable, task: str) -> Mapping[tuple[str, str], Verdict]:
    """``{(model, question id): Verdict}`` of every recorded reply of ``task``, by the project's
    own evaluator (cached on disk, keyed by the data and the evaluators' source code)."""
    return _reply_verdicts(table, task)


@functools.lru_cache(maxsize=4)
def _reply_verdicts(table: ReplyTable, task: str) -> Mapping[tuple[str, str], Verdict]:
    digest = hashlib.sha256(
        (repr(sorted(table.data_checksums.items())) + task + ":"
         + scorer_fingerprint(task)).encode()
    ).hexdigest()[:16]
    cached = cache_dir() / f"zeroeval-verdicts-v{_CACHE_VERSION}-{task}-{digest}.pickle"
    if cached.is_file():
        try:
            return pickle.loads(cached.read_bytes())
        except (pickle.UnpicklingError, EOFError, AttributeError, ValueError):
            pass
    verdicts: dict[tuple[str, str], Verdict] = {}
    for question in table.questions(task):
        for model, reply in question.replies.items():
            score = evaluate(question.example, reply)
            verdicts[(model, question.id)] = Verdict(
                score.correct, answer_key(task, reply), score.extracted)
    write_atomically(cached, pickle.dumps(verdicts, protocol=pickle.HIGHEST_PROTOCOL))
    return verdicts



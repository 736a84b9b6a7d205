"""The recorded-outcome table behind the replay backend, and the replay benchmark built from it.

Source: LLMRouter's outcome data (``<data dir>/outcomes/llmrouter``, see ``shared/data/README.md``):
``train.json`` / ``test.json`` hold, per query text, the score (0..1) of each of 9 real LLMs;
``default_query_{train,test}.jsonl`` hold the same texts with their task, ground truth, choices
and task id; ``default_llm.json`` the LLMs' descriptions and prices.

How the table is built (:func:`load_outcome_table`), for the five tasks masr_graph can evaluate
(``gsm8k``, ``math``, ``mbpp``, ``human_eval`` → ``humaneval``, ``mmlu``):

1. query rows are grouped by exact text (the query files repeat rows); a text whose rows disagree
   on task, ground truth, choices or task id is *ambiguous* and dropped (2 MBPP texts name two
   MBPP tasks with different tests: the recorded outcome cannot be attributed to either);
2. a text scored in both ``train.json`` and ``test.json`` (of the 119 such texts, 50 HumanEval
   and 19 MBPP ones; 68 remain after step 1) is kept once, with the mean of its two score records
   per LLM: the two runs disagree for some LLMs (16 texts), as repeated samples of a model do, and
   the mean is the recorded success rate, replayed as a seeded Bernoulli;
3. texts without a score record are dropped (56 MATH problems).

Each kept text becomes a :class:`RecordedQuery`: an :class:`~masr_graph.benchmarks.Example` in
the benchmark's own form (what agents see, the gold answer, the evaluation ``meta``), the
recorded question text (which occurs, up to whitespace, inside the example's query and therefore
inside every prompt built from it) and the per-LLM scores.

* GSM8K, MATH, MMLU examples are built from the recorded rows (ids ``<task>/llmrouter/<sha256 of
  the text, 12 hex>``; MMLU queries are the question followed by ``A. ...`` option lines, as the
  MMLU loader writes them);
* HumanEval and MBPP examples are the benchmark loaders' own (ids ``HumanEval/N``, ``mbpp/N``),
  so the tests, entry points and reference solutions come from the benchmark files.

Splits of this world into train, validation and test are :func:`masr_graph.replay.world_split`'s.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping, Optional, Sequence


from masr_graph.benchmarks.tasks import gsm8k, mmlu
from masr_graph.benchmarks.data.data_dir import (
    PathLike,
    data_file,
    files_sha256,
    read_jsonl,
    require_fields,
    resolve_data_dir,
)
from masr_graph.benchmarks.tasks.datasets import Example
from masr_graph.benchmarks.tasks.extraction import last_boxed
from masr_graph.benchmarks.tasks.registry import load_benchmark

from ..errors import ConfigError, DataError

OUTCOME_SET = "llmrouter"
"""Name of the recorded outcome set (the host of ``replay://llmrouter`` URLs)."""
OUTCOME_DIR = f"outcomes/{OUTCOME_SET}"
REPLAY_TASKS: tuple[str, ...] = ("gsm8k", "math", "mbpp", "humaneval", "mmlu")
"""Tasks of the replay benchmark, in table order."""
REPLAY_BENCHMARK = f"replay-{OUTCOME_SET}"
"""``Split.benchmark`` of replay splits."""

_RECORDED_TASK = {"gsm8k": "gsm8k", "math": "math", "mbpp": "mbpp", "human_eval": "humaneval",
                  "mmlu": "mmlu"}
_QUERY_FILES = ("default_query_train.jsonl", "default_query_test.jsonl")
_QUERY_FIELDS = ("task_name", "query", "ground_truth", "choices", "task_id")
_SCORE_FILES = ("train.json", "test.json")
_LLM_FILE = "default_llm.json"
# Benchmark files the code tasks' examples come from; fingerprinted with the outcome files.
_BENCHMARK_FILES = ("humaneval/HumanEval.jsonl.gz", "mbpp/mbpp.jsonl")


def normalise_text(text: str) -> str:
    """``text`` with every run of whitespace collapsed to one space and no outer whitespace: the
    form in which recorded questions are looked up inside prompts (templates re-indent, strip and
    re-wrap text, but do not change its words)."""
    return " ".join(text.split())


@dataclass(frozen=True)
class RecordedLLM:
    """One LLM of the outcome table, as ``default_llm.json`` describes it.

    Args:
        name: the name its scores are recorded under, e.g. ``"qwen2.5-7b-instruct"``.
        model: the provider's model id, e.g. ``"qwen/qwen2.5-7b-instruct"``.
        size: parameter count as written in the file, e.g. ``"7B"``.
        description: the file's feature text (the router's LLM node text).
        price_in: $ per 1M prompt tokens.
        price_out: $ per 1M completion tokens.
    """

    name: str
    model: str
    size: str
    description: str
    price_in: float
    price_out: float


@dataclass(frozen=True)
class RecordedQuery:
    """One query with recorded outcomes.

    Args:
        example: the benchmark example (``example.query`` is what agents see).
        question: the recorded query text, exactly as in the outcome files.
        scores: recorded success rate per LLM name, in [0, 1] (0/1 for a single record).
        in_test_file: the text is scored in LLMRouter's ``test.json``.
    """

    example: Example
    question: str
    scores: Mapping[str, float] = field(compare=False)
    in_test_file: bool = False

    @property
    def id(self) -> str:
        return self.example.id

    @property
    def task(self) -> str:
        return self.example.task


class OutcomeTable:
    """The deduplicated outcome table of the five replay tasks (see the module docstring).

    Attributes:
        data_dir: the data directory it was read from.
        llms: the recorded LLMs, in ``default_llm.json`` order.
        queries: every recorded query, grouped by task in :data:`REPLAY_TASKS` order.
        data_checksums: sha256 of every file read, keyed by path relative to ``data_dir``.
        dedup: what deduplication kept and dropped, per task (counts; see :meth:`describe`).
    """

    def __init__(
        self,
        data_dir: Path,
        llms: Sequence[RecordedLLM],
        queries: Sequence[RecordedQuery],
        data_checksums: Mapping[str, str],
        dedup: Mapping[str, Mapping[str, int]],
    ):
        self.data_dir = data_dir
        self.llms = tuple(llms)
        self.queries = tuple(queries)
        self.data_checksums = MappingProxyType(dict(data_checksums))
        self.dedup = MappingProxyType(
            {task: MappingProxyType(dict(counts)) for task, counts in dedup.items()}
        )
        self._by_id = {query.id: query for query in self.queries}
        self._llms = {llm.name: llm for llm in self.llms}

    @property
    def llm_names(self) -> tuple[str, ...]:
        return tuple(self._llms)

    def llm(self, name: str) -> RecordedLLM:
        """The recorded LLM called ``name``.

        Raises:
            ConfigError: no LLM of that name is recorded (the message lists them).
        """
        try:
            return self._llms[name]
        except KeyError:
            raise ConfigError(
                f"LLM {name!r} has no recorded outcomes in {OUTCOME_SET!r}; recorded: "
                f"{', '.join(self._llms)}"
            ) from None

    def query(self, query_id: str) -> RecordedQuery:
        """The recorded query with example id ``query_id``.

        Raises:
            DataError: no recorded query has that id.
        """
        try:
            return self._by_id[query_id]
        except KeyError:
            raise DataError(
                f"no recorded query with id {query_id!r} in the {OUTCOME_SET!r} outcome table "
                f"({len(self._by_id)} queries of tasks {', '.join(REPLAY_TASKS)})"
            ) from None

    def task_queries(self, task: str) -> list[RecordedQuery]:
        """The recorded queries of ``task``.

        Raises:
            ConfigError: ``task`` is not one of :data:`REPLAY_TASKS`.
        """
        _check_task(task)
        return [query for query in self.queries if query.task == task]

    def recorded_mean(self, llm: str, task: str) -> float:
        """Mean recorded score of ``llm`` over the queries of ``task``: the accuracy the replay
        backend reproduces in expectation."""
        self.llm(llm)
        queries = self.task_queries(task)
        return sum(query.scores[llm] for query in queries) / len(queries)

    def describe(self) -> str:
        """One paragraph saying what the table holds and what deduplication did (for reports)."""
        parts = []
        for task in REPLAY_TASKS:
            counts = self.dedup[task]
            notes = [f"{counts['kept']} kept"]
            if counts["in_both_score_files"]:
                notes.append(
                    f"{counts['in_both_score_files']} scored in both train.json and test.json "
                    f"(kept once, mean score; {counts['conflicting_scores']} with differing scores)"
                )
            if counts["dropped_ambiguous"]:
                notes.append(
                    f"{counts['dropped_ambiguous']} dropped: one text, several tasks/tests"
                )
            if counts["dropped_unscored"]:
                notes.append(f"{counts['dropped_unscored']} dropped: no score record")
            parts.append(f"{task}: {counts['distinct_texts']} distinct texts, " + ", ".join(notes))
        return (
            f"LLMRouter recorded outcomes ({len(self.llms)} LLMs, {len(self.queries)} queries): "
            + "; ".join(parts)
        )


def _check_task(task: str) -> None:
    if task not in REPLAY_TASKS:
        raise ConfigError(
            f"unknown replay task {task!r}; the replay tasks are {list(REPLAY_TASKS)}"
        )


def load_outcome_table(data_dir: Optional[PathLike] = None) -> OutcomeTable:
    """Read, join and deduplicate the recorded outcomes (see the module docstring). The table of
    a data directory is built once per process and shared.

    Raises:
        DataError: a file is missing or malformed, or the files disagree (an LLM scored in one
            record and not another, a recorded question not found in its example's query).
    """
    return _load_outcome_table(resolve_data_dir(data_dir))


@functools.lru_cache(maxsize=4)
def _load_outcome_table(root: Path) -> OutcomeTable:
    relative = [f"{OUTCOME_DIR}/{name}" for name in (*_SCORE_FILES, *_QUERY_FILES, _LLM_FILE)]
    paths = {name: data_file(name, root) for name in (*relative, *_BENCHMARK_FILES)}
    checksums = {name: files_sha256([path]) for name, path in paths.items()}

    rows_by_text, dedup = _query_rows(paths)
    scores, in_test_file, scored_twice = _score_records(paths)
    llms = _recorded_llms(paths[f"{OUTCOME_DIR}/{_LLM_FILE}"], scores)

    code_examples = {
        example.id: example
        for task, split in (("humaneval", "test"), ("mbpp", "all"))
        for example in load_benchmark(task, split, root)
    }
    queries: dict[str, list[RecordedQuery]] = defaultdict(list)
    for text, row in rows_by_text.items():
        task = _RECORDED_TASK[row["task_name"]]
        if text not in scores:
            dedup[task]["dropped_unscored"] += 1
            continue
        example = _example(task, text, row, code_examples)
        if normalise_text(text) not in normalise_text(example.query):
            raise DataError(
                f"recorded {task} question {text[:60]!r}... does not occur in the query of its "
                f"example {example.id!r}; the replay backend could not find it in prompts"
            )
        queries[task].append(RecordedQuery(
            example=example,
            question=text,
            scores=MappingProxyType(scores[text]),
            in_test_file=text in in_test_file,
        ))
        counts = dedup[task]
        counts["kept"] += 1
        if text in scored_twice:
            counts["in_both_score_files"] += 1
            counts["conflicting_scores"] += int(scored_twice[text])
    ordered = [query for task in REPLAY_TASKS for query in queries[task]]
    ids = [query.id for query in ordered]
    if len(set(ids)) != len(ids):
        raise DataError(f"duplicate example ids in the {OUTCOME_SET!r} outcome table")
    return OutcomeTable(root, llms, ordered, checksums, dedup)


def _query_rows(
    paths: Mapping[str, Path],
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, int]]]:
    """One row per distinct query text of the five tasks; ambiguous texts dropped and counted."""
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for name in _QUERY_FILES:
        path = paths[f"{OUTCOME_DIR}/{name}"]
        for number, row in enumerate(read_jsonl(path), start=1):
            require_fields(row, _QUERY_FIELDS, path, f"row {number}")
            if row["task_name"] in _RECORDED_TASK:
                grouped[row["query"]].append(row)
    dedup: dict[str, dict[str, int]] = {
        task: dict.fromkeys(("distinct_texts", "kept", "in_both_score_files", "conflicting_scores",
                             "dropped_ambiguous", "dropped_unscored"), 0)
        for task in REPLAY_TASKS
    }
    rows: dict[str, dict[str, Any]] = {}
    for text, group in grouped.items():
        variants = {(r["task_name"], r["ground_truth"], str(r["choices"]), str(r["task_id"]))
                    for r in group}
        task = _RECORDED_TASK[group[0]["task_name"]]
        dedup[task]["distinct_texts"] += 1
        if len(variants) > 1:
            dedup[task]["dropped_ambiguous"] += 1
        else:
            rows[text] = group[0]
    return rows, dedup


def _score_records(
    paths: Mapping[str, Path],
) -> tuple[dict[str, dict[str, float]], set[str], dict[str, bool]]:
    """Scores per question text (mean over the texts scored in both files), the texts of
    ``test.json``, and, for texts scored twice, whether the two records differ."""
    records: dict[str, list[dict[str, float]]] = defaultdict(list)
    in_test_file: set[str] = set()
    llm_names: Optional[frozenset[str]] = None
    for name in _SCORE_FILES:
        path = paths[f"{OUTCOME_DIR}/{name}"]
        try:
            entries = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{str(path)!r} is not valid JSON: {exc}") from exc
        for index, entry in enumerate(entries):
            if not isinstance(entry, dict) or "question" not in entry or "scores" not in entry:
                raise DataError(f"{str(path)!r} entry {index} lacks 'question' or 'scores'")
            scores = {llm: float(value) for llm, value in entry["scores"].items()}
            if llm_names is None:
                llm_names = frozenset(scores)
            if frozenset(scores) != llm_names or not all(0.0 <= v <= 1.0 for v in scores.values()):
                raise DataError(
                    f"{str(path)!r} entry {index}: scores must be in [0, 1] for exactly the LLMs "
                    f"{sorted(llm_names)} (got {entry['scores']})"
                )
            records[entry["question"]].append(scores)
            if name == "test.json":
                in_test_file.add(entry["question"])
    merged = {
        text: {llm: sum(r[llm] for r in recs) / len(recs) for llm in recs[0]}
        for text, recs in records.items()
    }
    twice = {
        text: any(r != recs[0] for r in recs) for text, recs in records.items() if len(recs) > 1
    }
    return merged, in_test_file, twice


def _recorded_llms(path: Path, scores: Mapping[str, Mapping[str, float]]) -> list[RecordedLLM]:
    """The scored LLMs with their ``default_llm.json`` entries, in that file's order."""
    try:
        described = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{str(path)!r} is not valid JSON: {exc}") from exc
    scored = set(next(iter(scores.values()))) if scores else set()
    undescribed = sorted(scored - set(described))
    if undescribed:
        raise DataError(f"{str(path)!r} does not describe the scored LLM(s) {undescribed}")
    llms = []
    for name, entry in described.items():
        if name not in scored:
            continue
        try:
            llms.append(RecordedLLM(
                name=name,
                model=entry["model"],
                size=entry["size"],
                description=entry["feature"],
                price_in=float(entry["input_price"]),
                price_out=float(entry["output_price"]),
            ))
        except KeyError as exc:
            raise DataError(f"{str(path)!r} entry {name!r} lacks field {exc}") from None
    return llms


def _example(
    task: str, text: str, row: Mapping[str, Any], code_examples: Mapping[str, Example]
) -> Example:
    """The benchmark example of a recorded query (see the module docstring)."""
    if task in ("humaneval", "mbpp"):
        example_id = row["task_id"] if task == "humaneval" else f"mbpp/{row['task_id']}"
        if example_id not in code_examples:
            raise DataError(f"recorded {task} query names task {row['task_id']!r}, which the "
                            f"{task} benchmark file does not have")
        return code_examples[example_id]
    example_id = f"{task}/{OUTCOME_SET}/{hashlib.sha256(text.encode()).hexdigest()[:12]}"
    truth = row["ground_truth"]
    if task == "gsm8k":
        number = gsm8k.parse_number(truth.rpartition("####")[2]) if "####" in truth else None
        if number is None:
            raise DataError(f"recorded GSM8K answer of {example_id} has no '#### <number>' line")
        return Example(example_id, task, text, gsm8k.format_number(number), {"solution": truth})
    if task == "math":
        boxed = last_boxed(truth)
        if not boxed:
            raise DataError(f"recorded MATH solution of {example_id} has no \\boxed{{}} answer")
        return Example(example_id, task, text, boxed, {"solution": truth})
    choices = row["choices"]
    if isinstance(choices, str):
        choices = ast.literal_eval(choices)
    four = isinstance(choices, list) and len(choices) == len(mmlu.LETTERS)
    if not four or truth not in mmlu.LETTERS:
        raise DataError(
            f"recorded MMLU query {example_id} needs {len(mmlu.LETTERS)} choices and a letter in "
            f"{list(mmlu.LETTERS)} (got {row['choices']!r:.80}, {truth!r})"
        )
    return Example(example_id, task, mmlu.format_query(text, [str(c) for c in choices]), truth,
                   {"choices": [str(c) for c in choices]})


def recorded_outcome(
    query: RecordedQuery, llm: str, *, sample_index: int = 0, seed: Optional[int] = None
) -> bool:
    """Whether ``llm`` solves ``query`` in this call: its recorded 0/1 score, or for a fractional
    score ``p`` a Bernoulli(``p``) draw that is a pure function of (``llm``, ``query.id``,
    ``sample_index``, ``seed``; ``None`` counts as 0).

    Raises:
        ConfigError: ``llm`` has no recorded score for the query.
    """
    try:
        score = query.scores[llm]
    except KeyError:
        raise ConfigError(f"LLM {llm!r} has no recorded score; recorded: "
                          f"{', '.join(query.scores)}") from None
    if score >= 1.0 or score <= 0.0:
        return score >= 1.0
    key = f"{llm}\x1f{query.id}\x1f{sample_index}\x1f{seed or 0}".encode()
    uniform = int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2.0**64
    return uniform < score



"""How well the project's evaluators read real LLM replies: every recorded ZeroEval reply (43 LLMs
on GSM8K test, 41 on MATH level 5; ``outcomes/zeroeval`` in the data directory) is scored
against its gold answer with the registry's ``aevaluate`` (the same scorers, scorer processes,
timeouts and memo that training uses), and the report says, per task:

* the fraction of replies whose answer was extracted (``Score.extracted`` is not ``None``);
* accuracy per LLM, next to a naive independent count (the reply from its first ``{`` to its
  last ``}`` through ``json.loads(..., strict=False)``, nothing else; its ``"answer"`` field
  compared with the gold as a number for GSM8K, ``$`` and thousands commas dropped, and as an
  exact string for MATH; anything that does not parse is wrong), and the difference;
* why replies failed (reasons counted) and a seeded random sample of extraction failures with
  the tail of each reply, for reading by hand;
* wall time.

Usage::

    python -m masr_graph.benchmarks.tasks.zeroeval_extraction_report [--data-dir DIR]
        [--tasks gsm8k math_l5] [--sample 50] [--seed 0] [--json report.json]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gzip
import json
import math
import random
import re
import sys
import time
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from masr_graph.errors import ConfigError

from ..data.data_dir import PathLike, data_file, read_jsonl, require_fields
from . import gsm8k
from .datasets import Example, Score
from .registry import aevaluate_many

RECORDINGS = {"gsm8k": "gsm8k", "math_l5": "math"}
"""Recording name -> the project task whose evaluator scores it."""
TAIL_CHARS = 300
"""How much of a failed reply's end the sample shows."""


@dataclass(frozen=True)
class Verdict:
    """One recorded reply and how it scored."""

    model: str
    question_id: str
    reply: str
    score: Score
    naive_correct: bool


def load_recording(
    name: str, data_dir: Optional[PathLike] = None
) -> tuple[list[Example], list[dict]]:
    """The questions of one recording as examples (id ``zeroeval/<name>/<id>``) and its replies
    (``model``, ``id``, ``output``), each reply paired with the example of its question.

    Raises:
        ConfigError: unknown recording name.
        DataError: a file is missing or a row lacks a field.
    """
    if name not in RECORDINGS:
        raise ConfigError(f"unknown ZeroEval recording {name!r}; choose one of {list(RECORDINGS)}")
    task = RECORDINGS[name]
    questions_path = data_file(f"outcomes/zeroeval/questions_{name}.jsonl", data_dir)
    examples = {}
    for row in read_jsonl(questions_path):
        require_fields(row, ("id", "question", "gold"), questions_path, f"question {row.get('id')}")
        gold = str(row["gold"])
        if task == "gsm8k":  # the evaluator's canonical form ("1,000" -> "1000")
            number = gsm8k.parse_number(gold)
            gold = gsm8k.format_number(number) if number is not None else gold
        examples[row["id"]] = Example(
            id=f"zeroeval/{name}/{row['id']}", task=task, query=row["question"], answer=gold
        )
    replies_path = data_file(f"outcomes/zeroeval/replies_{name}.jsonl.gz", data_dir)
    with gzip.open(replies_path, "rt", encoding="utf-8") as handle:
        replies = [json.loads(line) for line in handle if line.strip()]
    for index, reply in enumerate(replies):
        require_fields(reply, ("model", "id", "output"), replies_path, f"row {index}")
    paired = [examples[reply["id"]] for reply in replies]
    return paired, replies


def naive_correct(task: str, reply: str, gold: str) -> bool:
    """The naive independent count: ``json.loads`` of the reply from its first ``{`` to its
    last ``}``, its ``"answer"`` compared with ``gold`` as a number (GSM8K: commas and ``$``
    dropped) or as an exact string (MATH)."""
    try:
        parsed = json.loads(reply[reply.find("{") : reply.rfind("}") + 1], strict=False)
    except ValueError:
        return False
    if not isinstance(parsed, dict) or "answer" not in parsed:
        return False
    answer = str(parsed["answer"]).strip()
    if task != "gsm8k":
        return answer == gold.strip()
    try:
        return math.isclose(float(answer.replace(",", "").replace("$", "")), float(gold))
    except ValueError:
        return False


async def score_recording(
    name: str, data_dir: Optional[PathLike] = None, *, progress: bool = False
) -> list[Verdict]:
    """Score every reply of a recording with the project's evaluator."""
    examples, replies = load_recording(name, data_dir)
    outputs = [reply["output"] for reply in replies]
    # Enough calls in flight to keep every scorer process busy.
    scores = await aevaluate_many(examples, outputs, max_concurrency=16, progress=progress)
    return [
        Verdict(
            reply["model"],
            reply["id"],
            reply["output"],
            score,
            naive_correct(example.task, reply["output"], example.answer),
        )
        for reply, example, score in zip(replies, examples, scores, strict=True)
    ]


def summarise(verdicts: Sequence[Verdict], *, sample: int = 50, seed: int = 0) -> dict[str, Any]:
    """Extraction fraction, per-model accuracy (ours and naive), failure reasons and a seeded
    sample of failures, as a JSON-serialisable dict."""
    by_model: dict[str, list[Verdict]] = collections.defaultdict(list)
    for verdict in verdicts:
        by_model[verdict.model].append(verdict)
    models = []
    for model, rows in sorted(by_model.items()):
        ours = sum(v.score.correct for v in rows) / len(rows)
        naive = sum(v.naive_correct for v in rows) / len(rows)
        extracted = sum(v.score.extracted is not None for v in rows) / len(rows)
        models.append(
            {
                "model": model,
                "replies": len(rows),
                "extracted": extracted,
                "accuracy": ours,
                "naive_accuracy": naive,
                "difference": ours - naive,
            }
        )
    models.sort(key=lambda row: -row["accuracy"])
    failures = [v for v in verdicts if v.score.extracted is None]
    reasons = collections.Counter(_reason(v.score.detail) for v in failures)
    chosen = random.Random(seed).sample(failures, min(sample, len(failures)))
    return {
        "replies": len(verdicts),
        "extracted": 1 - len(failures) / len(verdicts) if verdicts else 0.0,
        "accuracy": sum(v.score.correct for v in verdicts) / len(verdicts) if verdicts else 0.0,
        "naive_accuracy": sum(v.naive_correct for v in verdicts) / len(verdicts)
        if verdicts
        else 0.0,
        "models": models,
        "failure_reasons": reasons.most_common(),
        "failure_sample": [
            {
                "model": v.model,
                "id": v.question_id,
                "why": v.score.detail,
                "tail": v.reply[-TAIL_CHARS:],
            }
            for v in chosen
        ],
    }


def _reason(detail: str) -> str:
    # Group reasons that quote the reply ("the JSON answer 'Cannot be determined' holds ...").
    return re.sub(r"'.*'|\".*\"", "'…'", detail)


def format_report(name: str, summary: dict[str, Any], wall_s: float) -> str:
    """The summary of one recording as Markdown."""
    lines = [
        f"## {name}: {summary['replies']} replies, scored in {wall_s:.1f} s",
        "",
        (
            f"answer extracted: {summary['extracted']:.4f}; accuracy {summary['accuracy']:.4f} "
            f"(naive json.loads count: {summary['naive_accuracy']:.4f})"
        ),
        "",
        "| model | replies | extracted | accuracy | naive | difference |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in summary["models"]:
        lines.append(
            f"| {row['model']} | {row['replies']} | {row['extracted']:.3f} | {row['accuracy']:.3f} "
            f"| {row['naive_accuracy']:.3f} | {row['difference']:+.3f} |"
        )
    lines += ["", "failure reasons:", ""]
    lines += [f"- {count} × {reason}" for reason, count in summary["failure_reasons"]]
    lines += ["", f"sample of {len(summary['failure_sample'])} failures:", ""]
    for index, failure in enumerate(summary["failure_sample"], 1):
        tail = failure["tail"].replace("\n", "⏎")
        lines.append(f"{index}. {failure['model']} / {failure['id']}: {failure['why']}")
        lines.append(f"   …{tail}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Score the recordings and print the report (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None, help="data directory (default: MASR_DATA_DIR)")
    parser.add_argument("--tasks", nargs="+", default=list(RECORDINGS), choices=list(RECORDINGS))
    parser.add_argument("--sample", type=int, default=50, help="failures shown per task")
    parser.add_argument("--seed", type=int, default=0, help="seed of the failure sample")
    parser.add_argument("--json", default=None, help="also write the summaries to this file")
    parser.add_argument("--progress", action="store_true", help="show a progress bar")
    args = parser.parse_args(argv)
    summaries = {}
    for name in args.tasks:
        started = time.perf_counter()
        verdicts = asyncio.run(score_recording(name, args.data_dir, progress=args.progress))
        wall_s = time.perf_counter() - started
        summaries[name] = {
            **summarise(verdicts, sample=args.sample, seed=args.seed),
            "wall_s": wall_s,
        }
        print(format_report(name, summaries[name], wall_s), end="\n\n", flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(summaries, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The `masr` console script, run as a real subprocess: help on every command, `route` printing
the plan the router chooses, a train → checkpoint → eval round trip on a handful of replay queries
under a budget cap, the budget stop and bad input."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import pytest
import torch

from masr_graph.benchmarks.experiment import DEFAULT_ROUTER_CONFIG, vocab_for_pool
from masr_graph.replay import replay_specs
from masr_graph.router import MasRouter, NodeVocab, load_checkpoint, save_checkpoint

from router_support import shared_encoder

TIMEOUT_S = 600


def masr(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the installed console script (``python -m masr_graph.cli`` when it is not on PATH)."""
    script = shutil.which("masr")
    command: Sequence[str] = [script] if script else [sys.executable, "-m", "masr_graph.cli"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=TIMEOUT_S,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("command, expected", [
    ((), ["route", "train", "eval", "serve", "Exit status"]),
    (("route",), ["QUERY", "--checkpoint", "--sample", "--json", "--pool", "--replay"]),
    (("train",), ["--checkpoint", "--init-from", "--steps", "--lam", "--max-usd", "--out"]),
    (("eval",), ["--checkpoint", "--max-test", "--max-usd", "--benchmarks", "--name"]),
    (("serve",), ["--checkpoint", "--host", "--port", "--api-key-env", "--max-usd", "--pool"]),
])
def test_help_everywhere(command: tuple[str, ...], expected: list[str]) -> None:
    done = masr(*command, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: masr {' '.join(command)}".rstrip())
    for word in expected:
        assert word in done.stdout


def test_route_prints_the_routers_plan(tmp_path: Path) -> None:
    torch.manual_seed(3)
    path = save_checkpoint(tmp_path / "router.pt", MasRouter(DEFAULT_ROUTER_CONFIG),
                           NodeVocab.from_registries(replay_specs()))
    queries = ["What is 17 * 23?", "Write a Python function that reverses a linked list."]
    done = masr("route", *queries, "--checkpoint", str(path))
    assert done.returncode == 0, done.stderr
    checkpoint = load_checkpoint(path, encoder=shared_encoder())
    expected = checkpoint.router.route(queries, checkpoint.vocab)
    blocks = done.stdout.strip().split("\n\n")
    assert len(blocks) == 2
    for block, query, plan in zip(blocks, queries, expected):
        assert block.startswith(f"query: {query}")
        assert re.search(rf"mode +{plan.mode} +p=0\.\d{{3}}", block)
        assert re.search(rf"task +{plan.task} +p=", block)
        assert re.search(rf"agents +{plan.k} +p=", block)
        agents = re.findall(r"agent (\d): role (.+?) \(p=(0\.\d+)\), LLM (\S+) \(p=(0\.\d+)\)",
                            block)
        assert [(a[1], a[3]) for a in agents] == list(zip(plan.roles, plan.llms))
        assert [float(a[4]) for a in agents] == pytest.approx(plan.probs["llms"], abs=1e-3)


def test_train_checkpoint_eval_round_trip(tmp_path: Path) -> None:
    out, ckpt = tmp_path / "run", tmp_path / "router.pt"
    done = masr("train", "--replay", "--checkpoint", str(ckpt), "--benchmarks", "gsm8k", "mmlu",
                "--max-train", "6", "--steps", "2", "--batch-size", "4", "--max-usd", "0.5",
                "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "trained to step 2" in done.stdout
    state = load_checkpoint(ckpt).trainer_state
    assert state is not None and state["step"] == 2 and state["config"]["batch_size"] == 4
    spent = float(re.search(r"\$(\d+\.\d+) spent", done.stdout).group(1))
    assert 0 < spent <= 0.5
    # Replay prices are recorded list prices: the output says nothing was paid.
    assert re.search(r"\$\S+ per query \(notional: replay pool", done.stdout)
    assert re.search(r"\$\d+\.\d+ spent of the \$0\.500000 cap .*\[notional: replay pool: "
                     r"recorded list prices, nothing was paid\]", done.stdout)

    done = masr("eval", "--checkpoint", str(ckpt), "--benchmarks", "gsm8k", "mmlu",
                "--max-test", "5", "--max-usd", "0.5", "--out", str(out))
    assert done.returncode == 0, done.stderr
    [results] = list(out.glob("eval-MasRouter*.json"))
    rows = json.loads(results.read_text())["results"]
    assert sorted(row["benchmark"] for row in rows) == ["gsm8k", "mmlu"]
    assert all(row["n"] == 5 and 0.0 <= row["accuracy"] <= 1.0 for row in rows)
    assert "| MasRouter [router@" in done.stdout
    assert "| $ (notional) / query |" in done.stdout and "nothing was paid" in done.stdout
    for benchmark in ("gsm8k", "mmlu"):
        [traces] = list((out / "traces" / benchmark).glob("MasRouter*.jsonl"))
        lines = [json.loads(line) for line in traces.read_text().splitlines()]
        assert len(lines) == 5
        train_ids = _ids(out / "splits" / f"{benchmark}.train_ids.txt", "train")
        test_ids = {line["result"]["query_id"] for line in lines}
        assert len(train_ids) == 6 and not train_ids & test_ids
        # The checkpoint's router chose the evaluated plans (greedy, over the replay pool).
        first = lines[0]["trace"]
        checkpoint = load_checkpoint(ckpt, encoder=shared_encoder())
        [plan] = checkpoint.router.route([first["query"]],
                                         vocab_for_pool(checkpoint.vocab, replay_specs()))
        assert (first["plan"]["mode"], first["plan"]["llms"]) == (plan.mode, list(plan.llms))


def _ids(path: Path, part: str) -> set[str]:
    lines = path.read_text().splitlines()
    start = lines.index(f"# {part}") + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("# ")), len(lines))
    return set(lines[start:end])


def test_budget_cap_stops_eval_with_status_3(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = save_checkpoint(tmp_path / "router.pt", MasRouter(DEFAULT_ROUTER_CONFIG),
                           NodeVocab.from_registries(replay_specs()))
    done = masr("eval", "--checkpoint", str(path), "--benchmarks", "gsm8k", "--max-test", "5",
                "--max-usd", "0.000001", "--out", str(tmp_path / "run"))
    assert done.returncode == 3, done.stderr
    assert "masr eval: stopped by the budget cap" in done.stderr
    assert done.stderr.rstrip().endswith("rerun with a higher --max-usd to continue.")
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("args, status, message", [
    (("route", "What is 2+2?"), 2, "the following arguments are required: --checkpoint"),
    (("train", "--checkpoint", "x.pt", "--steps", "-1"), 2, "must be an integer >= 0"),
    (("fly",), 2, "invalid choice: 'fly'"),
    (("train", "--checkpoint", "x.pt", "--pool", "p.yaml", "--replay"), 2, "not allowed with"),
    (("eval", "--checkpoint", "missing.pt"), 1, "checkpoint missing.pt does not exist"),
    (("serve", "--checkpoint", "x.pt", "--api-key-env", "MASR_TEST_NOT_SET"), 1,
     "'MASR_TEST_NOT_SET', but that environment variable is not set"),
])
def test_bad_input_fails_with_a_clear_message(args: tuple[str, ...], status: int,
                                              message: str) -> None:
    done = masr(*args, env={"MASR_TEST_NOT_SET": ""})
    assert done.returncode == status
    assert message in done.stderr
    assert "Traceback" not in done.stderr

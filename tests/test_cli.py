"""The `masr` console script, run as a real subprocess: help on every command, `route` printing
the plan the trained policy chooses at a cost preference, a train → checkpoint → eval round trip
on a handful of recorded queries under a budget cap, the budget stop and bad input."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from masr_graph.cli import load_policy
from masr_graph.replay import replay_specs
from masr_graph.router import load_checkpoint

from policies import library_checkpoint

TIMEOUT_S = 600
TEAM = "qwen2.5-7b-instruct,llama-3.1-8b-instruct,llama-3.1-nemotron-51b-instruct"
"""Three LLMs of the LLMRouter world: a library small enough for a test (12 plans)."""
PAIR_DIR = f"llmrouter-{TEAM.replace(',', '+')}-gsm8k"


def masr(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the installed console script (``python -m masr_graph.cli`` when it is not on PATH)."""
    script = shutil.which("masr")
    command: Sequence[str] = [script] if script else [sys.executable, "-m", "masr_graph.cli"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=TIMEOUT_S,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("command, expected", [
    ((), ["route", "train", "eval", "serve", "data", "Exit status"]),
    (("route",), ["QUERY", "--checkpoint", "--lam", "--json"]),
    (("train",), ["--checkpoint", "--world", "--pool", "--benchmark", "--lambdas", "--steps",
                  "--max-usd", "--out"]),
    (("eval",), ["--checkpoint", "--lam", "--max-test", "--max-usd", "--benchmark", "--name"]),
    (("serve",), ["--checkpoint", "--lam", "--host", "--port", "--api-key-env", "--max-usd",
                  "--pool"]),
    (("data",), ["fetch", "check"]),
])
def test_help_everywhere(command: tuple[str, ...], expected: list[str]) -> None:
    done = masr(*command, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: masr {' '.join(command)}".rstrip())
    for word in expected:
        assert word in done.stdout


def test_route_prints_the_policys_plan_at_each_lambda(tmp_path: Path) -> None:
    specs = replay_specs("llmrouter", TEAM, task="gsm8k")
    # Gate: at λ=1000 the cheapest single (library plan 0) is fixed; at λ=0 the router routes.
    path = library_checkpoint(tmp_path / "router.pt", specs, gate={"math": {0.0: None,
                                                                            1000.0: 0}})
    queries = ["What is 17 * 23?", "A train leaves at 3 pm at 60 mph; when has it gone 150 miles?"]
    policy = load_policy(path)
    for lam, gated in ((0.0, False), (1000.0, True)):
        done = masr("route", *queries, "--checkpoint", str(path), "--lam", f"{lam:g}")
        assert done.returncode == 0, done.stderr
        expected = policy.route(queries, lam)
        blocks = done.stdout.strip().split("\n\n")
        assert len(blocks) == 2
        for block, query, plan in zip(blocks, queries, expected):
            assert block.startswith(f"query: {query}")
            assert re.search(rf"mode +{plan.mode}\n", block)
            assert re.search(rf"agents +{plan.k}\n", block)
            agents = re.findall(r"agent (\d): role (.+?), LLM (\S+)", block)
            assert [(a[1], a[2]) for a in agents] == list(zip(plan.roles, plan.llms))
            assert ("fixed plan the validation gate chose" in block) == gated
            if not gated:
                shown = float(re.search(r"library's: (\d\.\d{3})", block).group(1))
                assert shown == pytest.approx(plan.probs["plan"], abs=1e-3)
    done = masr("route", queries[0], "--checkpoint", str(path), "--json")
    [row] = json.loads(done.stdout)
    assert row["query"] == queries[0] and row["plan"]["mode"] == policy.route(queries[:1],
                                                                              100.0)[0].mode


def test_train_checkpoint_eval_round_trip(tmp_path: Path) -> None:
    out, ckpt = tmp_path / "run", tmp_path / "router.pt"
    train = ("train", "--world", "llmrouter", "--pool", TEAM, "--benchmark", "gsm8k",
             "--checkpoint", str(ckpt), "--max-train", "12", "--max-validation", "6",
             "--steps", "20", "--lambdas", "0", "1000", "--out", str(out))
    done = masr(*train, "--max-usd", "0.5")
    assert done.returncode == 0, done.stderr
    assert re.search(r"plan library: 12 plans, 216 executions now", done.stdout)
    assert re.search(r"λ=0: (routes per query|fixed plan)", done.stdout)
    assert re.search(r"\$\d+\.\d+ spent of the \$0\.500000 cap .*\[notional: replay pool: "
                     r"recorded list prices, nothing was paid\]", done.stdout)
    loaded = load_checkpoint(ckpt)
    assert len(loaded.library) == 12 and set(loaded.gate["math"]) == {0.0, 1000.0}
    # The library's outcomes are stored: a second training run makes no LLM call.
    again = masr(*train, "--checkpoint", str(tmp_path / "again.pt"))
    assert again.returncode == 0, again.stderr
    assert "12 plans, 0 executions now" in again.stdout
    assert re.search(r"(?<!\d)0 LLM calls \(0 from cache", again.stdout)

    done = masr("eval", "--world", "llmrouter", "--pool", TEAM, "--benchmark", "gsm8k",
                "--checkpoint", str(ckpt), "--max-test", "5", "--lam", "0", "1000",
                "--max-usd", "0.5", "--out", str(out))
    assert done.returncode == 0, done.stderr
    rows = re.findall(r"λ=(\d+): (\d\.\d{3}) \[(\d\.\d{3}), (\d\.\d{3})\] · (\d\.\d{3})",
                      done.stdout)
    assert [row[0] for row in rows] == ["0", "1000"]
    assert all(float(low) <= float(mean) <= float(high) for _, mean, low, high, _ in rows)
    assert "nothing was paid" in done.stdout
    split = json.loads((out / PAIR_DIR / "split.json").read_text())
    policy = load_policy(ckpt)
    for lam in ("0", "1000"):
        [traces] = list((out / "traces" / PAIR_DIR).glob(f"MasRouter*λ={lam}.jsonl"))
        lines = [json.loads(line) for line in traces.read_text().splitlines()]
        assert len(lines) == 5
        assert not {line["result"]["query_id"] for line in lines} & set(split["train_ids"])
        # The checkpoint's policy chose the evaluated plans.
        first = lines[0]["trace"]
        [plan] = policy.route([first["query"]], float(lam))
        assert (first["plan"]["mode"], first["plan"]["llms"]) == (plan.mode, list(plan.llms))


def test_budget_cap_stops_eval_with_status_3(tmp_path: Path) -> None:
    path = library_checkpoint(tmp_path / "router.pt",
                              replay_specs("llmrouter", TEAM, task="gsm8k"))
    done = masr("eval", "--world", "llmrouter", "--pool", TEAM, "--benchmark", "gsm8k",
                "--checkpoint", str(path), "--max-test", "5", "--max-usd", "0.000001",
                "--out", str(tmp_path / "run"))
    assert done.returncode == 3, done.stderr
    assert "masr eval: stopped by the budget cap" in done.stderr
    assert done.stderr.rstrip().endswith("rerun with a higher --max-usd to continue.")
    assert "Traceback" not in done.stderr


def test_eval_takes_a_shipped_checkpoint_by_name(tmp_path: Path) -> None:
    done = masr("eval", "--world", "zeroeval", "--pool", "paper5", "--benchmark", "gsm8k",
                "--checkpoint", "zeroeval-paper5-gsm8k", "--max-test", "4", "--lam", "100",
                "--out", str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr
    assert re.search(r"MasRouter \[zeroeval-paper5-gsm8k@[0-9a-f]{8}\] on zeroeval-paper5-gsm8k, "
                     r"4 test queries", done.stdout)
    assert re.search(r"λ=100: -?\d\.\d{3} \[", done.stdout)
    unknown = masr("eval", "--benchmark", "gsm8k", "--checkpoint", "no-such-router")
    assert unknown.returncode == 1 and "unknown checkpoint 'no-such-router'" in unknown.stderr


@pytest.mark.parametrize("args, status, message", [
    (("route", "What is 2+2?"), 2, "the following arguments are required: --checkpoint"),
    (("train", "--checkpoint", "x.pt", "--benchmark", "gsm8k", "--steps", "0"), 2,
     "must be an integer >= 1"),
    (("fly",), 2, "invalid choice: 'fly'"),
    (("train", "--checkpoint", "x.pt", "--benchmark", "gsm8k", "--world", "moon"), 2,
     "invalid choice: 'moon'"),
    (("route", "2+2?", "--checkpoint", "x.pt", "--lam", "-1"), 2, "must be a finite number >= 0"),
    (("eval", "--checkpoint", "missing.pt", "--benchmark", "gsm8k"), 1,
     "checkpoint missing.pt does not exist"),
    (("serve", "--checkpoint", "x.pt", "--api-key-env", "MASR_TEST_NOT_SET"), 1,
     "'MASR_TEST_NOT_SET', but that environment variable is not set"),
])
def test_bad_input_fails_with_a_clear_message(args: tuple[str, ...], status: int,
                                              message: str) -> None:
    done = masr(*args, env={"MASR_TEST_NOT_SET": ""})
    assert done.returncode == status
    assert message in done.stderr
    assert "Traceback" not in done.stderr

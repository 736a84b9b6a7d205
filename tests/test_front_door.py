"""The front door (`masr_graph.MAS`) and shipped checkpoints, on a router really trained by the
protocol (`PairRun`) on a small sample of the ZeroEval world's paper5 pool on GSM8K: the
checkpoint records its origin, `MAS.from_checkpoint` rebuilds that pool from it, `run` executes
the plan `route` chooses, λ steers cost, the exporter writes a float16 copy that routes exactly
as the original and is found by name; `masr serve` picks its pool from the origin and writes
every call to `--ledger`."""
from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import masr_graph
import masr_graph.checkpoints as checkpoints
from masr_graph import MAS, ConfigError, UnknownQueryError
from masr_graph.benchmarks.experiment import open_runtime
from masr_graph.benchmarks.experiment.protocol import Pair, PairRun, ProtocolSettings
from masr_graph.checkpoints.export import pair_test_queries
from masr_graph.llm.ledger import Ledger
from masr_graph.plan import Plan
from masr_graph.replay import load_world, replay_specs
from masr_graph.router import TextEncoder, load_checkpoint, save_checkpoint
from masr_graph.router.checkpoint import ORIGIN_KEYS
from masr_graph.router.library import LibraryPolicy

from policies import library_checkpoint
from serve_support import masr_serve

PAIR = Pair("zeroeval", "paper5", "gsm8k")
LAMBDAS = (0.0, 100.0, 10000.0)
SETTINGS = ProtocolSettings(lambdas=LAMBDAS, seeds=(0,), max_train=24, max_validation=12,
                            max_test=12, team_llms=3, router_steps=20)


@dataclass
class Trained:
    run_dir: Path
    checkpoint: Path
    test_queries: list[str]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """MasRouter trained by the protocol on 24 training queries (a real run_all.py pair
    folder: checkpoint, split, used ids, backend)."""
    out = tmp_path_factory.mktemp("run")
    run = PairRun(PAIR, SETTINGS, out, TextEncoder(), None)

    async def train() -> None:
        async with open_runtime(run.specs, out, run_id="front-door",
                                max_tokens=run.max_tokens) as runtime:
            await run.prepare(runtime.pipeline)
            run.router(0)

    asyncio.run(train())
    return Trained(out, out / PAIR.name / "masrouter-seed0.pt",
                   [example.query for example in run.data.test])


@pytest.fixture(scope="module")
def mas(trained: Trained):
    with MAS.from_checkpoint(trained.checkpoint) as front:
        yield front


def test_import_stays_light() -> None:
    done = subprocess.run([sys.executable, "-c", "import sys, masr_graph; "
                           "print('torch' in sys.modules, 'MAS' in masr_graph.__all__)"],
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["False", "True"], done.stderr


def test_protocol_checkpoint_records_its_origin(trained: Trained) -> None:
    origin = load_checkpoint(trained.checkpoint).origin
    assert origin is not None and set(ORIGIN_KEYS) <= set(origin)
    assert {key: origin[key] for key in ORIGIN_KEYS} == {
        "world": "zeroeval", "pool": "paper5", "benchmark": "gsm8k", "rule": "calibrated",
        "split_seed": 0, "seed": 0, "train_size": 24}
    assert origin["validation_size"] == 12 and origin["lambdas"] == list(LAMBDAS)
    assert LibraryPolicy.from_checkpoint(trained.checkpoint).origin == origin


def test_from_checkpoint_builds_the_pool_it_was_trained_on(mas: MAS) -> None:
    expected = replay_specs("zeroeval", "paper5", task="gsm8k", rule="calibrated")
    assert [spec.name for spec in mas.specs] == [spec.name for spec in expected]
    assert {spec.base_url for spec in mas.specs} == {spec.base_url for spec in expected}
    assert mas.origin["pair"] == PAIR.name
    assert "zeroeval-paper5-gsm8k" in repr(mas)


def test_run_executes_the_plan_route_chooses(mas: MAS, trained: Trained) -> None:
    for query in trained.test_queries[:4]:
        for lam in (0.0, 10000.0):
            plan = mas.route(query, cost_lambda=lam)
            result = mas.run(query, cost_lambda=lam)
            assert result.plan == plan
            assert Plan.from_dict(result.trace.plan) == plan
            assert result.ok and result.answer == result.trace.final_answer != ""
            steps = result.steps
            # an escalation stops at the first agent whose answer it accepts
            assert result.calls == len(steps) >= (1 if plan.mode == "Escalation" else plan.k)
            assert result.cost_usd == pytest.approx(sum(s.cost_usd for s in steps))
            assert result.prompt_tokens == sum(s.prompt_tokens for s in steps) > 0
            assert result.completion_tokens == sum(s.completion_tokens for s in steps) > 0
            assert result.total_tokens == result.prompt_tokens + result.completion_tokens
            assert {s.llm for s in steps} <= set(plan.llms) | {plan.decision_llm}
            assert result.cost_lambda == lam
            json.dumps(result.to_dict())


def test_replay_costs_are_notional(mas: MAS, trained: Trained) -> None:
    result = mas.run(trained.test_queries[0])
    assert result.cost_notional is True and "nothing was paid" in result.cost_note
    assert result.would_have_cost_usd > 0
    spending = mas.spending()
    assert "nothing was paid" in spending["notional"]
    assert spending["calls"] == len(mas.pool.ledger) > 0
    assert spending["spent_usd"] == pytest.approx(mas.pool.ledger.totals().cost_usd)


def test_a_high_cost_lambda_picks_cheaper_plans(mas: MAS, trained: Trained) -> None:
    queries = trained.test_queries
    free = mas.run_many(queries, cost_lambda=0.0)
    dear = mas.run_many(queries, cost_lambda=10000.0)
    for cheap, rich in zip(dear, free):
        assert cheap.cost_usd <= rich.cost_usd, (cheap.plan, rich.plan)
    assert sum(r.cost_usd for r in dear) < sum(r.cost_usd for r in free)
    assert [r.plan for r in dear] == [mas.route(q, 10000.0) for q in queries]


def test_run_many_equals_run_one_by_one(mas: MAS, trained: Trained) -> None:
    queries = trained.test_queries[:6]
    together = mas.run_many(queries, cost_lambda=100.0)
    assert [r.query for r in together] == queries
    for query, batched in zip(queries, together):
        alone = mas.run(query, cost_lambda=100.0)
        assert (alone.plan, alone.answer, alone.prompt_tokens) == (
            batched.plan, batched.answer, batched.prompt_tokens)


def test_arun_from_another_event_loop(mas: MAS, trained: Trained) -> None:
    async def main():
        return await asyncio.gather(*(mas.arun(q, cost_lambda=10000.0)
                                      for q in trained.test_queries[:3]))

    results = asyncio.run(main())
    assert [r.plan for r in results] == [mas.route(q, 10000.0) for q in trained.test_queries[:3]]


def test_bad_input_is_one_clear_line(mas: MAS) -> None:
    with pytest.raises(ConfigError, match="cost_lambda must be a finite number >= 0"):
        mas.route("What is 2 + 2?", cost_lambda=-1)
    with pytest.raises(ConfigError, match="non-empty string"):
        mas.run("  ")
    with pytest.raises(UnknownQueryError):  # a replay pool answers only recorded queries
        mas.run("What is the capital of a country that was never recorded?")


def test_unknown_name_and_missing_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       trained: Trained) -> None:
    monkeypatch.setattr(checkpoints, "FOLDER", tmp_path / "empty")
    with pytest.raises(ConfigError) as info:
        MAS.from_checkpoint("zeroeval-paper5-nothing")
    message = str(info.value)
    assert "\n" not in message and "'zeroeval-paper5-nothing'" in message
    assert "none is shipped" in message
    (tmp_path / "ship").mkdir()
    shutil.copy(trained.checkpoint, tmp_path / "ship" / "a-b-c.pt")
    monkeypatch.setattr(checkpoints, "FOLDER", tmp_path / "ship")
    with pytest.raises(ConfigError, match=r"shipped: a-b-c\)"):
        MAS.from_checkpoint("zeroeval-paper5-nothing")
    with pytest.raises(ConfigError, match=r"^checkpoint .*missing\.pt does not exist$"):
        MAS.from_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(ConfigError, match="does not exist"):
        MAS.from_checkpoint(str(tmp_path / "sub" / "model"))


def test_checkpoint_without_origin_needs_world_or_pool(tmp_path: Path) -> None:
    specs = replay_specs("zeroeval", "paper5", task="gsm8k")
    path = library_checkpoint(tmp_path / "old.pt", specs)
    assert load_checkpoint(path).origin is None
    with pytest.raises(ConfigError) as info:
        MAS.from_checkpoint(path)
    assert "\n" not in str(info.value) and "world=/pool=" in str(info.value)
    with MAS.from_checkpoint(path, world="zeroeval", pool="paper5") as front:
        assert [s.name for s in front.specs] == [s.name for s in specs]
        query = load_world("zeroeval").examples("gsm8k")[0].query
        assert front.run(query, cost_lambda=0.0).plan == front.route(query, 0.0)


def test_origin_rule_and_overrides_pick_the_pool(tmp_path: Path) -> None:
    specs = replay_specs("zeroeval", "paper5", task="gsm8k")
    origin = {"world": "zeroeval", "pool": "paper5", "benchmark": "gsm8k", "rule": "stubborn",
              "split_seed": 0, "seed": 0, "train_size": 1}
    path = library_checkpoint(tmp_path / "stubborn.pt", specs, origin=origin)
    with MAS.from_checkpoint(path) as front:
        assert all("rule=stubborn" in spec.base_url for spec in front.specs)
    with MAS.from_checkpoint(path, rule="calibrated", pool="all") as front:
        assert all("rule=calibrated" in spec.base_url for spec in front.specs)
        assert len(front.specs) > len(specs)  # every recorded LLM; the library keeps its five
        assert {llm for plan in front.library for llm in plan.llms} <= {s.name for s in specs}
    endpoints = library_checkpoint(tmp_path / "real.pt", specs,
                                   origin={**origin, "world": "endpoints", "pool": "my.yaml"})
    with pytest.raises(ConfigError, match="pass that pool file"):
        MAS.from_checkpoint(endpoints)


def test_export_ships_a_float16_copy_that_routes_identically(
        trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An older run: the same pair folder, but a checkpoint that predates origins.
    run_dir = tmp_path / "run"
    shutil.copytree(trained.run_dir / PAIR.name, run_dir / PAIR.name,
                    ignore=shutil.ignore_patterns("*.sqlite"))
    source = run_dir / PAIR.name / "masrouter-seed0.pt"
    old = load_checkpoint(source)
    save_checkpoint(source, old.router, old.vocab, library=old.library, gate=old.gate)
    assert load_checkpoint(source).origin is None
    (run_dir / "not-a-pair").mkdir()  # no checkpoint: not looked at
    (run_dir / "weird").mkdir()  # a checkpoint in a folder that names no pair: skipped
    shutil.copy(source, run_dir / "weird" / "masrouter-seed0.pt")
    dest = tmp_path / "ship"
    done = subprocess.run([sys.executable, "-m", "masr_graph.checkpoints", "export",
                           str(run_dir), "--seed", "0", "--dest", str(dest),
                           "--max-queries", "40"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "routing decisions identical" in done.stdout
    assert "skipped weird: 'weird' is not a pair folder name" in done.stdout
    target = dest / f"{PAIR.name}.pt"
    assert sorted(p.name for p in dest.iterdir()) == [target.name]

    shipped = load_checkpoint(target)
    origin = load_checkpoint(trained.checkpoint).origin
    assert {k: shipped.origin[k] for k in ORIGIN_KEYS} == {k: origin[k] for k in ORIGIN_KEYS}
    assert shipped.weights_dtype.startswith("float16")
    assert shipped.trainer_state is None
    assert target.stat().st_size < 0.6 * trained.checkpoint.stat().st_size
    assert all(p.dtype == torch.float32 for p in shipped.router.parameters())  # upcast on load
    stored = torch.load(target, weights_only=True)["state_dict"]
    halves = [v for v in stored.values() if v.dtype == torch.float16]
    assert sum(v.numel() for v in halves) > 0.9 * sum(v.numel() for v in stored.values()
                                                        if v.is_floating_point())

    # The float16 copy routes exactly as the original, on the exporter's queries and λ grid.
    encoder = TextEncoder()
    original = LibraryPolicy.from_checkpoint(trained.checkpoint, encoder=encoder)
    copy = LibraryPolicy.from_checkpoint(target, encoder=encoder)
    queries = pair_test_queries(run_dir / PAIR.name, "zeroeval", "gsm8k", max_queries=40)
    assert len(queries) == 40
    for lam in (0.0, 1.0, 30.0, 100.0, 3000.0, 10000.0):
        assert copy.route(queries, lam) == original.route(queries, lam)
        with torch.no_grad():
            scores = [p.router.plan_log_probs(queries, p.library, p.vocab, cost_lambda=lam)
                      for p in (original, copy)]
        assert torch.allclose(*scores, rtol=2e-3, atol=2e-3)  # float16 rounding, no more
        assert torch.allclose(*(s.softmax(-1) for s in scores), atol=1e-3)

    # Found by name through the (parameterised) shipped folder.
    monkeypatch.setattr(checkpoints, "FOLDER", dest)
    assert checkpoints.shipped() == {PAIR.name: target}
    with MAS.from_checkpoint(PAIR.name) as front:
        assert front.checkpoint == target and front.origin["pool"] == "paper5"
        query = trained.test_queries[0]
        assert front.run(query, 10000.0).plan == original.route([query], 10000.0)[0]


def test_serve_uses_the_origin_and_writes_the_ledger(tmp_path: Path) -> None:
    team = "qwen2.5-7b-instruct,llama-3.1-8b-instruct,llama-3.1-nemotron-51b-instruct"
    specs = replay_specs("llmrouter", team, task="gsm8k")
    origin = {"world": "llmrouter", "pool": team, "benchmark": "gsm8k", "rule": "calibrated",
              "split_seed": 0, "seed": 0, "train_size": 1}
    path = library_checkpoint(tmp_path / "router.pt", specs, origin=origin)
    ledger = tmp_path / "ledger" / "calls.jsonl"
    query = load_world("llmrouter").examples("gsm8k")[0].query
    with masr_serve(path, tmp_path, "--ledger", str(ledger)) as server:
        reply = server.client().chat.completions.create(
            model="masr-lambda-0", messages=[{"role": "user", "content": query}])
    stdout = (tmp_path / "stdout").read_text()
    assert "5 plans over 3 LLMs" in stdout  # the origin's pool, not every recorded LLM
    assert f"every call is on record in {ledger}" in stdout
    records = Ledger.from_jsonl(ledger).records
    run = reply.masr_run
    assert len(records) == run["calls"] > 0
    assert {r.query_id for r in records} == {run["query_id"]}
    assert {r.llm for r in records} <= set(reply.masr_plan["llms"])
    assert sum(r.cost_usd for r in records) == pytest.approx(run["cost_usd"])
    assert run["cost_usd"] > 0
    assert sum(r.prompt_tokens + r.completion_tokens for r in records) == reply.usage.total_tokens


def test_serve_refuses_a_checkpoint_without_origin_or_pool(tmp_path: Path) -> None:
    path = library_checkpoint(tmp_path / "old.pt", replay_specs("llmrouter", task="gsm8k"))
    done = subprocess.run([sys.executable, "-m", "masr_graph.cli", "serve", "--checkpoint",
                           str(path), "--port", "0"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert "does not record what it was trained on" in done.stderr


def test_lazy_names_are_the_module_objects() -> None:
    from masr_graph.mas import MAS as module_mas, MASResult

    assert masr_graph.MAS is module_mas and masr_graph.MASResult is MASResult
    with pytest.raises(AttributeError):
        masr_graph.NoSuchThing  # noqa: B018

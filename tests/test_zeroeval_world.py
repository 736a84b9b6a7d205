"""The ZeroEval world: recorded reply text served verbatim through the LLM layer, counted with a
real tokenizer, priced from models.csv; its table, cache, pools and splits. Most tests build a
tiny data directory laid out like the real one; the last ones read the real data (skipped
without it)."""
from __future__ import annotations

import asyncio
import csv
import functools
import gzip
import json
from pathlib import Path

import pytest
from masr_graph.benchmarks import answer_key
from masr_graph.benchmarks.data.data_dir import resolve_data_dir
from masr_graph.llm import LLMPool
from masr_graph.plan import Plan
from masr_graph.replay import (
    load_reply_table,
    load_world,
    replay_specs,
    resolve_pool,
    world_split,
)
from masr_graph.replay import tokens
from masr_graph.replay.zeroeval import reply_verdicts
from masr_graph.runtime import MASExecutor

from masr_graph.errors import ConfigError, DataError, UnknownQueryError

GSM_ROWS = [
    ("Ann has 3 apples and buys 4 more. How many apples does she have?", "7"),
    ("A box holds 12 eggs. How many eggs are in 5 boxes?", "60"),
    ("Tom reads 10 pages a day. How many pages does he read in a week?", "70"),
]
MATH_ROWS = [
    ("Compute $\\dbinom{8}{4}$ for the committee question.", "70", "Counting & Probability"),
    ("Find the largest prime factor of $221$ in this problem.", "17", "Number Theory"),
]
MODELS = [
    # name, tasks, price_in, price_out, basis
    ("cheap-a", "gsm8k math_l5", "0.1", "0.2", "hosted"),
    ("cheap-b", "gsm8k", "0.2", "0.4", "list"),
    ("gpt-4o-mini-2024-07-18", "gsm8k math_l5", "0.15", "0.6", "list"),
]
REPLIES = {
    "cheap-a": ['{"reasoning": "3+4", "answer": "7"}', '{"answer": "50"}', "It is 70."],
    "cheap-b": ['{"answer": "7"}', '{"answer": "60"}', '{"answer": "7"}'],
    "gpt-4o-mini-2024-07-18": ['{"answer": "7"}', '{"answer": "60"}', '{"answer": "70"}'],
}
MATH_REPLIES = {
    "cheap-a": ['{"answer": "70"}', '{"answer": "13"}'],
    "gpt-4o-mini-2024-07-18": ['{"answer": "\\\\boxed{70}"}', '{"answer": "17"}'],
}


def _write_jsonl(path: Path, rows: list[dict], *, compress: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    path.write_bytes(gzip.compress(text.encode()) if compress else text.encode())


def build_data_dir(root: Path, *, models: list = MODELS) -> Path:
    """A data directory with the files the ZeroEval world reads (tiny, but laid out for real)."""
    _write_jsonl(root / "gsm8k/test.jsonl",
                 [{"question": q, "answer": f"Work.\n#### {a}"} for q, a in GSM_ROWS])
    _write_jsonl(root / "math/test.jsonl", [
        {"problem": q, "level": "Level 5", "type": t, "solution": f"So $\\boxed{{{a}}}$.",
         "idx": i} for i, (q, a, t) in enumerate(MATH_ROWS)])
    folder = root / "outcomes/zeroeval"
    _write_jsonl(folder / "questions_gsm8k.jsonl", [
        {"id": f"gsm8k-main-test-#{i}", "question": q, "gold": a}
        for i, (q, a) in enumerate(GSM_ROWS)])
    _write_jsonl(folder / "questions_math_l5.jsonl", [
        {"id": str(i), "question": q, "gold": a} for i, (q, a, _) in enumerate(MATH_ROWS)])
    _write_jsonl(folder / "replies_gsm8k.jsonl.gz", [
        {"model": m, "id": f"gsm8k-main-test-#{i}", "output": out}
        for m, outs in REPLIES.items() for i, out in enumerate(outs)], compress=True)
    _write_jsonl(folder / "replies_math_l5.jsonl.gz", [
        {"model": m, "id": str(i), "output": out}
        for m, outs in MATH_REPLIES.items() for i, out in enumerate(outs)], compress=True)
    with open(folder / "models.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "tasks", "generator", "temperature", "max_tokens", "price_in",
                         "price_out", "price_basis", "description"])
        for name, tasks, price_in, price_out, basis in models:
            writer.writerow([name, tasks, f"org/{name}", "0.0", "4096", price_in, price_out,
                             basis, f"{name}, a test model"])
    return root


@pytest.fixture
def data_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MASR_CACHE_DIR", str(tmp_path / "cache"))
    return build_data_dir(tmp_path / "data")


def test_the_table_joins_questions_to_their_benchmarks_and_keeps_prices(data_dir):
    table = load_reply_table(data_dir)
    assert table.tasks == ("gsm8k", "math")
    assert [q.id for q in table.questions("gsm8k")] == [f"gsm8k/test/{i}" for i in range(3)]
    assert [q.id for q in table.questions("math")] == ["math/0", "math/1"]
    assert table.questions("math")[0].example.meta["type"] == "Counting & Probability"
    assert table.models_for("math") == ["cheap-a", "gpt-4o-mini-2024-07-18"]
    assert table.model("cheap-b").price_out == 0.4
    assert table.questions("gsm8k")[2].replies["cheap-a"] == "It is 70."
    with pytest.raises(ConfigError, match=r"'cheap-b' has no recorded ZeroEval replies for math; "
                                          r"recorded: cheap-a, gpt-4o-mini"):
        table.model("cheap-b", "math")


def test_a_second_process_reads_the_parsed_table_from_the_cache(data_dir, tmp_path):
    load_reply_table(data_dir)
    cached = list((tmp_path / "cache").glob("zeroeval-table-*.pickle"))
    assert len(cached) == 1
    # The cache is keyed by the files' checksums: changed data is parsed afresh.
    (data_dir / "outcomes/zeroeval/replies_gsm8k.jsonl.gz").write_bytes(gzip.compress(
        gzip.decompress((data_dir / "outcomes/zeroeval/replies_gsm8k.jsonl.gz").read_bytes())
        .replace(b"It is 70.", b"It is 71.")))
    from masr_graph.replay import zeroeval

    zeroeval._load_reply_table.cache_clear()
    table = load_reply_table(data_dir)
    assert table.questions("gsm8k")[2].replies["cheap-a"] == "It is 71."
    assert len(list((tmp_path / "cache").glob("zeroeval-table-*.pickle"))) == 2


def test_a_model_with_replies_but_no_price_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MASR_CACHE_DIR", str(tmp_path / "cache"))
    root = build_data_dir(tmp_path / "data", models=MODELS[:1] + MODELS[2:])
    with pytest.raises(DataError, match=r"replies of 'cheap-b', which models.csv does not "
                                        r"describe or price"):
        load_reply_table(root)


def test_verdicts_come_from_the_projects_evaluators(data_dir):
    verdicts = reply_verdicts(load_reply_table(data_dir), "gsm8k")
    assert verdicts[("cheap-a", "gsm8k/test/0")].correct  # JSON answer field
    assert not verdicts[("cheap-a", "gsm8k/test/1")].correct  # 50 != 60
    assert verdicts[("cheap-a", "gsm8k/test/2")].correct  # plain prose
    assert verdicts[("cheap-b", "gsm8k/test/2")].key == "7"


def test_named_pools_and_lists_resolve_per_task(data_dir):
    recorded = load_world("zeroeval", data_dir).llms("gsm8k")
    assert resolve_pool("zeroeval", "cheap-b, cheap-a", recorded, "gsm8k") == ["cheap-b",
                                                                                 "cheap-a"]
    assert resolve_pool("zeroeval", None, recorded, "gsm8k") == recorded
    with pytest.raises(ConfigError, match=r"unknown pool 'paper6' in the zeroeval world: not a "
                                          r"named pool \(all, paper5, mix\)"):
        resolve_pool("zeroeval", "paper6", recorded, "gsm8k")
    with pytest.raises(ConfigError, match=r"\['nope'\] have no recordings in the zeroeval world "
                                          r"for gsm8k"):
        resolve_pool("zeroeval", ["cheap-a", "nope"], recorded, "gsm8k")
    with pytest.raises(ConfigError, match="names an LLM twice"):
        resolve_pool("zeroeval", "cheap-a,cheap-a", recorded, "gsm8k")


def test_splits_are_seeded_disjoint_saved_and_checked(data_dir, tmp_path):
    world = load_world("zeroeval", data_dir)
    path = tmp_path / "split.json"
    split = world_split(world, "gsm8k", seed=3, split_file=path)
    parts = [split.train_ids, split.validation_ids, split.test_ids]
    assert sorted(i for part in parts for i in part) == sorted(
        e.id for e in world.examples("gsm8k"))
    assert [len(p) for p in parts] == [1, 1, 1]
    assert world_split(world, "gsm8k", seed=3, split_file=path) == split
    with pytest.raises(ConfigError, match="with seed 3, not 'replay-zeroeval-gsm8k' with seed 4"):
        world_split(world, "gsm8k", seed=4, split_file=path)


async def _run(pool: LLMPool, plan: Plan, query: str, **kwargs):
    executor = MASExecutor(pool, max_tokens=kwargs.pop("max_tokens", 4096))
    return await executor.run(query, plan, query_id="q", task="gsm8k",
                              answer_key=functools.partial(answer_key, "gsm8k"), **kwargs)


def test_an_agent_gets_its_recorded_reply_verbatim_with_real_token_counts(data_dir):
    async def main():
        specs = replay_specs("zeroeval", "cheap-a,gpt-4o-mini-2024-07-18", task="gsm8k",
                             data_dir=data_dir)
        async with LLMPool(specs) as pool:
            trace = await _run(pool, Plan("IO", ["Step-by-Step Solver"], ["cheap-a"]),
                               GSM_ROWS[2][0])
            mini = await _run(pool, Plan("IO", ["Step-by-Step Solver"],
                                         ["gpt-4o-mini-2024-07-18"]), GSM_ROWS[2][0])
            cut = await _run(pool, Plan("IO", ["Step-by-Step Solver"], ["cheap-a"]),
                             GSM_ROWS[0][0], max_tokens=3)
        return specs, trace, mini, cut

    specs, trace, mini, cut = asyncio.run(main())
    step = trace.steps[0]
    assert trace.final_answer == "It is 70."
    assert step.completion_tokens == tokens.count_text("cheap-a", "It is 70.") == 5
    assert mini.steps[0].completion_tokens == tokens.count_text(
        "gpt-4o-mini-2024-07-18", '{"answer": "70"}')
    assert tokens.encoding_name("gpt-4o-mini-2024-07-18") == "o200k_base"
    assert tokens.encoding_name("cheap-a") == "cl100k_base"
    assert step.prompt_tokens > 40  # role prompt, mode instruction, query, format
    assert step.cost_usd == pytest.approx(
        (step.prompt_tokens * 0.1 + step.completion_tokens * 0.2) / 1e6)
    assert cut.steps[0].completion_tokens == 3 and len(cut.final_answer) < 20
    assert {s.price_in for s in specs} == {0.1, 0.15}
    assert specs[0].base_url.startswith("replay://zeroeval?rule=calibrated")


def test_a_query_that_was_not_recorded_is_an_error_not_an_answer(data_dir):
    async def main():
        async with LLMPool(replay_specs("zeroeval", "cheap-a", task="gsm8k",
                                        data_dir=data_dir)) as pool:
            await pool.chat("cheap-a", [{"role": "user", "content": "What is 17 * 23?"}])

    with pytest.raises(UnknownQueryError, match="no recorded query occurs in this prompt"):
        asyncio.run(main())


def test_escalation_calls_the_expert_only_when_the_agents_disagree(data_dir):
    async def main():
        specs = replay_specs("zeroeval", None, task="gsm8k", data_dir=data_dir)
        async with LLMPool(specs) as pool:
            plan = Plan("Escalation", ["Step-by-Step Solver"] * 3,
                        ["cheap-a", "cheap-b", "gpt-4o-mini-2024-07-18"])
            agree = await _run(pool, plan, GSM_ROWS[0][0])  # both say 7
            disagree = await _run(pool, plan, GSM_ROWS[1][0])  # 50 vs 60
        return agree, disagree

    agree, disagree = asyncio.run(main())
    assert agree.decision.method == "unanimous" and len(agree.steps) == 2
    assert disagree.decision.method == "escalated" and len(disagree.steps) == 3
    expert = disagree.steps[-1]
    assert (expert.agent, expert.llm, expert.saw) == (2, "gpt-4o-mini-2024-07-18", [])
    assert disagree.final_answer == '{"answer": "60"}'


# ------------------------------------------------------------------- the real recorded world


@pytest.fixture(scope="module")
def real_world():
    try:
        resolve_data_dir()
    except DataError as exc:
        pytest.skip(f"no data directory: {exc}")
    return load_world("zeroeval")


def test_the_real_world_holds_43_and_41_complete_models_priced(real_world):
    assert len(real_world.llms("gsm8k")) == 43 and len(real_world.llms("math")) == 41
    assert len(real_world.examples("gsm8k")) == 1319 and len(real_world.examples("math")) == 721
    for name in real_world.llms():
        info = real_world.llm_info(name)
        assert info.price_in >= 0 and info.price_out > 0, name


def test_paper5_is_the_papers_pool_in_its_closest_recorded_versions(real_world):
    gsm8k = replay_specs("zeroeval", "paper5", task="gsm8k")
    math = replay_specs("zeroeval", "paper5", task="math")
    assert [s.name for s in gsm8k][-1] == "deepseek-chat"
    assert [s.name for s in math][-1] == "deepseek-v2.5-0908"
    assert len(replay_specs("zeroeval", "all", task="math")) == 41

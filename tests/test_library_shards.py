"""A pair's plan library executed in shards (what the grid's ``library i/n`` units run on
separate workers) gives exactly the outcomes of one process executing it whole; shards write
one file each, and a rerun with another shard count executes nothing already stored."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from masr_graph.benchmarks.experiment.library import (SHARD_FOLDER, library_shard,
                                                      outcome_files)
from masr_graph.benchmarks.experiment.protocol import Pair, PairRun, ProtocolSettings
from masr_graph.benchmarks.experiment.wiring import open_runtime
from masr_graph.plan import Plan
from masr_graph.router import TextEncoder

PAIR = Pair("zeroeval", "paper5", "gsm8k")
SETTINGS = ProtocolSettings(lambdas=(0.0, 100.0), seeds=(0,), max_train=16, max_validation=8,
                            max_test=8, team_llms=3, router_steps=5)


async def in_runtime(run: PairRun, out: Path, work) -> object:
    async with open_runtime(run.specs, out, run_id="shards", max_tokens=run.max_tokens) as rt:
        return await work(rt.pipeline)


def test_shards_partition_the_team_plans_and_merge_to_the_whole_library(tmp_path: Path):
    whole = PairRun(PAIR, SETTINGS, tmp_path / "whole", TextEncoder(), None)
    executed_whole = asyncio.run(in_runtime(whole, tmp_path / "whole", whole.prepare))

    sharded = PairRun(PAIR, SETTINGS, tmp_path / "sharded", TextEncoder(), None)
    asyncio.run(in_runtime(sharded, tmp_path / "sharded", sharded.define_library))
    assert sharded.library == whole.library
    teams = [plan for plan in sharded.library if plan.k > 1 or plan.mode != "IO"]
    shards = [library_shard(sharded.library, index, 3) for index in range(3)]
    assert sorted(map(repr, sum(shards, []))) == sorted(map(repr, teams))
    assert all(shards) and len(teams) == sum(map(len, shards))
    with pytest.raises(RuntimeError, match="missing"):
        sharded.load_outcomes()

    counts = [asyncio.run(in_runtime(
        sharded, tmp_path / "sharded",
        lambda pipeline, index=index: sharded.execute_library(pipeline, index, 3)))
        for index in range(3)]
    queries = len(sharded.data.train) + len(sharded.data.validation)
    assert counts == [len(shard) * queries for shard in shards]
    assert sum(counts) + len(sharded.llms) * queries == executed_whole
    files = outcome_files(sharded.out)
    assert [f.name for f in files] == ["library.sqlite", "0-of-3.sqlite", "1-of-3.sqlite",
                                       "2-of-3.sqlite"]
    assert all(f.parent.name == SHARD_FOLDER for f in files[1:])

    sharded.load_outcomes()
    assert whole.train_outcomes is not None and sharded.train_outcomes is not None
    assert whole.validation_outcomes is not None and sharded.validation_outcomes is not None
    for mine, theirs in ((sharded.train_outcomes, whole.train_outcomes),
                         (sharded.validation_outcomes, whole.validation_outcomes)):
        assert mine.plans == theirs.plans and mine.queries == theirs.queries
        assert torch.equal(mine.correct, theirs.correct)
        assert torch.equal(mine.cost, theirs.cost)

    # Another shard count (a cluster of another size) finds every outcome already stored.
    again = [asyncio.run(in_runtime(
        sharded, tmp_path / "sharded",
        lambda pipeline, index=index: sharded.execute_library(pipeline, index, 2)))
        for index in range(2)]
    assert again == [0, 0]


def test_a_shard_needs_the_library_defined_and_an_existing_index(tmp_path: Path):
    from masr_graph.errors import ConfigError

    run = PairRun(PAIR, SETTINGS, tmp_path, TextEncoder(), None)
    with pytest.raises(ConfigError, match="define_library"):
        asyncio.run(in_runtime(run, tmp_path, lambda p: run.execute_library(p, 0, 2)))
    with pytest.raises(ValueError, match="shard 2 of 2"):
        library_shard([], 2, 2)


def test_shards_share_every_mode_and_size_even_when_the_library_alternates_them():
    """The protocol's libraries list, per team of LLMs, its vote and then its debate: dealing
    plans out in that order gave one of two shards every Debate (9 calls a query against a
    vote's 3). Each shard gets an equal share (±1) of every (mode, k), in library order."""
    def plan(mode: str, k: int, llm: str) -> Plan:
        return Plan(mode=mode, roles=["Solver"] * k, llms=[llm] * k)

    library = [plan("IO", 1, "a"), plan("IO", 1, "b"),  # singles: the prepare's
               *(p for llm in "abcdefg" for p in (plan("IO", 3, llm), plan("Debate", 3, llm))),
               plan("IO", 5, "a"), plan("Escalation", 3, "a"), plan("Escalation", 4, "b")]
    teams = library[2:]
    for count in (2, 3):
        shards = [library_shard(library, index, count) for index in range(count)]
        assert sorted(map(repr, sum(shards, []))) == sorted(map(repr, teams))
        for shard in shards:
            assert shard == [p for p in teams if p in shard]
        for kind in {(p.mode, p.k) for p in teams}:
            shares = [sum((p.mode, p.k) == kind for p in shard) for shard in shards]
            assert max(shares) - min(shares) <= 1, (kind, shares)

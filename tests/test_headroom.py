"""The headroom measurement: the chooser, the hindsight baselines and the moonshot check on a
library whose figures are worked out by hand; redrawn splits; the script on a tiny pair through
the real pipeline, resuming without executing anything."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from masr_graph.benchmarks import headroom as script
from masr_graph.benchmarks.experiment.headroom import (HEADROOM_FILE, best_router_utility,
                                                       headroom, redraw_splits)

CHOOSE_ON, TEST = np.arange(4), np.arange(4, 8)


def outcomes(team_test: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Two single LLMs and a cheap team: LLM 0 is perfect on train + validation and half right
    on test, LLM 1 the reverse; the team is right on 3 of 4 chosen-on queries."""
    correct = np.array([[1, 0.0, 1], [1, 1, 1], [1, 0, 1], [1, 1, 0],
                        [1, 1, team_test[0]], [0, 1, team_test[1]], [1, 1, team_test[2]],
                        [0, 1, team_test[3]]])
    cost = np.tile([1e-3, 1e-3, 1e-4], (8, 1))
    return correct, cost


def test_the_chooser_pays_for_not_seeing_test():
    correct, cost = outcomes([1, 0, 1, 1])
    figures = headroom(correct, cost, [0, 1], [(CHOOSE_ON, TEST)], [0, 1000])
    # λ = 0: LLM 0 (1.0 on the chosen-on queries) gets 0.5 on test, LLM 1 gets 1.0 there
    assert figures.chosen[0].tolist() == pytest.approx([0.5, 0.75 - 0.1])
    assert figures.best_single[0].tolist() == pytest.approx([1.0, 0.0])
    assert figures.best_plan[0].tolist() == pytest.approx([1.0, 0.65])
    assert figures.regret()[0].tolist() == pytest.approx([0.5, -0.65])
    assert figures.no_regret_share() == 0.0
    # the most accurate single LLM on test (LLM 1, 1.0) is not matched by the team (0.75)
    assert not figures.moonshot_possible[0] and not figures.moonshot_chosen[0].any()


def test_the_moonshot_counts_a_cheap_plan_as_accurate_as_the_best_single_llm():
    correct, cost = outcomes([1, 1, 1, 1])
    figures = headroom(correct, cost, [0, 1], [(CHOOSE_ON, TEST)], [0, 1000])
    assert figures.moonshot_possible[0]
    # at λ = 0 the chooser takes LLM 0; at λ = 1000 the team, at 10 % of LLM 1's cost
    assert figures.moonshot_chosen[0].tolist() == [False, True]
    assert figures.regret()[0, 1] < 0
    # a tolerance of 0.005 at every λ: λ = 0 still loses 0.5
    assert figures.no_regret_share() == 0.0
    only_costly = headroom(correct, cost, [0, 1], [(CHOOSE_ON, TEST)], [1000])
    assert only_costly.no_regret_share() == 1.0


def test_redrawn_splits_keep_the_sizes_and_the_queries_that_must_stay_in_test():
    ids = [f"q{i}" for i in range(20)]
    drawable = set(ids[:15])
    splits = redraw_splits(ids, 8, 4, 6, drawable)
    assert len(splits) == 6
    for choose_on, test in splits:
        assert len(choose_on) == 12 and len(test) == 8
        assert sorted([*choose_on, *test]) == list(range(20))
        assert {ids[i] for i in choose_on} <= drawable
    assert len({tuple(sorted(choose_on)) for choose_on, _ in splits}) > 1


def test_the_best_router_is_refitted_per_split_and_routes_by_the_query():
    # two clusters of queries: LLM 0 solves the first, LLM 1 the second; the best router sends
    # each test query to its cluster's LLM, which no single LLM matches (0.5)
    rng = np.random.default_rng(0)
    cluster = np.arange(60) % 2
    embeddings = np.where(cluster[:, None] == 0, 1.0, -1.0) * np.ones((60, 8))
    embeddings = embeddings + 0.05 * rng.standard_normal((60, 8))
    correct = np.stack([cluster == 0, cluster == 1], axis=1).astype(float)
    cost = np.full((60, 2), 1e-4)
    splits = redraw_splits([f"q{i}" for i in range(60)], 24, 12, 2)
    best = best_router_utility(embeddings, correct, cost, ["a", "b"], splits, 24, 0.0)
    assert best.tolist() == pytest.approx([1.0, 1.0])
    # without any signal in the text (one embedding for all) no router beats a constant
    flat = best_router_utility(np.ones((60, 8)), correct, cost, ["a", "b"], splits, 24, 0.0)
    assert (flat <= 0.5 + 0.1).all()


TINY = ["--world", "llmrouter", "--benchmarks", "gsm8k", "--quick", "--max-train", "12",
        "--max-validation", "6", "--max-test", "6", "--lambdas", "0", "100", "--draws", "4"]


@pytest.mark.slow
def test_the_script_measures_a_pair_and_a_rerun_executes_nothing(tmp_path: Path, capsys,
                                                                   monkeypatch):
    out = tmp_path / "run"
    assert script.main([*TINY, "--out", str(out)]) == 0
    markdown = (out / "headroom.md").read_text()
    assert "| llmrouter-all-gsm8k |" in markdown and "% of 4 |" in markdown
    figures = json.loads((out / "headroom.json").read_text())["llmrouter-all-gsm8k"]
    assert len(figures["redraws"]["chosen"]) == 4 and len(figures["own_split"]["chosen"]) == 1
    assert len(figures["redraws"]["chosen"][0]) == 2  # one column per λ
    assert len(figures["redraws"]["best_router"]) == 4  # refitted on every redraw
    assert (out / "embeddings.pt").exists()  # the routers' embeddings are kept for reruns
    library = json.loads((out / "llmrouter-all-gsm8k" / "library.json").read_text())
    import sqlite3

    stored = sqlite3.connect(out / "llmrouter-all-gsm8k" / HEADROOM_FILE)
    assert stored.execute("SELECT COUNT(*) FROM outcomes").fetchone()[0] == 6 * len(library)

    from masr_graph.benchmarks.experiment.pipeline import Pipeline

    async def forbidden(*args, **kwargs):
        raise AssertionError("a rerun must not execute plans again")

    monkeypatch.setattr(Pipeline, "run", forbidden)
    assert script.main([*TINY, "--out", str(out)]) == 0
    assert json.loads((out / "headroom.json").read_text())["llmrouter-all-gsm8k"] == figures


def test_a_pool_file_is_refused_with_one_line(tmp_path: Path, capsys):
    pool = tmp_path / "pool.yaml"
    pool.write_text("llms: []\n")
    with pytest.raises(SystemExit) as stop:
        script.main(["--pool", str(pool), "--benchmarks", "gsm8k", "--out", str(tmp_path)])
    assert stop.value.code == 2
    assert "give a recorded pool, not a pool file" in capsys.readouterr().err


def test_tables_of_earlier_invocations_are_kept_unless_measured_again(tmp_path: Path, capsys):
    correct, cost = outcomes([1, 0, 1, 1])
    figures = headroom(correct, cost, [0, 1], [(CHOOSE_ON, TEST)], [0, 1000])
    better = headroom(*outcomes([1, 1, 1, 1]), [0, 1], [(CHOOSE_ON, TEST)], [0, 1000])
    script.store_tables(tmp_path, {"pair-a": (figures, figures)})
    script.store_tables(tmp_path, {"pair-b": (figures, figures)})
    markdown = (tmp_path / "headroom.md").read_text()
    assert "| pair-a |" in markdown and "| pair-b |" in markdown
    assert markdown.count("| – |") == 2  # routers not measured: said, not invented
    script.store_tables(tmp_path, {"pair-a": (better, better)})  # measured again: replaced
    stored = json.loads((tmp_path / "headroom.json").read_text())
    assert list(stored) == ["pair-a", "pair-b"]
    assert stored["pair-a"]["redraws"]["moonshot_possible"] == [True]
    assert stored["pair-b"]["redraws"]["moonshot_possible"] == [False]
    other_sweep = headroom(correct, cost, [0, 1], [(CHOOSE_ON, TEST)], [100])
    script.store_tables(tmp_path, {"pair-c": (other_sweep, other_sweep)})
    assert list(json.loads((tmp_path / "headroom.json").read_text())) == ["pair-c"]
    assert "another λ sweep; it is left out" in capsys.readouterr().err
    (tmp_path / "headroom.json").write_text("{not json")
    script.store_tables(tmp_path, {"pair-a": (figures, figures)})
    assert "is unreadable" in capsys.readouterr().err
    assert list(json.loads((tmp_path / "headroom.json").read_text())) == ["pair-a"]


def test_flags_given_override_the_settings_and_absent_ones_keep_them():
    from masr_graph.benchmarks.experiment.protocol import ProtocolSettings

    quick = script.settings_for(script.parse_args(["--quick", "--max-train", "5"]))
    assert quick == ProtocolSettings.quick(max_train=5)
    full = script.settings_for(script.parse_args(["--split-seed", "2"]))
    assert full == ProtocolSettings(split_seed=2)
    assert ProtocolSettings.from_flags(False, max_test=None) == ProtocolSettings()

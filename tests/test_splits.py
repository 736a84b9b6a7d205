"""Comparing runs on several splits (``benchmarks/splits.py``): pair reports survive the trip
through ``results.json``; the mean over splits is taken per λ before the worst λ is picked;
each target is checked per run and on the means; runs that cannot be compared are refused with
a one-line error, through the command's exit status."""
from __future__ import annotations

import importlib.util
import json
from importlib import resources

import pytest

from masr_graph import ConfigError
from masr_graph.benchmarks.experiment.grid import COMPLETE
from masr_graph.benchmarks.experiment.protocol import MASROUTER
from masr_graph.benchmarks.reporting.fronts import plan_distribution
from masr_graph.benchmarks.reporting.protocol import (
    PairReport, _comparisons, _fronts, write_report,
)
from masr_graph.benchmarks.reporting.splits import load_run, split_comparison
from masr_graph.exit_status import EXIT_ERROR, EXIT_OK, EXIT_USAGE
from report_support import method_score

LAMBDAS = (0.0, 100.0, 10000.0)
SINGLES = {"cheap (IO)": (0.80, 1e-5), "dear (IO)": (0.95, 1e-2)}


def _report(pair: str, masrouter: dict[float, tuple[float, float]],
            knn: tuple[float, float]) -> PairReport:
    """MasRouter with the given (accuracy, $/query) per λ, a kNN router that always picks the
    cheap LLM and two single LLMs; fronts and comparisons as :func:`pair_report` computes
    them."""
    report = PairReport(pair, lambdas=LAMBDAS, middle_lambda=100.0)
    for lam in LAMBDAS:
        report.scores.append(method_score(pair, MASROUTER, "MasRouter", lam, *masrouter[lam]))
        report.scores.append(method_score(pair, "kNN router", "single-agent router", lam, *knn))
        for name, point in SINGLES.items():
            report.scores.append(method_score(pair, name, "single LLM", lam, *point))
    report.distributions[MASROUTER] = plan_distribution(
        [{"mode": "IO", "k": 1, "roles": ["solver"], "llms": [llm]}
         for llm, count in (("a", 50), ("b", 30), ("c", 20)) for _ in range(count)])
    _fronts(report)
    _comparisons(report)
    return report


def _write_run(out, reports, split_seed: int, status: str = COMPLETE,
               dollars: str = "real") -> None:
    out.mkdir()
    write_report(reports, {"status": status, "$ figures": dollars,
                           "settings": f"ProtocolSettings(split_seed={split_seed}, "
                                       "seeds=(0, 1, 2))"}, out)


# split 0: MasRouter ties the dear LLM at λ = 0 and beats the kNN router by 0.02 at λ = 100;
# split 1: 0.008 behind the dear LLM at λ = 0, 0.01 ahead of kNN at λ = 100
SPLIT0 = {0.0: (0.95, 1e-3), 100.0: (0.82, 1e-5), 10000.0: (0.80, 1e-5)}
SPLIT1 = {0.0: (0.942, 1e-3), 100.0: (0.81, 1e-5), 10000.0: (0.80, 1e-5)}


def test_reports_survive_results_json_and_the_mean_is_taken_per_lambda(tmp_path):
    first = [_report("p", SPLIT0, (0.80, 1e-5))]
    _write_run(tmp_path / "s0", first, 0)
    _write_run(tmp_path / "s1", [_report("p", SPLIT1, (0.80, 1e-5))], 1)
    label, loaded = load_run(tmp_path / "s0")
    assert label == f"split 0 ({tmp_path / 's0'})"
    _write_run(tmp_path / "replay", first, 2, dollars="notional: recorded list prices")
    assert load_run(tmp_path / "replay")[0] == f"split 2 ({tmp_path / 'replay'} · $ notional)"
    original, back = first[0], loaded[0]
    assert back.regret == original.regret and back.best_baseline == original.best_baseline
    assert back.single_agent_margin == pytest.approx(original.single_agent_margin)
    assert back.hypervolumes == pytest.approx(original.hypervolumes)
    assert back.scores == original.scores and back.lambdas == LAMBDAS

    text, on_mean = split_comparison(dict(load_run(tmp_path / s) for s in ("s0", "s1")))
    regret, margin, largest = on_mean
    # worst mean regret: λ = 0, (0.000 + 0.008) / 2; the mean margin at λ = 100: (0.02 + 0.01) / 2
    assert "p +0.0040" in regret.detail and regret.met is True
    assert "p +0.0150" in margin.detail and margin.met is True
    assert largest.met is True
    assert "| mean over 2 splits | | | +0.0040 (λ=0) | +0.0150 |" in text
    # per run: split 1 misses no regret by its own figures (0.008 > 0.005), split 0 meets it
    row = next(line for line in text.splitlines() if line.startswith("| no regret"))
    assert row.rstrip(" |").split(" | ")[1:] == ["met (1 of 1)", "missed (0 of 1)", "met (1 of 1)"]
    assert "| plans vary with the query" in text  # per run only


def test_runs_that_cannot_be_compared_are_refused(tmp_path):
    _write_run(tmp_path / "s0", [_report("p", SPLIT0, (0.80, 1e-5))], 0)
    _write_run(tmp_path / "other", [_report("q", SPLIT0, (0.80, 1e-5))], 1)
    _write_run(tmp_path / "running", [_report("p", SPLIT1, (0.80, 1e-5))], 2, status="running")
    runs = dict(load_run(tmp_path / s) for s in ("s0", "other"))
    with pytest.raises(ConfigError, match=r"has the pairs \['q'\].*compare runs of the same"):
        split_comparison(runs)
    with pytest.raises(ConfigError, match="at least two runs"):
        split_comparison(dict([load_run(tmp_path / "s0")]))
    with pytest.raises(ConfigError, match="has not finished"):
        load_run(tmp_path / "running")
    payload = json.loads((tmp_path / "s0" / "results.json").read_text())
    payload["pairs"][0]["missing"] = ["MasRouter λ=0 seed=1"]
    (tmp_path / "s0" / "results.json").write_text(json.dumps(payload))
    with pytest.raises(ConfigError, match=r"lacks 1 cells of p \(e\.g\. MasRouter λ=0"):
        split_comparison({"a": load_run(tmp_path / "s0")[1],
                          "b": [_report("p", SPLIT1, (0.80, 1e-5))]})
    other_sweep = _report("p", SPLIT1, (0.80, 1e-5))
    other_sweep.lambdas = (0.0, 100.0)
    with pytest.raises(ConfigError, match=r"swept λ over \(0\.0, 100\.0\)"):
        split_comparison({"a": [_report("p", SPLIT0, (0.80, 1e-5))], "b": [other_sweep]})
    with pytest.raises(ConfigError, match="is not a results file"):
        load_run(tmp_path / "nowhere")


def test_the_command_prints_the_comparison_and_writes_it(tmp_path, capsys):
    _write_run(tmp_path / "s0", [_report("p", SPLIT0, (0.80, 1e-5))], 0)
    _write_run(tmp_path / "s1", [_report("p", SPLIT1, (0.80, 1e-5))], 1)
    script = resources.files("masr_graph.benchmarks") / "splits.py"
    spec = importlib.util.spec_from_file_location("splits_script", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    written = tmp_path / "splits.md"
    assert module.main([str(tmp_path / "s0"), str(tmp_path / "s1"), "--out",
                        str(written)]) == EXIT_OK
    assert capsys.readouterr().out == written.read_text()
    assert module.main([str(tmp_path / "s0"), str(tmp_path / "nowhere")]) == EXIT_ERROR
    error = capsys.readouterr().err.strip()
    assert error.startswith("splits.py: error:") and "\n" not in error


TINY_RUN = ["--world", "llmrouter", "--benchmarks", "gsm8k", "--quick", "--max-train", "4",
            "--max-validation", "2", "--max-test", "3", "--router-steps", "2", "--lambdas", "0",
            "100", "--team-llms", "3"]


@pytest.mark.slow
def test_run_all_runs_each_split_and_compares_them(tmp_path, capsys):
    """`run_all.py --split-seed 0 1`: one complete run per split in its own folder, on its own
    split, and their comparison in ``splits.md`` — what ``splits.py`` prints for the two runs."""
    from masr_graph.benchmarks import run_all

    out = tmp_path / "splits"
    assert run_all.main([*TINY_RUN, "--split-seed", "0", "1", "--out", str(out)]) == EXIT_OK
    printed = capsys.readouterr().out
    used = {}
    for seed in (0, 1):
        pair = out / f"split-{seed}" / "llmrouter-all-gsm8k"
        assert json.loads((pair / "split.json").read_text())["seed"] == seed
        used[seed] = json.loads((pair / "used_ids.json").read_text())["test"]
    assert used[0] != used[1]
    comparison = (out / "splits.md").read_text()
    assert comparison in printed
    assert comparison == split_comparison(dict(load_run(out / f"split-{seed}")
                                               for seed in (0, 1)))[0]
    assert f"split 0 ({out / 'split-0'}" in comparison
    assert f"split 1 ({out / 'split-1'}" in comparison
    caches = ("llm_cache.sqlite", "scores.sqlite", "embeddings.pt")
    for cache in caches:  # shared by the splits
        assert (out / cache).exists()
        assert not any((out / f"split-{seed}" / cache).exists() for seed in (0, 1))
    # ... and recorded in each split's folder, so what works on one split alone uses them
    from masr_graph.benchmarks import ablations

    split = out / "split-1"
    assert json.loads((split / "cache_dir.json").read_text()) == {"cache_dir": ".."}
    ablate = ["--world", "llmrouter", "--benchmarks", "gsm8k", "--quick", "--max-train", "4",
              "--max-validation", "2", "--max-test", "3", "--router-steps", "2", "--lambdas",
              "0", "100", "--out", str(split), "--split-seed", "1", "--only", "fallback only"]
    assert ablations.main(ablate) == EXIT_OK
    assert (split / "ablations.md").exists()
    assert run_all.main([*TINY_RUN, "--split-seed", "1", "--out", str(split)]) == EXIT_OK
    assert not any((split / cache).exists() for cache in caches)
    (split / "cache_dir.json").write_text("[]")
    capsys.readouterr()
    assert ablations.main(ablate) == EXIT_ERROR
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "does not name the cache directory" in error


@pytest.mark.slow
def test_grids_sharing_a_cache_dir_pay_for_a_reply_once(tmp_path, monkeypatch):
    """Two grids on one split with one cache directory (what ``run_all.py``'s splits share):
    every call the second makes is answered from the first's response cache, and it embeds no
    text (MiniLM runs only in the first)."""
    import asyncio

    from masr_graph.benchmarks import run_all
    from masr_graph.benchmarks.experiment.grid import run_grid
    from masr_graph.router import TextEncoder

    encoded: list[int] = []
    run_model = TextEncoder._run_model
    monkeypatch.setattr(TextEncoder, "_run_model",
                        lambda self, texts: encoded.append(len(texts)) or run_model(self, texts))
    args = run_all.parse_args(TINY_RUN)
    settings, caches = run_all.settings_for(args), tmp_path / "caches"
    spent, texts = [], []
    for name in ("first", "second"):
        encoded.clear()
        grid = asyncio.run(run_grid(args.pairs, settings, tmp_path / name, cache_dir=caches,
                                    say=lambda line: None, interactive=False))
        spent.append(grid.total_spending(None))
        texts.append(sum(encoded))
    first, second = spent
    assert first["calls"] > first["cached_calls"]
    assert second["calls"] == second["cached_calls"] == first["calls"]
    assert texts[0] > 0 and texts[1] == 0
    assert not any((tmp_path / name / "embeddings.pt").exists() for name in ("first", "second"))


@pytest.mark.parametrize("flags, message", [
    (["--split-seed", "0", "1", "--max-usd", "5"], "--max-usd caps one grid"),
    (["--split-seed", "2", "2"], "--split-seed repeats a seed (2 2)"),
    (["--split-seed", "-1"], "argument --split-seed: must be an integer >= 0"),
])
def test_run_all_refuses_split_seeds_it_cannot_honour(flags, message, tmp_path, capsys):
    from masr_graph.benchmarks import run_all

    with pytest.raises(SystemExit) as stopped:
        run_all.main([*TINY_RUN, *flags, "--out", str(tmp_path / "run")])
    assert stopped.value.code == EXIT_USAGE
    assert message in capsys.readouterr().err.splitlines()[-1]
    assert not (tmp_path / "run").exists()


def test_a_cache_dir_other_than_out_is_recorded_there_and_found_again(tmp_path):
    from masr_graph.benchmarks.experiment.wiring import cache_dir_for

    out, shared = tmp_path / "runs" / "split-1", tmp_path / "runs"
    assert cache_dir_for(out) == out and not out.exists()  # nothing recorded: out itself
    assert cache_dir_for(out, out) == out and not out.exists()
    assert cache_dir_for(out, shared) == shared
    assert json.loads((out / "cache_dir.json").read_text()) == {"cache_dir": ".."}
    assert cache_dir_for(out).resolve() == shared.resolve()
    moved = tmp_path / "elsewhere"  # relative: the two folders move together
    (tmp_path / "runs").rename(moved)
    assert cache_dir_for(moved / "split-1").resolve() == moved.resolve()
    assert cache_dir_for(moved / "split-1", moved / "split-1") == moved / "split-1"
    assert cache_dir_for(moved / "split-1") == moved / "split-1"  # the record went with it
    (moved / "split-1" / "cache_dir.json").write_text('{"cache_dir": 3}')
    with pytest.raises(ConfigError, match="does not name the cache directory"):
        cache_dir_for(moved / "split-1")

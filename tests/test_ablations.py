"""The ablation study's machinery on a tiny grid: variants train and run as cells through the
real pipeline, the data-efficiency, inductive and plug-in tables are written, and a rerun resumes
without training or running anything again."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from filelock import FileLock

from masr_graph.benchmarks import ablations
from masr_graph.benchmarks.experiment.ablations import VARIANTS, team_edges

TINY = ["--world", "llmrouter", "--benchmarks", "gsm8k", "--quick", "--max-train", "12",
        "--max-validation", "6", "--max-test", "6", "--router-steps", "5", "--lambdas", "0",
        "100", "--seeds", "0"]


def test_team_edges_say_who_reads_whom():
    assert team_edges("Debate", 3) == [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)]
    assert team_edges("Chain", 3) == [(0, 1), (1, 2)]
    assert team_edges("IO", 3) == []


def test_variant_names_are_unique_and_say_what_changes():
    names = [v.name for v in VARIANTS]
    assert len(set(names)) == len(names)
    assert all(v.change for v in VARIANTS)


@pytest.mark.slow
def test_ablations_run_as_cells_and_resume(tmp_path: Path, capsys, monkeypatch):
    from masr_graph.benchmarks.experiment import ablations as experiment

    out = tmp_path / "run"
    only = ["--only", "no validation gate", "fallback only", "policy gradient only",
            "inductive: best LLM added after training"]
    trainings = []
    fit = experiment.LibraryTrainer.fit

    def counted(trainer, *args, **kwargs):
        trainings.append(len(trainer.train.queries))
        return fit(trainer, *args, **kwargs)

    monkeypatch.setattr(experiment.LibraryTrainer, "fit", counted)
    from masr_graph.router import library

    fallback_fits = []
    choose = library.choose_fallbacks
    monkeypatch.setattr(library, "choose_fallbacks",
                        lambda *a, **k: fallback_fits.append(1) or choose(*a, **k))
    assert ablations.main([*TINY, "--out", str(out), *only]) == 0
    # MasRouter and the inductive router train; the two routing-only variants reuse MasRouter,
    # and its fallbacks (the inductive router, on other outcomes, chooses its own)
    assert len(trainings) == 2
    assert len(fallback_fits) == 2
    markdown = (out / "ablations.md").read_text()
    assert "| no validation gate | the graph router's own plan at every λ |" in markdown
    assert "| fallback only |" in markdown
    assert "| policy gradient only |" in markdown
    assert "| policy gradient, live executions |" in markdown
    assert "Inductive: trained without " in markdown
    assert "| Debate of 3 | 0 |" in markdown and "| Chain of 3 | 100 |" in markdown
    pair = out / "llmrouter-all-gsm8k" / "ablations"
    assert (pair / "no-validation-gate-seed0.pt").exists()
    assert (pair / "policy-gradient-only-seed0.curve.json").exists()
    from masr_graph.router import load_checkpoint

    fallback_only = load_checkpoint(pair / "fallback-only-seed0.pt")
    (entries,) = fallback_only.gate.values()
    assert None not in entries.values()  # never the graph router

    # A rerun trains nothing and runs no cell again: every result is stored.
    def forbidden(*args, **kwargs):
        raise AssertionError("a rerun must not train again")

    monkeypatch.setattr(experiment.LibraryTrainer, "fit", forbidden)
    monkeypatch.setattr(experiment, "fit_trainer", forbidden)
    capsys.readouterr()
    assert ablations.main([*TINY, "--out", str(out), *only]) == 0
    assert (out / "ablations.md").read_text() == markdown

    # Another pair's invocation (which trains: training is allowed again) adds its section and
    # keeps this one's.
    monkeypatch.undo()
    other = [arg if arg != "gsm8k" else "mbpp" for arg in TINY]
    assert ablations.main([*other, "--out", str(out), "--only", "fallback only"]) == 0
    both = (out / "ablations.md").read_text()
    gsm8k_section = markdown.split("## llmrouter-all-gsm8k", 1)[1]
    assert both.startswith("# masr_graph ablations")
    assert both.split("## llmrouter-all-mbpp")[0].rstrip().endswith(gsm8k_section.rstrip())
    mbpp_section = both.split("## llmrouter-all-mbpp", 1)[1]
    assert "| fallback only |" in mbpp_section and "| no validation gate |" not in mbpp_section
    assert set(json.loads((out / "ablations.json").read_text())) == {
        "llmrouter-all-gsm8k", "llmrouter-all-mbpp"}
    # Running the first pair again replaces its section in place.
    assert ablations.main([*TINY, "--out", str(out), "--only", "fallback only"]) == 0
    again = (out / "ablations.md").read_text()
    assert again.index("## llmrouter-all-gsm8k") < again.index("## llmrouter-all-mbpp")
    assert "| no validation gate |" not in again and again.endswith(mbpp_section)


def test_store_tables_waits_for_another_invocation_into_the_same_out(tmp_path: Path):
    """Two invocations into one --out each read, merge and write the tables: while another
    holds the lock (and writes its pair), this one waits, then keeps that pair."""
    def entry(pair: str) -> dict:
        return {pair: {"settings": "tiny", "markdown": f"## {pair}\n\n| variant |\n"}}

    other_invocation = FileLock(str(tmp_path / "ablations.lock"))
    other_invocation.acquire()
    waiting = threading.Thread(target=ablations.store_tables,
                               args=(tmp_path, entry("llmrouter-all-gsm8k")))
    waiting.start()
    waiting.join(timeout=1.0)
    assert waiting.is_alive() and not (tmp_path / "ablations.json").exists()
    # what the other invocation writes while it holds the lock
    (tmp_path / "ablations.json").write_text(json.dumps(entry("zeroeval-paper5-math")))
    other_invocation.release()
    waiting.join(timeout=30.0)
    assert not waiting.is_alive()
    assert list(json.loads((tmp_path / "ablations.json").read_text())) == [
        "zeroeval-paper5-math", "llmrouter-all-gsm8k"]
    document = (tmp_path / "ablations.md").read_text()
    assert "## zeroeval-paper5-math" in document and "## llmrouter-all-gsm8k" in document


@pytest.mark.slow
def test_ablations_follow_the_runs_split_seed(tmp_path: Path, capsys):
    """A run on another split (``run_all.py --split-seed 1``) can be ablated with the same flag,
    and ablating it as split 0 stops with one line naming the split rather than mixing splits."""
    out = tmp_path / "run"
    only = ["--only", "fallback only"]
    assert ablations.main([*TINY, "--out", str(out), "--split-seed", "1", *only]) == 0
    split = json.loads((out / "llmrouter-all-gsm8k" / "split.json").read_text())
    assert split["seed"] == 1
    assert "split_seed=1" in json.loads((out / "ablations.json").read_text())[
        "llmrouter-all-gsm8k"]["settings"]
    capsys.readouterr()
    assert ablations.main([*TINY, "--out", str(out), *only]) == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "with seed 1, not" in error and "seed 0" in error

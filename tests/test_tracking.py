"""The grid in MLflow (`run_all.py --mlflow`): every cell is a run with its parameters, metrics
and, for MasRouter, its training curve as step metrics, under one parent run per invocation that
holds the results files as artifacts; a local file store under --out by default or
$MLFLOW_TRACKING_URI; nothing without the flag."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from masr_graph.benchmarks import run_all

try:
    from mlflow import MlflowClient
except ImportError:  # the mlflow extra is optional
    MlflowClient = None

needs_mlflow = pytest.mark.skipif(MlflowClient is None, reason="the mlflow extra is not "
                                  "installed (pip install 'masr_graph[mlflow]')")
TINY = ["--world", "llmrouter", "--benchmarks", "gsm8k", "--quick", "--max-train", "4",
        "--max-validation", "2", "--max-test", "3", "--router-steps", "4", "--lambdas", "0",
        "100", "--team-llms", "3"]


@needs_mlflow
def test_every_cell_is_a_run_with_params_metrics_curve_and_the_results_as_artifacts(
        tmp_path: Path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "run"
    assert run_all.main([*TINY, "--out", str(out), "--mlflow"]) == 0
    client = MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("masr_graph grid")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    (parent,) = [r for r in runs if r.data.tags.get("masr.kind") == "grid"]
    cells = [r for r in runs if r.data.tags.get("masr.kind") == "cell"]
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in cells)

    pair = json.loads((out / "results.json").read_text())["pairs"][0]
    assert not pair["missing"]
    stored = {p.stem for p in (out / "traces" / pair["pair"]).glob("*.jsonl")}
    assert len(cells) == len(stored)  # one run per cell, each finished
    assert {r.info.status for r in cells} == {"FINISHED"}
    assert parent.info.status == "FINISHED" and parent.data.tags["masr.status"] == "complete"
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {
        "results.md", "results.json", "fronts.png", "plans.png"}
    assert "library_plans.llmrouter-all-gsm8k" in parent.data.metrics

    masr = next(r for r in cells if r.info.run_name.endswith("/MasRouter λ=100 seed=0"))
    assert masr.data.params["method"] == "MasRouter" and masr.data.params["lambda"] == "100"
    assert masr.data.params["seed"] == "0" and masr.data.params["task"] == "gsm8k"
    assert masr.data.params["settings.router_steps"] == "4"
    metrics = masr.data.metrics
    for key in ("utility", "utility_low", "utility_high", "accuracy", "accuracy_low",
                "accuracy_high", "usd_per_query", "queries"):
        assert key in metrics, key
    assert metrics["utility_low"] <= metrics["utility"] <= metrics["utility_high"]
    assert metrics["queries"] == 3
    curve = client.get_metric_history(masr.info.run_id, "train_objective")
    steps = json.loads((out / "llmrouter-all-gsm8k" / "masrouter-seed0.curve.json")
                       .read_text())["points"]
    assert [m.step for m in curve] == [p["step"] for p in steps]
    assert client.get_metric_history(masr.info.run_id, "validation_utility.lambda_100")

    single = next(r for r in cells if r.data.params["group"] == "single LLM")
    assert single.data.params["lambda"] == ""  # λ-independent: scored at every λ
    assert {"utility.lambda_0", "utility.lambda_100"} <= set(single.data.metrics)


@needs_mlflow
def test_the_tracking_uri_variable_wins_and_no_flag_logs_nothing(tmp_path: Path, monkeypatch):
    store = tmp_path / "elsewhere"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
    out = tmp_path / "run"
    assert run_all.main([*TINY, "--out", str(out), "--mlflow", "--mlflow-experiment", "x"]) == 0
    assert not (out / "mlruns").exists()
    client = MlflowClient(tracking_uri=store.as_uri())
    experiment = client.get_experiment_by_name("x").experiment_id
    logged = len(client.search_runs([experiment], max_results=1000))
    assert logged > 1
    plain = tmp_path / "plain"
    assert run_all.main([*TINY, "--out", str(plain)]) == 0
    assert not (plain / "mlruns").exists()
    assert len(client.search_runs([experiment], max_results=1000)) == logged


def test_mlflow_flag_without_mlflow_installed_is_one_line(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    status = run_all.main([*TINY, "--out", str(tmp_path / "run"), "--mlflow"])
    assert status == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err == ["run_all.py: error: --mlflow needs MLflow, an optional extra: "
                   "pip install 'masr_graph[mlflow]' (import of mlflow halted; None in "
                   "sys.modules)"]

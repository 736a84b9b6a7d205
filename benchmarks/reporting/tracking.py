"""The grid in an experiment tracker: with ``run_all.py --mlflow`` every finished cell becomes
an MLflow run, nested under one parent run per invocation.

* **Where**: ``$MLFLOW_TRACKING_URI`` when set, otherwise a local file store under
  ``<out>/mlruns`` (``mlflow ui --backend-store-uri <out>/mlruns`` shows it; MLflow 3 wants
  ``MLFLOW_ALLOW_FILE_STORE=true`` for file stores, which is set for them); experiment
  ``masr_graph grid`` unless named.
* **Cell runs** (name ``<pair>/<cell label>``): parameters — pair, world, pool, task, method,
  group, λ, seed and the protocol settings; metrics — utility at the cell's λ with its 95 % CI,
  accuracy with its CI, $ per query, queries, errors, wall seconds, $ spent now (and, for
  λ-independent cells, ``utility.lambda_<λ>`` at every λ of the sweep); MasRouter cells also
  carry their router's training curve (``<checkpoint stem>.curve.json``) as step metrics
  (``train_objective``, ``validation_utility`` and ``validation_utility.lambda_<λ>``).
* **Parent run** (name ``grid <run id>``): the grid's settings and pairs, each pair's library
  size, and at the end its status and the results files (``results.md``, ``results.json``,
  ``fronts.png``, ``plans.png``) as artifacts.

Logging happens in the driver process only (workers never talk to the tracker), through
:class:`mlflow.MlflowClient`, so it works the same with and without Ray. ``mlflow-skinny`` (the
``mlflow`` extra) is enough.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from masr_graph.errors import ConfigError

DEFAULT_EXPERIMENT = "masr_graph grid"
MLFLOW_EXTRA = "pip install 'masr_graph[mlflow]'"


def tracking_uri(out: Path) -> str:
    """``$MLFLOW_TRACKING_URI``, or the file store ``<out>/mlruns``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or (Path(out).resolve() / "mlruns").as_uri()


def _metric_key(name: str) -> str:
    """MLflow keys allow letters, digits, ``_-. /``: ``λ`` and ``=`` are spelled out."""
    return "".join(c if c.isalnum() and c.isascii() or c in "_-. /" else "_"
                   for c in name.replace("λ", "lambda"))


class GridTracker:
    """Logs a grid invocation to MLflow (see the module docstring).

    Args:
        out: the grid's output directory (default store and artifacts).
        experiment: the MLflow experiment's name.
        uri: the tracking URI (default :func:`tracking_uri`).

    Raises:
        ConfigError: MLflow is not installed (the message says how to install the extra).
    """

    def __init__(self, out: Path, *, experiment: str = DEFAULT_EXPERIMENT,
                 uri: Optional[str] = None):
        try:
            from mlflow import MlflowClient
        except ImportError as exc:
            raise ConfigError(f"--mlflow needs MLflow, an optional extra: {MLFLOW_EXTRA} "
                              f"({exc})") from None
        self.out = Path(out)
        self.uri = uri or tracking_uri(self.out)
        if self.uri.startswith("file:"):
            # MLflow 3 keeps the file store (all mlflow-skinny needs) behind an opt-in.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=self.uri)
        found = self.client.get_experiment_by_name(experiment)
        self.experiment_id = (found.experiment_id if found is not None
                              else self.client.create_experiment(experiment))
        self.parent: Optional[str] = None
        self.cell_runs: dict[str, str] = {}

    def start(self, run_id: str, pairs: Sequence[Any], settings: Any, *,
              ray: Optional[Any] = None) -> None:
        """Open the invocation's parent run."""
        from mlflow.entities import Param

        run = self.client.create_run(self.experiment_id, run_name=f"grid {run_id}",
                                     tags={"masr.run_id": run_id, "masr.kind": "grid"})
        self.parent = run.info.run_id
        params = {"pairs": ", ".join(p.name for p in pairs), "out": str(self.out),
                  "executor": "ray" if ray is not None else "serial",
                  **({"ray_address": ray.address or "local"} if ray is not None else {}),
                  **_settings_params(settings)}
        self.client.log_batch(self.parent, params=[Param(k, _text(v)) for k, v in
                                                   params.items()])

    def log(self, outcome: Any, run: Any) -> None:
        """Log a finished unit: a cell as its own run; a prepare as its pair's library size on
        the parent run; trainings are logged with their MasRouter cells."""
        from mlflow.entities import Metric, Param

        from ..experiment.grid import CELL, DONE, PREPARE
        from ..experiment.protocol import MASROUTER

        assert self.parent is not None, "start() first"
        now = int(time.time() * 1000)
        if outcome.kind == PREPARE:
            if outcome.status == DONE:
                key = _metric_key(f"library_plans.{run.pair.name}")
                self.client.log_batch(self.parent, metrics=[
                    Metric(key, outcome.metrics.get("plans", 0.0), now, 0)])
            return
        if outcome.kind != CELL:
            return
        cell = next(c for c in run.cells() if c.name == outcome.name)
        pair = run.pair
        child = self.client.create_run(
            self.experiment_id, run_name=outcome.name,
            tags={"mlflow.parentRunId": self.parent, "masr.kind": "cell",
                  "masr.status": outcome.status, "masr.worker": outcome.worker,
                  "masr.resumed": str(outcome.ran == 0).lower()})
        child_id = child.info.run_id
        self.cell_runs[outcome.name] = child_id
        params = {"pair": pair.name, "world": pair.world, "pool": pair.pool, "task": pair.task,
                  "method": cell.method, "group": cell.group,
                  "lambda": "" if cell.cost_lambda is None else f"{cell.cost_lambda:g}",
                  "seed": "" if cell.seed is None else str(cell.seed),
                  **_settings_params(run.settings)}
        metrics = [Metric(_metric_key(k), float(v), now, 0) for k, v in outcome.metrics.items()]
        metrics += [Metric("seconds", outcome.seconds, now, 0),
                    Metric("spent_usd", outcome.usd, now, 0),
                    Metric("queries_run_now", float(outcome.ran), now, 0)]
        if cell.method == MASROUTER and cell.seed is not None:
            metrics += _curve_metrics(run.out / f"masrouter-seed{cell.seed}.curve.json", now)
        self.client.log_batch(child_id, metrics=metrics,
                              params=[Param(k, _text(v)) for k, v in params.items()])
        self.client.set_terminated(child_id, "FINISHED" if outcome.status == DONE else "FAILED")

    def finish(self, out: Path, status: str) -> None:
        """Close the parent run with the grid's status and its results files as artifacts."""
        if self.parent is None:
            return
        self.client.set_tag(self.parent, "masr.status", status)
        for name in ("results.md", "results.json", "fronts.png", "plans.png"):
            path = Path(out) / name
            if path.exists():
                self.client.log_artifact(self.parent, str(path))
        self.client.set_terminated(self.parent,
                                   "FINISHED" if status == "complete" else "KILLED")
        self.parent = None


def _curve_metrics(curve_file: Path, now: int) -> list[Any]:
    from mlflow.entities import Metric

    if not curve_file.exists():
        return []
    curve = json.loads(curve_file.read_text(encoding="utf-8"))
    metrics = []
    for point in curve.get("points", []):
        step = int(point["step"])
        metrics.append(Metric("train_objective", float(point["train_objective"]), now, step))
        values = point.get("validation_utility") or {}
        if values:
            metrics.append(Metric("validation_utility",
                                  sum(values.values()) / len(values), now, step))
        for lam, value in values.items():
            metrics.append(Metric(_metric_key(f"validation_utility.lambda_{float(lam):g}"),
                                  float(value), now, step))
    metrics.append(Metric("best_step", float(curve.get("best_step", 0)), now, 0))
    return metrics


def _settings_params(settings: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return {f"settings.{k}": v for k, v in asdict(settings).items()}


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:6000]

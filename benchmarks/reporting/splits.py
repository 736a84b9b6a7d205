"""The protocol's figures on several train / validation / test splits side by side.

One split is one draw of test queries: a method that the training and validation queries favour
can lose on a test set of 65–527 queries by chance, and the best baseline of a cell is picked on
those same test queries. Runs of ``run_all.py`` that differ only in ``--split-seed`` show how
much of a result is the split's: per pair and split the headline figures, each run's targets as
``results.md`` checks them, and the figures and targets on the mean over the splits (per λ the
mean regret, the mean margin over the best single-agent router, each method's mean
hypervolume).
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from masr_graph.errors import ConfigError

from ..experiment.grid import COMPLETE

from .protocol import (
    MASROUTER,
    MethodScore,
    PairReport,
    TargetCheck,
    _signed,
    largest_other_hypervolume,
    target_checks,
)

RESULTS_FILE = "results.json"


def _float_keys(mapping: Mapping[str, Any]) -> dict[float, Any]:
    return {float(key): value for key, value in mapping.items()}


def pair_report_from_json(data: Mapping[str, Any]) -> PairReport:
    """A :class:`PairReport` as ``results.json`` stores it (its λ keys are strings there)."""
    return PairReport(
        pair=data["pair"],
        scores=[MethodScore(**score) for score in data["scores"]],
        missing=list(data["missing"]),
        hypervolumes=dict(data["hypervolumes"]),
        fronts={name: [tuple(point) for point in front]
                for name, front in data["fronts"].items()},
        distributions=dict(data["distributions"]),
        best_baseline={lam: tuple(v) for lam, v in _float_keys(data["best_baseline"]).items()},
        best_single_agent_router={lam: tuple(v) for lam, v in
                                  _float_keys(data["best_single_agent_router"]).items()},
        regret=_float_keys(data["regret"]),
        regret_ci={lam: tuple(v) for lam, v in _float_keys(data["regret_ci"]).items()},
        single_agent_margin=_float_keys(data["single_agent_margin"]),
        single_agent_margin_ci={lam: tuple(v) for lam, v in
                                _float_keys(data["single_agent_margin_ci"]).items()},
        lambdas=tuple(data["lambdas"]),
        middle_lambda=float(data["middle_lambda"]),
        gate=_float_keys(data["gate"]),
        training_environments=list(data.get("training_environments", [])))


def load_run(out: Path) -> tuple[str, list[PairReport]]:
    """A finished run's label (its split seed and folder; notional $ say so) and pair reports.

    Raises:
        ConfigError: no readable ``results.json`` in ``out``, or a run that has not finished.
    """
    path = Path(out) / RESULTS_FILE
    try:
        payload = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path} is not a results file of run_all.py ({error})") from None
    meta = payload.get("meta", {})
    if meta.get("status") != COMPLETE:
        raise ConfigError(f"{path} is of a run that has not finished (status "
                          f"{meta.get('status')!r}); resume it with run_all.py --out {out}")
    seed = re.search(r"split_seed=(\d+)", str(meta.get("settings", "")))
    notional = " · $ notional" if str(meta.get("$ figures", "real")) != "real" else ""
    label = f"split {seed.group(1) if seed else '?'} ({out}{notional})"
    return label, [pair_report_from_json(pair) for pair in payload["pairs"]]


def _by_pair(runs: Mapping[str, Sequence[PairReport]]) -> dict[str, dict[str, PairReport]]:
    """Each run's reports by pair, once checked comparable: the same pairs (in the first run's
    order), each with one λ sweep and no missing cells.

    Raises:
        ConfigError: fewer than two runs, runs with different pairs or λ sweeps, or a pair
            with missing cells.
    """
    if len(runs) < 2:
        raise ConfigError(f"comparing splits needs at least two runs; got {len(runs)}")
    by_run = {label: {r.pair: r for r in reports} for label, reports in runs.items()}
    first_label, first = next(iter(by_run.items()))
    for label, reports in by_run.items():
        if set(reports) != set(first):
            raise ConfigError(f"{label} has the pairs {sorted(reports)}, {first_label} has "
                              f"{sorted(first)}; compare runs of the same pairs")
        for pair, report in reports.items():
            if report.lambdas != first[pair].lambdas:
                raise ConfigError(f"{label} swept λ over {report.lambdas} on {pair}, "
                                  f"{first_label} over {first[pair].lambdas}")
            if report.missing:
                raise ConfigError(f"{label} lacks {len(report.missing)} cells of {pair} (e.g. "
                                  f"{report.missing[0]}); resume that run first")
    return by_run


def mean_over_splits(reports: Sequence[PairReport]) -> PairReport:
    """One pair's figures averaged over its runs, as a report :func:`target_checks` can check:
    per λ the regret and the single-agent margin, and each method's hypervolume (a method
    missing from a run is left out). Plans and accuracies are not averaged."""
    first = reports[0]
    lambdas = first.lambdas
    return PairReport(
        first.pair, lambdas=lambdas, middle_lambda=first.middle_lambda,
        regret={lam: float(np.mean([r.regret[lam] for r in reports])) for lam in lambdas
                if all(lam in r.regret for r in reports)},
        single_agent_margin={lam: float(np.mean([r.single_agent_margin[lam] for r in reports]))
                             for lam in lambdas
                             if all(lam in r.single_agent_margin for r in reports)},
        hypervolumes={m: float(np.mean([r.hypervolumes[m] for r in reports]))
                      for m in set.intersection(*(set(r.hypervolumes) for r in reports))})


def split_comparison(runs: Mapping[str, Sequence[PairReport]]) -> tuple[str, list[TargetCheck]]:
    """Markdown comparing the runs (label → its pair reports), and the targets checked on the
    mean over the splits.

    Raises:
        ConfigError: as :func:`_by_pair`.
    """
    by_run = _by_pair(runs)
    labels = list(by_run)
    pairs = list(by_run[labels[0]])
    means = {pair: mean_over_splits([by_run[label][pair] for label in labels]) for pair in pairs}
    # results.md's own checks, per run and on the means; plans and accuracies are not averaged,
    # so on the means the plan target is unchecked (met None) and the moonshot absent
    mean_checks = target_checks(list(means.values()))
    on_mean = [c for c in mean_checks if c.met is not None]
    per_run = {label: target_checks(reports) for label, reports in runs.items()}
    lines = ["# The protocol on several splits", "",
             f"Targets per run and on the mean over the {len(runs)} splits:", "",
             "| target | " + " | ".join(labels) + " | mean over the splits |",
             "|---|" + "---|" * (len(labels) + 1)]
    for index, check in enumerate(per_run[labels[0]]):
        lines.append(f"| {check.name} | " + " | ".join(
            _verdict(per_run[label][index]) for label in labels) + " | "
            + (_verdict(mean_checks[index]) if index < len(mean_checks) else "–") + " |")
    lines += ["", "Per pair: MasRouter and the best non-oracle baseline at the middle λ, the "
              "worst regret over the λ sweep, the margin over the best single-agent router at "
              "the middle λ, the hypervolumes, and MasRouter's plans at the middle λ; then the "
              "mean over the splits (per λ, then the worst).", ""]
    for pair in pairs:
        lam = means[pair].middle_lambda
        lines += [f"## {pair}", "",
                  f"| split | MasRouter at λ={lam:g} | best baseline at λ={lam:g} | worst regret "
                  "(λ) | margin over the best single-agent router | hypervolume: MasRouter / "
                  "largest other method | plans (distinct teams, top share) |",
                  "|---|---|---|---|---|---|---|"]
        for label in labels:
            report = by_run[label][pair]
            masr = report.score(MASROUTER, lam)
            baseline = report.best_baseline.get(lam)
            router = report.best_single_agent_router.get(lam)
            dist = report.distributions.get(MASROUTER)
            cells = [f"{masr.utility:.3f}" if masr else "–",
                     f"{baseline[1]:.3f} ({baseline[0]})" if baseline else "–",
                     _worst(report.regret),
                     f"{_signed(report.single_agent_margin[lam])} ({router[0]})"
                     if lam in report.single_agent_margin and router else "–",
                     _fronts(report.hypervolumes),
                     f"{dist['distinct_teams']}, {dist['top_plan_share']:.0%}" if dist else "–"]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        mean = means[pair]
        margin = mean.single_agent_margin.get(lam)
        lines += [f"| mean over {len(runs)} splits | | | {_worst(mean.regret)} | "
                  + (_signed(margin) if margin is not None else "–")
                  + f" | {_fronts(mean.hypervolumes)} | |", ""]
    lines += ["## Targets on the mean over the splits", ""]
    lines += [f"- **{'met' if c.met else 'missed'}**: {c.name}: {c.detail}" for c in on_mean]
    return "\n".join(lines) + "\n", on_mean


def _verdict(check: TargetCheck) -> str:
    verdict = "met" if check.met else "missed" if check.met is not None else "–"
    count = re.match(r"\d+ of \d+", check.detail)
    return f"{verdict} ({count.group(0)})" if count else verdict


def _worst(regret: Mapping[float, float]) -> str:
    if not regret:
        return "–"
    lam, value = max(regret.items(), key=lambda item: item[1])
    return f"{_signed(value)} (λ={lam:g})"


def _fronts(hypervolumes: Mapping[str, float]) -> str:
    other, other_hv = largest_other_hypervolume(hypervolumes)
    return f"{hypervolumes.get(MASROUTER, math.nan):.4f} / {other_hv:.4f} ({other})"

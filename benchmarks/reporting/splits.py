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
    HYPERVOLUME_TIE,
    MASROUTER,
    NO_REGRET_TOLERANCE,
    SINGLE_AGENT_MARGIN,
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
    """A finished run's label (its split seed and folder) and pair reports.

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
    label = f"split {seed.group(1) if seed else '?'} ({out})"
    return label, [pair_report_from_json(pair) for pair in payload["pairs"]]


def _check_comparable(runs: Mapping[str, Sequence[PairReport]]) -> list[str]:
    """The pairs every run has, in the first run's order, with one λ sweep.

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
    return list(first)


def mean_over_splits(reports: Sequence[PairReport]) -> dict[str, Any]:
    """One pair's figures averaged over its runs: per λ the regret and the single-agent margin,
    and each method's hypervolume (a method missing from a run is left out)."""
    lambdas = reports[0].lambdas
    regret = {lam: float(np.mean([r.regret[lam] for r in reports])) for lam in lambdas
              if all(lam in r.regret for r in reports)}
    margin = {lam: float(np.mean([r.single_agent_margin[lam] for r in reports])) for lam in lambdas
              if all(lam in r.single_agent_margin for r in reports)}
    methods = set.intersection(*(set(r.hypervolumes) for r in reports))
    hypervolumes = {m: float(np.mean([r.hypervolumes[m] for r in reports])) for m in methods}
    return {"regret": regret, "single_agent_margin": margin, "hypervolumes": hypervolumes}


def split_comparison(runs: Mapping[str, Sequence[PairReport]]) -> tuple[str, list[TargetCheck]]:
    """Markdown comparing the runs (label → its pair reports), and the targets checked on the
    mean over the splits.

    Raises:
        ConfigError: as :func:`_check_comparable`.
    """
    pairs = _check_comparable(runs)
    by_run = {label: {r.pair: r for r in reports} for label, reports in runs.items()}
    middle = {pair: by_run[next(iter(runs))][pair].middle_lambda for pair in pairs}
    means = {pair: mean_over_splits([by_run[label][pair] for label in runs]) for pair in pairs}
    on_mean = quantitative_targets(means, middle)
    per_run = {label: quantitative_targets(
        {r.pair: mean_over_splits([r]) for r in reports}, middle) for label, reports in
        runs.items()}
    # the other two targets rest on plans and accuracies, which are not averaged: per run only
    qualitative = {label: [c for c in target_checks(reports)
                           if c.name.startswith(("plans vary", "moonshot"))]
                   for label, reports in runs.items()}
    lines = ["# The protocol on several splits", "",
             f"Targets per run and on the mean over the {len(runs)} splits ({', '.join(runs)}):",
             "", "| target | " + " | ".join(runs) + " | mean over the splits |",
             "|---|" + "---|" * (len(runs) + 1)]
    for index, check in enumerate(on_mean):
        lines.append(f"| {check.name} | " + " | ".join(
            _verdict(per_run[label][index]) for label in runs) + f" | {_verdict(check)} |")
    for index, check in enumerate(qualitative[next(iter(runs))]):
        lines.append(f"| {check.name} | " + " | ".join(
            _verdict(qualitative[label][index]) for label in runs) + " | – |")
    lines += ["", "Per pair: MasRouter and the best non-oracle baseline at the middle λ, the "
              "worst regret over the λ sweep, the margin over the best single-agent router at "
              "the middle λ, the hypervolumes, and MasRouter's plans at the middle λ; then the "
              "mean over the splits (per λ, then the worst).", ""]
    for pair in pairs:
        lam = middle[pair]
        lines += [f"## {pair}", "",
                  f"| split | MasRouter at λ={lam:g} | best baseline at λ={lam:g} | worst regret "
                  "(λ) | margin over the best single-agent router | hypervolume: MasRouter / "
                  "largest other method | plans (distinct teams, top share) |",
                  "|---|---|---|---|---|---|---|"]
        for label in runs:
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
        margin = mean["single_agent_margin"].get(lam)
        lines += [f"| mean over {len(runs)} splits | | | {_worst(mean['regret'])} | "
                  + (_signed(margin) if margin is not None else "–")
                  + f" | {_fronts(mean['hypervolumes'])} | |", ""]
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


def quantitative_targets(figures: Mapping[str, Mapping[str, Any]],
                         middle: Mapping[str, float]) -> list[TargetCheck]:
    """No regret, the single-agent margin and the largest hypervolume on per-pair ``figures``
    (:func:`mean_over_splits`; of one run, that run's own), with the thresholds of
    ``results.md``."""
    worst = {pair: max(f["regret"].values()) for pair, f in figures.items() if f["regret"]}
    margins = {pair: f["single_agent_margin"][middle[pair]] for pair, f in figures.items()
               if middle[pair] in f["single_agent_margin"]}
    fronts = {pair: (f["hypervolumes"][MASROUTER], *largest_other_hypervolume(f["hypervolumes"]))
              for pair, f in figures.items() if MASROUTER in f["hypervolumes"]}
    regret_met = [p for p, v in worst.items() if v <= NO_REGRET_TOLERANCE]
    wins = [p for p, v in margins.items() if v >= SINGLE_AGENT_MARGIN]
    largest = [p for p, (masr, _, other_hv) in fronts.items()
               if masr >= other_hv - HYPERVOLUME_TIE]
    needed = math.ceil(0.75 * len(fronts))
    return [
        TargetCheck(f"no regret (regret <= {NO_REGRET_TOLERANCE} at every λ) on every pair",
                    len(regret_met) == len(worst) if worst else None,
                    f"{len(regret_met)} of {len(worst)} pairs; worst regret: "
                    + ", ".join(f"{p} {_signed(v)}" for p, v in worst.items())),
        TargetCheck(f"margin >= {SINGLE_AGENT_MARGIN} over the best single-agent router at "
                    "the middle λ on at least half of the pairs",
                    len(wins) * 2 >= len(margins) if margins else None,
                    f"{len(wins)} of {len(margins)} pairs: "
                    + ", ".join(f"{p} {_signed(v)}" for p, v in margins.items())),
        TargetCheck("largest hypervolume on at least 3/4 of the pairs",
                    len(largest) >= needed if fronts else None,
                    f"{len(largest)} of {len(fronts)} ({needed} needed): "
                    + ", ".join(f"{p} {masr:.4f} vs {name} {other_hv:.4f}"
                                for p, (masr, name, other_hv) in fronts.items())),
    ]

"""Tables, fronts and target checks of the evaluation protocol, built from whatever cells have
finished (:mod:`masr_graph.benchmarks.experiment.protocol`).

For every pair and λ, each *method* — cells of one method with different seeds are one method,
reported as the mean over seeds — gets its test utility with a 95 % bootstrap CI over queries
(paired across seeds), accuracy with its CI and $ per query; λ-independent methods (single LLMs,
fixed modes, random plans) are scored at every λ from the same results. MasRouter's regret
against the best non-oracle baseline and its margin over the best single-agent router get a
paired CI (both methods on the same resampled queries), so a table says which differences the
test set can show. A method's front is its
(cost, accuracy) points over the sweep; ``all single LLMs`` is the front of every single LLM's
point, i.e. what choosing the right single LLM for the λ *in hindsight* would achieve (a generous
baseline, shown beside the hypervolume target but not competing in it: no user could run it).
Hypervolumes use a log cost axis spanning the pair's cheapest to dearest point and
accuracy from 0 to 1 (:func:`~masr_graph.benchmarks.reporting.fronts.hypervolume`).

A cell counts only when all its test queries are stored; anything missing is listed, and the
tables say "partial".
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Optional, Sequence

import numpy as np

from masr_graph.files import write_atomically
from masr_graph.router.library import FIXED_PLAN_RULES, PLAN_OUTCOMES

from ..experiment.protocol import MASROUTER, ORACLE, Cell, PairRun
from .fronts import (
    accuracy_cost_front,
    best_baseline,
    hypervolume,
    paired_difference_with_ci,
    plan_distribution,
    regret,
    utility_with_ci,
)
from .plots import plot_distributions, plot_fronts
from .results import QueryResult

ALL_SINGLES = "all single LLMs"
NO_REGRET_TOLERANCE = 0.005
SINGLE_AGENT_MARGIN = 0.01
PLAN_SHARE_LIMIT = 0.8
FLOAT_NOISE = 1e-9
"""Utility differences this small are rounding (one plan's $ summed in another order)."""
MIN_DISTINCT_PLANS = 3


@dataclass
class MethodScore:
    """One method at one λ on one pair (means over its seeds)."""

    pair: str
    method: str
    group: str
    cost_lambda: float
    seeds: int
    n: int
    utility: float
    utility_low: float
    utility_high: float
    accuracy: float
    accuracy_low: float
    accuracy_high: float
    usd_per_query: float
    errors: int
    lambda_independent: bool = False


@dataclass
class PairReport:
    """Everything reported about one pair."""

    pair: str
    scores: list[MethodScore] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    hypervolumes: dict[str, float] = field(default_factory=dict)
    fronts: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    distributions: dict[str, dict[str, Any]] = field(default_factory=dict)
    best_baseline: dict[float, tuple[str, float]] = field(default_factory=dict)
    best_single_agent_router: dict[float, tuple[str, float]] = field(default_factory=dict)
    regret: dict[float, float] = field(default_factory=dict)
    regret_ci: dict[float, tuple[float, float]] = field(default_factory=dict)
    """Per λ, the paired 95 % bootstrap CI of the regret (the best baseline's utility minus
    MasRouter's, on the same test queries; the baseline named in :attr:`best_baseline`). That
    baseline is the best of many on these same queries, so the interval leans against
    MasRouter."""
    single_agent_margin: dict[float, float] = field(default_factory=dict)
    """Per λ, MasRouter's utility minus the best single-agent router's."""
    single_agent_margin_ci: dict[float, tuple[float, float]] = field(default_factory=dict)
    """Per λ, the paired 95 % bootstrap CI of :attr:`single_agent_margin`."""
    lambdas: tuple[float, ...] = ()
    middle_lambda: float = 0.0
    gate: dict[float, dict[str, Any]] = field(default_factory=dict)
    """Per λ, MasRouter's validation gate over its seeds (:func:`_gate_summary`):
    ``fixed_share`` (seeds on the fallback: the graph router did not beat it on validation by
    more than one standard error), mean ``router`` and ``fixed`` (the fallback's, held out)
    validation utility, the mean standard error ``difference_se`` of their paired difference
    (``nan`` for runs older than it), the fallback's ``rules``, and the cross-validated
    ``constant_cv`` and ``outcomes_cv`` utilities."""
    training_environments: list[str] = field(default_factory=list)
    """The distinct environments MasRouter's seeds were trained in, from their curve files
    (``not recorded`` for files older than the record; see
    :func:`~masr_graph.benchmarks.experiment.environment.software_environment`)."""

    def score(self, method: str, cost_lambda: float) -> Optional[MethodScore]:
        for score in self.scores:
            if score.method == method and score.cost_lambda == cost_lambda:
                return score
        return None


def _arrays(results: Sequence[QueryResult], ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    by_id = {r.query_id: r for r in results}
    return (np.array([by_id[i].correct for i in ids], dtype=float),
            np.array([by_id[i].would_have_cost_usd for i in ids], dtype=float))


def pair_report(run: PairRun, cells: Sequence[Cell]) -> PairReport:
    """The report of one pair from the cells of it that have finished."""
    ids = [e.id for e in run.data.test]
    lambdas = tuple(sorted(run.settings.lambdas))
    report = PairReport(run.pair.name, lambdas=lambdas, middle_lambda=run.settings.middle_lambda)
    finished: dict[tuple[str, Optional[float]], list[list[QueryResult]]] = defaultdict(list)
    per_query: dict[tuple[str, float], tuple[np.ndarray, np.ndarray]] = {}
    groups: dict[str, str] = {}
    for cell in cells:
        results = list(run.store.load(run.pair.name, cell.label).values())
        if len({r.query_id for r in results} & set(ids)) < len(ids):
            report.missing.append(cell.label)
            continue
        finished[(cell.method, cell.cost_lambda)].append(results)
        groups[cell.method] = cell.group
    for (method, cell_lambda), runs in finished.items():
        for lam in (lambdas if cell_lambda is None else (cell_lambda,)):
            arrays = [_arrays(results, ids) for results in runs]
            correct = np.stack([a[0] for a in arrays])
            cost = np.stack([a[1] for a in arrays])
            per_query[(method, lam)] = correct, cost
            utility = utility_with_ci(correct, cost, lam)
            accuracy = utility_with_ci(correct, np.zeros_like(cost), 0.0)
            errors = sum(1 for results in runs for r in results if r.error)
            report.scores.append(MethodScore(
                run.pair.name, method, groups[method], lam, len(runs), len(ids), *utility,
                *accuracy, float(cost.mean()), errors, cell_lambda is None))
    curves = [json.loads(path.read_text()) for path in
              (run.out / f"masrouter-seed{seed}.curve.json" for seed in run.settings.seeds)
              if path.exists()]
    report.gate = _gate_summary(curves)
    report.training_environments = sorted({curve.get("environment", "not recorded")
                                           for curve in curves})
    _fronts(report)
    _comparisons(report)
    _paired_differences(report, per_query)
    middle = report.middle_lambda
    for (method, cell_lambda), runs in finished.items():
        if cell_lambda in (None, middle) and groups[method] not in (
                "single LLM", "fixed mode", "fixed vote"):
            report.distributions[method] = plan_distribution(
                [{"mode": r.mode, "k": len(r.llms), "roles": r.roles, "llms": r.llms}
                 for r in runs[0]])
    return report


HYPERVOLUME_TIE = 1e-4
"""Hypervolumes this close count as a tie (a router that chose the best fixed plan at every λ
has exactly its front)."""


def _gate_summary(curves: Sequence[dict[str, Any]]) -> dict[float, dict[str, Any]]:
    """What MasRouter's validation gate decided per λ (from its seeds' curve files): the share
    of seeds on the fallback, the mean validation utility of the router and of the fallback
    (held out), the fallback's rules, and the cross-validated utility of the best constant plan
    and of per-query routing by plan outcomes (see
    :func:`masr_graph.router.library.choose_fallbacks`)."""
    decided: dict[float, list[dict[str, Any]]] = defaultdict(list)
    for curve in curves:
        for lam, entry in curve.get("gate_evidence", {}).items():
            scores = entry.get("cross_validated", {})
            decided[float(lam)].append({
                "fallback": curve["gate"].get(lam) is not None,
                "router": entry["router_validation_utility"],
                "fixed": entry["fixed_validation_utility"],
                "difference_se": entry.get("difference_standard_error", float("nan")),
                "rule": entry.get("fixed_rule", "best mean"),
                "constant_cv": max((v for k, v in scores.items() if k in FIXED_PLAN_RULES),
                                   default=float("nan")),
                "outcomes_cv": max((v for k, v in scores.items() if k.startswith(PLAN_OUTCOMES)),
                                   default=float("nan"))})
    return {lam: {"fixed_share": float(np.mean([d["fallback"] for d in rows])),
                  "router": float(np.mean([d["router"] for d in rows])),
                  "fixed": float(np.mean([d["fixed"] for d in rows])),
                  "difference_se": float(np.mean([d["difference_se"] for d in rows])),
                  "rules": sorted({d["rule"] for d in rows}),
                  "constant_cv": float(np.mean([d["constant_cv"] for d in rows])),
                  "outcomes_cv": float(np.mean([d["outcomes_cv"] for d in rows]))}
            for lam, rows in decided.items()}


def _fronts(report: PairReport) -> None:
    points: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for score in report.scores:
        if score.group == "oracle":
            continue
        points[score.method].append((score.usd_per_query, score.accuracy))
        if score.group == "single LLM":
            points[ALL_SINGLES].append((score.usd_per_query, score.accuracy))
    costs = [c for pts in points.values() for c, _ in pts if c > 0]
    if not costs:
        return
    cost_range = (min(costs), max(costs) * 1.0001)
    for method, pts in points.items():
        front = accuracy_cost_front(sorted(set(pts)))
        report.fronts[method] = front
        report.hypervolumes[method] = hypervolume(
            [(max(c, cost_range[0]), a) for c, a in front], cost_range=cost_range)


def _comparisons(report: PairReport) -> None:
    """Per λ: the best non-oracle baseline and the best single-agent router, MasRouter's regret
    against the one and its margin over the other. Of methods tied on utility (often several
    chose the same plans), the one listed first in the scores is named; they follow the cells'
    order (:meth:`PairRun.cells`): the best fixed plan, the single-agent routers, single LLMs,
    fixed modes, then votes, the simpler baseline first."""
    not_baselines = ("MasRouter", "oracle")  # the router under test; no deployable method
    for lam in report.lambdas:
        at = [s for s in report.scores if s.cost_lambda == lam]
        groups = {s.method: s.group for s in at}
        if any(s.group not in not_baselines for s in at):  # partial tables may hold none yet
            report.best_baseline[lam] = best_baseline(
                {s.method: s.utility for s in at}, groups, not_baselines)
        routers = {s.method: s.utility for s in at if s.group == "single-agent router"}
        if routers:
            report.best_single_agent_router[lam] = best_baseline(routers, groups, ())
        masr = report.score(MASROUTER, lam)
        if masr is not None and lam in report.best_baseline:
            report.regret[lam] = regret(report.best_baseline[lam][1], masr.utility)
        if masr is not None and lam in report.best_single_agent_router:
            report.single_agent_margin[lam] = (masr.utility
                                               - report.best_single_agent_router[lam][1])


def _paired_differences(report: PairReport,
                        per_query: dict[tuple[str, float], tuple[np.ndarray, np.ndarray]]) -> None:
    """The regret's and the single-agent margin's paired CIs per λ (``per_query``: each
    method's ``[S, N]`` correct and $ on the test queries at each λ)."""
    for lam in report.lambdas:
        masrouter = per_query.get((MASROUTER, lam))
        if masrouter is None:
            continue
        if lam in report.best_baseline:
            _, low, high = paired_difference_with_ci(
                per_query[(report.best_baseline[lam][0], lam)], masrouter, lam)
            report.regret_ci[lam] = (low, high)
        if lam in report.best_single_agent_router:
            _, low, high = paired_difference_with_ci(
                masrouter, per_query[(report.best_single_agent_router[lam][0], lam)], lam)
            report.single_agent_margin_ci[lam] = (low, high)


@dataclass
class TargetCheck:
    """One of the issue's targets, measured."""

    name: str
    met: Optional[bool]
    detail: str


class _Hypervolumes(NamedTuple):
    """One pair's front sizes: MasRouter's, the largest other method's, and the hindsight front
    of all single LLMs."""

    pair: str
    masrouter: float
    other: str
    largest_other: float
    hindsight: float


def largest_other_hypervolume(hypervolumes: Mapping[str, float]) -> tuple[str, float]:
    """The method other than MasRouter with the largest front (``("none", 0.0)`` if none).
    The hindsight front of all single LLMs is no method a user could run (it picks the LLM per
    cost level from test outcomes): it is shown beside, not competing."""
    others = {m: hv for m, hv in hypervolumes.items() if m not in (MASROUTER, ALL_SINGLES)}
    return max(others.items(), key=lambda item: item[1], default=("none", 0.0))


def target_checks(reports: Sequence[PairReport]) -> list[TargetCheck]:
    """The protocol's targets (no regret, beating single-agent routers, largest hypervolume,
    varied plans, the ZeroEval moonshot), each with what was measured."""
    checks = []
    regrets = {r.pair: r.regret for r in reports}
    worst = {pair: max(values.values()) for pair, values in regrets.items() if values}
    failing = {pair: value for pair, value in worst.items() if value > NO_REGRET_TOLERANCE}
    # which cells a different draw of test queries would not overturn: the regret's paired CI
    # lies wholly above 0 (MasRouter behind), above the tolerance too (the target missed), or
    # wholly below 0 (MasRouter ahead); within FLOAT_NOISE of 0 is one plan's cost summed in
    # another order
    cells = [(r.pair, lam, r.regret[lam], ci) for r in reports for lam, ci in r.regret_ci.items()]
    behind = [cell for cell in cells if cell[3][0] > FLOAT_NOISE]
    ahead = [cell for cell in cells if cell[3][1] < -FLOAT_NOISE]

    def listed(chosen: list) -> str:
        return "".join(f"{', ' if i else ': '}{p} λ={lam:g} {_signed(v)} {_signed_ci(*ci)}"
                       for i, (p, lam, v, ci) in enumerate(chosen))

    noise = (f"; the regret's paired 95 % CI lies wholly above 0 (MasRouter behind beyond the "
             f"test queries' noise) in {len(behind)} of {len(cells)} cells{listed(behind)}; "
             f"of these, wholly above {NO_REGRET_TOLERANCE} in "
             f"{sum(1 for cell in behind if cell[3][0] > NO_REGRET_TOLERANCE)}; wholly below 0 "
             f"(MasRouter ahead beyond noise) in {len(ahead)}{listed(ahead)}"
             if cells else "")
    checks.append(TargetCheck(
        f"no regret (MasRouter >= best non-oracle baseline - {NO_REGRET_TOLERANCE} at every λ)",
        not failing if worst else None,
        f"{len(worst) - len(failing)} of {len(worst)} pairs; worst regret per pair: "
        + ", ".join(f"{p} {_signed(v)}" for p, v in worst.items())
        + noise))
    margins = {r.pair: r.single_agent_margin[r.middle_lambda] for r in reports
               if r.middle_lambda in r.single_agent_margin}
    margin_cis = {r.pair: r.single_agent_margin_ci[r.middle_lambda] for r in reports
                  if r.middle_lambda in r.single_agent_margin_ci}
    wins = sum(1 for v in margins.values() if v >= SINGLE_AGENT_MARGIN)
    checks.append(TargetCheck(
        f"beats the best single-agent router by >= {SINGLE_AGENT_MARGIN} at the middle λ on at "
        "least half of the pairs",
        wins * 2 >= len(margins) if margins else None,
        f"{wins} of {len(margins)} pairs; margins" + (" [paired 95 % CI]" if margin_cis else "")
        + ": " + ", ".join(f"{p} {_signed(v)}" + (f" {_signed_ci(*margin_cis[p])}"
                                                   if p in margin_cis else "")
                           for p, v in margins.items())))
    fronts = []
    for r in reports:
        if MASROUTER in r.hypervolumes:
            other, other_hv = largest_other_hypervolume(r.hypervolumes)
            fronts.append(_Hypervolumes(r.pair, r.hypervolumes[MASROUTER], other, other_hv,
                                        r.hypervolumes.get(ALL_SINGLES, float("nan"))))
    won = sum(1 for f in fronts if f.masrouter >= f.largest_other - HYPERVOLUME_TIE)
    above_envelope = sum(1 for f in fronts if f.masrouter >= f.hindsight - HYPERVOLUME_TIE)
    needed = math.ceil(0.75 * len(fronts))
    checks.append(TargetCheck(
        f"MasRouter's front has the largest hypervolume of all methods (ties within "
        f"{HYPERVOLUME_TIE} count, and are named) on at least 3/4 of the pairs ({needed} of "
        f"{len(fronts)}); beside it, the front of {ALL_SINGLES} together, chosen in hindsight",
        won >= needed if fronts else None,
        f"{won} of {len(fronts)} (at least the hindsight front of {ALL_SINGLES}: "
        f"{above_envelope} of {len(fronts)}); "
        + ", ".join(f"{f.pair} {f.masrouter:.4f} (largest other method: {f.other} "
                    f"{f.largest_other:.4f}"
                    + (", tied" if abs(f.masrouter - f.largest_other) <= HYPERVOLUME_TIE else "")
                    + f"; {ALL_SINGLES}: {f.hindsight:.4f})"
                    for f in fronts)))
    varied = []
    for r in reports:
        dist = r.distributions.get(MASROUTER)
        if dist is None:
            continue
        ok = dist["distinct_teams"] >= MIN_DISTINCT_PLANS and dist["top_plan_share"] <= (
            PLAN_SHARE_LIMIT)
        gate = r.gate.get(r.middle_lambda)
        one_plan = (bool(gate) and gate["fixed_share"] == 1.0
                    and set(gate["rules"]) <= set(FIXED_PLAN_RULES))
        teams = dist["distinct_teams"]
        detail = (f"{r.pair}: {teams} team{'' if teams == 1 else 's'}, "
                  f"top {dist['top_plan_share']:.0%}")
        if not ok and one_plan:
            detail += (f" (one plan shown best: cross-validated, a constant plan "
                       f"({gate['constant_cv']:.4f}) was at least as good as per-query routing "
                       f"by plan outcomes ({gate['outcomes_cv']:.4f}), and on every seed the "
                       f"graph router's per-query plans did not beat it, held out on "
                       f"validation, by more than a standard error: {gate['fixed']:.3f} vs "
                       f"{gate['router']:.3f} (SE {gate['difference_se']:.3f}))")
        varied.append((ok or one_plan, detail))
    checks.append(TargetCheck(
        f"plans vary with the query at the middle λ (>= {MIN_DISTINCT_PLANS} distinct teams, none "
        f"on more than {PLAN_SHARE_LIMIT:.0%} of the queries), unless one plan is shown best",
        all(ok for ok, _ in varied) if varied else None,
        ", ".join(detail for _, detail in varied)))
    moon = next((r for r in reports if r.pair == "zeroeval-all-gsm8k"), None)
    if moon is not None:
        singles = [s for s in moon.scores if s.group == "single LLM" and s.cost_lambda == 0.0]
        if singles:
            best = max(singles, key=lambda s: (s.accuracy, -s.usd_per_query))
            hits = [s for s in moon.scores if s.method == MASROUTER
                    and s.accuracy >= best.accuracy - 1e-12
                    and s.usd_per_query <= 0.25 * best.usd_per_query]
            checks.append(TargetCheck(
                f"moonshot: ZeroEval all, GSM8K, accuracy >= {best.accuracy:.3f} ({best.method}) "
                f"at <= 25 % of its ${best.usd_per_query:.2e} per query",
                bool(hits),
                "; ".join(f"λ={s.cost_lambda:g}: {s.accuracy:.3f} at "
                          f"{s.usd_per_query / best.usd_per_query:.0%} of its cost"
                          for s in moon.scores if s.method == MASROUTER)))
    return checks


def _errors(report: PairReport, method: str) -> int:
    """Failed queries (no answer: every agent's call failed, or the run broke) of ``method``
    over its cells; each counts as wrong."""
    cells = {(s.cost_lambda if not s.lambda_independent else None): s.errors
             for s in report.scores if s.method == method}
    return sum(cells.values())


def _signed(value: float) -> str:
    """``value`` as ``+0.0123``; a difference of two equal utilities (``-1e-17``) reads as
    ``+0.0000``, not ``-0.0000``."""
    return f"{round(value, 4) + 0.0:+.4f}"


def _signed_ci(low: float, high: float) -> str:
    return f"[{_signed(low)}, {_signed(high)}]"


def _fmt(score: Optional[MethodScore]) -> str:
    if score is None:
        return "–"
    return (f"{score.utility:.3f} [{score.utility_low:.3f}, {score.utility_high:.3f}] · "
            f"{score.accuracy:.3f} · ${score.usd_per_query:.1e}")


def report_markdown(reports: Sequence[PairReport], checks: Sequence[TargetCheck],
                    meta: dict[str, Any]) -> str:
    """The protocol's results file."""
    lines = ["# masr_graph evaluation protocol", ""]
    lines += [f"- **{key}**: {value}" for key, value in meta.items()]
    partial = [r for r in reports if r.missing]
    if partial:
        lines += ["", f"**Partial grid**: {sum(len(r.missing) for r in partial)} cells not "
                      "finished: " + "; ".join(f"{r.pair}: {len(r.missing)}" for r in partial)]
    lines += ["", "## Targets", "", "| target | met | measured |", "|---|---|---|"]
    for check in checks:
        met = "n/a" if check.met is None else ("yes" if check.met else "**no**")
        lines.append(f"| {check.name} | {met} | {check.detail} |")
    dollars = ("notional: recorded list prices, nothing was paid"
               if str(meta.get("$ figures", "real")) != "real" else "real: what was charged")
    lines += ["", f"Cells: utility [95 % CI] · accuracy · $ per query ({dollars}), mean "
                  "over seeds.", ""]
    for r in reports:
        lams = r.lambdas
        lines += [f"## {r.pair}", "", "| method | " + " | ".join(f"λ={lam:g}" for lam in lams)
                  + " | hypervolume | errors |", "|---|" + "---|" * (len(lams) + 2)]
        shown = [MASROUTER, "best fixed plan", "kNN router", "MLP router", "MF router",
                 "logistic router", "random plans", ORACLE]
        for method in shown:
            if any(s.method == method for s in r.scores):
                lines.append(f"| {method} | " + " | ".join(_fmt(r.score(method, lam))
                                                        for lam in lams)
                             + f" | {r.hypervolumes.get(method, float('nan')):.4f} | "
                             f"{_errors(r, method)} |")
        best_single = [max((s for s in r.scores if s.group == "single LLM" and s.cost_lambda
                            == lam), key=lambda s: s.utility, default=None) for lam in lams]
        lines.append("| best single LLM (in hindsight) | " + " | ".join(
            f"{_fmt(s)} ({s.method})" if s else "–" for s in best_single)
            + f" | {r.hypervolumes.get(ALL_SINGLES, float('nan')):.4f} | |")
        lines.append("| best non-oracle baseline | " + " | ".join(
            f"{r.best_baseline[lam][1]:.3f} ({r.best_baseline[lam][0]})"
            if lam in r.best_baseline else "–" for lam in lams) + " | | |")
        lines.append("| regret (best baseline − MasRouter) [paired 95 % CI] | " + " | ".join(
            _signed(r.regret[lam]) + (f" {_signed_ci(*r.regret_ci[lam])}"
                                      if lam in r.regret_ci else "")
            if lam in r.regret else "–" for lam in lams) + " | | |")
        if r.single_agent_margin_ci:
            lines.append("| MasRouter − best single-agent router [paired 95 % CI] | " + " | ".join(
                f"{_signed(r.single_agent_margin[lam])} "
                f"{_signed_ci(*r.single_agent_margin_ci[lam])} "
                f"({r.best_single_agent_router[lam][0]})"
                if lam in r.single_agent_margin_ci else "–" for lam in lams) + " | | |")
        if r.gate:
            lines.append("| MasRouter's validation gate: share of seeds on the fallback "
                         "(validation utility: fallback, held out, vs graph router, and the "
                         "standard error of their difference — the lead the router needs; the "
                         "fallback's rule) | "
                         + " | ".join(
                             f"{r.gate[lam]['fixed_share']:.0%} ({r.gate[lam]['fixed']:.3f} vs "
                             f"{r.gate[lam]['router']:.3f}, SE {r.gate[lam]['difference_se']:.3f}; "
                             f"{', '.join(r.gate[lam]['rules'])})"
                             if lam in r.gate else "–"
                             for lam in lams) + " | | |")
        lines.append("")
        fixed = sorted((s for s in r.scores if s.lambda_independent
                        and s.cost_lambda == r.middle_lambda), key=lambda s: -s.utility)
        if fixed:
            lines += [f"Every fixed method at λ={r.middle_lambda:g} (single LLMs, fixed modes, "
                      "votes, random), best first, with its front's hypervolume:", "",
                      "| method | kind | utility [95 % CI] · accuracy · $ per query | "
                      "hypervolume | errors |", "|---|---|---|---:|---:|"]
            lines += [f"| {s.method} | {s.group} | {_fmt(s)} | "
                      f"{r.hypervolumes.get(s.method, float('nan')):.4f} | {s.errors} |"
                      for s in fixed]
            lines.append("")
        if r.distributions:
            lines += [f"Plans at λ={r.middle_lambda:g} over the test queries:", "",
                      "| method | distinct teams | distinct plans | top plan (share) | modes | "
                      "LLMs |", "|---|---:|---:|---|---|---|"]
            for method, dist in r.distributions.items():
                modes = ", ".join(f"{k} {v:.0%}" for k, v in list(dist["mode_shares"].items())[:4])
                llms = ", ".join(f"{k} {v:.0%}" for k, v in list(dist["llm_shares"].items())[:4])
                lines.append(f"| {method} | {dist['distinct_teams']} | {dist['distinct_plans']} | "
                             f"{dist['top_plan']} ({dist['top_plan_share']:.0%}) | {modes} | "
                             f"{llms} |")
            lines.append("")
        if r.missing:
            lines += [f"Missing cells: {', '.join(r.missing)}", ""]
    return "\n".join(lines) + "\n"


def write_report(reports: Sequence[PairReport], meta: dict[str, Any],
                 out: Path) -> list[TargetCheck]:
    """Write ``results.md``, ``results.json``, ``fronts.png`` and ``plans.png`` to ``out``."""
    checks = target_checks(reports)
    write_atomically(out / "results.md", report_markdown(reports, checks, meta))
    payload = {"meta": meta, "targets": [asdict(c) for c in checks],
               "pairs": [asdict(r) for r in reports]}
    write_atomically(out / "results.json", json.dumps(payload, indent=1, default=str))
    panels = []
    for r in reports:
        methods = defaultdict(list)
        groups = {}
        for s in sorted(r.scores, key=lambda s: s.cost_lambda):
            if (s.group in ("single LLM", "fixed mode", "fixed vote", "oracle")
                    or s.usd_per_query <= 0):
                continue
            if s.lambda_independent and s.cost_lambda != r.lambdas[0]:
                continue  # one point, not one per λ
            methods[s.method].append((s.usd_per_query, s.accuracy, s.accuracy_low,
                                      s.accuracy_high))
            groups[s.method] = s.group
        singles = sorted({(s.usd_per_query, s.accuracy, s.accuracy_low, s.accuracy_high)
                          for s in r.scores if s.group == "single LLM" and s.cost_lambda
                          == r.lambdas[0] and s.usd_per_query > 0})
        front = set(r.fronts.get(ALL_SINGLES, []))
        methods[ALL_SINGLES] = [p for p in singles if (p[0], p[1]) in front]
        groups[ALL_SINGLES] = "single LLM"
        panels.append({"title": r.pair, "methods": [
            {"name": name, "group": groups[name], "points": pts}
            for name, pts in methods.items() if pts]})
    if panels:
        plot_fronts(panels, out / "fronts.png")
    chosen = [{"title": r.pair, "rows": [{"label": method, "distribution": dist}
                                         for method, dist in r.distributions.items()]}
              for r in reports if r.distributions]
    if chosen:
        plot_distributions(chosen, out / "plans.png")
    return checks

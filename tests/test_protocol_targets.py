"""The protocol's target checks (``results.md``'s "Targets" table): each target is met exactly
when its figures say so, misses name the pairs and figures, and the hindsight front of all single
LLMs together is shown beside the hypervolume target without counting as a method."""
from __future__ import annotations

import numpy as np
import pytest

from masr_graph.benchmarks.experiment.protocol import MASROUTER
from masr_graph.benchmarks.reporting.protocol import (
    ALL_SINGLES, PairReport, _comparisons, _fronts, _paired_differences,
    report_markdown, target_checks,
)
from masr_graph.benchmarks.reporting.fronts import plan_distribution
from report_support import method_score

LAMBDAS = (0.0, 100.0)


def _report(pair: str, masrouter: dict[float, tuple[float, float]],
            singles: dict[str, tuple[float, float]],
            knn: dict[float, tuple[float, float]]) -> PairReport:
    """A pair whose MasRouter, kNN router and single LLMs have the given (accuracy, $/query) per
    λ (single LLMs: one point for every λ), with fronts and comparisons computed as
    :func:`pair_report` does."""
    report = PairReport(pair, lambdas=LAMBDAS, middle_lambda=100.0)
    for lam in LAMBDAS:
        report.scores.append(method_score(pair, MASROUTER, "MasRouter", lam, *masrouter[lam]))
        report.scores.append(method_score(pair, "kNN router", "single-agent router", lam,
                                          *knn[lam]))
        for name, point in singles.items():
            report.scores.append(method_score(pair, name, "single LLM", lam, *point))
    _fronts(report)
    _comparisons(report)
    return report


def _check(checks, prefix: str):
    return next(c for c in checks if c.name.startswith(prefix))


# Two single LLMs, each strong at one end of the cost range, and a dominated one that stretches
# the cost axis: together (in hindsight) the first two have a larger front than either alone.
SINGLES = {"cheap (IO)": (0.80, 1e-5), "dear (IO)": (0.95, 1e-3), "waste (IO)": (0.50, 1e-2)}


def test_hypervolume_target_counts_methods_and_shows_the_hindsight_front_beside():
    # MasRouter: cheap's accuracy at cheap's cost, and better than dear at a tenth of its cost
    ahead = _report("ahead", {0.0: (0.96, 1e-4), 100.0: (0.80, 1e-5)}, SINGLES,
                    {0.0: (0.90, 1e-3), 100.0: (0.80, 1e-5)})
    # MasRouter: only the dear LLM's point, so the cheap LLM's front is larger
    behind = _report("behind", {0.0: (0.95, 1e-3), 100.0: (0.95, 1e-3)}, SINGLES,
                     {0.0: (0.95, 1e-4), 100.0: (0.80, 1e-5)})
    # MasRouter equals the envelope: above each single LLM alone, tied with the envelope
    envelope = _report("envelope", {0.0: (0.95, 1e-3), 100.0: (0.80, 1e-5)}, SINGLES,
                       {0.0: (0.85, 1e-3), 100.0: (0.70, 1e-5)})
    assert envelope.hypervolumes[ALL_SINGLES] > max(envelope.hypervolumes[name]
                                                    for name in SINGLES)
    check = _check(target_checks([ahead, behind, envelope]), "MasRouter's front has the largest")
    # ceil(3/4 · 3) = 3 pairs needed; two of three are largest among methods
    assert check.met is False
    assert check.detail.startswith(f"2 of 3 (at least the hindsight front of {ALL_SINGLES}: "
                                   "2 of 3)")
    assert "behind" in check.detail and "largest other method: kNN router" in check.detail
    assert f"{ALL_SINGLES}: {envelope.hypervolumes[ALL_SINGLES]:.4f}" in check.detail

    # the envelope alone is larger than MasRouter on "ahead2": still the largest of all methods
    ahead2 = _report("ahead2", {0.0: (0.95, 1e-3), 100.0: (0.79, 1e-5)}, SINGLES,
                     {0.0: (0.90, 1e-3), 100.0: (0.70, 1e-5)})
    assert ahead2.hypervolumes[MASROUTER] < ahead2.hypervolumes[ALL_SINGLES]
    assert ahead2.hypervolumes[MASROUTER] > max(
        hv for m, hv in ahead2.hypervolumes.items() if m not in (MASROUTER, ALL_SINGLES))
    check = _check(target_checks([ahead, envelope, ahead2]), "MasRouter's front has the largest")
    assert check.met is True
    assert check.detail.startswith(f"3 of 3 (at least the hindsight front of {ALL_SINGLES}: "
                                   "2 of 3)")


def test_no_regret_and_single_agent_margin_targets_follow_their_figures():
    singles = {"cheap (IO)": (0.80, 1e-5)}
    good = _report("good", {0.0: (0.95, 1e-3), 100.0: (0.82, 1e-5)}, singles,
                   {0.0: (0.95, 1e-3), 100.0: (0.80, 1e-5)})
    checks = target_checks([good])
    assert _check(checks, "no regret").met is True
    margin = _check(checks, "beats the best single-agent router")
    assert margin.met is True and "good +0.0200" in margin.detail

    # 0.006 below the best baseline (the cheap LLM) at λ = 100: beyond the 0.005 tolerance
    short = _report("short", {0.0: (0.95, 1e-3), 100.0: (0.794, 1e-5)}, singles,
                    {0.0: (0.95, 1e-3), 100.0: (0.80, 1e-5)})
    assert short.regret[100.0] == pytest.approx(0.006)
    checks = target_checks([good, short])
    regret = _check(checks, "no regret")
    assert regret.met is False and "short +0.0060" in regret.detail
    # one of two pairs ahead by 0.01 is half of them: met; a third pair behind breaks it
    assert _check(checks, "beats the best single-agent router").met is True
    tied = _report("tied", {0.0: (0.95, 1e-3), 100.0: (0.80, 1e-5)}, singles,
                   {0.0: (0.95, 1e-3), 100.0: (0.80, 1e-5)})
    margin = _check(target_checks([good, short, tied]), "beats the best single-agent router")
    assert margin.met is False and margin.detail.startswith("1 of 3 pairs")


def test_results_markdown_gives_each_fixed_method_its_hypervolume():
    report = _report("good", {0.0: (0.95, 1e-3), 100.0: (0.82, 1e-5)}, SINGLES,
                     {0.0: (0.95, 1e-3), 100.0: (0.80, 1e-5)})
    text = report_markdown([report], target_checks([report]), {"status": "complete"})
    row = next(line for line in text.splitlines() if line.startswith("| cheap (IO) |"))
    assert f"| {report.hypervolumes['cheap (IO)']:.4f} |" in row
    assert "largest hypervolume of all methods" in text


def _per_query(solved: np.ndarray, usd: float, seeds: int = 1) -> tuple[np.ndarray, np.ndarray]:
    return np.stack([solved] * seeds), np.full((seeds, solved.size), usd)


def test_regret_and_margin_carry_paired_cis_and_misses_beyond_noise_are_named():
    """On 400 test queries the cheap LLM solves 320. MasRouter on "clear" loses 16 of them (a
    regret of 0.04 that nearly every resample shows); on "noisy" it trades 40 of them for 38
    others (a regret of 0.005, within noise); on "better" it solves 16 more; on "same" it
    chooses the cheap LLM's plan, whose $ summed over three seeds differs by rounding. Separate
    CIs of the two methods would overlap on every pair."""
    rng = np.random.default_rng(3)
    cheap = np.zeros(400)
    cheap[rng.permutation(400)[:320]] = 1.0
    clear = cheap.copy()
    clear[np.flatnonzero(cheap)[:16]] = 0.0
    noisy = cheap.copy()
    noisy[np.flatnonzero(cheap)[:40]] = 0.0
    noisy[np.flatnonzero(cheap == 0)[:38]] = 1.0
    better = cheap.copy()
    better[np.flatnonzero(cheap == 0)[:16]] = 1.0
    reports = []
    for pair, masrouter, usd in (("clear", clear, 1e-5), ("noisy", noisy, 1e-5),
                                 ("better", better, 1e-5), ("same", cheap, 1e-5 + 1e-17)):
        accuracy = float(masrouter.mean())
        report = _report(pair, {0.0: (accuracy, usd), 100.0: (accuracy, usd)},
                         {"cheap (IO)": (0.80, 1e-5)},
                         {0.0: (0.80, 1e-5), 100.0: (0.80, 1e-5)})
        per_query = {(method, lam): arrays for lam in LAMBDAS for method, arrays in (
            (MASROUTER, _per_query(masrouter, usd, seeds=3)),
            ("cheap (IO)", _per_query(cheap, 1e-5)),
            ("kNN router", _per_query(cheap, 1e-5)))}
        _paired_differences(report, per_query)
        reports.append(report)
    clear_report, noisy_report, _, same_report = reports
    assert 0.0 < same_report.regret_ci[100.0][0] < 1e-12  # rounding, not a regret
    low, high = clear_report.regret_ci[100.0]
    assert clear_report.regret[100.0] == pytest.approx(0.04)
    assert 0.005 < low < 0.04 < high
    margin_low, margin_high = clear_report.single_agent_margin_ci[100.0]
    assert clear_report.single_agent_margin[100.0] == pytest.approx(-0.04)
    assert (margin_low, margin_high) == pytest.approx((-high, -low))
    low, high = noisy_report.regret_ci[100.0]
    assert noisy_report.regret[100.0] == pytest.approx(0.005)
    assert low < 0.0 < high

    checks = target_checks(reports)
    regret = _check(checks, "no regret")
    assert regret.met is False
    assert ("wholly above 0 (MasRouter behind beyond the test queries' noise) in 2 of 8 cells: "
            "clear λ=0 +0.0400 [") in regret.detail
    behind, ahead = regret.detail.split("CI lies wholly above 0 ")[1].split("wholly below 0")
    assert "noisy λ=" not in behind and "same λ=" not in behind
    assert "of these, wholly above 0.005 in 2;" in behind
    assert ahead.startswith(" (MasRouter ahead beyond noise) in 2: better λ=0 -0.0400 [")
    margin_check = _check(checks, "beats the best single-agent router")
    assert f"clear -0.0400 [{margin_low:+.4f}, {margin_high:+.4f}]" in margin_check.detail
    text = report_markdown(reports, checks, {"status": "complete"})
    row = next(line for line in text.splitlines() if line.startswith("| regret"))
    assert f"+0.0400 [{clear_report.regret_ci[0.0][0]:+.4f}, " in row
    assert any(line.startswith("| MasRouter − best single-agent router [paired 95 % CI] | "
                               "-0.0400 [") and "(kNN router)" in line
               for line in text.splitlines())


def test_ties_for_best_baseline_go_to_the_method_listed_first_as_the_cells_list_them():
    report = PairReport("tie", lambdas=(100.0,), middle_lambda=100.0)
    # the cells' order: MasRouter, the best fixed plan, the routers, single LLMs, ... the oracle
    report.scores = [method_score("tie", MASROUTER, "MasRouter", 100.0, 0.79, 1e-5),
                     method_score("tie", "best fixed plan", "fixed plan", 100.0, 0.80, 1e-5),
                     method_score("tie", "kNN router", "single-agent router", 100.0, 0.80, 1e-5),
                     method_score("tie", "MLP router", "single-agent router", 100.0, 0.80, 1e-5),
                     method_score("tie", "cheap (IO)", "single LLM", 100.0, 0.80, 1e-5),
                     method_score("tie", "oracle", "oracle", 100.0, 0.99, 1e-5)]
    _comparisons(report)
    # the oracle is no baseline; of the tied rest, the first listed, not "MLP router" (which
    # sorts first)
    assert report.best_baseline[100.0] == ("best fixed plan", pytest.approx(0.799))
    assert report.best_single_agent_router[100.0][0] == "kNN router"
    assert report.regret[100.0] == pytest.approx(0.01)
    assert report.single_agent_margin[100.0] == pytest.approx(-0.01)


def _plans(*teams: tuple[str, int]) -> list[dict]:
    """``count`` IO plans on each named LLM."""
    return [{"mode": "IO", "k": 1, "roles": ["solver"], "llms": [llm]}
            for llm, count in teams for _ in range(count)]


def test_varied_plans_target_needs_three_teams_none_above_80_percent_or_one_plan_shown_best():
    shown_best = {100.0: {"fixed_share": 1.0, "router": 0.80, "fixed": 0.82,
                          "difference_se": 0.01, "rules": ["best mean"], "constant_cv": 0.82,
                          "outcomes_cv": 0.81}}

    def pair(name: str, plans: list[dict], gate: dict) -> PairReport:
        report = PairReport(name, lambdas=(100.0,), middle_lambda=100.0)
        report.distributions[MASROUTER] = plan_distribution(plans)
        report.gate = gate
        return report

    varied = pair("varied", _plans(("a", 40), ("b", 30), ("c", 30)), {})
    two = pair("two", _plans(("a", 90), ("b", 10)), {})
    constant = pair("constant", _plans(("a", 100)), shown_best)
    # the fallback on every seed, but per-query routing by plan outcomes: nothing shown
    routed = pair("routed", _plans(("a", 100)), {100.0: dict(shown_best[100.0],
                                                             rules=["plan outcomes"])})
    # three teams, but one of them on 82 % of the queries
    dominated = pair("dominated", _plans(("a", 82), ("b", 9), ("c", 9)), {})

    def check(*reports: PairReport):
        return _check(target_checks(list(reports)), "plans vary with the query")

    assert check(varied, constant).met is True
    for miss in (two, routed, dominated):
        assert check(varied, miss).met is False
    detail = check(varied, two, constant, routed).detail
    assert "varied: 3 teams, top 40%" in detail and "two: 2 teams, top 90%" in detail
    assert "constant: 1 team, top 100% (one plan shown best" in detail
    assert "routed: 1 team, top 100%" in detail
    assert "routed: 1 team, top 100% (one plan" not in detail

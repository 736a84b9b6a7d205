"""The headroom tables (:mod:`masr_graph.benchmarks.experiment.headroom`) as markdown and JSON."""
from __future__ import annotations

import sys
from typing import Any, Mapping

import numpy as np

from ..experiment.headroom import (MOONSHOT_COST_SHARE, NO_REGRET_TOLERANCE, ROUTER_MARGIN,
                                  Headroom)


def _lambda(value: float) -> str:
    return f"{value:g}"


def headroom_from_json(stored: Mapping[str, Any]) -> tuple[Headroom, Headroom]:
    """One pair of :func:`headroom_json` back as (the run's split, the redraws)."""
    def rebuilt(arrays: Mapping[str, Any]) -> Headroom:
        return Headroom(tuple(arrays["lambdas"]), np.array(arrays["chosen"]),
                        np.array(arrays["best_single"]), np.array(arrays["best_plan"]),
                        np.array(arrays["moonshot_possible"]), np.array(arrays["moonshot_chosen"]),
                        None if arrays.get("best_router") is None
                        else np.array(arrays["best_router"]))
    return rebuilt(stored["own_split"]), rebuilt(stored["redraws"])


def headroom_json(figures: Mapping[str, tuple[Headroom, Headroom]]) -> dict[str, Any]:
    """Per pair, the run's split and every redraw, per λ."""
    def arrays(h: Headroom) -> dict[str, Any]:
        return {"lambdas": list(h.lambdas), "chosen": h.chosen.tolist(),
                "best_single": h.best_single.tolist(), "best_plan": h.best_plan.tolist(),
                "moonshot_possible": h.moonshot_possible.tolist(),
                "moonshot_chosen": h.moonshot_chosen.tolist(),
                "best_router": None if h.best_router is None else h.best_router.tolist()}
    return {pair: {"own_split": arrays(own), "redraws": arrays(redrawn)}
            for pair, (own, redrawn) in figures.items()}


def merge_headroom(stored: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, Any]:
    """The pairs of an earlier invocation's ``headroom.json`` (in their order) with this
    invocation's (:func:`headroom_json`) in their place or after them; a stored pair measured
    over another λ sweep, or unreadable, is left out with a warning on stderr."""
    sweep = tuple(next(iter(current.values()))["redraws"]["lambdas"])
    merged: dict[str, Any] = {}
    for name, entry in stored.items():
        if name in current:
            merged[name] = current[name]
            continue
        try:
            lambdas = headroom_from_json(entry)[1].lambdas
        except (KeyError, TypeError, ValueError, AttributeError):
            print(f"warning: the stored headroom of {name} is unreadable; it is left out",
                  file=sys.stderr)
            continue
        if lambdas != sweep:
            print(f"warning: the stored headroom of {name} was measured over another λ sweep; "
                  "it is left out", file=sys.stderr)
            continue
        merged[name] = entry
    merged.update({name: entry for name, entry in current.items() if name not in merged})
    return merged


def headroom_document(figures: Mapping[str, tuple[Headroom, Headroom]]) -> str:
    """The markdown: what choosing a constant on train + validation gets against the baselines
    best on test in hindsight, on the run's split and over redraws of it."""
    _, first = next(iter(figures.values()))
    lambdas = first.lambdas
    middle = len(lambdas) // 2
    sweep = " / ".join(_lambda(lam) for lam in lambdas)
    lines = [
        "# Headroom: what the targets ask of a method that chooses on train + validation", "",
        f"Chooser: the library plan of highest mean utility on train + validation (the "
        f"protocol's best fixed plan); against the single LLM and the library plan best on "
        f"the test queries in hindsight, over redraws of the split (the run's part sizes; the "
        f"run's own split beside them). Regret = the hindsight best single LLM's test "
        f"utility − the chooser's; the no-regret target allows "
        f"{NO_REGRET_TOLERANCE} at every λ. Mean over redraws, [5th, 95th percentile].", "",
        f"| pair | chooser's regret, λ = {sweep} | worst λ: mean regret | redraws with no "
        f"regret at every λ | on the run's split: worst regret | "
        f"λ = {_lambda(lambdas[middle])}: best library plan in hindsight − chooser | moonshot "
        f"(≥ the most accurate single LLM's test accuracy at ≤ {MOONSHOT_COST_SHARE:.0%} of "
        f"its cost): possible in hindsight · met by the chooser at some λ | "
        f"λ = {_lambda(lambdas[middle])}: chooser − best single-agent router; redraws with "
        f"≥ +{ROUTER_MARGIN} (run's split) |",
        "|---|---|---|---|---|---|---|---|"]
    for pair, (own, redrawn) in figures.items():
        regret = redrawn.regret()
        per_lambda = " / ".join(f"{value:+.3f}" for value in regret.mean(0))
        worst = regret.max(1)
        low, high = np.percentile(worst, [5, 95])
        hindsight_gap = redrawn.best_plan[:, middle] - redrawn.chosen[:, middle]
        gap_low, gap_high = np.percentile(hindsight_gap, [5, 95])
        met = redrawn.moonshot_chosen.any(axis=1)
        margin, own_margin = redrawn.router_margin(), own.router_margin()
        routers = "–" if margin is None or own_margin is None else (
            f"{margin.mean():+.3f} [{np.percentile(margin, 5):+.3f}, "
            f"{np.percentile(margin, 95):+.3f}]; {(margin >= ROUTER_MARGIN).mean():.0%} "
            f"({own_margin[0]:+.3f})")
        lines.append(
            f"| {pair} | {per_lambda} | {worst.mean():+.3f} [{low:+.3f}, {high:+.3f}] | "
            f"{redrawn.no_regret_share():.0%} of {redrawn.draws} | {own.regret().max():+.3f} | "
            f"{hindsight_gap.mean():+.3f} [{gap_low:+.3f}, {gap_high:+.3f}] | "
            f"{redrawn.moonshot_possible.mean():.0%} · {met.mean():.0%} (run's split: "
            f"{'yes' if own.moonshot_possible[0] else 'no'} · "
            f"{'yes' if own.moonshot_chosen.any() else 'no'}) | {routers} |")
    lines += ["", "Read: a regret above the tolerance here is paid by choosing any constant "
              "without seeing test; a per-query router escapes it only where the query text "
              "predicts which plan succeeds. The protocol's best non-oracle baseline is a "
              "maximum over more methods than the single LLMs, so the no-regret share here is "
              "an upper bound for this chooser. The single-agent routers (kNN, MLP, matrix "
              "factorisation, logistic; seed 0) are refitted on each redraw's train and "
              "validation queries; the best of them on test is taken, as the margin target "
              "does."]
    return "\n".join(lines) + "\n"

"""Tables of the ablation study (:mod:`masr_graph.benchmarks.experiment.ablations`): each
variant's test utility against MasRouter's, what training costs in plan executions, the inductive
gap and the plug-in teams."""
from __future__ import annotations

import json
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ..experiment.ablations import INDUCTIVE, PLUG_IN_MODES, AblationRun, curve_summary
from ..experiment.protocol import MASROUTER
from .protocol import MethodScore, PairReport

REACHED = 0.95
"""Data efficiency: executions until validation utility reaches this share of the final one."""


def _utility(score: Optional[MethodScore]) -> str:
    return "–" if score is None else f"{score.utility:.3f}"


def _delta(score: Optional[MethodScore], reference: Optional[MethodScore]) -> str:
    if score is None or reference is None:
        return "–"
    return f"{score.utility - reference.utility:+.3f}"


def variant_rows(report: PairReport, ablations: AblationRun) -> list[dict[str, Any]]:
    """Per variant and λ: test utility (mean over seeds) and its difference to MasRouter's."""
    rows = []
    for variant in ablations.variants:
        per_lambda = {}
        for lam in report.lambdas:
            mine, full = report.score(variant.method, lam), report.score(MASROUTER, lam)
            per_lambda[lam] = {
                "utility": None if mine is None else mine.utility,
                "ci": None if mine is None else (mine.utility_low, mine.utility_high),
                "delta": None if mine is None or full is None else mine.utility - full.utility}
        rows.append({"variant": variant.name, "change": variant.change, "lambdas": per_lambda})
    return rows


def _full_router_curve(ablations: AblationRun) -> dict[str, Any]:
    """MasRouter's own validation utility (at its selected step, mean over λ and seeds) and
    executions (library on train + validation)."""
    run = ablations.run
    train, validation = run._require_prepared()
    values = []
    for seed in run.settings.seeds:
        path = run.out / f"masrouter-seed{seed}.curve.json"
        if not path.exists():
            continue
        curve = json.loads(path.read_text())
        best = next((p for p in curve["points"] if p["step"] == curve["best_step"]),
                    curve["points"][-1])
        values.append(float(np.mean(list(best["validation_utility"].values()))))
    return {"executions": train.executions + validation.executions,
            "validation_utility": float(np.mean(values)) if values else None}


def data_efficiency(report: PairReport, ablations: AblationRun) -> dict[str, Any]:
    """Executions against validation and test utility: the library with fewer training
    queries, all of them (MasRouter), and policy gradient's curve; with how many executions
    each reaches :data:`REACHED` of MasRouter's final validation utility."""
    curves = ablations.curves()
    summary = curve_summary(curves)
    middle = report.middle_lambda
    full = _full_router_curve(ablations)
    rows = []
    for variant in ablations.variants:
        if variant.train_queries is None:
            continue
        row = summary.get(variant.name, {})
        score = report.score(variant.method, middle)
        rows.append({"what": variant.name, "executions": row.get("executions"),
                     "validation_utility": row.get("validation_utility"),
                     "test_utility_middle": None if score is None else score.utility})
    score = report.score(MASROUTER, middle)
    rows.append({"what": f"all {len(ablations.run.data.train)} training queries (MasRouter)",
                 **full, "test_utility_middle": None if score is None else score.utility})
    rows.sort(key=lambda r: r["executions"] or 0)
    target = None if full["validation_utility"] is None else REACHED * full["validation_utility"]
    reached_library = next((r["executions"] for r in rows if target is not None
                            and r["validation_utility"] is not None
                            and r["validation_utility"] >= target), None)
    pg_points = []
    for (name, _), curve in curves.items():
        if name == "policy gradient only":
            pg_points += [(p["executions"], float(np.mean(list(p["validation_utility"].values()))))
                          for p in curve.get("points", [])]
    by_executions: dict[int, list[float]] = {}
    for executions, value in pg_points:
        by_executions.setdefault(executions, []).append(value)
    pg_curve = sorted((e, float(np.mean(v))) for e, v in by_executions.items())
    reached_pg = next((e for e, v in pg_curve if target is not None and v >= target), None)
    return {"rows": rows, "target": target, "library_reaches_at": reached_library,
            "policy_gradient_curve": pg_curve, "policy_gradient_reaches_at": reached_pg}


def plug_in_rows(report: PairReport, ablations: AblationRun) -> list[dict[str, Any]]:
    """Per plug-in mode and λ: accuracy and $ per query of the assigned team and of the same
    team on the strongest LLM, and the relative cost change."""
    rows = []
    for mode in PLUG_IN_MODES:
        reference = report.score(ablations.reference_name(mode), report.lambdas[0])
        for lam in report.lambdas:
            mine = report.score(ablations.plug_in_name(mode), lam)
            if mine is None or reference is None:
                continue
            rows.append({"mode": mode, "lambda": lam, "accuracy": mine.accuracy,
                         "usd_per_query": mine.usd_per_query,
                         "reference_accuracy": reference.accuracy,
                         "reference_usd_per_query": reference.usd_per_query,
                         "cost_change": mine.usd_per_query / reference.usd_per_query - 1
                         if reference.usd_per_query > 0 else None})
    return rows


def ablation_markdown(report: PairReport, ablations: AblationRun) -> str:
    """The pair's section of ``ablations.md``."""
    lams = report.lambdas
    lines = [f"## {report.pair}", "",
             "Test utility (mean over seeds) and, in parentheses, its difference to MasRouter's:",
             "", "| variant | what changes | " + " | ".join(f"λ={lam:g}" for lam in lams) + " |",
             "|---|---|" + "---|" * len(lams)]
    full = [report.score(MASROUTER, lam) for lam in lams]
    lines.append("| MasRouter | — | " + " | ".join(_utility(s) for s in full) + " |")
    for variant in ablations.variants:
        if variant.train_queries is not None or variant is INDUCTIVE:
            continue
        cells = [f"{_utility(report.score(variant.method, lam))} "
                 f"({_delta(report.score(variant.method, lam), ref)})"
                 for lam, ref in zip(lams, full)]
        lines.append(f"| {variant.name} | {variant.change} | " + " | ".join(cells) + " |")
    efficiency = data_efficiency(report, ablations)
    lines += ["", "What training costs (plan executions: on real endpoints, paid calls; "
              "validation utility is the mean over λ):", "",
              "| training data | executions | validation utility | test utility "
              f"λ={report.middle_lambda:g} |", "|---|---:|---:|---:|"]
    for row in efficiency["rows"]:
        lines.append(f"| {row['what']} | {row['executions'] or '–'} | "
                     f"{_number(row['validation_utility'])} | "
                     f"{_number(row['test_utility_middle'])} |")
    for executions, value in efficiency["policy_gradient_curve"]:
        lines.append(f"| policy gradient, live executions | {executions} | {value:.3f} | |")
    lines += ["", f"Executions to reach {REACHED:.0%} of MasRouter's final validation utility "
              f"({_number(efficiency['target'])}): library "
              f"{efficiency['library_reaches_at'] or 'not within the sweep'}, policy gradient "
              f"{efficiency['policy_gradient_reaches_at'] or 'not within its run'}.", ""]
    if any(v is INDUCTIVE for v in ablations.variants):
        held_out = ablations.best_llm()
        inductive = [report.score(INDUCTIVE.method, lam) for lam in lams]
        reference = [report.score("ablation: no validation gate", lam) for lam in lams]
        share = _plan_share(report, INDUCTIVE.method, held_out)
        lines += [f"Inductive: trained without {held_out} (the best single LLM at "
                  f"λ={report.middle_lambda:g}), which is added at test time:", "",
                  "| router | " + " | ".join(f"λ={lam:g}" for lam in lams) + " |",
                  "|---|" + "---|" * len(lams),
                  "| trained with it (no gate) | " + " | ".join(_utility(s) for s in reference)
                  + " |",
                  "| trained without it, routing over the whole pool | " + " | ".join(
                      f"{_utility(s)} ({_delta(s, r)})" for s, r in zip(inductive, reference))
                  + " |", "", f"Share of test plans using {held_out} at λ="
                  f"{report.middle_lambda:g} after it was added: {share}.", ""]
    plug = plug_in_rows(report, ablations)
    if plug:
        lines += ["Plug-in: an external team given to `assign_llms`, against the same team "
                  f"with every agent on {ablations.strongest_llm()}:", "",
                  "| team | λ | accuracy | $ per query | reference accuracy | reference $ | "
                  "cost change |", "|---|---:|---:|---:|---:|---:|---:|"]
        for row in plug:
            change = "–" if row["cost_change"] is None else f"{row['cost_change']:+.0%}"
            lines.append(f"| {row['mode']} of 3 | {row['lambda']:g} | {row['accuracy']:.3f} | "
                         f"{row['usd_per_query']:.2e} | {row['reference_accuracy']:.3f} | "
                         f"{row['reference_usd_per_query']:.2e} | {change} |")
        lines.append("")
    return "\n".join(lines)


def _number(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:.3f}"


def _plan_share(report: PairReport, method: str, llm: str) -> str:
    distribution = report.distributions.get(method)
    if not distribution:
        return "–"
    return f"{distribution['llm_shares'].get(llm, 0.0):.0%} of agent slots"


def ablations_json(reports: Sequence[PairReport], runs: Sequence[AblationRun],
                   settings: str) -> dict[str, Any]:
    """Per pair: its tables' figures, the settings they were measured with, and its section of
    ``ablations.md`` (so that a later invocation on other pairs keeps it)."""
    return {report.pair: {"settings": settings,
                          "markdown": ablation_markdown(report, run),
                          "variants": variant_rows(report, run),
                          "data_efficiency": data_efficiency(report, run),
                          "plug_in": plug_in_rows(report, run)}
            for report, run in zip(reports, runs)}


def merge_ablations(stored: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, Any]:
    """The pairs of an earlier invocation's ``ablations.json`` (in their order) with this
    invocation's pairs in their place or after them. A pair run again is replaced whole, with
    this invocation's variants; entries written before sections were stored are dropped."""
    merged = {pair: current.get(pair, entry) for pair, entry in stored.items()
              if pair in current or (isinstance(entry, dict) and "markdown" in entry)}
    merged.update({pair: entry for pair, entry in current.items() if pair not in merged})
    return merged


def ablations_document(entries: Mapping[str, Any]) -> str:
    """``ablations.md``: every pair's section, each with the settings it was measured with."""
    sections = []
    for entry in entries.values():
        heading, _, rest = entry["markdown"].partition("\n")
        sections.append(f"{heading}\n\n- **settings**: {entry['settings']}\n{rest}")
    return "# masr_graph ablations\n\n" + "\n".join(sections)

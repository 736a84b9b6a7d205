"""Result files of a benchmark run.

Per-query records go to append-only JSONL files (one line per query, flushed and fsynced), so a crash
loses at most the line being written and a rerun resumes where the last one stopped. From them come
the summaries (accuracy with a bootstrap 95 % CI, $ per query, totals), ``results.json``,
``results.md`` and the paper-style figures (``pareto.png`` like Fig. 3, ``llm_distribution.png``
like Fig. 4).
"""
from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np


@dataclass
class QueryResult:
    """The outcome of one method on one query."""

    benchmark: str
    method: str
    query_id: str
    correct: float
    cost_usd: float
    would_have_cost_usd: float
    calls: int
    prompt_tokens: int
    completion_tokens: int
    mode: str = ""
    llms: list[str] = field(default_factory=list)
    roles: list[str] = field(default_factory=list)
    extracted: Optional[str] = None
    error: Optional[str] = None

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class MethodSummary:
    benchmark: str
    method: str
    n: int
    accuracy: float
    ci_low: float
    ci_high: float
    usd_per_query: float
    total_usd: float
    would_have_cost_usd: float
    calls: int
    tokens: int
    errors: int
    llm_shares: dict[str, float]
    mode_shares: dict[str, float]
    group: str = ""  # e.g. "MasRouter", "single LLM", "baseline": drives plot styling only


def bootstrap_ci(values: Sequence[float], *, seed: int = 0, n_resamples: int = 2000,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean; ``(mean, mean)`` when there is nothing to resample."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return float("nan"), float("nan")
    if data.size == 1 or np.all(data == data[0]):
        return float(data.mean()), float(data.mean())
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(n_resamples, data.size))].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1.0 - alpha))


class RunStore:
    """Append-only per-query store under ``out_dir/traces/<benchmark>/<method>.jsonl``.

    Each line holds the :class:`QueryResult` and, optionally, the full run trace."""

    def __init__(self, out_dir: Path | str):
        self.out_dir = Path(out_dir)
        self.traces_dir = self.out_dir / "traces"

    def path(self, benchmark: str, method: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_.=" else "_" for c in method)
        return self.traces_dir / benchmark / f"{safe}.jsonl"

    def load(self, benchmark: str, method: str) -> dict[str, QueryResult]:
        """Results already recorded for this method; a torn last line (crash) is ignored."""
        path = self.path(benchmark, method)
        done: dict[str, QueryResult] = {}
        if not path.exists():
            return done
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                result = QueryResult(**row["result"])
                done[result.query_id] = result
        return done

    def append(self, result: QueryResult, trace: Optional[Mapping[str, Any]] = None) -> None:
        path = self.path(result.benchmark, result.method)
        path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"result": asdict(result), "trace": trace}, default=str)
        with path.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())


def summarise(results: Iterable[QueryResult], *, group: str = "", seed: int = 0) -> MethodSummary:
    rows = list(results)
    if not rows:
        raise ValueError("cannot summarise a method with no results")
    correct = [r.correct for r in rows]
    low, high = bootstrap_ci(correct, seed=seed)
    llm_counts: Counter[str] = Counter(llm for r in rows for llm in r.llms)
    mode_counts: Counter[str] = Counter(r.mode for r in rows if r.mode)
    n_llm = sum(llm_counts.values()) or 1
    n_mode = sum(mode_counts.values()) or 1
    total = sum(r.cost_usd for r in rows)
    would = sum(r.would_have_cost_usd for r in rows)
    return MethodSummary(
        benchmark=rows[0].benchmark,
        method=rows[0].method,
        n=len(rows),
        accuracy=float(np.mean(correct)),
        ci_low=low,
        ci_high=high,
        # $ per query is what the work costs, so a cached rerun still reports the original price.
        usd_per_query=would / len(rows),
        total_usd=total,
        would_have_cost_usd=would,
        calls=sum(r.calls for r in rows),
        tokens=sum(r.tokens for r in rows),
        errors=sum(1 for r in rows if r.error),
        llm_shares={k: v / n_llm for k, v in sorted(llm_counts.items())},
        mode_shares={k: v / n_mode for k, v in sorted(mode_counts.items())},
        group=group,
    )


def write_results_json(summaries: Sequence[MethodSummary], path: Path, meta: Mapping[str, Any]) -> None:
    payload = {"meta": dict(meta), "results": [asdict(s) for s in summaries]}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str), encoding="utf-8")
    tmp.replace(path)


def results_markdown(summaries: Sequence[MethodSummary], meta: Mapping[str, Any], *,
                     notional: str = "") -> str:
    """The results table, one section per benchmark, methods sorted by accuracy.

    ``errors`` counts the queries whose run has an error (no agent of the last round answered),
    which score as wrong. ``notional`` (e.g. from :func:`masr_graph.llm.notional_note`) marks
    every $ column as notional and is stated once under the meta lines."""
    lines = ["# masr_graph benchmark results", ""]
    for key, value in meta.items():
        lines.append(f"- **{key}**: {value}")
    if notional:
        lines.append(f"- **$ figures**: {notional}")
    unit = "$ (notional)" if notional else "$"
    by_bench: dict[str, list[MethodSummary]] = defaultdict(list)
    for s in summaries:
        by_bench[s.benchmark].append(s)
    for bench, rows in by_bench.items():
        lines += ["", f"## {bench}", "",
                  f"| method | n | accuracy | 95 % CI | errors | {unit} / query | "
                  f"total {unit} (this run) | calls | tokens |",
                  "|---|---:|---:|---|---:|---:|---:|---:|---:|"]
        for s in sorted(rows, key=lambda s: (-s.accuracy, s.usd_per_query)):
            lines.append(
                f"| {s.method} | {s.n} | {s.accuracy:.3f} | [{s.ci_low:.3f}, {s.ci_high:.3f}] | "
                f"{s.errors} | {s.usd_per_query:.2e} | {s.total_usd:.4f} | {s.calls} | {s.tokens} |"
            )
    return "\n".join(lines) + "\n"


def plot_pareto(summaries: Sequence[MethodSummary], path: Path, *, notional: str = "") -> None:
    """Accuracy vs $ per query, one panel per benchmark (the paper's Fig. 3); the axis says
    "notional $" when ``notional`` is set."""
    unit = "notional $" if notional else "$"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    benches = sorted({s.benchmark for s in summaries})
    columns = min(3, len(benches))
    rows_n = -(-len(benches) // columns)
    fig, axes = plt.subplots(rows_n, columns, figsize=(6 * columns, 4.5 * rows_n), squeeze=False)
    markers = {"MasRouter": ("*", 220), "single LLM": ("o", 40), "oracle": ("D", 60)}
    for ax in axes.flat[len(benches):]:
        ax.set_visible(False)
    for ax, bench in zip(axes.flat, benches):
        rows = [s for s in summaries if s.benchmark == bench]
        for s in rows:
            marker, size = markers.get(s.group, ("^", 50))
            ax.scatter(s.usd_per_query, s.accuracy, marker=marker, s=size)
            # CoT replays of a single LLM sit next to its IO point: label one of them only.
            if not (s.group == "single LLM" and s.method.endswith("(CoT)")):
                ax.annotate(s.method.replace(" (IO)", ""), (s.usd_per_query, s.accuracy),
                            fontsize=6, xytext=(3, 3), textcoords="offset points")
        router = sorted((s for s in rows if s.group == "MasRouter"), key=lambda s: s.usd_per_query)
        if len(router) > 1:
            ax.plot([s.usd_per_query for s in router], [s.accuracy for s in router], "k--", lw=1)
        ax.set_xscale("log")
        ax.set_title(bench)
        ax.set_xlabel(f"{unit} per query (log)")
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def plot_llm_distribution(summaries: Sequence[MethodSummary], path: Path) -> None:
    """Share of agent slots given to each LLM by the router, per benchmark (the paper's Fig. 4)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [s for s in summaries if s.group == "MasRouter"]
    if not rows:
        return
    labels = [f"{s.benchmark}\n{s.method}" for s in rows]
    llms = sorted({llm for s in rows for llm in s.llm_shares})
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(rows)), 4.5))
    bottom = np.zeros(len(rows))
    cmap = plt.get_cmap("tab20")
    for i, llm in enumerate(llms):
        shares = np.array([s.llm_shares.get(llm, 0.0) for s in rows])
        ax.bar(labels, shares, bottom=bottom, label=llm, color=cmap(i % 20))
        bottom += shares
    ax.set_ylabel("share of agents")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)

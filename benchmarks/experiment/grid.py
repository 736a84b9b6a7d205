"""Running the protocol's grid of cells (:mod:`.protocol`) and writing its results as cells
finish.

Per pair, the shared work runs first (the plan library's executions on train and validation,
then MasRouter's training per seed, inside its first cell), then every cell; results files are
rewritten after each pair and whenever the run stops, so a partly finished grid gives partial,
marked tables. One budget and one response cache serve the whole invocation.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from masr_graph.errors import BudgetExceeded
from masr_graph.exit_status import BudgetStop
from masr_graph.llm import DEFAULT_FAIL_FAST_AFTER, Budget, notional_note
from masr_graph.router import TextEncoder

from ..reporting.protocol import PairReport, TargetCheck, pair_report, write_report
from .protocol import Pair, PairRun, ProtocolSettings
from .wiring import Runtime, open_runtime, spending_text


@dataclass
class GridRun:
    """What one invocation of the grid did (for messages and results files)."""

    reports: list[PairReport] = field(default_factory=list)
    checks: list[TargetCheck] = field(default_factory=list)
    spending: list[dict[str, Any]] = field(default_factory=list)
    """:meth:`Runtime.spending` of each pair's runtime, in order."""

    def total_spending(self, budget: Optional[Budget]) -> Optional[dict[str, Any]]:
        """The invocation's spending over every pair (what the shared budget counted), in the
        form of :meth:`Runtime.spending`; ``None`` before the first pair has run."""
        if not self.spending:
            return None
        summed = ("ledger_usd", "estimated_usd", "estimated_attempts", "would_have_cost_usd",
                  "calls", "cached_calls", "failed_calls")
        total = {**self.spending[-1], **{key: sum(s[key] for s in self.spending)
                                         for key in summed}}
        total["spent_usd"] = budget.spent_usd if budget is not None else total["ledger_usd"]
        total["notional"] = "; ".join(dict.fromkeys(s["notional"] for s in self.spending
                                                    if s["notional"]))
        return total


async def run_grid(
    pairs: Sequence[Pair],
    settings: ProtocolSettings,
    out: Path,
    *,
    data_dir: Optional[Path] = None,
    max_usd: Optional[float] = None,
    unknown_outcome_cost: str = "worst_case",
    fail_fast_after: Optional[int] = DEFAULT_FAIL_FAST_AFTER,
    say: Callable[[str], None] = print,
) -> GridRun:
    """Run every cell of ``pairs`` (what is stored is not run again) and write the results.

    Raises:
        BudgetStop: the budget cap stopped the grid (results of what finished are written).
    """
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    run_id = f"run_all-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
    budget = Budget(max_usd) if max_usd is not None else None
    encoder = TextEncoder(cache_path=out / "embeddings.pt")
    grid = GridRun()
    finished: list[PairRun] = []
    status = "running"

    def write() -> None:
        runs = finished
        spending = grid.total_spending(budget)
        meta: dict[str, Any] = {
            "status": status,
            "settings": str(settings),
            "pairs": ", ".join(p.name for p in pairs),
            "wall time": f"{time.perf_counter() - started:.0f} s",
            "spent (this invocation, what the budget counted)":
                spending_text(spending) if spending else "nothing yet",
            "ledgers": ", ".join(str(out / "ledgers" / f"{run_id}-{run.pair.name}.jsonl")
                                 for run in runs),
        }
        if runs:
            meta["$ figures"] = notional_note([s for run in runs for s in run.specs]) or "real"
            for run in runs:
                meta[f"backend of {run.pair.name}"] = {
                    k: v for k, v in run.backend.items()
                    if k in ("backend", "collaboration_rule", "token_rule", "costs")}
        grid.reports = [pair_report(run, run.cells()) for run in runs]
        grid.checks = write_report(grid.reports, {**meta, "spending": spending}, out)

    try:
        for pair in pairs:
            run = PairRun(pair, settings, out, encoder, data_dir)
            runtime: Optional[Runtime] = None
            try:
                async with open_runtime(run.specs, out, run_id=f"{run_id}-{pair.name}",
                                        budget=budget, max_tokens=run.max_tokens,
                                        max_concurrent_queries=128,
                                        unknown_outcome_cost=unknown_outcome_cost,
                                        fail_fast_after=fail_fast_after) as runtime:
                    finished.append(run)
                    say(f"== {pair.name}: {len(run.data.train)} train / "
                        f"{len(run.data.validation)} validation / {len(run.data.test)} test "
                        f"queries, {len(run.llms)} LLMs")
                    executed = await run.prepare(runtime.pipeline)
                    say(f"   plan library: {len(run.library)} plans ({executed} executions now)")
                    cells = run.cells()
                    for cell in cells:
                        await run.run(cell, runtime.pipeline)
                    say(f"   {len(cells)} cells done")
            finally:
                encoder.save_cache()
                if runtime is not None:  # the pool is closed: its ledger is complete
                    grid.spending.append(runtime.spending())
            write()
        status = "complete"
        write()
        return grid
    except BudgetExceeded as stop:
        status = f"stopped by the budget cap: {stop}"
        write()
        raise BudgetStop(stop, kept=f"every finished cell is stored under {out} and "
                                    f"{out / 'results.md'} has its tables") from None
    except BaseException as exc:
        status = "stopped before the end: " + (
            "interrupted" if not isinstance(exc, Exception) else str(exc))
        if finished:
            write()
        raise

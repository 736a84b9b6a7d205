"""Train MasRouter per benchmark and compare it with the baselines on the test split.

    python benchmarks/run_all.py                 # offline recorded-outcome pool (default)
    python benchmarks/run_all.py --quick         # CI-sized run, a few minutes on 2 cores
    python benchmarks/run_all.py --pool my_pool.yaml --benchmarks gsm8k --max-usd 5
    python benchmarks/run_all.py --lambdas 0 100 1000 --seeds 0 1   # λ sweep → Pareto front

Writes to ``--out`` (default ``runs/latest``): ``results.json``, ``results.md``, ``pareto.png``,
``llm_distribution.png``, per-query traces ``traces/<benchmark>/<method>.jsonl``, the splits'
ids ``splits/``, router checkpoints ``checkpoints/``, and the LLM response and score caches. A rerun
with the same ``--out`` resumes: finished queries are read back, training resumes from its
checkpoint, and repeated LLM calls come from the cache. ``results.md`` / ``results.json`` are
rewritten after every benchmark (a crash keeps the finished ones) and when the run stops; every
LLM call record of the invocation goes to ``ledgers/<run id>.jsonl``.

Exit status (the same as ``masr``, :mod:`masr_graph.exit_status`): 0 done, 1 error (one line says
what to fix, e.g. a missing data directory, API-key variable or an unreachable LLM), 2 bad command
line, 3 stopped by ``--max-usd`` (finished results are written; rerun with a higher cap to
continue), 130 interrupted (rerun with the same ``--out`` to resume).
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from masr_graph.benchmarks.experiment.baselines import (
    FixedMode,
    LearnedLLMRouter,
    RandomPlans,
    SingleLLM,
    oracle_results,
)
from masr_graph.benchmarks.tasks.datasets import Example
from masr_graph.benchmarks.experiment import (
    REPLAY_BENCHMARKS,
    RoutedMethod,
    Runtime,
    Splits,
    evaluate_method,
    fit_trainer,
    load_examples,
    make_trainer,
    open_runtime,
    pool_specs,
    spending_text,
)
from masr_graph.benchmarks.tasks.registry import benchmark_names
from masr_graph.benchmarks.reporting.results import (
    MethodSummary,
    QueryResult,
    RunStore,
    plot_llm_distribution,
    plot_pareto,
    results_markdown,
    summarise,
    write_results_json,
)
from masr_graph.errors import BudgetExceeded
from masr_graph.exit_status import (
    BudgetStop,
    non_negative_float,
    non_negative_int,
    positive_int,
    run_command,
    usd_amount,
)
from masr_graph.llm import DEFAULT_FAIL_FAST_AFTER, UNKNOWN_OUTCOME_COSTS, LLMSpec, notional_note
from masr_graph.router import TextEncoder, TrainerConfig
from masr_graph.runtime.topology import topology_names


@dataclass
class RunSettings:
    train_steps: int
    batch_size: int
    max_train: Optional[int]
    max_test: Optional[int]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="run_all.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    backend = parser.add_mutually_exclusive_group()
    backend.add_argument("--replay", action="store_true", default=True,
                         help="offline recorded-outcome pool (default)")
    backend.add_argument("--pool", type=Path, help="a real OpenAI-compatible pool YAML file")
    parser.add_argument("--benchmarks", nargs="+", default=list(REPLAY_BENCHMARKS),
                        help="benchmarks to run (default: all five)")
    parser.add_argument("--out", type=Path, default=Path("runs/latest"), help="output directory")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="data directory (default: $MASR_DATA_DIR, then ../shared/data)")
    parser.add_argument("--quick", action="store_true",
                        help="CI-sized run: small train/test samples and few training steps")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="router training seeds")
    parser.add_argument("--lambdas", nargs="+", type=non_negative_float, default=[100.0],
                        help="cost penalties λ (utility per $); several draw the Pareto front")
    parser.add_argument("--max-usd", type=usd_amount, default=None,
                        help="budget cap for the whole run; the call that would exceed it is not made")
    parser.add_argument("--unknown-outcome-cost", choices=UNKNOWN_OUTCOME_COSTS,
                        default="worst_case",
                        help="what an attempt of unknown outcome (timeout, dropped connection, "
                             "garbled reply) is charged, in the budget and the ledger alike: its "
                             "worst case (default) or its prompt only")
    parser.add_argument("--fail-fast-after", type=non_negative_int,
                        default=DEFAULT_FAIL_FAST_AFTER, metavar="N",
                        help="stop when an LLM's (or endpoint's) first N calls all fail for good "
                             f"(default: {DEFAULT_FAIL_FAST_AFTER}; 0: never)")
    parser.add_argument("--train-steps", type=non_negative_int, default=None,
                        help="router training steps")
    parser.add_argument("--batch-size", type=positive_int, default=None,
                        help="distinct queries per router training step (each sampled several "
                             "times)")
    parser.add_argument("--max-train", type=positive_int, default=None,
                        help="cap on training queries per benchmark")
    parser.add_argument("--max-test", type=positive_int, default=None,
                        help="cap on test queries per benchmark")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the train/test splits")
    parser.add_argument("--rule", default="stubborn", help="replay collaboration rule")
    parser.add_argument("--no-baselines", action="store_true", help="only train and test MasRouter")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.benchmarks) - set(benchmark_names()))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {benchmark_names()}")
    return args


def settings_for(args: argparse.Namespace) -> RunSettings:
    quick = RunSettings(train_steps=80, batch_size=8, max_train=96, max_test=80)
    full = RunSettings(train_steps=150, batch_size=16, max_train=None, max_test=None)
    base = quick if args.quick else full
    return RunSettings(
        train_steps=args.train_steps if args.train_steps is not None else base.train_steps,
        batch_size=args.batch_size or base.batch_size,
        max_train=args.max_train if args.max_train is not None else base.max_train,
        max_test=args.max_test if args.max_test is not None else base.max_test,
    )


class Runner:
    """Everything one ``run_all`` invocation shares: the pool, runtime, caches and result store.

    Results are written after every benchmark and whenever the run stops (budget cap, error,
    interrupt), so what finished is never lost."""

    def __init__(self, args: argparse.Namespace, specs: list[LLMSpec], backend: dict[str, Any],
                 settings: RunSettings):
        self.args = args
        self.out: Path = args.out
        self.specs = specs
        self.backend = backend
        self.settings = settings
        self.notional = notional_note(specs)
        self.store = RunStore(self.out)
        self.encoder = TextEncoder(cache_path=self.out / "embeddings.pt")
        self.summaries: list[MethodSummary] = []
        self.notes: list[str] = []
        self.started = time.perf_counter()
        self.runtime: Optional[Runtime] = None

    async def run(self, data: Splits) -> str:
        """Run every benchmark; returns the final results markdown.

        Raises:
            BudgetStop: the budget cap stopped the run (results of what finished are written).
        """
        run_id = f"run_all-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
        async with open_runtime(self.specs, self.out, max_usd=self.args.max_usd, run_id=run_id,
                                unknown_outcome_cost=self.args.unknown_outcome_cost,
                                fail_fast_after=self.args.fail_fast_after or None) as runtime:
            self.runtime, self.pipeline = runtime, runtime.pipeline
            try:
                for done, (name, (train, test)) in enumerate(data.items(), start=1):
                    await self.run_benchmark(name, train, test, self.settings)
                    self.write_results(f"running: {done} of {len(data)} benchmarks finished",
                                       plots=done < len(data))
            except BudgetExceeded as stop:
                self.write_results(f"stopped by the budget cap: {stop}", plots=True)
                raise BudgetStop(stop, kept=f"results of every finished method are in "
                                            f"{self.out / 'results.md'}, finished queries under "
                                            f"{self.store.traces_dir}") from None
            except (Exception, KeyboardInterrupt, asyncio.CancelledError) as exc:
                reason = "interrupted" if not isinstance(exc, Exception) else str(exc)
                self.write_results(f"stopped before the end: {reason}", plots=False)
                raise
            finally:
                # A rerun (resume, another --lambdas) then routes without re-encoding any text.
                self.encoder.save_cache()
        return self.write_results("complete", plots=True)

    def write_results(self, status: str, *, plots: bool) -> str:
        """Write ``results.json`` and ``results.md`` (and the figures when ``plots``) for every
        method finished so far; returns the markdown."""
        assert self.runtime is not None
        spending = self.runtime.spending()
        args, settings = self.args, self.settings
        meta = {
            "status": status,
            "backend": self.backend.get("backend"),
            "collaboration rule": self.backend.get("collaboration_rule", "n/a (real LLMs)"),
            "settings": f"{'quick' if args.quick else 'full'}; {settings}; seeds {args.seeds}; "
                        f"λ {args.lambdas}; split seed {args.split_seed}",
            "wall time": f"{time.perf_counter() - self.started:.0f} s",
            "spent (this invocation, what the budget counted)": spending_text(spending),
            **{f"note {i + 1}": note for i, note in enumerate(self.notes)},
        }
        write_results_json(self.summaries, self.out / "results.json",
                           {**meta, "spending": spending, "backend_info": self.backend})
        markdown = (results_markdown(self.summaries, meta, notional=self.notional)
                    + targets_markdown(self.summaries, notional=self.notional))
        tmp = self.out / "results.md.tmp"
        tmp.write_text(markdown, encoding="utf-8")
        tmp.replace(self.out / "results.md")
        if plots and self.summaries:
            plot_pareto(self.summaries, self.out / "pareto.png", notional=self.notional)
            plot_llm_distribution(self.summaries, self.out / "llm_distribution.png")
        return markdown

    async def method(self, name: str, method: Any, examples: list[Example], *, group: str,
                     key: Optional[str] = None) -> list[QueryResult]:
        results = await evaluate_method(self.pipeline, self.store, name, method, examples,
                                        label=key)
        self.summaries.append(summarise(results, group=group))
        return results

    async def run_benchmark(self, name: str, train: list[Example], test: list[Example],
                            settings: RunSettings) -> None:
        llms = [spec.name for spec in self.specs]
        print(f"\n== {name}: {len(train)} train / {len(test)} test queries, {len(llms)} LLMs")
        # Single LLMs on train give the learned router its labels and pick the fixed-mode LLM.
        train_single: dict[str, list[QueryResult]] = {}
        for llm in llms:
            train_single[llm] = await self.pipeline.evaluate_method(
                train, SingleLLM(llm).plans(train), benchmark=f"{name}-train", method=f"{llm} (IO)",
                store=self.store)
        if not self.args.no_baselines:
            test_single = {}
            for llm in llms:
                for mode in ("IO", "CoT"):
                    results = await self.method(name, SingleLLM(llm, mode), test, group="single LLM")
                    if mode == "IO":
                        test_single[llm] = results
            self.summaries.append(summarise(oracle_results(test_single), group="oracle"))
            best = max(llms, key=lambda llm: (
                sum(r.correct for r in train_single[llm]),
                -sum(r.would_have_cost_usd for r in train_single[llm])))
            for mode in topology_names():
                if mode in ("IO", "CoT"):
                    continue
                await self.method(name, FixedMode(mode, best), test, group="fixed mode")
            await self.method(name, RandomPlans(llms, seed=self.args.split_seed), test,
                              group="baseline")
            costs = {llm: sum(r.would_have_cost_usd for r in rs) / len(rs)
                     for llm, rs in train_single.items()}
            solved = {llm: {r.query_id: r.correct for r in rs} for llm, rs in train_single.items()}
            for lam in self.args.lambdas:
                learned = LearnedLLMRouter(self.encoder.encode, costs, cost_lambda=lam,
                                           seed=self.args.split_seed).fit(train, solved)
                await self.method(name, learned, test, group="learned LLM router")
        for seed in self.args.seeds:
            for lam in self.args.lambdas:
                await self.masrouter(name, train, test, settings, seed=seed, lam=lam)

    async def masrouter(self, name: str, train: list[Example], test: list[Example],
                        settings: RunSettings, *, seed: int, lam: float) -> None:
        label = f"MasRouter (λ={lam:g}, seed={seed})"
        path = self.out / "checkpoints" / f"{name}-lam{lam:g}-seed{seed}.pt"
        trainer = make_trainer(self.specs, self.pipeline, path, encoder=self.encoder,
                               config=TrainerConfig(cost_lambda=lam,
                                                    batch_size=settings.batch_size, seed=seed))
        history = await fit_trainer(trainer, train, steps=settings.train_steps, checkpoint=path)
        if history:
            last = history[-min(10, len(history)):]
            self.notes.append(
                f"{name} {label}: trained {trainer.step_count} steps; last-10 mean reward "
                f"{sum(s.reward for s in last) / len(last):.3f}, utility "
                f"{sum(s.utility for s in last) / len(last):.3f}")
        await self.method(name, RoutedMethod(label, trainer.router, trainer.vocab), test,
                          group="MasRouter")


def targets_markdown(summaries: Sequence[MethodSummary], *, notional: str = "") -> str:
    """The issue's targets per benchmark: MasRouter vs best single LLM vs oracle (``notional``:
    the $ figures are not money, see :func:`masr_graph.llm.notional_note`)."""
    unit = " ($ notional)" if notional else ""
    lines = ["", f"## Targets (MasRouter vs best single LLM and oracle){unit}", "",
             "| benchmark | MasRouter | best single LLM | cheapest LLM | learned router | oracle | "
             "cost ratio (≤ 0.5) | gap closed (≥ 70 %) |",
             "|---|---|---|---|---|---|---:|---:|"]
    for bench in sorted({s.benchmark for s in summaries}):
        rows = [s for s in summaries if s.benchmark == bench]
        single = [s for s in rows if s.group == "single LLM"]
        routers = [s for s in rows if s.group == "MasRouter"]
        oracle = [s for s in rows if s.group == "oracle"]
        learned = [s for s in rows if s.group == "learned LLM router"]
        if not (single and routers and oracle):
            continue
        best = max(single, key=lambda s: (s.accuracy, -s.usd_per_query))
        cheapest = min(single, key=lambda s: (s.usd_per_query, -s.accuracy))
        masr = max(routers, key=lambda s: (s.accuracy, -s.usd_per_query))
        gap = oracle[0].accuracy - best.accuracy
        closed = (masr.accuracy - best.accuracy) / gap if gap > 0 else float("nan")
        cell = lambda s: f"{s.accuracy:.3f} @ ${s.usd_per_query:.2e} ({s.method})"  # noqa: E731
        lines.append(
            f"| {bench} | {cell(masr)} | {cell(best)} | {cell(cheapest)} | "
            f"{cell(max(learned, key=lambda s: s.accuracy)) if learned else '–'} | {cell(oracle[0])} | "
            f"{masr.usd_per_query / best.usd_per_query:.2f} | {closed:.0%} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns the exit status (see the module docstring)."""
    args = parse_args(argv)
    return run_command("run_all.py", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    settings = settings_for(args)
    args.out.mkdir(parents=True, exist_ok=True)
    specs, backend = pool_specs(args.pool, data_dir=args.data_dir, rule=args.rule)
    data = load_examples(args.benchmarks, replay=args.pool is None,
                         splits_dir=args.out / "splits", data_dir=args.data_dir,
                         split_seed=args.split_seed, max_train=settings.max_train,
                         max_test=settings.max_test)
    runner = Runner(args, specs, backend, settings)
    markdown = asyncio.run(runner.run(data))
    print(markdown)
    print(f"wrote {args.out}/results.md, results.json, pareto.png, llm_distribution.png, traces/, "
          "ledgers/")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The ``masr`` command line: route queries, train and evaluate routers, serve one over HTTP.

    masr route "What is 17 * 23?" --checkpoint router.pt          # print the chosen plan
    masr train --checkpoint router.pt --benchmarks gsm8k mmlu --steps 200 --max-usd 5
    masr eval --checkpoint router.pt --benchmarks gsm8k mmlu --max-test 200
    masr serve --checkpoint router.pt --port 8000 --api-key-env MASR_SERVER_KEY

Every command runs on the offline recorded-outcome pool (``--replay``, the default) or on a pool
YAML file of real OpenAI-compatible endpoints (``--pool FILE``). ``train`` and ``eval`` share the
wiring of ``benchmarks/run_all.py`` (:mod:`masr_graph.benchmarks.experiment`) and an output
directory (``--out``) holding the splits, the LLM response and score caches and the per-query
traces, so reruns resume and repeated calls cost nothing.

Exit status (the same for ``benchmarks/run_all.py``, see masr_graph.exit_status): 0 done,
1 an error (one line says what to fix), 2 bad command line, 3 stopped by the budget cap
(everything finished before the stop is kept; rerun with a higher ``--max-usd`` to continue),
130 interrupted (rerun with the same ``--out`` to resume).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

from .errors import BudgetExceeded, ConfigError
from .exit_status import (
    BudgetStop,
    non_negative_float,
    non_negative_int,
    positive_int,
    run_command,
    temperature,
    usd_amount,
)

if TYPE_CHECKING:
    from .plan import Plan

# Heavy modules (torch, the benchmarks, the LLM layer) are imported inside the commands so
# `--help` is instant; the defaults below mirror masr_graph.llm's.

DEFAULT_OUT = Path("runs/masr")
FAIL_FAST_AFTER = 5  # masr_graph.llm.DEFAULT_FAIL_FAST_AFTER
UNKNOWN_OUTCOME_COSTS = ("worst_case", "prompt_only")  # masr_graph.llm.UNKNOWN_OUTCOME_COSTS


# ---------------------------------------------------------------------------------- arguments
def _add_pool_options(parser: argparse.ArgumentParser, *, replay_help: str) -> None:
    backend = parser.add_mutually_exclusive_group()
    backend.add_argument("--replay", action="store_true", help=replay_help)
    backend.add_argument("--pool", type=Path, metavar="FILE",
                         help="pool YAML file of OpenAI-compatible endpoints (see "
                              "masr_graph/configs/example_pool.yaml)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="data directory (default: $MASR_DATA_DIR, then ../shared/data)")
    parser.add_argument("--rule", default="stubborn",
                        help="replay collaboration rule (default: stubborn)")


def _add_budget_options(parser: argparse.ArgumentParser, *, cap_help: str) -> None:
    parser.add_argument("--max-usd", type=usd_amount, default=None, help=cap_help)
    parser.add_argument("--unknown-outcome-cost", choices=UNKNOWN_OUTCOME_COSTS,
                        default="worst_case",
                        help="what an attempt of unknown outcome (timeout, dropped connection, "
                             "garbled reply) is charged, in the budget and the ledger alike: its "
                             "worst case (default) or its prompt only")


def _add_experiment_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--benchmarks", nargs="+", default=None, metavar="NAME",
                        help="benchmarks to use (default: gsm8k math humaneval mbpp mmlu)")
    parser.add_argument("--split-seed", type=int, default=0,
                        help="seed of the train/test splits; train and eval must use the same "
                             "(default: 0)")
    _add_budget_options(parser, cap_help="budget cap in $ for this invocation; the call that "
                                         "would exceed it is not made")
    parser.add_argument("--fail-fast-after", type=non_negative_int, default=FAIL_FAST_AFTER,
                        metavar="N",
                        help="stop when an LLM's (or endpoint's) first N calls all fail for good "
                             f"(default: {FAIL_FAST_AFTER}; 0: never)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"output directory: splits, caches, traces (default: {DEFAULT_OUT})")


def build_parser() -> argparse.ArgumentParser:
    """The ``masr`` argument parser (one sub-command per action, ``--help`` on each)."""
    parser = argparse.ArgumentParser(
        prog="masr", description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    route = commands.add_parser(
        "route", help="print the plan a trained router chooses for queries",
        description="Print the multi-agent system a trained router chooses for each query: task, "
                    "collaboration mode, number of agents, each agent's role and LLM, and the "
                    "probability of every decision. Nothing is executed.")
    route.add_argument("queries", nargs="+", metavar="QUERY", help="query text(s)")
    route.add_argument("--checkpoint", type=Path, required=True, help="router checkpoint (.pt)")
    _add_pool_options(route, replay_help="route over the replay pool's LLMs (default: the LLMs "
                                         "the checkpoint was trained on)")
    route.add_argument("--sample", action="store_true",
                       help="sample a plan instead of taking the most probable one")
    route.add_argument("--seed", type=int, default=0, help="seed for --sample (default: 0)")
    route.add_argument("--json", action="store_true", help="print JSON instead of a table")

    train = commands.add_parser(
        "train", help="train a router by policy gradient on utility - λ·cost",
        description="Train a router on the train split of the benchmarks (one router for all of "
                    "them) and checkpoint it. An existing --checkpoint is resumed exactly to "
                    "--steps total steps.")
    train.add_argument("--checkpoint", type=Path, required=True,
                       help="checkpoint to write (resumed when it exists)")
    train.add_argument("--init-from", type=Path, default=None, metavar="CHECKPOINT",
                       help="start from this checkpoint's router weights with a fresh optimizer")
    _add_pool_options(train, replay_help="offline recorded-outcome pool (default)")
    _add_experiment_options(train)
    train.add_argument("--steps", type=non_negative_int, default=200,
                       help="total training steps (default: 200)")
    train.add_argument("--batch-size", type=positive_int, default=32,
                       help="queries per step (default: 32)")
    train.add_argument("--lam", type=non_negative_float, default=100.0,
                       help="cost penalty λ in utility per $ (default: 100)")
    train.add_argument("--seed", type=int, default=0, help="training seed (default: 0)")
    train.add_argument("--max-train", type=positive_int, default=None,
                       help="cap on training queries per benchmark (default: all)")
    train.add_argument("--checkpoint-every", type=positive_int, default=1,
                       help="save every that many steps (default: 1, so a budget stop loses no "
                            "finished step)")

    evaluate = commands.add_parser(
        "eval", help="evaluate a router on the test split",
        description="Run the router's plans on the test split of the benchmarks, score them and "
                    "print accuracy (bootstrap 95 % CI) and cost. Per-query traces go to "
                    "OUT/traces; a rerun resumes.")
    evaluate.add_argument("--checkpoint", type=Path, required=True, help="router checkpoint (.pt)")
    _add_pool_options(evaluate, replay_help="offline recorded-outcome pool (default)")
    _add_experiment_options(evaluate)
    evaluate.add_argument("--max-test", type=positive_int, default=None,
                          help="cap on test queries per benchmark (default: all)")
    evaluate.add_argument("--name", default=None,
                          help="method name in results (default: MasRouter [<checkpoint>@<sha>])")

    serve = commands.add_parser(
        "serve", help="serve the router as an OpenAI-compatible HTTP API (model 'masr')",
        description="Serve /v1/models and /v1/chat/completions: model 'masr' routes the last user "
                    "message through the router, runs the multi-agent system and answers with "
                    "the decision node's output; usage is summed over all agents and the plan is "
                    "in the 'masr_plan' response field.")
    serve.add_argument("--checkpoint", type=Path, required=True, help="router checkpoint (.pt)")
    _add_pool_options(serve, replay_help="offline recorded-outcome pool (default); it answers "
                                         "only recorded queries")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    serve.add_argument("--port", type=non_negative_int, default=8000,
                       help="port to bind; 0 picks a free one (default: 8000)")
    serve.add_argument("--api-key-env", default=None, metavar="NAME",
                       help="require 'Authorization: Bearer <key>' with the key read from the "
                            "environment variable NAME (never from the command line)")
    _add_budget_options(serve, cap_help="budget cap in $ for the server's lifetime; then "
                                        "requests get 429")
    serve.add_argument("--cache", type=Path, default=None, metavar="FILE",
                       help="SQLite LLM response cache (default: none)")
    serve.add_argument("--seed", type=int, default=0,
                       help="default edge-sampling seed; a request's 'seed' overrides it")
    serve.add_argument("--max-tokens", type=positive_int, default=512,
                       help="completion cap per agent call (default: 512)")
    serve.add_argument("--temperature", type=temperature, default=0.0,
                       help="sampling temperature of every agent (default: 0)")
    serve.add_argument("--max-concurrent-runs", type=positive_int, default=64,
                       help="multi-agent runs executing at once; more requests queue (default: 64)")
    serve.add_argument("--max-body-mb", type=positive_int, default=1,
                       help="largest request body accepted, in MiB; larger ones get a 413 with "
                            "OpenAI's error body (default: 1)")
    return parser


# ----------------------------------------------------------------------------------- helpers
def _benchmarks(requested: Optional[Sequence[str]]) -> list[str]:
    from .benchmarks.experiment import REPLAY_BENCHMARKS
    from .benchmarks.tasks.registry import benchmark_names

    names = list(requested or REPLAY_BENCHMARKS)
    unknown = sorted(set(names) - set(benchmark_names()))
    if unknown:
        raise ConfigError(f"unknown benchmark(s) {unknown}; choose from {benchmark_names()}")
    return names


def _checkpoint_label(path: Path) -> str:
    """``MasRouter [<name>@<sha256 prefix>]``: results of different weights never share a key
    in the result store, so re-evaluating a retrained checkpoint does not resume stale rows."""
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:8]
    return f"MasRouter [{path.stem}@{digest}]"


def _format_plan(query: str, plan: "Plan") -> str:
    probs = plan.probs
    lines = [f"query: {query}",
             f"  task    {plan.task:<28} p={probs.get('task', float('nan')):.3f}",
             f"  mode    {plan.mode:<28} p={probs.get('mode', float('nan')):.3f}",
             f"  agents  {plan.k:<28} p={probs.get('k', float('nan')):.3f}"]
    role_p = probs.get("roles", [float("nan")] * plan.k)
    llm_p = probs.get("llms", [float("nan")] * plan.k)
    for slot, (role, llm) in enumerate(zip(plan.roles, plan.llms)):
        lines.append(f"  agent {slot}: role {role} (p={role_p[slot]:.3f}), "
                     f"LLM {llm} (p={llm_p[slot]:.3f})")
    return "\n".join(lines)


def _spent(runtime: Any) -> str:
    """One line of what the invocation spent (see ``Runtime.spending``)."""
    from .benchmarks.experiment import spending_text

    return spending_text(runtime.spending())


def _runtime_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"max_usd": args.max_usd, "unknown_outcome_cost": args.unknown_outcome_cost,
            "fail_fast_after": args.fail_fast_after or None}


def _read_api_key(env_var: Optional[str]) -> Optional[str]:
    if env_var is None:
        return None
    value = os.environ.get(env_var, "")
    if not value.strip():
        raise ConfigError(f"--api-key-env names {env_var!r}, but that environment variable is "
                          f"not set or empty (export {env_var}=...)")
    return value.strip()


# ---------------------------------------------------------------------------------- commands
def _route(args: argparse.Namespace) -> int:
    from .benchmarks.experiment import pool_specs, vocab_for_pool
    from .router import TextEncoder, load_checkpoint

    import torch

    checkpoint = load_checkpoint(args.checkpoint, encoder=TextEncoder())
    vocab = checkpoint.vocab
    if args.pool is not None or args.replay:
        specs, _ = pool_specs(args.pool, data_dir=args.data_dir, rule=args.rule)
        vocab = vocab_for_pool(checkpoint.vocab, specs)
    generator = torch.Generator().manual_seed(args.seed) if args.sample else None
    plans = checkpoint.router.route(args.queries, vocab, greedy=not args.sample,
                                    generator=generator)
    if args.json:
        print(json.dumps([{"query": q, "plan": p.to_dict()} for q, p in zip(args.queries, plans)],
                         indent=2))
    else:
        print("\n\n".join(_format_plan(q, p) for q, p in zip(args.queries, plans)))
    return 0


async def _train(args: argparse.Namespace) -> int:
    from .benchmarks.experiment import (
        fit_trainer,
        load_examples,
        make_trainer,
        open_runtime,
        pool_specs,
    )
    from .llm import notional_note
    from .router import TextEncoder, TrainerConfig

    benchmarks = _benchmarks(args.benchmarks)
    specs, _ = pool_specs(args.pool, data_dir=args.data_dir, rule=args.rule)
    data = load_examples(benchmarks, replay=args.pool is None, splits_dir=args.out / "splits",
                         data_dir=args.data_dir, split_seed=args.split_seed,
                         max_train=args.max_train, max_test=0, used_ids_name="train_ids")
    train = [example for name in benchmarks for example in data[name][0]]
    requested = TrainerConfig(cost_lambda=args.lam, batch_size=args.batch_size, seed=args.seed)
    print(f"training on {len(train)} queries of {', '.join(benchmarks)} over {len(specs)} LLMs "
          f"(λ={args.lam:g}, batch {args.batch_size}, seed {args.seed})", file=sys.stderr)
    encoder = TextEncoder(cache_path=args.out / "embeddings.pt")
    stopped: Optional[BudgetExceeded] = None
    async with open_runtime(specs, args.out, run_id=_run_id("masr-train"),
                            **_runtime_options(args)) as runtime:
        trainer = make_trainer(specs, runtime.pipeline, args.checkpoint, encoder=encoder,
                               config=requested, init_from=args.init_from)
        for field in ("cost_lambda", "batch_size", "seed"):
            stored, wanted = getattr(trainer.config, field), getattr(requested, field)
            if stored != wanted:
                raise ConfigError(
                    f"checkpoint {args.checkpoint} was trained with {field}={stored!r}, not "
                    f"{wanted!r}; resume with the same setting or write to another --checkpoint")
        history = []
        try:
            history = await fit_trainer(trainer, train, steps=args.steps,
                                        checkpoint=args.checkpoint,
                                        checkpoint_every=args.checkpoint_every)
        except BudgetExceeded as stop:
            stopped = stop
        finally:
            encoder.save_cache()
    note = notional_note(specs)
    if history:
        last = history[-min(10, len(history)):]
        mean = lambda name: sum(getattr(s, name) for s in last) / len(last)  # noqa: E731
        print(f"trained to step {trainer.step_count}; last {len(last)} steps: reward "
              f"{mean('reward'):.3f}, utility {mean('utility'):.3f}, "
              f"${mean('cost_usd'):.2e} per query{f' ({note})' if note else ''}, "
              f"{mean('mean_agents'):.2f} agents")
    elif stopped is None:
        print(f"{args.checkpoint} is already at step {trainer.step_count} (--steps {args.steps})")
    print(f"checkpoint: {args.checkpoint}; {_spent(runtime)}")
    if stopped is not None:
        raise BudgetStop(stopped, kept=f"{args.checkpoint} holds the {trainer.step_count} steps "
                                       "finished before it")
    return 0


async def _eval(args: argparse.Namespace) -> int:
    label = args.name or _checkpoint_label(args.checkpoint)  # before the slow imports: fail fast
    from .benchmarks.experiment import (
        RoutedMethod,
        evaluate_method,
        load_examples,
        open_runtime,
        pool_specs,
        vocab_for_pool,
    )
    from .benchmarks.reporting.results import RunStore, results_markdown, summarise, write_results_json
    from .llm import notional_note
    from .router import TextEncoder, load_checkpoint

    benchmarks = _benchmarks(args.benchmarks)
    specs, backend = pool_specs(args.pool, data_dir=args.data_dir, rule=args.rule)
    encoder = TextEncoder(cache_path=args.out / "embeddings.pt")
    checkpoint = load_checkpoint(args.checkpoint, encoder=encoder)
    method = RoutedMethod(label, checkpoint.router, vocab_for_pool(checkpoint.vocab, specs))
    data = load_examples(benchmarks, replay=args.pool is None, splits_dir=args.out / "splits",
                         data_dir=args.data_dir, split_seed=args.split_seed, max_train=0,
                         max_test=args.max_test, used_ids_name="eval_ids")
    store = RunStore(args.out)
    summaries = []
    stopped: Optional[BudgetExceeded] = None
    async with open_runtime(specs, args.out, run_id=_run_id("masr-eval"),
                            **_runtime_options(args)) as runtime:
        try:
            for name in benchmarks:
                results = await evaluate_method(runtime.pipeline, store, name, method,
                                                data[name][1])
                summaries.append(summarise(results, group="MasRouter"))
        except BudgetExceeded as stop:
            stopped = stop
        finally:
            encoder.save_cache()
    spending = runtime.spending()
    meta = {
        "checkpoint": str(args.checkpoint),
        "backend": backend.get("backend"),
        "collaboration rule": backend.get("collaboration_rule", "n/a (real LLMs)"),
        "split seed": args.split_seed,
        "status": "complete" if stopped is None else f"stopped by the budget cap: {stopped}",
        "spent (this invocation, what the budget counted)": _spent(runtime),
    }
    if summaries:
        stem = "eval-" + "".join(c if c.isalnum() or c in "-_." else "_" for c in label)
        write_results_json(summaries, args.out / f"{stem}.json",
                           {**meta, "spending": spending, "backend_info": backend})
        markdown = results_markdown(summaries, meta, notional=notional_note(specs))
        (args.out / f"{stem}.md").write_text(markdown, encoding="utf-8")
        print(markdown)
        print(f"wrote {args.out / stem}.json, .md and traces under {store.traces_dir}")
    if stopped is not None:
        raise BudgetStop(stopped, kept=f"the benchmarks finished before it are in the eval "
                                       f"tables; finished queries are stored under "
                                       f"{store.traces_dir}")
    return 0


async def _serve(args: argparse.Namespace) -> int:
    api_key = _read_api_key(args.api_key_env)  # before the slow imports: fail fast
    from .benchmarks.experiment import pool_specs
    from .serve import serve

    specs, _ = pool_specs(args.pool, data_dir=args.data_dir, rule=args.rule)
    await serve(args.checkpoint, specs, host=args.host, port=args.port, api_key=api_key,
                max_usd=args.max_usd, unknown_outcome_cost=args.unknown_outcome_cost,
                cache_path=args.cache, seed=args.seed, max_tokens=args.max_tokens,
                temperature=args.temperature, max_concurrent_runs=args.max_concurrent_runs,
                max_body_bytes=args.max_body_mb * 2**20,
                ready=lambda line: print(line, flush=True))
    return 0


def _run_id(command: str) -> str:
    """A run id for the ledger file ``OUT/ledgers/<run id>.jsonl``: time, then a random suffix
    so two invocations in the same second keep separate ledgers."""
    return f"{command}-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``masr`` console script; returns the exit status
    (:mod:`masr_graph.exit_status`; a bad command line exits with 2 from argparse)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="masr: %(levelname)s %(name)s: %(message)s")
    commands: dict[str, Any] = {"route": _route, "train": _train, "eval": _eval, "serve": _serve}
    return run_command(f"masr {args.command}", lambda: commands[args.command](args),
                       resumable=args.command in ("train", "eval"))


if __name__ == "__main__":
    sys.exit(main())

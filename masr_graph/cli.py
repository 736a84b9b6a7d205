"""The ``masr`` command line: route queries, train and evaluate routers, serve one over HTTP,
fetch and check the data, check a pool of endpoints before paying for it.

    masr route "What is 17 * 23?" --checkpoint router.pt --lam 100   # print the chosen plan
    masr train --benchmark gsm8k --checkpoint router.pt --max-usd 5
    masr eval --benchmark gsm8k --checkpoint router.pt --lam 10 100
    masr serve --checkpoint router.pt --port 8000 --api-key-env MASR_SERVER_KEY
    masr serve --checkpoint zeroeval-paper5-gsm8k --ledger calls.jsonl   # a shipped checkpoint
    masr data fetch --dest ~/masr-data && masr data check --data-dir ~/masr-data
    masr pool check pool.yaml        # keys set, endpoints reachable, models listed; nothing paid

Every command runs on an offline recorded world (``--world zeroeval`` or ``llmrouter`` with
``--pool``: a named pool such as ``paper5``, ``all`` or a comma-separated list of recorded LLMs)
or on real OpenAI-compatible endpoints (``--pool FILE.yaml``). ``train`` and ``eval`` share the
protocol of ``benchmarks/run_all.py`` (:mod:`masr_graph.benchmarks.experiment.protocol`: the same
splits, plan library and training) and an output directory (``--out``) holding the splits, the
plan library's outcomes, the LLM response and score caches and the per-query traces, so reruns
resume and repeated calls cost nothing.

Exit status (the same for ``benchmarks/run_all.py``, see masr_graph.exit_status): 0 done,
1 an error (one line says what to fix), 2 bad command line, 3 stopped by the budget cap
(everything finished before the stop is kept; rerun with a higher ``--max-usd`` to continue),
130 interrupted (rerun with the same ``--out`` to resume).
"""
from __future__ import annotations

import argparse
import contextlib
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
def _add_pool_options(parser: argparse.ArgumentParser, *, from_checkpoint: bool = False
                      ) -> None:
    """``--world``, ``--pool``, ``--data-dir``, ``--rule``; ``from_checkpoint``: their defaults
    are the checkpoint's origin (what it was trained on)."""
    trained = "the checkpoint's (what it was trained on)"
    parser.add_argument("--world", choices=("zeroeval", "llmrouter"),
                        default=None if from_checkpoint else "zeroeval",
                        help=f"recorded world of a recorded pool (default: "
                             f"{trained + ', then zeroeval' if from_checkpoint else 'zeroeval'})")
    parser.add_argument("--pool", default=None, metavar="POOL",
                        help="a named recorded pool (paper5, mix, all), a comma-separated list "
                             "of recorded LLMs, or a pool YAML file of real endpoints (see "
                             "masr_graph/configs/example_pool.yaml); default: "
                             + (trained if from_checkpoint else "every LLM recorded on the task"))
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="data directory (default: $MASR_DATA_DIR, then ../shared/data)")
    parser.add_argument("--rule", default=None if from_checkpoint else "calibrated",
                        help="replay collaboration rule (default: "
                             + (f"{trained}, then calibrated)" if from_checkpoint
                                else "calibrated)"))


def _add_budget_options(parser: argparse.ArgumentParser, *, cap_help: str) -> None:
    parser.add_argument("--max-usd", type=usd_amount, default=None, help=cap_help)
    parser.add_argument("--unknown-outcome-cost", choices=UNKNOWN_OUTCOME_COSTS,
                        default="worst_case",
                        help="what an attempt of unknown outcome (timeout, dropped connection, "
                             "garbled reply) is charged, in the budget and the ledger alike: its "
                             "worst case (default) or its prompt only")


def _add_experiment_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--benchmark", required=True, metavar="TASK",
                        help="the task (gsm8k, math, humaneval, mbpp, mmlu; the ZeroEval world "
                             "records gsm8k and math)")
    parser.add_argument("--split-seed", type=int, default=0,
                        help="seed of the train / validation / test split; train and eval must "
                             "use the same (default: 0)")
    _add_budget_options(parser, cap_help="budget cap in $ for this invocation; the call that "
                                         "would exceed it is not made")
    parser.add_argument("--fail-fast-after", type=non_negative_int, default=FAIL_FAST_AFTER,
                        metavar="N",
                        help="stop when an LLM's (or endpoint's) first N calls all fail for good "
                             f"(default: {FAIL_FAST_AFTER}; 0: never)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"output directory: splits, caches, traces (default: {DEFAULT_OUT})")
    parser.add_argument("--max-train", type=positive_int, default=None,
                        help="cap on training queries (default: all of the split)")
    parser.add_argument("--max-validation", type=positive_int, default=None,
                        help="cap on validation queries (default: all of the split)")
    parser.add_argument("--max-test", type=positive_int, default=None,
                        help="cap on test queries (default: all of the split)")


def build_parser() -> argparse.ArgumentParser:
    """The ``masr`` argument parser (one sub-command per action, ``--help`` on each)."""
    parser = argparse.ArgumentParser(
        prog="masr", description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    route = commands.add_parser(
        "route", help="print the plan a trained router chooses for queries",
        description="Print the multi-agent system a trained router chooses for each query at a "
                    "cost preference: task, collaboration mode, agents' roles and LLMs, with "
                    "their probabilities. Nothing is executed.")
    route.add_argument("queries", nargs="+", metavar="QUERY", help="query text(s)")
    route.add_argument("--checkpoint", required=True,
                       help="router checkpoint: a .pt file or the name of a shipped one")
    route.add_argument("--lam", type=non_negative_float, default=100.0,
                       help="cost preference λ, utility per $ (default: 100)")
    route.add_argument("--json", action="store_true", help="print JSON instead of a table")

    train = commands.add_parser(
        "train", help="train a router on a benchmark's training queries",
        description="Run the plan library on the training and validation queries of the "
                    "benchmark (stored: a rerun makes only the missing calls), train a router on "
                    "those outcomes with λ as an input, choose its weights and gate on "
                    "validation, and write the checkpoint (with its library and gate).")
    train.add_argument("--checkpoint", type=Path, required=True,
                       help="checkpoint to write (an existing one is reported, not retrained)")
    _add_pool_options(train)
    _add_experiment_options(train)
    train.add_argument("--steps", type=positive_int, default=300,
                       help="optimisation steps (default: 300)")
    train.add_argument("--lambdas", nargs="+", type=non_negative_float,
                       default=[0.0, 10.0, 100.0, 1000.0, 10000.0],
                       help="the λ values the router learns (default: 0 10 100 1000 10000)")
    train.add_argument("--seed", type=int, default=0, help="training seed (default: 0)")

    evaluate = commands.add_parser(
        "eval", help="evaluate a router on a benchmark's test queries",
        description="Run the router's plans on the test split at each --lam, score them and "
                    "print utility and accuracy (bootstrap 95 % CIs) and cost. Per-query traces "
                    "go to OUT/traces; a rerun resumes.")
    evaluate.add_argument("--checkpoint", required=True,
                          help="router checkpoint: a .pt file or the name of a shipped one")
    _add_pool_options(evaluate)
    _add_experiment_options(evaluate)
    evaluate.add_argument("--lam", nargs="+", type=non_negative_float, default=[100.0],
                          help="cost preferences λ to evaluate at (default: 100)")
    evaluate.add_argument("--name", default=None,
                          help="method name in results (default: MasRouter [<checkpoint>@<sha>])")

    data = commands.add_parser(
        "data", help="fetch the data sets from their public sources, or check a data directory",
        description="fetch: download every data set the project uses from its public source at "
                    "a pinned commit, verify its sha256 against the packaged manifest and lay it "
                    "out as the project expects. check: report what a data directory holds.")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    fetch = data_commands.add_parser("fetch", help="download, verify and lay out the data")
    fetch.add_argument("--dest", type=Path, required=True, help="the data directory to fill")
    fetch.add_argument("--only", nargs="+", default=None, metavar="SET",
                       help="only these data sets (default: all; see `masr data check`)")
    fetch.add_argument("--base-url", default=None,
                       help="where {repository}/{commit}/{path} are served (default: "
                            "https://raw.githubusercontent.com)")
    check = data_commands.add_parser("check", help="report what a data directory holds")
    check.add_argument("--data-dir", type=Path, default=None,
                       help="data directory (default: $MASR_DATA_DIR, then ../shared/data)")

    pool = commands.add_parser(
        "pool", help="check a pool file of real endpoints before any paid call",
        description="check: validate a pool YAML file, then for each LLM check that its API-key "
                    "variable is set, that its endpoint answers GET /models and that it lists "
                    "the LLM's model id. No chat call is made, so nothing is paid. One line per "
                    "LLM; exit status 0 when every LLM is ok, 1 otherwise.")
    pool_commands = pool.add_subparsers(dest="pool_command", required=True, metavar="ACTION")
    pool_check = pool_commands.add_parser("check", help="check keys, endpoints and model ids")
    pool_check.add_argument("pool_file", type=Path, metavar="POOL.yaml", help="the pool file")
    pool_check.add_argument("--timeout", type=_seconds, default=10.0, metavar="S",
                            help="how long each endpoint has to answer (default: 10)")

    serve = commands.add_parser(
        "serve", help="serve the router as an OpenAI-compatible HTTP API (model 'masr')",
        description="Serve /v1/models and /v1/chat/completions: model 'masr' routes the last user "
                    "message through the router, runs the multi-agent system and answers with "
                    "the decision node's output (stream=true: as server-sent events); usage is "
                    "summed over all agents and the plan is in the 'masr_plan' response field. "
                    "GET /metrics serves Prometheus metrics.")
    serve.add_argument("--checkpoint", required=True,
                       help="router checkpoint: a .pt file or the name of a shipped one "
                            "(python -m masr_graph.checkpoints list)")
    _add_pool_options(serve, from_checkpoint=True)
    serve.add_argument("--task", default=None,
                       help="the task whose recorded pool to serve (default: the checkpoint's "
                            "benchmark)")
    serve.add_argument("--lam", type=non_negative_float, default=100.0,
                       help="default cost preference λ; a request's 'masr_cost_lambda' field or a "
                            "model name 'masr-lambda-<λ>' overrides it (default: 100)")
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
    serve.add_argument("--ledger", type=Path, default=None, metavar="FILE",
                       help="append every LLM call's record (tokens, $, cache hit, error) to "
                            "this JSONL file as the call settles; an existing file is appended "
                            "to (default: none, the ledger is kept in memory)")
    serve.add_argument("--seed", type=int, default=0,
                       help="default edge-sampling seed; a request's 'seed' overrides it")
    serve.add_argument("--max-tokens", type=positive_int, default=None,
                       help="completion cap per agent call (default: the cap the router was "
                            "trained with: a recorded world's own, else 1024)")
    serve.add_argument("--temperature", type=temperature, default=0.0,
                       help="sampling temperature of every agent (default: 0)")
    serve.add_argument("--max-concurrent-runs", type=positive_int, default=64,
                       help="multi-agent runs executing at once; more requests queue (default: 64)")
    serve.add_argument("--max-queued", type=non_negative_int, default=1024, metavar="N",
                       help="requests that may wait (being routed or for a run slot) beyond the "
                            "running ones; more get 503 with Retry-After (default: 1024)")
    serve.add_argument("--request-timeout-s", type=non_negative_float, default=300.0,
                       metavar="S",
                       help="longest a request may take (routing, queueing and its run); then "
                            "the run is cancelled and the request gets 504 (default: 300; "
                            "0: no limit)")
    serve.add_argument("--max-body-mb", type=positive_int, default=1,
                       help="largest request body accepted, in MiB; larger ones get a 413 with "
                            "OpenAI's error body (default: 1)")
    return parser


# ----------------------------------------------------------------------------------- helpers
def _checkpoint_label(path: Path) -> str:
    """``MasRouter [<name>@<sha256 prefix>]``: results of different weights never share a key
    in the result store, so re-evaluating a retrained checkpoint does not resume stale rows."""
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:8]
    return f"MasRouter [{path.stem}@{digest}]"


def _format_plan(query: str, plan: "Plan") -> str:
    probs = plan.probs
    lines = [f"query: {query}", f"  task    {plan.task}", f"  mode    {plan.mode}",
             f"  agents  {plan.k}"]
    for slot, (role, llm) in enumerate(zip(plan.roles, plan.llms)):
        lines.append(f"  agent {slot}: role {role}, LLM {llm}")
    if "plan" in probs:
        lines.append(f"  probability of this plan among the library's: {probs['plan']:.3f}")
    if "gate" in probs:
        lines.append(f"  ({probs['gate']})")
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


def _pair_run(args: argparse.Namespace, **settings: Any) -> Any:
    """The protocol's :class:`PairRun` of the command's world, pool and benchmark."""
    from .benchmarks.experiment.protocol import ENDPOINTS, Pair, PairRun, ProtocolSettings
    from .benchmarks.experiment.wiring import is_pool_file
    from .router import TextEncoder

    world = ENDPOINTS if is_pool_file(args.pool) else args.world
    pair = Pair(world, args.pool or "all", args.benchmark)
    protocol = ProtocolSettings(split_seed=args.split_seed, max_train=args.max_train,
                                max_validation=args.max_validation, max_test=args.max_test,
                                rule=args.rule, **settings)
    encoder = TextEncoder(cache_path=args.out / "embeddings.pt")
    return PairRun(pair, protocol, args.out, encoder, args.data_dir)


def load_policy(checkpoint: Path) -> Any:
    """The :class:`~masr_graph.router.library.LibraryPolicy` of a checkpoint (its own
    vocabulary, library, gate and origin): :meth:`LibraryPolicy.from_checkpoint`.

    Raises:
        ConfigError: unreadable checkpoint, or one without a plan library.
    """
    from .router.library import LibraryPolicy

    return LibraryPolicy.from_checkpoint(checkpoint)


# ---------------------------------------------------------------------------------- commands
def _route(args: argparse.Namespace) -> int:
    from .checkpoints import resolve

    policy = load_policy(resolve(args.checkpoint))
    plans = policy.route(list(args.queries), args.lam)
    if args.json:
        print(json.dumps([{"query": q, "plan": p.to_dict()} for q, p in zip(args.queries, plans)],
                         indent=2))
    else:
        print("\n\n".join(_format_plan(q, p) for q, p in zip(args.queries, plans)))
    return 0


async def _train(args: argparse.Namespace) -> int:
    from .benchmarks.experiment import open_runtime
    from .llm import notional_note
    from .router.library import PLAN_OUTCOMES

    if args.checkpoint.exists():
        print(f"{args.checkpoint} exists; it is reported, not retrained (write to another "
              "--checkpoint to train again)", file=sys.stderr)
    run = _pair_run(args, lambdas=tuple(args.lambdas), seeds=(args.seed,),
                    router_steps=args.steps)
    print(f"training on {len(run.data.train)} {args.benchmark} queries (validation "
          f"{len(run.data.validation)}) over {len(run.specs)} LLMs, λ in {args.lambdas}",
          file=sys.stderr)
    async with open_runtime(run.specs, args.out, run_id=_run_id("masr-train"),
                            max_tokens=run.max_tokens, **_runtime_options(args)) as runtime:
        try:
            executed = await run.prepare(runtime.pipeline)
        except BudgetExceeded as stop:
            raise BudgetStop(stop, kept=f"the plan library's executions finished before it are "
                                        f"stored under {run.out}") from None
        finally:
            run.encoder.save_cache()
        policy = run.router(args.seed, checkpoint=args.checkpoint)
        run.encoder.save_cache()
    note = notional_note(run.specs)
    gate = policy.gate.get(run.domain, {})
    print(f"plan library: {len(run.library)} plans, {executed} executions now; checkpoint "
          f"{args.checkpoint}")
    for lam, entry in sorted(gate.items()):
        if entry is None:
            decision = "routes per query"
        elif entry == PLAN_OUTCOMES:
            decision = ("routes per query by the plan outcome model (the validation gate "
                        "chose it over the router)")
        else:
            fixed = policy.library[entry]
            decision = (f"fixed plan (the validation gate chose it over the router): {fixed.mode} "
                        f"{list(fixed.llms)}")
        print(f"  λ={lam:g}: {decision}")
    print(f"{_spent(runtime)}{f' ({note})' if note and note not in _spent(runtime) else ''}")
    return 0


async def _eval(args: argparse.Namespace) -> int:
    from .checkpoints import resolve

    path = resolve(args.checkpoint)
    label = args.name or _checkpoint_label(path)  # before the slow imports: fail fast
    import numpy as np

    from .benchmarks.experiment import RoutedMethod, evaluate_method, open_runtime
    from .benchmarks.reporting.fronts import utility_with_ci

    policy = load_policy(path)
    run = _pair_run(args)
    test = run.data.test
    stopped: Optional[BudgetExceeded] = None
    lines = [f"{label} on {run.pair.name}, {len(test)} test queries "
             f"(utility [95 % CI] · accuracy · $ per query):"]
    async with open_runtime(run.specs, args.out, run_id=_run_id("masr-eval"),
                            max_tokens=run.max_tokens, **_runtime_options(args)) as runtime:
        try:
            for lam in args.lam:
                method = RoutedMethod(f"{label} λ={lam:g}", policy, lam)
                results = await evaluate_method(runtime.pipeline, run.store, run.pair.name,
                                                method, test)
                correct = np.array([r.correct for r in results])
                cost = np.array([r.would_have_cost_usd for r in results])
                mean, low, high = utility_with_ci(correct, cost, lam)
                lines.append(f"  λ={lam:g}: {mean:.3f} [{low:.3f}, {high:.3f}] · "
                             f"{np.mean(correct):.3f} · ${np.mean(cost):.2e}")
        except BudgetExceeded as stop:
            stopped = stop
        finally:
            run.encoder.save_cache()
    print("\n".join(lines))
    print(_spent(runtime))
    if stopped is not None:
        raise BudgetStop(stopped, kept=f"finished queries are stored under {run.store.traces_dir}")
    return 0


async def _serve(args: argparse.Namespace) -> int:
    api_key = _read_api_key(args.api_key_env)  # before the slow imports: fail fast
    from .benchmarks.experiment import checkpoint_pool
    from .checkpoints import resolve
    from .mas import trained_max_tokens
    from .serve import serve

    path = resolve(args.checkpoint)
    policy = load_policy(path)
    # The pool the checkpoint was trained for (its origin), unless overridden.
    specs, backend = checkpoint_pool(policy.origin, policy.library, pool=args.pool,
                                     world=args.world, task=args.task, rule=args.rule,
                                     data_dir=args.data_dir, source=f"checkpoint {path}")
    await serve(policy, specs, host=args.host, port=args.port, api_key=api_key,
                max_usd=args.max_usd, unknown_outcome_cost=args.unknown_outcome_cost,
                cache_path=args.cache, ledger_path=args.ledger, seed=args.seed,
                max_tokens=args.max_tokens or trained_max_tokens(backend, args.data_dir),
                temperature=args.temperature, max_concurrent_runs=args.max_concurrent_runs,
                max_queued=args.max_queued, request_timeout_s=args.request_timeout_s or None,
                max_body_bytes=args.max_body_mb * 2**20, cost_lambda=args.lam,
                ready=lambda line: print(line, flush=True))
    return 0


def _data(args: argparse.Namespace) -> int:
    from .benchmarks.data.data_dir import resolve_data_dir
    from .benchmarks.data.fetch import check_data, fetch_data

    if args.data_command == "fetch":
        written = fetch_data(args.dest, only=args.only, base_url=args.base_url, progress=print)
        print(f"{len(written)} files verified and laid out under {args.dest}; "
              f"export MASR_DATA_DIR={args.dest}")
        return 0
    root = resolve_data_dir(args.data_dir)
    statuses = check_data(root)
    for status in statuses:
        print(status.line())
    bad = [s.name for s in statuses if not s.ok]
    if bad:
        raise ConfigError(f"{root}: {', '.join(bad)} missing or not as published; run "
                          f"`masr data fetch --dest {root}` (or --only {' '.join(bad)})")
    print(f"{root}: every data set present and valid")
    return 0


async def _pool(args: argparse.Namespace) -> int:
    from .llm import load_pool_config
    from .llm.check import check_pool, summary

    specs = load_pool_config(args.pool_file)
    results = await check_pool(specs, timeout_s=args.timeout)
    for result in results:
        print(result.line(), flush=True)
    if not all(r.ok for r in results):
        raise ConfigError(summary(results, args.pool_file))
    print(summary(results, args.pool_file))
    return 0


def _seconds(text: str) -> float:
    """A finite number of seconds > 0 (a bad one is a usage error, status 2)."""
    value = non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0 (got {text})")
    return value


def _run_id(command: str) -> str:
    """A run id for the ledger file ``OUT/ledgers/<run id>.jsonl``: time, then a random suffix
    so two invocations in the same second keep separate ledgers."""
    return f"{command}-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``masr`` console script; returns the exit status
    (:mod:`masr_graph.exit_status`; a bad command line exits with 2 from argparse)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="masr: %(levelname)s %(name)s: %(message)s")
    commands: dict[str, Any] = {"route": _route, "train": _train, "eval": _eval, "serve": _serve,
                                "data": _data, "pool": _pool}
    protocol = args.command in ("train", "eval")  # the protocol of run_all.py, same routers
    with _protocol_threads() if protocol else contextlib.nullcontext():
        return run_command(f"masr {args.command}", lambda: commands[args.command](args),
                           resumable=protocol)


def _protocol_threads() -> Any:
    from .benchmarks.experiment.protocol import protocol_threads

    return protocol_threads()


if __name__ == "__main__":
    sys.exit(main())

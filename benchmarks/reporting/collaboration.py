"""What debating does in the offline worlds, against what the real debates it is calibrated on
did: Debate of three LLMs versus a majority vote of the same three, per collaboration rule.

    python -m masr_graph.benchmarks.reporting.collaboration            # ZeroEval paper5, GSM8K
    python -m masr_graph.benchmarks.reporting.collaboration --world llmrouter --task mmlu

For every team of three distinct LLMs of the pool and every recorded question, it runs a
majority vote (IO, k=3) and a two-round Debate with a final-refer judge (the team's first LLM)
under each rule, and reports the mean agent accuracy of each debate round, the accuracy of the
agents' majority after each round, the final answer's accuracy and the vote's. The real debates
(:mod:`masr_graph.replay.calibration`) show the agents' mean accuracy rising between rounds while
the majority's barely moves (GPT-3.5 GSM8K: agents 0.747 → 0.793, majority 0.81 → 0.80): debate
mostly spreads the majority's answer. The calibrated rule should reproduce that direction and
size; the stubborn rule, under which nobody changes an answer, cannot.
"""
from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import statistics
from collections import Counter
from typing import Optional, Sequence

from masr_graph.plan import Plan
from masr_graph.replay import load_world, replay_pool
from masr_graph.replay.calibration import load_sources
from masr_graph.runtime import MASExecutor
from masr_graph.runtime.engine import QueryItem

from ..experiment.baselines import generalist_role
from ..tasks.registry import answer_key, evaluate

RULES = ("calibrated", "stubborn")


def _majority_right(outputs: Sequence[str], example, task: str) -> float:
    keys = [answer_key(task, output) for output in outputs]
    counts = Counter(key for key in keys if key is not None)
    if not counts:
        return 0.0
    top = max(counts.values())
    winners = [key for key, n in counts.items() if n == top]
    rights = [any(evaluate(example, o).correct for o, k in zip(outputs, keys) if k == key)
              for key in winners]
    return sum(rights) / len(winners)  # a tie is won with the share of right winners


async def team_statistics(world: str, pool: Optional[str], task: str, rule: str,
                          data_dir=None) -> dict[str, float]:
    """Round-by-round accuracies of Debate and the vote, averaged over every team of three
    distinct LLMs of the pool and every recorded question of ``task``."""
    recorded = load_world(world, data_dir)
    examples = recorded.examples(task)
    pool_ = replay_pool(world, pool, task=task, data_dir=data_dir, rule=rule)
    executor = MASExecutor(pool_, keep_messages=False, max_tokens=recorded.max_tokens,
                           max_concurrent_queries=256)
    role = generalist_role(examples[0].domain)
    key = functools.partial(answer_key, task)
    sums: dict[str, list[float]] = {name: [] for name in (
        "agents round 0", "agents round 1", "majority round 0", "majority round 1",
        "debate final", "vote")}
    try:
        for team in itertools.combinations(pool_.specs, 3):
            debate = Plan("Debate", [role] * 3, list(team), task=examples[0].domain)
            vote = Plan("IO", [role] * 3, list(team), task=examples[0].domain)
            for plan, name in ((debate, "debate"), (vote, "vote")):
                traces = await executor.run_many(
                    QueryItem(e.query, plan, e.id, task, key) for e in examples)
                for example, trace in zip(examples, traces):
                    final = float(evaluate(example, trace.final_answer).correct)
                    if name == "vote":
                        sums["vote"].append(final)
                        continue
                    sums["debate final"].append(final)
                    for r in (0, 1):
                        outputs = [s.output or "" for s in trace.steps if s.round == r]
                        sums[f"agents round {r}"].append(statistics.mean(
                            evaluate(example, o).correct for o in outputs))
                        sums[f"majority round {r}"].append(_majority_right(outputs, example, task))
    finally:
        await pool_.aclose()
    return {name: statistics.mean(values) for name, values in sums.items()}


def report(world: str, pool: Optional[str], task: str) -> str:
    """The markdown table (both rules and the recorded debates)."""
    lines = [f"Debate (3 agents, 2 rounds, judge) vs a 3-LLM majority vote, {world} world, "
             f"pool {pool or 'all'}, {task}, every team of 3 distinct LLMs:", "",
             "| rule | agents r0 | agents r1 | majority r0 | majority r1 | debate final | vote |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for rule in RULES:
        s = asyncio.run(team_statistics(world, pool, task, rule))
        lines.append(f"| {rule} | {s['agents round 0']:.3f} | {s['agents round 1']:.3f} | "
                     f"{s['majority round 0']:.3f} | {s['majority round 1']:.3f} | "
                     f"{s['debate final']:.3f} | {s['vote']:.3f} |")
    lines += ["", "Recorded debates (the calibration sources):", "",
              "| source | agents r0 | agents r1 | majority r0 | majority r1 |",
              "|---|---:|---:|---:|---:|"]
    for source in load_sources().values():
        lines.append(f"| {source.name} | {source.agent_accuracy(0):.3f} | "
                     f"{source.agent_accuracy(1):.3f} | {source.majority_accuracy(0):.3f} | "
                     f"{source.majority_accuracy(1):.3f} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", default="zeroeval", choices=("zeroeval", "llmrouter"))
    parser.add_argument("--pool", default=None, help="pool name or list (default: paper5 in "
                                                     "ZeroEval, all in LLMRouter)")
    parser.add_argument("--task", default=None, help="task (default: gsm8k / mmlu)")
    args = parser.parse_args(argv)
    pool = args.pool or ("paper5" if args.world == "zeroeval" else None)
    task = args.task or ("gsm8k" if args.world == "zeroeval" else "mmlu")
    print(report(args.world, pool, task))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

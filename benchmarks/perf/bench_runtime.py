"""Runtime throughput: N queries x Debate(k agents, 2 rounds) against an OpenAI-compatible loopback
server (a separate process) that answers every request after a fixed latency.

Measured in one run:

- the concurrent :class:`~masr_graph.runtime.engine.MASExecutor` on all queries;
- the bare ``openai`` SDK sending the very same request bodies, at a modest concurrency that
  saturates the client and at the engine's peak concurrency; the cheaper gives ``c``, the SDK's
  own cost per call on this machine (seconds of wall time per call at saturation);
- the serial executor (every call after the previous one, the reference's behaviour).

Engine and bare-SDK runs alternate ``--repeats`` times and medians are reported, so load from
other processes on a shared machine hits both alike.

For each executor: ``ideal = max(critical-path bound, calls x c)``, where the critical-path bound is
the longest chain of dependent calls of any query (levels per round + the decision call) times the
server latency: no scheduler can beat the slower of the two. Target: concurrent wall / ideal <= 1.2.
The last column uses the bare SDK's client *CPU* per call as ``c`` instead (an optimistic ideal on
an idle machine, inflated by CPU contention on a busy one); the engine's client CPU per call over
the bare SDK's is printed as well, the figure least disturbed by other load.

Usage::

    python benchmarks/perf/bench_runtime.py [--queries 256] [--agents 4] [--latency-ms 100]
        [--max-concurrent-queries 64] [--serial-queries 256] [--repeats 3]
        [--bare-concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import networkx as nx
import openai

from masr_graph.benchmarks.experiment.environment import software_environment
from masr_graph.llm import LLMPool, LLMSpec
from masr_graph.plan import Plan
from masr_graph.runtime.engine import MASExecutor, QueryItem
from masr_graph.runtime.roles import Role
from masr_graph.runtime.topology import get_topology
from masr_graph.runtime.trace import Trace

MODE = "Debate"
TIMEOUT_S = 120.0
# The loopback server ships with the repository's tests (repository root / tests).
DEFAULT_SERVER_SCRIPT = Path(__file__).resolve().parents[2] / "tests" / "loopback_server.py"

ROLES = {
    name: Role(
        name=name,
        domain="math",
        description=f"benchmark role {name}",
        prompt=f"You are a careful {name.lower()} solving math word problems.",
        output_format="End your reply with the final answer inside \\boxed{}.",
    )
    for name in (
        "Solver",
        "Checker",
        "Analyst",
        "Teacher",
        "Engineer",
        "Scientist",
        "Critic",
        "Tutor",
    )
}


def start_server(script: Path, latency_ms: float) -> tuple[subprocess.Popen, int]:
    """Start the loopback server process; returns it and the port it printed."""
    if not script.is_file():
        raise SystemExit(f"loopback server script not found: {script} (pass --server-script)")
    process = subprocess.Popen(
        [sys.executable, str(script), "--port", "0", "--latency-ms", str(latency_ms)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if not line.isdigit():
        process.kill()
        raise SystemExit(f"the loopback server did not print its port (got {line!r})")
    return process, int(line)


def critical_path_calls(trace: Trace) -> int:
    """Dependent calls on the longest chain of one query: levels per round, plus the judge."""
    levels = 0
    for record in trace.rounds:
        graph = nx.DiGraph()
        graph.add_nodes_from(range(trace.plan["k"]))
        graph.add_edges_from(record.spatial_edges)
        levels += sum(1 for _ in nx.topological_generations(graph))
    return levels + (1 if trace.decision and trace.decision.call else 0)


def items(n: int, k: int, offset: int = 0) -> list[QueryItem]:
    roles = tuple(list(ROLES)[:k])
    plan = Plan(MODE, roles, ("loop",) * k)
    return [
        QueryItem(
            f"Question {offset + i}: a farmer has {i + 3} cows and buys {2 * i + 1} more; "
            "how many cows does she have?",
            plan,
            f"q{offset + i}",
        )
        for i in range(n)
    ]


async def run_executor(pool: LLMPool, work: list[QueryItem], *, serial: bool, concurrency: int):
    executor = MASExecutor(pool, roles=ROLES, serial=serial, max_concurrent_queries=concurrency)
    start = time.perf_counter()
    traces = await executor.run_many(work)
    return traces, time.perf_counter() - start


async def bare_sdk(base_url: str, bodies: Sequence[list], concurrency: int) -> tuple[float, float]:
    """Send ``bodies`` through one bare AsyncOpenAI client; returns (wall s, client CPU s)."""
    # The same client settings as the pool's OpenAI transport: no SDK retries, the SDK's aiohttp
    # backend (masr_graph/llm/transport.py), so c measures the same HTTP stack.
    client = openai.AsyncOpenAI(
        base_url=base_url,
        api_key="unused",
        max_retries=0,
        timeout=TIMEOUT_S,
        http_client=openai.DefaultAioHttpClient(),
    )
    slots = asyncio.Semaphore(concurrency)

    async def one(messages: list) -> None:
        async with slots:
            await client.chat.completions.create(
                model="loop", messages=messages, max_tokens=512, temperature=0.0
            )

    # Open as many connections as will be used, as the engine's pool has them open already.
    await asyncio.gather(*(one(m) for m in bodies[:concurrency]))
    cpu, start = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one(m) for m in bodies))
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    await client.close()
    return wall, cpu


def total_calls(traces: list[Trace]) -> int:
    return sum(t.totals()["calls"] for t in traces)


async def main_async(args: argparse.Namespace) -> None:
    load_before = os.getloadavg()[0]  # the machine may be shared; say how busy it was
    topology = get_topology(MODE)
    latency_s = args.latency_ms / 1000.0
    process, port = start_server(args.server_script, args.latency_ms)
    base_url = f"http://127.0.0.1:{port}/v1"
    spec = LLMSpec(
        name="loop",
        model="loop",
        base_url=base_url,
        price_in=0.1,
        price_out=0.1,
        description="loopback",
        max_concurrency=4096,
        timeout_s=TIMEOUT_S,
    )
    in_flight = args.max_concurrent_queries * args.agents
    # The SDK's cost per call grows with the requests in flight (its connection pool), so the
    # bare SDK runs at a modest concurrency that still saturates the client and at the engine's
    # peak; the cheaper of the two is c (the stricter ideal).
    bare_levels = sorted({args.bare_concurrency, in_flight})
    engine_walls, engine_cpus = [], []
    bare_walls: dict[int, list[float]] = {level: [] for level in bare_levels}
    bare_cpus: dict[int, list[float]] = {level: [] for level in bare_levels}
    try:
        async with LLMPool([spec]) as pool:
            warm_up, _ = await run_executor(  # opens the connections, warms imports
                pool,
                items(32, args.agents, offset=10**6),
                serial=False,
                concurrency=args.max_concurrent_queries,
            )
            # Engine and bare SDK alternate and medians are kept: the machine is shared, and
            # load that comes and goes must hit both sides alike.
            for _ in range(args.repeats):
                cpu = time.process_time()
                traces, wall = await run_executor(
                    pool,
                    items(args.queries, args.agents),
                    serial=False,
                    concurrency=args.max_concurrent_queries,
                )
                engine_walls.append(wall)
                engine_cpus.append(time.process_time() - cpu)
                bodies = [step.messages for t in traces for step in t.steps]
                bodies += [
                    t.decision.call.messages for t in traces if t.decision and t.decision.call
                ]
                for level in bare_levels:
                    bare_wall, bare_cpu = await bare_sdk(base_url, bodies, level)
                    bare_walls[level].append(bare_wall)
                    bare_cpus[level].append(bare_cpu)
            serial_traces, serial_wall = await run_executor(
                pool, items(args.serial_queries, args.agents), serial=True, concurrency=1
            )
    finally:
        process.terminate()
        process.wait(timeout=10)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # the server, now reaped
    calls = total_calls(traces)
    assert len(bodies) == calls, "every call's messages are kept (keep_messages=True)"
    served = (
        total_calls(warm_up)
        + args.repeats * (calls + sum(calls + min(level, calls) for level in bare_levels))
        + total_calls(serial_traces)
    )
    wall, engine_cpu = statistics.median(engine_walls), statistics.median(engine_cpus)
    c = min(statistics.median(bare_walls[level]) for level in bare_levels) / calls
    c_cpu = min(statistics.median(bare_cpus[level]) for level in bare_levels) / calls

    print(
        f"{args.queries} queries x {MODE}(k={args.agents}, {topology.rounds} rounds), "
        f"at most {args.max_concurrent_queries} queries at once; server latency "
        f"{args.latency_ms:g} ms (separate process); load average {load_before:.1f} at start "
        f"on {os.cpu_count()} CPUs; medians of {args.repeats} alternating runs"
    )
    print(f"environment: {software_environment()}")
    print("engine walls: " + ", ".join(f"{w:.2f}" for w in engine_walls) + " s")
    for level in bare_levels:
        print(
            f"bare openai SDK, the same {calls} requests, {level} in flight: walls "
            + ", ".join(f"{w:.2f}" for w in bare_walls[level])
            + f" s -> {1000 * statistics.median(bare_walls[level]) / calls:.2f} ms/call, "
            f"client CPU {1000 * statistics.median(bare_cpus[level]) / calls:.2f} ms/call"
        )
    print(
        f"c = {1000 * c:.2f} ms/call; engine client CPU {1000 * engine_cpu / calls:.2f} ms/call "
        f"({engine_cpu / calls / c_cpu:.2f} x the bare SDK's best); server CPU "
        f"{1000 * (usage.ru_utime + usage.ru_stime) / served:.2f} ms/request; load average "
        f"{os.getloadavg()[0]:.1f} at end\n"
    )
    header = (
        f"{'executor':<11}{'queries':>8}{'calls':>7}{'wall s':>9}{'crit-path s':>13}"
        f"{'calls x c s':>13}{'ideal s':>9}{'wall/ideal':>12}{'wall/crit':>11}"
        f"{'wall/ideal(c=CPU)':>19}"
    )
    print(header)
    print("-" * len(header))
    for name, run_traces, run_wall in (
        ("concurrent", traces, wall),
        ("serial", serial_traces, serial_wall),
    ):
        run_calls = total_calls(run_traces)
        failed = sum(t.totals()["failed_calls"] for t in run_traces)
        if failed:
            print(f"warning: {failed} calls of the {name} run failed")
        critical = max(critical_path_calls(t) for t in run_traces) * latency_s
        ideal = max(critical, run_calls * c)
        ideal_cpu = max(critical, run_calls * c_cpu)
        print(
            f"{name:<11}{len(run_traces):>8}{run_calls:>7}{run_wall:>9.2f}{critical:>13.3f}"
            f"{run_calls * c:>13.2f}{ideal:>9.2f}{run_wall / ideal:>12.2f}"
            f"{run_wall / critical:>11.1f}{run_wall / ideal_cpu:>19.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=256)
    parser.add_argument("--agents", type=int, default=4, choices=range(2, len(ROLES) + 1))
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument(
        "--max-concurrent-queries",
        type=int,
        default=64,
        help="queries in flight at once in the concurrent run",
    )
    parser.add_argument(
        "--serial-queries",
        type=int,
        default=256,
        help="queries of the serial baseline (each takes ~ 9 x latency)",
    )
    parser.add_argument(
        "--bare-concurrency",
        type=int,
        default=64,
        help="requests in flight for the bare-SDK measurement of c (besides the engine's peak)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="alternating engine / bare-SDK measurements (medians are used)",
    )
    parser.add_argument("--server-script", type=Path, default=DEFAULT_SERVER_SCRIPT)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()

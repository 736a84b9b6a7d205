"""`masr serve` throughput: 300 concurrent non-streaming chat completions against a `masr serve`
process over the replay pool (LLMRouter world, GSM8K), against the floor set by encoding the same
queries with the router's MiniLM encoder, measured in the same run.

Per repeat (a fresh server, so its embedding cache is cold for the measured queries, as the
floor's encoder is):

1. start ``masr serve`` (a subprocess: its own interpreter and GIL) and warm it with
   ``--warmup`` concurrent requests on *other* recorded queries: model loaded, encoder and
   router kernels run at the batch sizes of a burst, the client's connections open;
2. fire ``--requests`` concurrent requests (one ``openai.AsyncOpenAI`` client, one event loop)
   and time each one (send to parsed reply) and the whole burst (first send to last reply):
   ``req/s = requests / wall``, p50 / p95 of the per-request latencies. The server's CPU (from
   ``/proc``) and the client's CPU per request are printed too: on a 2-CPU machine the client,
   about 3 ms of CPU per request in the SDK, competes with the server for the same cores;
3. the same burst again: the server's encoder cache now holds those embeddings, so this shows
   what the server costs beyond encoding (graph cascade, engine, replay, HTTP, JSON);
4. the floor: the same queries encoded with :class:`masr_graph.router.TextEncoder` (cache off),
   in chunks of the server's ``max_batch`` (128, the most one router forward pass takes), as the
   server's router encodes them, with the server stopped: ``queries/s`` of encoding alone.

Target: server throughput >= 70 % of the floor, per repeat and for the medians. Replay answers
cost no network time, so what is left is routing (encoding + graph cascade), the engine, HTTP and
JSON on the server side, and the SDK on the client side.

On a shared machine wall-clock rates depend on the share of the CPUs each process gets (the
scheduler gives the server + client pair more than the lone floor process when other jobs
compete), so the ratio is also printed by CPU: the floor's CPU per query over the server's plus
the client's CPU per request — what the throughputs would compare as on otherwise idle cores.

Usage::

    python benchmarks/perf/bench_serve.py [--requests 300] [--warmup 250] [--repeats 3]
        [--checkpoint router.pt]

Without ``--checkpoint`` an untrained router over a small plan library (each LLM alone, a vote
and a debate of three) is used: routing costs the same whatever the weights.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Optional, Sequence

import openai
import torch

from masr_graph.benchmarks.experiment import DEFAULT_ROUTER_CONFIG
from masr_graph.benchmarks.experiment.baselines import generalist_role
from masr_graph.benchmarks.experiment.environment import software_environment
from masr_graph.benchmarks.experiment.library import single_plans
from masr_graph.plan import Plan
from masr_graph.replay import load_world, replay_specs
from masr_graph.router import MasRouter, NodeVocab, TextEncoder, save_checkpoint

TARGET = 0.70
MAX_BATCH = 128  # masr_graph.serve.RouterBatcher's default max_batch
STARTUP_TIMEOUT_S = 300.0
REQUEST_TIMEOUT_S = 600.0


def default_checkpoint(path: Path) -> Path:
    """An untrained router (seed 0) over the GSM8K replay pool with a small plan library."""
    specs = replay_specs("llmrouter", task="gsm8k")
    llms = [spec.name for spec in specs]
    role = generalist_role("math")
    library = [*single_plans(llms, "math"),
               *(Plan(mode, [role] * 3, llms[:3], task="math") for mode in ("IO", "Debate"))]
    torch.manual_seed(0)
    return save_checkpoint(path, MasRouter(DEFAULT_ROUTER_CONFIG),
                           NodeVocab.from_registries(specs), library=library)


class ServeProcess:
    """``masr serve`` over the replay pool on a free port, as a subprocess."""

    def __init__(self, checkpoint: Path, logs: Path):
        self.logs = logs
        self.out, self.err = open(logs / "stdout", "w"), open(logs / "stderr", "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "masr_graph.cli", "serve", "--checkpoint", str(checkpoint),
             "--world", "llmrouter", "--host", "127.0.0.1", "--port", "0"],
            stdout=self.out, stderr=self.err, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            text = (logs / "stdout").read_text()
            if "listening on " in text:
                self.base_url = text.split("listening on ", 1)[1].split()[0]
                return
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                raise SystemExit(f"masr serve did not start: "
                                 f"{(logs / 'stderr').read_text()[-2000:]}")
            time.sleep(0.2)

    def cpu_s(self) -> float:
        """User + system CPU seconds of the server process so far (all its threads)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def router_batches(self) -> int:
        import json
        import urllib.request

        with urllib.request.urlopen(self.base_url.removesuffix("/v1") + "/health") as reply:
            return int(json.loads(reply.read())["router_batches"])

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.out.close()
        self.err.close()


async def burst(client: openai.AsyncOpenAI, queries: Sequence[str]
                ) -> tuple[float, list[float], list[Any], float]:
    """All ``queries`` at once: ``(wall s, per-request latencies, replies, client CPU s)``."""
    latencies: list[float] = []

    async def one(query: str) -> Any:
        started = time.perf_counter()
        reply = await client.chat.completions.create(
            model="masr", messages=[{"role": "user", "content": query}])
        latencies.append(time.perf_counter() - started)
        return reply

    cpu, started = time.process_time(), time.perf_counter()
    replies = await asyncio.gather(*(one(query) for query in queries))
    return time.perf_counter() - started, latencies, replies, time.process_time() - cpu


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def encode_floor(encoder: TextEncoder, queries: Sequence[str]) -> tuple[float, float]:
    """``(wall s, CPU s)`` to encode ``queries`` (cache off) in chunks of the router's largest
    batch."""
    cpu, started = time.process_time(), time.perf_counter()
    for start in range(0, len(queries), MAX_BATCH):
        encoder.encode(list(queries[start:start + MAX_BATCH]), use_cache=False)
    return time.perf_counter() - started, time.process_time() - cpu


def run_repeat(index: int, checkpoint: Path, warm: Sequence[str], measured: Sequence[str],
               encoder: TextEncoder, logs: Path) -> dict[str, Any]:
    server = ServeProcess(checkpoint, logs)
    try:
        async def drive() -> tuple[Any, ...]:
            client = openai.AsyncOpenAI(base_url=server.base_url, api_key="unused",
                                        max_retries=0, timeout=REQUEST_TIMEOUT_S)
            try:
                warm_wall, _, _, _ = await burst(client, warm)
                measured_run = await timed_burst(server, client, measured)
                # The same requests again: the server's encoder cache now holds their
                # embeddings, so this is the server's cost beyond encoding.
                cached_run = await timed_burst(server, client, measured)
                return warm_wall, measured_run, cached_run
            finally:
                await client.close()

        warm_wall, measured_run, cached_run = asyncio.run(drive())
    finally:
        server.stop()
    wall, latencies, replies, client_cpu, batches, server_cpu = measured_run
    floor_s, floor_cpu = encode_floor(encoder, measured)  # server stopped: both CPUs free
    n = len(measured)
    modes = Counter(reply.masr_plan["mode"] for reply in replies)
    assert all(reply.choices[0].message.content for reply in replies)
    result = {"rps": n / wall, "p50": percentile(latencies, 0.50),
              "p95": percentile(latencies, 0.95), "floor": n / floor_s,
              "cpu_ratio": floor_cpu / (server_cpu + client_cpu)}
    result["ratio"] = result["rps"] / result["floor"]
    print(f"\n[repeat {index}] warm-up burst of {len(warm)} other queries: {warm_wall:.2f} s")
    print(f"  server: {n} requests in {wall:.2f} s = {result['rps']:.1f} req/s; latency p50 "
          f"{result['p50']:.2f} s, p95 {result['p95']:.2f} s; {batches} router forward passes; "
          f"plans {dict(modes)}; {sum(r.masr_run['calls'] for r in replies)} LLM calls")
    print(f"  CPU per request: server {1e3 * server_cpu / n:.1f} ms, client (openai SDK) "
          f"{1e3 * client_cpu / n:.1f} ms; the client alone caps one event loop at "
          f"{n / client_cpu:.0f} req/s")
    c_wall, c_latencies, _, c_client_cpu, c_batches, c_server_cpu = cached_run
    print(f"  the same {n} again, embeddings cached by the server: {n / c_wall:.1f} req/s, p50 "
          f"{percentile(c_latencies, 0.5):.2f} s, p95 {percentile(c_latencies, 0.95):.2f} s; "
          f"server CPU {1e3 * c_server_cpu / n:.1f} ms/request (all but encoding), client "
          f"{1e3 * c_client_cpu / n:.1f} ms")
    print(f"  floor: MiniLM encoding of the same {n} queries (chunks of {MAX_BATCH}, cache off): "
          f"{floor_s:.2f} s = {result['floor']:.1f} queries/s, {1e3 * floor_cpu / n:.1f} ms CPU "
          "per query")
    print(f"  throughput / floor = {100 * result['ratio']:.0f} % (target >= "
          f"{100 * TARGET:.0f} %: {'met' if result['ratio'] >= TARGET else 'MISSED'}); by CPU "
          f"(floor CPU / server + client CPU per request): {100 * result['cpu_ratio']:.0f} %")
    return result


async def timed_burst(server: ServeProcess, client: openai.AsyncOpenAI,
                      queries: Sequence[str]) -> tuple[Any, ...]:
    """:func:`burst` plus the server's router forward passes and CPU seconds during it."""
    batches, cpu = server.router_batches(), server.cpu_s()
    wall, latencies, replies, client_cpu = await burst(client, queries)
    return (wall, latencies, replies, client_cpu, server.router_batches() - batches,
            server.cpu_s() - cpu)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=250,
                        help="requests of the warm-up burst (other queries than the measured)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="router checkpoint over the LLMRouter GSM8K pool (default: an "
                             "untrained router over a small library)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    queries = [example.query for example in load_world("llmrouter").examples("gsm8k")]
    if args.requests + args.warmup > len(queries):
        raise SystemExit(f"--requests + --warmup must be <= {len(queries)} (the recorded GSM8K "
                         f"queries; got {args.requests + args.warmup})")
    measured, warm = queries[:args.requests], queries[args.requests:args.requests + args.warmup]
    print(f"{software_environment()}, openai {openai.__version__}; load average "
          f"{os.getloadavg()[0]:.1f} at start (other processes share the CPUs)")
    encoder = TextEncoder()
    encoder.encode(warm[:MAX_BATCH], use_cache=False)  # load and warm the encoder of the floor
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        checkpoint = args.checkpoint or default_checkpoint(Path(tmp) / "router.pt")
        results = []
        for index in range(1, args.repeats + 1):
            logs = Path(tmp) / f"logs-{index}"
            logs.mkdir()
            results.append(run_repeat(index, checkpoint, warm, measured, encoder, logs))
    median = {key: statistics.median(r[key] for r in results) for key in results[0]}
    ratio = median["rps"] / median["floor"]
    each = ", ".join(f"{100 * r['ratio']:.0f} %" for r in results)
    cpu_each = ", ".join(f"{100 * r['cpu_ratio']:.0f} %" for r in results)
    print(f"\nmedian of {len(results)}: {median['rps']:.1f} req/s (p50 {median['p50']:.2f} s, "
          f"p95 {median['p95']:.2f} s) against a floor of {median['floor']:.1f} queries/s: "
          f"{100 * ratio:.0f} % (target >= {100 * TARGET:.0f} %: "
          f"{'met' if ratio >= TARGET else 'MISSED'}); per repeat {each}; by CPU {cpu_each}")
    print(f"load average {os.getloadavg()[0]:.1f} at end")


if __name__ == "__main__":
    main()

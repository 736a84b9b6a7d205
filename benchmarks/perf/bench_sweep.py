"""How a sweep scales on Ray: one (world, task) pair's grid — 5 λ × 3 seeds at the protocol's
full sizes by default — run serially and with ``--ray`` on N local workers, from cold each
(fresh output folders, fresh processes), in the same invocation.

    python benchmarks/perf/bench_sweep.py                       # llmrouter/gsm8k, 2 workers
    python benchmarks/perf/bench_sweep.py --workers 2 --world zeroeval --pool paper5
    python benchmarks/perf/bench_sweep.py --grid-flags=--quick  # CI sizes: Ray's start dominates

Prints the wall times (the whole process, as a user waits for it, and the grid alone), the
speed-up (serial / ray) and the scaling efficiency (serial / (ray × workers); target ≥ 0.8),
whether both runs wrote the same tables, and per-unit figures (seconds of a prepare, a library
shard, a training, a cell; LLM calls and their cache hits per cell) that size a bigger cluster;
then the
cost of the shared actors per LLM call (cache lookup, budget reserve + settle, endpoint slot),
measured from the workers. Everything goes to ``<out>/bench_sweep.json`` as well.

On this kind of machine (2 cores) the ideal is bounded below 2×: Ray's own processes (raylet,
GCS, the shared actors, the driver) take CPU from the same two cores, and each worker process
loads torch, the encoder and the world before its first unit. Every unit, serial or on Ray,
runs torch on one thread (``protocol.PROTOCOL_TORCH_THREADS``), so both runs compute the same
numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from masr_graph.benchmarks.experiment.environment import software_environment

RUN_ALL = Path(__file__).resolve().parents[1] / "run_all.py"
SUMMARY = re.compile(r"^✓ (?P<name>[^:]+): (?P<what>.*) · (?P<seconds>[0-9.]+)s$")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", default="llmrouter")
    parser.add_argument("--pool", default=None)
    parser.add_argument("--task", default="gsm8k")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--lambdas", nargs="+", default=["0", "10", "100", "1000", "10000"])
    parser.add_argument("--seeds", nargs="+", default=["0", "1", "2"])
    parser.add_argument("--grid-flags", default="",
                        help="more run_all.py flags for both runs, e.g. --grid-flags=--quick "
                             "(default: none, the protocol's full sizes)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_sweep"))
    parser.add_argument("--skip-micro", action="store_true",
                        help="do not measure the shared actors' cost per call")
    return parser.parse_args(argv)


def grid_flags(args: argparse.Namespace) -> list[str]:
    flags = ["--world", args.world, "--benchmarks", args.task, "--lambdas", *args.lambdas,
             "--seeds", *args.seeds, *args.grid_flags.split()]
    return flags + (["--pool", args.pool] if args.pool else [])


def timed_run(flags: list[str], out: Path, env: dict[str, str]) -> dict[str, Any]:
    """One cold run of ``run_all.py``: wall time, grid wall time, per-unit seconds."""
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(RUN_ALL), *flags, "--out", str(out)],
                          capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"bench_sweep: run_all.py failed ({done.returncode}):\n"
                         f"{done.stderr[-3000:]}")
    units: dict[str, float] = {}
    for line in done.stdout.splitlines():
        match = SUMMARY.match(line)
        if match:
            units[match["name"]] = float(match["seconds"])
    meta = json.loads((out / "results.json").read_text())["meta"]
    grid_wall = float(str(meta["wall time"]).split()[0])
    return {"wall_s": wall, "grid_wall_s": grid_wall, "units": units,
            "spending": meta.get("spending")}


def by_kind(units: dict[str, float]) -> dict[str, dict[str, float]]:
    kinds: dict[str, list[float]] = {"prepare": [], "library shard": [], "training": [],
                                     "cell": []}
    for name, seconds in units.items():
        kind = ("prepare" if name.endswith("/prepare") else
                "library shard" if "/library " in name else
                "training" if " training seed=" in name else "cell")
        kinds[kind].append(seconds)
    return {kind: {"n": len(v), "mean_s": statistics.fmean(v), "median_s": statistics.median(v),
                   "total_s": sum(v)} for kind, v in kinds.items() if v}


def cell_calls(out: Path) -> dict[str, float]:
    """LLM calls per cell of the Ray run, from the units' own ledgers."""
    from masr_graph.llm import Ledger

    per_cell = []
    for path in (out / "ledgers").rglob("*.jsonl"):
        if path.stem == "prepare" or path.stem.startswith("library_") or "training" in path.stem:
            continue
        records = Ledger.from_jsonl(path).records
        per_cell.append((len(records), sum(1 for r in records if r.cached)))
    if not per_cell:
        return {}
    return {"cells": len(per_cell),
            "calls_per_cell": statistics.fmean(c for c, _ in per_cell),
            "cache_hits_per_cell": statistics.fmean(h for _, h in per_cell)}


def micro(workers: int, n: int = 300) -> dict[str, float]:
    """Per-call cost of the shared actors, from ``workers`` concurrent Ray tasks each making
    ``n`` sequential operations: mean latency per operation and the actors' throughput."""
    import asyncio

    import ray

    from masr_graph.llm.cache import CachedResponse
    from masr_graph.llm.shared import (BudgetActor, EndpointGate, ResponseStore, SharedBudget,
                                       SharedCache, SharedSlot, actor_class)

    tmp = Path("/tmp/bench_sweep_micro.sqlite")
    for suffix in ("", "-wal", "-shm"):
        Path(str(tmp) + suffix).unlink(missing_ok=True)
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    try:
        light = dict(num_cpus=0, max_concurrency=10_000)
        store = actor_class(ResponseStore).options(**light).remote(str(tmp))
        budget = actor_class(BudgetActor).options(**light).remote(1e9)
        gate = actor_class(EndpointGate).options(**light).remote("http://x", 64)

        @ray.remote(num_cpus=1)
        def client(index: int) -> dict[str, float]:
            async def main() -> dict[str, float]:
                lease = (f"unit{index}", "a")
                cache = SharedCache(store, lease)
                shared = SharedBudget(budget, lease, 1e9)
                slot = SharedSlot(gate, 64, lease)
                reply = CachedResponse("x" * 400, 100, 100, False, 0.001)
                times = {}
                start = time.perf_counter()
                for i in range(n):
                    key = f"{index}-{i}"
                    if await cache.get(key) is None:
                        await cache.put(key, "m", reply)
                times["cache_miss_put_ms"] = (time.perf_counter() - start) / n * 1e3
                start = time.perf_counter()
                for i in range(n):
                    await cache.get(f"{index}-{i}")
                times["cache_hit_ms"] = (time.perf_counter() - start) / n * 1e3
                start = time.perf_counter()
                for _ in range(n):
                    reservation = await shared.reserve(0.01, "m")
                    shared.settle(reservation, 0.005)
                await shared.flush()
                times["budget_reserve_settle_ms"] = (time.perf_counter() - start) / n * 1e3
                start = time.perf_counter()
                for _ in range(n):
                    async with slot:
                        pass
                times["endpoint_slot_ms"] = (time.perf_counter() - start) / n * 1e3
                return times

            return asyncio.run(main())

        started = time.perf_counter()
        results = ray.get([client.remote(i) for i in range(workers)])
        elapsed = time.perf_counter() - started
        summary = {key: statistics.fmean(r[key] for r in results) for key in results[0]}
        # miss+put, hit, reserve+settle, slot in + out: 6 actor calls per client iteration
        summary["actor_calls_per_s"] = workers * n * 6 / elapsed
        ray.get(store.close.remote())
        return summary
    finally:
        ray.shutdown()


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    flags = grid_flags(args)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    grid = f"{args.world}/{args.task}: {len(args.lambdas)} λ × {len(args.seeds)} seeds"
    print(f"bench_sweep: {grid} ({' '.join(flags)}), serial vs --ray with {args.workers} "
          f"workers on {os.cpu_count()} cores; load average before: "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    print(f"  environment: {software_environment()}", flush=True)
    serial = timed_run(flags, args.out / "serial", env)
    print(f"  serial: {serial['wall_s']:.1f} s ({serial['grid_wall_s']:.0f} s in the grid), "
          f"{len(serial['units'])} units", flush=True)
    ray_run = timed_run([*flags, "--ray", "--ray-workers", str(args.workers)], args.out / "ray",
                        env)
    print(f"  ray:    {ray_run['wall_s']:.1f} s ({ray_run['grid_wall_s']:.0f} s in the grid, "
          "Ray's start included)", flush=True)
    same = (json.loads((args.out / "serial" / "results.json").read_text())["pairs"]
            == json.loads((args.out / "ray" / "results.json").read_text())["pairs"])
    speedup = serial["wall_s"] / ray_run["wall_s"]
    efficiency = speedup / args.workers
    report: dict[str, Any] = {
        "grid": grid, "flags": flags, "workers": args.workers, "cores": os.cpu_count(),
        "environment": software_environment(),
        "serial": serial, "ray": ray_run,
        "speedup": speedup, "efficiency": efficiency, "same_tables": same,
        "units_serial": by_kind(serial["units"]), "units_ray": by_kind(ray_run["units"]),
        "ray_cells": cell_calls(args.out / "ray"),
        "load_average_after": os.getloadavg(),
    }
    print(f"  speed-up {speedup:.2f}×, scaling efficiency {efficiency:.2f} "
          f"(serial / (ray × {args.workers}); target ≥ 0.8: "
          f"{'met' if efficiency >= 0.8 else 'MISSED'}); same tables: {same}")
    for kind in ("prepare", "library shard", "training", "cell"):
        s, r = report["units_serial"].get(kind), report["units_ray"].get(kind)
        if s and r:
            print(f"  per {kind}: serial {s['mean_s']:.2f} s mean ({s['n']}), "
                  f"ray {r['mean_s']:.2f} s mean ({r['n']})")
    if report["ray_cells"]:
        c = report["ray_cells"]
        print(f"  per cell on Ray: {c['calls_per_cell']:.0f} LLM calls, "
              f"{c['cache_hits_per_cell']:.0f} of them cache hits")
    if not args.skip_micro:
        report["actors"] = micro(args.workers)
        a = report["actors"]
        print(f"  shared actors, per operation from {args.workers} workers: cache miss+put "
              f"{a['cache_miss_put_ms']:.2f} ms, hit {a['cache_hit_ms']:.2f} ms, budget "
              f"reserve+settle {a['budget_reserve_settle_ms']:.2f} ms, endpoint slot "
              f"{a['endpoint_slot_ms']:.2f} ms; {a['actor_calls_per_s']:.0f} actor calls/s "
              "in all")
    print(f"  load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    (args.out / "bench_sweep.json").write_text(json.dumps(report, indent=1, default=str))
    print(f"wrote {args.out / 'bench_sweep.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Export the routers of a finished ``benchmarks/run_all.py`` run as shipped checkpoints.

A run's output folder holds one folder per pair, named ``<world>-<pool>-<task>``
(:attr:`masr_graph.benchmarks.experiment.protocol.Pair.name`, e.g. ``zeroeval-paper5-gsm8k``,
``llmrouter-all-mmlu``), with ``masrouter-seed<seed>.pt``, the split (``split.json``) and the ids
used (``used_ids.json``). For each pair, :func:`export_run`:

1. reads the checkpoint and fills its ``origin`` (:data:`~masr_graph.router.checkpoint.ORIGIN_KEYS`)
   where it lacks one (checkpoints written before origins were recorded): world, pool and task
   from the folder name, the split seed from ``split.json``, the training-set size from
   ``used_ids.json``, the collaboration rule from ``backend.json`` (or the run's
   ``results.json`` settings); what the checkpoint records itself is kept;
2. writes a copy with float16 weights and no trainer state (half the size), keeping in float32
   the few weights (if any) whose rounding would flip one of the router's near-tied decisions
   on up to ``max_queries`` of the pair's test queries at each λ of :data:`VERIFY_LAMBDAS` and
   the gate's (:func:`_half_safe_weights`);
3. checks the written copy routes exactly as the original (every plan equal) on those queries
   and λ values; if anything differs it is written in float32 instead (and says so);
4. stores it as ``<dest>/<world>-<pool>-<task>.pt`` (default: the package's shipped folder).

    python -m masr_graph.checkpoints export RUN_DIR [--seed 0] [--dest DIR]
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from ..errors import ConfigError
from ..files import replaced_atomically
from . import FOLDER, SUFFIX

WORLD_NAMES = ("zeroeval", "llmrouter", "endpoints")
"""The worlds a pair folder name can start with (``endpoints``: a pool file of real ones)."""
VERIFY_LAMBDAS: tuple[float, ...] = (0.0, 1.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0,
                                     10000.0)
"""λ values the float16 copy must route exactly as the original at (with the gate's own)."""
DEFAULT_MAX_QUERIES = 200


@dataclass(frozen=True)
class Exported:
    """One exported checkpoint: its name and file, the origin stored, the dtype of its weights,
    its size against the original's, and how many routing decisions were compared."""

    name: str
    path: Path
    origin: dict[str, Any]
    weights_dtype: str
    bytes: int
    source_bytes: int
    decisions: int
    changed: int

    def line(self) -> str:
        origin = " ".join(f"{key}={self.origin.get(key)}" for key in
                          ("world", "pool", "benchmark", "rule", "split_seed", "seed",
                           "train_size"))
        check = (f"{self.decisions} routing decisions identical" if not self.changed else
                 f"float16 changed {self.changed} of {self.decisions} routing decisions, "
                 "kept float32")
        return (f"{self.path.name}: {self.bytes / 1e6:.2f} MB {self.weights_dtype} "
                f"({self.source_bytes / 1e6:.2f} MB before), {check}; origin {origin}")


def parse_pair_name(name: str) -> tuple[str, str, str]:
    """``(world, pool, task)`` of a pair folder name ``<world>-<pool>-<task>``; a recorded
    pool's ``+`` becomes ``,`` again (a comma-separated list of LLMs).

    Raises:
        ConfigError: not of that form (an unknown world or task).
    """
    from ..benchmarks.tasks.registry import benchmark_names

    world, _, rest = name.partition("-")
    pool, _, task = rest.rpartition("-")
    if world not in WORLD_NAMES or not pool or task not in benchmark_names():
        raise ConfigError(f"{name!r} is not a pair folder name <world>-<pool>-<task> (world "
                          f"one of {', '.join(WORLD_NAMES)}, task one of "
                          f"{', '.join(benchmark_names())})")
    return world, (pool if world == "endpoints" else pool.replace("+", ",")), task


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} is not readable JSON: {exc}") from exc


def _run_rule(pair_dir: Path) -> Optional[str]:
    backend = _read_json(pair_dir / "backend.json") or {}
    if isinstance(backend.get("collaboration_rule"), str):
        return backend["collaboration_rule"]
    results = _read_json(pair_dir.parent / "results.json") or {}
    settings = str((results.get("meta") or {}).get("settings", ""))
    found = re.search(r"rule='([^']+)'", settings)
    return found.group(1) if found else None


def pair_origin(pair_dir: Path, seed: int) -> dict[str, Any]:
    """The origin a pair folder of a run implies for its router of ``seed`` (see the module
    docstring); keys it cannot tell are left out."""
    world, pool, task = parse_pair_name(pair_dir.name)
    origin: dict[str, Any] = {"world": world, "pool": pool, "benchmark": task, "seed": seed,
                              "pair": pair_dir.name}
    if world != "endpoints":
        rule = _run_rule(pair_dir)
        if rule is not None:
            origin["rule"] = rule
    else:
        origin["rule"] = None
    split = _read_json(pair_dir / "split.json")
    if isinstance(split, dict) and isinstance(split.get("seed"), int):
        origin["split_seed"] = split["seed"]
    used = _read_json(pair_dir / "used_ids.json")
    if isinstance(used, dict):
        for part, key in (("train", "train_size"), ("validation", "validation_size")):
            if isinstance(used.get(part), list):
                origin[key] = len(used[part])
    elif isinstance(split, dict) and isinstance(split.get("train_ids"), list):
        origin["train_size"] = len(split["train_ids"])
    return origin


def pair_test_queries(pair_dir: Path, world: str, task: str, *,
                      data_dir: Optional[Path] = None,
                      max_queries: int = DEFAULT_MAX_QUERIES) -> list[str]:
    """Up to ``max_queries`` test queries of the pair (evenly spaced over its split's test
    ids; all the task's queries when the folder has no split).

    Raises:
        ConfigError, DataError: the data is missing.
    """
    from ..benchmarks.tasks.registry import load_benchmark
    from ..benchmarks.tasks.splits import load_split, split_examples
    from ..replay import load_world, split_examples_of

    split_file = pair_dir / "split.json"
    split = load_split(split_file) if split_file.is_file() else None
    if world == "endpoints":
        examples = (split_examples(split, "test", data_dir) if split is not None
                    else load_benchmark(task, data_dir=data_dir))
    else:
        recorded = load_world(world, data_dir)
        examples = (split_examples_of(recorded, task, split, "test") if split is not None
                    else recorded.examples(task))
    if len(examples) > max_queries:
        step = len(examples) / max_queries
        examples = [examples[int(i * step)] for i in range(max_queries)]
    return [example.query for example in examples]


FRAGILE_MARGIN = 0.02
"""Decisions whose two best library plans are closer than this in log-probability are the ones
float16 rounding may flip (it moves log-probabilities by about 1e-3); the precision search
watches them, the final check watches every decision."""


def _scores(router: Any, vocab: Any, library: Sequence[Any], queries: Sequence[str],
            lam: float) -> Any:
    import torch

    with torch.no_grad():
        return router.plan_log_probs(list(queries), library, vocab, cost_lambda=lam)


def _half_safe_weights(loaded: Any, trial: Any, queries: Sequence[str], grid: Sequence[float]
                       ) -> set[str]:
    """Names of the floating weights that must stay float32 so that the router's choice
    (the argmax over the library) of every fragile decision (:data:`FRAGILE_MARGIN`) is
    unchanged, found by bisecting groups of weights (largest first); ``trial`` is a second
    copy of the router whose weights are overwritten."""
    import torch

    state = loaded.router.state_dict()
    rows: list[int] = []
    row_lambdas: list[float] = []
    best: list[int] = []
    for lam in grid:
        scores = _scores(loaded.router, loaded.vocab, loaded.library, queries, lam)
        if scores.shape[-1] < 2:
            continue
        top = scores.topk(2, dim=-1)
        near = ((top.values[:, 0] - top.values[:, 1]) < FRAGILE_MARGIN).nonzero().flatten()
        rows += near.tolist()
        row_lambdas += [lam] * len(near)
        best += top.indices[near, 0].tolist()
    watched = [queries[i] for i in rows]
    expected = torch.tensor(best, dtype=torch.long)

    def agrees(halved: set[str]) -> bool:
        if not watched:
            return True
        trial.load_state_dict({name: value.half().to(value.dtype) if name in halved else value
                               for name, value in state.items()})
        got = _scores(trial, loaded.vocab, loaded.library, watched,
                      torch.tensor(row_lambdas)).argmax(-1)
        return bool((got == expected).all())

    floating = sorted((n for n, v in state.items() if v.is_floating_point()),
                      key=lambda n: -state[n].numel())
    halved: set[str] = set()
    kept: set[str] = set()
    groups = [floating]
    while groups:
        group = groups.pop(0)
        if agrees(halved | set(group)):
            halved |= set(group)
        elif len(group) == 1:
            kept |= set(group)
        else:
            groups[:0] = [group[: len(group) // 2], group[len(group) // 2:]]
    return kept


def export_checkpoint(source: Path, target: Path, origin: dict[str, Any],
                      queries: Sequence[str], *, lambdas: Sequence[float] = VERIFY_LAMBDAS,
                      encoder: Any = None) -> Exported:
    """Write ``source`` as a shipped checkpoint at ``target``: ``origin`` filled in where the
    checkpoint lacks keys, no trainer state, and weights in float16 — but for those that must
    stay float32 for the copy to route ``queries`` exactly as the original at every λ of
    ``lambdas`` and of the gate (found by :func:`_half_safe_weights`; if the written copy still
    differs anywhere, all of it is float32).

    Raises:
        ConfigError: an unreadable checkpoint or one without a plan library.
    """
    import torch

    from ..router import TextEncoder, load_checkpoint, save_checkpoint
    from ..router.library import LibraryPolicy

    encoder = encoder or TextEncoder()
    loaded = load_checkpoint(source, encoder=encoder)
    if not loaded.library:
        raise ConfigError(f"checkpoint {source} holds no plan library; nothing to ship")
    merged = {**origin, **(loaded.origin or {})}
    original = LibraryPolicy(loaded.router, loaded.vocab, loaded.library, loaded.gate, merged,
                             loaded.outcome_models)
    grid = sorted({float(lam) for lam in lambdas}
                  | {float(lam) for by_lambda in (loaded.gate or {}).values()
                     for lam in by_lambda})
    queries = list(queries)
    expected = {lam: original.route(queries, lam) for lam in grid} if queries else {}
    kept = (_half_safe_weights(loaded, load_checkpoint(source, encoder=encoder).router,
                               queries, grid) if queries else set())

    def write(path: Path, dtype: Optional[torch.dtype]) -> None:
        save_checkpoint(path, loaded.router, loaded.vocab, library=loaded.library,
                        gate=loaded.gate, outcome_models=loaded.outcome_models,
                        origin=merged, weights_dtype=dtype,
                        full_precision=kept)

    # the float16 candidate replaces the target only once it is checked (or rewritten float32)
    with replaced_atomically(target) as candidate:
        write(candidate, torch.float16)
        copy = LibraryPolicy.from_checkpoint(candidate, encoder=encoder)
        changed = sum(a != b for lam in grid if queries
                      for a, b in zip(expected[lam], copy.route(queries, lam)))
        if changed:
            write(candidate, None)
    dtype = ("float32" if changed else
             "float16" + (f" ({len(kept)} weights float32)" if kept else ""))
    return Exported(name=target.stem, path=target, origin=merged, weights_dtype=dtype,
                    bytes=target.stat().st_size, source_bytes=source.stat().st_size,
                    decisions=len(grid) * len(queries), changed=changed)


def export_run(run_dir: Path, *, seed: int = 0, dest: Optional[Path] = None,
               data_dir: Optional[Path] = None, max_queries: int = DEFAULT_MAX_QUERIES,
               log: Callable[[str], None] = print) -> list[Exported]:
    """Export ``masrouter-seed<seed>.pt`` of every pair folder of the run ``run_dir`` into
    ``dest`` (default: :data:`masr_graph.checkpoints.FOLDER`) as ``<pair name>.pt``; ``log``
    gets one line per checkpoint (and per folder skipped).

    Raises:
        ConfigError: ``run_dir`` is not a folder or holds no pair folder with that checkpoint.
    """
    from ..router import TextEncoder

    run_dir = Path(run_dir).expanduser()
    if not run_dir.is_dir():
        raise ConfigError(f"run folder {run_dir} does not exist")
    dest = Path(dest).expanduser() if dest is not None else Path(FOLDER)
    encoder = TextEncoder()
    exported = []
    for pair_dir in sorted(p for p in run_dir.iterdir() if p.is_dir()):
        source = pair_dir / f"masrouter-seed{seed}.pt"
        if not source.is_file():
            continue
        try:
            origin = pair_origin(pair_dir, seed)
        except ConfigError as exc:
            log(f"skipped {pair_dir.name}: {exc}")
            continue
        if "rule" not in origin:
            log(f"{pair_dir.name}: the run does not say which collaboration rule it used; "
                "loaders will use the default")
        queries = pair_test_queries(pair_dir, origin["world"], origin["benchmark"],
                                    data_dir=data_dir, max_queries=max_queries)
        done = export_checkpoint(source, dest / f"{pair_dir.name}{SUFFIX}", origin, queries,
                                 encoder=encoder)
        log(done.line())
        exported.append(done)
    if not exported:
        raise ConfigError(f"{run_dir} holds no pair folder <world>-<pool>-<task> with "
                          f"masrouter-seed{seed}.pt (is it a finished run_all.py --out?)")
    return exported

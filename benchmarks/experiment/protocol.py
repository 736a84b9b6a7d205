"""The evaluation protocol: every method on every (world, pool, task) pair, at every cost
preference λ of the sweep, with several seeds, on held-out test queries.

A *pair* is a recorded world, an LLM pool of it and a task (:data:`DEFAULT_PAIRS`: the LLMRouter
world's five tasks with its 9 LLMs, and the ZeroEval world's GSM8K and MATH level 5 with the
``paper5`` and ``all`` pools). Each pair's recorded queries are split into train, validation and
test (:func:`masr_graph.replay.world_split`, 40/20/40, seeded, saved).

Methods (``group`` in parentheses):

* **MasRouter** (``MasRouter``): one router per pair and seed, trained with λ as an input on the
  plan library's outcomes on the training queries (:mod:`masr_graph.router.library`), weights
  chosen on validation utility; at each λ every test query gets its most probable library plan;
* every LLM alone, IO and CoT (``single LLM``), and every fixed mode with three copies of the
  best training LLM (``fixed mode``): λ-independent, evaluated once;
* the **best fixed plan** (``best fixed plan``): at each λ the library plan (single LLMs,
  k-LLM votes, debates, escalation teams, fixed modes) of highest mean utility on
  train + validation, given to every test query;
* single-agent routers the field uses (``single-agent router``): kNN, MLP, matrix factorisation
  in the spirit of RouteLLM's MF and a logistic router, trained on the single LLMs' training
  outcomes, each choosing one LLM per query at each λ (:mod:`.routers`);
* **random plans** (``baseline``), mode, agent count, roles and LLMs drawn uniformly per query;
* the per-query **oracle** (``oracle``): at each λ, the single LLM of best utility on that very
  query (from the single-LLM test results; not a deployable method, shown for headroom).

A :class:`Cell` is one (pair, method, λ, seed) — λ and seed are ``None`` where the method does
not depend on them — and writes its per-query results (with traces) to the pair's resumable
result store, so cells are independent: any subset can run, in any order, in any process, and
tables are built from whatever has finished (:mod:`masr_graph.benchmarks.reporting.protocol`).
What cells of a pair share — the split, the plan library's outcomes on train and validation,
trained routers — is built once by :class:`PairRun` and kept on disk.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch

from masr_graph.errors import ConfigError
from masr_graph.files import write_atomically
from masr_graph.plan import Plan
from masr_graph.replay import load_world, split_examples_of, world_split
from masr_graph.replay.rules import DEFAULT_RULE
from masr_graph.router import MasRouter, NodeVocab, RouterConfig, TextEncoder
from masr_graph.router.checkpoint import load_checkpoint, save_checkpoint
from masr_graph.router.library import (
    LibraryConfig,
    LibraryOutcomes,
    LibraryPolicy,
    LibraryTrainer,
    Fallbacks,
    gate_evidence,
    gate_from_evidence,
    pooled_fallbacks,
)

from ..reporting.results import QueryResult, RunStore
from ..tasks.datasets import Example
from ..tasks.registry import scorer_fingerprint
from ..tasks.splits import make_split, save_split, split_examples
from .baselines import RandomPlans, SingleLLM, generalist_role
from .environment import software_environment
from .library import (SINGLES_FILE, OutcomeStore, SingleOutcomes, build_library, execute,
                      library_shard, outcome_files, plan_key, shard_file, single_plans)
from .pipeline import Pipeline
from .routers import KNNRouter, LogisticRouter, MFRouter, MLPRouter
from .wiring import ENDPOINTS, evaluate_method, pool_specs

LAMBDAS: tuple[float, ...] = (0.0, 10.0, 100.0, 1000.0, 10000.0)
"""The sweep of λ (utility per $) from "cost is nothing" (0) to "cost dominates" (10,000: $0.0001
per query costs a whole accuracy point). λ = 100 is the middle."""
SEEDS: tuple[int, ...] = (0, 1, 2)
MIDDLE_LAMBDA = 100.0

MASROUTER = "MasRouter"
BEST_FIXED = "best fixed plan"
RANDOM = "random plans"
ORACLE = "oracle"
ROUTER_CLASSES = {"kNN router": KNNRouter, "MLP router": MLPRouter, "MF router": MFRouter,
                  "logistic router": LogisticRouter}
SEEDED_ROUTERS = ("MLP router", "MF router")
GROUPS = {MASROUTER: "MasRouter", BEST_FIXED: "best fixed plan", RANDOM: "baseline",
          ORACLE: "oracle", **{name: "single-agent router" for name in ROUTER_CLASSES}}
ROUTER_CONFIG = RouterConfig(max_agents=5)
PROTOCOL_TORCH_THREADS = 1
"""torch's threads wherever the protocol embeds, trains or routes (:func:`protocol_threads`):
its float reductions depend on the thread count, and 300 sampled training steps turn a 1e-7
difference into another router, so one count everywhere makes one seed give one router — the
grid's units serial or on Ray (where a 1-CPU task gets one thread anyway), ``ablations.py``,
``masr train`` and ``masr eval`` alike. Measured: a serial training of llmrouter gsm8k takes
64 s on one thread against 61 s on two. The same holds for the query embeddings: MiniLM's
differ by about 1e-7 with the batch a text is encoded in, so a run re-encoding what its
embedding cache lost trains other routers from the same seed (seen when two runs side by side
replaced each other's cache file; :meth:`~masr_graph.router.TextEncoder.save_cache` now merges)."""
MAX_VOTE_POOL = 5




@contextlib.contextmanager
def protocol_threads() -> Iterator[None]:
    """torch on :data:`PROTOCOL_TORCH_THREADS` threads for the block, then as before."""
    before = torch.get_num_threads()
    torch.set_num_threads(PROTOCOL_TORCH_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class Pair:
    """A recorded world, an LLM pool of it and a task — or, with world :data:`ENDPOINTS`, a pool
    YAML file of real endpoints and a benchmark."""

    world: str
    pool: str
    task: str

    @property
    def name(self) -> str:
        pool = Path(self.pool).stem if self.world == ENDPOINTS else self.pool.replace(",", "+")
        return f"{self.world}-{pool}-{self.task}"


DEFAULT_PAIRS: tuple[Pair, ...] = (
    *(Pair("llmrouter", "all", task) for task in ("gsm8k", "math", "humaneval", "mbpp", "mmlu")),
    *(Pair("zeroeval", pool, task) for pool in ("paper5", "all") for task in ("gsm8k", "math")),
)


@dataclass(frozen=True)
class ProtocolSettings:
    """How big a protocol run is.

    Args:
        lambdas: the λ sweep.
        seeds: training seeds (MasRouter, seeded baselines).
        split_seed: seed of the train / validation / test split.
        max_train, max_validation, max_test: caps on each part's queries (``None``: all).
        team_llms: most LLMs combined into library teams.
        router_steps: steps of MasRouter's library objective.
        router_temperature: τ of its soft targets (utility units).
        rule: the replay collaboration rule.
        max_tokens: completion cap per call on real endpoints (recorded worlds use their
            recordings' own cap, so that every recorded reply replays whole).
    """

    lambdas: tuple[float, ...] = LAMBDAS
    seeds: tuple[int, ...] = SEEDS
    split_seed: int = 0
    max_train: Optional[int] = None
    max_validation: Optional[int] = None
    max_test: Optional[int] = None
    team_llms: int = 8
    router_steps: int = 300
    router_temperature: float = 0.02
    rule: str = DEFAULT_RULE
    max_tokens: int = 1024

    def __post_init__(self) -> None:
        if not self.lambdas or any(not math.isfinite(v) or v < 0 for v in self.lambdas):
            raise ConfigError(f"the λ sweep must be finite values >= 0 (got {self.lambdas})")
        if not self.seeds:
            raise ConfigError("the protocol needs at least one seed")

    @classmethod
    def quick(cls, **overrides: Any) -> "ProtocolSettings":
        """CI-sized: small samples of each part, a small library, short training, one seed."""
        base = cls(seeds=(0,), max_train=48, max_validation=24, max_test=48, team_llms=4,
                   router_steps=60)
        return replace(base, **overrides)

    @classmethod
    def from_flags(cls, quick: bool, **flags: Any) -> "ProtocolSettings":
        """The default (or, with ``quick``, the :meth:`quick`) settings with every flag that was
        given; a flag of ``None`` keeps the default (how the scripts' command lines map)."""
        base = cls.quick() if quick else cls()
        return replace(base, **{name: value for name, value in flags.items()
                                if value is not None})

    @property
    def middle_lambda(self) -> float:
        ordered = sorted(self.lambdas)
        return ordered[len(ordered) // 2]


@dataclass(frozen=True)
class Cell:
    """One (pair, method, λ, seed) of the grid; ``cost_lambda`` / ``seed`` are ``None`` where the
    method does not depend on them."""

    pair: Pair
    method: str
    group: str
    cost_lambda: Optional[float] = None
    seed: Optional[int] = None

    @property
    def label(self) -> str:
        """The cell's name in the result store and in tables."""
        parts = [self.method]
        if self.cost_lambda is not None:
            parts.append(f"λ={self.cost_lambda:g}")
        if self.seed is not None:
            parts.append(f"seed={self.seed}")
        return " ".join(parts)

    @property
    def name(self) -> str:
        return f"{self.pair.name}/{self.label}"


@dataclass
class PairData:
    """The examples of a pair's three parts."""

    train: list[Example]
    validation: list[Example]
    test: list[Example]


def _sample(examples: list[Example], limit: Optional[int], seed: int) -> list[Example]:
    if limit is None or len(examples) <= limit:
        return examples
    chosen = sorted(np.random.default_rng(seed).choice(len(examples), limit, replace=False))
    return [examples[int(i)] for i in chosen]


RESUME_KEYS = ("backend", "collaboration_rule", "token_rule", "llms", "data_checksums", "code")
"""What a pair's stored outputs depend on besides its settings (see ``backend_info``)."""


class PairRun:
    """What the cells of one pair share, built once and kept under ``out/<pair name>``.

    Args:
        pair: the pair.
        settings: protocol settings.
        out: the run's output directory.
        encoder: the text encoder (shared embedding cache).
        data_dir: data directory (``None``: ``$MASR_DATA_DIR``, then ``../shared/data``).
    """

    def __init__(self, pair: Pair, settings: ProtocolSettings, out: Path, encoder: TextEncoder,
                 data_dir: Optional[Path] = None):
        self.pair, self.settings, self.encoder = pair, settings, encoder
        self.out = out / pair.name
        self.out.mkdir(parents=True, exist_ok=True)
        self.specs, self.backend = pool_specs(pair.pool, world=pair.world, task=pair.task,
                                              data_dir=data_dir, rule=settings.rule)
        self.llms = [spec.name for spec in self.specs]
        self._check_backend()
        train, validation, test = self._split(data_dir)
        seed = settings.split_seed
        self.data = PairData(
            train=_sample(train, settings.max_train, seed),
            validation=_sample(validation, settings.max_validation, seed + 1),
            test=_sample(test, settings.max_test, seed + 2),
        )
        (self.out / "used_ids.json").write_text(json.dumps(
            {part: [e.id for e in getattr(self.data, part)]
             for part in ("train", "validation", "test")}, indent=1))
        self.domain = self.data.train[0].domain
        self.vocab = NodeVocab.from_registries(self.specs)
        self.store = RunStore(out)
        library_file = self.out / "library.json"
        self.library: list[Plan] = (
            [Plan.from_dict(json.loads(key)) for key in json.loads(library_file.read_text())]
            if library_file.exists() else [])
        self.train_outcomes: Optional[LibraryOutcomes] = None
        self.validation_outcomes: Optional[LibraryOutcomes] = None
        self._fallbacks: dict[bool, Fallbacks] = {}

    def _check_backend(self) -> None:
        """Refuse to resume outputs made by another backend: a different collaboration rule,
        replay code, recorded data or pool would silently mix two worlds' outcomes."""
        stated = {key: self.backend.get(key) for key in RESUME_KEYS}
        stated["scorer"] = scorer_fingerprint(self.pair.task)
        path = self.out / "backend.json"
        if path.exists():
            stored = json.loads(path.read_text())
            changed = [key for key in stated if stored.get(key) != stated[key]]
            if changed:
                raise ConfigError(
                    f"{self.out} holds outputs of a different backend ({', '.join(changed)} "
                    f"changed since they were made); use a fresh --out, or delete {self.out} to "
                    "recompute this pair")
        else:
            path.write_text(json.dumps(stated, indent=1))

    def _split(self, data_dir: Optional[Path]) -> tuple[list[Example], list[Example],
                                                        list[Example]]:
        """Train, validation and test examples: the recorded world's split, or for real
        endpoints the benchmark's own split with a seeded third of its train as validation."""
        pair, seed = self.pair, self.settings.split_seed
        if pair.world == ENDPOINTS:
            self.max_tokens = self.settings.max_tokens
            split = make_split(pair.task, seed=seed, data_dir=data_dir)
            save_split(split, self.out / "split.json")
            train = split_examples(split, "train", data_dir)
            order = np.random.default_rng(seed).permutation(len(train))
            held = set(order[: len(train) // 3].tolist())
            return ([e for i, e in enumerate(train) if i not in held],
                    [e for i, e in enumerate(train) if i in held],
                    split_examples(split, "test", data_dir))
        world = load_world(pair.world, data_dir)
        self.max_tokens = world.max_tokens
        split = world_split(world, pair.task, seed=seed, split_file=self.out / "split.json")
        return tuple(split_examples_of(world, pair.task, split, part)  # type: ignore[return-value]
                     for part in ("train", "validation", "test"))

    # ---- shared work -----------------------------------------------------------------------
    async def prepare(self, pipeline: Pipeline, *, progress: Optional[object] = None) -> int:
        """Everything the pair's cells need, in this process: :meth:`define_library`, the
        whole library's :meth:`execute_library`, :meth:`load_outcomes`; returns executions made
        (what is already stored is not run again)."""
        ran = await self.define_library(pipeline, progress=progress)
        ran += await self.execute_library(pipeline, progress=progress)
        self.load_outcomes()
        return ran

    async def define_library(self, pipeline: Pipeline, *,
                             progress: Optional[object] = None) -> int:
        """Execute the single LLMs on the train and validation queries and build the plan
        library from their training outcomes (``library.json``); returns executions made."""
        outcomes = OutcomeStore(self.out / SINGLES_FILE)
        try:
            singles = single_plans(self.llms, self.domain)
            ran = await execute(pipeline, outcomes, singles,
                                self.data.train + self.data.validation, progress=progress)
            single = outcomes.matrix(singles, self.data.train)
        finally:
            outcomes.close()
        summary = SingleOutcomes(
            accuracy={llm: float(single.correct[:, j].mean()) for j, llm in enumerate(self.llms)},
            cost={llm: float(single.cost[:, j].mean()) for j, llm in enumerate(self.llms)})
        self.library = build_library(self.llms, self.domain, summary,
                                     team_limit=self.settings.team_llms)
        # Atomically: units in other processes read it while a rerun of prepare rewrites it.
        write_atomically(self.out / "library.json",
                         json.dumps([plan_key(plan) for plan in self.library], indent=0))
        return ran

    async def execute_library(self, pipeline: Pipeline, index: int = 0, count: int = 1, *,
                              progress: Optional[object] = None) -> int:
        """Execute shard ``index`` of ``count`` of the library's team plans
        (:func:`~.library.library_shard`) on the train and validation queries; what any of the
        pair's outcome files holds is not run again. One shard (``count=1``) writes the
        singles' file, several write one file each. Returns executions made."""
        if not self.library:
            raise ConfigError(f"pair {self.pair.name}: define_library() must run before "
                              "execute_library()")
        path = self.out / SINGLES_FILE if count == 1 else shard_file(self.out, index, count)
        outcomes = OutcomeStore(path, others=outcome_files(self.out))
        try:
            return await execute(pipeline, outcomes, library_shard(self.library, index, count),
                                 self.data.train + self.data.validation, progress=progress)
        finally:
            outcomes.close()

    def load_outcomes(self) -> None:
        """Read the library's train and validation outcomes from every outcome file (each
        (plan, query) must have been executed)."""
        files = outcome_files(self.out)
        if not files or not self.library:
            raise ConfigError(f"pair {self.pair.name}: its library has not been executed "
                              "(prepare() first)")
        outcomes = OutcomeStore(files[0], others=files[1:])
        try:
            self.train_outcomes = outcomes.matrix(self.library, self.data.train)
            self.validation_outcomes = outcomes.matrix(self.library, self.data.validation)
            self._fallbacks = {}
        finally:
            outcomes.close()

    def fallbacks(self, *, prefer_cheapest_constant: bool = False) -> Fallbacks:
        """MasRouter's cross-validated fallbacks (:func:`pooled_fallbacks` over the sweep;
        ``prefer_cheapest_constant`` as there, for its ablation), computed once per loaded
        outcomes: they depend on the library outcomes only, so every seed's training shares
        them (6–15 s of model fits per pair here)."""
        if prefer_cheapest_constant not in self._fallbacks:
            train, validation = self._require_prepared()
            self._fallbacks[prefer_cheapest_constant] = pooled_fallbacks(
                self.encoder, train, validation, self.settings.lambdas,
                prefer_cheapest_constant=prefer_cheapest_constant)
        return self._fallbacks[prefer_cheapest_constant]

    def _require_prepared(self) -> tuple[LibraryOutcomes, LibraryOutcomes]:
        if self.train_outcomes is None or self.validation_outcomes is None:
            raise ConfigError(f"pair {self.pair.name}: prepare() must run before its cells")
        return self.train_outcomes, self.validation_outcomes

    def router(self, seed: int, checkpoint: Optional[Path] = None, *,
               on_step: Optional[Callable[[int, dict], None]] = None) -> LibraryPolicy:
        """MasRouter of ``seed``: trained on the library outcomes of the training queries,
        weights and gate chosen on the validation queries (or loaded when its checkpoint
        exists); the training curve and the gate go next to the checkpoint
        (``<checkpoint stem>.curve.json``).

        Args:
            seed: the training seed.
            checkpoint: where the checkpoint lives (default ``masrouter-seed<seed>.pt`` in the
                pair's folder).
            on_step: called after each training step (see :meth:`LibraryTrainer.fit`).
        """
        path = checkpoint or self.out / f"masrouter-seed{seed}.pt"
        if path.exists():
            loaded = load_checkpoint(path, encoder=self.encoder)
            return LibraryPolicy(loaded.router, self.vocab, loaded.library, loaded.gate,
                                 loaded.origin, loaded.outcome_models)
        train, validation = self._require_prepared()
        torch.manual_seed(seed)
        router = MasRouter(ROUTER_CONFIG, encoder=self.encoder)
        trainer = LibraryTrainer(router, self.vocab, train, validation, LibraryConfig(
            lambdas=self.settings.lambdas, steps=self.settings.router_steps, seed=seed,
            temperature=self.settings.router_temperature))
        history = trainer.fit(on_step=on_step)
        evidence, outcome_model = gate_evidence(router, self.vocab, train, validation,
                                                self.settings.lambdas,
                                                fallbacks=self.fallbacks())
        gate = {self.domain: gate_from_evidence(evidence)}
        models = {self.domain: outcome_model} if outcome_model is not None else {}
        origin = self.origin(seed)
        save_checkpoint(path, router, self.vocab, library=self.library, gate=gate,
                        outcome_models=models, origin=origin)
        path.with_suffix(".curve.json").write_text(json.dumps({
            "environment": software_environment(),
            "best_step": trainer.best_step,
            "gate": {f"{lam:g}": plan_key(self.library[entry]) if isinstance(entry, int)
                     else entry for lam, entry in gate[self.domain].items()},
            "gate_evidence": {f"{lam:g}": {"router_validation_utility": e["router"],
                                           "fixed_validation_utility": e["fixed"],
                                           "difference_standard_error": e["difference_se"],
                                           "fixed_plan": None if e["fixed_plan"] is None
                                           else plan_key(self.library[e["fixed_plan"]]),
                                           "fixed_rule": e["fixed_rule"],
                                           "cross_validated": e["cross_validated"]}
                              for lam, e in evidence.items()},
            "points": [{"step": p.step, "executions": p.executions,
                        "train_objective": p.train_objective,
                        "validation_utility": p.validation_utility} for p in history],
        }, indent=1))
        return LibraryPolicy(router, self.vocab, self.library, gate, origin, models)

    def origin(self, seed: int) -> dict[str, Any]:
        """What MasRouter of ``seed`` is trained on, stored in its checkpoint (see
        :data:`masr_graph.router.checkpoint.ORIGIN_KEYS`) so that loaders rebuild its pool."""
        recorded = self.pair.world != ENDPOINTS
        return {
            "world": self.pair.world, "pool": self.pair.pool, "benchmark": self.pair.task,
            "rule": self.settings.rule if recorded else None,
            "split_seed": self.settings.split_seed, "seed": seed,
            "train_size": len(self.data.train), "validation_size": len(self.data.validation),
            "lambdas": list(self.settings.lambdas), "pair": self.pair.name,
        }

    # ---- cells -----------------------------------------------------------------------------
    def cells(self) -> list[Cell]:
        """Every cell of the pair (the oracle, computed from single-LLM results, comes last)."""
        s = self.settings
        cells = [Cell(self.pair, MASROUTER, GROUPS[MASROUTER], lam, seed)
                 for seed in s.seeds for lam in s.lambdas]
        cells += [Cell(self.pair, BEST_FIXED, GROUPS[BEST_FIXED], lam) for lam in s.lambdas]
        for name in ROUTER_CLASSES:
            seeds = s.seeds if name in SEEDED_ROUTERS else (None,)
            cells += [Cell(self.pair, name, GROUPS[name], lam, seed)
                      for seed in seeds for lam in s.lambdas]
        cells += [Cell(self.pair, SingleLLM(llm, mode).name, "single LLM")
                  for llm in self.llms for mode in ("IO", "CoT")]
        cells += [Cell(self.pair, fixed_mode_name(plan), "fixed mode")
                  for plan in self.fixed_mode_plans()]
        cells += [Cell(self.pair, vote_name(plan), "fixed vote") for plan in self.vote_plans()]
        cells += [Cell(self.pair, RANDOM, GROUPS[RANDOM], None, seed) for seed in s.seeds]
        cells += [Cell(self.pair, ORACLE, GROUPS[ORACLE], lam) for lam in s.lambdas]
        return cells

    def fixed_mode_plans(self) -> list[Plan]:
        """The library's fixed-mode plans (every mode but IO with copies of the best LLM)."""
        return [p for p in self.library if p.mode != "IO" and len(set(p.llms)) == 1]

    def vote_plans(self) -> list[Plan]:
        """Majority votes of every three distinct LLMs, for pools of at most
        :data:`MAX_VOTE_POOL` LLMs (e.g. ``paper5``): they show what a plain team does."""
        if len(self.llms) > MAX_VOTE_POOL:
            return []
        role = generalist_role(self.domain)
        return [Plan("IO", [role] * 3, list(team), task=self.domain)
                for team in itertools.combinations(self.llms, 3)]

    def plans(self, cell: Cell) -> list[Plan]:
        """The plan ``cell``'s method gives each test query."""
        test = self.data.test
        if cell.method == MASROUTER:
            assert cell.seed is not None and cell.cost_lambda is not None
            return self.router(cell.seed).route([e.query for e in test], cell.cost_lambda)
        if cell.method == BEST_FIXED:
            assert cell.cost_lambda is not None
            return [self.best_fixed_plan(cell.cost_lambda)] * len(test)
        if cell.method in ROUTER_CLASSES:
            assert cell.cost_lambda is not None
            router = self.single_agent_router(cell.method, cell.seed or 0)
            choice = router.choose(self._embed(test), cell.cost_lambda)
            return [SingleLLM(self.llms[int(i)]).plans([e])[0] for i, e in zip(choice, test)]
        if cell.method == RANDOM:
            # The library's modes, in its (stored) order: the same draws in every process.
            modes = list(dict.fromkeys(plan.mode for plan in self.library))
            return RandomPlans(self.llms, max_agents=ROUTER_CONFIG.max_agents,
                               seed=cell.seed or 0, modes=modes).plans(test)
        for llm in self.llms:
            for mode in ("IO", "CoT"):
                if cell.method == SingleLLM(llm, mode).name:
                    return SingleLLM(llm, mode).plans(test)
        for plan in (*self.fixed_mode_plans(), *self.vote_plans()):
            if cell.method in (fixed_mode_name(plan), vote_name(plan)):
                return [plan] * len(test)
        raise ConfigError(f"pair {self.pair.name} has no method {cell.method!r}")

    def best_fixed_plan(self, cost_lambda: float) -> Plan:
        """The library plan of highest mean utility on train + validation at ``cost_lambda``."""
        train, validation = self._require_prepared()
        utility = train.concat(validation).utility(torch.tensor(cost_lambda))
        return self.library[int(utility.mean(0).argmax())]

    def single_agent_router(self, name: str, seed: int):
        """A single-agent router fitted on the single LLMs' training outcomes (validation for
        its own hyper-parameters)."""
        train, validation = self._require_prepared()
        columns = list(range(len(self.llms)))  # the library starts with the single LLMs
        router = ROUTER_CLASSES[name]()
        return router.fit(
            self._embed(self.data.train), train.correct[:, columns].numpy(),
            train.cost[:, columns].numpy(), self.llms,
            validation=(self._embed(self.data.validation),
                        validation.correct[:, columns].numpy(),
                        validation.cost[:, columns].numpy()),
            seed=seed)

    def _embed(self, examples: Sequence[Example]) -> np.ndarray:
        return self.encoder.encode([e.query for e in examples]).numpy()

    async def run(self, cell: Cell, pipeline: Pipeline, *, progress: bool = False
                  ) -> list[QueryResult]:
        """Run ``cell`` on the test queries into the result store (resuming what is stored)."""
        if cell.method == ORACLE:
            done = self.store.load(self.pair.name, cell.label)
            if len(done) < len(self.data.test):
                for result in self.oracle(cell):
                    if result.query_id not in done:
                        self.store.append(result)
            return self.oracle(cell)
        return await evaluate_method(pipeline, self.store, self.pair.name,
                                     _Fixed(cell.label, self.plans(cell)), self.data.test,
                                     progress=progress)

    def oracle(self, cell: Cell) -> list[QueryResult]:
        """Per test query, the single LLM (IO) of best utility at the cell's λ."""
        assert cell.cost_lambda is not None
        singles = [self.store.load(self.pair.name, SingleLLM(llm).name) for llm in self.llms]
        if any(len(done) < len(self.data.test) for done in singles):
            raise ConfigError(f"pair {self.pair.name}: the oracle needs every single-LLM (IO) "
                              "cell finished first")
        results = []
        for example in self.data.test:
            best = max((done[example.id] for done in singles),
                       key=lambda r: r.correct - cell.cost_lambda * r.would_have_cost_usd)
            results.append(replace(best, method=cell.label))
        return results


@dataclass
class _Fixed:
    """A method that is a list of plans, one per example, in order."""

    name: str
    plan_list: list[Plan] = field(default_factory=list)

    def plans(self, examples: Sequence[Example]) -> list[Plan]:
        if len(examples) != len(self.plan_list):
            raise ConfigError(f"{len(self.plan_list)} plans for {len(examples)} examples")
        return self.plan_list


def fixed_mode_name(plan: Plan) -> str:
    return f"{plan.mode} k={plan.k} ({plan.llms[0]})"


def vote_name(plan: Plan) -> str:
    return f"vote of {', '.join(plan.llms)}"

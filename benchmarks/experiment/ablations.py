"""What each part of MasRouter's training buys, measured on the protocol's pairs: ablation
variants, a data-efficiency sweep, the inductive claim (an LLM added after training) and the
plug-in claim (LLMs assigned to an external team).

Every variant is trained like MasRouter (:meth:`PairRun.router`: same library outcomes, seeds,
λ sweep and steps) with one thing changed — a variant that changes only how plans are chosen
(gate, fallback, decoding) routes with MasRouter's own trained weights — and evaluated as
protocol cells on the same test queries through the same pipeline (its plans are executed, so a
plan outside the library is scored like any other). :data:`VARIANTS`:

* ``no validation gate`` — the graph router's own plan at every λ, even where its fallback (a
  constant plan or the plan outcome model, :func:`~masr_graph.router.library.choose_fallbacks`)
  beat it on validation;
* ``constant fallbacks only`` — the fallback is a constant plan, never the plan outcome model;
* ``fallback only`` — the fallback at every λ: the graph router's plans are never used;
* ``any validation lead`` — the gate keeps the graph router's plans wherever they are at least
  as good as the fallback on validation, not only where they lead by more than a standard error;
* ``cheapest constant unless beaten`` — the fallback is the one-standard-error constant unless
  the cross-validated best candidate leads it by more than a standard error (an alternative
  measured, not adopted: see the README);
* ``one router per λ`` — no λ input: a separate router trained at each λ;
* ``independent LLM slots`` — each slot's LLM chosen without seeing earlier slots' LLMs
  (``RouterConfig.team_aware_llms=False``);
* ``expected-utility objective`` — the library objective's other form (maximise the policy's
  expected utility plus entropy) instead of fitting its Boltzmann soft targets;
* ``last step`` — no model selection on validation: the weights after the last step;
* ``stage-wise greedy decoding`` — the most probable choice at each stage instead of the
  library's most probable plan;
* ``policy gradient only`` — the paper's training: REINFORCE on live plan executions, no plan
  library, as many executions as the library took (:mod:`masr_graph.router.trainer`).

The **data-efficiency** sweep trains on the first ``n`` training queries (validation as usual);
on real endpoints a plan library costs ``plans × queries`` executions, so utility against
executions is what a user pays to train. The **inductive** cells train without the pair's best
single LLM (no node, no plan of it) and route over the whole pool at test time; the **plug-in**
cells give Debate-of-3 and Chain-of-3 teams to :func:`~masr_graph.router.plugin.assign_llms`,
against the same team with every agent on the strongest LLM.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from typing import Any, Optional, Sequence

import numpy as np
import torch

from masr_graph.errors import ConfigError
from masr_graph.plan import Plan
from masr_graph.router import MasRouter, NodeVocab, TrainerConfig
from masr_graph.router.checkpoint import load_checkpoint, save_checkpoint
from masr_graph.router.library import (
    OUTCOME_REGULARISATIONS,
    LibraryConfig,
    LibraryOutcomes,
    LibraryPolicy,
    LibraryTrainer,
    pooled_fallbacks,
    validation_gate,
    validation_utility,
)
from masr_graph.router.plugin import assign_llms
from masr_graph.runtime.topology import get_topology

from .baselines import generalist_role
from .pipeline import Pipeline
from .protocol import ROUTER_CONFIG, Cell, PairRun
from .wiring import fit_trainer, make_trainer

ABLATION = "ablation"
"""Group of ablation cells in tables."""


@dataclass(frozen=True)
class Variant:
    """MasRouter with one change.

    Args:
        name: display name (also the cell's method, prefixed ``ablation:``).
        change: one line on what differs from MasRouter.
        router: :class:`~masr_graph.router.RouterConfig` overrides.
        library: :class:`~masr_graph.router.library.LibraryConfig` overrides.
        per_lambda: train one router per λ (no λ input).
        gate: apply the validation gate.
        outcome_fallback: the plan outcome model may be the fallback (else constant plans only).
        graph_router: the gate may keep the graph router's plans (else the fallback always).
        lead_in_standard_errors: the validation lead over the fallback, in standard errors of
            their paired difference, the gate needs to keep the graph router's plans (0: any).
        prefer_cheapest_constant: the fallback's choice of
            :func:`~masr_graph.router.library.choose_fallbacks` with that flag.
        library_decoding: route to the library's most probable plan (else stage-wise greedy).
        model_selection: keep the weights of best validation utility (else the last step's).
        train_queries: train on the first this many training queries (``None``: all).
        policy_gradient: REINFORCE on live executions instead of the library objective.
        without_best_llm: train without the pair's best single LLM, route with it.
    """

    name: str
    change: str
    router: dict[str, Any] = field(default_factory=dict)
    library: dict[str, Any] = field(default_factory=dict)
    per_lambda: bool = False
    gate: bool = True
    outcome_fallback: bool = True
    graph_router: bool = True
    lead_in_standard_errors: float = 1.0
    prefer_cheapest_constant: bool = False
    library_decoding: bool = True
    model_selection: bool = True
    train_queries: Optional[int] = None
    policy_gradient: bool = False
    without_best_llm: bool = False

    @property
    def method(self) -> str:
        return f"{ABLATION}: {self.name}"

    @property
    def trains_like_masrouter(self) -> bool:
        """Only routing differs (gate, fallback, decoding): the variant routes with MasRouter's
        own trained weights instead of training the same router again."""
        return not (self.router or self.library or self.per_lambda or not self.model_selection
                    or self.train_queries is not None or self.policy_gradient
                    or self.without_best_llm)

    @property
    def slug(self) -> str:
        return "".join(c if c.isalnum() else "-" for c in self.name.lower()).strip("-")


VARIANTS: tuple[Variant, ...] = (
    Variant("no validation gate", "the graph router's own plan at every λ", gate=False),
    Variant("constant fallbacks only", "the fallback is a constant plan, never the plan "
            "outcome model", outcome_fallback=False),
    Variant("fallback only", "the cross-validated fallback at every λ, never the graph "
            "router's plans", graph_router=False),
    Variant("any validation lead", "the gate keeps the graph router's plans on any validation "
            "lead, not only on one of more than a standard error", lead_in_standard_errors=0.0),
    Variant("cheapest constant unless beaten", "the fallback is the one-standard-error constant "
            "unless another candidate leads it in cross-validation by more than a standard "
            "error", prefer_cheapest_constant=True),
    Variant("one router per λ", "no λ input: a router trained at each λ alone", per_lambda=True),
    Variant("independent LLM slots", "slots do not see earlier slots' LLMs",
            router={"team_aware_llms": False}),
    Variant("expected-utility objective", "maximise expected utility + τ·entropy instead of "
            "fitting soft targets", library={"objective": "expected_utility"}),
    Variant("last step", "no model selection on validation", model_selection=False),
    Variant("stage-wise greedy decoding", "most probable choice per stage, not per library plan",
            library_decoding=False, gate=False),
    Variant("policy gradient only", "REINFORCE on live executions (the paper's training), no "
            "library, as many executions", policy_gradient=True, gate=False,
            library_decoding=False),
)
DATA_SIZES: tuple[int, ...] = (25, 50, 100, 200)
"""Training-query counts of the data-efficiency sweep (plus all of them: MasRouter itself)."""
INDUCTIVE = Variant("inductive: best LLM added after training", "trained without the best "
                    "single LLM (no node, no plan of it); routes over the whole pool",
                    without_best_llm=True, gate=False)
PLUG_IN_MODES: tuple[str, ...] = ("Debate", "Chain")
PLUG_IN_TEAM = 3


def data_variants(train_size: int) -> list[Variant]:
    """The data-efficiency sweep's variants for a pair with ``train_size`` training queries."""
    return [Variant(f"{n} training queries", f"library outcomes of the first {n} training "
                    "queries only", train_queries=n) for n in DATA_SIZES if n < train_size]


class _PerLambdaPolicy:
    """One :class:`LibraryPolicy` per λ; a λ between them uses the nearest (log scale)."""

    def __init__(self, policies: dict[float, LibraryPolicy]):
        self.policies = policies

    def route(self, queries: Sequence[str], cost_lambda: float) -> list[Plan]:
        nearest = min(self.policies, key=lambda lam: abs(math.log1p(lam) - math.log1p(cost_lambda)))
        return self.policies[nearest].route(queries, cost_lambda)


class _GreedyPolicy:
    """Stage-wise greedy decoding over the vocabulary (no library)."""

    def __init__(self, router: MasRouter, vocab: NodeVocab):
        self.router, self.vocab = router, vocab

    def route(self, queries: Sequence[str], cost_lambda: float) -> list[Plan]:
        return self.router.route(list(queries), self.vocab, cost_lambda=cost_lambda)


class AblationRun:
    """The ablation, data-efficiency, inductive and plug-in cells of one pair, trained and kept
    under ``<pair>/ablations/`` next to its protocol outputs (a rerun reuses them).

    Args:
        run: the pair's :class:`PairRun` (prepared: its library outcomes exist).
        variants: the variants to train (default: :data:`VARIANTS`, the data sweep and the
            inductive variant).
    """

    def __init__(self, run: PairRun, variants: Optional[Sequence[Variant]] = None):
        self.run = run
        self.dir = run.out / "ablations"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.variants = list(variants) if variants is not None else [
            *VARIANTS, *data_variants(len(run.data.train)), INDUCTIVE]
        self._policies: dict[tuple[str, int], Any] = {}

    # ---- cells -----------------------------------------------------------------------------
    def cells(self) -> list[Cell]:
        s = self.run.settings
        cells = [Cell(self.run.pair, v.method, ABLATION, lam, seed)
                 for v in self.variants for seed in s.seeds for lam in s.lambdas]
        cells += [Cell(self.run.pair, self.plug_in_name(mode), "plug-in", lam, seed)
                  for mode in PLUG_IN_MODES for seed in s.seeds for lam in s.lambdas]
        cells += [Cell(self.run.pair, self.reference_name(mode), "plug-in reference")
                  for mode in PLUG_IN_MODES]
        return cells

    @staticmethod
    def plug_in_name(mode: str) -> str:
        return f"plug-in: {mode} of {PLUG_IN_TEAM}, LLMs assigned by MasRouter"

    def reference_name(self, mode: str) -> str:
        return f"plug-in reference: {mode} of {PLUG_IN_TEAM} on {self.strongest_llm()}"

    def variant(self, method: str) -> Variant:
        for variant in self.variants:
            if variant.method == method:
                return variant
        raise ConfigError(f"no ablation variant {method!r}")

    async def run_cell(self, cell: Cell, pipeline: Pipeline) -> None:
        """Run ``cell`` on the test queries into the pair's result store (resuming)."""
        test = self.run.data.test
        if len(self.run.store.load(self.run.pair.name, cell.label)) >= len(test):
            return
        if cell.group == "plug-in reference":
            mode = next(m for m in PLUG_IN_MODES if cell.method == self.reference_name(m))
            plans = [self.reference_plan(mode)] * len(test)
        elif cell.group == "plug-in":
            assert cell.seed is not None and cell.cost_lambda is not None
            mode = next(m for m in PLUG_IN_MODES if cell.method == self.plug_in_name(m))
            plans = self.plug_in_plans(mode, cell.seed, cell.cost_lambda)
        else:
            assert cell.seed is not None and cell.cost_lambda is not None
            policy = await self.policy(self.variant(cell.method), cell.seed, pipeline)
            plans = policy.route([e.query for e in test], cell.cost_lambda)
        await pipeline.evaluate_method(test, plans, benchmark=self.run.pair.name,
                                       method=cell.label, store=self.run.store)

    def curves(self) -> dict[tuple[str, int], dict[str, Any]]:
        """The stored training curves, by (variant name, seed) (per-λ routers have none)."""
        found = {}
        for variant in self.variants:
            for seed in self.run.settings.seeds:
                path = self.dir / f"{variant.slug}-seed{seed}.curve.json"
                if path.exists():
                    found[(variant.name, seed)] = json.loads(path.read_text())
        return found

    # ---- training ----------------------------------------------------------------------------
    async def policy(self, variant: Variant, seed: int, pipeline: Pipeline) -> Any:
        """The trained policy of ``variant`` and ``seed`` (trained once, then loaded)."""
        key = (variant.name, seed)
        if key not in self._policies:
            if variant.policy_gradient:
                self._policies[key] = await self._policy_gradient(variant, seed, pipeline)
            elif variant.per_lambda:
                self._policies[key] = _PerLambdaPolicy({
                    lam: self._library_policy(variant, seed, (lam,))
                    for lam in self.run.settings.lambdas})
            else:
                self._policies[key] = self._library_policy(variant, seed,
                                                           self.run.settings.lambdas)
        return self._policies[key]

    def best_llm(self) -> str:
        """The single LLM of best training utility at the middle λ (the inductive variant's
        held-out LLM)."""
        train, _ = self.run._require_prepared()
        lam = self.run.settings.middle_lambda
        singles = (train.correct - lam * train.cost)[:, : len(self.run.llms)].mean(0)
        return self.run.llms[int(singles.argmax())]

    def _library_policy(self, variant: Variant, seed: int, lambdas: Sequence[float]) -> Any:
        run = self.run
        suffix = "" if len(lambdas) > 1 else f"-lambda{lambdas[0]:g}"
        path = self.dir / f"{variant.slug}{suffix}-seed{seed}.pt"
        train, validation = run._require_prepared()
        vocab, plans = run.vocab, list(run.library)
        if variant.without_best_llm:
            held_out = self.best_llm()
            keep = [i for i, p in enumerate(plans) if held_out not in p.llms]
            train, validation = _columns(train, keep), _columns(validation, keep)
            vocab = NodeVocab.from_registries([s for s in run.specs if s.name != held_out])
        if variant.train_queries is not None:
            train = train.subset(range(min(variant.train_queries, len(train.queries))))
        if path.exists():
            loaded = load_checkpoint(path, encoder=run.encoder)
            router, gate, models = loaded.router, loaded.gate, loaded.outcome_models
        else:
            if variant.trains_like_masrouter and len(lambdas) > 1:
                router = run.router(seed).router
                curve = json.loads((run.out / f"masrouter-seed{seed}.curve.json").read_text())
                best_step, points = curve["best_step"], curve["points"]
            else:
                torch.manual_seed(seed)
                router = MasRouter(replace(ROUTER_CONFIG, **variant.router), encoder=run.encoder)
                config = LibraryConfig(lambdas=tuple(lambdas), steps=run.settings.router_steps,
                                       seed=seed, temperature=run.settings.router_temperature,
                                       **variant.library)
                trainer = LibraryTrainer(router, vocab, train,
                                         validation if variant.model_selection else None, config)
                points = [{"step": p.step, "validation_utility": p.validation_utility}
                          for p in trainer.fit()]
                best_step = trainer.best_step
            if (variant.trains_like_masrouter and variant.outcome_fallback
                    and len(lambdas) > 1):  # the same outcomes and sweep as MasRouter's
                fallbacks = run.fallbacks(
                    prefer_cheapest_constant=variant.prefer_cheapest_constant)
            else:
                fallbacks = pooled_fallbacks(
                    run.encoder, train, validation, lambdas,
                    regularisations=OUTCOME_REGULARISATIONS if variant.outcome_fallback else (),
                    prefer_cheapest_constant=variant.prefer_cheapest_constant)
            task_gate, outcome_model = validation_gate(
                router, vocab, train, validation, lambdas, fallbacks=fallbacks,
                against_router=variant.graph_router,
                lead_in_standard_errors=variant.lead_in_standard_errors)
            gate = {run.domain: task_gate}
            models = {run.domain: outcome_model} if outcome_model is not None else {}
            save_checkpoint(path, router, vocab, library=train.plans, gate=gate,
                            outcome_models=models)
            path.with_suffix(".curve.json").write_text(json.dumps({
                "best_step": best_step, "executions": train.executions
                + validation.executions,
                "validation_utility": validation_utility(router, vocab, validation, lambdas),
                "points": points}, indent=1))
        if not variant.library_decoding:
            return _GreedyPolicy(router, run.vocab)
        # The inductive router routes over the whole pool: every plan, the held-out LLM's too.
        return LibraryPolicy(router, run.vocab, run.library if variant.without_best_llm
                             else train.plans, gate if variant.gate else None,
                             outcome_models=models if variant.gate else None)

    async def _policy_gradient(self, variant: Variant, seed: int, pipeline: Pipeline) -> Any:
        """The paper's REINFORCE training on live executions (steps matched to the library's
        executions), validated every 25 steps by greedy decoding on the validation queries."""
        run = self.run
        path = self.dir / f"{variant.slug}-seed{seed}.pt"
        train, validation = run._require_prepared()
        config = TrainerConfig(lambdas=tuple(run.settings.lambdas), seed=seed)
        per_step = config.batch_size * config.samples_per_query
        steps = max(1, (train.executions + validation.executions) // per_step)
        trainer = make_trainer(run.specs, pipeline, path, encoder=run.encoder, config=config)
        curve_path = path.with_suffix(".curve.json")
        points = json.loads(curve_path.read_text())["points"] if curve_path.exists() else []
        while trainer.step_count < steps:
            target = min(steps, trainer.step_count + 25)
            await fit_trainer(trainer, run.data.train, steps=target, checkpoint=path,
                              progress=False)
            greedy = _GreedyPolicy(trainer.router, run.vocab)
            utility = {}
            for lam in run.settings.lambdas:
                plans = greedy.route([e.query for e in run.data.validation], lam)
                traces, scores = await pipeline.run(run.data.validation, plans, seed=seed)
                utility[lam] = float(np.mean([s.correct - lam * t.would_have_cost_usd
                                              for t, s in zip(traces, scores)]))
            points.append({"step": trainer.step_count, "executions": trainer.step_count
                           * per_step, "validation_utility": utility})
            curve_path.write_text(json.dumps({"points": points, "steps": steps}, indent=1))
        return _GreedyPolicy(trainer.router, run.vocab)

    # ---- plug-in -----------------------------------------------------------------------------
    def strongest_llm(self) -> str:
        """The single LLM of highest training accuracy (the plug-in reference team's LLM)."""
        train, _ = self.run._require_prepared()
        accuracy = train.correct[:, : len(self.run.llms)].mean(0)
        return self.run.llms[int(accuracy.argmax())]

    def reference_plan(self, mode: str) -> Plan:
        """The external team with every agent on the strongest LLM."""
        role = generalist_role(self.run.domain)
        return Plan(mode, [role] * PLUG_IN_TEAM, [self.strongest_llm()] * PLUG_IN_TEAM,
                    task=self.run.domain)

    def plug_in_plans(self, mode: str, seed: int, cost_lambda: float) -> list[Plan]:
        """The external team with LLMs assigned per query by MasRouter of ``seed``."""
        policy = self.run.router(seed)
        edges = team_edges(mode, PLUG_IN_TEAM)
        reference = self.reference_plan(mode)
        plans = []
        for example in self.run.data.test:
            llms = assign_llms(policy.router, example.query, list(reference.roles), edges,
                               self.run.vocab, mode=mode, cost_lambda=cost_lambda)
            plans.append(replace(reference, llms=tuple(llms)))
        return plans


def team_edges(mode: str, k: int) -> list[tuple[int, int]]:
    """Who reads whom in a team of ``k`` agents of ``mode``: its possible spatial edges and
    its temporal edges between distinct agents (what :func:`assign_llms` conditions on)."""
    topology = get_topology(mode)
    probs = topology.spatial_probs(k)
    spatial = {(i, j) for i in range(k) for j in range(k) if probs[i][j] > 0}
    temporal = {(i, j) for i, j in topology.temporal_edges(k) if i != j}
    return sorted(spatial | temporal)


def _columns(outcomes: LibraryOutcomes, keep: Sequence[int]) -> LibraryOutcomes:
    """``outcomes`` restricted to the plans at ``keep``."""
    index = torch.as_tensor(list(keep), dtype=torch.long)
    return replace(outcomes, plans=tuple(outcomes.plans[i] for i in keep),
                   correct=outcomes.correct[:, index], cost=outcomes.cost[:, index],
                   valid=None if outcomes.valid is None else outcomes.valid[:, index])


def curve_summary(curves: dict[tuple[str, int], dict[str, Any]]) -> dict[str, Any]:
    """Per variant: executions its training took and the final validation utility (mean over
    λ and seeds) — the data-efficiency table's rows."""
    rows: dict[str, dict[str, Any]] = {}
    for (name, _), curve in curves.items():
        final = curve.get("validation_utility") or (
            curve["points"][-1]["validation_utility"] if curve.get("points") else {})
        executions = curve.get("executions") or (
            curve["points"][-1].get("executions") if curve.get("points") else None)
        row = rows.setdefault(name, {"executions": executions, "utility": []})
        if final:
            row["utility"].append(float(np.mean(list(final.values()))))
    return {name: {"executions": row["executions"],
                   "validation_utility": float(np.mean(row["utility"])) if row["utility"]
                   else None} for name, row in rows.items()}


__all__ = ["ABLATION", "AblationRun", "DATA_SIZES", "INDUCTIVE", "PLUG_IN_MODES", "VARIANTS",
           "Variant", "curve_summary", "data_variants", "team_edges"]

"""Learning per-query plans from executed outcomes of a plan library (the router's warm start).

A *plan library* is a set of candidate multi-agent systems (single LLMs, votes of several LLMs,
escalation teams, debates...). Once each has been run on the training queries — on replay worlds
for free, on real endpoints for what those calls cost — the outcome of every candidate on every
training query is known, and the expected utility of the router's policy restricted to the
library is an exact, differentiable function of its parameters:

    J(q, λ) = Σ_p w_p(q, λ) · (correct_p(q) − λ · cost_p(q))  +  τ · H(w(q, λ)),
    w(q, λ) = softmax over the library of log π(p | q, λ)

(the full-information policy gradient: every candidate's reward is observed, so no sampling
noise; the entropy term's optimum is ``w ∝ exp(utility / τ)``, a Boltzmann policy over
utilities). :class:`LibraryTrainer` maximises the mean of ``J`` over training queries and λ values
drawn from the sweep, so one router covers the whole front; it keeps the weights with the best
validation utility (each validation query routed to its most probable library plan, scored by
that plan's executed outcome) and reports that curve, whose x-axis — plan executions — is what a
user pays to train.

Routing then uses library decoding (:meth:`MasRouter.route` with ``library=``): the library plan
of highest probability for the query and λ.
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..plan import Plan
from .checkpoint import load_checkpoint
from .controller import MasRouter
from .encoder import TextEncoder
from .plan_outcomes import PlanOutcomeModel
from .vocab import NodeVocab


@dataclass(frozen=True)
class LibraryOutcomes:
    """Executed outcomes of a plan library on a set of queries.

    Args:
        plans: the library (``P`` plans).
        queries: the ``N`` query texts (or ids of embeddings the router's encoder caches).
        correct: ``[N, P]`` 1.0 where plan ``p`` solved query ``n``.
        cost: ``[N, P]`` $ plan ``p`` cost on query ``n`` (what the calls cost when first made).
        task_labels: the task name of each query (``None`` where unknown).
        valid: ``[N, P]`` bool, False where plan ``p`` was not run on query ``n`` because it
            serves another task (a library spanning tasks); ``None``: all valid.

    Raises:
        ConfigError: shapes that do not match, a negative or non-finite cost, or a query with
            no valid plan.
    """

    plans: tuple[Plan, ...]
    queries: tuple[str, ...]
    correct: torch.Tensor
    cost: torch.Tensor
    task_labels: tuple[Optional[str], ...] = ()
    valid: Optional[torch.Tensor] = None

    def __post_init__(self) -> None:
        shape = (len(self.queries), len(self.plans))
        if self.valid is not None and (tuple(self.valid.shape) != shape
                                       or not bool(self.valid.any(-1).all())):
            raise ConfigError(f"LibraryOutcomes.valid must be a [{shape[0]}, {shape[1]}] mask "
                              "with a valid plan for every query")
        for name in ("correct", "cost"):
            value = getattr(self, name)
            if tuple(value.shape) != shape:
                raise ConfigError(f"LibraryOutcomes.{name} is {list(value.shape)}, expected "
                                  f"[{shape[0]} queries, {shape[1]} plans]")
        if not bool(torch.isfinite(self.cost).all()) or bool((self.cost < 0).any()):
            raise ConfigError("LibraryOutcomes.cost must be finite and >= 0")
        if self.task_labels and len(self.task_labels) != shape[0]:
            raise ConfigError(f"{len(self.task_labels)} task labels for {shape[0]} queries")

    def utility(self, cost_lambda: torch.Tensor) -> torch.Tensor:
        """``[N, P]`` utility at ``[N]`` (or scalar) λ; ``-inf`` where the plan is not valid."""
        lam = torch.as_tensor(cost_lambda, dtype=self.cost.dtype).reshape(-1, 1)
        utility = self.correct - lam * self.cost
        return utility if self.valid is None else utility.masked_fill(~self.valid, -math.inf)

    def mask(self, scores: torch.Tensor) -> torch.Tensor:
        """``scores`` with ``-inf`` where the plan is not valid for the query."""
        return scores if self.valid is None else scores.masked_fill(~self.valid, -math.inf)

    def subset(self, rows: Sequence[int]) -> "LibraryOutcomes":
        """The outcomes of the queries at ``rows``."""
        index = torch.as_tensor(list(rows), dtype=torch.long)
        labels = tuple(self.task_labels[i] for i in rows) if self.task_labels else ()
        return LibraryOutcomes(self.plans, tuple(self.queries[i] for i in rows),
                               self.correct[index], self.cost[index], labels,
                               None if self.valid is None else self.valid[index])

    def concat(self, other: "LibraryOutcomes") -> "LibraryOutcomes":
        """These outcomes followed by ``other``'s (the same library), e.g. training and
        validation pooled.

        Raises:
            ConfigError: ``other`` is of another library.
        """
        if other.plans != self.plans:
            raise ConfigError("only outcomes of the same plan library can be pooled")
        labels = (self.task_labels + other.task_labels
                  if self.task_labels and other.task_labels else ())
        valid = (None if self.valid is None and other.valid is None else torch.cat([
            torch.ones_like(part.correct, dtype=torch.bool) if part.valid is None
            else part.valid for part in (self, other)]))
        return LibraryOutcomes(self.plans, self.queries + other.queries,
                               torch.cat([self.correct, other.correct]),
                               torch.cat([self.cost, other.cost]), labels, valid)

    @property
    def executions(self) -> int:
        """Plan executions these outcomes took (queries x plans)."""
        return len(self.queries) * len(self.plans)


OBJECTIVES = ("soft_targets", "expected_utility")


@dataclass(frozen=True)
class LibraryConfig:
    """Hyper-parameters of :class:`LibraryTrainer` (stored in checkpoints).

    Args:
        lambdas: the λ values (utility per $) training draws from, one per query and step.
        steps: optimisation steps.
        batch_size: queries per step.
        learning_rate: Adam learning rate.
        weight_decay: Adam weight decay.
        temperature: τ, in utility units: the entropy weight (how close to deterministic the
            policy may become; 0.02 lets two plans 0.02 apart in expected utility differ by a
            factor e in probability).
        task_ce_weight: weight of the task cross-entropy on labelled queries.
        kl_weight: weight of the mode latent's KL term.
        eval_every: steps between validation passes (model selection).
        seed: seed of batch order and λ draws.
    """

    lambdas: tuple[float, ...] = (0.0, 10.0, 100.0, 1000.0, 10000.0)
    objective: str = "soft_targets"
    steps: int = 300
    batch_size: int = 32
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    temperature: float = 0.02
    task_ce_weight: float = 1.0
    kl_weight: float = 0.01
    eval_every: int = 25
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "lambdas", tuple(float(v) for v in self.lambdas))
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"LibraryConfig.objective is {self.objective!r}; allowed: "
                              f"{', '.join(OBJECTIVES)}")
        if not self.lambdas or any(not math.isfinite(v) or v < 0 for v in self.lambdas):
            raise ConfigError(f"LibraryConfig.lambdas must be finite values >= 0 "
                              f"(got {self.lambdas})")
        for name in ("steps", "batch_size", "eval_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"LibraryConfig.{name} must be an int >= 1 (got {value!r})")
        for name in ("learning_rate", "temperature"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"LibraryConfig.{name} must be > 0 (got {getattr(self, name)})")
        for name in ("weight_decay", "task_ce_weight", "kl_weight"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"LibraryConfig.{name} must be >= 0 (got {getattr(self, name)})")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class LibraryPoint:
    """One validation pass: the step, the plan executions the training data took, the mean
    training objective since the last pass and the validation utility per λ."""

    step: int
    executions: int
    train_objective: float
    validation_utility: dict[float, float] = field(default_factory=dict)

    @property
    def mean_validation_utility(self) -> float:
        return sum(self.validation_utility.values()) / max(len(self.validation_utility), 1)


def routed_utilities(router: MasRouter, vocab: NodeVocab, outcomes: LibraryOutcomes,
                     lambdas: Sequence[float]) -> dict[float, torch.Tensor]:
    """Per λ, the ``[N]`` utilities of routing each query of ``outcomes`` to its most probable
    library plan (scored by that plan's executed outcome on the query)."""
    router.eval()
    result = {}
    with torch.no_grad():
        for lam in lambdas:
            scores = outcomes.mask(router.plan_log_probs(list(outcomes.queries), outcomes.plans,
                                                         vocab, cost_lambda=lam))
            chosen = scores.argmax(-1)
            utility = outcomes.utility(torch.tensor(lam)).gather(1, chosen.unsqueeze(1))
            result[float(lam)] = utility.squeeze(1)
    return result


def validation_utility(router: MasRouter, vocab: NodeVocab, outcomes: LibraryOutcomes,
                       lambdas: Sequence[float]) -> dict[float, float]:
    """Mean of :func:`routed_utilities` per λ."""
    return {lam: float(utility.mean())
            for lam, utility in routed_utilities(router, vocab, outcomes, lambdas).items()}


class LibraryTrainer:
    """Maximises the library objective (see the module docstring) and keeps the best weights.

    Args:
        router: the router (trained in place; at the end it holds the selected weights).
        vocab: the vocabulary the library's plans are drawn from.
        train: outcomes on the training queries.
        validation: outcomes on the validation queries (model selection); ``None`` keeps the
            last weights.
        config: hyper-parameters.
    """

    def __init__(self, router: MasRouter, vocab: NodeVocab, train: LibraryOutcomes,
                 validation: Optional[LibraryOutcomes] = None,
                 config: Optional[LibraryConfig] = None):
        if validation is not None and validation.plans != train.plans:
            raise ConfigError("train and validation outcomes must be of the same plan library")
        self.router, self.vocab = router, vocab
        self.train, self.validation = train, validation
        self.config = config or LibraryConfig()
        self.generator = torch.Generator().manual_seed(self.config.seed)
        self.optimizer = torch.optim.Adam(router.parameters(), lr=self.config.learning_rate,
                                          weight_decay=self.config.weight_decay)
        self.history: list[LibraryPoint] = []
        self.best_step = 0

    def objective(self, rows: Sequence[int], lambdas: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The loss of one batch and its parts (mean over the batch)."""
        c = self.config
        batch = self.train.subset(rows)
        labels = list(batch.task_labels) if batch.task_labels else None
        self.router.train()
        scores, task_logits, kl = self.router.score_library(
            list(batch.queries), batch.plans, self.vocab, cost_lambda=lambdas,
            task_labels=labels)
        scores = batch.mask(scores)
        weights = F.softmax(scores, -1)
        utility = batch.utility(lambdas)
        valid_utility = utility.masked_fill(torch.isinf(utility), 0.0)
        expected = (weights * valid_utility).sum(-1)
        log_weights = F.log_softmax(scores, -1)
        entropy = -(weights * log_weights.masked_fill(torch.isinf(log_weights), 0.0)).sum(-1)
        if c.objective == "expected_utility":
            fit = -(expected + c.temperature * entropy).mean()
        else:
            target = F.softmax(utility / c.temperature, -1)
            fit = -(target * log_weights.masked_fill(target == 0, 0.0)).sum(-1).mean()
        loss = fit + c.kl_weight * kl.mean()
        parts = {"expected_utility": float(expected.detach().mean()),
                 "entropy": float(entropy.detach().mean())}
        if labels is not None and c.task_ce_weight:
            target = torch.tensor([self.vocab.index("tasks", label) for label in labels])
            task_ce = F.cross_entropy(task_logits, target)
            loss = loss + c.task_ce_weight * task_ce
            parts["task_ce"] = float(task_ce.detach())
        return loss, parts

    def fit(self, *, progress: bool = False,
            on_step: Optional[Callable[[int, dict], None]] = None) -> list[LibraryPoint]:
        """Run :attr:`config.steps` steps; validate every ``eval_every`` steps and at the end.

        ``on_step(step, parts)`` is called after each step with the batch's objective parts
        (``expected_utility``, ``entropy``...), e.g. to show progress.

        Returns:
            The validation curve (one :class:`LibraryPoint` per pass).
        """
        from tqdm.auto import tqdm

        c = self.config
        size = len(self.train.queries)
        lambda_grid = torch.tensor(c.lambdas)
        best_state, best_value = None, -math.inf
        order: list[int] = []
        running: list[float] = []
        for step in tqdm(range(1, c.steps + 1), disable=not progress, desc="library objective"):
            if len(order) < c.batch_size:
                order += torch.randperm(size, generator=self.generator).tolist()
            rows, order = order[:min(c.batch_size, size)], order[min(c.batch_size, size):]
            lambdas = lambda_grid[torch.randint(len(c.lambdas), (len(rows),),
                                                generator=self.generator)]
            loss, parts = self.objective(rows, lambdas)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.router.parameters(), 1.0)
            self.optimizer.step()
            running.append(parts["expected_utility"])
            if on_step is not None:
                on_step(step, parts)
            if step % c.eval_every == 0 or step == c.steps:
                point = LibraryPoint(step, self.train.executions, sum(running) / len(running))
                running = []
                if self.validation is not None:
                    point.validation_utility = validation_utility(
                        self.router, self.vocab, self.validation, c.lambdas)
                    if point.mean_validation_utility > best_value:
                        best_value = point.mean_validation_utility
                        best_state = copy.deepcopy(self.router.state_dict())
                        self.best_step = step
                self.history.append(point)
        if best_state is not None:
            self.router.load_state_dict(best_state)
        else:
            self.best_step = c.steps
        self.router.eval()
        return self.history


GateEntry = Union[None, int, str]
"""A gate's decision at one λ: ``None`` (the router's own plan), a library plan's index (that
constant plan) or :data:`PLAN_OUTCOMES` (the plan outcome model's per-query choice)."""


class LibraryPolicy:
    """A trained router with its plan library and its validation gate: what routes a query.

    Each query goes to its most probable library plan (which also settles its task, since every
    plan serves one). Then, for that task and the λ of the request, the gate holds what won on
    the validation queries at that λ (:func:`validation_gate`): ``None`` — keep the router's
    choice — or the router's fallback, where the router did not beat it by more than a
    standard error: a constant library plan, or
    :data:`PLAN_OUTCOMES`, per-query choice by the task's :class:`PlanOutcomeModel` (exact in
    λ). Where the query text carries no usable signal the best a router can do is the best
    constant plan, so the constant policies are always candidates. A λ between the trained ones
    uses the gate of the nearest (on a ``log(1 + λ)`` scale).

    Args:
        router: the trained router.
        vocab: the vocabulary to route over.
        library: the candidate plans.
        gate: ``{task: {λ: GateEntry}}``; empty: always route.
        origin: what the router was trained on (see
            :data:`masr_graph.router.checkpoint.ORIGIN_KEYS`), ``None`` when unknown.
        outcome_models: ``{task: PlanOutcomeModel}`` over ``library``, for the gate entries
            :data:`PLAN_OUTCOMES`.

    Raises:
        ConfigError: a gate entry naming a plan of another task or outside the library, or
            :data:`PLAN_OUTCOMES` for a task without an outcome model of this library's size.
    """

    def __init__(self, router: MasRouter, vocab: NodeVocab, library: Sequence[Plan],
                 gate: Optional[dict[str, dict[float, GateEntry]]] = None,
                 origin: Optional[dict] = None,
                 outcome_models: Optional[dict[str, PlanOutcomeModel]] = None):
        self.router, self.vocab = router, vocab
        self.origin = dict(origin) if origin is not None else None
        self.library = tuple(library)
        self.gate = {task: dict(by_lambda) for task, by_lambda in (gate or {}).items()}
        self.outcome_models = dict(outcome_models or {})
        for task, by_lambda in self.gate.items():
            for lam, entry in by_lambda.items():
                if entry == PLAN_OUTCOMES:
                    model = self.outcome_models.get(task)
                    if model is None or model.weight.size(0) != len(self.library):
                        raise ConfigError(f"gate of {task} at λ={lam:g} routes by plan outcomes"
                                          f" but the policy has no outcome model of its "
                                          f"{len(self.library)} plans for {task}")
                elif entry is not None and not (isinstance(entry, int)
                                                and 0 <= entry < len(self.library)
                                                and self.library[entry].task == task):
                    raise ConfigError(f"gate of {task} at λ={lam:g} names plan {entry!r}, which "
                                      f"is not a {task} plan of the {len(self.library)}-plan "
                                      "library")

    @classmethod
    def from_checkpoint(cls, path: Union[str, Path], *, encoder: Optional[TextEncoder] = None
                        ) -> "LibraryPolicy":
        """The policy a checkpoint holds: its router, its own vocabulary, library, gate, outcome
        models and origin (what ``masr route``, ``masr serve`` and :class:`masr_graph.MAS`
        route with).

        Args:
            path: a checkpoint written by ``masr train`` or ``benchmarks/run_all.py``.
            encoder: the router's text encoder (a new MiniLM encoder when ``None``).

        Raises:
            ConfigError: a missing or unreadable checkpoint, or one without a plan library.
        """
        loaded = load_checkpoint(path, encoder=encoder or TextEncoder())
        if not loaded.library:
            raise ConfigError(f"checkpoint {path} holds no plan library; train it with "
                              "`masr train` (or benchmarks/run_all.py)")
        return cls(loaded.router, loaded.vocab, loaded.library, loaded.gate, loaded.origin,
                   loaded.outcome_models)

    def gate_entry(self, task: Optional[str], cost_lambda: float) -> GateEntry:
        """The gate's decision for ``task`` at the trained λ nearest ``cost_lambda``."""
        by_lambda = self.gate.get(task or "")
        if not by_lambda:
            return None
        nearest = min(by_lambda, key=lambda lam: abs(math.log1p(lam) - math.log1p(cost_lambda)))
        return by_lambda[nearest]

    def fixed_plan(self, task: Optional[str], cost_lambda: float) -> Optional[Plan]:
        """The gate's constant plan for ``task`` at ``cost_lambda`` (``None``: the router's or
        the plan outcome model's per-query choice)."""
        entry = self.gate_entry(task, cost_lambda)
        return self.library[entry] if isinstance(entry, int) else None

    def restricted_to(self, llms: Sequence[str]) -> "LibraryPolicy":
        """This policy over only the library plans whose LLMs are all in ``llms`` (e.g. those
        whose API keys are set); a gate entry whose plan is dropped routes instead.

        Raises:
            ConfigError: no plan is left.
        """
        available = set(llms)
        kept = [index for index, plan in enumerate(self.library) if set(plan.llms) <= available]
        if not kept:
            raise ConfigError(f"no plan of the {len(self.library)}-plan library uses only the "
                              f"LLMs {sorted(available)}")
        new_index = {old: new for new, old in enumerate(kept)}
        gate = {task: {lam: new_index.get(entry) if isinstance(entry, int) else entry
                       for lam, entry in by_lambda.items()}
                for task, by_lambda in self.gate.items()}
        models = {task: model.subset(kept) for task, model in self.outcome_models.items()}
        for task, by_lambda in gate.items():
            if task in models and not bool(models[task].runnable.any()):
                # none of this task's plans is left: those entries route with the router
                gate[task] = {lam: None if entry == PLAN_OUTCOMES else entry
                              for lam, entry in by_lambda.items()}
        return LibraryPolicy(self.router, self.vocab, [self.library[i] for i in kept], gate,
                             self.origin, models)

    def route(self, queries: Sequence[str], cost_lambda: float) -> list[Plan]:
        """One plan per query at ``cost_lambda``."""
        queries = list(queries)
        routed = self.router.route(queries, self.vocab, cost_lambda=cost_lambda,
                                   library=self.library)
        entries = [self.gate_entry(plan.task, cost_lambda) for plan in routed]
        for i, entry in enumerate(entries):
            if isinstance(entry, int):
                routed[i] = self.library[entry].with_probs(
                    {"gate": "the fixed plan the validation gate chose over the router at this λ"})
        by_task: dict[str, list[int]] = {}
        for i, entry in enumerate(entries):
            if entry == PLAN_OUTCOMES:
                by_task.setdefault(routed[i].task, []).append(i)
        for task, rows in by_task.items():
            embeddings = self.router.embed_queries([queries[i] for i in rows])
            for i, chosen in zip(rows, self.outcome_models[task].choose(embeddings, cost_lambda)):
                routed[i] = self.library[int(chosen)].with_probs(
                    {"gate": "the plan outcome model's choice: the validation gate chose "
                             "it over the router at this λ"})
        return routed


FIXED_PLAN_RULES = ("best mean", "one standard error")
"""How a constant policy may be picked: the plan of best mean utility, or the cheapest plan whose
paired mean utility is within one standard error of that plan's (Breiman's one-standard-error
rule: among plans the data cannot tell apart, the cheapest; of equally cheap ones, the best)."""

PLAN_OUTCOMES = "plan outcomes"
"""The fallback that routes per query with a :class:`~.plan_outcomes.PlanOutcomeModel` (a gate
entry of this value uses the policy's model for the task)."""

OUTCOME_REGULARISATIONS = (0.03, 0.3, 3.0)
"""Inverse L2 strengths tried for the plan outcome model (cross-validated, one per task)."""


@dataclass(frozen=True)
class Fallback:
    """What :func:`choose_fallbacks` picked at one λ.

    Attributes:
        rule: one of :data:`FIXED_PLAN_RULES` (a constant plan) or :data:`PLAN_OUTCOMES`.
        plan: the constant plan's library index (``None`` for :data:`PLAN_OUTCOMES`).
        cross_validated: each candidate's cross-validated utility: the mean, over the pooled
            training and validation queries, of the utility of what the candidate picks when
            fitted on the other folds.
        held_out: ``[N]`` that per-query held-out utility of the chosen candidate, pooled
            queries in order (training first): its validation rows are an out-of-sample score
            to hold the router against.
    """

    rule: str
    plan: Optional[int]
    cross_validated: dict[str, float]
    held_out: torch.Tensor


def _paired_standard_error(difference: torch.Tensor) -> torch.Tensor:
    """Standard error of the mean of per-query differences ``[N]`` (or ``[N, P]``, per column)
    between two policies; 0 with fewer than two queries."""
    if len(difference) < 2:
        return torch.zeros(difference.shape[1:], dtype=difference.dtype)
    return difference.std(0) / math.sqrt(len(difference))


def _pick_by_rule(rule: str, utility: torch.Tensor, cost: torch.Tensor) -> int:
    mean = utility.mean(0)
    best = int(mean.argmax())
    if rule == "best mean":
        return best
    difference = utility - utility[:, best:best + 1]
    close = (difference.mean(0) >= -_paired_standard_error(difference)).nonzero().flatten()
    close_cost = cost.mean(0)[close]
    cheapest = close[close_cost <= close_cost.min()]
    return int(cheapest[mean[cheapest].argmax()])  # equal costs: the better mean


@dataclass
class Fallbacks:
    """:func:`choose_fallbacks`' answer: a :class:`Fallback` per λ, and the plan outcome model
    (fitted on all pooled queries with the cross-validated regularisation) those with rule
    :data:`PLAN_OUTCOMES` route with (``None`` when no regularisation was tried)."""

    by_lambda: dict[float, Fallback]
    outcome_model: Optional[PlanOutcomeModel]


def choose_fallbacks(train: LibraryOutcomes, validation: LibraryOutcomes,
                     embeddings: torch.Tensor, lambdas: Sequence[float], *, folds: int = 5,
                     seed: int = 0,
                     regularisations: Sequence[float] = OUTCOME_REGULARISATIONS,
                     prefer_cheapest_constant: bool = False) -> Fallbacks:
    """MasRouter's fallback for a one-task library at each λ: the best of a constant plan (by
    either rule of :data:`FIXED_PLAN_RULES`) and per-query routing by a
    :class:`~.plan_outcomes.PlanOutcomeModel`, chosen by ``folds``-fold cross-validation on the
    training and validation queries pooled (``embeddings``: their ``[N, D]`` text embeddings,
    training first).

    Why: picking the plan of best mean utility among ~200 plans on a few hundred queries
    overfits (a winner's curse of about 0.03 utility was measured on the protocol's pairs),
    and so does a comparison on the validation queries alone; cross-validation scores every
    candidate on all pooled queries, each out of sample. The outcome model's regularisation is
    chosen once per task among ``regularisations`` (best cross-validated utility averaged over
    ``lambdas``; none: constant plans only). Only plans run on every query compete.

    ``prefer_cheapest_constant``: the candidate of best cross-validated utility replaces the
    one-standard-error constant only where it leads it by more than one standard error of their
    paired held-out difference (the cross-validated winner of three candidates is itself picked
    with a winner's curse); default: the best cross-validated candidate (kept as an ablation,
    ``benchmarks/ablations.py``).

    Raises:
        ConfigError: ``folds`` below 2 or more than the queries, or embeddings of another
            number of queries.
    """
    pooled = train.concat(validation)
    pooled_correct, pooled_cost = pooled.correct, pooled.cost
    valid = (torch.ones_like(pooled_correct, dtype=torch.bool) if pooled.valid is None
             else pooled.valid)
    size = len(pooled_correct)
    if not 2 <= folds <= size:
        raise ConfigError(f"choose_fallbacks needs 2 <= folds <= {size} queries (got {folds})")
    if embeddings.size(0) != size:
        raise ConfigError(f"{embeddings.size(0)} embeddings for {size} pooled queries")
    everywhere = valid.all(0)
    runnable = everywhere.nonzero().flatten()
    # the outcome models see (and may choose) only the plans run on every pooled query
    fit_mask = everywhere.expand(size, -1)
    fold_of = torch.randperm(size, generator=torch.Generator().manual_seed(seed)) % folds

    def fit(rows: torch.Tensor, c: float) -> PlanOutcomeModel:
        return PlanOutcomeModel.fit(embeddings[rows], pooled_correct[rows], pooled_cost[rows],
                                    valid=fit_mask[rows], regularisation=c)

    # λ only scores the held-out choices, so each fold's models are fitted once for all λ
    fold_models = {c: [fit(fold_of != f, c) for f in range(folds)] for c in regularisations}
    correct, cost = pooled_correct[:, runnable], pooled_cost[:, runnable]
    held_out: dict[float, dict[str, torch.Tensor]] = {}
    for lam in lambdas:
        utility = correct - lam * cost
        scores: dict[str, torch.Tensor] = {}
        for rule in FIXED_PLAN_RULES:
            scores[rule] = torch.zeros(size, dtype=utility.dtype)
            for fold in range(folds):
                inside = fold_of != fold
                pick = _pick_by_rule(rule, utility[inside], cost[inside])
                scores[rule][~inside] = utility[~inside, pick]
        library_utility = pooled_correct - lam * pooled_cost
        for c, models in fold_models.items():
            scores[f"{PLAN_OUTCOMES} C={c:g}"] = torch.zeros(size, dtype=utility.dtype)
            for fold, model in enumerate(models):
                rows = (fold_of == fold).nonzero().flatten()
                chosen = model.choose(embeddings[rows], lam)
                scores[f"{PLAN_OUTCOMES} C={c:g}"][rows] = library_utility[rows, chosen]
        held_out[float(lam)] = scores
    outcome_model, best_c = None, None
    if regularisations:
        best_c = max(regularisations, key=lambda c: sum(
            float(by_rule[f"{PLAN_OUTCOMES} C={c:g}"].mean()) for by_rule in held_out.values()))
        outcome_model = fit(torch.ones(size, dtype=torch.bool), best_c)
    by_lambda = {}
    for lam, scores in held_out.items():
        candidates = {rule: scores[rule] for rule in FIXED_PLAN_RULES}
        if best_c is not None:
            candidates[PLAN_OUTCOMES] = scores[f"{PLAN_OUTCOMES} C={best_c:g}"]
        rule = max(candidates, key=lambda name: float(candidates[name].mean()))
        if prefer_cheapest_constant:
            lead = candidates[rule] - candidates["one standard error"]
            if not float(lead.mean()) > float(_paired_standard_error(lead)):
                rule = "one standard error"
        plan = (None if rule == PLAN_OUTCOMES else
                int(runnable[_pick_by_rule(rule, correct - lam * cost, cost)]))
        by_lambda[lam] = Fallback(rule, plan, {name: float(v.mean()) for name, v in
                                               scores.items()}, candidates[rule])
    return Fallbacks(by_lambda, outcome_model)


def pooled_fallbacks(encoder: TextEncoder, train: LibraryOutcomes, validation: LibraryOutcomes,
                     lambdas: Sequence[float], *,
                     regularisations: Sequence[float] = OUTCOME_REGULARISATIONS,
                     prefer_cheapest_constant: bool = False) -> Fallbacks:
    """:func:`choose_fallbacks` on the embeddings of the training and validation queries. It
    depends on the outcomes only, not on a router: compute it once for all seeds of a pair."""
    embeddings = encoder.encode(list(train.queries) + list(validation.queries))
    return choose_fallbacks(train, validation, embeddings, lambdas,
                            regularisations=regularisations,
                            prefer_cheapest_constant=prefer_cheapest_constant)


def gate_evidence(router: MasRouter, vocab: NodeVocab, train: LibraryOutcomes,
                  validation: LibraryOutcomes, lambdas: Sequence[float], *,
                  regularisations: Sequence[float] = OUTCOME_REGULARISATIONS,
                  fallbacks: Optional[Fallbacks] = None
                  ) -> tuple[dict[float, dict[str, Any]], Optional[PlanOutcomeModel]]:
    """Per λ, for a one-task library: the router's validation utility (``"router"``), its
    fallback's (``"fixed"``; ``fallbacks``, default :func:`pooled_fallbacks` with
    ``regularisations``; held out, on the same validation queries), the standard error of their
    paired per-query difference (``"difference_se"``), the fallback's rule and constant plan
    (``None`` for the plan outcome model) — what :func:`validation_gate` decides on — and the
    plan outcome model the fallbacks use."""
    routed = routed_utilities(router, vocab, validation, lambdas)
    if fallbacks is None:
        fallbacks = pooled_fallbacks(router.encoder, train, validation, lambdas,
                                     regularisations=regularisations)
    rows = len(train.queries)
    evidence = {}
    for lam, choice in fallbacks.by_lambda.items():
        router_utility, fixed_utility = routed[float(lam)], choice.held_out[rows:]
        difference = router_utility - fixed_utility
        evidence[lam] = {"router": float(router_utility.mean()),
                         "fixed": float(fixed_utility.mean()),
                         "difference_se": float(_paired_standard_error(difference)),
                         "fixed_plan": choice.plan, "fixed_rule": choice.rule,
                         "cross_validated": choice.cross_validated}
    return evidence, fallbacks.outcome_model


def gate_from_evidence(evidence: dict[float, dict[str, Any]], *, against_router: bool = True,
                       lead_in_standard_errors: float = 1.0) -> dict[float, GateEntry]:
    """Per λ: ``None`` (the router) where the router's validation utility beats its fallback's
    by more than ``lead_in_standard_errors`` standard errors of their paired difference (0: by
    any lead, ties going to the router, the ``any validation lead`` ablation), else the
    fallback: a constant plan's index or :data:`PLAN_OUTCOMES`. ``against_router=False``: the
    fallback at every λ (the graph router is never used).

    Why a lead of one standard error, not any lead: the router's checkpoint was chosen on these
    validation queries, so its validation utility is biased upwards, while the fallback's is
    held out; and, as with :data:`FIXED_PLAN_RULES`, where the data cannot tell two policies
    apart the simpler, cross-validated one is kept (what it changed on the protocol's pairs:
    the README's results and ablations).

    Raises:
        ConfigError: ``lead_in_standard_errors`` below 0.
    """
    if not lead_in_standard_errors >= 0:
        raise ConfigError(f"lead_in_standard_errors must be >= 0 (got {lead_in_standard_errors})")

    def keeps_router(e: dict[str, Any]) -> bool:
        lead = e["router"] - e["fixed"]
        if lead_in_standard_errors == 0:
            return lead >= 0
        return lead > lead_in_standard_errors * e["difference_se"]

    return {lam: None if against_router and keeps_router(e) else
            (PLAN_OUTCOMES if e["fixed_plan"] is None else int(e["fixed_plan"]))
            for lam, e in evidence.items()}


def validation_gate(router: MasRouter, vocab: NodeVocab, train: LibraryOutcomes,
                    validation: LibraryOutcomes, lambdas: Sequence[float], *,
                    regularisations: Sequence[float] = OUTCOME_REGULARISATIONS,
                    fallbacks: Optional[Fallbacks] = None, against_router: bool = True,
                    lead_in_standard_errors: float = 1.0
                    ) -> tuple[dict[float, GateEntry], Optional[PlanOutcomeModel]]:
    """The gate of :func:`gate_from_evidence` and the plan outcome model it may name (see
    :class:`LibraryPolicy`; arguments as there and in :func:`gate_evidence`)."""
    evidence, model = gate_evidence(router, vocab, train, validation, lambdas,
                                    regularisations=regularisations, fallbacks=fallbacks)
    return gate_from_evidence(evidence, against_router=against_router,
                              lead_in_standard_errors=lead_in_standard_errors), model

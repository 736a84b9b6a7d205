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


def validation_utility(router: MasRouter, vocab: NodeVocab, outcomes: LibraryOutcomes,
                       lambdas: Sequence[float]) -> dict[float, float]:
    """Mean utility, per λ, of routing every query of ``outcomes`` to its most probable library
    plan (scored by that plan's executed outcome on the query)."""
    router.eval()
    result = {}
    with torch.no_grad():
        for lam in lambdas:
            scores = outcomes.mask(router.plan_log_probs(list(outcomes.queries), outcomes.plans,
                                                         vocab, cost_lambda=lam))
            chosen = scores.argmax(-1)
            utility = outcomes.utility(torch.tensor(lam)).gather(1, chosen.unsqueeze(1))
            result[float(lam)] = float(utility.mean())
    return result


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


class LibraryPolicy:
    """A trained router with its plan library and its validation gate: what routes a query.

    Each query goes to its most probable library plan (which also settles its task, since every
    plan serves one). Then, for that task and the λ of the request, the gate holds either
    ``None`` — keep the router's choice — or the fixed library plan that beat the router on the
    validation queries at that λ (model selection among the router and the constant policies:
    where the query text carries no usable signal, the best a router can do is the best fixed
    plan). A λ between the trained ones uses the gate of the nearest (on a ``log(1 + λ)``
    scale).

    Args:
        router: the trained router.
        vocab: the vocabulary to route over.
        library: the candidate plans.
        gate: ``{task: {λ: None or index of a library plan}}``; empty: always route.
        origin: what the router was trained on (see
            :data:`masr_graph.router.checkpoint.ORIGIN_KEYS`), ``None`` when unknown.
    """

    def __init__(self, router: MasRouter, vocab: NodeVocab, library: Sequence[Plan],
                 gate: Optional[dict[str, dict[float, Optional[int]]]] = None,
                 origin: Optional[dict] = None):
        self.router, self.vocab = router, vocab
        self.origin = dict(origin) if origin is not None else None
        self.library = tuple(library)
        self.gate = {task: dict(by_lambda) for task, by_lambda in (gate or {}).items()}
        for task, by_lambda in self.gate.items():
            for lam, index in by_lambda.items():
                if index is not None and not (0 <= index < len(self.library)
                                              and self.library[index].task == task):
                    raise ConfigError(f"gate of {task} at λ={lam:g} names plan {index}, which "
                                      f"is not a {task} plan of the {len(self.library)}-plan "
                                      "library")

    @classmethod
    def from_checkpoint(cls, path: Union[str, Path], *, encoder: Optional[TextEncoder] = None
                        ) -> "LibraryPolicy":
        """The policy a checkpoint holds: its router, its own vocabulary, library, gate and
        origin (what ``masr route``, ``masr serve`` and :class:`masr_graph.MAS` route with).

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
        return cls(loaded.router, loaded.vocab, loaded.library, loaded.gate, loaded.origin)

    def fixed_plan(self, task: Optional[str], cost_lambda: float) -> Optional[Plan]:
        """The gate's fixed plan for ``task`` at ``cost_lambda`` (``None``: keep the router's)."""
        by_lambda = self.gate.get(task or "")
        if not by_lambda:
            return None
        nearest = min(by_lambda, key=lambda lam: abs(math.log1p(lam) - math.log1p(cost_lambda)))
        index = by_lambda[nearest]
        return None if index is None else self.library[index]

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
        gate = {task: {lam: new_index.get(index) if index is not None else None
                       for lam, index in by_lambda.items()}
                for task, by_lambda in self.gate.items()}
        return LibraryPolicy(self.router, self.vocab, [self.library[i] for i in kept], gate,
                             self.origin)

    def route(self, queries: Sequence[str], cost_lambda: float) -> list[Plan]:
        """One plan per query at ``cost_lambda``."""
        plans = self.router.route(list(queries), self.vocab, cost_lambda=cost_lambda,
                                  library=self.library)
        routed = []
        for plan in plans:
            fixed = self.fixed_plan(plan.task, cost_lambda)
            routed.append(plan if fixed is None else fixed.with_probs(
                {"gate": "the fixed plan that beat the router on validation at this λ"}))
        return routed


FIXED_PLAN_RULES = ("best mean", "one standard error")
"""How :func:`choose_fixed_plan` may pick a constant policy: the plan of best mean utility, or the
cheapest plan whose paired mean utility is within one standard error of that plan's (Breiman's
one-standard-error rule: among plans the data cannot tell apart, the cheapest; of equally cheap
ones, the best)."""


@dataclass(frozen=True)
class FixedPlanChoice:
    """The fixed library plan :func:`choose_fixed_plan` picked at one λ.

    Attributes:
        index: the plan's index in the library.
        rule: the rule of :data:`FIXED_PLAN_RULES` that picked it.
        cross_validated: each rule's cross-validated utility (mean over the pooled queries of
            the utility of the plan the rule picks on the other folds).
    """

    index: int
    rule: str
    cross_validated: dict[str, float]


def _pick_by_rule(rule: str, utility: torch.Tensor, cost: torch.Tensor) -> int:
    mean = utility.mean(0)
    best = int(mean.argmax())
    if rule == "best mean":
        return best
    difference = utility - utility[:, best:best + 1]
    standard_error = difference.std(0) / math.sqrt(len(utility)) if len(utility) > 1 else 0.0
    close = (difference.mean(0) >= -standard_error).nonzero().flatten()
    close_cost = cost.mean(0)[close]
    cheapest = close[close_cost <= close_cost.min()]
    return int(cheapest[mean[cheapest].argmax()])  # equal costs: the better mean


def choose_fixed_plan(train: LibraryOutcomes, validation: LibraryOutcomes, cost_lambda: float,
                      *, folds: int = 5, seed: int = 0) -> FixedPlanChoice:
    """The constant policy for a one-task library at ``cost_lambda``, chosen on the training and
    validation queries pooled.

    Picking the plan of best mean utility among ~200 plans on a few hundred queries overfits (a
    winner's curse of about 0.03 utility was measured on the protocol's pairs), most where plans
    are close and one costs far less; so each rule of :data:`FIXED_PLAN_RULES` is scored by
    ``folds``-fold cross-validation on the pooled queries, and the better rule picks the plan on
    all of them. Only plans run on every query compete.

    Raises:
        ConfigError: ``folds`` below 2, or more folds than queries.
    """
    utility = torch.cat([train.utility(torch.tensor(cost_lambda)),
                         validation.utility(torch.tensor(cost_lambda))])
    cost = torch.cat([train.cost, validation.cost])
    runnable = torch.isfinite(utility).all(0).nonzero().flatten()
    utility, cost = utility[:, runnable], cost[:, runnable]
    size = len(utility)
    if not 2 <= folds <= size:
        raise ConfigError(f"choose_fixed_plan needs 2 <= folds <= {size} queries (got {folds})")
    fold_of = torch.randperm(size, generator=torch.Generator().manual_seed(seed)) % folds
    scores = {}
    for rule in FIXED_PLAN_RULES:
        held_out = torch.zeros(size, dtype=utility.dtype)
        for fold in range(folds):
            inside = fold_of != fold
            pick = _pick_by_rule(rule, utility[inside], cost[inside])
            held_out[~inside] = utility[~inside, pick]
        scores[rule] = float(held_out.mean())
    rule = max(FIXED_PLAN_RULES, key=lambda name: scores[name])
    return FixedPlanChoice(int(runnable[_pick_by_rule(rule, utility, cost)]), rule, scores)


def gate_evidence(router: MasRouter, vocab: NodeVocab, train: LibraryOutcomes,
                  validation: LibraryOutcomes, lambdas: Sequence[float]
                  ) -> dict[float, dict[str, Any]]:
    """Per λ, for a one-task library: the router's validation utility, the validation utility
    of the fixed plan :func:`choose_fixed_plan` picks (the best constant policy the data knows),
    that plan's index and the rule that picked it (what :func:`validation_gate` decides on)."""
    routed = validation_utility(router, vocab, validation, lambdas)
    evidence: dict[float, dict[str, Any]] = {}
    for lam in lambdas:
        choice = choose_fixed_plan(train, validation, lam)
        fixed = float(validation.utility(torch.tensor(lam))[:, choice.index].mean())
        evidence[float(lam)] = {"router": routed[float(lam)], "fixed": fixed,
                                "fixed_plan": choice.index, "fixed_rule": choice.rule}
    return evidence


def validation_gate(router: MasRouter, vocab: NodeVocab, train: LibraryOutcomes,
                    validation: LibraryOutcomes, lambdas: Sequence[float]
                    ) -> dict[float, Optional[int]]:
    """Per λ: ``None`` when the router's validation utility is at least the fixed plan's
    (:func:`gate_evidence`), else that plan's index (see :class:`LibraryPolicy`)."""
    return {lam: None if e["router"] >= e["fixed"] else int(e["fixed_plan"])
            for lam, e in gate_evidence(router, vocab, train, validation, lambdas).items()}

"""Policy-gradient training of the router on utility − λ·cost.

For a batch of training items the router samples one plan per query; ``reward_fn`` executes (or
replays) the plans and returns ``(utility, cost_usd)`` per query; the reward is

    reward = utility − λ · cost_usd

with λ (:attr:`TrainerConfig.cost_lambda`) in **utility per dollar**. With utility in [0, 1]
(1 = solved) and λ = 100, an extra $0.01 on one query must raise its chance of being solved by a
whole unit to pay off, and on average an extra $0.0001 per query is worth one accuracy point
(0.01). Larger λ buys cheaper plans, λ = 0 ignores cost.

The loss is

    − mean(A · log π(plan))  − β_H · mean(entropy)  + β_CE · CE(task logits, labels)
    + β_KL · mean(KL(q(z) ‖ N(0, I)))

where ``A = reward − b`` and ``b`` is the baseline (:class:`RewardBaseline`), the task
cross-entropy is taken on the *logits* of labelled queries only, and the gradient norm is clipped.

Every query of a step is routed :attr:`TrainerConfig.samples_per_query` times and, by default,
each sampled plan is compared with the other plans sampled for the *same* query (``"query_mean"``
baseline). Whether a query gets solved depends far more on the query than on the plan (on the
replay benchmark most queries are solved by every decent plan or by none), so a baseline that does
not know the query leaves that variance in every advantage and buries the few points of accuracy
that separate plans; comparing plans on the same query removes it.

All randomness (plan sampling, the latent's noise, data order) comes from one seeded
``torch.Generator`` saved in checkpoints, so a resumed run continues exactly as an uninterrupted
one would.
"""
from __future__ import annotations

import asyncio
import inspect
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..errors import ConfigError, MasrError
from ..plan import Plan
from .checkpoint import load_checkpoint, save_checkpoint
from .controller import MasRouter, config_from_dict
from .encoder import TextEncoder
from .vocab import NodeVocab

RewardPairs = Sequence[tuple[float, float]]
RewardFn = Callable[[Sequence[Any], Sequence[Plan]], Union[RewardPairs, Awaitable[RewardPairs]]]
"""``reward_fn(items, plans) -> [(utility, cost_usd), ...]``, one pair per item, sync or async."""

BASELINES: tuple[str, ...] = ("query_mean", "task_ema", "batch_mean", "none")


class RewardError(MasrError, ValueError):
    """``reward_fn`` returned something that is not one finite ``(utility, cost_usd >= 0)``
    pair per item."""


@dataclass(frozen=True)
class TrainerConfig:
    """Hyper-parameters of :class:`Trainer` (stored in checkpoints).

    Args:
        cost_lambda: λ, utility per $ (see the module docstring). Default 100.
        lambdas: when given, each query of a step gets a λ drawn uniformly from these values
            (the router gets it as input, so one router learns the whole front); ``()`` trains
            at ``cost_lambda`` only.
        learning_rate: Adam learning rate.
        weight_decay: Adam weight decay.
        batch_size: distinct queries per step in :meth:`Trainer.fit`.
        samples_per_query: plans sampled per query and step (a step scores
            ``batch_size * samples_per_query`` plans); >= 2 for the ``"query_mean"`` baseline.
        baseline: ``"query_mean"`` (default), ``"task_ema"``, ``"batch_mean"`` or ``"none"``;
            see :class:`RewardBaseline`.
        baseline_decay: EMA decay of the ``task_ema`` baseline.
        entropy_weight: β_H, weight of the entropy bonus.
        task_ce_weight: β_CE, weight of the task cross-entropy on labelled queries.
        kl_weight: β_KL, weight of the latent's KL term.
        max_grad_norm: gradient-norm clipping threshold.
        seed: seed of the trainer's random generator.

    Raises:
        ConfigError: a value is out of range or ``baseline`` is unknown.
    """

    cost_lambda: float = 100.0
    lambdas: tuple[float, ...] = ()
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 32
    samples_per_query: int = 4
    baseline: str = "query_mean"
    baseline_decay: float = 0.9
    entropy_weight: float = 0.01
    task_ce_weight: float = 1.0
    kl_weight: float = 0.01
    max_grad_norm: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "lambdas", tuple(float(v) for v in self.lambdas))
        if any(not math.isfinite(v) or v < 0 for v in self.lambdas):
            raise ConfigError(f"TrainerConfig.lambdas must be finite and >= 0 (got {self.lambdas})")
        if self.baseline not in BASELINES:
            raise ConfigError(
                f"TrainerConfig.baseline is {self.baseline!r}; allowed: {', '.join(BASELINES)}"
            )
        non_negative = ("cost_lambda", "weight_decay", "entropy_weight", "task_ce_weight",
                        "kl_weight")
        for name in non_negative:
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"TrainerConfig.{name} must be finite and >= 0 (got {value!r})")
        for name in ("learning_rate", "max_grad_norm"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ConfigError(f"TrainerConfig.{name} must be finite and > 0 (got {value!r})")
        if not 0.0 <= self.baseline_decay < 1.0:
            raise ConfigError(
                f"TrainerConfig.baseline_decay must be in [0, 1) (got {self.baseline_decay!r})"
            )
        if self.batch_size < 1:
            raise ConfigError(f"TrainerConfig.batch_size must be >= 1 (got {self.batch_size})")
        if self.samples_per_query < 1:
            raise ConfigError(
                f"TrainerConfig.samples_per_query must be >= 1 (got {self.samples_per_query})"
            )
        if self.baseline == "query_mean" and self.samples_per_query < 2:
            raise ConfigError(
                f"the 'query_mean' baseline compares plans sampled for the same query and needs "
                f"samples_per_query >= 2 (got {self.samples_per_query}); raise it or choose "
                f"another baseline ({', '.join(b for b in BASELINES if b != 'query_mean')})"
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainerConfig":
        return config_from_dict(cls, data)


class RewardBaseline:
    """Variance-reduction baseline ``b`` for the advantage ``reward − b``.

    * ``"query_mean"``: the mean reward of the *other* plans sampled for the same query in the
      step (keys identify the query; leave-one-out, so unbiased). It removes the variance due to
      query difficulty, the largest share by far; a key seen once gets advantage 0 (no
      comparison, no signal).
    * ``"task_ema"``: a bias-corrected exponential moving average of past rewards per task (the
      label, or the classifier's most probable task for unlabelled queries). Rewards differ most
      *between* tasks (a cheap model solves most arithmetic, few competition problems), so a
      per-task baseline removes the largest share of variance. It is built from earlier batches
      only and keyed by a function of the query, never by the sampled plan, so it adds no bias;
      it works at any batch size.
    * ``"batch_mean"``: the mean reward of the *other* queries of the batch (leave-one-out, so
      unbiased); no state, but no variance reduction for a batch of one.
    * ``"none"``: ``b = 0`` (plain REINFORCE).

    Args:
        kind: one of :data:`BASELINES`.
        decay: EMA decay for ``"task_ema"``.
    """

    def __init__(self, kind: str = "query_mean", decay: float = 0.9) -> None:
        if kind not in BASELINES:
            raise ConfigError(f"unknown baseline {kind!r}; allowed: {', '.join(BASELINES)}")
        self.kind = kind
        self.decay = decay
        self._ema: dict[str, float] = {}
        self._updates: dict[str, int] = {}

    def value(self, key: str) -> float:
        """Current EMA baseline of ``key`` (0 before any reward was seen for it)."""
        updates = self._updates.get(key, 0)
        if not updates:
            return 0.0
        return self._ema[key] / (1.0 - self.decay**updates)

    def advantages(self, rewards: torch.Tensor, keys: Sequence[str]) -> torch.Tensor:
        """``[B]`` advantages for ``[B]`` rewards, then fold the rewards into the baseline."""
        if self.kind == "none":
            return rewards
        if self.kind == "query_mean":
            return rewards - _leave_one_out_means(rewards, keys)
        if self.kind == "batch_mean":
            count = rewards.numel()
            if count == 1:
                return rewards
            return rewards - (rewards.sum() - rewards) / (count - 1)
        baseline = torch.tensor([self.value(key) for key in keys], dtype=rewards.dtype)
        by_key: dict[str, list[float]] = {}
        for key, reward in zip(keys, rewards.tolist()):
            by_key.setdefault(key, []).append(reward)
        for key, values in by_key.items():
            mean = sum(values) / len(values)
            self._ema[key] = self.decay * self._ema.get(key, 0.0) + (1.0 - self.decay) * mean
            self._updates[key] = self._updates.get(key, 0) + 1
        return rewards - baseline

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "decay": self.decay, "ema": dict(self._ema),
                "updates": dict(self._updates)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.kind, self.decay = state["kind"], state["decay"]
        self._ema = dict(state["ema"])
        self._updates = dict(state["updates"])


@dataclass(frozen=True)
class StepStats:
    """What one training step measured (batch means unless stated)."""

    step: int
    loss: float
    policy_loss: float
    reward: float
    utility: float
    cost_usd: float
    advantage_std: float
    entropy: float
    kl: float
    task_ce: float
    grad_norm: float
    mean_agents: float


def default_task_label(item: Any) -> Optional[str]:
    """The item's ``domain`` (a benchmark :class:`~masr_graph.benchmarks.tasks.datasets.Example`
    names its task family there), else its ``task``, as attribute or key; ``None`` if neither."""
    for name in ("domain", "task"):
        value = item.get(name) if isinstance(item, Mapping) else getattr(item, name, None)
        if value is not None:
            return value
    return None


def default_query_text(item: Any) -> str:
    """The item's ``query`` attribute or key."""
    return item["query"] if isinstance(item, Mapping) else item.query


class Trainer:
    """REINFORCE trainer of a :class:`MasRouter`.

    Args:
        router: the router to train (trained in place).
        vocab: the vocabulary plans are drawn from.
        reward_fn: ``reward_fn(items, plans) -> [(utility, cost_usd), ...]``, sync or async.
        config: hyper-parameters; default :class:`TrainerConfig` ``()``.
        query_text: maps an item to its query text; default reads ``item.query`` /
            ``item["query"]``.
        task_label: maps an item to the name of its task in ``vocab`` or ``None``; default
            :func:`default_task_label` (``domain``, else ``task``).

    The router's initial weights come from the global torch seed at its construction; seed
    with ``torch.manual_seed`` before building it for a fully reproducible run.
    """

    def __init__(
        self,
        router: MasRouter,
        vocab: NodeVocab,
        reward_fn: RewardFn,
        config: Optional[TrainerConfig] = None,
        *,
        query_text: Callable[[Any], str] = default_query_text,
        task_label: Callable[[Any], Optional[str]] = default_task_label,
    ) -> None:
        self.router = router
        self.vocab = vocab
        self.reward_fn = reward_fn
        self.config = config or TrainerConfig()
        self.query_text = query_text
        self.task_label = task_label
        self.optimizer = torch.optim.Adam(
            router.parameters(), lr=self.config.learning_rate,
            weight_decay=self.config.weight_decay,
        )
        self.baseline = RewardBaseline(self.config.baseline, self.config.baseline_decay)
        self.generator = torch.Generator().manual_seed(self.config.seed)
        self.step_count = 0
        self._order: list[int] = []
        self._cursor = 0

    # ---- one step -------------------------------------------------------------------------
    async def astep(self, items: Sequence[Any]) -> StepStats:
        """Sample ``samples_per_query`` plans for each of ``items``, get their rewards and update
        the router once (the returned means are over all sampled plans)."""
        if not items:
            raise ConfigError("a training step needs at least one item (got none)")
        c = self.config
        queries = [position for position in range(len(items)) for _ in range(c.samples_per_query)]
        items = [items[position] for position in queries]
        labels = [self.task_label(item) for item in items]
        if c.lambdas:  # one λ per query, shared by its samples (they are compared with each other)
            drawn = torch.randint(len(c.lambdas), (len(queries) // c.samples_per_query,),
                                  generator=self.generator)
            lambdas = torch.tensor(c.lambdas)[drawn].repeat_interleave(c.samples_per_query)
        else:
            lambdas = torch.full((len(items),), c.cost_lambda)
        self.router.train()
        out = self.router(
            [self.query_text(item) for item in items], self.vocab, cost_lambda=lambdas,
            task_labels=labels, generator=self.generator,
        )
        pairs = self.reward_fn(items, out.plans)
        if inspect.isawaitable(pairs):
            pairs = await pairs
        utility, cost = _check_rewards(pairs, len(items))
        reward = utility - lambdas * cost

        if c.baseline == "query_mean":
            keys = [str(position) for position in queries]
        else:
            predicted = out.task_logits.argmax(-1).tolist()
            keys = [
                label if label is not None else self.vocab.tasks[index].name
                for label, index in zip(labels, predicted)
            ]
        advantage = self.baseline.advantages(reward, keys)
        policy_loss = -(advantage * out.log_prob).mean()
        labelled = [i for i, label in enumerate(labels) if label is not None]
        task_ce = (
            F.cross_entropy(
                out.task_logits[labelled],
                torch.tensor([self.vocab.index("tasks", labels[i]) for i in labelled]),
            )
            if labelled else torch.zeros(())
        )
        loss = (
            policy_loss - c.entropy_weight * out.entropy.mean()
            + c.task_ce_weight * task_ce + c.kl_weight * out.kl.mean()
        )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.router.parameters(), c.max_grad_norm)
        self.optimizer.step()
        self.step_count += 1
        return StepStats(
            step=self.step_count,
            loss=float(loss.detach()),
            policy_loss=float(policy_loss.detach()),
            reward=float(reward.mean()),
            utility=float(utility.mean()),
            cost_usd=float(cost.mean()),
            advantage_std=float(advantage.std()) if advantage.numel() > 1 else 0.0,
            entropy=float(out.entropy.detach().mean()),
            kl=float(out.kl.detach().mean()),
            task_ce=float(task_ce.detach()),
            grad_norm=float(grad_norm),
            mean_agents=float(out.choices["count"].float().mean()),
        )

    def step(self, items: Sequence[Any]) -> StepStats:
        """Synchronous :meth:`astep` (an async ``reward_fn`` runs in a fresh event loop; from
        async code call ``await trainer.astep(items)`` instead)."""
        return asyncio.run(self.astep(items))

    # ---- loops ----------------------------------------------------------------------------
    def _next_batch(self, items: Sequence[Any]) -> list[Any]:
        batch: list[Any] = []
        while len(batch) < min(self.config.batch_size, len(items)):
            if self._cursor >= len(self._order) or len(self._order) != len(items):
                self._order = torch.randperm(len(items), generator=self.generator).tolist()
                self._cursor = 0
            batch.append(items[self._order[self._cursor]])
            self._cursor += 1
        return batch

    async def afit(
        self,
        items: Sequence[Any],
        steps: int,
        *,
        checkpoint_path: Optional[Union[str, Path]] = None,
        checkpoint_every: int = 0,
        progress: bool = False,
    ) -> list[StepStats]:
        """Run ``steps`` steps on shuffled batches of ``items`` (reshuffled every epoch).

        Args:
            items: training items; every item must give a query text (see ``query_text``).
            steps: number of optimisation steps.
            checkpoint_path: where :meth:`save` writes; also written after the last step.
            checkpoint_every: save every that many steps (0: only at the end).
            progress: show a tqdm progress bar.
        """
        if not items:
            raise ConfigError("fit needs at least one training item (got none)")
        if steps < 0 or checkpoint_every < 0:
            raise ConfigError(
                f"steps and checkpoint_every must be >= 0 (got {steps}, {checkpoint_every})"
            )
        history = []
        for _ in tqdm(range(steps), disable=not progress, desc="router training"):
            stats = await self.astep(self._next_batch(items))
            history.append(stats)
            if checkpoint_path and checkpoint_every and stats.step % checkpoint_every == 0:
                self.save(checkpoint_path)
        if checkpoint_path:
            self.save(checkpoint_path)
        return history

    def fit(self, items: Sequence[Any], steps: int, **kwargs: Any) -> list[StepStats]:
        """Synchronous :meth:`afit`."""
        return asyncio.run(self.afit(items, steps, **kwargs))

    # ---- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: config, optimizer, step, generator, baseline, data
        order."""
        return {
            "config": asdict(self.config),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step_count,
            "generator": self.generator.get_state(),
            "baseline": self.baseline.state_dict(),
            "order": list(self._order),
            "cursor": self._cursor,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.step_count = int(state["step"])
        self.generator.set_state(state["generator"])
        self.baseline.load_state_dict(state["baseline"])
        self._order = list(state["order"])
        self._cursor = int(state["cursor"])

    def save(self, path: Union[str, Path]) -> Path:
        """Checkpoint router weights, config, vocabulary and trainer state."""
        return save_checkpoint(path, self.router, self.vocab, trainer_state=self.state_dict())

    @classmethod
    def resume(
        cls,
        path: Union[str, Path],
        reward_fn: RewardFn,
        *,
        encoder: Optional[TextEncoder] = None,
        query_text: Callable[[Any], str] = default_query_text,
        task_label: Callable[[Any], Optional[str]] = default_task_label,
    ) -> "Trainer":
        """A trainer continuing the run saved at ``path`` exactly where it stopped.

        Raises:
            ConfigError: the checkpoint holds no trainer state (a router-only checkpoint).
        """
        checkpoint = load_checkpoint(path, encoder=encoder)
        if checkpoint.trainer_state is None:
            raise ConfigError(f"checkpoint {path} holds no trainer state; it cannot be resumed")
        state = checkpoint.trainer_state
        trainer = cls(
            checkpoint.router, checkpoint.vocab, reward_fn,
            TrainerConfig.from_dict(state["config"]),
            query_text=query_text, task_label=task_label,
        )
        trainer.load_state_dict(state)
        return trainer


def _leave_one_out_means(rewards: torch.Tensor, keys: Sequence[str]) -> torch.Tensor:
    """``[B]``: for each reward, the mean of the other rewards with the same key (the reward
    itself where its key occurs once, so that its advantage is 0)."""
    index = {key: i for i, key in enumerate(dict.fromkeys(keys))}
    group = torch.tensor([index[key] for key in keys])
    sums = torch.zeros(len(index), dtype=rewards.dtype).index_add_(0, group, rewards)
    counts = torch.bincount(group, minlength=len(index)).to(rewards.dtype)
    others = (counts[group] - 1).clamp_min(1)
    return torch.where(counts[group] > 1, (sums[group] - rewards) / others, rewards)


def _check_rewards(pairs: Any, expected: int) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        pairs = list(pairs)
    except TypeError:
        raise RewardError(
            f"reward_fn must return a list of (utility, cost_usd) pairs "
            f"(got {type(pairs).__name__})"
        ) from None
    if len(pairs) != expected:
        raise RewardError(f"reward_fn returned {len(pairs)} pairs for {expected} items")
    utilities, costs = [], []
    for i, pair in enumerate(pairs):
        try:
            utility, cost = (float(v) for v in pair)
        except (TypeError, ValueError):
            raise RewardError(
                f"reward_fn result {i} must be a (utility, cost_usd) pair of numbers (got {pair!r})"
            ) from None
        if not math.isfinite(utility) or not math.isfinite(cost) or cost < 0:
            raise RewardError(
                f"reward_fn result {i} is {pair!r}: utility must be finite and cost_usd finite "
                f"and >= 0"
            )
        utilities.append(utility)
        costs.append(cost)
    return torch.tensor(utilities), torch.tensor(costs)

"""Per-query success of every library plan, predicted from the query's text embedding.

:class:`PlanOutcomeModel` fits one L2-regularised logistic regression per plan of a library on
executed outcomes (did plan ``p`` solve query ``q``), and keeps each plan's mean cost. It then
routes per query at any λ, ``argmax_p  P̂(p solves q) − λ · cost_p``: the decision is exact in λ
(no λ grid), and with strong regularisation every prediction falls back to the plan's base rate,
so the model routes to the best fixed plan wherever the text carries no signal.

It is the per-query candidate of MasRouter's fallback (:func:`.library.choose_fallbacks`): the
graph router learns a *policy* from one noisy outcome per (query, plan), where these
regressions learn each plan's *success probability* from all of them — far less variance on
the few hundred training queries a protocol pair has, which is where the graph router's own
per-query plans lost to fixed plans.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..errors import ConfigError

BASE_RATE_FLOOR = 1e-3
"""Base rates are clipped to ``[floor, 1 − floor]`` for the biases' starting point (a plan that
solved every training query must still start at a finite logit)."""


class PlanOutcomeModel:
    """Success probabilities of ``P`` library plans for a query embedding.

    Args:
        weight: ``[P, D]`` logistic-regression weights, one row per plan.
        bias: ``[P]`` intercepts.
        mean_cost: ``[P]`` mean $ per query of each plan on the training queries.
        runnable: ``[P]`` bool, False for plans that were not run on every training query
            (never chosen).
        regularisation: the inverse L2 strength ``C`` it was fitted with (as in
            scikit-learn's ``LogisticRegression``).

    Raises:
        ConfigError: shapes that do not agree.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, mean_cost: torch.Tensor,
                 runnable: torch.Tensor, regularisation: float):
        plans = weight.size(0)
        if weight.dim() != 2 or any(t.shape != (plans,) for t in (bias, mean_cost, runnable)):
            raise ConfigError(f"PlanOutcomeModel: weight {list(weight.shape)}, bias "
                              f"{list(bias.shape)}, mean_cost {list(mean_cost.shape)} and "
                              f"runnable {list(runnable.shape)} do not describe one set of plans")
        self.weight, self.bias = weight.float(), bias.float()
        self.mean_cost, self.runnable = mean_cost.float(), runnable.bool()
        self.regularisation = float(regularisation)

    @classmethod
    def fit(cls, embeddings: torch.Tensor, correct: torch.Tensor, cost: torch.Tensor, *,
            valid: Optional[torch.Tensor] = None, regularisation: float = 1.0,
            max_iterations: int = 200) -> "PlanOutcomeModel":
        """Fit on ``N`` queries' ``[N, D]`` embeddings and the ``[N, P]`` outcomes and costs of
        the library on them (``valid``: ``[N, P]``, False where a plan was not run).

        Minimises, per plan, ``C · Σ_n logloss + ½‖w‖²`` (the intercept unpenalised), all plans
        in one L-BFGS run (their problems are independent).

        Raises:
            ConfigError: shapes that do not agree, or ``regularisation`` not > 0.
        """
        if not regularisation > 0:
            raise ConfigError(f"regularisation must be > 0 (got {regularisation})")
        size, plans = correct.shape
        if embeddings.dim() != 2 or embeddings.size(0) != size or cost.shape != correct.shape:
            raise ConfigError(f"PlanOutcomeModel.fit: {list(embeddings.shape)} embeddings for "
                              f"{list(correct.shape)} outcomes and {list(cost.shape)} costs")
        valid = torch.ones_like(correct, dtype=torch.bool) if valid is None else valid.bool()
        x, y, seen = embeddings.double(), correct.double(), valid.double()
        counts = seen.sum(0).clamp_min(1.0)
        base_rate = ((y * seen).sum(0) / counts).clamp(BASE_RATE_FLOOR, 1 - BASE_RATE_FLOOR)
        weight = torch.zeros(plans, x.size(1), dtype=torch.float64, requires_grad=True)
        bias = torch.logit(base_rate).clone().requires_grad_(True)
        optimizer = torch.optim.LBFGS([weight, bias], max_iter=max_iterations,
                                      line_search_fn="strong_wolfe")
        scale = regularisation * size  # the objective divided by C·N, for conditioning

        def objective() -> torch.Tensor:
            optimizer.zero_grad()
            logits = x @ weight.T + bias
            loss = (F.binary_cross_entropy_with_logits(logits, y, reduction="none")
                    * seen).sum() / size + (weight ** 2).sum() / (2 * scale)
            loss.backward()
            return loss

        optimizer.step(objective)
        mean_cost = (cost.double() * seen).sum(0) / counts
        return cls(weight.detach(), bias.detach(), mean_cost, valid.all(0), regularisation)

    def success(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``[B, P]`` predicted probability that each plan solves each query."""
        return torch.sigmoid(embeddings.float() @ self.weight.T + self.bias)

    def choose(self, embeddings: torch.Tensor, cost_lambda: float) -> torch.Tensor:
        """``[B]`` index of the plan of highest predicted utility at ``cost_lambda``."""
        if not (math.isfinite(cost_lambda) and cost_lambda >= 0):
            raise ConfigError(f"cost_lambda must be finite and >= 0 (got {cost_lambda})")
        utility = self.success(embeddings) - cost_lambda * self.mean_cost
        return utility.masked_fill(~self.runnable, -math.inf).argmax(-1)

    def subset(self, plans: Sequence[int]) -> "PlanOutcomeModel":
        """The model of the plans at ``plans`` only (in that order)."""
        index = torch.as_tensor(list(plans), dtype=torch.long)
        return PlanOutcomeModel(self.weight[index], self.bias[index], self.mean_cost[index],
                                self.runnable[index], self.regularisation)

    def to_dict(self) -> dict:
        """Tensors and plain data only (what a checkpoint stores)."""
        return {"weight": self.weight, "bias": self.bias, "mean_cost": self.mean_cost,
                "runnable": self.runnable, "regularisation": self.regularisation}

    @classmethod
    def from_dict(cls, data: dict) -> "PlanOutcomeModel":
        try:
            return cls(data["weight"], data["bias"], data["mean_cost"], data["runnable"],
                       data["regularisation"])
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"a stored plan outcome model lacks {exc}") from exc

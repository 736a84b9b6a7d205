"""Single-agent LLM routers on query embeddings: the baselines the routing literature compares with.

MasRouter picks a whole team per query; the field's usual competitor picks *one* LLM per query. To
know what the team buys, MasRouter must beat the best of those single-agent routers at the same
cost preference. Every router here works the same way, so they differ only in how they estimate
success:

1. predict ``P̂(q, l)``, the probability that LLM ``l`` solves query ``q``, from the query's
   sentence embedding (:meth:`EmbeddingLLMRouter.success_probabilities`);
2. pick ``argmax_l P̂(q, l) − λ · c_l`` (:meth:`EmbeddingLLMRouter.choose`), where ``c_l`` is the
   LLM's mean $ per query on the training queries and ``λ`` the utility per $ — the same trade-off
   as MasRouter's reward. Ties go to the lowest LLM index; ``λ = inf`` picks the cheapest LLM.

The estimators:

- :class:`KNNRouter` — mean correctness of the ``k`` cosine-nearest training queries, shrunk toward
  the LLM's overall training accuracy (the kNN routers of RouterBench / EmbedLLM);
- :class:`LogisticRouter` — one logistic regression per LLM (the LLMRouter / RouterDC baseline);
- :class:`MLPRouter` — one small multi-label MLP trained with binary cross-entropy;
- :class:`MFRouter` — a matrix-factorisation scorer in the spirit of RouteLLM's MF router
  (Ong et al., "RouteLLM: Learning to Route LLMs with Preference Data", 2024): latent LLM
  vectors meet a projection of the query embedding.

Inputs are plain arrays — ``embeddings [N, D]``, ``correct [N, L]`` of 0/1, ``cost [N, L]`` in $ —
so the routers do not depend on the runtime, the replay backend or an embedding model.
"""
from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from masr_graph.errors import ConfigError

Outcomes = tuple[np.ndarray, np.ndarray, np.ndarray]


class EmbeddingLLMRouter(ABC):
    """Common interface of the single-agent routers: fit, estimate success, choose one LLM.

    Subclasses implement :meth:`_fit` and :meth:`_predict`; this class validates every input
    (shapes, 0/1 labels, non-negative finite costs) once, so the estimators only see clean data.

    Attributes:
        name (str): the router's display name, e.g. ``"kNN router"``.
        llms (tuple[str, ...]): the pool, in column order of ``correct`` and ``cost``; empty before
            :meth:`fit`.
        llm_costs (np.ndarray): ``[L]`` mean $ per query of each LLM on the training queries.
    """

    name: str = ""

    def __init__(self) -> None:
        self.llms: tuple[str, ...] = ()
        self.llm_costs: np.ndarray = np.zeros(0)
        self._dim = 0

    def fit(self, embeddings: np.ndarray, correct: np.ndarray, cost: np.ndarray,
            llms: Sequence[str], *, validation: Outcomes | None = None,
            seed: int = 0) -> EmbeddingLLMRouter:
        """Learn ``P̂`` from training outcomes; return ``self``.

        Args:
            embeddings: ``[N, D]`` sentence embeddings of the training queries.
            correct: ``[N, L]`` 1 where LLM ``l`` solved query ``n``, else 0.
            cost: ``[N, L]`` $ that LLM ``l`` spent (or would have spent) on query ``n``.
            llms: the ``L`` LLM names, in column order.
            validation: ``(embeddings [V, D], correct [V, L], cost [V, L])`` of held-out queries,
                used only for the router's own hyper-parameters (see each class); its costs are
                checked but unused, since every router here tunes prediction quality, which does
                not depend on ``λ``.
            seed: seeds every random choice, so two fits with the same seed are identical.

        Raises:
            ConfigError: a shape does not match, a label is not 0/1, a cost is negative or not
                finite, or an LLM name repeats.
        """
        x, y, c = _check_outcomes(embeddings, correct, cost, what="training")
        names = tuple(llms)
        if len(names) != y.shape[1]:
            raise ConfigError(f"llms has {len(names)} names but correct has shape {y.shape}: "
                              f"one name per column is needed")
        if len(set(names)) != len(names):
            repeated = sorted({n for n in names if names.count(n) > 1})
            raise ConfigError(f"LLM names must be unique; repeated: {repeated}")
        checked_validation = None
        if validation is not None:
            if len(validation) != 3:
                raise ConfigError(f"validation must be (embeddings, correct, cost); got a "
                                  f"{len(validation)}-tuple")
            vx, vy, _ = _check_outcomes(*validation, what="validation")
            if vx.shape[1] != x.shape[1] or vy.shape[1] != y.shape[1]:
                raise ConfigError(
                    f"validation shapes embeddings {vx.shape}, correct {vy.shape} do not match "
                    f"training shapes embeddings {x.shape}, correct {y.shape} (D and L must agree)")
            checked_validation = (vx, vy)
        self.llms = names
        self.llm_costs = c.mean(axis=0)
        self._dim = x.shape[1]
        self._fit(x, y, checked_validation, seed)
        return self

    def success_probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        """``[M, L]`` estimated probability that each LLM (``self.llms`` order) solves each query.

        Args:
            embeddings: ``[M, D]`` sentence embeddings, ``D`` as in training.
        """
        if not self.llms:
            raise ConfigError(f"{self.name}: success_probabilities called before fit")
        x = _as_matrix("embeddings", embeddings)
        if x.shape[1] != self._dim:
            raise ConfigError(f"{self.name}: embeddings have shape {x.shape} but the router was "
                              f"fitted on D = {self._dim}")
        return np.clip(self._predict(x), 0.0, 1.0)

    def choose(self, embeddings: np.ndarray, cost_lambda: float) -> np.ndarray:
        """``[M]`` index into ``self.llms`` of the LLM picked for each query.

        Picks ``argmax_l P̂(q, l) − λ · c_l``; ties go to the lowest index, so ``λ = 0`` with equal
        estimates picks the first LLM, and ``λ = inf`` picks the cheapest.

        Args:
            embeddings: ``[M, D]`` sentence embeddings.
            cost_lambda: utility per $, ``≥ 0`` (``inf`` allowed).
        """
        if not (cost_lambda >= 0.0):  # also rejects NaN
            raise ConfigError(f"cost_lambda must be >= 0 (utility per $); got {cost_lambda!r}")
        probabilities = self.success_probabilities(embeddings)
        if math.isinf(cost_lambda):
            cheapest = int(np.argmin(self.llm_costs))
            return np.full(probabilities.shape[0], cheapest, dtype=np.int64)
        utility = probabilities - cost_lambda * self.llm_costs[None, :]
        return utility.argmax(axis=1).astype(np.int64)

    @abstractmethod
    def _fit(self, x: np.ndarray, y: np.ndarray,
             validation: tuple[np.ndarray, np.ndarray] | None, seed: int) -> None:
        """Fit on clean ``x [N, D]``, ``y [N, L]`` (float 0/1) and optional ``(vx, vy)``."""

    @abstractmethod
    def _predict(self, x: np.ndarray) -> np.ndarray:
        """``[M, L]`` success probabilities for clean ``x [M, D]``."""


class KNNRouter(EmbeddingLLMRouter):
    """``P̂`` from the ``k`` cosine-nearest training queries, shrunk toward the LLM's accuracy.

    ``P̂(q, l) = (Σ_{j ∈ N_k(q)} y_jl + α · ȳ_l) / (k + α)``, where ``N_k(q)`` are the ``k``
    training queries nearest to ``q`` by cosine distance (scikit-learn ``NearestNeighbors``,
    brute force), ``ȳ_l`` the LLM's training accuracy and ``α`` the prior strength: a pseudo-count
    that matters for small ``k`` and fades for large ``k``. ``k`` larger than the training set is
    clipped to it (``P̂`` then equals the shrunk training accuracy for every query).

    Validation: ``k`` is the candidate with the lowest Brier score (mean squared error of ``P̂``
    against the 0/1 outcomes, over all validation queries and LLMs); ties go to the smaller
    ``k``. Without validation, ``default_k`` is used. The chosen value is ``self.k_``.

    Args:
        k_candidates (Sequence[int]): values of ``k`` tried on validation.
            (default: ``(5, 10, 20, 50, 100)``)
        default_k (int): ``k`` without validation. (default: ``20``)
        prior_strength (float): ``α ≥ 0``; 0 turns shrinkage off. (default: ``2.0``)
    """

    name = "kNN router"

    def __init__(self, k_candidates: Sequence[int] = (5, 10, 20, 50, 100), *, default_k: int = 20,
                 prior_strength: float = 2.0) -> None:
        super().__init__()
        candidates = tuple(k_candidates)
        if not candidates or any(int(k) != k or k < 1 for k in candidates):
            raise ConfigError(f"k_candidates must be non-empty positive integers; got {candidates}")
        if int(default_k) != default_k or default_k < 1:
            raise ConfigError(f"default_k must be a positive integer; got {default_k!r}")
        if not (prior_strength >= 0.0) or math.isinf(prior_strength):
            raise ConfigError(f"prior_strength must be finite and >= 0; got {prior_strength!r}")
        self.k_candidates = tuple(sorted({int(k) for k in candidates}))
        self.default_k = int(default_k)
        self.prior_strength = float(prior_strength)
        self.k_ = 0

    def _fit(self, x: np.ndarray, y: np.ndarray,
             validation: tuple[np.ndarray, np.ndarray] | None, seed: int) -> None:
        from sklearn.neighbors import NearestNeighbors

        self._labels = y
        self._prior = y.mean(axis=0)
        self._index = NearestNeighbors(metric="cosine", algorithm="brute").fit(x)
        n = x.shape[0]
        if validation is None:
            self.k_ = min(self.default_k, n)
            return
        vx, vy = validation
        candidates = sorted({min(k, n) for k in self.k_candidates})
        # One neighbour query for the largest k serves every candidate (neighbours come sorted).
        neighbours = self._neighbours(vx, candidates[-1])
        scores = [float(np.mean((self._estimate(neighbours[:, :k]) - vy) ** 2))
                  for k in candidates]
        self.k_ = candidates[int(np.argmin(scores))]

    def _predict(self, x: np.ndarray) -> np.ndarray:
        return self._estimate(self._neighbours(x, self.k_))

    def _neighbours(self, x: np.ndarray, k: int) -> np.ndarray:
        """``[M, k]`` training indices, nearest first."""
        return self._index.kneighbors(x, n_neighbors=k, return_distance=False)

    def _estimate(self, neighbours: np.ndarray) -> np.ndarray:
        k = neighbours.shape[1]
        hits = self._labels[neighbours].sum(axis=1)  # [M, L]
        return (hits + self.prior_strength * self._prior[None, :]) / (k + self.prior_strength)


class LogisticRouter(EmbeddingLLMRouter):
    """One L2-regularised logistic regression per LLM on standardised query embeddings.

    An LLM that is always right (or always wrong) on the training queries gets the constant
    estimate 1 (or 0): a classifier cannot be fitted on one class.

    Validation: for each LLM, the inverse regularisation strength ``C`` is the candidate with the
    lowest validation Brier score of that LLM's column (ties: the smaller ``C``, i.e. the stronger
    regularisation). Without validation, ``default_c`` is used. The choices are ``self.c_``
    (``None`` for a constant LLM).

    Args:
        c_candidates (Sequence[float]): values of ``C`` tried on validation. On standardised
            384-d MiniLM embeddings of a few thousand queries the best ``C`` is around ``1e-3``;
            larger values overfit and converge slowly. (default: ``(1e-4, 1e-3, 1e-2, 0.1)``)
        default_c (float): ``C`` without validation. (default: ``1e-3``)
    """

    name = "logistic router"

    def __init__(self, c_candidates: Sequence[float] = (1e-4, 1e-3, 1e-2, 1e-1), *,
                 default_c: float = 1e-3) -> None:
        super().__init__()
        candidates = tuple(c_candidates)
        if not candidates or any(not (c > 0.0) or math.isinf(c) for c in candidates):
            raise ConfigError(f"c_candidates must be non-empty positive finite numbers; "
                              f"got {candidates}")
        if not (default_c > 0.0) or math.isinf(default_c):
            raise ConfigError(f"default_c must be positive and finite; got {default_c!r}")
        self.c_candidates = tuple(sorted({float(c) for c in candidates}))
        self.default_c = float(default_c)
        self.c_: list[float | None] = []

    def _fit(self, x: np.ndarray, y: np.ndarray,
             validation: tuple[np.ndarray, np.ndarray] | None, seed: int) -> None:
        from sklearn.linear_model import LogisticRegression

        self._scaler = _Standardiser(x)
        z = self._scaler(x)
        vz = None if validation is None else self._scaler(validation[0])
        # Per LLM: a fitted classifier, or a float for an LLM with one class on train.
        self._models: list[object] = []
        self.c_ = []
        for column in range(y.shape[1]):
            labels = y[:, column].astype(int)
            if labels.min() == labels.max():
                self._models.append(float(labels[0]))
                self.c_.append(None)
                continue
            candidates = self.c_candidates if validation is not None else (self.default_c,)
            # Along the path of increasing C each fit starts from the previous solution (warm
            # start), which cuts lbfgs iterations several-fold on 384-d embeddings.
            model = LogisticRegression(max_iter=2000, warm_start=True, random_state=seed)
            fits = [copy.deepcopy(model.set_params(C=c).fit(z, labels)) for c in candidates]
            if validation is None:
                best = 0
            else:
                scores = [np.mean((fit.predict_proba(vz)[:, 1] - validation[1][:, column]) ** 2)
                          for fit in fits]
                best = int(np.argmin(scores))
            best_model, best_c = fits[best], candidates[best]
            self._models.append(best_model)
            self.c_.append(best_c)

    def _predict(self, x: np.ndarray) -> np.ndarray:
        z = self._scaler(x)
        columns = [np.full(x.shape[0], model) if isinstance(model, float)
                   else model.predict_proba(z)[:, 1] for model in self._models]
        return np.stack(columns, axis=1)


class _TorchRouter(EmbeddingLLMRouter):
    """Shared training of the torch routers: standardised inputs, full-batch Adam on BCE of the
    ``[N, L]`` logits, early stopping on validation BCE with the best epoch's weights restored.

    Training runs inside :func:`torch.random.fork_rng`, seeded by ``fit``'s ``seed``, so it is
    deterministic and leaves the caller's global torch RNG untouched.
    """

    def __init__(self, *, lr: float, weight_decay: float, max_epochs: int, patience: int,
                 epochs_without_validation: int) -> None:
        super().__init__()
        for label, value in (("max_epochs", max_epochs), ("patience", patience),
                             ("epochs_without_validation", epochs_without_validation)):
            if int(value) != value or value < 1:
                raise ConfigError(f"{label} must be a positive integer; got {value!r}")
        if not (lr > 0.0) or math.isinf(lr):
            raise ConfigError(f"lr must be positive and finite; got {lr!r}")
        if not (weight_decay >= 0.0) or math.isinf(weight_decay):
            raise ConfigError(f"weight_decay must be finite and >= 0; got {weight_decay!r}")
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.max_epochs = int(max_epochs)
        self.patience = int(patience)
        self.epochs_without_validation = int(epochs_without_validation)
        self.epochs_ = 0

    @abstractmethod
    def _build(self, dim: int, base_logits: Tensor) -> nn.Module:
        """A module mapping ``[N, dim]`` standardised embeddings to ``[N, L]`` logits, whose
        per-LLM output bias starts at ``base_logits [L]``."""

    def _train_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """The training objective; validation always uses plain BCE."""
        return nn.functional.binary_cross_entropy_with_logits(logits, labels)

    def _fit(self, x: np.ndarray, y: np.ndarray,
             validation: tuple[np.ndarray, np.ndarray] | None, seed: int) -> None:
        self._scaler = _Standardiser(x)
        inputs = torch.as_tensor(self._scaler(x), dtype=torch.float32)
        labels = torch.as_tensor(y, dtype=torch.float32)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            # Starting each LLM's bias at the logit of its training accuracy: the model starts
            # from the base rates and the embedding only has to explain deviations from them,
            # which early stopping would otherwise cut short.
            accuracy = labels.mean(dim=0).clamp(1e-3, 1.0 - 1e-3)
            self._model = self._build(x.shape[1], torch.logit(accuracy))
            held_out = None if validation is None else (
                torch.as_tensor(self._scaler(validation[0]), dtype=torch.float32),
                torch.as_tensor(validation[1], dtype=torch.float32))
            self.epochs_ = _train_full_batch(
                self._model, self._train_loss, inputs, labels, held_out, lr=self.lr,
                weight_decay=self.weight_decay, patience=self.patience,
                max_epochs=self.epochs_without_validation if held_out is None else self.max_epochs)
        self._model.eval()

    def _predict(self, x: np.ndarray) -> np.ndarray:
        inputs = torch.as_tensor(self._scaler(x), dtype=torch.float32)
        with torch.no_grad():
            return torch.sigmoid(self._model(inputs)).double().numpy()


class MLPRouter(_TorchRouter):
    """One multi-label MLP (``D → hidden → ReLU → L`` logits) trained with binary cross-entropy.

    Sharing the hidden layer across LLMs lets LLMs with few positives borrow the query features
    the others learned. Inputs are standardised with the training mean and standard deviation.

    Validation: early stopping — training stops after ``patience`` epochs without a lower
    validation BCE and keeps the weights of the best epoch (``self.epochs_``). Without validation
    it trains exactly ``epochs_without_validation`` epochs.

    Args:
        hidden_dim (int): hidden units. (default: ``64``)
        lr (float): Adam learning rate. (default: ``1e-3``)
        weight_decay (float): Adam weight decay (L2), the main regulariser besides early
            stopping. (default: ``1e-2``)
        max_epochs (int): cap on full-batch epochs with validation. (default: ``500``)
        patience (int): early-stopping patience in epochs. (default: ``30``)
        epochs_without_validation (int): epochs when no validation is given. (default: ``100``)
    """

    name = "MLP router"

    def __init__(self, hidden_dim: int = 64, *, lr: float = 1e-3, weight_decay: float = 1e-2,
                 max_epochs: int = 500, patience: int = 30,
                 epochs_without_validation: int = 100) -> None:
        super().__init__(lr=lr, weight_decay=weight_decay, max_epochs=max_epochs,
                         patience=patience, epochs_without_validation=epochs_without_validation)
        if int(hidden_dim) != hidden_dim or hidden_dim < 1:
            raise ConfigError(f"hidden_dim must be a positive integer; got {hidden_dim!r}")
        self.hidden_dim = int(hidden_dim)

    def _build(self, dim: int, base_logits: Tensor) -> nn.Module:
        model = nn.Sequential(nn.Linear(dim, self.hidden_dim), nn.ReLU(),
                              nn.Linear(self.hidden_dim, base_logits.numel()))
        with torch.no_grad():
            model[-1].bias.copy_(base_logits)
        return model


class MFRouter(_TorchRouter):
    """Matrix-factorisation scorer in the spirit of RouteLLM's MF router.

    ``δ(m, q) = w₂ᵀ (v̂_m ⊙ (W₁ e_q)) + b_m`` and ``P̂(q, m) = σ(δ(m, q))``, with ``e_q`` the
    standardised query embedding, ``W₁ ∈ R^{d×D}`` a projection (no bias), ``v̂_m`` the
    L2-normalised latent vector of LLM ``m`` (normalised as in RouteLLM, so its scale lives in
    ``W₁`` and ``w₂``), ``w₂ ∈ R^d`` and a per-LLM bias ``b_m`` that carries the LLM's base rate.
    RouteLLM trains ``δ`` on pairwise preferences between two LLMs; here the objective is binary
    cross-entropy on every (query, LLM, correct) triple plus, when ``pairwise_weight > 0``,
    ``pairwise_weight`` times the mean Bradley–Terry loss ``−log σ(δ(r, q) − δ(w, q))`` over the
    pairs of a right LLM ``r`` and a wrong LLM ``w`` on the same query.

    Validation: early stopping on validation BCE (the pairwise term is not part of the criterion),
    keeping the best epoch's weights (``self.epochs_``). Without validation it trains exactly
    ``epochs_without_validation`` epochs.

    Args:
        latent_dim (int): ``d``, size of the latent space. (default: ``32``)
        pairwise_weight (float): weight of the pairwise term, ``≥ 0``. (default: ``0.0``)
        lr (float): Adam learning rate. (default: ``3e-3``)
        weight_decay (float): Adam weight decay. (default: ``1e-4``)
        max_epochs (int): cap on full-batch epochs with validation. (default: ``500``)
        patience (int): early-stopping patience in epochs. (default: ``30``)
        epochs_without_validation (int): epochs when no validation is given. (default: ``100``)
    """

    name = "MF router"

    def __init__(self, latent_dim: int = 32, *, pairwise_weight: float = 0.0, lr: float = 3e-3,
                 weight_decay: float = 1e-4, max_epochs: int = 500, patience: int = 30,
                 epochs_without_validation: int = 100) -> None:
        super().__init__(lr=lr, weight_decay=weight_decay, max_epochs=max_epochs,
                         patience=patience, epochs_without_validation=epochs_without_validation)
        if int(latent_dim) != latent_dim or latent_dim < 1:
            raise ConfigError(f"latent_dim must be a positive integer; got {latent_dim!r}")
        if not (pairwise_weight >= 0.0) or math.isinf(pairwise_weight):
            raise ConfigError(f"pairwise_weight must be finite and >= 0; got {pairwise_weight!r}")
        self.latent_dim = int(latent_dim)
        self.pairwise_weight = float(pairwise_weight)

    def _build(self, dim: int, base_logits: Tensor) -> nn.Module:
        return _MatrixFactorisation(dim, base_logits, self.latent_dim)

    def _train_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        loss = nn.functional.binary_cross_entropy_with_logits(logits, labels)
        if self.pairwise_weight == 0.0:
            return loss
        # pairs[n, r, w] = 1 when LLM r solved query n and LLM w did not.
        pairs = labels[:, :, None] * (1.0 - labels[:, None, :])
        count = pairs.sum()
        if count == 0:
            return loss
        margins = logits[:, :, None] - logits[:, None, :]
        pairwise = (pairs * nn.functional.softplus(-margins)).sum() / count
        return loss + self.pairwise_weight * pairwise


class _MatrixFactorisation(nn.Module):
    """``[N, D]`` embeddings → ``[N, L]`` logits ``w₂ᵀ(v̂_m ⊙ W₁e_q) + b_m``.

    See :class:`MFRouter`; ``base_logits [L]`` is where the biases ``b_m`` start."""

    def __init__(self, dim: int, base_logits: Tensor, latent_dim: int) -> None:
        super().__init__()
        self.register_buffer("base_logits", base_logits.detach().clone())
        self.project = nn.Linear(dim, latent_dim, bias=False)
        self.llm_vectors = nn.Parameter(torch.empty(base_logits.numel(), latent_dim))
        self.readout = nn.Linear(latent_dim, 1, bias=False)
        self.llm_bias = nn.Parameter(torch.empty(base_logits.numel()))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Random projection and LLM vectors; biases back at the base-rate logits."""
        self.project.reset_parameters()
        self.readout.reset_parameters()
        nn.init.normal_(self.llm_vectors)
        with torch.no_grad():
            self.llm_bias.copy_(self.base_logits)

    def forward(self, x: Tensor) -> Tensor:
        queries = self.project(x)  # [N, d]
        llms = nn.functional.normalize(self.llm_vectors, dim=1)  # [L, d]
        interaction = queries[:, None, :] * llms[None, :, :]  # [N, L, d]
        return self.readout(interaction).squeeze(-1) + self.llm_bias


def _train_full_batch(model: nn.Module, train_loss: Callable[[Tensor, Tensor], Tensor],
                      inputs: Tensor, labels: Tensor,
                      validation: tuple[Tensor, Tensor] | None, *, lr: float,
                      weight_decay: float, max_epochs: int, patience: int) -> int:
    """Full-batch Adam for ``max_epochs``; with validation, stops after ``patience`` epochs without
    a lower validation BCE and restores the best epoch's weights.

    Returns the number of epochs behind the final weights.
    """
    optimiser = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    best_loss, best_epoch, best_state = math.inf, 0, copy.deepcopy(model.state_dict())
    for epoch in range(1, max_epochs + 1):
        model.train()
        optimiser.zero_grad()
        train_loss(model(inputs), labels).backward()
        optimiser.step()
        if validation is None:
            continue
        model.eval()
        with torch.no_grad():
            held_out = nn.functional.binary_cross_entropy_with_logits(
                model(validation[0]), validation[1]).item()
        if held_out < best_loss - 1e-7:
            best_loss, best_epoch, best_state = held_out, epoch, copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= patience:
            break
    if validation is None:
        return max_epochs
    model.load_state_dict(best_state)
    return best_epoch


class _Standardiser:
    """Column-wise ``(x − mean) / std`` with the training statistics (a constant column stays 0)."""

    def __init__(self, x: np.ndarray) -> None:
        self.mean = x.mean(axis=0)
        std = x.std(axis=0)
        self.std = np.where(std > 0.0, std, 1.0)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.std


def _as_matrix(label: str, value: np.ndarray) -> np.ndarray:
    """``value`` as a finite float ``[rows, cols]`` array with at least one row and column."""
    array = np.asarray(value, dtype=float)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ConfigError(f"{label} must be a non-empty 2-D array [rows, columns]; "
                          f"got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ConfigError(f"{label} must be finite; found {int((~np.isfinite(array)).sum())} "
                          f"NaN or infinite entries")
    return array


def _check_outcomes(embeddings: np.ndarray, correct: np.ndarray, cost: np.ndarray, *,
                    what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated ``x [N, D]``, ``y [N, L]`` in {0, 1} and ``c [N, L] ≥ 0`` of one split."""
    x = _as_matrix(f"{what} embeddings", embeddings)
    y = _as_matrix(f"{what} correct", correct)
    c = _as_matrix(f"{what} cost", cost)
    if y.shape[0] != x.shape[0] or c.shape != y.shape:
        raise ConfigError(f"{what} shapes do not match: embeddings {x.shape} [N, D], correct "
                          f"{y.shape} and cost {c.shape} must both be [N, L] with the same N")
    bad = y[(y != 0.0) & (y != 1.0)]
    if bad.size:
        raise ConfigError(f"{what} correct must hold 0 or 1 only; found {float(bad[0])!r} "
                          f"({bad.size} such entries)")
    if np.any(c < 0.0):
        raise ConfigError(f"{what} cost must be >= 0 $; found {float(c[c < 0.0][0])!r}")
    return x, y, c

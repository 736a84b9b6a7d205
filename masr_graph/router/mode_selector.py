"""Stage 2 of the cascade: the collaboration mode, through a variational latent.

A Gaussian posterior ``q(z | query, task) = N(mu, diag(sigma^2))`` is computed from the query's
graph embedding and the chosen task's embedding; ``z`` is drawn by reparameterisation (its mean
when decoding greedily) and the mode distribution ``p(mode | query, task, z)`` scores every mode
node's embedding. ``KL(q || N(0, I))`` regularises the latent; the same ``z`` conditions the later
stages, so it carries the query's "how to collaborate" context down the cascade.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from .scoring import BilinearScorer, Choice, choose, mlp


@dataclass
class ModeDecision:
    """Output of :class:`ModeSelector`.

    Attributes:
        choice: the mode choice (``index [B]``, ``log_prob [B]``, ``entropy [B]``,
            ``probs [B, M]``).
        logits: ``[B, M]`` mode logits.
        latent: ``[B, Z]`` the ``z`` used.
        kl: ``[B]`` ``KL(q(z | query, task) || N(0, I))``.
    """

    choice: Choice
    logits: Tensor
    latent: Tensor
    kl: Tensor


class ModeSelector(nn.Module):
    """Mode distribution ``p(mode | query, task, z)`` with ``z ~ q(z | query, task)``.

    Args:
        hidden_dim: size of the graph embeddings.
        latent_dim: size of ``z``.
    """

    def __init__(self, hidden_dim: int, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.posterior = mlp(2 * hidden_dim, hidden_dim, 2 * latent_dim)
        self.scorer = BilinearScorer(2 * hidden_dim + latent_dim, hidden_dim, hidden_dim)

    def forward(
        self,
        query: Tensor,
        task: Tensor,
        modes: Tensor,
        valid: Tensor,
        *,
        forced: Optional[Tensor] = None,
        latent: Optional[Tensor] = None,
        greedy: bool = False,
        generator: Optional[torch.Generator] = None,
    ) -> ModeDecision:
        """Draw ``z`` and choose a mode per query.

        Args:
            query: ``[B, H]`` query embeddings.
            task: ``[B, H]`` embedding of each query's chosen task.
            modes: ``[M, H]`` mode node embeddings.
            valid: ``[M]`` bool, modes that may be chosen.
            forced: optional ``[B]`` mode indices (``-1``: choose).
            latent: optional ``[B, Z]`` ``z`` to use instead of drawing one (to re-score a
                sampled plan exactly).
            greedy: use the posterior mean for ``z`` and the most probable mode.
        """
        mu, log_var = self.posterior(torch.cat([query, task], -1)).chunk(2, dim=-1)
        if latent is not None:
            z = latent
        elif greedy:
            z = mu
        else:
            noise = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
            z = mu + (0.5 * log_var).exp() * noise
        kl = 0.5 * (mu.pow(2) + log_var.exp() - 1.0 - log_var).sum(-1)
        logits = self.scorer(torch.cat([query, task, z], -1), modes)
        choice = choose(
            logits, valid, forced=forced, greedy=greedy, generator=generator, what="mode"
        )
        return ModeDecision(choice=choice, logits=logits, latent=z, kl=kl)

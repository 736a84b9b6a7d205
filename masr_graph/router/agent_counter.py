"""Stage 3 of the cascade: how many agents.

A proper categorical over ``k = 1..max_agents`` conditioned on the query, the latent ``z`` and the
chosen mode, masked to the mode's ``[min_agents, max_agents]`` range: sampled counts always have
an exact log-probability (unlike rounding a continuous "difficulty" outside the distribution).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .scoring import Choice, choose, mlp


class AgentCounter(nn.Module):
    """Agent-count distribution ``p(k | query, z, mode)``.

    Args:
        hidden_dim: size of the graph embeddings.
        latent_dim: size of ``z``.
        max_agents: largest count the router can choose (modes allowing more are capped).
    """

    def __init__(self, hidden_dim: int, latent_dim: int, max_agents: int) -> None:
        super().__init__()
        self.max_agents = max_agents
        self.head = mlp(2 * hidden_dim + latent_dim, hidden_dim, max_agents)

    def forward(
        self,
        query: Tensor,
        latent: Tensor,
        mode: Tensor,
        min_agents: Tensor,
        max_agents: Tensor,
        *,
        forced: Optional[Tensor] = None,
        greedy: bool = False,
        generator: Optional[torch.Generator] = None,
    ) -> tuple[Tensor, Choice]:
        """Choose an agent count per query.

        Args:
            query: ``[B, H]``; latent: ``[B, Z]``; mode: ``[B, H]`` chosen mode's embedding.
            min_agents, max_agents: ``[B]`` the chosen mode's bounds.
            forced: optional ``[B]`` counts (``k``, 1-based; ``-1``: choose).

        Returns:
            ``(k [B], choice)`` where ``choice.index = k - 1`` and ``choice.probs`` is
            ``[B, max_agents]`` (column ``j`` is ``k = j + 1``).
        """
        logits = self.head(torch.cat([query, latent, mode], -1))
        counts = torch.arange(1, self.max_agents + 1, device=logits.device)
        valid = (counts >= min_agents.unsqueeze(-1)) & (counts <= max_agents.unsqueeze(-1))
        forced_index = None if forced is None else torch.where(forced > 0, forced - 1, -1)
        choice = choose(
            logits, valid, forced=forced_index, greedy=greedy, generator=generator,
            what="agent count",
        )
        return choice.index + 1, choice

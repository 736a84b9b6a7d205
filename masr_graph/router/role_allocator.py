"""Stage 4 of the cascade: one role per agent slot, chosen in order.

A GRU state starts from the query, the chosen task and mode and the latent ``z``; at slot ``s``
it scores every role node's embedding, restricted to the roles of the chosen task, and after the
choice it absorbs the chosen role's embedding, so the role of slot ``s`` is conditioned on the
query, the mode and the roles already chosen. A role may be chosen for several slots (several
solvers debating is a legitimate team); the state lets the policy learn when diversity pays.
Slots at or beyond the agent count are computed with the batch but the caller drops them from
log-probabilities and entropies.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .scoring import BilinearScorer, Choice, choose, mlp


class RoleAllocator(nn.Module):
    """Sequential role distribution ``p(role_s | query, task, mode, z, role_<s)``.

    Args:
        hidden_dim: size of the graph embeddings (and of the GRU state).
        latent_dim: size of ``z``.
    """

    def __init__(self, hidden_dim: int, latent_dim: int) -> None:
        super().__init__()
        self.start = mlp(3 * hidden_dim + latent_dim, hidden_dim, hidden_dim)
        self.step = nn.GRUCell(hidden_dim, hidden_dim)
        self.scorer = BilinearScorer(2 * hidden_dim, hidden_dim, hidden_dim)

    def forward(
        self,
        query: Tensor,
        task: Tensor,
        mode: Tensor,
        latent: Tensor,
        roles: Tensor,
        allowed: Tensor,
        num_slots: int,
        *,
        forced: Optional[Tensor] = None,
        greedy: bool = False,
        generator: Optional[torch.Generator] = None,
    ) -> Choice:
        """Choose ``num_slots`` roles per query.

        Args:
            query, task, mode: ``[B, H]`` embeddings of the query and its chosen task and mode.
            latent: ``[B, Z]``.
            roles: ``[R, H]`` role node embeddings.
            allowed: ``[B, R]`` bool, roles of each query's chosen task.
            num_slots: slots to fill (the largest agent count in the batch).
            forced: optional ``[B, num_slots]`` role indices (``-1``: choose).

        Returns:
            :class:`Choice` with ``index``, ``log_prob``, ``entropy`` of shape ``[B, S]`` and
            ``probs [B, S, R]``.
        """
        state = torch.tanh(self.start(torch.cat([query, task, mode, latent], -1)))
        slots: list[Choice] = []
        for s in range(num_slots):
            logits = self.scorer(torch.cat([state, query], -1), roles)
            choice = choose(
                logits, allowed,
                forced=None if forced is None else forced[:, s],
                greedy=greedy, generator=generator, what="role",
            )
            slots.append(choice)
            state = self.step(roles[choice.index], state)
        return Choice(
            index=torch.stack([c.index for c in slots], 1),
            log_prob=torch.stack([c.log_prob for c in slots], 1),
            entropy=torch.stack([c.entropy for c in slots], 1),
            probs=torch.stack([c.probs for c in slots], 1),
        )

"""Stage 5 of the cascade: an LLM for each agent.

Each agent's context is ``[query, z, mode, its role, its predecessors' roles]`` where the last
part is the mean embedding of the roles whose output the agent reads (in a routed plan, the
agents of earlier slots; in a plugged-in external team, its graph predecessors). The context is
scored against every LLM node's embedding, which carries the LLM's description and its prices,
so each agent gets its own distribution over the pool (not one distribution per query) and an
LLM added after training is scored like any other.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .scoring import BilinearScorer, Choice, choose


def earlier_slots(num_slots: int) -> Tensor:
    """``[S, S]`` predecessor weights where slot ``s`` reads every earlier slot equally."""
    lower = torch.ones(num_slots, num_slots).tril(-1)
    return lower / lower.sum(-1, keepdim=True).clamp_min(1.0)


def graph_predecessors(num_agents: int, edges: list[tuple[int, int]]) -> Tensor:
    """``[S, S]`` predecessor weights of a team graph: row ``dst`` averages its sources.

    Args:
        num_agents: number of agents ``S``.
        edges: ``(src, dst)`` pairs, agent ``dst`` reads agent ``src``'s output.
    """
    weights = torch.zeros(num_agents, num_agents)
    for src, dst in edges:
        weights[dst, src] = 1.0
    return weights / weights.sum(-1, keepdim=True).clamp_min(1.0)


class LLMRouter(nn.Module):
    """Per-agent LLM distribution ``p(llm_s | query, z, mode, role_s, predecessors_s)``.

    Args:
        hidden_dim: size of the graph embeddings.
        latent_dim: size of ``z``.
    """

    def __init__(self, hidden_dim: int, latent_dim: int) -> None:
        super().__init__()
        self.scorer = BilinearScorer(4 * hidden_dim + latent_dim, hidden_dim, hidden_dim)

    def forward(
        self,
        query: Tensor,
        latent: Tensor,
        mode: Tensor,
        agent_roles: Tensor,
        predecessors: Tensor,
        llms: Tensor,
        *,
        forced: Optional[Tensor] = None,
        greedy: bool = False,
        generator: Optional[torch.Generator] = None,
    ) -> Choice:
        """Choose an LLM for every agent slot.

        Args:
            query: ``[B, H]``; latent: ``[B, Z]``; mode: ``[B, H]`` chosen mode's embedding.
            agent_roles: ``[B, S, H]`` embedding of each slot's role.
            predecessors: ``[S, S]`` or ``[B, S, S]`` weights, row ``s`` over the slots agent
                ``s`` reads.
            llms: ``[L, H]`` LLM node embeddings.
            forced: optional ``[B, S]`` LLM indices (``-1``: choose).

        Returns:
            :class:`Choice` with ``index``, ``log_prob``, ``entropy`` ``[B, S]`` and
            ``probs [B, S, L]``.
        """
        slots = agent_roles.size(1)
        upstream = predecessors.to(agent_roles.dtype) @ agent_roles  # [B, S, H]
        per_query = torch.cat([query, latent, mode], -1).unsqueeze(1).expand(-1, slots, -1)
        logits = self.scorer(torch.cat([per_query, agent_roles, upstream], -1), llms)
        return choose(logits, forced=forced, greedy=greedy, generator=generator, what="LLM")

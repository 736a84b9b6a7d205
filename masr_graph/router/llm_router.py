"""Stage 5 of the cascade: an LLM for each agent, slot after slot.

Each slot's context is ``[query, z, mode, its role, its predecessors' roles, the LLMs already
chosen for earlier slots]``: the predecessors' roles are the mean embedding of the roles whose
output the agent reads (in a routed plan, the agents of earlier slots; in a plugged-in external
team, its graph predecessors), and the earlier LLMs are the mean embedding of the LLMs chosen so
far, so a team can diversify (two copies of one LLM at temperature 0 give one answer twice) or
deliberately pair a cheap LLM with a strong one. The context is scored against every LLM node's
embedding, which carries the LLM's description and its prices, so an LLM added after training is
scored like any other. Two terms are added to each LLM's logit:

* a learned weight times "this LLM already holds an earlier slot", the diversity prior;
* minus a learned positive scale times ``λ · c_l``, where ``c_l`` is the LLM's price of a typical
  call (:data:`TYPICAL_PROMPT_TOKENS` in, :data:`TYPICAL_COMPLETION_TOKENS` out): the plan's
  log-probability then carries ``-λ · cost`` the way a Boltzmann policy over utility would, and
  a new price (or a new λ) moves the choice without retraining.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from .scoring import BilinearScorer, Choice, choose

TYPICAL_PROMPT_TOKENS = 300
TYPICAL_COMPLETION_TOKENS = 200
INITIAL_COST_SCALE = 50.0
"""Initial weight of the ``λ · cost`` term: one over the utility temperature (0.02) that the
library objective's entropy term targets."""


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


def typical_call_cost(price: Tensor) -> Tensor:
    """``[L]`` $ of a typical call from ``[L, 2]`` prices ($ per 1M prompt / completion tokens)."""
    return (price[:, 0] * TYPICAL_PROMPT_TOKENS + price[:, 1] * TYPICAL_COMPLETION_TOKENS) / 1e6


class LLMRouter(nn.Module):
    """Per-agent LLM distribution
    ``p(llm_s | query, λ, z, mode, role_s, predecessors_s, llm_<s)``.

    Args:
        hidden_dim: size of the graph embeddings.
        latent_dim: size of ``z``.
        team_aware: condition on the LLMs of earlier slots; ``False``: every slot on its own
            (the earlier-LLM context is zero and there is no repeat prior).
    """

    def __init__(self, hidden_dim: int, latent_dim: int, *, team_aware: bool = True) -> None:
        super().__init__()
        self.team_aware = team_aware
        self.scorer = BilinearScorer(5 * hidden_dim + latent_dim + 1, hidden_dim, hidden_dim)
        self.repeat_weight = nn.Parameter(torch.zeros(()))
        self.log_cost_scale = nn.Parameter(torch.tensor(math.log(INITIAL_COST_SCALE)))

    def reset_parameters(self) -> None:
        """Re-initialise the two scalar terms (the scorer's layers initialise themselves)."""
        with torch.no_grad():
            self.repeat_weight.zero_()
            self.log_cost_scale.fill_(math.log(INITIAL_COST_SCALE))

    def forward(
        self,
        query: Tensor,
        latent: Tensor,
        mode: Tensor,
        agent_roles: Tensor,
        predecessors: Tensor,
        llms: Tensor,
        call_cost: Tensor,
        cost_lambda: Tensor,
        *,
        forced: Optional[Tensor] = None,
        greedy: bool = False,
        generator: Optional[torch.Generator] = None,
    ) -> Choice:
        """Choose an LLM for every agent slot, in slot order.

        Args:
            query: ``[B, H]``; latent: ``[B, Z]``; mode: ``[B, H]`` chosen mode's embedding.
            agent_roles: ``[B, S, H]`` embedding of each slot's role.
            predecessors: ``[S, S]`` or ``[B, S, S]`` weights, row ``s`` over the slots agent
                ``s`` reads.
            llms: ``[L, H]`` LLM node embeddings.
            call_cost: ``[L]`` $ of a typical call of each LLM (:func:`typical_call_cost`).
            cost_lambda: ``[B]`` λ of each query (utility per $).
            forced: optional ``[B, S]`` LLM indices (``-1``: choose).

        Returns:
            :class:`Choice` with ``index``, ``log_prob``, ``entropy`` ``[B, S]`` and
            ``probs [B, S, L]``.
        """
        batch, slots = agent_roles.shape[:2]
        num_llms = llms.size(0)
        upstream = predecessors.to(agent_roles.dtype) @ agent_roles  # [B, S, H]
        per_query = torch.cat([query, latent, mode], -1)
        cost_bias = -self.log_cost_scale.exp() * cost_lambda.unsqueeze(-1) * call_cost  # [B, L]
        chosen_sum = torch.zeros_like(query)
        chosen_mask = torch.zeros(batch, num_llms, dtype=query.dtype, device=query.device)
        choices: list[Choice] = []
        for s in range(slots):
            earlier = chosen_sum / max(s, 1) if self.team_aware else torch.zeros_like(query)
            context = torch.cat(
                [per_query, agent_roles[:, s], upstream[:, s], earlier,
                 torch.full((batch, 1), float(s > 0), dtype=query.dtype, device=query.device)],
                -1)
            logits = self.scorer(context, llms) + cost_bias
            if self.team_aware:
                logits = logits + self.repeat_weight * chosen_mask
            choice = choose(logits, forced=None if forced is None else forced[:, s],
                            greedy=greedy, generator=generator, what="LLM")
            choices.append(choice)
            chosen_sum = chosen_sum + llms[choice.index]
            chosen_mask = chosen_mask.scatter(1, choice.index.unsqueeze(1), 1.0)
        return Choice(
            index=torch.stack([c.index for c in choices], 1),
            log_prob=torch.stack([c.log_prob for c in choices], 1),
            entropy=torch.stack([c.entropy for c in choices], 1),
            probs=torch.stack([c.probs for c in choices], 1),
        )

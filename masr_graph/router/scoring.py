"""Building blocks shared by the cascade stages: scoring a context against node embeddings, and
drawing one choice from a masked categorical distribution with its log-probability and entropy.

Scoring is always a bilinear form between a context and a node's embedding plus a bias computed
from that embedding; no parameter is tied to a node id, which is what lets a trained router score
nodes it has never seen.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from ..errors import RoutingError


def mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """Two-layer perceptron ``Linear → GELU → Linear``."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim))


class BilinearScorer(nn.Module):
    """``score[..., n] = <f(context), g(node_n)> / sqrt(hidden_dim) + b(node_n)``.

    Args:
        context_dim: size of the context vectors.
        node_dim: size of the node embeddings.
        hidden_dim: size of the space both are projected to.
    """

    def __init__(self, context_dim: int, node_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.context = mlp(context_dim, hidden_dim, hidden_dim)
        # No constant terms on the node side: a shift shared by all nodes cancels in the
        # softmax, so such a parameter would never receive a gradient.
        self.node = nn.Linear(node_dim, hidden_dim, bias=False)
        # A node's prior appeal (e.g. a cheap LLM) must come from its features, not from an id.
        self.node_bias = nn.Linear(node_dim, 1, bias=False)
        self.scale = 1.0 / math.sqrt(hidden_dim)

    def forward(self, context: Tensor, nodes: Tensor) -> Tensor:
        """Score every node for every context.

        Args:
            context: ``[..., context_dim]``.
            nodes: ``[N, node_dim]``.

        Returns:
            ``[..., N]`` logits.
        """
        keys = self.node(nodes)  # [N, H]
        return self.context(context) @ keys.T * self.scale + self.node_bias(nodes).squeeze(-1)


@dataclass
class Choice:
    """One decision per row of a batch (possibly per slot).

    Attributes:
        index: ``[...]`` chosen indices.
        log_prob: ``[...]`` log-probability of the chosen index.
        entropy: ``[...]`` entropy of the distribution it was drawn from.
        probs: ``[..., N]`` the distribution (0 on invalid choices).
    """

    index: Tensor
    log_prob: Tensor
    entropy: Tensor
    probs: Tensor


def choose(
    logits: Tensor,
    valid: Optional[Tensor] = None,
    *,
    forced: Optional[Tensor] = None,
    greedy: bool = False,
    generator: Optional[torch.Generator] = None,
    what: str = "choice",
) -> Choice:
    """Draw from ``softmax(logits)`` restricted to the valid entries.

    Args:
        logits: ``[..., N]``.
        valid: ``[..., N]`` bool, or broadcastable to it, with at least one True per row;
            ``None`` when every entry is valid.
        forced: optional ``[...]`` long; rows with an index ``>= 0`` take that index (to score a
            given decision), rows with ``-1`` are chosen here.
        greedy: take the most probable valid entry instead of sampling.
        generator: random source for sampling.
        what: name of the decision, for error messages.

    Returns:
        The :class:`Choice`; ``log_prob`` is differentiable w.r.t. ``logits``.

    Raises:
        RoutingError: a row has no valid entry, or a forced index is invalid.
    """
    if valid is None:
        log_probs = torch.log_softmax(logits, dim=-1)
        probs = log_probs.exp()
        entropy = -(probs * log_probs).sum(-1)
    else:
        valid = valid.expand_as(logits)
        if not bool(valid.any(-1).all()):
            raise RoutingError(f"no valid {what}: every candidate is excluded for some query")
        log_probs = torch.log_softmax(logits.masked_fill(~valid, float("-inf")), dim=-1)
        probs = log_probs.exp()
        # Zero the masked log-probs before multiplying so that 0 * (-inf) never produces NaN
        # values or gradients.
        entropy = -(probs * log_probs.masked_fill(~valid, 0.0)).sum(-1)
    if greedy:
        index = log_probs.argmax(-1)
    else:
        flat = probs.detach().reshape(-1, probs.size(-1))
        index = torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])
    if forced is not None:
        use = forced >= 0
        index = torch.where(use, forced, index)
        if valid is not None and not bool(valid.gather(-1, index.unsqueeze(-1)).all()):
            raise RoutingError(f"a given {what} is not allowed where it was given (probability 0)")
    log_prob = log_probs.gather(-1, index.unsqueeze(-1)).squeeze(-1)
    return Choice(index=index, log_prob=log_prob, entropy=entropy, probs=probs)

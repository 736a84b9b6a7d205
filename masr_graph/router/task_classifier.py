"""Stage 1 of the cascade: which task family a query belongs to.

The classifier scores the query's graph embedding against every task node's embedding. It is
trained by cross-entropy on its *logits* where a task label exists and, where none does, by the
policy gradient like every other stage (the task then conditions the roles that may be chosen).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .scoring import BilinearScorer, Choice, choose


class TaskClassifier(nn.Module):
    """Task distribution ``p(task | query)``.

    Args:
        hidden_dim: size of the graph embeddings.
    """

    def __init__(self, hidden_dim: int) -> None:
        super().__init__()
        self.scorer = BilinearScorer(hidden_dim, hidden_dim, hidden_dim)

    def forward(
        self,
        query: Tensor,
        tasks: Tensor,
        *,
        forced: Optional[Tensor] = None,
        greedy: bool = False,
        generator: Optional[torch.Generator] = None,
    ) -> tuple[Tensor, Choice]:
        """Score and choose a task per query.

        Args:
            query: ``[B, H]`` query embeddings.
            tasks: ``[T, H]`` task node embeddings.
            forced: optional ``[B]`` task indices (``-1``: choose).

        Returns:
            ``(logits [B, T], choice)``.
        """
        logits = self.scorer(query, tasks)
        choice = choose(logits, forced=forced, greedy=greedy, generator=generator, what="task")
        return logits, choice

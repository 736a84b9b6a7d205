"""Heterogeneous message passing over the routing graph (:mod:`masr_graph.router.graph`).

A stack of Heterogeneous Graph Transformer layers (Hu et al., "Heterogeneous Graph Transformer",
WWW 2020; PyG's :class:`~torch_geometric.nn.HGTConv`) run full-batch. No edge leaves a query node,
so the computation splits exactly in two:

- the *static pass* updates the task, mode, role and LLM nodes over the static edges; it does not
  depend on the queries, runs once per forward (and can be reused across forwards while the
  weights do not change, see :meth:`HeteroGraphEncoder.encode_static`);
- the *query pass* updates the batch's query nodes, layer ``l`` reading the static nodes'
  layer-``l - 1`` embeddings; it touches only the edges into query nodes.

Running both on the whole graph (:meth:`HeteroGraphEncoder.forward`) gives the same result. Every
parameter belongs to a node *type* or an edge *type*, never to a node, so the encoder applies
unchanged to vocabularies it has not seen.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.nn import HGTConv
from torch_geometric.nn.dense import HeteroDictLinear
from torch_geometric.typing import EdgeType

from .graph import NODE_TYPES, feature_dims, metadata


class HeteroGraphEncoder(nn.Module):
    """Context-aware embeddings of every node of a routing graph.

    Args:
        text_dim (int): size of the text embeddings in the node features (384 for MiniLM).
        hidden_dim (int): size of the output embeddings; divisible by ``heads``.
        heads (int): attention heads per HGT layer.
        num_layers (int): HGT layers; a query sees the static graph ``num_layers - 1`` hops deep.

    Raises:
        ValueError: a size is not positive or ``hidden_dim`` is not divisible by ``heads``.
    """

    def __init__(self, text_dim: int, hidden_dim: int, heads: int, num_layers: int) -> None:
        super().__init__()
        for label, value in (("text_dim", text_dim), ("hidden_dim", hidden_dim),
                             ("heads", heads), ("num_layers", num_layers)):
            if value < 1:
                raise ValueError(f"'{label}' must be >= 1 (got {value})")
        if hidden_dim % heads:
            raise ValueError(
                f"'hidden_dim' (got {hidden_dim}) must be divisible by 'heads' (got {heads})"
            )
        self.input = HeteroDictLinear(feature_dims(text_dim), hidden_dim)
        self.layers = nn.ModuleList(
            HGTConv(hidden_dim, hidden_dim, metadata(), heads=heads) for _ in range(num_layers)
        )
        self.norms = nn.ModuleList(
            # No shift: LLM embeddings are only ever scored, where a shift shared by all LLMs
            # cancels in the softmax and would never be trained.
            nn.ModuleDict({t: nn.LayerNorm(hidden_dim, bias=False) for t in NODE_TYPES})
            for _ in range(num_layers)
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-initialise every parameter."""
        self.input.reset_parameters()
        for layer, norms in zip(self.layers, self.norms):
            layer.reset_parameters()
            for norm in norms.values():
                norm.reset_parameters()

    def _project(self, x_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        return {t: torch.nn.functional.gelu(x) for t, x in self.input(x_dict).items()}

    def encode_static(
        self, x_dict: dict[str, Tensor], edge_index_dict: dict[EdgeType, Tensor]
    ) -> list[dict[str, Tensor]]:
        """The static pass.

        Args:
            x_dict: features of the static node types (task, mode, role, llm).
            edge_index_dict: the static edge types (no query node involved).

        Returns:
            ``num_layers + 1`` dicts of ``[N_type, hidden_dim]`` embeddings: the input
            projection, then the output of every layer (the query pass reads them all).
        """
        h = self._project(x_dict)
        layers = [h]
        for layer, norms in zip(self.layers, self.norms):
            out = layer(h, edge_index_dict)
            # HGTConv already mixes in its input through a learned gate; the LayerNorm keeps
            # scales comparable across node types whose in-degrees differ by orders of magnitude.
            h = {t: norms[t](out[t]) if out.get(t) is not None else h[t] for t in h}
            layers.append(h)
        return layers

    def encode_queries(
        self,
        x_query: Tensor,
        static_layers: list[dict[str, Tensor]],
        edge_index_dict: dict[EdgeType, Tensor],
    ) -> Tensor:
        """The query pass.

        Args:
            x_query: ``[B, feature_dims(text_dim)["query"]]`` query features.
            static_layers: output of :meth:`encode_static`.
            edge_index_dict: the edge types into ``query`` nodes.

        Returns:
            ``[B, hidden_dim]`` query embeddings.
        """
        h = self._project({"query": x_query})["query"]
        for layer, norms, static in zip(self.layers, self.norms, static_layers):
            h = norms["query"](layer({**static, "query": h}, edge_index_dict)["query"])
        return h

    def forward(
        self, x_dict: dict[str, Tensor], edge_index_dict: dict[EdgeType, Tensor]
    ) -> dict[str, Tensor]:
        """Run the encoder on a whole routing graph.

        Args:
            x_dict: node features per type, ``[N_type, feature_dims(text_dim)[type]]``.
            edge_index_dict: ``[2, E]`` edges per edge type of :func:`graph.metadata`.

        Returns:
            ``[N_type, hidden_dim]`` embeddings per node type.
        """
        static_x = {t: x for t, x in x_dict.items() if t != "query"}
        static_edges = {e: v for e, v in edge_index_dict.items() if e[-1] != "query"}
        query_edges = {e: v for e, v in edge_index_dict.items() if e[-1] == "query"}
        static_layers = self.encode_static(static_x, static_edges)
        h = dict(static_layers[-1])
        h["query"] = self.encode_queries(x_dict["query"], static_layers, query_edges)
        return h

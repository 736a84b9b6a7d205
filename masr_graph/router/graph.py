"""The heterogeneous routing graph: queries, tasks, modes, roles and LLMs as nodes of one
:class:`torch_geometric.data.HeteroData`.

Node types and features (``data[type].x``):

========  =====================================================================================
type      feature
========  =====================================================================================
query     MiniLM embedding of the query text (384)
task      embedding of ``"name: description"`` (384)
mode      embedding (384) + ``[log min_agents, log max_agents, unbounded]`` (``log max_agents``
          is 0 and ``unbounded`` 1 for a mode without upper limit): the agent-count range is
          what the text does not say reliably and what the agent-count stage must respect
role      embedding (384)
llm       embedding (384) + ``[log1p price_in, log1p price_out]`` ($ per 1M tokens): cost is
          half of the objective and must be visible to the LLM scorer, not only through text
========  =====================================================================================

Every node also keeps its raw text embedding in ``data[type].text_emb`` (used to pick similarity
edges) and the graph carries the index vectors the cascade needs: ``data["role"].task_index``
(task of each role), ``data["mode"].min_agents`` / ``max_agents`` (:data:`NO_AGENT_LIMIT` for
unbounded modes) and ``data["llm"].price``
(``[L, 2]``, $ per 1M input / output tokens).

Edge types (source → destination), chosen so that every message says something the receiver
needs and so that the number of edges grows as O(N·k), not O(N²):

================================  ==================================================================
edge type                         why / which pairs
================================  ==================================================================
task ─includes→ role              membership: a role learns the task it serves (all members)
role ─serves→ task                membership: a task summarises the roles that can staff it
role ─suits→ llm                  an LLM learns which kinds of agents it would play; pairs are the
                                  ``role_llm_topk`` most similar LLMs of each role united with the
                                  ``role_llm_topk`` most similar roles of each LLM (cosine of the
                                  text embeddings), so every node has neighbours
llm ─staffs→ role                 the same pairs, reversed: a role learns which LLMs fit it
mode ─hosts→ role                 a role learns the collaboration patterns it fits (critic ↔
                                  Reflection, ...); top-k text-similarity pairs as above
role ─fits→ mode                  the same pairs, reversed
task ─frames→ query               every task informs every query (the task distribution reads it)
mode ─offers→ query               every mode informs every query
role ─informs→ query              the ``query_role_topk`` roles most similar to the query
llm ─informs→ query               the ``query_llm_topk`` LLMs most similar to the query
================================  ==================================================================

No edge leaves a query node. The static nodes (task, mode, role, llm) therefore get the same
embeddings whatever queries share the batch, and a query's routing never depends on the other
queries it is batched with. The static part depends on the vocabulary only: it is built once per
vocabulary (:func:`build_static_graph`) and each batch only adds its query nodes and their
incoming edges (:func:`attach_queries`).
"""
from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import Tensor
from torch_geometric.data import HeteroData
from torch_geometric.typing import EdgeType, Metadata

from .encoder import TextEncoder
from .vocab import NodeVocab

NODE_TYPES: tuple[str, ...] = ("query", "task", "mode", "role", "llm")
STATIC_NODE_TYPES: tuple[str, ...] = ("task", "mode", "role", "llm")

TASK_ROLE: EdgeType = ("task", "includes", "role")
ROLE_TASK: EdgeType = ("role", "serves", "task")
ROLE_LLM: EdgeType = ("role", "suits", "llm")
LLM_ROLE: EdgeType = ("llm", "staffs", "role")
MODE_ROLE: EdgeType = ("mode", "hosts", "role")
ROLE_MODE: EdgeType = ("role", "fits", "mode")
TASK_QUERY: EdgeType = ("task", "frames", "query")
MODE_QUERY: EdgeType = ("mode", "offers", "query")
ROLE_QUERY: EdgeType = ("role", "informs", "query")
LLM_QUERY: EdgeType = ("llm", "informs", "query")

EDGE_TYPES: tuple[EdgeType, ...] = (
    TASK_ROLE, ROLE_TASK, ROLE_LLM, LLM_ROLE, MODE_ROLE, ROLE_MODE,
    TASK_QUERY, MODE_QUERY, ROLE_QUERY, LLM_QUERY,
)

_EXTRA_FEATURES = {"mode": 3, "llm": 2}

NO_AGENT_LIMIT = 2**31 - 1
"""``data["mode"].max_agents`` of a mode without upper limit (callers clamp to their own cap)."""


def metadata() -> Metadata:
    """``(node types, edge types)`` of every routing graph, as PyG convolutions expect."""
    return list(NODE_TYPES), list(EDGE_TYPES)


def feature_dims(text_dim: int) -> dict[str, int]:
    """Input feature size per node type for text embeddings of size ``text_dim``."""
    return {t: text_dim + _EXTRA_FEATURES.get(t, 0) for t in NODE_TYPES}


def similarity_pairs(a: Tensor, b: Tensor, k: int) -> Tensor:
    """Index pairs linking each row of ``a`` to its ``k`` most similar rows of ``b`` and each row
    of ``b`` to its ``k`` most similar rows of ``a`` (cosine; rows are L2-normalised).

    Args:
        a: ``[Na, D]`` normalised embeddings.
        b: ``[Nb, D]`` normalised embeddings.
        k: neighbours per node on each side (capped at the other side's size).

    Returns:
        ``[2, E]`` long tensor of unique ``(i_a, i_b)`` pairs, ``E <= k * (Na + Nb)``.
    """
    sim = a @ b.T
    ka, kb = min(k, b.size(0)), min(k, a.size(0))
    top_b = sim.topk(ka, dim=1).indices  # [Na, ka]
    top_a = sim.topk(kb, dim=0).indices  # [kb, Nb]
    pairs_a = torch.stack([torch.arange(a.size(0)).repeat_interleave(ka), top_b.reshape(-1)])
    pairs_b = torch.stack([top_a.T.reshape(-1), torch.arange(b.size(0)).repeat_interleave(kb)])
    # Unique pairs through a linear code; sorted order keeps graphs identical across runs.
    code = torch.cat([pairs_a, pairs_b], dim=1)
    flat = torch.unique(code[0] * b.size(0) + code[1])
    return torch.stack([flat // b.size(0), flat % b.size(0)])


def build_static_graph(
    vocab: NodeVocab,
    encoder: TextEncoder,
    *,
    role_llm_topk: int = 8,
    mode_role_topk: int = 8,
) -> HeteroData:
    """The query-independent part of the routing graph for ``vocab``.

    Texts are embedded through ``encoder``'s cache, so a text already seen is not re-encoded.

    Returns:
        ``HeteroData`` with node types task, mode, role, llm (features, text embeddings, index
        vectors described in the module docstring) and the static edge types.
    """
    texts = {
        "task": [n.text for n in vocab.tasks],
        "mode": [n.text for n in vocab.modes],
        "role": [n.text for n in vocab.roles],
        "llm": [n.text for n in vocab.llms],
    }
    flat = [t for node_type in STATIC_NODE_TYPES for t in texts[node_type]]
    embedded = encoder.encode(flat).split([len(texts[t]) for t in STATIC_NODE_TYPES])
    emb = dict(zip(STATIC_NODE_TYPES, embedded))

    data = HeteroData()
    data["task"].x = emb["task"]
    min_agents = torch.tensor([m.min_agents for m in vocab.modes], dtype=torch.long)
    unbounded = torch.tensor([m.max_agents is None for m in vocab.modes])
    max_agents = torch.tensor(
        [NO_AGENT_LIMIT if m.max_agents is None else m.max_agents for m in vocab.modes],
        dtype=torch.long,
    )
    count_features = torch.stack(
        [
            min_agents.float().log(),
            torch.where(unbounded, 0.0, max_agents.float().log()),
            unbounded.float(),
        ],
        1,
    )
    data["mode"].x = torch.cat([emb["mode"], count_features], 1)
    data["mode"].min_agents = min_agents
    data["mode"].max_agents = max_agents
    data["role"].x = emb["role"]
    data["role"].task_index = torch.tensor(
        [vocab.index("tasks", r.task) for r in vocab.roles], dtype=torch.long
    )
    price = torch.tensor([[m.price_in, m.price_out] for m in vocab.llms], dtype=torch.float32)
    data["llm"].x = torch.cat([emb["llm"], price.log1p()], 1)
    data["llm"].price = price
    for node_type in STATIC_NODE_TYPES:
        data[node_type].text_emb = emb[node_type]

    role_index = torch.arange(len(vocab.roles))
    membership = torch.stack([data["role"].task_index, role_index])
    data[TASK_ROLE].edge_index = membership
    data[ROLE_TASK].edge_index = membership.flip(0)
    role_llm = similarity_pairs(emb["role"], emb["llm"], role_llm_topk)
    data[ROLE_LLM].edge_index = role_llm
    data[LLM_ROLE].edge_index = role_llm.flip(0)
    mode_role = similarity_pairs(emb["mode"], emb["role"], mode_role_topk)
    data[MODE_ROLE].edge_index = mode_role
    data[ROLE_MODE].edge_index = mode_role.flip(0)
    return data


def _query_edges(
    num_sources: int, query_emb: Tensor, source_emb: Optional[Tensor], k: int
) -> Tensor:
    """``[2, E]`` source→query edges: all sources when ``source_emb`` is None or ``k`` covers
    them, else each query's ``k`` most similar sources."""
    batch = query_emb.size(0)
    if source_emb is None or k >= num_sources:
        src = torch.arange(num_sources).repeat(batch)
        dst = torch.arange(batch).repeat_interleave(num_sources)
        return torch.stack([src, dst])
    top = (query_emb @ source_emb.T).topk(k, dim=1).indices  # [B, k]
    return torch.stack([top.reshape(-1), torch.arange(batch).repeat_interleave(k)])


def attach_queries(
    static: HeteroData,
    query_emb: Tensor,
    *,
    query_role_topk: int = 16,
    query_llm_topk: int = 16,
) -> HeteroData:
    """The routing graph of one batch: ``static`` plus one query node per row of ``query_emb``.

    ``static`` is not modified (its tensors are shared, not copied).

    Args:
        static: output of :func:`build_static_graph`.
        query_emb: ``[B, D]`` L2-normalised query embeddings.

    Returns:
        ``HeteroData`` with all node and edge types of :func:`metadata`.
    """
    data = copy.copy(static)
    data["query"].x = query_emb
    data["query"].text_emb = query_emb
    data[TASK_QUERY].edge_index = _query_edges(static["task"].num_nodes, query_emb, None, 0)
    data[MODE_QUERY].edge_index = _query_edges(static["mode"].num_nodes, query_emb, None, 0)
    data[ROLE_QUERY].edge_index = _query_edges(
        static["role"].num_nodes, query_emb, static["role"].text_emb, query_role_topk
    )
    data[LLM_QUERY].edge_index = _query_edges(
        static["llm"].num_nodes, query_emb, static["llm"].text_emb, query_llm_topk
    )
    return data


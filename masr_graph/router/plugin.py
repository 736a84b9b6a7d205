"""Plug-and-play LLM assignment for an external multi-agent team.

Given a team designed elsewhere (its agents' roles and who reads whom), :func:`assign_llms` picks
an LLM per agent with the router's own LLM-routing head: the same context (query, λ, latent,
mode, the agent's role, the roles it reads, the LLMs given to earlier agents) scored against the
same LLM node embeddings. Roles the
vocabulary does not know are added as role nodes on the fly, their text being the role string,
under the task whose description is closest to it, so any team can be served without retraining.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..errors import RoutingError
from .controller import MasRouter
from .llm_router import graph_predecessors, typical_call_cost
from .vocab import NodeVocab, RoleNode


def _with_team_roles(router: MasRouter, roles: Sequence[str], vocab: NodeVocab) -> NodeVocab:
    known = set(vocab.names("roles"))
    strangers = list(dict.fromkeys(r for r in roles if r not in known))
    if not strangers:
        return vocab
    task_emb = router.static_graph(vocab)["task"].text_emb
    role_emb = router.encoder.encode(strangers)
    nearest = (role_emb @ task_emb.T).argmax(-1).tolist()
    extended = vocab
    for text, task in zip(strangers, nearest):
        extended = extended.add_role(RoleNode(text, vocab.tasks[task].name, text))
    return extended


@torch.no_grad()
def assign_llms(
    router: MasRouter,
    query: str,
    roles: Sequence[str],
    edges: Sequence[tuple[int, int]],
    vocab: NodeVocab,
    *,
    mode: Optional[str] = None,
    cost_lambda: float = 0.0,
    greedy: bool = True,
    generator: Optional[torch.Generator] = None,
) -> list[str]:
    """One LLM of ``vocab`` per agent of an external team.

    Args:
        router: a (trained) router.
        query: the query the team will solve.
        roles: role of each agent: a role name of ``vocab`` or, for a role it does not know,
            a description of the role (it becomes a temporary role node).
        edges: ``(src, dst)`` agent-index pairs: agent ``dst`` reads agent ``src``'s output.
            An agent's LLM is conditioned on the roles of the agents it reads.
        vocab: the LLM pool (and known roles, modes, tasks).
        mode: name of the vocabulary mode closest to the team's way of working; ``None`` lets
            the router's mode selector pick the most probable one for the query.
        cost_lambda: λ, utility per $: the cost preference the LLMs are chosen for.
        greedy: most probable LLM per agent; ``False`` samples.
        generator: random source when sampling.

    Returns:
        LLM names, one per agent, in the order of ``roles``.

    Raises:
        RoutingError: no roles, an edge refers to a missing agent or is a self-loop, or
            ``mode`` is not a mode of ``vocab``.
    """
    if not roles:
        raise RoutingError("an external team needs at least one agent role (got none)")
    size = len(roles)
    for src, dst in edges:
        if not (0 <= src < size and 0 <= dst < size) or src == dst:
            raise RoutingError(
                f"edge ({src}, {dst}) is invalid for a team of {size} agents: indices must be in "
                f"0..{size - 1} and differ"
            )
    if mode is not None and mode not in vocab.names("modes"):
        raise RoutingError(
            f"unknown mode {mode!r}; the vocabulary has: {', '.join(vocab.names('modes'))}"
        )
    team_vocab = _with_team_roles(router, roles, vocab)
    h, q, lam = router.query_states([query], team_vocab, cost_lambda)
    _, task = router.task_classifier(q, h["task"], greedy=True)
    modes_valid = torch.ones(len(team_vocab.modes), dtype=torch.bool)
    forced_mode = None if mode is None else torch.tensor([team_vocab.index("modes", mode)])
    decision = router.mode_selector(
        q, h["task"][task.index], h["mode"], modes_valid, forced=forced_mode, greedy=True
    )
    role_index = torch.tensor([team_vocab.index("roles", r) for r in roles])
    price = router.static_graph(team_vocab)["llm"].price
    choice = router.llm_router(
        q, decision.latent, h["mode"][decision.choice.index],
        h["role"][role_index].unsqueeze(0), graph_predecessors(size, list(edges)), h["llm"],
        typical_call_cost(price).to(q.dtype), lam, greedy=greedy, generator=generator,
    )
    return [team_vocab.llms[i].name for i in choice.index[0].tolist()]

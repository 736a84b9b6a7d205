"""FullConnected: every agent sees the outputs of all agents that spoke before it in the round.

Who sees whom:
    round 0 (the only round): agent j sees the query and the outputs of every agent i < j
    (spatial edges i -> j for all i < j, p = 1), so agents run in order 0, 1, ..., k-1 and the
    last agent has read everyone.
Decision:
    k = 1: the single agent's answer (no extra call).
    k > 1: final refer: an LLM reads every agent's output and gives the final answer.
"""

from masr_graph.runtime.topology import Topology, register_topology


@register_topology
class FullConnected(Topology):
    name = "FullConnected"
    description = (
        "Fully connected: each agent reads the answers of all agents before it and adds its own "
        "perspective, so later agents integrate every earlier view; a final node consolidates. "
        "Long prompts and sequential latency; suited to hard problems that need several "
        "complementary experts."
    )
    instruction = (
        "You are part of a team. Read the answers of the teammates shown to you, use what is "
        "correct, point out what is wrong, and give your own complete answer."
    )
    spatial_pattern = "full"

"""CoT (chain of thought): agents reason step by step before answering, without communicating.

Who sees whom:
    round 0 (the only round): every agent sees only the query; no spatial or temporal edges.
Decision:
    k = 1: the single agent's answer is the final answer (no extra call).
    k > 1: majority vote over the agents' answer keys (self-consistency over independent
    reasoning paths).
"""

from masr_graph.runtime.topology import Topology, register_topology


@register_topology
class CoT(Topology):
    name = "CoT"
    description = (
        "Chain of thought: each agent reasons step by step on its own before giving its answer; "
        "several agents are combined by majority vote (self-consistency). One call per agent, "
        "suited to multi-step problems of moderate difficulty."
    )
    instruction = "Think step by step: lay out your reasoning before you state the final answer."
    decision = "majority_vote"

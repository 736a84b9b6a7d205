"""IO (input-output): agents answer the query directly, in one pass, without communicating.

Who sees whom:
    round 0 (the only round): every agent sees only the query; no spatial or temporal edges.
Decision:
    k = 1: the single agent's answer is the final answer (no extra call).
    k > 1: majority vote over the agents' answer keys (independent samples of the same question,
    so counting agreement is the cheapest sound aggregate).
"""

from masr_graph.runtime.topology import Topology, register_topology


@register_topology
class IO(Topology):
    name = "IO"
    description = (
        "Input-output: each agent answers the query directly in a single pass, with no "
        "step-by-step reasoning and no communication; several agents are combined by majority "
        "vote. The cheapest mode, suited to easy or factual queries."
    )
    instruction = "Answer the question directly and concisely."
    decision = "majority_vote"

"""Chain: agents work in sequence, each building on the previous agent's output.

Who sees whom:
    round 0 (the only round): agent i sees the query and agent i-1's output (spatial edge
    i -> i+1 with p = 1); agent 0 sees only the query. Agents run one after another.
Decision:
    k = 1: the single agent's answer (no extra call).
    k > 1: final refer: an LLM reads every agent's output and gives the final answer.
"""

from masr_graph.runtime.topology import Topology, register_topology


@register_topology
class Chain(Topology):
    name = "Chain"
    description = (
        "Chain: agents work one after another, each reading the previous agent's work and "
        "refining or extending it, like a pipeline of specialists; a final node consolidates. "
        "Latency grows with the number of agents; suited to tasks that decompose into stages."
    )
    instruction = (
        "You are one stage of a pipeline of agents. Build on the work of the agent before you: "
        "keep what is right, fix what is wrong, and carry the solution further."
    )
    spatial_pattern = "chain"

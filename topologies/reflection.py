"""Reflection: each agent answers, then critiques and revises its own answer.

Who sees whom:
    round 0: every agent sees only the query (agents independent and concurrent).
    round 1: every agent sees its own round-0 answer (temporal self-edge i -> i) with the
    instruction to critique it and then write a revised answer; agents never see each other.
Decision:
    k = 1: the agent's revised answer (no extra call).
    k > 1: majority vote over the revised answers' keys (the agents are independent, so a vote
    is the natural ensemble and costs no extra call).
"""

from masr_graph.runtime.topology import Topology, register_topology


@register_topology
class Reflection(Topology):
    name = "Reflection"
    description = (
        "Reflection: each agent first answers, then reviews its own answer, critiques the "
        "reasoning for mistakes and writes a revised answer. Two calls per agent, no "
        "communication between agents; suited to problems where careful self-checking catches "
        "slips such as arithmetic or logic errors."
    )
    rounds = 2
    temporal_pattern = "self"
    decision = "majority_vote"
    round_instructions = (
        "",
        "Below is your own answer from the previous round. First critique it: check every "
        "step for errors, missing cases and unjustified claims. Then write a revised, complete "
        "answer (restate it if it was already correct).",
    )

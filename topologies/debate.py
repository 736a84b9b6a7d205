"""Debate: agents answer independently, then argue over several rounds.

Who sees whom:
    round 0: every agent sees only the query (no spatial edges; agents run concurrently).
    round r >= 1: every agent sees every agent's round r-1 answer, the others' and its own
    (temporal edges i -> j for all i, j), and is asked to weigh them and give an updated answer.
    Two rounds by default; subclass with ``rounds = 3`` for longer debates.
Needs at least 2 agents (a debate with one agent is Reflection).
Decision:
    final refer: an LLM judge reads the agents' last-round answers and gives the final answer.
    Chosen over majority vote because after a short debate the agents often still disagree and
    a judge can weigh their arguments instead of counting them, because it works for tasks with
    no canonical answer key (code), and because it costs one call on top of k x rounds calls.
    A vote-decided variant is a three-line subclass with ``decision = "majority_vote"``.
"""

from masr_graph.runtime.topology import Topology, register_topology


@register_topology
class Debate(Topology):
    name = "Debate"
    description = (
        "Debate: several agents answer independently, then over further rounds each reads all "
        "agents' previous answers, challenges flawed reasoning and defends or revises its own; "
        "a judge gives the final answer. Costs agents x rounds calls; suited to hard questions "
        "where independent errors can be caught by disagreement."
    )
    instruction = (
        "You are one of several agents debating this question. Reason carefully and argue for "
        "the answer you believe is correct; do not simply agree with the others."
    )
    rounds = 2
    min_agents = 2
    temporal_pattern = "all"
    round_instructions = (
        "",
        "Below are the previous-round answers of the other agents and your own. Compare them, "
        "identify where and why they disagree, point out any errors, and give your updated "
        "answer. Change your answer only if the arguments convince you.",
    )

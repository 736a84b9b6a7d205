"""Escalation: cheap agents answer independently; only when they disagree does an expert answer.

Who sees whom:
    round 0 (the only round): agents 0..k-2 see only the query (no spatial or temporal edges);
    they run concurrently.
    the expert (agent k-1) runs only if those agents' answers disagree (or one has no answer);
    it then sees only the query, not their answers, so a strong expert is not talked into a
    wrong majority or minority.
Decision:
    escalate: if agents 0..k-2 all give the same answer (by the task's answer key), that answer is
    final and the expert costs nothing; otherwise the expert's answer is final. Agreement of
    independent LLMs is strong evidence of a right answer, so the expensive call is paid only on
    the queries that need it (the pattern of cascades such as FrugalGPT and AutoMix, here as one
    team the router staffs per query).
Needs at least 3 agents: two that can disagree and the expert.
"""

from masr_graph.runtime.topology import Topology, register_topology


@register_topology
class Escalation(Topology):
    name = "Escalation"
    description = (
        "Escalation: two or more agents answer the query independently; if they all agree their "
        "answer is final, and only if they disagree does the last agent, an expert, answer the "
        "query alone. Pays the expert only on contested queries; suited to teams of cheap "
        "agents backed by one strong LLM."
    )
    instruction = "Answer the question carefully and give your final answer clearly."
    decision = "escalate"
    min_agents = 3

"""The multi-agent runtime: collaboration modes (topologies), role profiles, the execution engine,
the decision node, traces and the code sandbox.

Typical use::

    from masr_graph.llm import LLMPool
    from masr_graph.plan import Plan
    from masr_graph.runtime import MASExecutor

    async with LLMPool.from_yaml("pool.yaml") as pool:
        executor = MASExecutor(pool)
        plan = Plan("Debate", ("Algebra Specialist", "Solution Verifier"), ("gpt-4o-mini",) * 2)
        trace = await executor.run("What is 6 x 7?", plan, query_id="q1")
        print(trace.final_answer, trace.cost_usd)
"""

from .decision import AnswerKey, Vote, final_refer_messages, majority_vote, normalized_text_key
from .engine import (
    MASExecutor,
    QueryItem,
    edge_probabilities,
    extract_last_python_block,
    failure_note,
    round_rng,
    sample_spatial_edges,
)
from .roles import (
    DOMAINS,
    POSTPROCESSORS,
    Role,
    get_role,
    load_roles,
    register_role,
    roles_for_domain,
)
from .sandbox import SandboxResult, arun_python, run_python
from .topology import (
    DECISION_METHODS,
    SPATIAL_PATTERNS,
    TEMPORAL_PATTERNS,
    Topology,
    get_topology,
    load_topology_file,
    register_topology,
    topology_from_spec,
    topology_names,
)
from .trace import AgentStep, DecisionStep, RoundRecord, Trace

__all__ = [
    "AgentStep",
    "AnswerKey",
    "DECISION_METHODS",
    "DOMAINS",
    "DecisionStep",
    "MASExecutor",
    "POSTPROCESSORS",
    "QueryItem",
    "Role",
    "RoundRecord",
    "SPATIAL_PATTERNS",
    "SandboxResult",
    "TEMPORAL_PATTERNS",
    "Topology",
    "Trace",
    "Vote",
    "arun_python",
    "edge_probabilities",
    "extract_last_python_block",
    "failure_note",
    "final_refer_messages",
    "get_role",
    "get_topology",
    "load_roles",
    "load_topology_file",
    "majority_vote",
    "normalized_text_key",
    "register_role",
    "register_topology",
    "roles_for_domain",
    "round_rng",
    "run_python",
    "sample_spatial_edges",
    "topology_from_spec",
    "topology_names",
]

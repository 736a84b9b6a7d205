"""Offline recorded-outcome LLM pool ("replay" backend) and the replay benchmark.

Nine real LLMs (7B-70B, $0.1-$0.9 per 1M tokens) replay whether they solved each of 2,295 recorded
GSM8K, MATH, MBPP, HumanEval and MMLU-style queries (LLMRouter's outcome table), through the same
LLM layer as real providers, so routers can be trained and compared offline on real per-query
strengths and weaknesses. Importing this package registers the ``replay://`` transport.

Typical use::

    from masr_graph.replay import ReplayBenchmark, backend_info, replay_pool

    bench = ReplayBenchmark(seed=0, split_file="runs/replay_split.json")
    pool = replay_pool(budget=Budget(1.0))          # any LLMPool keyword
    ...                                             # route and run bench.examples("test")
    meta = backend_info(pool)                       # write it next to every result

What recorded outcomes cannot tell (how agents influence each other) is stated by a collaboration
rule (:mod:`.rules`, default ``"stubborn"``).
"""
from .answers import synthesize_reply
from .backend import (
    REPLAY_SCHEME,
    TOKEN_RULE,
    QueryMatcher,
    ReplayConfig,
    ReplayTransport,
    backend_info,
    recorded_outcome,
    replay_pool,
    replay_specs,
)
from .outcomes import (
    OUTCOME_SET,
    REPLAY_BENCHMARK,
    REPLAY_TASKS,
    OutcomeTable,
    RecordedLLM,
    RecordedQuery,
    ReplayBenchmark,
    load_outcome_table,
    make_replay_split,
)
from .rules import (
    DEFAULT_RULE,
    CollaborationRule,
    RuleCall,
    StubbornRule,
    get_rule,
    register_rule,
    rule_names,
)

__all__ = [
    "DEFAULT_RULE",
    "OUTCOME_SET",
    "REPLAY_BENCHMARK",
    "REPLAY_SCHEME",
    "REPLAY_TASKS",
    "TOKEN_RULE",
    "CollaborationRule",
    "OutcomeTable",
    "QueryMatcher",
    "RecordedLLM",
    "RecordedQuery",
    "ReplayBenchmark",
    "ReplayConfig",
    "ReplayTransport",
    "RuleCall",
    "StubbornRule",
    "backend_info",
    "get_rule",
    "load_outcome_table",
    "make_replay_split",
    "recorded_outcome",
    "register_rule",
    "replay_pool",
    "replay_specs",
    "rule_names",
    "synthesize_reply",
]

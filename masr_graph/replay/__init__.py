"""Offline recorded LLM pools ("replay" backend) and the recorded worlds behind them.

Two worlds (:mod:`.worlds`): **zeroeval** — the real reply text of 43 LLMs to GSM8K test and 41
to MATH level 5 (ZeroEval's greedy recordings) — and **llmrouter** — whether each of 9 LLMs solved
each of 2,295 GSM8K, MATH, MBPP, HumanEval and MMLU-style queries (LLMRouter's outcome table).
Their LLMs answer through the same LLM layer as real providers (``replay://`` transport, registered
when this package is imported), so routers are trained and compared offline on real per-query
behaviour. What recordings cannot tell — how agents influence each other — is stated by a
collaboration rule (:mod:`.rules`, default ``calibrated``: calibrated on real debates).

Typical use::

    from masr_graph.replay import backend_info, load_world, replay_pool, world_split

    world = load_world("zeroeval")
    split = world_split(world, "gsm8k", seed=0, split_file="runs/zeroeval-gsm8k.json")
    pool = replay_pool("zeroeval", "paper5", task="gsm8k")   # any LLMPool keyword too
    ...                                                      # route and run the test examples
    meta = backend_info(pool)                                # write it next to every result
"""
from .answers import synthesize_reply
from .backend import (
    REPLAY_SCHEME,
    QueryMatcher,
    ReplayConfig,
    ReplayTransport,
    backend_info,
    replay_pool,
    replay_specs,
)
from .calibration import TransitionTable, holdout_check
from .outcomes import OutcomeTable, RecordedLLM, RecordedQuery, load_outcome_table, recorded_outcome
from .pools import pool_names, resolve_pool
from .rules import (
    DEFAULT_RULE,
    CalibratedRule,
    CollaborationRule,
    RuleCall,
    StubbornRule,
    get_rule,
    register_rule,
    rule_names,
)
from .tokens import TOKEN_RULE
from .worlds import WORLDS, World, load_world, split_examples_of, world_split
from .zeroeval import ReplyTable, load_reply_table, reply_verdicts

__all__ = [
    "DEFAULT_RULE",
    "REPLAY_SCHEME",
    "TOKEN_RULE",
    "WORLDS",
    "CalibratedRule",
    "CollaborationRule",
    "OutcomeTable",
    "QueryMatcher",
    "RecordedLLM",
    "RecordedQuery",
    "ReplayConfig",
    "ReplayTransport",
    "ReplyTable",
    "RuleCall",
    "StubbornRule",
    "TransitionTable",
    "World",
    "backend_info",
    "get_rule",
    "holdout_check",
    "load_outcome_table",
    "load_reply_table",
    "load_world",
    "pool_names",
    "recorded_outcome",
    "register_rule",
    "replay_pool",
    "replay_specs",
    "reply_verdicts",
    "resolve_pool",
    "rule_names",
    "split_examples_of",
    "synthesize_reply",
    "world_split",
]

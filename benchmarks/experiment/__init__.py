"""The wiring of experiments: which pool, which examples, the runtime, training and evaluation
(:mod:`.wiring`), the one path from plans to scored results (:mod:`.pipeline`) and the methods
MasRouter is compared with (:mod:`.baselines`)."""
from .wiring import (
    DEFAULT_ROUTER_CONFIG,
    REPLAY_BENCHMARKS,
    RoutedMethod,
    Runtime,
    Splits,
    evaluate_method,
    fit_trainer,
    load_examples,
    make_trainer,
    open_runtime,
    pool_specs,
    sample_examples,
    spending_text,
    vocab_for_pool,
)

__all__ = [
    "DEFAULT_ROUTER_CONFIG",
    "REPLAY_BENCHMARKS",
    "RoutedMethod",
    "Runtime",
    "Splits",
    "evaluate_method",
    "fit_trainer",
    "load_examples",
    "make_trainer",
    "open_runtime",
    "pool_specs",
    "sample_examples",
    "spending_text",
    "vocab_for_pool",
]

"""The wiring of experiments: which pool, the runtime, training and evaluation (:mod:`.wiring`),
the one path from plans to scored results (:mod:`.pipeline`), the methods MasRouter is compared
with (:mod:`.baselines`, :mod:`.routers`), the plan library (:mod:`.library`), the evaluation
protocol's pairs, cells and methods (:mod:`.protocol`) and the runner of its grid
(:mod:`.grid`)."""
from .wiring import (
    DEFAULT_ROUTER_CONFIG,
    RoutedMethod,
    Runtime,
    checkpoint_pool,
    evaluate_method,
    fit_trainer,
    is_pool_file,
    make_trainer,
    open_runtime,
    pool_spending,
    pool_specs,
    spending_text,
)

__all__ = [
    "DEFAULT_ROUTER_CONFIG",
    "RoutedMethod",
    "Runtime",
    "checkpoint_pool",
    "evaluate_method",
    "fit_trainer",
    "is_pool_file",
    "make_trainer",
    "open_runtime",
    "pool_spending",
    "pool_specs",
    "spending_text",
]

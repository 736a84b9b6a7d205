"""masr_graph: Multi-Agent System Routing as a graph-neural router on PyTorch Geometric."""
from .errors import (
    BudgetExceeded,
    ConfigError,
    DataError,
    LLMCallError,
    MasrError,
    MissingAPIKeyError,
    RoutingError,
    TopologyError,
    UnknownQueryError,
)
from .plan import Plan

__version__ = "0.1.0"

__all__ = [
    "BudgetExceeded",
    "ConfigError",
    "DataError",
    "LLMCallError",
    "MasrError",
    "MissingAPIKeyError",
    "Plan",
    "RoutingError",
    "TopologyError",
    "UnknownQueryError",
]

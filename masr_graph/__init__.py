"""masr_graph: Multi-Agent System Routing as a graph-neural router on PyTorch Geometric."""
from .errors import (
    BatchBudgetExceeded,
    BudgetExceeded,
    ConfigError,
    DataError,
    LLMCallError,
    MasrError,
    MissingAPIKeyError,
    RoleError,
    RoutingError,
    SandboxError,
    TopologyError,
    UnknownLLMError,
    UnknownQueryError,
)
from .plan import Plan

__version__ = "0.1.0"

__all__ = [
    "BatchBudgetExceeded",
    "BudgetExceeded",
    "ConfigError",
    "DataError",
    "LLMCallError",
    "MasrError",
    "MissingAPIKeyError",
    "Plan",
    "RoleError",
    "RoutingError",
    "SandboxError",
    "TopologyError",
    "UnknownLLMError",
    "UnknownQueryError",
]

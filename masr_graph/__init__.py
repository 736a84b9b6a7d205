"""masr_graph: Multi-Agent System Routing as a graph-neural router on PyTorch Geometric.

The front door is :class:`MAS` (``masr_graph.mas``, imported on first use so that
``import masr_graph`` stays fast)::

    from masr_graph import MAS
    with MAS.from_checkpoint("zeroeval-paper5-gsm8k") as mas:   # shipped name or a .pt path
        result = mas.run(query, cost_lambda=100)
"""
from typing import Any

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

_LAZY = {"MAS": "mas", "MASResult": "mas"}
"""Public names imported from their module on first access (they pull in torch)."""


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BatchBudgetExceeded",
    "BudgetExceeded",
    "ConfigError",
    "DataError",
    "LLMCallError",
    "MAS",
    "MASResult",
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

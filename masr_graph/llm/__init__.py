"""The LLM layer: pool config, async chat over OpenAI-compatible endpoints, cache, budget, ledger.

Typical use::

    from masr_graph.llm import Budget, LLMPool, ResponseCache

    async with ResponseCache("runs/cache.sqlite") as cache:
        async with LLMPool.from_yaml("pool.yaml", cache=cache, budget=Budget(5.0)) as pool:
            result = await pool.chat("gpt-4o-mini", [{"role": "user", "content": "2+2?"}])
            print(result.text, result.record.cost_usd)
            print(pool.ledger.summary())
"""

from .budget import Budget, Reservation
from .cache import CachedResponse, ResponseCache, cache_key
from .config import load_pool_config
from .health import CIRCUIT_STATES, EndpointHealth, HealthEvent
from .ledger import Ledger
from .pool import (
    DEFAULT_CIRCUIT_AFTER,
    DEFAULT_CIRCUIT_OPEN_S,
    DEFAULT_FAIL_FAST_AFTER,
    UNKNOWN_OUTCOME_COSTS,
    LLMPool,
)
from .tokens import estimate_prompt_tokens, estimate_text_tokens, prompt_tokens_upper_bound
from .transport import (
    OpenAITransport,
    TransientError,
    TransportFactory,
    register_transport,
    transport_factory,
)
from .types import (
    CallContext,
    CallRecord,
    ChatResult,
    Completion,
    LLMSpec,
    Message,
    Transport,
    UsageTotals,
    notional_note,
)

__all__ = [
    "Budget",
    "CIRCUIT_STATES",
    "CachedResponse",
    "DEFAULT_CIRCUIT_AFTER",
    "DEFAULT_CIRCUIT_OPEN_S",
    "DEFAULT_FAIL_FAST_AFTER",
    "EndpointHealth",
    "HealthEvent",
    "CallContext",
    "CallRecord",
    "ChatResult",
    "Completion",
    "LLMPool",
    "LLMSpec",
    "Ledger",
    "Message",
    "OpenAITransport",
    "Reservation",
    "ResponseCache",
    "TransientError",
    "Transport",
    "TransportFactory",
    "UNKNOWN_OUTCOME_COSTS",
    "UsageTotals",
    "cache_key",
    "estimate_prompt_tokens",
    "estimate_text_tokens",
    "load_pool_config",
    "notional_note",
    "prompt_tokens_upper_bound",
    "register_transport",
    "transport_factory",
]

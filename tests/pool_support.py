"""Small helpers shared by the LLM-pool tests."""
from __future__ import annotations

from typing import Any, Sequence

from masr_graph.llm import LLMPool, LLMSpec


def user(text: str) -> list[dict[str, str]]:
    """A one-message chat."""
    return [{"role": "user", "content": text}]


def loopback_spec(server: Any, name: str = "m", **fields: Any) -> LLMSpec:
    """An :class:`LLMSpec` of ``name`` (model ``model-<name>``) served by the loopback
    ``server``; ``fields`` set or override the others (prices, timeouts...)."""
    fields = {"model": f"model-{name}", "base_url": server.base_url, "price_in": 3.0,
              "price_out": 15.0, "description": "loopback model", **fields}
    return LLMSpec(name=name, **fields)


def fast_pool(specs: Sequence[LLMSpec], **kwargs: Any) -> LLMPool:
    """An :class:`LLMPool` whose retries back off for milliseconds, not seconds."""
    kwargs.setdefault("backoff_base_s", 0.001)
    kwargs.setdefault("backoff_max_s", 1.0)
    return LLMPool(specs, **kwargs)

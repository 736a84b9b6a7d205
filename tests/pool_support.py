"""Small helpers shared by the LLM-pool tests."""
from __future__ import annotations

from typing import Any, Sequence

from masr_graph.llm import LLMPool, LLMSpec


def user(text: str) -> list[dict[str, str]]:
    """A one-message chat."""
    return [{"role": "user", "content": text}]


def fast_pool(specs: Sequence[LLMSpec], **kwargs: Any) -> LLMPool:
    """An :class:`LLMPool` whose retries back off for milliseconds, not seconds."""
    kwargs.setdefault("backoff_base_s", 0.001)
    kwargs.setdefault("backoff_max_s", 1.0)
    return LLMPool(specs, **kwargs)

"""Awaiting with a time limit without losing a cancellation.

``asyncio.wait_for`` before Python 3.12 returns the result, and swallows the cancellation, when
the task awaiting it is cancelled in the same loop iteration in which the awaited call completes
(CPython gh-86296). With calls that complete at once — cache hits, replayed LLMs — that race is
common, and a swallowed cancellation is a Ctrl-C that a run may ignore: it carries on. On 3.11+
:func:`within` uses ``asyncio.timeout``, which re-raises the cancellation; on 3.10 it falls back
to ``wait_for``.
"""
from __future__ import annotations

import asyncio
from typing import Awaitable, Optional, TypeVar

T = TypeVar("T")


async def within(awaitable: Awaitable[T], seconds: Optional[float]) -> T:
    """``await awaitable``, raising :class:`TimeoutError` after ``seconds`` (``None``: never).

    Raises:
        TimeoutError: the time ran out (the awaitable is cancelled).
        asyncio.CancelledError: the awaiting task was cancelled, even as the awaitable completed.
    """
    timeout = getattr(asyncio, "timeout", None)
    if timeout is None:  # Python 3.10
        return await asyncio.wait_for(awaitable, seconds)
    async with timeout(seconds):
        return await awaitable

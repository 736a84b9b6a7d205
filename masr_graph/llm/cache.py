"""Persistent, content-addressed cache of chat completions (SQLite in WAL mode).

The key is the sha256 of a canonical JSON of what determines a reply — model id, ``base_url``,
messages, sampling parameters and seed — and of nothing else: API keys, headers and the caller's
:class:`~masr_graph.llm.types.CallContext` never enter it. The value is the reply text, its token
usage and what the original call cost, so a re-run can report "would have cost" while paying $0.

Concurrency and crash safety. One SQLite connection is owned by one worker thread; every
``get``/``put`` is a short job on that thread, awaited from the event loop. So any number of
asyncio tasks can write at once without blocking the loop on disk I/O or on SQLite's lock, and
the thread serialises them (SQLite allows one writer at a time anyway). Each ``put`` is its own
committed transaction before it returns, so whatever a caller has received survives a SIGKILL.
WAL with ``synchronous=NORMAL`` keeps committed transactions across a process crash; only an OS
crash or power loss can roll back the last few, which costs re-doing those calls, never a corrupt
file. Other processes may share the file (``busy_timeout`` waits for their locks).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, TypeVar, Union

from .types import Message

T = TypeVar("T")

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    text TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    usage_estimated INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    finish_reason TEXT,
    created_at REAL NOT NULL
)
"""


@dataclass(frozen=True)
class CachedResponse:
    """A stored reply.

    Args:
        text: the assistant's reply.
        prompt_tokens, completion_tokens: usage of the original call.
        usage_estimated: the usage was estimated because the provider did not report it.
        cost_usd: what the original call cost ($), reported as "would have cost" on a hit.
        finish_reason: as reported by the provider, if any.
    """

    text: str
    prompt_tokens: int
    completion_tokens: int
    usage_estimated: bool
    cost_usd: float
    finish_reason: Optional[str] = None


def cache_key(
    *,
    model: str,
    base_url: str,
    messages: Sequence[Message],
    params: Mapping[str, Any],
) -> str:
    """sha256 hex digest of the canonical JSON of a request.

    Args:
        model: the provider's model id.
        base_url: the endpoint; a trailing ``/`` does not change the key.
        messages: the chat messages, in order.
        params: sampling parameters as sent (``max_tokens``, ``temperature``, ``seed``...);
            a parameter set to ``None`` is the same as an absent one.
    """
    canonical = json.dumps(
        {
            "model": model,
            "base_url": base_url.rstrip("/"),
            "messages": [dict(m) for m in messages],
            "params": {k: v for k, v in params.items() if v is not None},
        },
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class ResponseCache:
    """SQLite-backed reply cache; see the module docstring for the concurrency design.

    Args:
        path: database file, created with its parent directories if missing.
        busy_timeout_s: how long to wait for another process's lock before failing.

    Use as ``async with ResponseCache(path) as cache:`` or call :meth:`aclose` when done.
    """

    def __init__(self, path: Union[str, "os.PathLike[str]"], *, busy_timeout_s: float = 30.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="masr-cache")
        self._connection: Optional[sqlite3.Connection] = None
        self._busy_timeout_s = busy_timeout_s
        # Open now, on the worker thread, so a bad path fails here and not on the first call.
        self._executor.submit(self._open).result()

    def _open(self) -> None:
        connection = sqlite3.connect(
            self.path, timeout=self._busy_timeout_s, isolation_level=None, check_same_thread=True
        )
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute(_SCHEMA)
        connection.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self._connection = connection

    async def _run(self, job: Callable[[sqlite3.Connection], T]) -> T:
        if self._connection is None:
            raise RuntimeError(f"the response cache {str(self.path)!r} is closed")
        connection = self._connection
        return await asyncio.get_running_loop().run_in_executor(self._executor, job, connection)

    async def get(self, key: str) -> Optional[CachedResponse]:
        """The stored reply for ``key``, or ``None``."""

        def job(connection: sqlite3.Connection) -> Optional[tuple[Any, ...]]:
            return connection.execute(
                "SELECT text, prompt_tokens, completion_tokens, usage_estimated, cost_usd, "
                "finish_reason FROM responses WHERE key = ?",
                (key,),
            ).fetchone()

        row = await self._run(job)
        if row is None:
            return None
        text, prompt_tokens, completion_tokens, estimated, cost, finish_reason = row
        return CachedResponse(
            text, prompt_tokens, completion_tokens, bool(estimated), cost, finish_reason
        )

    async def put(self, key: str, model: str, response: CachedResponse) -> None:
        """Store ``response`` under ``key`` and commit before returning. An existing entry is kept
        (the first reply paid for is the one a re-run reproduces)."""

        def job(connection: sqlite3.Connection) -> None:
            connection.execute(
                "INSERT OR IGNORE INTO responses VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key,
                    model,
                    response.text,
                    response.prompt_tokens,
                    response.completion_tokens,
                    int(response.usage_estimated),
                    response.cost_usd,
                    response.finish_reason,
                    time.time(),
                ),
            )

        await self._run(job)

    async def count(self) -> int:
        """Number of stored replies."""
        return await self._run(lambda c: c.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    async def aclose(self) -> None:
        """Close the database; further use raises ``RuntimeError``."""
        if self._connection is None:
            return
        connection, self._connection = self._connection, None
        await asyncio.get_running_loop().run_in_executor(self._executor, connection.close)
        self._executor.shutdown(wait=True)

    async def __aenter__(self) -> "ResponseCache":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

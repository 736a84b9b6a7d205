"""Accounting of every chat call: totals per run, per query and per (query, agent), JSONL export.

Token counts of a record are those of the reply (also for a cache hit, whose ``cost_usd`` is 0);
money paid for failed attempts the provider billed is in ``billed_failed_usd`` and is part of
``cost_usd``, and so is what attempts of unknown outcome (timeouts, dropped connections, garbled
replies, cancellations) were charged, in ``estimated_usd``: the ledger's ``cost_usd`` total is
exactly what the run's :class:`~masr_graph.llm.budget.Budget` counted as spent.
``would_have_cost_usd`` sums what the calls cost when they were first made, so
``would_have_cost_usd - cost_usd`` is what the cache saved minus what failures added.

Persistence. A ledger given a ``path`` appends each record to that JSONL file as it is added —
one ``write`` of one line to a file opened with ``O_APPEND``, so the line reaches the operating
system before :meth:`Ledger.add` returns. A crash or SIGKILL of the process loses no record
added before it (an OS crash or power loss may lose the last few, as with the response cache);
several processes may append to one file without interleaving their lines; and
:meth:`Ledger.from_jsonl` reads the file, skipping a last line cut short by a kill mid-write.
What cannot be on record is an attempt still in flight when the process died: its outcome was
never known.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import defaultdict
from dataclasses import fields, replace
from pathlib import Path
from typing import Callable, Hashable, Iterable, Optional, TypeVar, Union

from ..files import write_atomically
from .types import CallRecord, UsageTotals

K = TypeVar("K", bound=Hashable)

log = logging.getLogger(__name__)

_RECORD_FIELDS = {f.name for f in fields(CallRecord)}


class Ledger:
    """Thread-safe, append-only collection of :class:`CallRecord` s.

    Args:
        records: records to start with (not written to ``path``).
        path: a JSONL file each added record is appended to (see the module docstring); it and
            its parent directories are created if missing, an existing file is appended to.
            ``None``: in memory only.
    """

    def __init__(
        self,
        records: Iterable[CallRecord] = (),
        *,
        path: Optional[Union[str, "os.PathLike[str]"]] = None,
    ):
        self._lock = threading.Lock()
        self._records: list[CallRecord] = list(records)
        # kept as records are added: a grid's progress line asks for the total spent every
        # half second, and summing a replay run's millions of records each time made the
        # ZeroEval 43-LLM pairs spend most of their test cells in that sum
        self._totals = _sum(self._records)
        self.path = Path(path) if path is not None else None
        self._fd: Optional[int] = None
        if self.path is not None:
            self._open()  # now, so an unwritable path fails here and not after a paid call

    def _open(self) -> int:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        return self._fd

    def add(self, record: CallRecord) -> None:
        """Append one call's record (and its line to :attr:`path`, if set).

        Raises:
            OSError: the line cannot be written (disk full...); the record is kept in memory.
        """
        line = b""
        if self.path is not None:
            line = (json.dumps(record.to_dict(), sort_keys=True) + "\n").encode("utf-8")
        with self._lock:
            self._records.append(record)
            _accumulate(self._totals, record)
            if line:
                fd = self._fd if self._fd is not None else self._open()
                view = memoryview(line)
                while view:  # one write in practice; a short write is continued, never torn
                    view = view[os.write(fd, view):]

    def close(self) -> None:
        """Close :attr:`path` (a later :meth:`add` reopens it)."""
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    @property
    def records(self) -> list[CallRecord]:
        """A snapshot of the records, in the order calls finished."""
        with self._lock:
            return list(self._records)

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)

    def totals(self, where: Optional[Callable[[CallRecord], bool]] = None) -> UsageTotals:
        """Totals over all records (kept as they are added), or over those for which
        ``where(record)`` is true (summed now)."""
        if where is None:
            with self._lock:
                return replace(self._totals, extra=dict(self._totals.extra))
        return _sum(r for r in self.records if where(r))

    def per_run(self) -> dict[str, UsageTotals]:
        """Totals keyed by ``run_id``."""
        return self._group_by(lambda r: r.run_id)

    def per_query(self) -> dict[str, UsageTotals]:
        """Totals keyed by ``query_id``."""
        return self._group_by(lambda r: r.query_id)

    def per_agent(self) -> dict[tuple[str, Optional[int]], UsageTotals]:
        """Totals keyed by ``(query_id, agent)``; ``agent`` is ``None`` for decision nodes."""
        return self._group_by(lambda r: (r.query_id, r.agent))

    def _group_by(self, key: Callable[[CallRecord], K]) -> dict[K, UsageTotals]:
        groups: dict[K, list[CallRecord]] = defaultdict(list)
        for record in self.records:
            groups[key(record)].append(record)
        return {k: _sum(v) for k, v in groups.items()}

    def summary(self) -> str:
        """A human-readable summary of the totals over all records."""
        t = self.totals()
        return (
            f"calls {t.calls} ({t.cached_calls} cached, {t.failed_calls} failed, "
            f"{t.attempts} attempts, {t.estimated_usage_calls} with estimated usage) | "
            f"tokens {t.prompt_tokens} in / {t.completion_tokens} out | "
            f"cost ${t.cost_usd:.6f} (of which ${t.billed_failed_usd:.6f} for "
            f"{t.billed_failed_attempts} billed failed attempts and ${t.estimated_usd:.6f} "
            f"estimated for {t.estimated_attempts} attempts of unknown outcome) | "
            f"would have cost ${t.would_have_cost_usd:.6f} without the cache"
        )

    def to_jsonl(self, path: Union[str, "os.PathLike[str]"]) -> None:
        """Write one JSON object per record to ``path``, replacing it whole (a crash mid-write
        leaves the old file, see :mod:`masr_graph.files`)."""
        write_atomically(path, "".join(json.dumps(r.to_dict(), sort_keys=True) + "\n"
                                       for r in self.records))

    @classmethod
    def from_jsonl(cls, path: Union[str, "os.PathLike[str]"]) -> "Ledger":
        """Read a ledger written by :meth:`to_jsonl` or appended to through ``path``; unknown
        keys are ignored, and so is a last line without its newline that is not JSON (a write
        cut short by a kill)."""
        text = Path(path).read_text(encoding="utf-8")
        lines = text.split("\n")
        records = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError:
                if number == len(lines):  # no newline after it: torn by a crash mid-write
                    log.warning("%s: ignoring its unfinished last line", path)
                    continue
                raise
            records.append(CallRecord(**{k: v for k, v in data.items() if k in _RECORD_FIELDS}))
        return cls(records)


def _sum(records: Iterable[CallRecord]) -> UsageTotals:
    totals = UsageTotals()
    for r in records:
        _accumulate(totals, r)
    return totals


def _accumulate(totals: UsageTotals, r: CallRecord) -> None:
    """Add one record to ``totals`` in place."""
    totals.calls += 1
    totals.cached_calls += int(r.cached)
    totals.failed_calls += int(r.error is not None)
    totals.attempts += r.attempts
    totals.estimated_usage_calls += int(r.usage_estimated)
    totals.billed_failed_attempts += r.billed_failed_attempts
    totals.billed_failed_usd += r.billed_failed_usd
    totals.estimated_attempts += r.estimated_attempts
    totals.estimated_usd += r.estimated_usd
    totals.estimated_cost_calls += int(r.cost_estimated)
    totals.prompt_tokens += r.prompt_tokens
    totals.completion_tokens += r.completion_tokens
    totals.cost_usd += r.cost_usd
    totals.would_have_cost_usd += r.would_have_cost_usd
    totals.latency_s += r.latency_s

"""The per-query result store of a run.

Per-query records go to append-only JSONL files (one line per query, flushed and fsynced), so a
crash loses at most the line being written and a rerun resumes where the last one stopped. The
protocol's tables and plots are built from them (:mod:`.protocol`, :mod:`.fronts`).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional



@dataclass
class QueryResult:
    """The outcome of one method on one query."""

    benchmark: str
    method: str
    query_id: str
    correct: float
    cost_usd: float
    would_have_cost_usd: float
    calls: int
    prompt_tokens: int
    completion_tokens: int
    mode: str = ""
    llms: list[str] = field(default_factory=list)
    roles: list[str] = field(default_factory=list)
    extracted: Optional[str] = None
    error: Optional[str] = None

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class RunStore:
    """Append-only per-query store under ``out_dir/traces/<benchmark>/<method>.jsonl``.

    Each line holds the :class:`QueryResult` and, optionally, the full run trace."""

    def __init__(self, out_dir: Path | str):
        self.out_dir = Path(out_dir)
        self.traces_dir = self.out_dir / "traces"

    def path(self, benchmark: str, method: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_.=" else "_" for c in method)
        return self.traces_dir / benchmark / f"{safe}.jsonl"

    def load(self, benchmark: str, method: str) -> dict[str, QueryResult]:
        """Results already recorded for this method; a torn last line (crash) is ignored."""
        path = self.path(benchmark, method)
        done: dict[str, QueryResult] = {}
        if not path.exists():
            return done
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                result = QueryResult(**row["result"])
                done[result.query_id] = result
        return done

    def append(self, result: QueryResult, trace: Optional[Mapping[str, Any]] = None) -> None:
        path = self.path(result.benchmark, result.method)
        path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"result": asdict(result), "trace": trace}, default=str)
        with path.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())



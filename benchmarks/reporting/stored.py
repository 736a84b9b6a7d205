"""Tables that several invocations into one ``--out`` build together (``ablations.md``,
``headroom.md``): each invocation reads the stored JSON, merges its own pairs in and rewrites
the JSON and the markdown under a file lock, so two invocations side by side (say one per
world) do not drop each other's pairs."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable

from filelock import FileLock

from masr_graph.files import write_atomically


def update_tables(out: Path, stem: str, merge: Callable[[dict[str, Any]], dict[str, Any]],
                  render: Callable[[dict[str, Any]], str]) -> str:
    """Under ``<stem>.lock``: ``merge`` what ``<stem>.json`` holds (:func:`read_tables`), write
    the result there and ``render`` it into ``<stem>.md``; returns the markdown."""
    with FileLock(str(out / f"{stem}.lock")):
        tables = merge(read_tables(out / f"{stem}.json"))
        write_atomically(out / f"{stem}.json", json.dumps(tables, indent=1, default=str))
        text = render(tables)
        write_atomically(out / f"{stem}.md", text)
    return text


def read_tables(path: Path) -> dict[str, Any]:
    """The pairs an earlier invocation wrote to ``path`` (none if there is no file; an
    unreadable one is named on stderr and its tables are replaced; what its pairs executed
    stays stored)."""
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        print(f"warning: {path} is unreadable ({exc}); its tables are replaced", file=sys.stderr)
        return {}
    return stored if isinstance(stored, dict) else {}

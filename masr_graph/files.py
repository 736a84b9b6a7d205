"""Files that readers and crashes see whole: the old version or the new one, never half of one.

Encoder caches, router checkpoints, ledger exports (:meth:`~masr_graph.llm.ledger.Ledger.to_jsonl`),
a pair's ``library.json``, the ZeroEval reply table's and verdicts' pickle caches and the
protocol's and ablations' tables go through :func:`replaced_atomically`, so a run killed
mid-write or two runs writing one file side by side (two invocations into one ``--out``) leave a
readable file.
"""
from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Union


@contextlib.contextmanager
def replaced_atomically(target: Union[str, Path]) -> Iterator[Path]:
    """A temporary path beside ``target`` to write to; it replaces ``target`` when the block
    ends and is removed if the block raises.

    The temporary's name is unique per process and thread: writers of one path side by side
    must not rename (or overwrite) each other's half-written file.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f"{target.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        yield temporary
        os.replace(temporary, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


def write_atomically(target: Union[str, Path], data: Union[str, bytes]) -> None:
    """Write ``data`` (text as UTF-8) to ``target`` through :func:`replaced_atomically`."""
    with replaced_atomically(target) as temporary:
        if isinstance(data, bytes):
            temporary.write_bytes(data)
        else:
            temporary.write_text(data, encoding="utf-8")

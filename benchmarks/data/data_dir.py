"""Where benchmark data lives, and how a file in it is found, read and fingerprinted.

Resolution order (first that applies wins):

1. an explicit ``data_dir`` argument (the CLI's ``--data-dir`` flag ends up here);
2. the environment variable ``MASR_DATA_DIR``;
3. ``../shared/data`` next to the repository checkout (the repository root is computed from this
   package's location, so it works for an editable install wherever the user runs from), when it
   exists;
4. otherwise :class:`~masr_graph.errors.DataError` telling the user to set ``MASR_DATA_DIR`` or to
   fetch verified copies from their public sources with ``masr data fetch``
   (:func:`masr_graph.benchmarks.data.fetch.fetch_data`).

The layout inside the directory is that of ``shared/data/README.md``: ``gsm8k/{train,test}.jsonl``,
``humaneval/HumanEval.jsonl.gz``, ``mbpp/mbpp.jsonl``, ``math/{test,math500_test}.jsonl``,
``mmlu/{dev,val,test}/<subject>_<split>.csv``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterator, Optional, Union

from masr_graph.errors import DataError

DATA_DIR_ENV = "MASR_DATA_DIR"
"""Environment variable naming the benchmark data directory."""
CACHE_DIR_ENV = "MASR_CACHE_DIR"
"""Environment variable naming where parsed data may be cached (default ``~/.cache/masr_graph``)."""

PathLike = Union[str, "os.PathLike[str]"]

_CHECKOUT_DATA_DIR = Path(__file__).resolve().parents[3] / "shared" / "data"
_FIX_HINT = (
    f"set {DATA_DIR_ENV}=/path/to/data (layout of shared/data/README.md), pass data_dir=... "
    "(CLI: --data-dir), or download verified copies of the public sources with "
    "`masr data fetch --dest DIR` (masr_graph.benchmarks.fetch_data)"
)


def resolve_data_dir(data_dir: Optional[PathLike] = None) -> Path:
    """Return the benchmark data directory (see the module docstring for the order).

    Args:
        data_dir: explicit directory; wins over the environment and the checkout default.

    Raises:
        DataError: an explicitly given directory (argument or ``MASR_DATA_DIR``) does not exist,
            or no directory was given and the checkout default is absent.
    """
    if data_dir is not None:
        return _existing_dir(Path(data_dir), "the data_dir argument")
    from_env = os.environ.get(DATA_DIR_ENV)
    if from_env:
        return _existing_dir(Path(from_env), f"${DATA_DIR_ENV}")
    if _CHECKOUT_DATA_DIR.is_dir():
        return _CHECKOUT_DATA_DIR
    raise DataError(
        f"no benchmark data directory: no data_dir given, {DATA_DIR_ENV} is not set and "
        f"{_CHECKOUT_DATA_DIR} does not exist; {_FIX_HINT}"
    )


def _existing_dir(path: Path, source: str) -> Path:
    path = path.expanduser()
    if not path.is_dir():
        raise DataError(
            f"benchmark data directory {str(path)!r} (from {source}) does not exist; {_FIX_HINT}"
        )
    return path.resolve()


def cache_dir() -> Path:
    """Where derived data (parsed tables, evaluator verdicts) is cached across processes:
    ``$MASR_CACHE_DIR``, else ``$XDG_CACHE_HOME/masr_graph``, else ``~/.cache/masr_graph``.
    Everything there can be deleted at any time; it is rebuilt from the data directory."""
    explicit = os.environ.get(CACHE_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "masr_graph"


def data_file(relative: str, data_dir: Optional[PathLike] = None) -> Path:
    """Path of ``relative`` (e.g. ``"gsm8k/test.jsonl"``) inside the data directory.

    Raises:
        DataError: the file is missing; the message names the full path and the fix.
    """
    root = resolve_data_dir(data_dir)
    path = root / relative
    if not path.is_file():
        raise DataError(f"benchmark data file {str(path)!r} is missing; {_FIX_HINT}")
    return path


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Yield the JSON objects of a ``.jsonl`` or ``.jsonl.gz`` file, one per non-blank line.

    Raises:
        DataError: a line is not a JSON object (names the file and the line number).
    """
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{str(path)!r} line {number} is not valid JSON: {exc}") from exc
            if not isinstance(row, dict):
                raise DataError(f"{str(path)!r} line {number} is not a JSON object")
            yield row


def require_fields(row: dict[str, Any], fields: tuple[str, ...], path: Path, where: str) -> None:
    """Raise :class:`DataError` naming the file, the row and the missing fields, if any."""
    missing = [name for name in fields if name not in row]
    if missing:
        raise DataError(
            f"{str(path)!r} {where} lacks field(s) {missing}; expected {list(fields)} "
            "(is this the layout of shared/data/README.md?)"
        )


def files_sha256(paths: list[Path]) -> str:
    """Hex sha256 of the files' bytes concatenated in the given order (one file: its own hash)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()

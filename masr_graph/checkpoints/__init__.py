"""Router checkpoints shipped with the package, by name.

Each file ``<world>-<pool>-<task>.pt`` in this folder is a MasRouter trained by
``benchmarks/run_all.py`` on that pair (e.g. ``zeroeval-paper5-gsm8k``: the ZeroEval world's
``paper5`` pool on GSM8K), with its plan library, validation gate and ``origin`` (what it was
trained on), weights in float16. Use a name wherever a checkpoint is asked for::

    from masr_graph import MAS
    mas = MAS.from_checkpoint("zeroeval-paper5-gsm8k")
    masr route "What is 17 * 23?" --checkpoint zeroeval-paper5-gsm8k

They are made from a finished run by the exporter (:mod:`.export`)::

    python -m masr_graph.checkpoints export RUN_DIR [--seed 0]   # writes <pair>.pt here
    python -m masr_graph.checkpoints list

This module imports nothing heavy: listing and resolving names needs no torch.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

from ..errors import ConfigError

FOLDER = Path(__file__).resolve().parent
"""Where shipped checkpoints live (package data, ``setup.cfg``); the exporter's default
destination."""

SUFFIX = ".pt"


def shipped() -> dict[str, Path]:
    """The shipped checkpoints: ``{name: path}``, sorted by name (empty when none is
    shipped)."""
    return {path.stem: path for path in sorted(Path(FOLDER).glob(f"*{SUFFIX}"))
            if path.is_file() and not path.name.startswith(".")}


def _looks_like_name(text: str) -> bool:
    return not text.endswith(SUFFIX) and "/" not in text and os.sep not in text


def resolve(checkpoint: Union[str, "os.PathLike[str]"]) -> Path:
    """The file of ``checkpoint``: a path to a ``.pt`` file, or the name of a shipped one.

    Raises:
        ConfigError: a name that is not shipped (the one-line message lists the shipped names),
            or a path that does not exist.
    """
    path = Path(checkpoint).expanduser()
    if path.is_file():
        return path
    text = str(checkpoint)
    if _looks_like_name(text):
        names = shipped()
        if text in names:
            return names[text]
        listed = (f"shipped: {', '.join(names)}" if names else
                  "none is shipped in this install; make them with `python -m "
                  "masr_graph.checkpoints export RUN_DIR`")
        raise ConfigError(f"unknown checkpoint {text!r}: no such file nor shipped checkpoint "
                          f"({listed}); pass a .pt path or a shipped name")
    raise ConfigError(f"checkpoint {path} does not exist")


__all__ = ["FOLDER", "resolve", "shipped"]

"""Router checkpoints: weights, configuration, the vocabulary trained on, optionally the plan
library it decodes over (:meth:`MasRouter.route` with ``library=``) and the trainer's state
(optimizer, step, random state, baseline) for exact resumption.

A checkpoint holds only tensors and plain Python data, so it is read with
``torch.load(weights_only=True)``: loading a file never runs code from it. The vocabulary stored
is the one the router was trained on, for reference and as a default; the router itself has no
vocabulary-shaped parameter and routes over any other vocabulary passed to it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch

from ..errors import ConfigError
from ..plan import Plan
from .controller import MasRouter, RouterConfig
from .encoder import TextEncoder
from .vocab import NodeVocab

FORMAT_VERSION = 2
"""Version 2 added the plan library; version-1 files (no library) are still read."""


@dataclass
class Checkpoint:
    """A loaded checkpoint.

    Attributes:
        router: the router with its trained weights (in eval mode).
        vocab: the vocabulary it was saved with.
        trainer_state: what :meth:`masr_graph.router.trainer.Trainer.state_dict` returned,
            or ``None`` for a router-only checkpoint.
        library: the candidate plans the router was trained to choose among (empty when it
            decodes stage by stage).
        gate: the validation gate of :class:`~masr_graph.router.library.LibraryPolicy`
            (``{task: {λ: None or library plan index}}``).
    """

    router: MasRouter
    vocab: NodeVocab
    trainer_state: Optional[dict[str, Any]]
    library: tuple[Plan, ...] = ()
    gate: Optional[dict[str, dict[float, Optional[int]]]] = None


def save_checkpoint(
    path: Union[str, Path],
    router: MasRouter,
    vocab: NodeVocab,
    *,
    trainer_state: Optional[dict[str, Any]] = None,
    library: Sequence[Plan] = (),
    gate: Optional[dict[str, dict[float, Optional[int]]]] = None,
) -> Path:
    """Write a checkpoint atomically (a crash never leaves a half-written file).

    Returns:
        The path written.
    """
    target = Path(path).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT_VERSION,
        "router_config": router.config.to_dict(),
        "state_dict": router.state_dict(),
        "vocab": vocab.to_dict(),
        "trainer": trainer_state,
        "library": [plan.to_dict() for plan in library],
        "gate": gate,
    }
    tmp = target.with_name(target.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, target)
    return target


def load_checkpoint(
    path: Union[str, Path], *, encoder: Optional[TextEncoder] = None
) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Args:
        path: the file.
        encoder: text encoder for the router (shares its embedding cache); a new one is created
            on first use when ``None``.

    Raises:
        ConfigError: the file is missing, unreadable, of another format version, or its
            weights do not fit its configuration.
    """
    source = Path(path).expanduser()
    if not source.is_file():
        raise ConfigError(f"checkpoint {source} does not exist")
    try:
        payload = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for a bad file
        raise ConfigError(f"checkpoint {source} is not readable: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") not in (1, FORMAT_VERSION):
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ConfigError(
            f"checkpoint {source} has format {found!r}; this version reads formats 1 and "
            f"{FORMAT_VERSION}"
        )
    router = MasRouter(RouterConfig.from_dict(payload["router_config"]), encoder=encoder)
    try:
        router.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise ConfigError(f"checkpoint {source}: weights do not fit its config: {exc}") from exc
    router.eval()
    return Checkpoint(
        router=router,
        vocab=NodeVocab.from_dict(payload["vocab"]),
        trainer_state=payload["trainer"],
        library=tuple(Plan.from_dict(plan) for plan in payload.get("library", ())),
        gate=payload.get("gate"),
    )

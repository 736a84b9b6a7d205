"""Router checkpoints: weights, configuration, the vocabulary trained on, optionally the plan
library it decodes over (:meth:`MasRouter.route` with ``library=``) and the trainer's state
(optimizer, step, random state, baseline) for exact resumption.

A checkpoint holds only tensors and plain Python data, so it is read with
``torch.load(weights_only=True)``: loading a file never runs code from it. The vocabulary stored
is the one the router was trained on, for reference and as a default; the router itself has no
vocabulary-shaped parameter and routes over any other vocabulary passed to it.

A checkpoint may also record its *origin*: what it was trained on (:data:`ORIGIN_KEYS`: the
recorded world or ``"endpoints"``, the pool, the benchmark, the replay collaboration rule, the
split seed, the training seed and the training-set size), written by the protocol
(``benchmarks/run_all.py``, ``masr train``), so a loader can rebuild the pool it was trained for
(:class:`masr_graph.MAS`, ``masr serve``). Weights may be stored in float16 (shipped checkpoints,
:mod:`masr_graph.checkpoints`, half the size); they are upcast to the router's float32 on load.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Optional, Sequence, Union

import torch

from ..errors import ConfigError
from ..files import replaced_atomically
from ..plan import Plan
from .controller import MasRouter, RouterConfig
from .encoder import TextEncoder
from .plan_outcomes import PlanOutcomeModel
from .vocab import NodeVocab

FORMAT_VERSION = 2
"""Version 2 added the plan library; version-1 files (no library) are still read. The optional
``origin`` entry and float16 weights need no new version: older readers ignore the one and cast
the other on ``load_state_dict``. Nor do ``outcome_models``: files without them read as before,
but a gate naming ``"plan outcomes"`` is refused by readers older than that entry."""

ORIGIN_KEYS = ("world", "pool", "benchmark", "rule", "split_seed", "seed", "train_size")
"""What a checkpoint's ``origin`` records (an origin may hold more, e.g. ``validation_size``,
``lambdas``, ``pair``): ``world`` is a recorded world (``"zeroeval"``, ``"llmrouter"``) or
``"endpoints"`` (then ``pool`` is the pool file's path as given, ``rule`` is ``None``); ``pool``
is the recorded pool's name or comma-separated LLM list; ``benchmark`` the task trained on."""


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
            (``{task: {λ: None, a library plan index or "plan outcomes"}}``).
        outcome_models: ``{task: plan outcome model}`` that gate entries ``"plan outcomes"``
            route with (:class:`~masr_graph.router.plan_outcomes.PlanOutcomeModel`), empty when
            none.
        origin: what the router was trained on (:data:`ORIGIN_KEYS`), or ``None`` for a
            checkpoint written without it (older files, routers trained outside the protocol).
        weights_dtype: the dtype the weights were stored in (``"float32"``, or ``"float16"`` for
            a shipped copy); the loaded router is float32 either way.
    """

    router: MasRouter
    vocab: NodeVocab
    trainer_state: Optional[dict[str, Any]]
    library: tuple[Plan, ...] = ()
    gate: Optional[dict[str, dict[float, Union[None, int, str]]]] = None
    origin: Optional[dict[str, Any]] = None
    weights_dtype: str = "float32"
    outcome_models: dict[str, PlanOutcomeModel] = field(default_factory=dict)


def save_checkpoint(
    path: Union[str, Path],
    router: MasRouter,
    vocab: NodeVocab,
    *,
    trainer_state: Optional[dict[str, Any]] = None,
    library: Sequence[Plan] = (),
    gate: Optional[dict[str, dict[float, Union[None, int, str]]]] = None,
    outcome_models: Optional[dict[str, PlanOutcomeModel]] = None,
    origin: Optional[dict[str, Any]] = None,
    weights_dtype: Optional[torch.dtype] = None,
    full_precision: Collection[str] = (),
) -> Path:
    """Write a checkpoint atomically (a crash never leaves a half-written file).

    Args:
        outcome_models: the plan outcome models the gate names, per task (kept in float32).
        origin: what the router was trained on (:data:`ORIGIN_KEYS`; plain data only).
        weights_dtype: store the floating-point weights in this dtype (``torch.float16`` halves
            the file); ``None`` keeps the router's own.
        full_precision: names (``state_dict`` keys) of weights kept in the router's own dtype
            when ``weights_dtype`` is given.

    Returns:
        The path written.
    """
    target = Path(path).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    state = router.state_dict()
    if weights_dtype is not None:
        state = {name: value.to(weights_dtype)
                 if value.is_floating_point() and name not in full_precision else value
                 for name, value in state.items()}
    payload = {
        "format": FORMAT_VERSION,
        "router_config": router.config.to_dict(),
        "state_dict": state,
        "vocab": vocab.to_dict(),
        "trainer": trainer_state,
        "library": [plan.to_dict() for plan in library],
        "gate": gate,
        "outcome_models": {task: model.to_dict() for task, model in (outcome_models or {}).items()},
    }
    if origin is not None:
        payload["origin"] = dict(origin)
    with replaced_atomically(target) as temporary:
        torch.save(payload, temporary)
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
    own = router.state_dict()
    stored = payload["state_dict"]
    dtypes = sorted({str(v.dtype).removeprefix("torch.") for v in stored.values()
                     if v.is_floating_point()})
    # Weights stored in another precision (float16 in shipped copies) take the router's own.
    state = {name: value.to(own[name].dtype)
             if name in own and value.is_floating_point() and value.dtype != own[name].dtype
             else value for name, value in stored.items()}
    try:
        router.load_state_dict(state)
    except RuntimeError as exc:
        raise ConfigError(f"checkpoint {source}: weights do not fit its config: {exc}") from exc
    router.eval()
    origin = payload.get("origin")
    return Checkpoint(
        router=router,
        vocab=NodeVocab.from_dict(payload["vocab"]),
        trainer_state=payload["trainer"],
        library=tuple(Plan.from_dict(plan) for plan in payload.get("library", ())),
        gate=payload.get("gate"),
        outcome_models={task: PlanOutcomeModel.from_dict(data)
                        for task, data in (payload.get("outcome_models") or {}).items()},
        origin=dict(origin) if isinstance(origin, dict) else None,
        weights_dtype=",".join(dtypes) or "float32",
    )

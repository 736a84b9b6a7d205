"""The node vocabularies the router chooses from: tasks, collaboration modes, roles and LLMs.

A :class:`NodeVocab` is plain, immutable data: ordered records with the text the router embeds
(and a few numbers: agent-count bounds of a mode, prices of an LLM). The router has no parameter
tied to a particular record, so a vocabulary can change between training and routing; adding an
LLM, role or mode is adding a record (``vocab.add_llm(LLMNode(...))`` returns a new vocabulary).
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Optional, Sequence

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..llm.types import LLMSpec


@dataclass(frozen=True)
class TaskNode:
    """A task family a query can belong to; roles are grouped by task.

    Args:
        name: e.g. ``"math"``; roles name it in their ``task`` field.
        description: what queries of this task look like (the node's feature text).
    """

    name: str
    description: str

    @property
    def text(self) -> str:
        """The text embedded as the node's feature."""
        return f"{self.name}: {self.description}"


@dataclass(frozen=True)
class ModeNode:
    """A collaboration mode (a registered topology such as ``"Debate"``).

    Args:
        name: the topology name put in :attr:`masr_graph.plan.Plan.mode`.
        description: how agents collaborate in this mode (feature text).
        min_agents: fewest agents the mode runs with (>= 1).
        max_agents: most agents the mode runs with (>= ``min_agents``), ``None`` for no limit
            (the router then stops at its own ``max_agents``).
    """

    name: str
    description: str
    min_agents: int = 1
    max_agents: Optional[int] = None

    @property
    def text(self) -> str:
        return f"{self.name}: {self.description}"


@dataclass(frozen=True)
class RoleNode:
    """A role an agent can play.

    Args:
        name: unique role name put in :attr:`masr_graph.plan.Plan.roles`.
        task: name of the :class:`TaskNode` the role belongs to (its domain).
        description: what the role is good at (feature text).
    """

    name: str
    task: str
    description: str

    @property
    def text(self) -> str:
        return f"{self.name}: {self.description}"


@dataclass(frozen=True)
class LLMNode:
    """An LLM of the pool.

    Args:
        name: the pool's name for it, put in :attr:`masr_graph.plan.Plan.llms`.
        description: capabilities, size, specialities (feature text).
        price_in: $ per 1M prompt tokens. Required: an LLM of unknown price cannot be routed to.
        price_out: $ per 1M completion tokens.
    """

    name: str
    description: str
    price_in: float
    price_out: float

    @property
    def text(self) -> str:
        return f"{self.name}: {self.description}"

    @classmethod
    def from_spec(cls, spec: "LLMSpec") -> "LLMNode":
        """The node of a pool member (:class:`masr_graph.llm.types.LLMSpec`)."""
        return cls(spec.name, spec.description, spec.price_in, spec.price_out)


Node = TaskNode | ModeNode | RoleNode | LLMNode

NODE_KINDS: tuple[str, ...] = ("tasks", "modes", "roles", "llms")
"""Field names of :class:`NodeVocab`, also the keys of :meth:`NodeVocab.to_dict`."""
_RECORD_TYPES: dict[str, type] = {
    "tasks": TaskNode,
    "modes": ModeNode,
    "roles": RoleNode,
    "llms": LLMNode,
}

DEFAULT_TASKS: tuple[TaskNode, ...] = (
    TaskNode(
        "math",
        "Mathematical problem solving: arithmetic word problems, algebra, geometry, number theory, "
        "counting and probability, calculus; the answer is a number or a closed-form expression "
        "obtained by multi-step quantitative reasoning.",
    ),
    TaskNode(
        "code",
        "Programming: write a correct, self-contained Python function from a natural-language "
        "specification or a signature with a docstring, so that it passes hidden unit tests.",
    ),
    TaskNode(
        "knowledge",
        "Knowledge and reasoning questions across science, history, law, medicine, economics and "
        "common sense, usually multiple choice; the answer is one of the given options.",
    ),
)
"""The three task domains of the built-in roles (``roles/<domain>/``)."""


def _check_text(kind: str, name: Any, **texts: Any) -> None:
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{kind} node: name must be a non-empty string (got {name!r})")
    for label, value in texts.items():
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(
                f"{kind} node {name!r}: {label} must be a non-empty string (got {value!r})"
            )


def _validate_record(kind: str, node: Any) -> None:
    expected = _RECORD_TYPES[kind]
    if not isinstance(node, expected):
        raise ConfigError(f"{kind} must hold {expected.__name__} records (got {node!r})")
    if isinstance(node, ModeNode):
        _check_text("mode", node.name, description=node.description)
        for label in ("min_agents", "max_agents"):
            value = getattr(node, label)
            if label == "max_agents" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(
                    f"mode {node.name!r}: {label} must be an int >= 1 (got {value!r})"
                )
        if node.max_agents is not None and node.max_agents < node.min_agents:
            raise ConfigError(
                f"mode {node.name!r}: max_agents ({node.max_agents}) is below min_agents "
                f"({node.min_agents})"
            )
    elif isinstance(node, LLMNode):
        _check_text("LLM", node.name, description=node.description)
        for label in ("price_in", "price_out"):
            value = getattr(node, label)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value < 0
            ):
                raise ConfigError(
                    f"LLM {node.name!r}: {label} must be a finite number >= 0 in $ per 1M "
                    f"tokens (got {value!r})"
                )
    elif isinstance(node, RoleNode):
        _check_text("role", node.name, task=node.task, description=node.description)
    else:
        _check_text("task", node.name, description=node.description)


@dataclass(frozen=True)
class NodeVocab:
    """Ordered node records of one routing problem.

    The order of each tuple is the index order of the router's distributions
    (``RouterOutput.probs["llms"][..., i]`` is about ``vocab.llms[i]``).

    Args:
        tasks: task families; every task needs at least one role.
        modes: collaboration modes.
        roles: roles, each naming its task.
        llms: the LLM pool.

    Raises:
        ConfigError: a kind is empty, a name repeats within a kind, a record is invalid, a role
            names an unknown task, or a task has no role. The message names the offending
            record and the allowed values.
    """

    tasks: tuple[TaskNode, ...]
    modes: tuple[ModeNode, ...]
    roles: tuple[RoleNode, ...]
    llms: tuple[LLMNode, ...]
    _index: dict[str, dict[str, int]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index: dict[str, dict[str, int]] = {}
        for kind in NODE_KINDS:
            records = tuple(getattr(self, kind))
            object.__setattr__(self, kind, records)
            if not records:
                raise ConfigError(f"a vocabulary needs at least one entry in {kind!r} (got none)")
            names: dict[str, int] = {}
            for i, node in enumerate(records):
                _validate_record(kind, node)
                if node.name in names:
                    raise ConfigError(f"duplicate name {node.name!r} in {kind}")
                names[node.name] = i
            index[kind] = names
        task_names = index["tasks"]
        for role in self.roles:
            if role.task not in task_names:
                raise ConfigError(
                    f"role {role.name!r} belongs to task {role.task!r}; known tasks: "
                    f"{', '.join(task_names)}"
                )
        staffed = {role.task for role in self.roles}
        for task in self.tasks:
            if task.name not in staffed:
                raise ConfigError(
                    f"task {task.name!r} has no role; add a RoleNode with task={task.name!r} or "
                    f"drop the task"
                )
        object.__setattr__(self, "_index", index)

    def index(self, kind: str, name: str) -> int:
        """Position of the record called ``name`` in ``kind`` (one of :data:`NODE_KINDS`).

        Raises:
            ConfigError: ``kind`` or ``name`` is unknown; the message lists the allowed ones.
        """
        if kind not in self._index:
            raise ConfigError(f"unknown node kind {kind!r}; allowed: {', '.join(NODE_KINDS)}")
        try:
            return self._index[kind][name]
        except KeyError:
            raise ConfigError(
                f"unknown {kind[:-1]} {name!r}; the vocabulary has: "
                f"{', '.join(self._index[kind])}"
            ) from None

    def names(self, kind: str) -> list[str]:
        """Names of ``kind`` in index order."""
        if kind not in self._index:
            raise ConfigError(f"unknown node kind {kind!r}; allowed: {', '.join(NODE_KINDS)}")
        return list(self._index[kind])

    @cached_property
    def fingerprint(self) -> str:
        """sha256 of the vocabulary's content; equal vocabularies share cached graph parts."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    # Editing: every edit returns a new, validated vocabulary.
    def _with(self, kind: str, records: Iterable[Node]) -> "NodeVocab":
        return replace(self, **{kind: tuple(records)})

    def _added(self, kind: str, node: Node) -> "NodeVocab":
        return self._with(kind, (*getattr(self, kind), node))

    def _removed(self, kind: str, name: str) -> "NodeVocab":
        self.index(kind, name)
        return self._with(kind, (n for n in getattr(self, kind) if n.name != name))

    def add_llm(self, llm: LLMNode) -> "NodeVocab":
        """A copy with ``llm`` appended to the pool."""
        return self._added("llms", llm)

    def remove_llm(self, name: str) -> "NodeVocab":
        """A copy without the LLM called ``name``."""
        return self._removed("llms", name)

    def add_role(self, role: RoleNode) -> "NodeVocab":
        """A copy with ``role`` appended."""
        return self._added("roles", role)

    def remove_role(self, name: str) -> "NodeVocab":
        """A copy without the role called ``name`` (its task must keep another role)."""
        return self._removed("roles", name)

    def add_mode(self, mode: ModeNode) -> "NodeVocab":
        """A copy with ``mode`` appended."""
        return self._added("modes", mode)

    def remove_mode(self, name: str) -> "NodeVocab":
        """A copy without the mode called ``name``."""
        return self._removed("modes", name)

    def add_task(self, task: TaskNode, roles: Sequence[RoleNode]) -> "NodeVocab":
        """A copy with a new task and the roles that serve it (a task cannot be empty)."""
        return replace(self, tasks=(*self.tasks, task), roles=(*self.roles, *roles))

    def roles_of(self, task: str) -> list[RoleNode]:
        """Roles belonging to ``task``, in vocabulary order."""
        self.index("tasks", task)
        return [role for role in self.roles if role.task == task]

    def to_dict(self) -> dict[str, list[dict[str, Any]]]:
        """JSON-ready form, as stored in checkpoints."""
        return {kind: [asdict(node) for node in getattr(self, kind)] for kind in NODE_KINDS}

    @classmethod
    def from_dict(cls, data: Mapping[str, Sequence[Mapping[str, Any]]]) -> "NodeVocab":
        """Inverse of :meth:`to_dict`.

        Raises:
            ConfigError: a kind is missing or a record has missing or unknown fields.
        """
        missing = [kind for kind in NODE_KINDS if kind not in data]
        if missing:
            raise ConfigError(
                f"vocabulary data lacks {', '.join(missing)}; needed: {', '.join(NODE_KINDS)}"
            )
        built: dict[str, tuple[Node, ...]] = {}
        for kind in NODE_KINDS:
            record_type = _RECORD_TYPES[kind]
            try:
                built[kind] = tuple(record_type(**dict(item)) for item in data[kind])
            except TypeError as exc:
                raise ConfigError(f"invalid {kind} record in vocabulary data: {exc}") from exc
        return cls(**built)

    @classmethod
    def from_registries(
        cls,
        llm_specs: Iterable["LLMSpec"],
        *,
        tasks: Sequence[TaskNode] = DEFAULT_TASKS,
        role_dirs: Sequence[str] = (),
    ) -> "NodeVocab":
        """The vocabulary of the installed registries: every registered topology as a mode,
        every role profile (:func:`masr_graph.runtime.roles.load_roles`) under the task of its
        domain, and the given pool members as LLMs.

        Args:
            llm_specs: the pool, e.g. ``LLMPool.specs.values()`` or ``load_pool_config(path)``.
            tasks: task records; default :data:`DEFAULT_TASKS` (math, code, knowledge).
            role_dirs: extra role directories passed to ``load_roles``.
        """
        # Imported here: the runtime depends on the router's plan type only, and the router
        # must stay importable (and trainable on explicit vocabularies) without the runtime.
        from ..runtime.roles import load_roles
        from ..runtime.topology import get_topology, topology_names

        modes = []
        for name in topology_names():
            topology = get_topology(name)
            modes.append(
                ModeNode(name, topology.description, topology.min_agents, topology.max_agents)
            )
        roles = [
            RoleNode(role.name, role.domain, role.description)
            for role in load_roles(role_dirs).values()
        ]
        return cls(
            tasks=tuple(tasks),
            modes=tuple(modes),
            roles=tuple(roles),
            llms=tuple(LLMNode.from_spec(spec) for spec in llm_specs),
        )

"""Collaboration modes (topologies) and their registry.

A topology is a *template over k agent slots*: which spatial edges may exist inside a round and
with what probability, which temporal edges carry round ``r-1`` outputs into round ``r``, how many
rounds run, the mode's instruction text, and how the final answer is decided. The router picks a
topology by name; the runtime (:mod:`masr_graph.runtime.engine`) samples and executes it.

Writing a new one takes a few lines, either as a small subclass::

    from masr_graph.runtime.topology import Topology, register_topology

    @register_topology
    class Star(Topology):
        name = "Star"
        description = "Spokes answer independently; agent 0 reads all of them and answers."
        spatial_pattern = "star_in"          # every agent j > 0 -> agent 0
        min_agents = 2

or as a declarative YAML / JSON file with the same fields (``spatial`` / ``temporal`` instead
of ``spatial_pattern`` / ``temporal_pattern``, see :func:`topology_from_spec`). A file dropped
into the installed ``masr_graph.topologies`` package is discovered automatically; a file
anywhere else is loaded with :func:`load_topology_file`. Templates that patterns cannot express
override :meth:`Topology.spatial_probs`, :meth:`Topology.temporal_edges` or
:meth:`Topology.round_instruction`.

Every topology is validated when registered: for each agent count ``k`` it admits up to
:data:`VALIDATED_MAX_K`, the ``p > 0`` spatial edges must form a DAG (checked with networkx),
probabilities must lie in ``[0, 1]`` with no self-loops, and temporal edges must name existing
slots. Larger ``k`` is validated when a plan asks for it (:meth:`Topology.check_agents`).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import pkgutil
import sys
from importlib import resources
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Optional, Union

import networkx as nx
import yaml

from ..errors import TopologyError

DECISION_METHODS: tuple[str, ...] = ("final_refer", "majority_vote", "escalate")
"""How the decision node turns the agents' last-round outputs into the final answer:
``final_refer`` asks an LLM to read them all and answer; ``majority_vote`` counts answer keys;
``escalate`` holds the last agent slot back as an expert: the other agents' answer stands when
they all agree, and only when they do not does the expert answer the query, alone, and its answer
is final. With a single candidate ``final_refer`` and ``majority_vote`` are the identity."""

VALIDATED_MAX_K = 8
"""Registration checks every agent count from ``min_agents`` up to this (or ``max_agents``)."""

_BUILTIN_PACKAGE = "masr_graph.topologies"
_SPEC_SUFFIXES = (".yaml", ".yml", ".json")

EdgeProbs = list[list[float]]
Edge = tuple[int, int]


def _no_edges(k: int, p: float) -> EdgeProbs:
    return [[0.0] * k for _ in range(k)]


def _edges_to_probs(k: int, p: float, edges: list[Edge]) -> EdgeProbs:
    probs = _no_edges(k, p)
    for i, j in edges:
        probs[i][j] = p
    return probs


SPATIAL_PATTERNS: dict[str, Callable[[int, float], EdgeProbs]] = {
    "none": _no_edges,
    "chain": lambda k, p: _edges_to_probs(k, p, [(i, i + 1) for i in range(k - 1)]),
    "full": lambda k, p: _edges_to_probs(k, p, [(i, j) for i in range(k) for j in range(i + 1, k)]),
    "star_out": lambda k, p: _edges_to_probs(k, p, [(0, j) for j in range(1, k)]),
    "star_in": lambda k, p: _edges_to_probs(k, p, [(j, 0) for j in range(1, k)]),
}
"""Spatial templates by name, each ``(k, p) -> k x k`` probabilities with ``p`` on its edges.
``none``: agents of a round are independent. ``chain``: ``i -> i+1``. ``full``: ``i -> j`` for
every ``i < j``. ``star_out``: agent 0 speaks first, every other agent sees it. ``star_in``:
every other agent speaks first, agent 0 sees them all."""

TEMPORAL_PATTERNS: dict[str, Callable[[int], list[Edge]]] = {
    "none": lambda k: [],
    "self": lambda k: [(i, i) for i in range(k)],
    "others": lambda k: [(i, j) for i in range(k) for j in range(k) if i != j],
    "all": lambda k: [(i, j) for i in range(k) for j in range(k)],
}
"""Temporal templates by name, each ``k -> [(i, j)]``: agent ``i``'s round ``r-1`` output is
shown to agent ``j`` in round ``r``. ``self``: each agent sees its own previous answer.
``others``: each agent sees every other agent's previous answer. ``all``: both."""


class Topology:
    """Base class of collaboration modes. Subclass it, set the class attributes, register it.

    Class attributes:
        name: unique registry name used in plans, e.g. ``"Debate"``.
        description: the mode node's feature text that the router embeds; say what the mode does
            and when it pays off, so that modes are distinguishable.
        instruction: text added to every agent's system prompt in this mode ("" for none).
        rounds: number of rounds (>= 1); round ``r`` sees round ``r-1`` via temporal edges.
        decision: one of :data:`DECISION_METHODS`.
        min_agents: smallest agent count ``k`` the mode accepts (>= 1).
        max_agents: largest ``k``, or ``None`` for no upper bound.
        spatial_pattern: key of :data:`SPATIAL_PATTERNS` used by the default
            :meth:`spatial_probs`.
        spatial_p: probability given to the pattern's edges (``0 < p <= 1``); below 1 the runtime
            samples each edge independently every round.
        temporal_pattern: key of :data:`TEMPORAL_PATTERNS` used by the default
            :meth:`temporal_edges`.
        round_instructions: instruction added to the agents' prompt per round; round ``r`` uses
            entry ``min(r, len - 1)`` so the last entry repeats; empty means none.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    instruction: ClassVar[str] = ""
    rounds: ClassVar[int] = 1
    decision: ClassVar[str] = "final_refer"
    min_agents: ClassVar[int] = 1
    max_agents: ClassVar[Optional[int]] = None
    spatial_pattern: ClassVar[str] = "none"
    spatial_p: ClassVar[float] = 1.0
    temporal_pattern: ClassVar[str] = "none"
    round_instructions: ClassVar[tuple[str, ...]] = ()

    def spatial_probs(self, k: int) -> EdgeProbs:
        """``k x k`` list: ``p[i][j]`` is the probability of edge ``i -> j`` inside a round
        (agent ``j`` sees agent ``i``'s output of the same round). The ``p > 0`` edges must form
        a DAG for every admitted ``k``."""
        return SPATIAL_PATTERNS[self.spatial_pattern](k, self.spatial_p)

    def temporal_edges(self, k: int) -> list[Edge]:
        """Pairs ``(i, j)``: agent ``i``'s output of round ``r-1`` is shown to agent ``j`` in
        round ``r`` (``r >= 1``). Self pairs ``(i, i)`` show an agent its own previous answer."""
        return TEMPORAL_PATTERNS[self.temporal_pattern](k)

    def round_instruction(self, round: int, k: int) -> str:
        """Instruction for the agents of round ``round`` (0-based) of a ``k``-agent system."""
        if not self.round_instructions:
            return ""
        return self.round_instructions[min(round, len(self.round_instructions) - 1)]

    def working_agents(self, k: int) -> int:
        """How many of the ``k`` slots run in the rounds: all of them, except for ``escalate``,
        whose last slot is the expert the decision node calls only on disagreement."""
        return k - 1 if self.decision == "escalate" else k

    def admits(self, k: int) -> bool:
        """Whether ``k`` agents is within ``[min_agents, max_agents]``."""
        return k >= self.min_agents and (self.max_agents is None or k <= self.max_agents)

    def check_agents(self, k: int) -> None:
        """Validate the template for ``k`` agents (admitted count, probabilities, DAG, temporal
        edges); results are cached per ``k``.

        Raises:
            TopologyError: naming the topology, ``k`` and what is wrong.
        """
        checked = self.__dict__.setdefault("_checked_k", set())
        if k in checked:
            return
        if not self.admits(k):
            allowed = (
                f"at least {self.min_agents}"
                if self.max_agents is None
                else f"{self.min_agents} to {self.max_agents}"
            )
            raise TopologyError(f"topology {self.name!r} takes {allowed} agents (got k={k})")
        _check_template(self, k)
        checked.add(k)

    def __repr__(self) -> str:
        return f"<Topology {self.name!r}>"


def _check_template(topology: Topology, k: int) -> None:
    """Probabilities are a ``k x k`` matrix in [0, 1] with a zero diagonal whose ``p > 0``
    edges form a DAG; temporal edges name slots ``0..k-1``."""
    where = f"topology {topology.name!r} with k={k}"
    probs = topology.spatial_probs(k)
    if len(probs) != k or any(len(row) != k for row in probs):
        raise TopologyError(f"{where}: spatial_probs must be a {k}x{k} list of lists")
    graph = nx.DiGraph()
    graph.add_nodes_from(range(k))
    for i, row in enumerate(probs):
        for j, p in enumerate(row):
            if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0.0 <= p <= 1.0:
                raise TopologyError(
                    f"{where}: spatial_probs[{i}][{j}] is {p!r}; allowed: a number in [0, 1]"
                )
            if p > 0 and i == j:
                raise TopologyError(
                    f"{where}: spatial self-loop {i}->{i} (p={p}); an agent cannot see its own "
                    "output of the same round (use a temporal self-edge for that)"
                )
            if p > 0:
                graph.add_edge(i, j)
    if not nx.is_directed_acyclic_graph(graph):
        cycle = nx.find_cycle(graph)
        raise TopologyError(
            f"{where}: spatial edges with p > 0 must form a DAG so agents can run in order; "
            f"found the cycle {' -> '.join(str(u) for u, _ in cycle)} -> {cycle[0][0]}"
        )
    for edge in topology.temporal_edges(k):
        if len(edge) != 2 or not all(isinstance(a, int) and 0 <= a < k for a in edge):
            raise TopologyError(
                f"{where}: temporal edge {edge!r} must be a pair of agent slots in 0..{k - 1}"
            )


def _check_declaration(topology: Topology) -> None:
    cls_name = type(topology).__name__
    name = getattr(topology, "name", None)
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise TopologyError(
            f"topology class {cls_name}: 'name' must be a non-empty string without surrounding "
            f"whitespace (got {name!r})"
        )
    where = f"topology {name!r}"
    description = getattr(topology, "description", None)
    if not isinstance(description, str) or not description.strip():
        raise TopologyError(
            f"{where}: 'description' must be a non-empty string (got {description!r})"
        )
    if not isinstance(topology.instruction, str):
        raise TopologyError(
            f"{where}: 'instruction' must be a string (got {topology.instruction!r})"
        )
    if (
        isinstance(topology.rounds, bool)
        or not isinstance(topology.rounds, int)
        or topology.rounds < 1
    ):
        raise TopologyError(f"{where}: 'rounds' must be an integer >= 1 (got {topology.rounds!r})")
    if topology.decision not in DECISION_METHODS:
        raise TopologyError(
            f"{where}: 'decision' is {topology.decision!r}; allowed: {', '.join(DECISION_METHODS)}"
        )
    if topology.decision == "escalate" and topology.min_agents < 3:
        raise TopologyError(
            f"{where}: an escalate decision needs min_agents >= 3 (at least two agents that can "
            f"disagree, plus the expert slot); got {topology.min_agents}"
        )
    low, high = topology.min_agents, topology.max_agents
    if isinstance(low, bool) or not isinstance(low, int) or low < 1:
        raise TopologyError(f"{where}: 'min_agents' must be an integer >= 1 (got {low!r})")
    if high is not None and (isinstance(high, bool) or not isinstance(high, int) or high < low):
        raise TopologyError(
            f"{where}: 'max_agents' must be None or an integer >= min_agents={low} (got {high!r})"
        )
    if topology.spatial_pattern not in SPATIAL_PATTERNS:
        raise TopologyError(
            f"{where}: spatial pattern {topology.spatial_pattern!r} is unknown; allowed: "
            f"{', '.join(SPATIAL_PATTERNS)}"
        )
    p = topology.spatial_p
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 < p <= 1.0:
        raise TopologyError(f"{where}: 'spatial_p' must be a number in (0, 1] (got {p!r})")
    if topology.temporal_pattern not in TEMPORAL_PATTERNS:
        raise TopologyError(
            f"{where}: temporal pattern {topology.temporal_pattern!r} is unknown; allowed: "
            f"{', '.join(TEMPORAL_PATTERNS)}"
        )
    for r in range(topology.rounds):
        text = topology.round_instruction(r, low)
        if not isinstance(text, str):
            raise TopologyError(f"{where}: round_instruction({r}, {low}) must return a string")


_registry: dict[str, Topology] = {}
# Sort key per name: built-ins by module (file) name, then user topologies in registration order,
# whatever order the modules happened to be imported in.
_order: dict[str, tuple[int, str, int]] = {}
_discovered = False
# Set while load_topology_file(..., replace=True) executes a user module, so the module's own
# bare @register_topology decorators may take over names.
_replace_during_load = False


def register_topology(cls: Optional[type[Topology]] = None, *, replace: bool = False) -> Any:
    """Class decorator: validate a :class:`Topology` subclass and make it known by its name.

    Use as ``@register_topology`` or ``@register_topology(replace=True)``. Registering the same
    class twice is a no-op.

    Args:
        cls: the subclass to register.
        replace: allow a different class to take over an already registered name (e.g. to
            reload a user file while editing it).

    Returns:
        ``cls`` unchanged.

    Raises:
        TopologyError: ``cls`` is not a Topology subclass, a field is invalid, a spatial template
            is not a DAG for some admitted ``k <= VALIDATED_MAX_K``, or the name is taken.
    """
    if cls is None:
        return lambda c: register_topology(c, replace=replace)
    if not (isinstance(cls, type) and issubclass(cls, Topology)):
        raise TopologyError(f"register_topology expects a Topology subclass (got {cls!r})")
    # Built-ins first, so registry order (and router vocabularies) never depends on when user
    # code registered its own modes.
    _discover()
    topology = cls()
    _check_declaration(topology)
    existing = _registry.get(topology.name)
    if existing is not None and type(existing) is cls:
        return cls
    if existing is not None and not (replace or _replace_during_load):
        raise TopologyError(
            f"topology name {topology.name!r} is already registered by "
            f"{type(existing).__module__}.{type(existing).__qualname__}; choose another name or "
            "pass replace=True"
        )
    top = (
        VALIDATED_MAX_K
        if topology.max_agents is None
        else min(topology.max_agents, VALIDATED_MAX_K)
    )
    for k in range(topology.min_agents, top + 1):
        topology.check_agents(k)
    _registry[topology.name] = topology
    builtin = cls.__module__.startswith(_BUILTIN_PACKAGE + ".")
    _order.setdefault(
        topology.name, (0 if builtin else 1, cls.__module__ if builtin else "", len(_order))
    )
    return cls


_SPEC_FIELDS: dict[str, str] = {
    "name": "name",
    "description": "description",
    "instruction": "instruction",
    "rounds": "rounds",
    "decision": "decision",
    "min_agents": "min_agents",
    "max_agents": "max_agents",
    "spatial": "spatial_pattern",
    "spatial_p": "spatial_p",
    "temporal": "temporal_pattern",
    "round_instructions": "round_instructions",
}


def topology_from_spec(
    spec: Mapping[str, Any], *, source: str = "spec", module: Optional[str] = None
) -> type[Topology]:
    """Build (without registering) a :class:`Topology` subclass from a declarative mapping.

    Keys: ``name`` and ``description`` (required), ``instruction``, ``rounds``, ``decision``,
    ``min_agents``, ``max_agents``, ``spatial`` (a :data:`SPATIAL_PATTERNS` key), ``spatial_p``,
    ``temporal`` (a :data:`TEMPORAL_PATTERNS` key), ``round_instructions`` (list of strings),
    with the defaults of :class:`Topology`. Example (YAML)::

        name: Star
        description: Spokes answer independently; agent 0 reads them all and answers.
        spatial: star_in
        min_agents: 2

    Args:
        spec: the mapping.
        source: where it came from, for error messages.
        module: ``__module__`` of the class (defaults to this module).

    Raises:
        TopologyError: unknown or missing keys (named with ``source``), or wrong value types.
    """
    if not isinstance(spec, Mapping):
        raise TopologyError(
            f"{source}: a topology spec must be a mapping (got {type(spec).__name__})"
        )
    unknown = sorted(str(key) for key in spec if key not in _SPEC_FIELDS)
    if unknown:
        raise TopologyError(
            f"{source}: unknown key(s) {', '.join(map(repr, unknown))}; allowed: "
            f"{', '.join(_SPEC_FIELDS)}"
        )
    missing = [key for key in ("name", "description") if key not in spec]
    if missing:
        raise TopologyError(f"{source}: missing required key(s) {', '.join(map(repr, missing))}")
    attrs: dict[str, Any] = {_SPEC_FIELDS[key]: value for key, value in spec.items()}
    instructions = attrs.get("round_instructions", ())
    if isinstance(instructions, str) or not all(isinstance(t, str) for t in instructions):
        raise TopologyError(
            f"{source}: 'round_instructions' must be a list of strings (got {instructions!r})"
        )
    attrs["round_instructions"] = tuple(instructions)
    attrs["__doc__"] = f"Topology {spec['name']!r} declared in {source}."
    attrs["__module__"] = module or __name__
    class_name = "".join(ch for ch in str(spec["name"]) if ch.isalnum()) or "Declared"
    return type(f"{class_name}Topology", (Topology,), attrs)


def _read_spec(text: str, source: str, suffix: str) -> Any:
    try:
        return json.loads(text) if suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise TopologyError(
            f"topology file {source}: not valid {suffix[1:].upper()}: {exc}"
        ) from exc


def _specs_in(data: Any) -> list[Any]:
    return data if isinstance(data, list) else [data]


def load_topology_file(path: Union[str, Path], *, replace: bool = False) -> list[Topology]:
    """Load a user's topology file from anywhere and register what it defines.

    ``.py`` files are imported as a module: its ``@register_topology`` decorators register, and
    Topology subclasses it defines with a ``name`` of their own but without registering them are
    registered too (nameless helper base classes are not). ``.yaml`` /
    ``.yml`` / ``.json`` files hold one declarative spec (:func:`topology_from_spec`) or a list.

    Args:
        path: the file.
        replace: let the file's topologies take over names already registered, e.g. to load an
            edited version of the same file again.

    Returns:
        The topologies the file defines, in definition order.

    Raises:
        TopologyError: the file is missing, has an unsupported suffix, is invalid, defines no
            topology, or reuses a registered name without ``replace``.
    """
    global _replace_during_load
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise TopologyError(f"topology file {path} does not exist")
    if path.suffix == ".py":
        digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
        module_name = f"masr_graph_user_topology_{path.stem}_{digest}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        assert spec is not None and spec.loader is not None  # a .py path always yields a loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        _replace_during_load = replace
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(module_name, None)
            raise
        finally:
            _replace_during_load = False
        classes = [
            obj
            for obj in vars(module).values()
            if isinstance(obj, type)
            and issubclass(obj, Topology)
            and obj.__module__ == module_name
            and "name" in vars(obj)  # helper base classes without a name of their own are skipped
        ]
    elif path.suffix in _SPEC_SUFFIXES:
        data = _read_spec(path.read_text(encoding="utf-8"), str(path), path.suffix)
        classes = [topology_from_spec(s, source=f"topology file {path}") for s in _specs_in(data)]
    else:
        raise TopologyError(
            f"topology file {path}: unsupported suffix {path.suffix!r}; allowed: .py, "
            f"{', '.join(_SPEC_SUFFIXES)}"
        )
    if not classes:
        raise TopologyError(f"topology file {path} defines no Topology subclass")
    for cls in classes:
        register_topology(cls, replace=replace)
    return [_registry[cls.name] for cls in classes]


def _discover() -> None:
    """Import every module of the installed ``masr_graph.topologies`` package (their
    decorators register them), then register the declarative spec files found beside them."""
    global _discovered
    if _discovered:
        return
    # Set first: the imported modules call register_topology, which calls back here.
    _discovered = True
    try:
        package = importlib.import_module(_BUILTIN_PACKAGE)
        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
            if not info.name.startswith("_"):
                importlib.import_module(f"{_BUILTIN_PACKAGE}.{info.name}")
        for entry in sorted(resources.files(_BUILTIN_PACKAGE).iterdir(), key=lambda e: e.name):
            suffix = Path(entry.name).suffix
            if suffix in _SPEC_SUFFIXES and not entry.name.startswith("_"):
                data = _read_spec(entry.read_text(encoding="utf-8"), str(entry), suffix)
                module = f"{_BUILTIN_PACKAGE}.{Path(entry.name).stem}"
                for spec in _specs_in(data):
                    register_topology(
                        topology_from_spec(spec, source=f"topology file {entry}", module=module)
                    )
    except BaseException:
        _discovered = False
        raise


def get_topology(name: str) -> Topology:
    """The registered topology called ``name`` (built-ins are discovered on first use).

    Raises:
        TopologyError: no topology has that name; the message lists the known names.
    """
    _discover()
    try:
        return _registry[name]
    except KeyError:
        raise TopologyError(
            f"unknown topology {name!r}; known topologies: {', '.join(topology_names())}"
        ) from None


def topology_names() -> list[str]:
    """Names of all registered topologies: built-ins in file-name order, then user ones in
    registration order. Stable, so router vocabularies index modes the same way on every run."""
    _discover()
    return sorted(_registry, key=_order.__getitem__)

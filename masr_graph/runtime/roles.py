"""Role profiles: who an agent is told to be.

A role is a small YAML file under ``roles/<domain>/`` (installed as the package data of
``masr_graph.roles``)::

    name: Number Theorist
    domain: math
    description: >-            # the role node's feature text in the router graph
      Works with divisibility, primes, remainders and modular arithmetic ...
    prompt: >-                 # the agent's system prompt
      You are a number theorist ...
    output_format: >-          # how the agent must end its reply so evaluators can extract it
      End your reply with the final answer alone inside \\boxed{...}.
    postprocess: run_python    # optional, one of POSTPROCESSORS
    temperature: 0.0           # optional, overrides the runtime's sampling temperature

The router embeds ``description``; the runtime sends ``prompt`` and ``output_format`` as the
agent's system message and, when ``postprocess`` is set, applies that step to the agent's reply.
Users add roles with YAML files in their own directories (``load_roles(extra_dirs=...)``) or with
:func:`register_role` from code.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

import yaml

from ..errors import RoleError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

DOMAINS: tuple[str, ...] = ("math", "code", "knowledge")
"""Task domains a role belongs to, in the order built-in roles are listed."""

POSTPROCESSORS: frozenset[str] = frozenset({"run_python"})
"""Post-processing steps a role may ask for. ``run_python``: the runtime executes the Python code
block of the agent's reply in the sandbox and appends its stdout / error to the reply, so later
agents see what the code actually did. Only the names live here; the runtime engine implements
them."""

TEMPERATURE_RANGE: tuple[float, float] = (0.0, 2.0)
"""Closed range accepted for a role's ``temperature`` (the OpenAI API's range)."""

_BUILTIN_PACKAGE = "masr_graph.roles"
_ROLE_FILE_SUFFIXES = (".yaml", ".yml")
_TEXT_FIELDS = ("name", "domain", "description", "prompt", "output_format")


@dataclass(frozen=True)
class Role:
    """A role profile an agent can be given.

    Args:
        name: unique name used in plans and traces, e.g. ``"Algebra Specialist"``.
        domain: one of :data:`DOMAINS`.
        description: 1-3 sentences on what the role is good at; the role node's feature text
            that the router embeds, so descriptions of different roles must differ.
        prompt: the agent's system prompt.
        output_format: how the agent must end its reply so the evaluator can extract the answer
            (``\\boxed{...}`` for math, one fenced ``python`` block for code, ``Answer: X`` for
            knowledge).
        postprocess: optional step the runtime applies to the reply, one of
            :data:`POSTPROCESSORS`.
        temperature: optional sampling temperature in :data:`TEMPERATURE_RANGE` that overrides
            the runtime's default for this role.

    Raises:
        RoleError: a field is empty, has the wrong type or is outside its allowed values.
    """

    name: str
    domain: str
    description: str
    prompt: str
    output_format: str
    postprocess: Optional[str] = None
    temperature: Optional[float] = None

    def __post_init__(self) -> None:
        who = f"role {self.name!r}" if isinstance(self.name, str) else "role"
        for field_name in _TEXT_FIELDS:
            value = getattr(self, field_name)
            if not isinstance(value, str) or not value.strip():
                raise RoleError(
                    f"{who}: field {field_name!r} must be a non-empty string (got {value!r})"
                )
        if self.name != self.name.strip():
            raise RoleError(f"{who}: field 'name' must not start or end with whitespace")
        if self.domain not in DOMAINS:
            raise RoleError(
                f"{who}: field 'domain' is {self.domain!r}; allowed: {', '.join(DOMAINS)}"
            )
        if self.postprocess is not None and (
            not isinstance(self.postprocess, str) or self.postprocess not in POSTPROCESSORS
        ):
            raise RoleError(
                f"{who}: field 'postprocess' is {self.postprocess!r}; allowed: "
                f"{', '.join(sorted(POSTPROCESSORS))} (or leave it out)"
            )
        if self.temperature is not None:
            low, high = TEMPERATURE_RANGE
            # bool is an int subclass; `temperature: yes` is a typo, not 1.0
            if (
                isinstance(self.temperature, bool)
                or not isinstance(self.temperature, (int, float))
                or not math.isfinite(self.temperature)
                or not low <= self.temperature <= high
            ):
                raise RoleError(
                    f"{who}: field 'temperature' is {self.temperature!r}; allowed: a number "
                    f"from {low} to {high} (or leave it out)"
                )
            object.__setattr__(self, "temperature", float(self.temperature))

    def system_message(self) -> str:
        """The agent's system prompt followed by the output format it must respect."""
        return f"{self.prompt}\n\n{self.output_format}"


_REQUIRED_FIELDS = frozenset(f.name for f in fields(Role) if f.name in _TEXT_FIELDS)
_ALLOWED_FIELDS = frozenset(f.name for f in fields(Role))

# Roles defined in user code, in registration order; merged after file-based roles.
_registered: dict[str, Role] = {}


def _role_from_file(entry: Union[Traversable, Path], folder: Optional[str]) -> Role:
    """Parse and validate one role file; every error names the file.

    ``folder`` is the domain the file's folder stands for, if any; the role must declare it."""
    source = str(entry)
    try:
        data: Any = yaml.safe_load(entry.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise RoleError(f"role file {source}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise RoleError(
            f"role file {source}: must hold a mapping of fields "
            f"(got {type(data).__name__}); fields: {', '.join(sorted(_ALLOWED_FIELDS))}"
        )
    unknown = sorted(str(key) for key in data if key not in _ALLOWED_FIELDS)
    if unknown:
        raise RoleError(
            f"role file {source}: unknown field(s) {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(sorted(_ALLOWED_FIELDS))}"
        )
    missing = sorted(_REQUIRED_FIELDS - data.keys())
    if missing:
        raise RoleError(
            f"role file {source}: missing required field(s) {', '.join(map(repr, missing))}; "
            f"required: {', '.join(sorted(_REQUIRED_FIELDS))}"
        )
    # YAML block scalars carry a trailing newline; the text itself is what matters.
    values = {key: value.strip() if isinstance(value, str) else value
              for key, value in data.items()}
    try:
        role = Role(**values)
    except RoleError as exc:
        raise RoleError(f"role file {source}: {exc}") from exc
    if folder is not None and folder != role.domain:
        raise RoleError(
            f"role file {source}: field 'domain' is {role.domain!r} but the file sits in the "
            f"{folder!r} folder; move the file or set domain: {folder}"
        )
    return role


def _role_files_in_package() -> list[tuple[Traversable, str]]:
    """Built-in role files as ``(file, domain folder)``, domains in :data:`DOMAINS` order."""
    root = resources.files(_BUILTIN_PACKAGE)
    found = []
    for domain in DOMAINS:
        folder = root.joinpath(domain)
        if folder.is_dir():
            found.extend(
                (entry, domain)
                for entry in sorted(folder.iterdir(), key=lambda e: e.name)
                if entry.name.endswith(_ROLE_FILE_SUFFIXES)
            )
    return found


def _role_files_in_dir(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise RoleError(f"role directory {directory} does not exist or is not a directory")
    found = sorted(
        p for p in directory.rglob("*") if p.suffix in _ROLE_FILE_SUFFIXES and p.is_file()
    )
    if not found:
        raise RoleError(
            f"role directory {directory} holds no role files "
            f"({' or '.join('*' + s for s in _ROLE_FILE_SUFFIXES)}, searched recursively)"
        )
    return found


def _add(roles: dict[str, tuple[Role, str]], role: Role, source: str) -> None:
    if role.name in roles:
        raise RoleError(
            f"duplicate role name {role.name!r}: defined in {roles[role.name][1]} and in {source}"
        )
    roles[role.name] = (role, source)


@functools.lru_cache(maxsize=None)
def _load_files(extra_dirs: tuple[Path, ...]) -> dict[str, tuple[Role, str]]:
    roles: dict[str, tuple[Role, str]] = {}
    for entry, domain in _role_files_in_package():
        _add(roles, _role_from_file(entry, domain), str(entry))
    for directory in extra_dirs:
        for path in _role_files_in_dir(directory):
            folder = path.parent.name if path.parent.name in DOMAINS else None
            _add(roles, _role_from_file(path, folder), str(path))
    return roles


def load_roles(extra_dirs: Sequence[Union[str, Path]] = ()) -> dict[str, Role]:
    """All known roles by name: built-in files, then ``extra_dirs``, then :func:`register_role`.

    Built-in roles come from the installed ``masr_graph.roles`` package data (so the working
    directory does not matter), ordered by domain (:data:`DOMAINS` order) and file name; each
    extra directory is searched recursively for ``*.yaml`` / ``*.yml`` files, in sorted order.
    The order is stable, so vocabularies built from it index roles the same way on every run.
    Files are read and validated once per distinct ``extra_dirs``; edits made to role files
    afterwards are not seen by the running process.

    Args:
        extra_dirs: user directories holding more role files.

    Returns:
        A new dict (safe to modify) from role name to :class:`Role`.

    Raises:
        RoleError: a file is not valid YAML or has unknown, missing or invalid fields (the
            message names the file, the field and the allowed values), a directory is missing
            or empty, or two roles share a name.
    """
    dirs = tuple(Path(d).expanduser().resolve() for d in extra_dirs)
    sourced = dict(_load_files(dirs))
    for role in _registered.values():
        _add(sourced, role, "register_role()")
    return {name: role for name, (role, _) in sourced.items()}


def register_role(role: Role) -> Role:
    """Make a role defined in code known to :func:`load_roles`, :func:`get_role` and
    :func:`roles_for_domain`.

    Registering the identical role again is a no-op, so a module that registers roles can be
    re-imported.

    Returns:
        ``role``, so it can be used as ``MY_ROLE = register_role(Role(...))``.

    Raises:
        RoleError: ``role`` is not a :class:`Role`, or another role already has its name.
    """
    if not isinstance(role, Role):
        raise RoleError(f"register_role expects a Role (got {type(role).__name__})")
    if _registered.get(role.name) == role:
        return role
    existing = load_roles()
    if role.name in existing:
        raise RoleError(
            f"cannot register role {role.name!r}: a different role with that name already exists"
        )
    _registered[role.name] = role
    return role


def get_role(name: str, extra_dirs: Sequence[Union[str, Path]] = ()) -> Role:
    """The role called ``name`` among :func:`load_roles` ``(extra_dirs)``.

    Raises:
        RoleError: no role has that name; the message lists the known names.
    """
    roles = load_roles(extra_dirs)
    try:
        return roles[name]
    except KeyError:
        raise RoleError(
            f"unknown role {name!r}; known roles: {', '.join(sorted(roles))}"
        ) from None


def roles_for_domain(domain: str, extra_dirs: Sequence[Union[str, Path]] = ()) -> list[Role]:
    """Roles of one domain, in :func:`load_roles` order.

    Raises:
        RoleError: ``domain`` is not one of :data:`DOMAINS`.
    """
    if domain not in DOMAINS:
        raise RoleError(f"unknown domain {domain!r}; allowed: {', '.join(DOMAINS)}")
    return [role for role in load_roles(extra_dirs).values() if role.domain == domain]

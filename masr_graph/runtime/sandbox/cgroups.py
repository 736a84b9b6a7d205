"""Per-run cgroups for a total memory cap and a process cap, on cgroup v1 or v2.

Why cgroups: rlimits cap each process (RLIMIT_AS) or each uid (RLIMIT_NPROC), not the run; a run
that forks four 200 MiB children, or a fork bomb as root, needs a group around all of its
processes. Each run gets its own group below the caller's, with ``memory`` and ``pids`` limits,
which the bootstrap joins before the code runs; the caller (or, if the caller died, its janitor)
kills what is left in it and removes it afterwards.

Which hierarchy, per controller (a controller is bound to one hierarchy at a time):

* **cgroup v1** (a hierarchy mounted per controller, as under ``/sys/fs/cgroup/memory``): groups
  are created in the caller's own group of that hierarchy; limits ``memory.limit_in_bytes`` (and
  ``memory.memsw.limit_in_bytes`` with swap accounting) and ``pids.max``.
* **cgroup v2** (the unified hierarchy, ``0::/path`` in ``/proc/self/cgroup``): one group per run
  holding both controllers, with ``memory.max``, ``memory.swap.max = 0`` and ``pids.max``; killed
  with ``cgroup.kill`` where the kernel has it (Linux >= 5.14). The per-run groups must be
  children of a group that enables the controllers in its ``cgroup.subtree_control``, and v2's
  "no internal processes" rule forbids that for a group that holds processes itself - such as
  the caller's own. So, as container runtimes do, the caller moves itself into a leaf group
  :data:`CALLERS_LEAF` of its group and enables the controllers there (:func:`v2_parent`); per-run
  groups are then siblings of that leaf. This is only done when the caller's group holds no
  other process (a group delegated to this program, e.g. by ``systemd-run --user --scope -p
  Delegate=yes``), never by moving anyone else. Other callers started inside the leaf reuse its
  parent. The leaf stays while callers live in it (a systemd scope removes it when it ends).
  Where that is impossible, the probe says why (:data:`DELEGATE_HINT`), and the sandbox warns and
  runs with rlimits only.
"""

from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from ...errors import SandboxError
from . import cleanup
from .limits import LINUX, Limits

Controller = Literal["pids", "memory"]
CONTROLLERS: tuple[Controller, ...] = ("pids", "memory")
CALLERS_LEAF = "masr-sandbox-callers"
"""cgroup v2: the leaf group the caller moves itself into so its group may delegate controllers."""
DELEGATE_HINT = (
    "run the caller in a cgroup of its own with the controllers delegated, e.g. "
    "`systemd-run --user --scope -p Delegate=yes python ...`"
)
RUN_PREFIX = "masr-sandbox-"
"""Per-run groups are ``masr-sandbox-<caller pid>-<run number>``."""


@dataclass(frozen=True)
class CgroupParent:
    """Where per-run groups are created: the caller's group in a v1 hierarchy (one controller),
    or the delegated v2 group (every controller v1 does not provide)."""

    version: Literal[1, 2]
    controllers: tuple[Controller, ...]
    directory: Path


def usable_cgroups(missing: dict[str, str]) -> tuple[CgroupParent, ...]:
    """The cgroup parents usable on this machine; records in ``missing`` (``cgroup_pids``,
    ``cgroup_memory``) why a controller cannot be used."""
    if not LINUX:
        for controller in CONTROLLERS:
            missing[f"cgroup_{controller}"] = "cgroups need Linux"
        return ()
    try:
        membership = Path("/proc/self/cgroup").read_text().splitlines()
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError as exc:
        for controller in CONTROLLERS:
            missing[f"cgroup_{controller}"] = f"cannot read this process's cgroups: {exc}"
        return ()
    parents: list[CgroupParent] = []
    v1 = v1_directories(membership, mounts)
    for controller in CONTROLLERS:
        if controller in v1:
            parent = CgroupParent(1, (controller,), v1[controller])
            problem = _trial(parent)
            if problem is None:
                parents.append(parent)
            else:
                missing[f"cgroup_{controller}"] = problem
    wanted = tuple(c for c in CONTROLLERS if c not in v1)
    if wanted:
        group = v2_group(membership, mounts)
        if group is None:
            reason = "neither a cgroup v1 hierarchy nor cgroup v2 is mounted"
            directory = None
        else:
            directory, reason = v2_parent(group, wanted)
        if directory is not None:
            parent = CgroupParent(2, wanted, directory)
            reason = _trial(parent) or ""
            if not reason:
                parents.append(parent)
        if reason:
            for controller in wanted:
                missing[f"cgroup_{controller}"] = reason
    return tuple(parents)


def v1_directories(membership: list[str], mounts: list[str]) -> dict[Controller, Path]:
    """``{controller: directory of this process's group}`` for controllers on cgroup v1."""
    own_path = {}
    for line in membership:
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(","):
            own_path[controller] = path
    directories: dict[Controller, Path] = {}
    for line in mounts:
        before, _, after = line.partition(" - ")
        fields, (fstype, _source, super_options) = before.split(), after.split()[:3]
        if fstype != "cgroup":
            continue
        mount_root, mount_point = fields[3], fields[4]
        for controller in CONTROLLERS:
            if controller in super_options.split(",") and controller in own_path:
                relative = os.path.relpath(own_path[controller], mount_root)
                directories[controller] = Path(mount_point, relative).resolve()
    return directories


def v2_group(membership: list[str], mounts: list[str]) -> Optional[Path]:
    """Directory of this process's cgroup v2 group, or ``None`` without a v2 mount."""
    own = next((line[3:] for line in membership if line.startswith("0::")), None)
    if own is None:
        return None
    for line in mounts:
        before, _, after = line.partition(" - ")
        fields = before.split()
        if after.split()[:1] == ["cgroup2"]:
            relative = os.path.relpath(own, fields[3])
            return Path(fields[4], relative).resolve()
    return None


def _listed(path: Path) -> list[str]:
    try:
        return cleanup.read_control(path).split()
    except OSError:
        return []


def v2_parent(group: Path, wanted: tuple[Controller, ...]) -> tuple[Optional[Path], str]:
    """The v2 group below which per-run groups get the ``wanted`` controllers, or ``None`` and
    why not. ``group`` is the caller's own group; see the module docstring for the leaf."""
    if all(c in _listed(group / "cgroup.subtree_control") for c in wanted):
        return group, ""  # the hierarchy's root, or set up already
    parent = group.parent
    if group.name == CALLERS_LEAF and all(
        c in _listed(parent / "cgroup.subtree_control") for c in wanted
    ):
        return parent, ""  # another caller of this group made the leaf
    available = _listed(group / "cgroup.controllers")
    absent = [c for c in wanted if c not in available]
    if absent:
        return None, (
            f"cgroup v2 controller(s) {', '.join(absent)} not delegated to {group} (its "
            f"cgroup.controllers lists: {' '.join(available) or 'nothing'}); {DELEGATE_HINT}"
        )
    me = str(os.getpid())
    others = [pid for pid in _listed(group / "cgroup.procs") if pid != me]
    if others:
        return None, (
            f"the caller's cgroup v2 group {group} also holds {len(others)} other process(es), "
            f"so it cannot delegate controllers to per-run groups (cgroup v2 allows no processes "
            f"in a group that does); {DELEGATE_HINT}"
        )
    enable = " ".join(f"+{c}" for c in wanted)
    try:
        cleanup.write_control(group / "cgroup.subtree_control", enable)
        return group, ""
    except OSError as exc:
        if exc.errno != errno.EBUSY:
            return None, f"cannot enable {enable} in {group}/cgroup.subtree_control: {exc}"
    leaf = group / CALLERS_LEAF
    try:
        if not leaf.is_dir():
            os.mkdir(leaf)
        cleanup.write_control(leaf / "cgroup.procs", me)
        cleanup.write_control(group / "cgroup.subtree_control", enable)
    except OSError as exc:
        try:
            cleanup.write_control(group / "cgroup.procs", me)
            os.rmdir(leaf)
        except OSError:
            pass  # the leaf holds someone or was never made
        return None, (
            f"cannot move the caller into the leaf group {leaf} and enable {enable} in {group}: "
            f"{exc}; {DELEGATE_HINT}"
        )
    return group, ""


def _trial(parent: CgroupParent) -> Optional[str]:
    """``None`` when a per-run group can be made in ``parent`` with its controllers, else why."""
    remove_groups_of_dead_callers(parent.directory)
    trial = parent.directory / f"{RUN_PREFIX}probe-{os.getpid()}"
    try:
        os.mkdir(trial)
    except OSError as exc:
        return f"cannot create a group in {parent.directory}: {exc.strerror}"
    try:
        if parent.version == 2:
            absent = [c for c in parent.controllers if not (trial / f"{c}.max").exists()]
            if absent:
                return f"cgroup v2 groups in {parent.directory} lack {', '.join(absent)}"
        return None
    finally:
        try:
            os.rmdir(trial)
        except OSError:
            pass


def remove_groups_of_dead_callers(directory: Path) -> None:
    """Empty per-run groups left behind by callers whose janitor could not remove them."""
    for group in directory.glob(f"{RUN_PREFIX}*-*"):
        owner = group.name[len(RUN_PREFIX) :].split("-")[0]
        if not owner.isdigit() or _process_exists(int(owner)):
            continue
        try:
            os.rmdir(group)
        except OSError:
            pass  # still busy or not ours to remove; the next probe retries


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


class RunCgroups:
    """The groups of one run: named first (so the janitor knows them before they exist), then
    created with their limits, and finally torn down."""

    def __init__(self, parents: tuple[CgroupParent, ...], name: str):
        self.parents = parents
        self.paths = [parent.directory / name for parent in parents]
        self.created: list[tuple[CgroupParent, Path]] = []

    def create(self, limits: Limits) -> None:
        """Make the groups and write their limits (raises SandboxError, leaving none)."""
        try:
            for parent, group in zip(self.parents, self.paths):
                os.mkdir(group)
                self.created.append((parent, group))
                for controller in parent.controllers:
                    _write_limit(parent.version, controller, group, limits)
        except OSError as exc:
            self.destroy()
            raise SandboxError(f"could not set up cgroup {self.paths[0].name!r}: {exc}") from exc

    def procs_files(self) -> list[str]:
        return [str(group / "cgroup.procs") for _, group in self.created]

    def _group_of(self, controller: Controller) -> Optional[tuple[int, Path]]:
        for parent, group in self.created:
            if controller in parent.controllers:
                return parent.version, group
        return None

    def oom_kills(self) -> int:
        found = self._group_of("memory")
        if found is None:
            return 0
        version, group = found
        events = "memory.oom_control" if version == 1 else "memory.events"
        return cleanup.counter(group / events, "oom_kill")

    def process_limit_hits(self) -> int:
        found = self._group_of("pids")
        return 0 if found is None else cleanup.counter(found[1] / "pids.events", "max")

    def destroy(self, timeout_s: float = 2.0) -> None:
        """Kill whatever is left in the groups and remove them (raises SandboxError if stuck)."""
        deadline = time.monotonic() + timeout_s
        for parent, group in list(self.created):
            try:
                cleanup.remove_cgroup(group, max(deadline - time.monotonic(), 0.0))
            except OSError as exc:
                raise SandboxError(f"could not remove cgroup {group}: {exc}") from exc
            self.created.remove((parent, group))


def _write_limit(version: int, controller: Controller, group: Path, limits: Limits) -> None:
    memory = str(limits.memory_mb << 20)
    if controller == "pids":
        cleanup.write_control(group / "pids.max", str(limits.max_processes))
    elif version == 1:
        cleanup.write_control(group / "memory.limit_in_bytes", memory)
        swap_cap = group / "memory.memsw.limit_in_bytes"
        if swap_cap.exists():  # only with swap accounting; keeps swap out of reach
            cleanup.write_control(swap_cap, memory)
    else:
        cleanup.write_control(group / "memory.max", memory)
        swap_cap = group / "memory.swap.max"
        if swap_cap.exists():  # only with swap accounting
            cleanup.write_control(swap_cap, "0")

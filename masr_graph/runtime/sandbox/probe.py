"""What this machine enforces: the isolation probe, the capability report and its warnings.

Why probe instead of assume: namespaces, cgroup controllers, ``setpriv`` and user namespaces all
depend on the kernel, its configuration, the distribution and who runs the caller. The probe runs
a trivial snippet with each candidate setup (most isolated first) once per process and keeps the
first that works; what is missing is reported by :func:`capabilities` and warned about once
(:class:`~.result.SandboxWarning`) with its consequence.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import threading
import warnings
from dataclasses import dataclass, field
from typing import Optional, Union

from ...errors import SandboxError
from .cgroups import usable_cgroups
from .isolation import Setup
from .launcher import execute, run_blocking
from .limits import LINUX, SYSTEM_PATH, Isolation, Limits
from .result import SandboxWarning

Capabilities = dict[str, Union[bool, str]]


@dataclass(frozen=True)
class Probe:
    """The chosen setup and, for each unavailable mechanism, why."""

    setup: Setup
    missing: dict[str, str] = field(default_factory=dict)

    def capabilities(self) -> Capabilities:
        """See ``sandbox_capabilities``."""
        namespaces = self.setup.isolation != "none"
        version = {
            controller: f"v{parent.version}"
            for parent in self.setup.cgroups
            for controller in parent.controllers
        }
        return {
            "wall_timeout": True,
            "process_group_kill": True,
            "clean_environment": True,
            "hard_cpu_limit": True,
            "caller_death_cleanup": True,
            "parent_death_signal": bool(self.setup.setpriv) if namespaces else LINUX,
            "rlimit_memory": LINUX,
            "rlimit_file_size": True,
            "network_namespace": namespaces,
            "pid_namespace": namespaces,
            "mount_namespace": namespaces,
            "tmpfs_workdir": namespaces,
            "hidden_home": namespaces,
            # Linux: dropped with namespaces or as root; a non-root caller has none to drop.
            "no_capabilities": LINUX or os.geteuid() != 0,
            "separate_uid": self.setup.isolation == "root",
            "cgroup_pids": "pids" in version,
            "cgroup_memory": "memory" in version,
            "cgroup_pids_version": version.get("pids", "none"),
            "cgroup_memory_version": version.get("memory", "none"),
            "process_cap": "pids" in version or namespaces or (LINUX and os.geteuid() != 0),
        }


CONSEQUENCES = {
    "network_namespace": "sandboxed code can open network connections",
    "pid_namespace": "processes that leave the process group (setsid, double fork) can outlive "
    "the run, and code can see your other processes (and read /proc/<pid>/environ of those "
    "running as the same user)",
    "mount_namespace": "sandboxed code can write and delete files anywhere this user can, and "
    "read files in your home directory",
    "cgroup_memory": "memory is capped per process only (RLIMIT_AS), not in total",
    "cgroup_pids": "the number of processes is capped by RLIMIT_NPROC only",
    "process_cap": "a fork bomb is not contained",
    "rlimit_memory": "memory is not capped (this OS ignores RLIMIT_AS)",
    "parent_death_signal": "if the caller is killed, its runs are killed by the caller's janitor "
    "process only (not if that is killed too)",
}

_PROBE_LOCK = threading.Lock()


def probe() -> Probe:
    """The machine's isolation, probed once per process (concurrent first callers wait)."""
    with _PROBE_LOCK:
        return probe_machine()


def probe_done() -> bool:
    return probe_machine.cache_info().currsize > 0


@functools.lru_cache(maxsize=None)
def probe_machine() -> Probe:
    missing: dict[str, str] = {}
    cgroups = usable_cgroups(missing)
    setup = Setup("none", cgroups=cgroups)
    namespace_failure = "needs Linux"
    if LINUX:
        unshare = shutil.which("unshare", path=SYSTEM_PATH)
        setpriv = shutil.which("setpriv", path=SYSTEM_PATH)
        isolations: list[Isolation] = (["root"] if os.geteuid() == 0 else []) + ["userns"]
        if unshare is None:
            isolations, namespace_failure = [], "util-linux `unshare` is not installed"
        # setpriv older than util-linux 2.33 lacks --pdeathsig: then try without it.
        candidates = [
            Setup(isolation, unshare, helper, cgroups)
            for isolation in isolations
            for helper in dict.fromkeys([setpriv, None])
        ]
        failures = []
        for candidate in candidates:
            error = _try_setup(candidate)
            if error is None:
                setup = candidate
                break
            failures.append(f"{candidate.isolation}: {error}")
        else:
            namespace_failure = "; ".join(failures) or namespace_failure
        if setup.isolation != "none" and setup.setpriv is None:
            missing["parent_death_signal"] = (
                "util-linux `setpriv` with --pdeathsig is not installed"
                if setpriv is None
                else f"`{setpriv} --pdeathsig` does not work here"
            )
    else:
        missing["parent_death_signal"] = f"platform {sys.platform!r} has no parent-death signal"
    if setup.isolation == "none":
        for capability in ("network_namespace", "pid_namespace", "mount_namespace"):
            missing[capability] = namespace_failure
        if not LINUX:
            missing["rlimit_memory"] = f"platform {sys.platform!r}"
    result = Probe(setup, missing)
    if not result.capabilities()["process_cap"]:
        missing["process_cap"] = (
            "running as root without a pids cgroup or namespaces (root ignores RLIMIT_NPROC)"
        )
    return result


def _try_setup(setup: Setup) -> Optional[str]:
    """``None`` when a trivial snippet runs correctly with ``setup``, else what went wrong."""
    try:
        result = run_blocking(execute(setup, "print('ok')", Limits(30.0, 256, 8), None, {}))
    except (SandboxError, OSError) as exc:
        return str(exc)
    if result.ok and result.stdout == "ok\n":
        return None
    return result.failure or f"unexpected output {result.stdout!r} {result.stderr[-300:]!r}"


@functools.lru_cache(maxsize=None)
def warn_about_missing_mechanisms() -> None:
    """One :class:`~.result.SandboxWarning` per missing mechanism, once per process."""
    for capability, reason in probe().missing.items():
        warnings.warn(
            f"masr_graph sandbox: {capability} unavailable ({reason}); "
            f"{CONSEQUENCES[capability]}. See masr_graph.runtime.sandbox.sandbox_capabilities().",
            SandboxWarning,
            stacklevel=2,
        )

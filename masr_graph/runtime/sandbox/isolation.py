"""How runs are isolated on this machine (chosen once by :mod:`.probe`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .cgroups import CgroupParent
from .limits import Isolation


@dataclass(frozen=True)
class Setup:
    """The isolation level, the helper programs found for it and the usable cgroup parents.

    Args:
        isolation: ``"root"`` (namespaces and a per-run uid), ``"userns"`` (namespaces inside a
            user namespace) or ``"none"`` (rlimits, a new session, the scrubbed environment).
        unshare: path of util-linux ``unshare`` (namespaces only).
        setpriv: path of util-linux ``setpriv``, which gives ``unshare`` a parent-death signal
            (namespaces only; without it the caller's janitor kills a dead caller's runs).
        cgroups: where per-run cgroups are made.
    """

    isolation: Isolation
    unshare: Optional[str] = None
    setpriv: Optional[str] = None
    cgroups: tuple[CgroupParent, ...] = ()

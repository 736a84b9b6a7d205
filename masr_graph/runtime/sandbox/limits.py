"""What a run may use: validated arguments and the resource limits the bootstrap sets.

Why here: every limit is set by the bootstrap (:mod:`.bootstrap`) before the code runs, as a
*hard* limit, so the code cannot raise it again; the caller only decides the numbers.
"""

from __future__ import annotations

import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal, Mapping, Optional, Sequence

from ...errors import ConfigError

OUTPUT_CAP_BYTES = 1 << 20
"""Bytes of stdout and of stderr kept per run; the rest is drained and counted, not stored."""
REPORT_CAP_BYTES = 1 << 16
"""Bytes of the report channel kept per run (see ``arun_python(report=True)``)."""
REPORT_FD = 3
"""File descriptor on which the code finds the report channel's write end."""
FILE_SIZE_CAP_MB = 64
"""Largest file the sandboxed code may write (RLIMIT_FSIZE); a bigger write gets SIGXFSZ."""
WORKDIR_CAP_MB = 256
"""Size of the tmpfs that is the work directory when a mount namespace is available."""
SHM_CAP_MB = 64
"""Size of the private ``/dev/shm`` (multiprocessing locks) when a mount namespace is available."""
MIN_MEMORY_MB = 32
"""Smallest accepted ``memory_mb``; the interpreter alone needs about 16 MiB of address space."""
MAIN_FILE = "main.py"
"""Name of the file holding the code in the work directory (so ``files`` may not use it)."""

LINUX = sys.platform.startswith("linux")
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"

Isolation = Literal["root", "userns", "none"]


@dataclass(frozen=True)
class Limits:
    """The validated limits of one run (see ``arun_python`` for their meaning)."""

    timeout_s: float
    memory_mb: int
    max_processes: int
    cpu_s: Optional[float] = None

    @classmethod
    def validated(
        cls, timeout_s: float, memory_mb: int, max_processes: int, cpu_s: Optional[float] = None
    ) -> "Limits":
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)):
            raise ConfigError(f"timeout_s must be a number of seconds (got {timeout_s!r})")
        if not (math.isfinite(timeout_s) and timeout_s > 0):
            raise ConfigError(f"timeout_s must be finite and > 0 (got {timeout_s!r})")
        if not _is_int(memory_mb) or memory_mb < MIN_MEMORY_MB:
            raise ConfigError(f"memory_mb must be an int >= {MIN_MEMORY_MB} (got {memory_mb!r})")
        if not _is_int(max_processes) or max_processes < 1:
            raise ConfigError(f"max_processes must be an int >= 1 (got {max_processes!r})")
        if cpu_s is not None and (
            isinstance(cpu_s, bool)
            or not isinstance(cpu_s, (int, float))
            or not (math.isfinite(cpu_s) and cpu_s > 0)
        ):
            raise ConfigError(
                f"cpu_s must be None or a finite number of seconds > 0 (got {cpu_s!r})"
            )
        return cls(
            float(timeout_s), memory_mb, max_processes, None if cpu_s is None else float(cpu_s)
        )

    def cpu_rlimit(self) -> tuple[int, int]:
        """RLIMIT_CPU as (soft, hard) whole seconds: SIGXCPU at the soft limit (catchable, so
        the code may report it), SIGKILL one second later at the hard limit, which the code
        cannot raise. Without ``cpu_s``, a backstop just above the wall-clock timeout."""
        soft = math.ceil(self.cpu_s) if self.cpu_s is not None else math.ceil(self.timeout_s) + 1
        return soft, soft + 1


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validated_files(files: Optional[Mapping[str, str]]) -> dict[PurePosixPath, str]:
    """``files`` checked: relative paths inside the work directory, text contents."""
    if files is None:
        return {}
    if not isinstance(files, Mapping):
        raise ConfigError(
            f"files must be a mapping of relative path to text (got {type(files).__name__})"
        )
    checked: dict[PurePosixPath, str] = {}
    for name, content in files.items():
        if not isinstance(name, str) or not isinstance(content, str):
            raise ConfigError(
                f"files must map str paths to str contents (got {name!r}: {type(content).__name__})"
            )
        path = PurePosixPath(name)
        reserved = path in (PurePosixPath("."), PurePosixPath(MAIN_FILE))
        if not name or path.is_absolute() or ".." in path.parts or reserved:
            raise ConfigError(
                f"files key {name!r} must be a relative path inside the work directory, without "
                f"'..', and not {MAIN_FILE!r} (which holds the code)"
            )
        checked[path] = content
    return checked


def validated_hidden(hide: Sequence[str]) -> tuple[str, ...]:
    """``hide`` checked: absolute directory paths, resolved (symlinks followed)."""
    if isinstance(hide, (str, bytes)) or not isinstance(hide, Sequence):
        raise ConfigError(f"hide must be a sequence of absolute paths (got {hide!r})")
    for path in hide:
        if not isinstance(path, str) or not os.path.isabs(path):
            raise ConfigError(f"hide must hold absolute directory paths (got {path!r})")
    return tuple(os.path.realpath(path) for path in hide)


def rlimits(isolation: Isolation, limits: Limits, pids_cgroup: bool) -> dict[str, tuple[int, int]]:
    """The rlimits the bootstrap sets on the code, as ``{name: (soft, hard)}``."""
    memory = limits.memory_mb << 20
    result = {
        "RLIMIT_CORE": (0, 0),
        "RLIMIT_FSIZE": (FILE_SIZE_CAP_MB << 20,) * 2,
        "RLIMIT_CPU": limits.cpu_rlimit(),
    }
    if LINUX:
        result["RLIMIT_AS"] = result["RLIMIT_DATA"] = (memory, memory)
        if isolation == "root":
            # One above pids.max when that exists, so the cgroup (which counts refusals) refuses.
            backstop = limits.max_processes + pids_cgroup
            result["RLIMIT_NPROC"] = (backstop, backstop)
        elif isolation == "userns" and _nproc_counted_per_user_namespace():
            # The namespace's init runs under the same (namespaced) uid as the code.
            result["RLIMIT_NPROC"] = (limits.max_processes + 1,) * 2
        elif os.geteuid() != 0:
            # The code shares the count of the caller's real uid with everything else it runs
            # (and with the bootstrap process that waits for it).
            allowance = _tasks_of_real_user() + limits.max_processes + 1
            result["RLIMIT_NPROC"] = (allowance, allowance)
    return result


def _nproc_counted_per_user_namespace() -> bool:
    """Linux >= 5.14 counts RLIMIT_NPROC per (user namespace, uid) rather than per host uid."""
    version = tuple(int(n) for n in re.findall(r"\d+", os.uname().release)[:2])
    return version >= (5, 14)


def _tasks_of_real_user() -> int:
    """Processes and threads currently owned by our real uid (what RLIMIT_NPROC counts)."""
    uid, total = str(os.getuid()), 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            status = Path(entry.path, "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields.get("Uid", "").split()[:1] == [uid]:
            total += int(fields.get("Threads", "1"))
    return total

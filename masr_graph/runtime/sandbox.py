"""Sandboxed execution of untrusted Python (code roles, post-processing, HumanEval/MBPP evaluators).

:func:`run_python` (blocking) and :func:`arun_python` (asyncio; many may run at once) execute a
snippet in a fresh interpreter (``python -I``, the current one) inside a fresh temporary directory
that is its cwd and ``$HOME`` and is deleted afterwards, with an environment built from scratch
(``PATH``, ``LANG``, ``HOME``, ``TMPDIR``, ``USER``, ``LOGNAME`` - nothing is inherited, so no API
key can leak through it). Files given in ``files`` are written there first; the code itself is
``main.py`` in that directory, which is also on ``sys.path`` so helper modules can be imported.

How much isolation there is depends on the machine; :func:`sandbox_capabilities` reports it, and
the first run warns (:class:`SandboxWarning`) once per missing mechanism. Three isolation levels:

* **root** (Linux, running as root, util-linux ``unshare`` works): new PID, network, mount, IPC and
  UTS namespaces; the code runs under a fresh unprivileged uid (a different one per run) with an
  empty capability bounding set and ``no_new_privs``; cgroup v1 ``pids`` and ``memory`` groups
  when those controllers are mounted.
* **userns** (Linux, not root, unprivileged user namespaces allowed): the same namespaces inside
  a user namespace; the code keeps the caller's uid on the host but has no capabilities.
* **none** (macOS, Linux without ``unshare`` or user namespaces): resource limits, a new session
  and the scrubbed environment only.

Threat → mechanism → enforced when ("ns" = the root and userns levels):

=========================  ====================================================  =================
threat                     mechanism                                             enforced when
=========================  ====================================================  =================
infinite loop, sleeping    wall-clock timeout, then SIGKILL to the process       always
forever                    group (and the PID namespace with it); the run's own
                           waiting process ends the run 5 s after the timeout
                           even if the caller died; RLIMIT_CPU backstop
fork bomb                  cgroup ``pids.max``; RLIMIT_NPROC on a uid (root) or  ns; none: Linux,
                           user namespace (userns, Linux >= 5.14) of this run    non-root only
                           only; otherwise RLIMIT_NPROC = the user's current
                           task count + ``max_processes`` (root ignores it)
one huge allocation        RLIMIT_AS and RLIMIT_DATA = ``memory_mb``             Linux (macOS
                                                                                 ignores them)
memory spread over         cgroup ``memory.limit_in_bytes`` (and memsw)          root with cgroup
processes                                                                        v1 memory
huge files, full disk      RLIMIT_FSIZE = :data:`FILE_SIZE_CAP_MB`; the work     RLIMIT_FSIZE
                           directory is a tmpfs of :data:`WORKDIR_CAP_MB`        always; tmpfs ns
writing or deleting        every mount remounted read-only in a mount            ns
outside the temp dir       namespace; private writable tmpfs work directory and
(``rm -rf ~``)             ``/dev/shm``; the per-run uid owns nothing (root)
API keys in the            environment built from scratch                        always
environment
secrets of other           fresh ``/proc`` of a new PID namespace: the caller's  ns
processes                  ``/proc/<pid>/environ`` is not there
secrets in files           ``$HOME`` (and, for the per-run uid, any directory    ns
(``~/.ssh``, ``.env``)     it could not enter) hidden behind an empty tmpfs,
                           the Python installation bound back read-only
network access             network namespace without interfaces (lo down)        ns
double-forked daemons,     init (PID 1) exit kills the namespace; cgroup sweep;  ns; none: only
``setsid()``               without namespaces only the process group is killed   the group
privilege escalation via   ``no_new_privs``; empty capability bounding set       Linux; bounding
setuid programs                                                                  set: ns or root
core dumps                 RLIMIT_CORE = 0                                       always
kernel exploits, side      not addressed: this is process isolation, not a VM    never
channels, CPU share
=========================  ====================================================  =================

Wall-clock limits are sensitive to CPU contention: callers running many snippets at once should
bound their concurrency (e.g. to the CPU count, as the evaluators do), or a correct snippet may
time out.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import itertools
import json
import math
import os
import random
import re
import shutil
import signal
import stat
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Awaitable, Literal, Mapping, Optional, TypeVar

from ..errors import ConfigError, SandboxError

__all__ = [
    "FILE_SIZE_CAP_MB",
    "MAIN_FILE",
    "MIN_MEMORY_MB",
    "OUTPUT_CAP_BYTES",
    "SandboxResult",
    "SandboxWarning",
    "WORKDIR_CAP_MB",
    "arun_python",
    "run_python",
    "sandbox_capabilities",
]

OUTPUT_CAP_BYTES = 1 << 20
"""Bytes of stdout and of stderr kept per run; the rest is drained and counted, not stored."""
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

_LINUX = sys.platform.startswith("linux")
_SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"
_BACKSTOP_GRACE_S = 5
"""The sandbox's own init kills everything this long after the timeout if the caller is gone."""
_STREAM_DRAIN_S = 0.5
"""How long to wait for stdout/stderr to close after the code exited (a leftover child outside a
PID namespace may hold them open)."""
_CGROUP_TEARDOWN_S = 2.0

Isolation = Literal["root", "userns", "none"]


class SandboxWarning(UserWarning):
    """An isolation mechanism is unavailable on this machine, so the sandbox enforces less."""


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one sandboxed run.

    Args:
        ok: the code exited with status 0 within the time limit.
        returncode: exit status; negative ``-N`` when killed by signal ``N`` (as ``subprocess``).
        stdout: captured standard output (UTF-8, invalid bytes replaced), at most
            :data:`OUTPUT_CAP_BYTES` bytes followed by a note of how much was cut.
        stderr: captured standard error, same cap.
        timed_out: the wall-clock limit was reached and everything was killed.
        memory_exceeded: best effort: the memory cgroup OOM-killed a process, or the code died of
            a ``MemoryError`` (the address-space limit).
        killed_signal: number of the signal that ended the code, ``None`` if it exited.
        duration_s: wall time from start to exit (or kill), in seconds.
        failure: short human reason when ``ok`` is false (``"timed out after 2 s"``,
            ``"exited with code 1: KeyError: 'OPENAI_API_KEY'"``), else ``None``.
    """

    ok: bool
    returncode: int
    stdout: str
    stderr: str
    timed_out: bool
    memory_exceeded: bool
    killed_signal: Optional[int]
    duration_s: float
    failure: Optional[str]


def run_python(
    code: str,
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    max_processes: int = 32,
    stdin: Optional[str] = None,
    files: Optional[Mapping[str, str]] = None,
) -> SandboxResult:
    """Run ``code`` in the sandbox and wait for it (blocking; see :func:`arun_python`).

    Safe to call from inside a running event loop (the run then happens on a helper thread), but
    async callers should await :func:`arun_python` instead.
    """
    return _run_blocking(
        arun_python(
            code,
            timeout_s=timeout_s,
            memory_mb=memory_mb,
            max_processes=max_processes,
            stdin=stdin,
            files=files,
        )
    )


async def arun_python(
    code: str,
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    max_processes: int = 32,
    stdin: Optional[str] = None,
    files: Optional[Mapping[str, str]] = None,
) -> SandboxResult:
    """Run ``code`` as ``main.py`` in a fresh sandbox without blocking the event loop.

    Args:
        code: Python source, run as the ``__main__`` module.
        timeout_s: wall-clock limit in seconds; on expiry every process of the run is killed.
        memory_mb: address-space limit of each process (MiB) and, with the memory cgroup, of all
            of them together (tmpfs files included). At least :data:`MIN_MEMORY_MB`.
        max_processes: most processes and threads alive at once (the interpreter counts as one).
        stdin: text fed to the code's standard input (``None``: empty input).
        files: ``{relative path: text}`` written into the work directory before the code runs.

    Returns:
        The :class:`SandboxResult`; a failure of the code (error, timeout, limit) is reported
        there, never raised.

    Raises:
        ConfigError: an argument is invalid (the message names it and the accepted values).
        SandboxError: the sandbox itself could not be set up (not a failure of the code).
    """
    limits = _Limits.validated(timeout_s, memory_mb, max_processes)
    if not isinstance(code, str):
        raise ConfigError(f"code must be a str (got {type(code).__name__})")
    if stdin is not None and not isinstance(stdin, str):
        raise ConfigError(f"stdin must be a str or None (got {type(stdin).__name__})")
    checked_files = _validated_files(files)
    # The first call probes the machine (about a second); keep the event loop free meanwhile.
    probe = _probe() if _probe_done() else await asyncio.to_thread(_probe)
    _warn_about_missing_mechanisms()
    return await _execute(probe.setup, code, limits, stdin, checked_files)


def sandbox_capabilities() -> dict[str, bool]:
    """What the sandbox enforces on this machine (probed once by running a trivial snippet).

    Keys: ``wall_timeout``, ``process_group_kill``, ``clean_environment``, ``rlimit_memory``,
    ``rlimit_file_size``, ``network_namespace``, ``pid_namespace``, ``mount_namespace`` (everything
    outside the work directory read-only), ``tmpfs_workdir``, ``hidden_home``,
    ``no_capabilities``, ``separate_uid``, ``cgroup_pids``, ``cgroup_memory`` and ``process_cap``
    (some hard cap on the number of processes exists, so a fork bomb is contained).
    """
    return _probe().capabilities()


# --- limits and inputs -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Limits:
    timeout_s: float
    memory_mb: int
    max_processes: int

    @classmethod
    def validated(cls, timeout_s: float, memory_mb: int, max_processes: int) -> "_Limits":
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)):
            raise ConfigError(f"timeout_s must be a number of seconds (got {timeout_s!r})")
        if not (math.isfinite(timeout_s) and timeout_s > 0):
            raise ConfigError(f"timeout_s must be finite and > 0 (got {timeout_s!r})")
        if not _is_int(memory_mb) or memory_mb < MIN_MEMORY_MB:
            raise ConfigError(f"memory_mb must be an int >= {MIN_MEMORY_MB} (got {memory_mb!r})")
        if not _is_int(max_processes) or max_processes < 1:
            raise ConfigError(f"max_processes must be an int >= 1 (got {max_processes!r})")
        return cls(float(timeout_s), memory_mb, max_processes)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _validated_files(files: Optional[Mapping[str, str]]) -> dict[PurePosixPath, str]:
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


# --- what runs inside --------------------------------------------------------------------------

# Runs with ``python -I -S`` as the sandbox's first process (root inside the namespaces when there
# are any). It cannot import masr_graph: it must start fast, before site-packages, and as root.
# It forks: the child becomes the code, the parent waits for it (as PID 1 of the namespace, or as
# leader of the run's process group without namespaces) and then ends the run.
# Status protocol on the inherited pipe, NUL-terminated records: b"S" once started, b"E<reason>" if
# the setup failed, b"W<wait status>" when the code's main process ended.
_CHILD_BOOTSTRAP = r'''
# Everything is imported before the fork: the child hides and re-binds the Python installation in
# the mount namespace it shares with this init, and an import racing that would fail.
import json, os, resource, shutil, signal, sys

cfg = json.loads(sys.argv[1])
status_fd = cfg["status_fd"]
os.write(status_fd, b"S\0")
os.set_inheritable(status_fd, False)
LINUX = sys.platform.startswith("linux")

if LINUX:
    import ctypes, errno, re
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = (ctypes.c_char_p,) * 3 + (ctypes.c_ulong, ctypes.c_char_p)
    libc.prctl.argtypes = (ctypes.c_int,) + (ctypes.c_ulong,) * 4
    PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 24, 38
    MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC = 1, 2, 4, 32, 4096, 16384
    # A bind remount must repeat these: inside a user namespace the kernel refuses to clear them.
    KEPT_MOUNT_FLAGS = {"nosuid": 2, "nodev": 4, "noexec": 8, "noatime": 1024,
                        "nodiratime": 2048, "relatime": 1 << 21}


def checked(result, what):
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


def prctl(option, arg):
    checked(libc.prctl(option, arg, 0, 0, 0), f"prctl({option}, {arg})")


def mount(source, target, fstype, flags, data=None):
    encode = lambda s: None if s is None else os.fsencode(s)
    checked(libc.mount(encode(source), encode(target), encode(fstype), flags, encode(data)),
            f"mount {fstype or 'bind'} on {target}")


def mount_points():
    with open("/proc/self/mountinfo") as info:
        for line in info:
            fields = line.split()
            target = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            yield target, fields[5].split(",")


def isolate_filesystem(fs, workdir, uid):
    kept = [os.open(path, os.O_PATH) for path in fs["bind_back"]]
    host_workdir = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY)
    for hidden in fs["hide"]:
        mount("tmpfs", hidden, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    for path, fd in zip(fs["bind_back"], kept):
        os.makedirs(path, mode=0o755, exist_ok=True)
        mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
        os.close(fd)
    os.makedirs(workdir, mode=0o755, exist_ok=True)
    owner = "" if uid is None else f",uid={uid},gid={uid}"
    mount("tmpfs", workdir, "tmpfs", MS_NOSUID | MS_NODEV,
          f"size={fs['workdir_mb']}m,mode=0700{owner}")
    shutil.copytree(f"/proc/self/fd/{host_workdir}", workdir, dirs_exist_ok=True)
    os.close(host_workdir)
    if uid is not None:
        for root, dirs, files in os.walk(workdir):
            for name in dirs + files:
                os.chown(os.path.join(root, name), uid, uid)
    writable = {workdir}
    if os.path.isdir("/dev/shm"):
        mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, f"size={fs['shm_mb']}m,mode=1777")
        writable.add("/dev/shm")
    for target, options in list(mount_points()):
        if target in writable or "ro" in options:
            continue
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY | sum(KEPT_MOUNT_FLAGS.get(o, 0) for o in options)
        try:
            mount(None, target, None, flags)
        except OSError as exc:
            # Overmounted or behind a directory we cannot enter: unreachable for the code as well.
            if exc.errno not in (errno.ENOENT, errno.EACCES, errno.ENOTDIR):
                raise


def become_sandboxed_code():
    """Cgroups, filesystem, limits, privileges and exec, in the process that becomes the code."""
    for path in cfg["cgroup_procs"]:
        with open(path, "w") as procs:
            procs.write("0")
    if cfg["fs"] is not None:
        # Shares the mount namespace with the init, so this isolates the init's view as well.
        isolate_filesystem(cfg["fs"], cfg["workdir"], cfg["uid"])
    for name, value in cfg["rlimits"].items():
        resource.setrlimit(getattr(resource, name), tuple(value))
    if LINUX:
        prctl(PR_SET_NO_NEW_PRIVS, 1)
        if cfg["drop_capabilities"]:
            with open("/proc/sys/kernel/cap_last_cap") as last:
                for capability in range(int(last.read()) + 1):
                    prctl(PR_CAPBSET_DROP, capability)
    if cfg["uid"] is not None:
        os.setgroups([])
        os.setgid(cfg["uid"])
        os.setuid(cfg["uid"])
    if LINUX:
        # Changing credentials cleared the parent-death signal that unshare --kill-child set.
        prctl(PR_SET_PDEATHSIG, 9)
    os.chdir(cfg["workdir"])
    os.execv(cfg["argv"][0], cfg["argv"])


def end_run(exit_status):
    # Leaving the namespace's PID 1 kills everything in it; without one, the process group is
    # killed from here, while this leader still holds its id (the caller may only have a stale one).
    if cfg["kill_group"]:
        os.killpg(0, 9)
    os._exit(exit_status)


def wait_for_code(child):
    """Reap orphans, report the code's exit status, and outlive the code by nothing."""
    signal.signal(signal.SIGALRM, lambda *_: end_run(124))
    signal.alarm(cfg["backstop_s"])
    while True:
        pid, status = os.waitpid(-1, 0)
        if pid == child:
            os.write(status_fd, b"W%d\0" % status)
            end_run(0)


try:
    os.umask(0o022)
    child = os.fork()
    if child:
        wait_for_code(child)
    become_sandboxed_code()
except BaseException as exc:
    os.write(status_fd, f"E{type(exc).__name__}: {exc}\0".encode())
    os._exit(127)
'''

# Runs the code as __main__ with its directory on sys.path (``-I`` implies ``-P``, which drops it).
_LAUNCHER = (
    "import sys;__file__=sys.argv[1];sys.argv=sys.argv[1:];"
    "sys.path.insert(0,__import__('os').path.dirname(__file__));del sys;"
    "exec(compile(open(__file__,'rb').read(),__file__,'exec'))"
)


# --- probing -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _CgroupParent:
    """Where per-run groups of one cgroup v1 controller are created (our own group)."""

    controller: Literal["pids", "memory"]
    directory: Path


@dataclass(frozen=True)
class _Setup:
    """How runs are isolated on this machine."""

    isolation: Isolation
    unshare: Optional[str] = None
    cgroups: tuple[_CgroupParent, ...] = ()


@dataclass(frozen=True)
class _Probe:
    setup: _Setup
    missing: dict[str, str] = field(default_factory=dict)
    """capability -> why it is unavailable"""

    def capabilities(self) -> dict[str, bool]:
        namespaces = self.setup.isolation != "none"
        controllers = {group.controller for group in self.setup.cgroups}
        return {
            "wall_timeout": True,
            "process_group_kill": True,
            "clean_environment": True,
            "rlimit_memory": _LINUX,
            "rlimit_file_size": True,
            "network_namespace": namespaces,
            "pid_namespace": namespaces,
            "mount_namespace": namespaces,
            "tmpfs_workdir": namespaces,
            "hidden_home": namespaces,
            # Linux: dropped with namespaces or as root; a non-root caller has none to drop.
            "no_capabilities": _LINUX or os.geteuid() != 0,
            "separate_uid": self.setup.isolation == "root",
            "cgroup_pids": "pids" in controllers,
            "cgroup_memory": "memory" in controllers,
            "process_cap": "pids" in controllers or namespaces or (_LINUX and os.geteuid() != 0),
        }


_CONSEQUENCES = {
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
}


_PROBE_LOCK = threading.Lock()


def _probe() -> _Probe:
    """The machine's isolation, probed once per process (concurrent first callers wait)."""
    with _PROBE_LOCK:
        return _probe_machine()


def _probe_done() -> bool:
    return _probe_machine.cache_info().currsize > 0


@functools.lru_cache(maxsize=None)
def _probe_machine() -> _Probe:
    missing: dict[str, str] = {}
    cgroups = _usable_cgroups(missing)
    setup = _Setup("none", cgroups=cgroups)
    namespace_failure = "needs Linux"
    if _LINUX:
        unshare = shutil.which("unshare", path=_SYSTEM_PATH)
        candidates: list[Isolation] = (["root"] if os.geteuid() == 0 else []) + ["userns"]
        if unshare is None:
            candidates, namespace_failure = [], "util-linux `unshare` is not installed"
        failures = []
        for isolation in candidates:
            candidate = _Setup(isolation, unshare, cgroups)
            error = _try_setup(candidate)
            if error is None:
                setup = candidate
                break
            failures.append(f"{isolation}: {error}")
        else:
            namespace_failure = "; ".join(failures) or namespace_failure
    if setup.isolation == "none":
        for capability in ("network_namespace", "pid_namespace", "mount_namespace"):
            missing[capability] = namespace_failure
        if not _LINUX:
            missing["rlimit_memory"] = f"platform {sys.platform!r}"
    probe = _Probe(setup, missing)
    if not probe.capabilities()["process_cap"]:
        missing["process_cap"] = (
            "running as root without a pids cgroup or namespaces (root ignores RLIMIT_NPROC)"
        )
    return probe


def _try_setup(setup: _Setup) -> Optional[str]:
    """``None`` when a trivial snippet runs correctly with ``setup``, else what went wrong."""
    try:
        result = _run_blocking(_execute(setup, "print('ok')", _Limits(30.0, 256, 8), None, {}))
    except (SandboxError, OSError) as exc:
        return str(exc)
    if result.ok and result.stdout == "ok\n":
        return None
    return result.failure or f"unexpected output {result.stdout!r} {result.stderr[-300:]!r}"


def _usable_cgroups(missing: dict[str, str]) -> tuple[_CgroupParent, ...]:
    if not _LINUX:
        missing["cgroup_pids"] = missing["cgroup_memory"] = f"platform {sys.platform!r}"
        return ()
    directories = _own_v1_cgroup_directories()
    usable = []
    for controller in ("pids", "memory"):
        directory = directories.get(controller)
        if directory is None:
            missing[f"cgroup_{controller}"] = (
                f"no cgroup v1 {controller!r} hierarchy is mounted (cgroup v2 is not supported)"
            )
            continue
        _remove_groups_of_dead_callers(directory)
        trial = directory / f"masr-sandbox-probe-{os.getpid()}"
        try:
            trial.mkdir()
            trial.rmdir()
        except OSError as exc:
            missing[f"cgroup_{controller}"] = (
                f"cannot create a group in {directory}: {exc.strerror}"
            )
            continue
        usable.append(_CgroupParent(controller, directory))  # type: ignore[arg-type]
    return tuple(usable)


def _remove_groups_of_dead_callers(directory: Path) -> None:
    """Empty per-run groups left behind by a caller that was killed mid-run."""
    for group in directory.glob("masr-sandbox-*-*"):
        owner = group.name.split("-")[2]
        if not owner.isdigit() or _process_exists(int(owner)):
            continue
        try:
            group.rmdir()
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


def _own_v1_cgroup_directories() -> dict[str, Path]:
    """``{controller: directory of this process's group}`` for mounted cgroup v1 controllers."""
    try:
        membership = Path("/proc/self/cgroup").read_text().splitlines()
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return {}
    own_path = {}
    for line in membership:
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(","):
            own_path[controller] = path
    directories = {}
    for line in mounts:
        before, _, after = line.partition(" - ")
        fields, (fstype, _source, super_options) = before.split(), after.split()[:3]
        if fstype != "cgroup":
            continue
        mount_root, mount_point = fields[3], fields[4]
        for controller in ("pids", "memory"):
            if controller in super_options.split(",") and controller in own_path:
                relative = os.path.relpath(own_path[controller], mount_root)
                directories[controller] = Path(mount_point, relative).resolve()
    return directories


@functools.lru_cache(maxsize=None)
def _warn_about_missing_mechanisms() -> None:
    for capability, reason in _probe().missing.items():
        warnings.warn(
            f"masr_graph sandbox: {capability} unavailable ({reason}); "
            f"{_CONSEQUENCES[capability]}. See masr_graph.runtime.sandbox.sandbox_capabilities().",
            SandboxWarning,
            stacklevel=2,
        )


# --- one run -----------------------------------------------------------------------------------

_run_ids = itertools.count()
# Per-run uids far above real users and the usual subordinate-uid ranges; one per run, so
# RLIMIT_NPROC counts exactly this run's processes and runs cannot signal each other.
_sandbox_uids = itertools.count(0x40000000 + random.randrange(0x3F000000))


class _RunCgroups:
    """The per-run cgroup v1 groups (created with their limits, torn down after the run)."""

    def __init__(self, parents: tuple[_CgroupParent, ...], limits: _Limits):
        name = f"masr-sandbox-{os.getpid()}-{next(_run_ids)}"
        self.groups: dict[str, Path] = {}
        try:
            for parent in parents:
                group = parent.directory / name
                group.mkdir()
                self.groups[parent.controller] = group
                if parent.controller == "pids":
                    (group / "pids.max").write_text(str(limits.max_processes))
                else:
                    cap = str(limits.memory_mb << 20)
                    (group / "memory.limit_in_bytes").write_text(cap)
                    swap_cap = group / "memory.memsw.limit_in_bytes"
                    if swap_cap.exists():  # only with swap accounting; keeps swap out of reach
                        swap_cap.write_text(cap)
        except OSError as exc:
            self.destroy()
            raise SandboxError(f"could not set up cgroup {name!r}: {exc}") from exc

    def procs_files(self) -> list[str]:
        return [str(group / "cgroup.procs") for group in self.groups.values()]

    def _counter(self, controller: str, filename: str, key: str) -> int:
        group = self.groups.get(controller)
        if group is None:
            return 0
        try:
            for line in (group / filename).read_text().splitlines():
                name, _, value = line.partition(" ")
                if name == key:
                    return int(value)
        except OSError:
            pass
        return 0

    def oom_kills(self) -> int:
        return self._counter("memory", "memory.oom_control", "oom_kill")

    def process_limit_hits(self) -> int:
        return self._counter("pids", "pids.events", "max")

    def destroy(self) -> None:
        """Kill whatever is left in the groups and remove them (raises SandboxError if stuck)."""
        deadline = time.monotonic() + _CGROUP_TEARDOWN_S
        for group in list(self.groups.values()):
            while True:
                try:
                    for pid in (group / "cgroup.procs").read_text().split():
                        _signal_quietly(os.kill, int(pid))
                    group.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if time.monotonic() > deadline:
                        raise SandboxError(f"could not remove cgroup {group}: {exc}") from exc
                    time.sleep(0.005)
        self.groups.clear()


def _signal_quietly(kill: Any, target: int) -> None:
    try:
        kill(target, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _host_paths(isolation: Isolation, workdir: str) -> tuple[list[str], list[str]]:
    """Directories to hide behind an empty tmpfs, and paths to bind back inside them.

    Hidden: the caller's home directories, and (when the code runs under its own uid) the
    topmost directory it could not enter on the way to the interpreter or the work directory.
    Bound back: the interpreter's installation, when it lies inside a hidden directory."""
    interpreter = sorted(
        {
            os.path.realpath(p)
            for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
                      os.path.dirname(os.path.realpath(sys.executable)))
        }
    )
    hide = set()
    for home in (os.environ.get("HOME"), _account_home()):
        if home and os.path.isdir(home) and os.path.realpath(home) != "/":
            hide.add(os.path.realpath(home))
    if isolation == "root":
        for path in interpreter + [os.path.dirname(workdir)]:
            closed = _topmost_closed_directory(path)
            if closed is not None:
                hide.add(closed)
    # Hiding a directory inside the interpreter's installation would break the interpreter.
    hide = {h for h in hide if not any(_within(h, p) for p in interpreter)}
    hide_list = sorted(h for h in hide if not any(h != o and _within(h, o) for o in hide))
    bind_back = [p for p in interpreter if any(_within(p, h) and p != h for h in hide_list)]
    bind_back = [p for p in bind_back if not any(p != o and _within(p, o) for o in bind_back)]
    return hide_list, bind_back


def _account_home() -> Optional[str]:
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_dir
    except (ImportError, KeyError):
        return None


def _within(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _topmost_closed_directory(path: str) -> Optional[str]:
    """The highest ancestor of ``path`` that others may not traverse (no o+x), if any."""
    current = "/"
    for part in Path(path).parts[1:]:
        current = os.path.join(current, part)
        try:
            mode = os.stat(current).st_mode
        except OSError:
            return None
        if stat.S_ISDIR(mode) and not mode & stat.S_IXOTH:
            return current
    return None


def _rlimits(setup: _Setup, limits: _Limits) -> dict[str, tuple[int, int]]:
    memory = limits.memory_mb << 20
    cpu = math.ceil(limits.timeout_s) + 1
    rlimits = {
        "RLIMIT_CORE": (0, 0),
        "RLIMIT_FSIZE": (FILE_SIZE_CAP_MB << 20,) * 2,
        "RLIMIT_CPU": (cpu, cpu + 1),
    }
    if _LINUX:
        rlimits["RLIMIT_AS"] = rlimits["RLIMIT_DATA"] = (memory, memory)
        if setup.isolation == "root":
            # One above pids.max when that exists, so the cgroup (which counts refusals) refuses.
            backstop = limits.max_processes + any(g.controller == "pids" for g in setup.cgroups)
            rlimits["RLIMIT_NPROC"] = (backstop, backstop)
        elif setup.isolation == "userns" and _nproc_counted_per_user_namespace():
            # The namespace's init runs under the same (namespaced) uid as the code.
            rlimits["RLIMIT_NPROC"] = (limits.max_processes + 1,) * 2
        elif os.geteuid() != 0:
            # The code shares the count of the caller's real uid with everything else it runs
            # (and with the bootstrap process that waits for it).
            allowance = _tasks_of_real_user() + limits.max_processes + 1
            rlimits["RLIMIT_NPROC"] = (allowance, allowance)
    return rlimits


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


def _environment(workdir: str) -> dict[str, str]:
    """Built from scratch: nothing of the caller's environment (API keys!) is passed on."""
    interpreter_dir = os.path.dirname(sys.executable)
    return {
        "PATH": f"{interpreter_dir}:{_SYSTEM_PATH}",
        "LANG": "C.UTF-8",
        "HOME": workdir,
        "TMPDIR": workdir,
        "USER": "sandbox",
        "LOGNAME": "sandbox",
    }


def _write_inputs(workdir: Path, code: str, files: dict[PurePosixPath, str]) -> None:
    for relative, content in files.items():
        target = workdir / relative
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content, encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"files key {str(relative)!r} cannot be written: {exc.strerror}"
            ) from exc
    (workdir / MAIN_FILE).write_text(code, encoding="utf-8")


class _CaptureProtocol(asyncio.SubprocessProtocol):
    """Keeps the first ``cap`` bytes of stdout/stderr and counts the rest."""

    def __init__(self, cap: int):
        loop = asyncio.get_running_loop()
        self.cap = cap
        self.kept = {1: bytearray(), 2: bytearray()}
        self.dropped = {1: 0, 2: 0}
        self.exited: asyncio.Future[None] = loop.create_future()
        self.streams_closed: asyncio.Future[None] = loop.create_future()
        self._open_streams = {1, 2}

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        kept = self.kept[fd]
        room = max(self.cap - len(kept), 0)
        kept += data[:room]
        self.dropped[fd] += len(data) - min(room, len(data))

    def pipe_connection_lost(self, fd: int, exc: Optional[Exception]) -> None:
        self._open_streams.discard(fd)
        if not self._open_streams and not self.streams_closed.done():
            self.streams_closed.set_result(None)

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)

    def text(self, fd: int) -> str:
        text = self.kept[fd].decode("utf-8", errors="replace")
        if self.dropped[fd]:
            text += f"\n[masr sandbox: {self.dropped[fd]} more bytes not captured]"
        return text


def _bootstrap_command(
    setup: _Setup, limits: _Limits, workdir: Path, status_fd: int, cgroups: _RunCgroups
) -> list[str]:
    """The command line that sets the run up (see ``_CHILD_BOOTSTRAP``) and runs the code."""
    namespaces = setup.isolation != "none"
    hide, bind_back = _host_paths(setup.isolation, str(workdir)) if namespaces else ([], [])
    config = {
        "status_fd": status_fd,
        "workdir": str(workdir),
        "uid": next(_sandbox_uids) if setup.isolation == "root" else None,
        "kill_group": not namespaces,
        # Dropping the bounding set needs CAP_SETPCAP: root, or root of the user namespace.
        "drop_capabilities": namespaces or (_LINUX and os.geteuid() == 0),
        "backstop_s": math.ceil(limits.timeout_s) + _BACKSTOP_GRACE_S,
        "cgroup_procs": cgroups.procs_files(),
        "rlimits": _rlimits(setup, limits),
        "fs": (
            {
                "hide": hide,
                "bind_back": bind_back,
                "workdir_mb": WORKDIR_CAP_MB,
                "shm_mb": SHM_CAP_MB,
            }
            if namespaces
            else None
        ),
        "argv": [
            sys.executable, "-I", "-B", "-X", "utf8", "-c", _LAUNCHER, str(workdir / MAIN_FILE),
        ],  # fmt: skip
    }
    command = [sys.executable, "-I", "-S", "-B", "-c", _CHILD_BOOTSTRAP, json.dumps(config)]
    if not namespaces:
        return command
    assert setup.unshare is not None  # the probe only picks namespaces when it found unshare
    user = ["--user", "--map-root-user"] if setup.isolation == "userns" else []
    return [
        setup.unshare, *user, "--fork", "--kill-child", "--pid", "--mount-proc",
        "--net", "--ipc", "--uts", "--", *command,
    ]  # fmt: skip


async def _execute(
    setup: _Setup, code: str, limits: _Limits, stdin: Optional[str], files: dict[PurePosixPath, str]
) -> SandboxResult:
    workdir = Path(tempfile.mkdtemp(prefix="masr-sandbox-"))
    status_read, status_write = os.pipe()
    cgroups: Optional[_RunCgroups] = None
    transport: Optional[asyncio.SubprocessTransport] = None
    try:
        _write_inputs(workdir, code, files)
        cgroups = _RunCgroups(setup.cgroups, limits)
        command = _bootstrap_command(setup, limits, workdir, status_write, cgroups)
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        transport, protocol = await loop.subprocess_exec(
            lambda: _CaptureProtocol(OUTPUT_CAP_BYTES),
            *command,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=_environment(str(workdir)),
            cwd=workdir,
            start_new_session=True,
            pass_fds=(status_write,),
        )
        os.close(status_write)
        status_write = -1
        if stdin is not None:
            stdin_pipe = transport.get_pipe_transport(0)
            stdin_pipe.write(stdin.encode("utf-8"))
            stdin_pipe.close()
        timed_out = False
        try:
            await asyncio.wait_for(asyncio.shield(protocol.exited), limits.timeout_s)
        except asyncio.TimeoutError:
            timed_out = True
            _signal_quietly(os.killpg, transport.get_pid())
            await protocol.exited
        duration = time.monotonic() - started
        try:
            await asyncio.wait_for(asyncio.shield(protocol.streams_closed), _STREAM_DRAIN_S)
        except asyncio.TimeoutError:
            pass
        status = _read_status(status_read)
        returncode = transport.get_returncode()
        assert returncode is not None  # the process has exited
        if "S" not in status and not timed_out:
            raise SandboxError(
                f"the sandbox launcher failed (exit status {returncode}): "
                f"{protocol.text(2)[-500:].strip()}"
            )
        if "E" in status:
            raise SandboxError(f"sandbox setup failed: {status['E']}")
        if "W" in status:
            returncode = os.waitstatus_to_exitcode(int(status["W"]))
        return _result(
            limits,
            returncode,
            protocol.text(1),
            protocol.text(2),
            timed_out,
            duration,
            oom_kills=cgroups.oom_kills(),
            process_limit_hits=cgroups.process_limit_hits(),
        )
    finally:
        if transport is not None:
            if transport.get_returncode() is None:  # cancelled: not reaped, so the id is still ours
                _signal_quietly(os.killpg, transport.get_pid())
            transport.close()
        for fd in (status_read, status_write):
            if fd >= 0:
                os.close(fd)
        try:
            if cgroups is not None:
                cgroups.destroy()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


def _read_status(fd: int) -> dict[str, str]:
    """The bootstrap's status records as ``{kind: payload}`` (all writers are gone by now)."""
    os.set_blocking(fd, False)
    chunks = []
    try:
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    except BlockingIOError:
        pass
    records = b"".join(chunks).decode("utf-8", errors="replace").split("\0")
    return {record[0]: record[1:] for record in reversed(records) if record}


_MEMORY_ERROR = re.compile(r"^MemoryError\b", re.MULTILINE)


def _result(
    limits: _Limits,
    returncode: int,
    stdout: str,
    stderr: str,
    timed_out: bool,
    duration: float,
    *,
    oom_kills: int,
    process_limit_hits: int,
) -> SandboxResult:
    killed_signal = -returncode if returncode < 0 else None
    memory_exceeded = oom_kills > 0 or bool(_MEMORY_ERROR.search(stderr))
    ok = returncode == 0 and not timed_out
    failure = None
    if not ok:
        reasons = []
        if timed_out:
            reasons.append(f"timed out after {limits.timeout_s:g} s")
        if memory_exceeded:
            reasons.append(f"exceeded the memory limit of {limits.memory_mb} MiB")
        if process_limit_hits:
            reasons.append(f"hit the limit of {limits.max_processes} processes")
        if not timed_out:
            reasons.append(_exit_reason(returncode, killed_signal, stderr))
        failure = "; ".join(reasons)
    return SandboxResult(
        ok=ok,
        returncode=returncode,
        stdout=stdout,
        stderr=stderr,
        timed_out=timed_out,
        memory_exceeded=memory_exceeded,
        killed_signal=killed_signal,
        duration_s=duration,
        failure=failure,
    )


_SIGNAL_NOTES = {
    signal.SIGXFSZ: f" (file size limit of {FILE_SIZE_CAP_MB} MiB)",
    signal.SIGXCPU: " (CPU time limit)",
}


def _exit_reason(returncode: int, killed_signal: Optional[int], stderr: str) -> str:
    if killed_signal is not None:
        try:
            name = signal.Signals(killed_signal).name
        except ValueError:
            name = f"signal {killed_signal}"
        return f"killed by {name}{_SIGNAL_NOTES.get(killed_signal, '')}"
    last_line = next((line.strip() for line in reversed(stderr.splitlines()) if line.strip()), "")
    return f"exited with code {returncode}" + (f": {last_line[:200]}" if last_line else "")


_T = TypeVar("_T")


def _run_blocking(coroutine: Awaitable[_T]) -> _T:
    """Run ``coroutine`` to completion from sync code, even when this thread runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)  # type: ignore[arg-type]
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as helper:
        return helper.submit(asyncio.run, coroutine).result()  # type: ignore[arg-type]

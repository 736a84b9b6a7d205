"""The command line of one run: the bootstrap program that sets the run up, and what it is told.

Process chain, with namespaces::

    caller -> setpriv --pdeathsig KILL -> unshare --fork --kill-child --pid ... -> bootstrap (PID 1)
           -> fork: the code (python -I main.py, own uid when root)

and without them ``caller -> bootstrap -> the code``. Every link dies with the one before it:
``setpriv`` gives ``unshare`` a parent-death signal (SIGKILL when the caller's thread that
started it exits; the caller's janitor covers the case where ``setpriv`` is missing), ``unshare
--kill-child`` gives one to the bootstrap, whose exit as PID 1 kills the whole namespace, and the
bootstrap gives one to the code (credentials changes clear it, so it is set after them). Without
namespaces the bootstrap sets its own parent-death signal and checks that the caller is still its
parent, and kills the run's process group when it ends.

The bootstrap runs with ``python -I -S`` as the sandbox's first process (root inside the
namespaces when there are any). It cannot import masr_graph: it must start fast, before
site-packages, and as root. It forks: the child joins the run's cgroups, isolates the filesystem,
sets the rlimits (hard limits: the code cannot raise them), drops privileges and execs the code;
the parent waits for it (as PID 1 of the namespace, or as leader of the run's process group) and
then ends the run. Status protocol on an inherited pipe, NUL-terminated records: ``S`` once
started, ``E<reason>`` if the setup failed, ``W<wait status>`` and ``C<CPU seconds>`` when the
code's main process ended. With a report channel, the code finds its write end on
:data:`~.limits.REPORT_FD`; the bootstrap keeps no copy, so end of file on it means the code and
everything it started are gone.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import stat
import sys
from pathlib import Path, PurePosixPath
from typing import Optional

from ...errors import ConfigError
from .isolation import Setup
from .limits import (
    LINUX,
    MAIN_FILE,
    REPORT_FD,
    SHM_CAP_MB,
    SYSTEM_PATH,
    WORKDIR_CAP_MB,
    Isolation,
    Limits,
    rlimits,
)

BACKSTOP_GRACE_S = 5
"""The sandbox's own init kills everything this long after the timeout if nobody else did."""

BOOTSTRAP = r'''
# Everything is imported before the fork: the child hides and re-binds the Python installation in
# the mount namespace it shares with this init, and an import racing that would fail.
import fcntl, json, os, resource, shutil, signal, sys

cfg = json.loads(sys.argv[1])
LINUX = sys.platform.startswith("linux")


def relocated(fd):
    """Move an inherited pipe above the low descriptors (the code's report fd is one of them)
    and make it close-on-exec."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


status_fd = relocated(cfg["status_fd"])
report_fd = None if cfg["report_fd"] is None else relocated(cfg["report_fd"])
os.write(status_fd, b"S\0")

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
    if report_fd is not None:
        os.dup2(report_fd, cfg["report_target"])  # inheritable, unlike the original
    os.execv(cfg["argv"][0], cfg["argv"])


def end_run(exit_status):
    # Leaving the namespace's PID 1 kills everything in it; without one, the process group is
    # killed from here, while this leader still holds its id (the caller may only have a stale one).
    if cfg["kill_group"]:
        os.killpg(0, 9)
    os._exit(exit_status)


def wait_for_code(child):
    """Reap orphans, report the code's exit status and CPU time, and outlive the code by nothing."""
    if report_fd is not None:
        os.close(report_fd)
    signal.signal(signal.SIGALRM, lambda *_: end_run(124))
    signal.alarm(cfg["backstop_s"])
    while True:
        pid, status, usage = os.wait4(-1, 0)
        if pid == child:
            os.write(status_fd, b"C%.3f\0W%d\0" % (usage.ru_utime + usage.ru_stime, status))
            end_run(0)


try:
    if cfg["parent_pid"] is not None:
        # Without namespaces this is the caller's own child: die with the caller.
        if LINUX:
            prctl(PR_SET_PDEATHSIG, 9)
        if os.getppid() != cfg["parent_pid"]:
            os._exit(125)
    os.umask(0o022)
    child = os.fork()
    if child:
        wait_for_code(child)
    become_sandboxed_code()
except BaseException as exc:
    os.write(status_fd, f"E{type(exc).__name__}: {exc}\0".encode())
    os._exit(127)
'''

LAUNCHER = (
    "import sys;__file__=sys.argv[1];sys.argv=sys.argv[1:];"
    "sys.path.insert(0,__import__('os').path.dirname(__file__));del sys;"
    "exec(compile(open(__file__,'rb').read(),__file__,'exec'))"
)
"""Runs the code as __main__ with its directory on sys.path (``-I`` implies ``-P``, dropping it)."""

# Per-run uids far above real users and the usual subordinate-uid ranges; one per run, so
# RLIMIT_NPROC counts exactly this run's processes and runs cannot signal each other.
_sandbox_uids = itertools.count(0x40000000 + random.randrange(0x3F000000))


def command(
    setup: Setup,
    limits: Limits,
    workdir: Path,
    status_fd: int,
    report_fd: Optional[int],
    cgroup_procs: list[str],
    extra_hidden: tuple[str, ...] = (),
) -> list[str]:
    """The command line that sets the run up (see the module docstring) and runs the code."""
    namespaces = setup.isolation != "none"
    hide, bind_back = (
        host_paths(setup.isolation, str(workdir), extra_hidden) if namespaces else ([], [])
    )
    config = {
        "status_fd": status_fd,
        "report_fd": report_fd,
        "report_target": REPORT_FD,
        "parent_pid": None if namespaces else os.getpid(),
        "workdir": str(workdir),
        "uid": next(_sandbox_uids) if setup.isolation == "root" else None,
        "kill_group": not namespaces,
        # Dropping the bounding set needs CAP_SETPCAP: root, or root of the user namespace.
        "drop_capabilities": namespaces or (LINUX and os.geteuid() == 0),
        "backstop_s": math.ceil(limits.timeout_s) + BACKSTOP_GRACE_S,
        "cgroup_procs": cgroup_procs,
        "rlimits": rlimits(
            setup.isolation, limits, any("pids" in g.controllers for g in setup.cgroups)
        ),
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
            sys.executable,
            "-I",
            "-B",
            "-X",
            "utf8",
            "-c",
            LAUNCHER,
            str(workdir / MAIN_FILE),
        ],  # fmt: skip
    }
    bootstrap = [sys.executable, "-I", "-S", "-B", "-c", BOOTSTRAP, json.dumps(config)]
    if not namespaces:
        return bootstrap
    assert setup.unshare is not None  # the probe only picks namespaces when it found unshare
    user = ["--user", "--map-root-user"] if setup.isolation == "userns" else []
    parent_death = [setup.setpriv, "--pdeathsig", "KILL"] if setup.setpriv else []
    return [
        *parent_death, setup.unshare, *user, "--fork", "--kill-child", "--pid", "--mount-proc",
        "--net", "--ipc", "--uts", "--", *bootstrap,
    ]  # fmt: skip


def host_paths(
    isolation: Isolation, workdir: str, extra_hidden: tuple[str, ...] = ()
) -> tuple[list[str], list[str]]:
    """Directories to hide behind an empty tmpfs, and paths to bind back inside them.

    Hidden: the caller's home directories, the caller's ``extra_hidden`` directories, and (when
    the code runs under its own uid) the topmost directory it could not enter on the way to the
    interpreter or the work directory.
    Bound back: the interpreter's installation, when it lies inside a hidden directory."""
    interpreter = sorted(
        {
            os.path.realpath(p)
            for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
                      os.path.dirname(os.path.realpath(sys.executable)))
        }
    )  # fmt: skip
    hide = {path for path in extra_hidden if os.path.isdir(path)}
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


def environment(workdir: str) -> dict[str, str]:
    """Built from scratch: nothing of the caller's environment (API keys!) is passed on."""
    interpreter_dir = os.path.dirname(sys.executable)
    return {
        "PATH": f"{interpreter_dir}:{SYSTEM_PATH}",
        "LANG": "C.UTF-8",
        "HOME": workdir,
        "TMPDIR": workdir,
        "USER": "sandbox",
        "LOGNAME": "sandbox",
    }


def write_inputs(workdir: Path, code: str, files: dict[PurePosixPath, str]) -> None:
    """The code as :data:`~.limits.MAIN_FILE` and the caller's files, in the work directory."""
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

"""Killing a run's leftovers and removing its directories; also the janitor process's program.

Why one module for both: a run is torn down by its caller when it ends (:mod:`.launcher`) and by
the caller's janitor when the caller dies mid-run (:mod:`.janitor`); both must do the same thing,
so both use these functions. The janitor runs this file as a script with ``python -I -S`` (fast,
without site-packages and so without masr_graph), hence: standard library only, no imports from
the package.

The janitor reads one record per line from its stdin, a pipe whose write end only the caller
holds::

    + {"id": ..., "workdir": ..., "cgroups": [...]}   a run started (before anything is created)
    p <id> <process group id>                         its process group, once launched
    - <id>                                            it was torn down by the caller

End of file means the caller is gone (exited or killed): every run still registered is killed
and removed (:func:`remove_run`), and the janitor exits.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import BinaryIO, Optional

TEARDOWN_S = 5.0
"""How long a group may take to empty after its processes were sent SIGKILL."""


def read_control(path: Path) -> str:
    """Text of a cgroup interface file."""
    with open(path) as handle:
        return handle.read()


def write_control(path: Path, text: str) -> None:
    """Write one value to a cgroup interface file (a single write, as the kernel expects)."""
    with open(path, "w") as handle:
        handle.write(text)


def counter(path: Path, key: str) -> int:
    """Value of ``key`` in a flat-keyed cgroup file (``memory.events``, ``pids.events`` ...),
    0 when the file or the key is missing."""
    try:
        for line in read_control(path).splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def kill_cgroup(group: Path) -> None:
    """SIGKILL every process in ``group``: ``cgroup.kill`` where the kernel has it (cgroup v2,
    Linux >= 5.14, also catches processes forking meanwhile), else each listed pid."""
    kill_file = group / "cgroup.kill"
    if kill_file.exists():
        try:
            write_control(kill_file, "1")
            return
        except OSError:
            pass  # not writable for us: fall back to the pids
    try:
        pids = read_control(group / "cgroup.procs").split()
    except OSError:
        return
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, PermissionError, ValueError):
            pass


def remove_cgroup(group: Path, timeout_s: float = TEARDOWN_S) -> None:
    """Kill what is left in ``group`` and remove it, retrying while its processes die.

    Raises:
        OSError: the group still exists after ``timeout_s`` (the last error).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        kill_cgroup(group)
        try:
            os.rmdir(group)
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.005)


def kill_process_group(pgid: int, workdir: str) -> None:
    """SIGKILL the run's process group, unless its leader's pid now belongs to someone else.

    A process group's id cannot be reused while the group has members, so the only risk is an
    empty group whose number went to a new, unrelated process: its command line (where /proc
    exists) then lacks the run's work directory, which every launcher of ours carries. An empty
    command line is a zombie leader, which still holds the id."""
    try:
        command_line = Path(f"/proc/{pgid}/cmdline").read_bytes()
    except FileNotFoundError:
        command_line = b""  # leader gone (or no /proc): members may remain
    except OSError:
        return
    if command_line and os.fsencode(workdir) not in command_line:
        return
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def group_leaders_carrying(workdir: str) -> list[int]:
    """Process group leaders with ``workdir`` in their command line: the run's launcher (and
    any process of the run that made itself a leader), for a caller that died after launching
    the run but before telling the janitor its process group."""
    needle = os.fsencode(workdir)
    try:
        entries = [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]
    except OSError:
        return []
    leaders = []
    for pid in entries:
        try:
            if needle in Path(f"/proc/{pid}/cmdline").read_bytes() and os.getpgid(pid) == pid:
                leaders.append(pid)
        except OSError:
            continue  # exited meanwhile
    return leaders


def remove_run(run: dict, pgid: Optional[int]) -> None:
    """Kill a run's processes and remove its cgroups and work directory (best effort: each
    step is tried even if an earlier one failed)."""
    for leader in [pgid] if pgid is not None else group_leaders_carrying(run["workdir"]):
        kill_process_group(leader, run["workdir"])
    for group in run["cgroups"]:
        try:
            remove_cgroup(Path(group))
        except OSError:
            pass  # still busy; the next probe of a caller in this cgroup removes it
    shutil.rmtree(run["workdir"], ignore_errors=True)


def serve(records: BinaryIO) -> None:
    """The janitor: follow the caller's records until end of file, then clean up after it."""
    runs: dict[str, dict] = {}
    groups: dict[str, int] = {}
    for line in records:
        kind, _, payload = line.rstrip(b"\n").partition(b" ")
        if kind == b"+":
            run = json.loads(payload)
            runs[run["id"]] = run
        elif kind == b"p":
            run_id, _, pgid = payload.partition(b" ")
            groups[run_id.decode()] = int(pgid)
        elif kind == b"-":
            runs.pop(payload.decode(), None)
            groups.pop(payload.decode(), None)
    for run_id, run in runs.items():
        remove_run(run, groups.get(run_id))


if __name__ == "__main__":
    # argv[1] is a marker naming the caller, so the janitor can be found in a process listing.
    os.chdir("/")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    serve(sys.stdin.buffer)

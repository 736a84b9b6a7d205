"""The caller's janitor: a small process that cleans up after runs if the caller dies mid-run.

Why: a caller killed by SIGKILL (or the OOM killer) runs no ``finally`` block, so its runs' work
directories and cgroups would stay behind, and without a parent-death signal its sandboxed
processes would live on until their own backstop fires. One janitor per caller process, started
on the first run, learns each run's work directory, cgroups and process group over a pipe
(:mod:`.cleanup` describes the records). Only the caller holds the pipe's write end (it is
close-on-exec, and closed in children forked without exec), so end of file on it means the caller
is gone: the janitor then kills and removes whatever is still registered, and exits. It lives in
its own session, so signals sent to the caller's process group or terminal do not reach it. A
caller that exits normally closes the pipe at exit; the janitor, with nothing registered, exits
at once.
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import threading
from typing import Optional

from ...errors import SandboxError
from . import cleanup

JANITOR_MARKER = "masr-sandbox-janitor"
"""First argument of every janitor process (followed by the caller's pid), to find it by."""


class Janitor:
    """Client side of the janitor protocol (one per caller process; thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: Optional[subprocess.Popen[bytes]] = None
        self._pipe = -1  # write end of the janitor's stdin
        self._owner = -1  # pid of the process that started it

    def register(self, run_id: str, workdir: str, cgroups: list[str]) -> None:
        """Announce a run before its directories are created."""
        record = {"id": run_id, "workdir": workdir, "cgroups": cgroups}
        self._send(b"+ " + json.dumps(record).encode() + b"\n")

    def launched(self, run_id: str, pgid: int) -> None:
        """Tell the janitor the run's process group (the launcher is its leader)."""
        self._send(f"p {run_id} {pgid}\n".encode())

    def forget(self, run_id: str) -> None:
        """The caller tore the run down itself."""
        self._send(f"- {run_id}\n".encode())

    def _send(self, record: bytes) -> None:
        with self._lock:
            for attempt in range(2):
                if self._process is None or self._owner != os.getpid():
                    self._start()
                try:
                    view = memoryview(record)
                    while view:
                        view = view[os.write(self._pipe, view) :]
                    return
                except OSError as exc:  # the janitor died (killed by someone): start another
                    self._drop()
                    if attempt:
                        raise SandboxError(f"the sandbox janitor cannot be reached: {exc}") from exc

    def _start(self) -> None:
        read_end, write_end = os.pipe()  # both close-on-exec; Popen dups the read end to stdin
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-I", "-S", "-B", cleanup.__file__, JANITOR_MARKER,
                 str(os.getpid())],
                stdin=read_end,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd="/",
                start_new_session=True,
            )  # fmt: skip
        except OSError as exc:
            os.close(write_end)
            raise SandboxError(f"could not start the sandbox janitor: {exc}") from exc
        finally:
            os.close(read_end)
        self._pipe, self._owner = write_end, os.getpid()

    def _drop(self) -> None:
        if self._pipe >= 0:
            try:
                os.close(self._pipe)
            except OSError:
                pass
        self._process, self._pipe = None, -1

    def close(self) -> None:
        """Close the pipe (the janitor then cleans up what is registered and exits) and wait
        briefly for it; called at interpreter exit."""
        with self._lock:
            process = self._process
            if process is None or self._owner != os.getpid():
                return
            self._drop()
            try:
                process.wait(timeout=cleanup.TEARDOWN_S)
            except subprocess.TimeoutExpired:
                pass  # still removing a busy cgroup; it exits by itself

    def _forget_in_child(self) -> None:
        """In a child forked without exec: drop the parent's pipe, so that the janitor sees the
        parent's death, and start a janitor of our own when needed."""
        if self._process is not None:
            self._process.returncode = 0  # the parent's child, not ours: never wait for it
        self._lock = threading.Lock()  # another thread may have held it at the fork
        self._drop()


JANITOR = Janitor()
atexit.register(JANITOR.close)
os.register_at_fork(after_in_child=JANITOR._forget_in_child)

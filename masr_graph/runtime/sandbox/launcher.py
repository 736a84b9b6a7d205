"""One run from start to teardown: work directory, pipes, the process tree, capture, cleanup.

Why it is careful about the end: whatever happens - the code exits, times out, the sandbox
fails, the awaiting task is cancelled, or the caller is killed - no process, work directory or
cgroup of the run may remain. The first four are handled here (``finally``); for the last the
run is registered with the caller's janitor (:mod:`.janitor`) before anything is created, and
the launched process tree carries parent-death signals (:mod:`.bootstrap`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import os
import secrets
import shutil
import signal
import tempfile
import time
from pathlib import Path, PurePosixPath
from typing import Awaitable, Callable, Optional, TypeVar

from ...errors import SandboxError
from . import bootstrap
from .cgroups import RUN_PREFIX, RunCgroups
from .isolation import Setup
from .janitor import JANITOR
from .limits import OUTPUT_CAP_BYTES, REPORT_CAP_BYTES, Limits
from .result import SandboxResult, build_result

STREAM_DRAIN_S = 0.5
"""How long to wait for stdout/stderr/report to close after the code exited (a leftover child
outside a PID namespace may hold them open)."""

_run_numbers = itertools.count()


class _Capped:
    """The first ``cap`` bytes of a stream, and a count of the rest."""

    def __init__(self, cap: int):
        self.cap = cap
        self.kept = bytearray()
        self.dropped = 0

    def add(self, data: bytes) -> None:
        room = max(self.cap - len(self.kept), 0)
        self.kept += data[:room]
        self.dropped += len(data) - min(room, len(data))

    def text(self) -> str:
        text = self.kept.decode("utf-8", errors="replace")
        if self.dropped:
            text += f"\n[masr sandbox: {self.dropped} more bytes not captured]"
        return text


class _CaptureProtocol(asyncio.SubprocessProtocol):
    """Keeps the first ``cap`` bytes of stdout/stderr and counts the rest."""

    def __init__(self, cap: int):
        loop = asyncio.get_running_loop()
        self.streams = {1: _Capped(cap), 2: _Capped(cap)}
        self.exited: asyncio.Future[None] = loop.create_future()
        self.streams_closed: asyncio.Future[None] = loop.create_future()
        self._open_streams = {1, 2}

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        self.streams[fd].add(data)

    def pipe_connection_lost(self, fd: int, exc: Optional[Exception]) -> None:
        self._open_streams.discard(fd)
        if not self._open_streams and not self.streams_closed.done():
            self.streams_closed.set_result(None)

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)


class _ReportProtocol(asyncio.Protocol):
    """The report channel's read end, captured like stdout."""

    def __init__(self, cap: int):
        self.capped = _Capped(cap)
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.capped.add(data)

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


async def execute(
    setup: Setup,
    code: str,
    limits: Limits,
    stdin: Optional[str],
    files: dict[PurePosixPath, str],
    report: bool = False,
    hide: tuple[str, ...] = (),
) -> SandboxResult:
    """Run ``code`` once with ``setup`` (arguments already validated; see ``arun_python``)."""
    run_id = f"{os.getpid()}-{next(_run_numbers)}"
    # Named, not made: the janitor must know the directory before it exists, or a caller killed
    # between making and registering it would leave it behind (as mkdtemp would).
    workdir = Path(tempfile.gettempdir(), f"{RUN_PREFIX}{run_id}-{secrets.token_hex(6)}")
    cgroups = RunCgroups(setup.cgroups, f"{RUN_PREFIX}{run_id}")
    status_read = status_write = report_write = -1
    transport: Optional[asyncio.SubprocessTransport] = None
    report_transport: Optional[asyncio.ReadTransport] = None
    loop = asyncio.get_running_loop()
    try:
        JANITOR.register(run_id, str(workdir), [str(path) for path in cgroups.paths])
        os.mkdir(workdir, 0o700)
        bootstrap.write_inputs(workdir, code, files)
        cgroups.create(limits)
        status_read, status_write = os.pipe()
        reported: Optional[_ReportProtocol] = None
        if report:
            report_read, report_write = os.pipe()
            report_transport, reported = await loop.connect_read_pipe(
                lambda: _ReportProtocol(REPORT_CAP_BYTES), os.fdopen(report_read, "rb", 0)
            )
        command = bootstrap.command(
            setup,
            limits,
            workdir,
            status_write,
            report_write if report else None,
            cgroups.procs_files(),
            hide,
        )
        started = time.monotonic()
        transport, protocol = await loop.subprocess_exec(
            lambda: _CaptureProtocol(OUTPUT_CAP_BYTES),
            *command,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=bootstrap.environment(str(workdir)),
            cwd=workdir,
            start_new_session=True,
            pass_fds=tuple(fd for fd in (status_write, report_write) if fd >= 0),
        )
        JANITOR.launched(run_id, transport.get_pid())
        for fd in (status_write, report_write):
            if fd >= 0:
                os.close(fd)
        status_write = report_write = -1
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
        closing = [protocol.streams_closed] + ([reported.closed] if reported else [])
        await asyncio.wait(closing, timeout=STREAM_DRAIN_S)
        status = _read_status(status_read)
        returncode = transport.get_returncode()
        assert returncode is not None  # the process has exited
        if "S" not in status and not timed_out:
            raise SandboxError(
                f"the sandbox launcher failed (exit status {returncode}): "
                f"{protocol.streams[2].text()[-500:].strip()}"
            )
        if "E" in status:
            raise SandboxError(f"sandbox setup failed: {status['E']}")
        if "W" in status:
            returncode = os.waitstatus_to_exitcode(int(status["W"]))
        return build_result(
            limits,
            returncode,
            protocol.streams[1].text(),
            protocol.streams[2].text(),
            timed_out,
            duration,
            cpu_s=float(status["C"]) if "C" in status else None,
            oom_kills=cgroups.oom_kills(),
            process_limit_hits=cgroups.process_limit_hits(),
            report=reported.capped.text() if reported else None,
        )
    finally:
        if transport is not None:
            if transport.get_returncode() is None:  # cancelled: not reaped, so the id is still ours
                _signal_quietly(os.killpg, transport.get_pid())
            transport.close()
        if report_transport is not None:
            report_transport.close()
        for fd in (status_read, status_write, report_write):
            if fd >= 0:
                os.close(fd)
        try:
            cgroups.destroy()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        JANITOR.forget(run_id)  # not after a failed teardown: the janitor retries that one


def _signal_quietly(kill: Callable[[int, int], None], target: int) -> None:
    try:
        kill(target, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


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


_T = TypeVar("_T")


def run_blocking(coroutine: Awaitable[_T]) -> _T:
    """Run ``coroutine`` to completion from sync code, even when this thread runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)  # type: ignore[arg-type]
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as helper:
        return helper.submit(asyncio.run, coroutine).result()  # type: ignore[arg-type]

"""Text scorers with a hard timeout wherever they are called from, and a memo so that scoring the
same reply again costs nothing.

Why worker processes: a reply such as ``\\boxed{9^{9^{9^{9}}}}`` sends sympy into a C-level
big-integer power that nothing in the calling process can interrupt. math-verify's own timeout
uses ``signal.alarm``, which only the main thread may set (in a worker thread it hung for over
two minutes), and no Python-level thread trick stops C code. So every call runs in a worker
process (:mod:`.scorer_worker`) that is killed, and replaced, when the call overruns; the reply
then scores as wrong with the reason recorded, and the caller, whichever thread or event loop it
runs on, waits at most the timeout.

Why not ``multiprocessing`` or pebble: with any start method but ``fork``, their worker processes
re-import the caller's ``__main__`` script, so a script without an ``if __name__ ==
"__main__":`` guard (the README's own ten-line example) fails with ``BrokenProcessPool`` as soon
as it scores a reply; ``fork`` is unsafe in a process that has threads and an event loop. The
workers here are plain ``python -m masr_graph.benchmarks.tasks.scorer_worker`` subprocesses fed
through a pipe, so nothing of the caller's program runs in them, and there is no shared state to
clean up. Their start-up (importing sympy and math-verify, ~2 s) is paid once per worker, in the
background; a killed worker is replaced at once. A timed-out reply's verdict is memoised like any
other, so scoring it again is deterministic and costs no second timeout.

Costs, measured on the shared 2-core development machine: a memo hit ~1 µs; a cold call through
a worker adds ~0.1 ms of IPC to the scorer's own time (GSM8K: 76-109 µs against 6-17 µs inline),
up to ~1 ms when other work keeps both cores busy (MATH: 1.9-2.3 ms against 1.1-1.4 ms). The
replay backend and majority votes ask for the same few replies
thousands of times per training step, so almost every call is a memo hit.

Lifetime: driver threads are daemons and workers exit when their input pipe closes, so an idle
pool never keeps a program from exiting; at interpreter exit the pool closes its workers and
reaps them (no zombies), and on Linux a worker is killed if its parent dies. A forked child
process does not inherit the parent's pool (it starts its own when it first scores).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import os
import pickle
import queue
import select
import struct
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Optional, Sequence

from masr_graph.errors import ConfigError, ScorerError

TIMEOUT_S = 5.0
"""Seconds one built-in text-scorer call may take (math-verify's own default per operation)."""
START_TIMEOUT_S = 120.0
"""Seconds a worker may take to start (import sympy and math-verify) on a loaded machine."""
MEMORY_MB = 4096
"""Address-space cap of a worker (sympy itself needs ~200 MB)."""
MEMO_SIZE = 65536
"""Results kept in the in-process memo (least recently used ones are dropped)."""
PRELOAD = (
    "masr_graph.benchmarks.tasks.gsm8k",
    "masr_graph.benchmarks.tasks.math_dataset",
    "masr_graph.benchmarks.tasks.mmlu",
)
"""Modules every worker imports before it reports ready."""

HEADER = struct.Struct(">Q")
"""Frame header of the pipe protocol: the payload's length (see :mod:`.scorer_worker`)."""
# Not imported here: running it with -m after the package imported it would make runpy warn.
_WORKER_MODULE = "masr_graph.benchmarks.tasks.scorer_worker"
_MISSING = object()


@dataclass
class _Job:
    payload: bytes
    timeout_s: float
    on_failure: Callable[[str], Any]
    future: concurrent.futures.Future


class _Worker:
    """One worker process and its pipes; used by one driver thread at a time."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.process = process
        self.idle = False
        """Started and waiting for a call (else starting or busy: stopping it means killing)."""
        self._buffer = bytearray()

    @classmethod
    def launch(cls, memory_mb: int, preload: Sequence[str]) -> _Worker:
        """A new worker process, still starting (see :meth:`wait_ready`).

        Raises:
            ScorerError: the interpreter could not be run.
        """
        # The worker resolves modules exactly as this process does (scorers are sent by
        # reference), including entries added to sys.path at run time.
        path = [os.path.abspath(entry or os.curdir) for entry in sys.path if isinstance(entry, str)]
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", _WORKER_MODULE, str(os.getpid()), str(memory_mb), *preload],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env={**os.environ, "PYTHONPATH": os.pathsep.join(path)},
            )
        except OSError as error:
            raise ScorerError(
                f"cannot start a scorer worker with {sys.executable!r}: {error}"
            ) from error
        return cls(process)

    def wait_ready(self, timeout_s: float) -> None:
        """Wait until the worker has imported its modules and reported ready.

        Raises:
            ScorerError: it exited or stayed silent for ``timeout_s`` seconds.
        """
        ready = self._receive(timeout_s)
        if ready[0] != "ready":
            reason = ready[1] if len(ready) > 1 else f"not ready within {timeout_s:g} s"
            raise ScorerError(
                f"the scorer worker {self.process.pid} did not start ({reason}); its error output, "
                "if any, is on stderr above"
            )
        self.idle = True

    def call(self, payload: bytes, timeout_s: float) -> tuple[Any, ...]:
        """Run one pickled ``(function, args)``: ``("ok", value)``, ``("raised", error,
        traceback)`` or ``("failed", reason)`` (timed out, ran out of memory or died: the worker
        is unusable and must be stopped)."""
        self.idle = False
        try:
            self.process.stdin.write(HEADER.pack(len(payload)) + payload)
            self.process.stdin.flush()
            reply = self._receive(timeout_s)
        except (BrokenPipeError, ValueError, OSError):
            reply = ("failed", self._death())
        finally:
            self.idle = True
        if reply[0] == "timeout":
            return ("failed", f"scoring took longer than {timeout_s:g} s (the scorer was killed)")
        if reply[0] == "memory":
            return ("failed", reply[1])
        return reply

    def _receive(self, timeout_s: float) -> tuple[Any, ...]:
        """The next message, ``("timeout",)`` or ``("failed", reason)`` if the worker died.
        (``select`` on a pipe: POSIX only, like the sandbox.)"""
        deadline = time.monotonic() + timeout_s
        stream = self.process.stdout.fileno()
        while True:
            if len(self._buffer) >= HEADER.size:
                (length,) = HEADER.unpack_from(self._buffer)
                if len(self._buffer) >= HEADER.size + length:
                    payload = bytes(self._buffer[HEADER.size : HEADER.size + length])
                    del self._buffer[: HEADER.size + length]
                    return pickle.loads(payload)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return ("timeout",)
            try:
                readable, _, _ = select.select([stream], [], [], remaining)
                chunk = os.read(stream, 1 << 16) if readable else None
            except (OSError, ValueError):  # the pipe is gone: treated like end of output
                chunk = b""
            if chunk == b"":
                return ("failed", self._death())
            if chunk:
                self._buffer += chunk

    def _death(self) -> str:
        try:
            code = self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return "the scorer process stopped answering"
        how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        return f"the scorer process died ({how})"

    def terminate(self, *, kill: bool = False) -> None:
        """End the worker process and reap it: close its input (an idle worker exits), then kill
        it if it is still running after 2 s (at once with ``kill``). Safe to call more than once
        and from any thread."""
        try:
            self.process.stdin.close()
        except OSError:
            pass
        try:
            self.process.wait(timeout=0 if kill else 2)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def release(self, *, kill: bool = False) -> None:
        """:meth:`terminate`, then close its output. Only the thread that reads the output may
        call this (a concurrent read could otherwise hit a reused file descriptor)."""
        self.terminate(kill=kill)
        self.process.stdout.close()


class _Memo:
    """A least-recently-used map; the pool's lock guards it."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[Hashable, Any] = OrderedDict()

    def get(self, key: Hashable) -> Any:
        value = self._items.get(key, _MISSING)
        if value is not _MISSING:
            self._items.move_to_end(key)
        return value

    def put(self, key: Hashable, value: Any) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        if len(self._items) > self._size:
            self._items.popitem(last=False)


class ScorerPool:
    """Runs scorer calls in worker processes with a per-call timeout, memoising results.

    Args:
        workers: worker processes (default: the number of CPUs, at most 4); each has a driver
            thread that feeds it one call at a time.
        memory_mb: address-space cap of each worker (``0``: none).
        preload: modules a worker imports before its first call.
        memo_size: results kept in the memo.
        start_timeout_s: how long a worker may take to start.

    Raises:
        ConfigError: a count or limit is not positive.
    """

    def __init__(
        self,
        *,
        workers: Optional[int] = None,
        memory_mb: int = MEMORY_MB,
        preload: Sequence[str] = PRELOAD,
        memo_size: int = MEMO_SIZE,
        start_timeout_s: float = START_TIMEOUT_S,
    ) -> None:
        workers = min(os.cpu_count() or 1, 4) if workers is None else workers
        for name, value in (
            ("workers", workers),
            ("memo_size", memo_size),
            ("start_timeout_s", start_timeout_s),
        ):
            if not value > 0:
                raise ConfigError(f"ScorerPool {name} must be positive (got {value!r})")
        if memory_mb < 0:
            raise ConfigError(
                f"ScorerPool memory_mb must be 0 (no cap) or positive (got {memory_mb})"
            )
        self._workers = workers
        self._memory_mb = memory_mb
        self._preload = tuple(preload)
        self._start_timeout_s = start_timeout_s
        self._lock = threading.Lock()
        self._memo = _Memo(memo_size)
        self._inflight: dict[Hashable, concurrent.futures.Future] = {}
        self._jobs: queue.SimpleQueue[Optional[_Job]] = queue.SimpleQueue()
        self._drivers: list[threading.Thread] = []
        self._live: set[_Worker] = set()
        self._closed = False

    def result(
        self,
        key: Hashable,
        function: Callable[..., Any],
        args: tuple[Any, ...],
        *,
        timeout_s: float,
        on_failure: Callable[[str], Any],
    ) -> Any:
        """``function(*args)`` run in a worker, or its memoised result for ``key``.

        Args:
            key: what identifies the result (include everything the result depends on).
            function: a module-level function (it is sent to the worker by reference).
            timeout_s: how long the call may run in the worker.
            on_failure: ``on_failure(reason)`` is the result when the call times out, runs out
                of memory or kills its worker; it is memoised like any result.

        Raises:
            ScorerError: no worker could be started, or the pool is closed.
            Exception: whatever ``function`` raised (not memoised), with the worker's traceback
                as its cause.
        """
        with self._lock:
            hit = self._memo.get(key)
        if hit is not _MISSING:
            return hit
        return self._future(key, function, args, timeout_s, on_failure).result()

    async def aresult(
        self,
        key: Hashable,
        function: Callable[..., Any],
        args: tuple[Any, ...],
        *,
        timeout_s: float,
        on_failure: Callable[[str], Any],
    ) -> Any:
        """:meth:`result` for coroutines: the event loop keeps running while the worker scores.
        Cancelling the awaiting task does not cancel the call (others may be waiting on it)."""
        with self._lock:
            hit = self._memo.get(key)
        if hit is not _MISSING:
            return hit
        future = self._future(key, function, args, timeout_s, on_failure)
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()

        def relay(done: concurrent.futures.Future) -> None:
            try:
                loop.call_soon_threadsafe(_settle, waiter, done)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass

        future.add_done_callback(relay)
        return await waiter

    def _future(
        self,
        key: Hashable,
        function: Callable[..., Any],
        args: tuple[Any, ...],
        timeout_s: float,
        on_failure: Callable[[str], Any],
    ) -> concurrent.futures.Future:
        # Pickled here, so an unpicklable argument fails in the caller, not in a driver.
        payload = pickle.dumps((function, args), protocol=pickle.HIGHEST_PROTOCOL)
        with self._lock:
            if self._closed:
                raise ScorerError("the scorer pool is closed")
            hit = self._memo.get(key)
            if hit is not _MISSING:  # finished since the caller looked
                future: concurrent.futures.Future = concurrent.futures.Future()
                future.set_result(hit)
                return future
            future = self._inflight.get(key)
            if future is not None:  # the same call is already running: share it
                return future
            future = concurrent.futures.Future()
            self._inflight[key] = future
            if not self._drivers:
                self._drivers = [
                    threading.Thread(target=self._drive, name=f"scorer-driver-{index}", daemon=True)
                    for index in range(self._workers)
                ]
                for driver in self._drivers:
                    driver.start()
        future.add_done_callback(lambda done: self._settled(key, done))
        self._jobs.put(_Job(payload, timeout_s, on_failure, future))
        return future

    def _settled(self, key: Hashable, future: concurrent.futures.Future) -> None:
        with self._lock:
            self._inflight.pop(key, None)
            if future.exception() is None:
                self._memo.put(key, future.result())

    def _drive(self) -> None:
        """One driver thread: keeps one worker alive and feeds it jobs."""
        worker: Optional[_Worker] = None
        start_error: Optional[ScorerError] = None
        while True:
            if worker is None and not self._closed:
                # Started before the next job arrives, so a replaced worker is ready sooner.
                try:
                    worker = self._start_worker()
                except ScorerError as error:
                    start_error = error
            job = self._jobs.get()
            if job is None:
                break
            if worker is None:
                if self._closed:
                    job.future.set_result(job.on_failure("the scorer pool was closed"))
                else:
                    job.future.set_exception(start_error)
                continue
            outcome = worker.call(job.payload, job.timeout_s)
            if outcome[0] == "ok":
                job.future.set_result(outcome[1])
            elif outcome[0] == "raised":
                error, remote_traceback = outcome[1], outcome[2]
                error.__cause__ = _RemoteTraceback(remote_traceback)
                job.future.set_exception(error)
            else:
                self._retire(worker)
                worker = None
                job.future.set_result(job.on_failure(outcome[1]))
        if worker is not None:
            self._retire(worker)

    def _start_worker(self) -> _Worker:
        worker = _Worker.launch(self._memory_mb, self._preload)
        with self._lock:
            self._live.add(worker)  # from now on close() stops it, even while it starts
        try:
            worker.wait_ready(self._start_timeout_s)
        except ScorerError:
            self._retire(worker)
            raise
        return worker

    def _retire(self, worker: _Worker) -> None:
        worker.release(kill=True)
        with self._lock:
            self._live.discard(worker)

    def close(self) -> None:
        """Stop every worker and driver; later calls raise :class:`ScorerError`. Calls still
        waiting get their ``on_failure`` result. Safe to call more than once."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            live = list(self._live)
            drivers = len(self._drivers)
        for _ in range(drivers):
            self._jobs.put(None)
        for worker in live:
            # A busy or starting worker would not read its closed input for a while.
            worker.terminate(kill=not worker.idle)


class _RemoteTraceback(Exception):
    """The scorer's traceback in the worker process (the cause of the re-raised error)."""

    def __str__(self) -> str:
        return "\n" + self.args[0]


def _settle(waiter: asyncio.Future, done: concurrent.futures.Future) -> None:
    if waiter.cancelled():
        return
    error = done.exception()
    if error is None:
        waiter.set_result(done.result())
    else:
        waiter.set_exception(error)


_default: Optional[ScorerPool] = None
_default_lock = threading.Lock()


def default_pool() -> ScorerPool:
    """The process-wide pool the registry's ``evaluate``/``aevaluate``/``answer_key`` use,
    created on first use and closed at interpreter exit."""
    global _default
    with _default_lock:
        if _default is None:
            _default = ScorerPool()
        return _default


def _close_default() -> None:
    with _default_lock:
        pool = _default
    if pool is not None:
        pool.close()


def _forget_default() -> None:
    # In a forked child the parent's workers and driver threads are not ours to use or stop.
    global _default, _default_lock
    _default = None
    _default_lock = threading.Lock()


atexit.register(_close_default)
if hasattr(os, "register_at_fork"):  # POSIX; elsewhere nothing forks
    os.register_at_fork(after_in_child=_forget_default)

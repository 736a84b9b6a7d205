"""The scorer worker process: ``python -m masr_graph.benchmarks.tasks.scorer_worker PARENT_PID
MEMORY_MB MODULE...`` imports the modules named on its command line, reports ready, then runs
one scorer call at a time for :mod:`.scorer_pool` and writes back its result.

Protocol (binary, on the worker's stdin and its original stdout): each message is an 8-byte
big-endian length followed by a pickle. The worker sends ``("ready", pid)`` once, then for each
``(function, args)`` it receives one of ``("ok", value)``, ``("raised", exception, traceback
text)`` or ``("memory", reason)`` (after which it exits: a process that ran out of memory is not
trusted with the next call). End of input makes it exit.

File descriptor 1 is pointed at stderr, so a scorer that prints cannot corrupt the protocol. The
worker ignores SIGINT (Ctrl-C belongs to the parent, which then stops its workers), asks Linux
to kill it when its parent dies (so a worker busy in a runaway computation cannot outlive the
program) and caps its address space at ``MEMORY_MB`` (0: no cap), so a reply whose scoring
allocates without bound (``10^{10^{12}}`` evaluated) ends in MemoryError or its timeout, not in a
shared machine's swap or OOM killer.
"""

from __future__ import annotations

import ctypes
import importlib
import logging
import os
import pickle
import resource
import signal
import sys
import traceback
from typing import Any, BinaryIO, Optional

from masr_graph.benchmarks.tasks.scorer_pool import HEADER

_PR_SET_PDEATHSIG = 1


def write_message(stream: BinaryIO, message: Any) -> None:
    """Send one length-prefixed pickle."""
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(HEADER.pack(len(payload)) + payload)
    stream.flush()


def read_payload(stream: BinaryIO) -> Optional[bytes]:
    """Receive one length-prefixed message, still pickled; ``None`` at end of input."""
    header = stream.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    (length,) = HEADER.unpack(header)
    payload = stream.read(length)
    return payload if len(payload) == length else None


def _die_with_parent(parent_pid: int) -> None:
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    # The parent may have died (and this process been adopted) before prctl took effect.
    if os.getppid() != parent_pid:
        os._exit(0)


def _reply(payload: bytes) -> tuple[Any, ...]:
    try:
        function, args = pickle.loads(payload)
        return ("ok", function(*args))
    except MemoryError:
        return ("memory", "the scorer ran out of memory")
    except Exception as error:  # noqa: BLE001 - any scorer error goes back to the caller
        # The caller re-raises it; the worker lives on.
        return ("raised", error, traceback.format_exc())


def main(argv: list[str]) -> None:
    """Serve scorer calls until end of input (see the module docstring)."""
    protocol_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(int(argv[0]))
    memory_mb = int(argv[1])
    if memory_mb > 0:
        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    for module in argv[2:]:
        importlib.import_module(module)
    # The pool's hard timeout replaces math-verify's signal.alarm one, which is turned off; its
    # warning that no timeout is set would be noise.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    protocol_in = sys.stdin.buffer
    write_message(protocol_out, ("ready", os.getpid()))
    while True:
        payload = read_payload(protocol_in)
        if payload is None:
            return
        reply = _reply(payload)
        try:
            write_message(protocol_out, reply)
        except (pickle.PicklingError, TypeError, AttributeError) as error:
            write_message(
                protocol_out, ("raised", RuntimeError(repr(reply[1])[:2000]), repr(error))
            )
        if reply[0] == "memory":
            return


if __name__ == "__main__":
    main(sys.argv[1:])

"""What a run reports: :class:`SandboxResult`, and how its failure is put into words."""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass
from typing import Optional

from .limits import FILE_SIZE_CAP_MB, Limits


class SandboxWarning(UserWarning):
    """An isolation mechanism is unavailable on this machine, so the sandbox enforces less."""


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one sandboxed run.

    Args:
        ok: the code exited with status 0 within the time limit.
        returncode: exit status; negative ``-N`` when killed by signal ``N`` (as ``subprocess``).
        stdout: captured standard output (UTF-8, invalid bytes replaced), at most
            :data:`~.limits.OUTPUT_CAP_BYTES` bytes followed by a note of how much was cut.
        stderr: captured standard error, same cap.
        timed_out: the wall-clock limit was reached and everything was killed.
        memory_exceeded: best effort: the memory cgroup OOM-killed a process, or the code died of
            a ``MemoryError`` (the address-space limit).
        killed_signal: number of the signal that ended the code, ``None`` if it exited.
        duration_s: wall time from start to exit (or kill), in seconds.
        failure: short human reason when ``ok`` is false (``"timed out after 2 s"``,
            ``"exited with code 1: KeyError: 'OPENAI_API_KEY'"``), else ``None``.
        report: with ``report=True``, what the code wrote to its report channel
            (:data:`~.limits.REPORT_FD`; UTF-8, at most :data:`~.limits.REPORT_CAP_BYTES` bytes
            followed by a note of how much was cut), separate from stdout and stderr; else
            ``None``.
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
    report: Optional[str] = None


_MEMORY_ERROR = re.compile(r"^MemoryError\b", re.MULTILINE)


def build_result(
    limits: Limits,
    returncode: int,
    stdout: str,
    stderr: str,
    timed_out: bool,
    duration: float,
    *,
    cpu_s: Optional[float],
    oom_kills: int,
    process_limit_hits: int,
    report: Optional[str],
) -> SandboxResult:
    """The result of a finished run; ``cpu_s`` is the CPU time of the code's main process."""
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
            reasons.append(_exit_reason(limits, returncode, killed_signal, stderr, cpu_s))
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
        report=report,
    )


def _exit_reason(
    limits: Limits,
    returncode: int,
    killed_signal: Optional[int],
    stderr: str,
    cpu_s: Optional[float],
) -> str:
    if killed_signal is not None:
        try:
            name = signal.Signals(killed_signal).name
        except ValueError:
            name = f"signal {killed_signal}"
        note = ""
        soft, _hard = limits.cpu_rlimit()
        if killed_signal == signal.SIGXFSZ:
            note = f" (file size limit of {FILE_SIZE_CAP_MB} MiB)"
        elif killed_signal == signal.SIGXCPU or (
            # SIGKILL at the hard limit, after the code ignored SIGXCPU or raised its soft limit
            killed_signal == signal.SIGKILL and cpu_s is not None and cpu_s >= soft
        ):
            note = f" (CPU time limit of {soft} s)"
        return f"killed by {name}{note}"
    last_line = next((line.strip() for line in reversed(stderr.splitlines()) if line.strip()), "")
    return f"exited with code {returncode}" + (f": {last_line[:200]}" if last_line else "")

"""The public functions: :func:`run_python`, :func:`arun_python`, :func:`sandbox_capabilities`."""

from __future__ import annotations

import asyncio
from typing import Mapping, Optional, Sequence

from ...errors import ConfigError
from .launcher import execute, run_blocking
from .limits import Limits, validated_files, validated_hidden
from .probe import Capabilities, probe, probe_done, warn_about_missing_mechanisms
from .result import SandboxResult


def run_python(
    code: str,
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    max_processes: int = 32,
    cpu_s: Optional[float] = None,
    stdin: Optional[str] = None,
    files: Optional[Mapping[str, str]] = None,
    report: bool = False,
    hide: Sequence[str] = (),
) -> SandboxResult:
    """Run ``code`` in the sandbox and wait for it (blocking; see :func:`arun_python`).

    Safe to call from inside a running event loop (the run then happens on a helper thread), but
    async callers should await :func:`arun_python` instead.
    """
    return run_blocking(
        arun_python(
            code,
            timeout_s=timeout_s,
            memory_mb=memory_mb,
            max_processes=max_processes,
            cpu_s=cpu_s,
            stdin=stdin,
            files=files,
            report=report,
            hide=hide,
        )
    )


async def arun_python(
    code: str,
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    max_processes: int = 32,
    cpu_s: Optional[float] = None,
    stdin: Optional[str] = None,
    files: Optional[Mapping[str, str]] = None,
    report: bool = False,
    hide: Sequence[str] = (),
) -> SandboxResult:
    """Run ``code`` as ``main.py`` in a fresh sandbox without blocking the event loop.

    Args:
        code: Python source, run as the ``__main__`` module.
        timeout_s: wall-clock limit in seconds; on expiry every process of the run is killed.
        memory_mb: address-space limit of each process (MiB) and, with the memory cgroup, of all
            of them together (tmpfs files included). At least :data:`~.limits.MIN_MEMORY_MB`.
        max_processes: most processes and threads alive at once (the interpreter counts as one).
        cpu_s: CPU-time limit of each process in seconds (rounded up to whole seconds): SIGXCPU
            at ``cpu_s``, SIGKILL a second later; both are hard limits the code cannot raise.
            ``None``: a backstop just above ``timeout_s``.
        stdin: text fed to the code's standard input (``None``: empty input).
        files: ``{relative path: text}`` written into the work directory before the code runs.
        report: give the code a report channel: the write end of a pipe on file descriptor
            :data:`~.limits.REPORT_FD`, captured separately from stdout and stderr into
            :attr:`SandboxResult.report`. A test harness can use it for a verdict that printing
            cannot forge.
        hide: absolute paths of directories the code must not read (each shows as an empty
            directory; e.g. a benchmark's data, which holds the expected answers). Enforced with
            a mount namespace only (``sandbox_capabilities()["hidden_home"]``); missing
            directories are ignored.

    Returns:
        The :class:`SandboxResult`; a failure of the code (error, timeout, limit) is reported
        there, never raised.

    Raises:
        ConfigError: an argument is invalid (the message names it and the accepted values).
        SandboxError: the sandbox itself could not be set up (not a failure of the code).
    """
    limits = Limits.validated(timeout_s, memory_mb, max_processes, cpu_s)
    if not isinstance(code, str):
        raise ConfigError(f"code must be a str (got {type(code).__name__})")
    if stdin is not None and not isinstance(stdin, str):
        raise ConfigError(f"stdin must be a str or None (got {type(stdin).__name__})")
    if not isinstance(report, bool):
        raise ConfigError(f"report must be True or False (got {report!r})")
    checked_files = validated_files(files)
    hidden = validated_hidden(hide)
    # The first call probes the machine (about a second); keep the event loop free meanwhile.
    machine = probe() if probe_done() else await asyncio.to_thread(probe)
    warn_about_missing_mechanisms()
    return await execute(machine.setup, code, limits, stdin, checked_files, report, hidden)


def sandbox_capabilities() -> Capabilities:
    """What the sandbox enforces on this machine (probed once by running a trivial snippet).

    Boolean keys: ``wall_timeout``, ``process_group_kill``, ``clean_environment``,
    ``hard_cpu_limit``, ``caller_death_cleanup`` (a dead caller's runs are killed and removed by
    its janitor), ``parent_death_signal`` (they are also killed by the kernel the moment the
    caller dies), ``rlimit_memory``, ``rlimit_file_size``, ``network_namespace``,
    ``pid_namespace``, ``mount_namespace`` (everything outside the work directory read-only),
    ``tmpfs_workdir``, ``hidden_home``, ``no_capabilities``, ``separate_uid``, ``cgroup_pids``,
    ``cgroup_memory`` and ``process_cap`` (some hard cap on the number of processes exists, so a
    fork bomb is contained). String keys: ``cgroup_pids_version`` and ``cgroup_memory_version``,
    each ``"v1"``, ``"v2"`` or ``"none"``: the cgroup hierarchy that enforces that limit.
    """
    return probe().capabilities()

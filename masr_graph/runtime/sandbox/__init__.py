"""Sandboxed execution of untrusted Python (code roles, post-processing, HumanEval/MBPP evaluators).

:func:`run_python` (blocking) and :func:`arun_python` (asyncio; many may run at once) execute a
snippet in a fresh interpreter (``python -I``, the current one) inside a fresh temporary directory
that is its cwd and ``$HOME`` and is deleted afterwards, with an environment built from scratch
(``PATH``, ``LANG``, ``HOME``, ``TMPDIR``, ``USER``, ``LOGNAME`` - nothing is inherited, so no API
key can leak through it). Files given in ``files`` are written there first; the code itself is
``main.py`` in that directory, which is also on ``sys.path`` so helper modules can be imported.
With ``report=True`` the code also gets a report channel (:data:`REPORT_FD`), captured apart
from its output, which test harnesses use for verdicts that printing cannot fake.

How much isolation there is depends on the machine; :func:`sandbox_capabilities` reports it, and
the first run warns (:class:`SandboxWarning`) once per missing mechanism. Three isolation levels:

* **root** (Linux, running as root, util-linux ``unshare`` works): new PID, network, mount, IPC and
  UTS namespaces; the code runs under a fresh unprivileged uid (a different one per run) with an
  empty capability bounding set and ``no_new_privs``; cgroup ``pids`` and ``memory`` groups
  (v1 or v2) when the controllers can be used.
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
                           init ends the run 5 s after the timeout regardless
CPU-bound loop             RLIMIT_CPU as a *hard* limit set before the code      always
                           runs (``cpu_s``: SIGXCPU, then SIGKILL a second
                           later); the code cannot raise it
the caller is killed       parent-death signals down the whole process chain     Linux (ns: with
mid-run                    (``setpriv --pdeathsig``, ``unshare --kill-child``,   ``setpriv``)
                           ``prctl``); the caller's janitor process kills what   janitor: always
                           is left and removes the work directory and cgroups
fork bomb                  cgroup ``pids.max`` (v1 or v2); RLIMIT_NPROC on a     ns; none: Linux,
                           uid (root) or user namespace (userns, Linux >= 5.14)  non-root only
                           of this run only; otherwise RLIMIT_NPROC = the
                           user's current task count + ``max_processes``
one huge allocation        RLIMIT_AS and RLIMIT_DATA = ``memory_mb``             Linux (macOS
                                                                                 ignores them)
memory spread over         cgroup v1 ``memory.limit_in_bytes`` (and memsw), or   a usable memory
processes                  v2 ``memory.max`` with ``memory.swap.max = 0``        cgroup
huge files, full disk      RLIMIT_FSIZE = :data:`FILE_SIZE_CAP_MB`; the work     RLIMIT_FSIZE
                           directory is a tmpfs of :data:`WORKDIR_CAP_MB`        always; tmpfs ns
writing or deleting        every mount remounted read-only in a mount            ns
outside the temp dir       namespace; private writable tmpfs work directory and
(``rm -rf ~``)             ``/dev/shm``; the per-run uid owns nothing (root)
API keys in the            environment built from scratch                        always
environment
secrets of other           fresh ``/proc`` of a new PID namespace: the caller's  ns
processes                  ``/proc/<pid>/environ`` is not there
secrets in files           ``$HOME``, the caller's ``hide`` directories (the     ns
(``~/.ssh``, ``.env``,     evaluators hide the benchmark data) and, for the
expected answers)          per-run uid, any directory it could not enter, hidden
                           behind an empty tmpfs; the Python installation bound
                           back read-only
network access             network namespace without interfaces (lo down)        ns
double-forked daemons,     init (PID 1) exit kills the namespace; cgroup sweep   ns; none: only
``setsid()``               (``cgroup.kill`` on v2); without namespaces only the  the group
                           process group is killed
privilege escalation via   ``no_new_privs``; empty capability bounding set       Linux; bounding
setuid programs                                                                  set: ns or root
core dumps                 RLIMIT_CORE = 0                                       always
kernel exploits, side      not addressed: this is process isolation, not a VM    never
channels, CPU share
=========================  ====================================================  =================

Wall-clock limits are sensitive to CPU contention: callers running many snippets at once should
bound their concurrency (e.g. to the CPU count, as the evaluators do), or a correct snippet may
time out.

One module per mechanism: :mod:`.limits` (arguments and rlimits), :mod:`.bootstrap` (the process
chain and what the first sandboxed process does), :mod:`.cgroups` (v1 and v2), :mod:`.launcher`
(one run, start to teardown), :mod:`.janitor` and :mod:`.cleanup` (cleaning up after a dead
caller), :mod:`.probe` (what this machine enforces), :mod:`.result` and :mod:`.api`. Only the
names below are public.
"""

from __future__ import annotations

from .api import arun_python, run_python, sandbox_capabilities
from .limits import (
    FILE_SIZE_CAP_MB,
    MAIN_FILE,
    MIN_MEMORY_MB,
    OUTPUT_CAP_BYTES,
    REPORT_CAP_BYTES,
    REPORT_FD,
    WORKDIR_CAP_MB,
)
from .result import SandboxResult, SandboxWarning

__all__ = [
    "FILE_SIZE_CAP_MB",
    "MAIN_FILE",
    "MIN_MEMORY_MB",
    "OUTPUT_CAP_BYTES",
    "REPORT_CAP_BYTES",
    "REPORT_FD",
    "SandboxResult",
    "SandboxWarning",
    "WORKDIR_CAP_MB",
    "arun_python",
    "run_python",
    "sandbox_capabilities",
]

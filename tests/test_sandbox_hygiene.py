"""A run leaves nothing behind - no process, work directory or cgroup - whatever ends it, including
the death of its caller.

The caller-death tests run a real caller process that starts a long sandboxed run, SIGKILL it
mid-run and then look for the run's processes (by a marker in their command line), its work
directory (the caller's TMPDIR is a directory of the test's own) and its cgroups (named after the
caller's pid). Bounds are generous: the run's own backstop would fire only after a minute.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from masr_graph.errors import ConfigError, SandboxError
from masr_graph.runtime.sandbox import arun_python, run_python, sandbox_capabilities

SLEEPER = "import time\ntime.sleep(120)\n"


def processes_with_marker(marker: str) -> list[int]:
    """Live (not zombie) host pids whose command line contains ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker.encode() in (entry / "cmdline").read_bytes():
                if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    found.append(int(entry.name))
        except (OSError, IndexError):
            continue
    return found


def sleeper_with_marker(marker: str) -> str:
    """Code that becomes ``python -c SLEEPER marker``, so its process can be found."""
    argv = f"[sys.executable, '-c', {SLEEPER!r}, {marker!r}]"
    return f"import os, sys\nos.execv(sys.executable, {argv})\n"


def own_cgroup_directories() -> list[Path]:
    """This process's group in every mounted cgroup hierarchy (v1 and v2): where per-run groups
    of the callers this test starts are made."""
    membership = [line.split(":", 2) for line in Path("/proc/self/cgroup").read_text().splitlines()]
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        before, _, after = line.partition(" - ")
        fields, (fstype, _source, options) = before.split(), after.split()[:3]
        for hierarchy, controllers, path in membership:
            v2 = fstype == "cgroup2" and hierarchy == "0"
            v1 = fstype == "cgroup" and set(controllers.split(",")) <= set(options.split(","))
            if (v1 and controllers) or v2:
                found.append(Path(fields[4], os.path.relpath(path, fields[3])))
    return found


def run_cgroups_of(pid: int) -> list[Path]:
    return [g for parent in own_cgroup_directories() for g in parent.glob(f"masr-sandbox-{pid}-*")]


def wait_until(condition, timeout_s: float, what: str) -> float:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(0.05)
    return time.monotonic() - started


# --- the caller dies mid-run ------------------------------------------------------------------

CALLER = textwrap.dedent(
    """
    import os, shutil, sys
    hidden = set(sys.argv[1].split(",")) - {""}
    real_which = shutil.which
    shutil.which = lambda name, **kw: None if name in hidden else real_which(name, **kw)
    from masr_graph.runtime.sandbox import run_python
    print("calling", flush=True)
    run_python(os.environ["MASR_TEST_CODE"], timeout_s=60)
    """
)
"""The code comes in the environment, not the command line: the caller's forks before exec (the
janitor's, the launcher's) would otherwise carry the marker and pass for the run's processes."""


@pytest.mark.parametrize(
    "hidden",
    ["", "setpriv", "unshare"],
    ids=["namespaces", "namespaces-without-setpriv", "without-namespaces"],
)
def test_killing_the_caller_kills_the_run_and_removes_everything(tmp_path, hidden):
    """``namespaces``: parent-death signals and the janitor; ``without-setpriv``: the janitor
    alone kills the run; ``without-namespaces``: the bootstrap's own parent-death signal, and the
    janitor kills the rest of the process group (here a child the code started)."""
    if hidden != "unshare" and not sandbox_capabilities()["pid_namespace"]:
        pytest.skip("no namespaces on this machine")
    marker = f"masr-orphan-{uuid.uuid4().hex}"
    argv = f"[sys.executable, '-c', {SLEEPER!r}, {marker!r}]"
    spawn = f"import subprocess, sys\nsubprocess.Popen({argv})\n"
    code = spawn + sleeper_with_marker(marker)  # a child in the group, and the code itself
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    caller = subprocess.Popen(
        [sys.executable, "-c", CALLER, hidden],
        env={**os.environ, "TMPDIR": str(tmp), "MASR_TEST_CODE": code},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until(lambda: len(processes_with_marker(marker)) >= 2, 30, "the run started")
        assert [p.name for p in tmp.iterdir() if p.name.startswith("masr-sandbox-")]
        if "unshare" not in hidden:
            assert run_cgroups_of(caller.pid), "the run has cgroups while it runs"
        caller.send_signal(signal.SIGKILL)
        caller.wait(10)
        took = wait_until(lambda: not processes_with_marker(marker), 15, "the run's processes died")
        wait_until(lambda: not list(tmp.iterdir()), 15, f"{tmp} emptied: {list(tmp.iterdir())}")
        wait_until(lambda: not run_cgroups_of(caller.pid), 15, "the run's cgroups were removed")
        janitor = f"masr-sandbox-janitor\0{caller.pid}\0"
        wait_until(lambda: not processes_with_marker(janitor), 15, "the janitor exited")
        assert took < 15
    finally:
        caller.kill()
        caller.wait()
        for pid in processes_with_marker(marker):
            os.kill(pid, signal.SIGKILL)


def test_a_run_is_registered_with_the_janitor_before_its_directory_exists(private_tmp, monkeypatch):
    """Else a caller killed between making the directory and registering it leaves it behind."""
    from masr_graph.runtime.sandbox.janitor import JANITOR

    registered = []
    real_register = JANITOR.register

    def register(run_id, workdir, cgroups):  # type: ignore[no-untyped-def]
        registered.append((Path(workdir).exists(), [Path(g).exists() for g in cgroups]))
        real_register(run_id, workdir, cgroups)

    monkeypatch.setattr(JANITOR, "register", register)
    assert run_python("print(1)").stdout.strip() == "1"
    assert registered == [(False, [False] * len(registered[0][1]))]
    assert_clean(private_tmp)


def test_the_janitor_finds_a_run_whose_process_group_it_was_never_told(tmp_path):
    """The caller may die after launching a run but before sending its process group: the
    janitor then finds the launcher by the work directory on its command line."""
    from masr_graph.runtime.sandbox import cleanup

    workdir = tmp_path / "masr-sandbox-0-0-run"
    workdir.mkdir()
    marker = f"masr-unannounced-{uuid.uuid4().hex}"
    argv = f"[sys.executable, '-c', {SLEEPER!r}, {marker!r}]"
    spawn = f"import subprocess, sys\nsubprocess.Popen({argv})\n"
    launcher = subprocess.Popen(
        [sys.executable, "-c", spawn + SLEEPER, str(workdir), marker], start_new_session=True
    )
    try:
        wait_until(lambda: len(processes_with_marker(marker)) >= 2, 30, "the run started")
        cleanup.remove_run({"workdir": str(workdir), "cgroups": []}, None)
        assert launcher.wait(10) == -signal.SIGKILL
        wait_until(lambda: not processes_with_marker(marker), 10, "the run's processes died")
        assert not workdir.exists()
    finally:
        launcher.kill()
        launcher.wait()
        for pid in processes_with_marker(marker):
            os.kill(pid, signal.SIGKILL)


def test_a_caller_that_exits_normally_leaves_no_janitor(tmp_path):
    script = (
        "from masr_graph.runtime.sandbox import run_python\nprint(run_python('print(7)').stdout)"
    )
    caller = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )  # fmt: skip
    out, _ = caller.communicate(timeout=60)
    assert out.strip() == "7"
    assert processes_with_marker(f"masr-sandbox-janitor\0{caller.pid}\0") == []
    assert list(tmp_path.iterdir()) == []


# --- every other ending -----------------------------------------------------------------------


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """Work directories of runs made by this process land here."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def assert_clean(tmp: Path) -> None:
    assert list(tmp.iterdir()) == [], list(tmp.iterdir())
    assert run_cgroups_of(os.getpid()) == []


@pytest.mark.parametrize(
    "code, timeout_s",
    [
        ("print('fine')", 10.0),
        ("raise ValueError('boom')", 10.0),
        ("import os\nos.kill(os.getpid(), 9)", 10.0),
        (sleeper_with_marker("masr-hygiene-timeout"), 1.0),
    ],
    ids=["exit-0", "exception", "killed", "timeout"],
)
def test_every_ending_of_the_code_leaves_nothing(private_tmp, code, timeout_s):
    run_python(code, timeout_s=timeout_s)
    assert_clean(private_tmp)
    assert processes_with_marker("masr-hygiene-timeout") == []


def test_invalid_files_after_the_directory_exists_leave_nothing(private_tmp):
    with pytest.raises(ConfigError, match="cannot be written"):
        run_python("print(1)", files={"a": "file", "a/b": "under a file"})
    assert_clean(private_tmp)


def test_a_broken_launcher_leaves_nothing(private_tmp):
    from masr_graph.runtime.sandbox.isolation import Setup
    from masr_graph.runtime.sandbox.launcher import execute, run_blocking
    from masr_graph.runtime.sandbox.limits import Limits
    from masr_graph.runtime.sandbox.probe import probe

    setup = Setup("root", "/bin/false", cgroups=probe().setup.cgroups)
    with pytest.raises(SandboxError, match="launcher failed"):
        run_blocking(execute(setup, "print(1)", Limits(5.0, 256, 8), None, {}))
    assert_clean(private_tmp)


async def test_cancelling_the_awaiting_task_kills_and_removes_everything(private_tmp):
    sandbox_capabilities()
    marker = f"masr-cancelled-{uuid.uuid4().hex}"
    task = asyncio.create_task(arun_python(sleeper_with_marker(marker), timeout_s=60))
    started = time.monotonic()
    while not processes_with_marker(marker):
        assert time.monotonic() - started < 30, "the run did not start"
        await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (
        await asyncio.to_thread(
            wait_until, lambda: not processes_with_marker(marker), 10, "the run died"
        )
        < 10
    )
    assert_clean(private_tmp)

"""Per-run cgroups: cgroup v1 for real where it is mounted, cgroup v2 detection and degradation on
this machine's real unified hierarchy, and the v2 limit writing, delegation and teardown logic
against a fake v2 tree.

The fake tree (:class:`FakeKernel`) is a directory whose interface files behave as the kernel's
do where the sandbox relies on it: ``mkdir`` creates a group with the files of the controllers its
parent enables, writing ``cgroup.procs`` moves a process, ``cgroup.subtree_control`` refuses
(EBUSY) in a non-root group that holds processes and accepts only available controllers,
``cgroup.kill`` empties a group, and ``rmdir`` refuses (EBUSY) while a group holds live processes
or children. It cannot enforce limits, so enforcement is only tested where a real kernel does it.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from masr_graph.runtime.sandbox import (
    SandboxWarning,
    cgroups,
    cleanup,
    run_python,
    sandbox_capabilities,
)
from masr_graph.runtime.sandbox import probe as probing
from masr_graph.runtime.sandbox.cgroups import CALLERS_LEAF, CgroupParent, RunCgroups, v2_parent
from masr_graph.runtime.sandbox.limits import Limits

WANTED = ("pids", "memory")


def _alive(pid: str) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


class FakeKernel:
    """cgroup v2 interface-file semantics on a plain directory tree (see the module docstring)."""

    def __init__(self, root: Path, delegated: tuple[str, ...] = WANTED):
        self.root = root
        self.writes: list[tuple[str, str]] = []
        root.mkdir()
        self._populate(root, delegated)
        self._real_mkdir, self._real_rmdir = os.mkdir, os.rmdir

    def _populate(self, group: Path, controllers: tuple[str, ...]) -> None:
        files = {
            "cgroup.controllers": " ".join(controllers),
            "cgroup.subtree_control": "",
            "cgroup.procs": "",
            "cgroup.kill": "",
        }
        if "memory" in controllers:
            files["memory.max"] = files["memory.swap.max"] = "max"
            files["memory.events"] = "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n"
        if "pids" in controllers:
            files.update({"pids.max": "max", "pids.events": "max 0\n"})
        for name, text in files.items():
            (group / name).write_text(text)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        fake_os = types.SimpleNamespace(**{name: getattr(os, name) for name in dir(os)})
        fake_os.mkdir, fake_os.rmdir = self.mkdir, self.rmdir
        monkeypatch.setattr(cgroups, "os", fake_os)
        monkeypatch.setattr(cleanup, "os", fake_os)
        monkeypatch.setattr(cleanup, "write_control", self.write)

    def procs(self, group: Path) -> list[str]:
        return (group / "cgroup.procs").read_text().split()

    def mkdir(self, path: os.PathLike, mode: int = 0o777) -> None:
        self._real_mkdir(path)
        enabled = (Path(path).parent / "cgroup.subtree_control").read_text().split()
        self._populate(Path(path), tuple(enabled))

    def rmdir(self, path: os.PathLike) -> None:
        group = Path(path)
        busy = [pid for pid in self.procs(group) if pid == "0" or _alive(pid)]
        if busy or any(child.is_dir() for child in group.iterdir()):
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), str(group))
        shutil.rmtree(group)

    def write(self, path: Path, text: str) -> None:
        path = Path(path)
        group = path.parent
        self.writes.append((str(path.relative_to(self.root)), text))
        if path.name == "cgroup.procs":
            pid = str(os.getpid()) if text.strip() == "0" else text.strip()
            for procs in self.root.rglob("cgroup.procs"):
                procs.write_text(" ".join(p for p in procs.read_text().split() if p != pid))
            path.write_text(" ".join(self.procs(group) + [pid]))
        elif path.name == "cgroup.subtree_control":
            if group != self.root and self.procs(group):
                raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), str(path))
            available = (group / "cgroup.controllers").read_text().split()
            enabled = path.read_text().split()
            for change in text.split():
                if change[1:] not in available:
                    raise OSError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
                enabled = [c for c in enabled if c != change[1:]] + (
                    [change[1:]] if change[0] == "+" else []
                )
            path.write_text(" ".join(enabled))
        elif path.name == "cgroup.kill":
            if text.strip() == "1":
                for procs in group.rglob("cgroup.procs"):
                    procs.write_text("")
        elif not path.exists():  # the kernel never creates files
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
        else:
            path.write_text(text)


@pytest.fixture
def kernel(tmp_path, monkeypatch) -> FakeKernel:
    fake = FakeKernel(tmp_path / "unified")
    fake.install(monkeypatch)
    return fake


def delegated_group(kernel: FakeKernel, name: str = "user.slice") -> Path:
    """A group whose parent delegates memory and pids, holding only this process."""
    kernel.write(kernel.root / "cgroup.subtree_control", "+memory +pids")
    group = kernel.root / name
    kernel.mkdir(group)
    kernel.write(group / "cgroup.procs", str(os.getpid()))
    return group


# --- cgroup v2 on a fake tree -----------------------------------------------------------------


def test_v2_run_group_gets_its_limits_and_counters(kernel):
    group = delegated_group(kernel)
    assert v2_parent(group, WANTED) == (group, "")
    run = RunCgroups((CgroupParent(2, WANTED, group),), "masr-sandbox-1-0")
    run.create(Limits(10.0, 256, 8))
    made = group / "masr-sandbox-1-0"
    assert (made / "memory.max").read_text() == str(256 << 20)
    assert (made / "memory.swap.max").read_text() == "0"
    assert (made / "pids.max").read_text() == "8"
    assert run.procs_files() == [str(made / "cgroup.procs")]
    (made / "memory.events").write_text("low 0\nhigh 0\nmax 4\noom 2\noom_kill 2\n")
    (made / "pids.events").write_text("max 3\n")
    assert (run.oom_kills(), run.process_limit_hits()) == (2, 3)


def test_v2_teardown_uses_cgroup_kill_then_removes_the_group(kernel):
    group = delegated_group(kernel)
    v2_parent(group, WANTED)
    run = RunCgroups((CgroupParent(2, WANTED, group),), "masr-sandbox-1-1")
    run.create(Limits(10.0, 256, 8))
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        kernel.write(group / "masr-sandbox-1-1" / "cgroup.procs", str(sleeper.pid))
        run.destroy()
        assert not (group / "masr-sandbox-1-1").exists()
        assert ("user.slice/masr-sandbox-1-1/cgroup.kill", "1") in kernel.writes
    finally:
        sleeper.kill()
        sleeper.wait()


def test_v2_teardown_without_cgroup_kill_kills_each_process(kernel):
    group = delegated_group(kernel)
    v2_parent(group, WANTED)
    run = RunCgroups((CgroupParent(2, WANTED, group),), "masr-sandbox-1-2")
    run.create(Limits(10.0, 256, 8))
    (group / "masr-sandbox-1-2" / "cgroup.kill").unlink()  # Linux < 5.14
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    kernel.write(group / "masr-sandbox-1-2" / "cgroup.procs", str(sleeper.pid))
    run.destroy()
    assert sleeper.wait(10) == -9
    assert not (group / "masr-sandbox-1-2").exists()


def test_v2_caller_moves_into_a_leaf_so_its_group_can_delegate(kernel):
    group = delegated_group(kernel)
    assert v2_parent(group, WANTED) == (group, "")
    me = str(os.getpid())
    assert kernel.procs(group) == [] and kernel.procs(group / CALLERS_LEAF) == [me]
    assert set((group / "cgroup.subtree_control").read_text().split()) == {"memory", "pids"}
    # A second caller started inside the leaf uses the same parent.
    assert v2_parent(group / CALLERS_LEAF, WANTED) == (group, "")


def test_v2_refuses_a_group_shared_with_other_processes(kernel):
    group = delegated_group(kernel)
    (group / "cgroup.procs").write_text(f"{os.getpid()} 999999")
    directory, reason = v2_parent(group, WANTED)
    assert directory is None
    assert "also holds 1 other process(es)" in reason and "Delegate=yes" in reason
    assert not (group / CALLERS_LEAF).exists()
    assert str(os.getpid()) in kernel.procs(group)  # nobody was moved


def test_v2_names_the_controllers_that_are_not_delegated(kernel):
    kernel.write(kernel.root / "cgroup.subtree_control", "+pids")
    group = kernel.root / "user.slice"
    kernel.mkdir(group)
    directory, reason = v2_parent(group, WANTED)
    assert directory is None
    assert "controller(s) memory not delegated" in reason and "lists: pids" in reason
    assert "systemd-run --user --scope -p Delegate=yes" in reason


@pytest.fixture
def fresh_probe():
    probing.probe_machine.cache_clear()
    probing.warn_about_missing_mechanisms.cache_clear()
    yield
    probing.probe_machine.cache_clear()
    probing.warn_about_missing_mechanisms.cache_clear()


def test_runs_on_a_fake_v2_tree_report_v2_and_leave_no_group(kernel, monkeypatch, fresh_probe):
    group = delegated_group(kernel)
    monkeypatch.setattr(cgroups, "v1_directories", lambda membership, mounts: {})
    monkeypatch.setattr(cgroups, "v2_group", lambda membership, mounts: group)
    caps = sandbox_capabilities()
    assert (caps["cgroup_pids_version"], caps["cgroup_memory_version"]) == ("v2", "v2")
    assert caps["cgroup_pids"] and caps["cgroup_memory"]
    result = run_python("print('on v2')", memory_mb=256, max_processes=8)
    assert result.ok and result.stdout == "on v2\n", result
    assert [p.name for p in group.iterdir() if p.name.startswith("masr-sandbox-")] == [CALLERS_LEAF]
    written = dict(kernel.writes)
    runs = [path for path in written if path.endswith("/pids.max")]
    assert runs and written[runs[-1]] == "8"
    assert written[runs[-1].replace("pids.max", "memory.max")] == str(256 << 20)


# --- this machine, for real -------------------------------------------------------------------


def _real_v2_group() -> Path:
    membership = Path("/proc/self/cgroup").read_text().splitlines()
    mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    group = cgroups.v2_group(membership, mounts)
    if group is None:
        pytest.skip("no cgroup v2 hierarchy is mounted here")
    return group


def test_real_v2_hierarchy_is_detected_and_its_missing_controllers_named():
    group = _real_v2_group()
    assert (group / "cgroup.controllers").exists()
    available = (group / "cgroup.controllers").read_text().split()
    if all(c in available for c in WANTED):
        pytest.skip("this machine delegates memory and pids on cgroup v2")
    directory, reason = v2_parent(group, WANTED)
    assert directory is None
    absent = ", ".join(c for c in WANTED if c not in available)
    assert f"controller(s) {absent} not delegated to {group}" in reason
    assert "Delegate=yes" in reason


def test_without_v1_the_sandbox_warns_about_v2_and_still_runs(monkeypatch, fresh_probe):
    group = _real_v2_group()
    if all(c in (group / "cgroup.controllers").read_text().split() for c in WANTED):
        pytest.skip("this machine delegates memory and pids on cgroup v2")
    monkeypatch.setattr(cgroups, "v1_directories", lambda membership, mounts: {})
    with pytest.warns(SandboxWarning) as warned:
        result = run_python("print('degraded')")
    assert result.ok and result.stdout == "degraded\n"
    messages = [str(w.message) for w in warned]
    for controller in WANTED:
        assert any(
            f"cgroup_{controller} unavailable (cgroup v2 controller(s)" in m and "Delegate=yes" in m
            for m in messages
        ), messages
    caps = sandbox_capabilities()
    assert (caps["cgroup_pids_version"], caps["cgroup_memory_version"]) == ("none", "none")
    assert not (caps["cgroup_pids"] or caps["cgroup_memory"])


def test_v1_groups_hold_the_limits_while_the_run_lasts_and_vanish_after():
    caps = sandbox_capabilities()
    parents = [p for p in probing.probe().setup.cgroups if p.version == 1]
    if not parents:
        pytest.skip("no cgroup v1 controller is used on this machine")
    assert {caps["cgroup_pids_version"], caps["cgroup_memory_version"]} & {"v1"}
    code = "import time\nprint('started', flush=True)\ntime.sleep(1.5)\n"
    import threading

    seen: dict[str, str] = {}

    def watch() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(seen) < len(parents):
            for parent in parents:
                for group in parent.directory.glob(f"masr-sandbox-{os.getpid()}-*"):
                    limit = (
                        "pids.max" if parent.controllers == ("pids",) else "memory.limit_in_bytes"
                    )
                    try:
                        seen[limit] = (group / limit).read_text().strip()
                    except OSError:
                        pass
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    result = run_python(code, memory_mb=300, max_processes=7)
    watcher.join()
    assert result.ok, result
    expected = {"pids.max": "7", "memory.limit_in_bytes": str(300 << 20)}
    assert seen == {k: v for k, v in expected.items() if k in seen} and seen, seen
    for parent in parents:
        assert list(parent.directory.glob(f"masr-sandbox-{os.getpid()}-*")) == []

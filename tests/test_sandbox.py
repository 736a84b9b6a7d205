"""The sandbox contains hostile code and reports it as a failure, and runs ordinary code faithfully.

Attack tests only ever aim at canaries this file creates (a canary home, a canary directory, a
canary API key, a listening socket); a test whose containment mechanism is unavailable on the
machine is skipped with the reason rather than run unprotected. The fork bomb runs only under a
hard process cap and stops by itself after a few seconds even if containment were broken.
"""
from __future__ import annotations

import asyncio
import shutil
import socket
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from masr_graph.errors import ConfigError, SandboxError
from masr_graph.runtime.sandbox import (
    FILE_SIZE_CAP_MB,
    OUTPUT_CAP_BYTES,
    SandboxResult,
    SandboxWarning,
    arun_python,
    run_python,
    sandbox_capabilities,
)
from masr_graph.runtime.sandbox import probe as probing
from masr_graph.runtime.sandbox.isolation import Setup
from masr_graph.runtime.sandbox.launcher import execute, run_blocking
from masr_graph.runtime.sandbox.limits import Limits

SANDBOX_ENV_KEYS = {"PATH", "LANG", "HOME", "TMPDIR", "USER", "LOGNAME"}


@pytest.fixture(scope="module")
def caps() -> dict[str, bool | str]:
    return sandbox_capabilities()


def require(caps: dict[str, bool | str], capability: str) -> None:
    if not caps[capability]:
        pytest.skip(f"{capability} is unavailable on this machine, so this attack is not contained")


def processes_with_marker(marker: str) -> list[int]:
    """Host pids whose command line contains ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def exec_with_marker(body: str, marker: str) -> str:
    """Code that replaces itself by ``python -c body marker`` so its processes can be found."""
    return ("import os, sys\n"
            f"os.execv(sys.executable, [sys.executable, '-c', {body!r}, {marker!r}])\n")


# --- ordinary code --------------------------------------------------------------------------------


def test_runs_code_and_captures_both_streams():
    result = run_python("import sys\nprint('out', 6 * 7)\nprint('err', file=sys.stderr)\n")
    assert isinstance(result, SandboxResult)
    assert (result.ok, result.returncode, result.failure) == (True, 0, None)
    assert (result.stdout, result.stderr) == ("out 42\n", "err\n")
    assert not (result.timed_out or result.memory_exceeded) and result.killed_signal is None
    assert 0 < result.duration_s < 10


def test_stdin_is_fed_to_the_code():
    result = run_python("import sys\nprint(sys.stdin.read().upper(), end='')",
                        stdin="héllo\nworld\n")
    assert result.ok and result.stdout == "HÉLLO\nWORLD\n"


def test_files_land_in_a_private_writable_work_directory_that_is_cwd_and_home():
    code = (
        "import os, helper\n"
        "print(helper.answer() + 1)\n"
        "print(open('data/in.txt').read())\n"
        "with open('out.txt', 'w') as f:\n"
        "    f.write('written')\n"
        "print(open(os.path.join(os.environ['HOME'], 'out.txt')).read())\n"
        "print(os.getcwd() == os.environ['HOME'] == os.environ['TMPDIR']"
        " == os.path.dirname(__file__))\n"
        "print(os.getcwd())\n"
    )
    result = run_python(code, files={"helper.py": "def answer():\n    return 41\n",
                                     "data/in.txt": "hello"})
    assert result.ok, result.failure
    lines = result.stdout.splitlines()
    assert lines[:4] == ["42", "hello", "written", "True"]
    assert not Path(lines[4]).exists(), "the work directory must be deleted after the run"


def test_failures_of_the_code_are_reported_not_raised():
    exited = run_python("import sys\nsys.exit(3)")
    assert (exited.ok, exited.returncode, exited.failure) == (False, 3, "exited with code 3")
    raised = run_python("raise ValueError('boom')")
    assert not raised.ok and raised.returncode == 1
    assert raised.failure == "exited with code 1: ValueError: boom"
    assert "Traceback" in raised.stderr


def test_output_beyond_the_cap_is_counted_not_stored():
    result = run_python(f"print('x' * {OUTPUT_CAP_BYTES + 5000})")
    assert result.ok
    assert result.stdout.startswith("x" * OUTPUT_CAP_BYTES)
    assert result.stdout.endswith("[masr sandbox: 5001 more bytes not captured]")


async def test_many_concurrent_runs_without_blocking_the_event_loop():
    sandbox_capabilities()  # the one-off probe is not what this measures
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.monotonic()
        while not done.is_set():
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    ticking = asyncio.create_task(ticker())
    started = time.monotonic()
    results = await asyncio.gather(
        *(arun_python("import sys\nprint(int(sys.stdin.read()) * 2)", stdin=str(i))
          for i in range(24))
    )
    elapsed = time.monotonic() - started
    done.set()
    await ticking
    assert [r.stdout for r in results] == [f"{2 * i}\n" for i in range(24)]
    assert all(r.ok for r in results)
    # Runs overlap: together they take far less than one after another would.
    durations = [r.duration_s for r in results]
    assert elapsed < sum(durations) / 3, (elapsed, durations)
    # A loop blocked by each run would only tick between runs, every gap as long as a run
    # (>= 0.2 s here). A free loop ticks every ~10 ms; a loaded machine stretches that, and
    # launching 24 runs at once holds it briefly at the start, but most gaps stay short.
    assert len(gaps) >= 5 and statistics.median(gaps) < 0.1, sorted(gaps)


async def test_blocking_run_python_also_works_inside_a_running_loop():
    assert run_python("print('inside')").stdout == "inside\n"


@pytest.mark.parametrize(
    "kwargs, named",
    [
        ({"timeout_s": 0}, "timeout_s"),
        ({"timeout_s": float("inf")}, "timeout_s"),
        ({"memory_mb": 8}, "memory_mb"),
        ({"memory_mb": 512.0}, "memory_mb"),
        ({"max_processes": 0}, "max_processes"),
        ({"stdin": b"bytes"}, "stdin"),
        ({"files": {"../escape.py": ""}}, "../escape.py"),
        ({"files": {"/etc/passwd": ""}}, "/etc/passwd"),
        ({"files": {"main.py": ""}}, "main.py"),
        ({"files": {"ok.txt": 3}}, "files"),
        ({"hide": "/etc"}, "hide"),
        ({"hide": ["relative/dir"]}, "relative/dir"),
    ],
)
def test_invalid_arguments_raise_config_error_naming_them(kwargs, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        run_python("print(1)", **kwargs)


def test_capabilities_are_consistent_and_name_the_cgroup_versions(caps):
    assert caps == sandbox_capabilities()
    versions = {"cgroup_pids_version", "cgroup_memory_version"}
    assert all(isinstance(value, bool) for key, value in caps.items() if key not in versions)
    for controller in ("pids", "memory"):
        version = caps[f"cgroup_{controller}_version"]
        assert version in ("v1", "v2", "none")
        assert caps[f"cgroup_{controller}"] == (version != "none")
    assert caps["wall_timeout"] and caps["clean_environment"] and caps["process_group_kill"]
    if caps["cgroup_pids"] or caps["pid_namespace"]:
        assert caps["process_cap"]
    assert caps["network_namespace"] == caps["pid_namespace"] == caps["mount_namespace"]


# --- attacks -------------------------------------------------------------------------------------


def test_infinite_loop_is_killed_at_the_timeout():
    started = time.monotonic()
    result = run_python("while True:\n    pass\n", timeout_s=1.0)
    wall = time.monotonic() - started
    assert not result.ok and result.timed_out
    assert result.killed_signal == 9 and result.failure == "timed out after 1 s"
    assert 1.0 <= result.duration_s < 1.5, result.duration_s
    assert wall < 3.0, wall


def test_fork_bomb_is_capped_and_leaves_nothing_behind(caps):
    require(caps, "process_cap")
    marker = f"masr-forkbomb-{uuid.uuid4().hex}"
    # Stops by itself after 4 s even if no cap held; the sandbox must kill it at 2 s.
    bomb = (
        "import os, time\n"
        "stop = time.monotonic() + 4\n"
        "while time.monotonic() < stop:\n"
        "    try:\n"
        "        os.fork()\n"
        "    except OSError:\n"
        "        pass\n"
    )
    result = run_python(exec_with_marker(bomb, marker), timeout_s=2.0, max_processes=8)
    assert not result.ok and result.timed_out
    assert result.failure.startswith("timed out after 2 s")
    if caps["cgroup_pids"]:
        assert "hit the limit of 8 processes" in result.failure
    assert processes_with_marker(marker) == []
    assert run_python("print('still here')").stdout == "still here\n"


def test_four_gigabyte_allocation_fails_with_memory_exceeded():
    result = run_python("x = bytearray(4 * 1024**3)", memory_mb=512)
    assert not result.ok and result.memory_exceeded
    assert result.failure.startswith("exceeded the memory limit of 512 MiB")
    assert "MemoryError" in result.stderr


def test_gradual_allocation_is_stopped_at_the_memory_limit():
    code = "chunks = []\nwhile len(chunks) < 64:\n    chunks.append(bytearray(64 * 1024**2))\n"
    result = run_python(code, memory_mb=384, timeout_s=20)
    assert not result.ok and result.memory_exceeded, result


def test_memory_spread_over_processes_is_capped_in_total(caps):
    require(caps, "cgroup_memory")
    # Each child stays under the per-process limit; together they need 800 MiB of 256.
    code = (
        "import os, sys, time\n"
        "children = []\n"
        "for _ in range(4):\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        block = bytearray(200 * 1024**2)\n"
        "        time.sleep(1)\n"
        "        os._exit(0)\n"
        "    children.append(pid)\n"
        "sys.exit(any(os.waitpid(pid, 0)[1] for pid in children))\n"
    )
    result = run_python(code, memory_mb=256, timeout_s=20)
    assert not result.ok and result.memory_exceeded, result
    assert "exceeded the memory limit of 256 MiB" in result.failure


def test_files_beyond_the_size_cap_cannot_be_written():
    code = f"open('big.bin', 'wb').write(b'x' * ({FILE_SIZE_CAP_MB} + 1) * 1024**2)"
    result = run_python(code)
    assert not result.ok
    assert result.failure == "exited with code 1: OSError: [Errno 27] File too large"


def test_rm_rf_home_and_deleting_outside_the_work_dir_touch_nothing(caps, tmp_path, monkeypatch):
    require(caps, "mount_namespace")
    canary_home = tmp_path / "home"
    canary_home.mkdir()
    (canary_home / "keep.txt").write_text("home canary")
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "data.txt").write_text("precious canary")
    monkeypatch.setenv("HOME", str(canary_home))  # what `~` would be if the sandbox leaked it
    code = (
        "import os, shutil\n"
        "os.system('rm -rf ~')\n"
        f"shutil.rmtree({str(canary_home)!r})\n"
        f"shutil.rmtree({str(precious)!r})\n"
    )
    result = run_python(code)
    assert not result.ok
    assert result.failure.startswith("exited with code 1: ") and "Error" in result.failure
    assert (canary_home / "keep.txt").read_text() == "home canary"
    assert (precious / "data.txt").read_text() == "precious canary"


def test_hidden_directories_look_empty(caps):
    require(caps, "mount_namespace")
    secret = Path(tempfile.mkdtemp(prefix="masr-hidden-canary-"))  # readable by the run's uid
    try:
        secret.chmod(0o755)
        (secret / "expected.txt").write_text("42")
        code = (
            f"import os\nprint(os.listdir({str(secret)!r}))\n"
            f"print(open({str(secret / 'expected.txt')!r}).read())\n"
        )
        assert run_python(code).stdout.splitlines() == ["['expected.txt']", "42"]
        hidden = run_python(code, hide=[str(secret)])
        assert hidden.stdout.splitlines() == ["[]"]
        assert hidden.failure.startswith("exited with code 1: FileNotFoundError")
    finally:
        shutil.rmtree(secret)


def test_api_key_in_the_callers_environment_is_invisible(monkeypatch):
    canary = f"sk-canary-{uuid.uuid4().hex}"
    monkeypatch.setenv("OPENAI_API_KEY", canary)
    monkeypatch.setenv("MASR_TEST_SECRET_TOKEN", canary)
    code = (
        "import os\n"
        "print(sorted(os.environ))\n"
        f"print([k for k, v in os.environ.items() if {canary!r} in v])\n"
        "print(os.environ['OPENAI_API_KEY'])\n"
    )
    result = run_python(code)
    assert not result.ok
    assert result.failure == "exited with code 1: KeyError: 'OPENAI_API_KEY'"
    assert result.stdout.splitlines() == [str(sorted(SANDBOX_ENV_KEYS)), "[]"]
    assert canary not in result.stdout + result.stderr


def test_api_key_cannot_be_read_from_other_processes(caps, monkeypatch):
    require(caps, "pid_namespace")
    canary = f"sk-canary-{uuid.uuid4().hex}"
    monkeypatch.setenv("OPENAI_API_KEY", canary)
    code = (
        "import glob\n"
        "found = []\n"
        "for path in glob.glob('/proc/*/environ') + glob.glob('/proc/*/cmdline'):\n"
        "    try:\n"
        f"        if {canary!r}.encode() in open(path, 'rb').read():\n"
        "            found.append(path)\n"
        "    except OSError:\n"
        "        pass\n"
        "assert not found, found\n"
        "raise SystemExit('no key found')\n"
    )
    result = run_python(code)
    assert not result.ok and result.failure == "exited with code 1: no key found"
    assert canary not in result.stdout + result.stderr


def test_connecting_to_a_listening_local_socket_fails(caps):
    require(caps, "network_namespace")
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        result = run_python("import socket\n"
                            f"socket.create_connection(('127.0.0.1', {port}), timeout=2)\n")
        server.settimeout(0.2)
        with pytest.raises(socket.timeout):
            server.accept()
    assert not result.ok
    assert result.failure.startswith(
        "exited with code 1: OSError: [Errno 101] Network is unreachable")


@pytest.mark.parametrize("main_outlives_daemon", [False, True])
def test_double_forked_daemon_is_gone_after_the_run(caps, main_outlives_daemon):
    require(caps, "pid_namespace")
    marker = f"masr-daemon-{uuid.uuid4().hex}"
    daemon = "import time\ntime.sleep(120)\n"
    code = (
        "import os, sys, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        f"        os.execv(sys.executable, [sys.executable, '-c', {daemon!r}, {marker!r}])\n"
        "    os._exit(0)\n"
        "time.sleep(0.5)\n"
        "print('daemon started', flush=True)\n"
        + ("time.sleep(60)\n" if main_outlives_daemon else "")
    )
    result = run_python(code, timeout_s=1.5)
    assert result.stdout == "daemon started\n"
    assert result.timed_out == main_outlives_daemon
    assert processes_with_marker(marker) == []


# --- machines with less isolation -----------------------------------------------------------------


@pytest.fixture
def without_unshare(monkeypatch):
    """The real probe on this machine as if util-linux ``unshare`` were not installed."""
    real_which = probing.shutil.which
    monkeypatch.setattr(
        probing.shutil, "which",
        lambda name, **kw: None if name == "unshare" else real_which(name, **kw)
    )
    probing.probe_machine.cache_clear()
    probing.warn_about_missing_mechanisms.cache_clear()
    yield
    monkeypatch.undo()
    probing.probe_machine.cache_clear()
    probing.warn_about_missing_mechanisms.cache_clear()


def test_without_namespaces_it_warns_once_per_mechanism_and_still_limits(without_unshare):
    with pytest.warns(SandboxWarning) as warned:
        first = run_python("print('degraded')")
    assert first.ok and first.stdout == "degraded\n"
    messages = [str(w.message) for w in warned]
    for mechanism in ("network_namespace", "pid_namespace", "mount_namespace"):
        assert any(mechanism in m and "`unshare` is not installed" in m for m in messages), messages
    caps = sandbox_capabilities()
    assert not (caps["network_namespace"] or caps["pid_namespace"] or caps["mount_namespace"])

    timed = run_python("while True:\n    pass\n", timeout_s=1.0)
    assert timed.timed_out and 1.0 <= timed.duration_s < 1.5
    memory = run_python("x = bytearray(4 * 1024**3)", memory_mb=256)
    assert memory.memory_exceeded and not memory.ok
    marker = f"masr-straggler-{uuid.uuid4().hex}"
    straggler = exec_with_marker("import time\ntime.sleep(120)\n", marker)
    # A child left in the process group (no setsid) dies with the run.
    spawn = f"import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', {straggler!r}])\n"
    assert run_python(spawn).ok
    assert processes_with_marker(marker) == []


def test_user_namespace_isolation_contains_writes_network_and_capabilities(caps, tmp_path):
    """The isolation a non-root Linux user gets, exercised here through the same runner."""
    require(caps, "pid_namespace")
    setup = Setup("userns", probing.probe().setup.unshare, probing.probe().setup.setpriv)
    target = tmp_path / "written-from-userns"
    code = (
        "import os, socket\n"
        "print(open('/proc/self/status').read().split('CapEff:')[1].split()[0])\n"
        "try:\n"
        "    socket.create_connection(('127.0.0.1', 9), timeout=1)\n"
        "except OSError as exc:\n"
        "    print(exc.errno)\n"
        f"open({str(target)!r}, 'w')\n"
    )
    result = run_blocking(execute(setup, code, Limits(10.0, 256, 8), None, {}))
    assert result.stdout.splitlines() == ["0000000000000000", "101"]
    assert not result.ok and "Read-only file system" in result.failure
    assert not target.exists()


def test_a_broken_sandbox_raises_instead_of_blaming_the_code(caps):
    setup = Setup("root", "/bin/false")
    with pytest.raises(SandboxError, match="launcher failed"):
        run_blocking(execute(setup, "print(1)", Limits(5.0, 256, 8), None, {}))

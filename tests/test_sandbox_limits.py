"""CPU limits are hard limits the code cannot raise or ignore, in the sandbox and in code scoring;
the report channel is captured apart from the code's output."""

from __future__ import annotations

import signal
import time

import pytest
from masr_graph.benchmarks import Example, aevaluate
from masr_graph.benchmarks.tasks import code_eval

from masr_graph.errors import ConfigError
from masr_graph.runtime.sandbox import run_python

# --- CPU limits are hard limits ---------------------------------------------------------------

RAISE_SOFT_LIMIT_AND_SPIN = (
    "import resource\n"
    "soft, hard = resource.getrlimit(resource.RLIMIT_CPU)\n"
    "resource.setrlimit(resource.RLIMIT_CPU, (hard, hard))\n"
    "while True:\n    pass\n"
)


@pytest.mark.parametrize(
    "code",
    [
        RAISE_SOFT_LIMIT_AND_SPIN,
        "import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True:\n    pass\n",
        "import resource\nresource.setrlimit(resource.RLIMIT_CPU, (-1, -1))\n",
    ],
    ids=["raises-its-soft-limit", "ignores-SIGXCPU", "tries-unlimited"],
)
def test_the_cpu_limit_cannot_be_raised_or_ignored(code):
    result = run_python(code, cpu_s=1, timeout_s=30)
    assert not result.ok and not result.timed_out, result
    if "while" in code:
        assert result.killed_signal == signal.SIGKILL
        assert result.failure == "killed by SIGKILL (CPU time limit of 1 s)"
        assert result.duration_s < 10, result.duration_s
    else:
        assert "ValueError" in result.failure  # raising a hard limit is not allowed


def test_plain_spinning_gets_sigxcpu_at_the_soft_limit():
    result = run_python("while True:\n    pass\n", cpu_s=1, timeout_s=30)
    assert result.failure == "killed by SIGXCPU (CPU time limit of 1 s)"


@pytest.mark.parametrize("cpu_s", [0, -1, float("nan"), "1", True])
def test_invalid_cpu_limits_are_refused(cpu_s):
    with pytest.raises(ConfigError, match="cpu_s"):
        run_python("print(1)", cpu_s=cpu_s)


async def test_code_evaluation_stops_a_program_that_raises_its_cpu_limit(monkeypatch):
    monkeypatch.setattr(code_eval, "CPU_LIMIT_S", 1)
    monkeypatch.setattr(code_eval, "WALL_TIMEOUT_S", 20.0)
    task = Example(
        id="mbpp/spin", task="mbpp", query="", answer="",
        meta={"entry_point": "add", "test_list": ["assert add(2, 3) == 5"], "test_setup_code": ""},
    )  # fmt: skip
    code = RAISE_SOFT_LIMIT_AND_SPIN.replace("while True:\n    pass\n", "") + (
        "def add(a, b):\n    while True:\n        pass\n"
    )
    started = time.monotonic()
    score = await aevaluate(task, f"```python\n{code}```")
    assert not score.correct and "CPU time limit of 1 s" in score.detail, score.detail
    assert time.monotonic() - started < 15


# --- the report channel -----------------------------------------------------------------------


def test_the_report_channel_is_captured_apart_from_output():
    from masr_graph.runtime.sandbox import REPORT_FD

    code = f"import os\nprint('out')\nos.write({REPORT_FD}, b'reported')\n"
    result = run_python(code, report=True)
    assert (result.ok, result.stdout, result.report) == (True, "out\n", "reported")
    without = run_python(f"import os\nos.write({REPORT_FD}, b'x')\n")
    assert without.report is None and not without.ok and "Bad file descriptor" in without.failure


def test_the_report_channel_is_capped():
    from masr_graph.runtime.sandbox import REPORT_CAP_BYTES, REPORT_FD

    code = f"import os\nos.write({REPORT_FD}, b'r' * {REPORT_CAP_BYTES + 10})\n"
    result = run_python(code, report=True)
    assert result.report.startswith("r" * REPORT_CAP_BYTES)
    assert result.report.endswith("[masr sandbox: 10 more bytes not captured]")
    with pytest.raises(ConfigError, match="report"):
        run_python("print(1)", report="yes")

"""Run control: one exit-status contract for `run_all.py` and `masr` (0 done, 1 error, 2 usage,
3 budget stop, 130 interrupted) with one-line messages for user mistakes, results written after
each benchmark and on any stop, and fail-fast when an LLM's first calls all fail for good (an
endpoint refusing every connection stops the run; no training step is counted)."""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import pytest
import torch
import yaml

from loopback_server import LoopbackServer
from masr_graph.benchmarks import run_all
from masr_graph.benchmarks.experiment.environment import software_environment
from masr_graph.benchmarks.reporting.protocol import MethodScore, PairReport, report_markdown
from masr_graph.errors import LLMCallError, MasrError
from masr_graph.llm import LLMPool, LLMSpec
from masr_graph.plan import Plan
from masr_graph.runtime import MASExecutor

TIMEOUT_S = 600
TINY = ["--quick", "--max-train", "4", "--max-validation", "2", "--max-test", "3",
        "--router-steps", "2", "--lambdas", "0", "100", "--team-llms", "3"]
"""A protocol run of a few queries: seconds per pair on a recorded world."""


def masr(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    script = shutil.which("masr")
    command: Sequence[str] = [script] if script else [sys.executable, "-m", "masr_graph.cli"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=TIMEOUT_S,
                          env={**os.environ, **(env or {})})


def error_lines(stderr: str) -> list[str]:
    """stderr without the pool's retry warnings and tqdm bars (logs and progress, not the
    error report)."""
    return [line for line in stderr.replace("\r", "\n").splitlines()
            if line.strip() and "retrying in" not in line and "WARNING" not in line
            and "it/s]" not in line and "s/it]" not in line]


def closed_port_url() -> str:
    """An endpoint on 127.0.0.1 that refuses every connection."""
    with LoopbackServer() as srv:
        url = srv.base_url
    return url


def pool_file(path: Path, base_url: str, **extra: Any) -> Path:
    path.write_text(yaml.safe_dump({"llms": [
        dict(name=name, model=name, base_url=base_url, price_in=1.0, price_out=2.0,
             description=f"loopback model {name}", timeout_s=2.0, **extra)
        for name in ("alpha", "beta")]}))
    return path


# ------------------------------------------------------------------------ the contract itself
def test_run_command_maps_every_outcome_to_its_status_and_one_line(capsys):
    from masr_graph.errors import BudgetExceeded, ConfigError
    from masr_graph.exit_status import BudgetStop, run_command

    def raising(exc: BaseException):
        def body() -> int:
            raise exc
        return body

    async def finished() -> int:
        return 0

    stop = BudgetExceeded(1.0, 0.9, 0.2, "m")
    cases = [
        (finished, 0, ""),
        (raising(ConfigError("bad pool")), 1, "prog: error: bad pool"),
        (raising(PermissionError(13, "Permission denied", "/out")), 1,
         "prog: error: [Errno 13] Permission denied: '/out'"),
        (raising(BudgetStop(stop, "the 3 finished steps are kept")), 3,
         "prog: stopped by the budget cap: " + str(stop)),
        (raising(stop), 3, "prog: stopped by the budget cap: " + str(stop)),
        (raising(KeyboardInterrupt()), 130,
         "prog: interrupted; rerun with the same --out to resume"),
    ]
    for body, status, first_line in cases:
        assert run_command("prog", body) == status
        err = capsys.readouterr().err
        assert err.splitlines()[:1] == ([first_line] if first_line else [])
    assert run_command("prog", raising(BudgetStop(stop, "kept X"))) == 3
    assert capsys.readouterr().err.splitlines()[1] == (
        "kept X; rerun with a higher --max-usd to continue.")
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        run_command("prog", lambda: 1 // 0)


def test_cli_defaults_mirror_the_llm_layer():
    from masr_graph import cli, llm

    assert cli.FAIL_FAST_AFTER == llm.DEFAULT_FAIL_FAST_AFTER
    assert cli.UNKNOWN_OUTCOME_COSTS == llm.UNKNOWN_OUTCOME_COSTS


# ----------------------------------------------------------------------------- usage errors
@pytest.mark.parametrize("flags", [("--max-usd", "-1"), ("--max-usd", "nan"),
                                   ("--max-usd", "inf"), ("--lambdas", "-5"),
                                   ("--max-test", "0"), ("--router-steps", "-2"),
                                   ("--seeds", "x")])
def test_run_all_bad_numbers_are_usage_errors(flags: tuple[str, str], tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as info:
        run_all.main([*flags, "--out", str(tmp_path / "run"), *TINY])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith(f"run_all.py: error: argument {flags[0]}: ")
    assert "Traceback" not in err


@pytest.mark.parametrize("args, message", [
    (("train", "--checkpoint", "x.pt", "--max-usd", "-1"),
     "argument --max-usd: must be a finite number of dollars >= 0 (got -1)"),
    (("eval", "--checkpoint", "x.pt", "--max-usd", "nan"),
     "argument --max-usd: must be a finite number of dollars >= 0 (got nan)"),
    (("route", "q", "--checkpoint", "x.pt", "--lam", "inf"),
     "argument --lam: must be a finite number >= 0 (got inf)"),
    (("train", "--checkpoint", "x.pt", "--benchmark", "gsm8k", "--lambdas", "0", "-3"),
     "argument --lambdas: must be a finite number >= 0 (got -3)"),
    (("serve", "--checkpoint", "x.pt", "--temperature", "5"),
     "argument --temperature: must be a number in [0, 2] (got 5)"),
])
def test_masr_bad_numbers_are_usage_errors(args: tuple[str, ...], message: str):
    done = masr(*args)
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == f"masr {args[0]}: error: {message}"
    assert "Traceback" not in done.stderr


# ---------------------------------------------------------------------- one-line user errors
def test_run_all_missing_data_dir_is_one_line(tmp_path: Path, capsys):
    status = run_all.main(["--data-dir", str(tmp_path / "nowhere"), "--out",
                           str(tmp_path / "run"), *TINY])
    assert status == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert line.startswith("run_all.py: error: benchmark data directory")
    assert str(tmp_path / "nowhere") in line


def test_run_all_missing_api_key_variable_is_one_line(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.delenv("MASR_TEST_NO_SUCH_KEY", raising=False)
    pool = pool_file(tmp_path / "pool.yaml", closed_port_url(), api_key_env="MASR_TEST_NO_SUCH_KEY")
    status = run_all.main(["--pool", str(pool), "--benchmarks", "gsm8k", "--out",
                           str(tmp_path / "run"), *TINY])
    assert status == 1
    (line,) = [line for line in error_lines(capsys.readouterr().err) if not line.startswith("==")]
    assert line.startswith("run_all.py: error: LLM 'alpha' needs its API key in the environment "
                           "variable 'MASR_TEST_NO_SUCH_KEY'")


# ------------------------------------------------------------------------------- fail fast
async def test_an_endpoint_refusing_every_connection_stops_calls_after_n_failures():
    spec = LLMSpec("dead", "dead", closed_port_url(), price_in=1.0, price_out=1.0,
                   description="d")
    async with LLMPool([spec], max_attempts=2, backoff_base_s=0.001, fail_fast_after=3) as pool:
        outcomes = await asyncio.gather(
            *(pool.chat("dead", [{"role": "user", "content": f"q{i}"}]) for i in range(3)),
            return_exceptions=True)
        stopped = [o for o in outcomes if not isinstance(o, LLMCallError)]
        assert stopped, "the third failure must stop the LLM, not be one more agent failure"
        error = stopped[0]
        assert isinstance(error, MasrError) and not isinstance(error, LLMCallError)
        message = str(error)
        assert "'dead'" in message and spec.base_url in message and "unavailable" in message
        assert "ConnectionRefusedError" in message
        started = time.perf_counter()
        with pytest.raises(type(error)):  # later calls fail at once, without a request
            await pool.chat("dead", [{"role": "user", "content": "later"}])
        assert time.perf_counter() - started < 0.5
    assert pool.ledger.records[-1].attempts == 0


async def test_fail_fast_trips_a_bad_model_on_a_working_endpoint_but_never_a_flaky_one():
    def responder(body: dict[str, Any]) -> str:
        if body["model"] == "no-such-model":
            raise RuntimeError("model not found")  # the loopback answers HTTP 500
        return "ok"

    with LoopbackServer(responder=responder) as srv:
        specs = [LLMSpec(name, model, srv.base_url, price_in=1.0, price_out=1.0, description="d")
                 for name, model in (("good", "good"), ("typo", "no-such-model"))]
        async with LLMPool(specs, max_attempts=1, fail_fast_after=2) as pool:
            assert (await pool.chat("good", [{"role": "user", "content": "hi"}])).text == "ok"
            with pytest.raises(LLMCallError):
                await pool.chat("typo", [{"role": "user", "content": "1"}])
            with pytest.raises(MasrError, match="'typo' .* unavailable") as info:
                await pool.chat("typo", [{"role": "user", "content": "2"}])
            assert not isinstance(info.value, LLMCallError)
            # An LLM that answered once is only ever failing calls, never unavailable.
            for i in range(3):
                with pytest.raises(LLMCallError):
                    await pool.chat("good", [{"role": "user", "content": f"[[fault:500]] {i}"}])


async def test_the_runtime_does_not_turn_an_unavailable_llm_into_agent_failures():
    spec = LLMSpec("dead", "dead", closed_port_url(), price_in=1.0, price_out=1.0,
                   description="d")
    pool = LLMPool([spec], max_attempts=1, fail_fast_after=2)
    try:
        executor = MASExecutor(pool)
        plan = Plan(mode="IO", roles=["Step-by-Step Solver"], llms=["dead"], task="gsm8k")
        with pytest.raises(MasrError, match="unavailable") as info:
            await executor.run_many([_item(plan, i) for i in range(4)])
        assert not isinstance(info.value, LLMCallError)
    finally:
        await pool.aclose()


def _item(plan: Plan, index: int) -> Any:
    from masr_graph.runtime.engine import QueryItem

    return QueryItem(query=f"What is {index} + 1?", plan=plan, query_id=f"q{index}",
                     task="gsm8k")


def test_masr_train_on_a_refusing_endpoint_exits_1_without_a_training_step(tmp_path: Path):
    checkpoint = tmp_path / "router.pt"
    pool = pool_file(tmp_path / "pool.yaml", closed_port_url())
    done = masr("train", "--pool", str(pool), "--checkpoint", str(checkpoint), "--benchmark",
                "gsm8k", "--max-train", "4", "--max-validation", "2", "--steps", "3", "--out",
                str(tmp_path / "run"))
    assert done.returncode == 1, done.stdout + done.stderr
    (line,) = [line for line in error_lines(done.stderr) if not line.startswith("training on")]
    assert line.startswith("masr train: error: LLM ") and "unavailable" in line
    assert "Connection" in line and "Traceback" not in done.stderr
    assert "plan library" not in done.stdout
    assert not checkpoint.exists()  # nothing was trained, so nothing was saved


def test_run_all_on_a_refusing_endpoint_exits_1_with_one_line(tmp_path: Path, capsys):
    pool = pool_file(tmp_path / "pool.yaml", closed_port_url())
    out = tmp_path / "run"
    status = run_all.main(["--pool", str(pool), "--benchmarks", "gsm8k", "--out", str(out), *TINY])
    assert status == 1
    (line,) = [line for line in error_lines(capsys.readouterr().err) if not line.startswith("==")]
    assert line.startswith("run_all.py: error: LLM 'alpha' at http://127.0.0.1:")
    assert "unavailable" in line and "ConnectionRefusedError" in line
    assert not list(out.glob("*/masrouter-seed*.pt"))
    assert "- **status**: stopped before the end: LLM 'alpha'" in (out / "results.md").read_text()


# ----------------------------------------------------------------- budget stop and interrupt
def test_run_all_budget_stop_exits_3_and_writes_results(tmp_path: Path, capsys):
    out = tmp_path / "run"
    status = run_all.main(["--world", "llmrouter", "--benchmarks", "gsm8k", "--out", str(out),
                           "--max-usd", "0.000001", *TINY])
    assert status == 3
    err = error_lines(capsys.readouterr().err)
    assert err[0].startswith("run_all.py: stopped by the budget cap: budget cap $0.000001")
    assert err[1].endswith("rerun with a higher --max-usd to continue.")
    assert str(out / "results.md") in err[1]
    assert "- **status**: stopped by the budget cap" in (out / "results.md").read_text()


def test_run_all_interrupted_keeps_finished_pairs_and_says_how_to_resume(
        tmp_path: Path, capsys, monkeypatch):
    from masr_graph.benchmarks.experiment.protocol import PairRun

    out = tmp_path / "run"
    original = PairRun.define_library

    async def interrupt_the_second(self: Any, *args: Any, **kwargs: Any) -> int:
        if self.pair.task == "mmlu":
            raise KeyboardInterrupt
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(PairRun, "define_library", interrupt_the_second)
    try:
        status = run_all.main(["--world", "llmrouter", "--benchmarks", "gsm8k", "mmlu", "--out",
                               str(out), *TINY])
    except KeyboardInterrupt:
        pytest.fail("run_all.main let KeyboardInterrupt escape")
    assert status == 130
    assert [line for line in error_lines(capsys.readouterr().err) if not line.startswith("==")
            ] == ["run_all.py: interrupted; rerun with the same --out to resume"]
    markdown = (out / "results.md").read_text()
    assert "## llmrouter-all-gsm8k" in markdown
    assert "- **status**: stopped before the end: interrupted" in markdown
    assert "llmrouter-all-mmlu: " in markdown  # listed among the unfinished cells
    # The rerun resumes: the finished pair's cells are stored, so it runs none of them again.
    monkeypatch.setattr(PairRun, "define_library", original)
    ran: list[str] = []
    original_run = PairRun.run

    async def counting(self: Any, cell: Any, *args: Any, **kwargs: Any) -> Any:
        if self.store.load(self.pair.name, cell.label).keys() < {e.id for e in self.data.test}:
            ran.append(f"{self.pair.name}/{cell.label}")
        return await original_run(self, cell, *args, **kwargs)

    monkeypatch.setattr(PairRun, "run", counting)
    assert run_all.main(["--world", "llmrouter", "--benchmarks", "gsm8k", "mmlu", "--out",
                         str(out), *TINY]) == 0
    assert ran and all(name.startswith("llmrouter-all-mmlu/") for name in ran)
    assert "- **status**: complete" in (out / "results.md").read_text()
    # the table says what it was computed with and where its routers were trained (here: one
    # environment, recorded in every router's curve file)
    environment = software_environment()
    assert f"torch {torch.__version__}" in environment
    assert f"- **environment (this invocation)**: {environment}" in (out / "results.md").read_text()
    assert f"- **environments the routers were trained in**: {environment}\n" in (
        out / "results.md").read_text()
    curves = sorted(out.glob("*/masrouter-seed*.curve.json"))
    assert curves and all(json.loads(p.read_text())["environment"] == environment
                          for p in curves)


def _as_in_a_terminal() -> None:
    """The child's SIGINT handling as a terminal gives it, whatever the test process's own: a
    child inherits an ignored SIGINT (and then rightly ignores Ctrl-C)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_run_all_ctrl_c_exits_130_with_one_line(tmp_path: Path):
    """A real SIGINT to the main job, mid-run."""
    process = subprocess.Popen(
        [sys.executable, str(Path(run_all.__file__)), "--world", "llmrouter", "--benchmarks",
         "gsm8k", "--out", str(tmp_path / "run"), "--max-train", "200", "--max-validation",
         "100"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=_as_in_a_terminal)
    assert process.stdout is not None
    deadline = time.monotonic() + 300
    while "== llmrouter-all-gsm8k" not in process.stdout.readline():
        assert time.monotonic() < deadline and process.poll() is None, process.stderr.read()
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert [line for line in error_lines(stderr) if line.startswith("run_all.py")] == [
        "run_all.py: interrupted; rerun with the same --out to resume"]


def test_masr_interrupt_says_how_to_resume(monkeypatch, capsys):
    from masr_graph import cli

    def interrupted(args: Any) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_eval", interrupted)
    assert cli.main(["eval", "--checkpoint", "x.pt", "--benchmark", "gsm8k"]) == 130
    assert capsys.readouterr().err.splitlines() == [
        "masr eval: interrupted; rerun with the same --out to resume"]


# --------------------------------------------------------------------------- results table
def test_results_tables_have_an_errors_column():
    def score(method: str, group: str, lam: float, errors: int, fixed: bool) -> MethodScore:
        return MethodScore("p", method, group, lam, 1, 10, 0.5, 0.4, 0.6, 0.5, 0.4, 0.6, 1e-4,
                           errors, fixed)

    report = PairReport("p", lambdas=(0.0, 100.0), middle_lambda=100.0, scores=[
        score("MasRouter", "MasRouter", 0.0, 2, False),
        score("MasRouter", "MasRouter", 100.0, 1, False),
        score("gpt (IO)", "single LLM", 0.0, 3, True),
        score("gpt (IO)", "single LLM", 100.0, 3, True)])
    lines = report_markdown([report], [], {}).splitlines()
    header = lines.index("| method | λ=0 | λ=100 | hypervolume | errors |")
    assert lines[header + 2].startswith("| MasRouter |")
    assert lines[header + 2].endswith("| 3 |")  # over both λ cells
    fixed = lines.index("| method | kind | utility [95 % CI] · accuracy · $ per query | "
                        "hypervolume | errors |")
    assert lines[fixed + 2].startswith("| gpt (IO) | single LLM |")
    assert lines[fixed + 2].endswith("| 3 |")  # one cell, shown at the middle λ


def test_outputs_of_another_backend_are_not_resumed(tmp_path: Path, capsys):
    """The same --out with another collaboration rule would mix two worlds' stored outcomes:
    the run refuses with one line instead."""
    out = tmp_path / "run"
    args = ["--world", "llmrouter", "--benchmarks", "gsm8k", "--out", str(out), *TINY]
    assert run_all.main(args) == 0
    capsys.readouterr()
    assert run_all.main([*args, "--rule", "stubborn"]) == 1
    (line,) = [line for line in error_lines(capsys.readouterr().err) if not line.startswith("==")]
    assert line.startswith(f"run_all.py: error: {out / 'llmrouter-all-gsm8k'} holds outputs of a "
                           "different backend (collaboration_rule changed")


def test_the_grid_trains_and_embeds_on_one_torch_thread_and_gives_the_callers_back(
        tmp_path: Path, monkeypatch):
    """The protocol's units run torch on one thread whatever the caller's setting (the thread
    count changes torch's floats, so it must not depend on how the grid was started)."""
    import torch

    from masr_graph.benchmarks.experiment.protocol import PROTOCOL_TORCH_THREADS, PairRun

    seen: list[int] = []
    original = PairRun.router

    def recording(self: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(torch.get_num_threads())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(PairRun, "router", recording)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        status = run_all.main(["--world", "llmrouter", "--benchmarks", "gsm8k", "--out",
                               str(tmp_path / "run"), *TINY])
        assert status == 0
        assert seen and set(seen) == {PROTOCOL_TORCH_THREADS}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)

"""Text scorers never block: every call has a real timeout wherever it is called from (a worker
thread, inside a running event loop, a short script), a timed-out reply scores as wrong with the
reason recorded, and the event loop keeps serving other coroutines meanwhile.

The hung reply is ``\\boxed{9^{9^{9^{9}}}}``: sympy evaluates the tower as a C-level big-integer
power, which math-verify's ``signal.alarm`` timeout cannot stop outside the main thread (it hung
a worker thread for over two minutes). Bounds are generous: the machine may be loaded, and the
first call waits for a worker to start (importing sympy)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from masr_graph.benchmarks import Example, aevaluate, answer_key, evaluate

HUNG = r"So the answer is $\boxed{9^{9^{9^{9}}}}$."
MATH = Example(id="math/hang", task="math", query="(hang case)", answer="4")
TIMEOUT_S = 5.0
"""The built-in text scorers' timeout (``scorer_pool.TIMEOUT_S``)."""
BOUND_S = 60.0
"""Upper bound for one timed-out call on a loaded 2-core machine."""


def _hung(tag: str) -> str:
    # A distinct reply text per test, so no test is answered from another test's memo.
    return f"{HUNG} ({tag})"


def _is_timeout(score) -> bool:
    return not score.correct and score.extracted is None and "longer than" in score.detail


@pytest.fixture(scope="module", autouse=True)
def warm_pool():
    """Start the workers before the timed tests, so their bounds measure scoring, not start-up."""
    evaluate(MATH, r"\boxed{4}")


def test_hung_reply_from_a_worker_thread_times_out():
    results = []
    thread = threading.Thread(target=lambda: results.append(evaluate(MATH, _hung("thread"))))
    started = time.monotonic()
    thread.start()
    thread.join(BOUND_S)
    assert not thread.is_alive(), f"evaluate still running after {BOUND_S} s in a worker thread"
    assert _is_timeout(results[0]), results[0]
    assert time.monotonic() - started >= TIMEOUT_S * 0.9


async def test_hung_reply_scored_synchronously_inside_a_running_event_loop_times_out():
    started = time.monotonic()
    score = evaluate(MATH, _hung("sync in loop"))
    assert time.monotonic() - started < BOUND_S
    assert _is_timeout(score), score
    assert score.detail.startswith("not scored, counted as wrong: scoring took longer than 5 s")


async def test_event_loop_keeps_serving_while_a_hung_reply_is_scored():
    gaps = []

    async def ticker(stop: asyncio.Event) -> None:
        last = time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    stop = asyncio.Event()
    ticking = asyncio.create_task(ticker(stop))
    hung = asyncio.create_task(aevaluate(MATH, _hung("async")))
    await asyncio.sleep(0.2)  # the hung reply is now in a worker
    others = [Example(id=f"gsm8k/x{i}", task="gsm8k", query="q", answer=str(i)) for i in range(20)]
    scores = await asyncio.wait_for(
        asyncio.gather(*(aevaluate(example, f"#### {example.answer}") for example in others)),
        BOUND_S,
    )
    others_done_first = not hung.done()
    score = await asyncio.wait_for(hung, BOUND_S)
    stop.set()
    await ticking
    assert all(s.correct for s in scores)
    assert _is_timeout(score), score
    # Before the fix the whole 5 s of math-verify ran on the loop; now it never stalls.
    assert max(gaps) < 2.0, f"the event loop stalled for {max(gaps):.1f} s"
    if (os.cpu_count() or 1) >= 2:  # a second worker scored the others meanwhile
        assert others_done_first


def sleepy_evaluate(example: Example, reply: str):
    time.sleep(120)


def sleepy_key(reply: str):
    time.sleep(120)


@pytest.fixture
def private_registry(monkeypatch):
    """Benchmarks registered by a test vanish after it."""
    from masr_graph.benchmarks.tasks import registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


def test_a_benchmark_with_timeout_s_gets_the_same_guarantee(private_registry):
    # answer_key on timeout is None; a user benchmark opts in with timeout_s (module-level
    # scorers, sent to the worker by reference; this test module is importable there).
    from masr_graph.benchmarks import Benchmark, register_benchmark

    register_benchmark(
        Benchmark(
            name="sleepy",
            domain="math",
            splits=("test",),
            load=lambda split, data_dir: [],
            evaluate=sleepy_evaluate,
            answer_key=sleepy_key,
            timeout_s=1.0,
        ),
        replace=True,
    )
    example = Example(id="sleepy/0", task="sleepy", query="q", answer="1", domain="math")
    started = time.monotonic()
    assert answer_key("sleepy", "any reply") is None
    score = evaluate(example, "any reply")
    assert time.monotonic() - started < BOUND_S
    assert (
        score.detail
        == "not scored, counted as wrong: scoring took longer than 1 s (the scorer was killed)"
    )


def test_timeout_s_needs_scorers_a_worker_can_import(private_registry):
    from masr_graph.benchmarks import Benchmark, register_benchmark

    from masr_graph.errors import ConfigError

    for bad in (
        {"evaluate": lambda example, reply: None, "timeout_s": 1.0},
        {"evaluate": sleepy_evaluate, "timeout_s": 0},
    ):
        with pytest.raises(ConfigError, match="timeout_s"):
            register_benchmark(
                Benchmark(
                    name="bad",
                    domain="math",
                    splits=("test",),
                    load=lambda split, data_dir: [],
                    answer_key=sleepy_key,
                    **bad,
                )
            )


def test_a_timed_out_reply_is_memoised():
    first = evaluate(MATH, _hung("memo"))
    started = time.monotonic()
    again = [evaluate(MATH, _hung("memo")) for _ in range(1000)]
    assert time.monotonic() - started < 1.0  # no worker call, no second timeout
    assert again == [first] * 1000 and _is_timeout(first)


def test_evaluate_works_from_plain_threads_while_another_thread_hangs():
    # Before the fix the hung reply's big-integer power held the GIL: every thread froze.
    replies = {f"#### {i}": str(i) for i in range(8)}
    results: dict[str, bool] = {}

    def score(reply: str) -> None:
        example = Example(id="gsm8k/t", task="gsm8k", query="q", answer=replies[reply])
        results[reply] = evaluate(example, reply).correct and evaluate(MATH, r"\boxed{2+2}").correct

    hung = threading.Thread(target=evaluate, args=(MATH, _hung("threads")), daemon=True)
    hung.start()
    threads = [threading.Thread(target=score, args=(reply,)) for reply in replies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(BOUND_S)
    assert results == {reply: True for reply in replies}
    hung.join(BOUND_S)
    assert not hung.is_alive()


def test_scorer_errors_reach_the_caller():
    # A bug in a scorer is raised (not scored as wrong, not memoised) with the worker's traceback.
    from masr_graph.benchmarks.tasks.scorer_pool import ScorerPool

    from masr_graph.errors import ScorerError

    pool = ScorerPool(workers=1)
    try:
        with pytest.raises(ZeroDivisionError) as raised:
            pool.result("k", divmod, (1, 0), timeout_s=5, on_failure=str)
        assert "divmod" in str(raised.value.__cause__) or "ZeroDivisionError" in str(
            raised.value.__cause__
        )
        assert pool.result("k2", divmod, (7, 2), timeout_s=5, on_failure=str) == (3, 1)
    finally:
        pool.close()
    with pytest.raises(ScorerError, match="closed"):
        pool.result("k3", divmod, (7, 2), timeout_s=5, on_failure=str)


SCRIPT = textwrap.dedent(
    """
    # No `if __name__ == "__main__":` guard, like the README's example: workers must not re-run it.
    import os, threading, time
    from masr_graph.benchmarks import Example, evaluate

    def children():
        found = {}
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == os.getpid():
                found[int(pid)] = fields[0]
        return found

    example = Example(id="math/s", task="math", query="q", answer="4")
    results = []
    thread = threading.Thread(
        target=lambda: results.append(evaluate(example, r"\\boxed{9^{9^{9^{9}}}}")), daemon=True
    )
    thread.start()
    thread.join(60)
    print("RESULT", results[0].detail if results else "still running", flush=True)
    # A second hung call is left running: exit must not wait for it.
    threading.Thread(
        target=evaluate, args=(example, r"\\boxed{8^{8^{8^{8}}}}"), daemon=True
    ).start()
    time.sleep(0.5)
    print("CHILDREN", *[f"{pid}:{state}" for pid, state in children().items()], flush=True)
    print("EXITING", time.monotonic(), flush=True)
    """
)


def test_a_short_script_exits_promptly_and_leaves_no_worker_behind(tmp_path):
    script = tmp_path / "score_and_exit.py"
    script.write_text(SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script)],
        check=False,
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    exited = time.monotonic()
    lines = {line.split(" ", 1)[0]: line for line in done.stdout.splitlines()}
    assert done.returncode == 0, done.stderr[-2000:]
    assert "longer than" in lines["RESULT"], lines["RESULT"]
    # Exit (atexit closing a busy and an idle worker) takes well under the 5 s timeout.
    assert exited - float(lines["EXITING"].split()[1]) < 4.0
    children = dict(entry.split(":") for entry in lines["CHILDREN"].split()[1:])
    assert children and "Z" not in children.values()  # the killed worker was reaped
    for pid in children:  # and the script reaped the workers it left at exit
        assert not os.path.exists(f"/proc/{pid}"), f"worker {pid} outlived its script"

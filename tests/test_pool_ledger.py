"""The persisted ledger: every call record is on disk as its call settles (answered, failed,
cached, refused, cancelled), in the format `Ledger.from_jsonl` reads, across pools appending to one
file, through a SIGKILL of the process (a real child process), and in `open_runtime`'s
`out/ledgers/<run_id>.jsonl` while the run is still going."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from loopback_server import LoopbackServer
from pool_support import loopback_spec, user

from masr_graph.errors import BudgetExceeded, CircuitOpenError, LLMCallError
from masr_graph.llm import Budget, CallContext, Ledger, LLMPool, ResponseCache
from masr_graph.llm.types import CallRecord, UsageTotals


spec_for = loopback_spec


def on_disk(path: Path) -> list[Any]:
    return Ledger.from_jsonl(path).records


async def test_every_record_is_on_disk_as_its_call_settles(server, tmp_path: Path):
    path = tmp_path / "ledgers" / "run.jsonl"  # the directory is created
    budget = Budget(0.05)
    async with ResponseCache(tmp_path / "cache.sqlite") as cache:
        async with LLMPool([spec_for(server, timeout_s=0.3)], cache=cache, budget=budget,
                           run_id="r1", backoff_base_s=0.001, max_attempts=1, circuit_after=2,
                           ledger_path=path) as pool:
            assert path.exists() and on_disk(path) == []
            await pool.chat("m", user("paid"), context=CallContext(query_id="q1", agent=0))
            assert on_disk(path) == pool.ledger.records
            await pool.chat("m", user("paid"))  # a cache hit is on record too
            assert on_disk(path)[-1].cached
            with pytest.raises(LLMCallError):
                await pool.chat("m", user("[[fault:400]] permanent"))
            with pytest.raises(LLMCallError):
                await pool.chat("m", user("[[fault:hang]] slow"), max_tokens=8)
            with pytest.raises(BudgetExceeded):
                await pool.chat("m", user("too dear"), max_tokens=200_000)
            server.set_outage("503")
            with pytest.raises(LLMCallError):
                await pool.chat("m", user("outage"))
            with pytest.raises(CircuitOpenError):
                await pool.chat("m", user("refused"))
            assert on_disk(path) == pool.ledger.records
    records = on_disk(path)
    assert len(records) == 7
    assert [r.cached for r in records] == [False, True, False, False, False, False, False]
    assert records[0].query_id == "q1" and records[0].agent == 0 and records[0].run_id == "r1"
    assert sum(r.cost_usd for r in records) == pytest.approx(budget.spent_usd, rel=1e-12)
    assert all(line.endswith("}") for line in path.read_text().splitlines())


async def test_pools_append_to_one_file_and_a_torn_last_line_is_skipped(server, tmp_path: Path):
    path = tmp_path / "ledger.jsonl"
    for run in ("first", "second"):
        async with LLMPool([spec_for(server)], run_id=run, ledger_path=path) as pool:
            await pool.chat("m", user(f"{run} call"))
    assert [r.run_id for r in on_disk(path)] == ["first", "second"]
    complete = path.read_text()
    path.write_text(complete + '{"llm": "m", "cost_usd": 0.00')  # a write cut short by a kill
    assert [r.run_id for r in on_disk(path)] == ["first", "second"]
    path.write_text('{"llm": broken}\n' + complete)  # damage elsewhere is an error
    with pytest.raises(json.JSONDecodeError):
        on_disk(path)


def test_an_unwritable_ledger_path_fails_when_the_pool_is_made(server, tmp_path: Path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    with pytest.raises(OSError):
        LLMPool([spec_for(server)], ledger_path=blocker / "ledger.jsonl")


CHILD_RUN = r"""
import asyncio, sys
from masr_graph.llm import CallContext, LLMPool, LLMSpec

base_url, ledger_path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])

async def main():
    spec = LLMSpec("m", "model-m", base_url, 3.0, 15.0, "loopback model", max_concurrency=4)
    pool = LLMPool([spec], ledger_path=ledger_path, run_id="killed")

    async def one(i):
        await pool.chat("m", [{"role": "user", "content": f"prompt {i}"}],
                        context=CallContext(query_id=str(i)))
        print(f"done {i}", flush=True)

    await asyncio.gather(*(one(i) for i in range(n)))
    print("finished", flush=True)

asyncio.run(main())
"""


def test_sigkill_mid_run_loses_no_settled_record(tmp_path: Path):
    n, kill_after = 60, 12
    path = tmp_path / "ledger.jsonl"
    with LoopbackServer(latency_s=0.04) as srv:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD_RUN, srv.base_url, str(path), str(n)],
            stdout=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        done: list[str] = []
        try:
            while len(done) < kill_after:
                line = child.stdout.readline()
                assert line.startswith("done "), f"child stopped early: {line!r}"
                done.append(line.split()[1])
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=30)
            child.stdout.close()
        assert child.returncode == -signal.SIGKILL
        answered = srv.completed_count
    records = on_disk(path)
    # Every call the child saw answered is on record (its line was written before `done`),
    # and so is every call the server answered and the child had read; nothing is duplicated.
    assert set(done) <= {r.query_id for r in records}
    assert kill_after <= len(records) <= answered < n
    assert len({r.query_id for r in records}) == len(records)
    assert all(r.error is None and r.cost_usd > 0 and r.run_id == "killed" for r in records)


async def test_open_runtime_writes_the_ledger_while_the_run_goes_on(server, tmp_path: Path):
    from masr_graph.benchmarks.experiment import open_runtime

    out = tmp_path / "run"
    async with open_runtime([spec_for(server)], out, run_id="live") as runtime:
        await runtime.pool.chat("m", user("during the run"))
        path = out / "ledgers" / "live.jsonl"
        assert on_disk(path) == runtime.pool.ledger.records  # before the runtime is closed
        await runtime.pool.chat("m", user("another"))
    assert on_disk(path) == runtime.pool.ledger.records and len(on_disk(path)) == 2


async def test_the_ledger_file_never_holds_the_api_key(server, tmp_path: Path, monkeypatch):
    secret = "sk-ledger-canary-7Hq2Lw9Zr4Xv0Nn3"
    monkeypatch.setenv("MASR_TEST_LEDGER_KEY", secret)
    path = tmp_path / "ledger.jsonl"

    def quote_the_key(body: dict[str, Any]) -> str:  # errors quoting the key, as some proxies do
        raise RuntimeError(f"bad key {secret}")

    server.responder = quote_the_key
    spec = spec_for(server, api_key_env="MASR_TEST_LEDGER_KEY")
    async with LLMPool([spec], ledger_path=path, max_attempts=2, backoff_base_s=0.001,
                       fail_fast_after=None, circuit_after=1) as pool:
        with pytest.raises(LLMCallError):
            await pool.chat("m", user("echo my key back"))
        with pytest.raises(CircuitOpenError):
            await pool.chat("m", user("refused"))
    assert {r.authorization for r in server.received} == {f"Bearer {secret}"}
    text = path.read_text()
    assert "<redacted>" in text and secret not in text


def test_totals_kept_as_records_are_added_match_a_fresh_sum(tmp_path: Path):
    """The running totals (what a grid's progress line reads twice a second) equal the sum over
    the records, for records added from several threads and records the ledger started with; a
    returned total is a copy, and a filtered total still sums only what it selects."""
    rng = random.Random(0)

    def record(i: int) -> CallRecord:
        return CallRecord(
            llm=f"llm{i % 3}", model="m", prompt_tokens=rng.randint(0, 900),
            completion_tokens=rng.randint(0, 300), cost_usd=rng.random() * 1e-3,
            would_have_cost_usd=rng.random() * 1e-3, latency_s=rng.random(),
            attempts=rng.randint(1, 3), cached=i % 4 == 0, usage_estimated=i % 5 == 0,
            billed_failed_usd=rng.random() * 1e-4 if i % 7 == 0 else 0.0,
            billed_failed_attempts=int(i % 7 == 0), estimated_usd=1e-5 * (i % 2),
            estimated_attempts=i % 2, cost_estimated=i % 2 == 1,
            error="timeout" if i % 9 == 0 else None)

    records = [record(i) for i in range(2000)]
    ledger = Ledger(records[:100], path=tmp_path / "ledger.jsonl")
    threads = [threading.Thread(target=lambda part=part: [ledger.add(r) for r in part])
               for part in (records[100:700], records[700:1400], records[1400:])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    expected = UsageTotals()
    for r in records:  # summed field by field, independently of the ledger's own summing
        for name in ("prompt_tokens", "completion_tokens", "attempts", "billed_failed_attempts",
                     "estimated_attempts"):
            setattr(expected, name, getattr(expected, name) + getattr(r, name))
        for name in ("cost_usd", "would_have_cost_usd", "latency_s", "billed_failed_usd",
                     "estimated_usd"):
            setattr(expected, name, getattr(expected, name) + getattr(r, name))
        expected.calls += 1
        expected.cached_calls += r.cached
        expected.failed_calls += r.error is not None
        expected.estimated_usage_calls += r.usage_estimated
        expected.estimated_cost_calls += r.cost_estimated
    totals = ledger.totals()
    for name, value in dataclasses.asdict(expected).items():
        assert getattr(totals, name) == pytest.approx(value, rel=1e-12), name
    assert totals.calls == 2000 and totals.failed_calls == sum(i % 9 == 0 for i in range(2000))

    totals.cost_usd = -1.0  # a copy: the ledger's own total is unchanged
    assert ledger.totals().cost_usd == pytest.approx(expected.cost_usd, rel=1e-12)
    cheap = ledger.totals(lambda r: r.llm == "llm0")
    assert cheap.calls == sum(1 for r in records if r.llm == "llm0")
    assert cheap.cost_usd == pytest.approx(sum(r.cost_usd for r in records if r.llm == "llm0"))
    # the 100 records it started with are not written, the 1900 added are
    assert len(Ledger.from_jsonl(tmp_path / "ledger.jsonl")) == 1900

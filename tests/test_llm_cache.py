"""ResponseCache: content addressing, free re-runs that report what they would have cost,
concurrent writers, and survival of a SIGKILL mid-run (a real child process)."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from loopback_server import LoopbackServer
from pool_support import loopback_spec, user
from masr_graph.errors import LLMCallError
from masr_graph.llm import CachedResponse, CallContext, LLMPool, ResponseCache, cache_key


spec_for = loopback_spec


BASE_KEY: dict[str, Any] = dict(
    model="gpt-4o-mini",
    base_url="https://api.openai.com/v1",
    messages=user("hello"),
    params={"max_tokens": 64, "temperature": 0.0, "seed": 1},
)


def key_with(**changes: Any) -> str:
    return cache_key(**{**BASE_KEY, **changes})


def test_key_is_stable_and_ignores_cosmetic_differences():
    assert key_with() == key_with()
    assert key_with(base_url="https://api.openai.com/v1/") == key_with()
    assert key_with(params={"seed": 1, "temperature": 0.0, "max_tokens": 64}) == key_with()
    assert key_with(params={**BASE_KEY["params"], "top_p": None}) == key_with()


@pytest.mark.parametrize(
    "changes",
    [
        {"model": "gpt-4o"},
        {"base_url": "https://openrouter.ai/api/v1"},
        {"messages": user("hello!")},
        {"messages": [{"role": "system", "content": "hello"}]},
        {"params": {"max_tokens": 65, "temperature": 0.0, "seed": 1}},
        {"params": {"max_tokens": 64, "temperature": 0.7, "seed": 1}},
        {"params": {"max_tokens": 64, "temperature": 0.0, "seed": 2}},
        {"params": {"max_tokens": 64, "temperature": 0.0}},
    ],
)
def test_key_changes_with_everything_that_determines_the_reply(changes):
    assert key_with(**changes) != key_with()


async def test_put_get_and_reopen(tmp_path: Path):
    path = tmp_path / "sub" / "cache.sqlite"
    entry = CachedResponse("répondu ✓", 12, 3, True, 0.00042, "stop")
    async with ResponseCache(path) as cache:
        assert await cache.get("k") is None
        await cache.put("k", "model-x", entry)
        await cache.put("k", "model-x", CachedResponse("second", 1, 1, False, 1.0))  # first wins
        assert await cache.get("k") == entry
    async with ResponseCache(path) as reopened:
        assert await reopened.get("k") == entry and await reopened.count() == 1
    with pytest.raises(RuntimeError, match="closed"):
        await reopened.get("k")
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_rerun_makes_no_calls_costs_nothing_and_reports_the_original_cost(server, tmp_path):
    prompts = [f"question {i}" for i in range(10)] + [
        "[[fault:no_usage]] estimated",
        "[[fault:empty_choicesx1]] billed",
    ]
    path = tmp_path / "cache.sqlite"
    async with (
        ResponseCache(path) as cache,
        LLMPool([spec_for(server)], cache=cache, backoff_base_s=0.001) as pool,
    ):
        first = [await pool.chat("m", user(p)) for p in prompts]
    assert server.call_count == len(prompts) + 1  # one retry for the empty reply
    server.reset()
    async with ResponseCache(path) as cache, LLMPool([spec_for(server)], cache=cache) as pool:
        context = CallContext(query_id="rerun", agent=3)  # not part of the key
        second = [await pool.chat("m", user(p), context=context) for p in prompts]
    assert server.call_count == 0
    for a, b in zip(first, second):
        assert b.text == a.text and b.record.cached and b.record.attempts == 0
        assert b.record.cost_usd == 0.0
        assert b.record.would_have_cost_usd == pytest.approx(a.record.cost_usd)
        assert (b.record.prompt_tokens, b.record.completion_tokens, b.record.usage_estimated) == (
            a.record.prompt_tokens,
            a.record.completion_tokens,
            a.record.usage_estimated,
        )
        assert (b.record.query_id, b.record.agent) == ("rerun", 3)
    totals = pool.ledger.totals()
    assert totals.cost_usd == 0.0 and totals.cached_calls == len(prompts)
    assert totals.would_have_cost_usd == pytest.approx(sum(r.record.cost_usd for r in first))
    assert totals.would_have_cost_usd > 0


async def test_failed_calls_are_not_cached(server, tmp_path):
    async with (
        ResponseCache(tmp_path / "c.sqlite") as cache,
        LLMPool([spec_for(server)], cache=cache) as pool,
    ):
        for _ in range(2):
            with pytest.raises(LLMCallError):
                await pool.chat("m", user("[[fault:400]] no"))
        assert await cache.count() == 0
    assert server.call_count == 2


async def test_concurrent_identical_calls_are_made_once(tmp_path):
    with LoopbackServer(latency_s=0.05) as srv:
        async with (
            ResponseCache(tmp_path / "c.sqlite") as cache,
            LLMPool([spec_for(srv)], cache=cache) as pool,
        ):
            results = await asyncio.gather(*(pool.chat("m", user("same")) for _ in range(20)))
        assert srv.call_count == 1
    assert sum(not r.record.cached for r in results) == 1
    assert {r.text for r in results} == {"echo: same"}


async def test_the_clusters_store_hands_a_released_claim_to_one_waiter_only(tmp_path):
    """Processes waiting on one key's claim (the shared store of the Ray grid): when the
    claimant gives up, exactly one waiter claims the key and pays; the others wait for its
    reply and get it from the store (woken together, none may slip through unclaimed)."""
    from masr_graph.llm.shared import ResponseStore

    store = ResponseStore(str(tmp_path / "shared.sqlite"))
    reply = CachedResponse("the reply", 10, 5, False, 0.001)
    assert await store.lookup("k", ("dead", "a")) is None  # claims "k"
    waiters = [asyncio.create_task(store.lookup("k", (f"unit{i}", "a"))) for i in range(5)]
    await asyncio.sleep(0.05)
    assert not any(w.done() for w in waiters)
    store.release("k", ("dead", "a"))
    await asyncio.sleep(0.05)
    claimants = [i for i, w in enumerate(waiters) if w.done()]
    assert len(claimants) == 1 and waiters[claimants[0]].result() is None
    await store.put("k", "model", reply, (f"unit{claimants[0]}", "a"))
    others = await asyncio.gather(*(w for i, w in enumerate(waiters) if i not in claimants))
    assert [hit.text for hit in others] == ["the reply"] * 4
    assert store.state()["misses"] == 2 and store.state()["open_claims"] == 0
    await store.close()


async def test_many_concurrent_writers_on_two_connections(tmp_path: Path):
    path = tmp_path / "c.sqlite"
    n = 300
    async with ResponseCache(path) as one, ResponseCache(path) as two:
        await asyncio.gather(
            *(
                cache.put(f"{name}-{i}", "m", CachedResponse(f"{name} {i}", i, 1, False, i * 1e-6))
                for i in range(n)
                for name, cache in (("one", one), ("two", two))
            )
        )
        assert await one.count() == 2 * n
        assert (await two.get("one-123")).text == "one 123"
        assert (await one.get("two-299")).cost_usd == pytest.approx(299e-6)
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


CHILD_RUN = r"""
import asyncio, sys
from masr_graph.llm import LLMPool, LLMSpec, ResponseCache

base_url, cache_path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])

async def main():
    spec = LLMSpec("m", "model-m", base_url, 3.0, 15.0, "loopback model", max_concurrency=4)
    pool = LLMPool([spec], cache=ResponseCache(cache_path))

    async def one(i):
        await pool.chat("m", [{"role": "user", "content": f"prompt {i}"}])
        print(f"done {i}", flush=True)

    await asyncio.gather(*(one(i) for i in range(n)))
    print("finished", flush=True)

asyncio.run(main())
"""


async def test_sigkill_mid_run_leaves_an_intact_cache_and_the_rerun_makes_only_missing_calls(
    tmp_path,
):
    n, kill_after = 60, 12
    path = tmp_path / "cache.sqlite"
    prompts = [f"prompt {i}" for i in range(n)]
    with LoopbackServer(latency_s=0.04) as srv:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD_RUN, srv.base_url, str(path), str(n)],
            stdout=subprocess.PIPE,
            text=True,
        )
        done: list[str] = []
        try:
            while len(done) < kill_after:
                line = child.stdout.readline()
                assert line.startswith("done "), f"child stopped early: {line!r}"
                done.append(f"prompt {line.split()[1]}")
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=30)
            child.stdout.close()
        assert child.returncode == -signal.SIGKILL
        first_run_calls = srv.call_count

        connection = sqlite3.connect(path)
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored = connection.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
        connection.close()
        assert kill_after <= stored < n  # everything returned was committed; the run was cut short
        assert first_run_calls < n

        srv.reset()
        async with ResponseCache(path) as cache, LLMPool([spec_for(srv)], cache=cache) as pool:
            results = await asyncio.gather(*(pool.chat("m", user(p)) for p in prompts))
        assert [r.text for r in results] == [f"echo: {p}" for p in prompts]
        rerun_prompts = {body["messages"][0]["content"] for body in srv.requests}
        assert srv.call_count == len(rerun_prompts) == n - stored
        assert rerun_prompts.isdisjoint(done)
        assert {p for p, r in zip(prompts, results) if r.record.cached} == set(
            prompts
        ) - rerun_prompts

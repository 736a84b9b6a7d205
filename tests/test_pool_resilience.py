"""What one endpoint's trouble does to every call to it, against a real server on 127.0.0.1: a
Retry-After or repeated 429s pause the whole endpoint (checked with the server's request
timestamps), a 429 halves its concurrency limit, and an outage opens its circuit — calls then fail
at once without a request, a reservation or a charge, until one trial request closes it."""

from __future__ import annotations

import asyncio
import re
import time
from functools import partial
from typing import Sequence

import pytest
from loopback_server import LoopbackServer, ReceivedRequest
from pool_support import fast_pool, loopback_spec, user

from masr_graph.errors import CircuitOpenError, LLMCallError, LLMUnavailableError
from masr_graph.llm import Budget, EndpointHealth, LLMPool
from masr_graph.llm.health import EndpointRefusal

# A request the client sent just before it read the 429 may reach the server just after it.
IN_FLIGHT_TOLERANCE_S = 0.04


spec_for = partial(loopback_spec, price_in=2.0, price_out=8.0, timeout_s=5.0)


def arrived_during(received: Sequence[ReceivedRequest], start: float, end: float
                   ) -> list[ReceivedRequest]:
    return [r for r in received if start + IN_FLIGHT_TOLERANCE_S < r.at < end]


# ----------------------------------------------------------------------------------- cooldown
async def test_a_retry_after_pauses_every_call_to_the_endpoint():
    with LoopbackServer(latency_s=0.05) as srv:
        async with fast_pool([spec_for(srv, max_concurrency=4)]) as pool:
            calls = [pool.chat("m", user("[[fault:429:retry_after=0.6x1]] first"))]
            calls += [pool.chat("m", user(f"q{i}")) for i in range(16)]
            results = await asyncio.gather(*calls)
        received, answers = srv.received, srv.answers
    assert [r.text for r in results[1:]] == [f"echo: q{i}" for i in range(16)]
    (throttled,) = [a for a in answers if a.status == 429]
    health = pool.health("m")
    (cooldown,) = [e for e in health.history if e.kind == "cooldown"]  # when the pool read it
    assert throttled.at <= cooldown.at < throttled.at + 0.05
    assert cooldown.until - cooldown.at == pytest.approx(0.6, abs=0.01)
    assert "HTTP 429" in cooldown.detail and "Retry-After 0.6s" in cooldown.detail
    # Before: only the throttled call waited. Now nothing reaches the endpoint for 0.6 s...
    assert arrived_during(received, cooldown.at, cooldown.until) == []
    # ...though most calls were still waiting to be sent (4 at a time, 50 ms each).
    assert sum(r.at >= cooldown.until for r in received) >= 10
    limits = [e.value for e in health.history if e.kind == "limit"]
    assert limits[0] == 2 and limits[-1] > 2  # halved by the 429, grown back by the answers


async def test_repeated_429s_without_retry_after_halve_the_limit_then_pause_the_endpoint():
    with LoopbackServer(latency_s=0.02) as srv:
        srv.set_outage("429")
        async with fast_pool([spec_for(srv, max_concurrency=8)], backoff_base_s=0.05,
                             max_attempts=40) as pool:
            calls = asyncio.gather(*(pool.chat("m", user(f"q{i}")) for i in range(8)))
            await asyncio.sleep(1.0)
            srv.set_outage(None)
            results = await calls
        received = srv.received
    assert [r.text for r in results] == [f"echo: q{i}" for i in range(8)]
    history = pool.health("m").history
    limits = [e.value for e in history if e.kind == "limit"]
    assert limits[:3] == [4, 2, 1]  # one halving per round, the in-flight echoes ignored
    cooldowns = [e for e in history if e.kind == "cooldown"]
    assert len(cooldowns) >= 3  # from the second round in a row on, doubling
    pauses = [e.until - e.at for e in cooldowns]
    assert pauses[:3] == pytest.approx([0.05, 0.1, 0.2], abs=0.005)
    for cooldown in cooldowns:  # no request was sent while the endpoint was cooling down
        assert arrived_during(received, cooldown.at, cooldown.until) == []
    # Without the shared pause each of the 8 calls would retry on its own backoff (~6 tries
    # each in 1 s); with it the endpoint saw a few requests per round.
    during_outage = [r for r in received if r.at < cooldowns[-1].until]
    assert len(during_outage) < 30
    assert pool.health("m").limit > 1  # answers after the outage grow the limit again


async def test_a_cooldown_longer_than_backoff_max_ends_other_calls_without_a_request(server):
    budget = Budget(1.0)
    async with fast_pool([spec_for(server)], budget=budget, backoff_max_s=1.0) as pool:
        with pytest.raises(LLMCallError, match="retry after 120s"):
            await pool.chat("m", user("[[fault:429:retry_after=120]] quota"))
        started = time.perf_counter()
        with pytest.raises(LLMCallError) as info:
            await pool.chat("m", user("another question"))
        assert time.perf_counter() - started < 0.2
    assert not isinstance(info.value, CircuitOpenError) and info.value.attempts == 0
    assert f"endpoint {server.base_url} is cooling down for" in str(info.value)
    assert "Retry-After 120s" in str(info.value) and "backoff_max_s=1" in str(info.value)
    assert server.call_count == 1
    assert budget.reserved_usd == 0 and pool.ledger.totals().cost_usd == budget.spent_usd == 0
    assert pool.ledger.records[-1].error == info.value.reason


async def test_a_call_cancelled_while_waiting_out_a_cooldown_holds_nothing():
    with LoopbackServer(latency_s=0.05) as srv:
        budget = Budget(1.0)
        async with fast_pool([spec_for(srv)], budget=budget) as pool:
            throttled = asyncio.create_task(
                pool.chat("m", user("[[fault:429:retry_after=0.8x1]] first")))
            while pool.health("m").cooldown_remaining_s() == 0:  # the 429 has been read
                await asyncio.sleep(0.005)
            waiting = asyncio.create_task(pool.chat("m", user("second")))
            await asyncio.sleep(0.1)
            assert pool.health("m").cooldown_remaining_s() > 0.5
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            assert pool.health("m").in_flight == 0 and budget.reserved_usd == 0
            assert (await throttled).text == "echo: [[fault:429:retry_after=0.8x1]] first"
    assert srv.call_count == 2  # the cancelled call never sent anything
    cancelled = [r for r in pool.ledger.records if r.error == "cancelled"]
    assert len(cancelled) == 1 and cancelled[0].attempts == 0 and cancelled[0].cost_usd == 0


# ------------------------------------------------------------------------------------ circuit
async def test_an_outage_opens_the_circuit_calls_fail_fast_and_one_trial_closes_it():
    with LoopbackServer() as srv:
        budget = Budget(1.0)
        async with fast_pool([spec_for(srv)], budget=budget, max_attempts=2, circuit_after=3,
                             circuit_open_s=0.4) as pool:
            assert (await pool.chat("m", user("healthy"))).text == "echo: healthy"
            srv.set_outage("503")
            for i in range(3):  # the failures that open it are ordinary failed calls
                with pytest.raises(LLMCallError) as info:
                    await pool.chat("m", user(f"down {i}"))
                assert not isinstance(info.value, CircuitOpenError)
            assert pool.health("m").state == "open"
            sent = srv.call_count
            assert sent == 1 + 3 * 2

            started = time.perf_counter()
            with pytest.raises(CircuitOpenError) as info:
                await pool.chat("m", user("refused"))
            assert time.perf_counter() - started < 0.1 and srv.call_count == sent
            error = info.value
            assert isinstance(error, LLMCallError) and error.attempts == 0  # runs carry on
            assert error.endpoint == srv.base_url and srv.base_url in str(error)
            assert "3 consecutive failed calls" in str(error) and "HTTP 503" in str(error)
            assert error.retry_at is not None and 0 < error.retry_at - time.time() <= 0.4
            assert re.search(r"next trial request is allowed in 0\.\d+s \(at \d\d:\d\d:\d\d\)",
                             str(error))
            record = pool.ledger.records[-1]
            assert record.error == error.reason and record.attempts == 0
            assert record.cost_usd == 0 and budget.reserved_usd == 0

            # Half-open: one trial request; it fails, so the circuit opens again.
            await asyncio.sleep(0.45)
            assert pool.health("m").state == "half-open"
            with pytest.raises(CircuitOpenError) as info:
                await pool.chat("m", user("trial fails"))
            assert info.value.attempts == 1 and srv.call_count == sent + 1
            assert pool.health("m").state == "open"

            # Recovery: after the next open period one trial is sent, the calls made while it
            # is in flight are refused, and its answer closes the circuit.
            srv.set_outage(None)
            await asyncio.sleep(0.45)
            outcomes = await asyncio.gather(*(pool.chat("m", user(f"back {i}")) for i in range(5)),
                                            return_exceptions=True)
            answered = [o for o in outcomes if not isinstance(o, BaseException)]
            refused = [o for o in outcomes if isinstance(o, CircuitOpenError)]
            assert len(answered) == 1 and len(refused) == 4
            assert all("half-open" in str(e) and e.retry_at is None for e in refused)
            assert srv.call_count == sent + 2
            assert pool.health("m").state == "closed"
            assert (await pool.chat("m", user("after"))).text == "echo: after"
    assert [e.kind for e in pool.health("m").history] == [
        "open", "half-open", "open", "half-open", "closed"]
    assert pool.ledger.totals().cost_usd == pytest.approx(budget.spent_usd, rel=1e-12)
    assert budget.reserved_usd == 0
    assert sum(r.error is not None and "circuit" in r.error for r in pool.ledger.records) == 6


async def test_the_circuit_protects_a_server_from_an_endpoint_that_never_answered():
    """``masr serve`` runs with fail_fast_after=None: the breaker, not fail-fast, stops the
    traffic, and its refusals stay per-call failures rather than stopping the server."""
    with LoopbackServer() as srv:
        srv.set_outage("500")
        async with fast_pool([spec_for(srv)], max_attempts=1, fail_fast_after=None,
                             circuit_after=2) as pool:
            for i in range(2):
                with pytest.raises(LLMCallError):
                    await pool.chat("m", user(f"{i}"))
            for i in range(5):
                with pytest.raises(CircuitOpenError):
                    await pool.chat("m", user(f"later {i}"))
        assert srv.call_count == 2
    # With fail-fast on (the default for runs) the same endpoint stops the run instead.
    with LoopbackServer() as srv:
        srv.set_outage("500")
        async with fast_pool([spec_for(srv)], max_attempts=1, fail_fast_after=2,
                             circuit_after=2) as pool:
            with pytest.raises(LLMCallError):
                await pool.chat("m", user("1"))
            with pytest.raises(LLMUnavailableError):
                await pool.chat("m", user("2"))
            with pytest.raises(LLMUnavailableError):
                await pool.chat("m", user("3"))


async def test_permanent_errors_and_a_flaky_endpoint_never_open_the_circuit():
    with LoopbackServer(fault_rate=0.3, fault_seed=11,
                        fault_mix=("500", "503", "429", "badjson", "drop", "empty_choices")) as srv:
        async with fast_pool([spec_for(srv, max_concurrency=8)], circuit_after=2) as pool:
            for i in range(4):  # the endpoint answers: the request was at fault
                with pytest.raises(LLMCallError) as info:
                    await pool.chat("m", user(f"[[fault:400]] bad {i}"))
                assert not isinstance(info.value, CircuitOpenError)
            outcomes = await asyncio.gather(
                *(pool.chat("m", user(f"question {i}")) for i in range(120)),
                return_exceptions=True)
        assert srv.fault_counts.get("500", 0) > 5
    assert not any(isinstance(o, CircuitOpenError) for o in outcomes)
    # Seed 11 dooms 4 of the 120 calls (all 4 attempts drawn faulty); they fail for good one
    # after the other at the end of the batch, but while the endpoint was answering others.
    failed = [o for o in outcomes if isinstance(o, LLMCallError)]
    assert len(failed) == 4 and pool.health("m").consecutive_failures == 0
    assert "open" not in [e.kind for e in pool.health("m").history]


async def test_a_cancelled_trial_lets_the_next_call_probe():
    with LoopbackServer() as srv:
        srv.set_outage("503")
        async with fast_pool([spec_for(srv, timeout_s=30.0)], max_attempts=1, circuit_after=1,
                             circuit_open_s=0.2, fail_fast_after=None) as pool:
            with pytest.raises(LLMCallError):
                await pool.chat("m", user("opens it"))
            srv.set_outage("hang")
            await asyncio.sleep(0.25)
            trial = asyncio.create_task(pool.chat("m", user("trial hangs")))
            while srv.call_count < 2:
                await asyncio.sleep(0.01)
            with pytest.raises(CircuitOpenError, match="half-open"):
                await pool.chat("m", user("while the trial is out"))
            trial.cancel()
            with pytest.raises(asyncio.CancelledError):
                await trial
            srv.set_outage(None)
            assert (await pool.chat("m", user("next probe"))).text == "echo: next probe"
            assert pool.health("m").state == "closed"


async def test_llms_sharing_an_endpoint_share_its_health():
    with LoopbackServer() as srv:
        specs = [spec_for(srv, name="a"), spec_for(srv, name="b")]
        async with fast_pool(specs, max_attempts=1, circuit_after=2, fail_fast_after=None) as pool:
            await pool.chat("a", user("hello"))
            srv.set_outage("502")
            for name in ("a", "b"):
                with pytest.raises(LLMCallError):
                    await pool.chat(name, user(f"{name} down"))
            with pytest.raises(CircuitOpenError):
                await pool.chat("b", user("b refused"))
            assert pool.health("a") is pool.health("b")


def test_circuit_settings_are_validated(server):
    spec = spec_for(server)
    with pytest.raises(ValueError, match=r"circuit_after must be an integer >= 1 or None"):
        LLMPool([spec], circuit_after=0)
    with pytest.raises(ValueError, match=r"circuit_open_s must be a finite number of seconds > 0"):
        LLMPool([spec], circuit_open_s=0)


# ------------------------------------------------------------------------- the policy itself
class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_aimd_halves_once_per_round_and_grows_by_one_per_window_of_answers():
    clock = FakeClock()
    health = EndpointHealth("http://x/v1", 16, throttle_base_s=1.0, throttle_max_s=8.0,
                            clock=clock)
    permits = [await health.admit(10.0) for _ in range(16)]
    assert health.in_flight == 16
    for permit in permits:  # 16 requests of one round all throttled: one reaction
        health.on_throttle(permit, None, "HTTP 429")
        health.release(permit)
    assert health.limit == 8 and health.cooldown_remaining_s() == 0  # first round: no pause
    second = await health.admit(10.0)
    health.on_throttle(second, None, "HTTP 429")
    health.release(second)
    assert health.limit == 4 and health.cooldown_remaining_s() == pytest.approx(1.0)
    clock.now += 1.0
    for _ in range(4):  # 4 answers at limit 4: +1
        permit = await health.admit(10.0)
        health.on_answer(permit)
        health.release(permit)
    assert health.limit == 5
    third = await health.admit(10.0)  # a success reset the rounds: the next 429 does not pause
    health.on_throttle(third, None, "HTTP 429")
    health.release(third)
    assert health.limit == 2 and health.cooldown_remaining_s() == 0


async def test_the_adaptive_limit_queues_attempts_in_order():
    health = EndpointHealth("http://x/v1", 2)
    first, second = await health.admit(1.0), await health.admit(1.0)
    order: list[int] = []

    async def waiter(i: int) -> None:
        permit = await health.admit(1.0)
        order.append(i)
        health.release(permit)

    waiting = [asyncio.create_task(waiter(i)) for i in range(3)]
    await asyncio.sleep(0.01)
    assert order == [] and health.in_flight == 2
    health.release(first)
    health.release(second)
    await asyncio.gather(*waiting)
    assert order == [0, 1, 2] and health.in_flight == 0


async def test_an_open_circuit_refuses_queued_attempts_too():
    health = EndpointHealth("http://x/v1", 1, circuit_after=1, circuit_open_s=5.0)
    holder = await health.admit(1.0)
    queued = asyncio.create_task(health.admit(1.0))
    await asyncio.sleep(0.01)
    health.on_call_failed("HTTP 503: down", health.answers)
    with pytest.raises(EndpointRefusal, match=r"circuit of endpoint http://x/v1 is open"):
        await queued
    health.release(holder)
    assert health.in_flight == 0

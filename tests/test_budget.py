"""The budget cap: reservations, refusal before the call, the cap under concurrency, cache hits
for free, and unknown-outcome attempts held at their worst case."""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any

import pytest

from loopback_server import LoopbackServer, count_tokens
from pool_support import loopback_spec, user
from masr_graph.errors import BudgetExceeded, LLMCallError
from masr_graph.llm import (
    Budget,
    CallContext,
    Completion,
    LLMPool,
    LLMSpec,
    ResponseCache,
    estimate_prompt_tokens,
    prompt_tokens_upper_bound,
    register_transport,
)

PRICE = 1000.0  # $ per 1M tokens, so one token costs $0.001


spec_for = partial(loopback_spec, price_in=PRICE, price_out=PRICE)


# ------------------------------------------------------------------------------ Budget itself


async def test_reserve_and_settle_track_spent_and_reserved():
    budget = Budget(1.0)
    first = await budget.reserve(0.4, "a")
    second = await budget.reserve(0.5, "b")
    assert budget.reserved_usd == pytest.approx(0.9) and budget.remaining_usd == pytest.approx(0.1)
    budget.settle(first, 0.1)
    budget.settle(second, 0.2)
    assert budget.spent_usd == pytest.approx(0.3) and budget.reserved_usd == 0.0
    with pytest.raises(RuntimeError, match="settled twice"):
        budget.settle(first, 0.1)


async def test_reserve_refuses_what_spent_money_leaves_no_room_for():
    budget = Budget(1.0)
    budget.settle(await budget.reserve(0.8), 0.8)
    with pytest.raises(BudgetExceeded) as info:
        await budget.reserve(0.3, "gpt-4o")
    error = info.value
    assert (error.cap_usd, error.needed_usd, error.llm) == (1.0, 0.3, "gpt-4o")
    assert "'gpt-4o'" in str(error) and budget.reserved_usd == 0.0
    budget.settle(await budget.reserve(0.2), 0.2)  # what still fits is allowed
    assert budget.spent_usd == pytest.approx(1.0)


async def test_a_reservation_blocked_by_in_flight_ones_waits_for_them():
    budget = Budget(1.0)
    held = await budget.reserve(0.7)
    waiter = asyncio.create_task(budget.reserve(0.5))
    await asyncio.sleep(0.01)
    assert not waiter.done()  # 0.7 reserved + 0.5 would pass the cap
    budget.settle(held, 0.2)  # the call cost less than its worst case: room again
    reservation = await asyncio.wait_for(waiter, 1.0)
    assert budget.reserved_usd == pytest.approx(0.5) and budget.spent_usd == pytest.approx(0.2)
    budget.settle(reservation, 0.5)


async def test_a_waiting_reservation_fails_once_the_settled_cost_leaves_no_room():
    budget = Budget(1.0)
    held = await budget.reserve(0.7)
    waiter = asyncio.create_task(budget.reserve(0.5))
    await asyncio.sleep(0.01)
    budget.settle(held, 0.7)
    with pytest.raises(BudgetExceeded):
        await asyncio.wait_for(waiter, 1.0)


@pytest.mark.parametrize("cap", [-1.0, float("inf"), float("nan"), "5", True])
def test_invalid_caps_are_rejected(cap):
    with pytest.raises(ValueError, match="max_usd"):
        Budget(cap)


def test_prompt_bound_is_above_the_estimate_and_byte_count():
    for text in ("hello world", "数学题：二加二等于几？", "emoji 🚀🚀🚀 and ümlauts", "x" * 5000):
        messages = [{"role": "system", "content": "solve"}, {"role": "user", "content": text}]
        bound = prompt_tokens_upper_bound(messages)
        assert bound >= estimate_prompt_tokens(messages)
        assert bound >= sum(len(m["content"].encode()) for m in messages)
        assert bound >= sum(count_tokens(m["content"]) + 3 for m in messages)  # the server's rule


# --------------------------------------------------------------------------- Budget in a pool


async def test_cap_is_never_exceeded_under_concurrency_and_results_so_far_are_kept():
    def responder(body: dict[str, Any]) -> str:
        index = int(body["messages"][0]["content"].split()[-1])
        return " ".join(["word"] * (5 + index % 20))  # 5..24 completion tokens

    cap = 1.0
    with LoopbackServer(responder=responder, latency_s=0.02) as srv:
        spec = spec_for(srv, max_concurrency=16)
        budget = Budget(cap)
        async with LLMPool([spec], budget=budget) as pool:
            results = await asyncio.gather(
                *(
                    pool.chat(
                        "m", user(f"item {i}"), max_tokens=40, context=CallContext(query_id=str(i))
                    )
                    for i in range(100)
                ),
                return_exceptions=True,
            )
        succeeded = [r for r in results if not isinstance(r, BaseException)]
        refused = [r for r in results if isinstance(r, BaseException)]
        assert refused and all(isinstance(r, BudgetExceeded) for r in refused)
        # Refused calls were never sent; every answer received was kept.
        assert srv.call_count == len(succeeded)
        assert all(r.text.startswith("word") for r in succeeded)
    ledger_cost = pool.ledger.totals().cost_usd
    assert ledger_cost <= cap and budget.spent_usd <= cap
    assert ledger_cost == pytest.approx(sum(r.record.cost_usd for r in succeeded))
    assert pool.ledger.totals().calls == 100  # refusals are recorded too
    worst = spec.cost_usd(prompt_tokens_upper_bound(user("item 10")), 40)
    # Waiting for in-flight reservations to settle fits far more calls than worst cases would.
    assert len(succeeded) > 2 * int(cap / worst)
    assert cap - ledger_cost < worst  # and stops only when the next worst case cannot fit


async def test_budget_exceeded_is_raised_before_the_call_and_recorded(server):
    messages = user("too expensive")
    spec = spec_for(server)
    worst = spec.cost_usd(prompt_tokens_upper_bound(messages), 512)
    async with LLMPool([spec], budget=Budget(worst * 0.99)) as pool:
        with pytest.raises(BudgetExceeded) as info:
            await pool.chat("m", messages, max_tokens=512, context=CallContext(query_id="q"))
        assert server.call_count == 0
        assert info.value.needed_usd == pytest.approx(worst)
        # A smaller request still fits under the same cap.
        await pool.chat("m", messages, max_tokens=256)
    refusal, success = pool.ledger.records
    assert refusal.attempts == 0 and refusal.error.startswith("budget") and refusal.query_id == "q"
    assert success.error is None and server.call_count == 1


class ObservingTransport:
    """Records the budget's reservation while each attempt is in flight."""

    budget: Budget | None = None
    seen_reserved: list[float] = []

    def __init__(self, specs: list[LLMSpec]):
        pass

    async def complete(self, spec, messages, params, context) -> Completion:
        assert self.budget is not None
        ObservingTransport.seen_reserved.append(self.budget.reserved_usd)
        return Completion("ok", prompt_tokens=3, completion_tokens=1)

    async def aclose(self) -> None:
        pass


register_transport("test-observing", ObservingTransport)


async def test_reservation_is_the_worst_case_of_prompt_bound_and_max_tokens():
    spec = LLMSpec("o", "o", "test-observing://x", price_in=2.0, price_out=6.0, description="d")
    messages = [{"role": "system", "content": "be exact"}, {"role": "user", "content": "ünï 🚀"}]
    ObservingTransport.budget = budget = Budget(10.0)
    ObservingTransport.seen_reserved = []
    async with LLMPool([spec], budget=budget) as pool:
        result = await pool.chat("o", messages, max_tokens=300)
    expected = (prompt_tokens_upper_bound(messages) * 2.0 + 300 * 6.0) / 1e6
    assert ObservingTransport.seen_reserved == [pytest.approx(expected)]
    assert budget.reserved_usd == 0.0
    assert (
        budget.spent_usd
        == pytest.approx(result.record.cost_usd)
        == pytest.approx((3 * 2.0 + 6.0) / 1e6)
    )


async def test_cache_hits_need_no_budget(server, tmp_path):
    async with ResponseCache(tmp_path / "c.sqlite") as cache:
        async with LLMPool([spec_for(server)], cache=cache) as pool:
            for i in range(5):
                await pool.chat("m", user(f"cached {i}"))
        async with LLMPool([spec_for(server)], cache=cache, budget=Budget(0.0)) as pool:
            for i in range(5):
                assert (await pool.chat("m", user(f"cached {i}"))).record.cached
            with pytest.raises(BudgetExceeded):
                await pool.chat("m", user("not cached"))
    assert server.call_count == 5


async def test_attempts_with_unknown_outcome_stay_charged_at_their_worst_case(server):
    spec = spec_for(server, timeout_s=1.0)
    messages = user("[[fault:hangx1]] slow")
    worst = spec.cost_usd(prompt_tokens_upper_bound(messages), 50)
    budget = Budget(1.0)
    async with LLMPool([spec], budget=budget, backoff_base_s=0.001) as pool:
        result = await pool.chat("m", messages, max_tokens=50)
    record = result.record
    assert record.attempts == 2
    # The timed-out request may still be billed by the provider: the budget keeps its worst case,
    # and the ledger records the same amount for it, marked as an estimate.
    assert record.estimated_attempts == 1 and record.cost_estimated
    assert record.estimated_usd == pytest.approx(worst)
    assert budget.spent_usd == pytest.approx(record.cost_usd)
    assert record.cost_usd - record.estimated_usd < worst  # the answered attempt cost less


async def test_refusal_between_retries_keeps_the_billed_failures_on_record(server):
    spec = spec_for(server)
    messages = user("[[fault:empty_choices]] never answers")
    worst = spec.cost_usd(prompt_tokens_upper_bound(messages), 100)
    billed_each = spec.cost_usd(count_tokens(messages[0]["content"]) + 3, 1)
    # Room for the first attempt's worst case, not for a second one after its billed cost.
    budget = Budget(worst + billed_each / 2)
    async with LLMPool([spec], budget=budget, backoff_base_s=0.001) as pool:
        with pytest.raises(BudgetExceeded):
            await pool.chat("m", messages, max_tokens=100)
    (record,) = pool.ledger.records
    assert record.attempts == 1 and record.billed_failed_attempts == 1
    assert record.cost_usd == pytest.approx(billed_each) == pytest.approx(budget.spent_usd)
    assert server.call_count == 1
    assert record.error is not None and "budget" in record.error


async def test_failed_calls_release_their_reservation(server):
    budget = Budget(1.0)
    async with LLMPool([spec_for(server)], budget=budget) as pool:
        with pytest.raises(LLMCallError):
            await pool.chat("m", user("[[fault:400]] rejected"))
    assert budget.reserved_usd == 0.0 and budget.spent_usd == 0.0


async def test_refused_connections_are_retried_and_not_charged():
    with LoopbackServer() as srv:
        spec = spec_for(srv)
    budget = Budget(1.0)  # the server is gone: its port now refuses connections
    async with LLMPool([spec], budget=budget, max_attempts=2, backoff_base_s=0.001) as pool:
        with pytest.raises(LLMCallError) as info:
            await pool.chat("m", user("anyone?"))
    assert info.value.attempts == 2
    assert "connection error (ConnectionRefusedError" in info.value.reason
    assert budget.spent_usd == 0.0 and budget.reserved_usd == 0.0

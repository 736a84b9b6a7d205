"""LLMPool against a real OpenAI-compatible server on 127.0.0.1: replies, records, every injected
fault, retries and backoff, the concurrency limit, connection reuse, the ledger, key hygiene, and
the transport registry."""

from __future__ import annotations

import asyncio
import logging
import os
import re
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from loopback_server import LoopbackServer
from pool_support import fast_pool, loopback_spec, user
from masr_graph.errors import ConfigError, LLMCallError, UnknownLLMError
from masr_graph.llm import (
    CallContext,
    Completion,
    Ledger,
    LLMPool,
    LLMSpec,
    ResponseCache,
    TransientError,
    estimate_prompt_tokens,
    estimate_text_tokens,
    prompt_tokens_upper_bound,
    register_transport,
)

PRICE_IN, PRICE_OUT = 2.0, 8.0  # $ per 1M tokens


spec_for = partial(loopback_spec, price_in=PRICE_IN, price_out=PRICE_OUT, timeout_s=2.0)


def server_cost(prompt_words: int, reply_words: int, messages: int = 1) -> float:
    """Cost under the loopback server's usage rule (words + 3 per message)."""
    return ((prompt_words + 3 * messages) * PRICE_IN + reply_words * PRICE_OUT) / 1e6


async def test_reply_record_and_request_contents(server: LoopbackServer):
    context = CallContext(query_id="q7", agent=2, round=1, kind="decision", run_id="run-a")
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "two plus two"},
    ]
    async with fast_pool([spec_for(server)]) as pool:
        result = await pool.chat(
            "m", messages, max_tokens=64, temperature=0.3, seed=11, context=context
        )
    assert result.text == "echo: two plus two"
    record = result.record
    assert (record.llm, record.model, record.attempts, record.cached) == ("m", "model-m", 1, False)
    assert (record.prompt_tokens, record.completion_tokens) == (2 + 3 + 3 + 3, 4)
    assert record.cost_usd == pytest.approx(server_cost(5, 4, messages=2))
    assert record.would_have_cost_usd == record.cost_usd
    assert not record.usage_estimated and record.error is None and record.latency_s > 0
    assert (record.query_id, record.agent, record.round, record.kind, record.run_id) == (
        "q7",
        2,
        1,
        "decision",
        "run-a",
    )
    (body,) = server.requests
    assert body["model"] == "model-m" and body["messages"] == messages
    assert (body["max_tokens"], body["temperature"], body["seed"]) == (64, 0.3, 11)
    assert pool.ledger.records == [record]


async def test_pool_run_id_is_used_when_the_context_has_none(server: LoopbackServer):
    async with fast_pool([spec_for(server)], run_id="nightly") as pool:
        result = await pool.chat("m", user("hi"))
    assert result.record.run_id == "nightly"


@pytest.mark.parametrize(
    "marker, attempts, unknown_outcomes",
    [
        ("[[fault:429:retry_after=0.05x1]]", 2, 0),
        ("[[fault:500x2]]", 3, 0),
        ("[[fault:503x1]]", 2, 0),
        ("[[fault:badjsonx2]]", 3, 2),
        ("[[fault:dropx1]]", 2, 1),
        ("[[fault:hangx1]]", 2, 1),
    ],
)
async def test_transient_faults_are_retried_until_success(server: LoopbackServer, marker, attempts,
                                                          unknown_outcomes):
    messages = user(f"{marker} hello")
    async with fast_pool([spec_for(server, timeout_s=1.0)]) as pool:
        result = await pool.chat("m", messages)
    record = result.record
    assert result.text == f"echo: {marker} hello"
    assert record.attempts == attempts == server.call_count
    assert record.error is None
    assert record.billed_failed_attempts == 0 and record.billed_failed_usd == 0
    # A status error was not billed; an attempt of unknown outcome is charged its worst case.
    worst = spec_for(server).cost_usd(prompt_tokens_upper_bound(messages), 512)
    assert record.estimated_attempts == unknown_outcomes
    assert record.estimated_usd == pytest.approx(unknown_outcomes * worst)
    assert record.cost_estimated == (unknown_outcomes > 0)
    assert record.cost_usd == pytest.approx(server_cost(2, 3) + unknown_outcomes * worst)


async def test_empty_choices_is_retried_and_its_billed_usage_is_counted(server: LoopbackServer):
    async with fast_pool([spec_for(server)]) as pool:
        result = await pool.chat("m", user("[[fault:empty_choicesx2]] hello"))
    record = result.record
    assert record.attempts == 3 and record.billed_failed_attempts == 2
    # The server bills an empty reply as 1 completion token.
    billed_each = server_cost(2, 1)
    assert record.billed_failed_usd == pytest.approx(2 * billed_each)
    assert record.cost_usd == pytest.approx(server_cost(2, 3) + 2 * billed_each)
    totals = pool.ledger.totals()
    assert totals.billed_failed_attempts == 2
    assert totals.billed_failed_usd == pytest.approx(2 * billed_each)


async def test_missing_usage_is_estimated_and_marked(server: LoopbackServer):
    messages = user("[[fault:no_usage]] how many tokens is this?")
    async with fast_pool([spec_for(server)]) as pool:
        result = await pool.chat("m", messages)
    record = result.record
    assert record.usage_estimated and record.attempts == 1
    assert record.prompt_tokens == estimate_prompt_tokens(messages)
    assert record.completion_tokens == estimate_text_tokens(result.text)
    assert record.cost_usd == pytest.approx(
        (record.prompt_tokens * PRICE_IN + record.completion_tokens * PRICE_OUT) / 1e6
    )
    assert record.cost_usd > 0
    assert pool.ledger.totals().estimated_usage_calls == 1


async def test_retry_after_is_honoured(server: LoopbackServer):
    async with fast_pool([spec_for(server)], backoff_base_s=0.0) as pool:
        await pool.chat("m", user("[[fault:429:retry_after=0.4x1]] wait for me"))
    first, second = server.received
    assert second.at - first.at >= 0.4


async def test_retry_after_longer_than_backoff_max_ends_the_call(server: LoopbackServer):
    async with fast_pool([spec_for(server)], backoff_max_s=1.0) as pool:
        with pytest.raises(LLMCallError) as info:
            await pool.chat("m", user("[[fault:429:retry_after=120]] later"))
    assert info.value.attempts == 1 and server.call_count == 1
    assert "HTTP 429" in info.value.reason and "retry after 120s" in info.value.reason


async def test_backoff_grows_exponentially_with_jitter(server: LoopbackServer):
    base = 0.08
    async with fast_pool([spec_for(server)], backoff_base_s=base, backoff_max_s=10.0) as pool:
        await pool.chat("m", user("[[fault:500x3]] slow down"))
    arrivals = [r.at for r in server.received]
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    for attempt, gap in enumerate(gaps, start=1):
        step = base * 2 ** (attempt - 1)
        assert step / 2 <= gap <= step + 0.5, (attempt, gaps)


async def test_exhausted_retries_raise_a_typed_error_naming_model_and_reason(
    server: LoopbackServer,
):
    async with fast_pool([spec_for(server, name="flaky")], max_attempts=3) as pool:
        with pytest.raises(LLMCallError) as info:
            await pool.chat(
                "flaky", user("[[fault:500]] never works"), context=CallContext(query_id="q1")
            )
    error = info.value
    assert (error.llm, error.attempts) == ("flaky", 3)
    assert "HTTP 500" in error.reason and "'flaky'" in str(error)
    assert server.call_count == 3
    (record,) = pool.ledger.records
    assert record.error == error.reason and record.attempts == 3 and record.query_id == "q1"
    assert record.cost_usd == 0.0 and pool.ledger.totals().failed_calls == 1


async def test_permanent_http_errors_are_not_retried(server: LoopbackServer):
    async with fast_pool([spec_for(server)]) as pool:
        with pytest.raises(LLMCallError) as info:
            await pool.chat("m", user("[[fault:400]] bad request"))
    assert info.value.attempts == 1 and server.call_count == 1
    assert "400" in info.value.reason
    assert isinstance(info.value.__cause__, Exception)


async def test_timeout_applies_even_when_the_server_never_answers(server: LoopbackServer):
    async with fast_pool([spec_for(server, timeout_s=0.2)], max_attempts=2) as pool:
        with pytest.raises(LLMCallError) as info:
            await pool.chat("m", user("[[fault:hang]] are you there"))
    assert info.value.attempts == 2 and "timeout after 0.2s" in info.value.reason
    assert pool.ledger.records[0].latency_s < 3.0


async def test_a_batch_with_every_fault_completes_and_is_fully_accounted(server: LoopbackServer):
    markers = [
        "",
        "[[fault:429:retry_after=0.05x1]]",
        "[[fault:500x1]]",
        "[[fault:hangx1]]",
        "[[fault:badjsonx1]]",
        "[[fault:empty_choicesx1]]",
        "[[fault:no_usage]]",
        "[[fault:dropx1]]",
        "[[fault:400]]",
        "[[fault:500]]",
    ]
    prompts = [f"{marker} item {i}" for i in range(3) for marker in markers]
    async with fast_pool([spec_for(server, timeout_s=1.0)], max_attempts=3) as pool:
        results = await asyncio.gather(
            *(pool.chat("m", user(p), context=CallContext(query_id=p)) for p in prompts),
            return_exceptions=True,
        )
    failures = [p for p, r in zip(prompts, results) if isinstance(r, BaseException)]
    assert all(isinstance(r, LLMCallError) for r in results if isinstance(r, BaseException))
    assert sorted(failures) == sorted(p for p in prompts if "400" in p or "[[fault:500]]" in p)
    for prompt, result in zip(prompts, results):
        if not isinstance(result, BaseException):
            assert result.text == f"echo: {prompt}"
    totals = pool.ledger.totals()
    assert totals.calls == len(prompts) and totals.failed_calls == len(failures) == 6
    assert totals.billed_failed_attempts == 3  # one empty_choices fault per item


async def test_concurrency_is_limited_per_endpoint_by_the_smallest_spec_limit():
    with LoopbackServer(latency_s=0.05) as srv:
        specs = [spec_for(srv, "a", max_concurrency=3), spec_for(srv, "b", max_concurrency=8)]
        async with fast_pool(specs) as pool:
            assert pool.endpoint_limit("b") == 3
            await asyncio.gather(*(pool.chat("ab"[i % 2], user(f"q{i}")) for i in range(24)))
        assert srv.call_count == 24
        assert srv.max_in_flight == 3


async def test_separate_endpoints_have_separate_limits():
    with LoopbackServer(latency_s=0.05) as one, LoopbackServer(latency_s=0.05) as two:
        specs = [spec_for(one, "a", max_concurrency=2), spec_for(two, "b", max_concurrency=4)]
        async with fast_pool(specs) as pool:
            await asyncio.gather(*(pool.chat("ab"[i % 2], user(f"q{i}")) for i in range(24)))
        assert (one.max_in_flight, two.max_in_flight) == (2, 4)


async def test_one_client_per_endpoint_reuses_its_connection(server: LoopbackServer):
    async with fast_pool([spec_for(server, "a"), spec_for(server, "b")]) as pool:
        for i in range(6):
            await pool.chat("ab"[i % 2], user(f"sequential {i}"))
    assert len({r.peer for r in server.received}) == 1


async def test_unknown_llm_lists_the_pool(server: LoopbackServer):
    async with fast_pool([spec_for(server, "alpha"), spec_for(server, "beta")]) as pool:
        with pytest.raises(UnknownLLMError) as info:
            await pool.chat("gamma", user("hi"))
    assert "'gamma'" in str(info.value) and "alpha, beta" in str(info.value)
    assert server.call_count == 0


@pytest.mark.parametrize(
    "messages, kwargs, expected",
    [
        ("hello", {}, "non-empty list"),
        ([], {}, "non-empty list"),
        ([{"role": "robot", "content": "x"}], {}, "messages[0]"),
        ([{"role": "user", "content": "x", "name": "n"}], {}, "messages[0]"),
        ([{"role": "user", "content": 3}], {}, "messages[0]"),
        (user("x"), {"max_tokens": 0}, "max_tokens"),
        (user("x"), {"max_tokens": True}, "max_tokens"),
        (user("x"), {"temperature": 3.0}, "temperature"),
        (user("x"), {"seed": "7"}, "seed"),
    ],
)
async def test_malformed_requests_are_rejected_before_sending(server, messages, kwargs, expected):
    async with fast_pool([spec_for(server)]) as pool:
        with pytest.raises(ValueError, match=re.escape(expected)):
            await pool.chat("m", messages, **kwargs)
    assert server.call_count == 0


def test_pool_construction_validates_its_arguments(server: LoopbackServer):
    spec = spec_for(server)
    with pytest.raises(ConfigError, match="duplicate LLM name 'm'"):
        LLMPool([spec, spec])
    with pytest.raises(ConfigError, match="at least one"):
        LLMPool([])
    # counts are ints >= 1: not 0, not a float, not True (an int to Python)
    for argument in ("max_attempts", "fail_fast_after", "circuit_after"):
        for bad in (0, 2.0, True):
            with pytest.raises(ValueError, match=f"{argument} must be an integer >= 1"):
                LLMPool([spec], **{argument: bad})
    with pytest.raises(ValueError, match="backoff"):
        LLMPool([spec], backoff_base_s=2.0, backoff_max_s=1.0)
    with pytest.raises(ConfigError, match=r"no transport for base_url scheme 'nosuch'.*'https'"):
        LLMPool([spec_for(server, base_url="nosuch://x")])


async def test_api_key_never_reaches_cache_ledger_or_logs(
    server, tmp_path: Path, monkeypatch, caplog
):
    secret = "sk-test-Zq8vV3secretValue0123456789"
    monkeypatch.setenv("MASR_TEST_KEY", secret)
    caplog.set_level(logging.DEBUG)  # every logger, the SDK's and httpx's included
    spec = spec_for(server, api_key_env="MASR_TEST_KEY")
    cache_path = tmp_path / "cache.sqlite"
    async with ResponseCache(cache_path) as cache:
        # The persisted ledger (written as calls settle) lands in tmp_path with the others.
        async with fast_pool([spec], cache=cache, ledger_path=tmp_path / "persisted.jsonl") as pool:
            await pool.chat("m", user("[[fault:500x1]] keep my secret"))
            await pool.chat("m", user("another"))
            with pytest.raises(LLMCallError):
                await pool.chat("m", user("[[fault:401]] rejected"))
            pool.ledger.to_jsonl(tmp_path / "ledger.jsonl")
    assert {r.authorization for r in server.received} == {f"Bearer {secret}"}  # the key was used
    stored = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert b"keep my secret" in stored  # the files hold the replies and records...
    assert secret.encode() not in stored  # ...but never the key
    assert any(r.levelno == logging.WARNING for r in caplog.records)  # the retry was logged
    assert any(r.name.startswith("openai") for r in caplog.records)  # and the SDK's debug lines
    assert secret not in caplog.text


class KeyEchoingTransport:
    """A backend whose errors quote the credential, as some proxies do."""

    def __init__(self, specs: list[LLMSpec]):
        self.transient_left = 1

    async def complete(self, spec, messages, params, context) -> Completion:
        key = os.environ[spec.api_key_env]
        if self.transient_left:
            self.transient_left -= 1
            raise TransientError(f"proxy says: bad key {key}")
        raise RuntimeError(f"invalid credential {key!r}")

    async def aclose(self) -> None:
        pass


register_transport("test-key-echo", KeyEchoingTransport)


async def test_a_key_echoed_in_an_error_is_redacted_everywhere(monkeypatch, caplog, tmp_path):
    secret = "sk-echo-9f8e7d6c5b4a39281706"
    monkeypatch.setenv("MASR_TEST_ECHO_KEY", secret)
    spec = LLMSpec("e", "e", "test-key-echo://x", 1.0, 1.0, "d", api_key_env="MASR_TEST_ECHO_KEY")
    ledger_file = tmp_path / "ledger.jsonl"
    async with fast_pool([spec], ledger_path=ledger_file) as pool:
        with pytest.raises(LLMCallError) as info:
            await pool.chat("e", user("hi"))
    assert "invalid credential '<redacted>'" in str(info.value) and secret not in str(info.value)
    assert info.value.__cause__ is None and info.value.attempts == 2
    assert "bad key <redacted>" in caplog.text and secret not in caplog.text
    assert secret not in repr(pool.ledger.records)
    assert "<redacted>" in ledger_file.read_text() and secret not in ledger_file.read_text()


# ------------------------------------------------------------------------------------- ledger


async def test_ledger_totals_per_run_query_and_agent_and_jsonl_round_trip(server, tmp_path: Path):
    async with fast_pool([spec_for(server)], run_id="r1") as pool:
        for query in ("q1", "q2"):
            for agent in (0, 1, None):
                await pool.chat(
                    "m", user(f"{query} {agent}"), context=CallContext(query_id=query, agent=agent)
                )
        with pytest.raises(LLMCallError):
            await pool.chat("m", user("[[fault:400]]"), context=CallContext(query_id="q2", agent=1))
        await pool.chat("m", user("other run"), context=CallContext(query_id="q3", run_id="r2"))
    ledger = pool.ledger
    per_query = ledger.per_query()
    assert {q: t.calls for q, t in per_query.items()} == {"q1": 3, "q2": 4, "q3": 1}
    assert per_query["q2"].failed_calls == 1
    per_agent = ledger.per_agent()
    assert per_agent[("q2", 1)].calls == 2 and per_agent[("q1", None)].calls == 1
    assert {r: t.calls for r, t in ledger.per_run().items()} == {"r1": 7, "r2": 1}
    total = ledger.totals()
    assert total.cost_usd == pytest.approx(sum(r.cost_usd for r in ledger.records))
    assert total.cost_usd == pytest.approx(sum(t.cost_usd for t in per_query.values()))
    assert total.prompt_tokens == sum(r.prompt_tokens for r in ledger.records)
    assert "calls 8 (0 cached, 1 failed" in ledger.summary()

    path = tmp_path / "ledger.jsonl"
    ledger.to_jsonl(path)
    assert len(path.read_text().splitlines()) == 8
    assert Ledger.from_jsonl(path).records == ledger.records


# ------------------------------------------------------------------------- transport registry


class CountingTransport:
    """A non-HTTP backend: replies with the spec name; ``fail_with`` makes attempts raise."""

    instances: list["CountingTransport"] = []

    def __init__(self, specs: list[LLMSpec]):
        self.specs = specs
        self.fail_with: BaseException | None = None
        self.closed = False
        CountingTransport.instances.append(self)

    async def complete(self, spec, messages, params, context) -> Completion:
        if self.fail_with is not None:
            raise self.fail_with
        return Completion(f"{spec.name}:{context.query_id}", prompt_tokens=1, completion_tokens=1)

    async def aclose(self) -> None:
        self.closed = True


register_transport("test-counting", CountingTransport)


async def test_registered_scheme_gets_one_shared_transport_for_all_its_specs(server):
    CountingTransport.instances.clear()
    specs = [
        LLMSpec("x", "x", "test-counting://a", 1.0, 1.0, "d"),
        LLMSpec("y", "y", "test-counting://b", 1.0, 1.0, "d"),
        spec_for(server, "http-one"),
    ]
    async with fast_pool(specs) as pool:
        (transport,) = CountingTransport.instances
        assert [s.name for s in transport.specs] == ["x", "y"]
        result = await pool.chat("y", user("hi"), context=CallContext(query_id="q9"))
        assert result.text == "y:q9" and server.call_count == 0
        transport.fail_with = RuntimeError("backend exploded")
        with pytest.raises(LLMCallError, match="RuntimeError: backend exploded") as info:
            await pool.chat("x", user("hi"))
        assert isinstance(info.value.__cause__, RuntimeError) and info.value.attempts == 1
    assert transport.closed


def test_registering_a_different_factory_for_a_taken_scheme_needs_replace():
    register_transport("test-counting", CountingTransport)  # same factory again: fine
    with pytest.raises(ConfigError, match="already registered"):
        register_transport("test-counting", lambda specs: CountingTransport(specs))
    with pytest.raises(ConfigError, match="invalid transport scheme"):
        register_transport("9bad", CountingTransport)


async def _cancelled_as_it_completes(wait: Any) -> str:
    """Cancel a task in the loop iteration in which the call it awaits (through ``wait``)
    completes — what Ctrl-C does to a run whose calls complete at once (replay, cache hits)."""
    call = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(wait(call))
    await asyncio.sleep(0)  # the task now awaits the call
    call.set_result("reply")
    task.cancel()
    try:
        return await task
    except asyncio.CancelledError:
        return "cancelled"


async def test_a_call_with_a_time_limit_never_swallows_a_cancellation():
    import sys

    from masr_graph.llm.deadline import within

    assert await _cancelled_as_it_completes(lambda call: within(call, 5.0)) == "cancelled"
    if sys.version_info < (3, 12):  # the race within() exists for (CPython gh-86296)
        assert await _cancelled_as_it_completes(
            lambda call: asyncio.wait_for(call, 5.0)) == "reply"
    with pytest.raises(asyncio.TimeoutError):
        await within(asyncio.sleep(1.0), 0.01)
    assert await within(asyncio.sleep(0, "done"), None) == "done"

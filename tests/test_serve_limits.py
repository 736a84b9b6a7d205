"""`masr serve`'s limits and metrics, in-process (``serve()`` on a free port, the `openai` SDK as
client): the per-request timeout (504, the run cancelled and its slot freed), the bound on
queued requests (503 with Retry-After, which the SDK obeys), a client that leaves a stream, and
``/metrics`` in Prometheus text format — requests, errors, latencies, tokens and $ by LLM, queue
depth — counted per server, not per process."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import openai
import pytest

from masr_graph.cli import load_policy
from masr_graph.errors import ConfigError
from masr_graph.llm import LLMPool, LLMSpec
from masr_graph.runtime import MASExecutor
from masr_graph.serve import DEFAULT_MAX_QUEUED, MasService

from loopback_server import LoopbackServer
from policies import library_checkpoint
from serve_support import WORLD_SPECS, Server, parse_metrics, serving

QUERY = "What is 6 x 7?"
CHAT = "endpoint=/v1/chat/completions"
# Margins are wide: the CPUs are shared, and a hung upstream call lasts minutes anyway.
TIMEOUT_S = 2.0
LATENCY_S = 1.0


def loop_specs(upstream: LoopbackServer) -> list[LLMSpec]:
    return [LLMSpec(name="loop", model="loop", base_url=upstream.base_url, price_in=1.0,
                    price_out=2.0, description="A general model for every question.")]


def loop_policy(tmp_path: Path, specs: Sequence[LLMSpec]) -> Any:
    return load_policy(library_checkpoint(tmp_path / "loop.pt", specs))


def messages(query: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": query}]


@pytest.fixture(scope="module")
def world_policy(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """An untrained router over the LLMRouter world's GSM8K pool (a small plan library)."""
    return load_policy(library_checkpoint(tmp_path_factory.mktemp("limits") / "router.pt",
                                          WORLD_SPECS))


@pytest.fixture(scope="module")
def recorded() -> list:
    from masr_graph.replay import load_world

    return load_world("llmrouter").examples("gsm8k")


async def scrape(server: Server, accept: str = "") -> tuple[dict[str, str], bytes]:
    status, headers, body = await asyncio.to_thread(
        server.raw_bytes, "GET", "/metrics", None, {**server.auth(), "Accept": accept})
    assert status == 200, body
    return headers, body


async def metrics(server: Server) -> dict[str, float]:
    return parse_metrics((await scrape(server))[1].decode("utf-8"))


# ------------------------------------------------------------------------------- timeout
async def test_a_request_over_the_timeout_gets_504_and_its_run_is_cancelled(
        tmp_path: Path) -> None:
    """A hung upstream call: the request is answered 504 at the deadline, streaming or not, and
    its run stops — with one run slot, the next request is answered, not held up by the
    hang."""
    with LoopbackServer(responder=lambda body: "The answer is 42.") as upstream:
        specs = loop_specs(upstream)
        async with serving(loop_policy(tmp_path, specs), specs, request_timeout_s=TIMEOUT_S,
                           max_concurrent_runs=1) as server:
            client = server.async_client()
            try:
                await client.chat.completions.create(model="masr", messages=messages(QUERY))
                for stream in (False, True):
                    started = time.perf_counter()
                    with pytest.raises(openai.InternalServerError) as info:
                        await client.chat.completions.create(
                            model="masr", messages=messages(f"[[fault:hang]] {QUERY} {stream}"),
                            stream=stream)
                    assert TIMEOUT_S <= time.perf_counter() - started < TIMEOUT_S + 10
                    assert info.value.status_code == 504
                    assert info.value.body["code"] == "request_timeout"
                    assert info.value.body["type"] == "server_error"
                    assert f"timeout of {TIMEOUT_S:g} s" in info.value.body["message"]
                    assert info.value.response.headers["x-should-retry"] == "false"
                    assert info.value.response.headers["content-type"].startswith(
                        "application/json")
                    # The slot is free again: were the hung run still holding it, this
                    # request would wait for it and time out in turn.
                    reply = await client.chat.completions.create(model="masr",
                                                                 messages=messages(QUERY))
                    assert reply.choices[0].message.content == "The answer is 42."
                seen = await metrics(server)
            finally:
                await client.close()
    assert seen["masr_errors_total{type=request_timeout}"] == 2
    assert seen[f"masr_requests_total{{{CHAT},status=504,stream=false}}"] == 1
    assert seen[f"masr_requests_total{{{CHAT},status=504,stream=true}}"] == 1
    assert seen["masr_runs_active{}"] == seen["masr_requests_in_flight{}"] == 0
    # Only the finished runs' calls are counted by LLM (the cancelled ones are in the ledger).
    assert seen["masr_llm_calls_total{llm=loop,outcome=ok}"] == 3


# ---------------------------------------------------------------------------- queue bound
async def test_requests_beyond_the_queue_bound_get_503_with_retry_after(tmp_path: Path) -> None:
    """One run slot and one queue place: of three simultaneous requests one is refused at once
    with 503, Retry-After and x-should-retry; an SDK that retries gets all three answered."""
    with LoopbackServer(responder=lambda body: "The answer is 42.",
                        latency_s=LATENCY_S) as upstream:
        specs = loop_specs(upstream)
        async with serving(loop_policy(tmp_path, specs), specs, max_concurrent_runs=1,
                           max_queued=1) as server:
            client = server.async_client()
            retrying = server.async_client(max_retries=4)
            try:
                started = time.perf_counter()

                async def timed(query: str) -> tuple[Any, float]:
                    try:
                        outcome: Any = await client.chat.completions.create(
                            model="masr", messages=messages(query))
                    except openai.APIStatusError as exc:
                        outcome = exc
                    return outcome, time.perf_counter() - started

                outcomes = await asyncio.gather(*(timed(f"{QUERY} #{i}") for i in range(3)))
                refused = [(o, t) for o, t in outcomes if isinstance(o, openai.APIStatusError)]
                assert len(refused) == 1
                error, refused_after = refused[0]
                assert refused_after < LATENCY_S  # refused at once, before a run finished
                assert error.status_code == 503
                assert error.body["code"] == "server_overloaded"
                assert error.body["type"] == "server_error"
                assert "2 requests in flight, the limit is 2" in error.body["message"]
                headers = error.response.headers
                assert headers["x-should-retry"] == "true"
                assert int(headers["retry-after"]) >= 1
                assert 100 <= int(headers["retry-after-ms"]) <= 60_000
                assert all(o.choices[0].message.content for o, _ in outcomes if o is not error)

                during = await metrics(server)  # nothing in flight between the two rounds
                assert during["masr_admission_limit{}"] == 2
                assert during["masr_queue_depth{}"] == 0

                async def watch_queue() -> float:
                    deepest = 0.0
                    for _ in range(40):
                        deepest = max(deepest, (await metrics(server))["masr_queue_depth{}"])
                        await asyncio.sleep(0.05)
                    return deepest

                replies, deepest = await asyncio.gather(
                    asyncio.gather(*(retrying.chat.completions.create(
                        model="masr", messages=messages(f"{QUERY} again #{i}"))
                        for i in range(3))),
                    watch_queue())
                assert all(r.choices[0].message.content == "The answer is 42." for r in replies)
                assert 1 <= deepest <= 2  # requests waited (for the slot, or routing)
                seen = await metrics(server)
            finally:
                await client.close()
                await retrying.close()
    assert seen["masr_errors_total{type=server_overloaded}"] >= 2  # both rounds refused one
    assert seen[f"masr_requests_total{{{CHAT},status=503,stream=false}}"] >= 2
    assert seen[f"masr_requests_total{{{CHAT},status=200,stream=false}}"] == 5


async def test_limits_are_validated(tmp_path: Path) -> None:
    specs = [LLMSpec(name="loop", model="loop", base_url="http://127.0.0.1:9/v1", price_in=1.0,
                     price_out=2.0, description="A general model for every question.")]
    policy = loop_policy(tmp_path, specs)
    pool = LLMPool(specs)
    executor = MASExecutor(pool)
    try:
        for kwargs, message in (({"max_queued": -1}, "max_queued must be an integer >= 0"),
                                ({"request_timeout_s": 0.0}, "request_timeout_s must be a"),
                                ({"request_timeout_s": float("inf")}, r"\(got inf\)")):
            with pytest.raises(ConfigError, match=message):
                MasService(policy, executor, **kwargs)
        service = MasService(policy, executor, max_queued=0, request_timeout_s=None)
        assert service.admission_limit == 64
        assert MasService(policy, executor).admission_limit == 64 + DEFAULT_MAX_QUEUED
    finally:
        await pool.aclose()


@pytest.mark.parametrize("args, status, words", [
    (("--help",), 0, ["--max-queued", "--request-timeout-s", "503", "504"]),
    (("--checkpoint", "x.pt", "--max-queued", "-1"), 2, ["--max-queued", ">= 0"]),
    (("--checkpoint", "x.pt", "--request-timeout-s", "soon"), 2, ["--request-timeout-s"]),
])
def test_serve_limit_options(args: tuple[str, ...], status: int, words: list[str]) -> None:
    done = subprocess.run([sys.executable, "-m", "masr_graph.cli", "serve", *args],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == status, done.stderr
    for word in words:
        assert word in done.stdout + done.stderr


# ------------------------------------------------------------------------ client going away
async def test_a_client_that_leaves_a_stream_is_counted_and_the_server_carries_on(
        tmp_path: Path) -> None:
    with LoopbackServer(responder=lambda body: "The answer is 42.",
                        latency_s=LATENCY_S) as upstream:
        specs = loop_specs(upstream)
        async with serving(loop_policy(tmp_path, specs), specs) as server:
            host, port = server.base_url.removeprefix("http://").removesuffix("/v1").split(":")
            body = json.dumps({"model": "masr", "messages": messages(QUERY), "stream": True})
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\n"
                         f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                         f"\r\n{body}".encode())
            await writer.drain()
            await asyncio.sleep(0.1)
            writer.close()  # gone before the answer exists
            await writer.wait_closed()
            for _ in range(50):
                seen = await metrics(server)
                if seen.get("masr_errors_total{type=client_disconnected}"):
                    break
                await asyncio.sleep(0.1)
            assert seen["masr_errors_total{type=client_disconnected}"] == 1
            assert seen["masr_requests_in_flight{}"] == 0
            client = server.async_client()
            try:
                reply = await client.chat.completions.create(model="masr",
                                                             messages=messages(QUERY))
            finally:
                await client.close()
            assert reply.choices[0].message.content == "The answer is 42."


# -------------------------------------------------------------------------------- metrics
async def test_metrics_count_requests_errors_latencies_tokens_and_dollars_by_llm(
        world_policy: Any, recorded: list) -> None:
    async with serving(world_policy, WORLD_SPECS, api_key="sk-metrics") as server:
        client = server.async_client()
        replies = []
        try:
            for index, example in enumerate(recorded[:6]):
                kwargs: dict[str, Any] = {"model": "masr", "messages": messages(example.query),
                                          "extra_body": {"masr_include_trace": True}}
                if index % 2:
                    stream = await client.chat.completions.create(
                        stream=True, stream_options={"include_usage": True}, **kwargs)
                    async for chunk in stream:
                        if chunk.choices and chunk.choices[0].finish_reason:
                            replies.append(chunk.masr_trace)
                else:
                    replies.append((await client.chat.completions.create(**kwargs)).masr_trace)
            with pytest.raises(openai.BadRequestError):
                await client.chat.completions.create(model="masr",
                                                     messages=messages("What is Oz?"))
            with pytest.raises(openai.NotFoundError):
                await client.chat.completions.create(model="gpt-4o",
                                                     messages=messages(QUERY))
            status, _, _ = await asyncio.to_thread(server.raw_bytes, "POST",
                                                   "/v1/chat/completions", b"{nope",
                                                   server.auth())
            assert status == 400
            unauthorised = await asyncio.to_thread(server.raw_bytes, "GET", "/metrics")
            headers, body = await scrape(server)
            open_headers, open_body = await scrape(server, accept="application/openmetrics-text")
        finally:
            await client.close()

    assert unauthorised[0] == 401  # /metrics is behind the key, like /v1
    assert headers["Content-Type"].startswith("text/plain; version=")
    assert headers["Content-Type"].endswith("charset=utf-8")
    assert open_headers["Content-Type"].startswith("application/openmetrics-text")
    assert open_body.rstrip().endswith(b"# EOF")
    seen = parse_metrics(body.decode("utf-8"))
    assert seen[f"masr_requests_total{{{CHAT},status=200,stream=false}}"] == 3
    assert seen[f"masr_requests_total{{{CHAT},status=200,stream=true}}"] == 3
    assert seen[f"masr_requests_total{{{CHAT},status=400,stream=false}}"] == 1  # unknown query
    assert seen[f"masr_requests_total{{{CHAT},status=404,stream=false}}"] == 1
    assert seen[f"masr_requests_total{{{CHAT},status=400,stream=unknown}}"] == 1  # bad JSON
    assert seen["masr_requests_total{endpoint=/metrics,status=401,stream=false}"] == 1
    for code in ("unknown_query", "model_not_found", "invalid_json", "invalid_api_key"):
        assert seen[f"masr_errors_total{{type={code}}}"] == 1
    assert seen["masr_request_duration_seconds_count{stream=false}"] == 5
    assert seen["masr_request_duration_seconds_count{stream=true}"] == 3
    assert seen["masr_request_duration_seconds_count{stream=unknown}"] == 1
    assert seen["masr_routing_duration_seconds_count{}"] == 7  # the unknown query was routed
    assert seen["masr_run_duration_seconds_count{}"] == 6
    assert seen["masr_routed_queries_total{}"] == 1 + 7  # with the warm-up query
    assert seen["masr_requests_in_flight{}"] == seen["masr_queue_depth{}"] == 0
    assert seen["masr_runs_active{}"] == 0

    # Tokens, calls and $ by LLM are the sums over the runs' traces.
    expected: Counter[str] = Counter()
    cost: Counter[str] = Counter()
    for trace in replies:
        calls = trace["steps"] + ([trace["decision"]["call"]] if trace["decision"]["call"] else [])
        for call in calls:
            expected[f"masr_llm_tokens_total{{kind=prompt,llm={call['llm']}}}"] += (
                call["prompt_tokens"])
            expected[f"masr_llm_tokens_total{{kind=completion,llm={call['llm']}}}"] += (
                call["completion_tokens"])
            expected[f"masr_llm_calls_total{{llm={call['llm']},outcome=ok}}"] += 1
            cost[call["llm"]] += call["cost_usd"]
    assert sum(expected.values()) > 0
    for key, value in expected.items():
        assert seen[key] == value, key
    for spec in WORLD_SPECS:  # every LLM of the pool has its series, used or not
        assert seen[f"masr_llm_cost_usd_total{{llm={spec.name}}}"] == pytest.approx(
            cost[spec.name])
        assert f"masr_llm_tokens_total{{kind=prompt,llm={spec.name}}}" in seen


async def test_two_servers_in_one_process_count_apart(world_policy: Any, recorded: list) -> None:
    async with serving(world_policy, WORLD_SPECS) as first, \
            serving(world_policy, WORLD_SPECS) as second:
        client = first.async_client()
        try:
            await client.chat.completions.create(model="masr",
                                                 messages=messages(recorded[0].query))
        finally:
            await client.close()
        ours, theirs = await metrics(first), await metrics(second)
    key = f"masr_requests_total{{{CHAT},status=200,stream=false}}"
    assert ours[key] == 1 and key not in theirs
    assert theirs["masr_run_duration_seconds_count{}"] == 0

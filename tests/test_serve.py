"""`masr serve` against real clients: the `masr` server runs as a subprocess on 127.0.0.1 (a free
port), the `openai` SDK talks to it, and raw HTTP requests probe validation. A second server runs
in-process over a real HTTP LLM pool (the loopback server) for free-form queries, keyless LLMs and
the budget cap."""
from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Iterator, Optional

import openai
import pytest

from masr_graph.cli import load_policy
from masr_graph.llm import LLMPool, LLMSpec
from masr_graph.plan import Plan
from masr_graph.replay import load_world
from masr_graph.runtime import MASExecutor
from masr_graph.serve import domain_answer_key, serve

from loopback_server import LoopbackServer
from policies import library_checkpoint, small_library
from serve_support import STARTUP_TIMEOUT_S, WORLD_SPECS, Server, masr_serve


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained router over the LLMRouter world's GSM8K pool with a small plan library."""
    return library_checkpoint(tmp_path_factory.mktemp("serve") / "router.pt", WORLD_SPECS)


@pytest.fixture(scope="module")
def server(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`masr serve` on the replay pool with bearer auth, as a subprocess on a free port."""
    with masr_serve(checkpoint, tmp_path_factory.mktemp("serve-logs")) as running:
        yield running


@pytest.fixture(scope="module")
def recorded() -> list:
    return load_world("llmrouter").examples("gsm8k")


def test_models_lists_masr(server: Server) -> None:
    client = server.client()
    assert [model.id for model in client.models.list()] == ["masr"]
    assert client.models.retrieve("masr").owned_by == "masr_graph"
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("gpt-4o")
    assert info.value.body["code"] == "model_not_found"


def test_completion_usage_is_the_trace_sum_and_replays_exactly(server: Server, recorded: list
                                                               ) -> None:
    example = recorded[0]
    reply = server.client().chat.completions.create(
        model="masr",
        messages=[{"role": "system", "content": "ignored"},
                  {"role": "user", "content": example.query}],
        extra_body={"masr_include_trace": True})
    trace = reply.masr_trace
    calls = trace["steps"] + ([trace["decision"]["call"]] if trace["decision"]["call"] else [])
    assert reply.usage.prompt_tokens == sum(c["prompt_tokens"] for c in calls) > 0
    assert reply.usage.completion_tokens == sum(c["completion_tokens"] for c in calls) > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert reply.masr_run["calls"] == len(calls)
    assert reply.masr_run["cost_usd"] == pytest.approx(sum(c["cost_usd"] for c in calls))
    assert "nothing was paid" in reply.masr_run["cost_notional"]  # replay prices are notional
    plan = Plan.from_dict(reply.masr_plan)
    assert trace["plan"] == reply.masr_plan
    assert len(trace["steps"]) >= plan.k
    assert plan in small_library([spec.name for spec in WORLD_SPECS], "math")
    assert 0 < plan.probs["plan"] <= 1
    assert reply.choices[0].message.content == trace["final_answer"] != ""
    assert reply.model == "masr" and reply.object == "chat.completion"

    # The same plan run here, independently of the server, gives the same answer and usage.
    async def rerun():
        pool = LLMPool(WORLD_SPECS)
        try:
            return await MASExecutor(pool).run(
                example.query, plan, query_id=reply.masr_run["query_id"], task=plan.task,
                answer_key=domain_answer_key(plan.task), seed=reply.masr_run["seed"])
        finally:
            await pool.aclose()

    local = asyncio.run(rerun())
    assert local.final_answer == reply.choices[0].message.content
    assert local.totals()["prompt_tokens"] == reply.usage.prompt_tokens
    assert local.totals()["completion_tokens"] == reply.usage.completion_tokens


def test_auth_is_required(server: Server) -> None:
    with pytest.raises(openai.AuthenticationError) as info:
        server.client(key="sk-wrong").models.list()
    assert info.value.status_code == 401
    assert info.value.body["code"] == "invalid_api_key"
    status, headers, body = server.raw("GET", "/v1/models")
    assert status == 401
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert "Bearer" in body["error"]["message"]
    status, _, body = server.raw("GET", "/health")
    assert status == 200 and body["status"] == "ok"


@pytest.mark.parametrize("payload, param, code", [
    (b"{not json", None, "invalid_json"),
    (b"[1, 2]", None, "invalid_json"),
    (json.dumps({"model": "masr"}).encode(), "messages", "missing_required_parameter"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode(), "model",
     "missing_required_parameter"),
    (json.dumps({"model": "masr", "messages": []}).encode(), "messages", "invalid_type"),
    (json.dumps({"model": "masr", "messages": [{"role": "robot", "content": "x"}]}).encode(),
     "messages[0]", "invalid_value"),
    (json.dumps({"model": "masr", "messages": [{"role": "user", "content": 5}]}).encode(),
     "messages[0].content", "invalid_type"),
    (json.dumps({"model": "masr", "messages": [{"role": "user", "content": "x"}],
                 "tools": []}).encode(), "tools", "unknown_parameter"),
    (json.dumps({"model": "masr", "messages": [{"role": "user", "content": "x"}],
                 "temperature": "hot"}).encode(), "temperature", "invalid_type"),
    (json.dumps({"model": "masr", "messages": [{"role": "user", "content": "x"}],
                 "stream": "yes"}).encode(), "stream", "invalid_type"),
    (json.dumps({"model": "masr", "messages": [{"role": "user", "content": "x"}],
                 "stream": True, "stream_options": {"include_usage": 1}}).encode(),
     "stream_options.include_usage", "invalid_type"),
    (json.dumps({"model": "masr", "messages": [{"role": "user", "content": "x"}],
                 "stream": True, "stream_options": {"chunk_size": 4}}).encode(),
     "stream_options.chunk_size", "unknown_parameter"),
    (json.dumps({"model": "masr", "messages": [{"role": "user", "content": "x"}],
                 "stream": True, "stream_options": [True]}).encode(), "stream_options",
     "invalid_type"),
])
def test_malformed_requests_get_openai_errors(server: Server, payload: bytes,
                                               param: Optional[str], code: str) -> None:
    status, headers, body = server.raw(
        "POST", "/v1/chat/completions", payload,
        {"Authorization": f"Bearer {server.key}", "Content-Type": "application/json"})
    assert status == 400
    assert body["error"]["type"] == "invalid_request_error"
    assert (body["error"]["param"], body["error"]["code"]) == (param, code)
    assert body["error"]["message"]
    assert headers.get("x-should-retry") == "false"


DEEP = 100_000
CHAT_PREFIX = b'{"model": "masr", "messages": [{"role": "user", "content": '


@pytest.mark.parametrize("payload", [
    pytest.param(b"[" * DEEP + b"]" * DEEP, id="array-nested-100k-deep"),
    pytest.param(b'{"model": "masr", "messages": ' + b"[" * DEEP + b"]" * DEEP + b"}",
                 id="messages-nested-100k-deep"),
    pytest.param(b'{"model": "masr", "messages": [{"role": "user", "content": "x"}], '
                 b'"metadata": ' + b'{"a": ' * 900 + b"1" + b"}" * 900 + b"}",
                 id="field-nested-900-deep"),
    pytest.param(CHAT_PREFIX + b'"\\ud800 what is 2+2?"}]}', id="unpaired-surrogate-escape"),
    pytest.param(CHAT_PREFIX + b'"x"}], "metadata": {"a": NaN}}', id="NaN"),
    pytest.param(CHAT_PREFIX + b'"x"}], "temperature": Infinity}', id="Infinity"),
    pytest.param(json.dumps({"model": "masr", "messages": [{"role": "user", "content": "x"}]}
                            ).encode("utf-16"), id="utf-16"),
    pytest.param(CHAT_PREFIX + b'"\xff"}]}', id="not-utf-8"),
])
def test_malformed_bodies_of_any_shape_are_400_invalid_json(server: Server,
                                                            payload: bytes) -> None:
    status, headers, body = server.raw(
        "POST", "/v1/chat/completions", payload,
        {"Authorization": f"Bearer {server.key}", "Content-Type": "application/json"})
    assert status == 400, body
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert (body["error"]["type"], body["error"]["code"]) == ("invalid_request_error",
                                                              "invalid_json")
    assert headers.get("x-should-retry") == "false"
    assert server.raw("GET", "/health")[0] == 200


def test_oversized_body_is_413_with_openai_error_body(server: Server, recorded: list) -> None:
    content = recorded[0].query + " " * 5_000_000
    payload = json.dumps({"model": "masr", "messages": [{"role": "user", "content": content}]})
    status, headers, body = server.raw(
        "POST", "/v1/chat/completions", payload.encode(),
        {"Authorization": f"Bearer {server.key}", "Content-Type": "application/json"})
    assert status == 413
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == "request_too_large"
    assert f"limit of {2**20} bytes" in body["error"]["message"]
    assert headers.get("x-should-retry") == "false"
    with pytest.raises(openai.APIStatusError) as info:  # what an SDK user sees
        server.client().chat.completions.create(
            model="masr", messages=[{"role": "user", "content": content}])
    assert info.value.status_code == 413 and info.value.body["code"] == "request_too_large"


def test_bad_requests_through_the_sdk(server: Server, recorded: list) -> None:
    client = server.client()
    query = recorded[1].query
    with pytest.raises(openai.NotFoundError, match="'gpt-4o' does not exist"):
        client.chat.completions.create(model="gpt-4o",
                                       messages=[{"role": "user", "content": query}])
    with pytest.raises(openai.BadRequestError, match="no message with role 'user'"):
        client.chat.completions.create(model="masr",
                                       messages=[{"role": "system", "content": query}])
    with pytest.raises(openai.BadRequestError, match="only allowed when 'stream' is true"):
        client.chat.completions.create(model="masr", stream_options={"include_usage": True},
                                       messages=[{"role": "user", "content": query}])
    with pytest.raises(openai.BadRequestError, match="only n=1"):
        client.chat.completions.create(model="masr", n=2,
                                       messages=[{"role": "user", "content": query}])
    with pytest.raises(openai.BadRequestError, match="only text is supported"):
        client.chat.completions.create(model="masr", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}])
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="masr", messages=[{"role": "user", "content": "What is the capital of Oz?"}])
    assert info.value.body["code"] == "unknown_query"
    assert "recorded queries" in info.value.body["message"]
    # Text parts are joined into the query; the server still works after the errors.
    ok = client.chat.completions.create(model="masr", messages=[
        {"role": "user", "content": [{"type": "text", "text": query}]}])
    assert ok.choices[0].message.content


def test_200_concurrent_requests_all_succeed(server: Server, recorded: list) -> None:
    examples = recorded[2:202]
    assert len(examples) == 200

    async def load() -> tuple[list, float]:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key=server.key, max_retries=0,
                                    timeout=120)
        started = time.perf_counter()
        try:
            replies = await asyncio.gather(*(
                client.chat.completions.create(
                    model="masr", messages=[{"role": "user", "content": e.query}])
                for e in examples))
        finally:
            await client.close()
        return replies, time.perf_counter() - started

    _, _, before = server.raw("GET", "/health")
    replies, wall_s = asyncio.run(load())
    _, _, after = server.raw("GET", "/health")
    assert all(r.choices[0].message.content and r.usage.total_tokens > 0 for r in replies)
    assert len({r.id for r in replies}) == 200
    assert len({r.masr_run["query_id"] for r in replies}) == 200
    batches = after["router_batches"] - before["router_batches"]
    assert after["routed_queries"] - before["routed_queries"] == 200
    print(f"\n200 concurrent routed completions on the replay pool: {wall_s:.2f} s wall, "
          f"{200 / wall_s:.0f} req/s, {batches} router forward passes, "
          f"{sum(r.masr_run['calls'] for r in replies)} LLM calls")
    assert batches < 200  # concurrent queries shared forward passes


async def test_free_form_queries_over_an_http_pool_with_keyless_llm_budget_and_lambda(
        tmp_path: Path) -> None:
    """In-process `serve()` over the loopback server: queries need not be recorded, plans that
    need an LLM whose key variable is unset are never run, each request's cost preference
    (``masr_cost_lambda`` or model ``masr-lambda-<λ>``) picks its plan, and the budget cap
    turns into 429."""
    os.environ.pop("MASR_TEST_UNSET_KEY", None)
    with LoopbackServer(responder=lambda body: "The answer is 42.") as upstream:
        specs = [
            LLMSpec(name="loop-small", model="small", base_url=upstream.base_url, price_in=0.1,
                    price_out=0.2, description="A small, cheap general model for easy questions."),
            LLMSpec(name="loop-large", model="large", base_url=upstream.base_url, price_in=5.0,
                    price_out=15.0, description="A large, expensive model for hard reasoning."),
            LLMSpec(name="keyless", model="k", base_url=upstream.base_url, price_in=0.1,
                    price_out=0.1, api_key_env="MASR_TEST_UNSET_KEY",
                    description="A model whose API key is not available."),
        ]
        # The gate fixes the large model at λ=0 and the small one at λ=10000 (library plans 1
        # and 0); between them the (untrained) router chooses.
        path = library_checkpoint(tmp_path / "loop.pt", specs,
                                  gate={"math": {0.0: 1, 100.0: None, 10000.0: 0}})
        policy = load_policy(path)
        for max_usd, expect_ok in ((None, True), (1e-9, False)):
            ready: asyncio.Queue[str] = asyncio.Queue()
            stop = asyncio.Event()
            task = asyncio.create_task(serve(policy, specs, port=0, max_usd=max_usd,
                                             cost_lambda=0.0, ready=ready.put_nowait, stop=stop))
            line = await asyncio.wait_for(ready.get(), timeout=STARTUP_TIMEOUT_S)
            base_url = line.split("listening on ", 1)[1].split()[0]
            assert "2 plans over 2 LLMs" in line  # the keyless LLM's single and both teams: out
            client = openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0)
            messages = [{"role": "user", "content": "What is 6 x 7?"}]
            try:
                if expect_ok:
                    default = await client.chat.completions.create(model="masr",
                                                                   messages=messages)
                    assert default.choices[0].message.content == "The answer is 42."
                    assert default.masr_plan["llms"] == ["loop-large"]  # the server's λ=0
                    assert default.usage.prompt_tokens > 0
                    frugal = await client.chat.completions.create(
                        model="masr", messages=messages, extra_body={"masr_cost_lambda": 10000})
                    assert frugal.masr_plan["llms"] == ["loop-small"]
                    named = await client.chat.completions.create(model="masr-lambda-9000",
                                                                 messages=messages)
                    assert named.masr_plan["llms"] == ["loop-small"]  # nearest gate λ: 10000
                    assert named.model == "masr-lambda-9000"
                    with pytest.raises(openai.BadRequestError) as info:
                        await client.chat.completions.create(
                            model="masr", messages=messages, extra_body={"masr_cost_lambda": -1})
                    assert info.value.body["param"] == "masr_cost_lambda"
                    with pytest.raises(openai.NotFoundError):
                        await client.chat.completions.create(model="masr-lambda-cheap",
                                                             messages=messages)
                else:
                    with pytest.raises(openai.RateLimitError) as info:
                        await client.chat.completions.create(model="masr", messages=messages)
                    assert info.value.body["type"] == "insufficient_quota"
                    assert "budget cap" in info.value.body["message"]
            finally:
                await client.close()
                stop.set()
                await task
        assert not any(r["model"] == "k" for r in upstream.requests)

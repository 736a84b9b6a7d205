"""`masr serve` with `stream=true`, as chat front-ends and agent frameworks call it: a real `masr
serve` subprocess over the LLMRouter replay world, the `openai` SDK's streaming client
(``stream=True``, ``stream_options={"include_usage": True}``) and raw HTTP for the wire format.

The replay backend is deterministic, so a streamed answer must be the non-streamed answer to the
same request: the same text, usage, plan and run accounting, whatever the cost preference, seed
or concurrency."""
from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Iterator

import openai
import pytest

from masr_graph.replay import load_world
from masr_graph.serve import STREAM_CHUNK_CHARS, answer_chunks

from policies import library_checkpoint
from serve_support import WORLD_SPECS, Server, masr_serve

DEBATE = len(WORLD_SPECS) + 1
"""Library index of the Debate of the pool's first three LLMs (see policies.small_library)."""
GATE = {"math": {0.0: DEBATE, 100.0: None, 10000.0: 0}}
"""λ=0 runs the three-agent debate, λ=10000 the first LLM alone, λ=100 routes per query."""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    path = library_checkpoint(tmp_path_factory.mktemp("stream") / "router.pt", WORLD_SPECS,
                              gate=GATE)
    with masr_serve(path, tmp_path_factory.mktemp("stream-logs")) as running:
        yield running


@pytest.fixture(scope="module")
def recorded() -> list:
    return load_world("llmrouter").examples("gsm8k")


def messages(query: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": query}]


def without_wall_time(run: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in run.items() if key != "wall_s"}


def test_answer_chunks_rejoin_the_text_and_never_split_a_word() -> None:
    text = ("Step 1: 12 apples minus 5 eaten leaves 7.  Step 2: twice that is 14.\n\n"
            "#### 14 " + "x" * 100 + " tail")
    pieces = answer_chunks(text)
    assert "".join(pieces) == text and len(pieces) > 1
    for piece in pieces[:-1]:
        assert len(piece) >= STREAM_CHUNK_CHARS and piece[-1].isspace()
    assert answer_chunks("") == [] and answer_chunks("short") == ["short"]
    assert answer_chunks("a b c d", size=1) == ["a ", "b ", "c ", "d"]


@pytest.mark.parametrize("include_usage", [True, False])
def test_the_wire_format_is_openai_chunks_then_done(server: Server, recorded: list,
                                                     include_usage: bool) -> None:
    query = recorded[0].query
    body: dict[str, Any] = {"model": "masr-lambda-0", "messages": messages(query),
                            "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    status, headers, raw = server.raw_bytes(
        "POST", "/v1/chat/completions", json.dumps(body).encode(),
        {**server.auth(), "Content-Type": "application/json"})
    assert status == 200
    assert headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert headers["Cache-Control"] == "no-cache"
    events = raw.decode("utf-8").split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]  # the stream ends with [DONE] and a blank line
    assert all(event.startswith("data: ") for event in events[:-1])
    chunks = [json.loads(event.removeprefix("data: ")) for event in events[:-2]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    assert len({c["created"] for c in chunks}) == 1
    assert {c["model"] for c in chunks} == {"masr-lambda-0"}

    usage_chunk = chunks.pop() if include_usage else None
    role, *content, finish = chunks
    assert role["choices"] == [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                "logprobs": None, "finish_reason": None}]
    assert content and all(c["choices"][0]["finish_reason"] is None for c in content)
    assert all(set(c["choices"][0]["delta"]) == {"content"} for c in content)
    assert finish["choices"] == [{"index": 0, "delta": {}, "logprobs": None,
                                  "finish_reason": "stop"}]
    assert finish["masr_plan"]["mode"] == "Debate" and finish["masr_run"]["calls"] >= 3
    assert all("masr_plan" not in c for c in [role, *content])
    if include_usage:
        assert all(c["usage"] is None for c in chunks)  # as OpenAI's: null until the last
        assert usage_chunk["choices"] == []
        usage = usage_chunk["usage"]
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    else:
        assert all("usage" not in c for c in chunks)

    # The same request without streaming: the same text and usage.
    body.pop("stream_options", None)
    body["stream"] = False
    _, _, reply = server.raw("POST", "/v1/chat/completions", json.dumps(body).encode(),
                             {**server.auth(), "Content-Type": "application/json"})
    text = "".join(c["choices"][0]["delta"]["content"] for c in content)
    assert text == reply["choices"][0]["message"]["content"] != ""
    assert [c["choices"][0]["delta"]["content"] for c in content] == answer_chunks(text)
    if include_usage:
        assert usage_chunk["usage"] == reply["usage"]
    assert finish["masr_plan"] == reply["masr_plan"]


def collect(stream: Any) -> dict[str, Any]:
    """What an SDK user reads from a stream: text, finish reason, usage, the masr fields."""
    pieces, finish_reason, usage, extra, roles = [], None, None, {}, []
    ids = set()
    for chunk in stream:
        ids.add(chunk.id)
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.role:
                roles.append(choice.delta.role)
            if choice.delta.content:
                pieces.append(choice.delta.content)
            if choice.finish_reason:
                finish_reason = choice.finish_reason
                extra = {name: getattr(chunk, name) for name in
                         ("masr_plan", "masr_run", "masr_trace") if hasattr(chunk, name)}
    return {"text": "".join(pieces), "pieces": len(pieces), "finish_reason": finish_reason,
            "usage": usage, "roles": roles, "ids": ids, **extra}


@pytest.mark.parametrize("model, extra_body, mode", [
    ("masr", None, None),                                 # the server's λ=100: routed
    ("masr-lambda-0", None, "Debate"),                    # λ by model name: the debate
    ("masr", {"masr_cost_lambda": 10000}, "IO"),          # λ by field: the first LLM alone
    ("masr-lambda-0", {"seed": 7}, "Debate"),             # another edge-sampling seed
    ("masr-lambda-0", {"masr_include_trace": True}, "Debate"),
])
def test_streamed_and_plain_answers_are_identical(server: Server, recorded: list, model: str,
                                                  extra_body: Any, mode: Any) -> None:
    client = server.client()
    for example in recorded[10:14]:
        plain = client.chat.completions.create(model=model, messages=messages(example.query),
                                               extra_body=extra_body)
        streamed = collect(client.chat.completions.create(
            model=model, messages=messages(example.query), extra_body=extra_body, stream=True,
            stream_options={"include_usage": True}))
        assert streamed["text"] == plain.choices[0].message.content != ""
        assert streamed["usage"] == plain.usage and streamed["usage"].total_tokens > 0
        assert streamed["finish_reason"] == "stop" and streamed["roles"] == ["assistant"]
        assert len(streamed["ids"]) == 1
        assert streamed["masr_plan"] == plain.masr_plan
        assert without_wall_time(streamed["masr_run"]) == without_wall_time(plain.masr_run)
        if mode is not None:
            assert plain.masr_plan["mode"] == mode
        if extra_body and extra_body.get("seed") is not None:
            assert plain.masr_run["seed"] == extra_body["seed"]
        if extra_body and extra_body.get("masr_include_trace"):
            assert streamed["masr_trace"]["final_answer"] == streamed["text"]
            assert streamed["masr_trace"]["steps"] and plain.masr_trace["plan"] == plain.masr_plan
        else:
            assert "masr_trace" not in streamed


def test_without_include_usage_no_usage_is_streamed(server: Server, recorded: list) -> None:
    streamed = collect(server.client().chat.completions.create(
        model="masr", messages=messages(recorded[20].query), stream=True))
    assert streamed["text"] and streamed["usage"] is None and streamed["finish_reason"] == "stop"


def test_errors_before_the_first_byte_are_ordinary_json_errors(server: Server,
                                                              recorded: list) -> None:
    client = server.client()
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="masr", stream=True,
                                       messages=messages("What is the capital of Oz?"))
    assert info.value.body["code"] == "unknown_query"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", stream=True,
                                       messages=messages(recorded[0].query))
    status, headers, body = server.raw(
        "POST", "/v1/chat/completions",
        json.dumps({"model": "masr", "stream": True, "stream_options": {"include_usage": True},
                    "messages": messages("What is the capital of Oz?")}).encode(),
        {**server.auth(), "Content-Type": "application/json"})
    assert status == 400 and headers["Content-Type"].startswith("application/json")
    assert set(body["error"]) == {"message", "type", "param", "code"}


def test_200_concurrent_streaming_requests_all_complete(server: Server, recorded: list) -> None:
    """200 streams at once through one AsyncOpenAI client, each read to its end; then the same
    200 requests without streaming give the same answers."""
    examples = recorded[30:230]
    assert len(examples) == 200

    async def read(client: openai.AsyncOpenAI, query: str) -> dict[str, Any]:
        stream = await client.chat.completions.create(
            model="masr", messages=messages(query), stream=True,
            stream_options={"include_usage": True})
        out: dict[str, Any] = {"pieces": [], "usage": None, "finish_reason": None, "ids": set()}
        async for chunk in stream:
            out["ids"].add(chunk.id)
            out["usage"] = chunk.usage or out["usage"]
            for choice in chunk.choices:
                out["pieces"].append(choice.delta.content or "")
                out["finish_reason"] = choice.finish_reason or out["finish_reason"]
                if choice.finish_reason:
                    out["plan"] = chunk.masr_plan
        out["text"] = "".join(out["pieces"])
        return out

    async def load(stream: bool) -> tuple[list, float]:
        client = server.async_client(timeout=300)
        started = time.perf_counter()
        try:
            if stream:
                results = await asyncio.gather(*(read(client, e.query) for e in examples))
            else:
                results = await asyncio.gather(*(
                    client.chat.completions.create(model="masr", messages=messages(e.query))
                    for e in examples))
        finally:
            await client.close()
        return results, time.perf_counter() - started

    before = server.metrics()
    streamed, wall_s = asyncio.run(load(stream=True))
    after = server.metrics()
    assert all(s["finish_reason"] == "stop" and s["text"] and s["usage"].total_tokens > 0
               for s in streamed)
    assert len(set().union(*(s["ids"] for s in streamed))) == 200
    key = "masr_requests_total{endpoint=/v1/chat/completions,status=200,stream=true}"
    assert after[key] - before.get(key, 0) == 200
    batches = after["masr_router_batches_total{}"] - before["masr_router_batches_total{}"]
    print(f"\n200 concurrent streaming completions on the replay pool: {wall_s:.2f} s wall, "
          f"{200 / wall_s:.0f} req/s, {batches:.0f} router forward passes")
    assert batches < 200  # concurrent streams shared forward passes

    plain, _ = asyncio.run(load(stream=False))
    for s, p in zip(streamed, plain):
        assert s["text"] == p.choices[0].message.content
        assert s["usage"] == p.usage and s["plan"] == p.masr_plan

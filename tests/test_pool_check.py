"""`masr pool check POOL.yaml` against real sockets: a listed model, an unlisted one, a missing key,
a refused connection and a silent endpoint, one line each and the exit statuses of
masr_graph.exit_status — with no chat call made and no key printed."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from loopback_server import LoopbackServer

from masr_graph import cli
from masr_graph.llm import LLMSpec
from masr_graph.llm.check import check_pool

SECRET = "sk-check-canary-4Rt8Yu2Io6Pa0Sd1"


def closed_port_url() -> str:
    with socket.socket() as sock:  # bound, never listening: connections are refused
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


@pytest.fixture
def silent_url() -> Iterator[str]:
    """An endpoint that accepts connections and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


def entry(name: str, model: str, base_url: str, **extra: Any) -> dict[str, Any]:
    return dict(name=name, model=model, base_url=base_url, price_in=1.0, price_out=2.0,
                description=f"{name} for the check", **extra)


def pool_file(path: Path, *entries: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump({"llms": list(entries)}))
    return path


def lines_of(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_check_reports_each_llm_and_exits_1_without_a_chat_call(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MASR_TEST_CHECK_KEY", SECRET)
    monkeypatch.delenv("MASR_TEST_CHECK_UNSET", raising=False)
    with LoopbackServer(models=("good-model", "other-model")) as srv:
        path = pool_file(
            tmp_path / "pool.yaml",
            entry("good", "good-model", srv.base_url, api_key_env="MASR_TEST_CHECK_KEY"),
            entry("typo", "good-modle", srv.base_url, api_key_env="MASR_TEST_CHECK_KEY"),
            entry("nokey", "good-model", srv.base_url, api_key_env="MASR_TEST_CHECK_UNSET"),
            entry("dead", "good-model", closed_port_url()),
        )
        status = cli.main(["pool", "check", str(path), "--timeout", "2"])
        assert srv.call_count == 0  # nothing was asked of the chat endpoint: nothing is paid
        listings = srv.model_requests
    out, err = capsys.readouterr()
    assert status == 1
    good, typo, nokey, dead = lines_of(out)
    assert good.startswith("ok       good  ") and "model 'good-model' listed" in good
    assert typo.startswith("PROBLEM  typo  ") and "model 'good-modle' is not listed" in typo
    assert "good-model, other-model" in typo
    assert nokey.startswith("PROBLEM  nokey  ")
    assert "'MASR_TEST_CHECK_UNSET' is not set" in nokey
    assert dead.startswith("PROBLEM  dead  ") and "unreachable" in dead
    assert "ConnectionRefused" in dead or "Connect" in dead
    (summary,) = lines_of(err)
    assert summary == (f"masr pool: error: {path}: 3 of 4 LLMs have problems (typo, nokey, dead); "
                       "no chat call was made")
    # One listing per endpoint and key, made with the key; the key is never printed.
    assert [r.authorization for r in listings] == [f"Bearer {SECRET}"]
    assert SECRET not in out + err


def test_a_good_pool_exits_0(tmp_path, capsys):
    with LoopbackServer(models=("a-model", "b-model")) as srv:
        path = pool_file(tmp_path / "pool.yaml", entry("a", "a-model", srv.base_url),
                         entry("b", "b-model", srv.base_url))
        status = cli.main(["pool", "check", str(path)])
        assert srv.call_count == 0 and len(srv.model_requests) == 1
    out, err = capsys.readouterr()
    assert status == 0 and err == ""
    assert lines_of(out)[-1] == (f"{path}: all 2 LLMs ok (keys set, endpoints reachable, "
                                 "models listed)")
    assert all(line.startswith("ok ") for line in lines_of(out)[:-1])


async def test_a_silent_endpoint_is_reported_within_the_timeout(silent_url: str):
    import time

    spec = LLMSpec("slow", "m", silent_url, 1.0, 1.0, "d")
    started = time.perf_counter()
    (result,) = await check_pool([spec], timeout_s=0.3)
    assert time.perf_counter() - started < 3.0
    assert not result.ok and "no answer to GET /models within 0.3s" in result.detail


async def test_a_replay_llm_needs_no_network(tmp_path):
    (result,) = await check_pool([LLMSpec("r", "r", "replay://zeroeval/x", 1.0, 1.0, "d")])
    assert result.ok and "replay:// backend" in result.detail
    (unknown,) = await check_pool([LLMSpec("u", "u", "nosuch://x", 1.0, 1.0, "d")])
    assert not unknown.ok and "no transport for base_url scheme 'nosuch'" in unknown.detail


def test_an_invalid_pool_file_is_an_error_and_a_bad_command_line_a_usage_error(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"llms": [{"name": "x"}]}))
    assert cli.main(["pool", "check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"masr pool: error: invalid LLM pool {bad}") and "'price_in'" in err
    assert cli.main(["pool", "check", str(tmp_path / "missing.yaml")]) == 1
    assert "does not exist" in capsys.readouterr().err
    for argv in (["pool"], ["pool", "check"], ["pool", "check", str(bad), "--timeout", "0"]):
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        assert info.value.code == 2

"""Running `masr serve` for tests: as a real subprocess on a free port (:func:`masr_serve`), or
in-process over any pool (:func:`serving`), with a small client helper (:class:`Server`)."""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, AsyncIterator, Iterator, Optional

import openai
from prometheus_client.parser import text_string_to_metric_families

from masr_graph.replay import replay_specs
from masr_graph.serve import serve

KEY_ENV = "MASR_TEST_SERVER_KEY"
WORLD_SPECS = replay_specs("llmrouter", task="gsm8k")
"""The LLMRouter world's GSM8K pool, which the test checkpoints route over."""
STARTUP_TIMEOUT_S = 180.0


class Server:
    """A running server: its ``/v1`` base URL and bearer key (``None``: no auth)."""

    def __init__(self, base_url: str, key: Optional[str]):
        self.base_url, self.key = base_url, key

    def client(self, key: Optional[str] = None, **kw: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key=key or self.key or "unused",
                             max_retries=0, **kw)

    def async_client(self, **kw: Any) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.base_url, api_key=self.key or "unused",
                                  **{"max_retries": 0, **kw})

    def raw_bytes(self, method: str, path: str, body: Optional[bytes] = None,
                  headers: Optional[dict[str, str]] = None
                  ) -> tuple[int, dict[str, str], bytes]:
        """One HTTP request without any SDK; returns status, headers and the raw body."""
        request = urllib.request.Request(self.base_url.removesuffix("/v1") + path, data=body,
                                         method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read()

    def raw(self, method: str, path: str, body: Optional[bytes] = None,
            headers: Optional[dict[str, str]] = None) -> tuple[int, dict[str, str], Any]:
        """One HTTP request without any SDK; returns status, headers and the parsed JSON body."""
        status, got_headers, data = self.raw_bytes(method, path, body, headers)
        return status, got_headers, json.loads(data)

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}

    def metrics(self) -> dict[str, float]:
        """``/metrics`` as ``{"name{label=value,...}": value}`` (labels sorted by name)."""
        status, headers, body = self.raw_bytes("GET", "/metrics", headers=self.auth())
        assert status == 200, body
        return parse_metrics(body.decode("utf-8"))


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text exposition as ``{"name{label=value,...}": value}``."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


@contextlib.contextmanager
def masr_serve(checkpoint: Path, logs: Path, *args: str) -> Iterator[Server]:
    """`masr serve` on the LLMRouter replay world with bearer auth, as a subprocess on a free
    port; ``args`` are extra command-line options. On exit it is stopped with SIGTERM and must
    exit 0, say what it spent and never print its key."""
    key = "sk-test-" + secrets.token_hex(16)
    env = {**os.environ, KEY_ENV: key}
    with open(logs / "stdout", "w") as out, open(logs / "stderr", "w") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "masr_graph.cli", "serve", "--checkpoint", str(checkpoint),
             "--world", "llmrouter", "--host", "127.0.0.1", "--port", "0", "--api-key-env",
             KEY_ENV, *args],
            stdout=out, stderr=err, env=env)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    base_url = None
    while base_url is None:
        text = (logs / "stdout").read_text()
        if "listening on " in text:
            base_url = text.split("listening on ", 1)[1].split()[0]
        elif process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(
                f"masr serve did not start: {(logs / 'stderr').read_text()[-2000:]}")
        else:
            time.sleep(0.2)
    try:
        yield Server(base_url, key)
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    output = (logs / "stdout").read_text() + (logs / "stderr").read_text()
    assert "stopped after" in output
    assert key not in output, "the bearer token leaked into the server's output"


@contextlib.asynccontextmanager
async def serving(policy: Any, specs: Any, **options: Any) -> AsyncIterator[Server]:
    """:func:`masr_graph.serve.serve` in this process and event loop on a free port, without
    auth unless ``api_key`` is given; ``options`` go to ``serve``."""
    ready: asyncio.Queue[str] = asyncio.Queue()
    stop = asyncio.Event()
    task = asyncio.create_task(serve(policy, specs, port=0, ready=ready.put_nowait, stop=stop,
                                     **options))
    getter = asyncio.ensure_future(ready.get())
    await asyncio.wait((getter, task), timeout=STARTUP_TIMEOUT_S,
                       return_when=asyncio.FIRST_COMPLETED)
    if not getter.done():
        getter.cancel()
        task.result() if task.done() else task.cancel()  # a failed start raises here
        raise AssertionError("serve() did not start in time")
    line = getter.result()
    try:
        yield Server(line.split("listening on ", 1)[1].split()[0], options.get("api_key"))
    finally:
        stop.set()
        await task

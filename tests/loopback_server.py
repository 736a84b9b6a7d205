"""A real OpenAI-compatible chat-completions server on 127.0.0.1, with scripted replies and
deterministic fault injection, for tests and benchmarks of anything that talks to an LLM endpoint.

It is an aiohttp server on real sockets (port 0 picks a free port), so clients exercise their whole
HTTP stack: the ``openai`` SDK, connection pooling, timeouts, retries.

In-process use (the server runs on a background thread with its own event loop)::

    with LoopbackServer(responder=lambda body: "42", latency_s=0.0) as srv:
        pool = LLMPool([LLMSpec(name="m", model="m", base_url=srv.base_url, ...)])
        ...
        assert srv.call_count == 1
        srv.requests[0]["messages"]          # the JSON bodies received, in arrival order

As a subprocess (benchmarks, crash tests)::

    python tests/loopback_server.py --port 0 --latency-ms 100
    # prints the chosen port on the first stdout line, then serves until SIGTERM / SIGINT

Endpoints: ``POST /v1/chat/completions`` and ``GET /v1/models`` (lists the ids given as
``models``, default ``("loopback",)``; :attr:`LoopbackServer.model_requests` records who asked).

Replies. ``responder(body) -> str`` receives the request JSON (``model``, ``messages``,
``max_tokens``, ...) and returns the assistant text; the default echoes the last user message as
``"echo: <content>"``. A responder may raise to make the server answer HTTP 500. Responses carry
``id``, ``object``, ``created``, ``model`` (echoed), ``choices`` and ``usage`` counted by a simple
rule: ``prompt_tokens`` = whitespace-separated words over all message contents + 3 per message,
``completion_tokens`` = words of the reply (at least 1).

Fault injection. A marker in the *last user message* selects a fault::

    [[fault:KIND]]        every attempt of this request fails
    [[fault:KINDxN]]      the first N attempts of this request fail, later ones succeed

Attempts are counted per distinct request (sha256 of the canonical ``messages`` JSON, the same
bytes for every retry of a call), so the behaviour is deterministic however many calls run
concurrently. KIND is one of:

- ``429`` (optionally ``429:retry_after=S``, S in seconds, may be fractional): HTTP 429 with a
  ``Retry-After`` header when given;
- any other HTTP status code, e.g. ``500``, ``503``, ``400``: that status with an OpenAI-style
  JSON error body;
- ``hang``: the server sends nothing until the client gives up (or the server stops);
- ``badjson``: HTTP 200, ``Content-Type: application/json``, truncated JSON;
- ``empty_choices``: HTTP 200 with ``"choices": []`` but a ``usage`` block (a billed failure);
- ``no_choices``: HTTP 200 with ``"choices": []`` and no ``usage`` (an unknown outcome);
- ``no_usage``: HTTP 200 with a normal reply and no ``usage`` block (not a failure: the client
  must estimate the tokens);
- ``drop``: the connection is closed without any response.

Examples: ``"[[fault:429:retry_after=0.2x1]] What is 2+2?"``, ``"[[fault:500x2]] ..."``.

Random faults, for traffic whose text you do not control (benchmark queries): with
``fault_rate=p`` every attempt of a request without a marker fails with probability ``p``, with a
kind drawn from ``fault_mix``. The draw is a hash of ``(fault_seed, request, attempt)``, so it is
deterministic whatever the concurrency; :attr:`LoopbackServer.fault_counts` counts what was
injected, by kind. ``fault_rate=1.0, fault_mix=("500",)`` is an endpoint that fails every request.

Outages, for tests of what a client does while an endpoint is down or throttling:
``server.set_outage("503")`` (any kind in marker syntax without the count, e.g. ``"429"``,
``"429:retry_after=0.5"``, ``"hang"``) makes every chat request fail that way, markers and random
faults notwithstanding, until ``server.set_outage(None)``.

Timing: :attr:`LoopbackServer.received` has each request's arrival time and
:attr:`LoopbackServer.answers` each response's status and when the handler returned it (both
``time.monotonic()``), e.g. to check that no request arrived while a client should be waiting.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from aiohttp import web

Responder = Callable[[dict[str, Any]], str]

FAULT_PATTERN = re.compile(
    r"\[\[fault:(?P<kind>[a-z_]+|\d{3})(?::retry_after=(?P<retry_after>[0-9.]+))?(?:x(?P<count>\d+))?\]\]"
)
FAULT_KINDS = ("hang", "badjson", "empty_choices", "no_choices", "no_usage", "drop")
DEFAULT_FAULT_MIX = ("500", "429", "hang", "badjson", "empty_choices", "no_choices", "drop")
# Where a chat request's index in `received` travels from the handler to the answer log.
REQUEST_INDEX = web.RequestKey("loopback_index", int)
# A hung request waits at most this long, so a forgotten client cannot keep the server busy forever.
MAX_HANG_S = 300.0


@dataclass(frozen=True)
class Fault:
    """A parsed fault marker: ``kind`` is a name from ``FAULT_KINDS`` or an HTTP status as text;
    ``count`` is how many attempts fail (``None``: all of them)."""

    kind: str
    retry_after: Optional[str] = None
    count: Optional[int] = None


@dataclass(frozen=True)
class Answer:
    """One chat-completions response: when the handler returned it (``time.monotonic()``), its
    HTTP status (a ``drop`` shows 500, never delivered; a released ``hang`` 504) and the index of
    its request in :attr:`LoopbackServer.received`."""

    at: float
    status: int
    request: int


@dataclass(frozen=True)
class ModelsRequest:
    """One ``GET /v1/models``: arrival time and ``Authorization`` header."""

    at: float
    authorization: Optional[str]


@dataclass(frozen=True)
class ReceivedRequest:
    """One chat-completions request as the server saw it: arrival time (``time.monotonic()``),
    JSON body, ``Authorization`` header and the client's ``host:port`` (same port: same
    kept-alive connection)."""

    at: float
    body: dict[str, Any]
    authorization: Optional[str]
    peer: str


def echo_responder(body: dict[str, Any]) -> str:
    """Default responder: ``"echo: "`` followed by the content of the last user message."""
    return "echo: " + last_user_content(body)


def last_user_content(body: dict[str, Any]) -> str:
    """Content of the last ``user`` message of a chat-completions request body ("" if none)."""
    for message in reversed(body.get("messages") or []):
        if message.get("role") == "user":
            return str(message.get("content") or "")
    return ""


def parse_fault(text: str) -> Optional[Fault]:
    """The fault marker in ``text``, or ``None``. Raises ``ValueError`` for an unknown kind."""
    match = FAULT_PATTERN.search(text)
    if match is None:
        return None
    kind = match["kind"]
    if not kind.isdigit() and kind not in FAULT_KINDS:
        raise ValueError(f"unknown fault kind {kind!r}; allowed: an HTTP status or {FAULT_KINDS}")
    count = int(match["count"]) if match["count"] is not None else None
    return Fault(kind=kind, retry_after=match["retry_after"], count=count)


def count_tokens(text: str) -> int:
    """The server's usage rule for one text: whitespace-separated words."""
    return len(text.split())


class LoopbackServer:
    """OpenAI-compatible chat-completions server on 127.0.0.1 (see the module docstring).

    Args:
        responder: maps a request body to the reply text; default :func:`echo_responder`.
        latency_s: delay before every chat-completions response (faults included).
        port: TCP port; 0 picks a free one (read it from :attr:`port` / :attr:`base_url`).
        fault_rate: probability in [0, 1] that an attempt without a fault marker fails.
        fault_mix: the kinds random faults are drawn from (uniformly); marker syntax without
            the count, e.g. ``"500"``, ``"hang"``, ``"429:retry_after=0.1"``.
        fault_seed: seed of the random faults.
        models: the model ids ``GET /v1/models`` lists.
    """

    def __init__(
        self,
        responder: Optional[Responder] = None,
        *,
        latency_s: float = 0.0,
        port: int = 0,
        fault_rate: float = 0.0,
        fault_mix: Sequence[str] = DEFAULT_FAULT_MIX,
        fault_seed: int = 0,
        models: Sequence[str] = ("loopback",),
    ):
        if latency_s < 0:
            raise ValueError(f"latency_s must be >= 0 (got {latency_s})")
        if not 0.0 <= fault_rate <= 1.0:
            raise ValueError(f"fault_rate must be in [0, 1] (got {fault_rate})")
        self.random_faults = [parse_fault(f"[[fault:{kind}]]") for kind in fault_mix]
        if not self.random_faults or None in self.random_faults:
            raise ValueError(f"fault_mix must be fault kinds such as {DEFAULT_FAULT_MIX} "
                             f"(got {tuple(fault_mix)})")
        self.fault_rate = fault_rate
        self.fault_seed = fault_seed
        self._fault_counts: Counter[str] = Counter()
        self.responder: Responder = responder or echo_responder
        self.latency_s = latency_s
        self._requested_port = port
        self._lock = threading.Lock()
        self._received: list[ReceivedRequest] = []
        self._answers: list[Answer] = []
        self._model_requests: list[ModelsRequest] = []
        self.models = tuple(models)
        self._outage: Optional[Fault] = None
        self._attempts_by_request: dict[str, int] = {}
        self._completed = 0
        self._in_flight = 0
        self._max_in_flight = 0
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._runner: Optional[web.AppRunner] = None
        self._stopping: Optional[asyncio.Event] = None
        self.port: Optional[int] = None

    # ----------------------------------------------------------------------------- observations
    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>/v1``, what an OpenAI client takes as ``base_url``."""
        if self.port is None:
            raise RuntimeError("the server is not running")
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def requests(self) -> list[dict[str, Any]]:
        """JSON bodies of every chat-completions request received (faulted ones included)."""
        with self._lock:
            return [r.body for r in self._received]

    @property
    def received(self) -> list[ReceivedRequest]:
        """Every chat-completions request with its arrival time and Authorization header."""
        with self._lock:
            return list(self._received)

    @property
    def call_count(self) -> int:
        """Number of chat-completions requests received (faulted ones included)."""
        with self._lock:
            return len(self._received)

    @property
    def completed_count(self) -> int:
        """Number of chat-completions requests answered with a successful reply."""
        with self._lock:
            return self._completed

    @property
    def fault_counts(self) -> dict[str, int]:
        """Faults injected so far (marked and random), by kind."""
        with self._lock:
            return dict(self._fault_counts)

    @property
    def max_in_flight(self) -> int:
        """Most chat-completions requests handled at the same time so far."""
        with self._lock:
            return self._max_in_flight

    @property
    def answers(self) -> list[Answer]:
        """Every chat-completions response, in the order the handler returned them."""
        with self._lock:
            return list(self._answers)

    @property
    def model_requests(self) -> list[ModelsRequest]:
        """Every ``GET /v1/models`` received."""
        with self._lock:
            return list(self._model_requests)

    def set_outage(self, kind: Optional[str]) -> None:
        """Fail every chat request with ``kind`` (marker syntax without the count, e.g.
        ``"503"``, ``"429:retry_after=0.5"``, ``"hang"``) until called with ``None``."""
        fault = None
        if kind is not None:
            fault = parse_fault(f"[[fault:{kind}]]")
            if fault is None or fault.count is not None:
                raise ValueError(f"an outage is a fault kind such as '503' or '429' (got {kind!r})")
        with self._lock:
            self._outage = fault

    def reset(self) -> None:
        """Forget received requests, fault attempt counters and the in-flight maximum."""
        with self._lock:
            self._received.clear()
            self._answers.clear()
            self._model_requests.clear()
            self._attempts_by_request.clear()
            self._completed = 0
            self._fault_counts.clear()
            self._max_in_flight = self._in_flight

    # ------------------------------------------------------------------------------- lifecycle
    def start(self) -> "LoopbackServer":
        """Serve on a background thread; returns once the socket is listening."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._start_site())
            except BaseException as exc:  # surfaced to the caller of start()
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name="loopback-llm-server", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        """Stop serving and join the thread; hung requests are released."""
        if self._loop is None or self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop = None
        self._thread = None
        self.port = None

    def __enter__(self) -> "LoopbackServer":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def serve_forever(self) -> None:
        """Serve on the current event loop until cancelled (the subprocess mode)."""
        self._loop = asyncio.get_running_loop()
        await self._start_site()
        try:
            await asyncio.Event().wait()
        finally:
            await self._cleanup()

    async def _start_site(self) -> None:
        self._stopping = asyncio.Event()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        # A real backlog: the benchmark opens 64+ connections at once.
        site = web.TCPSite(self._runner, "127.0.0.1", self._requested_port, backlog=1024)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _cleanup(self) -> None:
        if self._stopping is not None:
            self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -------------------------------------------------------------------------------- handlers
    async def _models(self, request: web.Request) -> web.Response:
        with self._lock:
            self._model_requests.append(
                ModelsRequest(time.monotonic(), request.headers.get("Authorization"))
            )
        return web.json_response({
            "object": "list",
            "data": [{"id": model, "object": "model", "created": 0, "owned_by": "loopback"}
                     for model in self.models],
        })

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        with self._lock:
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
        try:
            response = await self._answer(request)
            if REQUEST_INDEX in request:
                with self._lock:
                    self._answers.append(
                        Answer(time.monotonic(), response.status, request[REQUEST_INDEX])
                    )
            return response
        finally:
            with self._lock:
                self._in_flight -= 1

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return _error(400, "request body is not JSON")
        fault = parse_fault(last_user_content(body))
        request_key = hashlib.sha256(
            json.dumps(body.get("messages"), sort_keys=True).encode()
        ).hexdigest()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        received = ReceivedRequest(
            time.monotonic(),
            body,
            request.headers.get("Authorization"),
            f"{peer[0]}:{peer[1]}" if peer else "",
        )
        with self._lock:
            request[REQUEST_INDEX] = len(self._received)
            self._received.append(received)
            attempt = self._attempts_by_request.get(request_key, 0) + 1
            self._attempts_by_request[request_key] = attempt
            outage = self._outage
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        active_fault = fault if fault and (fault.count is None or attempt <= fault.count) else None
        if fault is None:
            active_fault = self._random_fault(request_key, attempt)
        if outage is not None:
            active_fault = outage
        if active_fault is not None:
            with self._lock:
                self._fault_counts[active_fault.kind] += 1
        if active_fault is not None and active_fault.kind != "no_usage":
            return await self._inject(request, active_fault)
        try:
            text = self.responder(body)
        except Exception as exc:  # a test's responder failing is reported, not fatal
            return _error(500, f"responder raised {type(exc).__name__}: {exc}")
        payload = _completion_payload(body, text, with_usage=active_fault is None)
        with self._lock:
            self._completed += 1
        return web.json_response(payload)

    def _random_fault(self, request_key: str, attempt: int) -> Optional[Fault]:
        if not self.fault_rate:
            return None
        digest = hashlib.sha256(f"{self.fault_seed}:{request_key}:{attempt}".encode()).digest()
        draw = int.from_bytes(digest[:8], "big") / 2.0**64
        if draw >= self.fault_rate:
            return None
        return self.random_faults[int.from_bytes(digest[8:16], "big") % len(self.random_faults)]

    async def _inject(self, request: web.Request, fault: Fault) -> web.StreamResponse:
        if fault.kind.isdigit():
            response = _error(int(fault.kind), f"injected HTTP {fault.kind}")
            if fault.retry_after is not None:
                response.headers["Retry-After"] = fault.retry_after
            return response
        if fault.kind == "hang":
            assert self._stopping is not None
            try:
                await asyncio.wait_for(self._stopping.wait(), timeout=MAX_HANG_S)
            except asyncio.TimeoutError:
                pass
            return _error(504, "hang released")
        if fault.kind == "badjson":
            return web.Response(
                text='{"id": "chatcmpl-bad", "choices": [{"message": {"content": "tru',
                content_type="application/json",
            )
        if fault.kind in ("empty_choices", "no_choices"):
            payload = _completion_payload(
                await request.json(), "", with_usage=fault.kind == "empty_choices"
            )
            payload["choices"] = []
            return web.json_response(payload)
        assert fault.kind == "drop"
        assert request.transport is not None
        request.transport.abort()
        # The connection is gone; aiohttp discards whatever is returned here.
        return web.Response(status=500)


def _error(status: int, message: str) -> web.Response:
    return web.json_response(
        {"error": {"message": message, "type": "loopback_fault", "code": status}}, status=status
    )


def _completion_payload(body: dict[str, Any], text: str, *, with_usage: bool) -> dict[str, Any]:
    messages = body.get("messages") or []
    payload: dict[str, Any] = {
        "id": "chatcmpl-" + hashlib.sha1(text.encode()).hexdigest()[:12],
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "loopback"),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
    }
    if with_usage:
        prompt_tokens = sum(count_tokens(str(m.get("content") or "")) + 3 for m in messages)
        completion_tokens = max(1, count_tokens(text))
        payload["usage"] = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
    return payload


def main() -> None:
    parser = argparse.ArgumentParser(description="OpenAI-compatible loopback chat server")
    parser.add_argument("--port", type=int, default=0, help="TCP port (0: pick a free one)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay per response")
    parser.add_argument("--fault-rate", type=float, default=0.0,
                        help="probability that an attempt without a marker fails (default: 0)")
    parser.add_argument("--fault-mix", nargs="+", default=list(DEFAULT_FAULT_MIX),
                        help=f"kinds of random faults (default: {' '.join(DEFAULT_FAULT_MIX)})")
    parser.add_argument("--fault-seed", type=int, default=0, help="seed of the random faults")
    args = parser.parse_args()
    server = LoopbackServer(latency_s=args.latency_ms / 1000.0, port=args.port,
                            fault_rate=args.fault_rate, fault_mix=args.fault_mix,
                            fault_seed=args.fault_seed)

    async def serve() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        serving = asyncio.create_task(server.serve_forever())
        while server.port is None and not serving.done():
            await asyncio.sleep(0.005)
        print(server.port, flush=True)
        try:
            await serving
        except asyncio.CancelledError:
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)

    asyncio.run(serve())


if __name__ == "__main__":
    main()

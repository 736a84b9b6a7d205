"""``masr serve``: an OpenAI-compatible HTTP server in front of a trained router.

The model ``masr`` routes the last user message of a chat request through the router (task, mode,
agent count, roles, LLMs), runs that multi-agent system over the server's LLM pool and answers
with the decision node's output. ``usage`` is summed over every LLM call of the run (agents and
decision node); the plan and the run's accounting travel in extra response fields::

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="...")
    reply = client.chat.completions.create(model="masr", messages=[{"role": "user", "content": q}])
    reply.choices[0].message.content        # the decision node's answer
    reply.usage                             # prompt/completion tokens of all calls
    reply.masr_plan                         # {"mode", "k", "roles", "llms", "task", "probs", ...}
    reply.masr_run                          # {"query_id", "calls", "cost_usd", ...}

Pass ``extra_body={"masr_include_trace": True}`` to also get the full run trace (``masr_trace``).
The cost preference λ of a request is its ``masr_cost_lambda`` field or a model name
``masr-lambda-<λ>`` (default: the server's ``--lam``).

Streaming (``stream=true``): server-sent events in OpenAI's ``chat.completion.chunk`` format — a
role chunk, the decision node's answer in content chunks (cut after whitespace, about
:data:`STREAM_CHUNK_CHARS` characters each), a chunk with ``finish_reason`` that also carries
``masr_plan``, ``masr_run`` (and ``masr_trace`` when asked), then with
``stream_options={"include_usage": True}`` a chunk with ``choices: []`` and ``usage``, then
``data: [DONE]``. The answer exists only once every agent has run, so the response starts (its
status line and headers included) only then: every failure — validation, unknown query, budget
cap, upstream failure, timeout, overload — is an ordinary JSON error response with its status,
exactly as without streaming, and the SDKs raise their typed errors. After the first byte
nothing is left to fail but the connection: when the client goes away the server stops writing
(the run is finished and paid for) and counts ``masr_errors_total{type="client_disconnected"}``.
Text and usage are those of the non-streaming answer to the same request.

Endpoints: ``GET /v1/models``, ``GET /v1/models/{id}``, ``POST /v1/chat/completions``,
``GET /metrics`` (Prometheus text format, or OpenMetrics when the scraper asks for it; behind the
bearer key like ``/v1``, see :class:`ServeMetrics`) and an unauthenticated ``GET /health``
(status, router batching and admission counters). Errors have OpenAI's body
``{"error": {"message", "type", "param", "code"}}``; errors a retry cannot fix carry
``x-should-retry: false``, which the OpenAI SDKs obey.

Limits: a request runs for at most ``request_timeout_s`` from admission (routing, waiting for a
run slot and the run); then its run is cancelled and it is answered 504 ``request_timeout``
(not retried by the SDKs: the same run would take as long again). At most
``max_concurrent_runs`` runs execute at once and ``max_queued`` more requests wait (being routed
or for a slot); a request beyond that is answered at once with 503 ``server_overloaded``,
``Retry-After`` (whole seconds) and ``retry-after-ms`` set to the recent mean request duration,
which the SDKs wait before retrying. 503 and not 429 because the bound is the server's capacity,
shared by all clients, and 429 here already means the budget cap is reached, which no retry
fixes.

Request bodies are strict JSON (RFC 8259): UTF-8, no ``NaN``/``Infinity``, no unpaired surrogate
escapes, nested at most :data:`MAX_JSON_DEPTH` levels — anything else is a 400 ``invalid_json``,
whatever its shape or size; a body over ``max_body_bytes`` (default 1 MiB) is a 413
``request_too_large``, with the same error body.

Concurrency: every request is its own task on one event loop. Queries that arrive while the
router is busy are routed together in the next forward pass (:class:`RouterBatcher`), off the
loop in a worker thread; at most ``max_concurrent_runs`` multi-agent runs execute at once and
the pool enforces each endpoint's own concurrency limit and the budget cap.

Only the last user message is routed and answered: the agents' system prompts come from their
roles, so a request's system messages and earlier turns are not forwarded. Sampling parameters
(``temperature``, ``top_p``, ``max_tokens``...) are accepted for compatibility and ignored: the
server's settings apply to every agent.
"""
from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import json
import logging
import math
import os
import re
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable, Iterator, Optional, Sequence

from aiohttp import http_exceptions, web
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder

from .errors import BudgetExceeded, ConfigError, MasrError, UnknownQueryError
from .llm import Budget, LLMPool, LLMSpec, ResponseCache, notional_note
from .plan import Plan
from .router.library import LibraryPolicy
from .runtime import MASExecutor, Trace
from .runtime.decision import AnswerKey

log = logging.getLogger(__name__)

MODEL_ID = "masr"
"""The one model the server serves."""

DOMAIN_VOTE_TASKS: dict[str, tuple[str, ...]] = {
    "math": ("math", "gsm8k"),
    "code": ("humaneval",),
    "knowledge": ("mmlu",),
}
"""Benchmarks whose answer keys group a domain's replies in majority votes, tried in order: the
MATH key reads ``\\boxed{}`` and answer statements, the GSM8K key the ``#### N`` form."""

MAX_JSON_DEPTH = 64
"""Deepest nesting of arrays and objects accepted in a request body; a chat request needs 4."""
DEFAULT_MAX_BODY_BYTES = 1 << 20
"""Largest request body accepted by default (1 MiB, aiohttp's own default)."""

DEFAULT_REQUEST_TIMEOUT_S = 300.0
"""Longest a request runs by default (half the OpenAI SDK's own 600 s default, so the client
gets the server's 504 rather than giving up first)."""
DEFAULT_MAX_QUEUED = 1024
"""Requests that may wait beyond the running ones by default."""
STREAM_CHUNK_CHARS = 64
"""A streamed content chunk holds at least this many characters (all the rest, for the last
one), cut just after whitespace so no word is split."""

HONOURED_FIELDS = ("model", "messages", "stream", "stream_options", "n", "seed",
                   "masr_include_trace", "masr_cost_lambda")
STREAM_OPTIONS = ("include_usage", "include_obfuscation")
"""Keys of ``stream_options``; ``include_obfuscation`` is accepted and ignored (no
``obfuscation`` field is added)."""
LAMBDA_MODEL_PREFIX = f"{MODEL_ID}-lambda-"
"""A model name ``masr-lambda-<λ>`` asks for the plans of that cost preference."""
IGNORED_NUMBER_FIELDS = ("temperature", "top_p", "presence_penalty", "frequency_penalty")
IGNORED_INT_FIELDS = ("max_tokens", "max_completion_tokens")
IGNORED_OTHER_FIELDS = ("user", "metadata", "store")
MESSAGE_ROLES = ("system", "developer", "user", "assistant", "tool")
_ALLOWED_FIELDS = (*HONOURED_FIELDS, *IGNORED_NUMBER_FIELDS, *IGNORED_INT_FIELDS,
                   *IGNORED_OTHER_FIELDS)


def domain_answer_key(domain: Optional[str]) -> Optional[AnswerKey]:
    """Majority-vote answer key for a served query of ``domain`` (the router's task).

    :data:`DOMAIN_VOTE_TASKS` for the built-in domains, else the keys of the registered
    benchmarks of that domain; ``None`` (votes compare whole replies) when there are none.
    """
    from .benchmarks.tasks.registry import benchmark_names, get_benchmark

    tasks = DOMAIN_VOTE_TASKS.get(domain or "") or tuple(
        name for name in benchmark_names() if get_benchmark(name).domain == domain
    )
    return functools.partial(_first_answer_key, tasks) if tasks else None


def _first_answer_key(tasks: Sequence[str], reply: str) -> Optional[str]:
    from .benchmarks.tasks.registry import answer_key

    for task in tasks:
        key = answer_key(task, reply)
        if key is not None:
            return key
    return None


def served_query_id(query: str) -> str:
    """Query id of a served query: a digest of its text, so the same query (with the same seed)
    samples the same communication edges and hits the response cache."""
    return "serve-" + hashlib.sha256(query.encode("utf-8")).hexdigest()[:16]


class RouterBatcher:
    """Routes concurrently arriving queries in shared forward passes.

    A query waits while the router runs on the previous batch; all queries that gathered in the
    meantime (up to ``max_batch``, grouped by their cost preference) then go through one forward
    pass in a worker thread, so the event loop keeps serving and an idle server adds no delay.

    Args:
        policy: the trained router with its library and gate
            (:class:`~masr_graph.router.library.LibraryPolicy`).
        max_batch: most queries per forward pass.
    """

    def __init__(self, policy: LibraryPolicy, *, max_batch: int = 128):
        if max_batch < 1:
            raise ConfigError(f"max_batch must be >= 1 (got {max_batch})")
        self.policy = policy
        self.max_batch = max_batch
        self.batches = 0
        """Forward passes run so far."""
        self.routed = 0
        """Queries routed so far."""
        self._waiting: list[tuple[str, float, asyncio.Future[Plan]]] = []
        self._worker: Optional[asyncio.Task[None]] = None
        policy.router.eval()

    async def route(self, query: str, cost_lambda: float) -> Plan:
        """The plan for ``query`` at ``cost_lambda``.

        Raises:
            RoutingError: the router cannot route it.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Plan] = loop.create_future()
        self._waiting.append((query, cost_lambda, future))
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._waiting:
            # A waiter cancelled meanwhile (its request timed out) is not routed for nothing.
            self._waiting = [item for item in self._waiting if not item[2].done()]
            if not self._waiting:
                break
            lam = self._waiting[0][1]
            batch = [item for item in self._waiting if item[1] == lam][: self.max_batch]
            chosen = {id(item) for item in batch}
            self._waiting = [item for item in self._waiting if id(item) not in chosen]
            queries = [query for query, _, _ in batch]
            try:
                plans = await asyncio.to_thread(self.policy.route, queries, lam)
            except Exception as exc:  # every waiter gets the failure, the server carries on
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.batches += 1
            self.routed += len(batch)
            for (_, _, future), plan in zip(batch, plans):
                if not future.done():  # the client may have gone away
                    future.set_result(plan)


class ServerOverloaded(MasrError):
    """A request beyond the admission bound (``max_concurrent_runs`` running plus ``max_queued``
    waiting); answered 503 with ``Retry-After``.

    Args:
        in_flight: requests admitted and not finished.
        limit: the bound.
        retry_after_s: when a retry has a fair chance: the recent mean request duration.
    """

    def __init__(self, in_flight: int, limit: int, retry_after_s: float):
        super().__init__(f"the server is at capacity: {in_flight} requests in flight, the limit "
                         f"is {limit} (max_concurrent_runs + max_queued); retry after "
                         f"{retry_after_s:.1f} s")
        self.in_flight, self.limit, self.retry_after_s = in_flight, limit, retry_after_s


class RequestTimeout(MasrError):
    """A request that did not finish within the server's per-request timeout; its run was
    cancelled. Answered 504."""


def trace_calls(trace: Trace) -> list:
    """The LLM calls of a run: agent steps, then the decision node's call when it made one."""
    calls = list(trace.steps)
    if trace.decision is not None and trace.decision.call is not None:
        calls.append(trace.decision.call)
    return calls


LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                     120.0, 300.0, 600.0)
"""Histogram buckets of request and run durations: milliseconds on replay pools, minutes for
debates on slow endpoints."""
ROUTING_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                     30.0)
"""Histogram buckets of routing durations (a forward pass, or the wait for one under load)."""
CHAT_ENDPOINT = "/v1/chat/completions"


class ServeMetrics:
    """The Prometheus metrics of one server, in a registry of its own (not the process-global
    one), so several servers or test apps in one process count apart.

    Updated as requests finish:

    - ``masr_requests_total{endpoint, status, stream}``: HTTP requests by route template
      (``/v1/chat/completions``, ``/v1/models``...; ``other`` for unknown paths), status code and
      ``stream`` (``true`` / ``false``; ``unknown`` for a chat request whose body is unreadable);
    - ``masr_errors_total{type}``: error responses by their OpenAI error code
      (``invalid_json``, ``unknown_query``, ``insufficient_quota``, ``upstream_error``,
      ``request_timeout``, ``server_overloaded``, ``invalid_api_key``...), and
      ``client_disconnected`` for streams the client left;
    - ``masr_request_duration_seconds{stream}``: chat completions, arrival to last byte;
    - ``masr_routing_duration_seconds``: a query's wait for, and share of, a router forward pass;
    - ``masr_run_duration_seconds``: multi-agent runs, from the moment they got a slot;
    - ``masr_llm_calls_total{llm, outcome}`` (``ok``, ``cached``, ``failed``),
      ``masr_llm_tokens_total{llm, kind}`` (``prompt``, ``completion``) and
      ``masr_llm_cost_usd_total{llm}``: the LLM calls of finished runs, from their traces
      (``cost_usd``: what the calls cost now, 0 for cache hits; notional on replay and local
      pools, see ``masr_run.cost_notional``). Calls of runs cancelled by the timeout are not in
      them; the pool's ledger has them.

    Read from the service at each scrape: ``masr_requests_in_flight``, ``masr_queue_depth``
    (admitted requests not running yet: being routed or waiting for a run slot),
    ``masr_runs_active``, ``masr_admission_limit``, ``masr_router_batches_total`` and
    ``masr_routed_queries_total``.

    Args:
        llms: the pool's LLM names; their series exist (at 0) from the start.
    """

    def __init__(self, llms: Sequence[str] = ()):
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter("masr_requests", "HTTP requests by endpoint, status and stream",
                                ["endpoint", "status", "stream"], registry=registry)
        self.errors = Counter("masr_errors", "error responses by OpenAI error code, and streams "
                              "the client left (client_disconnected)", ["type"], registry=registry)
        self.request_seconds = Histogram(
            "masr_request_duration_seconds", "chat completions: arrival to last byte",
            ["stream"], buckets=LATENCY_BUCKETS_S, registry=registry)
        self.routing_seconds = Histogram(
            "masr_routing_duration_seconds", "routing a query: the wait for and share of a "
            "router forward pass", buckets=ROUTING_BUCKETS_S, registry=registry)
        self.run_seconds = Histogram(
            "masr_run_duration_seconds", "multi-agent runs, from the moment they got a slot",
            buckets=LATENCY_BUCKETS_S, registry=registry)
        self.llm_calls = Counter("masr_llm_calls", "LLM calls of finished runs by outcome",
                                 ["llm", "outcome"], registry=registry)
        self.llm_tokens = Counter("masr_llm_tokens", "tokens of the LLM calls of finished runs",
                                  ["llm", "kind"], registry=registry)
        self.llm_cost = Counter("masr_llm_cost_usd", "$ the LLM calls of finished runs cost "
                                "(0 for cache hits; notional on replay and local pools)",
                                ["llm"], registry=registry)
        for llm in llms:
            for outcome in ("ok", "cached", "failed"):
                self.llm_calls.labels(llm, outcome)
            for kind in ("prompt", "completion"):
                self.llm_tokens.labels(llm, kind)
            self.llm_cost.labels(llm)

    def watch(self, service: "MasService") -> None:
        """Expose ``service``'s admission and router counters, read at each scrape."""
        self.registry.register(_ServiceCollector(service))

    def record_request(self, endpoint: str, status: int, stream: str, error: Optional[str],
                       seconds: float) -> None:
        """Count one HTTP request (and its error code); time it when it is a chat completion."""
        self.requests.labels(endpoint, str(status), stream).inc()
        if error is not None:
            self.errors.labels(error).inc()
        if endpoint == CHAT_ENDPOINT:
            self.request_seconds.labels(stream).observe(seconds)

    def record_run(self, trace: Trace, seconds: float) -> None:
        """Count a finished run's LLM calls, tokens and $ by LLM, and time it."""
        self.run_seconds.observe(seconds)
        for call in trace_calls(trace):
            outcome = "failed" if not call.ok else "cached" if call.cached else "ok"
            self.llm_calls.labels(call.llm, outcome).inc()
            self.llm_tokens.labels(call.llm, "prompt").inc(call.prompt_tokens)
            self.llm_tokens.labels(call.llm, "completion").inc(call.completion_tokens)
            self.llm_cost.labels(call.llm).inc(call.cost_usd)

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """``(body, content type)`` of a scrape: the Prometheus text format, or OpenMetrics when
        ``accept`` (the scraper's ``Accept`` header) asks for it."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


class _ServiceCollector:
    """Gauges and counters a :class:`MasService` keeps itself, read at scrape time."""

    def __init__(self, service: "MasService"):
        self.service = service

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator[Any]:
        service = self.service
        for name, text, value in (
            ("masr_requests_in_flight", "chat requests admitted and not finished",
             service.in_flight),
            ("masr_queue_depth", "admitted requests not running yet (being routed or waiting "
             "for a run slot)", service.in_flight - service.running),
            ("masr_runs_active", "multi-agent runs executing", service.running),
            ("masr_admission_limit", "requests in flight beyond which requests get 503 "
             "(max_concurrent_runs + max_queued)", service.admission_limit),
        ):
            yield GaugeMetricFamily(name, text, value=value)
        yield CounterMetricFamily("masr_router_batches", "router forward passes",
                                  value=service.batcher.batches)
        yield CounterMetricFamily("masr_routed_queries", "queries routed",
                                  value=service.batcher.routed)


class MasService:
    """What the server holds for its lifetime: the trained policy (behind a
    :class:`RouterBatcher`) and the executor (with its pool).

    Args:
        policy: the trained router with its library and gate.
        executor: runs the routed multi-agent systems.
        seed: default edge-sampling seed (a request's ``seed`` overrides it).
        cost_lambda: default cost preference λ (a request's overrides it).
        max_concurrent_runs: most multi-agent runs executing at once; later requests queue.
        max_batch: most queries per router forward pass.
        max_queued: most admitted requests waiting (being routed or for a run slot) beyond the
            running ones; :meth:`complete` refuses more with :class:`ServerOverloaded`.
        request_timeout_s: longest a request may take from admission to its finished run
            (``None``: no limit); then its run is cancelled (:class:`RequestTimeout`).

    Raises:
        ConfigError: a limit out of range, or plans over LLMs the pool lacks.
    """

    def __init__(
        self,
        policy: LibraryPolicy,
        executor: MASExecutor,
        *,
        seed: int = 0,
        cost_lambda: float = 100.0,
        max_concurrent_runs: int = 64,
        max_batch: int = 128,
        max_queued: int = DEFAULT_MAX_QUEUED,
        request_timeout_s: Optional[float] = DEFAULT_REQUEST_TIMEOUT_S,
    ):
        if max_concurrent_runs < 1:
            raise ConfigError(f"max_concurrent_runs must be >= 1 (got {max_concurrent_runs})")
        if isinstance(max_queued, bool) or not isinstance(max_queued, int) or max_queued < 0:
            raise ConfigError(f"max_queued must be an integer >= 0 (got {max_queued!r})")
        if request_timeout_s is not None and not (math.isfinite(request_timeout_s)
                                                  and request_timeout_s > 0):
            raise ConfigError(f"request_timeout_s must be a finite number > 0 or None (got "
                              f"{request_timeout_s!r})")
        missing = sorted({llm for plan in policy.library for llm in plan.llms}
                         - set(executor.pool.specs))
        if missing:
            raise ConfigError(
                f"the router's plans use LLMs {missing} that the pool lacks; the pool has "
                f"{sorted(executor.pool.specs)}"
            )
        self.batcher = RouterBatcher(policy, max_batch=max_batch)
        self.executor = executor
        self.seed = seed
        self.cost_lambda = cost_lambda
        self.notional = notional_note(executor.pool.specs.values())
        """Why the pool's $ figures are not money (``""`` when they are)."""
        self.created = int(time.time())
        self.max_concurrent_runs = max_concurrent_runs
        self.max_queued = max_queued
        self.request_timeout_s = request_timeout_s
        self.in_flight = 0
        """Requests admitted by :meth:`complete` and not finished."""
        self.running = 0
        """Runs holding a slot."""
        self._runs = asyncio.Semaphore(max_concurrent_runs)
        self._mean_request_s: Optional[float] = None
        self.metrics = ServeMetrics(sorted(executor.pool.specs))
        """This server's Prometheus metrics (their own registry)."""
        self.metrics.watch(self)

    @property
    def admission_limit(self) -> int:
        """Requests in flight beyond which :meth:`complete` refuses: running plus queued."""
        return self.max_concurrent_runs + self.max_queued

    def retry_after_s(self) -> float:
        """What a refused request is told to wait: the recent mean request duration (an
        exponential average; 1 s before any finished), within [0.1, 60] s (the OpenAI SDKs
        ignore longer waits). By then most requests in flight now have finished: a conservative
        wait, since a retry into a still-full server is refused again."""
        mean = 1.0 if self._mean_request_s is None else self._mean_request_s
        return min(max(mean, 0.1), 60.0)

    async def warm_up(self) -> None:
        """Load the text encoder and build the vocabulary's graph before the first request."""
        await self.batcher.route("warm-up query: what is 1 + 1?", self.cost_lambda)

    async def complete(self, query: str, *, seed: Optional[int] = None,
                       cost_lambda: Optional[float] = None) -> tuple[Plan, Trace]:
        """Admit ``query``, route it (at ``cost_lambda``, default the server's) and run its
        multi-agent system, within the per-request timeout.

        Raises:
            ServerOverloaded: :attr:`admission_limit` requests are already in flight.
            RequestTimeout: routing, the wait for a slot and the run took longer than
                ``request_timeout_s``; the run was cancelled.
            BudgetExceeded: the budget cap refused a call.
            UnknownQueryError: the replay pool has no recorded outcome for ``query``.
        """
        if self.in_flight >= self.admission_limit:
            raise ServerOverloaded(self.in_flight, self.admission_limit, self.retry_after_s())
        self.in_flight += 1
        started = time.perf_counter()
        try:
            work = self._route_and_run(query, seed, cost_lambda)
            if self.request_timeout_s is None:
                return await work
            return await _within(work, self.request_timeout_s)
        finally:
            self.in_flight -= 1
            elapsed = time.perf_counter() - started
            self._mean_request_s = (elapsed if self._mean_request_s is None
                                    else 0.9 * self._mean_request_s + 0.1 * elapsed)

    async def _route_and_run(self, query: str, seed: Optional[int],
                             cost_lambda: Optional[float]) -> tuple[Plan, Trace]:
        started = time.perf_counter()
        plan = await self.batcher.route(
            query, self.cost_lambda if cost_lambda is None else cost_lambda)
        self.metrics.routing_seconds.observe(time.perf_counter() - started)
        async with self._runs:
            self.running += 1
            started = time.perf_counter()
            try:
                trace = await self.executor.run(
                    query, plan, query_id=served_query_id(query), task=plan.task,
                    answer_key=domain_answer_key(plan.task),
                    seed=self.seed if seed is None else seed,
                )
            finally:
                self.running -= 1
        self.metrics.record_run(trace, time.perf_counter() - started)
        return plan, trace


CANCEL_GRACE_S = 5.0
"""How long a timed-out request waits for its cancelled run to unwind before it is answered."""


async def _within(work: Awaitable[tuple[Plan, Trace]], timeout_s: float) -> tuple[Plan, Trace]:
    """``await work``, cancelled after ``timeout_s`` (:class:`RequestTimeout`). Unlike
    ``asyncio.wait_for``, a ``TimeoutError`` raised inside ``work`` is not mistaken for the
    deadline."""
    task = asyncio.ensure_future(work)
    try:
        done, _ = await asyncio.wait((task,), timeout=timeout_s)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not done:
        task.cancel()
        # Let the run unwind (its slot freed, its LLM calls cancelled) before answering.
        await asyncio.wait((task,), timeout=CANCEL_GRACE_S)
        if not task.done():
            log.warning("a timed-out run did not stop within %.0f s of its cancellation",
                        CANCEL_GRACE_S)
        elif not task.cancelled():
            task.exception()  # it finished just then: retrieved, so asyncio does not log it
        raise RequestTimeout(f"the request did not finish within the server's timeout of "
                             f"{timeout_s:g} s (masr serve --request-timeout-s); its run was "
                             "cancelled")
    return task.result()


class _ApiError(Exception):
    """An error answered with OpenAI's error body; with ``retry_after`` (seconds) the answer
    asks for a retry then (``Retry-After``, ``retry-after-ms``, ``x-should-retry: true``)."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: Optional[str] = None, code: Optional[str] = None,
                 retry_after: Optional[float] = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (
            status, message, type, param, code)
        self.retry_after = retry_after

    def response(self) -> web.Response:
        headers = {} if self.status in (408, 409) else {"x-should-retry": "false"}
        if self.retry_after is not None:
            headers = {"Retry-After": str(max(1, math.ceil(self.retry_after))),
                       "retry-after-ms": str(max(1, round(self.retry_after * 1000))),
                       "x-should-retry": "true"}
        if self.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        return web.json_response(
            {"error": {"message": self.message, "type": self.type, "param": self.param,
                       "code": self.code}},
            status=self.status, headers=headers,
        )


# Typed request keys where aiohttp has them (3.13+); older versions take the plain names.
_request_key: Callable[[str, type], Any] = getattr(web, "RequestKey", lambda name, _type: name)
STREAM_LABEL = _request_key("masr_stream", str)
"""``stream`` label of a request's metrics: ``true``, ``false`` or ``unknown`` (unread body)."""
ERROR_LABEL = _request_key("masr_error", str)
"""Error code of a request's error response (or ``client_disconnected``), for the metrics."""


@web.middleware
async def _count_requests(request: web.Request,
                          handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                          ) -> web.StreamResponse:
    """Outermost middleware: every request's status, stream flag, error code and duration go to
    the service's :class:`ServeMetrics` (errors are responses by then, see
    :func:`_openai_errors`)."""
    started = time.perf_counter()
    resource = getattr(request.match_info.route, "resource", None)
    endpoint = resource.canonical if resource is not None else "other"
    if endpoint == CHAT_ENDPOINT:
        request[STREAM_LABEL] = "unknown"
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:  # redirects: _openai_errors answers every error itself
        status = exc.status
        raise
    finally:
        request.app[SERVICE].metrics.record_request(
            endpoint, status, request.get(STREAM_LABEL, "false"), request.get(ERROR_LABEL),
            time.perf_counter() - started)


@web.middleware
async def _openai_errors(request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                         ) -> web.StreamResponse:
    try:
        return await handler(request)
    except _ApiError as exc:
        error = exc
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error = _ApiError(exc.status, f"{exc.reason}: {request.method} {request.path}",
                          code=exc.reason.lower().replace(" ", "_"))
    except MasrError as exc:
        log.error("request failed: %s", exc)
        error = _ApiError(500, str(exc), type="server_error", code=type(exc).__name__)
    except Exception:
        log.exception("internal error while serving %s %s", request.method, request.path)
        error = _ApiError(500, "internal server error (see the server log)", type="server_error",
                          code="internal_error")
    request[ERROR_LABEL] = error.code or error.type
    return error.response()


def _bearer_auth(api_key: str) -> Callable[..., Awaitable[web.StreamResponse]]:
    expected = api_key.encode("utf-8")

    @web.middleware
    async def check(request: web.Request,
                    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                    ) -> web.StreamResponse:
        if request.path != "/health":
            header = request.headers.get("Authorization", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise _ApiError(401, "You didn't provide an API key: send it in an "
                                     "'Authorization: Bearer <key>' header",
                                code="invalid_api_key")
            if not hmac.compare_digest(token.strip().encode("utf-8"), expected):
                raise _ApiError(401, "Incorrect API key provided", code="invalid_api_key")
        return await handler(request)

    return check


SERVICE = web.AppKey("service", MasService)
MAX_BODY_BYTES = web.AppKey("max_body_bytes", int)


def create_app(service: MasService, *, api_key: Optional[str] = None,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> web.Application:
    """The aiohttp application serving ``service``.

    Args:
        service: router, vocabulary and executor (and the metrics served at ``/metrics``).
        api_key: bearer token every request but ``/health`` must carry (``/metrics``
            included); ``None``: no auth.
        max_body_bytes: largest request body; a larger one is answered 413.

    Raises:
        ConfigError: ``api_key`` is given but empty, or ``max_body_bytes`` < 1.
    """
    if api_key is not None and not api_key.strip():
        raise ConfigError("api_key must be a non-empty string or None (no auth)")
    if max_body_bytes < 1:
        raise ConfigError(f"max_body_bytes must be >= 1 (got {max_body_bytes})")
    middlewares = [_count_requests, _openai_errors] + (
        [_bearer_auth(api_key)] if api_key is not None else [])
    app = web.Application(middlewares=middlewares, client_max_size=max_body_bytes)
    app[SERVICE] = service
    app[MAX_BODY_BYTES] = max_body_bytes
    app.router.add_get("/health", _health)
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/v1/models/{model}", _model)
    app.router.add_post(CHAT_ENDPOINT, _chat_completions)
    app.router.add_get("/metrics", _metrics)
    return app


async def _health(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    return web.json_response({"status": "ok", "router_batches": service.batcher.batches,
                              "routed_queries": service.batcher.routed,
                              "requests_in_flight": service.in_flight,
                              "runs_active": service.running})


async def _metrics(request: web.Request) -> web.Response:
    body, content_type = request.app[SERVICE].metrics.exposition(
        request.headers.get("Accept", ""))
    return web.Response(body=body, headers={"Content-Type": content_type})


def _model_card(service: MasService) -> dict[str, Any]:
    return {"id": MODEL_ID, "object": "model", "created": service.created,
            "owned_by": "masr_graph"}


async def _models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [_model_card(request.app[SERVICE])]})


async def _model(request: web.Request) -> web.Response:
    name = request.match_info["model"]
    _model_lambda(name)  # 404 for a name this server does not serve
    return web.json_response({**_model_card(request.app[SERVICE]), "id": name})


def _model_not_found(name: str) -> _ApiError:
    return _ApiError(404, f"The model {name!r} does not exist; this server serves {MODEL_ID!r} "
                          f"(its default cost preference) and {LAMBDA_MODEL_PREFIX}<λ>",
                     param="model", code="model_not_found")


async def _chat_completions(request: web.Request) -> web.StreamResponse:
    service = request.app[SERVICE]
    body = await _json_object(request)
    request[STREAM_LABEL] = "true" if body.get("stream") is True else "false"
    chat = _validated_request(body)
    try:
        plan, trace = await service.complete(chat.query, seed=chat.seed,
                                             cost_lambda=chat.cost_lambda)
    except UnknownQueryError as exc:
        raise _ApiError(400, f"this server's pool cannot answer the query: {exc}",
                        param="messages", code="unknown_query") from None
    except BudgetExceeded as exc:
        raise _ApiError(429, f"the server's budget cap is reached: {exc}",
                        type="insufficient_quota", code="insufficient_quota") from None
    except ServerOverloaded as exc:
        raise _ApiError(503, str(exc), type="server_error", code="server_overloaded",
                        retry_after=exc.retry_after_s) from None
    except RequestTimeout as exc:
        raise _ApiError(504, str(exc), type="server_error", code="request_timeout") from None
    if trace.error is not None:
        failures = "; ".join(f"{s.llm}: {s.error}" for s in trace.failed_steps[:3])
        raise _ApiError(502, f"the multi-agent system produced no answer: {trace.error} "
                             f"({failures})", type="server_error", code="upstream_error")
    if chat.stream:
        return await _send_events(request, _completion_chunks(chat, service, plan, trace))
    return web.json_response(_completion(chat, service, plan, trace))


def _usage(trace: Trace) -> dict[str, int]:
    totals = trace.totals()
    return {"prompt_tokens": totals["prompt_tokens"],
            "completion_tokens": totals["completion_tokens"],
            "total_tokens": totals["prompt_tokens"] + totals["completion_tokens"]}


def _masr_fields(chat: "ChatRequest", service: MasService, plan: Plan, trace: Trace
                 ) -> dict[str, Any]:
    """The extra fields of an answer: the plan, the run's accounting and, when asked, the
    trace."""
    totals = trace.totals()
    fields: dict[str, Any] = {
        "masr_plan": plan.to_dict(),
        "masr_run": {
            "query_id": trace.query_id,
            "seed": trace.seed,
            "task": trace.task,
            "decision": trace.decision.method if trace.decision else None,
            "calls": totals["calls"],
            "failed_calls": totals["failed_calls"],
            "cached_calls": totals["cached_calls"],
            "cost_usd": totals["cost_usd"],
            "would_have_cost_usd": totals["would_have_cost_usd"],
            "cost_notional": service.notional or None,
            "wall_s": trace.wall_s,
        },
    }
    if chat.include_trace:
        fields["masr_trace"] = trace.to_dict()
    return fields


def _completion(chat: "ChatRequest", service: MasService, plan: Plan, trace: Trace
                ) -> dict[str, Any]:
    """The ``chat.completion`` answer."""
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": chat.model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": trace.final_answer},
            "finish_reason": "stop",
            "logprobs": None,
        }],
        "usage": _usage(trace),
        **_masr_fields(chat, service, plan, trace),
    }


def _completion_chunks(chat: "ChatRequest", service: MasService, plan: Plan, trace: Trace
                       ) -> list[dict[str, Any]]:
    """The same answer as :func:`_completion`, as ``chat.completion.chunk`` objects: the role,
    the content pieces (:func:`answer_chunks`), ``finish_reason`` with the ``masr_*`` fields,
    and the usage chunk (``choices: []``) when ``include_usage``; with ``include_usage`` every
    other chunk has ``usage: null``, as OpenAI's do."""
    head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk",
            "created": int(time.time()), "model": chat.model}
    no_usage = {"usage": None} if chat.include_usage else {}

    def chunk(delta: dict[str, Any], finish_reason: Optional[str] = None,
              **extra: Any) -> dict[str, Any]:
        return {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                     "finish_reason": finish_reason}], **no_usage, **extra}

    chunks = [chunk({"role": "assistant", "content": ""})]
    chunks.extend(chunk({"content": piece}) for piece in answer_chunks(trace.final_answer))
    chunks.append(chunk({}, "stop", **_masr_fields(chat, service, plan, trace)))
    if chat.include_usage:
        chunks.append({**head, "choices": [], "usage": _usage(trace)})
    return chunks


_AFTER_WHITESPACE = re.compile(r"\s+")


def answer_chunks(text: str, size: int = STREAM_CHUNK_CHARS) -> list[str]:
    """``text`` cut into the content pieces of a stream: each at least ``size`` characters and
    ending just after a run of whitespace (so no word is split), the last one what remains;
    ``"".join(answer_chunks(text)) == text``, and ``[]`` for ``""``.

    Raises:
        ConfigError: ``size`` < 1.
    """
    if size < 1:
        raise ConfigError(f"size must be >= 1 (got {size})")
    pieces, start = [], 0
    while start < len(text):
        after = _AFTER_WHITESPACE.search(text, start + size)
        end = after.end() if after else len(text)
        pieces.append(text[start:end])
        start = end
    return pieces


SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache",
               "X-Accel-Buffering": "no"}
"""A stream's headers; ``X-Accel-Buffering: no`` keeps nginx-like proxies from buffering it."""


async def _send_events(request: web.Request, chunks: Iterable[dict[str, Any]]
                       ) -> web.StreamResponse:
    """Send ``chunks`` as server-sent events (``data: <json>``, then ``data: [DONE]``). Every
    event is serialised before the status line goes out, so only the connection can fail after
    it: then writing stops and the request counts as ``client_disconnected``."""
    events = [b"data: " + json.dumps(chunk).encode("utf-8") + b"\n\n" for chunk in chunks]
    events.append(b"data: [DONE]\n\n")
    response = web.StreamResponse(status=200, headers=SSE_HEADERS)
    try:
        await response.prepare(request)
        for event in events:
            await response.write(event)
        await response.write_eof()
    except ConnectionError as exc:  # ConnectionResetError, aiohttp's ClientConnectionResetError
        request[ERROR_LABEL] = "client_disconnected"
        log.info("the client of a stream went away: %s", exc)
    return response


async def _json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, or the :class:`_ApiError` saying why it is not one
    (400 ``invalid_json`` for any malformed body, 413 for one over the size limit)."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[MAX_BODY_BYTES]
        raise _ApiError(413, f"the request body is larger than this server's limit of {limit} "
                             "bytes (masr serve --max-body-mb)", code="request_too_large") from None
    except (http_exceptions.HttpProcessingError, ValueError) as exc:  # e.g. broken chunking
        raise _invalid_json(f"the request body could not be read ({exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _invalid_json(f"the body is not UTF-8 (byte {exc.start}: "
                            f"{raw[exc.start:exc.start + 1]!r})") from None
    try:
        body = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise _invalid_json(f"the body nests arrays or objects deeper than {MAX_JSON_DEPTH} "
                            "levels") from None
    except ValueError as exc:  # json.JSONDecodeError, NaN / Infinity
        raise _invalid_json(str(exc)) from None
    problem = _json_problem(body)
    if problem:
        raise _invalid_json(problem)
    if not isinstance(body, dict):
        raise _ApiError(400, f"the request body must be a JSON object (got "
                             f"{type(body).__name__})", code="invalid_json")
    return body


def _invalid_json(reason: str) -> _ApiError:
    return _ApiError(400, f"We could not parse the JSON body of your request ({reason}); send "
                          "a JSON object with 'model' and 'messages'", code="invalid_json")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (RFC 8259 has no NaN or Infinity)")


def _json_problem(value: Any) -> str:
    """What makes a parsed body unusable although it parsed — nesting deeper than
    :data:`MAX_JSON_DEPTH` (validation messages quote values with ``repr``, which recurses) or a
    string that is not Unicode text (an unpaired surrogate escape cannot be encoded, hashed or
    sent on) — or ``""``. Iterative, so no body can exhaust the stack here."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth >= MAX_JSON_DEPTH:
                return f"the body nests arrays or objects deeper than {MAX_JSON_DEPTH} levels"
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as exc:
                return (f"a string holds an unpaired surrogate escape at character {exc.start}; "
                        "strings must be Unicode text")
    return ""


@dataclass(frozen=True)
class ChatRequest:
    """A validated chat request.

    Args:
        model: the model name asked for (echoed in the answer).
        query: the last user message: what is routed and answered.
        seed: the edge-sampling seed (``None``: the server's).
        cost_lambda: the cost preference λ (``None``: the server's).
        include_trace: add the run's trace (``masr_trace``).
        stream: answer with server-sent events.
        include_usage: with ``stream``: end with a usage chunk.
    """

    model: str
    query: str
    seed: Optional[int] = None
    cost_lambda: Optional[float] = None
    include_trace: bool = False
    stream: bool = False
    include_usage: bool = False


def _validated_request(body: dict[str, Any]) -> ChatRequest:
    """The :class:`ChatRequest` of a chat request body, or the :class:`_ApiError` naming the
    first problem. The cost preference comes from ``masr_cost_lambda`` or a model name
    ``masr-lambda-<λ>`` (``None``: the server's)."""
    unknown = sorted(set(body) - set(_ALLOWED_FIELDS))
    if unknown:
        raise _ApiError(400, f"Unrecognized request argument(s) supplied: {', '.join(unknown)}; "
                             f"this server accepts: {', '.join(_ALLOWED_FIELDS)}",
                        param=unknown[0], code="unknown_parameter")
    for name in ("model", "messages"):
        if name not in body:
            raise _ApiError(400, f"Missing required parameter: {name!r}", param=name,
                            code="missing_required_parameter")
    model = body["model"]
    if not isinstance(model, str):
        raise _ApiError(400, f"'model' must be a string (got {model!r:.60})", param="model",
                        code="invalid_type")
    cost_lambda = _model_lambda(model)
    if "masr_cost_lambda" in body:
        value = body["masr_cost_lambda"]
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not math.isfinite(value) or value < 0):
            raise _ApiError(400, f"'masr_cost_lambda' must be a finite number >= 0 (got "
                                 f"{value!r:.60})", param="masr_cost_lambda",
                            code="invalid_value")
        cost_lambda = float(value)
    stream, include_usage = _stream_settings(body)
    if body.get("n", 1) != 1 or isinstance(body.get("n"), bool):
        raise _ApiError(400, f"only n=1 is supported (got n={body.get('n')!r})", param="n",
                        code="unsupported_value")
    for name in IGNORED_NUMBER_FIELDS:
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value)):
            raise _ApiError(400, f"{name!r} must be a number (got {value!r:.60})", param=name,
                            code="invalid_type")
    for name in (*IGNORED_INT_FIELDS, "seed"):
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise _ApiError(400, f"{name!r} must be an integer (got {value!r:.60})", param=name,
                            code="invalid_type")
    include_trace = body.get("masr_include_trace", False)
    if not isinstance(include_trace, bool):
        raise _ApiError(400, f"'masr_include_trace' must be a boolean (got {include_trace!r:.60})",
                        param="masr_include_trace", code="invalid_type")
    return ChatRequest(model=model, query=_last_user_text(body["messages"]),
                       seed=body.get("seed"), cost_lambda=cost_lambda,
                       include_trace=include_trace, stream=stream, include_usage=include_usage)


def _stream_settings(body: dict[str, Any]) -> tuple[bool, bool]:
    """``(stream, include_usage)`` of a request body (``null`` is the default, as for
    OpenAI)."""
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _ApiError(400, f"'stream' must be a boolean (got {stream!r:.60})", param="stream",
                        code="invalid_type")
    options = body.get("stream_options")
    if options is None:
        return bool(stream), False
    if not stream:
        raise _ApiError(400, "'stream_options' is only allowed when 'stream' is true",
                        param="stream_options", code="invalid_value")
    if not isinstance(options, dict):
        raise _ApiError(400, f"'stream_options' must be an object (got {options!r:.60})",
                        param="stream_options", code="invalid_type")
    unknown = sorted(set(options) - set(STREAM_OPTIONS))
    if unknown:
        raise _ApiError(400, f"Unrecognized stream option(s): {', '.join(unknown)}; this server "
                             f"accepts: {', '.join(STREAM_OPTIONS)}",
                        param=f"stream_options.{unknown[0]}", code="unknown_parameter")
    for name in STREAM_OPTIONS:
        value = options.get(name)
        if value is not None and not isinstance(value, bool):
            raise _ApiError(400, f"'stream_options.{name}' must be a boolean (got "
                                 f"{value!r:.60})", param=f"stream_options.{name}",
                            code="invalid_type")
    return True, bool(options.get("include_usage"))


def _model_lambda(model: str) -> Optional[float]:
    """The cost preference a model name asks for: ``None`` for :data:`MODEL_ID`, λ for
    ``masr-lambda-<λ>``; any other name is a 404."""
    if model == MODEL_ID:
        return None
    if model.startswith(LAMBDA_MODEL_PREFIX):
        try:
            value = float(model[len(LAMBDA_MODEL_PREFIX):])
        except ValueError:
            value = -1.0
        if math.isfinite(value) and value >= 0:
            return value
    raise _model_not_found(model)


def _last_user_text(messages: Any) -> str:
    if not isinstance(messages, list) or not messages:
        raise _ApiError(400, f"'messages' must be a non-empty array of messages (got "
                             f"{messages!r:.60})", param="messages", code="invalid_type")
    texts: list[Optional[str]] = []
    for index, message in enumerate(messages):
        param = f"messages[{index}]"
        if not isinstance(message, dict) or message.get("role") not in MESSAGE_ROLES:
            raise _ApiError(400, f"{param} must be an object with 'role' one of "
                                 f"{list(MESSAGE_ROLES)} (got {message!r:.80})", param=param,
                            code="invalid_value")
        texts.append(_content_text(message.get("content"), param)
                     if message["role"] == "user" else None)
    user_texts = [text for text in texts if text is not None]
    if not user_texts:
        raise _ApiError(400, "'messages' holds no message with role 'user'; the last user "
                             "message is the query that is routed", param="messages",
                        code="invalid_value")
    if not user_texts[-1].strip():
        raise _ApiError(400, "the last user message is empty; it is the query that is routed",
                        param="messages", code="invalid_value")
    return user_texts[-1]


def _content_text(content: Any, param: str) -> str:
    """A user message's text: a string, or the text parts of a content array joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for index, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(
                    part.get("text"), str):
                raise _ApiError(400, f"{param}.content[{index}] must be a text part "
                                     f"{{'type': 'text', 'text': str}}; only text is supported "
                                     f"(got {part!r:.80})", param=f"{param}.content",
                                code="invalid_value")
            parts.append(part["text"])
        return "\n".join(parts)
    raise _ApiError(400, f"{param}.content must be a string or an array of text parts (got "
                         f"{content!r:.60})", param=f"{param}.content", code="invalid_type")


def callable_specs(specs: Sequence[LLMSpec], environ: Optional[dict[str, str]] = None
                   ) -> tuple[list[LLMSpec], list[LLMSpec]]:
    """``(callable, keyless)``: the LLMs whose API key variable is set (or that need none) and
    those whose key is missing, which a server must not route to."""
    env = os.environ if environ is None else environ
    keyless = [s for s in specs if s.api_key_env and not env.get(s.api_key_env)]
    return [s for s in specs if s not in keyless], keyless


def callable_policy(policy: LibraryPolicy, specs: Sequence[LLMSpec]
                    ) -> tuple[LibraryPolicy, list[LLMSpec]]:
    """The policy restricted to the pool's callable LLMs (:func:`callable_specs`), and those
    LLMs; warns about the LLMs left out.

    Raises:
        ConfigError: no LLM of the pool can be called.
    """
    usable, keyless = callable_specs(list(specs))
    if keyless:
        log.warning("not routing to %s: their API key variables (%s) are not set",
                    [s.name for s in keyless], sorted({s.api_key_env or "" for s in keyless}))
    if not usable:
        raise ConfigError(f"no LLM of the pool can be called: set the API key variables "
                          f"{sorted({s.api_key_env or '' for s in keyless})}")
    return policy.restricted_to([s.name for s in usable]), usable


async def serve(
    policy: LibraryPolicy,
    specs: Sequence[LLMSpec],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: Optional[str] = None,
    max_usd: Optional[float] = None,
    unknown_outcome_cost: str = "worst_case",
    cache_path: Optional[Path] = None,
    ledger_path: Optional[Path] = None,
    seed: int = 0,
    cost_lambda: float = 100.0,
    max_tokens: int = 512,
    temperature: float = 0.0,
    max_concurrent_runs: int = 64,
    max_queued: int = DEFAULT_MAX_QUEUED,
    request_timeout_s: Optional[float] = DEFAULT_REQUEST_TIMEOUT_S,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ready: Callable[[str], None] = print,
    stop: Optional[asyncio.Event] = None,
) -> None:
    """Serve ``policy`` (a trained router with its plan library, see
    :meth:`LibraryPolicy.from_checkpoint`) over the pool ``specs`` until ``stop`` is set
    (default: until SIGINT or SIGTERM).

    Plans that need an LLM whose API key variable is unset are left out of the library (a
    warning names the LLMs). The pool does not fail fast (``fail_fast_after=None``): a server
    outlives an endpoint's outage, and each request it breaks is answered 502 on its own.
    ``cost_lambda`` is the cost preference of requests that name none. ``ready`` receives one
    line with the bound address once the server accepts connections (``port=0`` picks a free
    port). ``unknown_outcome_cost`` is the pool's policy for attempts of unknown outcome;
    ``max_body_bytes`` the largest request body (larger: 413); ``max_concurrent_runs``,
    ``max_queued`` and ``request_timeout_s`` the limits of :class:`MasService` (beyond them:
    503, 504). With ``ledger_path`` every LLM call record (tokens, $, cache hits, failures) is
    appended to that JSONL file as the call settles (:class:`~masr_graph.llm.LLMPool`'s
    ``ledger_path``; an existing file is appended to, so restarts keep one ledger); default:
    the ledger is kept in memory only.

    Raises:
        ConfigError: no callable LLM, no plan left over the callable ones, or bad settings.
    """
    policy, usable = callable_policy(policy, specs)
    cache = ResponseCache(cache_path) if cache_path is not None else None
    budget = Budget(max_usd) if max_usd is not None else None
    pool = LLMPool(usable, cache=cache, budget=budget, run_id=f"masr-serve-{int(time.time())}",
                   unknown_outcome_cost=unknown_outcome_cost, fail_fast_after=None,
                   ledger_path=ledger_path)
    try:
        executor = MASExecutor(pool, keep_messages=False, max_tokens=max_tokens,
                               temperature=temperature)
        service = MasService(policy, executor, seed=seed, cost_lambda=cost_lambda,
                             max_concurrent_runs=max_concurrent_runs, max_queued=max_queued,
                             request_timeout_s=request_timeout_s)
        await service.warm_up()
        app = create_app(service, api_key=api_key, max_body_bytes=max_body_bytes)
        # Many clients connecting at once must not overflow the listen queue (SYN retries
        # would add whole seconds of latency).
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port, backlog=1024)
            await site.start()
            bound_host, bound_port = runner.addresses[0][:2]
            ready(f"masr serve: listening on http://{bound_host}:{bound_port}/v1 (model "
                  f"{MODEL_ID!r}, {len(policy.library)} plans over {len(usable)} LLMs, "
                  f"λ={cost_lambda:g}, auth {'on' if api_key else 'off'})")
            if stop is None:
                stop = asyncio.Event()
                loop = asyncio.get_running_loop()
                for signum in (signal.SIGINT, signal.SIGTERM):
                    loop.add_signal_handler(signum, stop.set)
            await stop.wait()
        finally:
            await runner.cleanup()
    finally:
        await pool.aclose()
        if cache is not None:
            await cache.aclose()
    totals = pool.ledger.totals()
    note = notional_note(usable)
    ready(f"masr serve: stopped after {totals.calls} LLM calls ({totals.cached_calls} cached), "
          f"${totals.cost_usd:.4f} spent{f' ({note})' if note else ''}"
          + (f"; every call is on record in {ledger_path}" if ledger_path is not None else ""))

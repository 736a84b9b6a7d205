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

Endpoints: ``GET /v1/models``, ``GET /v1/models/{id}``, ``POST /v1/chat/completions`` and an
unauthenticated ``GET /health`` (status and router batching counters). Errors have OpenAI's body
``{"error": {"message", "type", "param", "code"}}``; errors a retry cannot fix carry
``x-should-retry: false``, which the OpenAI SDKs obey.

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
server's settings apply to every agent. Streaming is not supported (the answer exists only once
every agent has run).
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
import signal
import time
import uuid
from pathlib import Path
from typing import Any, Awaitable, Callable, Optional, Sequence

from aiohttp import http_exceptions, web

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

HONOURED_FIELDS = ("model", "messages", "stream", "n", "seed", "masr_include_trace",
                   "masr_cost_lambda")
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
    ):
        if max_concurrent_runs < 1:
            raise ConfigError(f"max_concurrent_runs must be >= 1 (got {max_concurrent_runs})")
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
        self._runs = asyncio.Semaphore(max_concurrent_runs)

    async def warm_up(self) -> None:
        """Load the text encoder and build the vocabulary's graph before the first request."""
        await self.batcher.route("warm-up query: what is 1 + 1?", self.cost_lambda)

    async def complete(self, query: str, *, seed: Optional[int] = None,
                       cost_lambda: Optional[float] = None) -> tuple[Plan, Trace]:
        """Route ``query`` (at ``cost_lambda``, default the server's) and run its multi-agent
        system.

        Raises:
            BudgetExceeded: the budget cap refused a call.
            UnknownQueryError: the replay pool has no recorded outcome for ``query``.
        """
        plan = await self.batcher.route(
            query, self.cost_lambda if cost_lambda is None else cost_lambda)
        async with self._runs:
            trace = await self.executor.run(
                query, plan, query_id=served_query_id(query), task=plan.task,
                answer_key=domain_answer_key(plan.task),
                seed=self.seed if seed is None else seed,
            )
        return plan, trace


class _ApiError(Exception):
    """An error answered with OpenAI's error body."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: Optional[str] = None, code: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (
            status, message, type, param, code)

    def response(self) -> web.Response:
        headers = {} if self.status in (408, 409) else {"x-should-retry": "false"}
        if self.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        return web.json_response(
            {"error": {"message": self.message, "type": self.type, "param": self.param,
                       "code": self.code}},
            status=self.status, headers=headers,
        )


@web.middleware
async def _openai_errors(request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                         ) -> web.StreamResponse:
    try:
        return await handler(request)
    except _ApiError as exc:
        return exc.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _ApiError(exc.status, f"{exc.reason}: {request.method} {request.path}",
                         code=exc.reason.lower().replace(" ", "_")).response()
    except MasrError as exc:
        log.error("request failed: %s", exc)
        return _ApiError(500, str(exc), type="server_error", code=type(exc).__name__).response()
    except Exception:
        log.exception("internal error while serving %s %s", request.method, request.path)
        return _ApiError(500, "internal server error (see the server log)",
                         type="server_error").response()


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
        service: router, vocabulary and executor.
        api_key: bearer token every request (but ``/health``) must carry; ``None``: no auth.
        max_body_bytes: largest request body; a larger one is answered 413.

    Raises:
        ConfigError: ``api_key`` is given but empty, or ``max_body_bytes`` < 1.
    """
    if api_key is not None and not api_key.strip():
        raise ConfigError("api_key must be a non-empty string or None (no auth)")
    if max_body_bytes < 1:
        raise ConfigError(f"max_body_bytes must be >= 1 (got {max_body_bytes})")
    middlewares = [_openai_errors] + ([_bearer_auth(api_key)] if api_key is not None else [])
    app = web.Application(middlewares=middlewares, client_max_size=max_body_bytes)
    app[SERVICE] = service
    app[MAX_BODY_BYTES] = max_body_bytes
    app.router.add_get("/health", _health)
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/v1/models/{model}", _model)
    app.router.add_post("/v1/chat/completions", _chat_completions)
    return app


async def _health(request: web.Request) -> web.Response:
    batcher = request.app[SERVICE].batcher
    return web.json_response({"status": "ok", "router_batches": batcher.batches,
                              "routed_queries": batcher.routed})


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


async def _chat_completions(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    body = await _json_object(request)
    query, seed, include_trace, cost_lambda = _validated_request(body)
    try:
        plan, trace = await service.complete(query, seed=seed, cost_lambda=cost_lambda)
    except UnknownQueryError as exc:
        raise _ApiError(400, f"this server's pool cannot answer the query: {exc}",
                        param="messages", code="unknown_query") from None
    except BudgetExceeded as exc:
        raise _ApiError(429, f"the server's budget cap is reached: {exc}",
                        type="insufficient_quota", code="insufficient_quota") from None
    if trace.error is not None:
        failures = "; ".join(f"{s.llm}: {s.error}" for s in trace.failed_steps[:3])
        raise _ApiError(502, f"the multi-agent system produced no answer: {trace.error} "
                             f"({failures})", type="server_error", code="upstream_error")
    totals = trace.totals()
    payload: dict[str, Any] = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body["model"],
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": trace.final_answer},
            "finish_reason": "stop",
            "logprobs": None,
        }],
        "usage": {
            "prompt_tokens": totals["prompt_tokens"],
            "completion_tokens": totals["completion_tokens"],
            "total_tokens": totals["prompt_tokens"] + totals["completion_tokens"],
        },
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
    if include_trace:
        payload["masr_trace"] = trace.to_dict()
    return web.json_response(payload)


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


def _validated_request(body: dict[str, Any]
                       ) -> tuple[str, Optional[int], bool, Optional[float]]:
    """``(query, seed, include_trace, cost_lambda)`` of a chat request, or the
    :class:`_ApiError` naming the first problem. The cost preference comes from
    ``masr_cost_lambda`` or a model name ``masr-lambda-<λ>`` (``None``: the server's)."""
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
    if body.get("stream"):
        raise _ApiError(400, "stream=true is not supported: the decision node's answer exists "
                             "only after every agent has run; send stream=false",
                        param="stream", code="unsupported_value")
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
    return _last_user_text(body["messages"]), body.get("seed"), include_trace, cost_lambda


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
    seed: int = 0,
    cost_lambda: float = 100.0,
    max_tokens: int = 512,
    temperature: float = 0.0,
    max_concurrent_runs: int = 64,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ready: Callable[[str], None] = print,
    stop: Optional[asyncio.Event] = None,
) -> None:
    """Serve ``policy`` (a trained router with its plan library, see
    :func:`masr_graph.cli.load_policy`) over the pool ``specs`` until ``stop`` is set (default:
    until SIGINT or SIGTERM).

    Plans that need an LLM whose API key variable is unset are left out of the library (a
    warning names the LLMs). The pool does not fail fast (``fail_fast_after=None``): a server
    outlives an endpoint's outage, and each request it breaks is answered 502 on its own.
    ``cost_lambda`` is the cost preference of requests that name none. ``ready`` receives one
    line with the bound address once the server accepts connections (``port=0`` picks a free
    port). ``unknown_outcome_cost`` is the pool's policy for attempts of unknown outcome;
    ``max_body_bytes`` the largest request body (larger: 413).

    Raises:
        ConfigError: no callable LLM, no plan left over the callable ones, or bad settings.
    """
    usable, keyless = callable_specs(specs)
    if keyless:
        log.warning("not routing to %s: their API key variables (%s) are not set",
                    [s.name for s in keyless], sorted({s.api_key_env or "" for s in keyless}))
    if not usable:
        raise ConfigError(f"no LLM of the pool can be called: set the API key variables "
                          f"{sorted({s.api_key_env or '' for s in keyless})}")
    policy = policy.restricted_to([s.name for s in usable])
    cache = ResponseCache(cache_path) if cache_path is not None else None
    budget = Budget(max_usd) if max_usd is not None else None
    pool = LLMPool(usable, cache=cache, budget=budget, run_id=f"masr-serve-{int(time.time())}",
                   unknown_outcome_cost=unknown_outcome_cost, fail_fast_after=None)
    try:
        executor = MASExecutor(pool, keep_messages=False, max_tokens=max_tokens,
                               temperature=temperature)
        service = MasService(policy, executor, seed=seed, cost_lambda=cost_lambda,
                             max_concurrent_runs=max_concurrent_runs)
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
                  f"{MODEL_ID!r}, {len(policy.library)} plans over {len(usable)} LLMs, λ={cost_lambda:g}, auth {'on' if api_key else 'off'})")
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
          f"${totals.cost_usd:.4f} spent{f' ({note})' if note else ''}")

"""The LLM pool: every chat call of the library goes through :meth:`LLMPool.chat`.

For one call the pool: validates the request; looks the reply up in the cache (a hit costs $0 and
reports what the original call cost); otherwise makes up to ``max_attempts`` attempts through the
LLM's transport — each attempt takes a slot of its endpoint's concurrency limit, reserves its
worst-case cost in the budget, and runs under the LLM's ``timeout_s`` — backing off exponentially
with jitter between transient failures, or as long as a ``Retry-After`` header asks. Success,
failure, cache hit, budget refusal or cancellation: every call appends one :class:`CallRecord` to
the ledger, charged what the budget charged it (attempts of unknown outcome included, see
:data:`UNKNOWN_OUTCOME_COSTS`), so the ledger's total is the budget's ``spent_usd``; with
``ledger_path`` each record is also appended to a JSONL file as the call settles, so the record
of spend survives the process (a crash or SIGKILL loses none of the settled calls).

What one attempt learns about its endpoint holds back every call to it
(:mod:`masr_graph.llm.health`): a ``Retry-After`` or repeated 429s pause the whole endpoint, a
429 halves its concurrency limit (which grows back with answers), and an endpoint whose calls
keep failing has its circuit opened — calls to it then fail at once with
:class:`~masr_graph.errors.CircuitOpenError`, without a request or a reservation, until one trial
request finds it answering again.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, NoReturn, Optional, Sequence, Union

from ..errors import (
    BudgetExceeded,
    CircuitOpenError,
    ConfigError,
    LLMCallError,
    LLMUnavailableError,
    MasrError,
    UnknownLLMError,
)
from .budget import Budget
from .cache import CachedResponse, ResponseCache, cache_key
from .config import load_pool_config
from .deadline import within
from .health import EndpointHealth, EndpointRefusal
from .ledger import Ledger
from .tokens import estimate_prompt_tokens, estimate_text_tokens, prompt_tokens_upper_bound
from .transport import TransientError, Transport, transport_factory, url_scheme
from .types import CallContext, CallRecord, ChatResult, Completion, LLMSpec, Message

log = logging.getLogger(__name__)

MESSAGE_ROLES = ("system", "user", "assistant")
MESSAGE_KEYS = ("role", "content")
UNKNOWN_OUTCOME_COSTS = ("worst_case", "prompt_only")
"""How an attempt of unknown outcome is charged, identically in the budget and the ledger:
``worst_case`` (default) charges its reservation (prompt-token upper bound x ``price_in`` +
``max_tokens`` x ``price_out``), so the cap holds even if the provider bills every token it may
have generated; ``prompt_only`` charges the prompt bound x ``price_in`` only, for providers that
bill a request cut short for its prompt — under it the cap may be passed by what such requests
generated before they were cut."""
DEFAULT_FAIL_FAST_AFTER = 5
"""Calls failing for good, with none answered, after which an LLM (or an endpoint) counts as
unavailable and the run stops."""
DEFAULT_CIRCUIT_AFTER = 5
"""Calls to one endpoint failing for good in a row (transient faults) that open its circuit."""
DEFAULT_CIRCUIT_OPEN_S = 30.0
"""How long an open circuit refuses calls before letting one trial request through."""


@dataclass
class _Spend:
    """What a call's failed attempts were charged so far (in the budget and the ledger alike):
    those the provider reported usage for, and those of unknown outcome."""

    billed_usd: float = 0.0
    billed_attempts: int = 0
    estimated_usd: float = 0.0
    estimated_attempts: int = 0
    sent_attempts: int = 0  # handed to the transport (not those refused or cancelled before)

    @property
    def usd(self) -> float:
        return self.billed_usd + self.estimated_usd


@dataclass
class _Attempt:
    """Outcome of one attempt: a completion, or the transient failure that ended it."""

    cost_usd: float
    completion: Optional[Completion] = None
    usage: tuple[int, int, bool] = (0, 0, False)  # prompt tokens, completion tokens, estimated
    failure: Optional[TransientError] = None


class LLMPool:
    """Named LLMs behind one async ``chat`` call, with cache, budget, retries and a ledger.

    Args:
        specs: the pool's LLMs (names must be unique), e.g. from :func:`load_pool_config`.
        cache: reply cache; ``None`` sends every call to its endpoint. Identical calls running at
            the same time are made once when a cache is set (the others wait and get a hit).
        budget: spending cap for the run; ``None`` means no cap.
        max_attempts: tries per call, the first included (>= 1).
        backoff_base_s: backoff before the 2nd attempt; doubles each time, with jitter
            (each wait is uniform in [½, 1] × its step).
        backoff_max_s: longest wait between attempts; a ``Retry-After`` asking for more ends
            the call instead.
        run_id: id written into every record (unless the call's context sets one);
            default: a fresh random id.
        unknown_outcome_cost: how attempts of unknown outcome (timeouts, connections dropped
            after sending, malformed replies, cancellations) are charged, one of
            :data:`UNKNOWN_OUTCOME_COSTS`; the budget and the ledger charge the same amount.
        fail_fast_after: when the first that many calls to an LLM, or to all LLMs of one
            endpoint, fail for good (:class:`LLMCallError`) and none has been answered, that and
            every later call to it raises :class:`LLMUnavailableError`, which the runtime does
            not swallow: a wrong URL, model id or key stops the run instead of producing a run
            of failed agents. ``None`` disables the check (a server that must outlive outages).
        circuit_after: calls to one endpoint failing for good in a row through transient
            faults that open its circuit (see :mod:`masr_graph.llm.health`); ``None`` disables
            the breaker. Unlike ``fail_fast_after`` it does not stop the run: calls fail fast
            with :class:`~masr_graph.errors.CircuitOpenError` (an :class:`LLMCallError`) while
            the circuit is open, then one trial request decides whether it closes.
        circuit_open_s: how long an open circuit refuses calls before its trial request.
        ledger_path: a JSONL file to which every call record is appended (and flushed to the
            operating system) as the call settles, in :meth:`Ledger.to_jsonl`'s format; an
            existing file is appended to. ``None``: the ledger is kept in memory only.
        endpoint_slots: per endpoint (``base_url`` without a trailing ``/``), an async context
            manager that takes the place of the pool's own concurrency slots, e.g. slots shared
            by every process of a cluster; endpoints not named keep the pool's own.

    Concurrency: calls to one endpoint (``base_url``) run at most ``min(max_concurrency)`` over
    the specs sharing it at a time, since a provider limits per account and endpoint rather than
    per model name; that limit adapts to throttling (halved by a 429, grown back by answers) and
    a ``Retry-After`` pauses every call to the endpoint (:mod:`masr_graph.llm.health`). The pool,
    its cache and budget belong to one event loop.

    The pool does not own ``cache`` or ``budget``: :meth:`aclose` closes the transports and the
    ledger file only.
    """

    def __init__(
        self,
        specs: Iterable[LLMSpec],
        *,
        cache: Optional[ResponseCache] = None,
        budget: Optional[Budget] = None,
        max_attempts: int = 4,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        run_id: Optional[str] = None,
        unknown_outcome_cost: str = "worst_case",
        fail_fast_after: Optional[int] = DEFAULT_FAIL_FAST_AFTER,
        circuit_after: Optional[int] = DEFAULT_CIRCUIT_AFTER,
        circuit_open_s: float = DEFAULT_CIRCUIT_OPEN_S,
        ledger_path: Optional[Union[str, "os.PathLike[str]"]] = None,
        endpoint_slots: Optional[Mapping[str, Any]] = None,
    ):
        spec_list = list(specs)
        if not spec_list:
            raise ConfigError("an LLM pool needs at least one LLM spec (got none)")
        self._specs: dict[str, LLMSpec] = {}
        for spec in spec_list:
            if not isinstance(spec, LLMSpec):
                raise ConfigError(f"pool members must be LLMSpec (got {type(spec).__name__})")
            if spec.name in self._specs:
                raise ConfigError(f"duplicate LLM name {spec.name!r} in the pool")
            self._specs[spec.name] = spec
        if not _is_count(max_attempts):
            raise ValueError(f"max_attempts must be an integer >= 1 (got {max_attempts!r})")
        if not (0 <= backoff_base_s <= backoff_max_s and math.isfinite(backoff_max_s)):
            raise ValueError(
                "need 0 <= backoff_base_s <= backoff_max_s < inf "
                f"(got backoff_base_s={backoff_base_s!r}, backoff_max_s={backoff_max_s!r})"
            )
        if unknown_outcome_cost not in UNKNOWN_OUTCOME_COSTS:
            raise ValueError(
                f"unknown_outcome_cost must be one of {list(UNKNOWN_OUTCOME_COSTS)} "
                f"(got {unknown_outcome_cost!r})"
            )
        if fail_fast_after is not None and not _is_count(fail_fast_after):
            raise ValueError(
                f"fail_fast_after must be an integer >= 1 or None (got {fail_fast_after!r})"
            )
        if circuit_after is not None and not _is_count(circuit_after):
            raise ValueError(
                f"circuit_after must be an integer >= 1 or None (got {circuit_after!r})"
            )
        if (
            isinstance(circuit_open_s, bool)
            or not isinstance(circuit_open_s, (int, float))
            or not (math.isfinite(circuit_open_s) and circuit_open_s > 0)
        ):
            raise ValueError(
                f"circuit_open_s must be a finite number of seconds > 0 (got {circuit_open_s!r})"
            )
        self.unknown_outcome_cost = unknown_outcome_cost
        self.fail_fast_after = fail_fast_after
        self._answered_llms: set[str] = set()
        self._answered_endpoints: set[str] = set()
        self._llm_failures: Counter[str] = Counter()
        self._endpoint_failures: Counter[str] = Counter()
        self._last_failure: dict[str, str] = {}  # by LLM name and by endpoint
        self._last_failed_llm = ""
        self.cache = cache
        self.budget = budget
        self.max_attempts = max_attempts
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self._random = random.Random()
        self._in_flight: dict[str, asyncio.Event] = {}

        by_scheme: dict[str, list[LLMSpec]] = defaultdict(list)
        for spec in spec_list:
            by_scheme[url_scheme(spec.base_url)].append(spec)
        factories = {scheme: transport_factory(scheme) for scheme in by_scheme}
        transports = {scheme: factories[scheme](members) for scheme, members in by_scheme.items()}
        self._transports: dict[str, Transport] = {
            spec.name: transports[url_scheme(spec.base_url)] for spec in spec_list
        }
        self._distinct_transports = list(transports.values())

        limits: dict[str, int] = {}
        for spec in spec_list:
            endpoint = _endpoint(spec)
            limits[endpoint] = min(limits.get(endpoint, spec.max_concurrency), spec.max_concurrency)
        shared_slots = dict(endpoint_slots or {})
        self._slots = {endpoint: shared_slots.get(endpoint) or asyncio.Semaphore(n)
                       for endpoint, n in limits.items()}
        self._health = {
            endpoint: EndpointHealth(
                endpoint, n, throttle_base_s=backoff_base_s, throttle_max_s=backoff_max_s,
                circuit_after=circuit_after, circuit_open_s=float(circuit_open_s),
            )
            for endpoint, n in limits.items()
        }
        # Last, so a constructor that fails leaves no file open.
        self._ledger = Ledger(path=ledger_path)

    @classmethod
    def from_yaml(cls, path: Union[str, "os.PathLike[str]"], **kwargs: Any) -> "LLMPool":
        """A pool of the LLMs in a pool file (see :func:`load_pool_config`); ``kwargs`` as for
        the constructor."""
        return cls(load_pool_config(path), **kwargs)

    @property
    def specs(self) -> dict[str, LLMSpec]:
        """The pool's LLMs by name, in pool order."""
        return dict(self._specs)

    @property
    def ledger(self) -> Ledger:
        """Records of every call made through this pool."""
        return self._ledger

    def endpoint_limit(self, llm: str) -> int:
        """How many calls may be in flight at once to the endpoint of ``llm``."""
        endpoint = _endpoint(self._spec(llm))
        return min(s.max_concurrency for s in self._specs.values() if _endpoint(s) == endpoint)

    def health(self, llm: str) -> EndpointHealth:
        """The health of the endpoint of ``llm`` (shared by every LLM on it): circuit ``state``,
        current adaptive ``limit``, ``cooldown_remaining_s()`` and a ``history`` of changes."""
        return self._health[_endpoint(self._spec(llm))]

    def _spec(self, llm: str) -> LLMSpec:
        spec = self._specs.get(llm)
        if spec is None:
            raise UnknownLLMError(llm, list(self._specs))
        return spec

    async def chat(
        self,
        llm: str,
        messages: Sequence[Message],
        *,
        max_tokens: int = 512,
        temperature: float = 0.0,
        seed: Optional[int] = None,
        context: CallContext = CallContext(),
    ) -> ChatResult:
        """Ask ``llm`` for a reply to ``messages``.

        Args:
            llm: name of a pool member.
            messages: ``[{"role": "system"|"user"|"assistant", "content": str}, ...]``.
            max_tokens: completion token limit sent to the provider; also sizes the budget
                reservation.
            temperature: sampling temperature in [0, 2].
            seed: provider sampling seed, if any; part of the cache key.
            context: who is calling (query, agent, round...); copied into the record, never
                sent to a provider nor part of the cache key.

        Returns:
            The reply text and the call's :class:`CallRecord` (also appended to :attr:`ledger`).

        Raises:
            UnknownLLMError: ``llm`` is not in the pool.
            ValueError: malformed ``messages`` or sampling parameters.
            MissingAPIKeyError: the LLM's key variable is not set (not raised for cache hits).
            BudgetExceeded: the next attempt could take the run over its cap; it is not made.
            LLMCallError: retries exhausted or a permanent error (e.g. HTTP 400).
            LLMUnavailableError: ``llm`` (or its endpoint) has failed its first
                ``fail_fast_after`` calls for good and answered none.
        """
        spec = self._spec(llm)
        _check_request(messages, max_tokens, temperature, seed)
        params: dict[str, Any] = {"max_tokens": max_tokens, "temperature": temperature}
        if seed is not None:
            params["seed"] = seed
        started = time.perf_counter()
        if self.cache is None:
            return await self._call_endpoint(spec, messages, params, context, started, None)

        key = cache_key(model=spec.model, base_url=spec.base_url, messages=messages, params=params)
        # Single flight per key: a duplicate waits for the call in progress, then hits the cache.
        while (in_progress := self._in_flight.get(key)) is not None:
            await in_progress.wait()
        self._in_flight[key] = done = asyncio.Event()
        try:
            hit = await self.cache.get(key)
            if hit is not None:
                record = self._record(
                    spec,
                    context,
                    started,
                    usage=(hit.prompt_tokens, hit.completion_tokens, hit.usage_estimated),
                    cost_usd=0.0,
                    would_have_cost_usd=hit.cost_usd,
                    attempts=0,
                    cached=True,
                )
                return ChatResult(hit.text, record)
            return await self._call_endpoint(spec, messages, params, context, started, key)
        finally:
            del self._in_flight[key]
            done.set()
            # A cache shared by several processes claims a missed key so that only one of them
            # calls the endpoint for it; the claim ends with the call, answered or not.
            release = getattr(self.cache, "release", None)
            if release is not None:
                release(key)

    async def _call_endpoint(
        self,
        spec: LLMSpec,
        messages: Sequence[Message],
        params: dict[str, Any],
        context: CallContext,
        started: float,
        key: Optional[str],
    ) -> ChatResult:
        prompt_bound = prompt_tokens_upper_bound(messages)
        worst_usd = spec.cost_usd(prompt_bound, params["max_tokens"])
        unknown_usd = (
            worst_usd
            if self.unknown_outcome_cost == "worst_case"
            else spec.cost_usd(prompt_bound, 0)
        )
        spend = _Spend()
        attempt = 0
        recorded = False
        answers_at_start = self._health[_endpoint(spec)].answers

        def record(
            attempts: int,
            *,
            usage: tuple[int, int, bool] = (0, 0, False),
            answer_usd: float = 0.0,
            error: Optional[str] = None,
        ) -> CallRecord:
            nonlocal recorded
            recorded = True
            cost_usd = answer_usd + spend.usd
            return self._record(
                spec,
                context,
                started,
                usage=usage,
                cost_usd=cost_usd,
                would_have_cost_usd=cost_usd,
                attempts=attempts,
                spend=spend,
                error=error,
            )

        unavailable = self._unavailable(spec)
        if unavailable is not None:
            record(0, error=f"unavailable: {unavailable}")
            raise unavailable
        try:
            reason = ""
            while attempt < self.max_attempts:
                attempt += 1
                try:
                    outcome = await self._attempt(
                        spec, messages, params, context, worst_usd, unknown_usd, spend
                    )
                except BudgetExceeded as exc:
                    record(attempt - 1, error=f"budget: {exc}")
                    raise
                except EndpointRefusal as refusal:
                    # Nothing was sent or reserved: the circuit is open, or the endpoint's
                    # cooldown outlasts backoff_max_s.
                    made = attempt - 1
                    record(made, error=refusal.reason)
                    refused: LLMCallError
                    if refusal.circuit:
                        retry_at = (
                            None if refusal.retry_in_s is None else time.time() + refusal.retry_in_s
                        )
                        refused = CircuitOpenError(
                            spec.name, spec.base_url, refusal.reason, made, retry_at
                        )
                    else:
                        refused = LLMCallError(spec.name, refusal.reason, made)
                    self._failed_for_good(spec, refused, cause=None)
                except MasrError as exc:
                    # Typed errors (missing key, replay lookups) pass through; nothing was sent.
                    record(attempt - 1, error=str(exc))
                    raise
                except Exception as exc:
                    raw_reason = f"{type(exc).__name__}: {exc}"
                    reason = _redact(raw_reason, spec)
                    record(attempt, error=reason)
                    # A cause that quotes the key would put it in every printed traceback.
                    self._failed_for_good(
                        spec, LLMCallError(spec.name, reason, attempt),
                        cause=exc if reason == raw_reason else None,
                    )

                if outcome.failure is None:
                    assert outcome.completion is not None
                    self._note_answer(spec)
                    result = record(attempt, usage=outcome.usage, answer_usd=outcome.cost_usd)
                    if self.cache is not None and key is not None:
                        prompt_tokens, completion_tokens, estimated = outcome.usage
                        await self.cache.put(
                            key,
                            spec.model,
                            CachedResponse(
                                outcome.completion.text,
                                prompt_tokens,
                                completion_tokens,
                                estimated,
                                result.cost_usd,
                                outcome.completion.finish_reason,
                            ),
                        )
                    return ChatResult(outcome.completion.text, result)

                failure = outcome.failure
                reason = _redact(failure.reason, spec)
                if attempt == self.max_attempts:
                    break
                delay = self._backoff_s(attempt, failure.retry_after)
                if delay is None:
                    reason += (
                        f"; the server asked to retry after {failure.retry_after:g}s, "
                        f"more than backoff_max_s={self.backoff_max_s:g}"
                    )
                    break
                log.warning(
                    "LLM %r attempt %d/%d failed (%s); retrying in %.2fs",
                    spec.name,
                    attempt,
                    self.max_attempts,
                    reason,
                    delay,
                )
                await asyncio.sleep(delay)
            record(attempt, error=reason)
            self._failed_for_good(
                spec, LLMCallError(spec.name, reason, attempt), cause=None,
                answers_at_start=answers_at_start,
            )
        except BaseException:
            # Cancelled (a batch stopping, Ctrl-C) during or between attempts: what the budget
            # charged for the attempts made so far still goes on record.
            if not recorded:
                record(spend.sent_attempts, error="cancelled")
            raise

    async def _attempt(
        self,
        spec: LLMSpec,
        messages: Sequence[Message],
        params: dict[str, Any],
        context: CallContext,
        worst_usd: float,
        unknown_usd: float,
        spend: "_Spend",
    ) -> _Attempt:
        """One attempt inside an endpoint slot, with its budget reservation and timeout. Transient
        failures are returned; permanent ones and :class:`BudgetExceeded` raise.

        A failed attempt's cost is settled in the budget and added to ``spend`` in one place, so
        the ledger and the budget charge it the same amount whatever ends the attempt.

        Before anything is reserved, the endpoint's health admits the attempt (waiting out a
        cooldown and the adaptive concurrency limit) or refuses it (:class:`EndpointRefusal`);
        the attempt's outcome is then reported back to it."""
        endpoint = _endpoint(spec)
        health = self._health[endpoint]
        while True:
            permit = await health.admit(self.backoff_max_s)
            try:
                async with self._slots[endpoint]:
                    # A cooldown or an open circuit may have begun while waiting for the slot.
                    if health.may_send(permit):
                        outcome = await self._send(
                            spec, messages, params, context, worst_usd, unknown_usd, spend
                        )
                        failure = outcome.failure
                        if failure is None:
                            health.on_answer(permit)
                        elif failure.status == 429 or failure.retry_after is not None:
                            health.on_throttle(
                                permit, failure.retry_after, _redact(failure.reason, spec)
                            )
                        else:
                            health.on_failure(permit, _redact(failure.reason, spec))
                        return outcome
            finally:
                health.release(permit)

    async def _send(
        self,
        spec: LLMSpec,
        messages: Sequence[Message],
        params: dict[str, Any],
        context: CallContext,
        worst_usd: float,
        unknown_usd: float,
        spend: "_Spend",
    ) -> _Attempt:
        """Send one admitted attempt under its budget reservation and timeout (see
        :meth:`_attempt`)."""
        reservation = None
        if self.budget is not None:
            reservation = await self.budget.reserve(worst_usd, spec.name)
        # From here the request may be on its way: until its outcome is known it is charged
        # as unknown (a cancelled or timed-out request may still be billed).
        cost_usd, unknown = unknown_usd, True
        spend.sent_attempts += 1
        try:
            try:
                completion = await within(
                    self._transports[spec.name].complete(spec, messages, params, context),
                    spec.timeout_s,
                )
            except asyncio.TimeoutError as exc:
                raise TransientError(
                    f"timeout after {spec.timeout_s:g}s", may_be_billed=True
                ) from exc
            usage = _usage(messages, completion)
            cost_usd, unknown = spec.cost_usd(usage[0], usage[1]), False
            return _Attempt(cost_usd, completion=completion, usage=usage)
        except TransientError as failure:
            if failure.billed is not None:
                cost_usd, unknown = spec.cost_usd(*_usage(messages, failure.billed)[:2]), False
                spend.billed_usd += cost_usd
                spend.billed_attempts += 1
            elif not failure.may_be_billed:
                cost_usd, unknown = 0.0, False
            return _Attempt(cost_usd, failure=failure)
        except Exception:
            cost_usd, unknown = 0.0, False  # permanent errors (4xx, missing key) are not billed
            raise
        finally:
            if unknown:
                spend.estimated_usd += cost_usd
                spend.estimated_attempts += 1
            if reservation is not None:
                assert self.budget is not None
                self.budget.settle(reservation, cost_usd)

    # --------------------------------------------------------------------------- fail fast
    def _unavailable(self, spec: LLMSpec) -> Optional[LLMUnavailableError]:
        """The error stopping calls to ``spec``: its first ``fail_fast_after`` calls, or those of
        every LLM on its endpoint, failed for good and none was answered. ``None`` otherwise."""
        limit = self.fail_fast_after
        if limit is None or spec.name in self._answered_llms:
            return None
        if self._llm_failures[spec.name] >= limit:
            return LLMUnavailableError(
                spec.name, spec.base_url, self._llm_failures[spec.name],
                self._last_failure[spec.name],
            )
        endpoint = _endpoint(spec)
        if endpoint not in self._answered_endpoints and self._endpoint_failures[endpoint] >= limit:
            return LLMUnavailableError(
                spec.name, spec.base_url, self._endpoint_failures[endpoint],
                self._last_failure[endpoint], scope="endpoint",
            )
        return None

    def _note_answer(self, spec: LLMSpec) -> None:
        self._answered_llms.add(spec.name)
        self._answered_endpoints.add(_endpoint(spec))

    def _failed_for_good(
        self,
        spec: LLMSpec,
        error: LLMCallError,
        *,
        cause: Optional[BaseException],
        answers_at_start: Optional[int] = None,
    ) -> NoReturn:
        """Raise ``error``, or :class:`LLMUnavailableError` when this failure trips fail-fast.

        ``answers_at_start``: given when the call's attempts failed transiently (the endpoint's
        answer count when the call started), which may count towards opening the endpoint's
        circuit; a permanent error or a refusal without a request does not."""
        endpoint = _endpoint(spec)
        if answers_at_start is not None:
            self._health[endpoint].on_call_failed(error.reason, answers_at_start)
        if spec.name not in self._answered_llms:
            self._llm_failures[spec.name] += 1
            self._last_failure[spec.name] = error.reason
        if endpoint not in self._answered_endpoints:
            self._endpoint_failures[endpoint] += 1
            self._last_failure[endpoint] = error.reason
        self._last_failed_llm = spec.name
        unavailable = self._unavailable(spec)
        if unavailable is not None:
            raise unavailable from None
        if cause is None:
            raise error from None
        raise error from cause

    def startup_failure(self) -> Optional[LLMUnavailableError]:
        """The error to stop a run with when calls have failed for good and no endpoint has
        answered any call yet (``None`` otherwise, or when ``fail_fast_after`` is ``None``).

        For callers that see a whole batch fail before ``fail_fast_after`` calls were made (a
        first training step of two queries): its results would be failures only."""
        if self.fail_fast_after is None or self._answered_endpoints or not self._last_failed_llm:
            return None
        spec = self._specs[self._last_failed_llm]
        failures = sum(self._endpoint_failures.values())
        return LLMUnavailableError(
            spec.name, spec.base_url, failures, self._last_failure[_endpoint(spec)], scope="pool"
        )

    def _backoff_s(self, attempt: int, retry_after: Optional[float]) -> Optional[float]:
        """Wait before attempt ``attempt + 1``; ``None`` when the server asks for too long."""
        if retry_after is not None:
            if retry_after > self.backoff_max_s:
                return None
            # A little jitter on top, so clients told the same instant do not return together.
            return retry_after * (1.0 + 0.1 * self._random.random())
        step = min(self.backoff_max_s, self.backoff_base_s * 2.0 ** (attempt - 1))
        return step * (0.5 + 0.5 * self._random.random())

    def _record(
        self,
        spec: LLMSpec,
        context: CallContext,
        started: float,
        *,
        cost_usd: float,
        would_have_cost_usd: float,
        attempts: int,
        usage: tuple[int, int, bool] = (0, 0, False),
        cached: bool = False,
        spend: Optional["_Spend"] = None,
        error: Optional[str] = None,
    ) -> CallRecord:
        """Build a call's record and append it to the ledger."""
        prompt_tokens, completion_tokens, estimated = usage
        spend = spend or _Spend()
        record = CallRecord(
            llm=spec.name,
            model=spec.model,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost_usd=cost_usd,
            would_have_cost_usd=would_have_cost_usd,
            latency_s=time.perf_counter() - started,
            attempts=attempts,
            cached=cached,
            usage_estimated=estimated,
            billed_failed_usd=spend.billed_usd,
            billed_failed_attempts=spend.billed_attempts,
            estimated_usd=spend.estimated_usd,
            estimated_attempts=spend.estimated_attempts,
            cost_estimated=estimated or spend.estimated_attempts > 0,
            error=error,
            query_id=context.query_id,
            agent=context.agent,
            round=context.round,
            kind=context.kind,
            run_id=context.run_id or self.run_id,
        )
        self._ledger.add(record)
        return record

    async def aclose(self) -> None:
        """Close the transports (their HTTP connections) and the ledger file. The cache and
        budget are the caller's."""
        try:
            for transport in self._distinct_transports:
                await transport.aclose()
        finally:
            self._ledger.close()

    async def __aenter__(self) -> "LLMPool":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _is_count(value: object) -> bool:
    """An ``int`` of at least 1 (``True`` is an ``int`` to Python, not a count here)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _endpoint(spec: LLMSpec) -> str:
    return spec.base_url.rstrip("/")


def _redact(text: str, spec: LLMSpec) -> str:
    """``text`` with the LLM's API key blanked: some providers and proxies echo the credential
    in error messages, which would otherwise reach logs, ledgers and tracebacks."""
    key = os.environ.get(spec.api_key_env) if spec.api_key_env else None
    return text.replace(key, "<redacted>") if key else text


def _usage(messages: Sequence[Message], completion: Completion) -> tuple[int, int, bool]:
    """Prompt and completion tokens of a completion, estimated where the provider gave none."""
    estimated = completion.prompt_tokens is None or completion.completion_tokens is None
    prompt_tokens = completion.prompt_tokens
    if prompt_tokens is None:
        prompt_tokens = estimate_prompt_tokens(messages)
    completion_tokens = completion.completion_tokens
    if completion_tokens is None:
        completion_tokens = estimate_text_tokens(completion.text)
    return prompt_tokens, completion_tokens, estimated


def _check_request(
    messages: Sequence[Message], max_tokens: int, temperature: float, seed: Optional[int]
) -> None:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise ValueError(
            f"messages must be a non-empty list of chat messages (got {messages!r:.80})"
        )
    for index, message in enumerate(messages):
        if (
            not isinstance(message, Mapping)
            or set(message) != set(MESSAGE_KEYS)
            or message["role"] not in MESSAGE_ROLES
            or not isinstance(message["content"], str)
        ):
            raise ValueError(
                f"messages[{index}] must be {{'role': one of {list(MESSAGE_ROLES)}, "
                f"'content': str}} (got {message!r:.120})"
            )
    if not _is_count(max_tokens):
        raise ValueError(f"max_tokens must be an integer >= 1 (got {max_tokens!r})")
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        or not (0.0 <= temperature <= 2.0)
    ):
        raise ValueError(f"temperature must be a number in [0, 2] (got {temperature!r})")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"seed must be an integer or None (got {seed!r})")

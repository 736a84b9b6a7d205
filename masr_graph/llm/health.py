"""Endpoint health: one shared view per endpoint (``base_url``) of how hard the pool may call it.

A provider limits and fails per account and endpoint, not per call, so what one call learns — a
``Retry-After``, a burst of 429s, an outage — must hold back every call to that endpoint. The pool
asks :meth:`EndpointHealth.admit` before each attempt and reports how the attempt ended; three
mechanisms decide when the next request may leave:

**Cooldown.** A transient failure carrying ``Retry-After`` (a 429 or 503) pauses the endpoint
for that long: no new request to it starts before the cooldown ends, whichever call received the
header (a later, longer ``Retry-After`` extends it; a shorter one never shortens it). A 429
without ``Retry-After`` pauses the endpoint only when it repeats — the second throttle round in a
row (no success in between) pauses it for ``throttle_base_s``, doubling each further round up to
``throttle_max_s``. A call that would have to wait longer than the pool's ``backoff_max_s`` ends
at once, without a request, as a call told to retry after too long does.

**Adaptive concurrency (AIMD).** The endpoint's limit on attempts in flight starts at its
``max_concurrency``; every throttle round (a 429, or any ``Retry-After``) halves it (not below 1)
and every ``limit`` answered attempts add 1 back, up to ``max_concurrency``. A *round* is a
throttle from a request sent after the last reaction: the 429s of requests already in flight
when the endpoint was throttled are echoes of the same overload and neither halve the limit
again nor lengthen the pause (the "one reduction per window" rule of TCP's congestion control).

**Circuit breaker.** ``circuit_after`` calls in a row failing for good through transient faults
(retries exhausted on 5xx, 429, timeouts, dropped connections or malformed replies; permanent
errors such as HTTP 400 say the endpoint answered and do not count), each made while the
endpoint answered no attempt at all, *open* the circuit. That last condition tells an outage
from a flaky endpoint: a call that failed all its attempts while other calls were being answered
(the unlucky stragglers at the end of a batch on an endpoint failing 30 % of requests) does not
count, so only an endpoint that stopped answering trips the breaker. Once open, for
``circuit_open_s`` every attempt is refused at once (:class:`EndpointRefusal`, which the pool
raises as :class:`~masr_graph.errors.CircuitOpenError`), so an outage costs nothing and no
provider is hammered. Then the circuit is *half-open*: one trial attempt is let through while the
others are still refused; its answer closes the circuit (any answer from the endpoint does), its
transient failure opens it again for ``circuit_open_s``. This differs from the pool's fail-fast
(``fail_fast_after``), which stops a run whose LLM never answered at all; the circuit protects a
long-running process (``masr serve``) from an endpoint that answered before and went down.

Everything here runs on the pool's event loop without awaiting between reading and updating the
state, so the bookkeeping is atomic; waiting for a concurrency slot is FIFO and wakes one waiter
per freed slot.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Deque, Optional

log = logging.getLogger(__name__)

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"
CIRCUIT_STATES = (CLOSED, OPEN, HALF_OPEN)
HISTORY_LENGTH = 200


@dataclass
class Permit:
    """One admitted attempt: the throttle epoch it was admitted in, and whether it is the
    half-open circuit's trial. Hand it back to :meth:`EndpointHealth.release` exactly once."""

    epoch: int
    trial: bool = False
    released: bool = False


@dataclass(frozen=True)
class HealthEvent:
    """A change of an endpoint's health, for logs and tests.

    Args:
        at: when (``time.monotonic()`` seconds, the clock of :class:`EndpointHealth`).
        kind: ``"cooldown"`` (no request until ``until``), ``"limit"`` (concurrency limit now
            ``value``), ``"open"`` (circuit open until ``until``), ``"half-open"`` or
            ``"closed"``.
        until: end of a cooldown or of an open circuit.
        value: the new concurrency limit of a ``"limit"`` event.
        detail: why.
    """

    at: float
    kind: str
    until: Optional[float] = None
    value: Optional[int] = None
    detail: str = ""


class EndpointRefusal(Exception):
    """The endpoint does not take an attempt now (open circuit, trial in flight, or a cooldown
    longer than the caller will wait); nothing was sent or reserved.

    Args:
        reason: one line naming the endpoint and when it will take requests again.
        circuit: refused by the circuit breaker (else by a cooldown).
        retry_in_s: seconds until it may take one (``None``: when the trial call answers).
    """

    def __init__(self, reason: str, *, circuit: bool, retry_in_s: Optional[float]):
        super().__init__(reason)
        self.reason = reason
        self.circuit = circuit
        self.retry_in_s = retry_in_s


class EndpointHealth:
    """Cooldown, adaptive concurrency limit and circuit breaker of one endpoint (see the module
    docstring for the policy).

    Args:
        endpoint: the ``base_url`` (for messages).
        max_concurrency: the most attempts in flight at once (>= 1); the adaptive limit's ceiling.
        throttle_base_s: pause of the second throttle round in a row without ``Retry-After``.
        throttle_max_s: longest such pause.
        circuit_after: consecutive calls failed for good (transient faults, while the endpoint
            answered nothing) that open the circuit; ``None`` disables the breaker.
        circuit_open_s: how long an open circuit refuses attempts before its trial.
        clock: monotonic seconds; injectable for tests.
    """

    def __init__(
        self,
        endpoint: str,
        max_concurrency: int,
        *,
        throttle_base_s: float = 0.5,
        throttle_max_s: float = 30.0,
        circuit_after: Optional[int] = 5,
        circuit_open_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or (
            max_concurrency < 1
        ):
            raise ValueError(f"max_concurrency must be an integer >= 1 (got {max_concurrency!r})")
        self.endpoint = endpoint
        self.max_concurrency = max_concurrency
        self.throttle_base_s = throttle_base_s
        self.throttle_max_s = throttle_max_s
        self.circuit_after = circuit_after
        self.circuit_open_s = circuit_open_s
        self._clock = clock
        # Adaptive concurrency.
        self._limit = max_concurrency
        self._growth = 0  # answers towards the next +1 of the limit
        self._answers = 0
        self._in_flight = 0
        self._waiters: Deque[asyncio.Future[None]] = deque()
        self._epoch = 0
        self._throttle_rounds = 0
        # Cooldown.
        self._cooldown_until = 0.0
        self._cooldown_reason = ""
        # Circuit.
        self._state = CLOSED
        self._consecutive_failures = 0
        self._last_failure = ""
        self._open_until = 0.0
        self._trial: Optional[Permit] = None  # the half-open circuit's trial attempt
        self.history: Deque[HealthEvent] = deque(maxlen=HISTORY_LENGTH)

    # ---------------------------------------------------------------------------- observations
    @property
    def state(self) -> str:
        """The circuit's state, one of :data:`CIRCUIT_STATES` (an open circuit whose time is up
        reads ``"half-open"``)."""
        if self._state == OPEN and self._clock() >= self._open_until:
            return HALF_OPEN
        return self._state

    @property
    def limit(self) -> int:
        """Attempts allowed in flight at once now (the adaptive limit, 1..max_concurrency)."""
        return self._limit

    @property
    def answers(self) -> int:
        """Attempts the endpoint answered so far (a call notes it when it starts, see
        :meth:`on_call_failed`)."""
        return self._answers

    @property
    def in_flight(self) -> int:
        """Attempts admitted and not yet released."""
        return self._in_flight

    @property
    def consecutive_failures(self) -> int:
        """Calls failed for good (transient faults) since the endpoint last answered."""
        return self._consecutive_failures

    def cooldown_remaining_s(self) -> float:
        """Seconds until the endpoint's cooldown ends (0: not cooling down)."""
        return max(0.0, self._cooldown_until - self._clock())

    # ------------------------------------------------------------------------------ admission
    async def admit(self, max_wait_s: float) -> Permit:
        """Wait until an attempt may be sent to the endpoint and take a concurrency slot.

        Waits out a cooldown of at most ``max_wait_s`` and, FIFO, for the adaptive limit.

        Raises:
            EndpointRefusal: the circuit is open (or half-open with its trial in flight), or
                the cooldown has more than ``max_wait_s`` to run; no slot is held.
        """
        while True:
            self._check_circuit()
            wait = self._cooldown_until - self._clock()
            if wait > 0:
                if wait > max_wait_s:
                    raise EndpointRefusal(
                        f"endpoint {self.endpoint} is cooling down for {wait:.3g}s more "
                        f"({self._cooldown_reason}), longer than backoff_max_s={max_wait_s:g}",
                        circuit=False, retry_in_s=wait,
                    )
                await asyncio.sleep(wait)
                continue
            await self._take_slot()
            # The circuit or a cooldown may have changed while this attempt queued for a slot.
            if not self._clear_to_send(None):
                self._give_back_slot()
                continue
            permit = Permit(self._epoch)
            if self._state == HALF_OPEN:
                permit.trial, self._trial = True, permit
                log.info("endpoint %s: circuit half-open, sending one trial request", self.endpoint)
            return permit

    def may_send(self, permit: Permit) -> bool:
        """Whether an admitted attempt may still be sent now (nothing started a cooldown or
        opened the circuit since it was admitted); if not, release it and admit again."""
        return self._clear_to_send(permit)

    def release(self, permit: Permit) -> None:
        """Hand back an admitted attempt's slot (after reporting its outcome, if any)."""
        if permit.released:
            return
        permit.released = True
        if self._trial is permit:
            self._trial = None  # no verdict (cancelled, permanent error): the next call probes
        self._give_back_slot()

    # --------------------------------------------------------------------------------- outcomes
    def on_answer(self, permit: Permit) -> None:
        """An attempt was answered: the endpoint is up; the limit grows, the circuit closes."""
        self._answers += 1
        self._throttle_rounds = 0
        self._consecutive_failures = 0
        if self._limit < self.max_concurrency:
            self._growth += 1
            if self._growth >= self._limit:
                self._limit, self._growth = self._limit + 1, 0
                self._event("limit", value=self._limit, detail=f"{self._limit - 1} answers")
                self._wake()
        if self._state != CLOSED:
            self._state, self._trial = CLOSED, None
            self._event("closed", detail="the endpoint answered")
            log.warning("endpoint %s answered again: circuit closed", self.endpoint)

    def on_throttle(self, permit: Permit, retry_after: Optional[float], reason: str) -> None:
        """An attempt was throttled (HTTP 429, or any failure with ``Retry-After``)."""
        now = self._clock()
        if permit.epoch == self._epoch:  # not an echo of a throttle already reacted to
            self._epoch += 1
            self._throttle_rounds += 1
            before, self._growth = self._limit, 0
            self._limit = max(1, self._limit // 2)
            if self._limit != before:
                self._event("limit", value=self._limit, detail=reason)
            if retry_after is None and self._throttle_rounds >= 2:
                pause = min(self.throttle_max_s,
                            self.throttle_base_s * 2.0 ** (self._throttle_rounds - 2))
                self._cooldown(now + pause, f"{self._throttle_rounds} throttle rounds in a row, "
                                            f"last: {reason}")
        if retry_after is not None:
            self._cooldown(now + retry_after, f"{reason}, Retry-After {retry_after:g}s")
        if permit is self._trial:
            self._reopen(reason)

    def on_failure(self, permit: Permit, reason: str) -> None:
        """An attempt failed transiently without being throttled (5xx, timeout, dropped
        connection, malformed reply): only a half-open circuit's trial reacts (it reopens)."""
        if permit is self._trial:
            self._reopen(reason)

    def on_call_failed(self, reason: str, answers_at_start: int) -> None:
        """A call failed for good through transient faults. ``answers_at_start`` is
        :attr:`answers` when the call started: only a call during which the endpoint answered
        nothing counts towards opening the circuit."""
        if answers_at_start != self._answers:
            return  # the endpoint answered others meanwhile: flaky, not down
        self._consecutive_failures += 1
        self._last_failure = " ".join(reason.split())
        if (
            self.circuit_after is not None
            and self._state == CLOSED
            and self._consecutive_failures >= self.circuit_after
        ):
            self._open(f"{self._consecutive_failures} consecutive calls failed for good")

    # -------------------------------------------------------------------------------- internals
    def _check_circuit(self) -> None:
        if self._state == OPEN:
            remaining = self._open_until - self._clock()
            if remaining > 0:
                raise EndpointRefusal(
                    f"the circuit of endpoint {self.endpoint} is open after "
                    f"{self._consecutive_failures} consecutive failed calls (last: "
                    f"{self._last_failure}); the next trial request is allowed in "
                    f"{remaining:.3g}s (at {_wall_clock(remaining)})",
                    circuit=True, retry_in_s=remaining,
                )
            self._state, self._trial = HALF_OPEN, None
            self._event("half-open", detail="open period over")
        if self._state == HALF_OPEN and self._trial is not None:
            raise EndpointRefusal(
                f"the circuit of endpoint {self.endpoint} is half-open after "
                f"{self._consecutive_failures} consecutive failed calls (last: "
                f"{self._last_failure}); one trial request is testing it and other calls are "
                "refused until it answers",
                circuit=True, retry_in_s=None,
            )

    def _clear_to_send(self, permit: Optional[Permit]) -> bool:
        if self._cooldown_until > self._clock():
            return False
        if self._state == CLOSED:
            return True
        if self._state == HALF_OPEN:
            return self._trial is None or self._trial is permit
        return False  # open (its time may be up: admit() turns it half-open)

    def _cooldown(self, until: float, reason: str) -> None:
        now = self._clock()
        if until <= max(self._cooldown_until, now):
            return  # never shortened; a zero pause is none
        started = self._cooldown_until <= now
        self._cooldown_until, self._cooldown_reason = until, reason
        self._event("cooldown", until=until, detail=reason)
        if started:
            log.warning("endpoint %s: every call waits %.3gs (%s)", self.endpoint,
                        until - self._clock(), reason)

    def _open(self, why: str) -> None:
        self._state, self._trial = OPEN, None
        self._open_until = self._clock() + self.circuit_open_s
        self._event("open", until=self._open_until, detail=f"{why}; last: {self._last_failure}")
        log.warning("endpoint %s: circuit open for %gs (%s; last: %s); calls to it fail at once",
                    self.endpoint, self.circuit_open_s, why, self._last_failure)
        self._wake()  # queued attempts re-check and are refused

    def _reopen(self, reason: str) -> None:
        if self._state == HALF_OPEN:
            self._last_failure = " ".join(reason.split())
            self._open("the trial request failed")

    async def _take_slot(self) -> None:
        if self._in_flight < self.limit and not self._waiters:
            self._in_flight += 1  # the common case: no suspension
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._give_back_slot()  # handed a slot just as it was cancelled
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise

    def _give_back_slot(self) -> None:
        self._in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        """Hand free slots to waiters in arrival order."""
        while self._waiters and self._in_flight < self.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._in_flight += 1
                waiter.set_result(None)
        if self._state != CLOSED:
            # Queued attempts must learn that the circuit opened: wake them all to be refused.
            while self._waiters and self._state == OPEN:
                waiter = self._waiters.popleft()
                if not waiter.done():
                    self._in_flight += 1
                    waiter.set_result(None)

    def _event(self, kind: str, *, until: Optional[float] = None, value: Optional[int] = None,
               detail: str = "") -> None:
        self.history.append(HealthEvent(self._clock(), kind, until, value, detail))


def _wall_clock(in_s: float) -> str:
    """Local wall-clock time ``in_s`` seconds from now, ``HH:MM:SS``."""
    if not math.isfinite(in_s):
        return "never"
    return time.strftime("%H:%M:%S", time.localtime(time.time() + in_s))

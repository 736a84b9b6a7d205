"""The LLM layer's shared state for pools in many processes of a Ray cluster: one budget, one
concurrency limit per endpoint and one response cache, each a Ray actor, and the worker-side
objects that stand in for them where :class:`~masr_graph.llm.LLMPool` expects its own.

=====================  ==========================  =============================================
actor                  worker side                 stands in for
=====================  ==========================  =============================================
:class:`BudgetActor`   :class:`SharedBudget`       the pool's ``budget`` (:class:`Budget`)
:class:`EndpointGate`  :class:`SharedSlot`         one entry of the pool's ``endpoint_slots``
:class:`ResponseStore` :class:`SharedCache`        the pool's ``cache`` (:class:`ResponseCache`)
=====================  ==========================  =============================================

Budget. The actor holds a :class:`Budget` and runs its ``reserve`` / ``settle`` on its own event
loop, so the semantics are exactly those of one process: a worst case is reserved before every
attempt, anywhere in the cluster, and settled after; ``spent + reserved`` never passes the cap.
A worker's ``settle`` is sent without waiting (:meth:`SharedBudget.flush` waits for them).

Endpoint gates. One semaphore per endpoint for the whole cluster, of the endpoint's limit
(``min(max_concurrency)`` of the LLMs on it), so all the pools together never have more calls
in flight to a provider than one pool may; each worker keeps its own limit in front of it.

Response store. One SQLite file (the grid's ``llm_cache.sqlite``) owned by one actor: every
reply is committed before a worker's ``put`` returns, so it survives any worker's SIGKILL, and
workers on other nodes need no shared file system for it. A miss *claims* its key: another
process asking for the same key waits until the claimant has put the reply (then it gets a hit)
or given up (then it claims the key itself), so a request is paid once in the whole cluster, as
the pool's single flight does in one process. A claim older than :data:`CLAIM_TIMEOUT_S` is
taken over, so nothing waits forever on a claimant that vanished unnoticed.

Leases. Every reservation, slot and claim is held under the *lease* of the unit of work that
took it, ``(unit, attempt)``. ``begin(unit, attempt)`` supersedes the unit's earlier attempts —
a scheduler reruns a unit only once the process of its earlier attempt is gone — releasing
their slots and claims and settling their open reservations at their full worst case (their
requests may have been billed, and nobody is left to say what they cost); ``end(unit)`` does the
same when the unit is given up. A lease must also be kept alive: the process holding it renews
it every :data:`HEARTBEAT_S` (:class:`LeaseHeartbeat`, a thread, so a busy event loop does not
stop it), and a lease silent for :data:`LEASE_TTL_S` is expired like a superseded one — without
that, units waiting for a dead worker's endpoint slot could occupy every CPU its rerun needs.
So a killed worker never leaks a slot, a claim or budget room for long, and the budget still
counts what it may have been billed.

Ray is an optional extra: this module imports it only when an actor is created
(:func:`actor_class`), so the rest of the LLM layer never needs it.
"""
from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Optional

from ..errors import BudgetExceeded
from .budget import Budget, Reservation
from .cache import CachedResponse, ResponseCache
from .deadline import within

Lease = tuple[str, str]
"""``(unit, attempt)``: who holds a reservation, a slot or a claim."""
CLAIM_TIMEOUT_S = 900.0
"""Longest a process waits on another's claim of a key before calling the endpoint itself."""
HEARTBEAT_S = 2.0
"""How often a worker renews its lease."""
LEASE_TTL_S = 20.0
"""A lease not renewed for this long is taken for dead and what it holds is released."""


def _matches(unit: str, attempt: Optional[str], *, other: bool) -> Callable[[Lease], bool]:
    """Leases of ``unit``: those of attempts other than ``attempt`` (``other``), or of
    ``attempt`` itself (``None``: every attempt)."""
    if other:
        return lambda lease: lease[0] == unit and lease[1] != attempt
    return lambda lease: lease[0] == unit and (attempt is None or lease[1] == attempt)


# ------------------------------------------------------------------------------------ actors
class _Leases:
    """When each lease was last heard of, and a reaper expiring the silent ones (see the module
    docstring). Subclasses say what expiring a lease releases (:meth:`_expire`)."""

    ttl_s = LEASE_TTL_S
    _seen: dict[Lease, float]
    _reaper: Optional[asyncio.Task] = None

    def _heard(self, lease: Lease) -> None:
        if not hasattr(self, "_seen"):
            self._seen = {}
        self._seen[lease] = time.monotonic()
        if self._reaper is None:
            try:
                self._reaper = asyncio.get_running_loop().create_task(self._reap())
            except RuntimeError:  # not on the actor's loop: the next async call starts it
                pass

    def _forget(self, unit: str, attempt: Optional[str]) -> None:
        match = _matches(unit, attempt, other=False)
        for lease in [lease for lease in getattr(self, "_seen", {}) if match(lease)]:
            del self._seen[lease]

    async def renew(self, unit: str, attempt: str) -> None:
        """The holder of ``(unit, attempt)`` is alive."""
        self._heard((unit, attempt))

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.ttl_s / 4))
            now = time.monotonic()
            for lease, seen in list(self._seen.items()):
                if now - seen > self.ttl_s:
                    del self._seen[lease]
                    self._expire(lease)

    def _expire(self, lease: Lease) -> None:
        raise NotImplementedError


class BudgetActor(_Leases):
    """The cluster's spending cap (a Ray actor; see the module docstring).

    Args:
        max_usd: the cap in $ for every pool that uses it.
    """

    def __init__(self, max_usd: float):
        self.budget = Budget(max_usd)
        self._open: dict[int, tuple[Reservation, Lease]] = {}
        self._ids = itertools.count(1)
        self.orphaned_usd = 0.0
        self.orphaned_attempts = 0
        self.peak_committed_usd = 0.0
        self._expired: dict[str, list[tuple[str, float]]] = {}

    async def reserve(self, amount_usd: float, llm: str, lease: Lease
                      ) -> tuple[Optional[int], Optional[tuple[float, float, float, str]]]:
        """``(reservation id, None)``, or ``(None, (cap, committed, needed, llm))`` when the
        cap refuses (the arguments of :class:`BudgetExceeded`)."""
        self._heard(lease)
        try:
            reservation = await self.budget.reserve(amount_usd, llm)
        except BudgetExceeded as stop:
            return None, (stop.cap_usd, stop.committed_usd, stop.needed_usd, stop.llm)
        rid = next(self._ids)
        self._open[rid] = (reservation, lease)
        self.peak_committed_usd = max(self.peak_committed_usd,
                                      self.budget.spent_usd + self.budget.reserved_usd)
        return rid, None

    def settle(self, rid: int, cost_usd: float) -> bool:
        """Settle reservation ``rid`` at ``cost_usd``; ``False`` when its attempt was
        superseded and it was settled at its worst case already."""
        entry = self._open.pop(rid, None)
        if entry is None:
            return False
        self.budget.settle(entry[0], cost_usd)
        return True

    def cancel(self, granted: tuple[Optional[int], Any]) -> None:
        """Give back a reservation whose caller stopped waiting for it (nothing was sent)."""
        if granted[0] is not None:
            self.settle(granted[0], 0.0)

    def begin(self, unit: str, attempt: str) -> list[tuple[str, float]]:
        """Supersede ``unit``'s earlier attempts; returns their open reservations, each
        ``(llm, $)``, now settled at their worst case (for the new attempt's ledger), with
        those of its attempts whose lease expired."""
        self._heard((unit, attempt))
        return self._expired.pop(unit, []) + self._drop(_matches(unit, attempt, other=True))

    def end(self, unit: str, attempt: Optional[str] = None) -> list[tuple[str, float]]:
        """Settle what ``unit`` (that attempt, or every attempt) still holds at its worst case."""
        self._forget(unit, attempt)
        expired = self._expired.pop(unit, []) if attempt is None else []
        return expired + self._drop(_matches(unit, attempt, other=False))

    def _expire(self, lease: Lease) -> None:
        dropped = self._drop(lambda held: held == lease)
        if dropped:
            self._expired.setdefault(lease[0], []).extend(dropped)

    def _drop(self, match: Callable[[Lease], bool]) -> list[tuple[str, float]]:
        dropped = []
        for rid, (reservation, lease) in list(self._open.items()):
            if match(lease):
                del self._open[rid]
                self.budget.settle(reservation, reservation.amount_usd)
                self.orphaned_usd += reservation.amount_usd
                self.orphaned_attempts += 1
                dropped.append((reservation.llm, reservation.amount_usd))
        return dropped

    def state(self) -> dict[str, float]:
        """``max_usd``, ``spent_usd``, ``reserved_usd``, open reservations, what superseded
        attempts were charged, and the highest ``spent + reserved`` seen."""
        return {"max_usd": self.budget.max_usd, "spent_usd": self.budget.spent_usd,
                "reserved_usd": self.budget.reserved_usd, "open": len(self._open),
                "orphaned_usd": self.orphaned_usd,
                "orphaned_attempts": self.orphaned_attempts,
                "peak_committed_usd": self.peak_committed_usd}


class EndpointGate(_Leases):
    """The cluster's concurrency limit for one endpoint (a Ray actor). Slots are counted per
    lease, so a worker releases "one of mine" without naming which.

    Args:
        endpoint: the endpoint's ``base_url`` (for messages and :meth:`state`).
        limit: calls in flight at once over the whole cluster (>= 1).
    """

    def __init__(self, endpoint: str, limit: int):
        if limit < 1:
            raise ValueError(f"an endpoint limit must be >= 1 (got {limit} for {endpoint})")
        self.endpoint, self.limit = endpoint, limit
        self._held: Counter[Lease] = Counter()
        self._free = limit
        self._waiters: list[asyncio.Future] = []
        self.in_use = self.peak = self.grants = 0

    async def acquire(self, lease: Lease) -> bool:
        """Wait for a slot and hold it under ``lease``."""
        self._heard(lease)
        while self._free == 0:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter
        self._free -= 1
        self._held[lease] += 1
        self.in_use += 1
        self.grants += 1
        self.peak = max(self.peak, self.in_use)
        return True

    def release(self, lease: Lease, count: int = 1) -> int:
        """Give back up to ``count`` of ``lease``'s slots; returns how many."""
        freed = min(count, self._held[lease])
        self._held[lease] -= freed
        if self._held[lease] <= 0:
            del self._held[lease]
        self._free += freed
        self.in_use -= freed
        for _ in range(freed):
            while self._waiters:
                waiter = self._waiters.pop(0)
                if not waiter.done():
                    waiter.set_result(None)
                    break
        return freed

    def release_after(self, granted: bool, lease: Lease) -> int:
        """Release the slot an abandoned :meth:`acquire` was granted (Ray resolves ``granted``
        first)."""
        return self.release(lease)

    def begin(self, unit: str, attempt: str) -> int:
        """Release the slots of ``unit``'s earlier attempts; returns how many."""
        self._heard((unit, attempt))
        match = _matches(unit, attempt, other=True)
        return sum(self.release(lease, n) for lease, n in list(self._held.items()) if match(lease))

    def end(self, unit: str, attempt: Optional[str] = None) -> int:
        self._forget(unit, attempt)
        match = _matches(unit, attempt, other=False)
        return sum(self.release(lease, n) for lease, n in list(self._held.items()) if match(lease))

    def _expire(self, lease: Lease) -> None:
        self.release(lease, self._held[lease])

    def state(self) -> dict[str, Any]:
        """``endpoint``, ``limit``, slots ``in_use``, the ``peak`` in use and ``grants``."""
        return {"endpoint": self.endpoint, "limit": self.limit, "in_use": self.in_use,
                "peak": self.peak, "grants": self.grants}


@dataclass
class _Claim:
    lease: Lease
    done: asyncio.Event
    since: float


class ResponseStore(_Leases):
    """The cluster's response cache (a Ray actor owning one SQLite file; see the module
    docstring).

    Args:
        path: the database, e.g. the grid's ``out/llm_cache.sqlite`` (same format as
            :class:`ResponseCache`, so a run without Ray reads what a run with Ray stored).
    """

    def __init__(self, path: str):
        self.cache = ResponseCache(path)
        self._claims: dict[str, _Claim] = {}
        self.hits = self.misses = self.waits = self.takeovers = 0

    async def lookup(self, key: str, lease: Lease) -> Optional[CachedResponse]:
        """The stored reply, or ``None`` after claiming ``key`` for ``lease`` (whose next step
        is the call and then :meth:`put`, or :meth:`release`)."""
        self._heard(lease)
        while (claim := self._claims.get(key)) is not None and claim.lease != lease:
            self.waits += 1
            left = CLAIM_TIMEOUT_S - (time.monotonic() - claim.since)
            try:
                await within(claim.done.wait(), max(left, 0.0))
            except asyncio.TimeoutError:
                self.takeovers += 1
                break
        # Claim before the lookup's await: every other waiter woken with this one must find the
        # key claimed and wait again, or each would miss and pay for the same request.
        claim = self._claims[key] = _Claim(lease, asyncio.Event(), time.monotonic())
        hit = await self.cache.get(key)
        if hit is None:
            self.misses += 1
        else:
            self.hits += 1
            if self._claims.get(key) is claim:
                del self._claims[key]
            claim.done.set()
        return hit

    async def put(self, key: str, model: str, response: CachedResponse, lease: Lease) -> None:
        """Commit ``response`` (before returning) and end the key's claim."""
        await self.cache.put(key, model, response)
        claim = self._claims.pop(key, None)
        if claim is not None:
            claim.done.set()

    def release(self, key: str, lease: Lease) -> None:
        """End ``lease``'s claim of ``key`` without a reply (the call failed)."""
        claim = self._claims.get(key)
        if claim is not None and claim.lease == lease:
            del self._claims[key]
            claim.done.set()

    def release_after(self, hit: Optional[CachedResponse], key: str, lease: Lease) -> None:
        """Release the claim an abandoned :meth:`lookup` may have made."""
        self.release(key, lease)

    def begin(self, unit: str, attempt: str) -> int:
        """End the claims of ``unit``'s earlier attempts; returns how many."""
        self._heard((unit, attempt))
        return self._drop(_matches(unit, attempt, other=True))

    def end(self, unit: str, attempt: Optional[str] = None) -> int:
        self._forget(unit, attempt)
        return self._drop(_matches(unit, attempt, other=False))

    def _expire(self, lease: Lease) -> None:
        self._drop(lambda held: held == lease)

    def _drop(self, match: Callable[[Lease], bool]) -> int:
        dropped = [key for key, claim in self._claims.items() if match(claim.lease)]
        for key in dropped:
            self._claims.pop(key).done.set()
        return len(dropped)

    async def count(self) -> int:
        return await self.cache.count()

    def state(self) -> dict[str, int]:
        """Lookups answered (``hits``), claimed (``misses``), that waited on another process's
        claim (``waits``) or took an old one over (``takeovers``), and claims still open."""
        return {"hits": self.hits, "misses": self.misses, "waits": self.waits,
                "takeovers": self.takeovers, "open_claims": len(self._claims)}

    async def close(self) -> None:
        await self.cache.aclose()


# ------------------------------------------------------------------------------- worker side
@dataclass
class SharedReservation(Reservation):
    """A reservation held in a :class:`BudgetActor`."""

    rid: int = 0


class SharedBudget:
    """Where a pool expects a :class:`Budget`: the cluster's budget actor, used under ``lease``.

    Args:
        actor: the :class:`BudgetActor`'s handle.
        lease: the unit attempt this process works for.
        max_usd: the actor's cap (known when the actor was made; saves a round trip).
    """

    def __init__(self, actor: Any, lease: Lease, max_usd: float):
        self.actor, self.lease, self.max_usd = actor, lease, float(max_usd)
        self._settles: list[Any] = []

    def _state(self) -> dict[str, float]:
        import ray

        return ray.get(self.actor.state.remote())

    @property
    def spent_usd(self) -> float:
        """Settled cost so far over the whole cluster ($)."""
        return self._state()["spent_usd"]

    @property
    def reserved_usd(self) -> float:
        return self._state()["reserved_usd"]

    @property
    def remaining_usd(self) -> float:
        state = self._state()
        return max(0.0, state["max_usd"] - state["spent_usd"] - state["reserved_usd"])

    async def reserve(self, amount_usd: float, llm: str = "") -> Reservation:
        """As :meth:`Budget.reserve`, against the cluster's cap.

        Raises:
            BudgetExceeded: the cap refuses; nothing is reserved.
        """
        if not (math.isfinite(amount_usd) and amount_usd >= 0):
            raise ValueError(f"a reservation must be a finite amount >= 0 (got {amount_usd!r})")
        ref = self.actor.reserve.remote(amount_usd, llm, self.lease)
        try:
            rid, refusal = await ref
        except asyncio.CancelledError:
            self.actor.cancel.remote(ref)  # runs once the grant is known
            raise
        if refusal is not None:
            raise BudgetExceeded(*refusal)
        return SharedReservation(amount_usd, llm, rid=rid)

    def settle(self, reservation: Reservation, cost_usd: float) -> None:
        """As :meth:`Budget.settle`; sent without waiting (see :meth:`flush`)."""
        if reservation.settled:
            raise RuntimeError(f"reservation for {reservation.llm!r} settled twice")
        reservation.settled = True
        assert isinstance(reservation, SharedReservation)
        self._settles.append(self.actor.settle.remote(reservation.rid, cost_usd))
        if len(self._settles) > 256:
            self._settles = [ref for ref in self._settles if not _ready(ref)]

    async def flush(self) -> None:
        """Wait until every settle sent so far has reached the actor."""
        settles, self._settles = self._settles, []
        if settles:
            await asyncio.gather(*settles)


def _ready(ref: Any) -> bool:
    import ray

    ready, _ = ray.wait([ref], timeout=0)
    return bool(ready)


class SharedSlot:
    """One endpoint's slot for a pool's ``endpoint_slots``: the process's own limit, then the
    cluster's :class:`EndpointGate`.

    Args:
        gate: the gate's handle.
        limit: calls this process may have in flight to the endpoint.
        lease: the unit attempt this process works for.
    """

    def __init__(self, gate: Any, limit: int, lease: Lease):
        self.gate, self.lease = gate, lease
        self._local = asyncio.Semaphore(limit)

    async def __aenter__(self) -> "SharedSlot":
        await self._local.acquire()
        ref = self.gate.acquire.remote(self.lease)
        try:
            await ref
        except BaseException:
            self.gate.release_after.remote(ref, self.lease)
            self._local.release()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.gate.release.remote(self.lease)
        self._local.release()


class SharedCache:
    """Where a pool expects a :class:`ResponseCache`: the cluster's :class:`ResponseStore`.

    Args:
        store: the store's handle.
        lease: the unit attempt this process works for.
    """

    def __init__(self, store: Any, lease: Lease):
        self.store, self.lease = store, lease
        self._claimed: set[str] = set()

    async def get(self, key: str) -> Optional[CachedResponse]:
        """The stored reply, or ``None`` — then this process holds the key's claim until it
        puts the reply or the pool releases it."""
        ref = self.store.lookup.remote(key, self.lease)
        try:
            hit = await ref
        except asyncio.CancelledError:
            self.store.release_after.remote(ref, key, self.lease)
            raise
        if hit is None:
            self._claimed.add(key)
        return hit

    async def put(self, key: str, model: str, response: CachedResponse) -> None:
        """Store ``response``; returns once it is committed on the store's disk."""
        await self.store.put.remote(key, model, response, self.lease)
        self._claimed.discard(key)

    def release(self, key: str) -> None:
        """End this process's claim of ``key`` (the pool calls it when a call ends)."""
        if key in self._claimed:
            self._claimed.discard(key)
            self.store.release.remote(key, self.lease)

    async def count(self) -> int:
        return await self.store.count.remote()

    async def aclose(self) -> None:
        """Nothing to close here: the store belongs to whoever made the actor."""


class LeaseHeartbeat:
    """Keeps ``lease`` alive in ``actors`` while the ``with`` block runs: a daemon thread renews
    it every :data:`HEARTBEAT_S` (see the module docstring)."""

    def __init__(self, actors: list[Any], lease: Lease):
        import threading

        self.actors, self.lease = actors, lease
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="masr-lease", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            for actor in self.actors:
                actor.renew.remote(*self.lease)

    def __enter__(self) -> "LeaseHeartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=HEARTBEAT_S * 2)


def actor_class(cls: type, **options: Any) -> Any:
    """``cls`` as a Ray actor class with ``options`` (imports Ray)."""
    import ray

    return ray.remote(**options)(cls) if options else ray.remote(cls)

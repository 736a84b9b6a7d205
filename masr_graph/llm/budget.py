"""A run's spending cap: reserve the worst case before a call, settle the real cost after.

Why reservations: calls run concurrently, so checking "spent so far + this call" is not enough —
64 calls in flight could each pass the check and together overshoot. Each attempt first reserves
its worst case (prompt-token upper bound x ``price_in`` + ``max_tokens`` x ``price_out``); the
reservation is replaced by the real cost when the attempt ends. ``spent + reserved`` never exceeds
the cap, so the cap holds whatever order calls finish in.

An attempt whose outcome is unknown (timed out, connection dropped after sending, garbled reply,
cancelled) is settled at what the pool's ``unknown_outcome_cost`` policy charges — by default
its whole reservation, since a provider may bill it without telling us — and the pool's ledger
records the same amount for it (marked ``cost_estimated``), so ``spent_usd`` equals the ledger's
total under any mix of faults.

When only other calls' reservations stand in the way, :meth:`Budget.reserve` waits for them to
settle (they usually cost less than their worst case) instead of failing early; when what is
already spent leaves too little room, it raises :class:`~masr_graph.errors.BudgetExceeded` at
once and the call is not made.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

from ..errors import BudgetExceeded


@dataclass
class Reservation:
    """Money set aside for one attempt; hand it back to :meth:`Budget.settle` exactly once."""

    amount_usd: float
    llm: str
    settled: bool = False


class Budget:
    """Spending cap for one run.

    Args:
        max_usd: the cap in $ (finite, >= 0).

    ``reserve`` and ``settle`` touch the counters without awaiting in between, so they are atomic
    on one asyncio event loop; the budget belongs to the loop that first waits in it.
    """

    def __init__(self, max_usd: float):
        if (
            isinstance(max_usd, bool)
            or not isinstance(max_usd, (int, float))
            or not (math.isfinite(max_usd) and max_usd >= 0)
        ):
            raise ValueError(f"max_usd must be a finite number of dollars >= 0 (got {max_usd!r})")
        self.max_usd = float(max_usd)
        self._spent = 0.0
        self._reserved = 0.0
        self._in_flight = 0
        self._settled_event: asyncio.Event | None = None

    @property
    def spent_usd(self) -> float:
        """Settled cost so far ($); an upper bound of real spend (see :meth:`settle`)."""
        return self._spent

    @property
    def reserved_usd(self) -> float:
        """Worst cases held by attempts in flight ($)."""
        return self._reserved

    @property
    def remaining_usd(self) -> float:
        """What is left for new reservations ($)."""
        return max(0.0, self.max_usd - self._spent - self._reserved)

    async def reserve(self, amount_usd: float, llm: str = "") -> Reservation:
        """Set ``amount_usd`` aside for one attempt of a call to ``llm``.

        Waits while only in-flight reservations stand in the way.

        Raises:
            BudgetExceeded: ``spent + amount_usd`` is above the cap; nothing is reserved.
        """
        if not (math.isfinite(amount_usd) and amount_usd >= 0):
            raise ValueError(f"a reservation must be a finite amount >= 0 (got {amount_usd!r})")
        while True:
            if self._spent + amount_usd > self.max_usd:
                raise BudgetExceeded(self.max_usd, self._spent + self._reserved, amount_usd, llm)
            if self._in_flight == 0 or self._spent + self._reserved + amount_usd <= self.max_usd:
                self._reserved += amount_usd
                self._in_flight += 1
                return Reservation(amount_usd, llm)
            if self._settled_event is None:
                self._settled_event = asyncio.Event()
            await self._settled_event.wait()

    def settle(self, reservation: Reservation, cost_usd: float) -> None:
        """Replace ``reservation`` by the attempt's real cost.

        For an attempt of unknown outcome (a timeout or a dropped connection may still be
        billed) the pool passes its ``unknown_outcome_cost`` charge — by default the full
        reservation, which keeps :attr:`spent_usd` an upper bound of what providers will charge
        — and records the same amount in its ledger.
        """
        if reservation.settled:
            raise RuntimeError(f"reservation for {reservation.llm!r} settled twice")
        reservation.settled = True
        self._in_flight -= 1
        # Reset rather than subtract when idle, so float residue cannot make waiters wait forever.
        self._reserved = self._reserved - reservation.amount_usd if self._in_flight else 0.0
        self._spent += cost_usd
        if self._settled_event is not None:
            # Wake every waiter; each re-checks the counters.
            self._settled_event.set()
            self._settled_event = None

"""What a person watching a grid run sees: one line per running cell (its name, what it is at,
its reward so far and what it spent), one summary line per finished cell, and one bar for the
whole grid — never a wall of per-query bars.

On a terminal the running lines and the grid bar are tqdm bars on stderr, redrawn in place, and
summary lines are written above them (stdout). Elsewhere (a log file, CI, a test capturing
output) only the summary lines are printed, so logs stay one line per finished cell.

The same object serves the serial grid (cells call :meth:`GridProgress.update` directly) and the
Ray grid (cells post to a board actor; the driver passes its snapshot to :meth:`GridProgress.show`).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

from tqdm.auto import tqdm


@dataclass
class CellLine:
    """What a running cell last reported.

    Args:
        name: the cell's name (``<pair>/<label>``).
        what: what it is doing (``"queries"``, ``"training step"``, ``"executions"``).
        step: how far it is (queries answered, training steps...).
        total: out of how many (``None``: unknown).
        reward: its running mean reward (utility for cells, the objective for training).
        usd: what its calls cost so far ($, what the budget counted).
    """

    name: str
    what: str = ""
    step: int = 0
    total: Optional[int] = None
    reward: Optional[float] = None
    usd: float = 0.0
    started: float = field(default_factory=time.monotonic)

    def text(self, width: int = 60) -> str:
        name = self.name if len(self.name) <= width else "…" + self.name[-(width - 1):]
        done = f"{self.step}/{self.total}" if self.total else f"{self.step}"
        reward = "" if self.reward is None else f" · reward {self.reward:.3f}"
        return (f"{name:<{width}} {self.what} {done}{reward} · ${self.usd:.4f} · "
                f"{time.monotonic() - self.started:.0f}s")


class GridProgress:
    """Progress of one grid invocation.

    Args:
        total: how many units (cells, trainings, pair preparations) are known so far;
            :meth:`add_total` grows it as pairs enumerate their cells.
        interactive: draw bars (default: when stderr is a terminal).
        say: where summary lines go when not interactive (default ``print``).
    """

    def __init__(self, total: int = 0, *, interactive: Optional[bool] = None,
                 say: Callable[[str], None] = print):
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self.say = say
        self.lines: dict[str, CellLine] = {}
        self.done = 0
        self.total = total
        self.usd = 0.0
        self._bar: Optional[Any] = None
        self._slots: list[Any] = []
        self._slot_of: dict[str, int] = {}
        self._last_draw = 0.0
        if self.interactive:
            self._bar = tqdm(total=total, desc="grid", unit="cell", position=0, leave=True,
                             dynamic_ncols=True, file=sys.stderr)

    # ---- what cells report ----------------------------------------------------------------
    def add_total(self, units: int) -> None:
        """``units`` more units became known (a pair's cells, once its library exists)."""
        self.total += units
        if self._bar is not None:
            self._bar.total = self.total
            self._bar.refresh()

    def update(self, name: str, **fields: Any) -> None:
        """A running cell's report (fields of :class:`CellLine`)."""
        line = self.lines.get(name)
        if line is None:
            line = self.lines[name] = CellLine(name)
        for key, value in fields.items():
            setattr(line, key, value)
        self._draw()

    def show(self, rows: Mapping[str, Mapping[str, Any]]) -> None:
        """Replace the running lines by ``rows`` (a board's snapshot: name → fields)."""
        for name in [n for n in self.lines if n not in rows]:
            self._drop(name)
        for name, fields in rows.items():
            line = self.lines.get(name) or CellLine(name)
            for key, value in fields.items():
                if hasattr(line, key):
                    setattr(line, key, value)
            self.lines[name] = line
        self._draw(force=True)

    def finish(self, name: str, summary: str, *, usd: float = 0.0) -> None:
        """``name`` finished: its running line goes, its summary line is printed."""
        self._drop(name)
        self.done += 1
        self.usd += usd
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix_str(f"{len(self.lines)} running · ${self.usd:.4f}",
                                      refresh=False)
            tqdm.write(summary, file=sys.stdout)
        else:
            self.say(summary)
        self._draw(force=True)

    def note(self, message: str) -> None:
        """A line that is not about one cell (a pair's size, a stop)."""
        if self._bar is not None:
            tqdm.write(message, file=sys.stdout)
        else:
            self.say(message)

    def close(self) -> None:
        for slot in self._slots:
            slot.close()
        self._slots.clear()
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    # ---- drawing ---------------------------------------------------------------------------
    def _drop(self, name: str) -> None:
        self.lines.pop(name, None)
        slot = self._slot_of.pop(name, None)
        if slot is not None and self.interactive:
            self._slots[slot].set_description_str("", refresh=True)

    def _draw(self, force: bool = False) -> None:
        if not self.interactive or self._bar is None:
            return
        now = time.monotonic()
        if not force and now - self._last_draw < 0.2:
            return
        self._last_draw = now
        used = set(self._slot_of.values())
        for name in self.lines:
            if name not in self._slot_of:
                free = next((i for i in range(len(self._slots)) if i not in used), None)
                if free is None:
                    free = len(self._slots)
                    self._slots.append(tqdm(total=0, position=free + 1, leave=False,
                                            bar_format="{desc}", file=sys.stderr,
                                            dynamic_ncols=True))
                self._slot_of[name] = free
                used.add(free)
        for name, slot in self._slot_of.items():
            self._slots[slot].set_description_str("  " + self.lines[name].text(), refresh=True)
        self._bar.refresh()


class ProgressBoard:
    """Where running units in other processes post their lines (a Ray actor on a Ray grid);
    the driver draws :meth:`snapshot` with :meth:`GridProgress.show`."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}

    def update(self, name: str, fields: dict[str, Any]) -> None:
        self.rows.setdefault(name, {}).update(fields)

    def finish(self, name: str) -> None:
        self.rows.pop(name, None)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return {name: dict(fields) for name, fields in self.rows.items()}

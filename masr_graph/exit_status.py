"""One exit-status contract for every command line of masr_graph (``masr`` and
``benchmarks/run_all.py``), so scripts and CI can tell a finished run from a budget stop:

====  ============================================================================================
0     done
1     error: a user mistake or an unusable environment (bad pool file, missing data directory or
      API-key variable, unreachable LLM...); one line ``<prog>: error: <message>`` says what to fix
2     bad command line (argparse's usage line and message)
3     stopped by the budget cap (``--max-usd``): everything finished is kept; the message says
      what and how to continue
130   interrupted (Ctrl-C): finished work is kept; rerun with the same ``--out`` to resume
====  ============================================================================================

Only genuine bugs print a traceback. :func:`run_command` maps what a command body raises to these
statuses; the ``argparse`` types below turn bad numbers into usage errors (status 2) before any
work starts.
"""
from __future__ import annotations

import argparse
import asyncio
import math
import sys
from typing import Awaitable, Callable, Optional, Union

from .errors import BudgetExceeded, MasrError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_BUDGET = 3
EXIT_INTERRUPTED = 130

RESUME_HINT = "rerun with the same --out to resume"


class BudgetStop(MasrError):
    """A command stopped by the budget cap after saving what it finished.

    Args:
        cause: the refusal that stopped it.
        kept: what of the run is kept, e.g. ``"runs/x/router.pt holds the 7 steps finished"``.
    """

    def __init__(self, cause: BudgetExceeded, kept: str):
        super().__init__(str(cause))
        self.cause = cause
        self.kept = kept


CommandBody = Callable[[], Union[int, None, Awaitable[Optional[int]]]]


def run_command(prog: str, body: CommandBody, *, resumable: bool = True) -> int:
    """Run a command's ``body`` (sync, or returning a coroutine that is run with
    :func:`asyncio.run`) and return its exit status, printing one line to stderr for anything
    but success.

    Args:
        prog: the command's name in messages, e.g. ``"masr train"`` or ``"run_all.py"``.
        body: the command; returns its status (``None`` is 0) or raises.
        resumable: the command resumes from its ``--out`` directory, so an interrupt says how.

    Returns:
        0, or the status of the outcome (see the module docstring); a bug (any other
        exception) propagates with its traceback.
    """
    try:
        outcome = body()
        if asyncio.iscoroutine(outcome):
            outcome = asyncio.run(outcome)
        return EXIT_OK if outcome is None else int(outcome)  # type: ignore[arg-type]
    except BudgetStop as stop:
        _say(f"{prog}: stopped by the budget cap: {stop.cause}\n{stop.kept}; rerun with a "
             "higher --max-usd to continue.")
        return EXIT_BUDGET
    except BudgetExceeded as stop:
        _say(f"{prog}: stopped by the budget cap: {stop}\nfinished work is kept; rerun with a "
             "higher --max-usd to continue.")
        return EXIT_BUDGET
    except MasrError as exc:
        _say(f"{prog}: error: {exc}")
        return EXIT_ERROR
    except OSError as exc:  # an unwritable --out, a full disk: the message names the path
        _say(f"{prog}: error: {exc}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        _say(f"{prog}: interrupted; {RESUME_HINT}" if resumable else f"{prog}: interrupted")
        return EXIT_INTERRUPTED


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ argparse types (status 2)
def usd_amount(text: str) -> float:
    """``--max-usd``: a finite number of dollars >= 0."""
    value = _float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number of dollars >= 0 (got {text})")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (e.g. a cost penalty λ)."""
    value = _float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0 (got {text})")
    return value


def temperature(text: str) -> float:
    """A sampling temperature in [0, 2]."""
    value = _float(text)
    if not 0.0 <= value <= 2.0:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 2] (got {text})")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1 (got {value})")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0 (got {value})")
    return value


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number (got {text!r})") from None


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer (got {text!r})") from None

"""Typed errors. Every error names the offending value and, where there is a closed set, the
allowed ones, so a user can fix the input without reading the source."""
from __future__ import annotations


class MasrError(Exception):
    """Base class of every error raised on purpose by masr_graph."""


class ConfigError(MasrError, ValueError):
    """A pool file, topology, role profile or other configuration is invalid."""


class MissingAPIKeyError(ConfigError):
    """The environment variable that should hold an LLM's API key is not set.

    Raised only when that LLM is actually called, so a pool file may list providers the user has
    no key for."""

    def __init__(self, llm: str, env_var: str):
        super().__init__(
            f"LLM {llm!r} needs its API key in the environment variable {env_var!r}, "
            f"which is not set (export {env_var}=...)"
        )
        self.llm = llm
        self.env_var = env_var


class LLMCallError(MasrError):
    """A chat call failed for good: retries exhausted or a non-retryable error."""

    def __init__(self, llm: str, reason: str, attempts: int):
        super().__init__(f"call to LLM {llm!r} failed after {attempts} attempt(s): {reason}")
        self.llm = llm
        self.reason = reason
        self.attempts = attempts


class CircuitOpenError(LLMCallError):
    """A call refused without a request because its endpoint's circuit breaker is open: the
    endpoint's last calls kept failing, so the pool stops sending to it for a while and then
    lets one trial request through (half-open). Nothing is sent, reserved or paid.

    An :class:`LLMCallError`, so a run records the agent's failure and carries on (compare
    :class:`LLMUnavailableError`, which stops a run whose LLM never answered).

    Args:
        llm: the LLM called.
        endpoint: its ``base_url``.
        reason: what the breaker saw (consecutive failures, the last error) and when it retries.
        attempts: attempts the call made before it was refused.
        retry_at: when the trial request will be allowed (``time.time()`` seconds), ``None``
            while a trial request is in flight.
    """

    def __init__(self, llm: str, endpoint: str, reason: str, attempts: int,
                 retry_at: float | None = None):
        super().__init__(llm, reason, attempts)
        self.endpoint = endpoint
        self.retry_at = retry_at


class LLMUnavailableError(MasrError):
    """An LLM's first calls of a run all failed for good and none was answered, so its endpoint,
    model id or key is most likely wrong: the run stops here instead of recording every later
    call as a failed agent, which would report (and train on) nothing but failures.

    Deliberately not an :class:`LLMCallError`: the runtime records those as agent failures and
    carries on; this one propagates out of a batch.

    Args:
        llm: the LLM whose call tripped the check.
        endpoint: its ``base_url``.
        failures: how many calls failed before it stopped.
        reason: the last call's failure.
        scope: what ``failures`` counts: ``"LLM"`` this LLM's calls, ``"endpoint"`` the calls of
            every LLM sharing its endpoint, ``"pool"`` the calls of the whole pool.
    """

    SCOPES = {"LLM": "to it", "endpoint": "to its endpoint", "pool": "of the pool"}

    def __init__(self, llm: str, endpoint: str, failures: int, reason: str, scope: str = "LLM"):
        if scope not in self.SCOPES:
            raise ValueError(f"scope must be one of {list(self.SCOPES)} (got {scope!r})")
        counted = self.SCOPES[scope]
        one_line = " ".join(reason.split())
        super().__init__(
            f"LLM {llm!r} at {endpoint} is unavailable: the first {failures} call(s) {counted} "
            f"failed for good and none was answered (last error: {one_line}); check the "
            "endpoint, the model id and the API key"
        )
        self.llm = llm
        self.endpoint = endpoint
        self.failures = failures
        self.reason = reason
        self.scope = scope


class BudgetExceeded(MasrError):
    """The next call could cost more than what is left of the run's ``max_usd`` cap.

    The call is not made; everything finished before it is kept."""

    def __init__(self, cap_usd: float, committed_usd: float, needed_usd: float, llm: str = ""):
        who = f" for LLM {llm!r}" if llm else ""
        super().__init__(
            f"budget cap ${cap_usd:.6f} would be exceeded{who}: ${committed_usd:.6f} spent or "
            f"reserved, the next call may cost up to ${needed_usd:.6f}"
        )
        self.cap_usd = cap_usd
        self.committed_usd = committed_usd
        self.needed_usd = needed_usd
        self.llm = llm


class BatchBudgetExceeded(BudgetExceeded):
    """A batch of queries stopped because the budget cap was reached.

    ``results`` holds, in input order, every result finished before the stop and ``None`` for the
    queries that did not finish; ``cause`` is the :class:`BudgetExceeded` that stopped the batch."""

    def __init__(self, cause: BudgetExceeded, results: list):
        super().__init__(cause.cap_usd, cause.committed_usd, cause.needed_usd, cause.llm)
        finished = sum(r is not None for r in results)
        self.args = (
            f"{self.args[0]} ({finished} of {len(results)} queries finished before the stop)",
        )
        self.cause = cause
        self.results = results


class UnknownLLMError(ConfigError, KeyError):
    def __init__(self, name: str, known: list[str]):
        super().__init__(f"unknown LLM {name!r}; the pool has: {', '.join(sorted(known))}")
        self.name = name

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return self.args[0]


class TopologyError(ConfigError):
    """A topology spec is invalid or a requested topology is not registered."""


class RoleError(ConfigError):
    """A role profile is invalid or a requested role is not known."""


class DataError(MasrError, FileNotFoundError):
    """A dataset file is missing or malformed; the message names the path and how to fix it."""


class UnknownQueryError(MasrError, LookupError):
    """The replay backend was asked about a query it has no recorded outcome for."""


class RoutingError(MasrError):
    """The router cannot produce a plan for the given input (e.g. an empty candidate set)."""


class LocalServerError(MasrError):
    """A local llama.cpp server cannot be used: the server binary or a model file is missing, or
    the server exited or did not become healthy in time (the message carries the tail of its
    log)."""


class SandboxError(MasrError, RuntimeError):
    """The code sandbox itself could not be set up or torn down (not a failure of the sandboxed
    code, which is reported in its ``SandboxResult``)."""


class ScorerError(MasrError, RuntimeError):
    """A scorer worker process could not be started or the scorer pool is closed (a reply that
    hangs or crashes its scorer is not an error: it is scored as wrong, with the reason)."""

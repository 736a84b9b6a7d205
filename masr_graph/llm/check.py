"""Checking a pool before paying for it: keys present, endpoints reachable, models listed.

:func:`check_pool` looks at each LLM of a pool without making a chat call, so nothing is billed:
its API-key variable must be set, its endpoint must answer ``GET /models`` (the OpenAI SDK's
``models.list()``, one request per endpoint and key, with a short timeout and no retries) and
must list the LLM's model id. ``masr pool check POOL.yaml`` prints one line per LLM.

Backends that are not HTTP endpoints (``replay://``) have nothing to reach: they pass when a
transport is registered for their scheme.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence, Union

import openai

from ..errors import ConfigError
from .pool import _redact
from .transport import KEYLESS_PLACEHOLDER, _connection_failure, transport_factory, url_scheme
from .types import LLMSpec

DEFAULT_CHECK_TIMEOUT_S = 10.0
MODELS_SHOWN = 8  # model ids quoted in a "not listed" message


@dataclass(frozen=True)
class LLMCheck:
    """What :func:`check_pool` found for one LLM.

    Args:
        llm: its name.
        endpoint: its ``base_url``.
        ok: usable as far as can be told without a chat call.
        detail: what was checked, or what is wrong and how to fix it (one line, no secrets).
    """

    llm: str
    endpoint: str
    ok: bool
    detail: str

    def line(self) -> str:
        """``ok       NAME  ENDPOINT: detail`` or ``PROBLEM  NAME  ENDPOINT: detail``."""
        return f"{'ok' if self.ok else 'PROBLEM':8} {self.llm}  {self.endpoint}: {self.detail}"


@dataclass(frozen=True)
class _Listing:
    """An endpoint's answer to ``GET /models``: the ids, or why there are none."""

    models: Optional[frozenset[str]] = None
    problem: str = ""


async def check_pool(
    specs: Iterable[LLMSpec], *, timeout_s: float = DEFAULT_CHECK_TIMEOUT_S
) -> list[LLMCheck]:
    """Check every LLM of a pool without a chat call (see the module docstring).

    Args:
        specs: the pool's LLMs, e.g. from :func:`~masr_graph.llm.load_pool_config`.
        timeout_s: how long each endpoint has to answer ``GET /models`` (> 0).

    Returns:
        One :class:`LLMCheck` per LLM, in pool order.
    """
    if not (isinstance(timeout_s, (int, float)) and 0 < timeout_s < float("inf")):
        raise ValueError(f"timeout_s must be a finite number of seconds > 0 (got {timeout_s!r})")
    spec_list = list(specs)
    # One listing per endpoint and key: another key may be another account with other models.
    wanted: dict[tuple[str, Optional[str]], LLMSpec] = {}
    for spec in spec_list:
        if _is_http(spec) and _key_problem(spec) is None:
            wanted.setdefault((spec.base_url.rstrip("/"), spec.api_key_env), spec)
    listings = dict(zip(
        wanted,
        await asyncio.gather(*(_list_models(spec, timeout_s) for spec in wanted.values())),
        strict=True,
    ))
    return [_verdict(spec, listings) for spec in spec_list]


def _verdict(spec: LLMSpec, listings: dict[tuple[str, Optional[str]], _Listing]) -> LLMCheck:
    def result(ok: bool, detail: str) -> LLMCheck:
        return LLMCheck(spec.name, spec.base_url, ok, _redact(detail, spec))

    if not _is_http(spec):
        scheme = url_scheme(spec.base_url)
        try:
            transport_factory(scheme)
        except ConfigError as exc:
            return result(False, str(exc))
        return result(True, f"{scheme}:// backend (not an HTTP endpoint: nothing to reach)")
    key_problem = _key_problem(spec)
    if key_problem is not None:
        return result(False, key_problem)
    listing = listings[(spec.base_url.rstrip("/"), spec.api_key_env)]
    if listing.models is None:
        return result(False, listing.problem)
    if spec.model not in listing.models:
        shown = sorted(listing.models)
        more = f", ... ({len(shown)} in all)" if len(shown) > MODELS_SHOWN else ""
        listed = ", ".join(shown[:MODELS_SHOWN]) + more if shown else "none"
        return result(False, f"model {spec.model!r} is not listed by the endpoint (it lists: "
                             f"{listed}); fix 'model' in the pool file")
    key = f", key from ${spec.api_key_env}" if spec.api_key_env else ", no key"
    return result(True, f"model {spec.model!r} listed{key}")


def _is_http(spec: LLMSpec) -> bool:
    return url_scheme(spec.base_url) in ("http", "https")


def _key_problem(spec: LLMSpec) -> Optional[str]:
    if spec.api_key_env is not None and not os.environ.get(spec.api_key_env, "").strip():
        return (f"its API key variable {spec.api_key_env!r} is not set or empty "
                f"(export {spec.api_key_env}=...)")
    return None


async def _list_models(spec: LLMSpec, timeout_s: float) -> _Listing:
    """``GET /models`` of ``spec``'s endpoint with its key: no retries, ``timeout_s``."""
    api_key = os.environ[spec.api_key_env].strip() if spec.api_key_env else KEYLESS_PLACEHOLDER
    client = openai.AsyncOpenAI(
        base_url=spec.base_url, api_key=api_key, max_retries=0, timeout=timeout_s,
        http_client=openai.DefaultAioHttpClient(),
    )
    try:
        try:
            models = frozenset([model.id async for model in client.models.list()])
        finally:
            await client.close()
    except openai.AuthenticationError as exc:
        return _Listing(problem=f"the endpoint rejected the key in ${spec.api_key_env} "
                                f"(HTTP {exc.status_code}: {_message(exc)})")
    except openai.PermissionDeniedError as exc:
        return _Listing(problem=f"the key in ${spec.api_key_env} may not list models "
                                f"(HTTP {exc.status_code}: {_message(exc)})")
    except openai.NotFoundError:
        return _Listing(problem="the endpoint does not serve GET /models (HTTP 404), so the model "
                                "id cannot be checked; is base_url the API root (often .../v1)?")
    except openai.APIStatusError as exc:
        return _Listing(problem=f"GET /models answered HTTP {exc.status_code}: {_message(exc)}")
    except openai.APIConnectionError as exc:  # the SDK's APITimeoutError included
        failure = _connection_failure(exc)
        if not failure.may_be_billed:  # could not connect at all (refused, unknown host)
            return _Listing(problem=f"unreachable: {failure.reason}")
        if isinstance(exc, openai.APITimeoutError):
            return _Listing(problem=f"no answer to GET /models within {timeout_s:g}s")
        return _Listing(problem=f"GET /models failed: {failure.reason}")
    except (openai.APIError, ValueError, TypeError, AttributeError) as exc:
        # A body that is not an OpenAI model list (the SDK hands back what it could parse).
        return _Listing(problem=f"GET /models did not answer a model list "
                                f"({type(exc).__name__}: {exc})")
    return _Listing(models=models)


def _message(exc: openai.APIStatusError) -> str:
    detail = exc.body.get("message") if isinstance(exc.body, dict) else None
    return " ".join(str(detail or exc.message).split())


def summary(results: Sequence[LLMCheck], where: Union[str, "os.PathLike[str]"]) -> str:
    """One line: every LLM ok, or which ones have problems."""
    bad = [r.llm for r in results if not r.ok]
    if not bad:
        return f"{where}: all {len(results)} LLMs ok (keys set, endpoints reachable, models listed)"
    return (f"{where}: {len(bad)} of {len(results)} LLMs have problems ({', '.join(bad)}); no "
            "chat call was made")

"""Transports: how one attempt of a chat call reaches an LLM, chosen by the scheme of ``base_url``.

``http``/``https`` use the official ``openai`` SDK (:class:`OpenAITransport`). Other backends
register a factory for their scheme with :func:`register_transport` (the replay backend registers
``replay``). A factory receives every spec of its scheme in the pool and returns one transport
that serves them all, so a backend can share clients, files or state across its LLMs.

A transport makes exactly one attempt per ``complete`` call; retrying is the pool's job. It
raises :class:`TransientError` for faults worth retrying and any other exception for permanent
ones.
"""

from __future__ import annotations

import importlib

import json
import math
import os
import re
from typing import Any, Callable, Optional, Sequence
from urllib.parse import urlsplit

import aiohttp
import httpx2
import openai

from ..errors import ConfigError, MasrError, MissingAPIKeyError
from .types import CallContext, Completion, LLMSpec, Message, Transport

TransportFactory = Callable[[list[LLMSpec]], Transport]

# The SDK's own retryable statuses: request timeout, lock conflict, rate limit, server errors.
TRANSIENT_STATUS = frozenset({408, 409, 429})
# The SDK refuses to send a request without a credential and, given none, would read
# OPENAI_API_KEY — leaking an OpenAI key to a local or third-party endpoint. Keyless endpoints
# get this placeholder instead.
KEYLESS_PLACEHOLDER = "no-key-required"
CLIENT_TIMEOUT_GRACE_S = 1.0
URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")


class TransientError(MasrError):
    """One attempt failed in a way worth retrying.

    Args:
        reason: what went wrong, for logs and the final error ("HTTP 429", "timeout after 5s").
        retry_after: seconds the server asked us to wait (``Retry-After``), if it said.
        billed: usage of the failed attempt when the provider reported it (it will be charged).
        may_be_billed: the outcome is unknown (a timeout, a dropped or garbled response): the
            provider may charge for it without telling us, so the budget keeps its worst case.
        status: the HTTP status of the answer, if there was one (429 throttles the endpoint).
    """

    def __init__(
        self,
        reason: str,
        retry_after: Optional[float] = None,
        billed: Optional[Completion] = None,
        *,
        may_be_billed: bool = False,
        status: Optional[int] = None,
    ):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.billed = billed
        self.may_be_billed = may_be_billed
        self.status = status


_FACTORIES: dict[str, TransportFactory] = {}
# Backends shipped with masr_graph that register their scheme when imported. They sit above this
# layer, so they are imported on first use of the scheme rather than here.
_BUILTIN_BACKENDS: dict[str, str] = {"replay": "masr_graph.replay"}


def register_transport(scheme: str, factory: TransportFactory, *, replace: bool = False) -> None:
    """Make ``factory`` build the transport for LLMs whose ``base_url`` starts with ``scheme://``.

    Registering the same factory again is a no-op; a different one needs ``replace=True``.
    """
    if not isinstance(scheme, str) or not URL_SCHEME.fullmatch(scheme):
        raise ConfigError(
            f"invalid transport scheme {scheme!r}: a letter, then letters, digits, '+', '-' or '.' "
            "(e.g. 'replay')"
        )
    scheme = scheme.lower()
    current = _FACTORIES.get(scheme)
    if current is not None and current is not factory and not replace:
        raise ConfigError(
            f"a transport for scheme {scheme!r} is already registered ({current!r}); "
            "pass replace=True to override it"
        )
    _FACTORIES[scheme] = factory


def transport_factory(scheme: str) -> TransportFactory:
    """The factory registered for ``scheme``.

    Raises:
        ConfigError: nothing is registered for it; the message lists the registered schemes.
    """
    scheme = scheme.lower()
    if scheme not in _FACTORIES and scheme in _BUILTIN_BACKENDS:
        importlib.import_module(_BUILTIN_BACKENDS[scheme])
    factory = _FACTORIES.get(scheme)
    if factory is None:
        raise ConfigError(
            f"no transport for base_url scheme {scheme!r}; registered: {sorted(_FACTORIES)} "
            "(a backend registers its scheme with register_transport() when imported)"
        )
    return factory


def url_scheme(base_url: str) -> str:
    """The lower-cased scheme of ``base_url`` (``"https"``, ``"replay"``...)."""
    return urlsplit(base_url).scheme.lower()


class OpenAITransport:
    """One attempt of a chat completion through ``openai.AsyncOpenAI``.

    One client per ``(base_url, api_key_env)``, created at the first call of an LLM that needs it
    (so a missing key fails only when that LLM is used) and reused, with its connection pool, by
    every later call. The SDK's own retries are off (``max_retries=0``): the pool retries, because
    it must also retry answers the SDK accepts (malformed JSON, empty ``choices``), count attempts,
    bill failed attempts and respect the budget between attempts.
    """

    def __init__(self, specs: list[LLMSpec]):
        # Nothing to prepare per spec: clients are made at first use, per endpoint.
        self._clients: dict[tuple[str, Optional[str]], openai.AsyncOpenAI] = {}

    def _client(self, spec: LLMSpec) -> openai.AsyncOpenAI:
        endpoint = (spec.base_url, spec.api_key_env)
        client = self._clients.get(endpoint)
        if client is None:
            if spec.api_key_env is None:
                api_key = KEYLESS_PLACEHOLDER
            else:
                api_key = os.environ.get(spec.api_key_env, "")
                if not api_key:
                    raise MissingAPIKeyError(spec.name, spec.api_key_env)
            client = openai.AsyncOpenAI(
                base_url=spec.base_url,
                api_key=api_key,
                max_retries=0,
                # The SDK's aiohttp backend: httpx2's pool scans every pooled connection for each
                # request, so its CPU per call grows with concurrency (measured here: 2.6-4.0 ms
                # at 64 in flight against 2.2 ms with aiohttp). Proxy variables still apply.
                http_client=openai.DefaultAioHttpClient(),
            )
            self._clients[endpoint] = client
        return client

    async def complete(
        self,
        spec: LLMSpec,
        messages: Sequence[Message],
        params: dict[str, Any],
        context: CallContext,
    ) -> Completion:
        """Send one chat-completions request; see :class:`TransientError` for the fault classes.

        ``context`` does not change the request (it is for other backends)."""
        client = self._client(spec)
        try:
            response = await client.chat.completions.create(
                model=spec.model,
                messages=list(messages),  # type: ignore[arg-type]
                # Per spec (specs sharing a client may differ). The pool enforces timeout_s on
                # the whole attempt; the client's own limit, a little later, is a backstop.
                timeout=spec.timeout_s + CLIENT_TIMEOUT_GRACE_S,
                **params,
            )
        except openai.APIStatusError as exc:
            if exc.status_code in TRANSIENT_STATUS or exc.status_code >= 500:
                detail = exc.body.get("message") if isinstance(exc.body, dict) else None
                raise TransientError(
                    f"HTTP {exc.status_code}: {detail or exc.message}",
                    retry_after=retry_after_seconds(exc.response.headers),
                    status=exc.status_code,
                ) from exc
            raise
        except openai.APIConnectionError as exc:  # the SDK's APITimeoutError included
            raise _connection_failure(exc) from exc
        except (json.JSONDecodeError, openai.APIResponseValidationError) as exc:
            raise TransientError(f"malformed response: {exc}", may_be_billed=True) from exc
        return _completion_from_response(response)

    async def aclose(self) -> None:
        """Close every client's connection pool."""
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()


def _connection_failure(exc: openai.APIConnectionError) -> TransientError:
    """Classify a failed connection by the exceptions it was raised from.

    The class the SDK raises says little here: the aiohttp adapter maps every dropped connection
    to a connect *timeout*. What matters is whether the request left: a failure to connect
    (refused, DNS) never reached the provider and cannot be billed; anything later might be."""
    chain: list[BaseException] = []
    cause: Optional[BaseException] = exc
    while cause is not None and len(chain) < 16:
        chain.append(cause)
        cause = cause.__cause__
    not_sent = any(
        isinstance(e, (aiohttp.ClientConnectorError, httpx2.ConnectError)) for e in chain
    )
    root = chain[-1]
    return TransientError(
        f"connection error ({type(root).__name__}: {root})", may_be_billed=not not_sent
    )


def _completion_from_response(response: Any) -> Completion:
    """Check a parsed response and turn it into a :class:`Completion`.

    The SDK hands back a plain string for a non-JSON body and, without strict validation,
    a model with missing fields for JSON of the wrong shape; both are malformed replies."""
    if isinstance(response, str):
        raise TransientError("malformed response: not JSON", may_be_billed=True)
    usage = getattr(response, "usage", None)
    prompt_tokens = getattr(usage, "prompt_tokens", None)
    completion_tokens = getattr(usage, "completion_tokens", None)
    choices = getattr(response, "choices", None)
    if not choices:
        billed = None
        if prompt_tokens is not None or completion_tokens is not None:
            billed = Completion("", prompt_tokens, completion_tokens)
        raise TransientError("response has no choices", billed=billed, may_be_billed=billed is None)
    message = getattr(choices[0], "message", None)
    content = getattr(message, "content", None)
    if content is not None and not isinstance(content, str):
        raise TransientError(
            f"malformed response: message content is {type(content).__name__}, not text",
            may_be_billed=True,
        )
    return Completion(
        text=content or "",
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        finish_reason=getattr(choices[0], "finish_reason", None),
    )


def retry_after_seconds(headers: Any) -> Optional[float]:
    """Seconds to wait from ``retry-after-ms`` or a numeric ``Retry-After`` header, if present.

    (An HTTP-date ``Retry-After`` is rare for LLM APIs and falls back to exponential backoff.)"""
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(name) if headers is not None else None
        if value is None:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            continue
        if math.isfinite(seconds) and seconds >= 0:
            return seconds
    return None


register_transport("http", OpenAITransport)
register_transport("https", OpenAITransport)

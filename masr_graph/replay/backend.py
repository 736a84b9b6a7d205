"""The replay backend: an offline LLM pool whose members are 9 real LLMs replaying their recorded
outcomes (LLMRouter's table, see :mod:`masr_graph.replay.outcomes`).

It is a transport of the LLM layer (scheme ``replay``), so everything the real layer does —
budget reservations and caps, the reply cache, retries, the ledger — applies unchanged. Pool files
select it with::

    base_url: replay://llmrouter?rule=stubborn        # rule, latency_s, data_dir are optional

For one chat call the transport:

1. finds the recorded query inside the prompt (every message's text): texts are compared with
   whitespace collapsed, the recorded questions are indexed by their first
   :data:`FINGERPRINT_CHARS` characters, and the prompt's word starts are looked up in that index
   (every position when no word start matches); the longest recorded question that occurs wins.
   ``CallContext.query`` is only a hint that is tried first and accepted only if its recorded
   question occurs in the prompt. No recorded question in the prompt: :class:`UnknownQueryError`;
2. decides whether this LLM is right: its recorded score for the query, 0 or 1 for a single
   record; a fractional score (the mean of two records) is a Bernoulli draw, seeded by (LLM,
   query id, ``CallContext.sample_index``, the call's ``seed``), so reruns replay exactly;
3. asks the collaboration rule (:mod:`masr_graph.replay.rules`, default ``stubborn``) for the
   reply, written by :mod:`masr_graph.replay.answers` in the benchmark's natural form;
4. reports usage by the rule of :mod:`masr_graph.llm.tokens` (prompt: ``estimate_prompt_tokens``
   of the messages; completion: ``estimate_text_tokens`` of the reply). Under replay this count
   *is* the usage (there is no hidden tokenizer), so records are not marked estimated. A reply
   longer than ``max_tokens`` is cut to it and ends with ``finish_reason="length"``, as a real
   API would, which also keeps every cost within the budget's reservation. Cost is the pool's:
   tokens times the spec's prices, the recorded ones in :func:`replay_specs`;
5. waits the configured ``latency_s`` (default 0), so concurrency and timeouts can be exercised.

Every result made with this backend should carry :func:`backend_info`, which names the backend,
the rule and the data checksums.
"""
from __future__ import annotations

import asyncio
import functools
import hashlib
from dataclasses import dataclass
from itertools import accumulate, chain
from typing import Any, Iterable, Optional, Sequence, Union
from urllib.parse import parse_qsl, urlencode, urlsplit

from masr_graph.benchmarks.data.data_dir import PathLike

from ..errors import ConfigError, DataError, UnknownQueryError
from ..llm import tokens
from ..llm.pool import LLMPool
from ..llm.tokens import estimate_prompt_tokens, estimate_text_tokens
from ..llm.transport import register_transport
from ..llm.types import CallContext, Completion, LLMSpec, Message
from .answers import synthesize_reply
from .outcomes import (
    OUTCOME_SET,
    REPLAY_TASKS,
    OutcomeTable,
    RecordedQuery,
    load_outcome_table,
    normalise_text,
)
from .rules import DEFAULT_RULE, CollaborationRule, RuleCall, get_rule

REPLAY_SCHEME = "replay"
FINGERPRINT_CHARS = 12
"""Characters of a recorded question's normalised text that index it (the shortest recorded
question has 14)."""
DEFAULT_MAX_CONCURRENCY = 64
"""``max_concurrency`` of replay specs: replay is CPU-bound, the limit only matters with latency."""
_URL_PARAMETERS = ("rule", "latency_s", "data_dir")
_HINT_CACHE_SIZE = 100_000


@dataclass(frozen=True)
class ReplayConfig:
    """What a ``replay://`` base URL selects.

    Args:
        outcome_set: the recorded outcome set (URL host); only ``"llmrouter"`` exists.
        rule: collaboration rule name (URL parameter ``rule``).
        latency_s: seconds every call waits before answering (URL parameter ``latency_s``).
        data_dir: data directory holding ``outcomes/<outcome_set>`` (URL parameter
            ``data_dir``); ``None``: ``$MASR_DATA_DIR``, then ``../shared/data``.
    """

    outcome_set: str = OUTCOME_SET
    rule: str = DEFAULT_RULE
    latency_s: float = 0.0
    data_dir: Optional[str] = None

    def __post_init__(self) -> None:
        if self.outcome_set != OUTCOME_SET:
            raise ConfigError(
                f"unknown replay outcome set {self.outcome_set!r}; available: {OUTCOME_SET!r} "
                f"(base_url replay://{OUTCOME_SET})"
            )
        if not (isinstance(self.latency_s, (int, float)) and 0.0 <= self.latency_s < float("inf")):
            raise ConfigError(
                f"replay latency_s must be a finite number >= 0 (got {self.latency_s!r})"
            )
        get_rule(self.rule)

    @classmethod
    def from_url(cls, base_url: str) -> "ReplayConfig":
        """Parse ``replay://<outcome set>[?rule=...&latency_s=...&data_dir=...]``.

        Raises:
            ConfigError: another scheme, an unknown outcome set, rule or parameter, or a bad
                latency (the message names the allowed values).
        """
        parts = urlsplit(base_url)
        if parts.scheme.lower() != REPLAY_SCHEME:
            raise ConfigError(f"not a replay base_url: {base_url!r} (expected replay://{OUTCOME_SET})")
        if parts.path.strip("/"):
            raise ConfigError(f"replay base_url {base_url!r} must not have a path "
                              f"(expected replay://{OUTCOME_SET}[?parameters])")
        parameters = dict(parse_qsl(parts.query, keep_blank_values=True))
        unknown = sorted(set(parameters) - set(_URL_PARAMETERS))
        if unknown:
            raise ConfigError(f"replay base_url {base_url!r}: unknown parameter(s) {unknown}; "
                              f"allowed: {list(_URL_PARAMETERS)}")
        try:
            latency_s = float(parameters.get("latency_s", 0.0))
        except ValueError:
            raise ConfigError(f"replay base_url {base_url!r}: latency_s must be a number of "
                              f"seconds (got {parameters['latency_s']!r})") from None
        return cls(
            outcome_set=parts.netloc,
            rule=parameters.get("rule", DEFAULT_RULE),
            latency_s=latency_s,
            data_dir=parameters.get("data_dir") or None,
        )

    def to_url(self) -> str:
        """The canonical base URL (the rule always written out, other parameters when set)."""
        parameters: dict[str, Any] = {"rule": self.rule}
        if self.latency_s:
            parameters["latency_s"] = self.latency_s
        if self.data_dir is not None:
            parameters["data_dir"] = self.data_dir
        return f"{REPLAY_SCHEME}://{self.outcome_set}?{urlencode(parameters)}"


class QueryMatcher:
    """Finds which recorded question a prompt is about (see the module docstring, step 1).

    Args:
        queries: the recorded queries to look for.
    """

    def __init__(self, queries: Sequence[RecordedQuery]):
        self._index: dict[str, list[tuple[str, RecordedQuery]]] = {}
        self._by_text: dict[str, RecordedQuery] = {}
        for query in queries:
            text = normalise_text(query.question)
            if len(text) < FINGERPRINT_CHARS:
                raise DataError(f"recorded question {text!r} of {query.id} is shorter than "
                                  f"{FINGERPRINT_CHARS} characters and cannot be indexed")
            self._by_text[text] = query
            self._index.setdefault(text[:FINGERPRINT_CHARS], []).append((text, query))
        for bucket in self._index.values():
            bucket.sort(key=lambda entry: -len(entry[0]))
        self._hints: dict[str, Optional[tuple[str, RecordedQuery]]] = {}
        self.size = len(self._by_text)

    def find(self, prompt: str, hint: str = "") -> RecordedQuery:
        """The recorded query whose question occurs in ``prompt`` (the longest if several do).

        Args:
            prompt: the full prompt text.
            hint: text that probably contains the question (the bare query); tried first.

        Raises:
            UnknownQueryError: no recorded question occurs in ``prompt``.
        """
        text = normalise_text(prompt)
        if hint:
            hinted = self._hinted(hint)
            if hinted is not None and hinted[0] in text:
                return hinted[1]
        found = self._scan(text, self._word_starts(text)) or self._scan(text, range(len(text)))
        if found is None:
            raise UnknownQueryError(
                f"no recorded query occurs in this prompt ({len(prompt)} characters, starting "
                f"{prompt[:120]!r}); the replay backend answers only the {self.size} recorded "
                f"queries of {', '.join(REPLAY_TASKS)} (masr_graph.replay.ReplayBenchmark)"
            )
        return found[1]

    def _hinted(self, hint: str) -> Optional[tuple[str, RecordedQuery]]:
        if hint not in self._hints:
            if len(self._hints) >= _HINT_CACHE_SIZE:
                self._hints.clear()
            text = normalise_text(hint)
            exact = self._by_text.get(text)
            found = (text, exact) if exact else self._scan(text, self._word_starts(text))
            self._hints[hint] = found
        return self._hints[hint]

    @staticmethod
    def _word_starts(text: str) -> Iterable[int]:
        return chain((0,), accumulate(len(word) + 1 for word in text.split(" ")))

    def _scan(self, text: str, positions: Iterable[int]) -> Optional[tuple[str, RecordedQuery]]:
        best: Optional[tuple[str, RecordedQuery]] = None
        lookup = self._index.get
        for position in positions:
            bucket = lookup(text[position : position + FINGERPRINT_CHARS])
            if not bucket:
                continue
            for question, query in bucket:  # longest first
                if best is not None and len(question) <= len(best[0]):
                    break
                if text.startswith(question, position):
                    best = (question, query)
                    break
        return best


def recorded_outcome(
    query: RecordedQuery, llm: str, *, sample_index: int = 0, seed: Optional[int] = None
) -> bool:
    """Whether ``llm`` solves ``query`` in this call: its recorded 0/1 score, or for a fractional
    score ``p`` a Bernoulli(``p``) draw that is a pure function of (``llm``, ``query.id``,
    ``sample_index``, ``seed``; ``None`` counts as 0).

    Raises:
        ConfigError: ``llm`` has no recorded score for the query.
    """
    try:
        score = query.scores[llm]
    except KeyError:
        raise ConfigError(f"LLM {llm!r} has no recorded score; recorded: "
                          f"{', '.join(query.scores)}") from None
    if score >= 1.0 or score <= 0.0:
        return score >= 1.0
    key = f"{llm}\x1f{query.id}\x1f{sample_index}\x1f{seed or 0}".encode()
    uniform = int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2.0**64
    return uniform < score


@functools.lru_cache(maxsize=4)
def _matcher(table: OutcomeTable) -> QueryMatcher:
    return QueryMatcher(table.queries)


def _cut_to_max_tokens(text: str, max_tokens: Optional[int]) -> tuple[str, str]:
    """``text`` cut to ``max_tokens`` by the token rule, and the finish reason."""
    if max_tokens is None or estimate_text_tokens(text) <= max_tokens:
        return text, "stop"
    budget = max_tokens * tokens.ESTIMATE_BYTES_PER_TOKEN
    return text.encode("utf-8")[:budget].decode("utf-8", "ignore"), "length"


@dataclass(frozen=True)
class _Member:
    llm: str  # recorded name
    config: ReplayConfig
    rule: CollaborationRule
    table: OutcomeTable


class ReplayTransport:
    """Transport for ``replay://`` LLMs (see the module docstring).

    Args:
        specs: the pool's replay LLMs. Each ``model`` must be a recorded LLM, by provider id
            (``"qwen/qwen2.5-7b-instruct"``) or recorded name (``"qwen2.5-7b-instruct"``).

    Raises:
        ConfigError: a spec's base URL or model is not a replay one (checked here, before any
            call).
        DataError: the outcome data is missing or malformed.
    """

    def __init__(self, specs: list[LLMSpec]):
        self._members: dict[str, _Member] = {}
        for spec in specs:
            config = ReplayConfig.from_url(spec.base_url)
            table = load_outcome_table(config.data_dir)
            by_model = {llm.model: llm.name for llm in table.llms}
            llm = by_model.get(spec.model, spec.model if spec.model in table.llm_names else None)
            if llm is None:
                raise ConfigError(
                    f"replay LLM {spec.name!r}: model {spec.model!r} has no recorded outcomes; "
                    f"recorded models: {', '.join(by_model)}"
                )
            self._members[spec.name] = _Member(llm, config, get_rule(config.rule), table)

    async def complete(
        self,
        spec: LLMSpec,
        messages: Sequence[Message],
        params: dict[str, Any],
        context: CallContext,
    ) -> Completion:
        """Replay ``spec``'s answer to the recorded query found in ``messages``.

        Raises:
            UnknownQueryError: the prompt holds no recorded query.
            ConfigError: ``spec`` was not given to this transport, or the context's call kind is
                unknown to the rule.
        """
        member = self._members.get(spec.name)
        if member is None:
            raise ConfigError(f"LLM {spec.name!r} is not served by this replay transport; it "
                              f"serves {sorted(self._members)}")
        prompt = "\n".join(message["content"] for message in messages)
        query = _matcher(member.table).find(prompt, hint=context.query)
        correct = recorded_outcome(
            query, member.llm, sample_index=context.sample_index, seed=params.get("seed")
        )
        text = member.rule.reply(RuleCall(
            llm=member.llm,
            query=query,
            context=context,
            own_correct=correct,
            write_reply=functools.partial(synthesize_reply, query.example, member.llm),
        ))
        text, finish_reason = _cut_to_max_tokens(text, params.get("max_tokens"))
        if member.config.latency_s:
            await asyncio.sleep(member.config.latency_s)
        return Completion(
            text=text,
            prompt_tokens=estimate_prompt_tokens(messages),
            completion_tokens=estimate_text_tokens(text),
            finish_reason=finish_reason,
        )

    async def aclose(self) -> None:
        """Nothing to release (no connections or files stay open)."""


def replay_specs(
    data_dir: Optional[PathLike] = None,
    *,
    rule: str = DEFAULT_RULE,
    latency_s: float = 0.0,
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    timeout_s: float = 60.0,
) -> list[LLMSpec]:
    """The 9 recorded LLMs as pool members: recorded name, provider model id, recorded prices ($
    per 1M tokens), ``default_llm.json`` description, ``base_url`` ``replay://llmrouter?rule=...``
    and no API key.

    Raises:
        ConfigError: unknown rule or bad latency.
        DataError: the outcome data is missing or malformed.
    """
    config = ReplayConfig(rule=rule, latency_s=latency_s,
                          data_dir=None if data_dir is None else str(data_dir))
    table = load_outcome_table(config.data_dir)
    return [
        LLMSpec(
            name=llm.name,
            model=llm.model,
            base_url=config.to_url(),
            price_in=llm.price_in,
            price_out=llm.price_out,
            description=llm.description,
            max_concurrency=max_concurrency,
            timeout_s=timeout_s,
            notional="replay pool: recorded list prices, nothing was paid",
        )
        for llm in table.llms
    ]


def replay_pool(
    data_dir: Optional[PathLike] = None,
    *,
    rule: str = DEFAULT_RULE,
    latency_s: float = 0.0,
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    **pool_kw: Any,
) -> LLMPool:
    """An :class:`~masr_graph.llm.pool.LLMPool` of :func:`replay_specs`; ``pool_kw`` go to the
    pool (``cache``, ``budget``, ``max_attempts``, ``run_id``...)."""
    specs = replay_specs(data_dir, rule=rule, latency_s=latency_s, max_concurrency=max_concurrency)
    return LLMPool(specs, **pool_kw)


TOKEN_RULE = (
    f"prompt tokens: per message ceil(UTF-8 bytes / {tokens.ESTIMATE_BYTES_PER_TOKEN}) + "
    f"{tokens.ESTIMATE_TOKENS_PER_MESSAGE}, plus {tokens.ESTIMATE_REPLY_PRIMING_TOKENS} per "
    f"request; completion tokens: ceil(UTF-8 bytes / {tokens.ESTIMATE_BYTES_PER_TOKEN}) of the "
    "reply, which is cut at max_tokens (masr_graph.llm.tokens)"
)


def backend_info(source: Union[str, LLMPool, Iterable[LLMSpec], None] = None) -> dict[str, Any]:
    """What results made with the replay backend must state: backend, collaboration rule (name
    and exact description), latency, token rule, what the outcome table holds, and the sha256 of
    every data file it was built from.

    Args:
        source: a pool or its specs (their replay members are described), a ``replay://`` base
            URL, or ``None`` for the default configuration.

    Raises:
        ConfigError: ``source`` has no replay LLM, or its replay LLMs use different
            configurations (describe them one at a time).
    """
    llms: list[str] = []
    if source is None or isinstance(source, str):
        configs = {ReplayConfig() if source is None else ReplayConfig.from_url(source)}
    else:
        specs = list(source.specs.values()) if isinstance(source, LLMPool) else list(source)
        replay = [s for s in specs if urlsplit(s.base_url).scheme.lower() == REPLAY_SCHEME]
        if not replay:
            raise ConfigError(f"no replay LLM among {[s.name for s in specs]}; nothing to describe")
        configs = {ReplayConfig.from_url(s.base_url) for s in replay}
        llms = [s.name for s in replay]
    if len(configs) > 1:
        raise ConfigError(f"the replay LLMs use {len(configs)} configurations "
                          f"({sorted(c.to_url() for c in configs)}); describe them one at a time")
    config = configs.pop()
    table = load_outcome_table(config.data_dir)
    rule = get_rule(config.rule)
    return {
        "backend": f"{REPLAY_SCHEME}:{config.outcome_set}",
        "base_url": config.to_url(),
        "collaboration_rule": rule.name,
        "collaboration_rule_description": rule.description,
        "latency_s": config.latency_s,
        "token_rule": TOKEN_RULE,
        "llms": llms or list(table.llm_names),
        "outcomes": table.describe(),
        "data_dir": str(table.data_dir),
        "data_checksums": dict(table.data_checksums),
    }


register_transport(REPLAY_SCHEME, ReplayTransport)

"""The replay backend: an offline LLM pool whose members are real LLMs replaying what they were
recorded doing (:mod:`masr_graph.replay.worlds`): the ZeroEval world serves their real reply text,
the LLMRouter world replies written from their recorded outcomes.

It is a transport of the LLM layer (scheme ``replay``), so everything the real layer does —
budget reservations and caps, the reply cache, retries, the ledger — applies unchanged. Pool files
select it with::

    base_url: replay://zeroeval?rule=calibrated       # or replay://llmrouter; rule, latency_s
                                                      # and data_dir are optional
    model: gpt-4o-mini-2024-07-18                     # a recorded LLM of that world

For one chat call the transport:

1. finds the recorded query inside the prompt (every message's text): texts are compared with
   whitespace collapsed, the recorded questions are indexed by their first
   :data:`FINGERPRINT_CHARS` characters, and the prompt's word starts are looked up in that index
   (every position when no word start matches); the longest recorded question that occurs wins.
   ``CallContext.query`` is only a hint that is tried first and accepted only if its recorded
   question occurs in the prompt. No recorded question in the prompt: :class:`UnknownQueryError`;
2. takes what this LLM answers to it alone: its recorded reply (ZeroEval), or a reply written from
   its recorded outcome (LLMRouter; a fractional score is a Bernoulli draw seeded by the LLM, the
   query, ``CallContext.sample_index`` and the call's ``seed``);
3. asks the collaboration rule (:mod:`masr_graph.replay.rules`, default ``calibrated``) for the
   reply, given what the caller's context says the LLM read;
4. counts usage with a real tokenizer (:mod:`masr_graph.replay.tokens`): the prompt as sent, the
   reply as returned; a reply longer than ``max_tokens`` is cut to it and ends with
   ``finish_reason="length"``, as a real API would. Cost is the pool's: tokens times the spec's
   recorded prices (:func:`replay_specs`); no money is paid, so these costs are notional;
5. waits the configured ``latency_s`` (default 0), so concurrency and timeouts can be exercised.

Every result made with this backend should carry :func:`backend_info`, which names the world,
the rule and its calibration table, the token rule and the data checksums.
"""
from __future__ import annotations

import asyncio
import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from itertools import accumulate, chain
from typing import Any, Iterable, Optional, Sequence, Union
from urllib.parse import parse_qsl, urlencode, urlsplit

from masr_graph.benchmarks.data.data_dir import PathLike, files_sha256

from ..errors import ConfigError, DataError, UnknownQueryError
from ..llm.pool import LLMPool
from ..llm.transport import register_transport
from ..llm.types import CallContext, Completion, LLMSpec, Message
from . import tokens
from .outcomes import normalise_text
from .pools import PoolSpec, resolve_pool
from .rules import DEFAULT_RULE, CollaborationRule, RuleCall, get_rule
from .worlds import WORLDS, RecordedItem, World, load_world

REPLAY_SCHEME = "replay"
NOTIONAL = "replay pool: recorded list prices, nothing was paid"
"""Why a replay LLM's price is not money (``LLMSpec.notional``)."""
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
        outcome_set: the recorded world (URL host): ``"zeroeval"`` or ``"llmrouter"``.
        rule: collaboration rule name (URL parameter ``rule``).
        latency_s: seconds every call waits before answering (URL parameter ``latency_s``).
        data_dir: data directory holding ``outcomes/<outcome_set>`` (URL parameter
            ``data_dir``); ``None``: ``$MASR_DATA_DIR``, then ``../shared/data``.
    """

    outcome_set: str = WORLDS[0]
    rule: str = DEFAULT_RULE
    latency_s: float = 0.0
    data_dir: Optional[str] = None

    def __post_init__(self) -> None:
        if self.outcome_set not in WORLDS:
            raise ConfigError(
                f"unknown replay world {self.outcome_set!r}; available: {list(WORLDS)} "
                f"(base_url replay://{WORLDS[0]})"
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
            raise ConfigError(f"not a replay base_url: {base_url!r} (expected replay://<world>, "
                              f"a world of {list(WORLDS)})")
        if parts.path.strip("/"):
            raise ConfigError(f"replay base_url {base_url!r} must not have a path "
                              f"(expected replay://<world>[?parameters])")
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

    def __init__(self, queries: Sequence[RecordedItem]):
        self._index: dict[str, list[tuple[str, RecordedItem]]] = {}
        self._by_text: dict[str, RecordedItem] = {}
        for query in queries:
            text = normalise_text(query.question)
            if len(text) < FINGERPRINT_CHARS:
                raise DataError(f"recorded question {text!r} of {query.id} is shorter than "
                                  f"{FINGERPRINT_CHARS} characters and cannot be indexed")
            self._by_text[text] = query
            self._index.setdefault(text[:FINGERPRINT_CHARS], []).append((text, query))
        for bucket in self._index.values():
            bucket.sort(key=lambda entry: -len(entry[0]))
        self._hints: dict[str, Optional[tuple[str, RecordedItem]]] = {}
        self.size = len(self._by_text)

    def find(self, prompt: str, hint: str = "") -> RecordedItem:
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
                f"{prompt[:120]!r}); this replay world answers only its {self.size} recorded "
                f"queries (masr_graph.replay.load_world(...).examples(task))"
            )
        return found[1]

    def _hinted(self, hint: str) -> Optional[tuple[str, RecordedItem]]:
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

    def _scan(self, text: str, positions: Iterable[int]) -> Optional[tuple[str, RecordedItem]]:
        best: Optional[tuple[str, RecordedItem]] = None
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


@functools.lru_cache(maxsize=4)
def _matcher(world: World) -> QueryMatcher:
    return QueryMatcher(world.queries())


@dataclass(frozen=True)
class _Member:
    llm: str  # recorded name
    config: ReplayConfig
    rule: CollaborationRule
    world: World


class ReplayTransport:
    """Transport for ``replay://`` LLMs (see the module docstring).

    Args:
        specs: the pool's replay LLMs. Each ``model`` must be a recorded LLM of its world, by
            provider id or recorded name.

    Raises:
        ConfigError: a spec's base URL or model is not a replay one (checked here, before any
            call).
        DataError: the recorded data is missing or malformed.
    """

    def __init__(self, specs: list[LLMSpec]):
        self._members: dict[str, _Member] = {}
        for spec in specs:
            config = ReplayConfig.from_url(spec.base_url)
            world = load_world(config.outcome_set, config.data_dir)
            recorded = world.llms()
            by_model = {world.llm_info(name).model: name for name in recorded}
            llm = by_model.get(spec.model, spec.model if spec.model in recorded else None)
            if llm is None:
                raise ConfigError(
                    f"replay LLM {spec.name!r}: model {spec.model!r} has no recordings in the "
                    f"{world.name} world; recorded: {', '.join(recorded)}"
                )
            self._members[spec.name] = _Member(llm, config, get_rule(config.rule), world)

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
            ConfigError: ``spec`` was not given to this transport, the LLM was not recorded on
                the query's task, or the context's call kind is unknown to the rule.
        """
        member = self._members.get(spec.name)
        if member is None:
            raise ConfigError(f"LLM {spec.name!r} is not served by this replay transport; it "
                              f"serves {sorted(self._members)}")
        prompt = "\n".join(message["content"] for message in messages)
        item = _matcher(member.world).find(prompt, hint=context.query)
        seed = params.get("seed")
        own = member.world.own_reply(member.llm, item, sample_index=context.sample_index,
                                     seed=seed)
        digest = hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]
        text = member.rule.reply(RuleCall(
            llm=member.llm, example=item.example, context=context, own_reply=own,
            draw_key=f"{seed or 0}\x1f{item.id}\x1f{member.llm}\x1f{digest}"))
        text, finish_reason, completion_tokens = tokens.cut_to_max_tokens(
            member.llm, text, params.get("max_tokens"))
        if member.config.latency_s:
            await asyncio.sleep(member.config.latency_s)
        return Completion(
            text=text,
            prompt_tokens=tokens.count_prompt(member.llm, messages),
            completion_tokens=completion_tokens,
            finish_reason=finish_reason,
        )

    async def aclose(self) -> None:
        """Nothing to release (no connections or files stay open)."""


def replay_specs(
    world: str = WORLDS[0],
    pool: PoolSpec = None,
    *,
    task: Optional[str] = None,
    data_dir: Optional[PathLike] = None,
    rule: str = DEFAULT_RULE,
    latency_s: float = 0.0,
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    timeout_s: float = 60.0,
) -> list[LLMSpec]:
    """Recorded LLMs of ``world`` as pool members: recorded name, model id, recorded prices ($
    per 1M tokens, notional: nothing is paid), the recorded description, ``base_url``
    ``replay://<world>?rule=...`` and no API key.

    Args:
        world: ``"zeroeval"`` or ``"llmrouter"``.
        pool: a named pool, a comma-separated list or a list of recorded names
            (:mod:`masr_graph.replay.pools`); ``None``: every LLM recorded on ``task``.
        task: the task the pool serves (ZeroEval's named pools and membership depend on it).

    Raises:
        ConfigError: unknown world, pool, LLM, rule or bad latency.
        DataError: the recorded data is missing or malformed.
    """
    config = ReplayConfig(outcome_set=world, rule=rule, latency_s=latency_s,
                          data_dir=None if data_dir is None else str(data_dir))
    recorded = load_world(world, config.data_dir)
    names = resolve_pool(world, pool, recorded.llms(task), task)
    specs = []
    for name in names:
        info = recorded.llm_info(name)
        specs.append(LLMSpec(
            name=name, model=info.model, base_url=config.to_url(), price_in=info.price_in,
            price_out=info.price_out, description=info.description,
            max_concurrency=max_concurrency, timeout_s=timeout_s, notional=NOTIONAL))
    return specs


def replay_pool(
    world: str = WORLDS[0],
    pool: PoolSpec = None,
    *,
    task: Optional[str] = None,
    data_dir: Optional[PathLike] = None,
    rule: str = DEFAULT_RULE,
    latency_s: float = 0.0,
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    **pool_kw: Any,
) -> LLMPool:
    """An :class:`~masr_graph.llm.pool.LLMPool` of :func:`replay_specs`; ``pool_kw`` go to the
    pool (``cache``, ``budget``, ``max_attempts``, ``run_id``...)."""
    specs = replay_specs(world, pool, task=task, data_dir=data_dir, rule=rule,
                         latency_s=latency_s, max_concurrency=max_concurrency)
    return LLMPool(specs, **pool_kw)


def backend_info(source: Union[str, LLMPool, Iterable[LLMSpec], None] = None) -> dict[str, Any]:
    """What results made with the replay backend must state: world, collaboration rule (name,
    exact description and calibration table), latency, token rule, what the world holds, and
    the sha256 of every data file it was built from.

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
    world = load_world(config.outcome_set, config.data_dir)
    rule = get_rule(config.rule)
    return {
        "backend": f"{REPLAY_SCHEME}:{config.outcome_set}",
        "base_url": config.to_url(),
        "costs": f"notional ({NOTIONAL}): recorded list prices x counted tokens",
        "collaboration_rule": rule.name,
        "collaboration_rule_description": rule.description,
        "latency_s": config.latency_s,
        "token_rule": tokens.TOKEN_RULE,
        "llms": llms or world.llms(),
        "outcomes": world.describe(),
        "data_dir": str(world.data_dir),
        "data_checksums": dict(world.data_checksums),
        "code": replay_code_fingerprint(),
    }


@functools.lru_cache(maxsize=1)
def replay_code_fingerprint() -> str:
    """sha256 of the replay package's code and packaged data (reply synthesis, rules, their
    calibration tables, token counting): outputs stored under one fingerprint are not resumed
    under another (:class:`~masr_graph.benchmarks.experiment.protocol.PairRun`)."""
    package = Path(__file__).parent
    return files_sha256(sorted([*package.glob("*.py"), *package.glob("data/*")]))


register_transport(REPLAY_SCHEME, ReplayTransport)

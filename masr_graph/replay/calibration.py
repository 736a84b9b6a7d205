"""How debating LLM agents change their answers, measured on real debates: the facts the
``calibrated`` collaboration rule replays (:mod:`masr_graph.replay.rules`).

The counts ship with the package (``masr_graph/replay/data/debate_transitions.json``, the same
file as ``collaboration/debate_transitions.json`` of the data directory; counts only, computed from
public debate transcripts). Three sources:

==========================  ========  =====================================================
source                      task      debates
==========================  ========  =====================================================
``du2023-gpt35-gsm8k``      GSM8K     gpt-3.5-turbo-0301, 3 agents x 2 rounds, 100 questions
                                      (Du et al. 2023's scripts)
``slm-debate-gsm8k``        GSM8K     Qwen3-0.6B/14B, Mistral-7B, Llama-3.2-3B,
                                      VibeThinker-1.5B; 3/5/7 agents x 3 rounds, 260 questions
``slm-debate-mmlu``         MMLU      the same small models, 282 questions
==========================  ========  =====================================================

Each source counts, for every agent and pair of consecutive rounds, whether the agent was right
in round r ("right"/"wrong") and whether a *majority* (more than half), a *minority* (at least one,
at most half) or *none* of its peers were right in round r, and how many of those agents were right
in round r+1. :class:`TransitionTable` pools sources per answer type — ``numeric`` (GSM8K, also used
for MATH) and ``multiple_choice`` (MMLU) — into ``P(right next | self, peers)``.

:func:`predict_next_round` turns a table and a round's per-question histogram (how many of a
question's agents were right) into the expected next-round agent accuracy and majority accuracy,
exactly (every agent's transition is an independent draw, as the rule replays it). It is how the
rule is checked against a source it was not fitted on (:func:`holdout_check`).
"""
from __future__ import annotations

import functools
import hashlib
import itertools
import json
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType
from typing import Mapping, Optional, Sequence

from ..errors import ConfigError, DataError

SELF_STATES = ("right", "wrong")
PEER_STATES = ("majority", "minority", "none")
ANSWER_TYPES: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "numeric": ("du2023-gpt35-gsm8k", "slm-debate-gsm8k"),
    "multiple_choice": ("slm-debate-mmlu",),
})
"""The sources pooled for each answer type by default."""
SMALL_MODEL_SOURCES: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "numeric": ("slm-debate-gsm8k",),
    "multiple_choice": ("slm-debate-mmlu",),
})
"""The small-model sources only: what :func:`holdout_check` fits on before predicting GPT-3.5."""
TASK_ANSWER_TYPES: Mapping[str, str] = MappingProxyType(
    {"gsm8k": "numeric", "math": "numeric", "mmlu": "multiple_choice"})
"""Answer type of each built-in task with recorded debate behaviour (code tasks have none)."""
DATA_FILE = "debate_transitions.json"


def peer_state(right: int, total: int) -> str:
    """``"majority"`` when more than half of ``total`` peers are right, ``"none"`` when none is,
    else ``"minority"`` (so one right peer out of two is a minority, as in the sources).

    Raises:
        ConfigError: ``total < 1`` or ``right`` is not in ``0..total``.
    """
    if total < 1 or not 0 <= right <= total:
        raise ConfigError(f"peer counts must satisfy 0 <= right <= total, total >= 1 "
                          f"(got right={right}, total={total})")
    if right == 0:
        return "none"
    return "majority" if 2 * right > total else "minority"


@dataclass(frozen=True)
class DebateSource:
    """One source of :data:`DATA_FILE`: its transition counts and per-round statistics."""

    name: str
    task: str
    note: str
    questions: int
    transitions: Mapping[str, tuple[int, int]]
    """``"self|peers"`` -> ``(agents observed, agents right in the next round)``."""
    per_round: Mapping[int, Mapping[str, int]]
    """round -> ``agent_answers``, ``agent_right``, ``questions``, ``majority_right``."""
    question_transitions: tuple[Mapping[str, int], ...]
    """``agents``, ``right_before``, ``right_after``, ``count`` per (question, round pair)."""

    def agent_accuracy(self, round_index: int) -> float:
        stats = self.per_round[round_index]
        return stats["agent_right"] / stats["agent_answers"]

    def majority_accuracy(self, round_index: int) -> float:
        stats = self.per_round[round_index]
        return stats["majority_right"] / stats["questions"]

    def round0_histogram(self) -> dict[tuple[int, int], int]:
        """``{(agents, right before): count}`` over every (question, round pair) of
        ``question_transitions``; for a source with one round pair, round 0's histogram."""
        histogram: dict[tuple[int, int], int] = {}
        for row in self.question_transitions:
            key = (row["agents"], row["right_before"])
            histogram[key] = histogram.get(key, 0) + row["count"]
        return histogram


@functools.lru_cache(maxsize=1)
def load_sources() -> Mapping[str, DebateSource]:
    """The debate sources shipped with the package, by name.

    Raises:
        DataError: the packaged file is missing or malformed (a broken installation).
    """
    text = resources.files("masr_graph.replay").joinpath("data", DATA_FILE).read_text("utf-8")
    try:
        payload = json.loads(text)
        sources = {}
        for entry in payload["sources"]:
            transitions = {key: (int(seen), int(right))
                           for key, (seen, right) in entry["transitions"].items()}
            expected = {f"{s}|{p}" for s in SELF_STATES for p in PEER_STATES}
            if set(transitions) != expected:
                raise DataError(f"source {entry['name']!r} has transition keys "
                                f"{sorted(transitions)}, expected {sorted(expected)}")
            sources[entry["name"]] = DebateSource(
                name=entry["name"], task=entry["task"], note=entry["note"],
                questions=int(entry["questions"]), transitions=MappingProxyType(transitions),
                per_round=MappingProxyType({int(r): MappingProxyType(dict(v))
                                            for r, v in entry["per_round"].items()}),
                question_transitions=tuple(MappingProxyType(dict(row))
                                           for row in entry["question_transitions"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"the packaged {DATA_FILE} is malformed ({exc}); reinstall masr_graph")
    return MappingProxyType(sources)


def data_checksum() -> str:
    """sha256 of the packaged counts file (results name the table they were calibrated on)."""
    data = resources.files("masr_graph.replay").joinpath("data", DATA_FILE).read_bytes()
    return hashlib.sha256(data).hexdigest()


class TransitionTable:
    """``P(right in the next round | self state, peer state)`` per answer type, pooled over
    sources (counts are added, then divided).

    Args:
        pooled: answer type -> the names of the sources pooled for it (default
            :data:`ANSWER_TYPES`).

    Raises:
        ConfigError: an answer type pools no source or an unknown one.
    """

    def __init__(self, pooled: Optional[Mapping[str, Sequence[str]]] = None):
        sources = load_sources()
        self.pooled = {t: tuple(names) for t, names in (pooled or ANSWER_TYPES).items()}
        counts = {}
        for answer_type, names in self.pooled.items():
            unknown = sorted(set(names) - set(sources))
            if unknown or not names:
                raise ConfigError(f"answer type {answer_type!r} pools unknown sources {unknown}; "
                                  f"sources: {sorted(sources)}")
            counts[answer_type] = MappingProxyType({
                key: (sum(sources[n].transitions[key][0] for n in names),
                      sum(sources[n].transitions[key][1] for n in names))
                for key in sources[names[0]].transitions
            })
        self.counts: Mapping[str, Mapping[str, tuple[int, int]]] = MappingProxyType(counts)

    def p_right(self, answer_type: str, self_right: bool, peers: str) -> float:
        """Probability that an agent is right in its next reply.

        Raises:
            ConfigError: unknown answer type or peer state.
        """
        if answer_type not in self.pooled:
            raise ConfigError(f"no debate counts for answer type {answer_type!r}; known: "
                              f"{sorted(self.pooled)}")
        if peers not in PEER_STATES:
            raise ConfigError(f"peer state must be one of {list(PEER_STATES)} (got {peers!r})")
        seen, right = self.counts[answer_type][f"{'right' if self_right else 'wrong'}|{peers}"]
        return right / seen

    def describe(self) -> str:
        """The table as one line: every probability with its counts, per answer type."""
        parts = []
        for answer_type, names in self.pooled.items():
            cells = ", ".join(
                f"{key} {right}/{seen}={right / seen:.3f}"
                for key, (seen, right) in self.counts[answer_type].items())
            parts.append(f"{answer_type} (pooled {'+'.join(names)}): {cells}")
        return "; ".join(parts)


def predict_next_round(table: TransitionTable, answer_type: str,
                       histogram: Mapping[tuple[int, int], int]) -> tuple[float, float]:
    """Expected next-round agent accuracy and majority accuracy of debates whose current round
    has ``histogram[(agents, right)]`` questions with ``right`` of ``agents`` agents right.

    Every agent moves independently with the table's probability for its own state and its
    peers' state (its peers are the other ``agents - 1``). Majority accuracy counts a question
    as solved when more than half of its agents are right next round (a tie is half a win, as a
    plurality vote with a random tie-break would score it on average).
    """
    total_agents = sum(agents * count for (agents, _), count in histogram.items())
    total_questions = sum(histogram.values())
    if not total_questions:
        raise ConfigError("the histogram holds no question")
    expected_right = 0.0
    expected_majority = 0.0
    for (agents, right), count in histogram.items():
        probabilities = []
        if right:
            probabilities += [table.p_right(answer_type, True,
                                            peer_state(right - 1, agents - 1))] * right
        if agents - right:
            probabilities += [table.p_right(answer_type, False,
                                            peer_state(right, agents - 1))] * (agents - right)
        expected_right += count * sum(probabilities)
        expected_majority += count * _majority_probability(probabilities)
    return expected_right / total_agents, expected_majority / total_questions


def _majority_probability(probabilities: Sequence[float]) -> float:
    """P(more than half of independent Bernoulli(p_i) succeed), ties counted as one half."""
    agents = len(probabilities)
    result = 0.0
    for outcome in itertools.product((False, True), repeat=agents):
        weight = 1.0
        for success, p in zip(outcome, probabilities):
            weight *= p if success else 1.0 - p
        wins = sum(outcome)
        if 2 * wins > agents:
            result += weight
        elif 2 * wins == agents:
            result += 0.5 * weight
    return result


@dataclass(frozen=True)
class HoldoutCheck:
    """Predicted against recorded next-round accuracies of a source the table was not fit on."""

    source: str
    fitted_on: tuple[str, ...]
    predicted_agent: float
    recorded_agent: float
    predicted_majority: float
    recorded_majority: float


def holdout_check(source: str = "du2023-gpt35-gsm8k",
                  fitted_on: Optional[Mapping[str, tuple[str, ...]]] = None) -> HoldoutCheck:
    """Fit on the small-model sources only, then predict ``source``'s round-1 agent and majority
    accuracy from its round-0 per-question histogram; compare with what was recorded.

    The default source (GPT-3.5, 3 agents x 2 rounds) has a single round pair, so its
    ``question_transitions`` histogram is exactly round 0's.
    """
    sources = load_sources()
    held_out = sources[source]
    if len(held_out.per_round) != 2:
        raise ConfigError(f"source {source!r} has {len(held_out.per_round)} rounds; the check "
                          "needs a single round pair so that its histogram is round 0's")
    fitted = dict(fitted_on or SMALL_MODEL_SOURCES)
    if any(source in names for names in fitted.values()):
        raise ConfigError(f"the check must not fit on the source it predicts ({source!r})")
    table = TransitionTable(pooled=fitted)
    answer_type = TASK_ANSWER_TYPES[held_out.task]
    agent, majority = predict_next_round(table, answer_type, held_out.round0_histogram())
    return HoldoutCheck(source, fitted[answer_type], agent, held_out.agent_accuracy(1),
                        majority, held_out.majority_accuracy(1))

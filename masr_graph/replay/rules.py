"""Collaboration rules: what a replayed LLM answers when it sees other agents' work.

Recordings say what each LLM answers *alone* (the ZeroEval world: its real reply text; the
LLMRouter world: whether it solved the query). They cannot say whether an LLM would be talked out
of a right answer, or into one, by its peers, nor what a judge LLM would pick. A collaboration rule
states that missing behaviour explicitly, so every result obtained under replay can name it
(:func:`masr_graph.replay.backend_info`).

A rule gets, for every replayed call, a :class:`RuleCall` — the LLM, the recorded query, the
call's :class:`~masr_graph.llm.types.CallContext` (``kind`` ``"agent"`` or ``"decision"``; what an
agent read: ``peers``, the outputs of other agents it is shown, and ``previous``, its own previous
round's output; for a decision node the agents' outputs in ``candidates``), the reply the LLM
gives alone and how to judge and key any reply — and returns the reply text.

**calibrated** (the default, :class:`CalibratedRule`): agents move the way agents in real debates
did (:mod:`masr_graph.replay.calibration`).

* An agent that reads nobody (the first round, independent agents, a chain's first agent)
  answers what it answers alone.
* An agent that reads only its own previous answer (self-reflection without peers) keeps that
  answer: intrinsic self-correction without external feedback is reported not to improve
  accuracy (Huang et al., "Large Language Models Cannot Self-Correct Reasoning Yet", ICLR 2024),
  so the rule neither rewards nor punishes it.
* An agent that reads peers (debate rounds after the first, chain and full-connected successors,
  a final-refer judge) is right in its reply with the probability the debate table gives for
  (whether its current answer is right — its previous answer, else what it answers alone — and
  whether a majority, a minority or none of the peers it reads are right), pooled per answer type
  (``numeric``: GSM8K and MATH; ``multiple_choice``: MMLU). The draw is a pure function of (the
  run's seed, the query, the LLM, the exact prompt): the same prompt always gets the same reply,
  as a temperature-0 LLM would and as the response cache requires; agents and rounds see
  different prompts, so their draws are independent.
* A right reply is its current answer if that is right, else its own recorded right reply if it
  has one, else the most frequent right reply it read (earliest on ties). A wrong reply is its
  current answer if that is wrong, else the most frequent wrong answer it read. The rule never
  invents an answer nobody gave: an agent that should turn right but has read no right reply and
  has none of its own stays wrong (in the table 3 % of wrong agents whose peers were all wrong
  became right; the replay cannot), and one that should turn wrong but has read no wrong answer
  stays right.
* Code tasks (HumanEval, MBPP) have no recorded debate behaviour: agents keep their own program
  and a judge follows the stubborn rule below.

**stubborn** (:class:`StubbornRule`, kept as an ablation):

* an **agent** answers from its own record, whatever its peers said (in any round, any mode);
* a **decision node** (final refer) keeps its own recorded answer when that answer is among the
  candidates (compared by the benchmark's answer key), else it returns the majority candidate
  (most frequent answer key; ties go to the earliest candidate; candidates without an
  extractable answer do not vote; with no vote at all it keeps its own answer).

So under the stubborn rule, gains over single LLMs come only from aggregation at the decision
node (majority vote or final refer), never from agents persuading each other. Users add rules
with :func:`register_rule` and select them by name (``replay://zeroeval?rule=<name>``).
"""
from __future__ import annotations

import functools
import hashlib
from collections import Counter
from dataclasses import dataclass
from typing import Optional, Protocol, Sequence, runtime_checkable

from masr_graph.benchmarks.tasks.datasets import Example
from masr_graph.benchmarks.tasks.registry import answer_key, evaluate

from ..errors import ConfigError
from ..llm.types import CallContext
from .calibration import TASK_ANSWER_TYPES, TransitionTable, data_checksum, peer_state

CALL_KINDS = ("agent", "decision")
"""``CallContext.kind`` values a rule is asked about."""


@dataclass(frozen=True)
class RuleCall:
    """Everything a rule may base its reply on.

    Args:
        llm: recorded name of the LLM being replayed.
        example: the recorded query's benchmark example (task, id, gold answer).
        context: the call's context (``kind``, ``round``, ``peers``, ``previous``,
            ``candidates``...).
        own_reply: what this LLM answers to the query alone (recorded or written from its
            recorded outcome).
        draw_key: what the call's random draws are seeded by (the run's seed, the query, the LLM
            and a digest of the exact prompt).
    """

    llm: str
    example: Example
    context: CallContext
    own_reply: str
    draw_key: str = ""

    @property
    def task(self) -> str:
        return self.example.task

    @property
    def candidates(self) -> tuple[str, ...]:
        """The agents' outputs a decision node aggregates (empty for agents)."""
        return self.context.candidates

    def is_right(self, reply: str) -> bool:
        """Whether ``reply`` solves the query, by the benchmark's own evaluator."""
        return _verdict(self.example, reply)

    def key(self, reply: str) -> Optional[str]:
        """The answer ``reply`` commits to (the benchmark's voting key)."""
        return _key(self.example.task, reply)

    def uniform(self) -> float:
        """A uniform draw in [0, 1) that is a pure function of :attr:`draw_key`."""
        digest = hashlib.sha256(f"{self.draw_key}\x1fcollaboration".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2.0**64


@functools.lru_cache(maxsize=200_000)
def _verdict(example: Example, reply: str) -> bool:
    return evaluate(example, reply).correct


@functools.lru_cache(maxsize=200_000)
def _key(task: str, reply: str) -> Optional[str]:
    return answer_key(task, reply)


@runtime_checkable
class CollaborationRule(Protocol):
    """Decides what a replayed LLM answers.

    Attributes:
        name: registry name, written into results (``"calibrated"``).
        description: the rule stated exactly, in one paragraph, for results and reports.
    """

    name: str
    description: str

    def reply(self, call: RuleCall) -> str:
        """The reply text for ``call``."""
        ...


def _check_kind(rule: CollaborationRule, call: RuleCall) -> None:
    if call.context.kind not in CALL_KINDS:
        raise ConfigError(
            f"call kind {call.context.kind!r} is not one the {rule.name!r} rule knows; "
            f"expected one of {list(CALL_KINDS)}"
        )


class StubbornRule:
    """Agents answer from their own record; a decision node keeps its own recorded answer if
    some candidate has it, else takes the majority candidate."""

    name = "stubborn"
    description = (
        "stubborn: every agent answers from its own recorded outcome whatever its peers said; a "
        "final-refer decision node keeps its own recorded answer when it is among the candidates "
        "(by the benchmark's answer key), else returns the majority candidate (ties: earliest "
        "candidate; candidates without an answer do not vote; no votes: its own answer). Gains "
        "under replay therefore come only from aggregation at the decision node."
    )

    def reply(self, call: RuleCall) -> str:
        _check_kind(self, call)
        own = call.own_reply
        if call.context.kind == "agent" or not call.candidates:
            return own
        keys = [call.key(candidate) for candidate in call.candidates]
        if call.key(own) in keys:
            return own
        majority = _majority(keys)
        return own if majority is None else call.candidates[keys.index(majority)]


class CalibratedRule:
    """Agents that read peers move as agents in real debates did (see the module docstring).

    Args:
        table: the transition probabilities (default: every source pooled per answer type).
    """

    name = "calibrated"

    def __init__(self, table: Optional[TransitionTable] = None):
        self.table = table or TransitionTable()
        self._stubborn = StubbornRule()

    @property
    def description(self) -> str:
        return (
            "calibrated: an agent that reads nobody answers what it answers alone; one that "
            "reads only its own previous answer keeps it (no self-correction without feedback, "
            "Huang et al. ICLR 2024); one that reads peers (later debate rounds, chain and "
            "full-connected successors, a final-refer judge) is right with P(right next | its "
            "current answer right/wrong, a majority/minority/none of the peers it reads right) "
            "from real debates, drawn per (seed, query, LLM, prompt); a right reply is its "
            "current answer if right, else its own recorded right reply, else the most frequent "
            "right reply it read; a wrong reply is its current answer if wrong, else the most "
            "frequent wrong answer it read; nobody invents an answer nobody gave (then the agent "
            "keeps its current answer). Code tasks have no recorded debate behaviour and follow "
            f"the stubborn rule. Table ({self.table_name}): {self.table.describe()}"
        )

    @property
    def table_name(self) -> str:
        return f"debate_transitions.json sha256 {data_checksum()[:16]}"

    def reply(self, call: RuleCall) -> str:
        _check_kind(self, call)
        answer_type = TASK_ANSWER_TYPES.get(call.task)
        if answer_type is None:  # no recorded debate behaviour for this task (code)
            return self._stubborn.reply(call)
        if call.context.kind == "decision":
            current, read = call.own_reply, call.candidates
        else:
            current = call.context.previous if call.context.previous is not None else call.own_reply
            read = call.context.peers
        if not read:
            return current
        return self.transition(call, answer_type, current, read)

    def transition(self, call: RuleCall, answer_type: str, current: str,
                   read: Sequence[str]) -> str:
        """The reply of an agent whose current answer is ``current`` after reading ``read``."""
        current_right = call.is_right(current)
        verdicts = [call.is_right(reply) for reply in read]
        peers = peer_state(sum(verdicts), len(verdicts))
        if call.uniform() < self.table.p_right(answer_type, current_right, peers):
            if current_right:
                return current
            if call.is_right(call.own_reply):
                return call.own_reply
            rights = [reply for reply, right in zip(read, verdicts) if right]
            return _most_frequent(rights, call) if rights else current
        if not current_right:
            return current
        wrongs = [reply for reply, right in zip(read, verdicts)
                  if not right and call.key(reply) is not None]
        return _most_frequent(wrongs, call) if wrongs else current


def _most_frequent(replies: Sequence[str], call: RuleCall) -> str:
    """The first reply whose answer key is the most frequent among ``replies``."""
    keys = [call.key(reply) for reply in replies]
    majority = _majority(keys)
    return replies[0] if majority is None else replies[keys.index(majority)]


def _majority(keys: list[Optional[str]]) -> Optional[str]:
    """Most frequent non-``None`` key, the earliest on ties; ``None`` if no key."""
    counts = Counter(key for key in keys if key is not None)
    if not counts:
        return None
    # Counter keeps first-insertion order and max() returns the first maximal key.
    return max(counts, key=counts.__getitem__)


_RULES: dict[str, CollaborationRule] = {}


def register_rule(rule: CollaborationRule, *, replace: bool = False) -> None:
    """Make ``rule`` selectable by ``rule.name``.

    Raises:
        ConfigError: ``rule`` lacks ``name``/``description``/``reply``, or the name is taken and
            ``replace`` is false.
    """
    if not isinstance(rule, CollaborationRule) or not isinstance(rule.name, str) or not rule.name:
        raise ConfigError(
            f"a collaboration rule needs a non-empty str 'name', a 'description' and a "
            f"reply(call) method (got {rule!r})"
        )
    current = _RULES.get(rule.name)
    if current is not None and current is not rule and not replace:
        raise ConfigError(f"collaboration rule {rule.name!r} is already registered; pass "
                          "replace=True to swap it out")
    _RULES[rule.name] = rule


def rule_names() -> list[str]:
    """Names of the registered rules, sorted."""
    return sorted(_RULES)


def get_rule(name: str) -> CollaborationRule:
    """The registered rule called ``name``.

    Raises:
        ConfigError: unknown name (the message lists the registered ones).
    """
    try:
        return _RULES[name]
    except KeyError:
        raise ConfigError(
            f"unknown collaboration rule {name!r}; registered: {rule_names()}"
        ) from None


register_rule(StubbornRule())
register_rule(CalibratedRule())
DEFAULT_RULE = CalibratedRule.name

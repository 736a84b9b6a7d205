"""Collaboration rules: what a replayed LLM answers when it sees other agents' work.

Recorded outcomes say whether each LLM solved each query *alone*. They cannot say whether an LLM
would be talked out of a right answer, or into one, by its peers, nor what a judge LLM would pick.
A collaboration rule states that missing behaviour explicitly, so every result obtained under
replay can name it (:func:`masr_graph.replay.backend_info`).

A rule gets, for every replayed call, a :class:`RuleCall` — the LLM, the recorded query, the
call's :class:`~masr_graph.llm.types.CallContext` (``kind`` ``"agent"`` or ``"decision"``, and for
a decision node the agents' outputs in ``candidates``), the reply the LLM's own record gives and a
way to write the other one — and returns the reply text.

Built-in rule (the default), :class:`StubbornRule`, ``"stubborn"``:

* an **agent** answers from its own record, whatever its peers said (in any round, any mode);
* a **decision node** (final refer) keeps its own recorded answer when that answer is among the
  candidates (compared by the benchmark's answer key), else it returns the majority candidate
  (most frequent answer key; ties go to the earliest candidate; candidates without an
  extractable answer do not vote; with no vote at all it keeps its own answer).

So under the stubborn rule, gains over single LLMs come only from aggregation at the decision
node (majority vote or final refer), never from agents persuading each other. Users add rules
with :func:`register_rule` and select them by name (``replay://llmrouter?rule=<name>``).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable, Optional, Protocol, runtime_checkable

from masr_graph.benchmarks.tasks.registry import answer_key

from ..errors import ConfigError
from ..llm.types import CallContext
from .outcomes import RecordedQuery

CALL_KINDS = ("agent", "decision")
"""``CallContext.kind`` values a rule is asked about."""


@dataclass(frozen=True)
class RuleCall:
    """Everything a rule may base its reply on.

    Args:
        llm: recorded name of the LLM being replayed.
        query: the recorded query found in the prompt.
        context: the call's context (``kind``, ``round``, ``candidates``...).
        own_correct: whether this LLM's record says it solves the query (for a fractional score:
            the seeded draw for this call).
        write_reply: ``write_reply(correct)`` is this LLM's reply when it is right (``True``) or
            wrong (``False``) about the query.
    """

    llm: str
    query: RecordedQuery
    context: CallContext
    own_correct: bool
    write_reply: Callable[[bool], str]

    @property
    def own_reply(self) -> str:
        """The reply this LLM's own record gives."""
        return self.write_reply(self.own_correct)

    @property
    def candidates(self) -> tuple[str, ...]:
        """The agents' outputs a decision node aggregates (empty for agents)."""
        return self.context.candidates


@runtime_checkable
class CollaborationRule(Protocol):
    """Decides what a replayed LLM answers.

    Attributes:
        name: registry name, written into results (``"stubborn"``).
        description: the rule stated exactly, in one paragraph, for results and reports.
    """

    name: str
    description: str

    def reply(self, call: RuleCall) -> str:
        """The reply text for ``call``."""
        ...


class StubbornRule:
    """The default rule: agents answer from their own record; a decision node keeps its own
    recorded answer if some candidate has it, else takes the majority candidate."""

    name = "stubborn"
    description = (
        "stubborn: every agent answers from its own recorded outcome whatever its peers said; a "
        "final-refer decision node keeps its own recorded answer when it is among the candidates "
        "(by the benchmark's answer key), else returns the majority candidate (ties: earliest "
        "candidate; candidates without an answer do not vote; no votes: its own answer). Gains "
        "under replay therefore come only from aggregation at the decision node."
    )

    def reply(self, call: RuleCall) -> str:
        if call.context.kind not in CALL_KINDS:
            raise ConfigError(
                f"call kind {call.context.kind!r} is not one the {self.name!r} rule knows; "
                f"expected one of {list(CALL_KINDS)}"
            )
        own = call.own_reply
        if call.context.kind == "agent" or not call.candidates:
            return own
        task = call.query.task
        keys = [answer_key(task, candidate) for candidate in call.candidates]
        if answer_key(task, own) in keys:
            return own
        majority = _majority(keys)
        return own if majority is None else call.candidates[keys.index(majority)]


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


DEFAULT_RULE = StubbornRule.name
register_rule(StubbornRule())

"""The decision node: how the agents' last-round outputs become one final answer.

Two methods (:data:`masr_graph.runtime.topology.DECISION_METHODS`):

- **majority vote** (:func:`majority_vote`): each output is mapped to an answer key by a function
  the benchmark supplies (e.g. the number in ``\\boxed{}``); the most frequent key wins. Ties go to
  the key that occurs first, i.e. whose earliest supporter has the lowest agent index, so the result
  never depends on timing. Outputs whose key is ``None`` (nothing extractable) do not vote; if no
  output has a key, the first output wins. Without a benchmark key function the vote compares whole
  outputs after collapsing whitespace (:func:`normalized_text_key`).
- **final refer** (:func:`final_refer_messages`): an LLM reads the query and every agent's final
  output and writes the final answer in the task's output format. The engine runs it on
  ``plan.decision_llm`` or, when unset, on the first agent's LLM.

With a single candidate either method is the identity (no call is made).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Hashable, Optional, Sequence

from ..llm.types import Message

AnswerKey = Callable[[str], Optional[Hashable]]
"""Maps an agent's output to the answer it commits to (``None``: no answer extractable). Must not
raise on malformed outputs."""


def normalized_text_key(output: str) -> Optional[str]:
    """Fallback vote key: the output with runs of whitespace collapsed (``None`` if blank)."""
    collapsed = " ".join(output.split())
    return collapsed or None


@dataclass(frozen=True)
class Vote:
    """Result of :func:`majority_vote`.

    Args:
        winner: index into the voted outputs of the output chosen as final answer.
        keys: the answer key of each output (``None`` where none was extracted).
        count: how many outputs share the winning key (0 when no output had a key).
    """

    winner: int
    keys: tuple[Optional[Hashable], ...]
    count: int


def majority_vote(outputs: Sequence[str], answer_key: Optional[AnswerKey] = None) -> Vote:
    """Pick the output whose answer key is most frequent.

    Args:
        outputs: the candidates' outputs in agent order (at least one).
        answer_key: key function from the benchmark; ``None`` uses :func:`normalized_text_key`.

    Returns:
        A :class:`Vote`; ties are broken by first occurrence (lowest index), ``None`` keys are
        ignored, and when every key is ``None`` the first output wins.

    Raises:
        ValueError: ``outputs`` is empty.
    """
    if not outputs:
        raise ValueError("majority_vote needs at least one output (got none)")
    key_of = answer_key or normalized_text_key
    keys = tuple(key_of(output) for output in outputs)
    counts: dict[Hashable, int] = {}
    first_index: dict[Hashable, int] = {}
    for index, key in enumerate(keys):
        if key is None:
            continue
        counts[key] = counts.get(key, 0) + 1
        first_index.setdefault(key, index)
    if not counts:
        return Vote(winner=0, keys=keys, count=0)
    # max() keeps the first maximal element and dicts keep insertion (= first occurrence) order.
    best = max(counts, key=counts.__getitem__)
    return Vote(winner=first_index[best], keys=keys, count=counts[best])


FINAL_REFER_SYSTEM = (
    "You are the decision maker of a team of AI agents that worked on a task together. You are "
    "given the task and the final answer of each agent. Judge which reasoning is correct: "
    "agreement between agents is evidence but not proof, and a single careful agent can be right "
    "against the majority. Then give the final answer to the task yourself."
)


def final_refer_messages(
    query: str,
    candidates: Sequence[tuple[int, str, str]],
    output_format: str,
    *,
    mode: str,
) -> list[Message]:
    """Chat messages for the final-refer decision node.

    Args:
        query: the task text.
        candidates: ``(agent index, role name, text the agent's peers saw)`` per successful agent.
        output_format: how the final answer must be written (the task's / role's format).
        mode: the collaboration mode's name, so the judge knows how the answers were produced.

    Returns:
        ``[system, user]`` messages.
    """
    answers = "\n\n".join(f"### Agent {agent} ({role})\n{text}" for agent, role, text in candidates)
    user = (
        f"Task:\n{query}\n\n"
        f"Final answers of the {len(candidates)} agents (collaboration mode: {mode}):\n\n"
        f"{answers}\n\n"
        f"Give the final answer to the task.\n\n{output_format}"
    )
    return [
        {"role": "system", "content": FINAL_REFER_SYSTEM},
        {"role": "user", "content": user},
    ]

"""The two records every benchmark shares: an :class:`Example` to solve and the :class:`Score` of a
reply to it. Loaders produce examples; evaluators turn ``(example, reply)`` into a score."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping, Optional

from masr_graph.errors import ConfigError

TASK_DOMAINS: Mapping[str, str] = MappingProxyType(
    {"gsm8k": "math", "math": "math", "humaneval": "code", "mbpp": "code", "mmlu": "knowledge"}
)
"""Router domain of each built-in task (the role folders under ``roles/`` are named by domain)."""


@dataclass(frozen=True)
class Example:
    """One benchmark item.

    Args:
        id: unique within its task and stable across runs, e.g. ``"gsm8k/test/17"``,
            ``"math/4211"``, ``"HumanEval/0"``, ``"mbpp/11"``, ``"mmlu/test/anatomy/3"``; splits
            store these ids.
        task: ``"gsm8k"``, ``"math"``, ``"humaneval"``, ``"mbpp"`` or ``"mmlu"``.
        query: exactly the text agents are shown.
        answer: gold answer in canonical form (GSM8K: a number string such as ``"1000"`` or
            ``"3.5"``; MATH: the content of the solution's last ``\\boxed{}``; MMLU: a letter;
            code tasks: ``""``, the tests in ``meta`` decide).
        meta: what evaluation and reporting need, e.g. HumanEval ``test``,
            ``entry_point``, ``prompt``, ``canonical_solution``; MBPP ``test_list``,
            ``test_setup_code``, ``code``; MATH ``level``, ``type``, ``solution``; MMLU
            ``subject``, ``choices``. Treat it as read-only.
        domain: router domain (``"math"``, ``"code"``, ``"knowledge"``); taken from
            :data:`TASK_DOMAINS` for the built-in tasks, required for any other task.

    Raises:
        ConfigError: ``domain`` is empty and ``task`` is not a built-in task.
    """

    id: str
    task: str
    query: str
    answer: str
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False)
    domain: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        # A private copy, so a caller mutating its dict cannot change a loaded example.
        object.__setattr__(self, "meta", dict(self.meta))
        if not self.domain:
            if self.task not in TASK_DOMAINS:
                raise ConfigError(
                    f"example {self.id!r} has task {self.task!r}, which has no default domain; "
                    f"pass domain=... (built-in tasks: {sorted(TASK_DOMAINS)})"
                )
            object.__setattr__(self, "domain", TASK_DOMAINS[self.task])


@dataclass(frozen=True)
class Score:
    """Verdict on one reply.

    Args:
        correct: the reply solves the example (code: pass@1, every test passes).
        extracted: what was scored: the answer string pulled out of the reply, or the program
            text for code; ``None`` when nothing could be extracted.
        detail: one line saying why (shown in result tables and traces).
    """

    correct: bool
    extracted: Optional[str]
    detail: str

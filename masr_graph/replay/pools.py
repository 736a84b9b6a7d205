"""Named pools of recorded LLMs, selectable by name from ``run_all.py`` (``--pool``), the CLI and
Python (:func:`masr_graph.replay.replay_specs`), or as any comma-separated list of recorded names.

ZeroEval world (per task, because not every model was recorded on both tasks):

==========  ==========================================================================
pool        members
==========  ==========================================================================
``paper5``  the MasRouter paper's pool in its closest recorded versions:
            gpt-4o-mini-2024-07-18, claude-3-5-haiku-20241022, gemini-1.5-flash,
            Meta-Llama-3.1-70B-Instruct and deepseek-chat (GSM8K) / deepseek-v2.5-0908
            (MATH-L5, where deepseek-chat was not recorded; V2.5 is served under the same
            ``deepseek-chat`` API name)
``mix``     cheap versus frontier: gemini-1.5-flash, gpt-4o-mini-2024-07-18,
            Meta-Llama-3.1-8B-Instruct, gemma-2-9b-it (cheap) and claude-3-5-sonnet-20241022,
            gpt-4o-2024-08-06, o1-mini-2024-09-12, Llama-3.1-405B-Inst@sambanova (frontier)
``all``     every model recorded on the task (43 on GSM8K, 41 on MATH-L5)
==========  ==========================================================================

LLMRouter world: ``all`` (its 9 recorded LLMs, the default).
"""
from __future__ import annotations

from types import MappingProxyType
from typing import Mapping, Optional, Sequence, Union

from ..errors import ConfigError

ALL = "all"
ZEROEVAL_POOLS: Mapping[str, Mapping[str, tuple[str, ...]]] = MappingProxyType({
    "paper5": MappingProxyType({
        "gsm8k": ("gpt-4o-mini-2024-07-18", "claude-3-5-haiku-20241022", "gemini-1.5-flash",
                  "Meta-Llama-3.1-70B-Instruct", "deepseek-chat"),
        "math": ("gpt-4o-mini-2024-07-18", "claude-3-5-haiku-20241022", "gemini-1.5-flash",
                 "Meta-Llama-3.1-70B-Instruct", "deepseek-v2.5-0908"),
    }),
    "mix": MappingProxyType({
        task: ("gemini-1.5-flash", "gpt-4o-mini-2024-07-18", "Meta-Llama-3.1-8B-Instruct",
               "gemma-2-9b-it", "claude-3-5-sonnet-20241022", "gpt-4o-2024-08-06",
               "o1-mini-2024-09-12", "Llama-3.1-405B-Inst@sambanova")
        for task in ("gsm8k", "math")
    }),
})

PoolSpec = Union[str, Sequence[str], None]
"""A pool name (``"paper5"``, ``"all"``...), a comma-separated list of recorded names, a list of
names, or ``None`` for the world's default (``all``)."""


def pool_names(world: str) -> list[str]:
    """The named pools of ``world``."""
    return [ALL, *ZEROEVAL_POOLS] if world == "zeroeval" else [ALL]


def resolve_pool(world: str, pool: PoolSpec, recorded: Sequence[str],
                 task: Optional[str] = None) -> list[str]:
    """The recorded LLM names ``pool`` selects in ``world`` (for ``task``, where membership
    depends on it).

    Args:
        world: ``"llmrouter"`` or ``"zeroeval"``.
        pool: see :data:`PoolSpec`.
        recorded: the names recorded in the world (for ``task``), in their canonical order.
        task: the task; required for ZeroEval's named pools.

    Raises:
        ConfigError: an unknown pool name, a named ZeroEval pool without ``task``, a name that
            is not recorded (the message lists the recorded ones), duplicates, or an empty pool.
    """
    if pool is None or pool == ALL:
        return list(recorded)
    if isinstance(pool, str) and world == "zeroeval" and pool in ZEROEVAL_POOLS:
        if task is None:
            raise ConfigError(f"the ZeroEval pool {pool!r} depends on the task; give the task "
                              f"({', '.join(ZEROEVAL_POOLS[pool])})")
        names = list(ZEROEVAL_POOLS[pool][task])
    elif isinstance(pool, str):
        names = [name.strip() for name in pool.split(",") if name.strip()]
        if len(names) == 1 and names[0] not in recorded:
            raise ConfigError(
                f"unknown pool {pool!r} in the {world} world: not a named pool "
                f"({', '.join(pool_names(world))}) nor a recorded LLM; recorded: "
                f"{', '.join(recorded)}")
    else:
        names = list(pool)
    unknown = [name for name in names if name not in recorded]
    if unknown:
        where = f" for {task}" if task else ""
        raise ConfigError(f"LLM(s) {unknown} have no recordings in the {world} world{where}; "
                          f"recorded: {', '.join(recorded)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"pool {names} names an LLM twice")
    if not names:
        raise ConfigError("a pool needs at least one LLM (got none)")
    return names

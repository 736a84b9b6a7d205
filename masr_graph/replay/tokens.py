"""Token counts of replayed calls with a real BPE tokenizer.

A replayed reply is real or synthesised text and a replayed prompt is exactly what the runtime
sent, so both are counted with a real tokenizer rather than estimated: OpenAI's ``o200k_base``
for the GPT-4o and o1 families, ``cl100k_base`` for every other LLM (from the ``bpe-openai``
package, which ships both tables; the other providers' own tokenizers are not available offline,
and their counts for English text are within a few percent of these). A chat prompt counts its
messages' tokens plus 3 per message and 3 for the reply's priming, as OpenAI's chat format does.

What this does not model: hidden reasoning tokens that o1 models bill but whose text is not in
the recording (``models.csv`` says so per model), and each provider's own chat template.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

from ..llm.types import Message

O200K_FAMILIES = ("gpt-4o", "chatgpt-4o", "o1-", "openai/gpt-4o", "openai/o1")
TOKENS_PER_MESSAGE = 3
REPLY_PRIMING_TOKENS = 3


def encoding_name(model: str) -> str:
    """``"o200k_base"`` for GPT-4o / o1 models, else ``"cl100k_base"``."""
    return "o200k_base" if model.lower().startswith(O200K_FAMILIES) else "cl100k_base"


@functools.lru_cache(maxsize=None)
def _encoding(name: str) -> Any:
    import bpe_openai

    return bpe_openai.get_encoding(name)


def count_text(model: str, text: str) -> int:
    """Tokens of ``text`` for ``model``'s tokenizer."""
    return len(_encoding(encoding_name(model)).encode(text))


def count_prompt(model: str, messages: Sequence[Message]) -> int:
    """Prompt tokens of a chat request (see the module docstring)."""
    encoding = _encoding(encoding_name(model))
    return REPLY_PRIMING_TOKENS + sum(
        TOKENS_PER_MESSAGE + len(encoding.encode(m["role"])) + len(encoding.encode(m["content"]))
        for m in messages)


def cut_to_max_tokens(model: str, text: str, max_tokens: int | None) -> tuple[str, str, int]:
    """``text`` cut to at most ``max_tokens`` tokens (at a token boundary), the finish reason
    (``"length"`` when cut, else ``"stop"``) and its token count."""
    encoding = _encoding(encoding_name(model))
    ids = encoding.encode(text)
    if max_tokens is None or len(ids) <= max_tokens:
        return text, "stop", len(ids)
    return encoding.decode(ids[:max_tokens]), "length", max_tokens


TOKEN_RULE = (
    "prompt and completion tokens counted with a real BPE tokenizer (o200k_base for GPT-4o/o1, "
    f"cl100k_base for the others; {TOKENS_PER_MESSAGE} tokens per message and "
    f"{REPLY_PRIMING_TOKENS} for the reply priming); replies are cut at max_tokens "
    "(masr_graph.replay.tokens)"
)

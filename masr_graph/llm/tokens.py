"""Token counts without a tokenizer: an estimate for when a provider omits ``usage``, and a true
upper bound on prompt tokens for the budget's worst case.

Estimate (used for cost when usage is missing; the record is marked ``usage_estimated``):
``ceil(utf8_bytes / 3)`` per text, plus 4 tokens per message and 3 for the reply priming. Three
bytes per token leans high on purpose — English runs ~4 bytes per token in GPT-style BPE, CJK ~3
bytes per character and about one token — because under-reporting spend is the worse error.

Upper bound (used to reserve budget before a call): every token of a byte-level BPE (GPT, Llama 3,
Qwen) or of a SentencePiece model with byte fallback (Llama 2, Gemma, Mistral) covers at least one
UTF-8 byte, so a text never has more tokens than bytes. Chat templates add role markers per
message (fewer than 8 tokens in the common templates, counted together with the role's bytes) and
some inject a default system prompt (Llama 3.1's dates, Qwen's identity line) — covered by a fixed
64-token allowance per request.
"""

from __future__ import annotations

import math
from typing import Sequence

from .types import Message

ESTIMATE_BYTES_PER_TOKEN = 3
ESTIMATE_TOKENS_PER_MESSAGE = 4
ESTIMATE_REPLY_PRIMING_TOKENS = 3

BOUND_TOKENS_PER_MESSAGE = 8
BOUND_TOKENS_PER_REQUEST = 64


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))


def estimate_text_tokens(text: str) -> int:
    """Estimated token count of ``text`` (see the module docstring for the rule)."""
    return math.ceil(_utf8_len(text) / ESTIMATE_BYTES_PER_TOKEN)


def estimate_prompt_tokens(messages: Sequence[Message]) -> int:
    """Estimated prompt tokens of a chat request (see the module docstring for the rule)."""
    return ESTIMATE_REPLY_PRIMING_TOKENS + sum(
        estimate_text_tokens(m["content"]) + ESTIMATE_TOKENS_PER_MESSAGE for m in messages
    )


def prompt_tokens_upper_bound(messages: Sequence[Message]) -> int:
    """An upper bound on the prompt tokens of a chat request under any byte-level or byte-fallback
    tokenizer and common chat template (see the module docstring)."""
    return BOUND_TOKENS_PER_REQUEST + sum(
        _utf8_len(m["content"]) + _utf8_len(m["role"]) + BOUND_TOKENS_PER_MESSAGE for m in messages
    )

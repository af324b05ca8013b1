"""What the stand-in knows about a loaded model's limits, and how LM Studio reports crossing them.

Kept apart from ``fake_lmstudio`` (which renders answers) because these are the rules the weak-model
suite measures the bridge against: a loaded context length that is the real budget, an overflow
error in LM Studio's words, and servers that refuse the ``tools`` field.

Token estimate: about four bytes a token over the UTF-8 JSON text of the request's ``messages``,
``input``, ``instructions``, ``prompt`` and ``tools``, plus, for ``/v1/responses`` with a
``previous_response_id``, the stored conversation it continues (LM Studio feeds that to the model
too). A real tokenizer counts differently (English prose is nearer 4 characters a token, JSON and
code fewer); what matters here is that a request grows with what the bridge puts in it, and that the
same request always gets the same count.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence

__all__ = [
    "BYTES_PER_TOKEN",
    "TOOLS_REFUSED_MESSAGE",
    "estimate_tokens",
    "overflow_message",
]

BYTES_PER_TOKEN = 4
_COUNTED_FIELDS = ("messages", "input", "instructions", "prompt", "tools")

TOOLS_REFUSED_MESSAGE = "tools param requires --jinja flag"
"""What llama.cpp's server says to a `tools` field it cannot use (its chat template has no tool support)."""


def estimate_tokens(body: Mapping[str, object], history: Sequence[Mapping[str, object]] = ()) -> int:
    """The stand-in's token count for a generation request: about 4 bytes a token (see the module doc)."""
    parts: list[object] = [body[key] for key in _COUNTED_FIELDS if body.get(key) is not None]
    if history:
        parts.append(list(history))
    size = sum(len(json.dumps(part, ensure_ascii=False).encode()) for part in parts)
    return math.ceil(size / BYTES_PER_TOKEN)


def overflow_message(prompt_tokens: int, context_length: int) -> str:
    """LM Studio's context-overflow error text (its 400 body's string ``error``), word for word.

    LM Studio's first number is the tokens it tries to keep under its overflow policy; the stand-in
    puts the request's estimated size there, which is what a reader needs to see.
    """
    return (
        f"Trying to keep the first {prompt_tokens} tokens when context the overflows. However, the model is "
        f"loaded with context length of only {context_length} tokens, which is not enough. Try to load the "
        "model with a larger context length, or provide a shorter input"
    )

"""The model's context as a budget: what it holds, how much a round may add, how to make things fit.

The budget is the context the model is *loaded* with, which is the real limit (often far below its
maximum): LM Studio 0.4 reports it per loaded instance, 0.3 as `loaded_context_length`. For a server
that reports nothing, MODEL_CONTEXT_TOKENS, else `DEFAULT_CONTEXT_TOKENS` (small on purpose: a guess
too big overflows, one too small only trims more).

Tokens are estimated from characters. LM Studio offers no tokenizer endpoint, and no tokenizer a
package can bundle matches the local models (Qwen, Llama, Gemma each have their own), so the
estimate starts cautious (`INITIAL_CHARS_PER_TOKEN`) and is calibrated from every turn's reported
`input_tokens` against the characters the model had in its context.

Out of the budget come: the per-round output reservation (the default `max_tokens` of a round), the
share the tool schemas may take, and the room left for tool outputs; `shape` cuts an output to its
room, keeping its head and tail and saying what was cut and how to ask for the rest.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from llm.models import ResolvedModel

DEFAULT_CONTEXT_TOKENS = 4096
INITIAL_CHARS_PER_TOKEN = 3.0
_CHARS_PER_TOKEN_RANGE = (1.5, 6.0)
_SAFETY = 0.9  # estimates are estimates: plan for 90% of the context
MIN_OUTPUT_CHARS = 400
TOOLS_SHARE = 0.3
"""The share of the context the offered tools' schemas may take before the tool set is narrowed."""

_PAGING_WORDS = frozenset({"offset", "start", "line", "lines", "head", "tail", "page", "limit", "cursor", "range"})


@dataclass
class ContextBudget:
    """One run's context budget (see the module docstring)."""

    context_tokens: int
    source: str  # "loaded", "MODEL_CONTEXT_TOKENS", "default"
    output_tokens: int
    chars_per_token: float = INITIAL_CHARS_PER_TOKEN

    @classmethod
    def for_model(cls, model: ResolvedModel, *, configured: int | None, max_tokens: int | None) -> ContextBudget:
        """The budget for `model`; `max_tokens` as asked for the run (None: derived from the context)."""
        info = model.info
        if info is not None and info.loaded_context_length:
            context, source = info.loaded_context_length, "loaded"
        elif configured:
            context, source = configured, "MODEL_CONTEXT_TOKENS"
        else:
            context, source = DEFAULT_CONTEXT_TOKENS, "default"
            if info is not None and info.max_context_length:
                context = min(context, info.max_context_length)
        output = max_tokens if max_tokens is not None else default_round_tokens(context)
        return cls(context_tokens=context, source=source, output_tokens=min(output, context // 2))

    @property
    def input_chars(self) -> int:
        """How many characters the model's input may hold (the context less the output reservation)."""
        return int((self.context_tokens * _SAFETY - self.output_tokens) * self.chars_per_token)

    @property
    def tools_chars(self) -> int:
        """How many characters of tool schemas the run may offer."""
        return int(self.context_tokens * TOOLS_SHARE * self.chars_per_token)

    def room_chars(self, used_chars: int) -> int:
        """Characters still free for new tool outputs, with `used_chars` already in the context."""
        return max(0, self.input_chars - used_chars)

    def calibrate(self, context_chars: int, input_tokens: int | None) -> None:
        """Learn characters per token from a turn: the server counted `input_tokens` for `context_chars`."""
        if not input_tokens or context_chars <= 0:
            return
        observed = context_chars / input_tokens
        low, high = _CHARS_PER_TOKEN_RANGE
        # Lean to the lower (more tokens) of old and new: over-estimating only trims a little more.
        blended = min(observed, (self.chars_per_token + observed) / 2)
        self.chars_per_token = max(low, min(high, blended))

    def describe(self) -> dict[str, object]:
        return {
            "context_tokens": self.context_tokens,
            "source": self.source,
            "round_max_tokens": self.output_tokens,
            "chars_per_token": round(self.chars_per_token, 2),
        }


def default_round_tokens(context_tokens: int) -> int:
    """The default `max_tokens` of one round: a quarter of the context, within 256..2048.

    Unbounded, a small model that rambles generates until its context is full (minutes on a CPU).
    """
    return max(256, min(2048, context_tokens // 4))


def shape(output: str, room_chars: int, *, tool: str, parameters: Mapping[str, object]) -> tuple[str, bool]:
    """`output` cut to `room_chars` (at least `MIN_OUTPUT_CHARS`): head and tail kept, the cut said.

    Returns the text and whether anything was cut.
    """
    limit = max(room_chars, MIN_OUTPUT_CHARS)
    if len(output) <= limit:
        return output, False
    hint = _paging_hint(tool, parameters)
    marker = (
        "\n[... {cut} of {total} characters cut from the middle so the result fits the model's context. "
        f"{hint} ...]\n"
    )
    keep = max(limit - len(marker) - 20, MIN_OUTPUT_CHARS // 2)
    head = _snap_back(output, keep * 2 // 3)
    tail_start = _snap_forward(output, len(output) - (keep - len(head)))
    cut = tail_start - len(head)
    return head + marker.format(cut=cut, total=len(output)) + output[tail_start:], True


def _paging_hint(tool: str, parameters: Mapping[str, object]) -> str:
    properties = parameters.get("properties")
    names = [
        name for name in (properties if isinstance(properties, Mapping) else {})
        if _PAGING_WORDS & set(re.split(r"[_\-]|(?<=[a-z])(?=[A-Z])", name.lower() if "_" in name else name))
        or name.lower() in _PAGING_WORDS
    ]
    if names:
        listed = ", ".join(f"`{n}`" for n in names[:4])
        return f"To see a part of it, call {tool} again with {listed}"
    return f"To see a part of it, call {tool} again with a narrower request"


def _snap_back(text: str, end: int) -> str:
    """text[:end], ending at the last line break before `end` when there is one nearby."""
    cut = text.rfind("\n", max(0, end - 200), end)
    return text[: cut + 1] if cut > 0 else text[:end]


def _snap_forward(text: str, start: int) -> int:
    """An index at or after `start` that begins a line, when one is nearby."""
    start = max(0, start)
    newline = text.find("\n", start, start + 200)
    return newline + 1 if newline >= 0 else start

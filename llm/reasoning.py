"""Keeping a model's reasoning out of its answer.

Reasoning arrives three ways: a separate field (`reasoning_content`, `reasoning`), a
`reasoning` output item, or `<think>...</think>` inside the content itself (some models,
or LM Studio with reasoning parsing off). The first two are kept apart by the stream
accumulators; this module handles the third.
"""

from __future__ import annotations

import re

_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL | re.IGNORECASE)
_OPEN_ONLY = re.compile(r"<think>(.*)$", re.DOTALL | re.IGNORECASE)
_CLOSE_ONLY = re.compile(r"^(.*?)</think>", re.DOTALL | re.IGNORECASE)


def split_reasoning(text: str) -> tuple[str, str]:
    """Return `(answer, reasoning)` with every `<think>` block moved out of the answer.

    An unterminated `<think>` (the generation stopped mid-thought) is all reasoning; a
    stray `</think>` with no opening tag (templates that pre-fill `<think>`) ends the
    reasoning that came before it.
    """
    thoughts: list[str] = []

    def take(match: re.Match[str]) -> str:
        thoughts.append(match.group(1).strip())
        return ""

    answer = _THINK.sub(take, text)
    answer = _OPEN_ONLY.sub(take, answer)
    answer = _CLOSE_ONLY.sub(take, answer, count=1)
    return answer.strip(), "\n\n".join(t for t in thoughts if t)

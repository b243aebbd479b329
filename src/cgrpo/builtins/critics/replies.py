"""What an API critic's reply holds: the critique text, or why there is none.

A reply is not a critique when it is empty or only whitespace, cut at the token limit
(``finish_reason`` "length": the end, with its verdict line, is missing), a refusal (the
``refusal`` field, or Azure's ``content_filter``), or only thinking. Thinking never becomes
critique text: a reasoning model's ``reasoning`` / ``reasoning_content`` field (vLLM,
SGLang, DeepSeek) is not read for the text, and ``<think>...</think>`` is cut out of the
content (a server without a reasoning parser leaves it there; when the chat template
opened the block in the prompt, the content starts inside it and only ``</think>``
shows). The tokens are counted either way: reasoning tokens are billed as completion
tokens.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# Critique.error of each kind of unusable reply (the critic counts them apart)
UNUSABLE = {
    "empty": "empty reply",
    "truncated": "reply cut at the token limit (finish_reason length)",
    "refusal": "the model refused",
    "thinking_only": "reasoning only, no critique after it",
}
# what to do about each, said once in the log
FIXES = {
    "empty": "check the model and the template",
    "truncated": "raise max_tokens (a reasoning model spends much of it thinking; "
    "reasoning_effort: low thinks less) or set truncated_retry_tokens",
    "refusal": "check the template and the data",
    "thinking_only": "raise max_tokens or lower reasoning_effort",
}
_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.S)
REASONING_FIELDS = ("reasoning_content", "reasoning")


def strip_thinking(content: str) -> tuple[str, bool]:
    """``content`` without its thinking, and whether there was any."""
    text, blocks = _THINK_BLOCK.subn("", content)
    found = blocks > 0
    if "</think>" in text:  # opened by the chat template, before the content began
        text, found = text.rsplit("</think>", 1)[1], True
    if "<think>" in text:  # opened and never closed: the rest is thinking
        text, found = text.split("<think>", 1)[0], True
    return text.strip(), found


@dataclass
class Reply:
    text: str
    failure: str | None  # a key of UNUSABLE, or None for a usable critique
    detail: str = ""
    think_stripped: bool = False
    separate_reasoning: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0  # reasoning tokens included, as billed
    reasoning_tokens: int = 0

    @property
    def error(self) -> str | None:
        if self.failure is None:
            return None
        return UNUSABLE[self.failure] + (f": {self.detail}" if self.detail else "")


def _usage(resp: Any) -> tuple[int, int, int]:
    usage = getattr(resp, "usage", None)
    if usage is None:
        return 0, 0, 0
    details = getattr(usage, "completion_tokens_details", None)
    reasoning = getattr(details, "reasoning_tokens", None) if details is not None else None
    return usage.prompt_tokens or 0, usage.completion_tokens or 0, reasoning or 0


def read_reply(resp: Any) -> Reply:
    """The first choice of a chat completion, read as a critique (ValueError: no choice)."""
    if not getattr(resp, "choices", None):
        raise ValueError("a response without a message")
    choice = resp.choices[0]
    message = choice.message
    tokens = _usage(resp)
    separate = any(getattr(message, f, None) for f in REASONING_FIELDS)
    text, stripped = strip_thinking(message.content or "")
    failure, detail = None, ""
    if getattr(message, "refusal", None) or choice.finish_reason == "content_filter":
        failure = "refusal"
        detail = _clip(message.refusal or "content filter")
    elif choice.finish_reason == "length":
        failure = "truncated"
    elif not text:
        failure = "thinking_only" if stripped or separate else "empty"
    return Reply(text, failure, detail, stripped, separate, *tokens)


def failure_kind(error: str) -> str:
    """The kind of a failed critique from its ``Critique.error``: a key of UNUSABLE,
    "disagreement", or "request error" (the API gave no answer: see the error)."""
    if error == "disagreement":
        return error
    return next((k for k, v in UNUSABLE.items() if error.startswith(v)), "request error")


def _clip(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."

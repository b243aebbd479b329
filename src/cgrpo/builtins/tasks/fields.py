"""Reading one field of a data row: dotted paths into nested records, chat-message values
where text is expected, a row's source label, and the row formats that set every field
option at once.

Published RL datasets nest what a trainer needs. A verl/LUFFY row (the Critique-GRPO
authors' training and validation parquet) looks like::

    {"data_source": "aime",
     "prompt": [{"role": "system", "content": ...}, {"role": "user", "content": ...}],
     "ability": "math",
     "reward_model": {"ground_truth": "204", "style": "rule", "question": ...},
     "extra_info": {"index": 0, "split": "default"},
     "target": [{"role": "assistant", "content": "<the reference solution>"}]}

so a field option is a path (``reward_model.ground_truth``; a number indexes a list:
``target.0.content``), and a solution given as a message list is its assistant message's
content (:func:`text_of`: the SFT warm-up's demonstrations and any reader of
``Problem.solution`` get plain text).
"""

from __future__ import annotations

import re
from typing import Any

from cgrpo.errors import DataError

MISSING: Any = object()  # what field_value returns for a path that leads nowhere

# field options a row format sets (options given beside `format` win)
FORMATS: dict[str, dict[str, str]] = {
    "verl": {
        "messages_field": "prompt",
        # the authors add the bare question here (their train_add_question.parquet);
        # without it the question is the prompt's last user message
        "question_field": "reward_model.question",
        "answer_field": "reward_model.ground_truth",
        "solution_field": "target",
        "id_field": "extra_info.index",
        "source_field": "data_source",
    },
}

LABEL = re.compile(r"[^A-Za-z0-9._-]+")


def field_value(row: dict[str, Any], path: str) -> Any:
    """The value at ``path`` in ``row``, or :data:`MISSING` (absent or null). A column
    whose own name holds the dots is taken first; then each dotted part is a key of a
    record or, as a number, an index into a list."""
    if path in row:
        value = row[path]
    else:
        value = row
        for part in path.split("."):
            if isinstance(value, dict) and part in value:
                value = value[part]
            elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
                value = value[int(part)]
            else:
                return MISSING
    return MISSING if value is None else value


def fields_present(row: dict[str, Any], path: str) -> str:
    """For an error message: why ``path`` gives nothing. It is null, or it stops at a
    record that lacks the next key: that record's fields (the row's own, or "reward_model
    has: style")."""
    value: Any = row
    walked: list[str] = []
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            break
        if value[part] is None:
            return "it is null"
        value = value[part]
        walked.append(part)
    if isinstance(value, list):
        return f"{'.'.join(walked)} is a list of {len(value)}"
    keys = ", ".join(map(str, value)) if isinstance(value, dict) else ""
    if walked:
        return f"{'.'.join(walked)} has: {keys or 'no fields'}"
    return f"fields present: {keys or 'none'}"


def is_messages(value: Any) -> bool:
    """Whether ``value`` is a list of chat messages ({role, content} records)."""
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)
    )


def text_of(value: Any, field: str, at: str) -> str:
    """A text field's value as text: a string as it is, a chat-message list (verl's
    ``target``: [{role: assistant, content}]) as its last assistant message's content,
    anything else as ``str``. The one place that turns a demonstration or reference
    solution into text."""
    if is_messages(value):
        said = [m["content"] for m in value if m["role"] == "assistant"]
        if not said or not isinstance(said[-1], str):
            raise DataError(
                f"{at}: field {field!r} is a list of chat messages without an assistant "
                "message with text content; map the solution's own field instead"
            )
        return said[-1]
    return str(value)


def source_label(value: str) -> str:
    """A row's source (verl's ``data_source``) as a metric label: characters other than
    letters, digits, '.', '_' and '-' become '_' ("openai/gsm8k" -> "openai_gsm8k")."""
    return LABEL.sub("_", value.strip()).strip("_") or "_"


def required_text(row: dict[str, Any], path: str, role: str, at: str) -> str:
    """The text at ``path`` (:func:`text_of`); missing or empty is a bad row that names
    ``at`` (file:line), the path and what the row has there."""
    value = field_value(row, path)
    if value is MISSING:
        raise DataError(f"{at}: missing field {path!r} ({role}); {fields_present(row, path)}")
    text = text_of(value, path, at).strip()
    if not text:
        raise DataError(f"{at}: field {path!r} ({role}) is empty")
    return text


def chat_messages(value: Any, field: str, at: str) -> list[dict[str, str]]:
    """A row's chat messages, checked: a non-empty list of {role, content} strings with at
    least one user message."""
    if not isinstance(value, list) or not value:
        raise DataError(f"{at}: field {field!r} must be a non-empty list of chat messages")
    for i, m in enumerate(value):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str)
                and isinstance(m.get("content"), str)):  # fmt: skip
            raise DataError(f"{at}: {field}[{i}] must be {{role: ..., content: ...}} strings")
    if not any(m["role"] == "user" for m in value):
        raise DataError(f"{at}: {field!r} has no user message")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def prompt_of(
    row: dict[str, Any], question_field: str, messages_field: str | None, at: str
) -> tuple[str, list[dict[str, str]] | None]:
    """``(question text, chat messages or None)`` of a row. A prompt given as messages
    (``messages_field``, or a question field that holds them) is rendered as it is; its
    question text (for critiques and logs) is question_field's when that holds text,
    else the last user message."""
    own = field_value(row, question_field)
    key = messages_field or (question_field if is_messages(own) else None)
    if key is None:
        return required_text(row, question_field, "question", at), None
    value = field_value(row, key)
    if value is MISSING:
        raise DataError(f"{at}: missing field {key!r} (prompt); {fields_present(row, key)}")
    messages = chat_messages(value, key, at)
    if own is not MISSING and not is_messages(own) and str(own).strip():
        return str(own).strip(), messages
    return [m["content"] for m in messages if m["role"] == "user"][-1].strip(), messages


def apply_format(options: Any, name: str | None) -> None:
    """Set the field options of row format ``name`` on a pydantic options object, except
    those given explicitly (``model_fields_set``)."""
    if name is None:
        return
    for key, value in FORMATS[name].items():
        if key in type(options).model_fields and key not in options.model_fields_set:
            setattr(options, key, value)

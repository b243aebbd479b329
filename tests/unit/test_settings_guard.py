"""A guard against options that are accepted and never read: every field of the recipe
schema and of every built-in component's ``Options`` must be read somewhere in cgrpo's
source (``.field`` or a ``"field"`` key). A new field that nothing reads fails here."""

import inspect
import re

from pydantic import BaseModel

from tests.helpers import REPO

SOURCE = REPO / "src" / "cgrpo"
# fields passed on as keyword arguments (model_dump(**)), checked against the signature
FORWARDED = {"TinyModelSpec": "cgrpo.model.tiny:create_tiny_model"}


def _source_text() -> str:
    skip = {SOURCE / "recipe" / "reference.py"}  # the generated docs read every field
    return "\n".join(p.read_text() for p in SOURCE.rglob("*.py") if p not in skip)


def _models() -> list[type[BaseModel]]:
    import cgrpo.config.schema as schema
    from cgrpo.plugins import get_registries

    found = [
        cls
        for cls in vars(schema).values()
        if inspect.isclass(cls) and issubclass(cls, BaseModel) and cls.__module__ == schema.__name__
    ]
    registries = get_registries()
    for kind in ("policy", "critic", "verifier", "advantage", "task"):
        for name in registries[kind].names():
            options = registries[kind].get(name).options
            if options.__module__.startswith("cgrpo.") and options not in found:
                found.append(options)
    return found


def test_every_setting_is_read_somewhere():
    import importlib

    text = _source_text()
    unread = []
    for model in _models():
        forwarded = FORWARDED.get(model.__name__)
        params = set()
        if forwarded:
            module, _, func = forwarded.partition(":")
            params = set(
                inspect.signature(getattr(importlib.import_module(module), func)).parameters
            )
        for field in model.model_fields:
            if field in params:
                continue
            if not re.search(rf"\.{field}\b|[\"']{field}[\"']", text):
                unread.append(f"{model.__name__}.{field}")
    assert not unread, f"settings that no code reads: {unread}"

"""Render the recipe reference (docs/recipe-reference.md) from the schema itself, so the
documentation cannot drift from the code: ``python -m cgrpo.recipe.reference > FILE``."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from cgrpo.recipe.schema import Recipe


def _models(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [
        a
        for a in getattr(annotation, "__args__", ()) or ()
        if isinstance(a, type) and issubclass(a, BaseModel)
    ]


def _default(field: Any) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        name = getattr(value, "name", None)
        return f"`{name}`" if type(value).__name__ == "ComponentSpec" else "(section)"
    return f"`{value!r}`"


def render() -> str:
    lines = [
        "# Recipe reference",
        "",
        "Generated from `cgrpo.recipe.schema` by `python -m cgrpo.recipe.reference`; "
        "a test keeps it current. Component options (`options:` under `policy`, "
        "`critic`, `verifier`, `algorithm.advantage`, `data.task`) are listed by "
        "`cgrpo list`.",
        "",
    ]

    def section(model: type[BaseModel], path: str) -> None:
        doc = (model.__doc__ or "").strip().splitlines()[0] if model.__doc__ else ""
        lines.extend(
            [
                f"## `{path or 'top level'}`",
                "",
                doc,
                "",
                "| key | default | meaning |",
                "|---|---|---|",
            ]
        )
        nested = []
        for name, field in model.model_fields.items():
            subs = _models(field.annotation)
            desc = field.description or next(
                ((m.__doc__ or "").strip().splitlines()[0] for m in subs if m.__doc__), ""
            )
            desc = desc.replace("|", "\\|")
            lines.append(f"| `{name}` | {_default(field).replace('|', chr(92) + '|')} | {desc} |")
            for sub in subs:
                if sub.__name__ != "ComponentSpec":
                    nested.append((sub, f"{path}.{name}" if path else name))
        lines.append("")
        for sub, sub_path in nested:
            section(sub, sub_path)

    section(Recipe, "")
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(render(), end="")

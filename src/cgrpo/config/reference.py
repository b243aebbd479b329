"""Render the recipe reference (docs/recipe-reference.md) from the schema itself, so the
documentation cannot drift from the code: ``python -m cgrpo.config.reference > FILE``."""

from __future__ import annotations

from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel

from cgrpo.config.schema import Recipe


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


def _choices(annotation: Any) -> list[Any]:
    """The values of a Literal field (also inside Optional)."""
    if get_origin(annotation) is Literal:
        return list(get_args(annotation))
    return [v for a in get_args(annotation) for v in _choices(a)]


def _builtin_names() -> dict[str, list[str]]:
    """kind -> names of the components cgrpo itself ships (plugins add more)."""
    from cgrpo.plugins import get_registries

    regs = get_registries()
    return {
        kind: sorted(c.name for c in regs[kind] if c.plugin.startswith("builtins"))
        for kind in ("policy", "critic", "verifier", "advantage", "task")
    }


def render() -> str:
    builtins = _builtin_names()
    lines = [
        "# Recipe reference",
        "",
        "Generated from `cgrpo.config.schema` by `python -m cgrpo.config.reference`; "
        "a test keeps it current. Component options (`options:` under `policy`, "
        "`critic`, `verifier`, `algorithm.advantage`, `data.task`) are listed by "
        "`cgrpo list`.",
        "",
        "A recipe may start from another one: `extends: other.yaml` (a path relative to "
        "the recipe that holds the line) loads that recipe first and merges this one over "
        "it, key by key; chains are allowed, cycles are an error. Where it switches a "
        "section's `mode` (`clip: {mode: none}`) the extended recipe's other keys in that "
        "section are dropped, and where it switches a component's `name` its `options` "
        "are; where it gives `sft.optim`, an inherited `sft.lr` is dropped (an "
        "`sft.optim...` override drops it too). Command-line overrides (`key=value`, "
        "values in YAML) apply last.",
        "",
        "A setting that the others make meaningless is an error, not ignored: "
        "`clip.eps` needs `clip.mode: symmetric`, `eps_low`/`eps_high` need `asymmetric`, "
        "`shaping.gamma` needs a shaping mode, `eval.size`/`eval.task` need `eval.every`; "
        "the resolved recipe a run saves leaves such fields out. A null where null is the "
        "default counts as not set: `sft.steps=0 sft.optim=null` takes back a warm-up an "
        "extended recipe gives.",
        "",
        "Built-in components: "
        + "; ".join(f"{kind}: {', '.join(names)}" for kind, names in builtins.items())
        + ".",
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
            choices = _choices(field.annotation)
            if choices:
                desc += " (one of: " + ", ".join(f"`{c}`" for c in choices) + ")"
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

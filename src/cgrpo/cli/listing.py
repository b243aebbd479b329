"""``cgrpo list``: the registered components of each kind, with their options' defaults
and summaries. A rich table on a terminal; Markdown when piped or redirected (``cgrpo
list | less``, a file, a README), where every word and summary is whole: rich would wrap
cells mid-word to 80 columns."""

from __future__ import annotations

import sys
from typing import Any

# what to do about an empty kind (nothing ships built in for observers)
EMPTY_HINTS = {
    "observer": "no observers registered: install a tracker plugin (cgrpo-tensorboard or "
    "cgrpo-wandb, in the repository's plugins/ directory: pip install -e "
    "plugins/cgrpo-tensorboard) or write one with the register_observers hook "
    "(docs/observing.md); then name it under the recipe's observers:",
}


def component_rows(regs: Any, kind: str) -> list[tuple[str, str, list[str], str]]:
    """``(name, plugin, ["option=default", ...], summary)`` per component of ``kind``."""
    from pydantic import BaseModel

    rows = []
    for comp in regs[kind]:
        opts = []
        for fname, field in comp.options.model_fields.items():
            value = None if field.is_required() else field.get_default(call_default_factory=True)
            if kind == "benchmark" and value in (None, []) and not field.is_required():
                continue  # a preset's long option list: the unset ones are noise here
            if isinstance(value, BaseModel):
                value = value.model_dump()
            opts.append(f"{fname}={'required' if field.is_required() else repr(value)}")
        rows.append((comp.name, comp.plugin, opts, comp.summary))
    return rows


def empty_hint(kind: str) -> str:
    return EMPTY_HINTS.get(kind, f"no {kind} components registered (a plugin adds them: "
                                 "docs/plugins.md)")  # fmt: skip


def markdown(kind: str, rows: list[tuple[str, str, list[str], str]]) -> str:
    """One kind as a Markdown section: a table, or the hint when it is empty."""
    lines = [f"## {kind} components", ""]
    if not rows:
        return "\n".join([*lines, empty_hint(kind), ""])
    lines += ["| name | plugin | options (defaults) | summary |", "|---|---|---|---|"]
    for name, plugin, opts, summary in rows:
        cells = (name, plugin, ", ".join(opts) or "-", summary)
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join([*lines, ""])


def print_table(kind: str, rows: list[tuple[str, str, list[str], str]]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    table = Table(title=f"{kind} components", title_justify="left", show_lines=False)
    for col in ("name", "plugin", "options (defaults)", "summary"):
        table.add_column(col, overflow="fold")
    for name, plugin, opts, summary in rows:
        # escaped: rich would read "[data]" in "pip install 'cgrpo[data]'" as markup
        cells = (name, plugin, "\n".join(opts) or "-", summary)
        table.add_row(*(escape(c) for c in cells))
    console.print(table)
    if not rows:
        console.print(escape(empty_hint(kind)), highlight=False)


def list_components(kinds: list[str], fmt: str) -> None:
    """Print ``kinds``' components; ``fmt``: table, markdown, or auto (a table on a
    terminal, Markdown otherwise)."""
    from cgrpo.plugins import get_registries

    regs = get_registries()
    as_table = fmt == "table" or (fmt == "auto" and sys.stdout.isatty())
    for kind in kinds:
        rows = component_rows(regs, kind)
        if as_table:
            print_table(kind, rows)
        else:
            print(markdown(kind, rows))

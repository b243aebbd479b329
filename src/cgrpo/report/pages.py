"""report.md and a self-contained report.html: the summary table, what was left out and
why, and the figures (embedded in the HTML at their pixel size, so what is read there is
what was drawn)."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from cgrpo.report.reading import Run


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _table_rows(table: list[dict[str, object]]) -> tuple[list[str], list[list[str]]]:
    head = list(table[0]) if table else ["metric"]
    return head, [[_fmt(row.get(h)) for h in head] for row in table]


def write_markdown(
    runs: list[Run], table, left_out: list[str], pngs: list[Path], path: Path
) -> None:
    head, rows = _table_rows(table)
    lines = [f"# cgrpo report: {', '.join(r.name for r in runs)}", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines.append("")
    if left_out:
        lines += ["Not drawn:", "", *[f"- {line}" for line in left_out], ""]
    lines += [f"![{p.stem}]({p.name})" for p in pngs]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_html(runs: list[Run], table, left_out: list[str], pngs: list[Path], path: Path) -> None:
    head, rows = _table_rows(table)
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows
    )
    missing = "".join(f"<li>{html.escape(line)}</li>" for line in left_out)
    missing = f"<p>Not drawn:</p><ul>{missing}</ul>" if missing else ""
    images = "".join(
        f'<figure><img alt="{p.stem}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}"></figure>'
        for p in pngs
    )
    title = html.escape(", ".join(r.name for r in runs))
    path.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>cgrpo report: {title}</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "td:first-child,th:first-child,td:nth-child(2){text-align:left}"
        "figure{margin:1em 0}img{max-width:100%}</style></head><body>"
        f"<h1>cgrpo report: {title}</h1><table><tr>{cells}</tr>{body}</table>{missing}"
        f"{images}</body></html>\n",
        encoding="utf-8",
    )

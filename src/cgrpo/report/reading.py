"""Reading runs for ``cgrpo report``: a run directory's metrics.jsonl (a run still going
is read up to its last complete line) and what its saved recipe says about it (the
critic: a rule-based critic has no cost or latency to draw)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from cgrpo.errors import CgrpoError


@dataclass
class Run:
    name: str
    path: Path
    rows: list[dict[str, float]] = field(default_factory=list)
    critic: str | None = None  # the recipe's critic, when its recipe.yaml can be read

    def series(self, key: str) -> tuple[list[float], list[float]]:
        """(steps, values) of ``key`` where it is logged and finite."""
        xs, ys = [], []
        for row in self.rows:
            value = row.get(key)
            if isinstance(value, int | float) and math.isfinite(value):
                xs.append(float(row["step"]))
                ys.append(float(value))
        return xs, ys

    def keys(self) -> set[str]:
        return {k for row in self.rows for k in row}


def read_run(path: str | Path) -> Run:
    """The metrics of a run directory (or of a metrics.jsonl file). A last line that is
    still being written is ignored; a malformed line elsewhere is an error naming it."""
    path = Path(path)
    file = path / "metrics.jsonl" if path.is_dir() else path
    if not file.is_file():
        raise CgrpoError(f"{path}: no metrics.jsonl (is it a cgrpo run directory?)")
    lines = file.read_text(encoding="utf-8").splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines):  # a run still writing its last line
                break
            raise CgrpoError(f"{file}:{number}: not a JSON line ({exc.msg})") from None
        if isinstance(row, dict) and "step" in row:
            rows.append(row)
    name = file.parent.name if file.name == "metrics.jsonl" else file.stem
    return Run(name, file.parent, rows, _critic_of(file.parent / "recipe.yaml"))


def _critic_of(recipe: Path) -> str | None:
    """The critic named by a run's saved (resolved) recipe; None when there is none."""
    if not recipe.is_file():
        return None
    from cgrpo.config.load import load_raw

    try:
        critic = load_raw(recipe).get("critic")
    except (CgrpoError, OSError, ValueError):
        return None
    if isinstance(critic, dict):
        critic = critic.get("name")
    return critic if isinstance(critic, str) else None


def distinct_names(runs: list[Run]) -> None:
    """Runs with the same directory name (runs/a/quickstart, runs/b/quickstart) are
    named by as many parent directories as it takes to tell them apart."""
    for depth in range(1, 6):
        names = [r.name for r in runs]
        clashing = {n for n in names if names.count(n) > 1}
        if not clashing:
            return
        for run in runs:
            if run.name in clashing:
                parts = run.path.resolve().parts
                run.name = "/".join(parts[-(depth + 1) :])

"""TensorBoard observer for cgrpo: scalars per step, samples and the recipe as text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cgrpo import hookimpl


class TensorBoardObserver:
    """TensorBoard: every metric as a scalar per step, samples and the recipe as text."""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        log_dir: str | None = Field(
            None, description="event file directory (None: RUN_DIR/tensorboard)"
        )
        samples_every: int = Field(
            10, ge=0, description="log samples as text every N steps; 0 = never"
        )
        samples: int = Field(4, ge=1, description="sequences per samples table")

        def ignored_settings(self) -> dict[str, str]:
            if self.samples_every == 0:
                return {"samples": "has no effect with samples_every: 0; remove it"}
            return {}

    def __init__(self, options: Options, context: Any = None):
        self.options = options
        self.writer = None

    def start(self, run_dir: str, recipe: dict[str, Any], resumed_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        log_dir = self.options.log_dir or str(Path(run_dir) / "tensorboard")
        # resumed: drop what was logged after the checkpoint (those steps run again)
        purge = resumed_step + 1 if resumed_step else None
        self.writer = SummaryWriter(log_dir=log_dir, purge_step=purge)
        if not resumed_step:
            text = json.dumps(recipe, indent=2, sort_keys=True)
            self.writer.add_text("recipe", f"```\n{text}\n```", 0)

    def step(self, step: int, metrics: dict[str, float], samples: list[dict[str, Any]]) -> None:
        for key, value in metrics.items():
            if key != "step" and isinstance(value, int | float):
                self.writer.add_scalar(key, value, step)
        every = self.options.samples_every
        if every and step % every == 0 and samples:
            self.writer.add_text("samples", samples_markdown(samples[: self.options.samples]), step)
        self.writer.flush()

    def end(self, status: str) -> None:
        if self.writer is not None:
            self.writer.close()


def samples_markdown(samples: list[dict[str, Any]]) -> str:
    """A markdown table of samples.jsonl lines (TensorBoard renders text as markdown)."""

    def cell(value: Any) -> str:
        return str(value if value is not None else "").replace("|", "\\|").replace("\n", " ")[:500]

    rows = ["| kind | question | response | critique | reward |", "|---|---|---|---|---|"]
    for s in samples:
        fields = (s.get(k) for k in ("kind", "question", "response", "critique", "reward"))
        rows.append("| " + " | ".join(cell(f) for f in fields) + " |")
    return "\n".join(rows)


@hookimpl
def register_observers(register):
    register("tensorboard", TensorBoardObserver)

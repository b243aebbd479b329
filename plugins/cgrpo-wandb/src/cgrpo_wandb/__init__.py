"""Weights & Biases observer for cgrpo: the recipe as config, scalars, samples tables."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cgrpo import hookimpl

SAMPLE_COLUMNS = (
    "step",
    "kind",
    "question",
    "response",
    "critique",
    "verdict",
    "reward",
    "advantage",
)


class WandbObserver:
    """Weights & Biases: the resolved recipe as config, scalars per step, samples tables."""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        project: str = Field("cgrpo", description="W&B project")
        entity: str | None = Field(None, description="W&B team or user (None: your default)")
        name: str | None = Field(None, description="run name (None: run.name)")
        group: str | None = Field(None, description="group runs (e.g. grpo vs critique-grpo)")
        tags: list[str] = Field(default_factory=list, description="run tags")
        mode: Literal["online", "offline", "disabled"] = Field("online", description="W&B mode")
        samples_every: int = Field(
            10, ge=0, description="log a samples table every N steps; 0 = never"
        )
        samples: int = Field(16, ge=1, description="rows per samples table")

        def ignored_settings(self) -> dict[str, str]:
            if self.samples_every == 0:
                return {"samples": "has no effect with samples_every: 0; remove it"}
            return {}

    def __init__(self, options: Options, context: Any = None):
        self.options = options
        self.run = None

    def start(self, run_dir: str, recipe: dict[str, Any], resumed_step: int) -> None:
        import wandb

        o = self.options
        id_file = Path(run_dir) / "wandb-run-id"
        run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(6)
        id_file.write_text(run_id + "\n")
        self.run = wandb.init(
            project=o.project,
            entity=o.entity,
            name=o.name or recipe.get("run", {}).get("name"),
            group=o.group,
            tags=o.tags or None,
            mode=o.mode,
            dir=run_dir,
            id=run_id,
            resume="allow",
            config=recipe,
        )

    def step(self, step: int, metrics: dict[str, float], samples: list[dict[str, Any]]) -> None:
        data: dict[str, Any] = {k: v for k, v in metrics.items() if k != "step"}
        every = self.options.samples_every
        if every and step % every == 0 and samples:
            import wandb

            rows = [[s.get(c) if c != "step" else step for c in SAMPLE_COLUMNS]
                    for s in samples[: self.options.samples]]  # fmt: skip
            data["samples"] = wandb.Table(columns=list(SAMPLE_COLUMNS), data=rows)
        self.run.log(data, step=step)

    def end(self, status: str) -> None:
        if self.run is not None:
            self.run.finish(exit_code=0 if status == "completed" else 1)


@hookimpl
def register_observers(register):
    register("wandb", WandbObserver)

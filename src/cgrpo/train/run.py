"""``cgrpo run``: recipe -> run directory -> warm-up -> training -> checkpoints."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

from cgrpo.errors import ConfigIssue, RecipeError, TrainingError

log = logging.getLogger("cgrpo")


def prepare_run_dir(recipe, source: str) -> Path:
    """Create the run directory, refusing to mix two runs' outputs."""
    run_dir = Path(recipe.run.output_dir) / recipe.run.name
    if run_dir.exists() and any(run_dir.iterdir()):
        if not recipe.run.overwrite:
            raise RecipeError(
                [
                    ConfigIssue(
                        "run.name",
                        f"run directory {run_dir} already exists and is not empty",
                        "choose another name (run.name=...), set run.overwrite=true, "
                        f"or remove {run_dir}",
                    )
                ],
                source,
            )
        shutil.rmtree(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise TrainingError(
            f"cannot write to the run directory {run_dir}: {exc}; "
            "set run.output_dir to a writable place"
        ) from exc
    return run_dir


def _setup_logging(run_dir: Path) -> None:
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("cgrpo")
    root.setLevel(logging.INFO)
    root.addHandler(handler)


def run_recipe(path: str, overrides: Sequence[str]) -> int:
    from omegaconf import OmegaConf
    from transformers.utils import logging as hf_logging

    from cgrpo.plugins import get_registries
    from cgrpo.recipe import load_recipe
    from cgrpo.recipe.build import build
    from cgrpo.train.loop import Trainer
    from cgrpo.train.metrics import Console, JsonlWriter
    from cgrpo.train.sft import sft_warmup

    hf_logging.disable_progress_bar()
    registries = get_registries()
    recipe, resolved = load_recipe(path, overrides, registries=registries)
    run_dir = prepare_run_dir(recipe, path)
    (run_dir / "recipe.yaml").write_text(OmegaConf.to_yaml(resolved))
    _setup_logging(run_dir)
    console = Console(recipe.train.steps, recipe.run.console)
    console.message(f"cgrpo: run directory {run_dir}")
    hooks = registries.hook
    status = "failed"
    built = None
    hooks.on_run_start(run_dir=str(run_dir), recipe=resolved)
    try:
        built = build(recipe, registries, run_dir)
        console.message(
            f"cgrpo: {len(built.problems)} problems, model on {built.device}, "
            f"policy={recipe.policy.name} critic={recipe.critic.name} "
            f"verifier={recipe.verifier.name}"
        )
        if recipe.sft.steps:
            out = JsonlWriter(run_dir / "sft_metrics.jsonl")

            def on_sft(step, m):
                out.write({"step": step, **m})
                if step == 1 or step % max(1, recipe.sft.steps // 5) == 0:
                    console.message(f"sft {step}/{recipe.sft.steps}  loss {m['sft/loss']:.3f}")

            sft_warmup(
                built.model,
                built.tokenizer,
                built.problems,
                built.prompts,
                recipe.sft,
                recipe.run.seed,
                on_sft,
                critic=built.critic,
            )
            out.close()
        trainer = Trainer(recipe, built, run_dir, hooks=hooks, console=console)
        trainer.fit()
        status = "completed"
        console.message(
            f"cgrpo: done; metrics in {run_dir / 'metrics.jsonl'}, final weights in "
            f"{run_dir / 'checkpoints' / f'step-{recipe.train.steps}'}"
        )
        return 0
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        console.close()
        if built is not None:
            for part in (built.critic, built.policy):
                close = getattr(part, "close", None)
                if callable(close):
                    close()
        hooks.on_run_end(run_dir=str(run_dir), status=status)
        (run_dir / "status.json").write_text(json.dumps({"status": status}))

"""``cgrpo run``: recipe -> run directory -> (resume | warm-up) -> training -> checkpoints.

Works the same under ``torchrun``: rank 0 prepares the run directory and decides where to
start; every rank then builds its model and trains its share.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cgrpo.errors import CgrpoError, TrainingError

log = logging.getLogger("cgrpo")
EXIT_INTERRUPTED = 130


def _check_writable(run_dir: Path) -> None:
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


def _setup_logging(run_dir: Path, console: Any) -> list[logging.Handler]:
    """Everything cgrpo logs goes to RUN_DIR/train.log (console lines included, so it
    records starts, resumes, interrupts and the end); warnings also to the console.
    Returns the handlers, removed when the run ends (a second run in the same process
    must not write into the first one's log)."""
    from cgrpo.train.metrics import ConsoleLogHandler

    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("cgrpo")
    root.setLevel(logging.INFO)
    handlers = [handler, ConsoleLogHandler(console)]
    for h in handlers:
        root.addHandler(h)
    return handlers


def _start_on_rank0(recipe, resolved, run_dir: Path, source: str) -> str | None:
    """Rank 0 decides fresh vs resume and prepares the directory; every rank learns the
    answer (or the error) so no rank waits forever on a failed rank 0."""
    from omegaconf import OmegaConf

    from cgrpo.model import distributed
    from cgrpo.train.checkpoint import is_warmup_checkpoint
    from cgrpo.train.resume import SFT_METRICS, choose_start, cut_logs

    outcome: tuple[str, object] = ("ok", None)
    if distributed.is_main():
        try:
            ckpt = choose_start(recipe, resolved, run_dir, source)
            _check_writable(run_dir)
            if ckpt is not None:
                step = int(json.loads((ckpt / "manifest.json").read_text())["step"])
                if is_warmup_checkpoint(ckpt):  # the warm-up goes on from there, then RL
                    cut_logs(run_dir, 0)
                    cut_logs(run_dir, step, (SFT_METRICS,))
                else:
                    cut_logs(run_dir, step)
            (run_dir / "recipe.yaml").write_text(OmegaConf.to_yaml(resolved))
            outcome = ("ok", None if ckpt is None else str(ckpt))
        except CgrpoError as exc:
            outcome = ("error", exc)
    outcome = distributed.broadcast(outcome)
    if outcome[0] == "error":
        raise outcome[1]  # type: ignore[misc]
    return outcome[1]  # type: ignore[return-value]


def resume_command(path: str, overrides: Sequence[str]) -> str:
    """The command that continues this run (``resume=`` given once, whatever was given)."""
    kept = [o for o in overrides if not o.startswith("resume=")]
    return f"cgrpo run {' '.join([path, *kept])} resume=auto"


def _check_memory(recipe, source: str) -> None:
    """On GPU, the memory plan before anything is loaded: stop (exit 2) naming fixes when
    it does not fit, unless ``run.memory_check: warn``."""
    import os

    import torch

    from cgrpo.errors import ConfigIssue, RecipeError
    from cgrpo.model import memory_plan

    device = recipe.model.device
    if not torch.cuda.is_available() or not (device == "auto" or device.startswith("cuda")):
        return
    local = int(os.environ.get("LOCAL_RANK", "0"))
    total = float(torch.cuda.get_device_properties(local).total_memory)
    verdict = memory_plan.check_recipe(recipe, memory_plan.default_gpus(), total)
    if local == 0:
        log.info("%s", verdict.text)
    if verdict.fits is not False:
        return
    if recipe.run.memory_check == "warn":
        if local == 0:
            print(verdict.text + "\ncgrpo: going ahead (run.memory_check=warn)", flush=True)
        return
    raise RecipeError(
        [
            ConfigIssue(
                "run.memory_check",
                "the memory plan does not fit this GPU:\n" + verdict.text,
                memory_plan.fixes_text(verdict.fixes)
                + "\n      (or run.memory_check=warn if the estimate is wrong for you)",
            )
        ],
        source,
    )


@dataclass
class RunSession:
    """What every phase of one ``cgrpo run`` reads: the recipe, where the run lives, where it
    starts from, and what it has built so far."""

    path: str
    overrides: Sequence[str]
    recipe: Any
    resolved: Any
    registries: Any
    run_dir: Path
    ckpt: str | None  # the RL checkpoint training goes on from (None: RL starts fresh)
    warm_from: Path | None  # a warm-up checkpoint the warm-up goes on from
    console: Any
    main: bool
    built: Any = None
    observers: Any = None
    status: str = "failed"

    def say(self, text: str) -> None:
        self.console.message(text)


def run_recipe(path: str, overrides: Sequence[str]) -> int:
    """``cgrpo run``: validate, then the phases in order: build, warm-up, KL reference, RL."""
    from cgrpo.config import load_recipe
    from cgrpo.plugins import get_registries

    # validate before importing torch and transformers: a bad recipe is rejected in about
    # a second, as by `cgrpo check`
    registries = get_registries()
    recipe, resolved = load_recipe(path, overrides, registries=registries)
    from cgrpo.app.check import preflight

    preflight(recipe, registries)  # bad data: exit 2 before a model or directory is made

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    _check_memory(recipe, path)
    run = _open_session(path, overrides, recipe, resolved, registries)
    handlers = _setup_logging(run.run_dir, run.console) if run.main else []
    _announce(run)
    if run.main:
        registries.hook.on_run_start(run_dir=str(run.run_dir), recipe=resolved)
    try:
        from cgrpo.app.warmup import warm_up, warn_of_another_template

        warn_of_another_template(recipe, run.run_dir)
        build_parts(run)
        if recipe.sft.steps and run.ckpt is None:
            warm_up(run)
        prepare_reference(run)
        return train_rl(run)
    except KeyboardInterrupt:
        run.status = "interrupted"
        log.info("interrupted (KeyboardInterrupt)")
        raise
    except Exception as exc:  # the CLI shows it; train.log keeps it beside the run
        log.error("run failed: %s", exc, exc_info=not isinstance(exc, CgrpoError),
                  extra={"console": False})  # fmt: skip
        raise
    finally:
        _close_session(run, handlers)


def _open_session(path, overrides, recipe, resolved, registries) -> RunSession:
    """Join the process group, let rank 0 prepare the run directory and choose where to
    start, and open the console."""
    from cgrpo.model import distributed
    from cgrpo.train.checkpoint import is_warmup_checkpoint
    from cgrpo.train.metrics import Console

    distributed.setup(recipe.distributed.backend, recipe.distributed.strategy)
    run_dir = Path(recipe.run.output_dir) / recipe.run.name
    ckpt = _start_on_rank0(recipe, resolved, run_dir, path)
    main = distributed.is_main()
    console = Console(
        recipe.train.steps,
        recipe.run.console if main else "off",
        log_every=recipe.run.log_every,
        budget_usd=(recipe.critic.options or {}).get("budget_usd"),
    )
    warm_from = None  # a warm-up checkpoint: the warm-up goes on from it, then RL
    if ckpt is not None and is_warmup_checkpoint(Path(ckpt)):
        warm_from, ckpt = Path(ckpt), None
    return RunSession(path, overrides, recipe, resolved, registries, run_dir, ckpt, warm_from,
                      console, main)  # fmt: skip


def _announce(run: RunSession) -> None:
    from cgrpo.model import distributed

    started = run.ckpt or run.warm_from
    run.say(
        f"cgrpo: run directory {run.run_dir}"
        + (f", resuming from {started}" if started else "")
        + (f", {distributed.world_size()} processes" if distributed.active() else "")
    )


def build_parts(run: RunSession) -> None:
    """Phase 1: model, tokenizer and components, from the checkpoint's weights on resume."""
    from cgrpo.app.build import build
    from cgrpo.train.resume import check_disk

    recipe = run.recipe
    weights = run.ckpt or run.warm_from  # RL or warm-up checkpoint: its weights either way
    adapters = None
    if weights is not None and recipe.model.lora is not None:
        adapters = Path(weights)  # the checkpoint holds the adapters; the base stays
    elif weights is not None:  # the checkpoint holds the weights and the tokenizer
        recipe.model.path, recipe.model.create = str(weights), None
    run.built = build(recipe, run.registries, run.run_dir, adapter_dir=adapters)
    check_disk(run.run_dir, run.built.model)
    if recipe.model.lora is not None:
        from cgrpo.model.lora import trainable_summary

        run.say(f"cgrpo: LoRA adapters, {trainable_summary(run.built.model)}")
    run.say(
        f"cgrpo: {len(run.built.problems)} problems, model on {run.built.device}, "
        f"policy={recipe.policy.name} critic={recipe.critic.name} "
        f"verifier={recipe.verifier.name}"
    )


def prepare_reference(run: RunSession) -> None:
    """Phase 3: the KL reference is the policy as RL starts (after the warm-up); a resumed
    run loads the reference of the run that wrote its checkpoint."""
    built = run.built
    if built.ref_model is None:
        return
    from cgrpo.model.reference import load_reference, refresh_reference, save_reference

    if run.ckpt is None:
        refresh_reference(built.ref_model, built.model)
        save_reference(run.run_dir, built.ref_model, built.model)
        return
    origin = Path(run.ckpt).resolve().parent.parent
    load_reference(origin, built.ref_model, built.model)
    if origin != run.run_dir.resolve():
        save_reference(run.run_dir, built.ref_model, built.model)


def train_rl(run: RunSession) -> int:
    """Phase 4: the RL steps (with their evaluations and checkpoints), then the final
    words: where the results are, or how to continue an interrupted run."""
    from cgrpo.interfaces import BuildContext
    from cgrpo.train.checkpoint import load_trainer_state
    from cgrpo.train.loop import Trainer
    from cgrpo.train.observers import Observers, build_observers

    recipe, hooks = run.recipe, run.registries.hook
    context = BuildContext(run_dir=run.run_dir, seed=recipe.run.seed, recipe=recipe)
    trackers = build_observers(recipe, run.registries, context) if run.main else []
    run.observers = Observers(hooks, trackers)
    trainer = Trainer(recipe, run.built, run.run_dir, hooks=run.observers, console=run.console)
    if run.ckpt is not None:
        trainer.load_state(load_trainer_state(Path(run.ckpt)), Path(run.ckpt))
    run.observers.start(str(run.run_dir), run.resolved, trainer.step_done)
    run.status = trainer.fit()
    if run.status == "interrupted":
        run.say(
            f"cgrpo: interrupted; checkpoint saved at step {trainer.step_done}. Continue "
            f"with: {resume_command(run.path, run.overrides)}"
        )
        return EXIT_INTERRUPTED
    if recipe.train.steps == 0:  # cgrpo sft: the warm-up's files, not an empty metrics file
        from cgrpo.app.warmup import warm_up_done

        run.say(warm_up_done(run))
        return 0
    run.say(
        f"cgrpo: done; metrics in {run.run_dir / 'metrics.jsonl'}, final weights in "
        f"{run.run_dir / 'checkpoints' / f'step-{recipe.train.steps}'}"
    )
    return 0


def _close_session(run: RunSession, handlers: list[logging.Handler]) -> None:
    """Close what the run opened, in every outcome, and record the outcome."""
    from cgrpo.model import distributed

    run.console.close()
    if run.built is not None:
        for part in (run.built.critic, run.built.policy):
            close = getattr(part, "close", None)
            if callable(close):
                close()
    if run.observers is not None:
        run.observers.end(run.status)
    if run.main:
        run.registries.hook.on_run_end(run_dir=str(run.run_dir), status=run.status)
        (run.run_dir / "status.json").write_text(json.dumps({"status": run.status}))
    for h in handlers:
        logging.getLogger("cgrpo").removeHandler(h)
        h.close()
    distributed.teardown()

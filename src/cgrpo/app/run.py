"""``cgrpo run``: recipe -> run directory -> (resume | warm-up) -> training -> checkpoints.

Works the same under ``torchrun``: rank 0 prepares the run directory and decides where to
start; every rank then builds its model and trains its share.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cgrpo.errors import CgrpoError, TrainingError

log = logging.getLogger("cgrpo")
EXIT_INTERRUPTED = 130
SFT_METRICS = "sft_metrics.jsonl"


def _warmup_sampler(recipe: Any, built: Any, wrong: Any):
    """``sample(problems, seeds)`` for a ``sft.wrong_answer`` that ``uses_own_sample``: one
    response per problem from the model being warmed up (the recipe's sampling settings,
    seeded so that a resumed warm-up draws the same), each with its verdict; else None."""
    if not getattr(wrong, "uses_own_sample", False):
        return None
    from cgrpo.model.sharding import sampling_weights
    from cgrpo.train.verify_pool import VerifyPool
    from cgrpo.types import SamplingParams

    s = recipe.sampling
    params = SamplingParams(
        n=1, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
        max_new_tokens=s.max_new_tokens,
    )  # fmt: skip
    inline = VerifyPool(1)  # a few responses per step: not worth the worker processes

    def sample(problems, seeds):
        policy = built.policy
        if not getattr(policy, "samples_with_trainer_model", False):
            policy.sync_weights(built.model)  # a separate engine (vllm): this step's weights
        with sampling_weights(policy, built.model):
            out = policy.generate([built.prompts.prompt_ids(p) for p in problems], params, seeds)
        texts = [group[0].text for group in out]
        verdicts = inline.verify_routed(
            (built.verifier, None), built.verifier_routes, list(zip(texts, problems, strict=True))
        )
        return list(zip(texts, verdicts, strict=True))

    return sample


def _save_warmup(run_dir: Path, step: int, built: Any, state: dict[str, Any]) -> None:
    """Rank 0 writes warm-up checkpoint ``step`` and drops the older ones (every rank
    holds the same weights: the warm-up batch is the same on every rank)."""
    from cgrpo.model import distributed
    from cgrpo.train.checkpoint import complete_checkpoints, save_checkpoint

    if distributed.is_main():
        save_checkpoint(run_dir, step, built.model, built.tokenizer, state, warmup=True)
        for older, path in complete_checkpoints(run_dir, warmup=True):
            if older != step:
                shutil.rmtree(path, ignore_errors=True)
    distributed.barrier()


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
    from cgrpo.train.resume import choose_start, cut_logs

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


def run_recipe(path: str, overrides: Sequence[str]) -> int:
    from cgrpo.config import load_recipe
    from cgrpo.plugins import get_registries

    # validate before importing torch and transformers: a bad recipe is rejected in about
    # a second, as by `cgrpo check`
    registries = get_registries()
    recipe, resolved = load_recipe(path, overrides, registries=registries)

    from transformers.utils import logging as hf_logging

    from cgrpo.app.build import build
    from cgrpo.interfaces import BuildContext
    from cgrpo.model import distributed
    from cgrpo.train.checkpoint import is_warmup_checkpoint, load_trainer_state, restore_rng
    from cgrpo.train.loop import Trainer
    from cgrpo.train.metrics import Console, JsonlWriter
    from cgrpo.train.observers import Observers, build_observers
    from cgrpo.train.resume import check_disk
    from cgrpo.train.sft import build_wrong_answer, sft_warmup

    hf_logging.disable_progress_bar()
    _check_memory(recipe, path)
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
    handlers = _setup_logging(run_dir, console) if main else []
    say = console.message
    say(
        f"cgrpo: run directory {run_dir}"
        + (f", resuming from {ckpt}" if ckpt else "")
        + (f", {distributed.world_size()} processes" if distributed.active() else "")
    )
    hooks = registries.hook
    status, built, observers = "failed", None, None
    if main:
        hooks.on_run_start(run_dir=str(run_dir), recipe=resolved)
    try:
        weights = ckpt  # an RL or a warm-up checkpoint: its weights are loaded either way
        warm_from = None  # a warm-up checkpoint: the warm-up goes on from it, then RL
        if ckpt is not None and is_warmup_checkpoint(Path(ckpt)):
            warm_from, ckpt = Path(ckpt), None
        adapters = None
        if weights is not None and recipe.model.lora is not None:
            adapters = Path(weights)  # the checkpoint holds the adapters; the base stays
        elif weights is not None:  # the checkpoint holds the weights and the tokenizer
            recipe.model.path, recipe.model.create = weights, None
        built = build(recipe, registries, run_dir, adapter_dir=adapters)
        check_disk(run_dir, built.model)
        if recipe.model.lora is not None:
            from cgrpo.model.lora import trainable_summary

            say(f"cgrpo: LoRA adapters, {trainable_summary(built.model)}")
        say(
            f"cgrpo: {len(built.problems)} problems, model on {built.device}, "
            f"policy={recipe.policy.name} critic={recipe.critic.name} "
            f"verifier={recipe.verifier.name}"
        )
        if recipe.sft.steps and ckpt is None:
            # no RL checkpoint yet: the warm-up runs from its start, or from its newest
            # checkpoint (sft.save_every). After a kill with neither, resume=auto has
            # removed the run directory; the seeded warm-up ends bitwise where the killed
            # one would have
            start = None
            if warm_from is not None:
                start = load_trainer_state(warm_from)
                restore_rng(start["rng"])
                say(f"cgrpo: the warm-up goes on after its step {start['step']}")
            first = 1 if start is None else start["step"] + 1
            out = JsonlWriter(run_dir / SFT_METRICS) if main else None

            sft_started = time.monotonic()

            def on_sft(step, m):
                if out is not None:
                    out.write({"step": step, **m})
                n = recipe.sft.steps
                if step in (first, n) or step % max(1, n // 10) == 0:
                    per_step = (time.monotonic() - sft_started) / (step - first + 1)
                    say(f"sft {step}/{n}  loss {m['sft/loss']:.3f}  ({per_step:.2f}s/step, "
                        f"eta {per_step * (n - step):.0f}s)")  # fmt: skip

            sft_problems = built.problems
            if recipe.sft.task is not None:
                sft_problems = (
                    registries["task"]
                    .build(recipe.sft.task.name, recipe.sft.task.options, None)
                    .load()
                )
            refinement_problems = None
            if recipe.sft.refinement_task is not None and recipe.sft.refinement_share > 0:
                spec = recipe.sft.refinement_task
                refinement_problems = registries["task"].build(spec.name, spec.options, None).load()
            wrong = build_wrong_answer(recipe.sft.wrong_answer)
            sft_warmup(
                built.model,
                built.tokenizer,
                sft_problems,
                built.prompts,
                recipe.sft,
                recipe.run.seed,
                on_sft,
                critic=built.critic,
                precision=built.precision,
                chunk_tokens=recipe.algorithm.logprob_chunk_tokens,
                optim=recipe.optim,
                refinement_problems=refinement_problems,
                start=start,
                wrong=wrong,
                sample=_warmup_sampler(recipe, built, wrong),
                save=lambda step, state: _save_warmup(run_dir, step, built, state),
                save_every=recipe.sft.save_every,
            )
            if out is not None:
                out.close()
        if built.ref_model is not None:  # the KL reference: the policy as RL starts
            from cgrpo.model.reference import load_reference, refresh_reference, save_reference

            if ckpt is None:
                refresh_reference(built.ref_model, built.model)  # after the warm-up
                save_reference(run_dir, built.ref_model, built.model)
            else:  # the reference of the run that wrote the checkpoint
                origin = Path(ckpt).resolve().parent.parent
                load_reference(origin, built.ref_model, built.model)
                if origin != run_dir.resolve():
                    save_reference(run_dir, built.ref_model, built.model)
        context = BuildContext(run_dir=run_dir, seed=recipe.run.seed, recipe=recipe)
        observers = Observers(hooks, build_observers(recipe, registries, context) if main else [])
        trainer = Trainer(recipe, built, run_dir, hooks=observers, console=console)
        if ckpt is not None:
            trainer.load_state(load_trainer_state(Path(ckpt)), Path(ckpt))
        observers.start(str(run_dir), resolved, trainer.step_done)
        status = trainer.fit()
        if status == "interrupted":
            say(
                f"cgrpo: interrupted; checkpoint saved at step {trainer.step_done}. Continue "
                f"with: {resume_command(path, overrides)}"
            )
            return EXIT_INTERRUPTED
        say(
            f"cgrpo: done; metrics in {run_dir / 'metrics.jsonl'}, final weights in "
            f"{run_dir / 'checkpoints' / f'step-{recipe.train.steps}'}"
        )
        return 0
    except KeyboardInterrupt:
        status = "interrupted"
        log.info("interrupted (KeyboardInterrupt)")
        raise
    except Exception as exc:  # the CLI shows it; train.log keeps it beside the run
        log.error("run failed: %s", exc, exc_info=not isinstance(exc, CgrpoError),
                  extra={"console": False})  # fmt: skip
        raise
    finally:
        console.close()
        if built is not None:
            for part in (built.critic, built.policy):
                close = getattr(part, "close", None)
                if callable(close):
                    close()
        if observers is not None:
            observers.end(status)
        if main:
            hooks.on_run_end(run_dir=str(run_dir), status=status)
            (run_dir / "status.json").write_text(json.dumps({"status": status}))
        for h in handlers:
            logging.getLogger("cgrpo").removeHandler(h)
            h.close()
        distributed.teardown()

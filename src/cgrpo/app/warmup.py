"""The warm-up phase of ``cgrpo run``: supervised fine-tuning on reference solutions (and
refinement examples) before RL, logged to ``sft_metrics.jsonl``, evaluated every
``eval.every`` warm-up steps (the ``eval/...`` metrics in the same lines) and checkpointed
every ``sft.save_every`` steps so a killed warm-up goes on where it stopped."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from cgrpo.app.run import RunSession
from cgrpo.model import distributed
from cgrpo.model.sharding import is_sharded
from cgrpo.train.checkpoint import (
    complete_checkpoints,
    restore_rng,
    save_checkpoint,
    save_sharded_checkpoint,
)
from cgrpo.train.evaluation import evaluate_now
from cgrpo.train.resume import SFT_METRICS
from cgrpo.train.verify_pool import VerifyPool, auto_workers

log = logging.getLogger("cgrpo.warmup")


def warm_up(run: RunSession) -> None:
    """Phase 2: the warm-up, from its start or from its newest checkpoint. After a kill with
    neither, resume=auto has removed the run directory; the seeded warm-up then ends
    bitwise where the killed one would have."""
    from cgrpo.train.checkpoint import load_trainer_state
    from cgrpo.train.metrics import JsonlWriter
    from cgrpo.train.sft import build_wrong_answer, sft_warmup

    recipe, built = run.recipe, run.built
    start = None
    if run.warm_from is not None:  # a sharded model's weights come with its optimizer
        start = {**load_trainer_state(run.warm_from), "checkpoint": run.warm_from}
        restore_rng(start["rng"])
        run.say(f"cgrpo: the warm-up goes on after its step {start['step']}")
    wrong = build_wrong_answer(recipe.sft.wrong_answer)
    sft_problems, refinement_problems = _warmup_problems(run)
    out = JsonlWriter(run.run_dir / SFT_METRICS) if run.main else None
    pool = VerifyPool(auto_workers(recipe.run.verify_workers, distributed.world_size()))
    try:
        sft_warmup(
            built.model,
            built.tokenizer,
            sft_problems,
            built.prompts,
            recipe.sft,
            recipe.run.seed,
            _progress(run, out, 1 if start is None else start["step"] + 1, _evaluator(run, pool)),
            critic=built.critic,
            precision=built.precision,
            chunk_tokens=recipe.algorithm.logprob_chunk_tokens,
            optim=recipe.optim,
            refinement_problems=refinement_problems,
            start=start,
            wrong=wrong,
            sample=_warmup_sampler(recipe, built, wrong),
            save=lambda step, state, opt: _save_warmup(run.run_dir, step, built, state, opt),
            save_every=recipe.sft.save_every,
        )
    finally:
        pool.close()  # the evaluation's verification workers, when it started them
        if out is not None:
            out.close()


def taught_template(model_path: str) -> tuple[Path, str] | None:
    """``(the warm-up run, the refinement template it taught)`` when ``model_path`` is a
    checkpoint of a run whose warm-up had refinement examples; else None."""
    from cgrpo.config.load import load_raw
    from cgrpo.config.schema import RefinementConfig
    from cgrpo.errors import CgrpoError

    origin = Path(model_path).expanduser().parent.parent  # RUN/checkpoints/step-N -> RUN
    saved = origin / "recipe.yaml"
    if not (saved.is_file() and (origin / "checkpoints").is_dir()):
        return None
    try:
        raw = load_raw(saved)
    except (CgrpoError, OSError):
        return None
    sft = raw.get("sft") or {}
    if not (sft.get("steps") and sft.get("refinement_share")):
        return None
    default = RefinementConfig.model_fields["template"].default
    return origin, (raw.get("refinement") or {}).get("template", default)


def warn_of_another_template(recipe: Any, run_dir: Path) -> None:
    """RL that refines, starting from a warm-up that taught another refinement template:
    the model acts on critiques only in the form it was taught, so refine/success_rate may
    stay near 0 with nothing else to say why. Warned, not refused (the user may mean it)."""
    if recipe.algorithm.refinements_per_prompt == 0 or recipe.sft.steps:
        return  # no refinements, or this run warms up with its own template
    found = taught_template(recipe.model.path)
    if found is None or found[0].resolve() == run_dir.resolve():
        return
    origin, taught = found
    if taught != recipe.refinement.template:
        log.warning(
            "model.path is the warm-up of %s, which taught refinements with another "
            "refinement.template (%r) than this run's (%r): the model was not taught to act "
            "on critiques in this form, so refine/success_rate may stay near 0. Use the "
            "warm-up's template, or warm up again with this one",
            origin, _clip(taught), _clip(recipe.refinement.template),
        )  # fmt: skip


def _clip(text: str, limit: int = 90) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def warm_up_done(run: RunSession) -> str:
    """The last words of a warm-up-only run (``cgrpo sft``): where its numbers and weights
    are (metrics.jsonl holds RL steps: here at most the step-0 evaluation), and the
    command that starts RL from them in a run directory of its own."""
    sft = run.recipe.sft
    ckpt = run.run_dir / "checkpoints" / "step-0"
    replaced = ("model.path=", "model.create=", "train.steps=", "run.name=", "sft.steps=")
    start = [o for o in run.overrides if not o.startswith(replaced)]
    start += [f"model.path={ckpt}", "sft.steps=0", f"run.name={run.recipe.run.name}-rl"]
    # settings of the warm-up that a run without one rejects as ignored
    start += [f"sft.{name}=null" for name in ("optim", "refinement_task")
              if getattr(sft, name) is not None]  # fmt: skip
    start += ["sft.save_every=0"] if sft.save_every else []
    return (
        f"cgrpo: warm-up done; its loss per step in {run.run_dir / SFT_METRICS}, its "
        f"weights in {ckpt}. RL from them: cgrpo run {run.path} {' '.join(start)}"
    )


def _warmup_problems(run: RunSession) -> tuple[list[Any], list[Any] | None]:
    """(the warm-up's problems: ``sft.task`` or the training data; where refinement examples
    come from: ``sft.refinement_task``, or None for the same problems)."""
    recipe, tasks = run.recipe, run.registries["task"]
    problems = run.built.problems
    if recipe.sft.task is not None:
        problems = tasks.build(recipe.sft.task.name, recipe.sft.task.options, None).load()
    refinement = None
    if recipe.sft.refinement_task is not None and recipe.sft.refinement_share > 0:
        spec = recipe.sft.refinement_task
        refinement = tasks.build(spec.name, spec.options, None).load()
    return problems, refinement


def _evaluator(run: RunSession, pool: VerifyPool):
    """``evaluate(step)``: the evaluation metrics at the warm-up steps ``eval.every``
    names, shown on the console with the phase ({} at the others). The warm-up's last
    step is left to RL's step 0 when ``eval.at_start`` evaluates there anyway."""
    recipe, built = run.recipe, run.built
    every, total = recipe.eval.every, recipe.sft.steps

    def evaluate(step: int) -> dict[str, float]:
        if not every or step % every or (step == total and recipe.eval.at_start):
            return {}
        if not getattr(built.policy, "samples_with_trainer_model", False):
            built.policy.sync_weights(built.model)  # a separate engine: this step's weights
        metrics = evaluate_now(built, recipe, pool, step)
        if run.main and metrics:
            run.console.evaluated(f"warm-up step {step}/{total}", metrics)
        return metrics

    return evaluate


def _progress(run: RunSession, out: Any, first: int, evaluate: Any):
    """``on_step(step, metrics)``: each step to sft_metrics.jsonl (with the evaluation's
    metrics at the steps ``eval.every`` names), about ten console lines."""
    started = time.monotonic()
    total = run.recipe.sft.steps

    def on_step(step: int, m: dict[str, float]) -> None:
        m = {**m, **evaluate(step)}
        if out is not None:
            out.write({"step": step, **m})
        if step in (first, total) or step % max(1, total // 10) == 0:
            per_step = (time.monotonic() - started) / (step - first + 1)
            run.say(f"sft {step}/{total}  loss {m['sft/loss']:.3f}  ({per_step:.2f}s/step, "
                    f"eta {per_step * (total - step):.0f}s)")  # fmt: skip

    return on_step


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


def _save_warmup(
    run_dir: Path, step: int, built: Any, state: dict[str, Any], optimizer: Any
) -> None:
    """Write warm-up checkpoint ``step`` and drop the older ones: rank 0 alone (every rank
    holds the same weights: the warm-up batch is the same on every rank), or under fsdp
    every rank its shards of the model and the warm-up's optimizer."""
    if is_sharded(built.model):
        save_sharded_checkpoint(run_dir, step, built.model, optimizer, built.tokenizer, state,
                                hf_weights=False, warmup=True)  # fmt: skip
    elif distributed.is_main():
        save_checkpoint(run_dir, step, built.model, built.tokenizer, state, warmup=True)
    if distributed.is_main():
        for older, path in complete_checkpoints(run_dir, warmup=True):
            if older != step:
                shutil.rmtree(path, ignore_errors=True)
    distributed.barrier()

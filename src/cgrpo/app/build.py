"""Validated recipe -> live objects: model, tokenizer, components, data, prompt builder.

Components are built through the registries (by name), never imported directly, so a
plugin's component is built exactly like a built-in one.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

from cgrpo.config.schema import Recipe
from cgrpo.errors import DataError
from cgrpo.interfaces import BuildContext
from cgrpo.model.prompts import PromptBuilder
from cgrpo.train.data import holdout_takes_all
from cgrpo.train.parts import Built
from cgrpo.types import Problem

log = logging.getLogger(__name__)


def build(
    recipe: Recipe,
    registries: Any,
    run_dir: Path | None,
    adapter_dir: Path | None = None,
    evaluation_only: bool = False,
) -> Built:
    """Build everything a run needs, in dependency order. ``adapter_dir``: LoRA adapters to
    resume from (a checkpoint of a ``model.lora`` run). ``evaluation_only`` (``cgrpo
    eval``): no KL reference, critic or advantage scheme, and data.task is read only when
    its held-out problems are what is evaluated."""
    # benchmarks first: a missing local copy stops the run before minutes of weight loading
    benchmarks = load_benchmarks(recipe, registries)
    model, tokenizer, device, precision, ref_model = _load_models(
        recipe, adapter_dir, with_reference=not evaluation_only
    )
    ctx = BuildContext(
        run_dir=run_dir,
        seed=recipe.run.seed,
        model=model,
        tokenizer=tokenizer,
        recipe=recipe,
        precision=precision,
    )
    prompts = PromptBuilder(
        tokenizer,
        recipe.data.prompt,
        recipe.refinement,
        recipe.model.max_length,
        recipe.sampling.max_new_tokens,
    )
    route_specs: dict[str, tuple[str, dict[str, Any]]] = {}
    problems, skipped = _training_problems(
        recipe, registries, ctx, prompts, route_specs, evaluation_only
    )
    problems, eval_problems = _split_eval(recipe, registries, ctx, problems, prompts, route_specs)
    ctx.policy = registries["policy"].build(recipe.policy.name, recipe.policy.options, ctx)
    critic = advantage = None
    if not evaluation_only:
        critic = registries["critic"].build(recipe.critic.name, recipe.critic.options, ctx)
        advantage = registries["advantage"].build(
            recipe.algorithm.advantage.name, recipe.algorithm.advantage.options, ctx
        )
    verifier = registries["verifier"].build(recipe.verifier.name, recipe.verifier.options, ctx)
    routes = {
        label: (registries["verifier"].build(name, options, ctx), (name, options))
        for label, (name, options) in route_specs.items()
    }
    sets = build_eval_sets(
        recipe, registries, ctx, prompts, verifier, eval_problems, routes, benchmarks
    )
    return Built(model, tokenizer, device, ctx.policy, critic, verifier, advantage, problems,
                 prompts, skipped, eval_problems, precision, ref_model, sets, routes)  # fmt: skip


def _load_models(recipe: Recipe, adapter_dir: Path | None, with_reference: bool):
    """(model, tokenizer, device, precision, KL reference or None), sharded under fsdp. The
    reference is a plain copy of the policy made before sharding; KL 0 loads none."""
    from cgrpo.model import distributed
    from cgrpo.model.loading import load_policy
    from cgrpo.model.precision import Precision

    model, tokenizer, device = load_policy(
        recipe.model,
        device=distributed.local_device(),
        adapter_dir=adapter_dir,
        seed=recipe.run.seed,
    )
    precision = Precision.from_recipe(recipe.model.dtype, device)
    ref_model = None
    if recipe.algorithm.loss.kl_coef > 0 and with_reference:
        from cgrpo.model.reference import make_reference

        ref_model = make_reference(model, precision)
    if recipe.distributed.strategy == "fsdp":
        from cgrpo.model.sharding import shard_model

        model = shard_model(model, precision.compute)
        if ref_model is not None:
            ref_model = shard_model(ref_model, precision.compute)
    return model, tokenizer, device, precision, ref_model


def _training_problems(
    recipe: Recipe,
    registries: Any,
    ctx: BuildContext,
    prompts: PromptBuilder,
    route_specs: dict[str, tuple[str, dict[str, Any]]],
    evaluation_only: bool,
) -> tuple[list[Problem], int]:
    """(data.task's problems whose prompts fit, how many did not). A mixture task adds its
    sources' verifiers to ``route_specs``. ``cgrpo eval`` reads the task only when its
    held-out problems are what it evaluates."""
    ev = recipe.eval
    holdout = ev.every > 0 and not ev.benchmarks and ev.task is None
    if evaluation_only and not holdout:
        return [], 0
    task = registries["task"].build(recipe.data.task.name, recipe.data.task.options, ctx)
    problems = task.load()
    route_specs.update(getattr(task, "verifiers", {}))
    limit = recipe.data.prompt.max_prompt_tokens
    fitting = fitting_problems(problems, prompts, limit, "data.task")
    if not fitting and problems:
        raise DataError(
            f"every problem's prompt is longer than data.prompt.max_prompt_tokens="
            f"{limit}; raise it (and model.max_length)"
        )
    return fitting, len(problems) - len(fitting)


def load_benchmarks(recipe: Recipe, registries: Any) -> list[tuple[Any, list[Problem]]]:
    """Each of ``eval.benchmarks`` built and read (nothing when evaluation is off)."""
    if recipe.eval.every == 0:
        return []
    out = []
    for spec in recipe.eval.benchmarks:
        bench = registries["benchmark"].build(
            spec.name, spec.options, BuildContext(seed=recipe.run.seed)
        )
        out.append((bench, bench.load()))
    return out


def build_eval_sets(
    recipe: Recipe,
    registries: Any,
    ctx: BuildContext,
    prompts: PromptBuilder,
    verifier: Any,
    held_out: list[Problem],
    routes: dict[str, tuple[Any, Any]],
    benchmarks: list[tuple[Any, list[Problem]]],
) -> list[Any]:
    """What evaluation runs on: each of ``eval.benchmarks`` (its problems whose prompts fit,
    the first ``eval.size`` with a warning when that cuts it; its own verifier and sampling
    unless eval.k/temperature/top_p are set), or else one unnamed set of the eval task or
    held-out problems with the recipe's verifier."""
    from cgrpo.train.evaluation import EvalSet, source_sets

    ev = recipe.eval
    if ev.every == 0:
        return []
    if not ev.benchmarks:
        if not held_out:
            return []
        k, temperature, top_p = ev.task_sampling()
        spec = (recipe.verifier.name, dict(recipe.verifier.options))
        return [EvalSet("", held_out, verifier, spec, k, temperature, top_p, routes=routes)]
    sets = []
    limit = recipe.data.prompt.max_prompt_tokens
    for i, (spec, (bench, all_problems)) in enumerate(zip(ev.benchmarks, benchmarks, strict=True)):
        where = f"eval.benchmarks[{i}] ({bench.name})"
        problems = fitting_problems(all_problems, prompts, limit, where)
        if not problems:
            raise DataError(
                f"{where}: no problem fits data.prompt.max_prompt_tokens={limit}; raise it "
                "(and model.max_length)"
            )
        name, options = bench.verifier
        whole = EvalSet(
            bench.name,
            problems,
            registries["verifier"].build(name, options, ctx),
            (name, dict(options)),
            ev.k or bench.k,
            ev.temperature or bench.temperature,
            ev.top_p or bench.top_p,
            bench.category,
            {"benchmark": spec.name, "options": spec.options, **bench.describe()},
            own_k=bench.k,
        )
        # one set per data source, if the rows name them (eval.k: 1 = greedy only: the
        # repeated rows of a source are not sampled either)
        for part in source_sets(whole, sample_repeats=ev.k != 1):
            sets.append(_first(part, ev.size, f"eval.benchmarks[{i}] ({part.name})"))
    return sets


def _first(s: Any, size: int | None, where: str) -> Any:
    """An evaluation set cut to its first ``size`` problems (eval.size), with a warning."""
    if size is not None and size < len(s.problems):
        log.warning(
            "%s: evaluating the first %d of its %d problems (eval.size)",
            where,
            size,
            len(s.problems),
        )
        s.problems = s.problems[:size]
    return s


def fitting_problems(
    problems: list[Problem], prompts: PromptBuilder, limit: int, what: str
) -> list[Problem]:
    """The problems whose prompts fit ``limit`` tokens. The rest are named on the console
    (file:line for file tasks, the first few) with the count."""
    fitting, over = [], []
    for p in problems:
        (fitting if len(prompts.prompt_ids(p)) <= limit else over).append(p)
    if over:
        named = ", ".join(str(p.metadata.get("source", f"id {p.id}")) for p in over[:3])
        more = f" and {len(over) - 3} more" if len(over) > 3 else ""
        log.warning(
            "%s: %d of %d problems have prompts over data.prompt.max_prompt_tokens=%d and "
            "are skipped: %s%s",
            what,
            len(over),
            len(problems),
            limit,
            named,
            more,
        )
    return fitting


def _split_eval(
    recipe: Recipe,
    registries: Any,
    ctx: BuildContext,
    problems: list[Problem],
    prompts: PromptBuilder,
    route_specs: dict[str, tuple[str, dict[str, Any]]],
) -> tuple[list[Problem], list[Problem]]:
    """(training problems, evaluation problems). ``eval.task``: its problems (the first
    ``eval.size`` when set), those whose prompts fit; the console says how many were
    dropped or left out. Without it a seeded hold-out of ``eval.size`` problems (64) is
    removed from training. A mixture eval.task adds its sources' verifiers to
    ``route_specs``."""
    ev = recipe.eval
    if ev.every == 0 or ev.benchmarks:
        return problems, []
    if ev.task is not None:
        task = registries["task"].build(ev.task.name, ev.task.options, ctx)
        loaded = task.load()
        for label, spec in getattr(task, "verifiers", {}).items():
            if route_specs.setdefault(label, spec) != spec:
                raise DataError(
                    f"mixture source {label!r} has one verifier in data.task and another in "
                    "eval.task; give one of them another label"
                )
        held = fitting_problems(loaded, prompts, recipe.data.prompt.max_prompt_tokens, "eval.task")
        if not held:
            raise DataError(
                f"no problem of eval.task fits data.prompt.max_prompt_tokens="
                f"{recipe.data.prompt.max_prompt_tokens}; raise it (and model.max_length)"
            )
        if ev.size is not None and ev.size < len(held):
            log.warning(
                "eval.task: evaluating the first %d of its %d problems (eval.size)",
                ev.size,
                len(held),
            )
            held = held[: ev.size]
        return problems, held
    size = ev.holdout_size
    too_many = holdout_takes_all(size, len(problems))
    if too_many:
        raise DataError(too_many)
    order = list(range(len(problems)))
    random.Random(f"holdout:{recipe.run.seed}").shuffle(order)
    held = set(order[:size])
    return (
        [p for i, p in enumerate(problems) if i not in held],
        [problems[i] for i in sorted(held)],
    )

"""Validate a whole recipe and report every problem at once.

Three passes, all run even when an earlier one found problems, so a user fixes a recipe
in one edit: (1) the schema (pydantic), (2) each component's name and own ``Options``,
(3) cross-field checks that GRPO users keep tripping over (group sizes, batch divisions,
the refinement context budget, secrets written into the recipe), and settings that the
others make meaningless (``ignored_settings()`` of each section and component options):
a setting is either used or refused, never accepted and ignored.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from cgrpo.config.schema import COMPONENT_PATHS, ComponentSpec, Recipe
from cgrpo.errors import ConfigIssue, RecipeError, UnknownComponentError
from cgrpo.registry import closest

SECRET_KEYS = {"api_key", "apikey", "secret", "password", "token", "access_token", "auth"}


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model class reached by following ``loc`` from ``model``."""
    current: Any = model
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(str(part))
        if field is None:
            return None
        current = field.annotation
        for arg in getattr(current, "__args__", ()) or ():  # Optional[Model]
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                current = arg
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def issues_from_validation(
    exc: ValidationError, model: type[BaseModel], prefix: str = ""
) -> list[ConfigIssue]:
    """Turn pydantic errors into dotted-path issues with hints."""
    issues = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if p not in ("function-after", "function-before"))
        path = ".".join(filter(None, [prefix, _dotted(loc)]))
        kind = err["type"]
        if kind == "extra_forbidden":
            parent = _model_at(model, loc[:-1])
            valid = sorted(parent.model_fields) if parent else []
            guess = closest(str(loc[-1]), valid)
            hint = (f"did you mean {guess!r}? " if guess else "") + (
                f"valid keys here: {', '.join(valid)}" if valid else "remove it"
            )
            issues.append(ConfigIssue(path, "unknown key", hint))
        elif kind == "missing":
            issues.append(ConfigIssue(path, "required key is missing", "add it to the recipe"))
        else:
            got = err.get("input")
            shown = "" if isinstance(got, dict | list) else f" (got {got!r})"
            msg = err["msg"].removeprefix("Value error, ")
            issues.append(ConfigIssue(path, f"{msg}{shown}"))
    return issues


def _get(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def _default_spec(path: str) -> ComponentSpec | None:
    """The schema's default component at ``path`` (None where the field is required)."""
    model: Any = Recipe
    *parents, last = path.split(".")
    for part in parents:
        model = _model_at(model, (part,))
    field = model.model_fields[last]
    return None if field.is_required() else field.get_default(call_default_factory=True)


@functools.cache
def strict_options(options: type[BaseModel]) -> type[BaseModel]:
    """``options`` checked as if it forbade unknown keys. A plugin's ``Options`` model that
    does not say (pydantic's default is to drop them) would otherwise accept a mistyped
    option and silently ignore it; ``extra="allow"`` is a plugin's explicit choice, kept."""
    if options.model_config.get("extra") in ("forbid", "allow"):
        return options
    config = ConfigDict(**{**options.model_config, "extra": "forbid"})  # type: ignore[typeddict-item]
    return type(
        options.__name__, (options,), {"model_config": config, "__module__": options.__module__}
    )


def with_default_component_names(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw``, changed in place, where a component section that gives options but no ``name``
    (``policy.options.x=1`` on a recipe with no ``policy`` section) names the schema's
    default component, for both the schema pass and the options pass. A required section
    (``data.task``) without a name is left for the schema pass to report."""
    for path in COMPONENT_PATHS:
        spec = _get(raw, path)
        if isinstance(spec, dict) and "name" not in spec:
            default = _default_spec(path)
            if default is not None:
                spec["name"] = default.name
    return raw


def component_issues(raw: dict[str, Any], registries: Any) -> tuple[list[ConfigIssue], dict]:
    """Check every component name and its options; returns issues and validated options."""
    issues: list[ConfigIssue] = []
    validated: dict[str, BaseModel] = {}
    observers = raw.get("observers") if isinstance(raw, dict) else None
    listed = (
        [(f"observers[{i}]", "observer", spec) for i, spec in enumerate(observers)]
        if isinstance(observers, list)
        else []
    )
    benchmarks = _get(raw, "eval.benchmarks")
    if isinstance(benchmarks, list):
        listed += [(f"eval.benchmarks[{i}]", "benchmark", s) for i, s in enumerate(benchmarks)]
    fixed = [(path, kind, _get(raw, path)) for path, kind in COMPONENT_PATHS.items()]
    for path, kind, spec in fixed + listed:
        if spec is None:
            spec = _default_spec(path)
            if spec is None:
                continue  # a required section: the schema pass reports it missing
        try:
            spec = ComponentSpec.model_validate(spec)
        except ValidationError:
            # the schema pass reports the section's own problem (an unknown key, ...); the
            # name is still checked, so that every problem is reported at once
            name = spec.get("name") if isinstance(spec, dict) else None
            if isinstance(name, str):
                issues += _unknown_name_issues(registries, kind, path, name)
            continue
        name_issues = _unknown_name_issues(registries, kind, path, spec.name)
        if name_issues:
            issues += name_issues
            continue
        comp = registries[kind].get(spec.name)
        strict = strict_options(comp.options)
        try:
            if strict is not comp.options:  # only to refuse unknown keys
                strict.model_validate(spec.options)
            validated[path] = comp.options.model_validate(spec.options)
        except ValidationError as exc:
            issues += issues_from_validation(exc, comp.options, prefix=f"{path}.options")
            continue
        issues += ignored_setting_issues(validated[path], f"{path}.options")
    return issues, validated


def _unknown_name_issues(registries: Any, kind: str, path: str, name: str) -> list[ConfigIssue]:
    try:
        registries[kind].get(name)
    except UnknownComponentError as exc:
        hint = f"did you mean {exc.suggestion!r}? " if exc.suggestion else ""
        hint += f"available: {', '.join(exc.available) or '(none)'}"
        return [ConfigIssue(f"{path}.name", f"unknown {kind} {name!r}", hint)]
    return []


def _ignored(model: BaseModel) -> dict[str, str]:
    rules = getattr(model, "ignored_settings", None)
    return rules() if callable(rules) else {}


def _sub_models(model: BaseModel) -> Iterator[tuple[str, BaseModel]]:
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            yield name, value


def ignored_setting_issues(model: BaseModel, path: str = "") -> list[ConfigIssue]:
    """Every field the recipe sets (explicitly, or through ``extends:``) that the model's
    ``ignored_settings()`` says its other settings make meaningless, in the whole tree.
    A field set to null where null is its default counts as not set: ``sft.optim=null`` is
    how an override takes back a section that an extended recipe gives."""
    issues = []
    for name, why in _ignored(model).items():
        unset = getattr(model, name) is None and type(model).model_fields[name].default is None
        if name in model.model_fields_set and not unset:
            where = f"{path}.{name}" if path else name
            reason, _, fix = why.partition("; ")
            issues.append(ConfigIssue(where, f"{name} {reason}", fix))
    for name, sub in _sub_models(model):
        issues += ignored_setting_issues(sub, f"{path}.{name}" if path else name)
    return issues


def applicable_dump(model: BaseModel) -> dict[str, Any]:
    """``model.model_dump(mode="json")`` without the fields its settings make meaningless:
    the resolved recipe a run saves, which validates again when run as it is."""
    data = model.model_dump(mode="json")
    _prune(model, data)
    return data


def _prune(model: BaseModel, data: dict[str, Any]) -> None:
    for name in _ignored(model):
        data.pop(name, None)
    for name, sub in _sub_models(model):
        if isinstance(data.get(name), dict):
            _prune(sub, data[name])


def _secret_issues(data: Any, path: str = "") -> list[ConfigIssue]:
    issues = []
    if isinstance(data, dict):
        for key, value in data.items():
            sub = f"{path}.{key}" if path else str(key)
            if str(key).lower() in SECRET_KEYS and isinstance(value, str) and value:
                issues.append(
                    ConfigIssue(
                        sub,
                        "secrets must not be written in a recipe (it is saved with the run)",
                        f"export the key in an environment variable and name it, e.g. "
                        f"{key}_env: MY_{str(key).upper()}",
                    )
                )
            else:
                issues += _secret_issues(value, sub)
    elif isinstance(data, list):
        for i, value in enumerate(data):
            issues += _secret_issues(value, f"{path}[{i}]")
    return issues


def _eval_issues(r: Recipe) -> list[ConfigIssue]:
    """Benchmarks listed twice under one name, and a train.keep_best that no evaluation
    would ever log (the best checkpoint would silently never be kept)."""
    out: list[ConfigIssue] = []
    labels = [str(b.options.get("label") or b.name) for b in r.eval.benchmarks]
    for i, label in enumerate(labels):
        if label in labels[:i]:
            out.append(ConfigIssue(
                f"eval.benchmarks[{i}]", f"{label} is listed twice (its metrics would mix)",
                "give one options.label"))  # fmt: skip
    key = r.train.keep_best
    if key is None or not key.startswith("eval/"):
        return out
    if r.eval.every == 0:
        out.append(ConfigIssue("train.keep_best", f"{key} is never logged: evaluation is off",
                               "set eval.every"))  # fmt: skip
    elif labels:
        name, _, metric = key[len("eval/") :].partition("/")
        known = [*labels, "avg", "avg_math"]
        if not metric or name not in known:
            out.append(ConfigIssue(
                "train.keep_best", f"{key} is not an evaluation metric of this recipe",
                f"use eval/<benchmark>/<metric> with a benchmark among {', '.join(known)}, "
                "e.g. eval/avg/score"))  # fmt: skip
    return out


def _verify_workers_issues(
    r: Recipe, options: dict[str, BaseModel], registries: Any
) -> list[ConfigIssue]:
    """run.verify_workers set while none of the recipe's verifiers (its own, a mixture
    source's, a benchmark's) runs in worker processes: the setting would do nothing."""
    if "verify_workers" not in r.run.model_fields_set:
        return []
    specs = [(r.verifier.name, r.verifier.options)]
    for path, opts in options.items():
        if path.startswith("eval.benchmarks[") and r.eval.every == 0:
            continue
        nested = [getattr(opts, "verifier", None)]
        nested += [s.verifier for s in getattr(opts, "sources", None) or []]
        specs += [(v.name, v.options) for v in nested if v is not None]
    if any(_in_processes(registries, name, opts) for name, opts in specs):
        return []
    return [ConfigIssue(
        "run.verify_workers",
        "has no effect: no verifier of this recipe runs in worker processes (those that opt "
        "in do: math, python, weighted with one of them)",
        "remove it",
    )]  # fmt: skip


def _in_processes(registries: Any, name: str, options: Any) -> bool:
    """Whether verifier ``name`` opts in to worker processes; a composed verifier (weighted)
    does when one of its parts does."""
    if name not in registries["verifier"]:
        return False  # reported as an unknown name elsewhere
    if getattr(registries["verifier"].get(name).factory, "verify_in_processes", False):
        return True
    parts = (options or {}).get("parts") if isinstance(options, dict) else None
    return any(
        isinstance(p, dict) and _in_processes(registries, p.get("name"), p.get("options"))
        for p in parts or []
    )


def cross_issues(r: Recipe) -> list[ConfigIssue]:
    """Checks that need several fields at once."""
    out: list[ConfigIssue] = _eval_issues(r)
    a = r.algorithm
    g, k = a.samples_per_prompt, a.refinements_per_prompt
    n = g + k
    if k == 0 and g < 2:
        out.append(
            ConfigIssue(
                "algorithm.samples_per_prompt",
                f"plain GRPO (K=0) needs G >= 2 samples per prompt, got {g}",
                "set samples_per_prompt to 2 or more, or refinements_per_prompt >= 1",
            )
        )
    if k >= 1:
        most = min(g, a.max_refinements_generated or g)
        if k > most:
            out.append(
                ConfigIssue(
                    "algorithm.refinements_per_prompt",
                    f"K={k} refinements cannot be kept: at most {most} are "
                    "generated per prompt (one per initial response, capped by "
                    "max_refinements_generated)",
                    f"set refinements_per_prompt <= {most}",
                )
            )
    if a.prompts_per_step % a.updates_per_step:
        ok = [d for d in range(1, a.prompts_per_step + 1) if a.prompts_per_step % d == 0]
        out.append(
            ConfigIssue(
                "algorithm.updates_per_step",
                f"{a.prompts_per_step} prompts per step cannot be split into "
                f"{a.updates_per_step} mini-batches of whole groups",
                f"use one of {ok}",
            )
        )
    else:
        rows = a.prompts_per_step // a.updates_per_step * n
        if a.micro_batch_tokens is None and (
            a.micro_batch_size > rows or rows % a.micro_batch_size
        ):
            ok = [d for d in range(1, rows + 1) if rows % d == 0]
            out.append(
                ConfigIssue(
                    "algorithm.micro_batch_size",
                    f"a mini-batch holds {rows} sequences (P/updates x N = "
                    f"{a.prompts_per_step}/{a.updates_per_step} x {n}); "
                    f"{a.micro_batch_size} does not divide it",
                    f"use one of {ok}",
                )
            )
    budget = r.model.max_length
    cap = a.max_tokens_per_micro_batch
    if cap is not None and cap < budget:
        out.append(
            ConfigIssue(
                "algorithm.max_tokens_per_micro_batch",
                f"{cap} is less than model.max_length {budget}: the longest sequence "
                "would not fit a micro-batch of its own",
                f"set it to at least {budget}",
            )
        )
    prompt = r.data.prompt.max_prompt_tokens
    new = r.sampling.max_new_tokens
    if prompt + new > budget:
        out.append(
            ConfigIssue(
                "model.max_length",
                f"prompt ({prompt}) + response ({new}) = {prompt + new} tokens "
                f"exceeds the context budget {budget}",
                "raise model.max_length or lower data.prompt.max_prompt_tokens / "
                "sampling.max_new_tokens",
            )
        )
    if k >= 1:
        ref = r.refinement
        # the template's own words and the chat framing, estimated without a tokenizer
        # (~3 characters per token; a prompt that still does not fit at run time is
        # skipped and counted in refine/skipped_too_long)
        fixed = re.sub(r"\{(question|response|critique)\}", "", ref.template)
        framing = len(fixed) // 3 + (16 if r.data.prompt.chat_template else 0)
        need = prompt + ref.max_critique_tokens + ref.min_previous_response_tokens + new + framing
        if need > budget:
            out.append(
                ConfigIssue(
                    "refinement",
                    f"a refinement prompt needs question ({prompt}) + previous "
                    f"response (>= {ref.min_previous_response_tokens}) + critique "
                    f"({ref.max_critique_tokens}) + template and chat framing (~{framing}) + "
                    f"refinement ({new}) = {need} tokens, over model.max_length {budget}",
                    "raise model.max_length or lower refinement.max_critique_tokens"
                    " / min_previous_response_tokens",
                )
            )
        try:
            ref.template.format(question="q", response="r", critique="c")
        except (KeyError, IndexError, ValueError) as exc:
            out.append(
                ConfigIssue(
                    "refinement.template",
                    f"cannot be filled: {exc!r}",
                    "use only {question}, {response}, {critique}; "
                    "write {{ and }} for literal braces",
                )
            )
        if "{critique}" not in ref.template:
            out.append(
                ConfigIssue(
                    "refinement.template",
                    "does not contain {critique}",
                    "the refinement prompt must show the critique",
                )
            )
    if "{question}" not in r.data.prompt.template:
        out.append(
            ConfigIssue(
                "data.prompt.template", "does not contain {question}", "e.g. template: '{question}'"
            )
        )
    loss = a.loss
    if loss.normalizer != "auto" and loss.aggregation != "token_sum":
        out.append(
            ConfigIssue(
                "algorithm.loss.normalizer",
                f"only used with aggregation 'token_sum' (got '{loss.aggregation}')",
                "remove it or set aggregation: token_sum",
            )
        )
    if loss.tis_cap is not None and a.old_logprobs != "recompute":
        out.append(
            ConfigIssue(
                "algorithm.loss.tis_cap",
                "importance correction compares the trainer's recomputed "
                "log-probs with the sampler's; there is nothing to correct when "
                "the sampler's are used as old log-probs",
                "set algorithm.old_logprobs: recompute, or remove tis_cap",
            )
        )
    if r.distributed.strategy == "fsdp" and r.model.lora is not None:
        out.append(
            ConfigIssue(
                "distributed.strategy",
                "fsdp with model.lora is not supported: LoRA's trainable state is a few "
                "megabytes and its frozen base is held in the compute dtype, so sharding "
                "buys little, and peft's adapter-disabled reference does not compose with "
                "FSDP's sharded forward",
                "use distributed.strategy: ddp with model.lora (each GPU holds the bf16 "
                "base), or remove model.lora to shard full training",
            )
        )
    if r.distributed.strategy == "fsdp" and r.sft.steps and r.sft.save_every:
        out.append(
            ConfigIssue(
                "sft.save_every",
                "warm-up checkpoints are not written under fsdp yet (its model and "
                "optimizer are sharded and need the collective checkpoint RL steps use)",
                "remove sft.save_every: a killed warm-up then reruns from its start and "
                "ends with the same weights, or warm up with distributed.strategy: ddp",
            )
        )
    if "memory_check" in r.run.model_fields_set and r.model.device == "cpu":
        out.append(
            ConfigIssue(
                "run.memory_check",
                "the memory plan is checked only on GPU; with model.device: cpu it would "
                "be ignored",
                "remove run.memory_check, or train on a GPU (model.device: auto or cuda)",
            )
        )
    if r.train.steps == 0 and r.sft.steps == 0:
        out.append(
            ConfigIssue(
                "train.steps",
                "train.steps: 0 runs only the SFT warm-up, but sft.steps is 0 too: nothing to do",
                "set sft.steps > 0 (a warm-up-only run), or train.steps > 0",
            )
        )
    out += _creation_issues(r)
    out += _throughput_issues(r)
    path = r.model.path
    local = path.startswith((".", "/", "~")) or Path(path).exists()
    if local and r.model.create is None and not Path(path).expanduser().is_dir():
        out.append(
            ConfigIssue(
                "model.path",
                f"directory not found: {path}",
                "fix the path, or add model.create to build a tiny model there",
            )
        )
    return out


def _throughput_issues(r: Recipe) -> list[ConfigIssue]:
    """Packed micro-batches must hold the longest sequence; the hf backend's compiled
    CUDA-graph decode needs CUDA."""
    out = []
    tokens = r.algorithm.micro_batch_tokens
    if tokens is not None and tokens < r.model.max_length:
        out.append(
            ConfigIssue(
                "algorithm.micro_batch_tokens",
                f"{tokens} is less than model.max_length {r.model.max_length}: the longest "
                "sequence would not fit a micro-batch of its own",
                f"set it to at least {r.model.max_length}",
            )
        )
    options = r.policy.options or {}
    if r.policy.name == "hf" and options.get("decode") == "compiled" and r.model.device == "cpu":
        out.append(
            ConfigIssue(
                "policy.options.decode",
                "'compiled' captures the decode step in CUDA graphs, which needs CUDA, but "
                "model.device is cpu",
                "remove it (auto: compiled on CUDA, eager on CPU), or set it to eager",
            )
        )
    return out


def _creation_issues(r: Recipe) -> list[ConfigIssue]:
    """``model.create`` builds a random model where none exists: only under the working
    directory or ``run.output_dir`` (unless ``model.create.anywhere``), so a mistyped
    ``model.path=/models/Qwen3-8b`` is an error instead of a new random model."""
    create = r.model.create
    target = Path(r.model.path).expanduser()
    if create is None or create.anywhere or (target / "config.json").exists():
        return []
    here = Path.cwd().resolve()
    allowed = [here, (here / r.run.output_dir).resolve()]
    resolved = (here / target).resolve()
    if any(resolved == a or a in resolved.parents for a in allowed):
        return []
    return [
        ConfigIssue(
            "model.path",
            f"{r.model.path} holds no model, and model.create would build a random tiny "
            f"one there, outside the working directory {here} and run.output_dir",
            "fix model.path if it names an existing model; to create a tiny model there on "
            "purpose set model.create.anywhere=true",
        )
    ]


def validate_recipe(
    raw: dict[str, Any], registries: Any = None, source: str | None = None
) -> Recipe:
    """Return the validated :class:`Recipe` (component options filled with their defaults)
    or raise :class:`RecipeError` with every problem found."""
    if registries is None:
        from cgrpo.plugins import get_registries

        registries = get_registries()
    raw = with_default_component_names(raw)
    issues = _secret_issues(raw)
    recipe = None
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        issues += issues_from_validation(exc, Recipe)
    comp_issues, options = component_issues(raw, registries)
    issues += comp_issues
    if recipe is not None:
        issues += cross_issues(recipe)
        issues += ignored_setting_issues(recipe)
        issues += _verify_workers_issues(recipe, options, registries)
    if issues or recipe is None:
        secret_paths = {i.path for i in issues if i.message.startswith("secrets")}
        issues = [
            i for i in issues if i.path not in secret_paths or i.message.startswith("secrets")
        ]
        raise RecipeError(_dedupe(issues), source)
    for path, opts in options.items():
        _spec_at(recipe, path).options = applicable_dump(opts)
    return recipe


def _spec_at(recipe: Recipe, path: str) -> ComponentSpec:
    """The component section at ``path`` (``data.task``, ``observers[1]``)."""
    if path.startswith("observers["):
        return recipe.observers[int(path[len("observers[") : -1])]
    if path.startswith("eval.benchmarks["):
        return recipe.eval.benchmarks[int(path[len("eval.benchmarks[") : -1])]
    spec: Any = recipe
    for part in path.split("."):
        spec = getattr(spec, part)
    return spec


def _dedupe(issues: list[ConfigIssue]) -> list[ConfigIssue]:
    seen, out = set(), []
    for issue in issues:
        key = (issue.path, issue.message)
        if key not in seen:
            seen.add(key)
            out.append(issue)
    return out

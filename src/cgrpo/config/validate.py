"""Validate a whole recipe and report every problem at once.

Three passes, all run even when an earlier one found problems, so a user fixes a recipe
in one edit: (1) the schema (pydantic), (2) each component's name and own ``Options``,
(3) cross-field checks that GRPO users keep tripping over (group sizes, batch divisions,
the refinement context budget: the table of named rules in :mod:`cgrpo.config.rules`),
secrets written into the recipe, and settings that the
others make meaningless (``ignored_settings()`` of each section and component options):
a setting is either used or refused, never accepted and ignored.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from cgrpo.config import baseline_rules  # noqa: F401  (registers its rules)
from cgrpo.config.rules import cross_issues
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


def _verify_workers_issues(
    r: Recipe, options: dict[str, BaseModel], registries: Any
) -> list[ConfigIssue]:
    """run.verify_workers set while none of the recipe's verifiers (its own, a mixture
    source's, a benchmark's) runs in worker processes: the setting would do nothing."""
    if not r.run.changes("verify_workers"):
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

"""YAML -> plain data with OmegaConf (the only module that uses it) -> validated Recipe.

OmegaConf gives us ``key=value`` overrides, ``${...}`` interpolations and ``extends:``
(a recipe may start from another one, path relative to itself). Validation is done by
pydantic and :mod:`cgrpo.config.validate`, which report every problem at once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cgrpo.config.schema import COMPONENT_PATHS, Recipe
from cgrpo.errors import ConfigIssue, RecipeError

log = logging.getLogger(__name__)


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> DictConfig:
    if not path.is_file():
        raise RecipeError(
            [ConfigIssue("", f"recipe file not found: {path}", "check the path")], str(path)
        )
    if path.resolve() in seen:
        chain = " -> ".join(str(p) for p in (*seen, path.resolve()))
        raise RecipeError([ConfigIssue("extends", f"circular extends: {chain}")], str(path))
    try:
        cfg = OmegaConf.load(path)
    except Exception as exc:  # yaml.YAMLError and OmegaConf errors; show the parser's words
        raise RecipeError(
            [ConfigIssue("", f"cannot parse YAML: {exc}", "fix the YAML syntax at that line")],
            str(path),
        ) from exc
    if not isinstance(cfg, DictConfig):
        raise RecipeError([ConfigIssue("", "a recipe must be a YAML mapping")], str(path))
    base = cfg.pop("extends", None)
    if base is not None:
        target = (path.parent / str(base)).resolve()
        if not target.is_file():
            raise RecipeError(
                [
                    ConfigIssue(
                        "extends",
                        f"the recipe it extends, {base!r}, is not a file (looked for {target})",
                        "extends: takes a path relative to the recipe that holds it",
                    )
                ],
                str(path),
            )
        parent = _read_yaml(target, (*seen, path.resolve()))
        _drop_switched(parent, cfg, f"{path.name} (extends {base})")
        _drop_replaced(parent, cfg)
        cfg = OmegaConf.merge(parent, cfg)
    return cfg


def _drop_switched(parent: DictConfig, child: DictConfig, why: str, prefix: str = "") -> None:
    """Before ``extends:`` merges ``child`` over ``parent``: where the child switches a
    section's ``mode`` (``clip: {mode: none}``), the parent's other keys there belong to the
    old mode and are dropped; where it switches a component's ``name``, the parent's
    ``options`` are dropped (as ``critic.name=...`` on the command line does). Otherwise
    they would be set for a mode that does not use them, which validation refuses."""
    for key, value in child.items():
        old = parent.get(key)
        if not (isinstance(value, DictConfig) and isinstance(old, DictConfig)):
            continue
        path = f"{prefix}.{key}" if prefix else str(key)
        if "mode" in value and old.get("mode") != value.get("mode"):
            parent[key] = {}
        elif "name" in value and old.get("name") != value.get("name"):
            _say_dropped(path, old, value, why)
            old.pop("options", None)
        else:
            _drop_switched(old, value, why, path)


# section -> {key: the older keys it replaces}. A child recipe (or an override) that gives
# the newer key drops the inherited older one, which validation would otherwise refuse as
# ignored: a recipe extending one with ``sft.lr`` can still switch to ``sft.optim``.
REPLACED_KEYS: dict[str, dict[str, tuple[str, ...]]] = {"sft": {"optim": ("lr",)}}

# section -> {key: {value: the older keys that value makes meaningless}}: as REPLACED_KEYS,
# but only when the child (or an override) sets the key to that value: a recipe extending
# one with ``fallback: first`` can still switch to ``selection: random``.
# A fine-tuning objective (RAFT, refinement/critique/CITL FT) switches off the policy
# gradient's settings: the extended recipe's selection, fallback, advantage,
# demonstrations and loss (the child's own loss, if any, replaces the parent's whole:
# entropy_coef, kl_coef).
_POLICY_GRADIENT_ONLY = ("selection", "fallback", "advantage", "demonstrations", "loss")
SWITCHED_OFF: dict[str, dict[str, dict[str, tuple[str, ...]]]] = {
    "algorithm": {
        "selection": {"random": ("fallback",)},
        "objective": {
            name: _POLICY_GRADIENT_ONLY
            for name in ("raft", "refinement_ft", "critique_ft", "citl_ft")
        },
    }
}


def _made_meaningless(section: str, key: str, value: Any) -> tuple[str, ...]:
    """The keys of ``section`` that setting ``key`` to ``value`` replaces or switches off."""
    older = REPLACED_KEYS.get(section, {}).get(key, ())
    switched = SWITCHED_OFF.get(section, {}).get(key, {})
    return older + (switched.get(value, ()) if isinstance(value, str) else ())


def _drop_replaced(parent: DictConfig, child: DictConfig) -> None:
    """Before ``extends:`` merges ``child`` over ``parent``: drop the parent's keys that a
    key the child sets replaces or switches off (``REPLACED_KEYS``, ``SWITCHED_OFF``),
    unless the child sets them too."""
    for section in {*REPLACED_KEYS, *SWITCHED_OFF}:
        old, new = parent.get(section), child.get(section)
        if not (isinstance(old, DictConfig) and isinstance(new, DictConfig)):
            continue
        for key in new:
            for gone in _made_meaningless(section, str(key), new.get(key)):
                if gone not in new or gone == "loss":  # a loss section is replaced whole
                    old.pop(gone, None)


def _expand_shorthand(cfg: DictConfig, key: str) -> None:
    """``policy: vllm`` followed by ``policy.options.x=1``: turn the shorthand string into
    ``{name: vllm}`` so the deeper key lands beside the name instead of replacing it."""
    for section in COMPONENT_PATHS:
        if key.startswith(section + ".") and isinstance(
            OmegaConf.select(cfg, section, default=None), str
        ):
            OmegaConf.update(cfg, section, {"name": OmegaConf.select(cfg, section)}, merge=False)


def apply_overrides(cfg: DictConfig, overrides: Sequence[str], source: str) -> DictConfig:
    """Apply ``key=value`` overrides (values parsed as YAML), in order.

    Switching a component drops the options of the old one, which would not fit the new
    one: a scalar given for a component section (``policy=vllm``) replaces the section, and
    ``critic.name=openai`` empties ``critic.options`` (later overrides can fill it again).
    """
    issues = []
    for item in overrides:
        key, sep, _ = item.partition("=")
        if not sep or not key.strip():
            issues.append(
                ConfigIssue(
                    item,
                    "an override must look like key=value",
                    "e.g. algorithm.samples_per_prompt=8",
                )
            )
            continue
        try:
            _apply_override(cfg, key.strip(), item)
        except OmegaConfBaseException as exc:
            issues.append(ConfigIssue(key, f"cannot apply override: {exc}"))
        except yaml.YAMLError as exc:  # the value is not valid YAML
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            issues.append(
                ConfigIssue(
                    key.strip(),
                    f"the value of override {item!r} is not valid YAML: {problem}",
                    "close brackets, braces and quotes; quote the whole override for the "
                    "shell, e.g. 'algorithm.loss.clip={mode: symmetric, eps: 0.2}'",
                )
            )
    if issues:
        raise RecipeError(issues, source)
    return cfg


def _apply_override(cfg: DictConfig, key: str, item: str) -> None:
    """Apply one ``key=value`` override. A value that names another component than the
    one there (``critic=self``, ``critic.name=self``, ``critic={name: self, ...}``, or a
    section holding one: ``data={task: {name: jsonl, ...}}``) starts from the new
    component's options: the old ones are dropped, and said so."""
    parsed = OmegaConf.select(OmegaConf.from_dotlist([item]), key)
    existing = OmegaConf.select(cfg, key, default=None)
    _expand_shorthand(cfg, key)
    _drop_replaced_by_override(cfg, key, parsed)
    _drop_switched_options(cfg, key, parsed, f"override {item!r}")
    replace = isinstance(existing, DictConfig) and not isinstance(parsed, DictConfig)
    OmegaConf.update(cfg, key, parsed, merge=not replace, force_add=True)


def _drop_switched_options(cfg: DictConfig, key: str, value: Any, why: str) -> None:
    """Before ``key=value`` is merged: drop (and name) the options of every component at
    or under ``key`` that ``value`` switches to another one, so the merge leaves only the
    new component's; ``P.name=other`` does the same for the component at ``P``."""
    parent_key, _, leaf = key.rpartition(".")
    for path in COMPONENT_PATHS:
        if path == key:
            new = value
        elif path.startswith(key + ".") and isinstance(value, DictConfig):
            new = OmegaConf.select(value, path[len(key) + 1 :], default=None)
        elif path == parent_key and leaf == "name":
            new = value
        else:
            continue
        old = OmegaConf.select(cfg, path, default=None)
        if _switches(old, new):
            _say_dropped(path, old, new, why)
            if isinstance(old, DictConfig):
                old.pop("options", None)


def _component_name(spec: Any) -> Any:
    """The component a section (``{name: ..., options: ...}`` or its shorthand) names."""
    return spec.get("name") if isinstance(spec, DictConfig | dict) else spec


def _switches(existing: Any, new: Any) -> bool:
    """Whether ``new`` (a section, its shorthand or a bare name) names another component
    than ``existing``; a section without a name changes only options."""
    name = _component_name(new)
    return existing is not None and name is not None and name != _component_name(existing)


def _say_dropped(path: str, old: Any, new: Any, why: str) -> None:
    """Warn which of the old component's options a switch to another component drops
    (those the new value does not give again)."""
    options = old.get("options") if isinstance(old, DictConfig) else None
    given = new.get("options") if isinstance(new, DictConfig | dict) else None
    dropped = sorted(set(options or {}) - set(given or {}))
    if dropped:
        log.warning(
            "%s switches %s from %s to %s: the options of %s were dropped (%s)",
            why, path, _component_name(old), _component_name(new), _component_name(old),
            ", ".join(dropped),
        )  # fmt: skip


def _drop_replaced_by_override(cfg: DictConfig, key: str, value: Any) -> None:
    """An override of a newer key (``sft.optim.lr=...``) drops the older key it replaces
    (``sft.lr``), as a child recipe's would, and one switching a key to a value that makes
    others meaningless (``algorithm.selection=random``) drops those; the override comes
    last, so it wins."""
    section, _, rest = key.partition(".")
    section_cfg = cfg.get(section)
    if not isinstance(section_cfg, DictConfig):
        return
    for gone in _made_meaningless(section, rest.partition(".")[0], value):
        section_cfg.pop(gone, None)


def load_raw(path: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The recipe as plain resolved data (no validation)."""
    path = Path(path)
    cfg = apply_overrides(_read_yaml(path), overrides, str(path))
    try:
        data = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", "") or ""
        raise RecipeError(
            [
                ConfigIssue(
                    str(key),
                    f"cannot resolve interpolation: {exc.msg if hasattr(exc, 'msg') else exc}",
                    "check the ${...} reference",
                )
            ],
            str(path),
        ) from exc
    assert isinstance(data, dict)
    return data


def load_recipe(
    path: str | Path, overrides: Sequence[str] = (), registries: Any = None
) -> tuple[Recipe, dict[str, Any]]:
    """Load, override, resolve and validate a recipe; returns ``(recipe, resolved_data)``.

    Raises :class:`RecipeError` listing every problem found. Nothing heavy is built.
    """
    from cgrpo.config.validate import applicable_dump, validate_recipe

    raw = load_raw(path, overrides)
    recipe = validate_recipe(raw, registries=registries, source=str(path))
    return recipe, applicable_dump(recipe)

"""The plugin host: built-ins plus third-party packages, all through the same hooks.

Environment variables (read each time the host is built):

- ``CGRPO_LOAD_PLUGINS``: comma-separated entry-point names. When set, only these
  third-party plugins are loaded (set it to an empty string to load none).
- ``CGRPO_BLOCK_PLUGINS``: comma-separated plugin names never to load. Built-ins can be
  blocked too (``builtins.critics`` ...), e.g. to replace a built-in component by a
  plugin's component of the same name.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import pluggy

from cgrpo import hookspecs
from cgrpo.errors import PluginError
from cgrpo.registry import KINDS, Registry

ENTRY_POINT_GROUP = "cgrpo"

BUILTIN_PLUGINS = {
    "builtins.policies": "cgrpo.builtins.policies",
    "builtins.critics": "cgrpo.builtins.critics",
    "builtins.verifiers": "cgrpo.builtins.verifiers",
    "builtins.advantages": "cgrpo.builtins.advantages",
    "builtins.tasks": "cgrpo.builtins.tasks",
    "builtins.benchmarks": "cgrpo.builtins.benchmarks",
    "builtins.wrong_answers": "cgrpo.builtins.wrong_answers",
}

# kind -> the registration hook that fills its registry
_REGISTRATION_HOOKS = {
    "policy": "register_policy_backends",
    "critic": "register_critics",
    "verifier": "register_verifiers",
    "advantage": "register_advantage_schemes",
    "task": "register_tasks",
    "benchmark": "register_benchmarks",
    "wrong_answer": "register_wrong_answers",
    "observer": "register_observers",
}


def _names_from_env(var: str) -> set[str] | None:
    raw = os.environ.get(var)
    if raw is None:
        return None
    return {part.strip() for part in raw.split(",") if part.strip()}


def build_plugin_manager() -> pluggy.PluginManager:
    """A fresh PluginManager with the built-ins and the allowed third-party plugins."""
    pm = pluggy.PluginManager("cgrpo")
    pm.add_hookspecs(hookspecs)
    blocked = _names_from_env("CGRPO_BLOCK_PLUGINS") or set()
    only = _names_from_env("CGRPO_LOAD_PLUGINS")
    for name in blocked:
        pm.set_blocked(name)

    for name, module in BUILTIN_PLUGINS.items():
        if name not in blocked:
            pm.register(importlib.import_module(module), name=name)

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in blocked or (only is not None and ep.name not in only):
            continue
        if pm.has_plugin(ep.name):
            continue
        dist = getattr(ep.dist, "name", "?")
        try:
            plugin = ep.load()
        except Exception as exc:  # a broken plugin must say which one it is
            raise PluginError(
                f"plugin {ep.name!r} (package {dist}, {ep.value}) failed to import: {exc!r}. "
                f"Fix or uninstall it, or skip it with CGRPO_BLOCK_PLUGINS={ep.name}"
            ) from exc
        pm.register(plugin, name=ep.name)

    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(
            f"{exc}. Hook names must match cgrpo.hookspecs (e.g. register_critics)"
        ) from exc
    return pm


@dataclass
class Registries:
    """Every component registry, filled from one plugin manager."""

    pm: pluggy.PluginManager
    by_kind: dict[str, Registry[Any]] = field(default_factory=dict)

    def __getitem__(self, kind: str) -> Registry[Any]:
        return self.by_kind[kind]

    @property
    def hook(self) -> Any:
        return self.pm.hook


def collect_registries(pm: pluggy.PluginManager | None = None) -> Registries:
    """Call every registration hook, one plugin at a time so each component records which
    plugin registered it (duplicate names then name both plugins)."""
    pm = pm or build_plugin_manager()
    regs = Registries(pm)
    for kind in KINDS:
        registry: Registry[Any] = Registry(kind)
        hook = getattr(pm.hook, _REGISTRATION_HOOKS[kind])
        for impl in reversed(hook.get_hookimpls()):  # registration order

            def register(name, factory, options=None, _plugin=impl.plugin_name, _reg=registry):
                _reg.add(name, factory, options=options, plugin=_plugin)

            impl.function(register=register)
        regs.by_kind[kind] = registry
    return regs


_cached: Registries | None = None


def get_registries(refresh: bool = False) -> Registries:
    """The process-wide registries, built on first use (``refresh=True`` rebuilds them,
    e.g. after a test registered a plugin)."""
    global _cached
    if _cached is None or refresh:
        _cached = collect_registries()
    return _cached

"""Named component registries: name -> factory, options model and owning plugin."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from cgrpo.errors import PluginError, UnknownComponentError

T = TypeVar("T")

KINDS = (
    "policy",
    "critic",
    "verifier",
    "advantage",
    "task",
    "benchmark",
    "wrong_answer",
    "observer",
)


class NoOptions(BaseModel):
    """Options model of a component that takes none."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class Component:
    """One registered component."""

    kind: str
    name: str
    factory: Callable[..., Any]
    options: type[BaseModel]
    plugin: str

    @property
    def summary(self) -> str:
        """The docstring's first paragraph on one line (a first sentence may run over
        several lines)."""
        doc = inspect.getdoc(self.factory) or ""
        return " ".join(doc.strip().split("\n\n")[0].split())


def closest(name: str, candidates: list[str]) -> str | None:
    """The candidate closest to ``name`` (for "did you mean" hints), or None."""
    matches = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return matches[0] if matches else None


class Registry(Generic[T]):
    """Components of one kind, keyed by name."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Component] = {}

    def add(
        self,
        name: str,
        factory: Callable[..., T],
        *,
        options: type[BaseModel] | None = None,
        plugin: str,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin {plugin!r} registered a {self.kind} without a name")
        if not callable(factory):
            raise PluginError(f"plugin {plugin!r}: {self.kind} {name!r} factory is not callable")
        if name in self._items:
            other = self._items[name].plugin
            raise PluginError(
                f"{self.kind} {name!r} is registered by two plugins: {other!r} and {plugin!r}. "
                f"Uninstall one, or block one with CGRPO_BLOCK_PLUGINS={plugin}"
            )
        opts = options or getattr(factory, "Options", None) or NoOptions
        if not (isinstance(opts, type) and issubclass(opts, BaseModel)):
            raise PluginError(
                f"plugin {plugin!r}: {self.kind} {name!r} options must be a pydantic model class"
            )
        self._items[name] = Component(self.kind, name, factory, opts, plugin)

    def get(self, name: str) -> Component:
        try:
            return self._items[name]
        except KeyError:
            names = self.names()
            raise UnknownComponentError(self.kind, name, names, closest(name, names)) from None

    def problem_with(self, name: str, options: Mapping[str, Any]) -> str | None:
        """Why ``name`` with ``options`` cannot be built (unknown name, bad options), or
        None: for components that name other components inside their own options."""
        if name not in self._items:
            return f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}"
        try:
            self._items[name].options.model_validate(dict(options))
        except Exception as exc:
            return f"{self.kind} {name} options: {exc}"
        return None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __iter__(self) -> Iterator[Component]:
        return iter(self._items[n] for n in self.names())

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def build(self, name: str, options: Mapping[str, Any] | BaseModel | None, context: Any) -> T:
        """Validate ``options`` with the component's model and call its factory."""
        comp = self.get(name)
        opts = (
            options
            if isinstance(options, comp.options)
            else comp.options.model_validate(dict(options or {}))
        )
        return comp.factory(opts, context)

"""Recipes: YAML -> validated :class:`cgrpo.config.schema.Recipe` -> built components."""

from cgrpo.config.load import load_recipe
from cgrpo.config.schema import Recipe

__all__ = ["Recipe", "load_recipe"]

"""Recipes: YAML -> validated :class:`cgrpo.recipe.schema.Recipe` -> built components."""

from cgrpo.recipe.load import load_recipe
from cgrpo.recipe.schema import Recipe

__all__ = ["Recipe", "load_recipe"]

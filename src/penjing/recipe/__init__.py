"""Recipes: ordered compression steps, as YAML or Python, run by one pipeline that measures
after every step. This layer is the one place that knows every method."""

from penjing.recipe.context import RecipeContext
from penjing.recipe.runner import RecipeResult, run_recipe
from penjing.recipe.schema import Recipe, RecipeError, load_recipe, step_names

__all__ = ["Recipe", "RecipeContext", "RecipeError", "RecipeResult", "load_recipe", "run_recipe",
           "step_names"]

"""Recipe loading and validation: errors name the step and the field."""

import pytest

from penjing.recipe import RecipeError, load_recipe, step_names
from penjing.recipe.schema import Recipe, builtin_recipe


def test_missing_and_malformed_recipe_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="recipe .*nope.yaml not found"):
        load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [prune: {")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(bad)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([1, 2], "a recipe is a mapping"),
        ({"steps": []}, "'steps' must be a non-empty list"),
        ({"steps": [{"a": {}, "b": {}}]}, "step 1 must be one 'method: {fields}' mapping"),
        ({"steps": [{"teleport": {}}]}, "step 1: unknown method 'teleport'; available:"),
        ({"modle": "x", "steps": [{"teleport": {}}]}, r"unknown top-level field\(s\) \['modle'\]"),
    ],
)
def test_recipe_structure_errors(raw, message):
    with pytest.raises(RecipeError, match=message):
        Recipe.from_dict(raw)


def test_shipped_recipes_validate():
    for path in builtin_recipe("iterative_pruning").parent.glob("*.yaml"):
        recipe = load_recipe(path)
        assert all(step.method in step_names() for step in recipe.steps)
    with pytest.raises(FileNotFoundError, match="no built-in recipe 'nothing'"):
        builtin_recipe("nothing")

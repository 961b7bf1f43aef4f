"""One module per recipe step method; see :mod:`penjing.recipe.schema`."""

"""The models x methods matrix on the models people bring (issue 15): every cell asserts a real
property through the public API. Runs in CI's second stage (a venv with torchvision, timm and
transformers) with ``python -m pytest -m models tests/realmodels``; with
``PENJING_MATRIX_OUT=benchmarks/results/models.md`` it also writes the results table."""

from __future__ import annotations

import importlib.util
import os
import time

import pytest

from .cells import CELLS
from .zoo import specs

pytestmark = pytest.mark.models
SPECS = specs()
RESULTS: dict[tuple[str, str], str] = {}


@pytest.fixture(scope="module", autouse=True)
def _write_table():
    yield
    out = os.environ.get("PENJING_MATRIX_OUT")
    if out and RESULTS:
        from .table import write_table

        write_table(out, RESULTS, [s.name for s in SPECS], list(CELLS))


@pytest.mark.parametrize("method", list(CELLS))
@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_cell(spec, method):
    if spec.needs and importlib.util.find_spec(spec.needs) is None:
        pytest.skip(f"{spec.needs} is not installed (CI's model stage installs it)")
    start = time.perf_counter()
    try:
        figure = CELLS[method](spec)
    except Exception as exc:
        RESULTS[(spec.name, method)] = f"FAIL: {type(exc).__name__}"
        raise
    RESULTS[(spec.name, method)] = f"{figure} [{time.perf_counter() - start:.1f}s]"

"""Shared test setup: a private baseline cache, one thread per test process, fixed seeds."""

from __future__ import annotations

import os

import pytest
import torch


def pytest_configure(config):
    torch.set_num_threads(1)  # xdist runs one process per core; more threads only contend


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    # Baselines trained by tests go to one cache per test session, never the user's.
    cache = os.environ.get("PENJING_TEST_CACHE") or str(tmp_path_factory.getbasetemp() / "cache")
    monkeypatch.setenv("PENJING_CACHE", cache)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def digits_data():
    from penjing.data import digits

    return digits()

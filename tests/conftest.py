"""Run every test from a scratch directory, so that trial's ``mktemp()`` (relative to the
current directory) never writes into the source tree."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _scratch_cwd(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    previous = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(previous)

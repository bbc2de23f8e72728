"""What every test gets: a process state that no earlier test can leak into it."""

from __future__ import annotations

import os
import sys

import pytest


@pytest.fixture(autouse=True)
def _hermetic_environment():
    """A test that changes os.environ or MLflow's process-wide tracking/registry URI
    (`mlflow.set_tracking_uri` sets a module global *and* exports MLFLOW_TRACKING_URI) must not point
    the next test, or the stages it starts, at its own store. Seen: a stack test's server URI, long
    stopped, was still MLflow's default in a later test of another file."""
    saved = dict(os.environ)
    yield
    if "mlflow" in sys.modules:  # only undo what a test did; importing mlflow here costs seconds
        import mlflow

        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
    os.environ.clear()
    os.environ.update(saved)

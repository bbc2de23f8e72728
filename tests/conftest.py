"""What every test gets: a process state that no earlier test can leak into it."""

from __future__ import annotations

import os
import sys

import pytest

# Two tests at a time (`pytest -n 2`, the README's test command) on a machine of few cores: one torch
# thread per test process (and for what it starts: stages, Ray workers), not one per core each, which
# would have the two fight over the same cores. Set before anything imports torch.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))


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

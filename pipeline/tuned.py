"""Stage `tuned`: what each label run's train stages apply of a search, one file per run.

    python -m pipeline.tuned            # results/tune/applied/<run>.json

`{}` for every run, except the run of tune.method under train.use_tuned, which gets the best config of
its search (results/tune/<method>.json, written by stage `tune` of tune/dvc.yaml). Cheap: no torch, no Ray.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.layout import Layout, layout, read_json, write_json
from pipeline.params import Params, load_params
from pipeline.stage import run_stage


def result_path(lay: Layout, method: str) -> Path:
    return lay.root / "results" / "tune" / f"{method}.json"


def select(params: Params, lay: Layout) -> dict[str, dict]:
    """What each label run's train stages apply: {} for every run, except tune.method's run under
    train.use_tuned, which gets the search's best config."""
    applied: dict[str, dict] = {run: {} for run in params.scenarios.label.runs}
    if params.train.use_tuned:
        method = params.tune.method
        result = read_json(result_path(lay, method), what=f"the search result for {method}",
                           fix=f"run `dvc repro tune/dvc.yaml` (tune.method: {method}) first, or set "
                               "train.use_tuned: false")
        applied[params.tune.run] = {"method": method, "run": params.tune.run, "config": result["best"]["config"],
                                    "objective": result["best"]["objective"]}
    return applied


def write_applied(params: Params, lay: Layout) -> None:
    """The `tuned` stage's output: results/tune/applied/<run>.json per label run. Unchanged files are
    left untouched, so only the tuned run's train stages see a changed dependency. The folder is DVC's
    declared output, so it exists even when the label scenario has no runs."""
    lay.applied_dir.mkdir(parents=True, exist_ok=True)
    for run, values in select(params, lay).items():
        write_json(lay.applied(run), values)
    for stale in lay.applied_dir.glob("*.json"):
        if stale.stem not in params.scenarios.label.runs:
            stale.unlink()


def main() -> int:
    write_applied(load_params(), layout())
    return 0


if __name__ == "__main__":
    run_stage(main)

"""Stage `check`: validate all of params.yaml, and keep the derived stage plan in step with it.

Every other stage depends on this stage's output, so DVC runs it first: a typo'd key or a bad value
fails here, in a second, before DVC deletes any other stage's output (a train stage's receipt, say).
Its output never changes while params.yaml is valid, so re-running it re-runs nothing downstream.

If params.yaml's tasks or runs no longer match pipeline/stages.yaml (plain `dvc repro` after editing
data.tasks), the plan is rewritten and the stage fails: DVC read dvc.yaml with the old plan, and
only a new `dvc repro` reads the new one. `lifelong repro` writes the plan before DVC starts.
"""

from __future__ import annotations

import sys

from pipeline.layout import layout, write_json
from pipeline.params import load_params
from pipeline.plan import PLAN_FILE, write_plan
from pipeline.stage import run_stage


def main() -> int:
    params = load_params()
    lay = layout()
    if write_plan(params, lay.root):
        print(f"error: {PLAN_FILE} was out of date with params.yaml (data.tasks, image_data.tasks, "
              f"scenarios.*.runs or eval.seeds changed) and has been rewritten; run `dvc repro` again to train the new "
              "stages (`lifelong repro` does this by itself)", file=sys.stderr)
        return 2
    write_json(lay.checked, {"params.yaml": "valid"})
    return 0


if __name__ == "__main__":
    run_stage(main)

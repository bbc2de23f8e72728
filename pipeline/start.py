"""Stage `start_<scenario>@<chain>`: the empty "task 0" receipt that task 1's train stage depends on.

DVC chains stages through files; task 1 has no predecessor model, so its predecessor is this file.
"""

from __future__ import annotations

import argparse

from pipeline.layout import layout, write_json
from pipeline.params import check_chain, load_params
from pipeline.stage import run_stage


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", required=True, choices=["label", "image"])
    ap.add_argument("--run", required=True, help="a chain: <family>-<method>[-seed<i>], e.g. gan-lifelong_gan")
    args = ap.parse_args(argv)
    params = load_params()  # validates params.yaml before any stage does real work
    check_chain(params, args.scenario, args.run)
    write_json(layout().receipt(args.scenario, args.run, 0),
               {"scenario": args.scenario, "run": args.run, "task": 0, "version": None})
    return 0


if __name__ == "__main__":
    run_stage(main)

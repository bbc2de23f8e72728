"""Stage `start@<method>`: the empty "task 0" receipt that task 1's train stage depends on.

DVC chains stages through files; task 1 has no predecessor model, so its predecessor is this file.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.layout import run_stage, layout, write_json
from pipeline.params import load_params


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", required=True)
    args = ap.parse_args(argv)
    params = load_params()  # validates params.yaml before any stage does real work
    if args.method not in params.methods:
        raise SystemExit(f"--method {args.method!r} is not in params.yaml methods {params.methods}")
    write_json(layout().receipt(args.method, 0), {"method": args.method, "task": 0, "version": None})
    return 0


if __name__ == "__main__":
    run_stage(main)

"""A stand-in stage for the stage-server test: writes its pid, then sleeps until killed."""

import os
import sys
import time

from pipeline.layout import run_stage


def main() -> int:
    with open(sys.argv[1], "w") as f:
        f.write(str(os.getpid()))
    time.sleep(120)
    return 0


if __name__ == "__main__":
    run_stage(main)

"""Joint training: the data loss on the union of tasks 1..t. The upper bound; not continual."""

from __future__ import annotations

from lifelong.methods.finetune import FineTune


class Joint(FineTune):
    uses_all_seen_data = True  # the only difference from FineTune lives in the trainer's data

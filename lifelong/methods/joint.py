"""Joint training: the data loss on the union of tasks 1..t. The upper bound; not continual."""

from __future__ import annotations

from lifelong.methods.finetune import FineTune


class Joint(FineTune):
    """FineTune's loss; the difference lives in the data (catalog: trains_on_seen_tasks)."""

"""Stage `prepare`: the dataset, split into tasks by class, as byte-reproducible WebDataset shards.

Writes data/shards/task-<k>/{train,test}-NNNNNN.tar and data/shards/manifest.json (counts per class,
shard digests). Same params -> same bytes, so DVC does not retrain anything when nothing changed,
and changing task k's classes re-runs only task k and later.
"""

from __future__ import annotations

import sys

import numpy as np

from pipeline.layout import run_stage, layout
from pipeline.params import load_params


def _cap_per_class(images: np.ndarray, labels: np.ndarray, cap: int | None) -> tuple[np.ndarray, np.ndarray]:
    if cap is None:
        return images, labels
    keep = np.concatenate([np.flatnonzero(labels == c)[:cap] for c in np.unique(labels)])
    keep.sort()  # deterministic: the first `cap` images of each class, in dataset order
    return images[keep], labels[keep]


def main(argv: list[str] | None = None) -> int:
    from lifelong.data import load_split, write_dataset_shards

    params = load_params()
    d = params.data
    splits = {}
    for split, cap in (("train", d.train_per_class), ("test", d.test_per_class)):
        images, labels = load_split(d.dataset, split, root=d.root, download=d.download, image_size_px=d.image_size_px)
        missing = sorted({c for task in d.tasks for c in task} - set(np.unique(labels).tolist()))
        if missing:
            raise SystemExit(f"data.tasks: classes {missing} do not exist in {d.dataset} ({split} split has "
                             f"classes {sorted(np.unique(labels).tolist())})")
        splits[split] = _cap_per_class(images, labels, cap)
    manifest = write_dataset_shards(layout().shards, splits=splits, tasks=d.tasks, samples_per_shard=d.samples_per_shard)
    print(f"[prepare] {d.dataset}: {len(d.tasks)} tasks, digest {manifest['digest'][:12]}", flush=True)
    return 0


if __name__ == "__main__":
    run_stage(main)

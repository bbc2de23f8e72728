"""Stages `prepare` and `prepare_image`: each scenario's tasks as byte-reproducible WebDataset shards.

    python -m pipeline.prepare                     # label scenario: data/shards (images + class)
    python -m pipeline.prepare --scenario image    # image scenario: data/shards-image (A, B, class)

Writes <shards>/task-<k>/{train,test}-NNNNNN.tar and <shards>/manifest.json (counts, shard digests).
Same params -> same bytes, so DVC does not retrain anything when nothing changed, and changing task
k re-runs only task k and later. image_data.channels 3 stores the image scenario's pairs as RGB png
(other bytes, another digest: everything trained on them re-runs); derived tasks, whose source
data.dataset is grayscale, repeat their gray in R, G and B.
"""

from __future__ import annotations

import numpy as np

from pipeline.layout import layout
from pipeline.params import load_params
from pipeline.stage import run_stage


def _cap_per_class(images: np.ndarray, labels: np.ndarray, cap: int | None) -> tuple[np.ndarray, np.ndarray]:
    if cap is None:
        return images, labels
    keep = np.concatenate([np.flatnonzero(labels == c)[:cap] for c in np.unique(labels)])
    keep.sort()  # deterministic: the first `cap` images of each class, in dataset order
    return images[keep], labels[keep]


def _first(n: int | None, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    return arrays if n is None else tuple(a[:n] for a in arrays)


def prepare_image(params) -> dict:
    """Each image task's (A, B, label) pairs: derived from data.dataset, or read from a pix2pix folder;
    uint8 (N, H, W) each, or (N, H, W, 3) with image_data.channels 3."""
    from lifelong.data import derive_pairs, load_pix2pix_folder, load_split, write_paired_shards
    from lifelong.images import gray_to_rgb

    d, im = params.data, params.image_data
    source: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    tasks = []
    for k, spec in enumerate(im.tasks, start=1):
        per_split = {}
        for split, cap in (("train", im.train_per_task), ("test", im.test_per_task)):
            if spec.root is not None:  # pix2pix folder: no classes, every pair is labelled -1
                a, b = load_pix2pix_folder(spec.root, split, image_size_px=d.image_size_px, direction=spec.direction,
                                           channels=im.channels)
                labels = np.full(len(a), -1, dtype=np.int64)
            else:
                if split not in source:
                    source[split] = load_split(d.dataset, split, root=d.root, download=d.download,
                                               image_size_px=d.image_size_px)
                a, b, labels = derive_pairs(*source[split], spec.classes, spec.condition)
                if len(a) == 0:
                    raise SystemExit(f"image_data.tasks[{k - 1}] ({spec.name}): classes {spec.classes} have no "
                                     f"images in the {split} split of {d.dataset}")
            a, b, labels = _first(cap, a, b, labels)
            if spec.root is None and im.channels == 3:  # derived from the grayscale dataset: R = G = B
                a, b = gray_to_rgb(a), gray_to_rgb(b)
            per_split[split] = a, b, labels
        tasks.append(per_split)
    manifest = write_paired_shards(layout().paired_shards, tasks, samples_per_shard=im.samples_per_shard,
                                   names=[t.name for t in im.tasks])
    print(f"[prepare] image scenario: {len(tasks)} tasks ({', '.join(t.name for t in im.tasks)}), "
          f"{'RGB' if im.channels == 3 else 'grayscale'}, digest {manifest['digest'][:12]}", flush=True)
    return manifest


def main(argv: list[str] | None = None) -> int:
    import argparse

    from lifelong.data import load_split, write_dataset_shards

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", choices=["label", "image"], default="label")
    args = ap.parse_args(argv)
    params = load_params()
    if args.scenario == "image":
        prepare_image(params)
        return 0
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

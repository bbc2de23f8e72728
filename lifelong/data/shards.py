"""Per-task WebDataset shards, byte-reproducible, with a manifest.

Layout written by ``write_dataset_shards(out_dir, ...)`` and ``write_paired_shards(out_dir, ...)``::

    out_dir/manifest.json
    out_dir/task-1/train-000000.tar, train-000001.tar, ..., test-000000.tar
    out_dir/task-2/...

Why it is built this way:
- DVC hashes these files: identical inputs must give identical bytes, or every re-run of
  ``prepare`` would invalidate all downstream training. So members get ``mtime=0``, samples are
  written in original-index order, and nothing time- or host-dependent goes in. (PNG bytes come from
  PIL/zlib: same library versions, same bytes.)
- Only ``png`` and ``cls`` members (plus ``cond.png``, the condition image, in the image-to-image
  shards of ``write_paired_shards``): WebDataset unpickles ``.pyd``/``.pth`` members on read.
- The whole ``out_dir`` is built in a hidden sibling folder and renamed into place at the end, so a
  crash mid-write leaves the previous shard set and manifest untouched.
- Within a task, shards get near-equal sample counts (``np.array_split``), so a reader that picks
  shards uniformly at random samples each image about equally often (see ``loader.train_batches``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import webdataset as wds

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT_VERSION = 1
_REPAIR_HINT = "re-run the prepare stage (`dvc repro prepare`) to rebuild the shards"


class ShardError(RuntimeError):
    """Shards or their manifest are missing, corrupt or inconsistent."""


def write_dataset_shards(
    out_dir: str | os.PathLike,
    *,
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    tasks: list[list[int]],
    samples_per_shard: int = 2000,
) -> dict:
    """Write every split's per-task shards plus ``manifest.json``, replacing ``out_dir`` atomically.

    ``splits`` maps a split name ("train", "test") to (uint8 images (N, H, W), int labels (N,)).
    ``tasks[k-1]`` lists the classes of task k. Returns the manifest that was written.
    """
    _validate(splits, tasks, samples_per_shard)

    def build(staging: Path) -> dict:
        per_task = [
            {"task": k, "classes": sorted(int(c) for c in classes), "splits": {}}
            for k, classes in enumerate(tasks, start=1)
        ]
        for split in sorted(splits):
            images, labels = splits[split]
            records = _write_split(staging, images, np.asarray(labels), tasks, split, samples_per_shard)
            for entry, record in zip(per_task, records):
                entry["splits"][split] = record
        return {
            "format_version": MANIFEST_FORMAT_VERSION,
            "image_size_px": int(next(iter(splits.values()))[0].shape[1]),
            "num_classes": int(max(int(np.max(labels)) for _, labels in splits.values())) + 1,
            "samples_per_shard": samples_per_shard,
            "tasks": [[int(c) for c in classes] for classes in tasks],
            "per_task": per_task,
        }

    return _write_atomically(out_dir, build)


def write_task_shards(
    out_dir: str | os.PathLike,
    *,
    images: np.ndarray,
    labels: np.ndarray,
    tasks: list[list[int]],
    split: str,
    samples_per_shard: int = 2000,
) -> dict:
    """Single-split convenience wrapper around ``write_dataset_shards``.

    Careful: it replaces the whole ``out_dir``, so calling it for "train" and then "test" keeps only
    "test". Write both splits in one ``write_dataset_shards`` call instead.
    """
    return write_dataset_shards(
        out_dir, splits={split: (images, labels)}, tasks=tasks, samples_per_shard=samples_per_shard
    )


def write_paired_shards(
    out_dir: str | os.PathLike,
    tasks: list[dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]],
    samples_per_shard: int = 2000,
    *,
    names: list[str] | None = None,
) -> dict:
    """Write image-to-image shards (condition A -> target B) plus ``manifest.json``, atomically.

    ``tasks[k-1]`` maps a split name ("train", "test") to task k's (a, b, labels): uint8 (N, H, W)
    conditions, uint8 (N, H, W) targets, int labels (N,); or RGB, uint8 (N, H, W, 3) both, stored as
    RGB png (every task and split alike). Every task needs the same split names.
    Each sample holds ``cond.png`` (A), ``png`` (B) and ``cls``, so ``read_all`` reads the targets
    and ``read_all_pairs``/``train_pair_batches`` read both. Labels may be negative: data without
    classes (pix2pix folders) is labelled -1 throughout (then ``num_classes`` is 0).

    Same layout, guarantees and manifest fields as ``write_dataset_shards`` (``read_manifest``,
    ``verify_shards``, ``task_shard_paths`` work unchanged), plus ``"kind": "paired"``; a task's
    ``classes`` are the labels it holds. ``names`` (optional, one per task) are stored as each
    task's ``name``. Returns the manifest that was written.
    """
    _validate_paired(tasks, samples_per_shard, names)

    def build(staging: Path) -> dict:
        per_task = []
        for k, task in enumerate(tasks, start=1):
            classes = sorted({int(c) for _, _, labels in task.values() for c in np.unique(labels)})
            entry = {"task": k, "classes": classes, "splits": {}}
            if names is not None:
                entry["name"] = names[k - 1]
            for split in sorted(task):
                a, b, labels = task[split]
                labels = np.asarray(labels)
                shards = _write_shards(
                    staging, k, split, np.arange(len(labels)), samples_per_shard,
                    lambda i: {"__key__": f"{k:02d}-{i:07d}", "cond.png": a[i], "png": b[i], "cls": int(labels[i])},
                )
                entry["splits"][split] = _split_record(labels, sorted(int(c) for c in np.unique(labels)), shards)
            per_task.append(entry)
        all_labels = [int(np.max(labels)) for task in tasks for _, _, labels in task.values()]
        return {
            "format_version": MANIFEST_FORMAT_VERSION,
            "kind": "paired",
            "image_size_px": int(next(iter(tasks[0].values()))[1].shape[1]),
            "num_classes": max(0, max(all_labels) + 1),  # 0 when every label is negative
            "samples_per_shard": samples_per_shard,
            "tasks": [entry["classes"] for entry in per_task],
            "per_task": per_task,
        }

    return _write_atomically(out_dir, build)


def read_manifest(out_dir: str | os.PathLike) -> dict:
    """Load ``out_dir/manifest.json``; a missing or unreadable manifest raises ``ShardError``."""
    path = Path(out_dir).resolve() / MANIFEST_NAME
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ShardError(f"shard manifest {path} is missing; {_REPAIR_HINT}") from None
    except (OSError, ValueError) as e:
        raise ShardError(f"shard manifest {path} is unreadable ({e}); {_REPAIR_HINT}") from e


def verify_shards(out_dir: str | os.PathLike, task: int | None = None) -> dict:
    """Check the sha256 of every shard (of one task, or all) against the manifest; return the manifest.

    Raises ``ShardError`` naming the first missing or mismatching file.
    """
    out_dir = Path(out_dir).resolve()
    manifest = read_manifest(out_dir)
    if task is None:
        # Also catch a hand-edited manifest whose shard list no longer matches its lineage digest.
        if _data_digest(manifest) != manifest.get("digest"):
            raise ShardError(f"{out_dir / MANIFEST_NAME}: digest does not match its shard list; {_REPAIR_HINT}")
        entries = manifest["per_task"]
    else:
        entries = [_task_entry(manifest, task, out_dir)]

    for entry in entries:
        for record in entry["splits"].values():
            for shard in record["shards"]:
                path = out_dir / shard["name"]
                if not path.is_file():
                    raise ShardError(f"shard {path} is missing; {_REPAIR_HINT}")
                if _sha256(path) != shard["sha256"]:
                    raise ShardError(f"shard {path} is corrupt (sha256 differs from the manifest); {_REPAIR_HINT}")
    return manifest


def task_shard_paths(out_dir: str | os.PathLike, task: int, split: str) -> list[str]:
    """Absolute paths of task ``task``'s (1-based) shards for ``split``.

    Absolute because Ray Train workers chdir into their session folder.
    """
    return [path for path, _ in task_shard_files(out_dir, task, split)]


def task_shard_files(out_dir: str | os.PathLike, task: int, split: str) -> list[tuple[str, str]]:
    """(absolute path, sha256 from the manifest) of task ``task``'s (1-based) shards for ``split``."""
    out_dir = Path(out_dir).resolve()
    entry = _task_entry(read_manifest(out_dir), task, out_dir)
    if split not in entry["splits"]:
        raise ShardError(
            f"task {task} has no {split!r} shards in {out_dir} (has {sorted(entry['splits'])}); {_REPAIR_HINT}"
        )
    return [(str(out_dir / shard["name"]), shard["sha256"]) for shard in entry["splits"][split]["shards"]]


# ---------------------------------------------------------------------------------------------
def _validate(splits: dict, tasks: list[list[int]], samples_per_shard: int) -> None:
    if not splits:
        raise ValueError("splits is empty: pass e.g. {'train': (images, labels), 'test': (images, labels)}")
    if not tasks or any(len(classes) == 0 for classes in tasks):
        raise ValueError(f"tasks must be a non-empty list of non-empty class lists, got {tasks!r}")
    _check_samples_per_shard(samples_per_shard)
    sizes = set()
    for split, (images, labels) in splits.items():
        _check_images(split, images, len(labels))
        sizes.add(images.shape[1:])
    _check_one_square_size(sizes)


def _validate_paired(tasks: list[dict], samples_per_shard: int, names: list[str] | None) -> None:
    if not tasks or not all(isinstance(task, dict) and task for task in tasks):
        raise ValueError("tasks must be a non-empty list of {split: (a, b, labels)} dicts, one per task")
    if names is not None and len(names) != len(tasks):
        raise ValueError(f"got {len(names)} names for {len(tasks)} tasks")
    _check_samples_per_shard(samples_per_shard)
    split_names = sorted(tasks[0])
    sizes, layouts = set(), set()
    for k, task in enumerate(tasks, start=1):
        if sorted(task) != split_names:
            # A task without e.g. a test split would only fail later, in evaluation.
            raise ValueError(f"task {k} has splits {sorted(task)}, task 1 has {split_names}; all need the same")
        for split, arrays in task.items():
            if len(arrays) != 3:
                raise ValueError(f"task {k} {split}: expected (a, b, labels), got {len(arrays)} items")
            a, b, labels = arrays
            for name, images in (("a", a), ("b", b)):
                _check_images(f"task {k} {split} {name}", images, len(labels), allow_rgb=True)
            if a.shape != b.shape:
                raise ValueError(f"task {k} {split}: a is {a.shape} but b is {b.shape}")
            if len(labels) == 0:
                # An empty shard list would make training readers loop forever or hang DDP.
                raise ValueError(f"task {k} has no samples in split {split!r}")
            if not np.issubdtype(np.asarray(labels).dtype, np.integer):
                raise ValueError(f"task {k} {split}: labels must be integers, got {np.asarray(labels).dtype}")
            sizes.add(a.shape[1:3])
            layouts.add(a.shape[3:])  # () grayscale, (3,) RGB
    if len(layouts) > 1:
        raise ValueError("tasks mix grayscale (N, H, W) and RGB (N, H, W, 3) images; "
                         "give every task and split one kind")
    _check_one_square_size(sizes)


def _check_samples_per_shard(samples_per_shard: int) -> None:
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")


def _check_images(where: str, images: np.ndarray, num_labels: int, *, allow_rgb: bool = False) -> None:
    """uint8 (N, H, W) images, one per label; with ``allow_rgb`` also uint8 (N, H, W, 3) (paired shards)."""
    rgb = allow_rgb and images.ndim == 4 and images.shape[-1] == 3
    if images.dtype != np.uint8 or not (images.ndim == 3 or rgb):
        expected = "uint8 (N, H, W) or (N, H, W, 3)" if allow_rgb else "uint8 (N, H, W)"
        raise ValueError(f"{where}: images must be {expected}, got {images.dtype} {images.shape}")
    if len(images) != num_labels:
        raise ValueError(f"{where}: {len(images)} images but {num_labels} labels")


def _check_one_square_size(sizes: set[tuple[int, ...]]) -> None:
    if len(sizes) != 1:
        raise ValueError(f"splits have different image sizes {sorted(sizes)}; set data.image_size_px")
    height, width = sizes.pop()
    if height != width:
        raise ValueError(f"images must be square, got {height}x{width}; set data.image_size_px")


def _write_split(
    staging: Path, images: np.ndarray, labels: np.ndarray, tasks: list[list[int]], split: str, samples_per_shard: int
) -> list[dict]:
    """Write one split's shards for every task; return one manifest record per task."""
    records = []
    for k, classes in enumerate(tasks, start=1):
        # flatnonzero is ascending: samples keep their original order, which makes the bytes stable.
        indices = np.flatnonzero(np.isin(labels, classes))
        if len(indices) == 0:
            # An empty shard list would make training readers loop forever or hang DDP.
            raise ValueError(f"task {k} (classes {classes}) has no samples in split {split!r}")
        shards = _write_shards(
            staging, k, split, indices, samples_per_shard,
            lambda i: {"__key__": f"{k:02d}-{i:07d}", "png": images[i], "cls": int(labels[i])},
        )
        records.append(_split_record(labels[indices], sorted(classes), shards))
    return records


def _write_shards(
    staging: Path, k: int, split: str, indices: np.ndarray, samples_per_shard: int, make_sample: Callable[[int], dict]
) -> list[dict]:
    """Write task ``k``'s samples ``make_sample(i)`` for ``i`` in ``indices`` (in that order) into
    near-equal shards ``task-<k>/<split>-NNNNNN.tar``; return their manifest entries."""
    task_dir = staging / f"task-{k}"
    task_dir.mkdir(exist_ok=True)
    shards = []
    num_shards = math.ceil(len(indices) / samples_per_shard)
    for j, chunk in enumerate(np.array_split(indices, num_shards)):
        path = task_dir / f"{split}-{j:06d}.tar"
        # Looked up at call time (not imported by name) so tests can inject a failing writer.
        with wds.TarWriter(str(path), mtime=0) as sink:
            for i in chunk:
                sink.write(make_sample(int(i)))
        shards.append({"name": f"task-{k}/{path.name}", "sha256": _sha256(path), "num_samples": len(chunk)})
    return shards


def _split_record(task_labels: np.ndarray, classes: list[int], shards: list[dict]) -> dict:
    return {
        "class_counts": {str(int(c)): int(np.sum(task_labels == c)) for c in classes},
        "num_samples": len(task_labels),
        "shards": shards,
    }


def _write_atomically(out_dir: str | os.PathLike, build: Callable[[Path], dict]) -> dict:
    """Run ``build(staging) -> manifest`` in a hidden sibling of ``out_dir``, add the data digest,
    write ``manifest.json`` and swap the folder into place; on any error remove the staging folder."""
    out_dir = Path(out_dir).resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # A sibling (same file system) so the final rename is atomic; hidden so DVC/globs ignore it.
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        manifest = build(staging)
        manifest["digest"] = _data_digest(manifest)
        (staging / MANIFEST_NAME).write_text(_dump_json(manifest))
        _swap_into_place(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _data_digest(manifest: dict) -> str:
    """sha256 over (name, sha256) of every shard in task, split, shard order: the lineage digest."""
    h = hashlib.sha256()
    for entry in manifest["per_task"]:
        for split in sorted(entry["splits"]):
            for shard in entry["splits"][split]["shards"]:
                h.update(f"{shard['name']} {shard['sha256']}\n".encode())
    return h.hexdigest()


def _task_entry(manifest: dict, task: int, out_dir: Path) -> dict:
    num_tasks = len(manifest["per_task"])
    if not 1 <= task <= num_tasks:
        raise ShardError(
            f"task {task} is not in {out_dir / MANIFEST_NAME} (tasks 1..{num_tasks}); "
            f"if params.yaml changed the tasks, {_REPAIR_HINT}"
        )
    return manifest["per_task"][task - 1]


def _swap_into_place(staging: Path, out_dir: Path) -> None:
    """Rename ``staging`` to ``out_dir``. POSIX cannot swap two directories in one call, so the old
    set is first moved aside and restored if the second rename fails."""
    if not out_dir.exists():
        os.rename(staging, out_dir)
        return
    old = staging.with_name(staging.name + "-old")
    os.rename(out_dir, old)
    try:
        os.rename(staging, out_dir)
    except BaseException:
        os.rename(old, out_dir)
        raise
    shutil.rmtree(old)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _dump_json(obj: dict) -> str:
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"

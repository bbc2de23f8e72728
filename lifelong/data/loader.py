"""Readers for the shards written by ``lifelong.data.shards``.

- ``train_batches``: endless, shuffled training batches, the same count on every DDP rank.
- ``read_all``: the full shard contents, in order, for evaluation and the classifier.
- ``train_pair_batches`` / ``read_all_pairs``: the same for image-to-image shards
  (``shards.write_paired_shards``), whose samples add the condition image ``cond.png``.

All decode ``png``/``cond.png`` bytes with PIL and parse ``cls`` as an int; nothing is ever
unpickled, so a tampered shard cannot run code (WebDataset's default decoders unpickle
``.pyd``/``.pth``). A png is read as it was written: an RGB png (image scenario,
``image_data.channels: 3``) as uint8 (H, W, 3) and batches (B, 3, H, W); any other as grayscale,
uint8 (H, W) and batches (B, 1, H, W).
"""

from __future__ import annotations

import functools
import io
import math
import os
import tarfile
from typing import Callable

import numpy as np
import torch
import webdataset as wds
from PIL import Image

from lifelong.data.shards import ShardError
from lifelong.images import to_model_range

_REPAIR_HINT = "re-run the prepare stage (`dvc repro prepare`)"


def train_batches(
    shard_paths: list[str],
    *,
    batch_size: int,
    num_batches: int,
    seed: int,
    num_workers: int = 0,
    shuffle_buffer: int = 1000,
) -> wds.WebLoader:
    """Iterable yielding exactly ``num_batches`` batches ``(x, y)`` per rank (per ``iter()``).

    x: float32 (B, 1, H, W) in [-1, 1]; y: int64 (B,).

    Why resampling: splitting shards across ranks (WebDataset's default) gives a rank zero or fewer
    batches whenever shards < ranks x loader workers, and DDP then hangs at the next all-reduce
    (webdataset#188). Instead every rank and loader worker reads from the whole list, endlessly,
    and stops after a fixed number of batches (the maintainers' fix, #250).
    The rank comes from env ``RANK``/``WORLD_SIZE`` (set by Ray Train), else torch.distributed,
    else 0; it is mixed into the seeds so ranks see different samples.

    Every sample comes from a shard drawn at random (``_interleaved_shards``), not one shard after
    another: joint training passes the union of its tasks' shard lists, and each shard holds one
    task, so shard after shard gave batches of mostly one task (the last 50 batches of a 5-task
    joint run held no sample of task 4). Shards are drawn uniformly, so tasks are sampled in
    proportion to their sample counts *provided shards hold about the same number of samples* --
    true for shards from ``write_dataset_shards``, which splits each task into near-equal shards of
    at most ``samples_per_shard``.

    Same ``seed``, rank and ``num_workers`` -> the same batches: a resumed run should pass a new
    seed (e.g. base seed + step) rather than replay the batches it already saw.
    """
    return _resampled_batches(
        shard_paths, _decode_sample, _collate, batch_size=batch_size, num_batches=num_batches, seed=seed,
        num_workers=num_workers, shuffle_buffer=shuffle_buffer, caller="train_batches",
    )


def train_pair_batches(
    shard_paths: list[str],
    *,
    batch_size: int,
    num_batches: int,
    seed: int,
    num_workers: int = 0,
    shuffle_buffer: int = 1000,
) -> wds.WebLoader:
    """``train_batches`` for paired shards: exactly ``num_batches`` batches ``(a, b, y)`` per rank.

    a (condition), b (target): float32 (B, C, H, W) in [-1, 1] (C = 3 for RGB shards, else 1), row i
    of a belongs to row i of b;
    y: int64 (B,) (-1 for data without classes). Resampling, seeding and DDP behaviour as in
    ``train_batches``.
    """
    return _resampled_batches(
        shard_paths, _decode_pair, _collate_pairs, batch_size=batch_size, num_batches=num_batches, seed=seed,
        num_workers=num_workers, shuffle_buffer=shuffle_buffer, caller="train_pair_batches",
    )


def read_all(shard_paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read every sample of ``shard_paths`` in file order: (uint8 images (N, H, W), int64 labels (N,));
    images (N, H, W, 3) from RGB shards.

    A missing, truncated or corrupt shard raises ``ShardError`` naming the file. On paired shards
    this reads the targets (B).
    """
    images, labels = _read_members(shard_paths, ("png", "cls"), caller="read_all")
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def read_all_pairs(shard_paths: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read every pair of ``shard_paths`` in file order: (uint8 conditions a (N, H, W), uint8 targets
    b (N, H, W), int64 labels (N,)); a and b (N, H, W, 3) from RGB shards.

    A missing, truncated or corrupt shard, or a sample without ``cond.png`` (class shards from
    ``write_dataset_shards``), raises ``ShardError`` naming the file.
    """
    a, b, labels = _read_members(shard_paths, ("cond.png", "png", "cls"), caller="read_all_pairs")
    return np.stack(a), np.stack(b), np.asarray(labels, dtype=np.int64)


# ---------------------------------------------------------------------------------------------
def _resampled_batches(
    shard_paths: list[str],
    decode: Callable[[dict], tuple],
    collate: Callable[[list[tuple]], tuple],
    *,
    batch_size: int,
    num_batches: int,
    seed: int,
    num_workers: int,
    shuffle_buffer: int,
    caller: str,
) -> wds.WebLoader:
    """The resampled pipeline behind ``train_batches`` (see its docstring for why it is built so):
    ``decode`` turns a raw WebDataset sample into a tuple, ``collate`` a list of those into tensors."""
    if not shard_paths:
        raise ValueError(f"{caller} needs at least one shard path")
    if batch_size < 1 or num_batches < 1:
        raise ValueError(f"batch_size and num_batches must be >= 1, got {batch_size}, {num_batches}")
    paths = [os.path.abspath(p) for p in shard_paths]  # Ray workers chdir: never pass relative paths on
    for path in paths:
        if not os.path.isfile(path):
            raise ShardError(f"shard {path} is missing; {_REPAIR_HINT}")

    # Each loader worker runs its own copy of this pipeline; together they must produce at least
    # num_batches, and the loader-level with_epoch below cuts the total to exactly num_batches.
    batches_per_worker = math.ceil(num_batches / max(1, num_workers))
    dataset = wds.DataPipeline(
        # Not wds.WebDataset(resampled=True, ...): it ignores `seed` for the shard draw and mixes in
        # time and os.urandom, so runs would not be reproducible. No nodesplitter: every rank reads all shards.
        functools.partial(_interleaved_shards, paths, seed=seed),
        functools.partial(_shuffle_per_worker, bufsize=shuffle_buffer, seed=seed),
        wds.map(decode),
        wds.batched(batch_size, collation_fn=collate, partial=False),
    ).with_epoch(batches_per_worker)
    # batch_size=None: batches are already formed inside the pipeline.
    return wds.WebLoader(dataset, batch_size=None, num_workers=num_workers).with_epoch(num_batches)


def _read_members(shard_paths: list[str], members: tuple[str, ...], *, caller: str) -> tuple[list, ...]:
    """Per member name, the list of its decoded values over all samples of ``shard_paths`` in file order."""
    if not shard_paths:
        raise ValueError(f"{caller} needs at least one shard path")
    columns: tuple[list, ...] = tuple([] for _ in members)
    for path in shard_paths:
        for key, sample in _read_tar(path, members).items():
            missing = [m for m in members if m not in sample]
            if missing:
                raise ShardError(
                    f"sample {key!r} in {path} lacks member(s) {', '.join(missing)} (expected {', '.join(members)}); "
                    f"{_REPAIR_HINT}"
                )
            for column, member in zip(columns, members):
                column.append(sample[member])
    return columns


def _read_tar(path: str, members: tuple[str, ...] = ("png", "cls")) -> dict[str, dict]:
    """Group a shard's ``members`` by key: {key: {"png": uint8 (H, W) or (H, W, 3), "cls": int, ...}} in file order."""
    samples: dict[str, dict] = {}
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                # WebDataset convention: key = name up to the first dot of the basename.
                key, _, ext = member.name.partition(".")
                if ext not in members:
                    continue  # never decode anything else (e.g. pickles)
                data = tar.extractfile(member).read()
                value = int(data) if ext == "cls" else _decode_png(data)
                samples.setdefault(key, {})[ext] = value
    except FileNotFoundError:
        raise ShardError(f"shard {path} is missing; {_REPAIR_HINT}") from None
    except (tarfile.TarError, OSError, ValueError) as e:  # PIL raises OSError, int() ValueError
        raise ShardError(f"shard {path} is corrupt ({e}); {_REPAIR_HINT}") from e
    return samples


def _decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> uint8 (H, W, 3) for an RGB png, else uint8 (H, W) grayscale."""
    with Image.open(io.BytesIO(data)) as im:
        mode = "RGB" if im.mode == "RGB" else "L"
        return np.asarray(im.convert(mode), dtype=np.uint8)


def _decode_sample(sample: dict) -> tuple[np.ndarray, int]:
    try:
        return _decode_png(sample["png"]), int(sample["cls"])
    except KeyError as e:
        raise ShardError(f"sample {sample.get('__key__')!r} in {sample.get('__url__')} lacks member {e}") from e


def _decode_pair(sample: dict) -> tuple[np.ndarray, np.ndarray, int]:
    try:
        return _decode_png(sample["cond.png"]), _decode_png(sample["png"]), int(sample["cls"])
    except KeyError as e:
        raise ShardError(
            f"sample {sample.get('__key__')!r} in {sample.get('__url__')} lacks member {e} "
            "(train_pair_batches needs shards from write_paired_shards)"
        ) from e


def _interleaved_shards(paths: list[str], *, seed: int):
    """Endless raw samples of all `paths` interleaved: each sample comes from a shard drawn uniformly
    at random, and each shard is read in file order, round and round. Seeded per (rank, loader worker)
    like the shuffle; a module-level function, so it pickles under spawn."""
    rng = np.random.default_rng(wds.utils.make_seed(wds.utils.pytorch_worker_seed(), seed))
    streams = [wds.tarfile_to_samples()(_forever({"url": path})) for path in paths]
    while True:
        yield next(streams[rng.integers(len(streams))])


def _forever(item: dict):
    """One shard's url dict, endlessly (a fresh copy each time: the tar reader adds its stream to it)."""
    while True:
        yield dict(item)


def _shuffle_per_worker(samples, *, bufsize: int, seed: int):
    """Buffer shuffle seeded per (rank, loader worker): with a single shard, every rank reads the
    same file, and only this keeps their batches different. Seeded at iteration time because that
    is when we run inside the worker process. A module-level function, so it pickles under spawn."""
    worker_seed = wds.utils.make_seed(wds.utils.pytorch_worker_seed(), seed)
    # initial=bufsize: fill the buffer before the first sample so early batches are mixed too.
    yield from wds.shuffle(bufsize, initial=bufsize, seed=worker_seed)(samples)


def _collate(samples: list[tuple[np.ndarray, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*samples)
    return _to_model_range(images), torch.tensor(labels, dtype=torch.int64)


def _collate_pairs(samples: list[tuple[np.ndarray, np.ndarray, int]]) -> tuple[torch.Tensor, ...]:
    a, b, labels = zip(*samples)
    return _to_model_range(a), _to_model_range(b), torch.tensor(labels, dtype=torch.int64)


def _to_model_range(images: tuple[np.ndarray, ...]) -> torch.Tensor:
    return to_model_range(np.stack(images))  # uint8 (B, H, W[, 3]) -> float (B, C, H, W) in [-1, 1]

import pickle

import numpy as np
import pytest
import torch

from lifelong.data import ShardError, read_all, task_shard_paths, train_batches


def _collect(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def test_yields_exactly_num_batches_of_right_shape(shard_dir):
    paths = task_shard_paths(shard_dir, 2, "train")
    batches = _collect(train_batches(paths, batch_size=16, num_batches=7, seed=0))
    assert len(batches) == 7
    for x, y in batches:
        assert x.shape == (16, 1, 16, 16) and x.dtype == torch.float32
        assert y.shape == (16,) and y.dtype == torch.int64
        assert x.min() >= -1.0 and x.max() <= 1.0
        assert set(y.tolist()) <= {2, 3}
    labels = torch.cat([y for _, y in batches])
    assert set(labels.tolist()) == {2, 3}  # shuffled across shards, not one class at a time


def test_same_seed_same_batches(shard_dir):
    paths = task_shard_paths(shard_dir, 1, "train")
    a = _collect(train_batches(paths, batch_size=8, num_batches=3, seed=5))
    b = _collect(train_batches(paths, batch_size=8, num_batches=3, seed=5))
    c = _collect(train_batches(paths, batch_size=8, num_batches=3, seed=6))
    assert all(torch.equal(xa, xb) for (xa, _), (xb, _) in zip(a, b))
    assert not all(torch.equal(xa, xc) for (xa, _), (xc, _) in zip(a, c))


def test_two_ranks_one_shard_both_yield_all_batches(shard_dir, monkeypatch):
    # One shard, two ranks: WebDataset's split_by_node would give rank 1 nothing (-> DDP hang) and
    # its default nodesplitter raises ValueError. Both ranks must yield num_batches, and differ.
    paths = task_shard_paths(shard_dir, 3, "test")
    assert len(paths) == 1
    monkeypatch.setenv("WORLD_SIZE", "2")
    per_rank = {}
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        per_rank[rank] = _collect(train_batches(paths, batch_size=4, num_batches=25, seed=0))
        assert len(per_rank[rank]) == 25  # more batches than the shard holds: it resamples
    assert not torch.equal(per_rank["0"][0][0], per_rank["1"][0][0])


def test_loader_workers_still_give_exactly_num_batches(shard_dir, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    paths = task_shard_paths(shard_dir, 1, "test")  # 1 shard < 2 ranks x 2 workers
    loader = train_batches(paths, batch_size=4, num_batches=5, seed=0, num_workers=2)
    assert len(_collect(loader)) == 5
    assert len(_collect(loader)) == 5  # iterable again, same count
    pickle.dumps(loader.pipeline[0].dataset)  # workers started with spawn need a picklable pipeline


def test_joint_training_mixes_tasks(shard_dir):
    paths = task_shard_paths(shard_dir, 1, "train") + task_shard_paths(shard_dir, 2, "train")
    labels = torch.cat([y for _, y in train_batches(paths, batch_size=32, num_batches=20, seed=1)])
    share_task_1 = np.isin(labels.numpy(), [0, 1]).mean()
    assert 0.3 < share_task_1 < 0.7  # the two tasks have about the same number of samples


def test_joint_training_mixes_tasks_within_each_batch(shard_dir):
    # Each shard holds one task. Read shard after shard through a buffer of one shard's size, a batch
    # held mostly one task (a 5-task joint run's last 50 batches had no sample of task 4); interleaved,
    # a batch holds both tasks about half and half.
    paths = task_shard_paths(shard_dir, 1, "train") + task_shard_paths(shard_dir, 2, "train")
    shares = [np.isin(y.numpy(), [0, 1]).mean()
              for _, y in train_batches(paths, batch_size=32, num_batches=40, seed=1, shuffle_buffer=100)]
    majority = np.maximum(shares, 1 - np.asarray(shares))
    assert majority.mean() < 0.7, f"batches are mostly one task: majority share {majority.mean():.2f}"


def test_missing_shard_is_named(tmp_path):
    with pytest.raises(ShardError, match="gone.tar"):
        train_batches([str(tmp_path / "gone.tar")], batch_size=2, num_batches=1, seed=0)


def test_read_all_matches_train_pixels(shard_dir):
    # The training view of the data is read_all's images, rescaled to [-1, 1].
    paths = task_shard_paths(shard_dir, 1, "train")
    images, _ = read_all(paths)
    x, _ = next(iter(train_batches(paths, batch_size=8, num_batches=1, seed=0)))
    pixels = set(np.round((x.numpy().ravel() + 1.0) * 127.5).astype(int).tolist())
    assert pixels <= set(images.ravel().tolist())

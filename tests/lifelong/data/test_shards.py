import hashlib
import json
import tarfile

import numpy as np
import pytest
import webdataset as wds

from lifelong.data import (
    ShardError,
    read_all,
    read_manifest,
    task_shard_paths,
    verify_shards,
    write_dataset_shards,
    write_task_shards,
)
from lifelong.data import shards as shards_module

TASKS = [[0, 1], [2, 3], [4, 5]]  # same as the shard_dir fixture in conftest.py


def _file_digests(out_dir):
    return {p.relative_to(out_dir).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(out_dir.rglob("*")) if p.is_file()}


def test_writes_are_byte_identical(tmp_path, digits_splits):
    manifests = [
        write_dataset_shards(tmp_path / name, splits=digits_splits, tasks=TASKS, samples_per_shard=100)
        for name in ("a", "b")
    ]
    assert manifests[0]["digest"] == manifests[1]["digest"]
    digests_a, digests_b = _file_digests(tmp_path / "a"), _file_digests(tmp_path / "b")
    assert digests_a == digests_b and "manifest.json" in digests_a
    assert (tmp_path / "a" / "manifest.json").read_bytes() == (tmp_path / "b" / "manifest.json").read_bytes()


def test_manifest_contents(shard_dir, digits_splits):
    manifest = read_manifest(shard_dir)
    assert manifest["tasks"] == TASKS and manifest["image_size_px"] == 16 and manifest["num_classes"] == 6
    train_labels = digits_splits["train"][1]
    for entry, classes in zip(manifest["per_task"], TASKS):
        assert entry["classes"] == classes and set(entry["splits"]) == {"train", "test"}
        record = entry["splits"]["train"]
        assert record["class_counts"] == {str(c): int(np.sum(train_labels == c)) for c in classes}
        # ~240 samples per task at <=100 per shard: 3 near-equal shards.
        sizes = [shard["num_samples"] for shard in record["shards"]]
        assert len(sizes) == 3 and max(sizes) - min(sizes) <= 1 and sum(sizes) == record["num_samples"]
    # A digest changes when any shard changes: here, the data itself.
    other = write_dataset_shards(shard_dir.parent / "other", splits={"train": digits_splits["test"],
                                 "test": digits_splits["test"]}, tasks=TASKS, samples_per_shard=100)
    assert other["digest"] != manifest["digest"]


def test_round_trip_per_task(shard_dir, digits_splits):
    for split, (images, labels) in digits_splits.items():
        for k, classes in enumerate(TASKS, start=1):
            paths = task_shard_paths(shard_dir, k, split)
            assert all(p.startswith("/") for p in paths)
            got_images, got_labels = read_all(paths)
            keep = np.isin(labels, classes)
            assert np.array_equal(got_images, images[keep]) and np.array_equal(got_labels, labels[keep])
            assert got_labels.dtype == np.int64 and got_images.dtype == np.uint8


def test_only_png_and_cls_members(shard_dir):
    for path in sorted(shard_dir.rglob("*.tar")):
        with tarfile.open(path) as tar:
            members = tar.getmembers()
        assert {m.name.split(".", 1)[1] for m in members} == {"png", "cls"}
        assert {m.mtime for m in members} == {0}


def test_failed_write_leaves_previous_set_untouched(shard_dir, digits_splits, monkeypatch):
    before = _file_digests(shard_dir)

    class FailingTarWriter(wds.TarWriter):
        writes = 0

        def write(self, obj):
            FailingTarWriter.writes += 1
            if FailingTarWriter.writes > 150:  # a few shards in: some files are already complete
                raise OSError("disk full (simulated)")
            return super().write(obj)

    monkeypatch.setattr(shards_module.wds, "TarWriter", FailingTarWriter)
    with pytest.raises(OSError, match="simulated"):
        write_dataset_shards(shard_dir, splits=digits_splits, tasks=[[0], [1, 2, 3, 4, 5]], samples_per_shard=50)

    assert _file_digests(shard_dir) == before
    verify_shards(shard_dir)
    # No staging folders left behind next to out_dir.
    assert [p.name for p in shard_dir.parent.iterdir()] == [shard_dir.name]


def test_rewrite_replaces_the_whole_set(shard_dir, digits_splits):
    write_dataset_shards(shard_dir, splits=digits_splits, tasks=[[0, 1, 2, 3, 4, 5]], samples_per_shard=1000)
    assert not (shard_dir / "task-2").exists()
    assert read_manifest(shard_dir)["tasks"] == [[0, 1, 2, 3, 4, 5]]
    verify_shards(shard_dir)


def test_single_split_wrapper(tmp_path, digits_splits):
    images, labels = digits_splits["test"]
    write_task_shards(tmp_path / "s", images=images, labels=labels, tasks=TASKS, split="test")
    assert len(task_shard_paths(tmp_path / "s", 2, "test")) == 1
    with pytest.raises(ShardError, match="no 'train' shards"):
        task_shard_paths(tmp_path / "s", 2, "train")


def test_verify_detects_corrupted_byte(shard_dir):
    verify_shards(shard_dir)
    victim = shard_dir / "task-2" / "train-000001.tar"
    data = bytearray(victim.read_bytes())
    data[1000] ^= 0xFF
    victim.write_bytes(bytes(data))
    verify_shards(shard_dir, task=1)  # other tasks are unaffected
    for task in (2, None):
        with pytest.raises(ShardError, match=r"task-2/train-000001\.tar.*dvc repro prepare"):
            verify_shards(shard_dir, task=task)


def test_verify_missing_files_and_edited_manifest(shard_dir):
    manifest_path = shard_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["per_task"][0]["splits"]["test"]["shards"][0]["sha256"] = "0" * 64
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match="digest does not match"):
        verify_shards(shard_dir)

    (shard_dir / "task-3" / "test-000000.tar").unlink()
    with pytest.raises(ShardError, match=r"test-000000\.tar is missing"):
        verify_shards(shard_dir, task=3)
    with pytest.raises(ShardError, match="tasks 1..3"):
        task_shard_paths(shard_dir, 4, "train")

    manifest_path.unlink()
    with pytest.raises(ShardError, match=r"manifest\.json is missing.*dvc repro prepare"):
        read_manifest(shard_dir)


def test_read_all_corrupt_or_missing_names_the_file(shard_dir):
    path = task_shard_paths(shard_dir, 1, "train")[0]
    with pytest.raises(ShardError, match="nope.tar"):
        read_all([str(shard_dir / "nope.tar")])
    with open(path, "r+b") as f:
        f.truncate(3000)
    with pytest.raises(ShardError, match=path):
        read_all([path])


def test_empty_task_is_rejected(tmp_path, digits_splits):
    with pytest.raises(ValueError, match="task 2"):
        write_dataset_shards(tmp_path / "x", splits=digits_splits, tasks=[[0], [9]])
    assert not (tmp_path / "x").exists()

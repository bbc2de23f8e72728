import pytest

from lifelong.data import load_split, write_dataset_shards

TASKS = [[0, 1], [2, 3], [4, 5]]  # test_shards.py asserts against the same list


@pytest.fixture(scope="session")
def digits_splits():
    """Small real data, offline: sklearn digits at 16 px, classes 0-5 only."""
    splits = {}
    for split in ("train", "test"):
        images, labels = load_split("digits", split, image_size_px=16)
        keep = labels < 6
        splits[split] = (images[keep], labels[keep])
    return splits


@pytest.fixture
def shard_dir(tmp_path, digits_splits):
    """A freshly written shard set: 3 tasks, several shards per task and split."""
    out_dir = tmp_path / "shards"
    write_dataset_shards(out_dir, splits=digits_splits, tasks=TASKS, samples_per_shard=100)
    return out_dir

import hashlib
import pickle
import tarfile

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from lifelong.data import (
    CONDITIONS,
    FASHION_IMAGE_TASKS,
    DataSourceError,
    ShardError,
    derive_pairs,
    derive_tasks,
    load_pix2pix_folder,
    read_all,
    read_all_pairs,
    read_manifest,
    task_shard_paths,
    train_pair_batches,
    verify_shards,
    write_dataset_shards,
    write_paired_shards,
)
from lifelong.data import shards as shards_module


def _square(size=12, lo=3, hi=9, value=200):
    image = np.zeros((size, size), dtype=np.uint8)
    image[lo:hi, lo:hi] = value
    return image


# ---------------------------------------------------------------------------------------------
# conditions
# ---------------------------------------------------------------------------------------------
def test_edges_lie_on_the_square_border_only():
    image = _square()
    got = CONDITIONS["edges"](image[None])[0]
    assert got.dtype == np.uint8 and set(np.unique(got).tolist()) == {0, 255}
    inside = np.zeros_like(image, dtype=bool)
    inside[3:9, 3:9] = True
    grown, shrunk = np.zeros_like(inside), np.zeros_like(inside)
    grown[2:10, 2:10], shrunk[4:8, 4:8] = True, True
    border = inside & ~shrunk
    assert np.all(got[border] == 255)  # the square's outline is closed
    assert np.all(got[~grown | shrunk] == 0)  # nothing in the interior or away from the square
    assert not CONDITIONS["edges"](np.full((2, 6, 6), 77, np.uint8)).any()  # flat: no edges, not even at the frame


def test_silhouette_fills_holes_but_not_notches():
    image = _square(lo=2, hi=10)
    image[4:6, 4:6] = 0  # a hole: filled
    image[7:10, 6] = 0  # a notch open to the outside: stays background
    got = CONDITIONS["silhouette"](image[None])[0]
    expected = _square(lo=2, hi=10, value=255)
    expected[7:10, 6] = 0
    assert np.array_equal(got, expected)
    faint = np.full((1, 5, 5), 3, np.uint8)  # below the threshold: background
    assert not CONDITIONS["silhouette"](faint).any()


def test_downsample_is_blockwise_constant_block_means():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 8, 8), dtype=np.uint8)
    got = CONDITIONS["downsample"](images)
    assert got.shape == images.shape and got.dtype == np.uint8
    for by in (0, 4):
        for bx in (0, 4):
            block = got[:, by : by + 4, bx : bx + 4]
            means = np.floor(images[:, by : by + 4, bx : bx + 4].mean(axis=(1, 2)) + 0.5)
            assert np.array_equal(block, np.broadcast_to(means[:, None, None], block.shape))
    aligned = _square(lo=4, hi=8)  # a square on the 4 px grid survives unchanged
    assert np.array_equal(CONDITIONS["downsample"](aligned[None])[0], aligned)
    assert CONDITIONS["downsample"](np.zeros((2, 10, 10), np.uint8)).shape == (2, 10, 10)  # 10 % 4 != 0


# ---------------------------------------------------------------------------------------------
# derived pairs
# ---------------------------------------------------------------------------------------------
def test_derive_pairs_keeps_only_the_classes_in_order():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (20, 8, 8), dtype=np.uint8)
    labels = np.arange(20) % 5
    a, b, y = derive_pairs(images, labels, [1, 3], "silhouette")
    keep = np.flatnonzero(np.isin(labels, [1, 3]))
    assert np.array_equal(b, images[keep]) and np.array_equal(y, labels[keep]) and y.dtype == np.int64
    assert np.array_equal(a, CONDITIONS["silhouette"](images[keep]))
    a, b, y = derive_pairs(images, labels, [7], "edges")
    assert a.shape == b.shape == (0, 8, 8) and len(y) == 0  # the caller names the empty task
    with pytest.raises(ValueError, match="edges, silhouette, downsample"):
        derive_pairs(images, labels, [1], "sketch")


def test_derive_tasks_follows_the_fashion_sequence():
    images = np.random.default_rng(2).integers(0, 256, (40, 8, 8), dtype=np.uint8)
    splits = {"train": (images, np.arange(40) % 10), "test": (images[:20], np.arange(20) % 10)}
    tasks = derive_tasks(splits)
    assert len(tasks) == len(FASHION_IMAGE_TASKS)
    for task, spec in zip(tasks, FASHION_IMAGE_TASKS):
        assert set(task) == {"train", "test"}
        a, b, y = task["train"]
        assert set(y.tolist()) == set(spec["classes"])
        assert np.array_equal(a, CONDITIONS[spec["condition"]](b))
    with pytest.raises(ValueError, match="'tops'.*no images in split 'train'"):
        derive_tasks(splits, [{"name": "tops", "condition": "edges", "classes": [11]}])


# ---------------------------------------------------------------------------------------------
# pix2pix folders
# ---------------------------------------------------------------------------------------------
def _write_ab(path, a_value, b_value, height=8, width=16):
    pixels = np.empty((height, width), np.uint8)
    pixels[:, : width // 2], pixels[:, width // 2 :] = a_value, b_value
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).convert("RGB").save(path)  # RGB on disk, like the real datasets


@pytest.fixture
def pix2pix_root(tmp_path):
    root = tmp_path / "edges2things"
    for i in (2, 1, 3):  # written out of order: the reader sorts
        _write_ab(root / "train" / f"{i}_AB.png", 10 * i, 100 + 10 * i)
    _write_ab(root / "val" / "1_AB.png", 77, 177)
    (root / "train" / "notes.txt").write_text("not an image")
    return root


def test_pix2pix_reader_halves_order_direction_resize(pix2pix_root):
    a, b = load_pix2pix_folder(pix2pix_root, "train")
    assert a.shape == b.shape == (3, 8, 8) and a.dtype == b.dtype == np.uint8
    assert a[:, 0, 0].tolist() == [10, 20, 30] and b[:, 0, 0].tolist() == [110, 120, 130]
    assert (a == a[:, :1, :1]).all() and (b == b[:, :1, :1]).all()  # no bleed across the seam
    b2, a2 = load_pix2pix_folder(pix2pix_root, "train", direction="BtoA")
    assert np.array_equal(a2, a) and np.array_equal(b2, b)
    a, b = load_pix2pix_folder(pix2pix_root, "test", image_size_px=4)  # no test/: falls back to val/
    assert a.shape == (1, 4, 4) and (a == 77).all() and (b == 177).all()


def test_pix2pix_reader_errors_name_the_folder(tmp_path, pix2pix_root):
    with pytest.raises(DataSourceError, match=r"nowhere/train does not exist.*A \| B side by side"):
        load_pix2pix_folder(tmp_path / "nowhere", "train")
    (tmp_path / "empty" / "val").mkdir(parents=True)
    with pytest.raises(DataSourceError, match=r"empty/val holds no \.jpg/\.png"):
        load_pix2pix_folder(tmp_path / "empty", "test")
    _write_ab(tmp_path / "odd" / "train" / "1.png", 0, 255, width=7)
    with pytest.raises(DataSourceError, match=r"1\.png is 7 px wide, odd"):
        load_pix2pix_folder(tmp_path / "odd", "train")
    (pix2pix_root / "train" / "4_AB.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataSourceError, match=r"cannot read image .*4_AB\.jpg"):
        load_pix2pix_folder(pix2pix_root, "train")
    with pytest.raises(ValueError, match="AtoB, BtoA"):
        load_pix2pix_folder(pix2pix_root, "val", direction="AB")


# ---------------------------------------------------------------------------------------------
# paired shards
# ---------------------------------------------------------------------------------------------
def _pairs(n, label_offset, seed):
    """b random with b[:, 0, 0] = label, a = 255 - b: a batch's rows can be checked for alignment."""
    rng = np.random.default_rng(seed)
    b = rng.integers(0, 256, (n, 8, 8), dtype=np.uint8)
    labels = label_offset + np.arange(n) % 2
    b[:, 0, 0] = labels
    return 255 - b, b, labels.astype(np.int64)


@pytest.fixture
def pair_tasks():
    return [{"train": _pairs(30, 2 * k, seed=k), "test": _pairs(9, 2 * k, seed=10 + k)} for k in range(2)]


@pytest.fixture
def pair_dir(tmp_path, pair_tasks):
    write_paired_shards(tmp_path / "pairs", pair_tasks, samples_per_shard=8, names=["one", "two"])
    return tmp_path / "pairs"


def _file_digests(out_dir):
    return {p.relative_to(out_dir).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out_dir.rglob("*")) if p.is_file()}


def test_paired_shards_are_byte_reproducible(tmp_path, pair_dir, pair_tasks):
    again = write_paired_shards(tmp_path / "again", pair_tasks, samples_per_shard=8, names=["one", "two"])
    assert _file_digests(pair_dir) == _file_digests(tmp_path / "again")
    manifest = read_manifest(pair_dir)
    assert manifest == again and manifest["kind"] == "paired"
    assert manifest["tasks"] == [[0, 1], [2, 3]] and manifest["num_classes"] == 4 and manifest["image_size_px"] == 8
    entry = manifest["per_task"][1]
    assert entry["name"] == "two" and entry["splits"]["train"]["class_counts"] == {"2": 15, "3": 15}
    assert [s["num_samples"] for s in entry["splits"]["train"]["shards"]] == [8, 8, 7, 7]
    with tarfile.open(task_shard_paths(pair_dir, 1, "train")[0]) as tar:
        members = tar.getmembers()
    assert {m.name.split(".", 1)[1] for m in members} == {"cond.png", "png", "cls"}
    assert {m.mtime for m in members} == {0}


def test_verify_detects_a_corrupted_pair_shard(pair_dir):
    verify_shards(pair_dir)
    victim = pair_dir / "task-2" / "test-000001.tar"
    data = bytearray(victim.read_bytes())
    data[700] ^= 0xFF
    victim.write_bytes(bytes(data))
    verify_shards(pair_dir, task=1)
    with pytest.raises(ShardError, match=r"task-2/test-000001\.tar is corrupt"):
        verify_shards(pair_dir)


def test_read_all_pairs_round_trip(pair_dir, pair_tasks):
    for k, task in enumerate(pair_tasks, start=1):
        for split, (a, b, labels) in task.items():
            paths = task_shard_paths(pair_dir, k, split)
            got_a, got_b, got_labels = read_all_pairs(paths)
            assert np.array_equal(got_a, a) and np.array_equal(got_b, b) and np.array_equal(got_labels, labels)
            assert got_a.dtype == got_b.dtype == np.uint8 and got_labels.dtype == np.int64
            got_images, _ = read_all(paths)  # the class-shard reader sees the targets
            assert np.array_equal(got_images, b)


def test_read_all_pairs_errors_name_the_file(tmp_path, pair_dir):
    with pytest.raises(ShardError, match="gone.tar"):
        read_all_pairs([str(tmp_path / "gone.tar")])
    images = np.zeros((4, 8, 8), np.uint8)
    write_dataset_shards(tmp_path / "classes", splits={"train": (images, np.array([0, 1, 0, 1]))}, tasks=[[0, 1]])
    path = task_shard_paths(tmp_path / "classes", 1, "train")[0]
    with pytest.raises(ShardError, match=rf"{path} lacks member\(s\) cond\.png"):
        read_all_pairs([path])
    path = task_shard_paths(pair_dir, 1, "train")[0]
    with open(path, "r+b") as f:
        f.truncate(2000)
    with pytest.raises(ShardError, match=path):
        read_all_pairs([path])


def test_train_pair_batches_shapes_alignment_determinism(pair_dir):
    paths = task_shard_paths(pair_dir, 2, "train")

    def collect(seed):
        return [tuple(t.clone() for t in batch) for batch in
                train_pair_batches(paths, batch_size=4, num_batches=10, seed=seed)]

    batches = collect(3)
    assert len(batches) == 10  # 40 samples drawn from 30: resampled
    for a, b, y in batches:
        assert a.shape == b.shape == (4, 1, 8, 8) and a.dtype == b.dtype == torch.float32 and y.dtype == torch.int64
        assert a.min() >= -1 and b.max() <= 1
        torch.testing.assert_close(a, -b, rtol=0, atol=1e-6)  # a = 255 - b: rows stay paired
        assert torch.equal(torch.round((b[:, 0, 0, 0] + 1) * 127.5).long(), y)  # and labelled
    assert all(torch.equal(p, q) for x, z in zip(batches, collect(3)) for p, q in zip(x, z))
    assert not all(torch.equal(x[0], z[0]) for x, z in zip(batches, collect(4)))
    loader = train_pair_batches(paths, batch_size=4, num_batches=2, seed=0, num_workers=2)
    pickle.dumps(loader.pipeline[0].dataset)  # spawned loader workers need a picklable pipeline
    with pytest.raises(ValueError, match="train_pair_batches needs at least one shard"):
        train_pair_batches([], batch_size=1, num_batches=1, seed=0)


def test_unlabelled_pairs_and_invalid_inputs(tmp_path, pair_tasks):
    a, b, _ = pair_tasks[0]["train"]
    manifest = write_paired_shards(tmp_path / "nolabels", [{"train": (a, b, np.full(len(a), -1))}])
    assert manifest["num_classes"] == 0 and manifest["tasks"] == [[-1]]
    assert read_all_pairs(task_shard_paths(tmp_path / "nolabels", 1, "train"))[2].tolist() == [-1] * len(a)

    bad = [
        ([pair_tasks[0], {"train": pair_tasks[1]["train"]}], "task 2 has splits"),
        ([{"train": (a, b[:, :4], pair_tasks[0]["train"][2])}], "a is"),
        ([{"train": (a[:0], b[:0], np.zeros(0, np.int64))}], "task 1 has no samples in split 'train'"),
        ([{"train": (a.astype(np.float32), b, pair_tasks[0]["train"][2])}], "must be uint8"),
    ]
    for tasks, message in bad:
        with pytest.raises(ValueError, match=message):
            write_paired_shards(tmp_path / "bad", tasks)
    assert not (tmp_path / "bad").exists()


def test_failed_paired_write_leaves_previous_set(pair_dir, pair_tasks, monkeypatch):
    before = _file_digests(pair_dir)

    class FailingTarWriter(wds.TarWriter):
        def write(self, obj):
            if obj["__key__"] == "02-0000003":
                raise OSError("disk full (simulated)")
            return super().write(obj)

    monkeypatch.setattr(shards_module.wds, "TarWriter", FailingTarWriter)
    with pytest.raises(OSError, match="simulated"):
        write_paired_shards(pair_dir, pair_tasks[::-1], samples_per_shard=4)
    assert _file_digests(pair_dir) == before
    assert [p.name for p in pair_dir.parent.iterdir()] == [pair_dir.name]


# ---------------------------------------------------------------------------------------------
# RGB (image_data.channels 3)
# ---------------------------------------------------------------------------------------------
RED, BLUE = (200, 30, 10), (5, 60, 220)


def _write_rgb_ab(path, a_colour, b_colour, height=8, width=16):
    pixels = np.empty((height, width, 3), np.uint8)
    pixels[:, : width // 2], pixels[:, width // 2 :] = a_colour, b_colour
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def test_pix2pix_reader_in_rgb_keeps_colours_halves_and_resizes(tmp_path):
    root = tmp_path / "edges2colours"
    for i in (2, 1):
        _write_rgb_ab(root / "train" / f"{i}_AB.png", [c // i for c in RED], [c // i for c in BLUE])
    a, b = load_pix2pix_folder(root, "train", channels=3)
    assert a.shape == b.shape == (2, 8, 8, 3) and a.dtype == b.dtype == np.uint8
    assert a[:, 0, 0].tolist() == [list(RED), [c // 2 for c in RED]]  # 1_AB.png first, its colours intact
    assert b[:, 0, 0].tolist() == [list(BLUE), [c // 2 for c in BLUE]]
    assert (a == a[:, :1, :1]).all() and (b == b[:, :1, :1]).all()  # no bleed across the seam
    a4, b4 = load_pix2pix_folder(root, "train", image_size_px=4, channels=3)
    assert a4.shape == (2, 4, 4, 3) and (a4 == a[:, :4, :4]).all() and (b4 == b[:, :4, :4]).all()
    b_gray, a_gray = load_pix2pix_folder(root, "train", direction="BtoA")  # channels 1: PIL's gray, as before
    expected = np.asarray(Image.fromarray(np.full((1, 1, 3), RED, np.uint8)).convert("L"))[0, 0]
    assert a_gray.shape == (2, 8, 8) and (a_gray[0] == expected).all()
    with pytest.raises(ValueError, match="channels must be 1 .* or 3"):
        load_pix2pix_folder(root, "train", channels=2)


def _rgb_pairs(n, seed):
    """RGB b with pixel (0, 0) = (label, 0, 255), a = 255 - b: rows and channel order can be checked."""
    a, b, labels = _pairs(n, 0, seed)
    b = np.repeat(b[..., None], 3, axis=-1)
    b[..., 1] = np.random.default_rng(seed).integers(0, 256, b.shape[:3], dtype=np.uint8)
    b[:, 0, 0] = np.stack([labels, np.zeros_like(labels), np.full_like(labels, 255)], axis=-1)
    return 255 - b, b, labels


def test_rgb_pairs_round_trip_through_shards_and_the_training_loader(tmp_path):
    tasks = [{"train": _rgb_pairs(12, seed=1), "test": _rgb_pairs(5, seed=2)}]
    manifest = write_paired_shards(tmp_path / "rgb", tasks, samples_per_shard=5)
    assert manifest["image_size_px"] == 8
    for split, (a, b, labels) in tasks[0].items():
        got_a, got_b, got_labels = read_all_pairs(task_shard_paths(tmp_path / "rgb", 1, split))
        assert got_a.shape == got_b.shape == (len(labels), 8, 8, 3)
        assert np.array_equal(got_a, a) and np.array_equal(got_b, b) and np.array_equal(got_labels, labels)
    assert read_all(task_shard_paths(tmp_path / "rgb", 1, "test"))[0].shape == (5, 8, 8, 3)

    batches = list(train_pair_batches(task_shard_paths(tmp_path / "rgb", 1, "train"), batch_size=4,
                                      num_batches=3, seed=0))
    assert len(batches) == 3
    for a, b, y in batches:
        assert a.shape == b.shape == (4, 3, 8, 8) and a.dtype == torch.float32
        assert a.min() >= -1 and b.max() <= 1
        torch.testing.assert_close(a, -b, rtol=0, atol=1e-6)  # rows stay paired
        assert torch.equal(torch.round((b[:, 0, 0, 0] + 1) * 127.5).long(), y)  # R of pixel (0, 0): the label
        assert (b[:, 1, 0, 0] == -1).all() and (b[:, 2, 0, 0] == 1).all()  # G = 0, B = 255: channels in order

    gray = _pairs(12, 0, seed=3)
    with pytest.raises(ValueError, match="mix grayscale"):
        write_paired_shards(tmp_path / "mixed", [tasks[0], {"train": gray, "test": gray}])
    with pytest.raises(ValueError, match=r"uint8 \(N, H, W\), got"):  # class shards stay grayscale
        write_dataset_shards(tmp_path / "classes", splits={"train": (tasks[0]["train"][1], tasks[0]["train"][2])},
                             tasks=[[0, 1]])

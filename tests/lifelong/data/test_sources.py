import gzip

import numpy as np
import pytest
from PIL import Image

from lifelong.data import sources
from lifelong.data.sources import DATASETS, DataSourceError, load_split, read_idx


def _write_idx(path, array: np.ndarray, *, compress: bool = True) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload, mtime=0) if compress else payload)


@pytest.fixture
def tiny_idx_root(tmp_path):
    rng = np.random.RandomState(0)
    for prefix, n in (("train", 5), ("t10k", 3)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.randint(0, 256, (n, 28, 28)))
        # The labels file is plain (not gzip): the reader must detect the format by content.
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10, compress=False)
    return tmp_path


def test_idx_round_trip(tmp_path):
    array = np.random.RandomState(1).randint(0, 256, (4, 7, 5)).astype(np.uint8)
    _write_idx(tmp_path / "a.gz", array)
    _write_idx(tmp_path / "a", array, compress=False)
    assert np.array_equal(read_idx(tmp_path / "a.gz", expected_ndim=3), array)
    assert np.array_equal(read_idx(tmp_path / "a"), array)


@pytest.mark.parametrize("corruption", ["truncated", "bad_magic", "broken_gzip"])
def test_idx_corrupt_file_names_the_file(tmp_path, corruption):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    _write_idx(path, np.zeros((3, 4, 4)), compress=False)
    raw = path.read_bytes()
    if corruption == "truncated":
        path.write_bytes(gzip.compress(raw[:-5]))
    elif corruption == "bad_magic":
        path.write_bytes(gzip.compress(b"\x12\x34" + raw[2:]))
    else:
        path.write_bytes(gzip.compress(raw)[:-10])
    with pytest.raises(DataSourceError, match="train-images-idx3-ubyte.gz"):
        read_idx(path)


def test_fashion_mnist_from_root(tiny_idx_root):
    images, labels = load_split("fashion_mnist", "test", root=str(tiny_idx_root))
    assert images.shape == (3, 28, 28) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and labels.tolist() == [0, 1, 2]


def test_fashion_mnist_from_env_and_resized(tiny_idx_root, monkeypatch):
    monkeypatch.setenv("LIFELONG_DATA_ROOT", str(tiny_idx_root))
    images, labels = load_split("fashion_mnist", "train", image_size_px=32)
    assert images.shape == (5, 32, 32) and len(labels) == 5


def test_fashion_mnist_missing_lists_fixes_and_paths(tmp_path, monkeypatch):
    monkeypatch.delenv("LIFELONG_DATA_ROOT", raising=False)
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "debian")
    monkeypatch.setattr(sources, "TORCHVISION_CACHE_DIR", tmp_path / "cache")
    with pytest.raises(DataSourceError) as info:
        load_split("fashion_mnist", "train", root=str(tmp_path / "nowhere"))
    message = str(info.value)
    for expected in ("data.root", "LIFELONG_DATA_ROOT", "apt-get install dataset-fashion-mnist",
                     "data.download: true", str(tmp_path / "nowhere"), str(tmp_path / "debian")):
        assert expected in message


def test_digits_shapes_ranges_and_split():
    train_x, train_y = load_split("digits", "train")
    test_x, test_y = load_split("digits", "test")
    assert train_x.shape[1:] == (28, 28) and train_x.dtype == np.uint8
    assert len(train_x) + len(test_x) == 1797 and len(test_x) == 359
    assert train_x.max() == 255 and train_x.min() == 0
    assert set(train_y.tolist()) == set(range(10)) and train_y.dtype == np.int64
    # Deterministic: a second load gives the same bytes.
    again_x, again_y = load_split("digits", "test")
    assert np.array_equal(again_x, test_x) and np.array_equal(again_y, test_y)
    assert load_split("digits", "train", image_size_px=12)[0].shape[1:] == (12, 12)


def test_image_folder(tmp_path):
    # Class "cat" exists only in train: test labels must still use the global class order.
    for split, classes in (("train", ["ant", "bee", "cat"]), ("test", ["ant", "cat"])):
        for value, name in enumerate(classes):
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (10, 10), (value * 50, 0, i)).save(folder / f"{i}.png")
    (tmp_path / "train" / "ant" / "notes.txt").write_text("ignored")

    images, labels = load_split("image_folder", "train", root=str(tmp_path))
    assert images.shape == (6, 10, 10) and images.dtype == np.uint8
    assert labels.tolist() == [0, 0, 1, 1, 2, 2]
    images, labels = load_split("image_folder", "test", root=str(tmp_path), image_size_px=8)
    assert images.shape == (4, 8, 8) and labels.tolist() == [0, 0, 2, 2]


def test_image_folder_missing_names_the_folder(tmp_path):
    with pytest.raises(DataSourceError, match=str(tmp_path / "train")):
        load_split("image_folder", "train", root=str(tmp_path))
    (tmp_path / "train" / "empty_class").mkdir(parents=True)
    with pytest.raises(DataSourceError, match="no .png/.jpg"):
        load_split("image_folder", "train", root=str(tmp_path))


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ValueError) as info:
        load_split("fashion-mnist", "train")
    assert all(name in str(info.value) for name in DATASETS)
    with pytest.raises(ValueError, match="train"):
        load_split("digits", "validation")

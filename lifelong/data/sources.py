"""Raw datasets as plain arrays: ``images`` uint8 (N, H, W) grayscale and ``labels`` int64 (N,).

Everything downstream (sharding, training, evaluation) only sees these two arrays, so adding a
dataset means adding one ``_load_<name>`` function and an entry in ``DATASETS``.

Fashion-MNIST is looked up offline first, because clusters and CI often have no internet:
  1. ``root`` argument, else env ``LIFELONG_DATA_ROOT``: a folder holding the four idx files;
  2. Debian's ``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist``);
  3. a previous torchvision download in ``~/.cache/lifelong/torchvision``;
  4. a torchvision download into that cache, only when ``download=True``.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
from PIL import Image

DATASETS = ("fashion_mnist", "digits", "image_folder")
SPLITS = ("train", "test")

# Module-level so tests can point them at empty folders and never touch the real machine.
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
TORCHVISION_CACHE_DIR = Path("~/.cache/lifelong/torchvision").expanduser()

_IDX_PREFIX = {"train": "train", "test": "t10k"}  # the idx files call the test split "t10k"
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


class DataSourceError(RuntimeError):
    """A raw dataset cannot be found or read; the message says how to fix it."""


def load_split(
    dataset: str,
    split: str,
    *,
    root: str | None = None,
    download: bool = False,
    image_size_px: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Load one split of a raw dataset as (uint8 images (N, H, W), int64 labels (N,)).

    ``image_size_px`` resizes every image to a square of that size with PIL bilinear
    (deterministic, so shards built from it stay byte-reproducible).
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; valid names: {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")

    if dataset == "fashion_mnist":
        images, labels = _load_fashion_mnist(split, root=root, download=download)
    elif dataset == "digits":
        # 8x8 is too small for the generators' downsampling path: default to MNIST's 28 px.
        images, labels = _load_digits(split)
        image_size_px = image_size_px or 28
    else:
        images, labels = _load_image_folder(split, root=root, image_size_px=image_size_px)

    if image_size_px is not None and images.shape[1:] != (image_size_px, image_size_px):
        images = _resize(images, image_size_px)
    return np.ascontiguousarray(images, dtype=np.uint8), labels.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# idx files (the MNIST family format): magic = 0x00 0x00 <dtype> <ndim>, then ndim big-endian
# uint32 sizes, then the raw bytes.  http://yann.lecun.com/exdb/mnist/ (section "FILE FORMATS").
# ---------------------------------------------------------------------------------------------
_IDX_UBYTE = 0x08


def read_idx(path: str | Path, *, expected_ndim: int | None = None) -> np.ndarray:
    """Read an idx file (gzip or plain, detected by content) into a uint8 array.

    Any corruption (bad magic, truncated data, broken gzip) raises ``DataSourceError`` naming the
    file: a silently short dataset would only surface much later as odd metrics.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":  # gzip magic; don't trust the file extension
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise DataSourceError(f"cannot read idx file {path}: {e}") from e

    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _IDX_UBYTE:
        raise DataSourceError(f"{path} is not an unsigned-byte idx file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    if expected_ndim is not None and ndim != expected_ndim:
        raise DataSourceError(f"{path}: expected an idx file with {expected_ndim} dims, found {ndim}")
    header_bytes = 4 + 4 * ndim
    if len(raw) < header_bytes:
        raise DataSourceError(f"{path} is truncated (incomplete header)")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape)) if shape else 0
    if len(raw) - header_bytes != expected:
        raise DataSourceError(
            f"{path} is truncated or corrupt: header says shape {shape} ({expected} bytes), "
            f"file holds {len(raw) - header_bytes} data bytes"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_bytes).reshape(shape).copy()


def _find_idx_pair(folder: Path, split: str) -> tuple[Path, Path] | None:
    """Return (images, labels) idx paths in ``folder`` for ``split``, gzip or plain, or None."""
    found = []
    for kind, ndim in (("images", 3), ("labels", 1)):
        stem = f"{_IDX_PREFIX[split]}-{kind}-idx{ndim}-ubyte"
        candidates = [folder / stem, folder / f"{stem}.gz"]
        hit = next((p for p in candidates if p.is_file()), None)
        if hit is None:
            return None
        found.append(hit)
    return found[0], found[1]


def _read_idx_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(images_path, expected_ndim=3)
    labels = read_idx(labels_path, expected_ndim=1)
    if len(images) != len(labels):
        raise DataSourceError(
            f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels"
        )
    return images, labels.astype(np.int64)


def _load_fashion_mnist(split: str, *, root: str | None, download: bool) -> tuple[np.ndarray, np.ndarray]:
    root = root or os.environ.get("LIFELONG_DATA_ROOT")
    folders = [Path(root).expanduser()] if root else []
    folders += [DEBIAN_FASHION_MNIST_DIR, TORCHVISION_CACHE_DIR / "FashionMNIST" / "raw"]

    tried = []
    for folder in folders:
        pair = _find_idx_pair(folder, split)
        if pair is not None:
            # A corrupt file found here is a real problem: raise rather than fall through.
            return _read_idx_pair(*pair)
        tried.append(f"{folder} (no {_IDX_PREFIX[split]}-*-ubyte[.gz] files)")

    if download:
        try:
            import torchvision  # lazy: heavy, and only this fallback needs it

            ds = torchvision.datasets.FashionMNIST(
                str(TORCHVISION_CACHE_DIR), train=(split == "train"), download=True
            )
            return ds.data.numpy().astype(np.uint8), ds.targets.numpy().astype(np.int64)
        except Exception as e:  # no internet, no torchvision, ...: report it with the rest
            tried.append(f"torchvision download into {TORCHVISION_CACHE_DIR} failed: {e!r}")
    else:
        tried.append("torchvision download (skipped: data.download is false)")

    raise DataSourceError(
        f"Fashion-MNIST ({split} split) not found. Fix it in one of three ways:\n"
        "  1. set `data.root` in params.yaml (or env LIFELONG_DATA_ROOT) to a folder with the idx "
        "files train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], "
        "t10k-labels-idx1-ubyte[.gz];\n"
        "  2. `apt-get install dataset-fashion-mnist` (installs them under /usr/share/datasets/fashion-mnist);\n"
        "  3. set `data.download: true` in params.yaml on a machine with internet access.\n"
        "Tried:\n  - " + "\n  - ".join(tried)
    )


# ---------------------------------------------------------------------------------------------
# scikit-learn digits: bundled with sklearn, so always available offline (tests, smoke runs).
# ---------------------------------------------------------------------------------------------
_DIGITS_TEST_FRACTION = 0.2


def _load_digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Values are 0..16; scale to the full uint8 range like every other source.
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)  # (1797, 8, 8)
    labels = digits.target.astype(np.int64)

    # RandomState's stream is frozen by NumPy's compatibility policy (Generator's is not), so the
    # split, and hence the shard digests, stay the same across NumPy upgrades.
    order = np.random.RandomState(0).permutation(len(labels))
    n_test = int(round(len(labels) * _DIGITS_TEST_FRACTION))
    # Sorting keeps each split in original-index order: only membership is random.
    chosen = np.sort(order[-n_test:] if split == "test" else order[:-n_test])
    return images[chosen], labels[chosen]


# ---------------------------------------------------------------------------------------------
# image folders: root/<split>/<class_name>/*.png|jpg
# ---------------------------------------------------------------------------------------------
def _load_image_folder(
    split: str, *, root: str | None, image_size_px: int | None
) -> tuple[np.ndarray, np.ndarray]:
    if not root:
        raise DataSourceError("dataset 'image_folder' needs `data.root` pointing at root/<split>/<class>/*.png")
    root_path = Path(root).expanduser()
    split_dir = root_path / split
    if not split_dir.is_dir():
        raise DataSourceError(f"image folder {split_dir} does not exist (expected {root_path}/<split>/<class>/*.png)")

    # Class indices come from the union of class folders over all splits, so a class missing from
    # one split cannot shift the labels of the others.
    class_names = sorted(
        {d.name for s in SPLITS if (root_path / s).is_dir() for d in (root_path / s).iterdir() if d.is_dir()}
    )
    images, labels = [], []
    for class_index, name in enumerate(class_names):
        class_dir = split_dir / name
        if not class_dir.is_dir():
            continue
        for file in sorted(class_dir.iterdir()):  # sorted: file-system order is not deterministic
            if file.suffix.lower() not in _IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(file) as im:
                    im = im.convert("L")
                    if image_size_px is not None:
                        im = im.resize((image_size_px, image_size_px), Image.BILINEAR)
                    images.append(np.asarray(im, dtype=np.uint8))
            except OSError as e:
                raise DataSourceError(f"cannot read image {file}: {e}") from e
            labels.append(class_index)

    if not images:
        raise DataSourceError(f"image folder {split_dir} holds no .png/.jpg images in class sub-folders")
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise DataSourceError(
            f"images in {split_dir} have different sizes {sorted(shapes)}; set `data.image_size_px` to resize them"
        )
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def _resize(images: np.ndarray, size_px: int) -> np.ndarray:
    """Resize (N, H, W) uint8 images to (N, size_px, size_px) with PIL bilinear."""
    out = np.empty((len(images), size_px, size_px), dtype=np.uint8)
    for i, image in enumerate(images):
        out[i] = np.asarray(Image.fromarray(image).resize((size_px, size_px), Image.BILINEAR))
    return out

"""Fashion-MNIST from the IDX files Debian's ``dataset-fashion-mnist`` installs. Never downloads.

An IDX file is a big-endian header - two zero bytes, a type code (``0x08``: unsigned byte) and the
number of dimensions ``d`` - then ``d`` big-endian uint32 sizes, then the data in C order::

    images: magic 0x00000803, sizes (N, 28, 28), N*784 uint8 pixels
    labels: magic 0x00000801, size (N,), N uint8 class indices in [0, 10)

Images become float32 ``(N, 1, 28, 28)`` tensors, scaled to [0, 1] and normalised with the training
set's mean 0.286 and standard deviation 0.353; labels become int64.

References
----------
Xiao, Rasul & Vollgraf, "Fashion-MNIST: a novel image dataset for benchmarking machine learning
algorithms", 2017. LeCun et al., the IDX format of the MNIST database, 1998.
"""
from __future__ import annotations

import gzip
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from .errors import DatasetError, choices

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.286, 0.353  # of the 60,000 training images, pixels in [0, 1]
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
DATASETS = ("fashion-mnist",)  # names the CLI accepts for --finetune-data


def read_idx(path: str | os.PathLike, limit: int | None = None) -> np.ndarray:
    """Read a gzip-compressed IDX file of unsigned bytes, at most ``limit`` items along the first axis.

    Only the bytes needed are decompressed, so a small ``limit`` is cheap.

    Raises
    ------
    DatasetError
        The file is missing, truncated, or not an unsigned-byte IDX file.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"'{path}' does not exist; install it with: apt-get install -y {FASHION_MNIST_PACKAGE}")
    try:
        with gzip.open(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4 or head[:2] != b"\x00\x00" or head[2] != 0x08 or not 1 <= head[3] <= 4:
                raise DatasetError(f"'{path}' is not an unsigned-byte IDX file (magic bytes {head.hex() or 'missing'})")
            ndim = head[3]
            raw = f.read(4 * ndim)
            if len(raw) < 4 * ndim:
                raise DatasetError(f"'{path}' is truncated inside its IDX header")
            shape = [int(d) for d in np.frombuffer(raw, dtype=">u4")]
            if limit is not None:
                shape[0] = min(shape[0], limit)
            size = math.prod(shape)
            data = f.read(size)
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise DatasetError(f"'{path}' cannot be read as gzip: {e}") from e
    if len(data) < size:
        raise DatasetError(f"'{path}' is truncated: header says {shape}, found {len(data)} of {size} bytes")
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def fashion_mnist(
    split: str = "train",
    *,
    root: str | os.PathLike = FASHION_MNIST_DIR,
    limit: int | None = None,
    normalize: bool = True,
) -> TensorDataset:
    """Fashion-MNIST as a ``TensorDataset`` of ``(images (N, 1, 28, 28) float32, labels (N,) int64)``.

    Parameters
    ----------
    split : "train" (60,000 images) or "test" (10,000)
    root : directory holding the four ``*-idx?-ubyte.gz`` files
    limit : keep only the first ``limit`` images (decompressing only those)
    normalize : subtract 0.286 and divide by 0.353 after scaling pixels to [0, 1]

    Raises
    ------
    DatasetError
        Unknown split, or the files are missing (the message names the Debian package) or malformed.
    """
    if split not in _FILES:
        raise DatasetError(f"unknown Fashion-MNIST split '{split}', valid choices are {choices(_FILES)}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DatasetError(f"limit must be a positive int or None, got {limit!r}")
    root = Path(root)
    paths = [root / name for name in _FILES[split]]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise DatasetError(f"Fashion-MNIST files {missing} not found in '{root}'; "
                           f"install them with: apt-get install -y {FASHION_MNIST_PACKAGE}")
    images, labels = read_idx(paths[0], limit), read_idx(paths[1], limit)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.ndim != 1 or len(images) != len(labels):
        raise DatasetError(f"Fashion-MNIST files in '{root}' do not match: images {images.shape}, labels {labels.shape}")
    if labels.size and labels.max() >= len(CLASSES):
        raise DatasetError(f"'{paths[1]}' has label {int(labels.max())}; Fashion-MNIST has {len(CLASSES)} classes")
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    if normalize:
        x = (x - FASHION_MNIST_MEAN) / FASHION_MNIST_STD
    return TensorDataset(x, torch.from_numpy(labels.astype(np.int64)))


@dataclass(frozen=True)
class Loaders:
    """Train, validation and test loaders. ``val`` is carved from the end of the training split."""

    train: DataLoader
    val: DataLoader | None
    test: DataLoader


def fashion_mnist_loaders(
    *,
    batch_size: int = 128,
    val_size: int = 5000,
    train_limit: int | None = None,
    test_limit: int | None = None,
    root: str | os.PathLike = FASHION_MNIST_DIR,
    seed: int = 0,
) -> Loaders:
    """Shuffled training, and ordered validation and test ``DataLoader``s over Fashion-MNIST.

    ``train_limit`` counts the images read from the training split, the ``val_size`` held out from
    them included. The training loader shuffles with a generator seeded by ``seed``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DatasetError(f"batch_size must be a positive int, got {batch_size!r}")
    full = fashion_mnist("train", root=root, limit=train_limit)
    n = len(full)
    if not 0 <= val_size < n:
        raise DatasetError(f"val_size must be in [0, {n}) for {n} training images, got {val_size}")
    x, y = full.tensors
    train = TensorDataset(x[: n - val_size], y[: n - val_size])
    val = TensorDataset(x[n - val_size:], y[n - val_size:]) if val_size else None
    test = fashion_mnist("test", root=root, limit=test_limit)
    gen = torch.Generator().manual_seed(seed)
    return Loaders(
        train=DataLoader(train, batch_size=batch_size, shuffle=True, generator=gen),
        val=DataLoader(val, batch_size=512) if val is not None else None,
        test=DataLoader(test, batch_size=512),
    )


def load_dataset(name: str, **kwargs) -> Loaders:
    """Loaders of a data set known by name (``DATASETS``), for the CLI."""
    if name not in DATASETS:
        raise DatasetError(f"unknown data set '{name}', valid choices are {choices(DATASETS)}")
    return fashion_mnist_loaders(**kwargs)

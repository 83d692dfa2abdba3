"""Small image data for the convolutional VAE baseline: digits and user arrays."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def check_images(images, name: str = "images") -> np.ndarray:
    """``images`` as a float32 ``(n, h, w)`` array in [0, 1], or a ``ValueError`` naming the fix.

    Parameters
    ----------
    images
        Array-like of grey images ``(n_images, height, width)``.
    name
        How the error messages call it.
    """
    arr = np.asarray(images)
    if arr.ndim != 3:
        raise ValueError(
            f"{name} must be a 3-D array (n_images, height, width), got shape {arr.shape}. "
            "For colour or channel-first data, convert to one grey channel first."
        )
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 images).")
    if min(arr.shape[1:]) < 4:
        raise ValueError(f"{name}: images must be at least 4 x 4 pixels, got {arr.shape[1:]}.")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"{name} must hold real numbers, got dtype {arr.dtype}.")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} holds NaN or infinite values; remove or fill them.")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0 or hi > 1:
        raise ValueError(
            f"{name} must lie in [0, 1], found [{lo:g}, {hi:g}]: divide by the maximum "
            "intensity (e.g. 255 or 16) first."
        )
    return arr


def digits(binarize: bool = True, threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's handwritten digits (1,797 images of 8 x 8; ships with it, no download).

    Returns ``(images, labels)``: ``(1797, 8, 8)`` float32 in [0, 1] (intensities / 16,
    binarised at ``threshold`` by default so the Bernoulli likelihood is a proper one) and
    the digit of each image.

    Parameters
    ----------
    binarize
        Binarise the intensities.
    threshold
        Intensity (in [0, 1]) above which a pixel is 1.
    """
    from sklearn.datasets import load_digits

    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)
    if binarize:
        images = (images > threshold).astype(np.float32)
    return images, data.target.astype(np.int64)


def load_images(
    path: str | os.PathLike, key: str | None = None, labels_key: str | None = "labels"
) -> tuple[np.ndarray, np.ndarray | None]:
    """Images from a ``.npy`` (one array) or ``.npz`` (``key``, default the first array).

    Returns ``(images, labels)``; ``labels`` is the ``.npz``'s ``labels_key`` array if present.
    The array is checked with :func:`check_images`; the file is only read.

    Parameters
    ----------
    path
        A ``.npy`` or ``.npz`` file.
    key
        The ``.npz`` array holding the images (default: the first).
    labels_key
        The ``.npz`` array holding the labels, if present.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No image file at {path}.")
    if path.suffix == ".npy":
        return check_images(np.load(path, allow_pickle=False), str(path)), None
    if path.suffix != ".npz":
        raise ValueError(f"Image files must be .npy or .npz, got {path.name}.")
    with np.load(path, allow_pickle=False) as data:
        names = [n for n in data.files if n != labels_key]
        if key is None:
            if not names:
                raise ValueError(f"{path} holds no image array.")
            key = names[0]
        if key not in data.files:
            raise KeyError(f"{path} has no array {key!r}; it has {data.files}.")
        images = check_images(data[key], f"{path}[{key!r}]")
        labels = data[labels_key] if labels_key in data.files else None
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"{path}: {len(labels)} labels for {len(images)} images.")
    return images, labels

"""Train / validation / test splits of a subject's images (docs/method.md §1.3).

Every split derives from one seeded permutation π = ``torch.randperm(n)``:

* ``clean`` (default): train = π[:⌊0.75 n⌋], val = π[⌊0.75 n⌋:⌊0.85 n⌋], test = the rest.
* ``paper`` (published): train = the 85 % tuning split, no val, test = the 15 % held out, plus the
  five cross-validation folds of the published selection P-B, drawn from a pool inside the
  tuning split.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cortexcl.atomic import atomic_write_json
from cortexcl.errors import InputError

PROTOCOLS = ("clean", "paper")
N_FOLDS = 5

_Fold = tuple[np.ndarray, np.ndarray]


def _indices(values: Any) -> np.ndarray:
    array = np.asarray(values, dtype=np.int64).reshape(-1)
    array.setflags(write=False)
    return array


@dataclass(frozen=True, eq=False)
class Split:
    """Image indices of one subject's split.

    Attributes
    ----------
    train, val, test : numpy.ndarray
        int64 image indices (rows of the fMRI arrays), in permutation order.
    seed : int
        Seed of the permutation.
    protocol : {"clean", "paper"}
    folds : tuple of (numpy.ndarray, numpy.ndarray)
        ``paper`` only: the (fold_train, fold_val) image indices of the five CV folds.
    """

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    seed: int
    protocol: str
    folds: tuple[_Fold, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise InputError(
                f"unknown split protocol {self.protocol!r} (valid: {', '.join(PROTOCOLS)})"
            )
        for name in ("train", "val", "test"):
            object.__setattr__(self, name, _indices(getattr(self, name)))
        folds = tuple((_indices(train), _indices(val)) for train, val in self.folds)
        object.__setattr__(self, "folds", folds)
        object.__setattr__(self, "seed", int(self.seed))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Split):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    @property
    def n_images(self) -> int:
        """Number of images the split covers."""
        return int(self.train.size + self.val.size + self.test.size)

    def to_dict(self) -> dict[str, Any]:
        """Return the split as a JSON-ready dict of plain Python values."""
        return {
            "protocol": self.protocol,
            "seed": self.seed,
            "n_images": self.n_images,
            "train": self.train.tolist(),
            "val": self.val.tolist(),
            "test": self.test.tolist(),
            "folds": [{"train": train.tolist(), "val": val.tolist()} for train, val in self.folds],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Split:
        """Rebuild a split from :meth:`to_dict` output.

        Raises
        ------
        InputError
            If a key is missing or the parts are not disjoint image indices.
        """
        try:
            split = cls(
                train=data["train"],
                val=data["val"],
                test=data["test"],
                seed=data["seed"],
                protocol=data["protocol"],
                folds=tuple((fold["train"], fold["val"]) for fold in data.get("folds", ())),
            )
        except (KeyError, TypeError, ValueError) as error:
            if isinstance(error, InputError):
                raise
            raise InputError(f"not a split record ({type(error).__name__}: {error})") from None
        parts = np.concatenate([split.train, split.val, split.test])
        if np.unique(parts).size != parts.size or (parts.size and parts.min() < 0):
            raise InputError("not a split record: parts overlap or hold negative indices")
        return split

    def save(self, path: str | Path) -> None:
        """Write the split to ``path`` as JSON (atomically)."""
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Split:
        """Read a split written by :meth:`save`.

        Raises
        ------
        InputError
            If the file is missing or not a split record.
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(f"{path}: file not found") from None
        except (OSError, ValueError) as error:
            raise InputError(f"{path}: not a JSON split record ({error})") from None
        if not isinstance(data, dict):
            raise InputError(f"{path}: not a split record")
        try:
            return cls.from_dict(data)
        except InputError as error:
            raise InputError(f"{path}: {error}") from None


def permutation(n: int, seed: int = 0) -> np.ndarray:
    """Return the seeded permutation π of ``range(n)`` that every split is cut from.

    Equal to ``torch.randperm(n)`` drawn right after ``torch.manual_seed(seed)``, but made with
    a private generator, so torch's global random state is left alone.

    Parameters
    ----------
    n : int
        Number of images.
    seed : int
        Seed of the torch generator.

    Returns
    -------
    numpy.ndarray
        int64 permutation of ``0 … n-1``.
    """
    generator = torch.Generator().manual_seed(int(seed))
    return torch.randperm(int(n), generator=generator).numpy().astype(np.int64)


def _cut(fraction: float, n: int) -> int:
    # floor(fraction * n), immune to products such as 0.29 * 100 = 28.999999999999996
    return math.floor(fraction * n + 1e-9)


def check_split(split: Split, source: str = "split") -> None:
    """Refuse a split too small to fit, select and score an encoding model.

    Parameters
    ----------
    split : Split
    source : str
        What the images came from (a data folder), named in the error.

    Raises
    ------
    InputError
        ``clean``: fewer than 2 train, val or test images; ``paper``: no cross-validation
        folds or fewer than 2 test images.
    """
    if split.protocol == "clean":
        sizes = (split.train.size, split.val.size, split.test.size)
        if min(sizes) < 2:
            raise InputError(f"{source}: {sum(sizes)} images give {sizes[0]} train, {sizes[1]} "
                             f"val and {sizes[2]} test images; the clean protocol needs at "
                             "least 2 in each")
    elif not split.folds or split.test.size < 2:
        raise InputError(f"{source}: too few images for the paper protocol (cross-validation "
                         "folds and at least 2 test images)")


def make_splits(
    n_images: int,
    seed: int = 0,
    protocol: str = "clean",
    fractions: tuple[float, float, float] = (0.75, 0.10, 0.15),
    test: Sequence[int] | np.ndarray | None = None,
) -> Split:
    """Split ``n_images`` images into train, validation and test parts.

    Parameters
    ----------
    n_images : int
        Number of images (rows of the subject's fMRI arrays).
    seed : int
        Seed of the permutation (see :func:`permutation`).
    protocol : {"clean", "paper"}
        ``clean``: train = π[:⌊f₀n⌋], val = π[⌊f₀n⌋:⌊(f₀+f₁)n⌋], test = the rest.
        ``paper``: train = π[:⌊(f₀+f₁)n⌋] (the tuning split), val empty, test = the rest, and
        five folds over the pool π[:⌊f₀n⌋ + ⌊f₁n⌋]: with f = ⌊0.2·pool⌋, fold k validates on
        pool positions [k f, (k+1) f) and trains on the rest of the pool.
    fractions : tuple of float
        Train, validation and test fractions; they must sum to 1.
    test : array_like of int, optional
        Fixed test images (e.g. the images of held-out sessions). Then π permutes the other
        m images, ``clean`` cuts train = π[:⌊f₀/(f₀+f₁)·m⌋] and val = the rest, ``paper``
        trains on all m with folds as above, and the test fraction is unused.

    Returns
    -------
    Split

    Raises
    ------
    InputError
        On an unknown protocol, fewer than one image, fractions that are negative or do not
        sum to 1, or fixed test images that are out of range, none or all of them.
    """
    if protocol not in PROTOCOLS:
        raise InputError(f"unknown split protocol {protocol!r} (valid: {', '.join(PROTOCOLS)})")
    if int(n_images) != n_images or n_images < 1:
        raise InputError(f"n_images must be a positive integer, got {n_images!r}")
    n_images = int(n_images)
    if len(fractions) != 3 or min(fractions) < 0 or not math.isclose(sum(fractions), 1.0):
        raise InputError(
            f"split fractions must be three non-negative numbers summing to 1, got {fractions}"
        )
    if test is None:
        order = permutation(n_images, seed)
        train_end = _cut(fractions[0], n_images)
        pool_end = train_end + _cut(fractions[1], n_images)
        val_end = _cut(fractions[0] + fractions[1], n_images)
        pool, held = order[:val_end], order[val_end:]
    else:
        held = np.unique(np.asarray(test, dtype=np.int64))
        if held.size and (held[0] < 0 or held[-1] >= n_images):
            raise InputError(f"test images must be rows 0-{n_images - 1}")
        if held.size in (0, n_images):
            raise InputError(f"fixed test images: {held.size} of {n_images}; the split needs "
                             "some images for test and some for training")
        rest = np.setdiff1d(np.arange(n_images), held)
        pool = rest[permutation(rest.size, seed)]
        pool_end = pool.size
        share = fractions[0] / (fractions[0] + fractions[1]) if fractions[0] else 0.0
        train_end = _cut(share, pool.size)
    if protocol == "clean":
        return Split(train=pool[:train_end], val=pool[train_end:], test=held, seed=seed,
                     protocol=protocol)
    fold_pool = pool[:pool_end]
    fold_size = _cut(1 / N_FOLDS, fold_pool.size)
    folds = []
    for k in range(N_FOLDS):
        start, stop = k * fold_size, (k + 1) * fold_size
        folds.append((np.concatenate([fold_pool[:start], fold_pool[stop:]]),
                      fold_pool[start:stop]))
    return Split(train=pool, val=pool[:0], test=held, seed=seed, protocol=protocol,
                 folds=tuple(folds))

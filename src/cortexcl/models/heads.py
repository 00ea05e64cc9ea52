"""Projection head and the size rules of the contrastive models (docs/method.md §2.1, §9 item 7).

Every contrastive model maps both modalities into a hidden space of width ``h`` and then through
one shared non-linear head ``g`` into an embedding space of width ``z``. For an ROI of ``n``
vertices, ``h = floor(0.8 n)`` and ``z = floor(0.2 n)``.

ROIs below :data:`MIN_ROI_VERTICES` vertices give degenerate heads (``h`` of 0 or 1 for
``n < 5``) and unreliable scores; :func:`check_roi_size` is the single filter that every stage
applies.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

from torch import nn

from cortexcl.errors import InputError

MIN_ROI_VERTICES = 20


def check_roi_size(n: int, minimum: int = MIN_ROI_VERTICES, what: str = "ROI") -> None:
    """Raise if an ROI is too small to be tuned or scored.

    Parameters
    ----------
    n : int
        Number of vertices of the ROI.
    minimum : int
        Smallest accepted size; :data:`MIN_ROI_VERTICES` unless a stage states otherwise.
    what : str
        Name of the ROI used in the message, e.g. ``"subj01 lh mTL-faces"``.

    Raises
    ------
    InputError
        If ``n < minimum``.
    """
    if n < minimum:
        raise InputError(f"{what}: {n} vertices, fewer than the minimum of {minimum}")


def check_roi_sizes(sizes: Mapping[str, int], minimum: int, where: str | Path) -> None:
    """Raise if no requested ROI reaches ``minimum`` vertices: there is nothing to encode.

    Parameters
    ----------
    sizes : mapping of str to int
        Vertices of every requested ROI, e.g. ``{"lh mTL-faces": 0, "lh V1v": 710}``.
    minimum : int
        Smallest size encoded; smaller ROIs are left out.
    where : str or Path
        The data the ROIs come from, named in the message.

    Raises
    ------
    InputError
        If every ROI of ``sizes`` is smaller than ``minimum``, or ``sizes`` is empty.
    """
    if not any(n >= minimum for n in sizes.values()):
        listed = ", ".join(f"{name} {n}" for name, n in sizes.items())
        raise InputError(f"{where}: nothing to encode, every requested ROI has fewer than "
                         f"{minimum} vertices ({listed})")


def head_dims(
    n_vertices: int, h_ratio: float = 0.8, z_ratio: float = 0.2, min_dim: int = 2
) -> tuple[int, int]:
    """Hidden and embedding sizes for an ROI of ``n_vertices`` vertices.

    Parameters
    ----------
    n_vertices : int
        Number of vertices ``n`` of the ROI.
    h_ratio, z_ratio : float
        ``h = floor(h_ratio n)`` and ``z = floor(z_ratio n)``.
    min_dim : int
        Lower bound applied to both sizes, so that tiny inputs still give a usable head.

    Returns
    -------
    tuple of int
        ``(h, z)`` with ``min_dim <= z <= h``.

    Examples
    --------
    >>> head_dims(710)
    (568, 142)
    >>> head_dims(5741)
    (4592, 1148)
    """
    if n_vertices < 1:
        raise InputError(f"n_vertices: expected a positive number of vertices, got {n_vertices}")
    if h_ratio <= 0 or z_ratio <= 0:
        raise InputError(f"head ratios must be positive, got h_ratio={h_ratio}, z_ratio={z_ratio}")
    if min_dim < 1:
        raise InputError(f"min_dim: expected at least 1, got {min_dim}")
    h = max(min_dim, math.floor(h_ratio * n_vertices))
    z = min(h, max(min_dim, math.floor(z_ratio * n_vertices)))
    return h, z


class ProjectionHead(nn.Sequential):
    """The non-linear projection head ``g`` shared by both modalities (docs/method.md §2.1).

    ``Linear(h, h) -> BatchNorm1d(h) -> ReLU -> Linear(h, h) -> BatchNorm1d(h) -> ReLU ->
    Linear(h, z, bias=False)``. The state-dict keys are ``fc1.*, bn1.*, fc2.*, bn2.*, out.*``.

    Apply it to one modality at a time: in training mode BatchNorm then normalises each
    modality with its own batch statistics.

    Parameters
    ----------
    h : int
        Input and hidden width.
    z : int
        Output (embedding) width.
    """

    def __init__(self, h: int, z: int) -> None:
        if h < 1 or z < 1:
            raise InputError(f"projection head: sizes must be positive, got h={h}, z={z}")
        super().__init__(
            OrderedDict(
                [
                    ("fc1", nn.Linear(h, h)),
                    ("bn1", nn.BatchNorm1d(h)),
                    ("relu1", nn.ReLU()),
                    ("fc2", nn.Linear(h, h)),
                    ("bn2", nn.BatchNorm1d(h)),
                    ("relu2", nn.ReLU()),
                    ("out", nn.Linear(h, z, bias=False)),
                ]
            )
        )
        self.h = h
        self.z = z

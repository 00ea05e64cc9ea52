"""ROI masks of simulated subjects: synthetic (scaled real counts) or copied from a real folder.

Both kinds are described by :class:`HemisphereMasks`: the fsaverage challenge-space mask and one
label vector per ROI class, in the format of the Algonauts 2023 ``roi_masks`` files.
"""

from __future__ import annotations

import functools
import io
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cortexcl.atomic import atomic_save_npy, atomic_write_bytes
from cortexcl.data.rois import (
    FSAVERAGE_N_VERTICES,
    HEMISPHERES,
    ROI_CLASSES,
    read_fsaverage_index,
    read_roi_labels,
)
from cortexcl.data.simulate.reference import ROI_COUNTS, SPHERE_CENTROIDS
from cortexcl.errors import InputError

FSAVERAGE5_N_VERTICES = 10242
# Cosine-similarity penalty of a vertex already in 0, 1 or 2+ category (floc) ROIs when placing
# another category ROI.
_FLOC_PENALTY = np.array([0.0, 0.05, 0.5])


@dataclass(frozen=True)
class HemisphereMasks:
    """Challenge space and ROI labels of one hemisphere.

    Attributes
    ----------
    all_vertices : numpy.ndarray
        int64 (163842,), 1 on the challenge-space vertices of fsaverage.
    labels : dict of str to numpy.ndarray
        Per ROI class, int64 labels of the challenge-space columns (0 = in no ROI of the class).
    """

    all_vertices: np.ndarray
    labels: dict[str, np.ndarray]

    @property
    def n_vertices(self) -> int:
        """Number of challenge-space vertices (fMRI columns)."""
        return int(self.all_vertices.sum())


def reference_counts(subject: int, hemisphere: str) -> dict[str, int]:
    """Real challenge-space ROI sizes of an NSD subject (counted on the Algonauts 2023 masks).

    Parameters
    ----------
    subject : int
        NSD subject, 1-8.
    hemisphere : {"lh", "rh"}

    Returns
    -------
    dict of str to int
        Vertex count of every ROI, and of the whole challenge space under ``"all"``.
    """
    if subject not in range(1, 9):
        raise InputError(f"reference_subject: expected an NSD subject 1-8, got {subject}")
    column = 2 * (subject - 1) + HEMISPHERES.index(hemisphere)
    return {name: counts[column] for name, counts in ROI_COUNTS.items()}


@functools.lru_cache(maxsize=2)
def _fsaverage5_sphere(hemisphere: str) -> np.ndarray:
    from nilearn import datasets

    mesh = datasets.load_fsaverage("fsaverage5")["sphere"]
    coordinates = mesh.parts["left" if hemisphere == "lh" else "right"].coordinates
    coordinates = np.asarray(coordinates, dtype=np.float64)
    return coordinates / np.linalg.norm(coordinates, axis=1, keepdims=True)


def _nearest(
    points: np.ndarray,
    candidates: np.ndarray,
    centre: tuple[float, ...],
    k: int,
    penalty: np.ndarray | None = None,
) -> np.ndarray:
    """The ``k`` candidates closest (in angle) to ``centre``, ties broken by index.

    ``penalty`` (per point) is subtracted from the cosine similarity to ``centre``.
    """
    similarity = points[candidates] @ np.asarray(centre, dtype=np.float64)
    if penalty is not None:
        similarity = similarity - penalty[candidates]
    order = np.lexsort((candidates, -np.round(similarity, 12)))
    return candidates[order[:k]]


def synthetic_masks(reference_subject: int, roi_scale: float) -> dict[str, HemisphereMasks]:
    """Masks with the real ROI sizes of a reference subject scaled by ``roi_scale``.

    Every count is rounded; an ROI that is non-empty in the reference subject keeps at least one
    vertex, an empty one stays empty. The challenge space is the set of fsaverage5 vertices (the
    first 10,242 fsaverage indices, so surface maps can be drawn on fsaverage5) closest on the
    sphere to the centroid of the real challenge space (occipito-temporal cortex); each ROI takes
    the free challenge vertices closest to the centroid of the real ROI, in label order (category
    ROIs avoid the retinotopic ROIs while other vertices remain, and mildly avoid each other,
    overlapping about as much as in real masks), so early ROIs lie near the
    occipital pole and category ROIs on the ventral and lateral surfaces.

    Parameters
    ----------
    reference_subject : int
        NSD subject (1-8) whose ROI sizes are copied.
    roi_scale : float
        Factor applied to every count.

    Returns
    -------
    dict of str to HemisphereMasks
        Keyed by ``"lh"`` and ``"rh"``.

    Raises
    ------
    InputError
        If the scaled challenge space exceeds fsaverage5 or cannot hold an ROI class.
    """
    if not roi_scale > 0:
        raise InputError(f"roi_scale: expected a positive factor, got {roi_scale}")
    masks = {}
    for hemisphere in HEMISPHERES:
        counts = reference_counts(reference_subject, hemisphere)
        n_total = max(1, round(counts["all"] * roi_scale))
        if n_total > FSAVERAGE5_N_VERTICES:
            biggest = max(reference_counts(reference_subject, h)["all"] for h in HEMISPHERES)
            largest = math.floor(FSAVERAGE5_N_VERTICES / biggest * 1000) / 1000
            raise InputError(
                f"roi_scale: {roi_scale} gives {n_total} {hemisphere} vertices, more than the "
                f"{FSAVERAGE5_N_VERTICES} of fsaverage5 (use at most {largest:.3f}, or pass "
                "real roi_masks)"
            )
        points = _fsaverage5_sphere(hemisphere)
        region = _nearest(points, np.arange(len(points)), SPHERE_CENTROIDS[("all", hemisphere)],
                          n_total)
        region = np.sort(region)
        labels = {}
        for class_name, table in ROI_CLASSES.items():
            sizes = {
                label: (max(1, round(counts[name] * roi_scale)) if counts[name] else 0)
                for label, name in table.items()
            }
            if sum(sizes.values()) > n_total:
                raise InputError(
                    f"roi_scale: {roi_scale} is too small to hold the {class_name} ROIs "
                    f"({sum(sizes.values())} vertices) in {n_total} {hemisphere} vertices"
                )
            column_labels = np.zeros(n_total, dtype=np.int64)
            free = np.arange(n_total)
            prefix = "streams:" if class_name == "streams" else ""
            # Category ROIs overlap the retinotopic ones only where they must (as in real masks).
            penalty = None
            if class_name.startswith("floc-"):
                penalty = _FLOC_PENALTY[np.minimum(sum(
                    (labels[c] > 0).astype(np.int64) for c in labels if c.startswith("floc-")
                ), 2)] + 4.0 * (labels["prf-visualrois"] > 0)
            for label, name in table.items():
                if sizes[label] == 0:
                    continue
                centre = SPHERE_CENTROIDS[(prefix + name, hemisphere)]
                chosen = _nearest(points[region], free, centre, sizes[label], penalty)
                column_labels[chosen] = label
                free = np.setdiff1d(free, chosen)
            labels[class_name] = column_labels
        all_vertices = np.zeros(FSAVERAGE_N_VERTICES, dtype=np.int64)
        all_vertices[region] = 1
        masks[hemisphere] = HemisphereMasks(all_vertices, labels)
    return masks


def _mask_files() -> list[str]:
    files = [f"{h}.all-vertices_fsaverage_space.npy" for h in HEMISPHERES]
    files += [f"{h}.{c}_challenge_space.npy" for h in HEMISPHERES for c in ROI_CLASSES]
    files += [f"mapping_{c}.npy" for c in ROI_CLASSES]
    return files


def resolve_mask_folder(path: str | Path) -> Path:
    """Find the folder holding the mask files: ``path`` itself or its ``roi_masks`` subfolder.

    Raises
    ------
    InputError
        If neither holds the 20 files of an Algonauts ``roi_masks`` folder.
    """
    path = Path(path)
    for folder in (path, path / "roi_masks"):
        if (folder / "lh.all-vertices_fsaverage_space.npy").is_file():
            missing = [name for name in _mask_files() if not (folder / name).is_file()]
            if missing:
                raise InputError(f"roi_masks: {folder} lacks {', '.join(missing)}")
            return folder
    raise InputError(
        f"roi_masks: {path} holds no lh.all-vertices_fsaverage_space.npy (neither directly nor "
        "in a roi_masks/ subfolder)"
    )


def read_masks(path: str | Path) -> dict[str, HemisphereMasks]:
    """Read a real ``roi_masks`` folder (or a folder containing one), validating every file."""
    folder = resolve_mask_folder(path)
    masks = {}
    for hemisphere in HEMISPHERES:
        n_vertices = len(np.load(folder / f"{hemisphere}.prf-visualrois_challenge_space.npy"))
        index = read_fsaverage_index(folder, hemisphere, n_vertices)
        all_vertices = np.zeros(FSAVERAGE_N_VERTICES, dtype=np.int64)
        all_vertices[index] = 1
        labels = {c: read_roi_labels(folder, hemisphere, c, n_vertices) for c in ROI_CLASSES}
        masks[hemisphere] = HemisphereMasks(all_vertices, labels)
    return masks


def copy_mask_files(source: str | Path, destination: Path) -> None:
    """Copy the mask files of a real ``roi_masks`` folder byte for byte.

    Per-ROI-class ``*_fsaverage_space.npy`` files are copied too when the source has them.
    """
    folder = resolve_mask_folder(source)
    destination.mkdir(parents=True, exist_ok=True)
    optional = [f"{h}.{c}_fsaverage_space.npy" for h in HEMISPHERES for c in ROI_CLASSES]
    for name in _mask_files() + [n for n in optional if (folder / n).is_file()]:
        shutil.copyfile(folder / name, destination / name)


def mapping_bytes(class_name: str) -> bytes:
    """The ``mapping_<class>.npy`` file content: a pickled 0-d object array of the label dict."""
    mapping = np.empty((), dtype=object)
    mapping[()] = {0: "Unknown", **ROI_CLASSES[class_name]}
    buffer = io.BytesIO()
    np.save(buffer, mapping, allow_pickle=True)
    return buffer.getvalue()


def write_masks(masks: dict[str, HemisphereMasks], destination: Path) -> None:
    """Write masks in the Algonauts ``roi_masks`` layout."""
    for hemisphere, hemi_masks in masks.items():
        atomic_save_npy(
            destination / f"{hemisphere}.all-vertices_fsaverage_space.npy", hemi_masks.all_vertices
        )
        for class_name, labels in hemi_masks.labels.items():
            atomic_save_npy(destination / f"{hemisphere}.{class_name}_challenge_space.npy", labels)
    for class_name in ROI_CLASSES:
        atomic_write_bytes(destination / f"mapping_{class_name}.npy", mapping_bytes(class_name))

"""Reader of the Algonauts 2023 (NSD) on-disk layout (docs/method.md §1.1).

::

    <data_root>/subjNN/
      roi_masks/{lh,rh}.all-vertices_fsaverage_space.npy
      roi_masks/{lh,rh}.<class>_challenge_space.npy
      roi_masks/mapping_<class>.npy
      training_split/training_fmri/{lh,rh}_training_fmri.npy
      training_split/training_images/train-0001_nsd-00013.png …

Everything is checked when the subject is loaded, so a damaged dataset fails at once with a
one-line message naming the file, not hours later inside a training loop. Simulated subjects
(``cortexcl simulate``) use the same layout plus a ``ground_truth/`` folder.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cortexcl.data.images import ImageStore
from cortexcl.data.rois import (
    HEMISPHERES,
    ROI_CLASSES,
    ROI_NAMES,
    WHOLE_HEMISPHERE,
    check_hemisphere,
    expand_rois,
    load_roi_mapping,
    read_fsaverage_index,
    read_roi_labels,
    roi_class,
)
from cortexcl.errors import InputError

_SCAN_BYTES = 64 << 20
_HASH_CHUNK = 1 << 20


def subject_name(subject: int | str) -> str:
    """Return the folder name of a subject: 1, "1", "01" and "subj01" all give ``"subj01"``.

    Raises
    ------
    InputError
        If ``subject`` is not a positive subject number.
    """
    text = str(subject).strip().lower().removeprefix("subj")
    if not text.isdigit() or int(text) < 1:
        raise InputError(f"subject: expected a subject number such as 1 or subj01, got {subject!r}")
    return f"subj{int(text):02d}"


def _require_file(path: Path) -> Path:
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    return path


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise InputError(f"{path}: {what} folder not found")
    return path


def _training_images(folder: Path) -> tuple[list[Path], np.ndarray]:
    """The training images in row order (by their number), and their NSD ids.

    Image ``train-NNNN`` is row NNNN - 1 of the fMRI arrays, so the numbers must run from 1 to
    the number of images without a gap or a repeat.
    """
    return _numbered_images(folder, "train", "training")


def challenge_test_images(data_root: str | Path, subject: int | str) -> tuple[list[Path],
                                                                              np.ndarray]:
    """The challenge's test images of a subject (``test_split/test_images/test-NNNN_nsd-
    NNNNN.png``) in the order of their numbers, the order of a submission's rows, and their NSD
    ids.

    Raises
    ------
    InputError
        If the folder or its images are missing, or names are malformed, repeated or leave a
        gap.
    """
    folder = _require_dir(Path(data_root) / subject_name(subject) / "test_split" / "test_images",
                          "test images")
    return _numbered_images(folder, "test", "test")


def _numbered_images(folder: Path, kind: str, what: str) -> tuple[list[Path], np.ndarray]:
    """``<kind>-NNNN_nsd-NNNNN.png`` files by number (1 … n, no gap or repeat), and NSD ids."""
    pattern = re.compile(rf"^{kind}-(\d+)_nsd-(\d+)\.png$")
    found = sorted(folder.glob("*.png"))
    if not found:
        raise InputError(f"{folder}: no {what} images (*.png)")
    numbered = []
    for path in found:
        match = pattern.match(path.name)
        if match is None:
            raise InputError(f"{path}: bad image file name (expected {kind}-NNNN_nsd-NNNNN.png)")
        if not path.is_file():
            raise InputError(f"{path}: not a file")
        numbered.append((int(match.group(1)), int(match.group(2)), path))
    numbered.sort(key=lambda entry: entry[0])
    for row, (number, _, _) in enumerate(numbered):
        if number != row + 1:
            problem = (f"{kind}-{number:04d} appears more than once" if row and
                       numbered[row - 1][0] == number else f"{kind}-{row + 1:04d} is missing")
            raise InputError(
                f"{folder}: image numbers must run from 1 to {len(numbered)}"
                f"{', one per fMRI row' if kind == 'train' else ''}, but {problem}"
            )
    paths = [path for _, _, path in numbered]
    ids = [nsd for _, nsd, _ in numbered]
    image_ids = np.asarray(ids, dtype=np.int64)
    unique, counts = np.unique(image_ids, return_counts=True)
    if np.any(counts > 1):
        duplicate = int(unique[np.argmax(counts > 1)])
        names = [path.name for path, nsd in zip(paths, ids, strict=True) if nsd == duplicate]
        raise InputError(
            f"{folder}: NSD id {duplicate} appears more than once ({', '.join(names)})"
        )
    return paths, image_ids


def _open_fmri(path: Path) -> np.ndarray:
    _require_file(path)
    try:
        fmri = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: not a readable numeric .npy file ({error})") from None
    if fmri.ndim != 2:
        raise InputError(
            f"{path}: expected a 2-D (images × vertices) array, found shape {fmri.shape}"
        )
    if not np.issubdtype(fmri.dtype, np.floating):
        raise InputError(f"{path}: expected floating-point responses, found dtype {fmri.dtype}")
    return fmri


def _check_finite(fmri: np.ndarray, path: Path) -> None:
    rows = max(1, _SCAN_BYTES // max(1, fmri.shape[1] * fmri.itemsize))
    for start in range(0, fmri.shape[0], rows):
        block = np.asarray(fmri[start : start + rows])
        bad = ~np.isfinite(block)
        if bad.any():
            row, column = np.argwhere(bad)[0]
            raise InputError(
                f"{path}: non-finite value {block[row, column]} at row {start + row}, "
                f"column {column} ({int(bad.sum())} in rows {start}-{start + block.shape[0] - 1})"
            )


def check_ncsnr(ncsnr: np.ndarray, path: Path, n_vertices: int, hemisphere: str) -> np.ndarray:
    """``ncsnr`` as float64 after checking it: one finite value >= 0 per vertex.

    Raises
    ------
    InputError
        Naming ``path``, if the shape differs from ``(n_vertices,)`` or a value is NaN,
        infinite or negative.
    """
    ncsnr = np.asarray(ncsnr)
    if ncsnr.shape != (n_vertices,):
        raise InputError(f"{path}: shape {ncsnr.shape} but the {hemisphere} responses have "
                         f"{n_vertices} vertices")
    if not np.issubdtype(ncsnr.dtype, np.number) or not np.all(np.isfinite(ncsnr)):
        bad = int(np.sum(~np.isfinite(ncsnr))) if np.issubdtype(ncsnr.dtype, np.number) else 0
        raise InputError(f"{path}: {bad} {'entry is' if bad == 1 else 'entries are'} "
                         "NaN or infinite; ncsnr must be finite and >= 0")
    if np.any(ncsnr < 0):
        bad = int(np.sum(ncsnr < 0))
        raise InputError(f"{path}: {bad} negative {'entry' if bad == 1 else 'entries'}"
                         "; ncsnr must be >= 0")
    return ncsnr.astype(np.float64)


def _simulated_noise(root: Path, n_vertices: dict[str, int], n_images: int
                     ) -> tuple[dict[str, np.ndarray] | None, np.ndarray | None]:
    """ncsnr and repeat counts of a simulated subject (``ground_truth/``), or None, None."""
    folder = root / "ground_truth"
    paths = {h: folder / f"{h}_ncsnr.npy" for h in HEMISPHERES}
    repeats_path = folder / "n_repeats.npy"
    if not (repeats_path.is_file() and all(path.is_file() for path in paths.values())):
        return None, None
    ncsnr = {h: check_ncsnr(np.load(path, allow_pickle=False), path, n_vertices[h], h)
             for h, path in paths.items()}
    repeats = np.load(repeats_path, allow_pickle=False)
    if repeats.shape != (n_images,):
        raise InputError(f"{repeats_path}: shape {repeats.shape} but there are {n_images} images")
    if not np.issubdtype(repeats.dtype, np.number) or not np.all(repeats >= 1):
        raise InputError(f"{repeats_path}: repeat counts must be numbers >= 1")
    return ncsnr, repeats.astype(np.int64)


class Subject:
    """One subject: images, responses and ROI index, read from any layout with fsaverage ROIs.

    Create it with :func:`load_subject` (Algonauts 2023 layout) or
    `cortexcl.data.nsd.load_nsd_subject` (native NSD release), which validate every file.

    Attributes
    ----------
    name : str
        Folder name, e.g. ``"subj01"``.
    root : Path
        The subject folder.
    images : ImageStore
        The images; row i of the responses is image i.
    image_ids : numpy.ndarray
        NSD id of every image (int64).
    n_images : int
        Number of images.
    """

    def __init__(
        self,
        name: str,
        root: Path,
        images: ImageStore,
        image_ids: np.ndarray,
        fmri_paths: dict[str, Path],
        n_vertices: dict[str, int],
        labels: dict[tuple[str, str], np.ndarray],
        fsaverage_index: dict[str, np.ndarray],
        *,
        ncsnr: dict[str, np.ndarray] | None = None,
        n_repeats: np.ndarray | None = None,
        notes: dict[str, dict[str, int]] | None = None,
        held_out: np.ndarray | None = None,
        hash_files: Sequence[Path] | None = None,
    ) -> None:
        self.name = name
        self.root = root
        self.images = images
        self.image_ids = image_ids
        self.n_images = len(image_ids)
        self._fmri_paths = fmri_paths
        self._n_vertices = n_vertices
        self._labels = labels
        self._fsaverage_index = fsaverage_index
        self._ncsnr = ncsnr
        self._n_repeats = n_repeats
        self._notes = notes or {}
        self._held_out = held_out
        self._hash_files = list(hash_files) if hash_files is not None else [
            *fmri_paths.values(), *sorted((root / "roi_masks").glob("*.npy"))]
        self._data_hash: str | None = None

    def __repr__(self) -> str:
        sizes = ", ".join(f"{h} {n}" for h, n in self._n_vertices.items())
        return f"Subject({self.name}, {self.n_images} images, vertices {sizes}, root={self.root})"

    def expand_rois(self, rois: str | Sequence[str]) -> list[str]:
        """ROI names of this dataset for names and groups (see `cortexcl.data.rois.expand_rois`)."""
        return expand_rois(rois)

    def n_vertices(self, hemisphere: str) -> int:
        """Number of challenge-space vertices (fMRI columns) of a hemisphere."""
        return self._n_vertices[check_hemisphere(hemisphere)]

    def roi_indices(self, hemisphere: str, roi: str) -> np.ndarray:
        """Return the fMRI columns of an ROI.

        Parameters
        ----------
        hemisphere : {"lh", "rh"}
        roi : str
            One of the 31 ROI names, or ``"all"`` for every column.

        Returns
        -------
        numpy.ndarray
            int64 column indices, ascending; empty for an ROI without vertices.

        Raises
        ------
        InputError
            On an unknown hemisphere or ROI name.
        """
        check_hemisphere(hemisphere)
        if str(roi).strip().lower() == WHOLE_HEMISPHERE:
            return np.arange(self._n_vertices[hemisphere], dtype=np.int64)
        class_name, label = roi_class(roi)
        return np.flatnonzero(self._labels[hemisphere, class_name] == label).astype(np.int64)

    def responses(self, hemisphere: str, roi: str | None = None) -> np.ndarray:
        """Return the responses of a hemisphere or an ROI.

        Parameters
        ----------
        hemisphere : {"lh", "rh"}
        roi : str, optional
            ROI name; ``None`` or ``"all"`` gives every column of the hemisphere.

        Returns
        -------
        numpy.ndarray
            float32 (n_images, n_vertices) array, a copy in memory.

        Raises
        ------
        InputError
            On an unknown hemisphere or ROI, or an ROI without vertices.
        """
        check_hemisphere(hemisphere)
        fmri = np.load(self._fmri_paths[hemisphere], mmap_mode="r", allow_pickle=False)
        if roi is None or str(roi).strip().lower() == WHOLE_HEMISPHERE:
            return np.array(fmri, dtype=np.float32)
        columns = self.roi_indices(hemisphere, roi)
        if columns.size == 0:
            raise InputError(f"{self.name} {hemisphere} {roi}: ROI is empty (0 vertices)")
        return np.asarray(fmri[:, columns], dtype=np.float32)

    def roi_sizes(self) -> pd.DataFrame:
        """Return the number of vertices of every ROI in both hemispheres.

        Returns
        -------
        pandas.DataFrame
            Columns subject, hemisphere, roi, roi_class, n_vertices; 62 rows (31 ROIs × 2).
        """
        rows = []
        for hemisphere in HEMISPHERES:
            for roi in ROI_NAMES:
                class_name, label = roi_class(roi)
                rows.append(
                    {
                        "subject": self.name,
                        "hemisphere": hemisphere,
                        "roi": roi,
                        "roi_class": class_name,
                        "n_vertices": int(np.sum(self._labels[hemisphere, class_name] == label)),
                    }
                )
        return pd.DataFrame(rows)

    def vertex_to_fsaverage(self, hemisphere: str) -> np.ndarray:
        """Return the fsaverage vertex index of every fMRI column (int64)."""
        return self._fsaverage_index[check_hemisphere(hemisphere)].copy()

    def data_notes(self, hemisphere: str) -> dict[str, int]:
        """Counts of what reading the data changed, e.g. ``n_nan_vertices`` excluded by the NSD
        reader (empty for the Algonauts layout)."""
        return dict(self._notes.get(check_hemisphere(hemisphere), {}))

    @property
    def n_repeats(self) -> np.ndarray | None:
        """Trials averaged into each image's response (int64, n_images), when known."""
        return None if self._n_repeats is None else self._n_repeats.copy()

    def held_out_images(self) -> np.ndarray | None:
        """Images shown only in the held-out (last three) sessions: the test part of ``split:
        sessions`` (int64 rows, ascending), or None for a layout without sessions."""
        return None if self._held_out is None else self._held_out.copy()

    def noise_ceiling(
        self, hemisphere: str, indices: np.ndarray | None = None
    ) -> np.ndarray | None:
        """Return the noise ceiling of every vertex when the dataset provides it.

        It needs NSD's per-vertex ncsnr and each image's repeat count: the native NSD reader
        has both, an Algonauts subject has them when ``ncsnr`` points to the NSD release (or,
        simulated, from its ``ground_truth`` folder).

        Parameters
        ----------
        hemisphere : {"lh", "rh"}
        indices : array of int, optional
            The evaluation images (default: all); their repeat counts set the ceiling.

        Returns
        -------
        numpy.ndarray or None
            float64 (n_vertices,) fraction of explainable variance per vertex
            (`cortexcl.metrics.noise_ceiling`), or None without noise-ceiling data.
        """
        check_hemisphere(hemisphere)
        if self._ncsnr is None or self._n_repeats is None:
            return None
        from cortexcl.metrics import noise_ceiling

        repeats = self._n_repeats
        if indices is not None:
            repeats = repeats[np.asarray(indices, dtype=np.int64)]
        return noise_ceiling(self._ncsnr[hemisphere], repeats)

    def data_hash(self) -> str:
        """Short hex hash of the response and ROI files and the images (for manifests)."""
        if self._data_hash is None:
            digest = hashlib.blake2b(digest_size=8)
            for path in self._hash_files:
                digest.update(f"{path.name}\0".encode())
                with open(path, "rb") as handle:
                    while chunk := handle.read(_HASH_CHUNK):
                        digest.update(chunk)
            digest.update(self.images.key.encode())
            self._data_hash = digest.hexdigest()
        return self._data_hash


def load_subject(
    data_root: str | Path,
    subject: int | str,
    image_size: int = 224,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    ncsnr: str | Path | None = None,
) -> Subject:
    """Open and validate one subject of an Algonauts 2023-layout dataset.

    Parameters
    ----------
    data_root : str or Path
        Folder holding ``subjNN`` folders.
    subject : int or str
        Subject number or name (1, "01", "subj01").
    image_size : int
        Side of the resized images served by ``Subject.images``.
    cache_dir : str or Path, optional
        Image cache folder (see `ImageStore`).
    progress : bool
        Show progress bars.
    ncsnr : str or Path, optional
        Root of the native NSD release: the noise ceilings then come from its
        ``{lh,rh}.ncsnr.mgh`` and the repeats its design file counts
        (`cortexcl.data.nsd.challenge_noise`). Without it, only a simulated subject has them.

    Returns
    -------
    Subject

    Raises
    ------
    InputError
        With a one-line message naming the file, if a folder or file is missing; an fMRI array
        is not 2-D floating point, holds non-finite values, or its row count differs from the
        number of images or from the other hemisphere's; a mask's length differs from the fMRI
        columns; the all-vertices mask marks a different number of vertices; image names are
        malformed, not numbered 1 to the number of images, or repeat an NSD id; or a
        mapping file is not a plain label mapping.
    """
    name = subject_name(subject)
    root = _require_dir(Path(data_root) / name, "subject")
    training = _require_dir(root / "training_split", "training split")
    image_dir = _require_dir(training / "training_images", "training images")
    fmri_dir = _require_dir(training / "training_fmri", "training fMRI")
    roi_dir = _require_dir(root / "roi_masks", "ROI masks")

    paths, image_ids = _training_images(image_dir)
    fmri_paths = {h: fmri_dir / f"{h}_training_fmri.npy" for h in HEMISPHERES}
    arrays = {h: _open_fmri(path) for h, path in fmri_paths.items()}
    for hemisphere, fmri in arrays.items():
        if fmri.shape[0] != len(paths):
            raise InputError(
                f"{fmri_paths[hemisphere]}: {fmri.shape[0]} rows but {len(paths)} training images"
            )
        _check_finite(fmri, fmri_paths[hemisphere])
    n_vertices = {h: int(fmri.shape[1]) for h, fmri in arrays.items()}

    for class_name in ROI_CLASSES:
        load_roi_mapping(_require_file(roi_dir / f"mapping_{class_name}.npy"))
    labels = {
        (h, class_name): read_roi_labels(roi_dir, h, class_name, n_vertices[h])
        for h in HEMISPHERES
        for class_name in ROI_CLASSES
    }
    fsaverage_index = {h: read_fsaverage_index(roi_dir, h, n_vertices[h]) for h in HEMISPHERES}

    if ncsnr is not None:
        from cortexcl.data.nsd import challenge_noise

        ncsnr_values, n_repeats = challenge_noise(ncsnr, name, image_ids, fsaverage_index)
    else:
        ncsnr_values, n_repeats = _simulated_noise(root, n_vertices, len(paths))
    images = ImageStore(paths, size=image_size, cache_dir=cache_dir, progress=progress)
    return Subject(
        name=name,
        root=root,
        images=images,
        image_ids=image_ids,
        fmri_paths=fmri_paths,
        n_vertices=n_vertices,
        labels=labels,
        fsaverage_index=fsaverage_index,
        ncsnr=ncsnr_values,
        n_repeats=n_repeats,
    )

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

import re
from pathlib import Path

import numpy as np

from cortexcl.data.images import ImageStore
from cortexcl.data.rois import (
    HEMISPHERES,
    ROI_CLASSES,
    load_roi_mapping,
    read_fsaverage_index,
    read_roi_labels,
)
from cortexcl.data.subject import Subject, check_ncsnr, labels_to_rois, subject_name
from cortexcl.errors import InputError

_SCAN_BYTES = 64 << 20


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
        name, root, images, image_ids, fmri_paths,
        {h: labels_to_rois({c: labels[h, c] for c in ROI_CLASSES}) for h in HEMISPHERES},
        fsaverage_index=fsaverage_index, ncsnr=ncsnr_values, n_repeats=n_repeats,
        hash_files=[*fmri_paths.values()])

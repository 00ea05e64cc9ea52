"""`Subject`: what every stage reads of a dataset, whatever its layout.

A subject has images (an `ImageStore`) and, per *part* (a hemisphere, ``lh`` / ``rh``, or an
area or recording of a user's dataset), a responses matrix (images × units), named ROIs (sets of
unit columns), optionally each unit's fsaverage vertex (for surface maps) and noise-ceiling data.
The readers (`cortexcl.data.algonauts`, `cortexcl.data.nsd`, `cortexcl.data.folder`) validate
their files and build one; `Subject.from_arrays` builds one from arrays in memory.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cortexcl.data.images import ImageStore
from cortexcl.data.rois import (
    ROI_CLASSES,
    ROI_NAMES,
    WHOLE_HEMISPHERE,
    expand_rois,
    roi_class,
)
from cortexcl.errors import InputError

_HASH_CHUNK = 1 << 20
SINGLE_PART = "units"  # the part of a dataset with one responses matrix


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


def check_ncsnr(ncsnr: np.ndarray, path: Path | str, n_vertices: int,
                hemisphere: str) -> np.ndarray:
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


def labels_to_rois(labels: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The 31 challenge ROIs as column indices, from one label vector per ROI class."""
    return {name: np.flatnonzero(labels[roi_class(name)[0]] == roi_class(name)[1])
            .astype(np.int64) for name in ROI_NAMES}


class Subject:
    """One subject: images, responses and ROIs of each part.

    Create it with a reader (`cortexcl.data.algonauts.load_subject`,
    `cortexcl.data.nsd.load_nsd_subject`, `cortexcl.data.folder.load_folder_subject`) or
    `Subject.from_arrays`.

    Parameters
    ----------
    name : str
        e.g. ``"subj01"``.
    root : Path
        Where its data are (named in messages).
    images : ImageStore
        Row i of every responses matrix is image i.
    image_ids : numpy.ndarray
        int64 id of every image (NSD ids for NSD data).
    responses : dict of str to Path or numpy.ndarray
        Per part, a ``.npy`` file (memory-mapped) or an array, (n_images, n_units) floats.
    rois : dict of str to dict of str to numpy.ndarray
        Per part, the int64 columns of each ROI.
    roi_names : sequence of str, optional
        The dataset's ROI names, in order; None: the 31 challenge ROIs, with their groups.
    fsaverage_index : dict of str to numpy.ndarray, optional
        Per hemisphere, the fsaverage vertex of every column (None: no surface maps).
    ncsnr, n_repeats
        Per-unit noise-ceiling SNR per part and each image's trials (NSD formula).
    ceiling : dict of str to numpy.ndarray, optional
        Per part, each unit's noise ceiling as a fraction, used as given.
    notes : dict of str to dict of str to int, optional
        Per part, counts of what reading changed (``data_notes``).
    roi_notes : dict of str to dict of str to dict of str to int, optional
        Per part and ROI, the same counts within the ROI.
    held_out : numpy.ndarray, optional
        Rows of the images of held-out sessions (``split: sessions``).
    hash_files : sequence of Path, optional
        Files that identify the data (``data_hash``); default: the responses.
    """

    def __init__(
        self,
        name: str,
        root: Path,
        images: ImageStore,
        image_ids: np.ndarray,
        responses: Mapping[str, Path | np.ndarray],
        rois: Mapping[str, Mapping[str, np.ndarray]],
        *,
        roi_names: Sequence[str] | None = None,
        fsaverage_index: Mapping[str, np.ndarray] | None = None,
        ncsnr: Mapping[str, np.ndarray] | None = None,
        n_repeats: np.ndarray | None = None,
        ceiling: Mapping[str, np.ndarray] | None = None,
        notes: Mapping[str, Mapping[str, int]] | None = None,
        roi_notes: Mapping[str, Mapping[str, Mapping[str, int]]] | None = None,
        held_out: np.ndarray | None = None,
        hash_files: Sequence[Path] | None = None,
    ) -> None:
        self.name = name
        self.root = Path(root)
        self.images = images
        self.image_ids = np.asarray(image_ids, dtype=np.int64)
        self.n_images = len(self.image_ids)
        self.hemispheres: tuple[str, ...] = tuple(responses)
        self._responses = dict(responses)
        self._n_vertices = {part: int(_shape(source)[1]) for part, source in responses.items()}
        self._rois = {part: dict(rois.get(part, {})) for part in self.hemispheres}
        self._roi_names = tuple(roi_names) if roi_names is not None else None
        self._fsaverage_index = dict(fsaverage_index) if fsaverage_index is not None else None
        self._ncsnr = dict(ncsnr) if ncsnr is not None else None
        self._n_repeats = n_repeats
        self._ceiling = dict(ceiling) if ceiling is not None else None
        self._notes = {part: dict(values) for part, values in (notes or {}).items()}
        self._roi_notes = {part: {roi: dict(values) for roi, values in table.items()}
                           for part, table in (roi_notes or {}).items()}
        self._held_out = held_out
        self._hash_files = list(hash_files) if hash_files is not None else [
            source for source in responses.values() if isinstance(source, Path)]
        self._data_hash: str | None = None

    @classmethod
    def from_arrays(
        cls,
        images: ImageStore | Sequence[str | Path],
        responses: np.ndarray | Mapping[str, np.ndarray],
        rois: Mapping[str, np.ndarray] | Mapping[str, Mapping[str, np.ndarray]] | None = None,
        *,
        name: str = "subject",
        image_ids: np.ndarray | None = None,
        noise_ceiling: np.ndarray | Mapping[str, np.ndarray] | None = None,
        ncsnr: np.ndarray | Mapping[str, np.ndarray] | None = None,
        n_repeats: np.ndarray | None = None,
        fsaverage: Mapping[str, np.ndarray] | None = None,
        image_size: int = 224,
        cache_dir: str | Path | None = None,
        progress: bool = True,
    ) -> Subject:
        """A subject from arrays in memory, checked as the folder layout's files are.

        Parameters
        ----------
        images : ImageStore or sequence of str or Path
            The images (files: any Pillow-readable format), one per response row.
        responses : numpy.ndarray or dict of str to numpy.ndarray
            (n_images, n_units) floats: units may be vertices, voxels or neurons. One array
            is the part ``"units"``; a dict names the parts (``lh``/``rh``, areas, …).
        rois : dict, optional
            ROI name → boolean mask over units or int unit indices; with a dict of
            responses, part → (ROI name → mask). Every part also has ``"all"`` (every unit).
        name : str
        image_ids : numpy.ndarray, optional
            int ids of the images (default 0 … n_images - 1).
        noise_ceiling : numpy.ndarray or dict, optional
            Each unit's noise ceiling as a fraction in [0, 1] (per part with several).
        ncsnr, n_repeats : optional
            Instead of ``noise_ceiling``: per-unit ncsnr and each image's trials; the ceiling
            of the evaluation images then follows NSD's formula (`cortexcl.metrics`).
        fsaverage : dict of str to numpy.ndarray, optional
            For parts named ``lh`` / ``rh``, the fsaverage vertex of every unit (surface maps).
        image_size, cache_dir, progress
            Of the `ImageStore` made from files.

        Raises
        ------
        InputError
            On any inconsistency, in one line naming the argument
            (`cortexcl.data.folder.check_parts`).
        """
        from cortexcl.data.folder import Item, check_parts

        store = images if isinstance(images, ImageStore) else ImageStore(
            list(images), size=image_size, cache_dir=cache_dir, progress=progress)
        several = isinstance(responses, Mapping)

        def items(values, what: str) -> dict[str, Item] | None:
            if values is None:
                return None
            if not several:
                return {SINGLE_PART: Item(what, np.asarray(values))}
            return {part: Item(f"{what}[{part!r}]", np.asarray(v)) for part, v in values.items()}

        roi_items: dict[str, dict[str, Item]] = {}
        for part, table in ((rois or {}).items() if several else [(SINGLE_PART, rois or {})]):
            label = f"rois[{part!r}]" if several else "rois"
            if not isinstance(table, Mapping):
                raise InputError(f"{label}: with responses of several parts, give the ROIs per "
                                 "part: {part: {name: mask}}")
            roi_items[part] = {name: Item(f"{label}[{name!r}]", np.asarray(mask))
                               for name, mask in table.items()}
        checked = check_parts(
            len(store), items(responses, "responses"), roi_items, items(noise_ceiling,
                                                                    "noise_ceiling"),
            items(ncsnr, "ncsnr"), None if n_repeats is None else Item("n_repeats",
                                                                      np.asarray(n_repeats)),
            {part: Item(f"fsaverage[{part!r}]", np.asarray(v))
             for part, v in fsaverage.items()} if fsaverage else None)
        ids = (np.arange(len(store), dtype=np.int64) if image_ids is None
               else np.asarray(image_ids, dtype=np.int64))
        if ids.shape != (len(store),) or np.unique(ids).size != ids.size:
            raise InputError(f"image_ids: expected {len(store)} distinct ids, one per image")
        return cls(name, Path("."), store, ids, checked.responses, checked.rois,
                   roi_names=checked.roi_names, fsaverage_index=checked.fsaverage,
                   ncsnr=checked.ncsnr, n_repeats=checked.n_repeats, ceiling=checked.ceiling)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{h} {n}" for h, n in self._n_vertices.items())
        return f"Subject({self.name}, {self.n_images} images, vertices {sizes}, root={self.root})"

    def check_part(self, hemisphere: str) -> str:
        """``hemisphere`` if it is a part of this subject.

        Raises
        ------
        InputError
            Listing the parts, if it is not.
        """
        if hemisphere not in self.hemispheres:
            raise InputError(f"unknown hemisphere {hemisphere!r} of {self.name} "
                             f"(valid: {', '.join(self.hemispheres)})")
        return hemisphere

    @property
    def roi_names(self) -> tuple[str, ...]:
        """The dataset's ROI names (the 31 challenge ROIs for NSD data)."""
        return self._roi_names if self._roi_names is not None else ROI_NAMES

    def expand_rois(self, rois: str | Sequence[str]) -> list[str]:
        """ROI names of this dataset for names and groups (comma-separated or listed; any
        case; ``all`` kept as the whole part). Challenge ROIs also take their groups
        (`cortexcl.data.rois.expand_rois`).

        Raises
        ------
        InputError
            On an unknown name (the message lists the valid ones), or when none is given.
        """
        if self._roi_names is None:
            return expand_rois(rois)
        items = rois.split(",") if isinstance(rois, str) else list(rois)
        items = [str(item).strip() for item in items if str(item).strip()]
        canonical = {name.lower(): name for name in (*self._roi_names, WHOLE_HEMISPHERE)}
        if not items:
            raise InputError(f"no ROI given (valid: {', '.join(canonical.values())})")
        expanded: list[str] = []
        for item in items:
            if item.lower() not in canonical:
                raise InputError(f"unknown ROI {item!r} of {self.name} (valid: "
                                 f"{', '.join(canonical.values())})")
            if canonical[item.lower()] not in expanded:
                expanded.append(canonical[item.lower()])
        return expanded

    def n_vertices(self, hemisphere: str) -> int:
        """Number of units (vertex columns) of a part."""
        return self._n_vertices[self.check_part(hemisphere)]

    def roi_indices(self, hemisphere: str, roi: str) -> np.ndarray:
        """Return the columns of an ROI.

        Parameters
        ----------
        hemisphere : str
            A part: ``"lh"`` or ``"rh"`` for NSD data.
        roi : str
            An ROI name of the dataset, or ``"all"`` for every column.

        Returns
        -------
        numpy.ndarray
            int64 column indices, ascending; empty for an ROI without vertices.

        Raises
        ------
        InputError
            On an unknown part or ROI name.
        """
        self.check_part(hemisphere)
        if str(roi).strip().lower() == WHOLE_HEMISPHERE:
            return np.arange(self._n_vertices[hemisphere], dtype=np.int64)
        if self._roi_names is None:  # one challenge ROI, not a group
            class_name, label = roi_class(roi)
            name = ROI_CLASSES[class_name][label]
        else:
            (name,) = self.expand_rois([roi])
        return self._rois[hemisphere].get(name, np.empty(0, dtype=np.int64)).copy()

    def responses(self, hemisphere: str, roi: str | None = None) -> np.ndarray:
        """Return the responses of a part or an ROI.

        Parameters
        ----------
        hemisphere : str
            A part (``"lh"`` / ``"rh"`` for NSD data).
        roi : str, optional
            ROI name; ``None`` or ``"all"`` gives every column of the part.

        Returns
        -------
        numpy.ndarray
            float32 (n_images, n_units) array, a copy in memory.

        Raises
        ------
        InputError
            On an unknown part or ROI, or an ROI without units.
        """
        source = self._responses[self.check_part(hemisphere)]
        values = (np.load(source, mmap_mode="r", allow_pickle=False) if isinstance(source, Path)
                  else source)
        if roi is None or str(roi).strip().lower() == WHOLE_HEMISPHERE:
            return np.array(values, dtype=np.float32)
        columns = self.roi_indices(hemisphere, roi)
        if columns.size == 0:
            raise InputError(f"{self.name} {hemisphere} {roi}: ROI is empty (0 vertices)")
        return np.asarray(values[:, columns], dtype=np.float32)

    def roi_sizes(self) -> pd.DataFrame:
        """Return the number of units of every ROI of every part.

        Returns
        -------
        pandas.DataFrame
            Columns subject, hemisphere, roi, roi_class (challenge ROIs; else empty),
            n_vertices.
        """
        rows = []
        for hemisphere in self.hemispheres:
            for roi in self.roi_names:
                rows.append({"subject": self.name, "hemisphere": hemisphere, "roi": roi,
                             "roi_class": roi_class(roi)[0] if self._roi_names is None else "",
                             "n_vertices": len(self._rois[hemisphere].get(roi, ()))})
        return pd.DataFrame(rows)

    def vertex_to_fsaverage(self, hemisphere: str) -> np.ndarray | None:
        """The fsaverage vertex index of every column (int64), or None without a surface."""
        self.check_part(hemisphere)
        if self._fsaverage_index is None or hemisphere not in self._fsaverage_index:
            return None
        return self._fsaverage_index[hemisphere].copy()

    def data_notes(self, hemisphere: str, roi: str | None = None) -> dict[str, int]:
        """Counts of what reading the data changed, e.g. ``n_nan_vertices`` left out by the
        NSD reader (empty for most layouts): of the part, or of the ROI ``roi`` where the
        reader counted them per ROI."""
        notes = dict(self._notes.get(self.check_part(hemisphere), {}))
        if roi is not None and str(roi).strip().lower() != WHOLE_HEMISPHERE:
            notes.update(self._roi_notes.get(hemisphere, {}).get(roi, {}))
        return notes

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
        """Return the noise ceiling of every unit when the dataset provides it.

        A ceiling given as a fraction is returned as is. Otherwise it needs per-unit ncsnr
        and each image's repeat count: the NSD reader has both, an Algonauts subject has them
        when ``ncsnr`` points to the NSD release (simulated: its ``ground_truth`` folder).

        Parameters
        ----------
        hemisphere : str
        indices : array of int, optional
            The evaluation images (default: all); their repeat counts set the ceiling.

        Returns
        -------
        numpy.ndarray or None
            float64 (n_units,) fraction of explainable variance per unit
            (`cortexcl.metrics.noise_ceiling`), or None without noise-ceiling data.
        """
        self.check_part(hemisphere)
        if self._ceiling is not None and hemisphere in self._ceiling:
            return np.asarray(self._ceiling[hemisphere], dtype=np.float64).copy()
        if self._ncsnr is None or self._n_repeats is None or hemisphere not in self._ncsnr:
            return None
        from cortexcl.metrics import noise_ceiling

        repeats = self._n_repeats
        if indices is not None:
            repeats = repeats[np.asarray(indices, dtype=np.int64)]
        return noise_ceiling(self._ncsnr[hemisphere], repeats)

    def data_hash(self) -> str:
        """Short hex hash of the responses, the ROIs and the images (for manifests)."""
        if self._data_hash is None:
            digest = hashlib.blake2b(digest_size=8)
            for path in self._hash_files:
                digest.update(f"{path.name}\0".encode())
                with open(path, "rb") as handle:
                    while chunk := handle.read(_HASH_CHUNK):
                        digest.update(chunk)
            for part, source in self._responses.items():
                if not isinstance(source, Path):
                    digest.update(f"{part}\0".encode())
                    digest.update(np.ascontiguousarray(source).tobytes())
            for part, rois in self._rois.items():
                for roi, columns in rois.items():
                    digest.update(f"{part}\0{roi}\0".encode())
                    digest.update(np.asarray(columns, dtype=np.int64).tobytes())
                if self._fsaverage_index is not None and part in self._fsaverage_index:
                    digest.update(np.asarray(self._fsaverage_index[part], np.int64).tobytes())
            digest.update(self.images.key.encode())
            self._data_hash = digest.hexdigest()
        return self._data_hash


def _shape(source: Path | np.ndarray) -> tuple[int, ...]:
    if isinstance(source, Path):
        return np.load(source, mmap_mode="r", allow_pickle=False).shape
    return np.shape(source)

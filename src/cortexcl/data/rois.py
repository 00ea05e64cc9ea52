"""ROI classes, names and groups of the Algonauts 2023 challenge space, and safe mask reading.

An ROI is the set of challenge-space columns whose label in ``{hemi}.<class>_challenge_space.npy``
equals the ROI's label. Labels are exclusive within a class and overlap across classes.

The ``mapping_<class>.npy`` files of the official release are pickled 0-d object arrays holding a
``{label: name}`` dict. They are read with a restricted unpickler that can only rebuild numpy
arrays, dtypes and scalars, so a crafted file cannot run code.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

from cortexcl.errors import InputError

HEMISPHERES: tuple[str, str] = ("lh", "rh")

ROI_CLASSES: dict[str, dict[int, str]] = {
    "prf-visualrois": {1: "V1v", 2: "V1d", 3: "V2v", 4: "V2d", 5: "V3v", 6: "V3d", 7: "hV4"},
    "floc-bodies": {1: "EBA", 2: "FBA-1", 3: "FBA-2", 4: "mTL-bodies"},
    "floc-faces": {1: "OFA", 2: "FFA-1", 3: "FFA-2", 4: "mTL-faces", 5: "aTL-faces"},
    "floc-places": {1: "OPA", 2: "PPA", 3: "RSC"},
    "floc-words": {1: "OWFA", 2: "VWFA-1", 3: "VWFA-2", 4: "mfs-words", 5: "mTL-words"},
    "streams": {
        1: "early",
        2: "midventral",
        3: "midlateral",
        4: "midparietal",
        5: "ventral",
        6: "lateral",
        7: "parietal",
    },
}

ROI_NAMES: tuple[str, ...] = tuple(
    name for table in ROI_CLASSES.values() for name in table.values()
)

_EARLY = tuple(ROI_CLASSES["prf-visualrois"].values())
_HIGHER = tuple(
    name
    for class_name, table in ROI_CLASSES.items()
    if class_name.startswith("floc-")
    for name in table.values()
)

ROI_GROUPS: dict[str, tuple[str, ...]] = {
    "early": _EARLY,
    "higher": _HIGHER,
    "streams": tuple(ROI_CLASSES["streams"].values()),
    "early+higher": _EARLY + _HIGHER,
}

WHOLE_HEMISPHERE = "all"

FSAVERAGE_N_VERTICES = 163842

_ROI_LOOKUP: dict[str, tuple[str, int]] = {
    name: (class_name, label)
    for class_name, table in ROI_CLASSES.items()
    for label, name in table.items()
}
_CANONICAL: dict[str, str] = {
    name.lower(): name for name in (*ROI_NAMES, *ROI_GROUPS, WHOLE_HEMISPHERE)
}


def _valid_names_message() -> str:
    streams = set(ROI_CLASSES["streams"].values())
    # A streams ROI that shares its name with a group ("early") is spelt with its class.
    names = [f"streams:{name}" if name in streams and name in ROI_GROUPS else name
             for name in ROI_NAMES]
    return (
        f"valid ROIs: {', '.join(names)}; groups: {', '.join(ROI_GROUPS)}; "
        f"'{WHOLE_HEMISPHERE}' = whole hemisphere"
    )


def _canonical(name: str) -> str:
    text = str(name).strip()
    if ":" in text:
        class_name, _, roi = (part.strip() for part in text.partition(":"))
        if class_name not in ROI_CLASSES:
            raise InputError(
                f"unknown ROI class {class_name!r} in {name!r} (valid: {', '.join(ROI_CLASSES)})"
            )
        names = {value.lower(): value for value in ROI_CLASSES[class_name].values()}
        if roi.lower() not in names:
            raise InputError(
                f"{name!r}: no ROI {roi!r} in {class_name} "
                f"(valid: {', '.join(ROI_CLASSES[class_name].values())})"
            )
        return names[roi.lower()]
    canonical = _CANONICAL.get(text.lower())
    if canonical is None:
        raise InputError(f"unknown ROI {name!r} ({_valid_names_message()})")
    return canonical


def check_hemisphere(hemisphere: str) -> str:
    """Return ``hemisphere`` if it is ``"lh"`` or ``"rh"``; raise InputError otherwise."""
    if hemisphere not in HEMISPHERES:
        raise InputError(f"unknown hemisphere {hemisphere!r} (valid: {', '.join(HEMISPHERES)})")
    return hemisphere


def roi_class(name: str) -> tuple[str, int]:
    """Return the class and label of an ROI.

    Parameters
    ----------
    name : str
        ROI name, e.g. ``"V1v"`` (matched without regard to case), or a class-qualified name
        such as ``"streams:early"``.

    Returns
    -------
    tuple of (str, int)
        Class name and label, e.g. ``("prf-visualrois", 1)``.

    Raises
    ------
    InputError
        If ``name`` is not one of the 31 ROIs; the message lists the valid names and groups.
    """
    canonical = _canonical(name)
    if canonical not in _ROI_LOOKUP:
        raise InputError(f"{name!r} is not a single ROI of a class ({_valid_names_message()})")
    return _ROI_LOOKUP[canonical]


def expand_rois(names: str | Sequence[str], option: str | None = None) -> list[str]:
    """Expand ROI names and groups into a list of ROI names.

    Parameters
    ----------
    names : str or sequence of str
        ROI names, group names (``early``, ``higher``, ``streams``, ``early+higher``) or
        ``"all"`` (the whole hemisphere, kept as is). A string may hold several entries
        separated by commas. ``"early"`` is the group of the 7 pRF ROIs; the streams ROI of
        the same name is reached with ``"streams:early"`` (or the ``streams`` group).
    option : str, optional
        The option or setting the names came from (``--roi``); errors start with it.

    Returns
    -------
    list of str
        Canonical names in the order given, groups expanded in class order, duplicates removed.

    Raises
    ------
    InputError
        On an unknown name, or when no name is given.
    """
    items = names.split(",") if isinstance(names, str) else list(names)
    items = [str(item).strip() for item in items if str(item).strip()]
    prefix = f"{option}: " if option else ""
    if not items:
        raise InputError(f"{prefix}no ROI given ({_valid_names_message()})")
    expanded: list[str] = []
    for item in items:
        try:
            canonical = _canonical(item)
        except InputError as error:
            raise InputError(f"{prefix}{error}") from None
        group = ROI_GROUPS.get(canonical) if ":" not in item else None
        for name in group or (canonical,):
            if name not in expanded:
                expanded.append(name)
    return expanded


class _MappingUnpickler(pickle.Unpickler):
    """Unpickler that can only rebuild numpy arrays, dtypes and scalars."""

    _ALLOWED = frozenset(
        {
            (module, name)
            for module in ("numpy.core.multiarray", "numpy._core.multiarray")
            for name in ("_reconstruct", "scalar")
        }
        | {("numpy", "ndarray"), ("numpy", "dtype")}
    )

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"forbidden global {module}.{name}")
        return super().find_class(module, name)


def _unpickle_npy(path: Path) -> object:
    """Read a pickled ``.npy`` file with the restricted unpickler."""
    try:
        with open(path, "rb") as handle:
            version = npy_format.read_magic(handle)
            if version == (1, 0):
                _, _, dtype = npy_format.read_array_header_1_0(handle)
            elif version == (2, 0):
                _, _, dtype = npy_format.read_array_header_2_0(handle)
            else:
                raise InputError(f"{path}: unsupported .npy format version {version}")
            payload = handle.read()
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except (OSError, ValueError) as error:
        if isinstance(error, InputError):
            raise
        raise InputError(f"{path}: not a readable .npy file ({error})") from None
    if not dtype.hasobject:
        raise InputError(f"{path}: expected a pickled object array, found dtype {dtype}")
    try:
        return _MappingUnpickler(io.BytesIO(payload)).load()
    except Exception as error:  # any failure of a hostile or damaged pickle
        raise InputError(f"{path}: not a plain label mapping ({error})") from None


def load_roi_mapping(path: str | Path) -> dict[int, str]:
    """Read a ``mapping_<class>.npy`` file safely.

    Parameters
    ----------
    path : str or Path
        A ``.npy`` file holding a pickled 0-d object array of a ``{label: name}`` dict.

    Returns
    -------
    dict of int to str
        The mapping as stored (the official files include ``0: "Unknown"``).

    Raises
    ------
    InputError
        If the file is missing, is not a plain dict of int to str (anything else in the pickle
        is refused before it can run), or its names differ from the built-in table of its class
        (the class is taken from the file name ``mapping_<class>.npy`` when it names one).
    """
    path = Path(path)
    array = _unpickle_npy(path)
    if not (isinstance(array, np.ndarray) and array.shape == () and array.dtype == object):
        raise InputError(f"{path}: expected a 0-d object array holding a dict")
    raw = array.item()
    if not isinstance(raw, dict):
        raise InputError(f"{path}: expected a dict, found {type(raw).__name__}")
    mapping: dict[int, str] = {}
    for label, name in raw.items():
        if not isinstance(label, (int, np.integer)) or isinstance(label, bool):
            raise InputError(f"{path}: label {label!r} is not an integer")
        if not isinstance(name, str):
            raise InputError(f"{path}: name of label {label} is not a string")
        mapping[int(label)] = str(name)
    named = {label: name for label, name in mapping.items() if label != 0}
    class_name = path.stem.removeprefix("mapping_")
    candidates = {class_name: ROI_CLASSES[class_name]} if class_name in ROI_CLASSES else ROI_CLASSES
    if not any(named == table for table in candidates.values()):
        expected = " or ".join(str(table) for table in candidates.values())
        raise InputError(
            f"{path}: labels {named} differ from the {'/'.join(candidates)} table {expected}"
        )
    return mapping


def _load_plain_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: not a readable numeric .npy file ({error})") from None


def _as_labels(array: np.ndarray, path: Path) -> np.ndarray:
    if array.ndim != 1:
        raise InputError(f"{path}: expected a 1-D label array, found shape {array.shape}")
    if np.issubdtype(array.dtype, np.integer) or array.dtype == bool:
        return array.astype(np.int64)
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise InputError(f"{path}: labels must be whole numbers")
        return array.astype(np.int64)
    raise InputError(f"{path}: expected integer labels, found dtype {array.dtype}")


def read_roi_labels(
    roi_dir: str | Path, hemisphere: str, roi_class_name: str, n_vertices: int
) -> np.ndarray:
    """Read ``{hemisphere}.{roi_class_name}_challenge_space.npy``.

    Parameters
    ----------
    roi_dir : str or Path
        A subject's ``roi_masks`` folder.
    hemisphere : {"lh", "rh"}
    roi_class_name : str
        One of the six keys of :data:`ROI_CLASSES`.
    n_vertices : int
        Number of challenge-space vertices (fMRI columns) of the hemisphere.

    Returns
    -------
    numpy.ndarray
        int64 labels, one per column; 0 = in no ROI of the class.

    Raises
    ------
    InputError
        If the file is missing or unreadable, its length differs from ``n_vertices``, or it
        holds labels outside the class's table.
    """
    check_hemisphere(hemisphere)
    if roi_class_name not in ROI_CLASSES:
        raise InputError(f"unknown ROI class {roi_class_name!r} (valid: {', '.join(ROI_CLASSES)})")
    path = Path(roi_dir) / f"{hemisphere}.{roi_class_name}_challenge_space.npy"
    labels = _as_labels(_load_plain_npy(path), path)
    if labels.shape[0] != n_vertices:
        raise InputError(
            f"{path}: {labels.shape[0]} labels but the {hemisphere} fMRI has {n_vertices} columns"
        )
    unknown = np.setdiff1d(np.unique(labels), [0, *ROI_CLASSES[roi_class_name]])
    if unknown.size:
        raise InputError(f"{path}: labels {unknown.tolist()} are not in the {roi_class_name} table")
    return labels


def read_fsaverage_index(roi_dir: str | Path, hemisphere: str, n_vertices: int) -> np.ndarray:
    """Map challenge-space columns to fsaverage vertices.

    Parameters
    ----------
    roi_dir : str or Path
        A subject's ``roi_masks`` folder holding ``{hemisphere}.all-vertices_fsaverage_space.npy``.
    hemisphere : {"lh", "rh"}
    n_vertices : int
        Number of challenge-space vertices (fMRI columns) of the hemisphere.

    Returns
    -------
    numpy.ndarray
        int64 fsaverage vertex index of every column, ``np.where(mask)[0]``.

    Raises
    ------
    InputError
        If the mask is missing, not a 0/1 vector of 163842 fsaverage vertices, or the number of
        vertices it marks differs from ``n_vertices``.
    """
    check_hemisphere(hemisphere)
    path = Path(roi_dir) / f"{hemisphere}.all-vertices_fsaverage_space.npy"
    mask = _as_labels(_load_plain_npy(path), path)
    if mask.shape[0] != FSAVERAGE_N_VERTICES:
        raise InputError(
            f"{path}: {mask.shape[0]} entries but fsaverage has {FSAVERAGE_N_VERTICES} vertices"
        )
    if np.any((mask != 0) & (mask != 1)):
        raise InputError(f"{path}: expected a 0/1 mask")
    index = np.flatnonzero(mask).astype(np.int64)
    if index.size != n_vertices:
        raise InputError(
            f"{path}: marks {index.size} vertices but the {hemisphere} fMRI has "
            f"{n_vertices} columns"
        )
    return index

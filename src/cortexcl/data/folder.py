"""Reader of a lab's own dataset in a minimal folder layout (README, "Your own data").

::

    <root>/subjNN/
      images/                  the images, any format Pillow reads; rows in sorted name order,
      stimuli.tsv              or in this table's order: columns file (in images/), id (optional)
      responses.npy            (images × units) float: one part, called "units"
      responses/<part>.npy     or one file per part: lh / rh, or areas (V4, IT, …)
      rois/<name>.npy          optional, per part rois/<part>/<name>.npy: a boolean mask over
                               the units (or 0/1 integers), or integer unit indices
      noise_ceiling.npy        optional (per part noise_ceiling/<part>.npy): each unit's noise
                               ceiling, a fraction in [0, 1], used as given
      ncsnr.npy + repeats.npy  or instead (per part ncsnr/<part>.npy): each unit's ncsnr and
                               each image's trials; the ceiling then follows NSD's formula
      fsaverage/<part>.npy     optional, parts lh and rh: each unit's fsaverage vertex
                               (surface maps are drawn only then)

Units may be vertices, voxels or neurons. Every file is checked when the subject is loaded,
with a one-line message naming the file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from cortexcl.data.algonauts import _check_finite, _open_fmri
from cortexcl.data.images import ImageStore
from cortexcl.data.rois import FSAVERAGE_N_VERTICES, WHOLE_HEMISPHERE, _load_plain_npy
from cortexcl.data.subject import SINGLE_PART, Subject, check_ncsnr, subject_name
from cortexcl.errors import InputError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
SURFACE_PARTS = ("lh", "rh")


@dataclass(frozen=True)
class Item:
    """An array and where it came from (a file, or an argument), for messages."""

    label: str
    value: np.ndarray


@dataclass(frozen=True)
class CheckedParts:
    """What `check_parts` accepted, ready for `Subject`."""

    responses: dict[str, np.ndarray | Path]
    rois: dict[str, dict[str, np.ndarray]]
    roi_names: tuple[str, ...]
    ceiling: dict[str, np.ndarray] | None
    ncsnr: dict[str, np.ndarray] | None
    n_repeats: np.ndarray | None
    fsaverage: dict[str, np.ndarray] | None


def _check_name(name: str, what: str, label: str) -> str:
    if not _NAME.match(name) or name.lower() == WHOLE_HEMISPHERE:
        raise InputError(f"{label}: {what} name {name!r} must be letters, digits, '_.+-' and "
                         f"not {WHOLE_HEMISPHERE!r}")
    return name


def _roi_columns(item: Item, n_units: int) -> np.ndarray:
    """An ROI as sorted unit columns: a boolean (or 0/1) mask over units, or unit indices."""
    value = np.asarray(item.value)
    if value.ndim != 1:
        raise InputError(f"{item.label}: expected a 1-D mask or index array, found shape "
                         f"{value.shape}")
    if value.dtype == bool or (np.issubdtype(value.dtype, np.integer) and value.size == n_units
                               and np.isin(value, (0, 1)).all()):
        if value.size != n_units:
            raise InputError(f"{item.label}: mask of {value.size} entries but the responses have "
                             f"{n_units} units")
        return np.flatnonzero(value).astype(np.int64)
    if not np.issubdtype(value.dtype, np.integer):
        raise InputError(f"{item.label}: expected a boolean mask or integer unit indices, found "
                         f"dtype {value.dtype}")
    outside = value[(value < 0) | (value >= n_units)]
    if outside.size:
        raise InputError(f"{item.label}: unit index {int(outside[0])} out of range "
                         f"0-{n_units - 1}")
    if np.unique(value).size != value.size:
        raise InputError(f"{item.label}: a unit index appears more than once")
    return np.sort(value).astype(np.int64)


def _per_unit(item: Item, n_units: int, what: str) -> np.ndarray:
    value = np.asarray(item.value)
    if value.shape != (n_units,):
        raise InputError(f"{item.label}: shape {value.shape} but the responses have {n_units} "
                         f"units ({what})")
    if not np.issubdtype(value.dtype, np.number):
        raise InputError(f"{item.label}: expected numbers, found dtype {value.dtype}")
    return value


def check_parts(
    n_images: int,
    responses: Mapping[str, Item],
    rois: Mapping[str, Mapping[str, Item]],
    ceiling: Mapping[str, Item] | None = None,
    ncsnr: Mapping[str, Item] | None = None,
    repeats: Item | None = None,
    fsaverage: Mapping[str, Item] | None = None,
) -> CheckedParts:
    """Check a subject's parts the way the Algonauts reader checks its files.

    Responses are 2-D finite floats with one row per image; ROI, ceiling, ncsnr and fsaverage
    arrays have one entry per unit of their part (ROIs may instead list unit indices); a
    ceiling is in [0, 1]; ncsnr (>= 0) needs the images' repeats (integers >= 1) and excludes
    a given ceiling; fsaverage vertices belong to parts ``lh`` / ``rh`` and lie on fsaverage.

    Raises
    ------
    InputError
        In one line naming the file (or argument) at fault.
    """
    if not responses:
        raise InputError("responses: no responses given")
    checked: dict[str, np.ndarray | Path] = {}
    n_units = {}
    for part, item in responses.items():
        _check_name(part, "part", item.label)
        value = item.value
        if value.ndim != 2:
            raise InputError(f"{item.label}: expected a 2-D (images × units) array, found shape "
                             f"{value.shape}")
        if not np.issubdtype(value.dtype, np.floating):
            raise InputError(f"{item.label}: expected floating-point responses, found dtype "
                             f"{value.dtype}")
        if value.shape[0] != n_images:
            raise InputError(f"{item.label}: {value.shape[0]} rows but {n_images} images")
        _check_finite(value, Path(item.label))
        checked[part] = value
        n_units[part] = value.shape[1]
    for name, part_items in (("ROIs", {p: next(iter(t.values())) for p, t in rois.items() if t}),
                             ("noise ceiling", ceiling), ("ncsnr", ncsnr),
                             ("fsaverage vertices", fsaverage)):
        for part, item in (part_items or {}).items():
            if part not in responses:
                raise InputError(f"{item.label}: {name} of part {part!r}, which has no "
                                 f"responses (parts: {', '.join(responses)})")
    columns: dict[str, dict[str, np.ndarray]] = {}
    names: list[str] = []
    for part, table in rois.items():
        columns[part] = {}
        for name, item in table.items():
            columns[part][_check_name(name, "ROI", item.label)] = _roi_columns(item, n_units[part])
            names += [name] if name not in names else []
    if ceiling and ncsnr:
        raise InputError(f"{next(iter(ncsnr.values())).label}: give either noise ceilings or "
                         "ncsnr with repeats, not both")
    ceilings = None
    if ceiling:
        ceilings = {}
        for part, item in ceiling.items():
            value = _per_unit(item, n_units[part], "noise ceiling")
            if not np.all(np.isfinite(value)) or value.min() < 0 or value.max() > 1:
                raise InputError(f"{item.label}: noise ceilings must be fractions in [0, 1]")
            ceilings[part] = value.astype(np.float64)
    ncsnrs, n_repeats = None, None
    if ncsnr or repeats is not None:
        if not ncsnr or repeats is None:
            given = repeats.label if repeats is not None else next(iter(ncsnr.values())).label
            raise InputError(f"{given}: ncsnr and repeats go together (NSD's ceiling formula "
                             "needs both)")
        ncsnrs = {part: check_ncsnr(item.value, item.label, n_units[part], part)
                  for part, item in ncsnr.items()}
        n_repeats = np.asarray(repeats.value)
        if (n_repeats.shape != (n_images,) or not np.issubdtype(n_repeats.dtype, np.number)
                or not np.all(n_repeats >= 1) or np.any(n_repeats != np.round(n_repeats))):
            raise InputError(f"{repeats.label}: expected {n_images} whole repeat counts >= 1 "
                             f"(one per image), found {n_repeats.dtype} {n_repeats.shape}")
        n_repeats = n_repeats.astype(np.int64)
    vertices = None
    if fsaverage:
        vertices = {}
        for part, item in fsaverage.items():
            if part not in SURFACE_PARTS:
                raise InputError(f"{item.label}: surface vertices are for parts lh and rh, "
                                 f"not {part!r}")
            value = _per_unit(item, n_units[part], "fsaverage vertex per unit")
            if (not np.issubdtype(value.dtype, np.integer) or value.min(initial=0) < 0
                    or value.max(initial=0) >= FSAVERAGE_N_VERTICES):
                raise InputError(f"{item.label}: expected fsaverage vertex indices "
                                 f"0-{FSAVERAGE_N_VERTICES - 1}")
            vertices[part] = value.astype(np.int64)
    return CheckedParts(checked, columns, tuple(names), ceilings, ncsnrs, n_repeats, vertices)


def _images(folder: Path) -> tuple[list[Path], np.ndarray]:
    """Image files in row order and their ids (``stimuli.tsv``, else sorted names, ids 0…)."""
    image_dir = folder / "images"
    if not image_dir.is_dir():
        raise InputError(f"{image_dir}: images folder not found")
    table_path = folder / "stimuli.tsv"
    if not table_path.is_file():
        paths = sorted(p for p in image_dir.iterdir() if not p.name.startswith("."))
        if not paths:
            raise InputError(f"{image_dir}: no image files")
        Image.init()
        known = Image.registered_extensions()
        stray = next((p for p in paths if not p.is_file() or p.suffix.lower() not in known),
                     None)
        if stray is not None:
            what = "a folder" if stray.is_dir() else "not an image file (by its suffix)"
            raise InputError(f"{stray}: {what}; images/ must hold only the images, or "
                             "stimuli.tsv list them")
        return paths, np.arange(len(paths), dtype=np.int64)
    try:
        table = pd.read_csv(table_path, sep="\t", dtype={"file": str})
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise InputError(f"{table_path}: not a readable tab-separated table ({error})") from None
    if "file" not in table.columns or table.empty:
        raise InputError(f"{table_path}: needs a 'file' column and one row per image "
                         f"(columns: {', '.join(map(str, table.columns))})")
    if table["file"].isna().any() or table["file"].duplicated().any():
        row = int(np.flatnonzero(table["file"].isna() | table["file"].duplicated())[0]) + 2
        raise InputError(f"{table_path}: line {row}: file missing or repeated")
    paths = [image_dir / name for name in table["file"]]
    missing = next((p for p in paths if not p.is_file()), None)
    if missing is not None:
        raise InputError(f"{table_path}: {missing} not found")
    if "id" not in table.columns:
        return paths, np.arange(len(paths), dtype=np.int64)
    ids = pd.to_numeric(table["id"], errors="coerce")
    if ids.isna().any() or (ids != ids.round()).any() or ids.duplicated().any():
        raise InputError(f"{table_path}: the id column must hold distinct whole numbers")
    return paths, ids.to_numpy(np.int64)


def _item(path: Path) -> Item:
    """A plain ``.npy`` file as an `Item` named by its path."""
    return Item(str(path), _load_plain_npy(path))


def _by_part(folder: Path, name: str, parts: list[str]) -> dict[str, Item] | None:
    """``<name>.npy`` (one part) or ``<name>/<part>.npy``, as Items; None when absent."""
    single, per_part = folder / f"{name}.npy", folder / name
    if single.is_file() and per_part.is_dir():
        raise InputError(f"{folder}: holds both {name}.npy and {name}/; keep one")
    if single.is_file():
        if len(parts) != 1:
            raise InputError(f"{single}: the responses have parts {', '.join(parts)}; give "
                             f"{name}/<part>.npy instead")
        return {parts[0]: _item(single)}
    if per_part.is_dir():
        return {p.stem: _item(p) for p in sorted(per_part.glob("*.npy"))}
    return None


def load_folder_subject(
    data_root: str | Path,
    subject: int | str,
    image_size: int = 224,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> Subject:
    """Open and check one subject of a dataset in the folder layout (module docstring).

    Parameters
    ----------
    data_root : str or Path
        Folder holding ``subjNN`` folders.
    subject : int or str
    image_size, cache_dir, progress
        Of the `ImageStore`.

    Returns
    -------
    Subject
        Parts named by the response files (``units`` for a single ``responses.npy``).

    Raises
    ------
    InputError
        In one line naming the file: a missing folder or file; responses that are not 2-D
        finite floats with one row per image; an ROI, ceiling, ncsnr or fsaverage file whose
        length is not the part's units, or of a part without responses; a malformed
        ``stimuli.tsv``. (An image that does not decode is named when the images are first
        decoded, before any result is written.)
    """
    name = subject_name(subject)
    folder = Path(data_root) / name
    if not folder.is_dir():
        raise InputError(f"{folder}: subject folder not found")
    paths, ids = _images(folder)
    single, per_part = folder / "responses.npy", folder / "responses"
    if single.is_file() == per_part.is_dir():
        raise InputError(f"{folder}: needs either responses.npy or a responses/ folder of "
                         "<part>.npy files")
    files = ({SINGLE_PART: single} if single.is_file()
             else {p.stem: p for p in sorted(per_part.glob("*.npy"))})
    if not files:
        raise InputError(f"{per_part}: no <part>.npy files")
    responses = {part: Item(str(path), _open_fmri(path)) for part, path in files.items()}
    parts = list(responses)
    rois: dict[str, dict[str, Item]] = {}
    roi_dir = folder / "rois"
    if roi_dir.is_dir():
        nested = [p for p in sorted(roi_dir.iterdir()) if p.is_dir()]
        flat = sorted(roi_dir.glob("*.npy"))
        if flat and (nested or len(parts) > 1):
            raise InputError(f"{roi_dir}: with parts {', '.join(parts)}, ROIs go in "
                             "rois/<part>/<name>.npy")
        for part_dir in nested:
            rois[part_dir.name] = {p.stem: _item(p)
                                   for p in sorted(part_dir.glob("*.npy"))}
        if flat:
            rois[parts[0]] = {p.stem: _item(p) for p in flat}
    repeats_path = folder / "repeats.npy"
    checked = check_parts(
        len(paths), responses, rois, _by_part(folder, "noise_ceiling", parts),
        _by_part(folder, "ncsnr", parts),
        _item(repeats_path) if repeats_path.is_file() else None,
        {p.stem: _item(p) for p in sorted((folder / "fsaverage").glob("*.npy"))}
        or None)
    images = ImageStore(paths, size=image_size, cache_dir=cache_dir, progress=progress)
    return Subject(name, folder, images, ids, files, checked.rois, roi_names=checked.roi_names,
                   fsaverage_index=checked.fsaverage, ncsnr=checked.ncsnr,
                   n_repeats=checked.n_repeats, ceiling=checked.ceiling,
                   hash_files=[*files.values(),
                               *sorted(p for p in folder.rglob("*.npy") if p not in
                                       files.values())])

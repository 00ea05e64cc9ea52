"""Reader of the Natural Object Dataset (NOD; OpenNeuro ds004496), ImageNet runs.

See docs/method.md §4.

Layout under the dataset root::

    sub-XX/ses-imagenetYY/func/sub-XX_ses-imagenetYY_task-imagenet_run-RR_events.tsv
    derivatives/ciftify/sub-XX/results/ses-imagenetYY_task-imagenet_run-R/
        ses-imagenetYY_task-imagenet_run-R_beta.dscalar.nii   trial maps × grayordinates
        ses-imagenetYY_task-imagenet_run-R_label.txt          stimulus names in map order
    derivatives/ciftify/sub-XX/results/ses-prf_task-prf/ses-prf_task-prf_params.dscalar.nii
    derivatives/supportfiles/MMP_mpmLR32k.mat, roilbl_mmp.csv [, superClassMapping.csv]
    stimuli/imagenet/nXXXXXXXX/nXXXXXXXX_NNNNN.JPEG

Runs are zero-padded in the raw folders (``run-01``) and not in the derivatives (``run-1``);
both are found by globbing and matched by the run number, so either spelling works in either
place. The support files are not part of ds004496: copy them from the NOD-fmri repository
(``validation/supportfiles/``) into ``derivatives/supportfiles/`` or pass ``atlas_dir``.

Grayordinates are located with the CIFTI brain-model axis (axis 1): the columns of the
``CORTEX_LEFT`` and ``CORTEX_RIGHT`` models, in their brain-model order, whatever their position
in the file. The Glasser atlas has no axis; its labels are in the standard CIFTI order, left
cortex then right cortex, and the reader checks that labels 1-180 fall on the left part and
181-360 on the right part.

Every file is checked when the subject is loaded, so a damaged dataset fails at once with a
one-line `InputError` naming the file.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import nibabel as nib
import numpy as np
import pandas as pd
import scipy.io
from nibabel.cifti2 import cifti2_axes
from tqdm.auto import tqdm

from cortexcl.data.images import ImageStore
from cortexcl.data.rois import HEMISPHERES, WHOLE_HEMISPHERE, check_hemisphere
from cortexcl.errors import InputError
from cortexcl.metrics import zscore_columns

NOD_ROIS: tuple[str, ...] = ("V1", "V2", "V3", "V4")
NORMALIZATIONS = ("run", "block")
DEFAULT_SESSIONS = (1, 2, 3, 4)
N_CLASSES = 1000
N_AREAS = 180  # Glasser areas per hemisphere
PUBLISHED_R2_INDEX = 3  # the map the published work takes as R²

CORTEX = {"lh": "CIFTI_STRUCTURE_CORTEX_LEFT", "rh": "CIFTI_STRUCTURE_CORTEX_RIGHT"}
ATLAS_FILE = "MMP_mpmLR32k.mat"
ATLAS_KEY = "glasser_MMP"
ROI_TABLE_FILE = "roilbl_mmp.csv"
SUPERCLASS_FILE = "superClassMapping.csv"
PRF_FILE = Path("ses-prf_task-prf") / "ses-prf_task-prf_params.dscalar.nii"
EVENT_COLUMNS = ("onset", "duration", "trial_type", "stim_file")

_EVENTS = re.compile(r"^(sub-[^_]+)_ses-imagenet(\d+)_task-imagenet_run-(\d+)_events\.tsv$")
_RUN_DIR = re.compile(r"^ses-imagenet(\d+)_task-imagenet_run-(\d+)$")
_IMAGE_NAME = re.compile(r"[^\s/\\,;]+?\.(?:jpe?g|png|bmp)", re.IGNORECASE)
_AREA_NAME = re.compile(r"^[LR]_(.+)_ROI$")
_R2_NAME = re.compile(r"(?<![a-z0-9])r(?:\^?2|sq|_?squared)(?![a-z0-9])")
_PLACEHOLDER_MAP_NAME = re.compile(r"^(?:#?\d*|none)$", re.IGNORECASE)  # nibabel: "None"


def nod_subject_name(subject: int | str) -> str:
    """Return the BIDS name of a NOD subject: 1, "1", "01", "sub01" and "sub-01" give "sub-01".

    Raises
    ------
    InputError
        If ``subject`` is not a positive subject number.
    """
    text = str(subject).strip().lower().removeprefix("sub").removeprefix("-")
    if not text.isdigit() or int(text) < 1:
        raise InputError(f"subject: expected a NOD subject such as 1 or sub-01, got {subject!r}")
    return f"sub-{int(text):02d}"


# --------------------------------------------------------------------------------------------
# CIFTI


@dataclass(frozen=True)
class CortexColumns:
    """Where the cortex is in a CIFTI file: per hemisphere, the file columns of its
    grayordinates (brain-model order) and their surface vertex numbers."""

    columns: dict[str, np.ndarray]
    vertices: dict[str, np.ndarray]

    def n(self, hemisphere: str) -> int:
        """Number of grayordinates of a hemisphere."""
        return len(self.columns[hemisphere])

    def matches(self, other: CortexColumns) -> bool:
        """True when both describe the same vertices in the same order."""
        return all(np.array_equal(self.vertices[h], other.vertices[h]) for h in HEMISPHERES)

    def describe(self) -> str:
        """``"L 29696 + R 29716"``."""
        return f"L {self.n('lh')} + R {self.n('rh')}"


def _open_cifti(path: Path) -> tuple[nib.Cifti2Image, cifti2_axes.Axis, CortexColumns]:
    """Load a CIFTI-2 image (lazily) and locate its cortex through the brain-model axis.

    Returns the image, its axis 0 (map names) and its cortex columns.
    """
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        image = nib.load(path)
    except Exception as error:  # nibabel raises many types on damaged files
        raise InputError(f"{path}: not a readable CIFTI file ({error})") from None
    if not isinstance(image, nib.Cifti2Image):
        raise InputError(f"{path}: not a CIFTI-2 file (nibabel read it as {type(image).__name__})")
    try:
        axes = [image.header.get_axis(i) for i in range(image.ndim)]
    except Exception as error:
        raise InputError(f"{path}: unreadable CIFTI axes ({error})") from None
    if image.ndim != 2:
        raise InputError(
            f"{path}: expected 2 CIFTI axes (maps × grayordinates), found {image.ndim}"
        )
    if not isinstance(axes[1], cifti2_axes.BrainModelAxis):
        where = ("axis 0" if isinstance(axes[0], cifti2_axes.BrainModelAxis) else "missing")
        raise InputError(
            f"{path}: expected maps × grayordinates with the brain-model axis as axis 1, "
            f"but the brain-model axis is {where} (axes: "
            f"{type(axes[0]).__name__}, {type(axes[1]).__name__})"
        )
    if not isinstance(axes[0], cifti2_axes.ScalarAxis | cifti2_axes.SeriesAxis):
        raise InputError(
            f"{path}: expected a scalar or series axis 0, found {type(axes[0]).__name__}"
        )
    structures = np.asarray(axes[1].name)
    columns, vertices = {}, {}
    for hemisphere, structure in CORTEX.items():
        columns[hemisphere] = np.flatnonzero(structures == structure).astype(np.int64)
        if columns[hemisphere].size == 0:
            found = ", ".join(dict.fromkeys(str(name) for name in structures))
            raise InputError(f"{path}: no {structure} brain model (found: {found})")
        vertices[hemisphere] = np.asarray(axes[1].vertex[columns[hemisphere]], dtype=np.int64)
    return image, axes[0], CortexColumns(columns, vertices)


def _read_cortex(image: nib.Cifti2Image, cortex: CortexColumns, path: Path) -> np.ndarray:
    """All maps on the cortex, float64 (n_maps, n_lh + n_rh), left then right; must be finite."""
    try:
        data = np.asarray(image.dataobj, dtype=np.float64)
    except Exception as error:
        raise InputError(f"{path}: cannot read the data ({error})") from None
    block = np.concatenate([data[:, cortex.columns[h]] for h in HEMISPHERES], axis=1)
    bad = ~np.isfinite(block)
    if bad.any():
        row, column = np.argwhere(bad)[0]
        raise InputError(
            f"{path}: {int(bad.sum())} non-finite cortical values (first: {block[row, column]} "
            f"in map {row}, cortex column {column})"
        )
    return block


# --------------------------------------------------------------------------------------------
# Atlas, pRF map and stimulus tables


@dataclass(frozen=True)
class Atlas:
    """Glasser labels per hemisphere (cortex order) and the 0-based row of every area name."""

    labels: dict[str, np.ndarray]
    rows: dict[str, int]
    path: Path
    table_path: Path

    def label(self, hemisphere: str, roi: str) -> int:
        """Atlas label of an area: 1 + row (left) or 181 + row (right)."""
        row = self.rows[roi]
        return 1 + row if hemisphere == "lh" else 1 + N_AREAS + row


def read_atlas(atlas_dir: Path, cortex: CortexColumns, rois: Sequence[str] = NOD_ROIS) -> Atlas:
    """Read ``MMP_mpmLR32k.mat`` and ``roilbl_mmp.csv`` and check them against the cortex.

    Parameters
    ----------
    atlas_dir : Path
        Folder holding both files.
    cortex : CortexColumns
        Grayordinates of the beta files; the atlas must have ``n_lh + n_rh`` labels.
    rois : sequence of str
        Area names that must be in the table (second ``_`` token, e.g. ``V1``).

    Raises
    ------
    InputError
        On a missing or unreadable file, a missing ``glasser_MMP`` key, a label count that
        differs from the cortex, labels outside the hemisphere's range, or a missing area.
    """
    path = atlas_dir / ATLAS_FILE
    if not path.is_file():
        raise InputError(
            f"{path}: Glasser atlas not found (copy it from the NOD-fmri repository "
            "validation/supportfiles/, or pass atlas_dir)"
        )
    try:
        content = scipy.io.loadmat(path)
    except Exception as error:
        raise InputError(f"{path}: not a readable MATLAB file ({error})") from None
    if ATLAS_KEY not in content:
        keys = ", ".join(k for k in content if not k.startswith("__"))
        raise InputError(f"{path}: no {ATLAS_KEY!r} variable (found: {keys})")
    values = np.asarray(content[ATLAS_KEY]).reshape(-1)
    n_left, n_right = cortex.n("lh"), cortex.n("rh")
    if values.size != n_left + n_right:
        raise InputError(
            f"{path}: {values.size} labels but the betas have {n_left + n_right} cortical "
            f"grayordinates ({cortex.describe()})"
        )
    if not np.all(np.isfinite(values)) or np.any(values != np.round(values)):
        raise InputError(f"{path}: {ATLAS_KEY} holds non-integer labels")
    values = values.astype(np.int64)
    labels = {"lh": values[:n_left], "rh": values[n_left:]}
    for hemisphere, (low, high) in {"lh": (1, N_AREAS), "rh": (N_AREAS + 1, 2 * N_AREAS)}.items():
        part = labels[hemisphere]
        wrong = (part != 0) & ((part < low) | (part > high))
        if wrong.any():
            raise InputError(
                f"{path}: {int(wrong.sum())} {hemisphere} labels outside {low}-{high} (the "
                "atlas must list the left cortex first, then the right)"
            )
    table_path = atlas_dir / ROI_TABLE_FILE
    names = _read_area_names(table_path)
    rows = {}
    for roi in rois:
        if roi not in names:
            raise InputError(f"{table_path}: no area named {roi} (expected a row L_{roi}_ROI)")
        rows[roi] = names.index(roi)
    return Atlas(labels=labels, rows=rows, path=path, table_path=table_path)


def _read_area_names(path: Path) -> list[str]:
    """Area names (second ``_`` token of column 0) of ``roilbl_mmp.csv``, header row skipped."""
    if not path.is_file():
        raise InputError(f"{path}: Glasser area table not found")
    try:
        table = pd.read_csv(path, header=None, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: unreadable area table ({error})") from None
    cells = [str(cell).strip() for cell in table.iloc[:, 0]]
    if cells and not _AREA_NAME.match(cells[0]):
        cells = cells[1:]  # the released file starts with a "???,???" header line
    if len(cells) != N_AREAS:
        raise InputError(f"{path}: {len(cells)} areas, expected {N_AREAS}")
    names = []
    for row, cell in enumerate(cells):
        match = _AREA_NAME.match(cell)
        if match is None:
            raise InputError(f"{path}: row {row} {cell!r} is not an area name like L_V1_ROI")
        names.append(match.group(1))
    return names


@dataclass(frozen=True)
class R2Map:
    """Which pRF map was taken as R² and why."""

    index: int
    name: str
    chosen_by: str  # "name" or "index"
    path: Path


def choose_r2_map(names: Sequence[str], path: Path) -> R2Map:
    """Pick the R² map of a pRF file by its name, or index 3 when the maps are unnamed.

    A name counts as R² when it is ``R2``, ``R^2``, ``rsq`` or ``r_squared`` as a token (any
    case, e.g. ``prf_R2``). Names count as absent when all are empty, ``None`` (nibabel's
    reading of an empty name) or placeholders such as ``#1``.

    Raises
    ------
    InputError
        When several names look like R², when names are given but none is R², or when the
        maps are unnamed and there are fewer than 4.
    """
    names = ["" if name is None else str(name).strip() for name in names]
    listed = ", ".join(repr(n) for n in names)
    matches = [i for i, name in enumerate(names) if _R2_NAME.search(name.lower())]
    if len(matches) == 1:
        return R2Map(index=matches[0], name=names[matches[0]], chosen_by="name", path=path)
    if len(matches) > 1:
        raise InputError(f"{path}: several maps look like R² ({listed})")
    if any(not _PLACEHOLDER_MAP_NAME.match(name) for name in names):
        raise InputError(f"{path}: no map named like R2 among {listed}")
    if len(names) <= PUBLISHED_R2_INDEX:
        raise InputError(
            f"{path}: unnamed maps and only {len(names)} of them (R² is map "
            f"{PUBLISHED_R2_INDEX} in the published work)"
        )
    return R2Map(index=PUBLISHED_R2_INDEX, name=names[PUBLISHED_R2_INDEX], chosen_by="index",
                 path=path)


def read_prf_r2(path: Path, cortex: CortexColumns) -> tuple[dict[str, np.ndarray], R2Map]:
    """R² of every cortical grayordinate (NaN kept) from the pRF parameter file.

    Raises
    ------
    InputError
        On a damaged file, no R² map, or cortical vertices that differ from the betas'.
    """
    image, map_axis, prf_cortex = _open_cifti(path)
    if not prf_cortex.matches(cortex):
        raise InputError(
            f"{path}: cortical grayordinates ({prf_cortex.describe()}) differ from the beta "
            f"files' ({cortex.describe()})"
        )
    names = list(map_axis.name) if isinstance(map_axis, cifti2_axes.ScalarAxis) else []
    choice = choose_r2_map(names or [""] * image.shape[0], path)
    try:
        row = np.asarray(image.dataobj[choice.index], dtype=np.float64).reshape(-1)
    except Exception as error:
        raise InputError(f"{path}: cannot read map {choice.index} ({error})") from None
    return {h: row[prf_cortex.columns[h]] for h in HEMISPHERES}, choice


def read_stimulus_names(path: Path) -> list[str]:
    """Stimulus file names of a ``*_label.txt`` file, in order.

    The released files hold the names with no separator (``a.JPEGb.JPEG…``); names separated
    by white space, commas or semicolons are read too.
    """
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        raise InputError(f"{path}: cannot read the stimulus labels ({error})") from None
    return _IMAGE_NAME.findall(text)


def _read_events(path: Path) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, sep="\t")
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: unreadable events table ({error})") from None
    missing = [c for c in EVENT_COLUMNS if c not in frame.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}")
    if frame.empty:
        raise InputError(f"{path}: no trials")
    classes = pd.to_numeric(frame["trial_type"], errors="coerce").to_numpy(dtype=np.float64)
    valid = np.isfinite(classes) & (classes == np.round(classes))
    valid &= (classes >= 1) & (classes <= N_CLASSES)
    if not valid.all():
        row = int(np.argmin(valid))
        raise InputError(
            f"{path}: trial_type in row {row} is {frame['trial_type'].iloc[row]!r}, expected an "
            f"ImageNet class 1-{N_CLASSES}"
        )
    stim = frame["stim_file"]
    if stim.isna().any() or (stim.astype(str).str.strip() == "").any():
        raise InputError(f"{path}: empty stim_file in row {int(np.argmax(stim.isna()))}")
    return pd.DataFrame({"class_id": classes.astype(np.int64),
                         "stim_file": stim.astype(str).str.strip()})


def _superclasses(path: Path) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        table = pd.read_csv(path, dtype={"classID": str})
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: unreadable superclass table ({error})") from None
    needed = ("classID", "superClassID", "superClassName")
    if any(column not in table.columns for column in needed):
        raise InputError(f"{path}: expected columns {', '.join(needed)}")
    if table["classID"].duplicated().any():
        duplicate = table.loc[table["classID"].duplicated(), "classID"].iloc[0]
        raise InputError(f"{path}: class {duplicate} appears more than once")
    return table.rename(columns={"classID": "synset", "superClassID": "superclass_id",
                                 "superClassName": "superclass_name"})[
        ["synset", "superclass_id", "superclass_name"]
    ]


# --------------------------------------------------------------------------------------------
# Runs


@dataclass(frozen=True)
class _Run:
    session: int
    run: int
    events: Path
    folder: Path


def _events_by_run(func: Path, name: str, session_name: str) -> dict[int, Path]:
    found: dict[int, Path] = {}
    for path in sorted(func.glob(f"{name}_{session_name}_task-imagenet_run-*_events.tsv")):
        match = _EVENTS.match(path.name)
        if match is None:
            continue
        run = int(match.group(3))
        if run in found:
            raise InputError(f"{path}: same run as {found[run].name}")
        found[run] = path
    return found


def _find_runs(raw: Path, results: Path, name: str, session: int) -> list[_Run]:
    """Runs of one session, matched by run number between the raw and derivative folders."""
    session_name = f"ses-imagenet{session:02d}"
    func = raw / session_name / "func"
    if not func.is_dir():
        raise InputError(f"{func}: session folder not found")
    events = _events_by_run(func, name, session_name)
    if not events:
        raise InputError(f"{func}: no {name}_{session_name}_task-imagenet_run-*_events.tsv files")
    folders = _session_folders(results, session)
    for run in range(1, max(events) + 1):
        if run not in events:
            expected = func / f"{name}_{session_name}_task-imagenet_run-{run:02d}_events.tsv"
            raise InputError(f"{expected}: run {run} missing (the session has runs up to "
                             f"{max(events)})")
    for run, folder in folders.items():
        if run not in events:
            raise InputError(f"{folder}: betas of run {run} but no events file for it in {func}")
    runs = []
    for run in sorted(events):
        if run not in folders:
            stem = f"{session_name}_task-imagenet_run-{run}"
            raise InputError(f"{results / stem / (stem + '_beta.dscalar.nii')}: beta file of "
                             f"{events[run].name} not found")
        runs.append(_Run(session, run, events[run], folders[run]))
    return runs


def _session_folders(results: Path, session: int) -> dict[int, Path]:
    folders: dict[int, Path] = {}
    for path in sorted(results.glob("ses-imagenet*_task-imagenet_run-*")):
        match = _RUN_DIR.match(path.name)
        if match is None or not path.is_dir() or int(match.group(1)) != session:
            continue
        run = int(match.group(2))
        if run in folders:
            raise InputError(f"{path}: same run as {folders[run].name}")
        folders[run] = path
    return folders


def _one_file(folder: Path, suffix: str) -> Path:
    matches = sorted(folder.glob(f"*{suffix}"))
    if len(matches) != 1:
        if not matches:
            raise InputError(f"{folder / (folder.name + suffix)}: file not found")
        raise InputError(f"{folder}: several *{suffix} files")
    return matches[0]


# --------------------------------------------------------------------------------------------
# Selection and normalisation


def select_top_k(r2: np.ndarray, members: np.ndarray, k: int | None) -> np.ndarray:
    """The ``k`` members with the largest R² (NaN counts as 0), in ascending order.

    Ties go to the earlier grayordinate; ``k=None`` (or ``k`` at least the ROI size) keeps all.
    """
    members = np.asarray(members, dtype=np.int64)
    if k is None or k >= members.size:
        return np.sort(members)
    values = np.nan_to_num(r2[members], nan=0.0)
    order = np.argsort(-values, kind="stable")
    return np.sort(members[order[:k]])


def _normalise(block: np.ndarray, columns: np.ndarray, mode: str, path: Path) -> np.ndarray:
    """Normalised betas of ``columns`` of one run (float64 trials × cortex).

    ``run``: each column z-scored over the run's trials (population SD; a constant column
    becomes 0). ``block``: the whole trials × cortex block z-scored with one mean and SD.
    """
    if mode == "block":
        mean, sd = block.mean(), block.std()
        if sd == 0:
            raise InputError(f"{path}: all cortical betas are equal; cannot z-score the run")
        return (block[:, columns] - mean) / sd
    return zscore_columns(block[:, columns])


def _check_top_k(top_k: int | str | None) -> int | None:
    if top_k is None or (isinstance(top_k, str) and top_k.strip().lower() == "all"):
        return None
    if isinstance(top_k, bool) or not isinstance(top_k, int | np.integer) or top_k < 1:
        raise InputError(f"top_k: expected a positive integer, None or 'all', got {top_k!r}")
    return int(top_k)


def _check_sessions(sessions: Sequence[int]) -> tuple[int, ...]:
    values = tuple(sessions) if not isinstance(sessions, int) else (sessions,)
    if not values or any(isinstance(s, bool) or not isinstance(s, int | np.integer) or s < 1
                         for s in values) or len(set(values)) != len(values):
        raise InputError(f"sessions: expected distinct positive session numbers, got {sessions!r}")
    return tuple(int(s) for s in values)


# --------------------------------------------------------------------------------------------
# Subject


class NODSubject:
    """One NOD subject: images, responses of the selected V1-V4 vertices, trial table.

    Create it with :func:`load_nod_subject`. It offers the interface of
    `cortexcl.data.algonauts.Subject` used by the encoding pipeline.

    Attributes
    ----------
    name : str
        ``"sub-01"``.
    root : Path
        The subject's raw folder ``<dataset_root>/sub-XX``.
    dataset_root : Path
    images : ImageStore
        Stimuli in trial order, resized to a square (stretched, docs/method.md §1.4).
    image_ids : numpy.ndarray
        int64 trial index 0 … n_images-1 (row of ``trials``). These are not NSD ids: never
        match them against NSD ids.
    n_images : int
    trials : pandas.DataFrame
        One row per trial: session, run, trial (1-based within the run), class_id (1-1000),
        synset, stim_file, and superclass_id / superclass_name when ``superClassMapping.csv``
        is in the atlas folder.
    rois : tuple of str
        ``("V1", "V2", "V3", "V4")``.
    normalization : str
    top_k : int or None
    r2_map : R2Map
        The pRF map taken as R² and whether it was chosen by name or by index.
    """

    rois: tuple[str, ...] = NOD_ROIS
    hemispheres: tuple[str, ...] = HEMISPHERES

    @property
    def roi_names(self) -> tuple[str, ...]:
        """The dataset's ROI names, V1-V4."""
        return self.rois

    def check_part(self, hemisphere: str) -> str:
        """``hemisphere`` if it is ``lh`` or ``rh``, else an `InputError`."""
        return check_hemisphere(hemisphere)

    def vertex_to_fsaverage(self, hemisphere: str) -> None:
        """None: NOD's vertices lie on fsLR, not fsaverage (no surface maps are drawn)."""
        check_hemisphere(hemisphere)

    def held_out_images(self) -> None:
        """None: no held-out sessions (``split: sessions`` is for the NSD layout)."""

    def data_notes(self, hemisphere: str, roi: str | None = None) -> dict[str, int]:
        """Counts of what reading the data changed: ``n_constant_vertex_runs``, the (vertex,
        run) pairs of the hemisphere whose betas were constant over the run and so z-scored
        to 0 (``roi`` is accepted for the interface; the count is the hemisphere's)."""
        return {"n_constant_vertex_runs": int(self._constant_runs.get(hemisphere, 0))}

    def __init__(
        self,
        name: str,
        dataset_root: Path,
        images: ImageStore,
        trials: pd.DataFrame,
        responses: dict[str, np.ndarray],
        vertex_tables: dict[str, pd.DataFrame],
        normalization: str,
        top_k: int | None,
        r2_map: R2Map,
        constant_runs: dict[str, int] | None = None,
    ) -> None:
        self.name = name
        self.dataset_root = dataset_root
        self.root = dataset_root / name
        self.images = images
        self.trials = trials
        self.image_ids = np.arange(len(trials), dtype=np.int64)
        self.n_images = len(trials)
        self.normalization = normalization
        self.top_k = top_k
        self.r2_map = r2_map
        self._responses = responses
        self._vertex_tables = vertex_tables
        self._constant_runs = dict(constant_runs or {})
        self._data_hash: str | None = None

    def __repr__(self) -> str:
        sizes = ", ".join(f"{h} {self.n_vertices(h)}" for h in HEMISPHERES)
        return (f"NODSubject({self.name}, {self.n_images} trials, vertices {sizes}, "
                f"{self.normalization} z-scoring, top_k={self.top_k})")

    def expand_rois(self, rois: str | Sequence[str]) -> list[str]:
        """Canonical ROI names: names in any case, comma-separated or listed; "all" = all four.

        Raises
        ------
        InputError
            On an unknown name or none.
        """
        items = rois.split(",") if isinstance(rois, str) else list(rois)
        items = [str(item).strip() for item in items if str(item).strip()]
        if not items:
            raise InputError(f"no NOD ROI given (valid: {', '.join(self.rois)}, all)")
        canonical = {roi.lower(): roi for roi in self.rois}
        expanded: list[str] = []
        for item in items:
            if item.lower() == WHOLE_HEMISPHERE:
                names = list(self.rois)
            elif item.lower() in canonical:
                names = [canonical[item.lower()]]
            else:
                raise InputError(f"unknown NOD ROI {item!r} (valid: {', '.join(self.rois)}, all)")
            expanded += [n for n in names if n not in expanded]
        return expanded

    def n_vertices(self, hemisphere: str) -> int:
        """Number of selected vertices of a hemisphere (all four ROIs)."""
        return int(self._responses[check_hemisphere(hemisphere)].shape[1])

    def roi_indices(self, hemisphere: str, roi: str) -> np.ndarray:
        """Columns of ``responses(hemisphere)`` that belong to an ROI (``"all"``: every column)."""
        table = self._vertex_tables[check_hemisphere(hemisphere)]
        if str(roi).strip().lower() == WHOLE_HEMISPHERE:
            return np.arange(len(table), dtype=np.int64)
        (name,) = self.expand_rois([roi])
        return np.flatnonzero(table["roi"].to_numpy() == name).astype(np.int64)

    def responses(self, hemisphere: str, roi: str | None = None) -> np.ndarray:
        """Normalised betas, float32 (n_images, n_vertices), columns ordered V1, V2, V3, V4.

        ``roi`` = None or "all" gives every selected vertex of the hemisphere.
        """
        values = self._responses[check_hemisphere(hemisphere)]
        if roi is None or str(roi).strip().lower() == WHOLE_HEMISPHERE:
            return values.copy()
        return values[:, self.roi_indices(hemisphere, roi)]

    def vertex_table(self, hemisphere: str) -> pd.DataFrame:
        """One row per column of ``responses(hemisphere)``: roi, cortex_index (position among
        the hemisphere's cortical grayordinates, brain-model order), vertex (fsLR surface
        vertex) and r2 (pRF R² as stored, NaN kept)."""
        return self._vertex_tables[check_hemisphere(hemisphere)].copy()

    def noise_ceiling(
        self, hemisphere: str, indices: np.ndarray | None = None
    ) -> np.ndarray | None:
        """Noise ceiling per column when ground truth exists (simulated subjects), else None.

        A simulated NOD subject stores ``derivatives/ground_truth/sub-XX/{hemi}_ncsnr.npy``
        (one value per cortical grayordinate); every image is a single trial, so the ceiling
        is ``ncsnr² / (ncsnr² + 1)`` whatever ``indices`` are.
        """
        check_hemisphere(hemisphere)
        path = self.dataset_root / "derivatives" / "ground_truth" / self.root.name / (
            f"{hemisphere}_ncsnr.npy")
        if not path.is_file():
            return None
        from cortexcl.metrics import noise_ceiling

        ncsnr = np.load(path, allow_pickle=False)
        cortex_index = self._vertex_tables[hemisphere]["cortex_index"].to_numpy()
        if ncsnr.ndim != 1 or ncsnr.size <= cortex_index.max(initial=-1):
            raise InputError(f"{path}: shape {ncsnr.shape} does not cover the {hemisphere} cortex")
        n = self.n_images if indices is None else len(np.asarray(indices).reshape(-1))
        return noise_ceiling(ncsnr[cortex_index], np.ones(max(n, 1), dtype=np.int64))

    def data_hash(self) -> str:
        """Short hex hash of the responses, the selection, the trials and the images."""
        if self._data_hash is None:
            digest = hashlib.blake2b(digest_size=8)
            digest.update(f"{self.normalization}\0{self.top_k}\0{self.r2_map.index}\0".encode())
            for hemisphere in HEMISPHERES:
                digest.update(np.ascontiguousarray(self._responses[hemisphere]).tobytes())
                table = self._vertex_tables[hemisphere]
                digest.update(table["cortex_index"].to_numpy(np.int64).tobytes())
            digest.update("\n".join(self.trials["stim_file"]).encode())
            digest.update(self.images.key.encode())
            self._data_hash = digest.hexdigest()
        return self._data_hash


def load_nod_subject(
    root: str | Path,
    subject: int | str,
    *,
    image_size: int = 224,
    top_k: int | str | None = 50,
    normalization: str = "run",
    sessions: Sequence[int] = DEFAULT_SESSIONS,
    atlas_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    image_fit: str = "stretch",
) -> NODSubject:
    """Open, check and load one NOD subject (ImageNet sessions).

    Parameters
    ----------
    root : str or Path
        Dataset root (the ds004496 folder).
    subject : int or str
        1, "01" or "sub-01".
    image_size : int
        Side of the square images served by ``images``.
    image_fit : {"stretch", "crop"}
        How the non-square stimuli become square: stretched (the published NSD transform) or
        resized by the shorter side and centre-cropped (aspect kept); see `ImageStore`.
    top_k : int, None or "all"
        Vertices kept per hemisphere and ROI: the ``top_k`` largest pRF R² (NaN = 0) within the
        Glasser area; None or "all" keeps every vertex of the area.
    normalization : {"run", "block"}
        ``run`` (clean): each vertex z-scored over its run's trials. ``block`` (published):
        each run's trials × cortex block (both hemispheres, every cortical grayordinate)
        z-scored with one mean and SD.
    sessions : sequence of int
        ImageNet sessions to load (default 1-4: ses-imagenet05 is left out).
    atlas_dir : str or Path, optional
        Folder of ``MMP_mpmLR32k.mat``, ``roilbl_mmp.csv`` and (optional)
        ``superClassMapping.csv``; default ``<root>/derivatives/supportfiles``.
    cache_dir : str or Path, optional
        Image cache folder (see `ImageStore`).
    progress : bool
        Show a progress bar over runs.

    Returns
    -------
    NODSubject

    Notes
    -----
    Beta files are read one run at a time and only the selected columns are kept, so a real
    subject (4000 trials × 59412 grayordinates, about 950 MB as float32) needs about 50 MB
    at a time. Responses are float32 copies in memory, in trial order (sessions, runs, trials).

    Raises
    ------
    InputError
        With a one-line message naming the file: unknown subject, missing session, run,
        events, beta, label or atlas file; beta maps that differ in number from the events
        rows; a label file whose order differs from the events; non-finite betas; wrong
        CIFTI axes; cortical grayordinates that differ between betas, atlas and pRF file.
    """
    if normalization not in NORMALIZATIONS:
        raise InputError(
            f"normalization: expected one of {', '.join(NORMALIZATIONS)}, got {normalization!r}"
        )
    k = _check_top_k(top_k)
    session_numbers = _check_sessions(sessions)
    root = Path(root)
    name = nod_subject_name(subject)
    raw = root / name
    results = root / "derivatives" / "ciftify" / name / "results"
    if not raw.is_dir():
        raise InputError(f"{raw}: unknown subject {name} (no such folder)")
    if not results.is_dir():
        raise InputError(f"{results}: ciftify results folder of {name} not found")
    support = Path(atlas_dir) if atlas_dir is not None else root / "derivatives" / "supportfiles"

    runs = [run for s in session_numbers for run in _find_runs(raw, results, name, s)]
    first_beta = _one_file(runs[0].folder, "_beta.dscalar.nii")
    _, _, cortex = _open_cifti(first_beta)
    atlas = read_atlas(support, cortex)
    r2, r2_map = read_prf_r2(results / PRF_FILE, cortex)

    offsets = {"lh": 0, "rh": cortex.n("lh")}
    tables, selected = {}, {}
    for hemisphere in HEMISPHERES:
        rows = []
        for roi in NOD_ROIS:
            label = atlas.label(hemisphere, roi)
            members = np.flatnonzero(atlas.labels[hemisphere] == label)
            if members.size == 0:
                raise InputError(
                    f"{atlas.path}: no {hemisphere} vertex has the {roi} label {label}"
                )
            for index in select_top_k(r2[hemisphere], members, k):
                rows.append((roi, int(index), int(cortex.vertices[hemisphere][index]),
                             float(r2[hemisphere][index])))
        tables[hemisphere] = pd.DataFrame(rows, columns=["roi", "cortex_index", "vertex", "r2"])
        selected[hemisphere] = offsets[hemisphere] + tables[hemisphere]["cortex_index"].to_numpy()

    trial_frames: list[pd.DataFrame] = []
    blocks: dict[str, list[np.ndarray]] = {h: [] for h in HEMISPHERES}
    constant = dict.fromkeys(HEMISPHERES, 0)
    for run in tqdm(runs, desc=f"{name} runs", unit="run", disable=not progress):
        events = _read_events(run.events)
        beta_path = _one_file(run.folder, "_beta.dscalar.nii")
        label_path = _one_file(run.folder, "_label.txt")
        _check_labels(label_path, events, run.events)
        image, _, run_cortex = _open_cifti(beta_path)
        if not run_cortex.matches(cortex):
            raise InputError(
                f"{beta_path}: cortical grayordinates ({run_cortex.describe()}) differ from "
                f"{first_beta.name} ({cortex.describe()})"
            )
        if image.shape[0] != len(events):
            raise InputError(
                f"{beta_path}: {image.shape[0]} beta maps but {run.events.name} has "
                f"{len(events)} trials"
            )
        block = _read_cortex(image, run_cortex, beta_path)
        for hemisphere in HEMISPHERES:
            values = _normalise(block, selected[hemisphere], normalization, beta_path)
            blocks[hemisphere].append(values.astype(np.float32))
            if normalization == "run":  # a vertex constant over a run's trials is z = 0
                constant[hemisphere] += int(np.sum(np.ptp(block[:, selected[hemisphere]],
                                                          axis=0) == 0))
        events.insert(0, "trial", np.arange(1, len(events) + 1))
        events.insert(0, "run", run.run)
        events.insert(0, "session", run.session)
        trial_frames.append(events)

    trials = pd.concat(trial_frames, ignore_index=True)
    trials.insert(4, "synset", [PurePosixPath(s).parent.name for s in trials["stim_file"]])
    superclasses = _superclasses(support / SUPERCLASS_FILE)
    if superclasses is not None:
        trials = trials.merge(superclasses, on="synset", how="left", validate="many_to_one")
    paths = [root / "stimuli" / stim for stim in trials["stim_file"]]
    images = ImageStore(paths, size=image_size, cache_dir=cache_dir, progress=progress,
                        fit=image_fit)
    return NODSubject(
        name=name,
        dataset_root=root,
        images=images,
        trials=trials,
        responses={h: np.concatenate(blocks[h], axis=0) for h in HEMISPHERES},
        vertex_tables=tables,
        normalization=normalization,
        top_k=k,
        r2_map=r2_map,
        constant_runs=constant,
    )


def _check_labels(label_path: Path, events: pd.DataFrame, events_path: Path) -> None:
    names = read_stimulus_names(label_path)
    expected = [PurePosixPath(stim).name for stim in events["stim_file"]]
    if names == expected:
        return
    if len(names) != len(expected):
        raise InputError(
            f"{label_path}: {len(names)} stimulus names but {events_path.name} has "
            f"{len(expected)} trials"
        )
    row = next(i for i, (a, b) in enumerate(zip(names, expected, strict=True)) if a != b)
    raise InputError(
        f"{label_path}: stimulus order differs from {events_path.name} at trial {row + 1} "
        f"({names[row]} vs {expected[row]})"
    )

"""Reader of the native Natural Scenes Dataset release, fsaverage betas (README, "Data").

::

    <root>/nsddata/experiments/nsd/nsd_expdesign.mat     masterordering, subjectim, stimpattern
    <root>/nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5  imgBrick (73000, 425, 425, 3) uint8
    <root>/nsddata_betas/ppdata/subjNN/fsaverage/betas_fithrf_GLMdenoise_RR/
        {lh,rh}.betas_sessionSS.mgh   (163842, 1, 1, 750): one beta per vertex and trial
        {lh,rh}.ncsnr.mgh             (163842, 1, 1, 1): noise-ceiling SNR per vertex
    ROI labels on fsaverage, in ``rois`` (default <root>/nsddata/freesurfer/subjNN/label):
        {lh,rh}.<class>.mgz + <class>.mgz.ctab, or an Algonauts 2023 roi_masks folder

Trial ``t`` (0-based over the sessions, 750 per session) showed the subject's image
``masterordering[t]`` (1-based), whose NSD id is ``subjectim[subject - 1, image - 1]``
(1-based; cortexcl's NSD ids are 0-based, as in the Algonauts file names). Each session's
betas are z-scored per vertex over the session's trials, then the trials of an image are
averaged: the preprocessing of the Algonauts 2023 challenge, which used the same betas.

Reading every session of a subject takes minutes, so the averaged responses are kept in the
cache (``<cache>/nsd/<key>/``), keyed by the names, sizes and modification times of every file
read and the options; a second load memory-maps them.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from numpy.lib.format import open_memmap
from tqdm.auto import tqdm

from cortexcl.atomic import atomic_directory, atomic_write_json
from cortexcl.data.images import HDF5ImageStore, default_cache_dir
from cortexcl.data.rois import (
    FSAVERAGE_N_VERTICES,
    HEMISPHERES,
    ROI_CLASSES,
    read_fsaverage_index,
    read_roi_labels,
)
from cortexcl.data.subject import Subject, check_ncsnr, labels_to_rois, subject_name
from cortexcl.errors import InputError
from cortexcl.metrics import zscore_columns

DESIGN = Path("nsddata/experiments/nsd/nsd_expdesign.mat")
STIMULI = Path("nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5")
IMAGE_DATASET = "imgBrick"
TRIALS_PER_SESSION = 750
NSD_SESSIONS = {1: 40, 2: 40, 3: 32, 4: 30, 5: 40, 6: 32, 7: 40, 8: 30}  # completed per subject
HELD_OUT_SESSIONS = 3
SPACES = ("challenge", "cortex")
_CACHE_VERSION = "nsd-v2"  # v2: excluded vertices kept
_VERTEX_BLOCK = 8192  # vertices z-scored at once (750 trials: 49 MB in float64)
_SESSION_FILE = re.compile(r"^(lh|rh)\.betas_session(\d+)\.mgh$")


def betas_folder(root: str | Path, subject: int | str) -> Path:
    """``<root>/nsddata_betas/ppdata/subjNN/fsaverage/betas_fithrf_GLMdenoise_RR``."""
    return (Path(root) / "nsddata_betas" / "ppdata" / subject_name(subject) / "fsaverage"
            / "betas_fithrf_GLMdenoise_RR")


def labels_folder(root: str | Path, subject: int | str) -> Path:
    """The default ROI folder, ``<root>/nsddata/freesurfer/subjNN/label``."""
    return Path(root) / "nsddata" / "freesurfer" / subject_name(subject) / "label"


@dataclass(frozen=True)
class Design:
    """The NSD experimental design (``nsd_expdesign.mat``), 0-based.

    Attributes
    ----------
    masterordering : numpy.ndarray
        int64 (n_trials,): subject-image index (0-based) of every trial of every session.
    subjectim : numpy.ndarray
        int64 (n_subjects, n_subject_images): NSD id (0-based) of each subject's images.
    trials_per_session : int
        Stimulus trials of a session (750 in NSD; counted from ``stimpattern`` when present).
    """

    masterordering: np.ndarray
    subjectim: np.ndarray
    trials_per_session: int

    def trial_images(self, subject: int, session: int) -> np.ndarray:
        """NSD ids (0-based, int64) of the trials of a session (1-based), in trial order."""
        start = (session - 1) * self.trials_per_session
        order = self.masterordering[start:start + self.trials_per_session]
        return self.subjectim[subject - 1, order]


def read_design(path: str | Path) -> Design:
    """Read and check ``nsd_expdesign.mat`` (scipy.io).

    Raises
    ------
    InputError
        If the file is missing or unreadable, lacks ``masterordering`` or ``subjectim``, or
        their values are not 1-based indices within range.
    """
    import scipy.io

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        content = scipy.io.loadmat(path)
    except (OSError, ValueError, TypeError, NotImplementedError,
            scipy.io.matlab.MatReadError) as error:
        raise InputError(f"{path}: not a readable MATLAB file ({error})") from None
    for key in ("masterordering", "subjectim"):
        if key not in content:
            raise InputError(f"{path}: no variable {key!r} (an NSD design file holds "
                             "masterordering and subjectim)")
    order = np.asarray(content["masterordering"]).reshape(-1)
    images = np.asarray(content["subjectim"])
    if images.ndim != 2 or not order.size or not images.size:
        raise InputError(f"{path}: subjectim must be a (subjects, images) matrix and "
                         "masterordering a non-empty vector")
    for key, values, high in (("masterordering", order, images.shape[1]),
                              ("subjectim", images, None)):
        if (not np.issubdtype(values.dtype, np.number) or np.any(values != np.round(values))
                or values.min() < 1 or (high is not None and values.max() > high)):
            limit = f"1-{high}" if high is not None else ">= 1"
            raise InputError(f"{path}: {key} must hold 1-based indices ({limit})")
    trials = TRIALS_PER_SESSION
    if "stimpattern" in content:
        pattern = np.asarray(content["stimpattern"])
        if pattern.ndim < 2:
            raise InputError(f"{path}: stimpattern must be (sessions, runs, trials)")
        per_session = pattern.reshape(pattern.shape[0], -1).sum(axis=1)
        if np.any(per_session != per_session[0]) or per_session[0] < 1:
            raise InputError(f"{path}: stimpattern gives sessions different trial counts "
                             f"({sorted(set(per_session.astype(int).tolist()))})")
        trials = int(per_session[0])
    return Design(order.astype(np.int64) - 1, images.astype(np.int64) - 1, trials)


def _surface_data(path: Path) -> np.ndarray:
    """An .mgh / .mgz file's data as (vertices, frames), via nibabel."""
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        data = np.asarray(nib.load(path).dataobj)
    except Exception as error:  # nibabel raises many types on a damaged file
        raise InputError(f"{path}: not a readable MGH file ({error})") from None
    if data.ndim < 1 or any(size != 1 for size in data.shape[1:-1]):
        raise InputError(f"{path}: expected (vertices, 1, 1, frames), found shape {data.shape}")
    return data.reshape(data.shape[0], -1)


def _read_ctab(path: Path) -> dict[int, str]:
    """Label table of a FreeSurfer ``.ctab`` file: lines ``index name [r g b a]``."""
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    table = {}
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) < 2 or not fields[0].lstrip("-").isdigit():
            raise InputError(f"{path}: line {number} is not 'index name' ({line.strip()!r})")
        table[int(fields[0])] = fields[1]
    return table


def _mgz_labels(folder: Path, hemisphere: str, class_name: str, n_surface: int) -> np.ndarray:
    """Labels of one class on the surface from ``{hemi}.<class>.mgz``, checked by their ctab."""
    path = folder / f"{hemisphere}.{class_name}.mgz"
    values = _surface_data(path)
    if values.shape != (n_surface, 1):
        hint = ("; these look like labels of the subject's native surface: map them to "
                "fsaverage or set the ROI folder to the subject's Algonauts roi_masks"
                if values.shape[0] != FSAVERAGE_N_VERTICES and n_surface
                == FSAVERAGE_N_VERTICES else "")
        raise InputError(f"{path}: {values.shape[0]} vertices but the betas have "
                         f"{n_surface}{hint}")
    if np.any(~np.isfinite(values)) or np.any(values != np.round(values)):
        raise InputError(f"{path}: labels must be whole numbers")
    labels = np.maximum(values[:, 0].astype(np.int64), 0)  # FreeSurfer marks "none" 0 or -1
    names = _read_ctab(folder / f"{class_name}.mgz.ctab")
    for label in np.unique(labels[labels > 0]).tolist():
        expected = ROI_CLASSES[class_name].get(label)
        if expected is None or names.get(label) != expected:
            raise InputError(f"{path}: label {label} is {names.get(label, 'not in the ctab')!r} "
                             f"in {class_name}.mgz.ctab, expected {expected!r}")
    return labels


def read_surface_rois(folder: str | Path, hemisphere: str, n_surface: int
                      ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """ROI labels of every class on the surface, and the challenge-space vertices.

    Parameters
    ----------
    folder : str or Path
        FreeSurfer labels on the betas' surface (``{hemi}.<class>.mgz`` with
        ``<class>.mgz.ctab``), or an Algonauts 2023 ``roi_masks`` folder (fsaverage only).
    hemisphere : {"lh", "rh"}
    n_surface : int
        Vertices of the betas' surface (163842 for fsaverage).

    Returns
    -------
    labels : dict of str to numpy.ndarray
        int64 (n_surface,) label per vertex for each ROI class, 0 = none.
    challenge : numpy.ndarray
        int64 vertex indices of the challenge space: the Algonauts all-vertices mask, or the
        vertices in an ROI of any class.

    Raises
    ------
    InputError
        On a missing or malformed file, a label count that is not the surface's, or labels
        whose names differ from the challenge's.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: ROI label folder not found")
    if (folder / f"{hemisphere}.all-vertices_fsaverage_space.npy").is_file():
        if n_surface != FSAVERAGE_N_VERTICES:
            raise InputError(f"{folder}: Algonauts masks are on fsaverage "
                             f"({FSAVERAGE_N_VERTICES} vertices) but the betas have {n_surface}")
        first = np.load(folder / f"{hemisphere}.prf-visualrois_challenge_space.npy",
                        mmap_mode="r", allow_pickle=False)
        index = read_fsaverage_index(folder, hemisphere, len(first))
        labels = {}
        for class_name in ROI_CLASSES:
            labels[class_name] = np.zeros(n_surface, dtype=np.int64)
            labels[class_name][index] = read_roi_labels(folder, hemisphere, class_name,
                                                        len(index))
        return labels, index
    labels = {c: _mgz_labels(folder, hemisphere, c, n_surface) for c in ROI_CLASSES}
    challenge = np.flatnonzero(np.any([v > 0 for v in labels.values()], axis=0))
    return labels, challenge.astype(np.int64)


def _session_files(folder: Path, subject: str) -> dict[str, dict[int, Path]]:
    """Session betas of each hemisphere, by session number."""
    if not folder.is_dir():
        raise InputError(f"{folder}: fsaverage betas folder of {subject} not found")
    found: dict[str, dict[int, Path]] = {h: {} for h in HEMISPHERES}
    for path in folder.iterdir():
        match = _SESSION_FILE.match(path.name)
        if match:
            found[match.group(1)][int(match.group(2))] = path
    if not found["lh"] and not found["rh"]:
        raise InputError(f"{folder}: no session betas ({{lh,rh}}.betas_sessionNN.mgh)")
    return found


def _check_sessions(sessions: Sequence[int] | None, found: dict[str, dict[int, Path]],
                    folder: Path, design: Design, design_path: Path) -> list[int]:
    """The sessions to read: all found (1 … last), or ``sessions``; every file must exist."""
    if sessions is None:
        last = max(max(files, default=0) for files in found.values())
        sessions = range(1, last + 1)
    chosen = sorted({int(s) for s in sessions})
    if not chosen or chosen[0] < 1:
        raise InputError(f"sessions: expected session numbers >= 1, got {list(sessions)}")
    n_design = design.masterordering.size // design.trials_per_session
    if chosen[-1] > n_design:
        raise InputError(f"{design_path}: describes {n_design} sessions of "
                         f"{design.trials_per_session} trials, but session {chosen[-1]} is asked "
                         "for")
    for hemisphere in HEMISPHERES:
        for session in chosen:
            if session not in found[hemisphere]:
                raise InputError(f"{folder / f'{hemisphere}.betas_session{session:02d}.mgh'}: "
                                 f"file not found (session {session} of sessions "
                                 f"{chosen[0]}-{chosen[-1]})")
    return chosen


def _ncsnr_at(path: Path, vertices: np.ndarray, hemisphere: str,
              n_surface: int | None = None) -> np.ndarray:
    """A ``{hemi}.ncsnr.mgh`` file's values at ``vertices`` (float64, checked).

    The file holds one value per vertex of the surface: exactly ``n_surface`` of them when
    given, else at least up to the largest vertex asked for.
    """
    values = _surface_data(path)
    fits = (values.shape[0] == n_surface if n_surface is not None
            else values.shape[0] > vertices.max(initial=-1))
    if values.shape[1] != 1 or not fits:
        surface = f"{n_surface} vertices" if n_surface is not None else "fsaverage vertices"
        raise InputError(f"{path}: shape {values.shape} does not hold one value per vertex "
                         f"({surface})")
    return check_ncsnr(values[vertices, 0], path, vertices.size, hemisphere)


def _check_session_shapes(files: dict[int, Path], n_trials: int) -> int:
    """Check every session's header (vertices, 1, 1, trials); return the vertex count."""
    n_surface = None
    for session, path in files.items():
        try:
            shape = nib.load(path).shape
        except Exception as error:  # nibabel raises many types on a damaged file
            raise InputError(f"{path}: not a readable MGH file ({error})") from None
        trials = int(np.prod(shape[1:]))
        if trials != n_trials:
            raise InputError(f"{path}: {trials} trials but session {session} has {n_trials} "
                             "in the design")
        if n_surface is None:
            n_surface = int(shape[0])
        elif shape[0] != n_surface:
            raise InputError(f"{path}: {shape[0]} vertices but the first session has "
                             f"{n_surface}")
    return int(n_surface)


def _file_identity(paths: Sequence[Path]) -> str:
    """Digest of file names, sizes and modification times (the response cache's key)."""
    digest = hashlib.blake2b(digest_size=12)
    for path in paths:
        stat = path.stat()
        digest.update(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class _Trials:
    images: np.ndarray       # NSD ids of the images, ascending
    rows: dict[int, np.ndarray]  # per session: image row of every trial
    n_repeats: np.ndarray
    held_out: np.ndarray     # rows of images shown only in the last three sessions


def _trials(design: Design, subject: int, sessions: list[int], path: Path) -> _Trials:
    if subject > design.subjectim.shape[0]:
        raise InputError(f"{path}: subjectim has {design.subjectim.shape[0]} subjects, not "
                         f"subject {subject}")
    shown = {s: design.trial_images(subject, s) for s in sessions}
    images = np.unique(np.concatenate(list(shown.values())))
    rows = {s: np.searchsorted(images, ids) for s, ids in shown.items()}
    n_repeats = np.bincount(np.concatenate(list(rows.values())), minlength=images.size)
    early = sessions[:-HELD_OUT_SESSIONS]
    held_out = np.empty(0, dtype=np.int64)
    if early:  # images never shown before the last three sessions (the challenge's test set)
        held_out = np.setdiff1d(np.arange(images.size), np.concatenate([rows[s] for s in early]))
    return _Trials(images, rows, n_repeats.astype(np.int64), held_out.astype(np.int64))


def _average_session_betas(files: dict[int, Path], trials: _Trials, vertices: np.ndarray,
                           out: Path, bar: tqdm) -> tuple[np.ndarray, int]:
    """Per-session z-scored betas of ``vertices`` averaged per image into ``out`` (float32).

    A session is read once; it is z-scored and summed in blocks of vertices, so memory stays
    near one session file whatever the number of vertices. Returns the vertices (columns) that
    are non-finite in some session, and how many (vertex, session) pairs were constant
    (z-scored to 0).
    """
    n_images = trials.images.size
    sums = open_memmap(out, mode="w+", dtype=np.float32, shape=(n_images, vertices.size))
    bad = np.zeros(vertices.size, dtype=bool)
    constant = 0
    for session, path in files.items():
        data = _surface_data(path)
        rows = trials.rows[session]
        order = np.argsort(rows, kind="stable")
        starts = np.flatnonzero(np.r_[True, rows[order][1:] != rows[order][:-1]])
        targets = rows[order][starts]
        for first in range(0, vertices.size, _VERTEX_BLOCK):
            block = slice(first, first + _VERTEX_BLOCK)
            betas = data[vertices[block]].T.astype(np.float64)
            finite = np.isfinite(betas).all(axis=0)
            bad[block] |= ~finite
            betas[:, ~finite] = 0.0
            z = zscore_columns(betas)
            constant += int(np.sum(finite & ~z.any(axis=0)))  # all 0: constant in the session
            summed = np.add.reduceat(z[order], starts, axis=0)
            sums[targets, block] += summed.astype(np.float32)
        bar.update()
    sums /= trials.n_repeats[:, None].astype(np.float32)
    sums.flush()
    del sums
    return np.flatnonzero(bad), constant


def _build_responses(folder: Path, betas: dict[str, dict[int, Path]], trials: _Trials,
                     vertices: dict[str, np.ndarray], progress: bool, name: str) -> None:
    """Write ``{hemi}.npy`` (images × finite vertices), ``{hemi}_vertices.npy`` and
    ``notes.json`` into ``folder``."""
    notes = {}
    bar = tqdm(total=sum(len(f) for f in betas.values()), desc=f"{name} NSD sessions",
               unit="session", disable=not progress)
    with bar:
        for hemisphere in HEMISPHERES:
            raw = folder / f".{hemisphere}-all.npy"
            bad, constant = _average_session_betas(betas[hemisphere], trials,
                                                   vertices[hemisphere], raw, bar)
            keep = np.setdiff1d(np.arange(vertices[hemisphere].size), bad)
            if keep.size == 0:
                first = next(iter(betas[hemisphere].values()))
                raise InputError(f"{first.parent}: every selected {hemisphere} vertex is NaN or "
                                 "infinite in some session")
            source = np.load(raw, mmap_mode="r")
            final = open_memmap(folder / f"{hemisphere}.npy", mode="w+", dtype=np.float32,
                                shape=(source.shape[0], keep.size))
            for start in range(0, source.shape[0], 256):
                final[start:start + 256] = source[start:start + 256][:, keep]
            final.flush()
            del final, source
            raw.unlink()
            np.save(folder / f"{hemisphere}_vertices.npy", vertices[hemisphere][keep])
            np.save(folder / f"{hemisphere}_excluded.npy", vertices[hemisphere][bad])
            notes[hemisphere] = {"n_nan_vertices": int(bad.size),
                                 "n_constant_vertex_sessions": constant}
    np.savez(folder / "images.npz", nsd_ids=trials.images, n_repeats=trials.n_repeats,
             held_out=trials.held_out)
    atomic_write_json(folder / "notes.json", notes)


def _cached_responses(key: str, build: Callable[[Path], None]) -> Path:
    """The cache folder ``key``, built by ``build(folder)`` in a temporary folder first."""
    cache = default_cache_dir() / "nsd" / key
    if not (cache / "notes.json").is_file():
        with atomic_directory(cache) as tmp:
            build(tmp)
    return cache


def load_nsd_subject(
    root: str | Path,
    subject: int | str,
    *,
    sessions: Sequence[int] | None = None,
    space: str = "challenge",
    rois: str | Path | None = None,
    image_size: int = 224,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> Subject:
    """Open, check and read one subject of the native NSD release (fsaverage betas).

    Parameters
    ----------
    root : str or Path
        The NSD release root (holding ``nsddata``, ``nsddata_betas``, ``nsddata_stimuli``).
    subject : int or str
        1-8, "01" or "subj01".
    sessions : sequence of int, optional
        Scan sessions to read (1-based); default every session whose betas are present,
        1 to the last. The challenge's training data are sessions 1 to (last - 3).
    space : {"challenge", "cortex"}
        ``challenge``: the vertices of any ROI (or the Algonauts all-vertices mask, when
        ``rois`` is an Algonauts ``roi_masks`` folder); ``cortex``: every surface vertex.
    rois : str or Path, optional
        Folder of ROI labels on fsaverage (see `read_surface_rois`); default
        ``<root>/nsddata/freesurfer/subjNN/label``.
    image_size : int
        Side of the resized images.
    cache_dir : str or Path, optional
        Image cache folder (see `ImageStore`).
    progress : bool
        Show progress bars.

    Returns
    -------
    Subject
        Rows are the images shown in the sessions, by ascending NSD id; columns the vertices
        of the space that are finite in every session (those with a NaN or infinite beta in
        any session are excluded and counted in ``data_notes``: ``n_nan_vertices``, of the
        hemisphere or of an ROI).
        ``n_repeats`` counts each image's trials, ``held_out_images`` lists the images shown
        only in the last three sessions (the test part of ``split: sessions``, as the
        challenge's test images), and ``noise_ceiling`` uses ``{hemi}.ncsnr.mgh`` when
        present.

    Raises
    ------
    InputError
        With a one-line message naming the file: a missing folder or file (design, stimuli,
        a session's betas, labels); a design without ``masterordering`` or ``subjectim``; an
        HDF5 file without ``imgBrick``; a session with another number of trials than the
        design's; files of different surface sizes; labels of another surface or with other
        names; an ncsnr file that is not one finite value >= 0 per vertex.
    """
    if space not in SPACES:
        raise InputError(f"space: expected one of {', '.join(SPACES)}, got {space!r}")
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: NSD root folder not found")
    name = subject_name(subject)
    number = int(name.removeprefix("subj"))
    design_path = root / DESIGN
    design = read_design(design_path)
    folder = betas_folder(root, name)
    found = _session_files(folder, name)
    chosen = _check_sessions(sessions, found, folder, design, design_path)
    trials = _trials(design, number, chosen, design_path)
    betas = {h: {s: found[h][s] for s in chosen} for h in HEMISPHERES}

    n_surface = {h: _check_session_shapes(betas[h], design.trials_per_session)
                 for h in HEMISPHERES}
    rois_dir = Path(rois) if rois is not None else labels_folder(root, name)
    labels, challenge = {}, {}
    for hemisphere in HEMISPHERES:
        labels[hemisphere], challenge[hemisphere] = read_surface_rois(
            rois_dir, hemisphere, n_surface[hemisphere])
    vertices = {h: challenge[h] if space == "challenge"
                else np.arange(n_surface[h], dtype=np.int64) for h in HEMISPHERES}
    ncsnr_paths = {h: folder / f"{h}.ncsnr.mgh" for h in HEMISPHERES}
    has_ncsnr = [path.is_file() for path in ncsnr_paths.values()]
    if any(has_ncsnr) and not all(has_ncsnr):
        missing = next(path for path, found in zip(ncsnr_paths.values(), has_ncsnr, strict=True)
                       if not found)
        raise InputError(f"{missing}: file not found (the other hemisphere has its ncsnr)")
    images = HDF5ImageStore(root / STIMULI, IMAGE_DATASET, trials.images, size=image_size,
                            cache_dir=cache_dir, progress=progress)

    inputs = [design_path, *(p for files in betas.values() for p in files.values())]
    digest = hashlib.blake2b(digest_size=12)
    digest.update(f"{_CACHE_VERSION}\0{name}\0{chosen}\0{space}\0{_file_identity(inputs)}\0"
                  .encode())
    for hemisphere in HEMISPHERES:
        digest.update(vertices[hemisphere].tobytes())
    cache = _cached_responses(digest.hexdigest(), lambda tmp: _build_responses(
        tmp, betas, trials, vertices, progress, name))

    kept = {h: np.load(cache / f"{h}_vertices.npy") for h in HEMISPHERES}
    fmri_paths = {h: cache / f"{h}.npy" for h in HEMISPHERES}
    notes = json.loads((cache / "notes.json").read_text())
    roi_notes = {}  # vertices left out for NaN betas, per ROI
    for hemisphere in HEMISPHERES:
        excluded = np.load(cache / f"{hemisphere}_excluded.npy")
        roi_notes[hemisphere] = {
            name: {"n_nan_vertices": int(columns.size)} for name, columns in
            labels_to_rois({c: labels[hemisphere][c][excluded] for c in ROI_CLASSES}).items()}
    ncsnr = None
    if all(has_ncsnr):
        ncsnr = {h: _ncsnr_at(path, kept[h], h, n_surface[h]) for h, path in ncsnr_paths.items()}
    return Subject(
        name, folder, images, trials.images.copy(), fmri_paths,
        {h: labels_to_rois({c: labels[h][c][kept[h]] for c in ROI_CLASSES})
         for h in HEMISPHERES},
        fsaverage_index=kept, ncsnr=ncsnr, n_repeats=trials.n_repeats, notes=notes,
        roi_notes=roi_notes, held_out=trials.held_out)


def challenge_noise(root: str | Path, subject: int | str, image_ids: np.ndarray,
                    fsaverage_index: dict[str, np.ndarray]
                    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """ncsnr and repeat counts of an Algonauts 2023 subject, from the native NSD release.

    The challenge's training responses average an image's trials in the subject's sessions
    but the last three (sessions 1-37 of subject 01); the repeats are counted there, from
    the design file. The number of sessions is that of the betas present in the release, or
    NSD's (40, 40, 32, 30, 40, 32, 40, 30 for subjects 1-8) when none are.

    Parameters
    ----------
    root : str or Path
        The NSD release root.
    subject : int or str
    image_ids : numpy.ndarray
        NSD ids (0-based) of the subject's training images, in row order.
    fsaverage_index : dict of str to numpy.ndarray
        The fsaverage vertex of every column, per hemisphere.

    Returns
    -------
    ncsnr : dict of str to numpy.ndarray
        float64 ncsnr of every column.
    n_repeats : numpy.ndarray
        int64 trials of every image.

    Raises
    ------
    InputError
        On a missing or malformed design or ncsnr file, or a training image the design does
        not show in those sessions.
    """
    name = subject_name(subject)
    number = int(name.removeprefix("subj"))
    design_path = Path(root) / DESIGN
    design = read_design(design_path)
    folder = betas_folder(root, name)
    found = _session_files(folder, name) if folder.is_dir() else {}
    n_sessions = max((max(files, default=0) for files in found.values()), default=0)
    if not n_sessions:
        if number not in NSD_SESSIONS:
            raise InputError(f"{folder}: no session betas to count the sessions of {name}")
        n_sessions = NSD_SESSIONS[number]
    sessions = list(range(1, n_sessions - HELD_OUT_SESSIONS + 1))
    if not sessions or sessions[-1] * design.trials_per_session > design.masterordering.size:
        raise InputError(f"{design_path}: does not describe sessions 1-{n_sessions} of {name}")
    trials = _trials(design, number, sessions, design_path)
    missing = np.setdiff1d(image_ids, trials.images)
    if missing.size:
        raise InputError(f"{design_path}: {missing.size} training images of {name} (e.g. "
                         f"nsd-{int(missing[0]):05d}) are not shown in sessions "
                         f"1-{sessions[-1]}")
    repeats = trials.n_repeats[np.searchsorted(trials.images, image_ids)]
    ncsnr = {h: _ncsnr_at(folder / f"{h}.ncsnr.mgh", index, h)
             for h, index in fsaverage_index.items()}
    return ncsnr, repeats

"""Write simulated subjects in the native NSD layout (`cortexcl.data.nsd`), with ground truth.

::

    <root>/nsddata/experiments/nsd/nsd_expdesign.mat     masterordering, subjectim, stimpattern,
                                                         sharedix (1-based, as in NSD)
    <root>/nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5  imgBrick (n_pool, S, S, 3) uint8
    <root>/nsddata_betas/ppdata/subjNN/fsaverage/betas_fithrf_GLMdenoise_RR/
        {lh,rh}.betas_sessionSS.mgh   (10242, 1, 1, trials): one beta per vertex and trial
        {lh,rh}.ncsnr.mgh             (10242, 1, 1, 1)
    <root>/nsddata/freesurfer/subjNN/label/{lh,rh}.<class>.mgz, <class>.mgz.ctab
    <root>/ground_truth/simulation.json                  the shared design's parameters
    <root>/ground_truth/subjNN/{lh,rh}_signal.npy        float32 (n_images, challenge vertices)
        {lh,rh}_vertices.npy (surface vertex of each signal column), nsd_ids.npy (row order),
        n_repeats.npy, nan_vertices.json, simulation.json

The surface is fsaverage5 (the first 10,242 fsaverage vertices), so files stay small and maps
can be drawn. The ROI masks are the synthetic masks of the Algonauts simulator; vertices outside
every ROI carry noise only. Each image is shown 1-3 times (mostly 3) over ``n_sessions`` sessions
of equal length in a random order shared by all subjects (NSD's ``masterordering``); a trial's
beta is ``ncsnr · signal + N(0, 1)`` with the signal of `cortexcl.data.simulate.brain`, then
scaled and shifted by a random gain (0.5-2) and offset (sd 2) per vertex and session, which the
reader's per-session z-scoring removes. ``nan_vertices`` challenge vertices of the left
hemisphere get NaN betas in session 2 (session 1 when there is one), as in a few real sessions.

The shared files (design, stimuli) are made once per root; a root made with other shared
parameters is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from cortexcl.atomic import atomic_directory, atomic_save_npy, atomic_write_json
from cortexcl.data.nsd import DESIGN, IMAGE_DATASET, STIMULI, betas_folder, labels_folder
from cortexcl.data.rois import HEMISPHERES, ROI_CLASSES
from cortexcl.data.simulate import brain, masks
from cortexcl.data.simulate.stimuli import render_scene
from cortexcl.data.simulate.writer import (
    _STREAM_IMAGES,
    N_NSD_IMAGES,
    REPEAT_PROBABILITIES,
    SHARED_FRACTION,
    _make_output_root,
    check_int,
    default_workers,
    map_tasks,
)
from cortexcl.errors import InputError

N_SUBJECTS = 8
SURFACE_VERTICES = masks.FSAVERAGE5_N_VERTICES
# Independent random streams: numpy Generators seeded with [seed, stream, ...]; the image of
# NSD id k uses the Algonauts simulator's image stream, so both layouts draw the same pictures.
(_STREAM_DESIGN, _STREAM_SUBJECT_IDS, _STREAM_BRAIN, _STREAM_TRIALS, _STREAM_SESSIONS,
 _STREAM_NAN) = range(10, 16)


def _render(task: tuple[int, int, int]) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    seed, nsd_id, size = task
    image, annotation = render_scene(np.random.default_rng([seed, _STREAM_IMAGES, nsd_id]), size)
    fine, coarse = brain.image_features(image)
    return image, (fine, coarse, brain.category_maps(annotation))


def _design(seed: int, n_images: int, n_sessions: int) -> dict[str, np.ndarray]:
    """masterordering, subjectim, stimpattern and sharedix, 1-based as in NSD."""
    rng = np.random.default_rng([seed, _STREAM_DESIGN])
    repeats = rng.choice(list(REPEAT_PROBABILITIES), size=n_images,
                         p=list(REPEAT_PROBABILITIES.values()))
    trials = max(1, round(repeats.sum() / n_sessions))
    while (excess := int(repeats.sum()) - n_sessions * trials) != 0:
        room = np.flatnonzero(repeats > 1) if excess > 0 else np.flatnonzero(repeats < 3)
        if room.size == 0:
            raise InputError(f"n_sessions: {n_sessions} sessions cannot show {n_images} images "
                             "1-3 times each in sessions of equal length")
        repeats[rng.choice(room)] -= int(np.sign(excess))
    order = rng.permutation(np.repeat(np.arange(n_images), repeats))
    n_pool = min(N_NSD_IMAGES, 2 * n_images)
    n_shared = max(1, round(SHARED_FRACTION * n_images))
    pool = rng.permutation(n_pool)
    shared, others = pool[:n_shared], pool[n_shared:]
    subjectim = np.empty((N_SUBJECTS, n_images), dtype=np.int64)
    for subject in range(N_SUBJECTS):
        own = np.random.default_rng([seed, _STREAM_SUBJECT_IDS, subject + 1]).choice(
            others, n_images - n_shared, replace=False)
        subjectim[subject] = np.concatenate([shared, own])
    return {"masterordering": order[None, :] + 1, "subjectim": subjectim + 1,
            "stimpattern": np.ones((n_sessions, 1, trials), dtype=np.uint8),
            "sharedix": shared[None, :] + 1, "n_pool": np.asarray(n_pool)}


def _write_shared(root: Path, settings: dict, progress: bool, workers: int
                  ) -> tuple[dict[str, np.ndarray], tuple[np.ndarray, ...]]:
    """Write (or check and reuse) the design and stimuli; return the design and every pool
    image's features (fine, coarse, category maps)."""
    import h5py
    import scipy.io

    record = root / "ground_truth" / "simulation.json"
    if record.is_file() and json.loads(record.read_text()) != settings:
        raise InputError(f"{record}: this NSD root was simulated with other settings "
                         f"({record.read_text().strip()}); use another root")
    design = _design(settings["seed"], settings["n_images"], settings["n_sessions"])
    n_pool, size = int(design.pop("n_pool")), settings["image_size"]
    tasks = [(settings["seed"], k, size) for k in range(n_pool)]
    shapes = ((brain.N_FINE_FEATURES, brain.GRID**2), (brain.N_COARSE_FEATURES,
              brain.COARSE_GRID**2), (len(brain.CATEGORIES), brain.COARSE_GRID**2))
    features = tuple(np.empty((n_pool, *shape), np.float32) for shape in shapes)
    images = np.empty((n_pool, size, size, 3), np.uint8)
    bar = tqdm(total=n_pool, desc="NSD stimuli", unit="img", disable=not progress)
    for k, (image, values) in enumerate(map_tasks(_render, tasks, workers)):
        images[k] = image
        for array, value in zip(features, values, strict=True):
            array[k] = value
        bar.update()
    bar.close()
    if not record.is_file():
        for relative, write in ((DESIGN, lambda path: scipy.io.savemat(path, design)),
                                (STIMULI, lambda path: _write_hdf5(h5py, path, images))):
            path = root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            write(tmp)
            tmp.replace(path)
        atomic_write_json(record, settings)
    return design, features


def _write_hdf5(h5py, path: Path, images: np.ndarray) -> None:
    with h5py.File(path, "w") as handle:
        handle.create_dataset(IMAGE_DATASET, data=images, chunks=(1, *images.shape[1:]))


def _save_mgh(path: Path, data: np.ndarray) -> None:
    """Save (vertices, frames) as an MGH/MGZ file of shape (vertices, 1, 1, frames)."""
    import nibabel as nib

    frames = data.reshape(data.shape[0], 1, 1, -1)
    if frames.shape[-1] == 1:  # nibabel stores a single frame as (vertices, 1, 1)
        frames = frames[..., 0]
    nib.MGHImage(frames, np.eye(4)).to_filename(str(path))


def _write_labels(folder: Path, hemi_masks: dict[str, masks.HemisphereMasks]) -> None:
    for class_name, table in ROI_CLASSES.items():
        lines = [f"{label} {name}" for label, name in {0: "Unknown", **table}.items()]
        (folder / f"{class_name}.mgz.ctab").write_text("\n".join(lines) + "\n")
        for hemisphere, hemi in hemi_masks.items():
            labels = np.zeros(SURFACE_VERTICES, dtype=np.int32)
            labels[np.flatnonzero(hemi.all_vertices)] = hemi.labels[class_name]
            _save_mgh(folder / f"{hemisphere}.{class_name}.mgz", labels)


def simulate_nsd(
    out_root: str | Path,
    subject: int = 1,
    n_images: int = 300,
    n_sessions: int = 8,
    image_size: int = 64,
    roi_scale: float = 0.05,
    reference_subject: int = 1,
    seed: int = 0,
    nan_vertices: int = 0,
    progress: bool = True,
    workers: int | None = None,
) -> Path:
    """Simulate one subject in the native NSD layout with its ground truth.

    Parameters
    ----------
    out_root : str or Path
        The NSD root; shared files are written once, the subject's files replace an earlier
        copy only when complete.
    subject : int
        1-8 (a row of ``subjectim``).
    n_images : int
        Images shown to each subject (NSD: 10,000); the stimuli file holds twice as many, 10 %
        shared by all subjects.
    n_sessions : int
        Scan sessions (NSD: 40), all of the same number of trials.
    image_size : int
        Side of the stimuli in pixels (NSD: 425).
    roi_scale, reference_subject
        Synthetic ROI sizes, as for `cortexcl.data.simulate.simulate_subject`.
    seed : int
        Seed of everything; the same arguments give identical files.
    nan_vertices : int
        Left-hemisphere challenge vertices given NaN betas in one session.
    progress : bool
    workers : int, optional
        Threads rendering images (default: available cores, at most 8).

    Returns
    -------
    Path
        The subject's betas folder.

    Raises
    ------
    InputError
        On an invalid argument, or a root simulated with other shared settings.
    """
    subject = check_int("subject", subject, 1, N_SUBJECTS)
    n_images = check_int("n_images", n_images, 10, N_NSD_IMAGES // 2)
    n_sessions = check_int("n_sessions", n_sessions, 1, 99)
    image_size = check_int("image_size", image_size, 32, 4096)
    reference_subject = check_int("reference_subject", reference_subject, 1, 8)
    seed = check_int("seed", seed, 0, 2**63 - 1)
    nan_vertices = check_int("nan_vertices", nan_vertices, 0, SURFACE_VERTICES)
    workers = default_workers() if workers is None else check_int("workers", workers, 1, 256)
    hemi_masks = masks.synthetic_masks(reference_subject, float(roi_scale))
    name = f"subj{subject:02d}"
    root = Path(out_root)
    _make_output_root(root, "ground_truth")
    settings = {"n_images": n_images, "n_sessions": n_sessions, "image_size": image_size,
                "seed": seed}
    design, features = _write_shared(root, settings, progress, workers)
    order = design["masterordering"][0] - 1
    trials = design["stimpattern"].shape[-1]
    ids = np.sort(design["subjectim"][subject - 1] - 1)
    position = np.argsort(design["subjectim"][subject - 1] - 1)  # subject image → sorted row
    row_of_image = np.empty(n_images, dtype=np.int64)
    row_of_image[position] = np.arange(n_images)
    subject_features = tuple(array[ids] for array in features)

    truth: dict[str, np.ndarray] = {}
    nan_columns: list[int] = []
    with atomic_directory(betas_folder(root, name)) as betas:
        bar = tqdm(total=2 * n_sessions, desc=f"{name} NSD sessions", unit="session",
                   disable=not progress)
        for h, hemisphere in enumerate(HEMISPHERES):
            chal = np.flatnonzero(hemi_masks[hemisphere].all_vertices)
            models = brain.draw_vertex_models(hemi_masks[hemisphere].labels, hemisphere,
                                              np.random.default_rng([seed, _STREAM_BRAIN,
                                                                     subject, h]))
            signal = brain.compute_signal(models, np.arange(chal.size), *subject_features)
            models.ncsnr[signal.std(axis=0) == 0] = 0.0
            ncsnr = np.zeros(SURFACE_VERTICES, dtype=np.float32)
            ncsnr[chal] = models.ncsnr
            nans = np.empty(0, dtype=np.int64)
            if hemisphere == "lh" and nan_vertices:
                nans = np.sort(np.random.default_rng([seed, _STREAM_NAN, subject]).choice(
                    chal, min(nan_vertices, chal.size), replace=False))
                nan_columns = nans.tolist()
            for session in range(1, n_sessions + 1):
                rows = row_of_image[order[(session - 1) * trials:session * trials]]
                rng = np.random.default_rng([seed, _STREAM_TRIALS, subject, h, session])
                beta = rng.standard_normal((SURFACE_VERTICES, trials))
                beta[chal] += models.ncsnr[:, None] * signal[rows].T
                gains = np.random.default_rng([seed, _STREAM_SESSIONS, subject, h, session])
                beta = beta * gains.uniform(0.5, 2.0, (SURFACE_VERTICES, 1)) + gains.normal(
                    0.0, 2.0, (SURFACE_VERTICES, 1))
                if session == min(2, n_sessions):
                    beta[nans] = np.nan
                _save_mgh(betas / f"{hemisphere}.betas_session{session:02d}.mgh",
                          beta.astype(np.float32))
                bar.update()
            _save_mgh(betas / f"{hemisphere}.ncsnr.mgh", ncsnr)
            truth[f"{hemisphere}_signal"] = signal.astype(np.float32)
            truth[f"{hemisphere}_vertices"] = chal.astype(np.int64)
        bar.close()
    with atomic_directory(labels_folder(root, name)) as labels:
        _write_labels(labels, hemi_masks)
    with atomic_directory(root / "ground_truth" / name) as folder:
        for key, array in truth.items():
            atomic_save_npy(folder / f"{key}.npy", array)
        atomic_save_npy(folder / "nsd_ids.npy", ids)
        repeats = np.bincount(row_of_image[order], minlength=n_images)
        atomic_save_npy(folder / "n_repeats.npy", repeats.astype(np.int64))
        atomic_write_json(folder / "nan_vertices.json", {"lh": nan_columns, "rh": [],
                                                         "session": min(2, n_sessions)})
        atomic_write_json(folder / "simulation.json", {
            **settings, "subject": subject, "roi_scale": float(roi_scale),
            "reference_subject": reference_subject, "nan_vertices": nan_vertices,
            "trials_per_session": trials,
            "beta": "gain * (ncsnr * signal + N(0, 1)) + offset, gain ~ U(0.5, 2), offset ~ "
                    "N(0, 2^2) per vertex and session",
            "signal": "noiseless signal, z-scored per vertex over the subject's images (rows in "
                      "ascending NSD id)",
        })
    return betas_folder(root, name)

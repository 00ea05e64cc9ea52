"""Write a simulated NOD subject (BIDS + ciftify layout, docs/method.md §4) with its ground truth.

Under ``out_root`` (the dataset root; several subjects can share it)::

    dataset_description.json
    sub-XX/ses-imagenetYY/func/sub-XX_ses-imagenetYY_task-imagenet_run-RR_events.tsv
    derivatives/ciftify/sub-XX/results/ses-imagenetYY_task-imagenet_run-R/
        ses-imagenetYY_task-imagenet_run-R_beta.dscalar.nii    trials × grayordinates
        ses-imagenetYY_task-imagenet_run-R_label.txt           stimulus names, no separator
    derivatives/ciftify/sub-XX/results/ses-prf_task-prf/ses-prf_task-prf_params.dscalar.nii
    derivatives/supportfiles/MMP_mpmLR32k.mat, roilbl_mmp.csv, superClassMapping.csv
    derivatives/ground_truth/sub-XX/{lh,rh}_signal.npy, {lh,rh}_ncsnr.npy, {lh,rh}_prf.csv,
                                    annotations.json, simulation.json
    stimuli/imagenet/nCCCCCCCC/nCCCCCCCC_SSNNNNN.JPEG

Cortex: a small fake fsLR cortex, the same for every subject of the same sizes: per hemisphere
``vertices_per_roi`` grayordinates in each of the Glasser areas V1, V2, V3 and V4,
``other_vertices`` in other areas and ``unlabelled_vertices`` with label 0 (two more on the
right, so the hemispheres differ in size as in fsLR-32k), shuffled, on a surface with some
vertices left out (the medial wall). The atlas labels are 1 + row (left) and 181 + row (right)
of ``roilbl_mmp.csv``, whose first rows carry the real names (V1, MST, V6, V2, V3, V4).

Brain: the voxel models of :mod:`cortexcl.data.simulate.brain`. Glasser V1, V2 and V3 vertices
are drawn as V1v/V1d, V2v/V2d and V3v/V3d at random (upper and lower visual field), V4 as hV4;
left-hemisphere vertices see the right visual field. Vertices of other areas get the models of
the Algonauts streams ROIs (midventral … parietal) and unlabelled ones the weak "none" model.
Images are :func:`render_scene` scenes; the simulation assumes the display stretched every
stimulus to a square field, so the brain sees the square scene, while the stimulus file is that
scene resized to 4:3 (stretching it back to a square, as the NSD transform does, recovers the
displayed image up to resampling).

Betas: each image is one trial: ``c_r + o_rv + g_r (ncsnr_v s_v + e)`` with ``s_v`` the
standardised signal, ``e ~ N(0, 1)``, and run effects (offset ``c_r``, per-vertex offset
``o_rv``, gain ``g_r``) that z-scoring per run removes. The single-trial noise ceiling is
``ncsnr² / (ncsnr² + 1)``. The pRF file holds maps ``ang, ecc, gain, R2, rfsize`` (R² at index
3, in percent as analyzePRF writes it; 3 % NaN) over the cortex plus a few subcortical voxels,
as the 91282-grayordinate files do; R² is the vertex's retinotopic reliability
``share · ncsnr² / (ncsnr² + 1)`` with measurement noise, so top-k selection picks the more
reliable vertices.

Writing is atomic per piece: stimuli file by file, then the ground truth, the ciftify folder
and last the raw ``sub-XX`` folder, each built in a temporary folder and renamed, so a subject
whose raw folder exists is complete. Everything is a function of ``(seed, subject)`` and the
sizes.
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import scipy.io
from nibabel.cifti2 import cifti2_axes
from PIL import Image
from tqdm.auto import tqdm

from cortexcl.atomic import (
    atomic_directory,
    atomic_save_npy,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
)
from cortexcl.data.nod import (
    ATLAS_FILE,
    ATLAS_KEY,
    N_AREAS,
    N_CLASSES,
    PRF_FILE,
    ROI_TABLE_FILE,
    SUPERCLASS_FILE,
    nod_subject_name,
)
from cortexcl.data.rois import HEMISPHERES, ROI_CLASSES
from cortexcl.data.simulate import brain
from cortexcl.data.simulate.stimuli import render_scene
from cortexcl.data.simulate.writer import check_int, default_workers
from cortexcl.errors import InputError

# The first rows of the real roilbl_mmp.csv; the other rows get placeholder names.
REAL_FIRST_AREAS = ("V1", "MST", "V6", "V2", "V3", "V4")
ROI_ROWS = {"V1": 0, "V2": 3, "V3": 4, "V4": 5}
# Algonauts prf-visualrois labels a Glasser area's vertices are drawn as (ventral, dorsal).
PRF_LABELS = {"V1": (1, 2), "V2": (3, 4), "V3": (5, 6), "V4": (7,)}
OTHER_STREAMS = (2, 3, 4, 5, 6, 7)  # midventral … parietal
PRF_MAP_NAMES = ("ang", "ecc", "gain", "R2", "rfsize")
DEGREES_PER_UNIT = 8.0  # a 16° stimulus spans 2 units
N_SUPERCLASSES = 30
R2_NAN_FRACTION = 0.03
_GEOMETRY_SEED = 20230401

(_STREAM_CLASSES, _STREAM_IMAGES, _STREAM_BRAIN, _STREAM_NOISE, _STREAM_PRF,
 _STREAM_BEHAVIOUR) = range(6)


@dataclass(frozen=True)
class FakeCortex:
    """Per hemisphere: Glasser label and fsLR surface vertex of each grayordinate, surface size."""

    labels: dict[str, np.ndarray]
    vertices: dict[str, np.ndarray]
    n_surface: dict[str, int]

    def axis(self) -> cifti2_axes.BrainModelAxis:
        """Brain-model axis of the cortex: left, then right (the standard CIFTI order)."""
        left, right = (cifti2_axes.BrainModelAxis.from_surface(self.vertices[h], self.n_surface[h],
                                                               name)
                       for h, name in (("lh", "CortexLeft"), ("rh", "CortexRight")))
        return left + right


def fake_cortex(vertices_per_roi: int, other_vertices: int, unlabelled_vertices: int) -> FakeCortex:
    """The fake cortex of the given sizes (identical for every subject and seed)."""
    rng = np.random.default_rng([_GEOMETRY_SEED, vertices_per_roi, other_vertices,
                                 unlabelled_vertices])
    other_rows = np.array([1, 2, *range(len(REAL_FIRST_AREAS), N_AREAS)])
    labels, vertices, n_surface = {}, {}, {}
    for h, hemisphere in enumerate(HEMISPHERES):
        rows = np.concatenate([
            np.repeat([ROI_ROWS[roi] for roi in ROI_ROWS], vertices_per_roi),
            rng.choice(other_rows, other_vertices),
        ])
        label = np.concatenate([1 + h * N_AREAS + rows,
                                np.zeros(unlabelled_vertices + 2 * h, dtype=np.int64)])
        labels[hemisphere] = label[rng.permutation(label.size)].astype(np.int64)
        n_surface[hemisphere] = label.size + max(4, label.size // 8)
        vertices[hemisphere] = np.sort(rng.choice(n_surface[hemisphere], label.size,
                                                  replace=False)).astype(np.int64)
    return FakeCortex(labels, vertices, n_surface)


def _area_rows(labels: np.ndarray, hemisphere: str) -> np.ndarray:
    """0-based roilbl row of every grayordinate; -1 where unlabelled."""
    offset = 1 if hemisphere == "lh" else 1 + N_AREAS
    return np.where(labels > 0, labels - offset, -1)


def _model_labels(rows: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Algonauts-class labels that make `brain.draw_vertex_models` draw NOD's areas."""
    labels = {c: np.zeros(rows.size, dtype=np.int64) for c in ROI_CLASSES}
    prf, streams = labels["prf-visualrois"], labels["streams"]
    for roi, row in ROI_ROWS.items():
        idx = np.flatnonzero(rows == row)
        prf[idx] = rng.choice(PRF_LABELS[roi], idx.size)
        streams[idx] = 1
    other = np.flatnonzero((rows >= 0) & (prf == 0))
    streams[other] = rng.choice(OTHER_STREAMS, other.size)
    return labels


@dataclass(frozen=True)
class _Trial:
    session: int
    run: int
    class_id: int
    synset: str
    stim_file: str  # relative to stimuli/


def _draw_trials(subject: int, n_sessions: int, n_runs: int, trials_per_run: int,
                 seed: int) -> list[_Trial]:
    """One class per trial, each class at most once per session (as in NOD)."""
    trials = []
    for session in range(1, n_sessions + 1):
        rng = np.random.default_rng([seed, _STREAM_CLASSES, subject, session])
        classes = rng.permutation(N_CLASSES)[: n_runs * trials_per_run] + 1
        for i, class_id in enumerate(classes):
            synset = f"n{class_id:08d}"
            number = subject * 100000 + len(trials) + 1
            trials.append(_Trial(session, i // trials_per_run + 1, int(class_id), synset,
                                 f"imagenet/{synset}/{synset}_{number}.JPEG"))
    return trials


def _render(task: tuple[int, int, int, int]):
    """Render one displayed scene, encode its 4:3 stimulus file and compute its features."""
    seed, subject, index, size = task
    scene, annotation = render_scene(np.random.default_rng([seed, _STREAM_IMAGES, subject, index]),
                                     size)
    stored = Image.fromarray(scene).resize((size, round(0.75 * size)), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", quality=92)
    fine, coarse = brain.image_features(scene)
    return buffer.getvalue(), annotation, fine, coarse, brain.category_maps(annotation)


def _save_cifti(path: Path, data: np.ndarray, names: list[str],
                axis: cifti2_axes.BrainModelAxis) -> None:
    image = nib.Cifti2Image(np.asarray(data, dtype=np.float32),
                            header=(cifti2_axes.ScalarAxis(names), axis))
    image.nifti_header.set_intent("ConnDenseScalar")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, path)


def _prf_maps(models: brain.VertexModels, ncsnr: np.ndarray,
              rng: np.random.Generator) -> np.ndarray:
    """(5, n) maps ang (radians), ecc (deg), gain, R2 (%), rfsize (deg) of one hemisphere."""
    n = len(models)
    reliability = models.lowlevel_share * ncsnr**2 / (ncsnr**2 + 1.0)
    r2 = np.clip(reliability * np.exp(rng.normal(0.0, 0.25, n)) + rng.normal(0.0, 0.02, n),
                 0.0, 1.0) * 100.0
    r2[rng.random(n) < R2_NAN_FRACTION] = np.nan
    retinotopic = models.fine
    ang = np.where(retinotopic, np.arctan2(models.y, models.x), np.nan)
    ecc = np.where(retinotopic, np.hypot(models.x, models.y) * DEGREES_PER_UNIT, np.nan)
    size = np.where(retinotopic, models.size * DEGREES_PER_UNIT, np.nan)
    gain = np.where(retinotopic, rng.lognormal(0.0, 0.3, n), np.nan)
    return np.stack([ang, ecc, gain, r2, size])


def area_names() -> list[str]:
    """Names of the 180 rows of the simulated ``roilbl_mmp.csv`` (second ``_`` token)."""
    return [*REAL_FIRST_AREAS, *(f"A{row:03d}" for row in range(len(REAL_FIRST_AREAS), N_AREAS))]


def _support_files(cortex: FakeCortex) -> dict[str, str | np.ndarray]:
    table = "???,???\n" + "".join(f"L_{n}_ROI,R_{n}_ROI\n" for n in area_names())
    classes = pd.DataFrame({"classID": [f"n{c:08d}" for c in range(1, N_CLASSES + 1)]})
    classes["superClassID"] = (np.arange(N_CLASSES) % N_SUPERCLASSES) + 1
    classes["className"] = [f"class {c}" for c in range(1, N_CLASSES + 1)]
    classes["superClassName"] = [f"superclass {s}" for s in classes["superClassID"]]
    atlas = np.concatenate([cortex.labels[h] for h in HEMISPHERES]).astype(np.float64)
    return {ROI_TABLE_FILE: table, SUPERCLASS_FILE: classes.to_csv(index=False),
            ATLAS_FILE: atlas.reshape(-1, 1)}


def _write_support(folder: Path, cortex: FakeCortex) -> None:
    """Write the atlas folder, or check that an existing one is for the same cortex."""
    files = _support_files(cortex)
    if folder.is_dir():
        atlas_path = folder / ATLAS_FILE
        try:
            same = np.array_equal(scipy.io.loadmat(atlas_path)[ATLAS_KEY], files[ATLAS_FILE])
            same &= all((folder / name).read_text() == text
                        for name, text in files.items() if isinstance(text, str))
        except (OSError, KeyError, ValueError):
            same = False
        if not same:
            raise InputError(f"{folder}: support files for another cortex; simulate subjects "
                             "of other sizes into another folder")
        return
    with atomic_directory(folder) as tmp:
        for name, content in files.items():
            if isinstance(content, str):
                (tmp / name).write_text(content)
            else:
                scipy.io.savemat(tmp / name, {ATLAS_KEY: content})


def simulate_nod_subject(
    out_root: str | Path,
    subject: int = 1,
    *,
    n_sessions: int = 4,
    n_runs: int = 10,
    trials_per_run: int = 100,
    image_size: int = 128,
    vertices_per_roi: int = 60,
    other_vertices: int = 120,
    unlabelled_vertices: int = 40,
    seed: int = 0,
    progress: bool = True,
    workers: int | None = None,
) -> Path:
    """Simulate one NOD subject (ImageNet sessions) and write it in the NOD layout.

    Parameters
    ----------
    out_root : str or Path
        Dataset root; other subjects already there are kept.
    subject : int
        Subject number (1-99).
    n_sessions, n_runs, trials_per_run : int
        ImageNet sessions, runs per session and trials per run (NOD: 4, 10, 100); at most
        1000 trials per session (one per class).
    image_size : int
        Side of the displayed square scene; stimulus files are ``image_size`` wide and 3/4 as
        high.
    vertices_per_roi, other_vertices, unlabelled_vertices : int
        Sizes of the fake cortex per hemisphere (see the module docstring).
    seed : int
        Seed of every random choice.
    progress : bool
        Show progress bars.
    workers : int, optional
        Threads rendering images (default: available cores, at most 8).

    Returns
    -------
    Path
        ``out_root``.

    Raises
    ------
    InputError
        On an invalid argument, or support files in ``out_root`` made for other sizes.
    """
    subject = check_int("subject", subject, 1, 99)
    n_sessions = check_int("n_sessions", n_sessions, 1, 99)
    n_runs = check_int("n_runs", n_runs, 1, 99)
    trials_per_run = check_int("trials_per_run", trials_per_run, 2, N_CLASSES)
    if n_runs * trials_per_run > N_CLASSES:
        raise InputError(f"n_runs × trials_per_run: at most {N_CLASSES} trials per session "
                         f"(one per class), got {n_runs * trials_per_run}")
    image_size = check_int("image_size", image_size, 32, 4096)
    vertices_per_roi = check_int("vertices_per_roi", vertices_per_roi, 1, 100000)
    other_vertices = check_int("other_vertices", other_vertices, 0, 100000)
    unlabelled_vertices = check_int("unlabelled_vertices", unlabelled_vertices, 0, 100000)
    seed = check_int("seed", seed, 0, 2**63 - 1)
    workers = default_workers() if workers is None else check_int("workers", workers, 1, 256)
    out_root = Path(out_root)
    name = nod_subject_name(subject)

    cortex = fake_cortex(vertices_per_roi, other_vertices, unlabelled_vertices)
    trials = _draw_trials(subject, n_sessions, n_runs, trials_per_run, seed)
    _write_support(out_root / "derivatives" / "supportfiles", cortex)
    if not (out_root / "dataset_description.json").is_file():
        atomic_write_json(out_root / "dataset_description.json", {
            "Name": "Simulated Natural Object Dataset (cortexcl)", "BIDSVersion": "1.8.0",
            "DatasetType": "raw"})

    n_trials = len(trials)
    shapes = ((brain.N_FINE_FEATURES, brain.GRID**2),
              (brain.N_COARSE_FEATURES, brain.COARSE_GRID**2),
              (len(brain.CATEGORIES), brain.COARSE_GRID**2))
    features = tuple(np.empty((n_trials, *s), np.float32) for s in shapes)
    annotations = []
    tasks = [(seed, subject, i, image_size) for i in range(n_trials)]
    bar = tqdm(total=n_trials, desc=f"{name} stimuli", unit="img", disable=not progress)
    # Threads suffice: rendering, FFTs and JPEG encoding release the GIL.
    with bar, ThreadPoolExecutor(max_workers=workers) as pool:
        for i, (jpeg, annotation, *values) in enumerate(pool.map(_render, tasks)):
            atomic_write_bytes(out_root / "stimuli" / trials[i].stim_file, jpeg)
            annotations.append({"stim_file": trials[i].stim_file, **annotation})
            for array, value in zip(features, values, strict=True):
                array[i] = value
            bar.update()

    signals, ncsnrs, prf_maps = {}, {}, {}
    names = area_names()
    truth_dir = out_root / "derivatives" / "ground_truth" / name
    with atomic_directory(truth_dir) as truth:
        for h, hemisphere in enumerate(HEMISPHERES):
            rng = np.random.default_rng([seed, _STREAM_BRAIN, subject, h])
            rows = _area_rows(cortex.labels[hemisphere], hemisphere)
            models = brain.draw_vertex_models(_model_labels(rows, rng), hemisphere, rng)
            signal = brain.compute_signal(models, np.arange(len(models)), *features)
            models.ncsnr[signal.std(axis=0) == 0] = 0.0
            maps = _prf_maps(models, models.ncsnr,
                             np.random.default_rng([seed, _STREAM_PRF, subject, h]))
            signals[hemisphere], ncsnrs[hemisphere] = signal, models.ncsnr.copy()
            prf_maps[hemisphere] = maps
            atomic_save_npy(truth / f"{hemisphere}_signal.npy", signal.astype(np.float32))
            atomic_save_npy(truth / f"{hemisphere}_ncsnr.npy", models.ncsnr.astype(np.float32))
            frame = models.to_frame().rename(columns={"vertex": "cortex_index"})
            frame.insert(1, "surface_vertex", cortex.vertices[hemisphere])
            frame.insert(2, "glasser_label", cortex.labels[hemisphere])
            frame.insert(3, "area", [names[r] if r >= 0 else "" for r in rows])
            frame["prf_r2_map"] = maps[PRF_MAP_NAMES.index("R2")]
            atomic_write_text(truth / f"{hemisphere}_prf.csv",
                              frame.to_csv(index=False, float_format="%.6g"))
        atomic_write_json(truth / "annotations.json", {
            "coordinates": "x right-positive, y up-positive, the displayed square spans [-1, 1]",
            "trials": annotations})
        atomic_write_json(truth / "simulation.json", {
            "subject": subject, "seed": seed, "n_sessions": n_sessions, "n_runs": n_runs,
            "trials_per_run": trials_per_run, "image_size": image_size,
            "vertices_per_roi": vertices_per_roi, "other_vertices": other_vertices,
            "unlabelled_vertices": unlabelled_vertices,
            "n_grayordinates": {h: int(cortex.labels[h].size) for h in HEMISPHERES},
            "signal": "noiseless signal per trial (trial order = sessions, runs, trials), "
                      "z-scored per vertex over all trials",
            "betas": "c_run + o_run_vertex + g_run * (ncsnr * signal + N(0, 1))",
            "noise_ceiling": "single trials: ncsnr^2 / (ncsnr^2 + 1)",
            "prf_r2": "100 * clip(share * ncsnr^2 / (ncsnr^2 + 1) * lognormal(0, 0.25) "
                      "+ N(0, 0.02), 0, 1); 3 % NaN",
            "display": "stimulus files are the displayed square scenes resized to 4:3",
        })

    _write_ciftify(out_root / "derivatives" / "ciftify" / name, name, cortex, trials, signals,
                   ncsnrs, prf_maps, seed, subject)
    _write_raw(out_root / name, name, trials, seed, subject)
    return out_root


def _write_ciftify(folder: Path, name: str, cortex: FakeCortex, trials: list[_Trial],
                   signals: dict[str, np.ndarray], ncsnrs: dict[str, np.ndarray],
                   prf_maps: dict[str, np.ndarray], seed: int, subject: int) -> None:
    axis = cortex.axis()
    signal = np.concatenate([signals[h] for h in HEMISPHERES], axis=1)
    ncsnr = np.concatenate([ncsnrs[h] for h in HEMISPHERES])
    with atomic_directory(folder) as tmp:
        results = tmp / "results"
        runs = sorted({(t.session, t.run) for t in trials})
        for session, run in runs:
            idx = [i for i, t in enumerate(trials) if (t.session, t.run) == (session, run)]
            rng = np.random.default_rng([seed, _STREAM_NOISE, subject, session, run])
            noise = rng.standard_normal((len(idx), ncsnr.size))
            offset = rng.normal(0.0, 1.0) + rng.normal(0.0, 0.5, ncsnr.size)
            betas = offset + rng.lognormal(0.0, 0.2) * (ncsnr * signal[idx] + noise)
            stem = f"ses-imagenet{session:02d}_task-imagenet_run-{run}"
            names = [Path(trials[i].stim_file).name for i in idx]
            _save_cifti(results / stem / f"{stem}_beta.dscalar.nii", betas, names, axis)
            (results / stem / f"{stem}_label.txt").write_text("".join(names))
        volume = cifti2_axes.BrainModelAxis.from_mask(np.ones((2, 2, 2), dtype=bool),
                                                      name="ThalamusLeft", affine=np.eye(4))
        maps = np.concatenate([prf_maps[h] for h in HEMISPHERES], axis=1)
        subcortical = np.random.default_rng([seed, _STREAM_PRF, subject, 2]).random((5, 8))
        _save_cifti(results / PRF_FILE, np.concatenate([maps, subcortical], axis=1),
                    list(PRF_MAP_NAMES), axis + volume)


def _write_raw(folder: Path, name: str, trials: list[_Trial], seed: int, subject: int) -> None:
    rng = np.random.default_rng([seed, _STREAM_BEHAVIOUR, subject])
    with atomic_directory(folder) as tmp:
        for session, run in sorted({(t.session, t.run) for t in trials}):
            selected = [t for t in trials if (t.session, t.run) == (session, run)]
            response = rng.uniform(0.4, 1.2, len(selected))
            answered = rng.random(len(selected)) >= 0.1
            events = pd.DataFrame({  # BIDS: "n/a" where there was no response
                "onset": [f"{4.0 * i:.1f}" for i in range(len(selected))],
                "duration": "1.0",
                "trial_type": [f"{t.class_id:.1f}" for t in selected],
                "response_time": [f"{r:.4f}" if a else "n/a" for r, a in zip(response, answered,
                                                                             strict=True)],
                "stim_file": [t.stim_file for t in selected],
            })
            session_name = f"ses-imagenet{session:02d}"
            path = tmp / session_name / "func" / (
                f"{name}_{session_name}_task-imagenet_run-{run:02d}_events.tsv")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(events.to_csv(sep="\t", index=False))

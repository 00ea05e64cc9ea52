"""Write a simulated subject in the Algonauts 2023 layout, with its ground truth.

Layout of ``<out_root>/subjNN`` (as in the official release)::

    roi_masks/{lh,rh}.all-vertices_fsaverage_space.npy, {lh,rh}.<class>_challenge_space.npy,
              mapping_<class>.npy
    training_split/training_fmri/{lh,rh}_training_fmri.npy    float32 (n_images, n_vertices)
    training_split/training_images/train-0001_nsd-XXXXX.png ...
    test_split/test_images/test-0001_nsd-XXXXX.png ...         (no fMRI, as in the release)
    ground_truth/{lh,rh}_signal.npy      float32 noiseless standardised signal, like the fMRI
    ground_truth/{lh,rh}_ncsnr.npy       float32 noise-ceiling SNR per vertex
    ground_truth/n_repeats.npy           int64 repeats (1-3) per training image
    ground_truth/{lh,rh}_prf.csv         per-vertex model parameters (see brain.VertexModels)
    ground_truth/annotations.json        per-image background and objects
    ground_truth/simulation.json         parameters and conventions

Responses: each training image has 1-3 trials (mostly 3, as in NSD); a trial is the signal
(z-scored per vertex over the training images) plus Gaussian noise of sd ``1 / ncsnr``. The file
holds the mean over an image's trials, z-scored per vertex over all training images (NSD
z-scores betas per scan session; with no sessions simulated, the whole file plays that role).
So the noise ceiling of the file is ``ncsnr**2 / (ncsnr**2 + mean(1 / n_repeats))``, the formula
of ``cortexcl.metrics.noise_ceiling``.

Randomness: the image with NSD id ``k`` depends only on ``(seed, k)`` (subjects simulated with the
same seed see identical images wherever their NSD ids coincide; about 10 % of each subject's ids
come from a pool of 1000 ids shared by all subjects, like the NSD shared images); vertex models,
NSD ids, repeats and noise depend on ``(seed, subject)``. Results do not depend on the number of
worker threads.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap
from PIL import Image
from tqdm.auto import tqdm

from cortexcl.atomic import atomic_directory, atomic_save_npy, atomic_write_json, atomic_write_text
from cortexcl.data.rois import HEMISPHERES
from cortexcl.data.simulate import brain, masks
from cortexcl.data.simulate.stimuli import render_scene
from cortexcl.errors import InputError

N_NSD_IMAGES = 73000
N_SHARED_POOL = 1000
SHARED_FRACTION = 0.1
REPEAT_PROBABILITIES = {1: 0.05, 2: 0.10, 3: 0.85}
VERTEX_BLOCK = 1024
_PARALLEL_MIN_IMAGES = 16

# Independent random streams: numpy Generators seeded with [seed, stream, ...].
(_STREAM_SHARED, _STREAM_IDS, _STREAM_IMAGES, _STREAM_BRAIN, _STREAM_REPEATS,
 _STREAM_NOISE) = range(6)


def check_int(name: str, value: object, low: int, high: int) -> int:
    """``value`` as an int in ``[low, high]``, or an `InputError` naming the argument."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputError(f"{name}: expected an integer, got {value!r}")
    if not low <= int(value) <= high:
        raise InputError(f"{name}: expected {low}-{high}, got {value}")
    return int(value)


def _n_shared(n_total: int) -> int:
    return min(N_SHARED_POOL, round(SHARED_FRACTION * n_total))


def draw_nsd_ids(
    seed: int, subject: int, n_train: int, n_test: int
) -> tuple[np.ndarray, np.ndarray]:
    """Distinct NSD ids (0-72999) of a subject's training and test images, each sorted.

    About 10 % (at most 1000) come from a pool shared by every subject of the same seed.
    """
    n_total = n_train + n_test
    pool = np.random.default_rng([seed, _STREAM_SHARED]).permutation(N_NSD_IMAGES)
    shared, others = pool[:N_SHARED_POOL], pool[N_SHARED_POOL:]
    n_shared = _n_shared(n_total)
    rng = np.random.default_rng([seed, _STREAM_IDS, subject])
    own = rng.choice(others, n_total - n_shared, replace=False)
    ids = rng.permutation(np.concatenate([shared[:n_shared], own]))
    return np.sort(ids[:n_train]), np.sort(ids[n_train:])


def _render(task: tuple[int, int, int, str, bool]):
    """Render, save and (optionally) featurise one image; runs in worker threads."""
    seed, nsd_id, size, path, featurise = task
    image, annotation = render_scene(np.random.default_rng([seed, _STREAM_IMAGES, nsd_id]), size)
    Image.fromarray(image).save(path, format="PNG", compress_level=1)
    if not featurise:
        return annotation, None, None, None
    fine, coarse = brain.image_features(image)
    return annotation, fine, coarse, brain.category_maps(annotation)


def map_tasks(function: Callable, tasks: list, workers: int) -> Iterator:
    """``function`` over ``tasks``, results in task order. Threads suffice: FFTs, array
    arithmetic and PNG encoding release the GIL, and unlike processes they need no
    ``if __name__ == "__main__"`` guard in scripts."""
    if workers <= 1 or len(tasks) < _PARALLEL_MIN_IMAGES:
        yield from map(function, tasks)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(function, tasks)


def default_workers() -> int:
    """Worker threads for rendering: the CPUs this process may use."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        available = os.cpu_count() or 1
    return max(1, min(available, 8))


def _render_images(
    folder: Path, prefix: str, ids: np.ndarray, seed: int, size: int, featurise: bool,
    workers: int, progress: bool, label: str,
) -> tuple[list[dict], tuple[np.ndarray, ...] | None]:
    """Write the images of one split; return their annotations and (if asked) features.

    Features are the fine and coarse Gabor features and the category maps, stacked over images.
    """
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"{prefix}-{i + 1:04d}_nsd-{nsd_id:05d}.png" for i, nsd_id in enumerate(ids)]
    tasks = [
        (seed, int(k), size, str(folder / n), featurise) for k, n in zip(ids, names, strict=True)
    ]
    shapes = (
        (brain.N_FINE_FEATURES, brain.GRID**2),
        (brain.N_COARSE_FEATURES, brain.COARSE_GRID**2),
        (len(brain.CATEGORIES), brain.COARSE_GRID**2),
    )
    features = tuple(np.empty((len(ids), *s), np.float32) for s in shapes) if featurise else None
    annotations = []
    bar = tqdm(total=len(ids), desc=label, unit="img", disable=not progress)
    for i, (annotation, *values) in enumerate(map_tasks(_render, tasks, workers)):
        annotations.append({"file": names[i], "nsd_id": int(ids[i]), **annotation})
        for array, value in zip(features or (), values, strict=False):
            array[i] = value
        bar.update()
    bar.close()
    return annotations, features


def _write_responses(
    root: Path, hemisphere: str, models: brain.VertexModels, features: tuple[np.ndarray, ...],
    n_repeats: np.ndarray, seed: int, subject: int, bar: tqdm,
) -> None:
    """Noiseless signal and averaged, z-scored trial responses, written block by block."""
    n_images, n_vertices = len(n_repeats), len(models)
    signal_file = open_memmap(root / "ground_truth" / f"{hemisphere}_signal.npy", mode="w+",
                              dtype=np.float32, shape=(n_images, n_vertices))
    fmri_file = open_memmap(
        root / "training_split" / "training_fmri" / f"{hemisphere}_training_fmri.npy",
        mode="w+", dtype=np.float32, shape=(n_images, n_vertices),
    )
    noise_scale = 1.0 / np.sqrt(n_repeats.astype(np.float64))[:, None]
    h = HEMISPHERES.index(hemisphere)
    for start in range(0, n_vertices, VERTEX_BLOCK):
        idx = np.arange(start, min(start + VERTEX_BLOCK, n_vertices))
        signal = brain.compute_signal(models, idx, *features)
        models.ncsnr[idx[signal.std(axis=0) == 0]] = 0.0  # no signal: nothing to recover
        rng = np.random.default_rng([seed, _STREAM_NOISE, subject, h, start])
        noise = rng.standard_normal((n_images, len(idx)))
        # Mean of r trials (signal + N(0, 1/ncsnr^2)) times ncsnr; z-scoring removes the scale.
        averaged = models.ncsnr[idx] * signal + noise * noise_scale
        signal_file[:, idx] = signal.astype(np.float32)
        fmri_file[:, idx] = brain.zscore(averaged).astype(np.float32)
        bar.update(len(idx))
    signal_file.flush()
    fmri_file.flush()
    del signal_file, fmri_file


def _make_output_root(out_root: Path, name: str) -> None:
    """Create the data root; refuse one (or a subject folder in it) that is not a folder."""
    for path in (out_root, out_root / name):
        if path.exists() and not path.is_dir():
            raise InputError(f"{path}: output path exists and is not a directory")
    try:
        out_root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"{out_root}: cannot create the data root ({error.strerror})") from None


def simulate_subject(
    out_root: str | Path,
    subject: int = 1,
    n_images: int = 1000,
    n_test_images: int = 50,
    image_size: int = 256,
    roi_masks: str | Path | None = None,
    roi_scale: float = 0.1,
    reference_subject: int = 1,
    seed: int = 0,
    progress: bool = True,
    workers: int | None = None,
) -> Path:
    """Simulate one subject and write it in the Algonauts 2023 layout with its ground truth.

    Parameters
    ----------
    out_root : str or Path
        Data root; the subject is written to ``out_root/subjNN`` (replacing an existing one only
        once the new one is complete).
    subject : int
        Subject number (1-99), used in the folder name and the random streams.
    n_images : int
        Training images (with fMRI), at most 9999.
    n_test_images : int
        Test images (no fMRI), at most 9999.
    image_size : int
        Width and height of the PNG images in pixels.
    roi_masks : str or Path, optional
        A real ``roi_masks`` folder (or a folder containing one), copied byte for byte; its
        vertex counts are used. If None, synthetic masks are made (see ``roi_scale``).
    roi_scale : float
        Synthetic masks: factor applied to the real ROI and hemisphere vertex counts of
        ``reference_subject`` (at most about 0.5, so the vertices fit on fsaverage5).
    reference_subject : int
        NSD subject (1-8) whose ROI sizes the synthetic masks copy.
    seed : int
        Seed of every random choice; the same arguments give byte-identical arrays.
    progress : bool
        Show progress bars.
    workers : int, optional
        Threads rendering images (default: available cores, at most 8).

    Returns
    -------
    Path
        The subject folder ``out_root/subjNN``.

    Raises
    ------
    InputError
        On an invalid argument or an unusable ``roi_masks`` folder.
    """
    subject = check_int("subject", subject, 1, 99)
    n_images = check_int("n_images", n_images, 2, 9999)
    n_test_images = check_int("n_test_images", n_test_images, 0, 9999)
    image_size = check_int("image_size", image_size, 32, 4096)
    reference_subject = check_int("reference_subject", reference_subject, 1, 8)
    seed = check_int("seed", seed, 0, 2**63 - 1)
    workers = default_workers() if workers is None else check_int("workers", workers, 1, 256)
    if roi_masks is not None:
        hemi_masks = masks.read_masks(roi_masks)
    else:
        hemi_masks = masks.synthetic_masks(reference_subject, float(roi_scale))
    _make_output_root(Path(out_root), f"subj{subject:02d}")
    train_ids, test_ids = draw_nsd_ids(seed, subject, n_images, n_test_images)
    n_repeats = np.random.default_rng([seed, _STREAM_REPEATS, subject]).choice(
        list(REPEAT_PROBABILITIES), size=n_images, p=list(REPEAT_PROBABILITIES.values())
    ).astype(np.int64)
    name = f"subj{subject:02d}"

    with atomic_directory(Path(out_root) / name) as root:
        if roi_masks is not None:
            masks.copy_mask_files(roi_masks, root / "roi_masks")
        else:
            masks.write_masks(hemi_masks, root / "roi_masks")
        train_annotations, features = _render_images(
            root / "training_split" / "training_images", "train", train_ids, seed, image_size,
            True, workers, progress, f"{name} training images",
        )
        test_annotations, _ = _render_images(
            root / "test_split" / "test_images", "test", test_ids, seed, image_size, False,
            workers, progress, f"{name} test images",
        )
        (root / "training_split" / "training_fmri").mkdir(parents=True)
        truth = root / "ground_truth"
        truth.mkdir()
        total = sum(m.n_vertices for m in hemi_masks.values())
        bar = tqdm(total=total, desc=f"{name} responses", unit="vertex", disable=not progress)
        for h, hemisphere in enumerate(HEMISPHERES):
            rng = np.random.default_rng([seed, _STREAM_BRAIN, subject, h])
            models = brain.draw_vertex_models(hemi_masks[hemisphere].labels, hemisphere, rng)
            _write_responses(root, hemisphere, models, features, n_repeats, seed, subject, bar)
            atomic_save_npy(truth / f"{hemisphere}_ncsnr.npy", models.ncsnr.astype(np.float32))
            frame = models.to_frame()
            atomic_write_text(truth / f"{hemisphere}_prf.csv",
                              frame.to_csv(index=False, float_format="%.6g"))
        bar.close()
        atomic_save_npy(truth / "n_repeats.npy", n_repeats)
        atomic_write_json(truth / "annotations.json", {
            "coordinates": "x right-positive, y up-positive, image spans [-1, 1]; size = larger "
                           "side of the bounding box as a fraction of the image width",
            "train": train_annotations,
            "test": test_annotations,
        })
        atomic_write_json(truth / "simulation.json", {
            "subject": subject, "n_images": n_images, "n_test_images": n_test_images,
            "image_size": image_size, "seed": seed,
            "roi_masks": str(roi_masks) if roi_masks is not None else None,
            "roi_scale": None if roi_masks is not None else float(roi_scale),
            "reference_subject": None if roi_masks is not None else reference_subject,
            "n_vertices": {h: hemi_masks[h].n_vertices for h in HEMISPHERES},
            "n_shared_images": _n_shared(n_images + n_test_images),
            "repeat_probabilities": {str(k): v for k, v in REPEAT_PROBABILITIES.items()},
            "fmri": "mean over an image's trials (signal + N(0, 1/ncsnr^2)), z-scored per "
                    "vertex over the training images",
            "signal": "noiseless signal, z-scored per vertex over the training images",
            "noise_ceiling": "ncsnr^2 / (ncsnr^2 + mean(1 / n_repeats))",
        })
    return Path(out_root) / name

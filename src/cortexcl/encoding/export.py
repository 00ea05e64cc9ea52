"""Algonauts 2023 submission files from a run's whole-hemisphere encodings.

For every subject of a run with a whole-hemisphere (``roi: all``) result of the chosen backbone
in both hemispheres, the encoding is fitted again exactly as the run fitted it (its split, its
layer, its α selection, its PCA and ridge) and predicts the challenge's test images
(``subjNN/test_split/test_images``, sorted by their number). The refit also predicts the run's
own test images; they must equal the predictions the run stored, so a file is written only when
it reproduces the run's model.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from cortexcl.atomic import atomic_save_npy, atomic_write_csv
from cortexcl.config import EncodingConfig
from cortexcl.data.algonauts import challenge_test_images, load_subject
from cortexcl.data.images import ImageStore
from cortexcl.data.rois import HEMISPHERES, WHOLE_HEMISPHERE
from cortexcl.data.splits import Split
from cortexcl.data.subject import Subject
from cortexcl.encoding.features import extract_features
from cortexcl.encoding.model import EncodingModel
from cortexcl.encoding.pipeline import TEST_PREDICTION, read_shared_selection
from cortexcl.errors import InputError
from cortexcl.models.backbones import RANDOM_INIT, build_backbone, get_backbone
from cortexcl.rundir import RunDirectory

#: Largest difference allowed between the refit's and the run's predictions of the run's test
#: images, relative to the spread of those predictions (float32 storage, blocked sums).
REPRODUCTION_TOLERANCE = 1e-3


def export_algonauts(run_dir: str | Path, out: str | Path, *, method: str = "untuned",
                     seed: int | None = None, device: str | None = None, progress: bool = True,
                     announce: Callable[[str], None] = print) -> pd.DataFrame:
    """Write ``OUT/subjNN/{lh,rh}_pred_test.npy`` in the Algonauts 2023 submission format.

    Parameters
    ----------
    run_dir : path
        A run directory (`cortexcl run` or `cortexcl encode`) holding whole-hemisphere
        encodings (ROI ``all``) of ``method`` in both hemispheres.
    out : path
        Submission folder; existing prediction files are never replaced.
    method : str
        The backbone: ``untuned`` or any other encoded one (``cl``, ``rt``, an ``encode
        --method`` name).
    seed : int, optional
        The tuning seed of a tuned backbone (its results lie under ``seed-<s>``); default the
        only seed present.
    device : str, optional
        Where the backbone runs.
    progress : bool
        Show progress bars.
    announce : callable
        Receives one line per file written.

    Returns
    -------
    pandas.DataFrame
        One row per subject × hemisphere: backbone, weights, layer, number of test images and
        vertices, the file, and ``max_abs_diff`` between the refit's and the run's predictions
        of the run's test images. Also written as ``OUT/export.csv``.

    Raises
    ------
    InputError
        If the run has no whole-hemisphere encoding of ``method``, the data it used are gone or
        changed, a prediction file exists already, the test images are missing or misnamed, or
        the refit does not reproduce the run's predictions.
    """
    run = RunDirectory(run_dir)
    if not run.root.is_dir():
        raise InputError(f"{run.root}: no such run directory")
    identity = _identity(run)
    results = _whole_hemisphere_results(run, method, seed)
    out = Path(out)
    _check_output(out, results)
    settings = EncodingConfig(**{key: value for key, value in identity["encoding"].items()
                                 if key in EncodingConfig.model_fields})
    data_root, image_size = _data_source(run, identity)
    subjects = {}  # every subject's data is checked before anything is written
    for subject_name in results:
        subject = load_subject(data_root, subject_name, image_size=image_size,
                               progress=progress)
        paths, _ = challenge_test_images(data_root, subject_name)
        subjects[subject_name] = subject, ImageStore(
            paths, size=image_size, cache_dir=subject.images.cache_dir, progress=progress)
    rows, predictions = [], []
    with tempfile.TemporaryDirectory(dir=run.root, prefix=".features-") as scratch:
        for subject_name, folders in results.items():
            subject, tests = subjects[subject_name]
            for hemisphere, folder in folders.items():
                row, prediction = _predict_hemisphere(run, subject, tests, hemisphere, folder,
                                                      settings, Path(scratch), device, progress)
                row["file"] = str(_prediction_file(out, subject_name, hemisphere))
                rows.append(row)
                predictions.append(prediction)
    for row, prediction in zip(rows, predictions, strict=True):  # all reproduced: write
        atomic_save_npy(Path(row["file"]), prediction)
        announce(f"wrote {row['file']} ({row['n_test_images']} images × {row['n_vertices']} "
                 f"vertices; {row['backbone']}, layer {row['layer']})")
    table = pd.DataFrame(rows)
    atomic_write_csv(out / "export.csv", table)
    return table


def _identity(run: RunDirectory) -> dict:
    identity = run.identity()
    if not identity or not isinstance(identity.get("settings"), dict):
        raise InputError(f"{run.root}: not a cortexcl run directory (no readable run.json)")
    return identity["settings"]


def _data_source(run: RunDirectory, identity: dict) -> tuple[Path, int]:
    """The data root and image size the run encoded with."""
    path = run.path("manifest.json")
    try:
        root = Path(json.loads(path.read_text())["data_root"])
    except (OSError, ValueError, KeyError, TypeError):
        raise InputError(f"{path}: no data_root recorded; cannot find the run's data") from None
    return root, int(identity["data"]["image_size"])


def _whole_hemisphere_results(run: RunDirectory, method: str,
                              seed: int | None) -> dict[str, dict[str, Path]]:
    """``{subject: {hemisphere: result folder}}`` of the whole-hemisphere encodings."""
    records = {path.parent: json.loads(path.read_text()) for path in run.result_summaries()}
    whole = {folder: r for folder, r in records.items() if r.get("roi") == WHOLE_HEMISPHERE}
    found: dict[str, dict[str, list[Path]]] = {}
    for folder, record in whole.items():
        if record.get("method") != method or (seed is not None and record.get("seed") != seed):
            continue
        found.setdefault(record["subject"], {}).setdefault(record["hemisphere"], [])
        found[record["subject"]][record["hemisphere"]].append(folder)
    if not found:
        present = sorted({(r["method"], r.get("seed")) for r in whole.values()}, key=str)
        if not present:
            raise InputError(f"{run.root}: no whole-hemisphere encoding; encode with --roi all "
                             f"(a study: selection.rois: [all])")
        offered = ", ".join(m if s_ is None else f"{m} (seed {s_})" for m, s_ in present)
        raise InputError(f"{run.root}: no whole-hemisphere encoding of {method!r}"
                         f"{'' if seed is None else f' with seed {seed}'}; the run has {offered}")
    chosen: dict[str, dict[str, Path]] = {}
    for subject, hemispheres in sorted(found.items()):
        missing = [h for h in HEMISPHERES if h not in hemispheres]
        if missing:
            raise InputError(f"{run.root}: {subject} has no whole-hemisphere encoding of "
                             f"{method!r} in {', '.join(missing)}; the submission needs both")
        for folders in hemispheres.values():
            if len(folders) > 1:
                raise InputError(f"{run.root}: {method!r} has {len(folders)} tuning seeds; "
                                 f"choose one with --seed")
        chosen[subject] = {h: hemispheres[h][0] for h in HEMISPHERES}
    return chosen


def _check_output(out: Path, results: dict[str, dict[str, Path]]) -> None:
    """Refuse an output that is a file, or that holds this export's files already."""
    for folder in (out, *(out / subject for subject in results)):
        if folder.exists() and not folder.is_dir():
            raise InputError(f"{folder}: not a folder; choose another output folder")
    targets = [out / "export.csv", *(_prediction_file(out, subject, hemisphere)
                                     for subject in results for hemisphere in HEMISPHERES)]
    for target in targets:
        if target.exists():
            raise InputError(f"{target}: exists already; choose another output folder")


def _prediction_file(out: Path, subject: str, hemisphere: str) -> Path:
    return out / subject / f"{hemisphere}_pred_test.npy"


def _weights(summary: dict) -> str:
    """The weights the result's encoding loaded (the label `describe_weights` recorded)."""
    label = str(summary["weights"])
    return RANDOM_INIT if label.startswith(RANDOM_INIT) else label


def _predict_hemisphere(run: RunDirectory, subject: Subject, tests: ImageStore,
                        hemisphere: str, folder: Path, settings: EncodingConfig, scratch: Path,
                        device: str | None, progress: bool) -> tuple[dict, np.ndarray]:
    """Refit one result, check it against the run's predictions, predict the test images."""
    summary = json.loads((folder / "summary.json").read_text())
    spec = get_backbone(summary["backbone"])
    weights = _weights(summary)
    network = build_backbone(spec.name, weights, seed=int(summary["split_seed"]))
    layer = summary["best_layer"]
    # Stored as float16, like the run's features: the refit then sees the same numbers.
    features = np.concatenate([
        extract_features(network, store.normalized(spec.mean, spec.std), layers=[layer],
                         batch_size=settings.batch_size, device=device,
                         out_dir=scratch / f"{subject.name}-{hemisphere}-{part}",
                         progress=progress)[layer]
        for part, store in (("train", subject.images), ("test", tests))])
    responses = subject.responses(hemisphere)
    recorded = Split.load(run.split_path(subject.name))
    run_test = np.load(folder / "test_rows.npy")
    challenge = subject.n_images + np.arange(len(tests))
    split = Split(recorded.train, recorded.val, np.concatenate([run_test, challenge]),
                  recorded.seed, recorded.protocol, recorded.folds)
    # The challenge images have no responses: zeros, never read by the fit (only predicted).
    padded = np.concatenate([responses, np.zeros((len(tests), responses.shape[1]),
                                                 np.float32)])
    options = {"n_components": settings.n_components, "refit": settings.refit,
               "standardize": settings.standardize, "alpha_scale": settings.alpha_grid,
               "progress": progress}
    if settings.selection == "shared-untuned":  # the untuned backbone's α, as the run used
        _, alpha = read_shared_selection(run, subject.name, [hemisphere],
                                         [WHOLE_HEMISPHERE])[hemisphere, WHOLE_HEMISPHERE]
        options["alphas"] = [alpha]
    model = EncodingModel(**options).fit({layer: features}, padded, split)
    predictions = model.predictions_.astype(np.float32)
    stored = np.load(folder / TEST_PREDICTION)
    difference = float(np.max(np.abs(predictions[:len(run_test)] - stored))) if stored.size \
        else 0.0
    if difference > REPRODUCTION_TOLERANCE * max(float(np.std(stored)), 1e-12):
        raise InputError(f"{folder}: the refit does not reproduce the run's predictions (max "
                         f"|difference| {difference:.3g}); were the data or weights changed?")
    result = predictions[len(run_test):]
    if result.shape != (len(tests), subject.n_vertices(hemisphere)):
        raise InputError(f"{folder}: predictions of shape {result.shape}, expected "
                         f"{(len(tests), subject.n_vertices(hemisphere))}")
    return {"subject": subject.name, "hemisphere": hemisphere, "method": summary["method"],
            "seed": summary.get("seed"), "backbone": spec.name, "weights": weights,
            "layer": layer, "n_test_images": len(tests), "n_vertices": int(result.shape[1]),
            "max_abs_diff": difference}, result


"""Simulated subjects: layout, determinism, retinotopy, category selectivity and noise."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cortexcl.data.rois import FSAVERAGE_N_VERTICES, HEMISPHERES, ROI_CLASSES, load_roi_mapping
from cortexcl.data.simulate import brain, masks, simulate_subject, writer
from cortexcl.data.simulate.stimuli import render_scene
from cortexcl.errors import InputError
from cortexcl.metrics import noise_ceiling

SETTINGS = {"n_images": 96, "n_test_images": 5, "image_size": 64, "roi_scale": 0.02, "seed": 3,
            "progress": False}


@pytest.fixture(scope="module")
def subject(tmp_path_factory) -> Path:
    """A small simulated subject (96 images of 64 px, about 380 / 410 vertices)."""
    return simulate_subject(tmp_path_factory.mktemp("sim"), subject=2, workers=1, **SETTINGS)


def _fmri(root: Path, hemisphere: str) -> np.ndarray:
    return np.load(root / "training_split" / "training_fmri" / f"{hemisphere}_training_fmri.npy")


def _truth(root: Path, name: str):
    path = root / "ground_truth" / name
    if path.suffix == ".csv":
        return pd.read_csv(path, keep_default_na=False, na_values=[""])
    if path.suffix == ".json":
        return json.loads(path.read_text())
    return np.load(path)


def test_layout_matches_the_algonauts_release(subject):
    assert subject.name == "subj02"
    images = sorted((subject / "training_split" / "training_images").iterdir())
    tests = sorted((subject / "test_split" / "test_images").iterdir())
    assert len(images) == 96 and len(tests) == 5
    ids = []
    for prefix, files in (("train", images), ("test", tests)):
        for i, path in enumerate(files):
            match = re.fullmatch(rf"{prefix}-(\d{{4}})_nsd-(\d{{5}})\.png", path.name)
            assert match and int(match.group(1)) == i + 1
            ids.append(int(match.group(2)))
    assert len(set(ids)) == len(ids) and max(ids) < 73000
    with Image.open(images[0]) as image:
        assert image.mode == "RGB" and image.size == (64, 64)

    roi_dir = subject / "roi_masks"
    assert len(list(roi_dir.iterdir())) == 20
    for hemisphere in HEMISPHERES:
        fmri = _fmri(subject, hemisphere)
        assert fmri.dtype == np.float32 and fmri.flags.c_contiguous
        assert fmri.shape[0] == 96
        n = fmri.shape[1]
        everything = np.load(roi_dir / f"{hemisphere}.all-vertices_fsaverage_space.npy")
        assert everything.dtype == np.int64 and everything.shape == (FSAVERAGE_N_VERTICES,)
        assert set(np.unique(everything)) == {0, 1} and everything.sum() == n
        assert np.flatnonzero(everything).max() < masks.FSAVERAGE5_N_VERTICES
        for class_name, table in ROI_CLASSES.items():
            labels = np.load(roi_dir / f"{hemisphere}.{class_name}_challenge_space.npy")
            assert labels.dtype == np.int64 and labels.shape == (n,)
            assert set(np.unique(labels)) <= {0, *table}
        # Per-vertex z-scoring of the training file.
        np.testing.assert_allclose(fmri.mean(axis=0), 0.0, atol=1e-5)
        np.testing.assert_allclose(fmri.std(axis=0), 1.0, atol=1e-4)
    for class_name, table in ROI_CLASSES.items():
        path = roi_dir / f"mapping_{class_name}.npy"
        raw = np.load(path, allow_pickle=True)
        assert raw.shape == () and raw.dtype == object
        assert raw.item() == {0: "Unknown", **table}
        assert load_roi_mapping(path) == {0: "Unknown", **table}


def test_ground_truth_files(subject):
    repeats = _truth(subject, "n_repeats.npy")
    assert repeats.shape == (96,) and set(np.unique(repeats)) <= {1, 2, 3}
    assert np.mean(repeats == 3) > 0.6
    for hemisphere in HEMISPHERES:
        n = _fmri(subject, hemisphere).shape[1]
        signal = _truth(subject, f"{hemisphere}_signal.npy")
        ncsnr = _truth(subject, f"{hemisphere}_ncsnr.npy")
        prf = _truth(subject, f"{hemisphere}_prf.csv")
        assert signal.shape == (96, n) and signal.dtype == np.float32
        assert ncsnr.shape == (n,) and np.all((ncsnr >= 0) & (ncsnr <= 1.2))
        assert list(prf["vertex"]) == list(range(n))
        assert {"roi", "model", "x", "y", "size", "ncsnr"} <= set(prf.columns)
        np.testing.assert_allclose(prf["ncsnr"], ncsnr, rtol=1e-5)
        # Lower noise ceilings in higher areas.
        by_model = prf.groupby("model")["ncsnr"].mean()
        assert by_model["prf"] > by_model["floc"] > by_model["none"]
    annotations = _truth(subject, "annotations.json")
    assert len(annotations["train"]) == 96 and len(annotations["test"]) == 5
    first = annotations["train"][0]
    assert first["file"].startswith("train-0001_nsd-")
    assert first["background"] in ("noise", "texture", "place")
    for item in (o for a in annotations["train"] for o in a["objects"]):
        assert item["category"] in ("face", "body", "text", "shape", "grating")
        assert -1 <= item["x"] <= 1 and -1 <= item["y"] <= 1 and 0 < item["size"] < 1


def test_synthetic_roi_sizes_are_scaled_reference_counts(subject, appendix_a):
    roi_dir = subject / "roi_masks"
    for hemisphere in HEMISPHERES:
        n = _fmri(subject, hemisphere).shape[1]
        assert n == round(appendix_a[1, hemisphere, "all"] * 0.02)
        for class_name, table in ROI_CLASSES.items():
            labels = np.load(roi_dir / f"{hemisphere}.{class_name}_challenge_space.npy")
            for label, name in table.items():
                real = appendix_a[1, hemisphere, name]
                expected = max(1, round(real * 0.02)) if real else 0
                assert np.sum(labels == label) == expected, (hemisphere, name)


def test_same_seed_gives_identical_files_whatever_the_worker_count(subject, tmp_path):
    again = simulate_subject(tmp_path, subject=2, workers=2, **SETTINGS)
    for hemisphere in HEMISPHERES:
        assert _fmri(again, hemisphere).tobytes() == _fmri(subject, hemisphere).tobytes()
    name = "training_split/training_images"
    first = sorted((subject / name).iterdir())[5]
    assert (again / name / first.name).read_bytes() == first.read_bytes()


def test_other_seed_or_subject_differs(subject, tmp_path):
    settings = {**SETTINGS, "n_images": 24, "n_test_images": 0}
    base = simulate_subject(tmp_path / "a", subject=2, **settings)
    other_seed = simulate_subject(tmp_path / "b", subject=2, **{**settings, "seed": 4})
    other_subject = simulate_subject(tmp_path / "c", subject=3, **settings)
    for other in (other_seed, other_subject):
        assert not np.array_equal(_fmri(base, "lh"), _fmri(other, "lh"))
        names = {p.name for p in (other / "training_split" / "training_images").iterdir()}
        assert names != {p.name for p in (base / "training_split" / "training_images").iterdir()}


def test_images_are_keyed_by_nsd_id_and_subjects_share_some():
    train_a, test_a = writer.draw_nsd_ids(0, 1, 900, 100)
    train_b, test_b = writer.draw_nsd_ids(0, 2, 900, 100)
    ids_a, ids_b = np.concatenate([train_a, test_a]), np.concatenate([train_b, test_b])
    assert len(np.unique(ids_a)) == 1000 and np.all(np.diff(train_a) > 0)
    assert len(np.intersect1d(ids_a, ids_b)) >= 100  # the shared pool, as in NSD
    image_a, _ = render_scene(np.random.default_rng([0, 2, 1234]), 48)
    image_b, _ = render_scene(np.random.default_rng([0, 2, 1234]), 48)
    assert image_a.tobytes() == image_b.tobytes()


def test_retinotopy_follows_hemisphere_and_ventral_dorsal_split(subject):
    for hemisphere, sign in (("lh", 1), ("rh", -1)):
        prf = _truth(subject, f"{hemisphere}_prf.csv")
        early = prf[prf["model"] == "prf"]
        assert len(early) > 30
        assert np.all(np.sign(early["x"]) == sign)  # lh sees the right visual field
        ventral = early["roi"].str.endswith("v") | (early["roi"] == "hV4")
        assert np.all(early.loc[ventral, "y"] > 0) and np.all(early.loc[~ventral, "y"] < 0)
        area = early["roi"].str.slice(0, 2).replace("hV", "hV4")
        sizes = early.groupby(area)["size"].mean()
        assert sizes["V1"] < sizes["V2"] < sizes["V3"] < sizes["hV4"]
        eccentricity = np.hypot(early["x"], early["y"])
        assert np.corrcoef(eccentricity, early["size"])[0, 1] > 0.5
        exponents = early.groupby(area)["exponent"].mean()
        assert exponents["hV4"] < exponents["V1"] < 1


def test_prf_drive_is_lateralised():
    """A stimulus in the right visual field drives a right-field pRF, not its mirror image."""
    image = np.full((128, 128, 3), 128, dtype=np.uint8)
    rows, cols = np.mgrid[0:128, 0:128]
    image[(rows // 4 + cols // 4) % 2 == 0] = 255
    image[:, :64] = 128  # pattern only in the right half
    fine, coarse = brain.image_features(image)
    models = brain._empty_models(2)
    models.x[:], models.y[:], models.size[:] = [0.6, -0.6], [0.0, 0.0], [0.1, 0.1]
    models.pref_sf[:], models.exponent[:] = 16.0, 0.5
    weights = brain.feature_weights(models, np.arange(2), fine=True)
    rf = brain.rf_weights(models.x, models.y, models.size, brain.GRID)
    drive = brain._pooled_drive(fine[None], rf, weights)[0]
    assert drive[0] > 20 * drive[1]


def test_face_roi_signal_tracks_face_presence(subject):
    annotations = _truth(subject, "annotations.json")["train"]
    faces = np.array([any(o["category"] == "face" for o in a["objects"]) for a in annotations])
    places = np.array([a["background"] == "place" for a in annotations])
    assert 5 < faces.sum() < 90 and 5 < places.sum() < 90
    correlations = {}
    for hemisphere in HEMISPHERES:
        prf = _truth(subject, f"{hemisphere}_prf.csv")
        signal = _truth(subject, f"{hemisphere}_signal.npy")
        weights = prf[[f"w_{c}" for c in brain.CATEGORIES]].to_numpy()
        preferred = np.array(brain.CATEGORIES)[weights.argmax(axis=1)]
        for kind, target in (("faces", faces), ("places", places)):
            selective = (prf["model"] == "floc") & (preferred == kind)
            assert selective.sum() >= 3
            for v in np.flatnonzero(selective):
                correlations.setdefault(kind, []).append(np.corrcoef(signal[:, v], target)[0, 1])
                correlations.setdefault(f"{kind}-other", []).append(
                    np.corrcoef(signal[:, v], places if kind == "faces" else faces)[0, 1]
                )
    assert np.mean(correlations["faces"]) > 0.3
    assert np.mean(correlations["faces"]) > np.mean(correlations["faces-other"]) + 0.2
    assert np.mean(correlations["places"]) > 0.3
    assert np.mean(correlations["places"]) > np.mean(correlations["places-other"]) + 0.2


def test_responses_correlate_with_signal_at_the_noise_ceiling(subject):
    repeats = _truth(subject, "n_repeats.npy")
    for hemisphere in HEMISPHERES:
        fmri = _fmri(subject, hemisphere).astype(np.float64)
        signal = _truth(subject, f"{hemisphere}_signal.npy").astype(np.float64)
        ncsnr = _truth(subject, f"{hemisphere}_ncsnr.npy")
        expected = np.sqrt(noise_ceiling(ncsnr, repeats))
        has_signal = signal.std(axis=0) > 0
        r = np.mean(fmri * signal, axis=0)  # both z-scored per vertex
        r_signal = r[has_signal]
        assert np.mean(np.abs(r_signal - expected[has_signal])) < 0.08
        assert abs(np.mean(r_signal - expected[has_signal])) < 0.03
        assert np.corrcoef(r_signal, expected[has_signal])[0, 1] > 0.9
        assert np.all(ncsnr[~has_signal] == 0)


def test_reader_loads_the_simulated_subject(subject):
    algonauts = pytest.importorskip("cortexcl.data.algonauts")
    loaded = algonauts.load_subject(subject.parent, 2, image_size=32, progress=False)
    assert loaded.n_images == 96
    assert loaded.n_vertices("lh") == _fmri(subject, "lh").shape[1]
    nc = loaded.noise_ceiling("lh")
    assert nc is not None and nc.shape == (loaded.n_vertices("lh"),)


def test_real_masks_are_copied(real_roi_masks, tmp_path):
    source = real_roi_masks / "subj01"
    root = simulate_subject(tmp_path, n_images=4, n_test_images=0, image_size=32,
                            roi_masks=source, progress=False)
    assert _fmri(root, "lh").shape == (4, 19004)
    assert _fmri(root, "rh").shape == (4, 20544)
    for path in source.iterdir():
        assert (root / "roi_masks" / path.name).read_bytes() == path.read_bytes()
    prf = _truth(root, "lh_prf.csv")
    labels = np.load(source / "lh.prf-visualrois_challenge_space.npy")
    np.testing.assert_array_equal(prf["model"] == "prf", labels > 0)


def test_mask_folder_may_hold_a_roi_masks_subfolder(real_roi_masks, tmp_path):
    (tmp_path / "subjX" / "roi_masks").mkdir(parents=True)
    for path in (real_roi_masks / "subj06").iterdir():
        (tmp_path / "subjX" / "roi_masks" / path.name).write_bytes(path.read_bytes())
    read = masks.read_masks(tmp_path / "subjX")
    assert read["lh"].n_vertices == 18978 and read["rh"].n_vertices == 20220


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"roi_scale": 0.9}, "roi_scale"),
        ({"roi_scale": 0.0}, "roi_scale"),
        ({"roi_scale": 0.0001}, "too small"),
        ({"n_images": 1}, "n_images"),
        ({"reference_subject": 9}, "reference_subject"),
        ({"roi_masks": "/nonexistent/roi_masks"}, "roi_masks"),
    ],
)
def test_bad_arguments_raise_input_error(tmp_path, arguments, message):
    with pytest.raises(InputError, match=message):
        simulate_subject(tmp_path, **{**SETTINGS, **arguments})
    assert not (tmp_path / "subj01").exists()


def test_interrupted_simulation_leaves_nothing(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(brain, "compute_signal", fail)
    with pytest.raises(KeyboardInterrupt):
        simulate_subject(tmp_path, **{**SETTINGS, "n_images": 8, "n_test_images": 0})
    assert list(tmp_path.iterdir()) == []

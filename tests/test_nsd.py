"""The native NSD reader against an independent NumPy/SciPy computation on simulated files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import scipy.io
import scipy.stats

from cortexcl.config import EncodingConfig
from cortexcl.data import nsd
from cortexcl.data.nsd import betas_folder, load_nsd_subject
from cortexcl.data.rois import ROI_CLASSES
from cortexcl.data.simulate import simulate_nsd
from cortexcl.encoding.pipeline import subject_split
from cortexcl.errors import InputError
from cortexcl.metrics import noise_ceiling

N_IMAGES, N_SESSIONS, NAN_VERTICES = 60, 5, 2


@pytest.fixture(scope="module")
def nsd_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("nsd")
    simulate_nsd(root, 1, n_images=N_IMAGES, n_sessions=N_SESSIONS, image_size=32,
                 roi_scale=0.03, nan_vertices=NAN_VERTICES, progress=False, workers=1)
    return root


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CORTEXCL_CACHE", str(tmp_path / "cache"))


def reference(root: Path, hemisphere: str, sessions: list[int]):
    """Responses computed independently: scipy.io design, nibabel betas, scipy.stats.zscore
    per session, mean over each NSD id's trials (all surface vertices, NaN kept)."""
    design = scipy.io.loadmat(root / "nsddata/experiments/nsd/nsd_expdesign.mat")
    order = design["masterordering"].ravel() - 1
    per_session = order.size // design["stimpattern"].shape[0]
    ids, values = [], []
    for session in sessions:
        trials = order[(session - 1) * per_session:session * per_session]
        ids.append(design["subjectim"][0, trials] - 1)
        path = betas_folder(root, 1) / f"{hemisphere}.betas_session{session:02d}.mgh"
        betas = nib.load(path).get_fdata().reshape(-1, per_session).T
        values.append(scipy.stats.zscore(betas, axis=0))
    ids, values = np.concatenate(ids), np.concatenate(values)
    unique = np.unique(ids)
    means = np.stack([values[ids == k].mean(axis=0) for k in unique])
    counts = np.array([(ids == k).sum() for k in unique])
    return unique, means, counts


def test_responses_match_an_independent_computation(nsd_root, monkeypatch):
    monkeypatch.setattr(nsd, "_VERTEX_BLOCK", 97)  # many blocks of vertices per session
    subject = load_nsd_subject(nsd_root, 1, image_size=32, progress=False)
    truth = nsd_root / "ground_truth" / "subj01"
    nan_truth = json.loads((truth / "nan_vertices.json").read_text())
    sessions = list(range(1, N_SESSIONS + 1))
    for hemisphere in ("lh", "rh"):
        ids, means, counts = reference(nsd_root, hemisphere, sessions)
        np.testing.assert_array_equal(subject.image_ids, ids)
        np.testing.assert_array_equal(subject.n_repeats, counts)
        labels = nsd_root / "nsddata/freesurfer/subj01/label"
        challenge = np.flatnonzero(np.any([  # vertices of any ROI
            nib.load(path).get_fdata().ravel() > 0
            for path in labels.glob(f"{hemisphere}.*.mgz")], axis=0))
        kept = subject.vertex_to_fsaverage(hemisphere)
        np.testing.assert_array_equal(kept, np.setdiff1d(challenge, nan_truth[hemisphere]))
        np.testing.assert_allclose(subject.responses(hemisphere), means[:, kept], atol=2e-5)
        assert subject.data_notes(hemisphere)["n_nan_vertices"] == len(nan_truth[hemisphere])
    assert subject.data_notes("lh")["n_nan_vertices"] == NAN_VERTICES
    streams = nib.load(nsd_root / "nsddata/freesurfer/subj01/label/lh.streams.mgz")
    stream_labels = streams.get_fdata().ravel()[nan_truth["lh"]]
    for label, roi in ROI_CLASSES["streams"].items():  # per ROI: the excluded vertices in it
        assert subject.data_notes("lh", roi)["n_nan_vertices"] == np.sum(stream_labels == label)
    assert subject.data_notes("lh", "all")["n_nan_vertices"] == NAN_VERTICES
    assert np.isnan(reference(nsd_root, "lh", sessions)[1][:, nan_truth["lh"]]).any()


def test_responses_follow_the_ground_truth_signal(nsd_root):
    subject = load_nsd_subject(nsd_root, 1, image_size=32, progress=False)
    truth = nsd_root / "ground_truth" / "subj01"
    signal = np.load(truth / "rh_signal.npy")
    columns = np.searchsorted(np.load(truth / "rh_vertices.npy"), subject.vertex_to_fsaverage("rh"))
    responses = subject.responses("rh")
    r = np.array([np.corrcoef(responses[:, i], signal[:, c])[0, 1]
                  for i, c in enumerate(columns)])
    ceiling = subject.noise_ceiling("rh")
    strong = ceiling > 0.5
    assert strong.sum() > 50
    # r of a noisy measurement with its signal is about sqrt(NC).
    assert abs(np.mean(r[strong]) - np.mean(np.sqrt(ceiling[strong]))) < 0.1


def test_images_are_the_stimuli_of_the_design(nsd_root):
    subject = load_nsd_subject(nsd_root, 1, image_size=32, progress=False)
    np.testing.assert_array_equal(subject.image_ids,
                                  np.load(nsd_root / "ground_truth/subj01/nsd_ids.npy"))
    with h5py.File(nsd_root / nsd.STIMULI, "r") as handle:
        expected = handle["imgBrick"][np.sort(subject.image_ids)]
    np.testing.assert_array_equal(subject.images.array(), expected)  # 32 px: no resizing


def test_noise_ceiling_uses_ncsnr_and_the_repeats_of_the_evaluation_images(nsd_root):
    subject = load_nsd_subject(nsd_root, 1, image_size=32, progress=False)
    ncsnr = nib.load(betas_folder(nsd_root, 1) / "lh.ncsnr.mgh").get_fdata().ravel()
    ncsnr = ncsnr[subject.vertex_to_fsaverage("lh")]
    repeats = subject.n_repeats
    rows = np.array([np.flatnonzero(repeats == k)[0] for k in (3, 2, 1) if (repeats == k).any()])
    # Hand formula: NC = ncsnr² / (ncsnr² + (A/3 + B/2 + C) / (A + B + C)).
    a, b, c = ((repeats[rows] == k).sum() for k in (3, 2, 1))
    expected = ncsnr**2 / (ncsnr**2 + (a / 3 + b / 2 + c) / (a + b + c))
    np.testing.assert_allclose(subject.noise_ceiling("lh", rows), expected, rtol=1e-6)
    # One image of each kind and ncsnr 1: 1 / (1 + (1/3 + 1/2 + 1) / 3) = 0.62069.
    assert noise_ceiling([1.0], [3, 2, 1])[0] == pytest.approx(0.620690, abs=1e-6)


def test_session_range_and_the_session_split(nsd_root):
    early = load_nsd_subject(nsd_root, 1, image_size=32, progress=False, sessions=[1, 2, 3])
    ids, means, counts = reference(nsd_root, "rh", [1, 2, 3])
    np.testing.assert_array_equal(early.image_ids, ids)
    np.testing.assert_array_equal(early.n_repeats, counts)
    with pytest.raises(InputError, match="no image shown only in its last three sessions"):
        subject_split(early, 0, EncodingConfig(split="sessions"))

    full = load_nsd_subject(nsd_root, 1, image_size=32, progress=False)
    first_two, _, _ = reference(nsd_root, "rh", [1, 2])
    late_only = np.flatnonzero(~np.isin(full.image_ids, first_two))
    split = subject_split(full, 0, EncodingConfig(split="sessions"))
    np.testing.assert_array_equal(split.test, late_only)
    assert late_only.size > 0
    assert not set(split.train) & set(split.test) and not set(split.val) & set(split.test)
    assert len(split.train) + len(split.val) + len(split.test) == full.n_images


def test_whole_cortex_space_keeps_every_finite_vertex(nsd_root):
    subject = load_nsd_subject(nsd_root, 1, image_size=32, progress=False, space="cortex",
                               sessions=[1, 3])
    assert subject.n_vertices("rh") == 10242
    assert subject.data_notes("lh")["n_nan_vertices"] == 0  # NaNs are in session 2
    assert subject.roi_indices("lh", "V1v").size > 0


def test_responses_are_cached_and_rebuilt_when_a_file_changes(nsd_root, monkeypatch):
    first = load_nsd_subject(nsd_root, 1, image_size=32, progress=False, sessions=[1, 2, 3, 4])
    built = []
    original = nsd._build_responses
    monkeypatch.setattr(nsd, "_build_responses", lambda *a: built.append(1) or original(*a))
    again = load_nsd_subject(nsd_root, 1, image_size=32, progress=False, sessions=[1, 2, 3, 4])
    assert built == [] and again.data_hash() == first.data_hash()
    path = betas_folder(nsd_root, 1) / "rh.betas_session04.mgh"
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    load_nsd_subject(nsd_root, 1, image_size=32, progress=False, sessions=[1, 2, 3, 4])
    assert built == [1]


def test_native_surface_labels_are_refused_with_a_remedy(nsd_root, tmp_path):
    labels = tmp_path / "labels"
    labels.mkdir()
    for path in (nsd_root / "nsddata/freesurfer/subj01/label").iterdir():
        (labels / path.name).write_bytes(path.read_bytes())
    native = np.zeros((12000, 1, 1), dtype=np.int32)
    nib.MGHImage(native, np.eye(4)).to_filename(str(labels / "lh.streams.mgz"))
    with pytest.raises(InputError, match="12000 vertices but the betas have 10242"):
        load_nsd_subject(nsd_root, 1, image_size=32, progress=False, rois=labels)


def test_simulate_command_writes_the_nsd_layout(tmp_path):
    out = tmp_path / "nsd"
    command = [sys.executable, "-m", "cortexcl", "simulate", str(out), "--layout", "nsd",
               "--n-images", "20", "--n-sessions", "4", "--image-size", "32",
               "--roi-scale", "0.02"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (betas_folder(out, 1) / "lh.betas_session04.mgh").is_file()
    wrong = subprocess.run([*command[:7], "--n-test-images", "3"], capture_output=True,
                           text=True, timeout=300)
    assert wrong.returncode == 2
    assert "--n-test-images: not an option of --layout nsd" in wrong.stderr
    assert "Traceback" not in wrong.stderr


def test_a_study_runs_on_the_nsd_layout_with_the_session_split(nsd_root, tmp_path):
    import pandas as pd

    from cortexcl.config import parse_config
    from cortexcl.study.runner import run_study

    config = parse_config({
        "name": "nsd", "seeds": [0], "backbone": {"weights": "none"},
        "methods": ["untuned", "cl"],
        "data": {"layout": "nsd", "root": str(nsd_root), "subjects": [1], "image_size": 64},
        "selection": {"hemispheres": ["lh"], "rois": ["V1v"], "min_vertices": 5},
        "tuning": {"cl": {"epochs": 1, "batch_size": 16}},
        "encoding": {"n_components": 8, "split": "sessions"},
        "evaluation": {"mutual_info": False}})
    said = []
    _, report = run_study(config, tmp_path / "run", progress=False, announce=said.append)
    assert report.ok
    table = pd.read_csv(tmp_path / "run" / "tables" / "encoding.csv")
    assert sorted(table["method"]) == ["cl", "untuned"]
    split = json.loads((tmp_path / "run" / "splits" / "subj01.json").read_text())
    assert (table["n_test"] == len(split["test"])).all()
    assert table["mean_noise_ceiling"].between(0, 1).all()
    assert table["mean_nc_score"].notna().all()
    nan = json.loads((nsd_root / "ground_truth/subj01/nan_vertices.json").read_text())["lh"]
    labels = nib.load(nsd_root / "nsddata/freesurfer/subj01/label/lh.prf-visualrois.mgz")
    in_v1v = int(np.sum(labels.get_fdata().ravel()[nan] == 1))  # V1v is label 1
    assert (table["n_nan_vertices"] == in_v1v).all()  # counted within the ROI
    assert f"subj01 lh: {NAN_VERTICES} vertices left out (NaN or infinite betas" in "\n".join(said)
    assert list((tmp_path / "run" / "figures").glob("surface_r_*.png"))


def test_a_study_without_a_root_simulates_the_nsd_layout(tmp_path, monkeypatch):
    from cortexcl.config import parse_config
    from cortexcl.data.layouts import layout_options, open_subject
    from cortexcl.study.runner import prepare_data

    config = parse_config({"data": {"layout": "nsd", "simulate": {
        "n_images": 40, "n_sessions": 4, "image_size": 32, "roi_scale": 0.02}}})
    root = prepare_data(config, progress=False)
    assert root.name.startswith("v2-nsd-")
    subject = open_subject(root, 1, image_size=32, progress=False,
                           **layout_options(config.data))
    assert subject.n_images == 40 and set(subject.n_repeats) <= {1, 2, 3}


def write_challenge_release(nsd_root: Path, out: Path) -> Path:
    """The Algonauts 2023 release of simulated subject 1 made as the challenge made it: the
    sessions but the last three, averaged; images named by NSD id; masks on fsaverage."""
    from PIL import Image

    from cortexcl.data.rois import FSAVERAGE_N_VERTICES, ROI_CLASSES
    from cortexcl.data.simulate.masks import mapping_bytes

    subject = load_nsd_subject(nsd_root, 1, image_size=32, progress=False,
                               sessions=range(1, N_SESSIONS - 2))
    root = out / "subj01"
    fmri = root / "training_split" / "training_fmri"
    images = root / "training_split" / "training_images"
    masks = root / "roi_masks"
    for folder in (fmri, images, masks):
        folder.mkdir(parents=True)
    for row, (nsd_id, pixels) in enumerate(zip(subject.image_ids, subject.images.array(),
                                               strict=True)):
        Image.fromarray(pixels).save(images / f"train-{row + 1:04d}_nsd-{nsd_id:05d}.png")
    for hemisphere in ("lh", "rh"):
        np.save(fmri / f"{hemisphere}_training_fmri.npy", subject.responses(hemisphere))
        mask = np.zeros(FSAVERAGE_N_VERTICES, dtype=np.int64)
        mask[subject.vertex_to_fsaverage(hemisphere)] = 1
        np.save(masks / f"{hemisphere}.all-vertices_fsaverage_space.npy", mask)
        for class_name, table in ROI_CLASSES.items():
            labels = np.zeros(subject.n_vertices(hemisphere), dtype=np.int64)
            for label, roi in table.items():
                labels[subject.roi_indices(hemisphere, roi)] = label
            np.save(masks / f"{hemisphere}.{class_name}_challenge_space.npy", labels)
    for class_name in ROI_CLASSES:
        (masks / f"mapping_{class_name}.npy").write_bytes(mapping_bytes(class_name))
    return out


def test_challenge_layout_takes_noise_ceilings_from_the_nsd_release(nsd_root, tmp_path):
    from cortexcl.data.algonauts import load_subject

    challenge = write_challenge_release(nsd_root, tmp_path / "algonauts")
    plain = load_subject(challenge, 1, image_size=32, progress=False)
    assert plain.noise_ceiling("lh") is None
    subject = load_subject(challenge, 1, image_size=32, progress=False, ncsnr=nsd_root)
    # Repeats counted independently: trials of sessions 1 … N-3 per NSD id.
    ids, _, counts = reference(nsd_root, "lh", list(range(1, N_SESSIONS - 2)))
    np.testing.assert_array_equal(subject.n_repeats, counts[np.searchsorted(ids,
                                                                            subject.image_ids)])
    assert set(subject.n_repeats.tolist()) <= {1, 2, 3}
    for hemisphere in ("lh", "rh"):
        path = betas_folder(nsd_root, 1) / f"{hemisphere}.ncsnr.mgh"
        ncsnr = nib.load(path).get_fdata().ravel()[subject.vertex_to_fsaverage(hemisphere)]
        rows = np.arange(10)
        repeats = subject.n_repeats[rows]
        expected = ncsnr**2 / (ncsnr**2 + np.mean(1 / repeats))
        np.testing.assert_allclose(subject.noise_ceiling(hemisphere, rows), expected,
                                   rtol=1e-6)
    # An NSD design that never shows a training image is refused.
    design_path = nsd_root / nsd.DESIGN
    other = tmp_path / "other"
    shutil.copytree(nsd_root, other)
    content = scipy.io.loadmat(design_path)
    content["subjectim"] = content["subjectim"][::-1]  # subject 1 gets subject 8's images
    scipy.io.savemat(other / nsd.DESIGN, {k: v for k, v in content.items()
                                          if not k.startswith("__")})
    with pytest.raises(InputError, match="training images of subj01 .* are not shown in"):
        load_subject(challenge, 1, image_size=32, progress=False, ncsnr=other)


def test_encode_reads_the_nsd_layout_and_records_it(nsd_root, tmp_path):
    from cortexcl.config import DataConfig
    from cortexcl.workflows import encode

    table = encode(nsd_root, tmp_path / "run", hemispheres=["rh"], rois="V1v", weights="none",
                   image_size=64, min_vertices=5, progress=False, announce=lambda _: None,
                   settings=EncodingConfig(n_components=8, split="sessions"),
                   reading=DataConfig(layout="nsd", sessions=(1, N_SESSIONS)))
    assert table["mean_noise_ceiling"].between(0, 1).all()
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["data_options"] == {"layout": "nsd", "sessions": [1, N_SESSIONS],
                                        "space": "challenge", "rois": None}
    command = [sys.executable, "-m", "cortexcl", "encode", str(nsd_root), "--out",
               str(tmp_path / "other"), "--sessions", "1-3"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--sessions: options of --layout nsd (--layout is algonauts)" in done.stderr
    assert not (tmp_path / "other").exists()

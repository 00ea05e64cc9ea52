"""The folder layout (a lab's own data) and Subject.from_arrays: round trips, checks, a study."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cortexcl.config import parse_config
from cortexcl.data.folder import load_folder_subject
from cortexcl.data.subject import Subject
from cortexcl.errors import InputError

N_IMAGES = 40


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CORTEXCL_CACHE", str(tmp_path / "cache"))


def write_images(folder: Path, n: int = N_IMAGES, size: int = 32) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"stim_{i:03d}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(rng.integers(0, 255, (size, size + 8, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def dataset(root: Path, parts: dict[str, int], with_surface: bool = False) -> dict:
    """Write subj01 in the folder layout; return the arrays written."""
    rng = np.random.default_rng(1)
    folder = root / "subj01"
    paths = write_images(folder / "images")
    arrays = {"paths": paths, "responses": {}, "rois": {}, "ceiling": {}, "fsaverage": {}}
    single = len(parts) == 1 and "units" in parts
    for part, n_units in parts.items():
        responses = rng.standard_normal((N_IMAGES, n_units)).astype(np.float32)
        rois = {"face-patch": rng.random(n_units) < 0.4,
                "ring": np.array([0, 3, n_units - 1])}
        ceiling = rng.uniform(0.1, 0.9, n_units)
        arrays["responses"][part], arrays["rois"][part], arrays["ceiling"][part] = (
            responses, rois, ceiling)
        if single:
            np.save(folder / "responses.npy", responses)
            np.save(folder / "noise_ceiling.npy", ceiling)
            roi_dir = folder / "rois"
        else:
            for name, value in (("responses", responses), ("noise_ceiling", ceiling)):
                (folder / name).mkdir(exist_ok=True)
                np.save(folder / name / f"{part}.npy", value)
            roi_dir = folder / "rois" / part
        roi_dir.mkdir(parents=True, exist_ok=True)
        for name, mask in rois.items():
            np.save(roi_dir / f"{name}.npy", mask)
        if with_surface:
            vertices = rng.choice(10242, n_units, replace=False)
            arrays["fsaverage"][part] = vertices
            (folder / "fsaverage").mkdir(exist_ok=True)
            np.save(folder / "fsaverage" / f"{part}.npy", vertices)
    return arrays


@pytest.mark.parametrize("parts", [{"units": 30}, {"lh": 25, "rh": 20}])
def test_folder_layout_round_trips(tmp_path, parts):
    arrays = dataset(tmp_path, parts, with_surface="lh" in parts)
    subject = load_folder_subject(tmp_path, 1, image_size=32, progress=False)
    same = Subject.from_arrays(arrays["paths"], arrays["responses"] if len(parts) > 1
                               else arrays["responses"]["units"],
                               rois=arrays["rois"] if len(parts) > 1
                               else arrays["rois"]["units"],
                               noise_ceiling=arrays["ceiling"] if len(parts) > 1
                               else arrays["ceiling"]["units"],
                               fsaverage=arrays["fsaverage"] or None, image_size=32,
                               progress=False)
    for data in (subject, same):
        assert data.hemispheres == tuple(parts)
        assert data.roi_names == ("face-patch", "ring")
        assert data.expand_rois("Face-Patch, all") == ["face-patch", "all"]
        for part in parts:
            np.testing.assert_array_equal(data.responses(part), arrays["responses"][part])
            mask = arrays["rois"][part]["face-patch"]
            np.testing.assert_array_equal(data.roi_indices(part, "face-patch"),
                                          np.flatnonzero(mask))
            np.testing.assert_array_equal(data.responses(part, "ring"),
                                          arrays["responses"][part][:, [0, 3, parts[part] - 1]])
            np.testing.assert_allclose(data.noise_ceiling(part, np.arange(5)),
                                       arrays["ceiling"][part])
            surface = data.vertex_to_fsaverage(part)
            if arrays["fsaverage"]:
                np.testing.assert_array_equal(surface, arrays["fsaverage"][part])
            else:
                assert surface is None
        np.testing.assert_array_equal(data.images.array()[3],
                                      np.asarray(Image.open(arrays["paths"][3]).convert("RGB")
                                                 .resize((32, 32), Image.Resampling.BILINEAR)))
    with pytest.raises(InputError, match=r"unknown ROI 'V1v' of subj01 \(valid: face-patch"):
        subject.roi_indices(next(iter(parts)), "V1v")
    with pytest.raises(InputError, match="unknown hemisphere 'xh' of subj01"):
        subject.responses("xh")


def test_data_hash_follows_responses_and_rois(tmp_path):
    dataset(tmp_path, {"units": 10})
    first = load_folder_subject(tmp_path, 1, image_size=32, progress=False).data_hash()
    assert load_folder_subject(tmp_path, 1, image_size=32, progress=False).data_hash() == first
    np.save(tmp_path / "subj01" / "rois" / "ring.npy", np.array([1, 2]))
    assert load_folder_subject(tmp_path, 1, image_size=32, progress=False).data_hash() != first


def test_stimuli_table_sets_the_order_and_ids(tmp_path):
    arrays = dataset(tmp_path, {"units": 10})
    folder = tmp_path / "subj01"
    order = [arrays["paths"][i].name for i in range(N_IMAGES - 1, -1, -1)]
    pd.DataFrame({"file": order, "id": np.arange(N_IMAGES) + 500}).to_csv(
        folder / "stimuli.tsv", sep="\t", index=False)
    subject = load_folder_subject(tmp_path, 1, image_size=32, progress=False)
    np.testing.assert_array_equal(subject.image_ids, np.arange(N_IMAGES) + 500)
    assert subject.images.paths[0].name == order[0]


def test_noise_ceiling_from_ncsnr_and_repeats(tmp_path):
    paths = write_images(tmp_path / "images", n=6)
    ncsnr, repeats = np.array([0.5, 1.0, 2.0]), np.array([3, 2, 1, 1, 3, 3])
    subject = Subject.from_arrays(paths, np.zeros((6, 3), np.float32), ncsnr=ncsnr,
                                  n_repeats=repeats, image_size=32, progress=False)
    rows = np.array([0, 1, 2])  # one image shown 3, 2 and 1 times
    expected = ncsnr**2 / (ncsnr**2 + (1 / 3 + 1 / 2 + 1) / 3)
    np.testing.assert_allclose(subject.noise_ceiling("units", rows), expected)


@pytest.mark.parametrize(("change", "problem"), [
    (lambda f: np.save(f / "responses.npy", np.zeros((N_IMAGES - 2, 10), np.float32)),
     "responses.npy: 38 rows but 40 images"),
    (lambda f: np.save(f / "rois" / "face-patch.npy", np.ones(9, bool)),
     "face-patch.npy: mask of 9 entries but the responses have 10 units"),
    (lambda f: np.save(f / "rois" / "ring.npy", np.array([2, 12])),
     "ring.npy: unit index 12 out of range 0-9"),
    (lambda f: np.save(f / "responses.npy", np.full((N_IMAGES, 10), np.nan, np.float32)),
     "responses.npy: non-finite value nan at row 0, column 0"),
    (lambda f: np.save(f / "noise_ceiling.npy", np.full(10, 1.5)),
     "noise_ceiling.npy: noise ceilings must be fractions in [0, 1]"),
    (lambda f: np.save(f / "repeats.npy", np.ones(N_IMAGES)),
     "repeats.npy: ncsnr and repeats go together"),
    (lambda f: (f / "fsaverage").mkdir() or np.save(f / "fsaverage" / "units.npy",
                                                    np.arange(10)),
     "surface vertices are for parts lh and rh, not 'units'"),
    (lambda f: (f / "responses.npy").unlink(), "needs either responses.npy or a responses/"),
    (lambda f: (f / "stimuli.tsv").write_text("name\nstim_000.png\n"), "needs a 'file' column"),
])
def test_bad_folder_input_is_refused_in_one_line(tmp_path, change, problem):
    assert problem in refusal(tmp_path, {"units": 10}, change)


def refusal(root: Path, parts: dict[str, int], change) -> str:
    """The one-line refusal of subj01 (written with ``parts``) after ``change(folder)``."""
    dataset(root, parts)
    change(root / "subj01")
    with pytest.raises(InputError) as raised:
        load_folder_subject(root, 1, image_size=32, progress=False)
    assert "\n" not in str(raised.value)
    return str(raised.value)


def test_from_arrays_names_the_argument(tmp_path):
    paths = write_images(tmp_path / "images", n=4)
    with pytest.raises(InputError, match=r"rois\['V4'\]\['x'\]: mask of 2 entries"):
        Subject.from_arrays(paths, {"V4": np.zeros((4, 3), np.float32)},
                            rois={"V4": {"x": np.ones(2, bool)}}, image_size=32, progress=False)
    with pytest.raises(InputError, match="responses: 3 rows but 4 images"):
        Subject.from_arrays(paths, np.zeros((3, 3), np.float32), image_size=32, progress=False)


def test_config_takes_the_folders_own_names_and_refuses_what_needs_the_challenge():
    config = parse_config({"data": {"layout": "folder", "root": "/data"},
                           "selection": {"hemispheres": ["V4", "IT"], "rois": ["face-patch"]}})
    assert config.selection.hemispheres == ["V4", "IT"]
    assert config.selection.rois == ["face-patch"]
    with pytest.raises(InputError, match="layout folder reads a dataset folder"):
        parse_config({"data": {"layout": "folder"}})
    with pytest.raises(InputError, match="'lh' or 'rh'"):
        parse_config({"selection": {"hemispheres": ["V4"]}})
    with pytest.raises(InputError, match="evaluation.classification: needs NSD.s ROIs"):
        parse_config({"data": {"layout": "folder", "root": "/data"},
                      "evaluation": {"classification": {"dataset": "fake"}}})


def test_a_study_runs_on_the_folder_layout(tmp_path):
    from cortexcl.study.runner import run_study

    dataset(tmp_path / "data", {"V4": 60, "IT": 50})
    config = parse_config({
        "name": "folder", "seeds": [0], "backbone": {"weights": "none"},
        "methods": ["untuned", "cl"],
        "data": {"layout": "folder", "root": str(tmp_path / "data"), "subjects": [1],
                 "image_size": 64},
        "selection": {"hemispheres": ["IT"], "rois": ["face-patch"], "min_vertices": 5},
        "tuning": {"cl": {"epochs": 1, "batch_size": 16}},
        "encoding": {"n_components": 8}, "evaluation": {"mutual_info": False}})
    _, report = run_study(config, tmp_path / "run", progress=False, announce=lambda _: None)
    assert report.ok
    table = pd.read_csv(tmp_path / "run" / "tables" / "encoding.csv")
    assert set(table["hemisphere"]) == {"IT"} and set(table["roi"]) == {"face-patch"}
    assert table["mean_noise_ceiling"].between(0, 1).all()
    assert (tmp_path / "run" / "report.html").is_file()


@pytest.mark.parametrize(("change", "problem"), [
    (lambda f: np.save(f / "noise_ceiling" / "MT.npy", np.full(10, 0.5)),
     "MT.npy: noise ceiling of part 'MT', which has no responses (parts: IT, V4)"),
    (lambda f: (f / "fsaverage").mkdir() or np.save(f / "fsaverage" / "lh.npy", np.arange(10)),
     "lh.npy: fsaverage vertices of part 'lh', which has no responses"),
    (lambda f: (f / "rois" / "MT").mkdir() or np.save(f / "rois" / "MT" / "x.npy",
                                                      np.ones(10, bool)),
     "x.npy: ROIs of part 'MT', which has no responses"),
    (lambda f: (f / "images" / "extra").mkdir(), "extra: a folder; images/ must hold only"),
])
def test_files_of_unknown_parts_and_stray_folders_are_refused(tmp_path, change, problem):
    assert problem in refusal(tmp_path, {"IT": 10, "V4": 12}, change)


def test_from_arrays_wants_rois_per_part_and_distinct_ids(tmp_path):
    paths = write_images(tmp_path / "images", n=4)
    parts = {"A": np.zeros((4, 3), np.float32), "B": np.zeros((4, 2), np.float32)}
    with pytest.raises(InputError, match=r"rois\['x'\]: with responses of several parts"):
        Subject.from_arrays(paths, parts, rois={"x": np.ones(3, bool)}, image_size=32,
                            progress=False)
    with pytest.raises(InputError, match="image_ids: expected 4 distinct ids"):
        Subject.from_arrays(paths, parts, image_ids=[1, 1, 2, 3], image_size=32,
                            progress=False)


def test_encode_reads_the_folder_layout(tmp_path):
    from cortexcl.config import DataConfig, EncodingConfig
    from cortexcl.workflows import encode

    dataset(tmp_path / "data", {"IT": 30})
    table = encode(tmp_path / "data", tmp_path / "run", hemispheres=["IT"], rois="face-patch",
                   weights="none", image_size=64, min_vertices=5, progress=False,
                   announce=lambda _: None, settings=EncodingConfig(n_components=8),
                   reading=DataConfig(layout="folder"))
    assert table[["hemisphere", "roi"]].values.tolist() == [["IT", "face-patch"]]
    with pytest.raises(InputError, match=r"--roi: unknown ROI 'V1v' of subj01"):
        encode(tmp_path / "data", tmp_path / "run2", hemispheres=["IT"], rois="V1v",
               weights="none", image_size=64, progress=False, announce=lambda _: None,
               reading=DataConfig(layout="folder"))
    assert not (tmp_path / "run2").exists()

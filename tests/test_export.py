"""Tests of the Algonauts 2023 submission export (`cortexcl export-algonauts`)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cortexcl.cli import app
from cortexcl.config import EncodingConfig
from cortexcl.data.algonauts import challenge_test_images, load_subject
from cortexcl.data.simulate import simulate_subject
from cortexcl.data.splits import Split
from cortexcl.encoding.export import export_algonauts
from cortexcl.errors import InputError
from cortexcl.workflows import encode

SIMULATION = {"n_images": 60, "n_test_images": 5, "image_size": 64, "roi_scale": 0.05}
SETTINGS = EncodingConfig(n_components=12, layers=["features.2", "features.12"])


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    """A simulated subject whose first challenge test image is a copy of a training image of
    the run's test part, and an encode run of both whole hemispheres with two backbones."""
    root = tmp_path_factory.mktemp("export-data")
    simulate_subject(root, subject=1, seed=0, progress=False, **SIMULATION)
    run = tmp_path_factory.mktemp("export-run") / "run"
    for method, weights in (("untuned", "none"), ("other", "none")):
        encode(root, run, subject=1, rois="all", weights=weights, method=method,
               seed=0, settings=SETTINGS, image_size=64,
               progress=False, announce=lambda _: None)
    split = Split.load(run / "splits" / "subj01.json")
    subject = load_subject(root, 1, image_size=64, progress=False)
    copied = int(split.test[2])
    tests, _ = challenge_test_images(root, 1)
    shutil.copyfile(subject.images.paths[copied], tests[0])
    return root, run, copied


def test_submission_files_have_the_challenge_shapes_and_the_models_predictions(encoded,
                                                                            tmp_path):
    root, run, copied = encoded
    table = export_algonauts(run, tmp_path / "sub", progress=False, announce=lambda _: None)
    subject = load_subject(root, 1, image_size=64, progress=False)
    assert list(table["hemisphere"]) == ["lh", "rh"] and (table["max_abs_diff"] == 0).all()
    for hemisphere in ("lh", "rh"):
        predicted = np.load(tmp_path / "sub" / "subj01" / f"{hemisphere}_pred_test.npy")
        assert predicted.dtype == np.float32
        assert predicted.shape == (SIMULATION["n_test_images"], subject.n_vertices(hemisphere))
        # The copied image is predicted as the run predicted it as a test image.
        folder = run / "encoding" / "subj01" / hemisphere / "all" / "untuned"
        row = list(np.load(folder / "test_rows.npy")).index(copied)
        np.testing.assert_allclose(predicted[0], np.load(folder / "test_prediction.npy")[row],
                                   rtol=1e-5, atol=1e-6)
        summary = json.loads((folder / "summary.json").read_text())
        assert table.set_index("hemisphere").loc[hemisphere, "layer"] == summary["best_layer"]
    written = pd.read_csv(tmp_path / "sub" / "export.csv")
    assert list(written["n_test_images"]) == [SIMULATION["n_test_images"]] * 2


def test_another_backbone_of_the_run_by_its_method_name(encoded, tmp_path):
    _, run, _ = encoded
    table = export_algonauts(run, tmp_path, method="other", progress=False,
                             announce=lambda _: None)
    assert set(table["method"]) == {"other"}


def test_bad_requests_are_refused_before_anything_is_written(encoded, tmp_path):
    root, run, _ = encoded
    with pytest.raises(InputError, match="no whole-hemisphere encoding of 'cl'"):
        export_algonauts(run, tmp_path / "a", method="cl", progress=False)
    (tmp_path / "b" / "subj01").mkdir(parents=True)
    (tmp_path / "b" / "subj01" / "lh_pred_test.npy").write_bytes(b"keep")
    with pytest.raises(InputError, match="lh_pred_test.npy: exists already"):
        export_algonauts(run, tmp_path / "b", progress=False)
    assert (tmp_path / "b" / "subj01" / "lh_pred_test.npy").read_bytes() == b"keep"
    with pytest.raises(InputError, match="no whole-hemisphere encoding of 'untuned' with seed 3;"
                                         " the run has other, untuned"):
        export_algonauts(run, tmp_path / "a", seed=3, progress=False)
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(InputError, match="file: not a folder"):
        export_algonauts(run, tmp_path / "file", progress=False)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "export.csv").write_text("keep")
    with pytest.raises(InputError, match="export.csv: exists already"):
        export_algonauts(run, tmp_path / "d", progress=False)
    with pytest.raises(InputError, match="no such run directory"):
        export_algonauts(tmp_path / "nothing", tmp_path / "c", progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


def test_a_refit_that_does_not_reproduce_the_run_writes_nothing(encoded, tmp_path):
    _, run, _ = encoded
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    stored = copy / "encoding" / "subj01" / "rh" / "all" / "untuned" / "test_prediction.npy"
    np.save(stored, np.load(stored) + 1.0)
    with pytest.raises(InputError, match="rh/all/untuned: the refit does not reproduce"):
        export_algonauts(copy, tmp_path / "sub", progress=False)
    assert not (tmp_path / "sub").exists()


def test_missing_test_images_are_a_one_line_cli_error(encoded, tmp_path):
    root, run, _ = encoded
    data = tmp_path / "data"
    shutil.copytree(root, data)
    shutil.rmtree(data / "subj01" / "test_split" / "test_images")
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "data_root": str(data)}))
    result = subprocess.run([sys.executable, "-m", "cortexcl", "export-algonauts", str(copy),
                             str(tmp_path / "sub")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1 and "test_images: test images folder not found" in lines[0]
    assert not (tmp_path / "sub").exists()


def test_cli_writes_and_summarises(encoded, tmp_path):
    _, run, _ = encoded
    result = CliRunner().invoke(app, ["export-algonauts", str(run), str(tmp_path / "sub")])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "features." in result.output
    assert Path(tmp_path / "sub" / "subj01" / "rh_pred_test.npy").is_file()

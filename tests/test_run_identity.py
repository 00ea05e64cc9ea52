"""Run directories a user can trust: one study each, text keys, ceilings, random-init labels."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cortexcl.atomic import atomic_write_json
from cortexcl.cli import app, main
from cortexcl.data.simulate import simulate_subject
from cortexcl.metrics import nc_normalized_score, noise_ceiling
from cortexcl.report import build_report
from cortexcl.rundir import read_table

SIMULATION = {"n_images": 40, "n_test_images": 2, "image_size": 64, "roi_scale": 0.05}
ENCODE = ("-H", "lh", "-r", "V1v", "--weights", "none", "--image-size", "64",
          "--n-components", "10", "--min-vertices", "30")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("identity-cache")


@pytest.fixture(autouse=True)
def _shared_cache(_isolated_cache, monkeypatch, cache):
    monkeypatch.setenv("CORTEXCL_CACHE", str(cache))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """A simulated subject 1 with its ground truth (ncsnr, repeats)."""
    root = tmp_path_factory.mktemp("identity-data")
    simulate_subject(root, subject=1, seed=0, progress=False, **SIMULATION)
    return root


def encode(data: Path, out: Path, *options: str):
    return CliRunner().invoke(app, ["encode", str(data), "--out", str(out), *ENCODE, *options])


def refused(monkeypatch, capsys, *args: str | Path) -> str:
    """Run the real entry point; it must exit 2 with one ``error:`` line, which is returned."""
    monkeypatch.setattr(sys, "argv", ["cortexcl", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_encodes_of_other_backbones_share_a_run_and_are_compared(tmp_path, data_root):
    out = tmp_path / "run"
    for method in ("untuned", "random-2", "random-2"):  # the same random init: a null
        result = encode(data_root, out, "--method", method)
        assert result.exit_code == 0, result.output
    table = read_table(out / "tables" / "encoding.csv")
    assert table["method"].tolist() == ["random-2", "untuned"]  # replaced, not duplicated
    # An encode run compares its backbones like a study (image-unit test, Holm / BH).
    other = table.set_index("method").loc["random-2"]
    assert other["p_unit"] == "test image" and other["delta_r_vs_untuned"] == 0.0
    assert other["p_vs_untuned"] == 1.0
    identity = json.loads((out / "run.json").read_text())
    assert identity["kind"] == "encode" and "backbones" not in identity["settings"]
    build_report(out, surfaces=False)
    page = (out / "report.html").read_text()
    assert ">random-2<" in page and ">nan<" not in page


def test_another_configuration_is_refused_unless_fresh(tmp_path, data_root, monkeypatch,
                                                       capsys):
    out = tmp_path / "run"
    assert encode(data_root, out).exit_code == 0
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    line = refused(monkeypatch, capsys, "encode", data_root, "--out", out, *ENCODE,
                   "--n-components", "5")
    assert " ".join(line.split()) == (f"error: {out}: run directory holds another encode "
                                      "(settings.encoding.n_components 10 -> 5); use another "
                                      "--out, or --fresh to start over")
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    result = encode(data_root, out, "--n-components", "5", "--fresh")
    assert result.exit_code == 0, result.output
    summary = json.loads(next(out.glob("encoding/*/*/*/*/summary.json")).read_text())
    assert json.loads((out / "run.json").read_text())["settings"]["encoding"][
        "n_components"] == 5
    assert summary["n_vertices"] == 36


def test_a_study_cannot_run_into_an_encode_run(tmp_path, data_root, monkeypatch, capsys):
    out = tmp_path / "run"
    assert encode(data_root, out).exit_code == 0
    config = tmp_path / "study.yaml"
    config.write_text(f"name: s\nbackbone: {{weights: none}}\ndata: {{root: {data_root}}}\n")
    line = refused(monkeypatch, capsys, "run", config, "--out", out)
    assert "run directory holds an encode run, not a study" in " ".join(line.split())


def test_zero_ceilings_follow_the_algonauts_convention(tmp_path, data_root):
    data = tmp_path / "data"
    shutil.copytree(data_root, data)
    path = data / "subj01" / "ground_truth" / "lh_ncsnr.npy"
    ncsnr = np.load(path)
    ncsnr[::3] = 0.0  # a third of the vertices have no ceiling
    np.save(path, ncsnr)
    out = tmp_path / "run"
    assert encode(data, out).exit_code == 0
    folder = out / "encoding" / "subj01" / "lh" / "V1v" / "untuned"
    summary = json.loads((folder / "summary.json").read_text())
    r = np.load(folder / "voxel_r.npy").astype(np.float64)
    rows = np.load(folder / "test_rows.npy")
    repeats = np.load(data / "subj01" / "ground_truth" / "n_repeats.npy")[rows]
    from cortexcl.data.algonauts import load_subject

    columns = load_subject(data, 1, progress=False).roi_indices("lh", "V1v")
    nc = noise_ceiling(ncsnr[columns], repeats)
    # The challenge's code: ncsnr 0 -> 1e-14, so a vertex with r > 0 scores 100.
    tiny = np.where(ncsnr[columns] == 0, 1e-14, ncsnr[columns]) ** 2
    challenge = np.minimum(100 * np.clip(r, 0, None) ** 2 / (tiny / (tiny + np.mean(
        1 / repeats))), 100)
    assert summary["n_zero_ceiling"] == int(np.sum(ncsnr[columns] == 0)) > 0
    np.testing.assert_allclose(summary["mean_nc_score"], challenge.mean(), rtol=1e-5)
    np.testing.assert_allclose(nc_normalized_score(r, nc), challenge, rtol=1e-5, atol=1e-9)


def test_json_has_no_nan(tmp_path):
    path = atomic_write_json(tmp_path / "s.json", {"a": float("nan"), "b": [np.float32("inf"),
                                                                            1.5]})
    assert json.loads(path.read_text()) == {"a": None, "b": [None, 1.5]}
    assert "NaN" not in path.read_text()


def test_random_init_is_announced_and_stale_figures_go(tmp_path, data_root):
    out = tmp_path / "run"
    result = encode(data_root, out)
    assert "started from random weights (weights: none)" in " ".join(result.output.split())
    table = read_table(out / "tables" / "encoding.csv")
    assert table["initial_weights"].tolist() == ["none (random init, seed 0)"]
    (out / "figures").mkdir()
    stale = out / "figures" / "surface_r_cl.png"
    Image.new("RGB", (4, 4)).save(stale)
    build_report(out)  # an encode run records its data root: surface maps are drawn
    assert not stale.exists()
    names = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert "surface_r_untuned.png" in names
    page = (out / "report.html").read_text()
    assert "Random initial weights" in page and "names no data_root" not in page
    for name in names:  # every figure carries the red banner on its first rows
        top = np.asarray(Image.open(out / "figures" / name).convert("RGB"))[:30].astype(int)
        red = (top[..., 0] > 150) & (top[..., 1] < 80) & (top[..., 2] < 80)
        assert red.sum() > 20, name


def test_dry_run_of_a_new_simulation_writes_nothing(tmp_path, cache):
    config = tmp_path / "study.yaml"
    config.write_text("name: s\nseeds: [0]\nbackbone: {weights: none}\nmethods: [untuned, cl]\n"
                      "data: {simulate: {n_images: 30, image_size: 32, roi_scale: 0.05, "
                      "seed: 7}}\nselection: {hemispheres: [lh], rois: [V1v]}\n")
    before = sorted(cache.rglob("*"))
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(tmp_path / "run"),
                                      "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "to do" in result.output and "4 jobs: 0 done, 4 to do" in result.output
    assert sorted(cache.rglob("*")) == before and not (tmp_path / "run").exists()

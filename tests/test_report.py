"""Tests of the run report: figures, surface values and the HTML page."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cortexcl.atomic import atomic_save_npy, atomic_write_json, atomic_write_text
from cortexcl.data.algonauts import load_subject
from cortexcl.data.simulate import simulate_subject
from cortexcl.encoding.pipeline import TEST_PREDICTION, TEST_RESPONSES, TEST_ROWS
from cortexcl.errors import InputError
from cortexcl.evaluation.single_subject import comparison_table, write_tables
from cortexcl.metrics import pearson_r
from cortexcl.models.backbones import CANDIDATE_LAYERS
from cortexcl.report import build_report
from cortexcl.report.figures import (
    FSAVERAGE5_N_VERTICES,
    RunResults,
    roi_summary,
    surface_values,
)
from cortexcl.report.html import comparison_frame, format_number
from cortexcl.rundir import RunDirectory

ROIS = ("V1v", "hV4", "early")
CONFIG = "name: report-test\nseeds: [0]\nbackbone: {weights: none}\nmethods: [untuned, cl]\n"


N_TEST = 12


def fake_test_outputs(n: int, methods: tuple[str, ...],
                 rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Measured test responses of n vertices and each backbone's predictions of them.

    Tuned backbones predict a little better than the untuned one (less noise).
    """
    responses = rng.normal(size=(N_TEST, n)).astype(np.float32)
    noise = rng.normal(0.0, 1.5, (N_TEST, n))
    predictions = {method: (responses + noise * (1.0 if method == "untuned" else 0.8)
                            + rng.normal(0.0, 0.3, (N_TEST, n))).astype(np.float32)
                   for method in methods}
    return responses, predictions


def make_run(root: Path, data_root: Path | None, methods: tuple[str, ...] = ("untuned", "cl"),
             with_models: bool = True, seed: int = 0, tuning_seeds: tuple[int, ...] = (0,)
             ) -> Path:
    """Write a run directory as the study runner does, with random results.

    Encoding results of every ROI × method of subj01 (sizes from the simulated subject when
    ``data_root`` is given; tuned methods once per tuning seed), train logs of the tuned
    backbones, an excluded ROI, the tables (by the real table writer), config.yaml and
    manifest.json.
    """
    rng = np.random.default_rng(seed)
    run = RunDirectory(root)
    subject = load_subject(data_root, 1, progress=False) if data_root is not None else None
    results = [(method, None if method == "untuned" else tuning_seed)
               for method in methods
               for tuning_seed in ((None,) if method == "untuned" else tuning_seeds)]
    for hemisphere in ("lh", "rh"):
        for roi in ROIS:
            n = subject.roi_indices(hemisphere, roi).size if subject else 25 + 5 * len(roi)
            responses, predictions = fake_test_outputs(n, methods, rng)
            for method, tuning_seed in results:
                prediction = predictions[method] + (
                    0.0 if tuning_seed is None else rng.normal(0.0, 0.2, (N_TEST, n)))
                r = pearson_r(responses, prediction).astype(np.float32)
                out = run.encoding_dir("subj01", hemisphere, roi, method, tuning_seed)
                atomic_save_npy(out / "voxel_r.npy", r)
                atomic_save_npy(out / TEST_ROWS, np.arange(30, 30 + N_TEST))
                atomic_save_npy(out / TEST_RESPONSES, responses)
                atomic_save_npy(out / TEST_PREDICTION, prediction.astype(np.float32))
                atomic_save_npy(out / "alphas.npy", np.full(n, 100.0, dtype=np.float32))
                scores = rng.uniform(0.0, 0.4, len(CANDIDATE_LAYERS))
                layers = pd.DataFrame({"layer": CANDIDATE_LAYERS, "mean_val_r": scores,
                                       "median_val_r": scores, "n_components": 20,
                                       "selected": np.arange(scores.size) == scores.argmax()})
                atomic_write_text(out / "layer_scores.csv", layers.to_csv(index=False))
                models = run.path("models", "subj01", hemisphere, roi, method,
                                  f"seed-{tuning_seed}")
                weights = ("none (random init, seed 0)" if method == "untuned"
                           else str(models / "backbone.safetensors"))
                atomic_write_json(out / "summary.json", {
                    "subject": "subj01", "hemisphere": hemisphere, "roi": roi, "method": method,
                    "seed": tuning_seed,
                    "n_vertices": n, "best_layer": CANDIDATE_LAYERS[int(scores.argmax())],
                    "mean_r": float(r.mean()), "median_r": float(np.median(r)),
                    "mean_val_r": float(scores.max()), "weights": weights, "protocol": "clean",
                    "split_seed": 0, "refit": "train+val", "n_train": 22, "n_val": 3,
                    "n_test": N_TEST})
                if with_models and method != "untuned":
                    epochs = np.arange(1, 7)
                    scale = 1.0 + 0.3 * ROIS.index(roi) + 0.1 * tuning_seed
                    log = pd.DataFrame({"epoch": epochs, "train_loss": scale * 5.0 / epochs,
                                        "val_loss": scale * 5.5 / epochs + 0.1 * epochs,
                                        "seconds": 1.0, "images_per_s": 100.0})
                    atomic_write_text(models / "train_log.csv", log.to_csv(index=False))
    excluded = pd.DataFrame([{"subject": "subj01", "hemisphere": "lh", "roi": "OWFA",
                              "method": "untuned", "n_vertices": 6,
                              "reason": "fewer than 20 vertices"}])
    atomic_write_text(run.path("jobs", "encode", "untuned", "subj01", "all", "all",
                               "excluded.csv"), excluded.to_csv(index=False))
    write_tables(run)
    atomic_write_text(run.path("config.yaml"), CONFIG)
    manifest = {"created": "2024-01-01T00:00:00+00:00", "weights": "none",
                "versions": {"cortexcl": "0.1.0"}}
    if data_root is not None:
        manifest["data_root"] = str(data_root)
    atomic_write_json(run.path("manifest.json"), manifest)
    return root


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    simulate_subject(root, n_images=30, image_size=32, roi_scale=0.02, progress=False)
    return root


@pytest.fixture(scope="module")
def full_report(tmp_path_factory, data_root) -> Path:
    root = make_run(tmp_path_factory.mktemp("run") / "run", data_root)
    return build_report(root)


def embedded_images(page: str) -> list[bytes]:
    return [base64.b64decode(data)
            for data in re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)]


def check_png(path: Path) -> None:
    """The PNG decodes, has a sensible size and is not blank."""
    assert path.stat().st_size > 8_000, path
    with Image.open(path) as image:
        image.load()
        pixels = np.asarray(image.convert("L"), dtype=float)
    assert min(pixels.shape) > 200, path
    assert pixels.std() > 10, path


def test_full_report_writes_and_embeds_every_figure(full_report: Path):
    run = full_report.parent
    assert full_report == run / "report.html"
    names = sorted(p.stem for p in (run / "figures").glob("*.png"))
    assert names == ["layer_matrix", "roi_bars", "surface_delta_cl", "surface_r_cl",
                     "surface_r_untuned", "training_curves", "vertex_scatter"]
    page = full_report.read_text()
    images = embedded_images(page)
    assert len(images) == len(names)
    for name in names:
        path = run / "figures" / f"{name}.png"
        check_png(path)
        assert path.read_bytes() in images, name
        assert f"<figure id='{name}'>" in page
    assert not list((run / "figures").glob(".*"))  # no temporary files left


def test_full_report_content(full_report: Path):
    page = full_report.read_text()
    table = pd.read_csv(full_report.parent / "tables" / "encoding.csv")
    assert "cortexcl report: report-test" in page
    assert "class='warning'" in page and "Random initial weights" in page
    assert "<h3>Excluded ROIs</h3>" in page and "OWFA" in page
    assert "<h3>ROI groups</h3>" in page
    assert "weights: none" in page  # config.yaml shown
    assert "6 tuned checkpoints in models/, tuned from weights: none" in page
    assert "<td>none (random init, seed 0)</td>" in page
    for value in table["mean_r"]:
        assert f"{value:.3f}" in page
    assert "vertices beyond fsaverage5 dropped" in page
    assert page.count("<figcaption>") == 7


def test_report_shows_the_spread_over_tuning_seeds(tmp_path):
    root = make_run(tmp_path / "run", None, methods=("untuned", "cl", "rt"),
                    tuning_seeds=(0, 1, 2))
    page = build_report(root).read_text()
    seeds = pd.read_csv(root / "tables" / "seeds.csv")
    assert set(seeds["method"]) == {"cl", "rt"} and (seeds["n_seeds"] == 3).all()
    assert "<h3>Spread over tuning seeds</h3>" in page
    assert "dots: each of the 3 tuning seeds of a tuned backbone" in page
    assert "Each of the 3 tuning seeds draws its own curves (markers)" in page
    assert "cl vs untuned max p over seeds" in page  # the comparison shows the weakest seed
    table = pd.read_csv(root / "tables" / "encoding.csv")
    for _, part in table[table.method == "cl"].groupby(["hemisphere", "roi"]):
        assert f"{part['mean_r'].mean():.3f}" in page  # the comparison's mean over seeds
    for name in ("roi_bars", "training_curves", "layer_matrix", "vertex_scatter"):
        check_png(root / "figures" / f"{name}.png")


def test_untuned_only_without_models_or_data_root(tmp_path):
    root = make_run(tmp_path / "run", None, methods=("untuned",), with_models=False)
    page = build_report(root).read_text()
    names = sorted(p.stem for p in (root / "figures").glob("*.png"))
    assert names == ["layer_matrix", "roi_bars"]
    for name in names:
        check_png(root / "figures" / f"{name}.png")
    assert len(embedded_images(page)) == 2
    assert "no tuned models" in page
    assert "Surface maps skipped: the run&#x27;s manifest.json names no data_root." in page


def test_unreadable_data_root_gives_a_note(tmp_path):
    root = make_run(tmp_path / "run", None, with_models=False)
    manifest = root / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"weights"', '"data_root": "/nonexistent",'
                                                     ' "weights"'))
    page = build_report(root).read_text()
    assert "Surface maps skipped: cannot read subj01 in /nonexistent" in page
    assert "vertex_scatter" in page and "surface_r_" not in page


def test_surface_values_places_averages_and_drops(tmp_path, data_root):
    root = make_run(tmp_path / "run", data_root, with_models=False)
    results = RunResults(root)
    subject = load_subject(data_root, 1, progress=False)
    r_maps, delta_maps, notes = surface_values(results, subject, "subj01")
    assert set(r_maps) == {"untuned", "cl"} and set(delta_maps) == {"cl"}
    for hemisphere in ("lh", "rh"):
        to_fsaverage = subject.vertex_to_fsaverage(hemisphere)
        expected_sum = np.zeros(FSAVERAGE5_N_VERTICES)
        expected_count = np.zeros(FSAVERAGE5_N_VERTICES)
        for roi in ROIS:
            vertices = to_fsaverage[subject.roi_indices(hemisphere, roi)]
            r = results.voxel_r("subj01", hemisphere, roi, "cl")
            for vertex, value in zip(vertices, r, strict=True):
                expected_sum[vertex] += value
                expected_count[vertex] += 1
        assert (expected_count > 1).any()  # "early" contains V1v: overlaps are averaged
        inside = expected_count > 0
        np.testing.assert_allclose(r_maps["cl"][hemisphere][inside],
                                   expected_sum[inside] / expected_count[inside], rtol=1e-6)
        assert not r_maps["cl"][hemisphere][~inside].any()
    assert "lh: 0 vertices beyond fsaverage5 dropped" in notes[-1]

    class Shifted:
        """The subject with its first 4 lh V1v vertices moved beyond fsaverage5."""

        def roi_indices(self, hemisphere, roi):
            return subject.roi_indices(hemisphere, roi)

        def vertex_to_fsaverage(self, hemisphere):
            index = subject.vertex_to_fsaverage(hemisphere)
            if hemisphere == "lh":
                index[subject.roi_indices("lh", "V1v")[:4]] += 20_000
            return index

    shifted, shifted_delta, notes = surface_values(results, Shifted(), "subj01")
    assert "lh: 4 vertices beyond fsaverage5 dropped" in notes[-1]
    assert "rh: 0 vertices beyond fsaverage5 dropped" in notes[-1]
    np.testing.assert_array_equal(shifted["cl"]["rh"], r_maps["cl"]["rh"])
    delta = (results.voxel_r("subj01", "rh", "hV4", "cl")
             - results.voxel_r("subj01", "rh", "hV4", "untuned"))
    hv4 = subject.vertex_to_fsaverage("rh")[subject.roi_indices("rh", "hV4")]
    alone = np.bincount(np.concatenate([
        subject.vertex_to_fsaverage("rh")[subject.roi_indices("rh", roi)] for roi in ROIS]),
        minlength=FSAVERAGE5_N_VERTICES)[hv4] == 1
    np.testing.assert_allclose(shifted_delta["cl"]["rh"][hv4[alone]], delta[alone], rtol=1e-6)


def test_comparison_frame_known_answer():
    table = pd.DataFrame({
        "subject": ["subj01"] * 6, "hemisphere": ["lh"] * 6,
        "roi": ["hV4", "hV4", "hV4", "V1v", "V1v", "V1v"],
        "method": ["untuned", "cl", "rt"] * 2, "n_vertices": [30] * 3 + [40] * 3,
        "mean_r": [0.2, 0.3, 0.25, 0.5, 0.4, 0.45],
        "pct_improved_vs_untuned": [np.nan, 70.0, 60.0, np.nan, 20.0, 30.0],
        "delta_r_vs_untuned": [np.nan, 0.1, 0.05, np.nan, -0.1, -0.05],
        "p_vs_untuned": [np.nan, 1e-5, 0.02, np.nan, 0.5, 0.6],
        "p_holm_vs_untuned": [np.nan, 2e-5, 0.04, np.nan, 1.0, 1.0],
        "pct_improved_vs_rt": [np.nan, 55.0, np.nan, np.nan, 45.0, np.nan],
        "delta_r_vs_rt": [np.nan, 0.05, np.nan, np.nan, -0.05, np.nan],
        "p_vs_rt": [np.nan, 0.04, np.nan, np.nan, 0.3, np.nan],
        "p_holm_vs_rt": [np.nan, 0.08, np.nan, np.nan, 0.3, np.nan]})
    frame, best = comparison_frame(table)
    assert list(frame.columns) == [
        "subject", "hemisphere", "roi", "vertices", "r untuned", "r cl", "r rt",
        "cl % > untuned", "cl − untuned Δr", "cl vs untuned p", "cl vs untuned Holm p",
        "rt % > untuned", "rt − untuned Δr", "rt vs untuned p", "rt vs untuned Holm p",
        "cl % > rt", "cl − rt Δr", "cl vs rt p", "cl vs rt Holm p"]
    assert list(frame["roi"]) == ["V1v", "hV4"]  # ROI order of the ROI classes
    assert list(frame["vertices"]) == [40, 30]
    np.testing.assert_allclose(frame["r cl"], [0.4, 0.3])
    np.testing.assert_allclose(frame["cl % > rt"], [45.0, 55.0])
    np.testing.assert_allclose(frame["cl vs rt Holm p"], [0.3, 0.08])
    assert best == {0: {"r untuned"}, 1: {"r cl"}}
    assert format_number("cl vs untuned p", 1e-5) == "1.0e-05"
    assert format_number("cl vs untuned Holm p", 0.0213) == "0.021"
    assert format_number("cl % > untuned", 70.0) == "70.0"
    assert format_number("r cl", 0.30004) == "0.300"


def test_terminal_comparison_table_shows_the_image_unit_tests():
    table = pd.DataFrame({
        "subject": "subj01", "hemisphere": "lh", "roi": ["V1v"] * 3,
        "method": ["untuned", "cl", "rt"], "mean_r": [0.2, 0.3, 0.25],
        "pct_improved_vs_untuned": [np.nan, 70.0, 60.0],
        "delta_r_vs_untuned": [np.nan, 0.1, 0.05], "p_vs_untuned": [np.nan, 0.001, 0.02],
        "p_holm_vs_untuned": [np.nan, 0.002, 0.02],
        "pct_improved_vs_rt": [np.nan, 55.0, np.nan], "delta_r_vs_rt": [np.nan, 0.05, np.nan],
        "p_vs_rt": [np.nan, 0.04, np.nan], "p_holm_vs_rt": [np.nan, 0.04, np.nan]})
    wide = comparison_table(table)
    assert list(wide.columns) == ["hemisphere", "roi", "cl", "rt", "untuned",
                                  "CL>untuned %", "Δr (untuned)", "p (untuned)",
                                  "p Holm (untuned)", "CL>RT %", "Δr (RT)", "p (RT)",
                                  "p Holm (RT)"]
    assert wide.iloc[0, 5:].tolist() == [70.0, 0.1, 0.001, 0.002, 55.0, 0.05, 0.04, 0.04]


def test_roi_summary_across_subjects():
    table = pd.DataFrame({"subject": ["subj01", "subj02", "subj01", "subj02", "subj01"],
                          "hemisphere": "lh", "roi": ["V1v"] * 4 + ["hV4"],
                          "method": ["cl", "cl", "untuned", "untuned", "cl"],
                          "mean_r": [0.2, 0.4, 0.1, 0.1, 0.3]})
    summary = roi_summary(table)
    assert summary.loc[("lh", "V1v", "cl")].tolist() == pytest.approx([0.3, np.sqrt(0.02), 2])
    assert summary.loc[("lh", "V1v", "untuned")].tolist() == pytest.approx([0.1, 0.0, 2])
    assert np.isnan(summary.loc[("lh", "hV4", "cl"), "sd"])


def test_errors_are_one_line(tmp_path):
    with pytest.raises(InputError, match=r"encoding\.csv: no results table") as error:
        build_report(tmp_path)
    assert "\n" not in str(error.value)
    root = make_run(tmp_path / "run", None, methods=("untuned",), with_models=False)
    with pytest.raises(InputError, match="subj02 has no results"):
        build_report(root, subject=2)

"""Tests of studies: the job plan, a whole tiny study, reruns, failures, and kill-and-resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from cortexcl.config import StudyConfig
from cortexcl.data.algonauts import load_subject
from cortexcl.encoding.pipeline import TEST_PREDICTION, TEST_RESPONSES, TEST_ROWS
from cortexcl.errors import InputError
from cortexcl.models.backbones import load_alexnet
from cortexcl.rundir import RunDirectory
from cortexcl.statistics import compare_predictions, derive_seed
from cortexcl.study import runner
from cortexcl.study.executors import SerialExecutor
from cortexcl.study.jobs import DONE, Job, plan_jobs
from cortexcl.study.runner import StudyContext, prepare_data, run_study
from cortexcl.tuning.checkpoints import BACKBONE, META, load_backbone
from cortexcl.tuning.trainer import CHECKPOINT, TRAIN_LOG
from study_helpers import (
    FROZEN,
    TIMEOUT,
    CortexclProcesses,
    assert_same_results,
    fill_cache,
    finish,
    logged_epochs,
    study,
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One cache for the module: the subject is simulated and its images decoded once."""
    return fill_cache(tmp_path_factory.mktemp("study-cache"))


@pytest.fixture(autouse=True)
def _shared_cache(_isolated_cache, monkeypatch, cache):
    monkeypatch.setenv("CORTEXCL_CACHE", str(cache))


@pytest.fixture(scope="module")
def finished(tmp_path_factory, cache):
    """The tiny study run once to the end: (run folder, jobs, report)."""
    root = tmp_path_factory.mktemp("study") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CORTEXCL_CACHE", str(cache))
        jobs, report = run_study(study(), root, progress=False, announce=lambda _: None)
    return root, jobs, report


def keys(jobs: list[Job]) -> list[str]:
    return [job.key for job in jobs]


def test_plan_orders_jobs_and_skips_small_rois():
    config = study(methods=["untuned", "cl", "rt", "pooled-avg", "pooled-const"],
                   data__subjects=[1, 2], selection__hemispheres=["lh", "rh"],
                   selection__rois=["V1v", "V2d"], selection__min_vertices=20)
    sizes = {("subj02", "rh", "V2d"): 19}  # one ROI just below the minimum
    jobs = plan_jobs(config, lambda s, h, r: sizes.get((s, h, r), 20))

    kinds = [job.kind for job in jobs]
    assert kinds == sorted(kinds, key=["tune", "tune-pooled", "encode", "aggregate"].index)
    position = {job.key: i for i, job in enumerate(jobs)}
    assert len(position) == len(jobs)
    for job in jobs:
        assert all(position[dependency] < position[job.key] for dependency in job.depends_on)

    entries = [(s, h, r) for s in ("subj01", "subj02") for h in ("lh", "rh")
               for r in ("V1v", "V2d") if (s, h, r) != ("subj02", "rh", "V2d")]
    tuned = [f"tune/{m}/{s}/{h}/{r}/seed-0" for m in ("cl", "rt") for s, h, r in entries]
    pooled = [f"tune-pooled/{m}/pooled/{h}/{r}/seed-0" for m in ("pooled-avg", "pooled-const")
              for h in ("lh", "rh") for r in ("V1v", "V2d")]
    assert keys(jobs[:len(tuned) + len(pooled)]) == tuned + pooled

    encodes = [job for job in jobs if job.kind == "encode"]
    assert [job.key for job in encodes if job.method == "untuned"] == [
        "encode/untuned/subj01/all/all", "encode/untuned/subj02/all/all"]
    for job in encodes:
        if job.method in ("cl", "rt"):
            assert job.depends_on == (f"tune/{job.method}/{job.subject}/{job.hemisphere}/"
                                      f"{job.roi}/seed-0",)
        elif job.method != "untuned":
            # Pooled results are compared with baselines re-scored on the same test images.
            baselines = (f"encode/untuned/{job.subject}/all/all",
                         f"encode/rt/{job.subject}/{job.hemisphere}/{job.roi}/seed-0")
            assert job.depends_on == (f"tune-pooled/{job.method}/pooled/{job.hemisphere}/"
                                      f"{job.roi}/seed-0", *baselines)
    # The pooled model of rh V2d serves only the subject that has enough vertices there.
    assert [job.subject for job in encodes
            if (job.method, job.hemisphere, job.roi) == ("pooled-avg", "rh", "V2d")] == ["subj01"]
    assert jobs[-1].key == "aggregate/all/all/all/all"
    assert jobs[-1].depends_on == tuple(job.key for job in encodes)


def test_plan_cross_subject_jobs():
    config = study(methods=["untuned", "cl", "rt"], data__subjects=[1, 2, 3],
                   selection__rois=["V1v"], evaluation__cross_subject=True)
    sizes = {("subj03", "lh", "V1v"): 10}  # subj03 lacks the ROI: no model, no target
    jobs = plan_jobs(config, lambda s, h, r: sizes.get((s, h, r), 40))
    cross = [job for job in jobs if job.kind == "cross"]
    assert keys(cross) == ["cross/cl-from-subj01/subj02/lh/V1v/seed-0",
                           "cross/cl-from-subj02/subj01/lh/V1v/seed-0"]
    assert cross[0].depends_on == ("tune/cl/subj01/lh/V1v/seed-0",
                                   "encode/untuned/subj02/all/all")
    assert set(keys(cross)) <= set(jobs[-1].depends_on)


def test_job_settings_follow_the_sections_they_depend_on():
    def settings(config):
        return {job.key: job.settings for job in plan_jobs(config, lambda *_: 40)}

    base = settings(study(methods=["untuned", "cl", "rt", "pooled-avg", "pooled-const"]))

    def changed(**changes) -> set[str]:
        new = settings(study(methods=["untuned", "cl", "rt", "pooled-avg", "pooled-const"],
                             **changes))
        return {"/".join(key.split("/")[:2]) for key in new
                if new[key] != base.get(key, new[key])}

    cl_jobs = {"tune/cl", "encode/cl", "aggregate/all"}
    assert changed(tuning__cl={"epochs": 3, "frozen": FROZEN}) == cl_jobs
    assert changed(tuning__rt={"epochs": 3}) == {"tune/rt", "encode/rt", "aggregate/all"}
    # Only the contrastive encodes compute the mutual-information bound.
    assert changed(evaluation={"temperature_scan": True}) == {
        "encode/cl", "encode/pooled-avg", "encode/pooled-const", "aggregate/all"}
    # The "const" hidden size of the pooled model depends on every selected ROI.
    assert "tune-pooled/pooled-const" in changed(selection__rois=["V1v", "hV4", "V2d"])
    assert "tune-pooled/pooled-avg" not in changed(selection__rois=["V1v", "hV4", "V2d"])
    assert changed(execution={"device": "cpu", "executor": "ray"}) == set()
    assert changed(evaluation={"statistics": {"n_permutations": 500}}) == {"aggregate/all"}
    assert changed(data__image_size=96) >= {"tune/cl", "tune/rt", "encode/untuned"}
    # Another tuning seed adds jobs and leaves the finished seed's jobs as they are; another
    # split changes every job.
    assert changed(seeds=[0, 1]) == {"aggregate/all"}
    assert changed(split_seed=1) == set(map("/".join, {tuple(k.split("/")[:2]) for k in base}))


def test_tiny_study_end_to_end(finished):
    root, jobs, report = finished
    assert report.ok and report.done == keys(jobs) and not report.skipped
    assert keys(jobs) == ["tune/cl/subj01/lh/V1v/seed-0", "tune/rt/subj01/lh/V1v/seed-0",
                          "encode/untuned/subj01/all/all", "encode/cl/subj01/lh/V1v/seed-0",
                          "encode/rt/subj01/lh/V1v/seed-0", "aggregate/all/all/all/all"]

    table = pd.read_csv(root / "tables" / "encoding.csv")
    assert sorted(zip(table.roi, table.method, strict=True)) == [
        ("V1v", "cl"), ("V1v", "rt"), ("V1v", "untuned")]
    assert np.isfinite(table.mean_r).all() and (table.mean_r.abs() <= 1).all()
    assert (table.n_vertices == 36).all() and (table.subject == "subj01").all()
    excluded = pd.read_csv(root / "tables" / "excluded.csv")
    assert excluded.roi.tolist() == ["hV4"]
    cl = table.set_index("method").loc["cl"]
    check_comparisons(root, table)
    assert np.isfinite(cl["mi_bits"])
    # One subject: the common K is its whole test part, and the bound is the full one.
    assert cl["mi_common_k"] == cl["n_test"]
    assert cl["mi_bits_common_k"] == pytest.approx(cl["mi_bits"], abs=1e-5)

    for method in ("cl", "rt"):
        model = root / "models" / "subj01" / "lh" / "V1v" / method / "seed-0"
        assert {BACKBONE, META, TRAIN_LOG, DONE} <= {p.name for p in model.iterdir()}
        assert not (model / CHECKPOINT).exists()
        meta = json.loads((model / META).read_text())
        assert (meta["method"], meta["roi"], meta["n_vertices"]) == (method, "V1v",
                                                                     {"subj01": 36})
        assert meta["n_train"] == {"subj01": 48}
        assert pd.read_csv(model / TRAIN_LOG)["epoch"].tolist() == [1, 2]
    assert not list(root.rglob(CHECKPOINT))
    stored = load_file(root / "models/subj01/lh/V1v/cl/seed-0" / BACKBONE)
    assert "classifier.1.weight" not in stored  # frozen: not on disk, rebuilt from the base
    tuned = load_backbone(root / "models/subj01/lh/V1v/cl/seed-0").state_dict()
    untouched = load_alexnet("none", seed=0).state_dict()
    assert torch.equal(tuned["classifier.1.weight"], untouched["classifier.1.weight"])
    assert not torch.equal(tuned["features.0.weight"], untouched["features.0.weight"])
    assert torch.equal(tuned["features.0.weight"], stored["features.0.weight"])

    assert (root / "report.html").stat().st_size > 1000
    assert {"config.yaml", "manifest.json"} <= {p.name for p in root.iterdir()}
    assert yaml.safe_load((root / "config.yaml").read_text())["name"] == "tiny"


def _result(method: str) -> str:
    """A result's folder below the ROI's: tuned backbones under their (only) seed, 0."""
    return method if method == "untuned" else f"{method}/seed-0"


def check_comparisons(root: Path, table: pd.DataFrame) -> None:
    """encoding.csv compares every backbone with untuned and RT on the test images, with the
    statistics recomputed here from the result folders and the recorded seeds."""
    assert (table["p_unit"] == "test image").all()
    for baseline in ("untuned", "rt"):
        columns = [f"{name}_vs_{baseline}" for name in (
            "delta_r", "ci_low", "ci_high", "p", "p_holm", "p_bh", "pct_improved", "n_test")]
        assert set(columns) <= set(table.columns)
        for row in table.itertuples():
            values = table.loc[row.Index, columns]
            if row.method == baseline or row.method == "untuned":
                # The RT rows hold untuned vs RT, once per tuning seed.
                assert values.isna().all()
                continue
            folder = root / "encoding" / "subj01" / "lh" / "V1v"
            mine, theirs = (np.load(folder / name / TEST_PREDICTION)
                            for name in (_result(row.method), _result(baseline)))
            responses = np.load(folder / _result(row.method) / TEST_RESPONSES)
            seed = derive_seed(0, f"subj01/lh/V1v/{_result(row.method)}/vs/{baseline}")
            expected = compare_predictions(responses, mine, theirs, seed=seed)
            assert values.tolist() == pytest.approx(
                [expected.delta_r, expected.ci_low, expected.ci_high, expected.p,
                 expected.p, expected.p, expected.pct_improved, expected.n_images])
    # The saved test responses are the subject's measured responses of those rows.
    subject = load_subject(prepare_data(study(), progress=False), 1, image_size=64,
                           progress=False)
    result = root / "encoding" / "subj01" / "lh" / "V1v" / "cl" / "seed-0"
    np.testing.assert_array_equal(np.load(result / TEST_RESPONSES),
                                  subject.responses("lh", "V1v")[np.load(result / TEST_ROWS)])


def test_second_run_skips_every_job(finished):
    root, jobs, _ = finished
    tables = sorted((root / "tables").iterdir())
    before = [path.read_bytes() for path in tables]
    events = []
    again, report = run_study(study(), root, progress=False, announce=events.append)
    assert keys(again) == keys(jobs)
    assert report.skipped == keys(jobs) and not report.done and report.ok
    assert sorted((root / "tables").iterdir()) == tables
    assert [path.read_bytes() for path in tables] == before
    assert not events  # skipped jobs are not announced without progress output


def copy_run(root: Path, destination: Path) -> Path:
    """A copy of a run without the large weight files."""
    return Path(shutil.copytree(root, destination,
                                ignore=shutil.ignore_patterns("*.safetensors")))


def rerun_decisions(config: StudyConfig, root: Path) -> tuple[list[str], list[str]]:
    """Which jobs of ``config`` a run in ``root`` would run and which it would skip."""
    context = StudyContext(config, RunDirectory(root), prepare_data(config, progress=False),
                           progress=False)
    ran = []
    report = SerialExecutor().run(plan_jobs(config, context.roi_size),
                                  lambda job: ran.append(job.key), root)
    assert report.done == ran
    return report.done, report.skipped


def test_changed_tuning_reruns_tuning_and_its_encoding_only(finished, tmp_path):
    root = copy_run(finished[0], tmp_path / "run")
    stale = root / "models/subj01/lh/V1v/cl/seed-0/train_log.csv"
    assert stale.is_file()
    done, skipped = rerun_decisions(
        study(tuning__cl={"epochs": 3, "batch_size": 16, "frozen": FROZEN}), root)
    assert done == ["tune/cl/subj01/lh/V1v/seed-0", "encode/cl/subj01/lh/V1v/seed-0",
                    "aggregate/all/all/all/all"]
    assert skipped == ["tune/rt/subj01/lh/V1v/seed-0", "encode/untuned/subj01/all/all",
                       "encode/rt/subj01/lh/V1v/seed-0"]
    assert not stale.exists()  # the model trained with the old settings was removed


def test_interrupted_job_with_other_settings_starts_afresh(tmp_path):
    root = tmp_path / "run"
    job = Job("tune", "cl", "subj01", "lh", "V1v", settings="old")

    def interrupted(job):
        (job.output_dir(root) / CHECKPOINT).write_text("half-trained")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        SerialExecutor().run([job], interrupted, root)
    checkpoint = job.output_dir(root) / CHECKPOINT
    seen = []

    def record(job):
        seen.append(checkpoint.exists())

    SerialExecutor().run([job], record, root)  # same settings: the checkpoint is resumed
    assert seen == [True]
    new = Job("tune", "cl", "subj01", "lh", "V1v", settings="new")
    SerialExecutor().run([new], record, root)  # other settings: never resumed
    assert seen == [True, False]


def test_failing_job_is_reported_and_blocks_only_its_dependents(tmp_path, monkeypatch):
    config = study(selection__rois=["V1v", "V2d"], methods=["untuned", "cl"])
    broken = "tune/cl/subj01/lh/V2d/seed-0"
    ran = []

    def run_job(job, context):
        if job.key == broken:
            raise RuntimeError("the GPU caught fire")
        ran.append(job.key)

    monkeypatch.setattr(runner, "run_job", run_job)
    events = []
    jobs, report = run_study(config, tmp_path / "run", progress=False,
                             announce=events.append)
    assert list(report.failed) == [broken]
    log = report.failed[broken]
    assert log == tmp_path / "run" / "logs" / "tune__cl__subj01__lh__V2d__seed-0.log"
    assert "RuntimeError: the GPU caught fire" in log.read_text()
    assert report.blocked == ["encode/cl/subj01/lh/V2d/seed-0", "aggregate/all/all/all/all"]
    assert ran == report.done == ["tune/cl/subj01/lh/V1v/seed-0", "encode/untuned/subj01/all/all",
                                  "encode/cl/subj01/lh/V1v/seed-0"]
    assert f"  failed  {broken}" in events and not report.ok

    # Fixed, the next run does what is left and nothing else.
    monkeypatch.setattr(runner, "run_job", lambda job, context: ran.append(job.key))
    ran.clear()
    _, report = run_study(config, tmp_path / "run", progress=False, announce=lambda _: None)
    assert ran == [broken, "encode/cl/subj01/lh/V2d/seed-0", "aggregate/all/all/all/all"]
    assert report.ok


@pytest.fixture
def start_cortexcl(cache):
    """Start ``cortexcl ARGS`` in a subprocess with the shared cache; killed at teardown."""
    processes = CortexclProcesses(cache)
    yield processes.start
    processes.close()


def test_killed_study_resumes_to_the_same_result(tmp_path, start_cortexcl):
    config = study(methods=["cl"], selection__rois=["V1v"],
                   tuning__cl={"epochs": 4, "batch_size": 16, "frozen": FROZEN})
    config_file = tmp_path / "study.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    model = Path("models/subj01/lh/V1v/cl/seed-0")

    # The uninterrupted run goes on beside the one that is killed and resumed.
    uninterrupted = start_cortexcl("run", config_file, "--out", reference,
                                   stderr=tmp_path / "reference.log")
    process = start_cortexcl("run", config_file, "--out", killed, stderr=tmp_path / "killed.log")
    deadline = time.monotonic() + TIMEOUT
    while logged_epochs(killed / model / TRAIN_LOG) < 2:
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail("no second epoch before the study ended:\n"
                        + (tmp_path / "killed.log").read_text()[-3000:])
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL
    assert 2 <= logged_epochs(killed / model / TRAIN_LOG) < 4
    assert (killed / model / CHECKPOINT).is_file()
    assert not (killed / model / BACKBONE).exists() and not (killed / model / DONE).exists()

    resumed = start_cortexcl("run", config_file, "--out", killed, stderr=tmp_path / "resumed.log")
    finish(resumed, tmp_path / "resumed.log")
    finish(uninterrupted, tmp_path / "reference.log")

    assert_same_results(killed, reference, [model])
    assert len(pd.read_csv(killed / "tables" / "encoding.csv")) == 1


def test_runner_removes_feature_folders_of_killed_encodings(tmp_path):
    run = tmp_path / "run"
    leftovers = [run / ".features-abc", run / "cross_subject" / ".features-def"]
    for folder in leftovers:
        (folder / "features.2.npy").parent.mkdir(parents=True)
        (folder / "features.2.npy").write_bytes(b"partial")
    kept = run / "encoding" / "keep.txt"
    kept.parent.mkdir(parents=True)
    kept.write_text("results")
    runner._remove_leftovers(RunDirectory(run))  # what run_study does under the lock
    assert not any(folder.exists() for folder in leftovers)
    assert kept.read_text() == "results"


def test_published_protocol_with_shared_selection(tmp_path, cache, monkeypatch):
    """P-A: the untuned backbone's (layer, α) per ROI serves every backbone; the MI scan runs
    under the paper protocol, its β chosen on the reported pairs and labelled optimistic."""
    monkeypatch.setenv("CORTEXCL_CACHE", str(cache))
    monkeypatch.setattr(runner, "build_report", lambda *args, **kwargs: None)
    config = study(encoding__protocol="paper", encoding__selection="shared-untuned",
                   evaluation__temperature_scan=True)
    jobs, report = run_study(config, tmp_path / "run", progress=False, announce=lambda _: None)
    assert report.ok
    encode_cl = next(job for job in jobs if job.key == "encode/cl/subj01/lh/V1v/seed-0")
    assert "encode/untuned/subj01/all/all" in encode_cl.depends_on
    folder = tmp_path / "run" / "encoding" / "subj01" / "lh" / "V1v"
    choice = json.loads((folder / "untuned" / "shared_selection.json").read_text())
    for method in ("untuned", "cl/seed-0", "rt/seed-0"):
        summary = json.loads((folder / method / "summary.json").read_text())
        assert summary["best_layer"] == choice["layer"], method
        assert np.all(np.load(folder / method / "alphas.npy") == np.float32(choice["alpha"]))
    mutual_info = json.loads((folder / "cl/seed-0" / "mutual_info.json").read_text())
    assert mutual_info["mi_scan_chosen_on"] == "test (optimistic, as published)"
    assert np.isfinite(mutual_info["mi_scan_bits"])
    with pytest.raises(InputError, match="shared-untuned needs the untuned method"):
        study(methods=["cl"], encoding__selection="shared-untuned")

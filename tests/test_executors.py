"""Tests of the executors: serial, Ray and SLURM (submitit) give the same study, fail alike."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import ray
from typer.testing import CliRunner

from cortexcl.cli import app
from cortexcl.config import ExecutionConfig
from cortexcl.errors import InputError
from cortexcl.rundir import IDENTITY, RunDirectory
from cortexcl.study import runner
from cortexcl.study.executors import (
    RayExecutor,
    RequeueableJob,
    SerialExecutor,
    SlurmExecutor,
    make_executor,
)
from cortexcl.study.jobs import Job
from cortexcl.study.runner import run_study, study_identity
from cortexcl.tuning.trainer import CHECKPOINT
from study_helpers import assert_same_results, fill_cache, study

# The study: an untuned encoding and a CL tuning that does not depend on it, then the CL
# encoding and the aggregation; one thread per job, as on the 2-core test machine.
STUDY = {"methods": ["untuned", "cl"], "selection__rois": ["V1v"]}
MODEL = Path("models/subj01/lh/V1v/cl/seed-0")
TUNE, UNTUNED = "tune/cl/subj01/lh/V1v/seed-0", "encode/untuned/subj01/all/all"
LOCAL_SLURM = {"cluster": "local", "gpus_per_job": 0, "poll_s": 0.2}
EXECUTIONS = {
    "serial": {"executor": "serial"},
    "ray": {"executor": "ray"},
    "slurm-local": {"executor": "slurm", "slurm": LOCAL_SLURM},
    "slurm-debug": {"executor": "slurm", "slurm": {**LOCAL_SLURM, "cluster": "debug"}},
}


def _no_report(patch: pytest.MonkeyPatch) -> None:
    """The HTML report is not under test here, and it is slow to draw."""
    patch.setattr(runner, "build_report", lambda *args, **kwargs: None)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return fill_cache(tmp_path_factory.mktemp("executors-cache"))


@pytest.fixture(autouse=True)
def _shared_cache(_isolated_cache, monkeypatch, cache):
    monkeypatch.setenv("CORTEXCL_CACHE", str(cache))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # submitit's local jobs inherit it
    _no_report(monkeypatch)


@pytest.fixture(scope="module")
def ray_instance(cache):
    """One local Ray instance for the module (its workers inherit the cache and one thread)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CORTEXCL_CACHE", str(cache))
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    # The job runners defined here travel whole: workers cannot import this module.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    ray.shutdown()


@pytest.fixture(scope="module")
def serial_run(tmp_path_factory, cache) -> Path:
    """The study run by the serial executor."""
    root = tmp_path_factory.mktemp("serial") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CORTEXCL_CACHE", str(cache))
        _no_report(patch)
        _, report = run_study(study(**STUDY), root, progress=False, announce=lambda _: None)
    assert report.ok
    return root


def run(root: Path, execution: str, **changes):
    """Run the study with one of `EXECUTIONS`; (jobs, report, announced events)."""
    events: list[str] = []
    config = study(**{**STUDY, **changes}, execution=EXECUTIONS[execution])
    jobs, report = run_study(config, root, progress=False, announce=events.append)
    return jobs, report, [event.split() for event in events]


def break_tuning(root: Path) -> Path:
    """Leave a corrupt checkpoint where the CL tuning resumes from, so that the job fails."""
    checkpoint = root / MODEL / CHECKPOINT
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"not a checkpoint")
    (root / IDENTITY).write_text(json.dumps(study_identity(study(**STUDY))))  # this study's run
    return checkpoint


def check_isolated_failure(root: Path, execution: str, jobs: list[Job], report) -> None:
    """The tuning failed with its log; its dependents are blocked; the untuned encoding ran."""
    assert report.done == [UNTUNED] and not report.skipped and not report.ok
    assert list(report.failed) == [TUNE]
    log = report.failed[TUNE]
    assert log == root / "logs" / "tune__cl__subj01__lh__V1v__seed-0.log"
    assert "in _resume" in log.read_text()  # the traceback, from the worker
    assert ("submitit job" in log.read_text()) == execution.startswith("slurm")
    assert report.blocked == ["encode/cl/subj01/lh/V1v/seed-0", "aggregate/all/all/all/all"]
    assert [job.key for job in jobs if job.is_done(root)] == [UNTUNED]


@pytest.mark.parametrize("execution", ["ray", "slurm-local"])
def test_a_failure_is_isolated_and_the_fixed_run_gives_the_serial_results(
        execution, serial_run, ray_instance, tmp_path):
    root = tmp_path / "run"
    checkpoint = break_tuning(root)
    jobs, report, events = run(root, execution)
    check_isolated_failure(root, execution, jobs, report)
    # The tuning and the untuned encoding do not depend on each other: both start at once.
    assert sorted(events[:2]) == [["start", UNTUNED], ["start", TUNE]]

    checkpoint.unlink()
    jobs, report, events = run(root, execution)
    assert report.ok and report.skipped == [UNTUNED]
    assert sorted(report.done) == sorted(job.key for job in jobs if job.key != UNTUNED)
    for job in jobs:  # each job starts once the jobs it depends on are done
        if job.key in report.done:
            start = events.index(["start", job.key])
            assert all(events.index(["done", key]) < start
                       for key in job.depends_on if key in report.done)
    assert_same_results(root, serial_run, [MODEL])
    if execution == "slurm-local":
        assert list((root / "slurm").glob("*_submitted.pkl"))


@pytest.mark.parametrize("execution", ["serial", "slurm-debug"])
def test_a_failing_job_blocks_only_its_dependents(execution, tmp_path):
    root = tmp_path / "run"
    break_tuning(root)
    jobs, report, _ = run(root, execution)
    check_isolated_failure(root, execution, jobs, report)


def test_ray_retries_a_job_that_raised(ray_instance, tmp_path):
    root = tmp_path / "run"
    job = Job("tune", "cl", "s")
    events = []
    report = RayExecutor(retry_exceptions=1, progress=False).run(
        [job], _FailOnce(tmp_path / "failed-once"), root, lambda event, job: events.append(event))
    assert report.done == [job.key] and events == ["start", "retry", "done"]
    report = RayExecutor(progress=False).run([Job("tune", "cl", "t")], _FailOnce(
        tmp_path / "other"), root)
    assert list(report.failed) == ["tune/cl/t/all/all"]


class _FailOnce:
    """A job runner that raises on its first call in any process, then succeeds."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __call__(self, job: Job) -> None:
        if not self.marker.exists():
            self.marker.touch()
            raise RuntimeError("first attempt")


def test_resources_follow_the_job_kind():
    executor = RayExecutor(cpus_per_job=2, encode_gpu_share=0.5)
    assert executor.resources("tune", gpus=True) == {"num_cpus": 1, "num_gpus": 1}
    assert executor.resources("tune-pooled", gpus=False) == {"num_cpus": 2}
    assert executor.resources("encode", gpus=True) == {"num_cpus": 2, "num_gpus": 0.5}
    assert executor.resources("encode", gpus=False) == {"num_cpus": 2, "num_gpus": 0}
    assert executor.resources("aggregate", gpus=True) == {"num_cpus": 1}
    slurm = SlurmExecutor(Path("slurm"), gpus_per_job=2)
    assert (slurm.gpus("tune"), slurm.gpus("encode"), slurm.gpus("aggregate")) == (2, 2, 0)


def test_executors_are_built_from_the_config(tmp_path):
    execution = ExecutionConfig(executor="slurm", slurm={"partition": "gpu", "time_min": 30})
    executor = make_executor(execution, tmp_path, progress=False)
    assert isinstance(executor, SlurmExecutor) and executor.folder == tmp_path / "slurm"
    assert (executor.partition, executor.time_min, executor.progress) == ("gpu", 30, False)
    executor = make_executor(ExecutionConfig(executor="ray", ray={"max_retries": 5}), tmp_path)
    assert isinstance(executor, RayExecutor) and executor.max_retries == 5
    assert isinstance(make_executor(ExecutionConfig(), tmp_path), SerialExecutor)


def test_a_preempted_job_is_requeued_as_the_same_job():
    job = RequeueableJob(print, Job("tune", "cl", "s"))
    requeued = job.checkpoint()
    assert requeued.function is job and requeued.args == () and not requeued.kwargs


@pytest.mark.parametrize(("executor", "module", "extra"),
                         [("ray", "ray", "Ray: pip install 'cortexcl[ray]'"),
                          ("slurm", "submitit", "submitit: pip install 'cortexcl[slurm]'")])
def test_a_missing_engine_is_named_with_its_extra(executor, module, extra, tmp_path,
                                                 monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    config = tmp_path / "study.yaml"
    config.write_text(study(**STUDY).model_dump_json())
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(tmp_path / "run"),
                                      "--executor", executor])
    assert isinstance(result.exception, InputError)
    assert str(result.exception) == f"the {executor} executor needs {extra}"


def test_an_unknown_executor_is_refused(tmp_path):
    config = tmp_path / "study.yaml"
    config.write_text(study(**STUDY).model_dump_json())
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(tmp_path / "run"),
                                      "--executor", "dask"])
    assert isinstance(result.exception, InputError)
    assert str(result.exception).startswith("--executor: execution.executor: Input should be")


def test_a_second_runner_on_the_same_run_is_refused(tmp_path):
    root = tmp_path / "run"
    root.mkdir()
    with RunDirectory(root).lock(), pytest.raises(InputError, match="in use by pid"):
        run_study(study(**STUDY), root, progress=False, announce=lambda _: None)
    assert not (root / "config.yaml").exists()

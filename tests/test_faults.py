"""Fault tolerance: studies killed at random points, dead workers and preempted jobs.

Whatever the fault, a rerun finishes the study with results identical to an uninterrupted run:
no job leaves a completion record before its outputs are whole.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import ray
import yaml

from cortexcl.study import runner
from cortexcl.study.jobs import DONE
from cortexcl.study.runner import run_study
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

EPOCHS = 4
STUDY = {"methods": ["cl"], "selection__rois": ["V1v"],
         "tuning__cl": {"epochs": EPOCHS, "batch_size": 16, "frozen": FROZEN}}
MODEL = Path("models/subj01/lh/V1v/cl/seed-0")
TUNE = "tune/cl/subj01/lh/V1v/seed-0"
KILLS = 3  # random kills of the study runner, each within KILL_WITHIN seconds of its start
KILL_WITHIN = (2.0, 14.0)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return fill_cache(tmp_path_factory.mktemp("faults-cache"))


@pytest.fixture(autouse=True)
def _shared_cache(_isolated_cache, monkeypatch, cache):
    monkeypatch.setenv("CORTEXCL_CACHE", str(cache))  # Ray and submitit workers inherit it
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(runner, "build_report", lambda *args, **kwargs: None)  # not tested here


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache) -> Path:
    """The study run without interruption (serial executor, in this process)."""
    root = tmp_path_factory.mktemp("reference") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CORTEXCL_CACHE", str(cache))
        patch.setattr(runner, "build_report", lambda *args, **kwargs: None)
        _, report = run_study(study(**STUDY), root, progress=False, announce=lambda _: None)
    assert report.ok
    return root


@pytest.fixture
def processes(cache):
    started = CortexclProcesses(cache)
    yield started
    started.close()


def test_study_killed_at_random_points_resumes_to_the_same_results(reference, processes,
                                                                   tmp_path):
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(study(**STUDY).model_dump(mode="json")))
    run, stderr = tmp_path / "run", tmp_path / "stderr.log"
    rng = np.random.default_rng(2024)
    codes = []
    for delay in rng.uniform(*KILL_WITHIN, size=KILLS):
        process = processes.start("run", config, "--out", run, stderr=stderr)
        try:
            codes.append(process.wait(timeout=delay))  # it may finish before its kill
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            codes.append(process.wait(timeout=30))
        # Every run resumes the last one and either finishes or is killed: none fails.
        assert codes[-1] in (0, -signal.SIGKILL), stderr.read_text()[-3000:]
    assert -signal.SIGKILL in codes
    finish(processes.start("run", config, "--out", run, stderr=stderr), stderr)
    assert_same_results(run, reference, [MODEL])
    assert not list(run.rglob(CHECKPOINT))


def _processes_with(command: str, environ: str) -> list[int]:
    """Ids of the processes whose command line holds ``command`` and whose environment holds
    ``environ`` (a folder of this test, so that only the test's own workers are found)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if command.encode() in (entry / "cmdline").read_bytes() and \
                    environ.encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except (OSError, ValueError):
            continue
    return found


class Saboteur(threading.Thread):
    """Signals the worker of the tuning job each time its training log reaches an epoch.

    Parameters
    ----------
    log : path
        The training log of the job.
    workers : callable
        Returns the ids of the processes running the job.
    plan : list of (epochs, signal)
        Send ``signal`` once ``epochs`` epochs are logged.
    """

    def __init__(self, log: Path, workers: Callable[[], list[int]],
                 plan: list[tuple[int, signal.Signals]]) -> None:
        super().__init__(daemon=True)
        self.log, self.workers, self.plan = log, workers, plan
        self.sent: list[tuple[int, signal.Signals]] = []
        self.error: str | None = None

    def run(self) -> None:
        deadline = time.monotonic() + TIMEOUT
        for epochs, sig in self.plan:
            while logged_epochs(self.log) < epochs or not (pids := self.workers()):
                if time.monotonic() > deadline:
                    self.error = f"no worker at epoch {epochs} in {TIMEOUT} s"
                    return
                time.sleep(0.05)
            for pid in pids:
                os.kill(pid, sig)
            self.sent.append((logged_epochs(self.log), sig))

    def check(self) -> None:
        """Fail the test unless every signal was sent before the job ended."""
        self.join(timeout=5)
        assert self.error is None, self.error
        assert [sig for _, sig in self.sent] == [sig for _, sig in self.plan]
        assert all(epochs < EPOCHS for epochs, _ in self.sent)


def _interrupted_then_resumed(root: Path, execution: dict, workers: Callable[[], list[int]],
                              plan: list[tuple[int, signal.Signals]], reference: Path) -> str:
    """Run the study while its tuning worker gets the signals of ``plan``, which make it fail;
    rerun it (serial: the run directory does not depend on the executor) and compare with
    ``reference``. Returns the failure log of the first run."""
    saboteur = Saboteur(root / MODEL / TRAIN_LOG, workers, plan)
    saboteur.start()
    config = study(**STUDY, execution=execution)
    _, report = run_study(config, root, progress=False, announce=lambda _: None)
    saboteur.check()
    assert list(report.failed) == [TUNE] and not report.done
    assert not (root / MODEL / DONE).exists() and (root / MODEL / CHECKPOINT).is_file()
    log = report.failed[TUNE].read_text()

    _, report = run_study(study(**STUDY), root, progress=False, announce=lambda _: None)
    assert report.ok and report.done[0] == TUNE
    assert_same_results(root, reference, [MODEL])
    return log


def test_ray_job_whose_worker_dies_is_retried_then_reported_and_rerun(reference, cache,
                                                                     tmp_path):
    # The executor starts its own Ray instance (none is running in this process) and stops it.
    assert not ray.is_initialized()
    execution = {"executor": "ray", "ray": {"num_cpus": 2, "max_retries": 1}}
    log = _interrupted_then_resumed(
        tmp_path / "run", execution, lambda: _processes_with(f"ray::{TUNE}", str(cache)),
        [(1, signal.SIGKILL), (2, signal.SIGKILL)], reference)  # Ray retries once only
    assert "WorkerCrashedError" in log or "died" in log
    assert not ray.is_initialized()


def test_preempted_slurm_job_is_requeued_and_a_killed_one_rerun(reference, tmp_path):
    root = tmp_path / "run"
    execution = {"executor": "slurm",
                 "slurm": {"cluster": "local", "gpus_per_job": 0, "poll_s": 0.2}}
    # SIGUSR2 is submitit's preemption signal: the job is requeued and resumes from its
    # checkpoint. SIGKILL then ends it for good.
    log = _interrupted_then_resumed(
        root, execution, lambda: _processes_with("submitit.core._submit", str(root / "slurm")),
        [(1, signal.SIGUSR2), (2, signal.SIGKILL)], reference)
    assert "submitit job" in log
    outputs = "".join(path.read_text() for path in (root / "slurm").glob("*_log.*"))
    assert "Calling checkpoint method" in outputs and "Requeued job" in outputs


"""The tiny study of the study tests, and helpers to run it, kill it and compare its results."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from cortexcl.config import StudyConfig, parse_config
from cortexcl.data.algonauts import load_subject
from cortexcl.study.runner import prepare_data
from cortexcl.tuning.checkpoints import BACKBONE
from cortexcl.tuning.trainer import TRAIN_LOG

# Simulated subject 1 at roi_scale 0.05 has 36 vertices in lh V1v and 27 in lh hV4, so with
# min_vertices 30 hV4 is too small: it gets no tuning job and is listed as excluded.
SIMULATION = {"n_images": 64, "n_test_images": 2, "image_size": 64, "roi_scale": 0.05}
FROZEN = ["classifier.1", "classifier.4"]  # the two large layers: a 3x smaller checkpoint
TIMEOUT = 240  # seconds any study subprocess may take before the test fails


def study(**changes) -> StudyConfig:
    """The tiny study: one simulated subject, lh V1v (tuned) and hV4 (too small), 64 px.

    ``changes`` replace settings, sections joined by ``__``: ``tuning__cl={"epochs": 3}``.
    """
    raw = {
        "name": "tiny", "seeds": [0],
        "backbone": {"weights": "none"},
        "methods": ["untuned", "cl", "rt"],
        "data": {"simulate": SIMULATION, "subjects": [1], "image_size": 64},
        "selection": {"hemispheres": ["lh"], "rois": ["V1v", "hV4"], "min_vertices": 30},
        "tuning": {"cl": {"epochs": 2, "batch_size": 16, "frozen": FROZEN},
                   "rt": {"epochs": 2, "batch_size": 16}},
        "encoding": {"n_components": 16},
    }
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        section = raw
        for parent in parents:
            section = section.setdefault(parent, {})
        section[key] = value
    return parse_config(raw)


def fill_cache(folder: Path) -> Path:
    """Simulate the tiny study's subject into the cache ``folder`` and decode its images."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CORTEXCL_CACHE", str(folder))
        root = prepare_data(study(), progress=False)
        load_subject(root, 1, image_size=64, progress=False).images.array()
    return folder


class CortexclProcesses:
    """``cortexcl`` commands started in subprocesses that share a cache; `close` kills them."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache
        self.started: list[subprocess.Popen] = []

    def start(self, *args: str | Path, stderr: Path) -> subprocess.Popen:
        """Start ``cortexcl ARGS`` with its standard error written to ``stderr``."""
        # One thread each: two studies run side by side on a small machine.
        env = {**os.environ, "CORTEXCL_CACHE": str(self.cache), "OMP_NUM_THREADS": "1"}
        command = [sys.executable, "-c", "from cortexcl.cli import main; main()",
                   *map(str, args)]
        with open(stderr, "w") as log:
            self.started.append(subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                                 stderr=log))
        return self.started[-1]

    def close(self) -> None:
        """Kill the commands still running."""
        for process in self.started:
            if process.poll() is None:
                process.kill()
                process.wait()


def finish(process: subprocess.Popen, stderr: Path) -> None:
    """Wait for a study subprocess; fail the test unless it ends well within `TIMEOUT`."""
    try:
        code = process.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"study did not finish in {TIMEOUT} s:\n{stderr.read_text()[-3000:]}")
    assert code == 0, stderr.read_text()[-3000:]


def logged_epochs(path: Path) -> int:
    """Number of epochs in a training log (0 while there is none)."""
    try:
        return len(pd.read_csv(path))
    except (OSError, pd.errors.EmptyDataError):
        return 0


def assert_same_results(run: Path, reference: Path, models: list[Path]) -> None:
    """The two runs hold identical tuned weights, training logs and encoding tables.

    ``models`` are the model folders (relative to a run) to compare; table columns that hold
    a run's own path (the weights a backbone was loaded from) are left out.
    """
    for model in models:
        weights = [load_file(root / model / BACKBONE) for root in (run, reference)]
        assert weights[0].keys() == weights[1].keys()
        for name in weights[0]:
            assert torch.equal(weights[0][name], weights[1][name]), (model, name)
        logs = [pd.read_csv(root / model / TRAIN_LOG) for root in (run, reference)]
        timing = ["seconds", "images_per_s"]
        pd.testing.assert_frame_equal(logs[0].drop(columns=timing),
                                      logs[1].drop(columns=timing), check_exact=True)
    tables = [pd.read_csv(root / "tables" / "encoding.csv") for root in (run, reference)]
    assert len(tables[0]) and np.isfinite(tables[0].mean_r).all()
    paths = [c for c in tables[0] if tables[0][c].astype(str).str.contains(str(run)).any()]
    assert set(paths) <= {"weights"}
    sort = ["subject", "hemisphere", "roi", "method"]
    tables = [table.drop(columns=paths).sort_values(sort, ignore_index=True) for table in tables]
    assert set(tables[0].columns) == set(tables[1].columns), \
        set(tables[0].columns) ^ set(tables[1].columns)
    pd.testing.assert_frame_equal(tables[0], tables[1], check_exact=True)

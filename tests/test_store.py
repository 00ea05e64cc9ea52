"""Tests of the run directory: atomic writes, the lock, tables and the manifest."""

from __future__ import annotations

import json
import multiprocessing

import numpy as np
import pandas as pd
import pytest

from cortexcl.atomic import atomic_directory, atomic_save_npy, atomic_write_text
from cortexcl.errors import InputError
from cortexcl.study.store import RunDirectory


def test_atomic_write_leaves_no_temporary_file(tmp_path):
    atomic_save_npy(tmp_path / "a.npy", np.arange(5))
    atomic_write_text(tmp_path / "b.txt", "hello")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "b.txt"]
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.arange(5))


def test_failed_atomic_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "a.npy"
    atomic_save_npy(target, np.arange(3))
    with pytest.raises(ValueError):
        atomic_save_npy(target, np.array([object()], dtype=object))
    np.testing.assert_array_equal(np.load(target), np.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["a.npy"]


def test_atomic_directory_is_all_or_nothing(tmp_path):
    target = tmp_path / "subject"
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "half.txt").write_text("x")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with atomic_directory(target) as tmp:
        (tmp / "whole.txt").write_text("x")
    assert [p.name for p in target.iterdir()] == ["whole.txt"]


def test_output_path_that_is_a_file_is_refused(tmp_path):
    path = tmp_path / "run"
    path.write_text("not a folder")
    with pytest.raises(InputError, match="not a directory"):
        RunDirectory(path)


def _try_lock(root, queue):
    try:
        with RunDirectory(root).lock():
            queue.put("locked")
    except InputError as error:
        queue.put(str(error))


def test_second_runner_is_refused(tmp_path):
    run = RunDirectory(tmp_path / "run")
    queue = multiprocessing.get_context("fork").Queue()
    with run.lock():
        process = multiprocessing.get_context("fork").Process(target=_try_lock,
                                                              args=(run.root, queue))
        process.start()
        process.join(30)
        message = queue.get(timeout=5)
    assert "in use by pid" in message
    with run.lock():
        pass


def test_upsert_replaces_rows_with_the_same_key(tmp_path):
    run = RunDirectory(tmp_path)
    key = ["subject", "roi"]
    run.upsert_table("t", pd.DataFrame({"subject": ["s1", "s1"], "roi": ["V1v", "V2v"],
                                        "r": [0.1, 0.2]}), key)
    table = run.upsert_table("t", pd.DataFrame({"subject": ["s1"], "roi": ["V2v"], "r": [0.5]}),
                             key)
    on_disk = pd.read_csv(run.path("tables", "t.csv"))
    assert on_disk.set_index("roi")["r"].to_dict() == {"V1v": 0.1, "V2v": 0.5}
    assert len(table) == 2


def test_manifest_records_versions_seeds_and_data(tmp_path):
    run = RunDirectory(tmp_path)
    manifest = json.loads(run.write_manifest({"split": 3}, {"subj01": "abc"}).read_text())
    assert manifest["seeds"] == {"split": 3}
    assert manifest["datasets"] == {"subj01": "abc"}
    assert {"python", "torch", "numpy", "scikit-learn"} <= set(manifest["versions"])
    assert manifest["hardware"]["cpu_count"] >= 1


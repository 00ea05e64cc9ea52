"""Tests of the run directory: identity, checks that create nothing, atomic writes, the lock,
tables and the manifest."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from cortexcl.atomic import atomic_directory, atomic_save_npy, atomic_write_text
from cortexcl.errors import InputError
from cortexcl.rundir import RunDirectory, read_table


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
    with pytest.raises(InputError, match="run: output path exists and is not a directory"):
        RunDirectory(path).check_writable()


STUDY_A = {"kind": "study", "settings": {"name": "a", "tuning": {"epochs": 3}}}
STUDY_B = {"kind": "study", "settings": {"name": "a", "tuning": {"epochs": 5}}}


def test_checks_create_nothing(tmp_path):
    run = RunDirectory(tmp_path / "new" / "run")
    run.check_writable()
    run.check_free()
    run.check_identity(STUDY_A)
    assert list(tmp_path.iterdir()) == []


def test_a_run_directory_belongs_to_one_study(tmp_path):
    run = RunDirectory(tmp_path / "run")
    with run.create(STUDY_A):
        (run.path("figures")).mkdir()
        (run.path("figures", "old.png")).write_text("x")
    run.check_identity(STUDY_A)  # the same study resumes
    with pytest.raises(InputError, match=r"run: run directory holds another study "
                                         r"\(settings.tuning.epochs 3 -> 5\); use another "
                                         r"--out, or --fresh to start over"):
        run.check_identity(STUDY_B)
    with pytest.raises(InputError, match="holds a study, not an encode run; use another"):
        run.check_identity({"kind": "encode", "settings": {}})
    with run.create(STUDY_B, fresh=True):  # starting over removes the other study's files
        assert sorted(p.name for p in run.root.iterdir()) == [".lock", "run.json"]
    assert json.loads(run.path("run.json").read_text()) == STUDY_B


def test_a_foreign_folder_is_not_taken_over_even_with_fresh(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    for fresh in (False, True):
        with pytest.raises(InputError, match="folder is not empty and holds no cortexcl run "
                                             r"\(run.json missing\); choose another --out$"):
            RunDirectory(tmp_path).check_identity(STUDY_A, fresh=fresh)
        with pytest.raises(InputError, match="holds no cortexcl run"), \
                RunDirectory(tmp_path).create(STUDY_A, fresh=fresh):
            pass
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_unwritable_place_is_refused_before_anything_is_created(tmp_path):
    """Without root's override (a user namespace when run as root): a read-only folder."""
    place = tmp_path / "read-only"
    place.mkdir()
    os.chmod(place, 0o555)
    code = ("import sys\n"
            "from cortexcl.errors import InputError\n"
            "from cortexcl.rundir import RunDirectory\n"
            "try:\n"
            f"    RunDirectory({str(place / 'run')!r}).check_writable()\n"
            "except InputError as error:\n"
            "    print(error); sys.exit(2)\n")
    command = [sys.executable, "-c", code]
    if os.geteuid() == 0:
        if shutil.which("unshare") is None:
            pytest.skip("running as root without unshare: every folder is writable")
        command = ["unshare", "--user", *command]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert done.stdout.strip() == f"{place}: cannot write (Permission denied)"
    assert list(place.iterdir()) == []


def _try_lock(root, queue):
    try:
        with RunDirectory(root).lock():
            queue.put("locked")
    except InputError as error:
        queue.put(str(error))


def _hold_lock(root, started, stop):
    with RunDirectory(root).lock():
        started.set()
        stop.wait(30)


def test_second_runner_is_refused(tmp_path):
    run = RunDirectory(tmp_path / "run")
    run.root.mkdir()
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


def test_busy_run_directory_is_refused_before_any_work(tmp_path):
    context = multiprocessing.get_context("fork")
    started, stop = context.Event(), context.Event()
    process = context.Process(target=_hold_lock, args=(tmp_path, started, stop))
    process.start()
    try:
        assert started.wait(30)
        with pytest.raises(InputError, match="run directory is in use by pid"):
            RunDirectory(tmp_path).check_free()
    finally:
        stop.set()
        process.join(30)
    RunDirectory(tmp_path).check_free()


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


def test_text_keys_stay_text(tmp_path):
    """A method named NA (or a subject named nan) is a name, not a missing value."""
    run = RunDirectory(tmp_path)
    key = ["subject", "method"]
    for r in (0.1, 0.2):
        run.upsert_table("t", pd.DataFrame({"subject": ["nan"], "method": ["NA"], "r": [r],
                                            "p": [float("nan")]}), key)
    table = read_table(run.path("tables", "t.csv"))
    assert table[["subject", "method"]].values.tolist() == [["nan", "NA"]]
    assert table["r"].tolist() == [0.2] and table["p"].isna().all()


def test_manifest_records_versions_seeds_and_data(tmp_path):
    run = RunDirectory(tmp_path)
    manifest = json.loads(run.write_manifest({"split": 3}, {"subj01": "abc"}).read_text())
    assert manifest["seeds"] == {"split": 3}
    assert manifest["datasets"] == {"subj01": "abc"}
    assert {"python", "torch", "numpy", "scikit-learn"} <= set(manifest["versions"])
    assert manifest["hardware"]["cpu_count"] >= 1


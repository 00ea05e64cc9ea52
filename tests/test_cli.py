"""Tests of the command line: help, dry runs, simulate, encode, failures and one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from cortexcl import cli
from cortexcl.cli import app
from cortexcl.data.algonauts import load_subject
from cortexcl.data.simulate import simulate_subject
from cortexcl.study import runner

SIMULATION = {"n_images": 40, "n_test_images": 2, "image_size": 64, "roi_scale": 0.05}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli-cache")


@pytest.fixture(autouse=True)
def _shared_cache(_isolated_cache, monkeypatch, cache):
    monkeypatch.setenv("CORTEXCL_CACHE", str(cache))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """A simulated subject 1 (40 images of 64 px; lh V1v has 36 vertices, hV4 27)."""
    root = tmp_path_factory.mktemp("cli-data")
    simulate_subject(root, subject=1, seed=0, progress=False, **SIMULATION)
    return root


def config_file(folder: Path, **sections) -> Path:
    raw = {"name": "tiny", "seeds": [0], "backbone": {"weights": "none"},
           "methods": ["untuned", "cl"],
           "data": {"simulate": SIMULATION, "image_size": 64},
           "selection": {"hemispheres": ["lh"], "rois": ["V1v", "hV4"], "min_vertices": 30},
           "tuning": {"cl": {"epochs": 1, "batch_size": 16}}, **sections}
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def invoke(*args: str | Path):
    return CliRunner().invoke(app, [str(arg) for arg in args])


def cortexcl(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    """Run the installed entry point (``main``) in a subprocess."""
    command = [sys.executable, "-c", "from cortexcl.cli import main; main()", *map(str, args)]
    return subprocess.run(command, cwd=cwd, env=os.environ.copy(), capture_output=True,
                          text=True, timeout=120)


def test_help_lists_the_commands():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("simulate", "encode", "run", "report", "demo"):
        assert f" {command} " in result.output


def test_dry_run_lists_the_jobs(tmp_path):
    result = invoke("run", config_file(tmp_path), "--out", tmp_path / "run", "--dry-run")
    assert result.exit_code == 0, result.output
    lines = [" ".join(line.split()) for line in result.stdout.strip().splitlines()]
    assert lines == ["to do tune/cl/subj01/lh/V1v/seed-0", "to do encode/untuned/subj01/all/all",
                     "to do encode/cl/subj01/lh/V1v/seed-0", "to do aggregate/all/all/all/all",
                     "4 jobs: 0 done, 4 to do"]
    assert list(tmp_path.iterdir()) == [tmp_path / "study.yaml"]  # a dry run writes nothing


def test_simulate_writes_a_subject(tmp_path):
    result = invoke("simulate", tmp_path, "--subject", "2", "--n-images", "24",
                    "--n-test-images", "2", "--image-size", "32", "--roi-scale", "0.05")
    assert result.exit_code == 0, result.output
    assert f"simulated subject written to {tmp_path / 'subj02'}" in " ".join(result.output.split())
    subject = load_subject(tmp_path, 2, image_size=32, progress=False)
    assert subject.n_images == 24
    assert subject.responses("lh").shape == (24, subject.n_vertices("lh"))
    assert len(list((tmp_path / "subj02" / "test_split" / "test_images").glob("*.png"))) == 2


def test_encode_writes_the_table_and_prints_a_summary(tmp_path, data_root, monkeypatch):
    monkeypatch.setattr(cli, "stdout", Console(width=400))  # room for every column
    out = tmp_path / "run"
    result = invoke("encode", data_root, "--out", out, "-H", "lh", "-r", "V1v", "-r", "hV4",
                    "--weights", "none", "--image-size", "64", "--n-components", "10",
                    "--min-vertices", "30")
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "tables" / "encoding.csv")
    assert table[["subject", "hemisphere", "roi", "method"]].values.tolist() == [
        ["subj01", "lh", "V1v", "untuned"]]
    assert np.isfinite(table.mean_r).all() and table.n_vertices.tolist() == [36]
    assert pd.read_csv(out / "tables" / "excluded.csv").roi.tolist() == ["hV4"]
    printed = result.stdout.strip().splitlines()
    assert f"Encoding results (alexnet), {out}/tables/encoding.csv" in " ".join(
        line.strip() for line in printed[:3])
    row = next(line for line in printed if line.strip().startswith("subj01"))
    assert row.split()[:7] == ["subj01", "lh", "V1v", "untuned", "36", table.best_layer.iloc[0],
                               f"{table.mean_r.iloc[0]:.3f}"]


def test_failed_job_exits_1_and_names_its_log(tmp_path, monkeypatch):
    def run_job(job, context):
        if job.kind == "tune":
            raise RuntimeError("out of memory")

    monkeypatch.setattr(runner, "run_job", run_job)
    monkeypatch.setattr(cli, "console", Console(stderr=True, width=400))
    out = tmp_path / "run"
    result = invoke("run", config_file(tmp_path), "--out", out)
    assert result.exit_code == 1
    log = out / "logs" / "tune__cl__subj01__lh__V1v__seed-0.log"
    assert "out of memory" in log.read_text()
    assert f"failed: tune/cl/subj01/lh/V1v/seed-0 (log: {log})" in result.stderr
    assert "1 done, 0 already done, 1 failed, 2 blocked" in result.stdout


# Bad input: each case is the arguments of one `cortexcl` process, and what its error names.
ERROR_CASES = {
    "unknown-key": (lambda tmp, data: ("run", config_file(tmp, colour="red"), "--dry-run"),
                    ("study.yaml: colour: unknown key",)),
    "unknown-roi-in-config": (lambda tmp, data: ("run", config_file(
        tmp, selection={"rois": ["V9"]}), "--dry-run"), ("study.yaml: selection.rois:", "V9")),
    "missing-data-root": (lambda tmp, data: ("encode", tmp / "nowhere", "--out", tmp / "run",
                                             "--weights", "none"), ("nowhere",)),
    "unknown-roi-option": (lambda tmp, data: ("encode", data, "--out", tmp / "run", "--roi",
                                              "V9", "--weights", "none", "--image-size", "64"),
                           ("unknown ROI 'V9'",)),
    "output-is-a-file": (lambda tmp, data: ("run", config_file(tmp), "--out", tmp / "taken"),
                         ("taken: output path exists and is not a directory",)),
    "report-missing-run": (lambda tmp, data: ("report", tmp / "nowhere"),
                           ("nowhere: no such run directory",)),
}


@pytest.fixture(scope="module")
def bad_input_runs(tmp_path_factory, data_root, cache):
    """Every case of `ERROR_CASES` run as a real process, all at once: name -> result."""
    env = {**os.environ, "CORTEXCL_CACHE": str(cache)}
    started = {}
    for name, (arguments, _) in ERROR_CASES.items():
        folder = tmp_path_factory.mktemp(name)
        (folder / "taken").write_text("a file")
        command = [sys.executable, "-c", "from cortexcl.cli import main; main()",
                   *map(str, arguments(folder, data_root))]
        started[name] = subprocess.Popen(command, cwd=folder, env=env, text=True,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    results = {}
    try:
        for name, process in started.items():
            stdout, stderr = process.communicate(timeout=180)
            results[name] = (process.returncode, stdout, stderr)
    finally:
        for process in started.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    return results


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_bad_input_is_a_one_line_error(bad_input_runs, case):
    code, stdout, stderr = bad_input_runs[case]
    assert code == 2, stderr
    assert "Traceback" not in stderr and not stdout
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    # The error is one line, and the last thing printed (progress bars may come before it).
    assert errors == [lines[-1]] and lines[-1].startswith("error: "), stderr
    for fragment in ERROR_CASES[case][1]:
        assert fragment in lines[-1]


@pytest.mark.parametrize("case", ["unknown-key", "unknown-roi-in-config", "missing-data-root",
                                  "output-is-a-file"])
def test_early_errors_print_nothing_else(bad_input_runs, case):
    _, _, stderr = bad_input_runs[case]
    assert len([line for line in stderr.splitlines() if line.strip()]) == 1, stderr


def test_summary_notes_tuned_results_equal_to_the_untuned(monkeypatch):
    lines = []
    monkeypatch.setattr(cli, "_announce", lines.append)
    table = pd.DataFrame({
        "method": ["untuned", "cl", "cl"], "hemisphere": ["lh"] * 3, "roi": ["V1v", "V1v", "hV4"],
        "best_layer": ["blocks.1", "blocks.1", "blocks.5"], "weights": ["imagenet"] * 3,
        "delta_r_vs_untuned": [np.nan, 0.0, 0.01], "pct_improved_vs_untuned": [np.nan, 0.0, 60.0]})
    cli._warn(table)
    assert len(lines) == 1 and "1 tuned result(s) equal the untuned" in lines[0]
    assert "lh V1v cl, layer blocks.1" in lines[0]
    cli._warn(table.iloc[[0, 2]])
    assert len(lines) == 1

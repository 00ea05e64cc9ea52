"""The bad-input corpus (tests/corpus/build.py): every case is refused with one line, exit 2.

Each case is built in ``tmp_path/case`` and run through the real entry point
(`cortexcl.cli.main`) in this process (two run as separate processes as well); the NOD cases,
which no command reads yet, call the loader and expect a one-line `InputError`. Besides the
message and the exit status, every case checks that nothing was written: the run output folder
is not even created, and the case folder, the working directory and the image cache are left
exactly as they were; hostile files ran no code.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from corpus.build import CASES, ENCODE, SIMULATE, Case, build_case, write_valid_inputs
from corpus.build import main as build_main
from cortexcl import cli
from cortexcl.data.images import default_cache_dir
from cortexcl.errors import InputError

# A tqdm progress bar line: "description: 40%|####      | 8/20 [00:00<00:00, 90.1img/s]".
PROGRESS = re.compile(r"^[^:]*: +\d+%\|.*\|")
SUBPROCESS_CASES = ("mapping-executes-code", "config-unknown-key")


def snapshot(root: Path, files_only: bool = False) -> dict[str, tuple[bool, int, int]]:
    """{path: (is_dir, size, mtime_ns)} of everything under ``root`` (``root`` included)."""
    if not root.exists():
        return {}
    entries = {}
    for path in [root, *root.rglob("*")]:
        if files_only and path.is_dir():
            continue
        info = path.lstat()
        entries[str(path)] = (path.is_dir(), 0 if path.is_dir() else info.st_size,
                              info.st_mtime_ns)
    return entries


def cortexcl_in_process(args: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    """Run ``cortexcl ARGS`` through `cortexcl.cli.main`: (exit status, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["cortexcl", *args])
    with pytest.raises(SystemExit) as stopped:
        cli.main()
    captured = capsys.readouterr()
    code = stopped.value.code  # None: success; a string: printed, status 1
    return (code if isinstance(code, int) else int(code is not None)), captured.out, \
        captured.err


def error_line(stdout: str, stderr: str) -> str:
    """The one error line of a refused command; any other line must be a progress bar."""
    assert "Traceback" not in stdout + stderr, stderr
    assert stdout == "", stdout
    lines = [line.strip() for line in re.split(r"[\r\n]", stderr) if line.strip()]
    others = [line for line in lines[:-1] if not PROGRESS.match(line)]
    assert lines and not others, stderr
    assert lines[-1].startswith("error: "), stderr
    return lines[-1]


@pytest.fixture
def workspace(tmp_path, monkeypatch) -> Path:
    """A working directory of its own, so that a stray relative path would be seen."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def test_the_corpus_is_large_and_distinct():
    assert len(CASES) >= 25
    assert all(spec.problem and spec.expect for spec in CASES.values())
    assert all(bool(spec.args) != (spec.call is not None) for spec in CASES.values())
    commands = {spec.args[0] for spec in CASES.values() if spec.args}
    assert commands == {"encode", "run", "simulate"}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_refused(name, tmp_path, workspace, monkeypatch, capsys):
    folder = tmp_path / "case"
    spec = build_case(name, folder)
    out = Case.out_dir(folder)
    before = {**snapshot(folder), **snapshot(workspace), **snapshot(default_cache_dir(), True)}

    if spec.call is None:
        code, stdout, stderr = cortexcl_in_process(spec.arguments(folder), monkeypatch, capsys)
        line = error_line(stdout, stderr)
        assert code == 2, stderr
    else:
        with pytest.raises(InputError) as raised:
            spec.call(folder)
        line = str(raised.value)
        assert "\n" not in line and line, line
    for fragment in spec.fragments(folder):
        assert fragment in line, f"{fragment!r} not in {line!r}"
    for path in spec.forbidden(folder):
        assert not path.exists(), f"{path} was created"
    after = {**snapshot(folder), **snapshot(workspace), **snapshot(default_cache_dir(), True)}
    assert after == before
    left = sorted(str(path.relative_to(out)) for path in out.rglob("*")) if out.exists() else []
    assert left == [], left
    assert sorted(path.name for path in tmp_path.iterdir()) in (["case", "cwd"],
                                                                ["case", "case-out", "cwd"])


def test_valid_inputs_are_accepted(tmp_path, workspace, monkeypatch, capsys):
    """The inputs the cases damage are good: encode and simulate run with the corpus's options.

    (``run`` on them is covered by every run case naming its own fault, and by test_study.)
    """
    folder = tmp_path / "case"
    folder.mkdir()
    write_valid_inputs(folder)
    out = Case.out_dir(folder)
    encode = Case("valid", "nothing wrong", write_valid_inputs, ENCODE, ())
    code, _, stderr = cortexcl_in_process(encode.arguments(folder), monkeypatch, capsys)
    assert code == 0, stderr
    table = pd.read_csv(out / "tables" / "encoding.csv")
    assert table[["subject", "hemisphere", "roi", "n_vertices"]].values.tolist() == [
        ["subj01", "lh", "V1v", 5]]
    shutil.rmtree(out)
    simulate = Case("valid", "nothing wrong", write_valid_inputs, SIMULATE, ())
    code, _, stderr = cortexcl_in_process(simulate.arguments(folder), monkeypatch, capsys)
    assert code == 0, stderr
    assert (out / "subj01" / "training_split" / "training_fmri").is_dir()


@pytest.fixture(scope="module")
def process_runs(tmp_path_factory) -> dict[str, tuple[Case, Path, int, str, str]]:
    """`SUBPROCESS_CASES` run by the real entry point in separate processes, all at once."""
    started = {}
    for name in SUBPROCESS_CASES:
        folder = tmp_path_factory.mktemp(name) / "case"
        spec = build_case(name, folder)
        command = [sys.executable, "-c", "from cortexcl.cli import main; main()",
                   *spec.arguments(folder)]
        started[name] = (spec, folder, subprocess.Popen(
            command, cwd=folder.parent, env=os.environ.copy(), text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    results = {}
    try:
        for name, (spec, folder, process) in started.items():
            stdout, stderr = process.communicate(timeout=120)
            results[name] = (spec, folder, process.returncode, stdout, stderr)
    finally:
        for _, _, process in started.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    return results


@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_bad_input_exits_2_from_a_real_process(process_runs, name):
    spec, folder, code, stdout, stderr = process_runs[name]
    assert code == 2, stderr
    line = error_line(stdout, stderr)
    for fragment in spec.fragments(folder):
        assert fragment in line
    for path in spec.forbidden(folder):
        assert not path.exists()


def test_the_build_script_writes_the_cases(tmp_path, capsys):
    """``build.py OUT CASE ...`` writes a folder and a case.json per case, also as a script."""
    names = ["fmri-nan", "config-unknown-key", "nod-beta-axes-swapped"]
    assert build_main([str(tmp_path), *names]) == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(names)
    for name in names:
        described = json.loads((tmp_path / name / "case.json").read_text())
        assert described["args"] == CASES[name].arguments(tmp_path / name)
        assert described["expect"] == CASES[name].fragments(tmp_path / name)
        assert described["exit_code"] == (2 if CASES[name].args else None)
    assert "load_nod_subject" in described["call"]
    assert build_main([str(tmp_path), "no-such-case"]) == 2
    assert "no-such-case" in capsys.readouterr().err

    script = Path(__file__).parent / "corpus" / "build.py"
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "script"), "fmri-nan"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "script" / "fmri-nan" / "case.json").read_text() == (
        (tmp_path / "fmri-nan" / "case.json").read_text().replace(
            str(tmp_path / "fmri-nan"), str(tmp_path / "script" / "fmri-nan")))

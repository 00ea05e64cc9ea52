"""A study as a list of frozen jobs with deterministic output folders and dependencies.

Each job is a pure function of the configuration and its inputs: it writes only inside its own
output folder, and a ``done.json`` holding the hash of the settings it depends on marks it
complete. A job whose record matches is skipped, so a killed study resumes where it stopped.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cortexcl.atomic import atomic_write_json
from cortexcl.config import StudyConfig
from cortexcl.data.algonauts import subject_name

DONE = "done.json"
TUNED_METHODS = ("cl", "rt")
POOLED_METHODS = ("pooled-avg", "pooled-const")


@dataclass(frozen=True)
class Job:
    """One unit of work.

    Attributes
    ----------
    kind : str
        ``tune``, ``tune-pooled``, ``encode`` or ``aggregate``.
    method : str
        Backbone method (``untuned``, ``cl``, ``rt``, ``pooled-avg``, ``pooled-const``).
    subject : str
        ``subjNN``, ``pooled`` for pooled tuning, ``all`` for aggregation.
    hemisphere, roi : str
        ``all`` when the job covers every hemisphere or ROI of the study.
    depends_on : tuple of str
        Keys of the jobs that must finish first.
    settings : str
        Hash of the configuration sections this job depends on.
    """

    kind: str
    method: str
    subject: str
    hemisphere: str = "all"
    roi: str = "all"
    depends_on: tuple[str, ...] = field(default=(), compare=False)
    settings: str = field(default="", compare=False)

    @property
    def key(self) -> str:
        """Unique, readable name of the job, also its output folder below the run."""
        return "/".join((self.kind, self.method, self.subject, self.hemisphere, self.roi))

    def output_dir(self, root: Path) -> Path:
        """The job's own folder in the run directory."""
        if self.kind in ("tune", "tune-pooled"):
            return root / "models" / self.subject / self.hemisphere / self.roi / self.method
        return root / "jobs" / self.key

    def is_done(self, root: Path) -> bool:
        """Whether a completion record with the current settings exists."""
        import json

        record = self.output_dir(root) / DONE
        if not record.is_file():
            return False
        try:
            return json.loads(record.read_text()).get("settings") == self.settings
        except ValueError:
            return False

    def mark_done(self, root: Path) -> None:
        """Write the completion record (the last file a job writes)."""
        atomic_write_json(self.output_dir(root) / DONE, {"job": self.key,
                                                         "settings": self.settings})

    def reset(self, root: Path) -> None:
        """Remove the outputs of an earlier run of this job with other settings."""
        out = self.output_dir(root)
        if (out / DONE).is_file() and not self.is_done(root):
            shutil.rmtree(out)


def plan_jobs(config: StudyConfig, roi_sizes: Callable[[str, str, str], int]) -> list[Job]:
    """Expand a study into jobs, dependencies first.

    Parameters
    ----------
    config : StudyConfig
        The study.
    roi_sizes : callable
        ``roi_sizes(subject, hemisphere, roi) -> n_vertices``; ROIs below the minimum size get
        no tuning job (they are listed as excluded by the encoding of the untuned backbone).

    Returns
    -------
    list of Job
        Tuning jobs, then encoding jobs, then one aggregation job.
    """
    subjects = [subject_name(s) for s in config.data.subjects]
    hemispheres = config.selection.hemispheres
    rois = config.selection.rois
    minimum = config.selection.min_vertices
    common = config.digest("data", "seed", "weights")
    encoding = config.digest("data", "seed", "weights", "selection", "encoding")
    jobs: list[Job] = []
    encodes: list[Job] = []
    if "untuned" in config.methods:
        for subject in subjects:
            encodes.append(Job("encode", "untuned", subject, settings=encoding))
    for method in (m for m in config.methods if m in TUNED_METHODS):
        tuning = config.digest("data", "seed", "weights", "tuning")
        for subject in subjects:
            for hemisphere in hemispheres:
                for roi in rois:
                    if roi_sizes(subject, hemisphere, roi) < minimum:
                        continue
                    tune = Job("tune", method, subject, hemisphere, roi,
                               settings=f"{common}-{tuning}")
                    jobs.append(tune)
                    encodes.append(Job("encode", method, subject, hemisphere, roi,
                                       depends_on=(tune.key,), settings=f"{encoding}-{tuning}"))
    for method in (m for m in config.methods if m in POOLED_METHODS):
        tuning = config.digest("data", "seed", "weights", "tuning")
        for hemisphere in hemispheres:
            for roi in rois:
                members = [s for s in subjects if roi_sizes(s, hemisphere, roi) >= minimum]
                if not members:
                    continue
                tune = Job("tune-pooled", method, "pooled", hemisphere, roi,
                           settings=f"{common}-{tuning}")
                jobs.append(tune)
                encodes.extend(Job("encode", method, subject, hemisphere, roi,
                                   depends_on=(tune.key,), settings=f"{encoding}-{tuning}")
                               for subject in members)
    jobs.extend(encodes)
    jobs.append(Job("aggregate", "all", "all", depends_on=tuple(job.key for job in encodes),
                    settings=config.digest()))
    return jobs

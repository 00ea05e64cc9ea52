"""A study as a list of frozen jobs with deterministic output folders and dependencies.

Each job is a pure function of the configuration and its inputs: it writes only inside its own
output folder, and a ``done.json`` holding the hash of the settings it depends on marks it
complete. A job whose record matches is skipped, so a killed study resumes where it stopped;
``started.json`` records the settings of a job under way, so that an interrupted job resumes
(from its checkpoint) only with the same settings and starts afresh with others.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from cortexcl.atomic import atomic_write_json
from cortexcl.config import NODTransferConfig, StudyConfig
from cortexcl.data.nod import NOD_ROIS, nod_subject_name
from cortexcl.data.subject import subject_name
from cortexcl.encoding.pipeline import RESULT_FORMAT
from cortexcl.evaluation.nod_transfer import nsd_counterpart
from cortexcl.evaluation.transfer import transfer_method
from cortexcl.models.backbones import weights_fingerprint
from cortexcl.rundir import seed_folder

DONE = "done.json"
STARTED = "started.json"
TUNED_METHODS = ("cl", "rt")
POOLED_METHODS = ("pooled-avg", "pooled-const")
TunedKey = tuple[str, str, str, str, int]
"""(method, subject or ``pooled``, hemisphere, ROI, tuning seed) of a tuning job."""


@dataclass(frozen=True)
class Job:
    """One unit of work.

    Attributes
    ----------
    kind : str
        ``tune``, ``tune-pooled``, ``encode``, ``cross`` (a backbone encodes another subject),
        ``nod`` (a backbone encodes a NOD subject), ``probe`` (classification probe of a
        backbone), ``landscape``, ``saliency`` or ``aggregate``.
    method : str
        Backbone method (``untuned``, ``cl``, ``rt``, ``pooled-avg``, ``pooled-const``), or
        ``<method>-from-<subject>`` for a backbone tuned on another subject.
    subject : str
        ``subjNN``, ``pooled`` for pooled tuning, ``all`` for aggregation.
    hemisphere, roi : str
        ``all`` when the job covers every hemisphere or ROI of the study.
    seed : int or None
        Tuning seed (replicate) of the backbone the job tunes or uses; None for the untuned
        backbone and for jobs over all backbones.
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
    seed: int | None = None
    depends_on: tuple[str, ...] = field(default=(), compare=False)
    settings: str = field(default="", compare=False)

    @property
    def key(self) -> str:
        """Unique, readable name of the job, also its output folder below the run."""
        parts = (self.kind, self.method, self.subject, self.hemisphere, self.roi)
        return "/".join(parts if self.seed is None else (*parts, seed_folder(self.seed)))

    def output_dir(self, root: Path) -> Path:
        """The job's own folder in the run directory."""
        if self.kind in ("tune", "tune-pooled"):
            return model_dir(root, self.method, self.subject, self.hemisphere, self.roi,
                             self.seed)
        return root / "jobs" / self.key

    def is_done(self, root: Path) -> bool:
        """Whether a completion record with the current settings exists."""
        return _recorded_settings(self.output_dir(root) / DONE) == self.settings

    def mark_done(self, root: Path) -> None:
        """Write the completion record (the last file a job writes)."""
        atomic_write_json(self.output_dir(root) / DONE, {"job": self.key,
                                                         "settings": self.settings})

    def mark_started(self, root: Path) -> None:
        """Record the settings of a run that begins; an interrupted run resumes only with them."""
        atomic_write_json(self.output_dir(root) / STARTED, {"job": self.key,
                                                            "settings": self.settings})

    def reset(self, root: Path) -> None:
        """Remove the outputs of an earlier run of this job with other settings.

        Finished or not: a checkpoint left by an interrupted run with other settings must not
        be resumed.
        """
        out = self.output_dir(root)
        recorded = (_recorded_settings(out / name) for name in (DONE, STARTED))
        if any(settings not in (None, self.settings) for settings in recorded):
            shutil.rmtree(out)


def model_dir(root: Path, method: str, subject: str, hemisphere: str, roi: str,
              seed: int | None) -> Path:
    """Folder of a tuned model: ``models/<subject or pooled>/<hemi>/<roi>/<method>/seed-<s>``
    (a pooled method's models lie under ``pooled`` whatever ``subject`` is)."""
    tuned_by = "pooled" if method.startswith("pooled") else subject
    folder = root / "models" / tuned_by / hemisphere / roi / method
    return folder if seed is None else folder / seed_folder(seed)


def _recorded_settings(record: Path) -> str | None:
    """The settings hash of a job record; None when there is none, "" when it is unreadable."""
    if not record.is_file():
        return None
    try:
        return str(json.loads(record.read_text()).get("settings", ""))
    except (ValueError, AttributeError):
        return ""


def settings_digest(*parts: Any) -> str:
    """Short hash of configuration parts (pydantic sections or plain JSON values)."""
    data = [part.model_dump(mode="json") if isinstance(part, BaseModel) else part
            for part in parts]
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


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
    # A weights file's content counts too: another file at the same path is another backbone.
    weights = weights_fingerprint(config.backbone.weights)

    def digest(*sections: str) -> str:
        part = config.digest(*sections)
        return settings_digest(part, weights) if weights else part

    common = digest("data", "split_seed", "backbone")
    encoding = settings_digest(digest("data", "split_seed", "backbone", "selection", "encoding"),
                               RESULT_FORMAT)
    # The MI bound, computed by contrastive encodes.
    evaluation = settings_digest(config.evaluation.mutual_info, config.evaluation.temperature_scan)
    jobs: list[Job] = []
    encodes: list[Job] = []
    untuned: dict[str, str] = {}
    if "untuned" in config.methods:  # one encoding: the untuned backbone has no tuning seed
        for subject in subjects:
            encodes.append(Job("encode", "untuned", subject, settings=encoding))
            untuned[subject] = encodes[-1].key
    # Selection P-A: every backbone uses the layer and α the untuned one chose.
    shared = ({subject: (key,) for subject, key in untuned.items()}
              if config.encoding.selection == "shared-untuned" else {})
    tunes: dict[TunedKey, Job] = {}
    for seed in config.seeds:
        for method in (m for m in config.methods if m in TUNED_METHODS):
            tuning = settings_digest(getattr(config.tuning, method))
            scored = f"{encoding}-{tuning}" + (f"-{evaluation}" if method == "cl" else "")
            for subject in subjects:
                for hemisphere in hemispheres:
                    for roi in rois:
                        if roi_sizes(subject, hemisphere, roi) < minimum:
                            continue
                        tune = Job("tune", method, subject, hemisphere, roi, seed,
                                   settings=f"{common}-{tuning}")
                        jobs.append(tune)
                        tunes[method, subject, hemisphere, roi, seed] = tune
                        encodes.append(Job("encode", method, subject, hemisphere, roi, seed,
                                           depends_on=(tune.key, *shared.get(subject, ())),
                                           settings=scored))

    def _baselines(subject: str, hemisphere: str, roi: str, seed: int) -> list[str]:
        keys = [untuned[subject]] if subject in untuned else []
        if ("rt", subject, hemisphere, roi, seed) in tunes:
            keys.append(Job("encode", "rt", subject, hemisphere, roi, seed).key)
        return keys

    for seed in config.seeds:
        for method in (m for m in config.methods if m in POOLED_METHODS):
            # The members depend on min_vertices; the "const" hidden size on every selected ROI.
            selection = config.selection if method == "pooled-const" else minimum
            tuning = settings_digest(config.tuning.pooled, selection)
            for hemisphere in hemispheres:
                for roi in rois:
                    members = [s for s in subjects if roi_sizes(s, hemisphere, roi) >= minimum]
                    if not members:
                        continue
                    tune = Job("tune-pooled", method, "pooled", hemisphere, roi, seed,
                               settings=f"{common}-{tuning}")
                    jobs.append(tune)
                    tunes[method, "pooled", hemisphere, roi, seed] = tune
                    # Scored on the test images no member tuned with, against baselines
                    # re-scored on the same images: those baselines come first.
                    encodes.extend(Job("encode", method, subject, hemisphere, roi, seed,
                                       depends_on=(tune.key,
                                                   *_baselines(subject, hemisphere, roi, seed)),
                                       settings=f"{encoding}-{tuning}-{evaluation}")
                                   for subject in members)
    if config.evaluation.cross_subject:
        for (method, model, hemisphere, roi, seed), tune in tunes.items():
            for target in subjects if method == "cl" else ():
                if target != model and roi_sizes(target, hemisphere, roi) >= minimum:
                    encodes.append(Job(
                        "cross", transfer_method(method, model), target, hemisphere, roi, seed,
                        depends_on=(tune.key, untuned[target]),
                        settings=f"{encoding}-{tune.settings}"))
    if config.evaluation.classification is not None:
        encodes.extend(_probe_jobs(config, tunes, common))
    if config.evaluation.nod_transfer is not None:
        encodes.extend(_nod_jobs(config.evaluation.nod_transfer, tunes, encoding,
                                 config.encoding.selection == "shared-untuned"))
    jobs.extend(encodes)
    # Every section but how the jobs run (executor, device), which changes no result.
    results = [name for name in StudyConfig.model_fields if name != "execution"]
    jobs.append(Job("aggregate", "all", "all", depends_on=tuple(job.key for job in encodes),
                    settings=digest(*results)))
    return jobs


def _nod_jobs(nod: NODTransferConfig, tunes: dict[TunedKey, Job],
              encoding: str, shared: bool = False) -> list[Job]:
    """NOD encodes: the untuned backbone, and every tuned NSD backbone of a counterpart ROI.

    With ``shared`` (selection P-A) the tuned encodes wait for the untuned one's choice.
    """
    settings = f"{encoding}-{settings_digest(nod)}"
    jobs = []
    for subject in map(nod_subject_name, nod.subjects):
        untuned: tuple[str, ...] = ()
        if "untuned" in nod.methods:
            jobs.append(Job("nod", "untuned", subject, settings=settings))
            untuned = (jobs[-1].key,) if shared else ()
        for (method, source, hemisphere, roi, seed), tune in tunes.items():
            if method not in nod.methods:
                continue
            jobs.extend(Job("nod", transfer_method(method, source), subject, hemisphere, area,
                            seed, depends_on=(tune.key, *untuned),
                            settings=f"{settings}-{tune.settings}")
                        for area in NOD_ROIS if nsd_counterpart(area, nod.stream) == roi)
    return jobs


def backbone_name(method: str, source: str, hemisphere: str, roi: str,
                  seed: int | None) -> str:
    """Folder name of a backbone in evaluations: ``untuned`` or ``cl__subj01__lh__V1v__seed-0``."""
    if method == "untuned":
        return "untuned"
    return "__".join((method, source, hemisphere, roi, seed_folder(seed)))


def parse_backbone_name(name: str) -> dict[str, Any]:
    """The inverse of `backbone_name`: method, subject, hemisphere, roi (empty for untuned) and
    seed (None for untuned)."""
    if name == "untuned":
        return {"method": "untuned", "subject": "", "hemisphere": "", "roi": "", "seed": None}
    method, subject, hemisphere, roi, seed = name.split("__")
    return {"method": method, "subject": subject, "hemisphere": hemisphere, "roi": roi,
            "seed": int(seed.removeprefix(seed_folder("")))}


def _probe_jobs(config: StudyConfig, tunes: dict[TunedKey, Job],
                common: str) -> list[Job]:
    """Probe jobs per backbone, then the landscape and the saliency jobs that use the probes."""
    evaluation = config.evaluation
    probing = settings_digest(evaluation.classification, config.split_seed)
    probes = []
    if "untuned" in evaluation.classification.methods:
        probes.append(Job("probe", "untuned", "all", settings=f"{probing}-{common}"))
    probes.extend(Job("probe", method, source, hemisphere, roi, seed, depends_on=(tune.key,),
                      settings=f"{probing}-{tune.settings}")
                  for (method, source, hemisphere, roi, seed), tune in tunes.items()
                  if method in evaluation.classification.methods)
    jobs = list(probes)
    if evaluation.landscape is not None:
        jobs.append(Job("landscape", "all", "all", depends_on=tuple(p.key for p in probes),
                        settings=settings_digest(evaluation.landscape,
                                                 *(p.settings for p in probes))))
    if evaluation.saliency is not None:
        saliency = settings_digest(evaluation.saliency)
        jobs.extend(Job("saliency", probe.method, probe.subject, probe.hemisphere, probe.roi,
                        probe.seed, depends_on=(probe.key,),
                        settings=f"{saliency}-{probe.settings}")
                    for probe in probes if probe.method in evaluation.saliency.methods
                    and (probe.method == "untuned" or probe.roi in evaluation.saliency.rois))
    return jobs

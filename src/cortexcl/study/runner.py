"""Run a study: prepare the data, plan the jobs, execute them, and build the tables."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cortexcl.atomic import atomic_write_csv, atomic_write_json
from cortexcl.config import NODReadingConfig, NODTransferConfig, StudyConfig
from cortexcl.data.images import default_cache_dir
from cortexcl.data.layouts import layout_options, open_subject
from cortexcl.data.nod import NODSubject, load_nod_subject, nod_subject_name
from cortexcl.data.rois import WHOLE_HEMISPHERE, roi_class
from cortexcl.data.splits import Split
from cortexcl.data.subject import Subject, subject_name
from cortexcl.encoding.pipeline import (
    check_subject_data,
    encode_subject,
    read_shared_selection,
    record_split,
    subject_split,
    without_images,
)
from cortexcl.evaluation.cross_subject import CROSS_SUBJECT, write_cross_subject_tables
from cortexcl.evaluation.mutual_info import (
    common_k_bound,
    embed_pairs,
    embed_pairs_with_modality_statistics,
    infonce_bound,
    select_temperature_on_val,
)
from cortexcl.evaluation.nod_transfer import NOD, nsd_counterpart, write_nod_tables
from cortexcl.evaluation.single_subject import write_tables
from cortexcl.evaluation.transfer import split_transfer, train_image_ids, write_matched_baselines
from cortexcl.models import TUNING_METHODS
from cortexcl.models.backbones import (
    build_backbone,
    get_backbone,
    resolve_device,
    weights_fingerprint,
)
from cortexcl.models.heads import check_roi_size, check_roi_sizes
from cortexcl.report import build_report
from cortexcl.rundir import RunDirectory
from cortexcl.statistics import derive_seed
from cortexcl.study.executors import ExecutionReport, make_executor
from cortexcl.study.jobs import Job, model_dir, plan_jobs, settings_digest
from cortexcl.study.probe_jobs import (
    run_landscape,
    run_probe,
    run_saliency,
    write_probe_tables,
)
from cortexcl.tuning.checkpoints import BACKBONE, load_backbone, load_heads, save_tuned
from cortexcl.tuning.trainer import CHECKPOINT, TrainingSet, TrainSettings, best_epoch, train

SIMULATION_VERSION = "v2"  # bump when the simulated data of a configuration changes
MI_SUBSETS = 100  # random subsets averaged by the common-K bound


@dataclass
class StudyContext:
    """What every job of a study shares: settings, run directory and loaded subjects."""

    config: StudyConfig
    run: RunDirectory
    data_root: Path
    device: str | None = None
    progress: bool = True
    _subjects: dict[str, Subject] = field(default_factory=dict)
    _splits: dict[str, Split] = field(default_factory=dict)

    def subject(self, name: str) -> Subject:
        """The subject ``name``, loaded once."""
        if name not in self._subjects:
            self._subjects[name] = open_subject(self.data_root, name,
                                                image_size=self.config.data.image_size,
                                                progress=self.progress,
                                                **layout_options(self.config.data))
        return self._subjects[name]

    def split(self, subject: Subject) -> Split:
        """The subject's split, recorded in the run (made and checked once per subject)."""
        if subject.name not in self._splits:
            self._splits[subject.name] = record_split(self.run, subject, self.config.split_seed,
                                                      self.config.encoding)
        return self._splits[subject.name]

    def nod_subject(self, name: str) -> NODSubject:
        """The NOD subject ``name`` (``sub-XX``), loaded once (``evaluation.nod_transfer``)."""
        if name not in self._subjects:
            nod = self.config.evaluation.nod_transfer
            reading = {key: getattr(nod, key) for key in NODReadingConfig.model_fields}
            if nod.root is None:  # a simulated NOD: all its sessions
                reading["sessions"] = range(1, nod.simulate.n_sessions + 1)
            self._subjects[name] = load_nod_subject(
                prepare_nod_data(nod, self.progress), name, image_size=self.config.data.image_size,
                progress=self.progress, **reading)
        return self._subjects[name]

    def roi_size(self, subject: str, hemisphere: str, roi: str) -> int:
        """Number of vertices of an ROI (the whole hemisphere for ``all``)."""
        data = self.subject(subject)
        if roi == WHOLE_HEMISPHERE:
            return data.n_vertices(hemisphere)
        return int(data.roi_indices(hemisphere, roi).size)


def prepare_data(config: StudyConfig, progress: bool = True) -> Path:
    """The data root of a study: ``data.root``, or the cached simulation it describes."""
    if config.data.root is not None:
        return config.data.root
    from cortexcl.data.simulate import simulate_nsd, simulate_subject

    sim = config.data.simulate
    root = _simulation_root(config)
    # One seed for all subjects: their own draws depend on (seed, subject), and images with
    # the same NSD id are the same images, so the shared NSD images are shared (method §1.3).
    for number in config.data.subjects:
        if config.data.layout == "nsd":
            if not (root / "ground_truth" / subject_name(number)).is_dir():
                simulate_nsd(root, subject=number, n_images=sim.n_images,
                             n_sessions=sim.n_sessions, image_size=sim.image_size,
                             roi_scale=sim.roi_scale, reference_subject=sim.reference_subject,
                             seed=sim.seed, progress=progress)
        elif not (root / subject_name(number)).is_dir():
            simulate_subject(root, subject=number, n_images=sim.n_images,
                             n_test_images=sim.n_test_images, image_size=sim.image_size,
                             roi_scale=sim.roi_scale, reference_subject=sim.reference_subject,
                             seed=sim.seed, progress=progress)
    return root


def _simulation_root(config: StudyConfig) -> Path:
    """The cache folder of a study's simulated subjects."""
    digest = StudyConfig(data={"simulate": config.data.simulate}).digest("data")
    layout = "" if config.data.layout == "algonauts" else f"{config.data.layout}-"
    return default_cache_dir() / "simulated" / f"{SIMULATION_VERSION}-{layout}{digest}"


def prepare_nod_data(nod: NODTransferConfig, progress: bool = True) -> Path:
    """The NOD root of a study: ``nod_transfer.root``, or the cached simulation it describes."""
    if nod.root is not None:
        return nod.root
    from cortexcl.data.simulate.nod import simulate_nod_subject

    sim = nod.simulate
    root = default_cache_dir() / "simulated-nod" / settings_digest(sim)
    for number in nod.subjects:
        if not (root / nod_subject_name(number)).is_dir():
            simulate_nod_subject(root, number, n_sessions=sim.n_sessions, n_runs=sim.n_runs,
                                 trials_per_run=sim.trials_per_run, image_size=sim.image_size,
                                 vertices_per_roi=sim.vertices_per_roi,
                                 seed=sim.seed + 1000 * number, progress=progress)
    return root


def study_identity(config: StudyConfig) -> dict[str, Any]:
    """What makes a study's run directory its own: the configuration but the executor."""
    settings = config.model_dump(mode="json")
    settings.pop("execution", None)
    return {"kind": "study", "settings": settings}


def run_study(config: StudyConfig, out: str | Path, *, dry_run: bool = False,
              device: str | None = None, progress: bool = True, fresh: bool = False,
              announce: Callable[[str], None] = print) -> tuple[list[Job], ExecutionReport | None]:
    """Run (or, with ``dry_run``, only plan) a study in the run directory ``out``.

    Cheap checks come first (the run directory can be written, is free and belongs to this
    study; the weights load), then the data are read and checked; only then is anything
    created. A dry run creates and writes nothing: for a simulated subject not yet in the
    cache, the ROI sizes come from the simulator's masks, computed in memory.

    Parameters
    ----------
    fresh : bool
        Start over: remove what the run directory holds (another study's results) first.

    Returns
    -------
    jobs, report
        The planned jobs, and what happened to them (None for a dry run).

    Raises
    ------
    InputError
        On any bad input, before anything is written.
    """
    run = RunDirectory(out)
    run.check_writable()
    run.check_free()
    identity = study_identity(config)
    run.check_identity(identity, fresh=fresh)
    # A missing weights file or package fails at once.
    build_backbone(config.backbone.name, config.backbone.weights, seed=config.split_seed)
    if config.execution.executor == "serial":
        resolve_device(device or config.execution.device)
    if dry_run:
        return plan_jobs(config, _dry_run_roi_sizes(config, progress)), None
    context = StudyContext(config, run, prepare_data(config, progress),
                           device=device or config.execution.device, progress=progress)
    jobs = plan_jobs(config, context.roi_size)
    check_inputs(context)
    _announce_data(context, announce)
    with run.create(identity, fresh=fresh):
        _remove_leftovers(run)
        run.write_config(config.model_dump(mode="json"))
        run.write_manifest(
            seeds={"split": config.split_seed, "tuning": config.seeds},
            datasets={name: context.subject(name).data_hash()
                      for name in map(subject_name, config.data.subjects)},
            extra={"backbone": config.backbone.name, "weights": config.backbone.weights,
                   "weights_sha256": weights_fingerprint(config.backbone.weights) or None,
                   "data_root": str(context.data_root),
                   "data_options": layout_options(config.data)})
        executor = make_executor(config.execution, run.root, progress=progress)

        def on_event(event: str, job: Job) -> None:
            if event != "skipped" or progress:
                announce(f"{event:>8}  {job.key}")

        runner = JobRunner(config, run.root, context.data_root, context.device, progress,
                           context=context)
        report = executor.run(jobs, runner, run.root, on_event)
        if run.path("tables", "encoding.csv").is_file():
            build_report(run.root)
        return jobs, report


def _announce_data(context: StudyContext, announce: Callable[[str], None]) -> None:
    """Say what reading the data left out, and what a session split holds."""
    config = context.config
    for name in map(subject_name, config.data.subjects):
        subject = context.subject(name)
        for hemisphere in config.selection.hemispheres:
            excluded = subject.data_notes(hemisphere).get("n_nan_vertices", 0)
            if excluded:
                announce(f"{name} {hemisphere}: {excluded} vertices left out (NaN or infinite "
                         f"betas in some session; n_nan_vertices in the tables counts them per "
                         f"ROI)")
        if config.data.layout == "nsd" and subject.noise_ceiling(
                config.selection.hemispheres[0]) is None:
            announce(f"{name}: no noise ceilings ({subject.root}/{{lh,rh}}.ncsnr.mgh not "
                     f"found); the tables report raw r only")
        if config.encoding.split == "sessions":
            split = subject_split(subject, config.split_seed, config.encoding)
            announce(f"{name}: split by sessions: {len(split.train)} train, {len(split.val)} "
                     f"val, {len(split.test)} test images (test: shown only in the last three "
                     f"sessions)")


def _dry_run_roi_sizes(config: StudyConfig,
                       progress: bool) -> Callable[[str, str, str], int]:
    """ROI sizes for planning without writing anything (see `run_study`)."""
    if config.data.root is not None or _simulation_root(config).is_dir():
        context = StudyContext(config, RunDirectory(""), prepare_data(config, progress),
                               progress=progress)
        return context.roi_size
    from cortexcl.data.simulate.masks import synthetic_masks

    sim = config.data.simulate
    masks = synthetic_masks(sim.reference_subject, sim.roi_scale)

    def roi_size(subject: str, hemisphere: str, roi: str) -> int:
        if roi == WHOLE_HEMISPHERE:
            return masks[hemisphere].n_vertices
        class_name, label = roi_class(roi)
        return int(np.sum(masks[hemisphere].labels[class_name] == label))

    return roi_size


def check_inputs(context: StudyContext) -> None:
    """Check a study's data before anything is written: bad input fails at once, not in a job.

    Every subject is loaded and its images decoded (into the image cache the jobs use), its
    noise-ceiling files (when present) are validated, and at least one selected ROI must have
    ``min_vertices`` vertices.

    Raises
    ------
    InputError
        Naming the file or setting at fault.
    """
    config = context.config
    names = list(map(subject_name, config.data.subjects))
    check_roi_sizes({f"{name} {hemisphere} {roi}": context.roi_size(name, hemisphere, roi)
                     for name in names for hemisphere in config.selection.hemispheres
                     for roi in config.selection.rois},
                    config.selection.min_vertices, context.data_root)
    for name in names:
        check_subject_data(context.subject(name), config.selection.hemispheres, config.split_seed,
                           config.encoding)


class JobRunner:
    """Run one job of a study: a picklable callable that executors can ship to other processes.

    A copy in another process (a Ray task, a SLURM job) builds its own `StudyContext` on first
    use; the runner's process reuses the context it already has.
    """

    def __init__(self, config: StudyConfig, run_root: Path, data_root: Path,
                 device: str | None, progress: bool,
                 context: StudyContext | None = None) -> None:
        self.config = config
        self.run_root = Path(run_root)
        self.data_root = Path(data_root)
        self.device = device
        self.progress = progress
        self._context = context

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_context": None}

    def __call__(self, job: Job) -> None:
        if self._context is None:
            self._context = StudyContext(self.config, RunDirectory(self.run_root),
                                         self.data_root, self.device, self.progress)
        run_job(job, self._context)


def _remove_leftovers(run: RunDirectory) -> None:
    """Feature folders of encodings killed mid-way (no runner or worker is active now)."""
    for folder in (run.root, run.path(CROSS_SUBJECT), run.path(NOD)):
        for leftover in folder.glob(".features-*"):
            shutil.rmtree(leftover, ignore_errors=True)


def run_job(job: Job, context: StudyContext) -> None:
    """Execute one job (dispatch on its kind)."""
    {"tune": _tune, "tune-pooled": _tune, "encode": _encode, "cross": _cross, "nod": _nod,
     "probe": _probe, "landscape": _landscape, "saliency": _saliency,
     "aggregate": _aggregate}[job.kind](job, context)


def _probe(job: Job, context: StudyContext) -> None:
    run_probe(job, context.run, context.config, context.device, context.progress)


def _landscape(job: Job, context: StudyContext) -> None:
    run_landscape(context.run, context.config)


def _saliency(job: Job, context: StudyContext) -> None:
    run_saliency(job, context.run, context.config, context.device, context.progress)


def _pooled_members(context: StudyContext, hemisphere: str, roi: str) -> list[str]:
    """Subjects whose ROI is large enough to take part in its pooled model."""
    minimum = context.config.selection.min_vertices
    return [name for name in map(subject_name, sorted(context.config.data.subjects))
            if context.roi_size(name, hemisphere, roi) >= minimum]


def _tuning_setup(job: Job, context: StudyContext) -> tuple[torch.nn.Module, list[TrainingSet],
                                                               Any, int]:
    """Build a tuning job's model (seeded) and its training data; shared by tuning and MI."""
    config = context.config
    minimum = config.selection.min_vertices
    if job.kind == "tune-pooled":
        members = _pooled_members(context, job.hemisphere, job.roi)
        settings = config.tuning.pooled
        spec, options = TUNING_METHODS["pooled"], {
            "mode": job.method.removeprefix("pooled-"),
            "all_roi_sizes": [context.roi_size(name, hemisphere, roi)
                              for name in map(subject_name, config.data.subjects)
                              for hemisphere in config.selection.hemispheres
                              for roi in config.selection.rois if roi != WHOLE_HEMISPHERE]}
    else:
        members = [job.subject]
        settings = getattr(config.tuning, job.method)
        spec, options = TUNING_METHODS[job.method], {}
    backbone_spec = get_backbone(config.backbone.name)
    data = []
    for name in members:
        subject = context.subject(name)
        split = context.split(subject)
        responses = subject.responses(job.hemisphere, job.roi)
        check_roi_size(responses.shape[1], minimum, f"{name} {job.hemisphere} {job.roi}")
        images = subject.images.normalized(backbone_spec.mean, backbone_spec.std)
        data.append(TrainingSet(name, images, responses, split.train, split.val))
    # The tuning seed varies the heads' initialisation and the batches, never the backbone's
    # initial weights: every replicate starts from the untuned backbone.
    seed = derive_seed(job.seed, job.key)
    backbone = build_backbone(backbone_spec.name, config.backbone.weights, seed=config.split_seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        image_layer = (backbone_spec.penultimate if settings.image_features == "penultimate"
                       else None)
        model = spec.build(backbone, {d.name: d.responses.shape[1] for d in data}, settings,
                           image_layer=image_layer, **options)
    return model, data, settings, seed


def _tune(job: Job, context: StudyContext) -> None:
    model, data, settings, seed = _tuning_setup(job, context)
    out = job.output_dir(context.run.root)
    train_settings = TrainSettings(epochs=settings.epochs, batch_size=settings.batch_size,
                                   lr=settings.lr, weight_decay=settings.weight_decay,
                                   seed=seed, interleave=getattr(settings, "interleave", False),
                                   patience=settings.early_stopping)
    log = train(model, data, train_settings, out, device=context.device,
                progress=context.progress)
    # The weights kept: the last epoch's, or the best val epoch's under early stopping.
    last = log.iloc[best_epoch(log.to_dict("records")) if settings.early_stopping else -1]
    meta = {
        "method": job.method, "subjects": [d.name for d in data], "hemisphere": job.hemisphere,
        "roi": job.roi, "n_vertices": {d.name: int(d.responses.shape[1]) for d in data},
        "settings": settings.model_dump(mode="json"), "seed": job.seed, "torch_seed": seed,
        "backbone": context.config.backbone.name, "weights": context.config.backbone.weights,
        "data_hash": {d.name: context.subject(d.name).data_hash() for d in data},
        "n_train": {d.name: len(d.train) for d in data},
        "n_val": {d.name: len(d.val) for d in data},
        "final_train_loss": float(last["train_loss"]), "final_val_loss": float(last["val_loss"]),
        "kept_epoch": int(last["epoch"]), "epochs_run": len(log),
        "images_per_s": float(log["images_per_s"].mean()),
    }
    save_tuned(out, model.cpu(), meta, half_copy=context.config.tuning.half_copy,
               base=(context.config.backbone.name, context.config.backbone.weights,
                     context.config.split_seed))
    (out / CHECKPOINT).unlink(missing_ok=True)


def _encode(job: Job, context: StudyContext) -> None:
    config = context.config
    subject = context.subject(job.subject)
    out = job.output_dir(context.run.root)
    if job.method == "untuned":
        weights, hemispheres, rois = config.backbone.weights, config.selection.hemispheres, \
            config.selection.rois
    else:
        weights = _tuned_backbone(context, job.method, job.subject, job.hemisphere, job.roi,
                                  job.seed)
        hemispheres, rois = [job.hemisphere], [job.roi]
    # Pooled backbones saw other subjects' images: those leave the test part.
    others = _tuning_image_ids(context, job) if job.method.startswith("pooled") else None
    _, excluded = _encode_with(context, subject, context.run, weights, job.method, job.seed,
                               hemispheres, rois, others)
    atomic_write_csv(out / "excluded.csv", excluded)
    if others is not None:
        _write_matched(context, context.run, subject, job, job.method, ("untuned", "rt"))
    if job.method != "rt" and job.method != "untuned" and config.evaluation.mutual_info:
        _mutual_info(job, context, weights.parent, others)


def _cross(job: Job, context: StudyContext) -> None:
    """A backbone tuned on another subject encodes this subject's ROI (docs/method.md §3.5)."""
    method, source = split_transfer(job.method)
    subject = context.subject(job.subject)
    weights = _tuned_backbone(context, method, source, job.hemisphere, job.roi, job.seed)
    transfer = RunDirectory(context.run.root / CROSS_SUBJECT)
    _encode_with(context, subject, transfer, weights, job.method, job.seed, [job.hemisphere],
                 [job.roi], _tuning_image_ids(context, job))
    _write_matched(context, transfer, subject, job, job.method, ("untuned",))


def _nod(job: Job, context: StudyContext) -> None:
    """An NSD backbone (or the untuned one) encodes a NOD subject's V1-V4 (docs/method.md §4)."""
    nod = context.config.evaluation.nod_transfer
    subject = context.nod_subject(job.subject)
    if job.method == "untuned":
        weights, hemispheres, rois = context.config.backbone.weights, \
            context.config.selection.hemispheres, list(subject.rois)
    else:
        method, source = split_transfer(job.method)
        weights = _tuned_backbone(context, method, source, job.hemisphere,
                                  nsd_counterpart(job.roi, nod.stream), job.seed)
        hemispheres, rois = [job.hemisphere], [job.roi]
    nod_run = RunDirectory(context.run.root / NOD)
    _encode_with(context, subject, nod_run, weights, job.method, job.seed, hemispheres, rois,
                 None, untuned=nod_run)


def _tuned_backbone(context: StudyContext, method: str, subject: str, hemisphere: str,
                    roi: str, seed: int | None) -> Path:
    return model_dir(context.run.root, method, subject, hemisphere, roi, seed) / BACKBONE


def _tuning_image_ids(context: StudyContext, job: Job) -> np.ndarray:
    """Ids of the images that tuned the backbone a job encodes with, other than the target's.

    The target's own training images are never in its test part; other subjects' may be
    (the NSD shared images), and are dropped from it.
    """
    method, source = split_transfer(job.method)
    sources = (_pooled_members(context, job.hemisphere, job.roi) if method.startswith("pooled")
               else [source])
    ids = [train_image_ids(data.image_ids, context.split(data).train)
           for data in map(context.subject, sources) if data.name != job.subject]
    return np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)


def _encode_with(context: StudyContext, subject: Subject, run: RunDirectory, weights: Any,
                 method: str, seed: int | None, hemispheres: list[str], rois: list[str],
                 exclude_ids: np.ndarray | None,
                 untuned: RunDirectory | None = None) -> tuple[Any, Any]:
    """Encode with the study's settings; under selection P-A a tuned backbone uses the layer
    and α the untuned backbone chose (its results in ``untuned``, default the run)."""
    config = context.config
    shared = None
    if config.encoding.selection == "shared-untuned" and method != "untuned":
        shared = read_shared_selection(untuned or context.run, subject.name, hemispheres,
                                       subject.expand_rois(rois))
    return encode_subject(
        subject, run, hemispheres=hemispheres, rois=rois, weights=weights,
        backbone=config.backbone.name, method=method,
        split_seed=config.split_seed, seed=seed, settings=config.encoding,
        min_vertices=config.selection.min_vertices,
        device=context.device, progress=context.progress, exclude_ids=exclude_ids,
        shared=shared)


def _write_matched(context: StudyContext, run: RunDirectory, subject: Subject, job: Job,
                   method: str, baselines: tuple[str, ...]) -> None:
    """Re-score the subject's baselines on the test images of a transfer or pooled result."""
    result = run.encoding_dir(subject.name, job.hemisphere, job.roi, method, job.seed)
    write_matched_baselines(
        result, {name: context.run.encoding_dir(subject.name, job.hemisphere, job.roi, name,
                                                None if name == "untuned" else job.seed)
                 for name in baselines}, subject.responses(job.hemisphere, job.roi))


def _mutual_info(job: Job, context: StudyContext, model_dir: Path,
                 exclude_ids: np.ndarray | None) -> None:
    """InfoNCE bound (bits) of a contrastive model on the subject's test pairs.

    Test and val pairs whose image id is in ``exclude_ids`` (images other subjects tuned a
    pooled model with) are left out.

    ``mi_bits`` embeds in eval mode with the head's running statistics (docs/method.md §7.1);
    ``mi_bits_modality_bn`` uses each modality's own statistics, re-estimated on the train
    pairs (see `embed_pairs_with_modality_statistics`).
    """
    tuned_by = "pooled" if job.method.startswith("pooled") else job.subject
    kind = "tune-pooled" if tuned_by == "pooled" else "tune"
    model, data, settings, _ = _tuning_setup(
        Job(kind, job.method, tuned_by, job.hemisphere, job.roi, job.seed), context)
    state = {f"backbone.{name}": tensor for name, tensor in
             load_backbone(model_dir).state_dict().items()}
    model.load_state_dict({**state, **load_heads(model_dir)})
    model.to(resolve_device(context.device))
    target = next(d for d in data if d.name == job.subject)
    batch = context.config.encoding.batch_size

    def embed(indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return embed_pairs(model, target.images.batches(indices, batch, context.device),
                           target.responses[indices],
                           subject=job.subject if tuned_by == "pooled" else None)

    subject = context.subject(job.subject)
    split = context.split(subject)
    if exclude_ids is not None:
        split, _, _ = without_images(split, subject.image_ids, exclude_ids)
    test = embed(split.test)
    own = embed_pairs_with_modality_statistics(
        model, (target.images.batches(split.train, batch, context.device),
                target.responses[split.train]),
        (target.images.batches(split.test, batch, context.device), target.responses[split.test]),
        subject=job.subject if tuned_by == "pooled" else None)
    # A common K for comparisons across subjects: the smallest test part of the study.
    common_k = min(len(test[0]), *(len(context.split(context.subject(name)).test)
                                   for name in map(subject_name, context.config.data.subjects)))
    rng = np.random.default_rng(derive_seed(context.config.split_seed, f"mi/{job.key}"))
    result = {"mi_bits": infonce_bound(*test, settings.temperature),
              "mi_bits_modality_bn": infonce_bound(*own, settings.temperature),
              "mi_log2_k": float(np.log2(len(test[0]))), "mi_temperature": settings.temperature,
              "mi_common_k": common_k,
              "mi_bits_common_k": common_k_bound(*test, common_k, MI_SUBSETS, rng,
                                                 settings.temperature)}
    if context.config.evaluation.temperature_scan:
        # Clean: β chosen on val, the bound on test. Paper (no val part): β chosen on the
        # reported test pairs themselves, as published, and labelled optimistic.
        clean = len(split.val) > 1  # without images other pooled members tuned with
        beta, _ = select_temperature_on_val(*(embed(split.val) if clean else test),
                                            base=settings.temperature)
        result.update(mi_scan_beta=beta,
                      mi_scan_bits=infonce_bound(*test, settings.temperature * beta),
                      mi_scan_chosen_on="val" if clean else "test (optimistic, as published)")
    atomic_write_json(context.run.encoding_dir(job.subject, job.hemisphere, job.roi, job.method,
                                               job.seed) / "mutual_info.json", result)


def _aggregate(job: Job, context: StudyContext) -> None:
    encoding = write_tables(context.run, context.config)
    evaluation = context.config.evaluation
    if evaluation.nod_transfer is not None:
        write_nod_tables(context.run, context.config.split_seed, evaluation.statistics)
    if evaluation.classification is not None:
        write_probe_tables(context.run)
    if evaluation.cross_subject:
        write_cross_subject_tables(context.run, encoding, evaluation.pooled_vs_cross,
                                   tuple(evaluation.pooled_vs_cross_exclude))

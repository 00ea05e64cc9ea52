"""Study jobs of the probe-based evaluations: classification, model landscape and saliency.

Every backbone of the study (untuned and each tuned model) gets a classification probe
(`cortexcl.evaluation.classification`) in ``<run>/classification/<dataset>/<backbone>/``; the
landscape job maps all probes' test probabilities (`cortexcl.evaluation.landscape`); a saliency
job explains a backbone's probe on the probe-test images and records the flip-controlled
lateralization index per image (`cortexcl.evaluation.saliency`) in
``<run>/saliency/<backbone>/``. The aggregate step turns these into tables (`write_probe_tables`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import stats
from torch.utils.data import DataLoader, Subset

from cortexcl.atomic import atomic_save_npy, atomic_write_csv
from cortexcl.config import ClassificationConfig, StudyConfig
from cortexcl.evaluation.classification import (
    LinearProbe,
    ProbeDataset,
    open_dataset,
    probe_backbone,
    probe_dir,
    probe_transform,
    simulated_dataset,
)
from cortexcl.evaluation.landscape import bhattacharyya_distances, embed
from cortexcl.evaluation.saliency import (
    ProbeNetwork,
    lateralization,
    one_sample_test,
    paired_test,
    probe_head,
    saliency_examples,
)
from cortexcl.models.backbones import ALEXNET, Backbone, build_backbone, get_backbone
from cortexcl.rundir import RunDirectory
from cortexcl.study.jobs import Job, backbone_name, model_dir, parse_backbone_name
from cortexcl.tuning.checkpoints import BACKBONE

CLASSIFICATION = "classification"
SALIENCY = "saliency"
N_EXAMPLES = 4


_DATASETS: dict[str, ProbeDataset] = {}


def probe_dataset(settings: ClassificationConfig, seed: int, progress: bool,
                  spec: Backbone = ALEXNET) -> ProbeDataset:
    """The study's probe data set, normalised for the backbone ``spec`` (opened once per
    process)."""
    key = f"{settings.model_dump_json()}-{seed}-{spec.mean}-{spec.std}"
    if key not in _DATASETS:
        transform = probe_transform(settings.image_size, mean=spec.mean, std=spec.std)
        if settings.dataset == "simulated":
            _DATASETS[key] = simulated_dataset(
                settings.n_images, image_size=settings.image_size * 256 // 224, seed=seed,
                transform=transform, progress=progress)
        else:
            _DATASETS[key] = open_dataset(settings.dataset, settings.root, transform=transform)
    return _DATASETS[key]


def job_backbone(job: Job, run: RunDirectory, config: StudyConfig) -> torch.nn.Module:
    """The backbone a probe or saliency job works on."""
    if job.method == "untuned":
        return build_backbone(config.backbone.name, config.backbone.weights,
                              seed=config.split_seed)
    return build_backbone(config.backbone.name, model_dir(
        run.root, job.method, job.subject, job.hemisphere, job.roi, job.seed) / BACKBONE)


def _name(job: Job) -> str:
    return backbone_name(job.method, job.subject, job.hemisphere, job.roi, job.seed)


def run_probe(job: Job, run: RunDirectory, config: StudyConfig, device: str | None,
              progress: bool) -> None:
    """Fit and score the classification probe of one backbone."""
    settings = config.evaluation.classification
    spec = get_backbone(config.backbone.name)
    probe_backbone(_name(job), job_backbone(job, run, config),
                   probe_dataset(settings, config.split_seed, progress, spec),
                   run.path(CLASSIFICATION), layer=probed_layer(config), probe=settings.probe,
                   seed=config.split_seed,
                   batch_size=settings.batch_size, device=device, progress=progress)


def _probe_folders(run: RunDirectory) -> list[Path]:
    return sorted(path.parent for path in
                  run.path(CLASSIFICATION).glob("*/*/summary.json"))


def run_landscape(run: RunDirectory, config: StudyConfig) -> None:
    """Bhattacharyya distances between all probes (and the oracle) and their embedding."""
    folders = _probe_folders(run)
    probabilities = {folder.name: np.load(folder / "probabilities.npy") for folder in folders}
    labels = np.load(folders[0] / "labels.npy")
    classes = LinearProbe.load(folders[0]).classes
    distances = bhattacharyya_distances(probabilities, np.searchsorted(classes, labels))
    atomic_write_csv(run.path("tables", "landscape_distances.csv"),
                     distances.reset_index(names="model"))
    embedding = embed(distances, config.evaluation.landscape.embedding, config.split_seed)
    frame = embedding.frame().reset_index(drop=True)
    frame.insert(0, "model", list(distances.index))
    frame["variant"] = config.evaluation.landscape.embedding
    # The report redraws the embedding from the distances.
    frame["embedding_seed"] = config.split_seed
    atomic_write_csv(run.path("tables", "landscape.csv"), frame)


class _DatasetImages:
    """Batches of a probe data set's images, in the interface `attribute` reads."""

    def __init__(self, dataset: ProbeDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def batches(self, indices: Sequence[int], batch_size: int,
                device: Any = None) -> Iterator[torch.Tensor]:
        loader = DataLoader(Subset(self.dataset.data, list(map(int, indices))),
                            batch_size=batch_size)
        for images, _ in loader:
            yield images.to(device) if device is not None else images


def run_saliency(job: Job, run: RunDirectory, config: StudyConfig, device: str | None,
                 progress: bool) -> None:
    """Lateralization of one backbone's probe salience on the probe-test images."""
    settings = config.evaluation.saliency
    classification = config.evaluation.classification
    folder = probe_dir(run.path(CLASSIFICATION), classification.dataset, _name(job))
    probe = LinearProbe.load(folder)
    spec = get_backbone(config.backbone.name)
    network = ProbeNetwork(job_backbone(job, run, config),
                           probe_head(probe.coef, probe.intercept, probe.mean, probe.scale),
                           probed_layer(config))
    # The images explained: the first probe-test images, with their true classes as targets.
    indices = np.load(folder / "test_indices.npy")[:settings.n_images]
    targets = np.searchsorted(probe.classes, np.load(folder / "labels.npy")[:indices.size])
    images = _DatasetImages(probe_dataset(classification, config.split_seed, progress, spec))
    axes = ["horizontal", "vertical"] if settings.vertical else ["horizontal"]
    layer = spec.gradcam or ""  # gradcam needs one: the config refuses it for transformers
    table = lateralization(network, images, targets, indices=indices,
                           method=settings.attribution, axes=axes, layer=layer,
                           batch_size=settings.batch_size, device=device, progress=progress)
    out = run.path(SALIENCY, _name(job))
    atomic_write_csv(out / "lateralization.csv", table)
    batch = next(images.batches(indices[:N_EXAMPLES], N_EXAMPLES))
    examples = saliency_examples(_name(job), network, batch, targets[:N_EXAMPLES],
                                 method=settings.attribution, layer=layer, device=device)
    atomic_save_npy(out / "example_maps.npy", examples.maps.astype(np.float32))
    atomic_save_npy(out / "example_maps_flipped.npy", examples.maps_flipped.astype(np.float32))
    atomic_save_npy(out / "example_probability.npy",
                    np.stack([examples.probability, examples.probability_flipped]))
    atomic_save_npy(out / "example_images.npy", _uint8_images(batch, spec))


def probed_layer(config: StudyConfig) -> str:
    """The layer the probes read: ``evaluation.classification.layer``, else the backbone's
    penultimate layer (AlexNet: fc7 after ReLU, ``classifier.5``)."""
    return (config.evaluation.classification.layer
            or get_backbone(config.backbone.name).penultimate)


def _uint8_images(batch: torch.Tensor, spec: Backbone) -> np.ndarray:
    """Normalised images back to uint8 pixels ``(B, H, W, 3)``."""
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    pixels = (batch.cpu() * std + mean).clamp(0, 1).permute(0, 2, 3, 1)
    return (pixels.numpy() * 255).round().astype(np.uint8)


def write_probe_tables(run: RunDirectory) -> None:
    """``classification.csv`` (one row per backbone) and the saliency tables."""
    folders = _probe_folders(run)
    if folders:
        rows = []
        for folder in folders:
            summary = json.loads((folder / "summary.json").read_text())
            summary.pop("transform", None)  # recorded in each summary.json; too long for a cell
            # "seed" of a probe is its split's; the table's seed is the backbone's tuning seed.
            summary["probe_seed"] = summary.pop("seed", None)
            identity = parse_backbone_name(folder.name)
            rows.append({**identity, **{k: v for k, v in summary.items() if k not in identity}})
        atomic_write_csv(run.path("tables", "classification.csv"), pd.DataFrame(rows))
    b_values = {path.parent.name: pd.read_csv(path) for path in
                sorted(run.path(SALIENCY).glob("*/lateralization.csv"))}
    if b_values:
        for name, table in saliency_tables(b_values).items():
            atomic_write_csv(run.path("tables", name), table)


def saliency_tables(b_values: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Tests of the flip-controlled index b (docs/method.md §7.2).

    Returns
    -------
    dict
        ``saliency.csv``: per model and axis, mean b with a bootstrap CI and a Wilcoxon test
        against 0, and the mean LI of original and mirrored images; ``saliency_pairs.csv``:
        per (method, tuning seed, subject, ROI, axis), the paired test of b_lh − b_rh over
        images; ``saliency_subjects.csv`` (with two or more subjects): per (method, ROI, axis),
        the Wilcoxon and sign tests of the per-subject mean differences (averaged over tuning
        seeds first), and a permutation test
        swapping hemisphere labels within subjects.
    """
    models, pairs = [], []
    for name, table in b_values.items():
        for axis, part in table.groupby("axis"):
            models.append({**parse_backbone_name(name), "model": name, "axis": axis,
                           "mean_li": part["li"].mean(),
                           "mean_li_flipped": part["li_flipped"].mean(),
                           **one_sample_test(part["b"].to_numpy())})
    models = pd.DataFrame(models).astype({"seed": "Int64"})
    tuned = models[models["method"] != "untuned"]
    for (method, seed, subject, roi, axis), part in tuned.groupby(
            ["method", "seed", "subject", "roi", "axis"]):
        sides = dict(zip(part["hemisphere"], part["model"], strict=True))
        if {"lh", "rh"} <= set(sides):
            left = _b(b_values[sides["lh"]], axis)
            right = _b(b_values[sides["rh"]], axis)
            pairs.append({"method": method, "seed": seed, "subject": subject, "roi": roi,
                          "axis": axis, **paired_test(left, right)})
    tables = {"saliency.csv": models}
    if pairs:
        tables["saliency_pairs.csv"] = pairs = pd.DataFrame(pairs)
        across = _across_subjects(pairs)
        if not across.empty:
            tables["saliency_subjects.csv"] = across
    return tables


def _b(table: pd.DataFrame, axis: str) -> np.ndarray:
    return table.loc[table["axis"] == axis].sort_values("image")["b"].to_numpy()


def _across_subjects(pairs: pd.DataFrame, n_permutations: int = 10_000,
                     seed: int = 0) -> pd.DataFrame:
    """Subjects as the unit of replication: tests of the per-subject mean b_lh − b_rh."""
    rows = []
    rng = np.random.default_rng(seed)
    # Tuning seeds are replicates within a subject: averaged before the subjects are compared.
    per_subject = pairs.groupby(["method", "roi", "axis", "subject"])["mean"].mean().reset_index()
    for (method, roi, axis), part in per_subject.groupby(["method", "roi", "axis"]):
        difference = part["mean"].to_numpy()
        if difference.size < 2:
            continue
        varied = np.any(difference != 0)
        # Swapping a subject's hemisphere labels flips the sign of its difference.
        signs = rng.choice([-1.0, 1.0], size=(n_permutations, difference.size))
        null = np.abs((signs * difference).mean(1))
        rows.append({
            "method": method, "roi": roi, "axis": axis, "n_subjects": difference.size,
            "mean_difference": float(difference.mean()),
            "n_positive": int(np.sum(difference > 0)),
            "p_wilcoxon": float(stats.wilcoxon(difference).pvalue) if varied else 1.0,
            "p_sign": float(stats.binomtest(int(np.sum(difference > 0)),
                                            int(np.sum(difference != 0)) or 1).pvalue),
            "p_permutation": float((1 + np.sum(null >= abs(difference.mean())))
                                   / (1 + n_permutations)),
        })
    return pd.DataFrame(rows)

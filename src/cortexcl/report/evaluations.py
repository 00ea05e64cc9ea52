"""Figures of the evaluations beyond single-subject encoding, each drawn when its tables exist."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from cortexcl.errors import InputError
from cortexcl.evaluation.landscape import embed
from cortexcl.evaluation.saliency import SaliencyExamples
from cortexcl.report.figures import ReportFigure, RunResults, save_figure, timed
from cortexcl.report.probe_figures import accuracy_matrix, landscape_scatter, model_group
from cortexcl.report.saliency_figures import draw_saliency_overlays
from cortexcl.report.transfer_figures import (
    cross_subject_heatmaps,
    nod_transfer_bars,
    pooled_vs_cross_scatter,
)
from cortexcl.study.jobs import backbone_name, parse_backbone_name

Drawer = Callable[[RunResults, Path], ReportFigure | None]
SIDE_COLORS = {"lh": "#1f77b4", "rh": "#d62728", "": "#555555"}


def classification_matrix(results: RunResults, out_dir: Path) -> ReportFigure | None:
    """Probe accuracy per hemisphere × ROI and model (docs/method.md §5)."""
    table = results.read_table("classification.csv")
    if table is None or (table["method"] == "untuned").all():
        return None
    dataset = str(table["dataset"].iloc[0])
    path = accuracy_matrix(table, out_dir / "classification.png",
                           title=f"Probe top-1 accuracy, {dataset}")
    return ReportFigure(
        "classification", path, "Classification probes",
        f"Top-1 accuracy of a logistic-regression probe on each backbone's "
        f"{table['layer'].iloc[0]} features ({dataset}; probe-train 85 %, scored on the rest). "
        "Columns: CL models per subject, their mean, then the other methods. "
        "tables/classification.csv has top-5 and the counts.")


def landscape_figure(results: RunResults, out_dir: Path) -> ReportFigure | None:
    """The model landscape: the first two embedding components, coloured by accuracy."""
    distances = results.read_table("landscape_distances.csv")
    accuracy = results.read_table("classification.csv")
    if distances is None or accuracy is None:
        return None
    distances = distances.set_index("model")
    settings = results.read_table("landscape.csv").iloc[0]
    variant = str(settings["variant"])
    embedding = embed(distances, variant, seed=int(settings["embedding_seed"]))
    groups = {}
    labels = accuracy.astype({"hemisphere": object, "roi": object})
    for row in labels.fillna({"hemisphere": "", "roi": ""}).itertuples():
        try:
            groups[row.name] = model_group(row.method, row.hemisphere or None, row.roi or None)
        except InputError:
            groups[row.name] = "other"
    groups["oracle"] = "Oracle"
    path = landscape_scatter(embedding, dict(zip(accuracy["name"], accuracy["top1"],
                                                 strict=True)),
                             groups, out_dir / "landscape.png")
    return ReportFigure(
        "landscape", path, "Model landscape",
        f"Bhattacharyya distances between the probes' test-set class probabilities of every "
        f"backbone and the oracle (true labels), embedded by {variant} (docs/method.md §6); colour "
        "= probe top-1 accuracy. tables/landscape_distances.csv holds the distances.")


def saliency_bars(results: RunResults, out_dir: Path) -> ReportFigure | None:
    """Mean flip-controlled lateralization index b per model, with bootstrap CIs."""
    table = results.read_table("saliency.csv")
    if table is None:
        return None
    table = table[table["axis"] == "horizontal"].astype({"hemisphere": object})
    table = table.fillna({"hemisphere": ""}).reset_index()
    fig = Figure(figsize=(1.5 + 0.45 * len(table), 3.6))
    ax = fig.subplots()
    x = np.arange(len(table))
    colors = [SIDE_COLORS.get(side, "#555555") for side in table["hemisphere"]]
    ax.bar(x, table["mean"], color=colors)
    ax.errorbar(x, table["mean"], yerr=[table["mean"] - table["ci_low"],
                                        table["ci_high"] - table["mean"]],
                fmt="none", ecolor="black", capsize=2, linewidth=0.8)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xticks(x, [m.replace("__", " ") for m in table["model"]], rotation=60, ha="right",
                  fontsize=7)
    ax.set_ylabel("b = ½ [LI(x) + LI(flip x)]")
    path = save_figure(fig, out_dir / "saliency_index.png")
    return ReportFigure(
        "saliency_index", path, "Lateralization of salience",
        "Flip-controlled lateralization index b per model (mean over the probe-test images, "
        "95 % bootstrap CI): LI = (right − left) / total attribution of the raw map, averaged "
        "over an image and its mirror image, so that content asymmetry cancels. Prediction: "
        "b > 0 for left-hemisphere models (blue), b < 0 for right-hemisphere models (red), 0 "
        "for untuned (grey). tables/saliency*.csv hold the Wilcoxon and paired tests.")


def saliency_overlays(results: RunResults, out_dir: Path) -> ReportFigure | None:
    """Maps of the first images, original and mirrored, for untuned and a pair of models."""
    folders = sorted(results.path("saliency").glob("*/example_maps.npy"))
    if not folders:
        return None
    by_name = {path.parent.name: path.parent for path in folders}
    chosen = ["untuned"] if "untuned" in by_name else []
    tuned = [name for name in by_name if name != "untuned"]
    if tuned:  # the first tuned model (method, subject, ROI, seed) in both hemispheres
        first = parse_backbone_name(tuned[0])
        chosen += [name for name in (backbone_name(first["method"], first["subject"], hemisphere,
                                                   first["roi"], first["seed"])
                                     for hemisphere in ("lh", "rh")) if name in by_name]
    models = []
    for name in chosen:
        folder = by_name[name]
        probability = np.load(folder / "example_probability.npy")
        models.append(SaliencyExamples(name.replace("__", " "),
                                       np.load(folder / "example_maps.npy"),
                                       np.load(folder / "example_maps_flipped.npy"),
                                       probability[0], probability[1]))
    images = np.load(by_name[chosen[0]] / "example_images.npy")
    path = draw_saliency_overlays(images, models, out_dir / "saliency_examples.png")
    return ReportFigure(
        "saliency_examples", path, "Salience maps",
        "Attribution maps of the true class for the first probe-test images and their mirror "
        "images (rows: models). Titles give LI and P(class), the probe's probability of the "
        "true class (not a p-value).")


DRAWERS: tuple[Drawer, ...] = (cross_subject_heatmaps, pooled_vs_cross_scatter,
                               nod_transfer_bars, classification_matrix, landscape_figure,
                               saliency_bars, saliency_overlays)


def evaluation_figures(results: RunResults) -> list[ReportFigure]:
    """Draw the figure of every evaluation the run holds tables for, in report order."""
    out_dir = results.path("figures")
    figures = (timed(lambda draw=draw: draw(results, out_dir)) for draw in DRAWERS)
    return [figure for figure in figures if figure is not None]

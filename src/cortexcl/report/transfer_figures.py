"""Figures of the transfer evaluations: cross-subject matrices and pooled vs cross-subject."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from cortexcl.report.figures import ReportFigure, RunResults, method_color, save_figure

GROUP_COLORS = {"early": "#1f77b4", "higher": "#d62728", "other": "#7f7f7f"}


def cross_subject_heatmaps(results: RunResults, out_dir: Path) -> ReportFigure | None:
    """Annotated model × target matrices of I (fraction of vertices improved), one per group."""
    table = results.read_table("cross_subject_groups.csv")
    if table is None:
        return None
    table = table[table["method"] == "cl"]
    groups = [g for g in ("early", "higher", "all") if g in set(table["group"])]
    subjects = sorted(set(table["model_subject"]) | set(table["target_subject"]))
    n = len(subjects)
    side = max(2.4, 0.75 * n)
    fig = Figure(figsize=(1.6 + 1.15 * side * len(groups), 1.4 + 0.65 * n))
    axes = fig.subplots(1, len(groups), squeeze=False)
    image = None
    for ax, group in zip(axes[0], groups, strict=True):
        part = table[table["group"] == group]
        matrix = (part.pivot(index="model_subject", columns="target_subject",
                             values="fraction_improved").reindex(index=subjects,
                                                                 columns=subjects))
        image = ax.imshow(matrix.to_numpy(), cmap="RdBu_r", vmin=0.0, vmax=1.0)
        for (i, j), value in np.ndenumerate(matrix.to_numpy()):
            if np.isfinite(value):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8)
        labels = [s.removeprefix("subj") for s in subjects]
        ax.set_xticks(range(n), labels)
        ax.set_yticks(range(n), labels)
        ax.set_xlabel("target subject")
        if ax is axes[0][0]:
            ax.set_ylabel("model subject")
        ax.set_title(f"{group} ROIs\n({int(part['n_entries'].max())} hemisphere × ROI)",
                     fontsize=9)
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="fraction of vertices improved")
    path = save_figure(fig, out_dir / "cross_subject.png")
    return ReportFigure(
        "cross_subject", path, "Cross-subject transfer",
        "I[m, t]: the fraction of target t's vertices where the CL backbone tuned on model "
        "subject m beats t's untuned backbone (both scored on t's test images, without the "
        "images that tuned the model), averaged over the group's hemisphere × ROI entries. "
        "The diagonal is each subject's own model; 0.5 means no change.")


def pooled_vs_cross_scatter(results: RunResults, out_dir: Path) -> ReportFigure | None:
    """One point per (target, hemisphere, ROI): cross-subject (x) vs pooled (y) improvement."""
    points = results.read_table("pooled_vs_cross.csv")
    if points is None:
        return None
    tests = results.read_table("pooled_vs_cross_tests.csv")
    methods = sorted(points["method"].unique())
    fig = Figure(figsize=(4.2 * len(methods), 4.0))
    axes = fig.subplots(1, len(methods), squeeze=False)
    for ax, method in zip(axes[0], methods, strict=True):
        part = points[points["method"] == method]
        for group, members in part.groupby("group"):
            ax.scatter(members["cross_pct"], members["pooled_pct"], s=22, label=group,
                       color=GROUP_COLORS.get(group, "#7f7f7f"), alpha=0.8)
        ax.plot([0, 100], [0, 100], color="#999", linewidth=0.8, linestyle="--")
        ax.set_xlim(0, 100)
        ax.set_ylim(0, 100)
        ax.set_xlabel("other subjects' CL models: % vertices improved")
        ax.set_ylabel(f"{method}: % vertices improved")
        title = method
        if tests is not None:
            row = tests[(tests["method"] == method) & (tests["group"] == "all")]
            if not row.empty:
                title += f"  (Δ {row.iloc[0]['mean_difference']:+.1f} pp, " \
                         f"sign-flip p {row.iloc[0]['p_signflip']:.2g}, " \
                         f"{row.iloc[0]['n_subjects']} subjects)"
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=8, loc="lower right")
    path = save_figure(fig, out_dir / "pooled_vs_cross.png")
    return ReportFigure(
        "pooled_vs_cross", path, "Pooled vs cross-subject backbones",
        "One point per target subject × hemisphere × ROI: x = mean over the other subjects' "
        "CL models of the % of vertices improved over the untuned backbone, y = the same for "
        "the pooled model. Points above the diagonal favour pooling; the title gives the mean "
        "difference and the exact sign-flip p across target subjects (the differences are "
        "averaged within each subject first: the unit is the subject, not the point; "
        "tables/pooled_vs_cross_tests.csv has the Wilcoxon and t tests, the tests per ROI "
        "group and their Holm and Benjamini–Hochberg adjustments).")


def nod_transfer_bars(results: RunResults, out_dir: Path) -> ReportFigure | None:
    """Mean test r of NOD V1-V4 per backbone method; the spread over source backbones."""
    summary = results.read_table("nod_transfer_summary.csv")
    if summary is None:
        return None
    entries = summary[["hemisphere", "roi"]].drop_duplicates().to_records(index=False)
    methods = sorted(summary["method"].unique(), key=lambda m: (m != "untuned", m))
    width = 0.8 / len(methods)
    fig = Figure(figsize=(1.2 + 0.9 * len(entries), 3.6))
    ax = fig.subplots()
    for i, method in enumerate(methods):
        part = summary[summary["method"] == method].set_index(["hemisphere", "roi"])
        rows = part.reindex([tuple(entry) for entry in entries])
        x = np.arange(len(entries)) + (i - (len(methods) - 1) / 2) * width
        ax.bar(x, rows["mean_r"], width, label=method, color=method_color(method))
        spread = [rows["mean_r"] - rows["min_r"], rows["max_r"] - rows["mean_r"]]
        if (rows["n_models"] > 1).any():
            ax.errorbar(x, rows["mean_r"], yerr=spread, fmt="none", ecolor="black",
                        capsize=2, linewidth=0.8)
    ax.set_xticks(range(len(entries)), [f"{h} {r}" for h, r in entries])
    ax.set_ylabel("mean test r (NOD)")
    ax.legend(fontsize=8)
    path = save_figure(fig, out_dir / "nod_transfer.png")
    return ReportFigure(
        "nod_transfer", path, "Transfer to NOD",
        "Mean test r of each NOD area (top vertices by pRF R²) encoded with the untuned "
        "backbone and with the NSD backbones of its counterpart ROI (same hemisphere), fit on "
        "the NOD subject's train part, chosen on val, scored on test; bars are means over NSD "
        "source subjects and NOD subjects, whiskers the range. tables/nod_transfer.csv has "
        "every model with its paired test against untuned (unit: the test image).")

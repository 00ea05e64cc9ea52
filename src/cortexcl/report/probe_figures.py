"""Figures of the classification probes and the model landscape (docs/method.md §5, §6).

* `accuracy_matrix`: probe top-1 accuracy, rows = hemisphere × ROI, columns = subjects, their
  mean, RT, pooled avg / const and untuned;
* `landscape_scatter`: the first two components of an `Embedding`, points coloured by
  accuracy and marked by group (`model_group`), with group means.

Each figure is drawn on its own `matplotlib.figure.Figure` (Agg canvas) and written atomically
as PNG; the functions return the path.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import PercentFormatter

from cortexcl.data.rois import HEMISPHERES, ROI_NAMES, roi_class
from cortexcl.data.subject import subject_name
from cortexcl.errors import InputError
from cortexcl.evaluation.landscape import ORACLE, Embedding
from cortexcl.report.figures import ordered, save_figure

ACCURACY_COLUMNS = ("subject", "hemisphere", "roi", "method", "top1")
SIDES = {"lh": "L", "rh": "R"}
LATE_CATEGORIES = {"floc-bodies": "Body", "floc-faces": "Face", "floc-places": "Place",
                   "floc-words": "Word"}
#: Columns of the accuracy matrix after the subjects: (method, label).
SUMMARY_COLUMNS = (("rt", "RT (mean)"), ("pooled-avg", "pooled avg"),
                   ("pooled-const", "pooled const"), ("untuned", "untuned"))
GROUP_ORDER = ("Early-L", "Early-R", "Late-Body", "Late-Face", "Late-Place", "Late-Word",
               "Untuned", "Oracle")
_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "<", ">", "h", "p", "d", "8", "H")


def model_group(method: str, hemisphere: str | None = None, roi: str | None = None,
                *, fine: bool = False) -> str:
    """Landscape group of a model (docs/method.md §6).

    ``untuned`` → "Untuned", ``oracle`` → "Oracle"; a prf ROI → "Early-L" / "Early-R" (with
    ``fine``: the ROI, V2v/V2d and V3v/V3d merged, e.g. "V2-L"); a floc ROI → "Late-Body",
    "Late-Face", "Late-Place" or "Late-Word" (either hemisphere).
    """
    if method.lower() in {"untuned", ORACLE}:
        return method.capitalize()
    if roi is None or hemisphere not in SIDES:
        raise InputError(f"model group: a {method} model needs a hemisphere (lh/rh) and an ROI")
    class_name, _ = roi_class(roi)
    if class_name == "prf-visualrois":
        if not fine:
            name = "Early"
        elif roi[:2] in {"V2", "V3"}:
            name = roi[:2]
        else:
            name = roi
        return f"{name}-{SIDES[hemisphere]}"
    if class_name in LATE_CATEGORIES:
        return f"Late-{LATE_CATEGORIES[class_name]}"
    raise InputError(f"model group: ROI {roi} is neither an early nor a higher ROI")


def _subject_label(subject) -> str:
    """``S1`` for 1, 1.0 (a column with gaps), "01" or "subj01"."""
    if isinstance(subject, float) and subject.is_integer():
        subject = int(subject)
    return "S" + subject_name(subject).removeprefix("subj").lstrip("0")


def accuracy_table(table: pd.DataFrame, value: str = "top1") -> pd.DataFrame:
    """The accuracy matrix as a table: index (hemisphere, ROI), one column per subject
    (``S1`` …, CL models), ``mean`` over subjects, then RT (mean over subjects), pooled avg,
    pooled const and untuned where present. Repeated entries (seeds) are averaged."""
    missing = [c for c in (*ACCURACY_COLUMNS[:-1], value) if c not in table.columns]
    if missing:
        raise InputError(f"accuracy matrix: table lacks column(s) {', '.join(missing)}")
    rows = table[table["method"] != "untuned"].dropna(subset=["hemisphere", "roi"])
    hemispheres = ordered(rows["hemisphere"].unique(), HEMISPHERES)
    rois = ordered(rows["roi"].unique(), ROI_NAMES)
    index = pd.MultiIndex.from_tuples(
        [(h, r) for h in hemispheres for r in rois
         if ((rows["hemisphere"] == h) & (rows["roi"] == r)).any()], names=["hemisphere", "roi"])
    matrix = pd.DataFrame(index=index)
    cl = rows[rows["method"] == "cl"].copy()
    if not cl.empty:
        cl["column"] = cl["subject"].map(_subject_label)
        wide = cl.pivot_table(index=["hemisphere", "roi"], columns="column", values=value,
                              aggfunc="mean")
        subjects = sorted(wide.columns, key=lambda label: int(label[1:]))
        matrix = matrix.join(wide[subjects])
        matrix["mean"] = matrix[subjects].mean(axis=1)
    for method, label in SUMMARY_COLUMNS:
        chosen = table[table["method"] == method]
        if chosen.empty:
            continue
        if method == "untuned":
            matrix[label] = chosen[value].mean()
        else:
            matrix[label] = chosen.groupby(["hemisphere", "roi"])[value].mean()
    return matrix


def accuracy_matrix(table: pd.DataFrame, path: str | Path, *, value: str = "top1",
                    title: str | None = None) -> Path:
    """Heat map of probe accuracy per hemisphere × ROI (rows) and model (columns), method §5.

    Parameters
    ----------
    table : pandas.DataFrame
        Long table, one row per model: ``subject`` (CL and RT), ``hemisphere``, ``roi``
        (empty for untuned), ``method`` (``cl``, ``rt``, ``pooled-avg``, ``pooled-const``,
        ``untuned``) and the accuracy column ``value``.
    path : path
        PNG written (atomically).
    value : str
        Accuracy column (``top1``).
    title : str, optional

    Returns
    -------
    Path
    """
    matrix = accuracy_table(table, value)
    if matrix.empty or matrix.shape[1] == 0:
        raise InputError("accuracy matrix: the table holds no tuned model to show")
    values = matrix.to_numpy(dtype=float)
    n_rows, n_columns = values.shape
    fig = Figure(figsize=(2.2 + 0.62 * n_columns, 1.4 + 0.27 * n_rows))
    ax = fig.add_subplot()
    cmap = colormaps["viridis"].with_extremes(bad="#e0e0e0")
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, aspect="auto")
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02, label=f"{value} accuracy (%)",
                 format=PercentFormatter(xmax=1, decimals=0))
    ax.set_xticks(range(n_columns), matrix.columns, rotation=45, ha="right")
    ax.set_yticks(range(n_rows), [f"{SIDES.get(h, h)} {r}" for h, r in matrix.index])
    ax.tick_params(length=0)
    norm = image.norm
    for (i, j), number in np.ndenumerate(values):
        if np.isfinite(number):
            shade = "black" if norm(number) > 0.6 else "white"
            ax.text(j, i, f"{100 * number:.1f}", ha="center", va="center", fontsize=8,
                    color=shade)
    if "mean" in matrix.columns:
        ax.axvline(list(matrix.columns).index("mean") - 0.5, color="white", lw=2)
    hemisphere_of = [h for h, _ in matrix.index]
    for i in range(1, n_rows):
        if hemisphere_of[i] != hemisphere_of[i - 1]:
            ax.axhline(i - 0.5, color="white", lw=2)
    ax.set_title(title or f"Probe {value} accuracy (%)")
    return save_figure(fig, Path(path))


def _title(embedding: Embedding) -> str:
    if np.isfinite(embedding.captured):
        n = embedding.coords.shape[1]
        return f"{embedding.variant}: {100 * embedding.captured:.1f} % of Σλ² in {n} components"
    return f"{embedding.variant}: stress-1 {embedding.stress:.3f}"


def _axis_label(embedding: Embedding, k: int) -> str:
    eigenvalue = embedding.eigenvalues[k]
    if not np.isfinite(eigenvalue):
        return f"component {k + 1}"
    kind = " time-like" if eigenvalue < 0 else ""
    return f"component {k + 1}{kind} (λ = {eigenvalue:.3g}, {100 * embedding.explained[k]:.1f} %)"


def landscape_scatter(
    embedding: Embedding,
    accuracy: Mapping[str, float],
    groups: Mapping[str, str],
    path: str | Path,
    *,
    title: str | None = None,
    group_means: bool = True,
) -> Path:
    """Scatter of the first two landscape components (docs/method.md §6).

    Points are coloured by accuracy (colour bar; models without an accuracy, such as the
    oracle, are drawn black) and marked by group, with a legend; with ``group_means`` each
    group's mean position is drawn large and labelled. The title records the embedding
    variant and the share of Σλ² captured (or the MDS stress).

    Parameters
    ----------
    embedding : Embedding
        From `cortexcl.evaluation.landscape.inpca` or `mds` (at least 2 components).
    accuracy : mapping of str to float
        Model → accuracy (e.g. ImageNet probe top-1).
    groups : mapping of str to str
        Model → group label (`model_group`); unlisted models form the group "other".
    path : path
        PNG written (atomically).
    title : str, optional
        Default from the embedding.
    group_means : bool
        Mark and label the group means.
    """
    if embedding.coords.shape[1] < 2:
        raise InputError("landscape scatter: the embedding has fewer than 2 components")
    frame = embedding.frame().iloc[:, :2]
    frame["group"] = [groups.get(name, "other") for name in frame.index]
    frame["accuracy"] = [accuracy.get(name, np.nan) for name in frame.index]
    scored = frame["accuracy"].dropna()
    norm = Normalize(scored.min(), scored.max()) if len(scored) else Normalize(0, 1)
    cmap = colormaps["viridis"]
    fig = Figure(figsize=(7.2, 5.6))
    ax = fig.add_subplot()
    names = ordered(frame["group"].unique(), GROUP_ORDER)
    handles = []
    for i, group in enumerate(names):
        part = frame[frame["group"] == group]
        marker = "*" if group == "Oracle" else _MARKERS[i % len(_MARKERS)]
        colors = [cmap(norm(a)) if np.isfinite(a) else "black" for a in part["accuracy"]]
        ax.scatter(part["c1"], part["c2"], c=colors, marker=marker, s=110 if marker == "*" else 36,
                   edgecolors="black", linewidths=0.4)
        handles.append(Line2D([], [], marker=marker, linestyle="", markeredgecolor="black",
                              markerfacecolor="black" if group == "Oracle" else "#d0d0d0",
                              label=f"{group} ({len(part)})"))
        if group_means:
            x, y = part["c1"].mean(), part["c2"].mean()
            ax.scatter([x], [y], marker=marker, s=190, facecolors="none", edgecolors="black",
                       linewidths=1.6)
            ax.annotate(group, (x, y), xytext=(5, 5), textcoords="offset points", fontsize=8,
                        fontweight="bold")
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="accuracy")
    ax.legend(handles=handles, fontsize=7, loc="best", framealpha=0.8, title="group (models)",
              title_fontsize=7)
    ax.set_xlabel(_axis_label(embedding, 0))
    ax.set_ylabel(_axis_label(embedding, 1))
    ax.set_title(title or _title(embedding), fontsize=10)
    return save_figure(fig, Path(path))

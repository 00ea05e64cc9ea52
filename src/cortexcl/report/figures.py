"""Figures of a run directory (docs/method.md §8).

* ``roi_bars``: mean test r per ROI and backbone, one panel per hemisphere;
* ``vertex_scatter``: per-vertex test r of each backbone against the untuned one;
* ``layer_matrix``: ROI × layer selection scores, the chosen layer outlined;
* ``training_curves``: train and validation loss per epoch of every tuned backbone;
* ``surface_maps``: per-vertex r and Δr on the inflated fsaverage5 surface (nilearn).

Every figure is drawn on its own `matplotlib.figure.Figure` (Agg canvas, no pyplot state) and
written atomically to ``<run>/figures/<name>.png``. A drawing function returns a `ReportFigure`,
or None when the run holds nothing for it to draw.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import MaxNLocator

from cortexcl.atomic import atomic_write_bytes
from cortexcl.data.rois import HEMISPHERES, ROI_NAMES, WHOLE_HEMISPHERE
from cortexcl.errors import InputError
from cortexcl.metrics import percent_improved
from cortexcl.rundir import read_table, seed_folder

BASELINE = "untuned"
METHOD_ORDER = ("untuned", "cl", "rt", "pooled-avg", "pooled-const")
METHOD_COLORS = {"untuned": "#8c8c8c", "cl": "#1f77b4", "rt": "#ff7f0e",
                 "pooled-avg": "#2ca02c", "pooled-const": "#9467bd"}
HEMISPHERE_NAMES = {"lh": "left hemisphere", "rh": "right hemisphere"}
FSAVERAGE5_N_VERTICES = 10242
# (name, {hemisphere: (elevation, azimuth)}): docs/method.md §8 views of the inflated surface.
SURFACE_VIEWS = (
    ("lateral", {"lh": (0, -180), "rh": (0, 0)}),
    ("posterior", {"lh": (15, -90), "rh": (15, -90)}),
    ("ventral", {"lh": (-89, -90), "rh": (-89, -90)}),
)
ZERO_THRESHOLD = 1e-14
DPI = 110
_REQUIRED_COLUMNS = ("subject", "hemisphere", "roi", "method", "mean_r")


@dataclass(frozen=True)
class ReportFigure:
    """A figure written to the run directory.

    Attributes
    ----------
    name : str
        File stem, e.g. ``"roi_bars"``.
    path : Path
        The PNG file.
    title, caption : str
        What the report prints under the figure.
    seconds : float
        Time taken to draw and write it.
    """

    name: str
    path: Path
    title: str
    caption: str
    seconds: float = 0.0


class RunResults:
    """The encoding results of a run directory, read from ``tables/encoding.csv``.

    Parameters
    ----------
    run_dir : path
        The run directory.

    Raises
    ------
    InputError
        If the table is missing, unreadable, empty or lacks the key columns.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.root = Path(run_dir)
        path = self.root / "tables" / "encoding.csv"
        if not self.root.is_dir():
            raise InputError(f"{self.root}: no such run directory")
        if not path.is_file():
            raise InputError(f"{path}: no results table; run a study (cortexcl run) or an "
                             "encoding (cortexcl encode) into this folder first")
        try:
            table = read_table(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
            message = " ".join(str(error).split())
            raise InputError(f"{path}: unreadable CSV ({message})") from None
        missing = [column for column in _REQUIRED_COLUMNS if column not in table]
        if missing:
            raise InputError(f"{path}: missing columns {', '.join(missing)}")
        if table.empty:
            raise InputError(f"{path}: the table has no rows")
        self.table = table
        self.methods = ordered(table["method"].unique(), METHOD_ORDER)
        self.subjects = sorted(str(s) for s in table["subject"].unique())
        self.hemispheres = ordered(table["hemisphere"].unique(), HEMISPHERES)
        self.rois = ordered(table["roi"].unique(), (*ROI_NAMES, WHOLE_HEMISPHERE))
        self.seeds = sorted(int(s) for s in table["seed"].dropna().unique()) \
            if "seed" in table else []

    def path(self, *parts: str) -> Path:
        """Return ``root / parts``."""
        return self.root.joinpath(*parts)

    def manifest(self) -> dict:
        """The run's ``manifest.json`` (empty when missing or unreadable)."""
        try:
            manifest = json.loads(self.path("manifest.json").read_text())
        except (OSError, ValueError):
            return {}
        return manifest if isinstance(manifest, dict) else {}

    def subject(self, requested: str | int | None = None) -> str:
        """The subject a per-subject figure shows: ``requested``, or the first of the run.

        Raises
        ------
        InputError
            If ``requested`` has no results in the run.
        """
        if requested is None:
            return self.subjects[0]
        from cortexcl.data.subject import subject_name

        name = subject_name(requested)
        if name not in self.subjects:
            raise InputError(f"--subject: {name} has no results in {self.root} "
                             f"(subjects: {', '.join(self.subjects)})")
        return name

    def read_table(self, name: str) -> pd.DataFrame | None:
        """``<run>/tables/<name>``, or None when it is missing, empty or unreadable."""
        path = self.path("tables", name)
        if not path.is_file() or path.stat().st_size == 0:
            return None
        try:
            table = read_table(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
            return None
        return None if table.empty else table

    def result_dirs(self, subject: str, hemisphere: str, roi: str, method: str) -> list[Path]:
        """Folders of a backbone's results: the untuned one's, or one per tuning seed."""
        folder = self.path("encoding", subject, hemisphere, roi, method)
        if (folder / "summary.json").is_file():
            return [folder]
        return sorted(path.parent for path in folder.glob(f"{seed_folder('*')}/summary.json"))

    def voxel_r(self, subject: str, hemisphere: str, roi: str, method: str) -> np.ndarray | None:
        """Per-vertex test r of one result (the mean over its tuning seeds), or None when the
        run lacks it."""
        values = [np.load(folder / "voxel_r.npy", allow_pickle=False)
                  for folder in self.result_dirs(subject, hemisphere, roi, method)
                  if (folder / "voxel_r.npy").is_file()]
        if not values or any(value.shape != values[0].shape for value in values):
            return None
        return np.mean(values, axis=0)


def ordered(values: Iterable, order: Sequence[str]) -> list[str]:
    """``values`` as strings, those listed in ``order`` first (in that order), the rest sorted."""
    values = {str(v) for v in values}
    return [v for v in order if v in values] + sorted(values - set(order))


def save_figure(fig: Figure, path: Path) -> Path:
    """Render ``fig`` to PNG in memory and write it atomically to ``path``."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
    return atomic_write_bytes(path, buffer.getvalue())


RANDOM_INIT_STAMP = "random-init weights (weights: none), not ImageNet: shows the pipeline only"


def stamp_figure(path: Path, text: str) -> Path:
    """Add a red banner with ``text`` above a saved PNG figure (rewritten atomically)."""
    from PIL import Image, ImageDraw, ImageFont

    with Image.open(path) as opened:
        image = opened.convert("RGB")
    size = 16
    font = ImageFont.load_default(size=size)
    while size > 8 and font.getlength(text) > image.width - 16:  # the whole text fits
        size -= 1
        font = ImageFont.load_default(size=size)
    height = int(font.size * 1.8)
    stamped = Image.new("RGB", (image.width, image.height + height), "white")
    stamped.paste(image, (0, height))
    ImageDraw.Draw(stamped).text((8, height // 2), text, fill="firebrick", font=font,
                                 anchor="lm")
    buffer = io.BytesIO()
    stamped.save(buffer, format="PNG")
    return atomic_write_bytes(path, buffer.getvalue())


def method_color(method: str) -> str:
    """Colour of a backbone in every figure."""
    return METHOD_COLORS.get(method, "#17becf")


def roi_colors(rois: Sequence[str]) -> dict[str, tuple]:
    """A distinct colour per ROI (tab10, or tab20 beyond ten ROIs)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(rois) <= 10 else "tab20"]
    return {roi: cmap(i % cmap.N) for i, roi in enumerate(rois)}


def timed(draw: Callable[[], ReportFigure | None]) -> ReportFigure | None:
    start = time.perf_counter()
    figure = draw()
    if figure is None:
        return None
    return ReportFigure(figure.name, figure.path, figure.title, figure.caption,
                        time.perf_counter() - start)


def roi_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Mean, SD (ddof 1) and number of subjects of the per-subject mean r.

    A tuned backbone's tuning seeds are averaged within each subject first. Indexed by
    hemisphere, ROI and method; SD is NaN for a single subject.
    """
    per_subject = table.groupby(["hemisphere", "roi", "method", "subject"])["mean_r"].mean()
    return per_subject.groupby(["hemisphere", "roi", "method"]).agg(
        mean="mean", sd="std", n_subjects="count")


def roi_bars(results: RunResults, out_dir: Path) -> ReportFigure:
    """Grouped bars of the mean test r per ROI (x) and backbone, one panel per hemisphere.

    Bars are means over subjects of each subject's mean r over the ROI's vertices (averaged
    over tuning seeds); error bars are the SD across subjects when the run has two subjects or
    more; with several tuning seeds, black dots show each seed's result (subject mean).
    """
    stats = roi_summary(results.table)
    # Each seed's mean over subjects, per hemisphere × ROI × method.
    seeded = ({key: part.groupby("seed")["mean_r"].mean().to_numpy() for key, part in
               results.table.dropna(subset=["seed"]).groupby(["hemisphere", "roi", "method"])}
              if len(results.seeds) > 1 else {})
    methods, rois = results.methods, results.rois
    with_sd = len(results.subjects) >= 2
    width = 0.8 / len(methods)
    fig = Figure(figsize=(max(6.0, 1.5 + len(rois) * (0.22 * len(methods) + 0.35)),
                          0.6 + 2.6 * len(results.hemispheres)), layout="constrained")
    axes = fig.subplots(len(results.hemispheres), 1, squeeze=False, sharey=True)[:, 0]
    for ax, hemisphere in zip(axes, results.hemispheres, strict=True):
        for k, method in enumerate(methods):
            keys = [(hemisphere, roi, method) for roi in rois]
            present = [i for i, key in enumerate(keys) if key in stats.index]
            rows = stats.loc[[keys[i] for i in present]]
            errors = rows["sd"].fillna(0.0).to_numpy() if with_sd else None
            x = np.array(present) + (k - (len(methods) - 1) / 2) * width
            ax.bar(x, rows["mean"], width, yerr=errors, capsize=2, color=method_color(method),
                   label=method, error_kw={"elinewidth": 0.8})
            for position, i in zip(x, present, strict=True):
                if keys[i] in seeded:
                    values = seeded[keys[i]]
                    ax.plot(np.full(values.size, position), values, linestyle="", marker="o",
                            markersize=2.5, color="black", zorder=3)
        ax.axhline(0.0, color="black", linewidth=0.6)
        ax.set_xticks(range(len(rois)), rois, rotation=45 if len(rois) > 8 else 0,
                      ha="right" if len(rois) > 8 else "center")
        ax.set_xlim(-0.6, len(rois) - 0.4)
        ax.set_ylabel("mean test r")
        ax.set_title(HEMISPHERE_NAMES.get(hemisphere, hemisphere), fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    handles = [Patch(color=method_color(m), label=m) for m in methods]
    if seeded:
        handles.append(Line2D([], [], linestyle="", marker="o", markersize=3, color="black",
                              label="one tuning seed"))
    fig.legend(handles=handles, loc="outside upper center", ncols=len(handles), frameon=False)
    path = save_figure(fig, out_dir / "roi_bars.png")
    n = len(results.subjects)
    spread = ("error bars: SD across subjects" if with_sd
              else "one subject, so no error bars")
    if seeded:
        spread += (f"; dots: each of the {len(results.seeds)} tuning seeds of a tuned backbone, "
                   f"whose bar is their mean")
    caption = (f"Mean test Pearson r over the vertices of each ROI for every backbone "
               f"(mean over {n} subject{'s' if n > 1 else ''}; {spread}). Each ROI has its own "
               f"encoding model whose layer and ridge penalties were chosen on validation images.")
    return ReportFigure("roi_bars", path, "Encoding accuracy per ROI", caption)


def vertex_scatter(results: RunResults, out_dir: Path) -> ReportFigure | None:
    """Per-vertex test r of every backbone (y) against the untuned backbone (x).

    One row per backbone, one column per hemisphere, one colour per ROI, all subjects pooled;
    the panel title gives the percentage of vertices above the identity line.
    """
    others = [m for m in results.methods if m != BASELINE]
    if BASELINE not in results.methods or not others:
        return None
    colors = roi_colors(results.rois)
    hemispheres = results.hemispheres
    fig = Figure(figsize=(0.6 + 3.4 * len(hemispheres) + 1.2, 0.4 + 3.3 * len(others)),
                 layout="constrained")
    axes = fig.subplots(len(others), len(hemispheres), squeeze=False)
    shown: set[str] = set()
    for row, method in enumerate(others):
        for col, hemisphere in enumerate(hemispheres):
            ax = axes[row, col]
            xs, ys = [], []
            for roi in results.rois:
                pairs = [(results.voxel_r(s, hemisphere, roi, BASELINE),
                          results.voxel_r(s, hemisphere, roi, method)) for s in results.subjects]
                pairs = [(x, y) for x, y in pairs if x is not None and y is not None
                         and x.shape == y.shape]
                if not pairs:
                    continue
                x = np.concatenate([p[0] for p in pairs])
                y = np.concatenate([p[1] for p in pairs])
                ax.scatter(x, y, s=5, alpha=0.55, color=colors[roi], linewidths=0,
                           rasterized=True)
                xs.append(x)
                ys.append(y)
                shown.add(roi)
            ax.set_xlabel(f"{BASELINE} r")
            ax.set_ylabel(f"{method} r")
            if not xs:
                ax.set_title(f"{hemisphere}: no {method} results", fontsize=9)
                continue
            x, y = np.concatenate(xs), np.concatenate(ys)
            low, high = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
            pad = 0.05 * max(high - low, 1e-3)
            limits = (low - pad, high + pad)
            ax.plot(limits, limits, color="black", linewidth=0.8, linestyle="--")
            ax.set_xlim(limits)
            ax.set_ylim(limits)
            ax.set_aspect("equal")
            ax.grid(alpha=0.3)
            ax.set_title(f"{hemisphere}: {method} > {BASELINE} in "
                         f"{percent_improved(y, x):.1f} % of {x.size} vertices", fontsize=9)
    handles = [Line2D([], [], marker="o", linestyle="", color=colors[roi], label=roi)
               for roi in results.rois if roi in shown]
    fig.legend(handles=handles, loc="outside right upper", frameon=False, title="ROI",
               fontsize=8)
    path = save_figure(fig, out_dir / "vertex_scatter.png")
    caption = ("Test r of every vertex under each tuned backbone (y) against the untuned "
               "backbone (x), vertices of all subjects pooled, coloured by ROI. Points above the "
               "dashed identity line are vertices the tuned backbone predicts better; the "
               "title gives their percentage."
               + (f" A tuned backbone's r is the mean over its {len(results.seeds)} tuning "
                  "seeds." if len(results.seeds) > 1 else ""))
    return ReportFigure("vertex_scatter", path, "Per-vertex comparison with the untuned "
                        "backbone", caption)


def _layer_scores(results: RunResults, subject: str, method: str
                  ) -> dict[tuple[str, str], pd.DataFrame]:
    """Each ROI's layer scores; over tuning seeds, the mean score and every layer a seed chose."""
    scores = {}
    for hemisphere in results.hemispheres:
        for roi in results.rois:
            frames = [pd.read_csv(folder / "layer_scores.csv")
                      for folder in results.result_dirs(subject, hemisphere, roi, method)
                      if (folder / "layer_scores.csv").is_file()]
            if frames:
                scores[hemisphere, roi] = (pd.concat(frames).groupby("layer", sort=False)
                                           .agg(mean_val_r=("mean_val_r", "mean"),
                                                selected=("selected", "any")).reset_index())
    return scores


def layer_matrix(results: RunResults, out_dir: Path, subject: str) -> ReportFigure | None:
    """Heatmaps of each ROI's layer selection score, one per backbone, chosen layer outlined."""
    per_method = {m: _layer_scores(results, subject, m) for m in results.methods}
    per_method = {m: s for m, s in per_method.items() if s}
    if not per_method:
        return None
    entries = [(h, r) for h in results.hemispheres for r in results.rois
               if any((h, r) in s for s in per_method.values())]
    layers: list[str] = []
    for scores in per_method.values():
        for frame in scores.values():
            layers.extend(layer for layer in frame["layer"] if layer not in layers)
    matrices, chosen = {}, {}
    for method, scores in per_method.items():
        matrix = np.full((len(entries), len(layers)), np.nan)
        chosen[method] = []
        for i, entry in enumerate(entries):
            frame = scores.get(entry)
            if frame is None:
                continue
            for _, row in frame.iterrows():
                j = layers.index(row["layer"])
                matrix[i, j] = row["mean_val_r"]
                if bool(row["selected"]):
                    chosen[method].append((i, j))
        matrices[method] = matrix
    values = np.concatenate([m[np.isfinite(m)] for m in matrices.values()])
    norm = Normalize(float(values.min()), float(values.max()))
    annotate = len(entries) * len(layers) <= 240
    fig = Figure(figsize=(2.0 + len(per_method) * (0.6 * len(layers) + 0.4),
                          2.0 + 0.38 * len(entries)), layout="constrained")
    axes = fig.subplots(1, len(per_method), squeeze=False, sharey=True)[0]
    for ax, (method, matrix) in zip(axes, matrices.items(), strict=True):
        ax.imshow(matrix, cmap="viridis", norm=norm, aspect="auto", interpolation="nearest")
        for i, j in chosen[method]:
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="#e41a1c",
                                   linewidth=2.0))
        if annotate:
            for i, j in zip(*np.nonzero(np.isfinite(matrix)), strict=True):
                value = matrix[i, j]
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8,
                        color="black" if norm(value) > 0.6 else "white")
        for i in range(1, len(entries)):
            if entries[i][0] != entries[i - 1][0]:
                ax.axhline(i - 0.5, color="white", linewidth=3)
        ax.set_xticks(range(len(layers)), layers, rotation=60, ha="right", fontsize=9)
        ax.set_yticks(range(len(entries)), [f"{h} {r}" for h, r in entries], fontsize=9)
        ax.set_xlabel("candidate layer")
        ax.set_title(f"{method} (outlined: chosen layer)", fontsize=11)
    axes[0].set_ylabel("hemisphere, ROI")
    colorbar = fig.colorbar(ScalarMappable(norm=norm, cmap="viridis"), ax=list(axes),
                            shrink=0.8)
    colorbar.set_label("mean validation r")
    path = save_figure(fig, out_dir / "layer_matrix.png")
    caption = (f"Selection score of every candidate layer for each ROI of {subject}: the mean "
               f"over the ROI's vertices of the validation r of the best ridge penalty (the "
               f"cross-validated r under the paper protocol)"
               + (f", averaged over the {len(results.seeds)} tuning seeds of a tuned backbone"
                  if len(results.seeds) > 1 else "")
               + ". The outlined cell is the layer chosen for the ROI, whose test r the "
               "tables report" + (" (every layer some seed chose)" if len(results.seeds) > 1
                                  else "") + ".")
    return ReportFigure("layer_matrix", path, f"ROI × layer selection scores ({subject})",
                        caption)


def training_curves(results: RunResults, out_dir: Path, subject: str) -> ReportFigure | None:
    """Train (solid) and validation (dashed) loss per epoch of each tuned backbone.

    One panel per tuned method × hemisphere, one colour per ROI; subject-specific backbones of
    ``subject`` and the pooled backbones.
    """
    logs: dict[tuple[str, str], list[tuple[str, Path, pd.DataFrame]]] = {}
    for method in results.methods:
        owner = "pooled" if method.startswith("pooled") else subject
        for hemisphere in results.hemispheres:
            for roi in results.rois:
                folder = results.path("models", owner, hemisphere, roi, method)
                for path in sorted(folder.glob(f"{seed_folder('*')}/train_log.csv")):
                    logs.setdefault((method, hemisphere), []).append(
                        (roi, path.parent, pd.read_csv(path)))
    if not logs:
        return None
    methods = [m for m in results.methods if any(k[0] == m for k in logs)]
    hemispheres = [h for h in results.hemispheres if any(k[1] == h for k in logs)]
    colors = roi_colors(results.rois)
    fig = Figure(figsize=(1.4 + 3.4 * len(hemispheres), 0.6 + 2.5 * len(methods)),
                 layout="constrained")
    axes = fig.subplots(len(methods), len(hemispheres), squeeze=False)
    shown: set[str] = set()
    early: set[str] = set()
    last = max(int(log["epoch"].max()) for entries in logs.values() for _, _, log in entries)
    for row, method in enumerate(methods):
        for col, hemisphere in enumerate(hemispheres):
            ax = axes[row, col]
            chance = set()
            for roi, model, log in logs.get((method, hemisphere), []):
                style = {"color": colors[roi], "linewidth": 1.2, "markersize": 3.5,
                         "marker": _seed_marker(model, results.seeds)}
                ax.plot(log["epoch"], log["train_loss"], **style)
                if "val_loss" in log and log["val_loss"].notna().any():
                    ax.plot(log["epoch"], log["val_loss"], linestyle="--", **style)
                    kept = _kept_epoch(model)
                    if kept is not None and kept != int(log["epoch"].iloc[-1]):
                        ax.plot(kept, log.set_index("epoch").loc[kept, "val_loss"], marker="*",
                                markersize=11, color=colors[roi], markeredgecolor="black",
                                linestyle="")
                        early.add(roi)
                shown.add(roi)
                batches = _batch_sizes(model)
                if method != "rt":
                    chance.update(batches.items())
            for part, batch in sorted(chance):
                ax.axhline(np.log(batch), color="grey", linewidth=1,
                           linestyle=":" if part == "train" else "-.")
                ax.annotate(f"chance, {part} batch {batch}", (0.99, np.log(batch)), fontsize=7,
                            color="grey", xycoords=("axes fraction", "data"), ha="right",
                            va="top")
            ax.set_title(f"{method}, {hemisphere}", fontsize=10)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlim(0.5, last + 0.5)  # integer ticks even for a single epoch
            ax.set_xlabel("epoch")
            ax.set_ylabel("MSE" if method == "rt" else "InfoNCE (nats)")
            ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=colors[roi], label=roi) for roi in results.rois
               if roi in shown]
    handles += [Line2D([], [], color="black", label="train"),
                Line2D([], [], color="black", linestyle="--", label="validation")]
    if early:
        handles.append(Line2D([], [], color="white", marker="*", markersize=11,
                              markeredgecolor="black", linestyle="", label="kept epoch"))
    if len(results.seeds) > 1:
        handles += [Line2D([], [], color="black", marker=_seed_marker(
            Path(seed_folder(seed)), results.seeds), linestyle="", label=f"seed {seed}")
            for seed in results.seeds]
    fig.legend(handles=handles, loc="outside right upper", frameon=False, fontsize=8)
    path = save_figure(fig, out_dir / "training_curves.png")
    caption = (f"Loss per epoch while tuning each backbone on the ROI's responses (subject-"
               f"specific backbones of {subject}, and pooled backbones): training images "
               f"(solid) and validation images (dashed), which never update the model. A "
               f"validation loss rising while the training loss falls signals overfitting. "
               f"A contrastive (InfoNCE) loss grows with the batch size: grey lines mark "
               f"chance (log of the batch size, in nats) for a training batch (dotted) and a "
               f"validation batch (dash-dotted); a curve below its line has learned to match "
               f"images and responses. "
               f"Regression tuning (rt) shows its mean squared error."
               + (" A star marks the epoch whose weights early stopping kept (the lowest "
                  "validation loss)." if early else "")
               + (f" Each of the {len(results.seeds)} tuning seeds draws its own curves "
                  f"(markers); curves of seeds that behave alike lie on top of each other."
                  if len(results.seeds) > 1 else ""))
    return ReportFigure("training_curves", path, "Tuning curves", caption)


SEED_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _seed_marker(model_dir: Path, seeds: Sequence[int]) -> str:
    """The marker of a tuning seed's curves (the model folder is ``…/seed-<s>``)."""
    name = model_dir.name
    for position, seed in enumerate(seeds):
        if name == seed_folder(seed):
            return SEED_MARKERS[position % len(SEED_MARKERS)]
    return SEED_MARKERS[0]


def _kept_epoch(model_dir: Path) -> int | None:
    """The epoch whose weights a tuned model kept (``kept_epoch`` of its meta), if recorded."""
    try:
        return int(json.loads((model_dir / "meta.json").read_text())["kept_epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _batch_sizes(model_dir: Path) -> dict[str, int]:
    """Pairs in a train and a val batch of a tuned model (min(batch size, images)), from meta."""
    try:
        meta = json.loads((model_dir / "meta.json").read_text())
        batch = int(meta["settings"]["batch_size"])
        return {part: min(batch, min(meta[f"n_{part}"].values()))
                for part in ("train", "val") if f"n_{part}" in meta}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


@dataclass
class _SurfaceValues:
    """Sums and counts of per-vertex values on fsaverage5, per hemisphere."""

    sums: dict[str, np.ndarray]
    counts: dict[str, np.ndarray]

    @classmethod
    def empty(cls, hemispheres: Sequence[str]) -> _SurfaceValues:
        return cls({h: np.zeros(FSAVERAGE5_N_VERTICES) for h in hemispheres},
                   {h: np.zeros(FSAVERAGE5_N_VERTICES, dtype=np.int64) for h in hemispheres})

    def add(self, hemisphere: str, vertices: np.ndarray, values: np.ndarray) -> None:
        np.add.at(self.sums[hemisphere], vertices, values)
        np.add.at(self.counts[hemisphere], vertices, 1)

    def means(self) -> dict[str, np.ndarray]:
        return {h: np.divide(s, self.counts[h], out=np.zeros_like(s),
                             where=self.counts[h] > 0) for h, s in self.sums.items()}

    def has_values(self) -> bool:
        return any(c.any() for c in self.counts.values())


def _on_fsaverage(data, hemisphere: str) -> bool:
    """Whether a part is a hemisphere whose columns have fsaverage vertices (can be drawn)."""
    return hemisphere in _PART and data.vertex_to_fsaverage(hemisphere) is not None


def surface_values(results: RunResults, data, subject: str
                   ) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, dict[str, np.ndarray]],
                              list[str]]:
    """Per-vertex test r and Δr (against the untuned backbone) as fsaverage5 vectors.

    Values go to the subject's fsaverage vertices (``data.vertex_to_fsaverage``); vertices
    beyond the first 10,242 (fsaverage5) are dropped and counted; a vertex in several ROIs gets
    the mean of its values; vertices in no ROI are 0. The whole-hemisphere pseudo-ROI ``all``
    is used only when the subject has no other ROI in the run.

    Parameters
    ----------
    results : RunResults
        The run's results.
    data : Subject
        The subject's dataset (``roi_indices`` and ``vertex_to_fsaverage``).
    subject : str
        Subject name in the run.

    Returns
    -------
    r_maps, delta_maps, notes
        ``{method: {hemisphere: float64 (10242,)}}`` for r and for Δr (tuned methods only;
        methods without any value are left out), and notes; the last note counts the dropped
        and the overlapping vertices per hemisphere.
    """
    rows = results.table[results.table["subject"] == subject]
    rois = [r for r in results.rois if r != WHOLE_HEMISPHERE and r in set(rows["roi"])]
    rois = rois or [WHOLE_HEMISPHERE]
    hemispheres = [h for h in results.hemispheres if h in set(rows["hemisphere"])
                   and _on_fsaverage(data, h)]
    maps = {m: _SurfaceValues.empty(hemispheres) for m in results.methods}
    deltas = {m: _SurfaceValues.empty(hemispheres) for m in results.methods if m != BASELINE}
    notes: list[str] = []
    counts = []
    for hemisphere in hemispheres:
        to_fsaverage = data.vertex_to_fsaverage(hemisphere)
        members = np.zeros(FSAVERAGE5_N_VERTICES, dtype=np.int64)
        outside: set[int] = set()
        for roi in rois:
            columns = data.roi_indices(hemisphere, roi)
            vertices = to_fsaverage[columns]
            keep = vertices < FSAVERAGE5_N_VERTICES
            outside.update(vertices[~keep].tolist())
            np.add.at(members, vertices[keep], 1)
            values = {}
            for method in results.methods:
                r = results.voxel_r(subject, hemisphere, roi, method)
                if r is None:
                    continue
                if r.shape != columns.shape:
                    notes.append(f"{subject} {hemisphere} {roi} {method}: voxel_r.npy has "
                                 f"{r.size} values but the ROI has {columns.size} vertices; "
                                 f"left out of the surface maps.")
                    continue
                values[method] = r
                maps[method].add(hemisphere, vertices[keep], r[keep])
            for method in deltas:
                if method in values and BASELINE in values:
                    deltas[method].add(hemisphere, vertices[keep],
                                       (values[method] - values[BASELINE])[keep])
        shared = int(np.sum(members > 1))
        if len(outside) or shared:
            counts.append(f"{hemisphere}: {len(outside)} vertices beyond fsaverage5 dropped, "
                          f"{shared} in several ROIs (averaged)")
    notes.append(f"Surface maps of {subject} ({', '.join(rois)})"
                 + (f": {'; '.join(counts)}." if counts else "."))
    return ({m: v.means() for m, v in maps.items() if v.has_values()},
            {m: v.means() for m, v in deltas.items() if v.has_values()}, notes)


def surface_maps(results: RunResults, out_dir: Path, subject: str,
                 data_root: str | Path | None) -> tuple[list[ReportFigure], list[str]]:
    """Surface maps of a subject: test r of every backbone and Δr of every tuned one.

    One figure per map, drawn on nilearn's bundled inflated fsaverage5 mesh over sulcal depth:
    lateral, posterior and ventral views of both hemispheres, ``cold_hot`` with limits
    ±max|value| shared by all r maps and by all Δr maps, zeros (no data) hidden. Values come
    from `surface_values`.

    Returns
    -------
    figures, notes
        The written figures (none when the subject's data cannot be read), and notes for the
        report (why maps are missing, vertices dropped, ROI overlaps).
    """
    if data_root is None:
        return [], ["Surface maps skipped: the run's manifest.json names no data_root."]
    from cortexcl.data.layouts import open_subject

    try:
        data = open_subject(data_root, subject, progress=False,
                            **results.manifest().get("data_options", {}))
    except (InputError, OSError) as error:
        return [], [f"Surface maps skipped: cannot read {subject} in {data_root} ({error})."]
    if not any(_on_fsaverage(data, h) for h in data.hemispheres):
        return [], ["Surface maps skipped: the data give no fsaverage vertex of their units "
                    "(layout folder: fsaverage/lh.npy, fsaverage/rh.npy)."]
    r_maps, delta_maps, notes = surface_values(results, data, subject)
    if not r_maps:
        return [], [*notes, "Surface maps skipped: no vertex of the ROIs lies on fsaverage5."]
    from nilearn import datasets

    fsaverage = datasets.load_fsaverage("fsaverage5")
    sulcal = datasets.load_fsaverage_data("fsaverage5", data_type="sulcal")
    hemispheres = next(iter(r_maps.values())).keys()
    mesh = {h: (fsaverage["inflated"].parts[_PART[h]], np.asarray(sulcal.data.parts[_PART[h]]))
            for h in hemispheres}
    counts = notes[-1].split(": ", 1)[1] if ": " in notes[-1] else ""
    figures = []
    for kind, group, label in (("r", r_maps, "test r"), ("delta", delta_maps, "Δr")):
        if not group:
            continue
        # A robust limit: the 99th percentile of |value| over the encoded vertices, so that one
        # extreme vertex does not wash out the rest (beyond it, colours saturate).
        every = np.concatenate([v[np.abs(v) > ZERO_THRESHOLD] for values in group.values()
                                for v in values.values()])
        if not every.size:
            notes.append(f"No {label} maps: every value is 0 (identical backbones?).")
            continue
        limit = float(np.percentile(np.abs(every), 99)) if every.size else 1.0
        limit = limit or 1.0
        # r maps that are (at least 99 %) positive use a sequential scale from 0, rarer negative
        # r saturating at its bottom colour; Δr and mixed-sign r maps a diverging one with a
        # light middle and a symmetric range.
        positive = kind == "r" and (every.size == 0 or float(np.percentile(every, 1)) >= 0)
        scale = (0.0, limit, "viridis") if positive else (-limit, limit, "RdBu_r")
        for method, values in group.items():
            start = time.perf_counter()
            name = f"surface_{kind}_{method}"
            if kind == "r":
                title = f"{method}: test r on the cortex ({subject})"
                what = f"the test r of every vertex under the {method} backbone"
                bar_label = f"{method} test r"
            else:
                title = f"{method} − {BASELINE}: Δr on the cortex ({subject})"
                what = (f"the gain in test r of the {method} backbone over the untuned one "
                        f"(red: better, blue: worse)")
                bar_label = f"Δr ({method} − {BASELINE})"
            path = _draw_surface(values, mesh, scale, bar_label, out_dir / f"{name}.png")
            limits = (f"0 (or below) to {limit:.2f}" if positive else f"±{limit:.2f}")
            caption = (f"{subject}: {what}, on the inflated fsaverage5 surface over sulcal "
                       f"depth (lateral, posterior and ventral views). Vertices outside the "
                       f"encoded ROIs are grey; colour limits {limits} (99th percentile of "
                       f"|value|; beyond it colours saturate) are shared by all {label} maps. "
                       f"{counts}")
            figures.append(ReportFigure(name, path, title, caption,
                                        time.perf_counter() - start))
    return figures, notes


_PART = {"lh": "left", "rh": "right"}


def _draw_surface(values: dict[str, np.ndarray], mesh: dict, scale: tuple[float, float, str],
                  label: str, path: Path) -> Path:
    from matplotlib import colormaps
    from nilearn import plotting

    vmin, vmax, cmap = scale
    hemispheres = list(values)
    fig = Figure(figsize=(3.0 * len(SURFACE_VIEWS) + 0.8, 2.8 * len(hemispheres)))
    for row, hemisphere in enumerate(hemispheres):
        surface, sulcal = mesh[hemisphere]
        for col, (view_name, views) in enumerate(SURFACE_VIEWS):
            ax = fig.add_subplot(len(hemispheres), len(SURFACE_VIEWS),
                                 row * len(SURFACE_VIEWS) + col + 1, projection="3d")
            plotting.plot_surf_stat_map(
                surface, values[hemisphere], bg_map=sulcal, hemi=_PART[hemisphere],
                view=views[hemisphere], engine="matplotlib", cmap=cmap,
                threshold=ZERO_THRESHOLD, vmin=vmin, vmax=vmax, symmetric_cbar=vmin < 0,
                colorbar=False, axes=ax, figure=fig)
            ax.set_box_aspect(None, zoom=1.35)
            ax.set_title(f"{hemisphere} {view_name}", fontsize=9, y=1.04)
    fig.subplots_adjust(left=0, right=0.9, bottom=0, top=0.95, wspace=0, hspace=0)
    colorbar_axes = fig.add_axes((0.92, 0.15, 0.015, 0.7))
    colorbar = fig.colorbar(ScalarMappable(norm=Normalize(vmin, vmax), cmap=colormaps[cmap]),
                            cax=colorbar_axes, extend="both")
    colorbar.set_label(label)
    return save_figure(fig, path)


def data_root_of(results: RunResults) -> str | None:
    """The data root recorded in the run's manifest, if any."""
    root = results.manifest().get("data_root")
    return str(root) if root else None


def make_figures(results: RunResults, subject: str | None = None, surfaces: bool = True
                 ) -> tuple[list[ReportFigure], list[str]]:
    """Draw every figure of a run into ``<run>/figures``.

    Parameters
    ----------
    results : RunResults
        The run's results.
    subject : str, optional
        Subject of the per-subject figures (layer matrix, training curves, surface maps); the
        first subject of the run by default.
    surfaces : bool
        Draw the cortical surface maps (the slowest figures).

    Returns
    -------
    figures, notes
        The figures written, in report order, and notes on what was left out.
    """
    subject = results.subject(subject)
    out_dir = results.path("figures")
    figures = [
        timed(lambda: roi_bars(results, out_dir)),
        timed(lambda: vertex_scatter(results, out_dir)),
        timed(lambda: layer_matrix(results, out_dir, subject)),
        timed(lambda: training_curves(results, out_dir, subject)),
    ]
    notes = []
    if figures[1] is None:
        notes.append("No per-vertex comparison: the run has no tuned backbone next to the "
                     "untuned one.")
    if figures[3] is None:
        notes.append("No tuning curves: the run holds no tuned models (models/).")
    if surfaces:
        surface_figures, surface_notes = surface_maps(results, out_dir, subject,
                                                      data_root_of(results))
        figures.extend(surface_figures)
        notes.extend(surface_notes)
    else:
        notes.append("Surface maps not drawn (turned off).")
    return [f for f in figures if f is not None], notes

"""Cross-subject transfer and pooled vs cross-subject models (docs/method.md §3.5, §3.6).

For every hemisphere × ROI, the backbone tuned on model subject *m* encodes target subject *t*
(PCA and ridge fit on *t*'s train part, α and layer chosen on *t*'s val part, scored on *t*'s
test part without the images that tuned the backbone). ``R[m, t]`` is the mean test r and
``I[m, t]`` the fraction of *t*'s vertices where the transferred backbone beats *t*'s untuned
one on the same images. The diagonal is *t*'s own model. Transfer results live in the run's
``cross_subject/`` folder, laid out like the run itself. With several tuning seeds, each
seed's models give their own entries (column ``seed``); group matrices and the pooled-vs-cross
comparison average over seeds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from cortexcl.atomic import atomic_write_csv
from cortexcl.data.rois import ROI_GROUPS
from cortexcl.evaluation.transfer import matched_baseline, split_transfer
from cortexcl.rundir import RunDirectory
from cortexcl.statistics import P_UNIT_SUBJECT, adjust_families, subject_tests

CROSS_SUBJECT = "cross_subject"
BASELINE = "untuned"
GROUPS = ("early", "higher")


def roi_group(roi: str) -> str:
    """``early``, ``higher`` or ``other`` (streams ROIs, whole hemisphere)."""
    return next((group for group in GROUPS if roi in ROI_GROUPS[group]), "other")


def _entry(summary_file: Path, baseline_dir: Path, model: str) -> dict | None:
    summary = json.loads(summary_file.read_text())
    r = np.load(summary_file.with_name("voxel_r.npy"))
    baseline = matched_baseline(summary_file.parent, BASELINE, baseline_dir)
    if baseline is None:
        return None
    method, _ = split_transfer(summary["method"])
    return {"hemisphere": summary["hemisphere"], "roi": summary["roi"],
            "group": roi_group(summary["roi"]), "method": method, "seed": summary.get("seed"),
            "model_subject": model,
            "target_subject": summary["subject"], "n_vertices": summary["n_vertices"],
            "mean_r": float(np.mean(r)), "mean_r_untuned": float(np.mean(baseline)),
            "fraction_improved": float(np.mean(r > baseline)),
            "n_test": summary["n_test"], "n_test_dropped": summary.get("n_test_dropped", 0)}


def cross_subject_table(run: RunDirectory, methods: tuple[str, ...] = ("cl",)) -> pd.DataFrame:
    """One row per (method, seed, hemisphere, ROI, model subject, target subject), diagonal
    included.

    Columns: hemisphere, roi, group, method, seed (tuning seed), model_subject, target_subject,
    n_vertices, mean_r
    (R), mean_r_untuned (the target's untuned backbone on the same test images),
    fraction_improved (I), n_test, n_test_dropped.
    """
    rows = []
    for owner in (RunDirectory(run.path(CROSS_SUBJECT)), run):  # transfers, then diagonal
        for summary_file in owner.result_summaries():
            summary = json.loads(summary_file.read_text())
            method, source = split_transfer(summary["method"])
            if method not in methods or (owner is not run) != (source is not None):
                continue
            baseline = run.encoding_dir(summary["subject"], summary["hemisphere"],
                                        summary["roi"], BASELINE)
            rows.append(_entry(summary_file, baseline, source or summary["subject"]))
    table = pd.DataFrame([row for row in rows if row is not None])
    if table.empty:
        return table
    table["seed"] = table["seed"].astype("Int64")
    return table.sort_values(["method", "hemisphere", "roi", "model_subject", "target_subject",
                              "seed"], ignore_index=True)


def group_matrices(table: pd.DataFrame) -> pd.DataFrame:
    """Mean I and R over a group's hemisphere × ROI entries (and tuning seeds), per (model,
    target) pair.

    Groups: early, higher, and ``all`` (every entry). Columns: method, group, model_subject,
    target_subject, fraction_improved, mean_r, n_entries.
    """
    frames = []
    for group in (*GROUPS, "all"):
        part = table if group == "all" else table[table["group"] == group]
        if part.empty:
            continue
        means = (part.groupby(["method", "model_subject", "target_subject"])
                 .agg(fraction_improved=("fraction_improved", "mean"),
                      mean_r=("mean_r", "mean"), n_entries=("roi", "size")).reset_index())
        means.insert(1, "group", group)
        frames.append(means)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def pooled_vs_cross(cross: pd.DataFrame, encoding: pd.DataFrame,
                    exclude: tuple[str, ...] = ()) -> pd.DataFrame:
    """Per (target, hemisphere, ROI, pooled method): the other subjects' models vs the pooled one.

    Parameters
    ----------
    cross : DataFrame
        `cross_subject_table` (CL rows).
    encoding : DataFrame
        The run's ``encoding.csv`` table (holds ``pct_improved_vs_untuned`` of the pooled
        methods, scored on the same test images as the untuned backbone).
    exclude : tuple of str
        Entries ``"<hemisphere>:<roi>"`` to leave out (none by default; docs/method.md §3.6).

    Returns
    -------
    DataFrame
        Columns subject, hemisphere, roi, group, method, seed (the tuning seed of the pooled
        and the cross-subject models), cross_pct (x = 100 · mean over m ≠ t of I[m, t]),
        pooled_pct (y = % of vertices where the pooled backbone beats the untuned one),
        n_models.
    """
    others = cross[(cross["method"] == "cl")
                   & (cross["model_subject"] != cross["target_subject"])]
    if others.empty:
        return pd.DataFrame()
    x = (others.groupby(["target_subject", "hemisphere", "roi", "seed"])["fraction_improved"]
         .agg(["mean", "size"]).reset_index())
    pooled = encoding[encoding["method"].str.startswith("pooled")]
    merged = x.merge(pooled, left_on=["target_subject", "hemisphere", "roi", "seed"],
                     right_on=["subject", "hemisphere", "roi", "seed"])
    merged = merged[~(merged["hemisphere"] + ":" + merged["roi"]).isin(exclude)]
    return pd.DataFrame({
        "subject": merged["subject"], "hemisphere": merged["hemisphere"],
        "roi": merged["roi"], "group": merged["roi"].map(roi_group),
        "method": merged["method"], "seed": merged["seed"],
        "cross_pct": 100.0 * merged["mean"],
        "pooled_pct": merged["pct_improved_vs_untuned"], "n_models": merged["size"],
    }).reset_index(drop=True)


def pooled_vs_cross_tests(points: pd.DataFrame) -> pd.DataFrame:
    """Paired tests of pooled_pct − cross_pct across target subjects, per pooled method and group.

    Entries of one target subject (its hemisphere × ROI points, and tuning seeds) share the
    subject's data, so they are not independent replicates: the differences are averaged
    within each target subject first, and the tests run across subjects
    (`cortexcl.statistics.subject_tests`: exact sign-flip permutation, Wilcoxon signed-rank,
    one-sample t; two-sided).

    Returns
    -------
    DataFrame
        Columns method, group, n_entries, n_subjects, mean_difference (percentage points,
        mean over subjects of the per-subject mean), p_unit (``subject``), p_signflip,
        p_wilcoxon, p_t, each followed by its Holm and Benjamini–Hochberg adjustments (family:
        one pooled method and test across the groups early, higher and all), min_p_exact (the
        smallest p the exact tests can give) and note (why a p-value is NaN, e.g. fewer than
        two subjects, or that too few subjects cannot reach p < 0.05).
    """
    rows = []
    for method, part in points.groupby("method"):
        for group in (*GROUPS, "all"):
            entries = part if group == "all" else part[part["group"] == group]
            if entries.empty:
                continue
            per_subject = (entries["pooled_pct"] - entries["cross_pct"]).groupby(
                entries["subject"]).mean()
            tests = subject_tests(per_subject.to_numpy())
            rows.append({
                "method": method, "group": group, "n_entries": len(entries),
                "n_subjects": tests["n_subjects"], "mean_difference": tests["mean_difference"],
                "p_unit": P_UNIT_SUBJECT, "p_signflip": tests["p_signflip"],
                "p_wilcoxon": tests["p_wilcoxon"], "p_t": tests["p_t"],
                "min_p_exact": tests["min_p_exact"], "note": tests["note"]})
    table = pd.DataFrame(rows)
    if not table.empty:
        adjust_families(table, ["p_signflip", "p_wilcoxon", "p_t"], by=["method"])
    return table


def write_cross_subject_tables(run: RunDirectory, encoding: pd.DataFrame, pooled: bool = False,
                               exclude: tuple[str, ...] = ()) -> None:
    """Write ``tables/cross_subject.csv`` and ``cross_subject_groups.csv``; with ``pooled``,
    also ``pooled_vs_cross.csv`` (the scatter's points) and ``pooled_vs_cross_tests.csv``."""
    cross = cross_subject_table(run)
    if cross.empty:
        return
    atomic_write_csv(run.path("tables", "cross_subject.csv"), cross)
    atomic_write_csv(run.path("tables", "cross_subject_groups.csv"), group_matrices(cross))
    points = pooled_vs_cross(cross, encoding, exclude) if pooled and not encoding.empty else None
    if points is not None and not points.empty:
        atomic_write_csv(run.path("tables", "pooled_vs_cross.csv"), points)
        atomic_write_csv(run.path("tables", "pooled_vs_cross_tests.csv"),
                         pooled_vs_cross_tests(points))

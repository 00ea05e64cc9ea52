"""Single-subject evaluation: every backbone of one subject × hemisphere × ROI, side by side.

Reads the per-ROI encoding results of a run and writes the long tables:

* ``tables/encoding.csv``: one row per subject × hemisphere × ROI × method with mean / median
  test r, the noise-normalised score where known, the best layer, and, for every method, the
  percentage of vertices improved and the paired Wilcoxon p over vertices against the untuned
  and the regression-tuned backbones;
* ``tables/groups.csv``: per hemisphere × ROI group × method, the mean over ROIs within a
  subject, then mean and SD over subjects, with paired t and Wilcoxon tests across subjects;
* ``tables/excluded.csv`` and ``tables/mutual_info.csv`` when there is something to list.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from scipy import stats

from cortexcl.atomic import atomic_write_csv
from cortexcl.config import StudyConfig
from cortexcl.data.rois import ROI_GROUPS
from cortexcl.encoding.pipeline import order_columns
from cortexcl.evaluation.transfer import matched_baseline
from cortexcl.metrics import paired_wilcoxon, percent_improved
from cortexcl.rundir import RunDirectory, read_table

BASELINES = ("untuned", "rt")
ENTRY = ["subject", "hemisphere", "roi"]


def collect_results(run: RunDirectory) -> pd.DataFrame:
    """One row per encoding result found in the run, with comparisons against the baselines.

    A result scored on fewer test images than its baseline (pooled backbones, whose tuning
    saw other subjects' copies of shared images) is compared on those images only.
    """
    rows = []
    for summary_file in sorted(run.path("encoding").glob("*/*/*/*/summary.json")):
        summary = json.loads(summary_file.read_text())
        mi_file = summary_file.with_name("mutual_info.json")
        if mi_file.is_file():
            summary.update(json.loads(mi_file.read_text()))
        rows.append(summary)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    for baseline in BASELINES:
        improved, p_values = [], []
        for _, row in table.iterrows():
            folder = run.encoding_dir(row.subject, row.hemisphere, row.roi, row.method)
            mine = np.load(folder / "voxel_r.npy")
            other = matched_baseline(folder, baseline, run.encoding_dir(
                row.subject, row.hemisphere, row.roi, baseline))
            if other is None or row.method == baseline:
                improved.append(np.nan)
                p_values.append(np.nan)
            else:
                improved.append(percent_improved(mine, other))
                p_values.append(paired_wilcoxon(mine, other))
        table[f"pct_improved_vs_{baseline}"] = improved
        table[f"p_vs_{baseline}"] = p_values
    return order_columns(table).sort_values([*ENTRY, "method"], ignore_index=True)


def group_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Group means (early / higher / streams) across subjects with paired tests.

    Within a subject, ROIs of a group are averaged without weights, using only the ROIs that
    every method of the table has (docs/method.md §3.4); then mean and SD over subjects. Each method
    is compared with each baseline by paired t and Wilcoxon tests across subjects.
    """
    rows = []
    methods = sorted(table["method"].unique())
    for group, members in ROI_GROUPS.items():
        part = table[table["roi"].isin(members)]
        complete = part.groupby(ENTRY)["method"].nunique() == len(methods)
        part = part.set_index(ENTRY).loc[complete[complete].index].reset_index()
        if part.empty:
            continue
        per_subject = part.groupby(["hemisphere", "subject", "method"])["mean_r"].mean()
        for hemisphere in sorted(part["hemisphere"].unique()):
            scores = per_subject.loc[hemisphere].unstack("method")
            for method in methods:
                row = {"hemisphere": hemisphere, "group": group, "method": method,
                       "n_subjects": len(scores), "n_rois": part[
                           (part.hemisphere == hemisphere) & (part.method == method)].shape[0],
                       "mean_r": scores[method].mean(), "sd_r": scores[method].std(ddof=1)}
                for baseline in BASELINES:
                    if baseline in scores and baseline != method:
                        row.update(_paired_tests(scores[method], scores[baseline], baseline))
                rows.append(row)
    return pd.DataFrame(rows)


def _paired_tests(a: pd.Series, b: pd.Series, baseline: str) -> dict[str, float]:
    difference = (a - b).to_numpy()
    if len(difference) < 2 or np.allclose(difference, difference[0]):
        return {f"p_t_vs_{baseline}": np.nan, f"p_wilcoxon_vs_{baseline}": np.nan}
    return {f"p_t_vs_{baseline}": float(stats.ttest_rel(a, b).pvalue),
            f"p_wilcoxon_vs_{baseline}": float(stats.wilcoxon(difference).pvalue)}


def write_tables(run: RunDirectory, config: StudyConfig | None = None) -> pd.DataFrame:
    """Write the run's tables (see the module docstring) and return ``encoding.csv``'s table."""
    table = collect_results(run)
    if table.empty:
        return table
    if config is not None:
        wanted = table["method"].isin(config.methods)
        table = table[wanted].reset_index(drop=True)
    atomic_write_csv(run.path("tables", "encoding.csv"), table)
    atomic_write_csv(run.path("tables", "groups.csv"), group_summary(table))
    excluded = [read_table(path) for path in sorted(run.path("jobs").glob("**/excluded.csv"))
                if path.stat().st_size > 1]
    if excluded:
        atomic_write_csv(run.path("tables", "excluded.csv"),
                   pd.concat(excluded, ignore_index=True).drop_duplicates())
    if "mi_bits" in table:
        columns = [c for c in table.columns if c.startswith("mi_")]
        atomic_write_csv(run.path("tables", "mutual_info.csv"),
                   table.dropna(subset=["mi_bits"])[[*ENTRY, "method", "n_vertices", *columns]])
    return table


def comparison_table(table: pd.DataFrame) -> pd.DataFrame:
    """A compact per-ROI view for the terminal: mean test r per method and CL's gains.

    Columns: one per method (mean test r), then ``CL>untuned %`` / ``p`` and ``CL>RT %`` /
    ``p`` (percentage of vertices where CL beats the baseline, paired Wilcoxon p over
    vertices) when those methods are present.
    """
    keys = ["hemisphere", "roi"] if table["subject"].nunique() == 1 else ENTRY
    wide = table.pivot_table(index=keys, columns="method", values="mean_r").reset_index()
    wide.columns.name = None
    cl = table[table["method"] == "cl"].set_index(keys)
    index = wide.set_index(keys).index
    for baseline, label in (("untuned", "untuned"), ("rt", "RT")):
        if f"pct_improved_vs_{baseline}" in cl and cl[f"p_vs_{baseline}"].notna().any():
            wide[f"CL>{label} %"] = index.map(cl[f"pct_improved_vs_{baseline}"]).to_numpy()
            wide[f"p ({label})"] = index.map(cl[f"p_vs_{baseline}"]).to_numpy()
    return wide

"""Single-subject evaluation: every backbone of one subject × hemisphere × ROI, side by side.

Reads the per-ROI encoding results of a run and writes the long tables:

* ``tables/encoding.csv``: one row per subject × hemisphere × ROI × method with mean / median
  test r, the noise-normalised score where known, the best layer, and, for every method
  against the untuned and the regression-tuned backbones, on the test images the two share:
  Δr (mean over vertices of r − r_baseline) with its bootstrap 95 % interval, the permutation
  p-value (unit: the test image; ``p_unit``), Holm and Benjamini–Hochberg adjusted p-values
  (family: one comparison, e.g. CL vs untuned, over every subject × hemisphere × ROI of the
  table), and the percentage of vertices improved (descriptive, no test);
* ``tables/groups.csv``: per hemisphere × ROI group × method, the mean over ROIs within a
  subject, then mean and SD over subjects, with paired tests across subjects (unit: the
  subject) and their Holm and Benjamini–Hochberg adjustments;
* ``tables/excluded.csv`` and ``tables/mutual_info.csv`` when there is something to list.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pandas as pd

from cortexcl.atomic import atomic_write_csv
from cortexcl.config import StatisticsConfig, StudyConfig
from cortexcl.data.rois import ROI_GROUPS
from cortexcl.evaluation.transfer import compare_results
from cortexcl.rundir import RunDirectory, read_table
from cortexcl.statistics import (
    P_UNIT_IMAGE,
    P_UNIT_SUBJECT,
    adjust_families,
    derive_seed,
    subject_tests,
)

BASELINES = ("untuned", "rt")
ENTRY = ["subject", "hemisphere", "roi"]
SUBJECT_TESTS = ("signflip", "wilcoxon", "t")


def collect_results(run: RunDirectory, methods: Sequence[str] | None = None, seed: int = 0,
                    statistics: StatisticsConfig | None = None) -> pd.DataFrame:
    """One row per encoding result found in the run, with comparisons against the baselines.

    Parameters
    ----------
    run : RunDirectory
        The run whose ``encoding/`` results are read.
    methods : sequence of str, optional
        Keep only these methods (all by default); the families of the adjusted p-values are
        formed after this selection.
    seed : int
        Base seed of the resamples; the comparison of ``method`` with ``baseline`` on
        subject × hemisphere × ROI uses ``derive_seed(seed, "<subject>/<hemisphere>/<roi>/
        <method>/vs/<baseline>")``.
    statistics : StatisticsConfig, optional
        Numbers of permutations and bootstrap resamples.

    Returns
    -------
    DataFrame
        The results' ``summary.json`` fields, then ``p_unit`` and, per baseline b,
        ``delta_r_vs_b``, ``ci_low_vs_b``, ``ci_high_vs_b``, ``p_vs_b``, ``p_holm_vs_b``,
        ``p_bh_vs_b``, ``pct_improved_vs_b`` and ``n_test_vs_b`` (test images compared: a
        result that dropped test images, such as a pooled backbone, is compared on its own
        rows). NaN where the baseline is missing (or not among ``methods``) or is the method
        itself.
    """
    statistics = statistics or StatisticsConfig()
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
    if methods is not None:
        table = table[table["method"].isin(methods)]
    table = table.sort_values([*ENTRY, "method"], ignore_index=True)
    table["p_unit"] = P_UNIT_IMAGE
    for baseline in BASELINES:
        columns = {name: np.full(len(table), np.nan) for name in (
            "delta_r", "ci_low", "ci_high", "p", "pct_improved", "n_test")}
        for i, row in enumerate(table.itertuples()):
            other = run.encoding_dir(row.subject, row.hemisphere, row.roi, baseline)
            wanted = methods is None or baseline in methods
            if row.method == baseline or not wanted or not (other / "summary.json").is_file():
                continue
            key = f"{row.subject}/{row.hemisphere}/{row.roi}/{row.method}/vs/{baseline}"
            result = compare_results(
                run.encoding_dir(row.subject, row.hemisphere, row.roi, row.method), other,
                seed=derive_seed(seed, key), n_permutations=statistics.n_permutations,
                n_bootstrap=statistics.n_bootstrap)
            for name in columns:
                columns[name][i] = getattr(result, "n_images" if name == "n_test" else name)
        for name, values in columns.items():
            table[f"{name}_vs_{baseline}"] = values if name != "n_test" else pd.array(
                values, dtype="Int64")
        adjust_families(table, [f"p_vs_{baseline}"], by=["method"])
    first = [*ENTRY, "method"]  # key columns first, the others in their order
    table = table[first + [c for c in table.columns if c not in first]]
    return table.sort_values(first, ignore_index=True)


def group_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Group means (early / higher / streams) across subjects with paired tests.

    Within a subject, ROIs of a group are averaged without weights, using only the ROIs that
    every method of the table has (docs/method.md §3.4); then mean and SD over subjects. Each method
    is compared with each baseline across subjects (the unit of replication is the subject;
    `cortexcl.statistics.subject_tests`): exact sign-flip permutation, Wilcoxon signed-rank and
    paired t tests, each with Holm and Benjamini–Hochberg adjustments over the family of one
    method, baseline and test across every hemisphere × group of the table. ``min_p_exact`` is
    the smallest p the exact tests can give with that many subjects; ``note`` says when they
    cannot reach 0.05 or a test is undefined.
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
                       "mean_r": scores[method].mean(), "sd_r": scores[method].std(ddof=1),
                       "p_unit": P_UNIT_SUBJECT, "min_p_exact": 2.0 / 2.0 ** len(scores)}
                notes = []
                for baseline in BASELINES:
                    if baseline in scores and baseline != method:
                        tests = subject_tests((scores[method] - scores[baseline]).to_numpy())
                        row.update({f"p_{test}_vs_{baseline}": tests[f"p_{test}"]
                                    for test in SUBJECT_TESTS})
                        notes.append(tests["note"])
                row["note"] = "; ".join(dict.fromkeys(note for note in notes if note))
                rows.append(row)
    groups = pd.DataFrame(rows)
    p_columns = [c for c in groups.columns if c.startswith("p_") and c != "p_unit"]
    if p_columns:
        adjust_families(groups, p_columns, by=["method"])
    return groups


def write_tables(run: RunDirectory, config: StudyConfig | None = None) -> pd.DataFrame:
    """Write the run's tables (see the module docstring) and return ``encoding.csv``'s table."""
    if config is None:
        table = collect_results(run)
    else:
        table = collect_results(run, config.methods, config.seed, config.evaluation.statistics)
    if table.empty:
        return table
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

    Columns: one per method (mean test r), then for CL against the untuned and the RT
    backbones when those are present: ``CL>untuned %`` (vertices improved, descriptive),
    ``Δr (untuned)`` (mean r difference on the shared test images), ``p (untuned)`` (the
    permutation test over test images) and ``p Holm (untuned)`` (adjusted over every
    subject × hemisphere × ROI of the table); the same for RT.
    """
    keys = ["hemisphere", "roi"] if table["subject"].nunique() == 1 else ENTRY
    wide = table.pivot_table(index=keys, columns="method", values="mean_r").reset_index()
    wide.columns.name = None
    cl = table[table["method"] == "cl"].set_index(keys)
    index = wide.set_index(keys).index
    for baseline, label in (("untuned", "untuned"), ("rt", "RT")):
        if f"p_vs_{baseline}" in cl and cl[f"p_vs_{baseline}"].notna().any():
            for column, title in (("pct_improved", f"CL>{label} %"), ("delta_r", f"Δr ({label})"),
                                  ("p", f"p ({label})"), ("p_holm", f"p Holm ({label})")):
                wide[title] = index.map(cl[f"{column}_vs_{baseline}"]).to_numpy()
    return wide

"""Single-subject evaluation: every backbone of one subject × hemisphere × ROI, side by side.

Reads the per-ROI encoding results of a run and writes the long tables:

* ``tables/encoding.csv``: one row per subject × hemisphere × ROI × method with mean / median
  test r, the noise-normalised score where known, the best layer, and, for every method
  against the untuned and the regression-tuned backbones, on the test images the two share:
  Δr (mean over vertices of r − r_baseline) with its bootstrap 95 % interval, the permutation
  p-value (unit: the test image; ``p_unit``), Holm and Benjamini–Hochberg adjusted p-values
  (family: one comparison, e.g. CL vs untuned, of one tuning seed, over every subject ×
  hemisphere × ROI of the table), and the percentage of vertices improved (descriptive, no
  test). A tuned backbone has one row per tuning seed (``seed``; empty for the untuned one),
  compared with the untuned backbone and with the RT backbone of the same seed;
* ``tables/seeds.csv`` (tuned backbones): per subject × hemisphere × ROI × method, the spread
  over tuning seeds of mean r and of Δr (mean, SD, min, max, and the 95 % t interval of the
  mean over seeds; unit: the tuning seed), and how many seeds were significant after Holm;
* ``tables/groups.csv``: per hemisphere × ROI group × method, the mean over tuning seeds and
  ROIs within a subject, then mean and SD over subjects, with paired tests across subjects
  (unit: the subject) and their Holm and Benjamini–Hochberg adjustments;
* ``tables/excluded.csv`` and ``tables/mutual_info.csv`` when there is something to list.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from cortexcl.atomic import atomic_write_csv
from cortexcl.config import StatisticsConfig, StudyConfig
from cortexcl.data.rois import ROI_GROUPS
from cortexcl.evaluation.transfer import compare_results
from cortexcl.rundir import RunDirectory, read_table, seed_folder
from cortexcl.statistics import (
    P_UNIT_IMAGE,
    P_UNIT_SEED,
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
        Base seed of the resamples (a study's split seed); the comparison of ``method`` with
        ``baseline`` on subject × hemisphere × ROI uses ``derive_seed(seed, "<subject>/
        <hemisphere>/<roi>/<method>/vs/<baseline>")``, with ``/seed-<s>`` after the method
        for a tuned backbone's replicate.
    statistics : StatisticsConfig, optional
        Numbers of permutations and bootstrap resamples.

    Returns
    -------
    DataFrame
        The results' ``summary.json`` fields (``seed``: the tuning seed, empty for the untuned
        backbone), then ``p_unit`` and, per baseline b (the RT baseline of the same seed),
        ``delta_r_vs_b``, ``ci_low_vs_b``, ``ci_high_vs_b``, ``p_vs_b``, ``p_holm_vs_b``,
        ``p_bh_vs_b``, ``pct_improved_vs_b`` and ``n_test_vs_b`` (test images compared: a
        result that dropped test images, such as a pooled backbone, is compared on its own
        rows). NaN where the baseline is missing (or not among ``methods``) or is the method
        itself, and for the untuned backbone against a seeded baseline (the RT rows hold
        that comparison, once per seed).
    """
    statistics = statistics or StatisticsConfig()
    rows = []
    for summary_file in run.result_summaries():
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
    table["seed"] = table.get("seed", pd.Series(dtype=object)).astype("Int64")
    table = table.sort_values([*ENTRY, "method", "seed"], ignore_index=True)
    table["p_unit"] = P_UNIT_IMAGE
    for baseline in BASELINES:
        columns = {name: np.full(len(table), np.nan) for name in (
            "delta_r", "ci_low", "ci_high", "p", "pct_improved", "n_test")}
        for i, row in enumerate(table.itertuples()):
            seed_ = None if pd.isna(row.seed) else int(row.seed)
            other = run.encoding_dir(row.subject, row.hemisphere, row.roi, baseline,
                                     None if baseline == "untuned" else seed_)
            wanted = methods is None or baseline in methods
            if row.method == baseline or not wanted or not (other / "summary.json").is_file():
                continue
            replicate = "" if seed_ is None else f"/{seed_folder(seed_)}"
            key = f"{row.subject}/{row.hemisphere}/{row.roi}/{row.method}{replicate}/vs/{baseline}"
            result = compare_results(
                run.encoding_dir(row.subject, row.hemisphere, row.roi, row.method, seed_), other,
                seed=derive_seed(seed, key), n_permutations=statistics.n_permutations,
                n_bootstrap=statistics.n_bootstrap)
            for name in columns:
                columns[name][i] = getattr(result, "n_images" if name == "n_test" else name)
        for name, values in columns.items():
            table[f"{name}_vs_{baseline}"] = values if name != "n_test" else pd.array(
                values, dtype="Int64")
        adjust_families(table, [f"p_vs_{baseline}"], by=["method", "seed"])
    first = [*ENTRY, "method", "seed"]  # key columns first, the others in their order
    table = table[first + [c for c in table.columns if c not in first]]
    return table.sort_values(first, ignore_index=True)


def seed_summary(table: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """The spread of each tuned backbone's results over its tuning seeds.

    Parameters
    ----------
    table : DataFrame
        `collect_results` (rows without a seed, such as the untuned backbone's, are skipped).
    confidence : float
        Level of the interval of the mean over seeds.

    Returns
    -------
    DataFrame
        One row per subject × hemisphere × ROI × method: ``n_seeds``; ``mean_r``, ``sd_r``,
        ``min_r``, ``max_r`` over seeds; per baseline b, ``delta_r_vs_b`` (mean over seeds),
        ``sd_delta_r_vs_b``, ``min_delta_r_vs_b``, ``max_delta_r_vs_b``, ``seed_ci_low_vs_b``
        and ``seed_ci_high_vs_b`` (Student t interval of the mean over seeds,
        mean ± t₀.₉₇₅,ₙ₋₁ · SD / √n; NaN with one seed; unit: the tuning seed, so it
        describes tuning variability, not the test images') and ``n_significant_vs_b`` (seeds
        with Holm-adjusted p < 0.05). Empty when no row has a seed.
    """
    seeded = table[table["seed"].notna()] if "seed" in table else table.iloc[:0]
    rows = []
    for (subject, hemisphere, roi, method), part in seeded.groupby([*ENTRY, "method"]):
        row = {"subject": subject, "hemisphere": hemisphere, "roi": roi, "method": method,
               "n_seeds": len(part), "seed_unit": P_UNIT_SEED, **_spread(part["mean_r"], "r")}
        for baseline in BASELINES:
            delta = part.get(f"delta_r_vs_{baseline}", pd.Series(dtype=float)).dropna()
            if delta.empty:
                continue
            spread = _spread(delta, f"delta_r_vs_{baseline}")
            row.update({f"delta_r_vs_{baseline}": spread.pop(f"mean_delta_r_vs_{baseline}"),
                        **spread})
            if delta.size > 1:
                low, high = stats.t.interval(confidence, delta.size - 1, loc=delta.mean(),
                                             scale=delta.std(ddof=1) / np.sqrt(delta.size))
            else:
                low = high = np.nan
            row.update({f"seed_ci_low_vs_{baseline}": low, f"seed_ci_high_vs_{baseline}": high,
                        f"n_significant_vs_{baseline}": int(
                            (part[f"p_holm_vs_{baseline}"] < 0.05).sum())})
        rows.append(row)
    summary = pd.DataFrame(rows)
    counts = [c for c in summary.columns if c.startswith("n_significant_vs_")]
    return summary.astype({c: "Int64" for c in counts})


def _spread(values: pd.Series, name: str) -> dict[str, float]:
    return {f"mean_{name}": float(values.mean()), f"sd_{name}": float(values.std(ddof=1)),
            f"min_{name}": float(values.min()), f"max_{name}": float(values.max())}


def group_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Group means (early / higher / streams) across subjects with paired tests.

    Within a subject, a tuned backbone's results are first averaged over its tuning seeds
    (replicates of one subject, not independent units), then ROIs of a group are averaged
    without weights, using only the ROIs that
    every method of the table has (docs/method.md §3.4); then mean and SD over subjects. Each method
    is compared with each baseline across subjects (the unit of replication is the subject;
    `cortexcl.statistics.subject_tests`): exact sign-flip permutation, Wilcoxon signed-rank and
    paired t tests, each with Holm and Benjamini–Hochberg adjustments over the family of one
    method, baseline and test across every hemisphere × group of the table. ``min_p_exact`` is
    the smallest p the exact tests can give with that many subjects; ``note`` says when they
    cannot reach 0.05 or a test is undefined.
    """
    rows = []
    table = table.groupby([*ENTRY, "method"], as_index=False)["mean_r"].mean()
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
        table = collect_results(run, config.methods, config.split_seed,
                                config.evaluation.statistics)
    if table.empty:
        return table
    atomic_write_csv(run.path("tables", "encoding.csv"), table)
    atomic_write_csv(run.path("tables", "groups.csv"), group_summary(table))
    seeds = seed_summary(table)
    if not seeds.empty:
        atomic_write_csv(run.path("tables", "seeds.csv"), seeds)
    excluded = [read_table(path) for path in sorted(run.path("jobs").glob("**/excluded.csv"))
                if path.stat().st_size > 1]
    if excluded:
        atomic_write_csv(run.path("tables", "excluded.csv"),
                   pd.concat(excluded, ignore_index=True).drop_duplicates())
    if "mi_bits" in table:
        columns = [c for c in table.columns if c.startswith("mi_")]
        atomic_write_csv(run.path("tables", "mutual_info.csv"), table.dropna(
            subset=["mi_bits"])[[*ENTRY, "method", "seed", "n_vertices", *columns]])
    return table


def comparison_table(table: pd.DataFrame) -> pd.DataFrame:
    """A compact per-ROI view for the terminal: mean test r per method and CL's gains.

    Columns: one per method (mean test r; for tuned backbones the mean over tuning seeds),
    then for CL against the untuned and the RT backbones when those are present:
    ``CL>untuned %`` (vertices improved, descriptive), ``Δr (untuned)`` (mean r difference on
    the shared test images) and, with one tuning seed, ``p (untuned)`` (the permutation test
    over test images) and ``p Holm (untuned)`` (adjusted over every subject × hemisphere × ROI
    of the table); with several seeds, ``Δr SD (untuned)`` (over seeds), ``max p Holm
    (untuned)`` (the least significant seed) and ``seeds p<.05 (untuned)`` (how many seeds have
    a Holm-adjusted p below 0.05, e.g. ``1/3``). The same for RT.
    """
    keys = ["hemisphere", "roi"] if table["subject"].nunique() == 1 else ENTRY
    wide = table.pivot_table(index=keys, columns="method", values="mean_r").reset_index()
    wide.columns.name = None
    cl = table[table["method"] == "cl"].groupby(keys)
    several = not table[table["method"] == "cl"].empty and cl.size().max() > 1
    index = wide.set_index(keys).index
    for baseline, label in (("untuned", "untuned"), ("rt", "RT")):
        if not (f"p_vs_{baseline}" in table and table.loc[table["method"] == "cl",
                                                            f"p_vs_{baseline}"].notna().any()):
            continue
        columns = [("pct_improved", "mean", f"CL>{label} %"), ("delta_r", "mean", f"Δr ({label})")]
        columns += ([("delta_r", "std", f"Δr SD ({label})"),
                     ("p_holm", "max", f"max p Holm ({label})")] if several else
                    [("p", "mean", f"p ({label})"), ("p_holm", "mean", f"p Holm ({label})")])
        for column, statistic, title in columns:
            wide[title] = index.map(cl[f"{column}_vs_{baseline}"].agg(statistic)).to_numpy()
        if several:
            counts = cl[f"p_holm_vs_{baseline}"].agg(
                lambda p: f"{int((p < 0.05).sum())}/{int(p.notna().sum())}")
            wide[f"seeds p<.05 ({label})"] = index.map(counts).to_numpy()
    return wide

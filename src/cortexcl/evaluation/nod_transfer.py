"""NSD backbones encoding the Natural Object Dataset (NOD) V1-V4 (docs/method.md §4).

Each NOD area is encoded with the same-hemisphere NSD backbones of its counterpart (V1-V3 →
V1v/V2v/V3v, or V1d/V2d/V3d with ``stream="dorsal"``; V4 → hV4) from every NSD subject, and
with the untuned backbone, under the clean protocol on the NOD subject's own split. Results
live in the run's ``nod/`` folder, laid out like the run itself. Each backbone is compared with
the untuned one on the NOD subject's test trials, with the test image as the unit of the
paired tests (`cortexcl.evaluation.transfer.compare_results`).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from cortexcl.atomic import atomic_write_csv
from cortexcl.config import StatisticsConfig
from cortexcl.evaluation.transfer import compare_results, split_transfer
from cortexcl.rundir import RunDirectory, seed_folder
from cortexcl.statistics import P_UNIT_IMAGE, adjust_families, derive_seed

NOD = "nod"
BASELINE = "untuned"
NSD_COUNTERPARTS = {
    "ventral": {"V1": "V1v", "V2": "V2v", "V3": "V3v", "V4": "hV4"},
    "dorsal": {"V1": "V1d", "V2": "V2d", "V3": "V3d", "V4": "hV4"},
}


def nsd_counterpart(nod_roi: str, stream: str = "ventral") -> str:
    """The NSD ROI whose backbones encode a NOD area."""
    return NSD_COUNTERPARTS[stream][nod_roi]


def nod_transfer_table(run: RunDirectory, seed: int = 0,
                       statistics: StatisticsConfig | None = None) -> pd.DataFrame:
    """One row per NOD subject × hemisphere × area × backbone.

    Parameters
    ----------
    run : RunDirectory
        The study's run (results under ``nod/encoding``).
    seed : int
        Base seed of the resamples; a row uses ``derive_seed(seed, "nod/<subject>/
        <hemisphere>/<area>/<backbone>[/seed-<s>]/vs/untuned")``.
    statistics : StatisticsConfig, optional
        Numbers of permutations and bootstrap resamples.

    Returns
    -------
    DataFrame
        Columns subject, hemisphere, roi, method, source (the NSD subject, ``pooled``, or empty
        for untuned), seed (the tuning seed; empty for untuned), n_vertices, mean_r,
        mean_r_untuned, then against the untuned backbone on the same test trials: delta_r
        (mean over vertices of r − r_untuned), ci_low, ci_high (bootstrap 95 %), p
        (permutation test; ``p_unit`` = test image), p_holm, p_bh (family: one method and
        seed across every NOD subject × hemisphere × area × source), pct_improved (vertices
        improved, descriptive), n_test; and best_layer.
    """
    statistics = statistics or StatisticsConfig()
    rows = []
    nod = RunDirectory(run.path(NOD))
    for summary_file in nod.result_summaries():
        summary = json.loads(summary_file.read_text())
        folder = summary_file.parent
        method, source = split_transfer(summary["method"])
        untuned = nod.encoding_dir(summary["subject"], summary["hemisphere"], summary["roi"],
                                   BASELINE)
        replicate = "" if summary.get("seed") is None else f"/{seed_folder(summary['seed'])}"
        row = {"subject": summary["subject"], "hemisphere": summary["hemisphere"],
               "roi": summary["roi"], "method": method, "source": source or "",
               "seed": summary.get("seed"),
               "n_vertices": summary["n_vertices"], "mean_r": summary["mean_r"],
               "mean_r_untuned": np.nan, "delta_r": np.nan, "ci_low": np.nan,
               "ci_high": np.nan, "p": np.nan, "p_unit": P_UNIT_IMAGE,
               "pct_improved": np.nan, "n_test": summary["n_test"],
               "best_layer": summary["best_layer"]}
        if (untuned / "summary.json").is_file():
            row["mean_r_untuned"] = json.loads((untuned / "summary.json").read_text())["mean_r"]
        if method != BASELINE and (untuned / "summary.json").is_file():
            key = f"nod/{summary['subject']}/{summary['hemisphere']}/{summary['roi']}/" \
                  f"{summary['method']}{replicate}/vs/{BASELINE}"
            result = compare_results(folder, untuned, seed=derive_seed(seed, key),
                                     n_permutations=statistics.n_permutations,
                                     n_bootstrap=statistics.n_bootstrap)
            row.update(delta_r=result.delta_r, ci_low=result.ci_low, ci_high=result.ci_high,
                       p=result.p, pct_improved=result.pct_improved, n_test=result.n_images)
        rows.append(row)
    table = pd.DataFrame(rows)
    if not table.empty:
        table["seed"] = table["seed"].astype("Int64")
        adjust_families(table, ["p"], by=["method", "seed"])
    return table


def nod_transfer_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and spread over source backbones, their tuning seeds and NOD subjects, per
    hemisphere × area × method.

    Columns: hemisphere, roi, method, n_models, mean_r, sd_r, min_r, max_r, mean_r_untuned,
    mean_delta_r, mean_pct_improved.
    """
    return (table.groupby(["hemisphere", "roi", "method"], sort=True)
            .agg(n_models=("mean_r", "size"), mean_r=("mean_r", "mean"),
                 sd_r=("mean_r", "std"), min_r=("mean_r", "min"), max_r=("mean_r", "max"),
                 mean_r_untuned=("mean_r_untuned", "mean"), mean_delta_r=("delta_r", "mean"),
                 mean_pct_improved=("pct_improved", "mean"))
            .reset_index())


def write_nod_tables(run: RunDirectory, seed: int = 0,
                     statistics: StatisticsConfig | None = None) -> None:
    """Write ``tables/nod_transfer.csv`` and ``tables/nod_transfer_summary.csv``.

    ``seed`` and ``statistics`` as in `nod_transfer_table`.
    """
    table = nod_transfer_table(run, seed, statistics)
    if table.empty:
        return
    atomic_write_csv(run.path("tables", "nod_transfer.csv"), table)
    atomic_write_csv(run.path("tables", "nod_transfer_summary.csv"), nod_transfer_summary(table))

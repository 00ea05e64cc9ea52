"""NSD backbones encoding the Natural Object Dataset (NOD) V1-V4 (docs/method.md §4).

Each NOD area is encoded with the same-hemisphere NSD backbones of its counterpart (V1-V3 →
V1v/V2v/V3v, or V1d/V2d/V3d with ``stream="dorsal"``; V4 → hV4) from every NSD subject, and
with the untuned backbone, under the clean protocol on the NOD subject's own split. Results
live in the run's ``nod/`` folder, laid out like the run itself.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from cortexcl.atomic import atomic_write_csv
from cortexcl.evaluation.transfer import matched_baseline, split_transfer
from cortexcl.metrics import paired_wilcoxon
from cortexcl.rundir import RunDirectory

NOD = "nod"
BASELINE = "untuned"
NSD_COUNTERPARTS = {
    "ventral": {"V1": "V1v", "V2": "V2v", "V3": "V3v", "V4": "hV4"},
    "dorsal": {"V1": "V1d", "V2": "V2d", "V3": "V3d", "V4": "hV4"},
}


def nsd_counterpart(nod_roi: str, stream: str = "ventral") -> str:
    """The NSD ROI whose backbones encode a NOD area."""
    return NSD_COUNTERPARTS[stream][nod_roi]


def nod_transfer_table(run: RunDirectory) -> pd.DataFrame:
    """One row per NOD subject × hemisphere × area × backbone.

    Columns: subject, hemisphere, roi, method, source (the NSD subject, ``pooled``, or empty
    for untuned), n_vertices, mean_r, mean_r_untuned, pct_improved (vertices where the
    backbone beats the untuned one), p_wilcoxon (paired over vertices), best_layer.
    """
    rows = []
    for summary_file in sorted(run.path(NOD, "encoding").glob("*/*/*/*/summary.json")):
        summary = json.loads(summary_file.read_text())
        folder = summary_file.parent
        method, source = split_transfer(summary["method"])
        r = np.load(folder / "voxel_r.npy")
        baseline = matched_baseline(folder, BASELINE, folder.with_name(BASELINE))
        compared = baseline is not None and method != BASELINE
        rows.append({
            "subject": summary["subject"], "hemisphere": summary["hemisphere"],
            "roi": summary["roi"], "method": method, "source": source or "",
            "n_vertices": summary["n_vertices"], "mean_r": float(np.mean(r)),
            "mean_r_untuned": float(np.mean(baseline)) if baseline is not None else np.nan,
            "pct_improved": 100.0 * float(np.mean(r > baseline)) if compared else np.nan,
            "p_wilcoxon": paired_wilcoxon(r, baseline) if compared else np.nan,
            "best_layer": summary["best_layer"],
        })
    return pd.DataFrame(rows)


def nod_transfer_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and spread over source backbones and NOD subjects, per hemisphere × area × method.

    Columns: hemisphere, roi, method, n_models, mean_r, sd_r, min_r, max_r, mean_r_untuned,
    mean_pct_improved.
    """
    return (table.groupby(["hemisphere", "roi", "method"], sort=True)
            .agg(n_models=("mean_r", "size"), mean_r=("mean_r", "mean"),
                 sd_r=("mean_r", "std"), min_r=("mean_r", "min"), max_r=("mean_r", "max"),
                 mean_r_untuned=("mean_r_untuned", "mean"),
                 mean_pct_improved=("pct_improved", "mean"))
            .reset_index())


def write_nod_tables(run: RunDirectory) -> None:
    """Write ``tables/nod_transfer.csv`` and ``tables/nod_transfer_summary.csv``."""
    table = nod_transfer_table(run)
    if table.empty:
        return
    atomic_write_csv(run.path("tables", "nod_transfer.csv"), table)
    atomic_write_csv(run.path("tables", "nod_transfer_summary.csv"), nod_transfer_summary(table))

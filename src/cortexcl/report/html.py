"""The run report: one self-contained HTML page (figures embedded as PNG data URIs)."""

from __future__ import annotations

import base64
import html
import json
import math
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from cortexcl.atomic import atomic_write_text
from cortexcl.data.rois import ROI_NAMES
from cortexcl.models.backbones import is_random_init
from cortexcl.report.evaluations import evaluation_figures
from cortexcl.report.figures import (
    BASELINE,
    METHOD_ORDER,
    RANDOM_INIT_STAMP,
    ReportFigure,
    RunResults,
    make_figures,
    ordered,
    stamp_figure,
)
from cortexcl.rundir import RunDirectory

REPORT = "report.html"
_KEY = ["subject", "hemisphere", "roi"]
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 75em; color: #222;
       padding: 0 1em; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.8em 0; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.best { font-weight: bold; } tr:nth-child(even) td { background: #fafafa; }
.warning { background: #fff3cd; border: 1px solid #e0b000; padding: 0.8em 1em;
           border-radius: 4px; margin: 1em 0; }
.note { color: #555; } .meta td:first-child { font-weight: bold; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #333; max-width: 60em; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
details { margin: 0.6em 0; } summary { cursor: pointer; color: #0b5394; }
"""


def build_report(run_dir: str | Path, *, subject: str | int | None = None,
                 surfaces: bool = True) -> Path:
    """Draw the figures of a run and write its ``report.html``.

    Parameters
    ----------
    run_dir : path
        A run directory holding ``tables/encoding.csv`` (written by ``cortexcl run``).
    subject : str or int, optional
        Subject of the per-subject figures (layer matrix, tuning curves, surface maps); the
        first subject of the run by default.
    surfaces : bool
        Draw the cortical surface maps (the slowest part).

    Returns
    -------
    Path
        ``<run_dir>/report.html``; the figures are in ``<run_dir>/figures/``.

    Raises
    ------
    InputError
        If the run has no readable results table, cannot be written, or ``subject`` has no
        results.
    """
    start = time.perf_counter()
    results = RunResults(run_dir)
    RunDirectory(run_dir).check_writable()
    for stale in results.path("figures").glob("*.png"):  # figures of an earlier report
        stale.unlink()
    figures, notes = make_figures(results, subject=subject, surfaces=surfaces)
    figures += evaluation_figures(results)
    if random_weights(results, results.manifest()):
        for figure in figures:
            stamp_figure(figure.path, RANDOM_INIT_STAMP)
    page = render_report(results, figures, notes, time.perf_counter() - start)
    return atomic_write_text(results.path(REPORT), page)


def render_report(results: RunResults, figures: list[ReportFigure], notes: list[str],
                  seconds: float) -> str:
    """The HTML page of a run (see `build_report`)."""
    manifest = results.manifest()
    config_path = results.path("config.yaml")
    config_text = config_path.read_text() if config_path.is_file() else ""
    name = _config_name(config_text) or results.root.name
    parts = [f"<h1>cortexcl report: {_e(name)}</h1>",
             f"<p class='note'>Run directory <code>{_e(results.root.resolve())}</code>"
             f"{_e(', created ' + manifest['created']) if 'created' in manifest else ''}.</p>",
             _overview(results, manifest), _weights_section(results, manifest),
             "<h2>Results</h2>", _comparison(results)]
    seeds = results.read_table("seeds.csv")
    if seeds is not None and (seeds["n_seeds"] > 1).any():
        parts += ["<h3>Spread over tuning seeds</h3>",
                  "<p class='note'>Each tuned backbone was tuned once per seed (the seed sets "
                  "the heads' initialisation and the batch order; the split and the untuned "
                  "backbone are the same for all). Per subject × hemisphere × ROI: mean r over "
                  "the seeds with its SD, minimum and maximum, and Δr against each baseline: "
                  "its mean over seeds, SD and the 95 % t interval of that mean (unit: the "
                  "tuning seed; it shows how much a result depends on the tuning run, and is "
                  "no test of the method), and how many seeds were significant after Holm "
                  "(n_significant).</p>",
                  html_table(seeds.drop(columns=["seed_unit"], errors="ignore"))]
    groups = results.read_table("groups.csv")
    if groups is not None:
        parts += ["<h3>ROI groups</h3>",
                  "<p class='note'>Per subject, the mean over tuning seeds and over the ROIs "
                  "of each group that every "
                  "backbone has; then mean and SD over subjects, with paired tests whose unit "
                  "is the subject (p_signflip: exact sign-flip permutation test, p_wilcoxon: "
                  "Wilcoxon signed-rank, p_t: paired t test; _holm and _bh: Holm and "
                  "Benjamini–Hochberg adjustments over every hemisphere × group of one "
                  "comparison and test). With n subjects the exact tests cannot give p below "
                  "min_p_exact = 2/2ⁿ.</p>",
                  html_table(groups)]
    excluded = results.read_table("excluded.csv")
    if excluded is not None:
        parts += ["<h3>Excluded ROIs</h3>", html_table(excluded)]
    mutual_info = results.read_table("mutual_info.csv")
    if mutual_info is not None:
        parts += ["<h3>Mutual-information bound</h3>",
                  "<p class='note'>InfoNCE lower bound on I(image; ROI response) in bits on the "
                  "test pairs (docs/method.md §7.1); it cannot exceed log2 K (mi_log2_k) for K "
                  "test pairs, and mi_bits_common_k evaluates every model at the study's "
                  "smallest K so that subjects compare. The estimate is log2 K minus the test "
                  "InfoNCE loss: it is negative whenever the model matches test pairs worse "
                  "than chance, i.e. the matching it learned does not generalise (the true "
                  "information is never negative). mi_bits embeds in eval mode, where the "
                  "head's BatchNorm running statistics blend images and responses (as "
                  "published), which can lower it further; mi_bits_modality_bn re-estimates "
                  "each modality's statistics on the train pairs.</p>",
                  html_table(mutual_info)]
    parts += ["<h2>Figures</h2>", *(_figure(f) for f in figures)]
    if notes:
        parts += ["<h3>Notes</h3><ul>", *(f"<li>{_e(n)}</li>" for n in notes), "</ul>"]
    parts += ["<h2>Tables and settings</h2>",
              _details("All results (tables/encoding.csv)", html_table(_keys_first(results.table)))]
    for path in sorted(results.path("tables").glob("*.csv")):
        if path.name not in ("encoding.csv", "groups.csv", "excluded.csv", "mutual_info.csv",
                             "seeds.csv"):
            table = results.read_table(path.name)
            if table is not None:
                parts.append(_details(f"tables/{path.name}", html_table(table)))
    if config_text:
        parts.append(_details("Study configuration (config.yaml)", f"<pre>{_e(config_text)}"
                              f"</pre>", open_=True))
    if manifest:
        parts.append(_details("Manifest (versions, hardware, seeds, data)",
                              f"<pre>{_e(json.dumps(manifest, indent=2))}</pre>"))
    version = manifest.get("versions", {}).get("cortexcl", "")
    built = datetime.now(timezone.utc).isoformat(timespec="seconds")
    parts.append(f"<p class='note'>Built by cortexcl {_e(version)} on {built} in "
                 f"{seconds:.1f} s.</p>")
    body = "\n".join(parts)
    return (f"<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
            f"<title>cortexcl report: {_e(name)}</title>\n<style>{_STYLE}</style>\n</head>\n"
            f"<body>\n{body}\n</body>\n</html>\n")


def html_table(table: pd.DataFrame, best: dict[int, set[str]] | None = None) -> str:
    """An HTML table, numbers formatted by column (see `format_number`), right-aligned.

    ``best`` maps a row position to the columns to print in bold.
    """
    columns = [str(c) for c in table.columns]
    numeric = [pd.api.types.is_numeric_dtype(table[c]) and not pd.api.types.is_bool_dtype(
        table[c]) for c in table.columns]
    integral = [n and bool(np.all(np.mod(table[c].dropna(), 1) == 0))
                for c, n in zip(table.columns, numeric, strict=True)]
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    rows = []
    for position, values in enumerate(table.itertuples(index=False, name=None)):
        cells = []
        for column, value, is_number, is_integer in zip(columns, values, numeric, integral,
                                                        strict=True):
            classes = ["num"] if is_number else []
            if best and column in best.get(position, ()):
                classes.append("best")
            if not is_number:
                text = "–" if pd.isna(value) else str(value)
            elif pd.isna(value):
                text = "–"
            else:
                text = str(int(value)) if is_integer else format_number(column, float(value))
            attribute = f" class='{' '.join(classes)}'" if classes else ""
            cells.append(f"<td{attribute}>{_e(text)}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table>\n<tr>{head}</tr>\n" + "\n".join(rows) + "\n</table>"


def format_number(column: str, value: float) -> str:
    """Format a number by its column name: p values in 3 decimals or scientific notation below
    0.001, percentages in 1 decimal, other values in 3 decimals (1 from 100 on)."""
    name = column.lower()
    if name.startswith("p_") or name.endswith(" p") or name == "p":
        return f"{value:.1e}" if abs(value) < 1e-3 else f"{value:.3f}"
    if "pct" in name or "%" in name or abs(value) >= 100:
        return f"{value:.1f}"
    return f"{value:.3f}"


def comparison_frame(table: pd.DataFrame) -> tuple[pd.DataFrame, dict[int, set[str]]]:
    """One row per subject × hemisphere × ROI: mean test r of each backbone and the gains.

    A tuned backbone with several tuning seeds shows the mean over its seeds of r, of the
    share of vertices improved and of Δr, and the largest (least significant) of its seeds'
    p-values.

    Returns the table and, per row, the backbone column(s) with the highest r (for bold type).
    """
    methods = ordered(table["method"].unique(), METHOD_ORDER)
    several = "seed" in table and table.groupby([*_KEY, "method"]).size().max() > 1
    numeric = [c for c in table.columns if c not in (*_KEY, "method", "seed")
               and pd.api.types.is_numeric_dtype(table[c])]
    indexed = table.groupby([*_KEY, "method"]).agg(
        {c: "max" if c.startswith("p_") else "mean" for c in numeric})
    p_label = "max p over seeds" if several else "p"
    frame = table[_KEY].drop_duplicates().sort_values(_KEY, key=_sort_key)
    frame = frame.reset_index(drop=True)
    entries = list(frame.itertuples(index=False, name=None))

    def values(column: str, method: str) -> list[float]:
        return [indexed[column].get((*entry, method), math.nan) for entry in entries]

    if "n_vertices" in table:
        sizes = table.groupby(_KEY)["n_vertices"].max()
        frame["vertices"] = [sizes[entry] for entry in entries]
    for method in methods:
        frame[f"r {method}"] = values("mean_r", method)
    for baseline in (BASELINE, "rt"):
        for method in methods:
            if baseline not in methods or method in (BASELINE, baseline):
                continue
            for column, label in ((f"pct_improved_vs_{baseline}", f"{method} % > {baseline}"),
                                  (f"delta_r_vs_{baseline}", f"{method} − {baseline} Δr"),
                                  (f"p_vs_{baseline}", f"{method} vs {baseline} {p_label}"),
                                  (f"p_holm_vs_{baseline}",
                                   f"{method} vs {baseline} Holm {p_label}")):
                if column in indexed:
                    frame[label] = values(column, method)
    best = {}
    if len(methods) > 1:
        scores = frame[[f"r {m}" for m in methods]]
        top = scores.max(axis=1)
        for position in range(len(frame)):
            best[position] = {c for c in scores.columns if scores.iloc[position][c] == top[
                position]}
    return frame, best


def _sort_key(column: pd.Series) -> pd.Series:
    if column.name != "roi":
        return column
    rank = {name: i for i, name in enumerate(ROI_NAMES)}
    return column.map(lambda roi: rank.get(roi, len(rank)))


def _comparison(results: RunResults) -> str:
    frame, best = comparison_frame(results.table)
    explanation = ("Mean test Pearson r over each ROI's vertices per backbone (bold: the "
                   "highest). For tuned backbones against each baseline, on the test images "
                   "both were scored on: the percentage of vertices with a higher r "
                   "(descriptive), Δr (mean over vertices of the difference in r), the p-value "
                   "of a permutation test that swaps the two backbones' predictions image by "
                   "image (the unit of replication is the test image, not the vertex: "
                   "vertices share the images and their noise), and that p-value adjusted by "
                   "Holm over every subject × hemisphere × ROI of the comparison. "
                   "tables/encoding.csv also has the bootstrap 95 % interval of Δr (over test "
                   "images) and Benjamini–Hochberg adjusted p-values.")
    return f"<p class='note'>{explanation}</p>\n" + html_table(frame, best)


def _overview(results: RunResults, manifest: dict) -> str:
    table = results.table
    facts = [("Subjects", ", ".join(results.subjects)),
             ("Hemispheres", ", ".join(results.hemispheres)),
             ("ROIs", ", ".join(results.rois)),
             ("Backbones", ", ".join(results.methods))]
    for column, label in (("protocol", "Protocol"), ("split_seed", "Split seed"),
                          ("seed", "Tuning seeds"), ("refit", "Refit"),
                          ("n_train", "Train images"), ("n_val", "Validation images"),
                          ("n_test", "Test images")):
        if column in table:
            values = sorted(table[column].dropna().unique(), key=str)
            facts.append((label, ", ".join(
                str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)
                for v in values)))
    if manifest.get("data_root"):
        facts.append(("Data", str(manifest["data_root"])))
    rows = "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in facts)
    return f"<table class='meta'>{rows}</table>"


def weights_used(results: RunResults, manifest: dict) -> pd.DataFrame:
    """One row per backbone: the weights its encoding used, in words.

    Tuned backbones are listed by their number of checkpoints in the run's ``models/`` folder
    and the weights they were tuned from (``weights`` of the manifest).
    """
    from cortexcl.tuning.checkpoints import BACKBONE

    rows = []
    start = manifest.get("weights")
    for method, labels in results.table.groupby("method", sort=False)["weights"]:
        labels = [str(label) for label in labels.dropna().unique()]
        tuned = [label for label in labels
                 if Path(label).name == BACKBONE and "models" in Path(label).parts]
        if tuned and len(tuned) == len(labels):
            text = f"{len(tuned)} tuned checkpoints in models/"
            if start:
                text += f", tuned from weights: {start}"
        else:
            text = "; ".join(labels)
        rows.append({"backbone": method, "weights": text})
    frame = pd.DataFrame(rows, columns=["backbone", "weights"])
    order = ordered(frame["backbone"], METHOD_ORDER)
    return frame.set_index("backbone").loc[order].reset_index()


def random_weights(results: RunResults, manifest: dict) -> bool:
    """Whether the backbones started from random weights (``weights: none``)."""
    labels = [str(w) for column in ("weights", "initial_weights")
              for w in results.table.get(column, pd.Series(dtype=str)).dropna()]
    labels.append(str(manifest.get("weights", "")))
    return any(is_random_init(label) for label in labels)


def _weights_section(results: RunResults, manifest: dict) -> str:
    parts = []
    if random_weights(results, manifest):
        parts.append("<div class='warning'><strong>Random initial weights.</strong> The "
                     "backbones of this run start from a random initialisation (weights: "
                     "none), not from ImageNet-pretrained AlexNet, so the results say nothing "
                     "about the published setting; they only show that the pipeline works."
                     "</div>")
    if "weights" in results.table:
        parts.append(html_table(weights_used(results, manifest)))
    return "\n".join(parts)


def _figure(figure: ReportFigure) -> str:
    data = base64.b64encode(figure.path.read_bytes()).decode("ascii")
    return (f"<figure id='{_e(figure.name)}'>\n<img alt='{_e(figure.title)}' "
            f"src='data:image/png;base64,{data}'>\n<figcaption><strong>{_e(figure.title)}."
            f"</strong> {_e(figure.caption)} <span class='note'>(figures/{figure.path.name})"
            f"</span></figcaption>\n</figure>")


def _keys_first(table: pd.DataFrame) -> pd.DataFrame:
    first = [c for c in (*_KEY, "method") if c in table]
    return table[first + [c for c in table.columns if c not in first]]


def _details(summary: str, content: str, open_: bool = False) -> str:
    return (f"<details{' open' if open_ else ''}><summary>{_e(summary)}</summary>\n{content}\n"
            f"</details>")


def _config_name(config_text: str) -> str | None:
    for line in config_text.splitlines():
        if line.startswith("name:"):
            return line.removeprefix("name:").strip().strip("'\"") or None
    return None


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)

"""The ``cortexcl`` command line: it parses arguments and calls the Python API, nothing more."""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cortexcl.errors import InputError

app = typer.Typer(
    help="Contrastive fine-tuning of image models for the visual cortex, and voxel-wise encoding.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True)
stdout = Console(width=None if sys.stdout.isatty() else 120)  # logs keep whole tables

DEMO_OUT = Path("cortexcl-demo")
Device = Annotated[str | None, typer.Option(help="auto, cpu or cuda; auto = cuda if present.")]
Hemispheres = Annotated[list[str], typer.Option("--hemisphere", "-H", help="lh and/or rh.")]
Rois = Annotated[list[str], typer.Option(
    "--roi", "-r", help="ROI names or groups (early, higher, streams, early+higher); "
                        "'all' = every vertex of the hemisphere.")]


@app.command()
def simulate(
    out: Annotated[Path, typer.Argument(help="Data root; the subject goes to OUT/subjNN "
                                             "(layout nsd: the NSD release folders).")],
    subject: Annotated[int, typer.Option(help="Subject number.")] = 1,
    layout: Annotated[str, typer.Option(
        help="algonauts (the Algonauts 2023 release) or nsd (the native NSD release).")
    ] = "algonauts",
    n_images: Annotated[int, typer.Option(help="Training images (nsd: images shown).")] = 1000,
    n_test_images: Annotated[int, typer.Option(
        help="Challenge test images (no fMRI; algonauts only).")] = 50,
    n_sessions: Annotated[int, typer.Option(help="Scan sessions (nsd only).")] = 8,
    nan_vertices: Annotated[int, typer.Option(
        help="Left-hemisphere vertices with NaN betas in one session (nsd only).")] = 0,
    image_size: Annotated[int, typer.Option(help="Image side in pixels.")] = 256,
    roi_masks: Annotated[Path | None, typer.Option(
        help="Copy the masks from this real Algonauts roi_masks folder (algonauts only).")
    ] = None,
    roi_scale: Annotated[float, typer.Option(
        help="Scale of the synthetic ROI sizes (real counts of --reference-subject).")] = 0.1,
    reference_subject: Annotated[int, typer.Option(
        help="NSD subject whose ROI sizes the synthetic masks copy.")] = 1,
    seed: Annotated[int, typer.Option(help="Seed of everything simulated.")] = 0,
) -> None:
    """Write a simulated subject with a known ground truth in the Algonauts 2023 or NSD
    layout."""
    from cortexcl.data.simulate import simulate_nsd, simulate_subject
    from cortexcl.data.subject import subject_name

    if layout not in ("algonauts", "nsd"):
        raise InputError(f"--layout: expected algonauts or nsd, got {layout!r}")
    wrong = [option for option, given in (
        ("--n-test-images", n_test_images != 50), ("--roi-masks", roi_masks is not None),
        ("--n-sessions", n_sessions != 8), ("--nan-vertices", nan_vertices != 0))
        if given and (option in ("--n-sessions", "--nan-vertices")) != (layout == "nsd")]
    if wrong:
        raise InputError(f"{', '.join(wrong)}: not an option of --layout {layout}")
    existing = (out / "ground_truth" if layout == "nsd" else out) / subject_name(subject)
    if existing.exists():  # it may be real data: never replaced from the command line
        raise InputError(f"{existing}: already exists; choose another data root or --subject, "
                         "or remove it first")
    with _options_named("--"):
        if layout == "nsd":
            path = simulate_nsd(out, subject=subject, n_images=n_images, n_sessions=n_sessions,
                                image_size=image_size, roi_scale=roi_scale,
                                reference_subject=reference_subject, seed=seed,
                                nan_vertices=nan_vertices)
        else:
            path = simulate_subject(out, subject=subject, n_images=n_images,
                                    n_test_images=n_test_images, image_size=image_size,
                                    roi_masks=roi_masks, roi_scale=roi_scale,
                                    reference_subject=reference_subject, seed=seed)
    stdout.print(f"simulated subject written to {path}")


@app.command("simulate-nod")
def simulate_nod(
    out: Annotated[Path, typer.Argument(help="NOD root; the subject goes to OUT/sub-XX.")],
    subject: Annotated[int, typer.Option(help="Subject number.")] = 1,
    n_sessions: Annotated[int, typer.Option(help="ImageNet sessions (NOD: 4).")] = 4,
    n_runs: Annotated[int, typer.Option(help="Runs per session (NOD: 10).")] = 10,
    trials_per_run: Annotated[int, typer.Option(help="Trials per run (NOD: 100).")] = 100,
    image_size: Annotated[int, typer.Option(help="Width of the 4:3 stimuli in pixels.")] = 128,
    vertices_per_roi: Annotated[int, typer.Option(
        help="Grayordinates of each of V1-V4 per hemisphere.")] = 60,
    seed: Annotated[int, typer.Option(help="Seed of everything simulated.")] = 0,
) -> None:
    """Write a simulated subject in the NOD layout (BIDS events + ciftify CIFTI betas)."""
    from cortexcl.data.simulate import simulate_nod_subject

    path = simulate_nod_subject(out, subject, n_sessions=n_sessions, n_runs=n_runs,
                                trials_per_run=trials_per_run, image_size=image_size,
                                vertices_per_roi=vertices_per_roi, seed=seed)
    stdout.print(f"simulated NOD subject written to {path}")


@app.command()
def encode(
    data: Annotated[Path, typer.Argument(help="Data root of the layout (Algonauts 2023: holds "
                                              "subjNN/).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory.")],
    layout: Annotated[str, typer.Option(
        help="algonauts, nsd (native release), nod or folder (your own data).")] = "algonauts",
    sessions: Annotated[str | None, typer.Option(
        help="nsd: first-last session read, e.g. 1-37 (default: every session).")] = None,
    space: Annotated[str | None, typer.Option(
        help="nsd: challenge (vertices of any ROI) or cortex.")] = None,
    labels: Annotated[Path | None, typer.Option(
        help="nsd: folder of fsaverage ROI labels (default nsddata/freesurfer/subjNN/label).")
    ] = None,
    ncsnr: Annotated[Path | None, typer.Option(
        help="algonauts: native NSD root, for noise ceilings.")] = None,
    split: Annotated[str, typer.Option(
        help="random, or sessions (nsd: test = images of the last three sessions only).")
    ] = "random",
    subject: Annotated[str, typer.Option("--subject", "-s", help="Subject: 1 or subj01.")] = "1",
    hemisphere: Hemispheres = ["lh", "rh"],  # noqa: B006
    roi: Rois = ["early"],  # noqa: B006
    weights: Annotated[str, typer.Option(
        help="imagenet, none (random init) or a path to a state dict.")] = "imagenet",
    backbone: Annotated[str, typer.Option(
        help="alexnet, efficientnet_lite0 (ImageNet weights offline), timm:<model> or "
             "torchvision:<model>.")] = "alexnet",
    layer: Annotated[list[str] | None, typer.Option(
        help="Candidate layer (repeat); default the backbone's (cortexcl layers).")] = None,
    method: Annotated[str, typer.Option(help="Name of the backbone in the results.")] = "untuned",
    seed: Annotated[int, typer.Option(help="Seed of the split (and of random weights).")] = 0,
    protocol: Annotated[str, typer.Option(help="clean (train/val/test) or paper.")] = "clean",
    n_components: Annotated[int, typer.Option(help="PCA components (at most).")] = 1000,
    refit: Annotated[str, typer.Option(
        help="Fit of the reported model: train+val or train.")] = "train+val",
    min_vertices: Annotated[int, typer.Option(help="Skip (and list) smaller ROIs.")] = 20,
    image_size: Annotated[int, typer.Option(help="Network input size.")] = 224,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 64,
    standardize: Annotated[bool, typer.Option(
        help="Scale features to unit variance on the train images before PCA.")] = False,
    alpha_grid: Annotated[str, typer.Option(
        help="relative (α × each fit's mean PCA eigenvalue) or absolute (published).")
    ] = "relative",
    device: Device = None,
    cache_dir: Annotated[Path | None, typer.Option(help="Image cache folder.")] = None,
    fresh: Annotated[bool, typer.Option(
        help="Start over: remove what OUT holds when it belongs to another run.")] = False,
) -> None:
    """Fit voxel-wise encoding models (PCA + ridge) of one subject's ROIs."""
    from cortexcl.config import parse_section
    from cortexcl.workflows import encode as run_encode

    settings = parse_section("encoding", {
        "protocol": protocol, "n_components": n_components, "refit": refit,
        "batch_size": batch_size, "standardize": standardize, "alpha_grid": alpha_grid,
        "layers": layer or None, "split": split}, option=True)
    reading = {"layout": layout, "ncsnr": ncsnr, "rois": labels}
    if space is not None:
        reading["space"] = space
    if sessions is not None:
        first, _, last = sessions.partition("-")
        if not (first.strip().isdigit() and last.strip().isdigit()):
            raise InputError(f"--sessions: expected FIRST-LAST such as 1-37, got {sessions!r}")
        reading["sessions"] = [int(first), int(last)]
    try:
        reading = parse_section("data", reading, option=True)
    except InputError as error:  # a check across options names the settings: name the options
        message = str(error)
        for key, option in (("rois", "labels"), ("sessions", "sessions"), ("space", "space"),
                            ("ncsnr", "ncsnr"), ("layout", "layout")):
            message = re.sub(rf"(?<![-\w]){key}\b", f"--{option}", message)
        raise InputError(message) from None
    table = run_encode(data, out, subject=subject, hemispheres=hemisphere, rois=roi,
                       weights=weights, backbone=backbone, method=method, seed=seed,
                       settings=settings, min_vertices=min_vertices, image_size=image_size,
                       device=device, cache_dir=cache_dir, fresh=fresh, announce=_announce,
                       reading=reading)
    print_summary(table, f"Encoding results ({_networks(table)}), {out}/tables/encoding.csv")
    _warn(table)


@app.command("export-algonauts")
def export_algonauts(
    run: Annotated[Path, typer.Argument(help="Run directory with whole-hemisphere encodings.")],
    out: Annotated[Path, typer.Argument(help="Submission folder (gets subjNN/).")],
    method: Annotated[str, typer.Option(
        help="The backbone: untuned, cl, rt or an encode --method name.")] = "untuned",
    seed: Annotated[int | None, typer.Option(
        help="Tuning seed of a tuned backbone (default: the only one).")] = None,
    device: Device = None,
) -> None:
    """Write Algonauts 2023 submission files ({lh,rh}_pred_test.npy) from a run's ROI-all
    encodings."""
    from cortexcl.encoding.export import export_algonauts as run_export

    table = run_export(run, out, method=method, seed=seed, device=device, announce=_announce)
    print_summary(table.drop(columns=["file"]), f"Submission files in {out} ({out}/export.csv)",
                  every_column=True)


@app.command()
def layers(
    backbone: Annotated[str, typer.Argument(
        help="alexnet, efficientnet_lite0, timm:<model> or torchvision:<model>.")] = "alexnet",
    every: Annotated[bool, typer.Option(
        "--all", help="Every module a layer may name, not only the default candidates.")] = False,
) -> None:
    """List a backbone's candidate layers (the encoding models' default) or every module."""
    from cortexcl.models.backbones import get_backbone, layer_names

    spec = get_backbone(backbone)
    names = layer_names(spec.name) if every else spec.layers
    stdout.print(f"{spec.name}: input {spec.input_size} px, mean {spec.mean}, std {spec.std}, "
                 f"{spec.n_outputs} outputs (the tuning heads read them)")
    stdout.print(f"penultimate layer (probes, image_features: penultimate): {spec.penultimate}; "
                 f"Grad-CAM layer: {spec.gradcam or 'none (gradient saliency only)'}")
    stdout.print(("every module" if every else "default candidate layers (encoding.layers, "
                  "--layer)") + ":")
    for name in names:
        stdout.print(f"  {name}")


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="Study configuration (YAML).")],
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Run directory; default runs/<name>.")] = None,
    dry_run: Annotated[bool, typer.Option(help="List the jobs and stop.")] = False,
    device: Device = None,
    executor: Annotated[str | None, typer.Option(
        help="serial, ray or slurm; default: the config's execution.executor.")] = None,
    fresh: Annotated[bool, typer.Option(
        help="Start over: remove what OUT holds when it belongs to another study.")] = False,
) -> None:
    """Run a study: tuning, encoding and evaluation jobs; finished jobs are skipped."""
    from cortexcl.config import load_config, parse_config

    study = load_config(config)
    if executor is not None:
        raw = study.model_dump(mode="json")
        raw["execution"]["executor"] = executor
        study = parse_config(raw, source="--executor")
    from cortexcl.study.runner import run_study

    out = out or Path("runs") / study.name
    jobs, report = run_study(study, out, dry_run=dry_run, device=device, fresh=fresh,
                             announce=_announce)
    if report is None:
        done = [job.is_done(out) for job in jobs]
        for job, finished in zip(jobs, done, strict=True):
            stdout.print(f"{'done' if finished else 'to do':>6}  {job.key}")
        stdout.print(f"{len(jobs)} jobs: {sum(done)} done, {len(jobs) - sum(done)} to do")
        return
    _finish_study(out, report)


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory.")],
    subject: Annotated[str | None, typer.Option(
        help="Subject of the layer matrix, curves and maps; default: the first.")] = None,
    surfaces: Annotated[bool, typer.Option(help="Draw cortical surface maps.")] = True,
) -> None:
    """Write the figures and report.html of a run."""
    from cortexcl.report import build_report

    stdout.print(f"report: {build_report(run_dir, subject=subject, surfaces=surfaces)}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory.")] = DEMO_OUT,
) -> None:
    """Run the demo study: untuned vs CL vs RT on early ROIs of a simulated subject."""
    from cortexcl.workflows import run_demo

    _, report = run_demo(out, announce=_announce)
    _finish_study(out, report)


def print_summary(table: pd.DataFrame, title: str, every_column: bool = False) -> None:
    """Print the per-ROI summary table of a run on the terminal."""
    # Numbers are never cut: a column is at least as wide as its widest value (a narrow
    # terminal wraps the headers onto several lines instead).
    grid = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    preferred = ["subject", "hemisphere", "roi", "method", "n_vertices", "best_layer", "mean_r",
                 "median_r", "mean_nc_score"]
    columns = list(table.columns) if every_column else [c for c in preferred if c in table]
    cells = [[_format(row[c]) for c in columns] for _, row in table.iterrows()]
    for i, column in enumerate(columns):
        widest = max([len(row[i]) for row in cells] + [min(len(column), 6)])
        grid.add_column(column, justify="right" if table[column].dtype.kind in "fiu" else "left",
                        min_width=widest, overflow="fold")
    for row in cells:
        grid.add_row(*row)
    stdout.print(grid)


def _format(value: object) -> str:
    if isinstance(value, float):
        if value != value:
            return ""
        return f"{value:.2g}" if abs(value) < 1e-3 else f"{value:.3f}" if abs(value) < 10 \
            else f"{value:.1f}"
    return str(value)


def _finish_study(out: Path, report) -> None:
    from cortexcl.evaluation.single_subject import comparison_table
    from cortexcl.rundir import read_table
    from cortexcl.tuning.checkpoints import META, model_bytes

    tables = out / "tables" / "encoding.csv"
    if tables.is_file():
        table = read_table(tables)
        wide = comparison_table(table)
        rt = [c for c in wide.columns if "RT" in c]  # CL vs RT: a table of its own (width)
        seeds = table["seed"].dropna().nunique() if "seed" in table else 0
        over = (f"tuned backbones: mean over {seeds} tuning seeds of r, of the % of vertices "
                f"improved and of Δr; Δr SD over seeds; the largest Holm p of the seeds, and "
                f"how many seeds have Holm p < 0.05 (tables/seeds.csv: the t interval over "
                f"seeds)" if seeds > 1 else "p: permutation over test images, Holm over the "
                "table's ROIs")
        print_summary(wide.drop(columns=rt), f"Mean test r per ROI and backbone, CL vs untuned "
                      f"({_networks(table)}; {tables}); {over}", every_column=True)
        if rt:
            keys = [c for c in ("subject", "hemisphere", "roi") if c in wide]
            print_summary(wide[keys + rt], "CL vs RT", every_column=True)
        _warn(table)
    stdout.print(f"jobs: {len(report.done)} done, {len(report.skipped)} already done, "
                 f"{len(report.failed)} failed, {len(report.blocked)} blocked")
    sizes = [model_bytes(meta.parent) for meta in (out / "models").rglob(META)]
    if sizes:
        stdout.print(f"tuned models: {len(sizes)} in {out / 'models'}, {sum(sizes) / 1e6:,.1f} MB "
                     f"({sum(sizes) / len(sizes) / 1e6:,.1f} MB each)")
    report_file = out / "report.html"
    if report_file.is_file():
        stdout.print(f"report: {report_file}")
    for key, log in report.failed.items():
        console.print(f"[red]failed:[/red] {escape(f'{key} (log: {log})')}", soft_wrap=True)
    if not report.ok:
        raise typer.Exit(1)


ALPHA_EDGE_WARNING = 50.0  # % of an ROI's vertices on an edge of the α grid


def _networks(table: pd.DataFrame) -> str:
    """The image networks of a results table, in words (``efficientnet_lite0``)."""
    names = table["backbone"].dropna().unique() if "backbone" in table else []
    return ", ".join(map(str, names)) or "network not recorded"


def _warn(table: pd.DataFrame) -> None:
    """Notes under a summary: random initial weights, α grids that look too narrow."""
    from cortexcl.models.backbones import is_random_init

    labels = table.get("initial_weights", table.get("weights", pd.Series(dtype=str)))
    random = sorted({method for method, label in zip(table["method"], labels, strict=True)
                     if isinstance(label, str) and is_random_init(label)})
    if random:
        _announce(f"note: {', '.join(random)} started from random weights (weights: none), not "
                  "ImageNet: the numbers show the pipeline, not the published science")
    if "delta_r_vs_untuned" in table:
        same = table[(table["delta_r_vs_untuned"] == 0) & (table["pct_improved_vs_untuned"] == 0)]
        if not same.empty:
            first = same.iloc[0]
            _announce(f"note: {len(same)} tuned result(s) equal the untuned backbone's exactly "
                      f"(e.g. {first['hemisphere']} {first['roi']} {first['method']}, layer "
                      f"{first['best_layer']}): the chosen layer lies in a frozen stage, which "
                      "tuning cannot change; list only trained stages in encoding.layers")
    if "n_constant" in table and (table["n_constant"] > 0).any():
        _announce(f"note: {int(table['n_constant'].sum())} vertices have constant measured or "
                  "predicted test responses and count as r = 0 in their ROI's mean (column "
                  "n_constant)")
    if {"pct_alpha_at_low_edge", "pct_alpha_at_high_edge"} <= set(table.columns):
        edges = table["pct_alpha_at_low_edge"] + table["pct_alpha_at_high_edge"]
        if (edges > ALPHA_EDGE_WARNING).any():
            worst = table.loc[edges.idxmax()]
            _announce(f"note: {int((edges > ALPHA_EDGE_WARNING).sum())} result(s) have over "
                      f"{ALPHA_EDGE_WARNING:.0f} % of their vertices at an edge of the α grid "
                      f"(worst: {worst['hemisphere']} {worst['roi']} {worst['method']}, "
                      f"{worst['pct_alpha_at_low_edge']:.0f} % low, "
                      f"{worst['pct_alpha_at_high_edge']:.0f} % high): too few images, or a grid "
                      f"that does not fit; see the pct_alpha_at_*_edge columns")


@contextlib.contextmanager
def _options_named(prefix: str) -> Iterator[None]:
    """Errors that start with a parameter name (``n_images: …``) name the option instead."""
    try:
        yield
    except InputError as error:
        name, separator, rest = str(error).partition(": ")
        if separator and name.isidentifier():
            raise InputError(f"{prefix}{name.replace('_', '-')}: {rest}") from None
        raise


def _announce(message: str) -> None:
    console.print(f"[yellow]{escape(message)}[/yellow]")


def main() -> None:
    """Entry point: run the app, turning bad input into a one-line error and exit status 2."""
    try:
        app()
    except InputError as error:
        console.print(f"[red]error:[/red] {escape(str(error))}", highlight=False, soft_wrap=True)
        sys.exit(2)

"""Workflows behind the command line: encode one subject into a run, and the demo study."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path

import pandas as pd
import yaml

from cortexcl.config import DataConfig, EncodingConfig, load_config
from cortexcl.data.layouts import layout_options, open_subject
from cortexcl.data.rois import HEMISPHERES, expand_rois
from cortexcl.data.subject import subject_name
from cortexcl.encoding.pipeline import TABLE_KEY, check_subject_data, encode_subject
from cortexcl.errors import InputError
from cortexcl.evaluation.single_subject import write_tables
from cortexcl.models.backbones import (
    build_backbone,
    check_layers,
    describe_weights,
    get_backbone,
    resolve_device,
)
from cortexcl.models.heads import check_roi_sizes
from cortexcl.rundir import RunDirectory
from cortexcl.study.executors import ExecutionReport
from cortexcl.study.jobs import Job
from cortexcl.study.runner import run_study


def encode(
    data_root: str | Path,
    out: str | Path,
    *,
    subject: int | str = 1,
    hemispheres: Sequence[str] = HEMISPHERES,
    rois: str | Sequence[str] = "early",
    weights: str | Path = "imagenet",
    backbone: str = "alexnet",
    method: str = "untuned",
    seed: int = 0,
    settings: EncodingConfig | None = None,
    min_vertices: int = 20,
    image_size: int = 224,
    device: str | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    fresh: bool = False,
    announce: Callable[[str], None] = print,
    reading: DataConfig | None = None,
) -> pd.DataFrame:
    """Load a subject, encode its ROIs with one backbone and record the run.

    Writes ``config.yaml``, ``manifest.json``, the split, the per-ROI results and
    ``tables/encoding.csv`` under ``out`` while holding the run's lock. Several encodes with
    other backbones (``method``, ``weights``) may share a run directory; other data, encoding
    settings or seed are refused unless ``fresh`` (start over) is set. ``settings`` (one
    validated `EncodingConfig`) and the other parameters are those of `encode_subject`.

    Returns
    -------
    pandas.DataFrame
        The run's ``tables/encoding.csv``: one row per backbone × hemisphere × ROI encoded in
        this run directory so far, with the comparisons of `write_tables`.

    Raises
    ------
    InputError
        On a bad option, output folder, weights file or dataset (every image is decoded), or
        when no requested ROI has ``min_vertices`` vertices; all are checked, cheap ones first,
        before anything is created or written.
    """
    settings = settings or EncodingConfig()
    reading = reading or DataConfig()
    check_method_name(method)
    if reading.layout in ("algonauts", "nsd"):  # bad names fail before any data is read
        roi_names = expand_rois(rois, option="--roi")
        check_encode_options(hemispheres, min_vertices=min_vertices, image_size=image_size,
                             device=device)
    else:  # the dataset's own names, checked once it is read
        roi_names = list(dict.fromkeys(r.strip() for r in (
            rois.split(",") if isinstance(rois, str) else rois) if r.strip()))
        check_encode_options((), min_vertices=min_vertices, image_size=image_size,
                             device=device)
    options = layout_options(reading)
    if settings.split == "sessions" and reading.layout != "nsd":
        raise InputError("--split: sessions needs scan sessions (--layout nsd)")
    run = RunDirectory(out)
    run.check_writable()
    run.check_free()
    # The identity of the run: equivalent spellings (ROI order or case, a relative data path)
    # are the same run.
    recorded = {
        "data": {"root": str(Path(data_root).resolve()), "subject": subject_name(subject),
                 "image_size": image_size,
                 **({} if options == {"layout": "algonauts"} else options)},
        "encoding": {"hemispheres": sorted(set(hemispheres)), "rois": sorted(roi_names),
                     "min_vertices": min_vertices, **settings.model_dump(mode="json")},
        "seed": seed,
    }
    identity = {"kind": "encode", "settings": recorded}
    run.check_identity(identity, fresh=fresh)
    try:
        get_backbone(backbone)
    except InputError as error:
        raise InputError(f"--backbone: {error}") from None
    try:
        check_layers(backbone, settings.layers)
    except InputError as error:
        raise InputError(f"--layer: {str(error).removeprefix('layers: ')}") from None
    build_backbone(backbone, weights, seed=seed)  # a missing or damaged weights file fails
    data = open_subject(data_root, subject, image_size=image_size, cache_dir=cache_dir,
                        progress=progress, **options)
    try:
        roi_names = data.expand_rois(roi_names)
    except InputError as error:
        raise InputError(f"--roi: {error}") from None
    for hemisphere in hemispheres:
        try:
            data.check_part(hemisphere)
        except InputError as error:
            raise InputError(f"--hemisphere: {error}") from None
    check_roi_sizes({f"{h} {roi}": data.roi_indices(h, roi).size
                     for h in hemispheres for roi in roi_names}, min_vertices, data.root)
    check_subject_data(data, hemispheres, seed, settings)
    with run.create(identity, fresh=fresh):
        if str(weights) == "none":
            announce(f"weights: {describe_weights(weights, seed=seed)} — an untrained network, "
                     "for tests and offline demos; recorded in every output")
        backbones = _recorded_backbones(run)
        backbones[method] = f"{get_backbone(backbone).name}: {weights}"
        run.write_config({**recorded, "backbones": backbones})
        run.write_manifest(seeds={"split": seed, "weights": seed},
                           datasets={data.name: data.data_hash()},
                           extra={"data_root": str(data_root), "data_options": options})
        encoded, excluded = encode_subject(
            data, run, hemispheres=hemispheres, rois=rois, weights=weights, backbone=backbone,
            method=method,
            split_seed=seed, settings=settings, min_vertices=min_vertices, device=device,
            progress=progress)
        if not excluded.empty:
            run.upsert_table("excluded", excluded, TABLE_KEY)
            announce(f"{len(excluded)} ROI(s) left out for size: see {run.path('tables')}/"
                     "excluded.csv")
        # The run's tables, with every backbone compared with the untuned (and RT) one.
        return write_tables(run) if not encoded.empty else encoded


def _recorded_backbones(run: RunDirectory) -> dict[str, str]:
    """The backbones earlier encodes of this run used: ``{method: weights}``."""
    path = run.path("config.yaml")
    if not path.is_file():
        return {}
    recorded = yaml.safe_load(path.read_text()) or {}
    backbones = recorded.get("backbones") if isinstance(recorded, dict) else None
    return dict(backbones) if isinstance(backbones, dict) else {}


def run_demo(out: str | Path = "cortexcl-demo", progress: bool = True,
             announce: Callable[[str], None] = print) -> tuple[list[Job], ExecutionReport | None]:
    """Run the demo study (``configs/demo.yaml``) on a simulated subject.

    The simulated subject is written once into the cache (``$CORTEXCL_CACHE``), so a second
    demo starts at once; finished jobs are skipped.
    """
    config = load_config(Path(str(resources.files("cortexcl.study") / "demo.yaml")))
    announce(f"demo: {', '.join(config.methods)} on {', '.join(config.selection.rois)} "
             f"({', '.join(config.selection.hemispheres)}) of a simulated subject; "
             "settings in configs/demo.yaml")
    return run_study(config, out, progress=progress, announce=announce)


def check_encode_options(hemispheres: Sequence[str], *, min_vertices: int, image_size: int,
                         device: str | None) -> None:
    """Refuse bad options of `encode` (named as on the command line) before any work.

    The encoding settings themselves are validated by `EncodingConfig`.

    Raises
    ------
    InputError
        On an unknown hemisphere or device, or a size below its minimum (``image_size`` at
        least 64, the smallest input AlexNet's layers accept).
    """
    for hemisphere in hemispheres:
        if hemisphere not in HEMISPHERES:
            raise InputError(f"--hemisphere: unknown hemisphere {hemisphere!r} (valid: lh, rh)")
    for option, value, least in (("--min-vertices", min_vertices, 1),
                                 ("--image-size", image_size, 64)):
        if value < least:
            raise InputError(f"{option}: expected at least {least}, got {value}")
    resolve_device(device)


_METHOD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")
# What pandas and other CSV readers take for a missing value: never a backbone's name.
_MISSING_WORDS = {"na", "n/a", "nan", "null", "none", "nil", "-nan", "<na>", "#n/a"}


def check_method_name(name: str, option: str = "--method") -> None:
    """Refuse a backbone name that is not a plain folder name or reads as a missing value.

    Raises
    ------
    InputError
        For an empty name, a path (``/``, ``..``), characters other than letters, digits and
        ``_ . + -``, or a word such as ``NA`` that CSV readers turn into a missing value.
    """
    if not _METHOD_NAME.fullmatch(name) or ".." in name:
        raise InputError(f"{option}: {name!r} is not a backbone name (letters, digits and "
                         "_ . + - only, starting with a letter or digit, at most 64)")
    if name.lower() in _MISSING_WORDS:
        raise InputError(f"{option}: {name!r} reads as a missing value in CSV tables; choose "
                         "another name")

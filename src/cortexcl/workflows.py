"""End-to-end workflows behind the command line: encode a subject into a run, and the demo."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from cortexcl.data.algonauts import load_subject, subject_name
from cortexcl.data.images import default_cache_dir
from cortexcl.data.rois import HEMISPHERES
from cortexcl.encoding.pipeline import TABLE_KEY, encode_subject
from cortexcl.models.backbones import describe_weights
from cortexcl.study.store import RunDirectory

DEMO_SUBJECT = 1
DEMO_SEED = 0


def encode(
    data_root: str | Path,
    out: str | Path,
    *,
    subject: int | str = 1,
    hemispheres: Sequence[str] = HEMISPHERES,
    rois: str | Sequence[str] = "early",
    weights: str | Path = "imagenet",
    method: str = "untuned",
    seed: int = 0,
    protocol: str = "clean",
    n_components: int = 1000,
    refit: str = "train+val",
    min_vertices: int = 20,
    image_size: int = 224,
    batch_size: int = 64,
    device: str | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    announce: Callable[[str], None] = print,
) -> pd.DataFrame:
    """Load a subject, encode its ROIs with one backbone and record the run.

    Writes ``config.yaml``, ``manifest.json``, the split, the per-ROI results and
    ``tables/encoding.csv`` under ``out`` while holding the run's lock. See `encode_subject`
    for the parameters.

    Returns
    -------
    pandas.DataFrame
        One row per encoded (hemisphere, ROI).
    """
    run = RunDirectory(out)
    with run.lock():
        data = load_subject(data_root, subject, image_size=image_size, cache_dir=cache_dir,
                            progress=progress)
        if str(weights) == "none":
            announce(f"weights: {describe_weights(weights)} — an untrained network, for tests "
                     "and offline demos; recorded in every output")
        settings = {
            "data": {"root": str(data_root), "subject": data.name, "image_size": image_size},
            "backbone": {"method": method, "weights": str(weights)},
            "encoding": {"hemispheres": list(hemispheres), "rois": _as_list(rois),
                         "protocol": protocol, "n_components": n_components, "refit": refit,
                         "min_vertices": min_vertices},
            "seed": seed,
        }
        run.write_config(settings)
        run.write_manifest(seeds={"split": seed, "weights": seed},
                           datasets={data.name: data.data_hash()})
        encoded, excluded = encode_subject(
            data, run, hemispheres=hemispheres, rois=rois, weights=weights, method=method,
            seed=seed, protocol=protocol, n_components=n_components, refit=refit,
            min_vertices=min_vertices, batch_size=batch_size, device=device, progress=progress)
        if not excluded.empty:
            run.upsert_table("excluded", excluded, TABLE_KEY)
            announce(f"{len(excluded)} ROI(s) left out for size: see {run.path('tables')}/"
                     "excluded.csv")
        if not encoded.empty:
            run.upsert_table("encoding", encoded, TABLE_KEY)
        return encoded


def demo_data(n_images: int = 1000, progress: bool = True) -> Path:
    """Return the data root of the demo's simulated subject, simulating it on first use."""
    from cortexcl.data.simulate import simulate_subject

    root = default_cache_dir() / "demo" / f"sim-n{n_images}-seed{DEMO_SEED}"
    if not (root / subject_name(DEMO_SUBJECT)).is_dir():
        simulate_subject(root, subject=DEMO_SUBJECT, n_images=n_images, seed=DEMO_SEED,
                         progress=progress)
    return root


def run_demo(out: str | Path = "cortexcl-demo", n_images: int = 1000, progress: bool = True,
             announce: Callable[[str], None] = print) -> pd.DataFrame:
    """Encode the early ROIs of a simulated subject with an untuned, randomly initialised AlexNet.

    The simulated subject is cached (see `demo_data`), so a second demo starts at once.
    """
    root = demo_data(n_images, progress=progress)
    announce(f"demo data: simulated subject in {root}")
    return encode(root, out, subject=DEMO_SUBJECT, rois="early", weights="none",
                  seed=DEMO_SEED, progress=progress, announce=announce)


def _as_list(value: str | Sequence[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)

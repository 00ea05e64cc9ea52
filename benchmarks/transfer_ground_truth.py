"""Cross-subject transfer against the simulator's ground truth.

Simulated subjects share the kind of ground-truth tuning of each ROI (pRF models in V1v,
face and body category models in FFA-1 and EBA) but not the individual vertices. A CL
backbone tuned on subject 1's lh ROI should therefore help encode subject 2's same ROI more
than the backbones tuned, just as long, on subject 1's other ROIs (a different ground truth).
Every backbone, the untuned one included, encodes each of subject 2's ROIs under the clean
protocol on the same test images (subject 1's tuning images removed). Prints one JSON object:
per target ROI, mean test r per backbone, the fraction of vertices each tuned backbone improves
over untuned, and the paired comparison of the matching backbone with each control on the
target's test images (Δr with its bootstrap 95 % interval and the permutation p-value; the unit
is the test image, `cortexcl.evaluation.transfer.compare_results`).

    python benchmarks/transfer_ground_truth.py --n-images 600 --epochs 6
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cortexcl.config import EncodingConfig, parse_config
from cortexcl.data.algonauts import load_subject
from cortexcl.encoding.pipeline import encode_subject
from cortexcl.evaluation.transfer import compare_results, train_image_ids
from cortexcl.rundir import RunDirectory
from cortexcl.statistics import P_UNIT_IMAGE, derive_seed
from cortexcl.study.runner import StudyContext, prepare_data, run_study
from cortexcl.tuning.checkpoints import BACKBONE

ROIS = ("V1v", "FFA-1", "EBA")


def _scores(run: RunDirectory, target: str, roi: str, seed: int) -> dict:
    """Mean r per backbone, fraction improved over untuned, matching backbone vs the others."""
    folders = {name: run.encoding_dir(target, "lh", roi, name) for name in ("untuned", *ROIS)}
    r = {name: np.load(folder / "voxel_r.npy") for name, folder in folders.items()}
    comparisons = {control: compare_results(folders[roi], folders[control],
                                            seed=derive_seed(seed, f"{roi}/vs/{control}"))
                   for control in ROIS if control != roi}
    return {
        "n_vertices": int(r["untuned"].size),
        "mean_r": {name: float(values.mean()) for name, values in r.items()},
        "fraction_improved_vs_untuned": {name: float(np.mean(values > r["untuned"]))
                                         for name, values in r.items() if name != "untuned"},
        "matching_vs_control": {control: {
            "fraction_matching_better": float(np.mean(r[roi] > r[control])),
            "delta_r": result.delta_r, "ci95": [result.ci_low, result.ci_high],
            "p": result.p, "p_unit": P_UNIT_IMAGE}
            for control, result in comparisons.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=600)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--n-components", type=int, default=64)
    parser.add_argument("--roi-scale", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.perf_counter()
    out = args.out or Path(tempfile.mkdtemp(prefix="cortexcl-transfer-"))
    config = parse_config({
        "name": "transfer-ground-truth", "weights": "none", "seed": args.seed,
        "methods": ["untuned", "cl"],
        "data": {"simulate": {"n_images": args.n_images, "n_test_images": 2,
                              "image_size": args.image_size, "roi_scale": args.roi_scale},
                 "subjects": [1], "image_size": args.image_size},
        "selection": {"hemispheres": ["lh"], "rois": list(ROIS)},
        "tuning": {"cl": {"epochs": args.epochs, "batch_size": args.batch_size}},
        "encoding": {"n_components": args.n_components},
        "evaluation": {"mutual_info": False},
    })
    _, report = run_study(config, out / "tuning", progress=False, announce=lambda _: None)
    assert report.ok, report.failed
    tuned = time.perf_counter()

    two_subjects = config.model_copy(update={"data": config.data.model_copy(
        update={"subjects": [1, 2]})})
    root = prepare_data(two_subjects, progress=False)
    model_subject = load_subject(root, 1, image_size=args.image_size, progress=False)
    target = load_subject(root, 2, image_size=args.image_size, progress=False)
    run = RunDirectory(out / "transfer")
    tuning_split = StudyContext(config, RunDirectory(out / "tuning"), root).split(model_subject)
    excluded = train_image_ids(model_subject.image_ids, tuning_split.train)
    backbones = {"untuned": "none", **{roi: out / "tuning" / "models" / "subj01" / "lh" / roi /
                                       "cl" / BACKBONE for roi in ROIS}}
    for roi in ROIS:
        for name, weights in backbones.items():
            encoded, _ = encode_subject(target, run, hemispheres=["lh"], rois=[roi],
                                        weights=weights, method=name, split_seed=args.seed,
                                        settings=EncodingConfig(
                                            n_components=args.n_components),
                                        progress=False, exclude_ids=excluded)
    result = {
        "setup": {**vars(args), "out": str(out), "n_test": int(encoded["n_test"].iloc[0]),
                  "n_test_dropped": int(encoded["n_test_dropped"].iloc[0])},
        "targets": {roi: _scores(run, "subj02", roi, args.seed) for roi in ROIS},
        "seconds": {"tuning": tuned - started, "total": time.perf_counter() - started},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

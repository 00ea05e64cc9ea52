"""Ground-truth check of salience lateralisation on a simulated subject (docs/method.md §7.2).

In the simulator, left-hemisphere early ROIs see the right visual field (the right half of the
image) and right-hemisphere ROIs the left; ventral ROIs the upper field, dorsal ROIs the lower.
This script tunes contrastive (CL) models on each hemisphere of early ROIs, fits a probe for a
learnable task of the images (the annotated background type: noise, texture or place) on
``classifier.5`` features of each backbone (probe-train = the split's train + val images), and
computes flip-controlled lateralisation indices of GradCAM and input-gradient maps of the
held-out test images (target = true class). It prints one JSON object: per model the probe
accuracy and, per method and axis, the mean LI on originals and on mirrored images and the
flip-controlled b (mean, bootstrap CI, Wilcoxon p); then paired tests on the same images:
lh − rh per ROI (horizontal axis) and ventral − dorsal per hemisphere (vertical axis).

Predictions: horizontal b > 0 for lh models, < 0 for rh models, so lh − rh > 0; vertical
b(V1v) − b(V1d) > 0.

    python benchmarks/lateralization.py --n-images 600 --image-size 160 --epochs 6 --out DIR
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from cortexcl.data.algonauts import load_subject
from cortexcl.data.simulate import simulate_subject
from cortexcl.data.splits import make_splits
from cortexcl.encoding.features import extract_features
from cortexcl.evaluation.saliency import (
    ProbeNetwork,
    lateralization,
    one_sample_test,
    paired_test,
    probe_head,
    saliency_examples,
    summary_table,
    write_summary,
)
from cortexcl.models.backbones import load_alexnet
from cortexcl.models.contrastive import ContrastiveModel
from cortexcl.report.saliency_figures import draw_saliency_overlays
from cortexcl.tuning.trainer import TrainingSet, TrainSettings, train

BACKGROUNDS = ("noise", "texture", "place")
AXES = ("horizontal", "vertical")


def background_labels(subject_root: Path, image_names: list[str]) -> np.ndarray:
    """Background class (index into BACKGROUNDS) of each training image, in image order."""
    annotations = json.loads((subject_root / "ground_truth" / "annotations.json").read_text())
    by_file = {entry["file"]: BACKGROUNDS.index(entry["background"])
               for entry in annotations["train"]}
    return np.array([by_file[name] for name in image_names], dtype=np.int64)


def brief(test: dict[str, float]) -> dict[str, float]:
    """Mean, CI and Wilcoxon p of a test result, rounded for printing."""
    return {"mean": round(test["mean"], 4), "ci_low": round(test["ci_low"], 4),
            "ci_high": round(test["ci_high"], 4), "p_value": float(f"{test['p_value']:.3g}")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=600)
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--roi-scale", type=float, default=0.2)
    parser.add_argument("--rois", nargs="+", default=["V1v", "V1d"])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--methods", nargs="+", default=["gradcam", "saliency"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default=None, help="cpu or cuda; default: cuda if present")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for the summary CSV and overlay figure; default: none")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        subject_root = simulate_subject(Path(scratch) / "data", n_images=args.n_images,
                                        n_test_images=0, image_size=args.image_size,
                                        roi_scale=args.roi_scale, seed=args.seed,
                                        progress=False, workers=args.threads)
        subject = load_subject(Path(scratch) / "data", 1, image_size=args.image_size,
                               cache_dir=Path(scratch) / "cache", progress=False)
        subject.images.array()
        labels = background_labels(subject_root, [p.name for p in subject.images.paths])
        split = make_splits(subject.n_images, seed=args.seed)
        timings["simulate_s"] = time.perf_counter() - started

        backbones = {"untuned": load_alexnet("none", seed=args.seed)}
        tuning = {}
        for roi in args.rois:
            for hemisphere in ("lh", "rh"):
                tick = time.perf_counter()
                responses = subject.responses(hemisphere, roi)
                with torch.random.fork_rng():
                    torch.manual_seed(args.seed)
                    model = ContrastiveModel(load_alexnet("none", seed=args.seed),
                                             responses.shape[1])
                settings = TrainSettings(epochs=args.epochs, batch_size=args.batch_size,
                                         lr=args.lr, seed=args.seed)
                log = train(model, [TrainingSet(subject.name, subject.images, responses,
                                                split.train, split.val)],
                            settings, Path(scratch) / "models" / hemisphere / roi,
                            device=args.device, progress=False)
                name = f"{hemisphere}-{roi}"
                backbones[name] = model.backbone.eval()
                tuning[name] = {
                    "n_vertices": int(responses.shape[1]),
                    "train_loss_first_last": [round(float(log["train_loss"].iloc[0]), 4),
                                              round(float(log["train_loss"].iloc[-1]), 4)],
                    "val_loss_first_last": [round(float(log["val_loss"].iloc[0]), 4),
                                            round(float(log["val_loss"].iloc[-1]), 4)],
                    "chance_loss_train_val": [
                        round(float(np.log(min(args.batch_size, len(split.train)))), 4),
                        round(float(np.log(min(args.batch_size, len(split.val)))), 4)],
                    "seconds": round(time.perf_counter() - tick, 1),
                }
        timings["tuning_s"] = time.perf_counter() - started - timings["simulate_s"]

        tick = time.perf_counter()
        fit = np.concatenate([split.train, split.val])
        test = np.asarray(split.test)
        per_model, b_values, networks = {}, {}, {}
        for name, backbone in backbones.items():
            features = extract_features(backbone, subject.images, ["classifier.5"],
                                        batch_size=64, device=args.device,
                                        progress=False)["classifier.5"]
            scaler = StandardScaler().fit(features[fit])
            probe = LogisticRegression(C=1.0, max_iter=5000).fit(
                scaler.transform(features[fit]), labels[fit])
            accuracy = float(probe.score(scaler.transform(features[test]), labels[test]))
            network = ProbeNetwork(backbone, probe_head(probe.coef_, probe.intercept_,
                                                        scaler.mean_, scaler.scale_))
            networks[name] = network
            entry = {"probe_test_accuracy": round(accuracy, 4)}
            for method in args.methods:
                both = lateralization(network, subject.images, labels[test], indices=test,
                                      method=method, axes=AXES, batch_size=32, device=args.device,
                                      progress=False)
                for axis, frame in both.groupby("axis"):
                    frame = frame.reset_index(drop=True)
                    b_values[name, method, axis] = frame
                    entry[f"{method}_{axis}"] = {
                        "mean_li_original": round(float(frame["li"].mean()), 4),
                        "mean_li_flipped": round(float(frame["li_flipped"].mean()), 4),
                        "b": brief(one_sample_test(frame["b"], seed=args.seed)),
                    }
            per_model[name] = entry
        timings["probe_and_saliency_s"] = time.perf_counter() - tick

        paired = {}
        for method in args.methods:
            for roi in args.rois:
                lh = b_values[f"lh-{roi}", method, "horizontal"]
                rh = b_values[f"rh-{roi}", method, "horizontal"]
                paired[f"{method}_horizontal_lh-{roi}_minus_rh-{roi}"] = {
                    column: brief(paired_test(lh[column], rh[column], seed=args.seed))
                    for column in ("b", "li", "li_flipped")}
            ventral = [roi for roi in args.rois if roi.endswith("v")]
            dorsal = [roi for roi in args.rois if roi.endswith("d")]
            for hemisphere in ("lh", "rh"):
                for v_roi, d_roi in zip(ventral, dorsal, strict=False):
                    top = b_values[f"{hemisphere}-{v_roi}", method, "vertical"]
                    bottom = b_values[f"{hemisphere}-{d_roi}", method, "vertical"]
                    paired[f"{method}_vertical_{hemisphere}-{v_roi}_minus_{hemisphere}-{d_roi}"] \
                        = {column: brief(paired_test(top[column], bottom[column],
                                                     seed=args.seed))
                           for column in ("b", "li", "li_flipped")}

        if args.out is not None:
            for method in args.methods:
                for axis in AXES:
                    b = {name: b_values[name, method, axis]["b"] for name in backbones}
                    pairs = [(f"lh-{roi}", f"rh-{roi}") for roi in args.rois]
                    write_summary(summary_table(b, pairs, seed=args.seed),
                                  args.out / f"lateralization_{method}_{axis}.csv")
            shown = test[:3]
            examples = [saliency_examples(name, networks[name], subject.images.tensor(shown),
                                          labels[shown], device=args.device)
                        for name in ("untuned", f"lh-{args.rois[0]}", f"rh-{args.rois[0]}")]
            draw_saliency_overlays(subject.images.array()[shown], examples,
                                   args.out / "saliency_overlays.png",
                                   image_labels=[BACKGROUNDS[k] for k in labels[shown]])

    print(json.dumps({
        "setup": {"n_images": args.n_images, "image_size": args.image_size,
                  "roi_scale": args.roi_scale, "rois": args.rois, "epochs": args.epochs,
                  "batch_size": args.batch_size, "lr": args.lr, "weights": "none",
                  "seed": args.seed, "threads": args.threads,
                  "n_probe_train": int(fit.size), "n_test": int(test.size),
                  "probe_task": "background type (noise / texture / place)",
                  "targets": "true class", "chance_accuracy": round(float(
                      np.bincount(labels[test]).max() / test.size), 4)},
        "tuning": tuning,
        "models": per_model,
        "paired": paired,
        "timings_s": {key: round(value, 1) for key, value in timings.items()},
        "total_s": round(time.perf_counter() - started, 1),
    }, indent=2))


if __name__ == "__main__":
    main()

"""Benchmark: untuned whole-hemisphere encoding at NSD scale; prints one JSON object.

A simulated subject with the real subject-01 ROI masks (19,004 left-hemisphere vertices) and,
by default, 9,841 training images is made once and cached in ``--data``. The measured run
extracts all 8 candidate layers (float16 files in a temporary folder) and fits the encoding
model (PCA to 1000 components + ridge over the α grid, layer and α chosen on val, test r) on
every vertex of the hemisphere. It runs in a fresh process so that its peak resident memory
is its own.

Targets: peak RSS <= 6 GB and total time <= 2 x the forward passes.

Usage::

    python benchmarks/encoding.py                       # full size (about 10 min on 2 cores)
    python benchmarks/encoding.py --n-images 2000       # quick check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MASKS = REPO.parent / "shared" / "data" / "algonauts_roi_masks" / "subj01"
RSS_TARGET_GB = 6.0
RATIO_TARGET = 2.0


def _arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None,
                        help="folder caching the simulated subject (default: cortexcl cache)")
    parser.add_argument("--n-images", type=int, default=9841)
    parser.add_argument("--image-size", type=int, default=224, help="network input size")
    parser.add_argument("--hemisphere", default="lh")
    parser.add_argument("--n-components", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--weights", default="none",
                        help="backbone weights (timing does not depend on them)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--roi-masks", type=Path, default=DEFAULT_MASKS)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _data_root(args: argparse.Namespace) -> Path:
    if args.data is not None:
        return args.data
    from cortexcl.data.images import default_cache_dir

    return default_cache_dir() / "benchmarks" / f"encoding-sim-{args.n_images}"


def _prepare(args: argparse.Namespace) -> dict:
    """Simulate the subject (once) and build its image cache; returns timings."""
    from cortexcl.data.algonauts import load_subject
    from cortexcl.data.simulate import simulate_subject

    root = _data_root(args)
    timings = {"simulate_s": 0.0}
    subject_dir = root / "subj01"
    done = subject_dir / "training_split" / "training_fmri" / f"{args.hemisphere}_training_fmri.npy"
    if not done.is_file():
        if not args.roi_masks.is_dir():
            raise SystemExit(f"{args.roi_masks}: real ROI masks not found (--roi-masks)")
        start = time.perf_counter()
        simulate_subject(root, subject=1, n_images=args.n_images, roi_masks=args.roi_masks,
                         progress=False)
        timings["simulate_s"] = time.perf_counter() - start
    start = time.perf_counter()
    subject = load_subject(root, 1, image_size=args.image_size, progress=False)
    subject.images.array()
    timings["image_cache_s"] = time.perf_counter() - start
    return timings


def _peak_rss_gb() -> float:
    # ru_maxrss is in KiB on Linux; RUSAGE_CHILDREN holds the largest finished child.
    peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
               resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return peak * 1024 / 1e9


def _measure(args: argparse.Namespace) -> dict:
    """The measured run: forward passes, then PCA + ridge on the whole hemisphere."""
    import numpy as np
    import torch

    from cortexcl.data.algonauts import load_subject
    from cortexcl.data.splits import make_splits
    from cortexcl.encoding.features import extract_features
    from cortexcl.encoding.model import EncodingModel
    from cortexcl.models.backbones import load_alexnet, resolve_device

    subject = load_subject(_data_root(args), 1, image_size=args.image_size, progress=False)
    device = resolve_device(args.device)
    backbone = load_alexnet(args.weights, seed=0)
    with tempfile.TemporaryDirectory(prefix="cortexcl-bench-") as feature_dir:
        start = time.perf_counter()
        features = extract_features(backbone, subject.images, batch_size=args.batch_size,
                                    device=device, out_dir=feature_dir, progress=False)
        forward = time.perf_counter() - start
        feature_bytes = sum(os.path.getsize(a.filename) for a in features.values())
        start = time.perf_counter()
        responses = subject.responses(args.hemisphere)
        split = make_splits(subject.n_images, seed=0)
        model = EncodingModel(n_components=args.n_components, progress=False, device=args.device)
        model.fit(features, responses, split)
        encoding = time.perf_counter() - start
        del features
    total = forward + encoding
    peak = _peak_rss_gb()
    return {
        "n_images": int(subject.n_images),
        "n_vertices": int(responses.shape[1]),
        "hemisphere": args.hemisphere,
        "image_size": args.image_size,
        "n_train": int(split.train.size), "n_val": int(split.val.size),
        "n_test": int(split.test.size),
        "layers": model.layer_scores_["layer"].tolist(),
        "n_components": args.n_components,
        "weights": args.weights,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "feature_gb_on_disk": round(feature_bytes / 1e9, 3),
        "forward_s": round(forward, 2),
        "images_per_s": round(subject.n_images / forward, 1),
        "pca_ridge_s": round(encoding, 2),
        "total_s": round(total, 2),
        "total_over_forward": round(total / forward, 3),
        "peak_rss_gb": round(peak, 3),
        "best_layer": model.best_layer_,
        "mean_val_r": round(float(np.mean(model.val_r_)), 4),
        "mean_test_r": round(float(np.mean(model.test_r_)), 4),
        "targets": {"peak_rss_gb": RSS_TARGET_GB, "total_over_forward": RATIO_TARGET},
        "meets_rss_target": peak <= RSS_TARGET_GB,
        "meets_time_target": total <= RATIO_TARGET * forward,
    }


def main(argv: list[str] | None = None) -> None:
    args = _arguments(argv)
    if args.measure:
        print(json.dumps(_measure(args)))
        return
    preparation = _prepare(args)
    command = [sys.executable, str(Path(__file__).resolve()), "--measure",
               *(argv if argv is not None else sys.argv[1:])]
    run = subprocess.run(command, capture_output=True, text=True, check=False)
    if run.returncode != 0:
        sys.stderr.write(run.stderr)
        raise SystemExit(run.returncode)
    result = json.loads(run.stdout.strip().splitlines()[-1])
    result.update({key: round(value, 2) for key, value in preparation.items()})
    result.update({"data": str(_data_root(args)), "cpu_count": os.cpu_count(),
                   "machine": platform.processor() or platform.machine(),
                   "ram_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9,
                                   1)})
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

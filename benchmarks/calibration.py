"""Calibration of the image-unit permutation test: false-positive rate and power in simulations.

Prints one JSON object. A simulated subject (``cortexcl.data.simulate``; 1,000 images, 15 %
of them test images, lh V1v) is made once (cached), and the features of one backbone (a
randomly initialised AlexNet) are extracted once. The subject's ground truth holds every
vertex's noiseless signal s, its ncsnr and the repeats per image, so fresh measurements are
drawn as the simulator draws them: ``ncsnr · s + N(0, 1) / sqrt(repeats)``, z-scored per vertex.
Every model is an `EncodingModel` fit (PCA + ridge, α per vertex and layer on val, refit on
train ∪ val, as in the study), and every comparison is the study's
`cortexcl.statistics.image_permutation_test` (unit: the test image, two-sided); for comparison
the old Wilcoxon signed-rank test over vertices (`cortexcl.metrics.paired_wilcoxon`) is run on
the same two models. A rejection is p < alpha.

* **Null: two equally good backbones** (``false_positive_rate``). Each simulation draws one
  measurement of the subject (train, val and test) and two "backbones": the features of one
  layer (``--layer``) plus independent Gaussian noise per image and feature, of the same size
  for both (``--feature-noise`` times the features' mean SD). Each backbone thus represents
  some images worse than the other, as real backbones do, and its prediction errors are shared
  by all vertices of an image; in expectation the two are equally good. Both are fit to the
  same measured responses and scored on the same test images.
* **Null: independent training noise** (``null_training_noise``). One backbone (all eight
  layers); models A and B are fit to two independent, equally noisy measurements of the
  train/val images and scored on a third measurement of the test images.
* **Power.** As the first null, but backbone B's feature noise is ``--power-noise`` times A's:
  B is worse by construction. Power is the fraction of simulations with p < alpha and Δr > 0.

Rates come with exact binomial 95 % intervals (``scipy.stats.binomtest``, Clopper-Pearson).
Each simulation draws new noise everywhere, so its two fitted models also differ a little in
their true quality; a test on test images (which conditions on the fitted models) counts such
differences as real, so these nulls are, if anything, harsh on it.

    python benchmarks/calibration.py                  # 200 simulations of each kind
    python benchmarks/calibration.py --quick          # 20 of each, 1000 permutations (< 30 s
                                                      # once the simulated subject is cached)
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from cortexcl.data.algonauts import load_subject
from cortexcl.data.images import default_cache_dir
from cortexcl.data.simulate import simulate_subject
from cortexcl.data.splits import Split, make_splits
from cortexcl.encoding.features import extract_features
from cortexcl.encoding.model import EncodingModel, PCACache
from cortexcl.metrics import paired_wilcoxon
from cortexcl.models.backbones import load_alexnet
from cortexcl.statistics import derive_seed, image_permutation_test

ALPHA = 0.05


def _arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-sims", type=int, default=200, help="simulations of each kind")
    parser.add_argument("--quick", action="store_true",
                        help="20 simulations of each kind, 1000 permutations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-images", type=int, default=1000,
                        help="images with fMRI (15 %% of them are test images)")
    parser.add_argument("--roi", default="V1v")
    parser.add_argument("--roi-scale", type=float, default=0.45)
    parser.add_argument("--layer", default="features.5",
                        help="layer of the two noisy backbones")
    parser.add_argument("--n-components", type=int, default=100)
    parser.add_argument("--n-permutations", type=int, default=2000)
    parser.add_argument("--feature-noise", type=float, default=1.0,
                        help="feature noise SD of both backbones, in units of the features' SD")
    parser.add_argument("--power-noise", type=float, default=1.3,
                        help="backbone B's feature noise relative to A's in the power sims")
    parser.add_argument("--data", type=Path, default=None, help="simulated-subject cache")
    args = parser.parse_args(argv)
    if args.quick:
        args.n_sims, args.n_permutations = 20, 1000
    return args


class Simulator:
    """Fresh measurements of one ROI of a simulated subject from its ground truth."""

    def __init__(self, root: Path, roi: str) -> None:
        self.subject = load_subject(root, 1, image_size=64, progress=False)
        truth = self.subject.root / "ground_truth"
        columns = self.subject.roi_indices("lh", roi)
        self.signal = np.load(truth / "lh_signal.npy")[:, columns].astype(np.float64)
        self.ncsnr = np.load(truth / "lh_ncsnr.npy")[columns].astype(np.float64)
        self.noise_scale = 1.0 / np.sqrt(np.load(truth / "n_repeats.npy").astype(np.float64))

    def measure(self, rng: np.random.Generator) -> np.ndarray:
        """One measurement of every image, z-scored per vertex (as the simulator writes it)."""
        averaged = self.ncsnr * self.signal + self.noise_scale[:, None] * rng.standard_normal(
            self.signal.shape)
        return ((averaged - averaged.mean(0)) / averaged.std(0)).astype(np.float32)


def _compare(measured: np.ndarray, a: EncodingModel, b: EncodingModel, split: Split,
             n_permutations: int, seed: int) -> tuple[float, float, float]:
    """(image-unit p, Δr = r_A − r_B, vertex-Wilcoxon p) of two fitted models."""
    result = image_permutation_test(measured[split.test], a.predictions_, b.predictions_,
                                    n_permutations=n_permutations, seed=seed)
    return result.pvalue, result.statistic, paired_wilcoxon(a.test_r_, b.test_r_)


def _noisy_backbones(simulator: Simulator, layer: np.ndarray, name: str, split: Split,
                     args: argparse.Namespace, rng: np.random.Generator, noise_b: float,
                     seed: int) -> tuple[float, float, float]:
    """Two backbones = the layer plus independent feature noise, fit to one measurement."""
    measured = simulator.measure(rng)
    scale = args.feature_noise * float(layer.std(axis=0).mean())
    models = []
    for noise in (scale, scale * noise_b):
        features = {name: layer + (noise * rng.standard_normal(layer.shape)).astype(np.float32)}
        models.append(EncodingModel(n_components=args.n_components, progress=False).fit(
            features, measured, split))
    return _compare(measured, *models, split, args.n_permutations, seed)


def _training_noise(simulator: Simulator, features: dict, split: Split, cache: PCACache,
                    args: argparse.Namespace, rng: np.random.Generator,
                    seed: int) -> tuple[float, float, float]:
    """One backbone; A and B fit to independent train/val measurements, one test measurement."""
    test = simulator.measure(rng)
    models = []
    for _ in range(2):
        measured = simulator.measure(rng)
        measured[split.test] = test[split.test]
        models.append(EncodingModel(n_components=args.n_components, progress=False,
                                    cache=cache).fit(features, measured, split))
    return _compare(test, *models, split, args.n_permutations, seed)


def _rate(hits: np.ndarray) -> dict:
    """Rate of True in ``hits`` with its Clopper-Pearson 95 % interval."""
    interval = stats.binomtest(int(hits.sum()), hits.size).proportion_ci(0.95)
    return {"rate": float(hits.mean()), "ci95": [interval.low, interval.high]}


def main(argv: list[str] | None = None) -> None:
    args = _arguments(argv)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    started = time.perf_counter()
    data = args.data or default_cache_dir() / "benchmarks" / (
        f"calibration-{args.n_images}-{args.roi_scale}")
    if not (data / "subj01").is_dir():
        simulate_subject(data, n_images=args.n_images, n_test_images=0, image_size=64,
                         roi_scale=args.roi_scale, seed=0, progress=False)
    simulator = Simulator(data, args.roi)
    split = make_splits(simulator.subject.n_images, seed=0)
    rng = np.random.default_rng(args.seed)
    runs: dict[str, list] = {"null": [], "power": [], "null_training_noise": []}
    with tempfile.TemporaryDirectory() as folder:
        features = extract_features(load_alexnet("none", seed=0), simulator.subject.images,
                                    out_dir=folder, progress=False)
        layer = np.asarray(features[args.layer], dtype=np.float32)
        prepared = time.perf_counter()
        cache = PCACache()
        for sim in range(args.n_sims):
            for kind, noise_b in (("null", 1.0), ("power", args.power_noise)):
                runs[kind].append(_noisy_backbones(
                    simulator, layer, args.layer, split, args, rng, noise_b,
                    derive_seed(args.seed, f"{kind}/{sim}")))
            runs["null_training_noise"].append(_training_noise(
                simulator, features, split, cache, args, rng,
                derive_seed(args.seed, f"training/{sim}")))
    null, power, training = (np.array(runs[kind]) for kind in runs)
    false_positive, detected = _rate(null[:, 0] < ALPHA), _rate(
        (power[:, 0] < ALPHA) & (power[:, 1] > 0))
    result = {
        "n_sims": args.n_sims, "alpha": ALPHA,
        "false_positive_rate": false_positive["rate"],
        "false_positive_rate_ci95": false_positive["ci95"],
        "power": detected["rate"], "power_ci95": detected["ci95"],
        "old_vertex_wilcoxon": {
            "false_positive_rate": _rate(null[:, 2] < ALPHA),
            "power": _rate((power[:, 2] < ALPHA) & (power[:, 1] > 0))},
        "null_training_noise": {
            "false_positive_rate": _rate(training[:, 0] < ALPHA),
            "old_vertex_wilcoxon_false_positive_rate": _rate(training[:, 2] < ALPHA)},
        "delta_r": {kind: {"mean": float(values[:, 1].mean()), "sd": float(values[:, 1].std())}
                    for kind, values in (("null", null), ("power", power),
                                         ("null_training_noise", training))},
        "setup": {"n_images": simulator.subject.n_images, "n_test": int(split.test.size),
                  "roi": f"lh {args.roi}", "n_vertices": int(simulator.signal.shape[1]),
                  "layer": args.layer, "n_components": args.n_components,
                  "n_permutations": args.n_permutations, "feature_noise": args.feature_noise,
                  "power_noise": args.power_noise, "seed": args.seed,
                  "unit": "test image (whole rows of predictions swapped)"},
        "seconds": {"prepare": prepared - started, "total": time.perf_counter() - started},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

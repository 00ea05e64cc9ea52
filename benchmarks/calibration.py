"""Calibration of the image-unit paired tests: false-positive rate, power and CI coverage.

Prints one JSON object. A simulated subject (``cortexcl.data.simulate``, lh V1v) is made once
(cached) and the features of one backbone (a randomly initialised AlexNet) are extracted once.
Its first ``--n-images`` images are split as in a study (train / val / test = 75 / 10 / 15 %,
e.g. 750 / 100 / 150); ``--n-population`` further images are never used by the tests and
measure how good the two fitted models really are (their "population" Δr). The ground truth
holds every vertex's noiseless signal s, its ncsnr and the repeats per image, so fresh
measurements are drawn as the simulator draws them: ``ncsnr · s + N(0, 1) / sqrt(repeats)``,
z-scored per vertex. Every model is an `EncodingModel` fit (PCA + ridge, α per vertex and the
layer chosen on val, refit on train ∪ val, as in the study), and every comparison is the
study's `cortexcl.statistics.compare_predictions` on the test images (permutation p over test
images, two-sided, and the bootstrap 95 % interval of Δr = mean over vertices of r_A − r_B);
for comparison the old Wilcoxon signed-rank test over vertices (`cortexcl.metrics.
paired_wilcoxon`) runs on the same two models and images. A rejection is p < alpha.

* **Null: two equally good backbones** (``false_positive_rate``). Each simulation draws one
  measurement of the subject and two "backbones": the features of one layer (``--layer``)
  plus independent Gaussian noise per image and feature, of the same size for both
  (``--feature-noise`` times the features' mean SD). Each backbone thus represents some images
  worse than the other, as real backbones do, and its prediction errors are shared by all
  vertices of an image; in expectation the two are equally good. Both are fit to the same
  measured responses and compared on the same test images.
* **Null: independent training noise** (``null_training_noise``). One backbone (all eight
  layers); models A and B are fit to two independent, equally noisy measurements of the
  train/val images and compared on a third measurement of the test images.
* **Power.** As the first null, but backbone B's feature noise is ``--power-noise`` times A's:
  B is worse by construction. Power is the fraction of simulations with p < alpha and Δr > 0.

Rates come with exact binomial 95 % intervals (``scipy.stats.binomtest``, Clopper-Pearson).
The tests over test images are conditional on the two fitted models: they ask whether these
two models predict new images differently. Fits to noisy data make two equally good backbones'
models differ a little in truth, and such a difference is real for them. ``population`` shows
how much: the SD over simulations of the fitted models' Δr on the population images, and how
often the bootstrap interval from the test images covers it (``ci_coverage``, 0.95 if the
intervals are right for the fitted models; the population Δr has a little sampling noise of
its own, which lowers the coverage slightly).

    python benchmarks/calibration.py                  # 200 simulations of each kind
    python benchmarks/calibration.py --quick          # 20 of each, fewer resamples (< 30 s
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
from cortexcl.metrics import paired_wilcoxon, pearson_r
from cortexcl.models.backbones import load_alexnet
from cortexcl.statistics import compare_predictions, derive_seed

ALPHA = 0.05


def _arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-sims", type=int, default=200, help="simulations of each kind")
    parser.add_argument("--quick", action="store_true",
                        help="20 simulations of each kind, 1000 permutations, 500 bootstraps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-images", type=int, default=1000,
                        help="images of the study split (15 %% of them are test images)")
    parser.add_argument("--n-population", type=int, default=2000,
                        help="further images that measure the fitted models' true Δr")
    parser.add_argument("--roi", default="V1v")
    parser.add_argument("--roi-scale", type=float, default=0.45)
    parser.add_argument("--layer", default="features.5",
                        help="layer of the two noisy backbones")
    parser.add_argument("--n-components", type=int, default=100)
    parser.add_argument("--n-permutations", type=int, default=2000)
    parser.add_argument("--n-bootstrap", type=int, default=1000)
    parser.add_argument("--feature-noise", type=float, default=1.0,
                        help="feature noise SD of both backbones, in units of the features' SD")
    parser.add_argument("--power-noise", type=float, default=1.3,
                        help="backbone B's feature noise relative to A's in the power sims")
    parser.add_argument("--data", type=Path, default=None, help="simulated-subject cache")
    args = parser.parse_args(argv)
    if args.quick:
        args.n_sims, args.n_permutations, args.n_bootstrap = 20, 1000, 500
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
             n_test: int, args: argparse.Namespace, seed: int) -> list[float]:
    """[image-unit p, Δr, CI low, CI high, vertex-Wilcoxon p, population Δr] of two models.

    The first ``n_test`` rows of the models' predictions are the study's test images, the
    others the population images.
    """
    test, population = slice(0, n_test), slice(n_test, None)
    y = measured[split.test]
    result = compare_predictions(y[test], a.predictions_[test], b.predictions_[test],
                                 seed=seed, n_permutations=args.n_permutations,
                                 n_bootstrap=args.n_bootstrap)
    r_a, r_b = (pearson_r(y[test], model.predictions_[test]) for model in (a, b))
    true_delta = np.mean(pearson_r(y[population], a.predictions_[population])
                         - pearson_r(y[population], b.predictions_[population]))
    return [result.p, result.delta_r, result.ci_low, result.ci_high, paired_wilcoxon(r_a, r_b),
            float(true_delta)]


def _noisy_backbones(simulator: Simulator, layer: np.ndarray, split: Split, n_test: int,
                     args: argparse.Namespace, rng: np.random.Generator, noise_b: float,
                     seed: int) -> list[float]:
    """Two backbones = the layer plus independent feature noise, fit to one measurement."""
    measured = simulator.measure(rng)
    scale = args.feature_noise * float(layer.std(axis=0).mean())
    models = []
    for noise in (scale, scale * noise_b):
        features = {args.layer: layer + noise * rng.standard_normal(layer.shape,
                                                                    dtype=np.float32)}
        models.append(EncodingModel(n_components=args.n_components, progress=False).fit(
            features, measured, split))
    return _compare(measured, *models, split, n_test, args, seed)


def _training_noise(simulator: Simulator, features: dict, split: Split, n_test: int,
                    cache: PCACache, args: argparse.Namespace, rng: np.random.Generator,
                    seed: int) -> list[float]:
    """One backbone; A and B fit to independent train/val measurements, one test measurement."""
    test = simulator.measure(rng)
    models = []
    for _ in range(2):
        measured = simulator.measure(rng)
        measured[split.test] = test[split.test]
        models.append(EncodingModel(n_components=args.n_components, progress=False,
                                    cache=cache).fit(features, measured, split))
    return _compare(test, *models, split, n_test, args, seed)


def _rate(hits: np.ndarray) -> dict:
    """Rate of True in ``hits`` with its Clopper-Pearson 95 % interval."""
    interval = stats.binomtest(int(hits.sum()), hits.size).proportion_ci(0.95)
    return {"rate": float(hits.mean()), "ci95": [interval.low, interval.high]}


def _population(values: np.ndarray) -> dict:
    """Spread of Δr and coverage of the fitted models' population Δr by the intervals."""
    covered = (values[:, 2] <= values[:, 5]) & (values[:, 5] <= values[:, 3])
    return {"sd_delta_r_test": float(values[:, 1].std()),
            "sd_delta_r_population": float(values[:, 5].std()),
            "ci_coverage": _rate(covered)}


def main(argv: list[str] | None = None) -> None:
    args = _arguments(argv)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    started = time.perf_counter()
    total = args.n_images + args.n_population
    data = args.data or default_cache_dir() / "benchmarks" / f"calibration-{total}-{args.roi_scale}"
    if not (data / "subj01").is_dir():
        simulate_subject(data, n_images=total, n_test_images=0, image_size=64,
                         roi_scale=args.roi_scale, seed=0, progress=False)
    simulator = Simulator(data, args.roi)
    study = make_splits(args.n_images, seed=0)
    population = np.arange(args.n_images, total)
    split = Split(study.train, study.val, np.concatenate([study.test, population]), 0, "clean")
    n_test = int(study.test.size)
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
                    simulator, layer, split, n_test, args, rng, noise_b,
                    derive_seed(args.seed, f"{kind}/{sim}")))
            runs["null_training_noise"].append(_training_noise(
                simulator, features, split, n_test, cache, args, rng,
                derive_seed(args.seed, f"training/{sim}")))
    null, power, training = (np.array(runs[kind]) for kind in runs)
    false_positive = _rate(null[:, 0] < ALPHA)
    detected = _rate((power[:, 0] < ALPHA) & (power[:, 1] > 0))
    result = {
        "n_sims": args.n_sims, "alpha": ALPHA,
        "false_positive_rate": false_positive["rate"],
        "false_positive_rate_ci95": false_positive["ci95"],
        "power": detected["rate"], "power_ci95": detected["ci95"],
        "old_vertex_wilcoxon": {
            "false_positive_rate": _rate(null[:, 4] < ALPHA),
            "power": _rate((power[:, 4] < ALPHA) & (power[:, 1] > 0))},
        "null_training_noise": {
            "false_positive_rate": _rate(training[:, 0] < ALPHA),
            "old_vertex_wilcoxon_false_positive_rate": _rate(training[:, 4] < ALPHA)},
        "delta_r_mean": {"null": float(null[:, 1].mean()), "power": float(power[:, 1].mean()),
                         "null_training_noise": float(training[:, 1].mean())},
        "population": {"null": _population(null), "power": _population(power),
                       "null_training_noise": _population(training)},
        "setup": {"n_images": args.n_images, "n_test": n_test,
                  "n_population": args.n_population, "roi": f"lh {args.roi}",
                  "n_vertices": int(simulator.signal.shape[1]), "layer": args.layer,
                  "n_components": args.n_components, "n_permutations": args.n_permutations,
                  "n_bootstrap": args.n_bootstrap, "feature_noise": args.feature_noise,
                  "power_noise": args.power_noise, "seed": args.seed,
                  "unit": "test image (whole rows of predictions swapped / resampled)"},
        "seconds": {"prepare": prepared - started, "total": time.perf_counter() - started},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

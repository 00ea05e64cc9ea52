"""Tuned backbones on disk: safetensors weights plus JSON metadata, loadable on their own."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save
from torch import nn

from cortexcl.atomic import atomic_write_bytes, atomic_write_json
from cortexcl.errors import InputError
from cortexcl.models.backbones import (
    PARTIAL_KEY,
    build_backbone,
    is_weights_keyword,
    weights_fingerprint,
)

BACKBONE = "backbone.safetensors"
HEADS = "heads.safetensors"
HALF_COPY = "backbone-float16.safetensors"
META = "meta.json"


def save_tuned(out_dir: str | Path, model: nn.Module, meta: dict[str, Any], *,
               base: tuple[str, str | Path, int] | None = None,
               half_copy: bool = False) -> Path:
    """Write a tuned model: the backbone, the tuning heads and ``meta.json`` (written last).

    The backbone alone is what every downstream analysis uses; the heads (W_x, W_y, g, or the
    regression layer) are kept for the mutual-information bound. ``meta.json`` is written last,
    so its presence marks a complete model; it records the bytes of each file (``bytes``).

    Parameters
    ----------
    out_dir : path
        The model folder.
    model : torch.nn.Module
        The tuning model, its network as ``model.backbone``.
    meta : dict
        What ``meta.json`` records besides ``bytes``.
    base : (name, weights, seed), optional
        The backbone and the weights tuning started from (`build_backbone` arguments). When
        given, ``backbone.safetensors`` holds only what tuning can change (the parameters that
        were trained and every buffer) and names the base in its header; loading rebuilds the
        rest from it, so frozen stages cost no disk. Without it the file is a complete state
        dict.
    half_copy : bool
        Also write ``backbone-float16.safetensors``: the complete network in half precision, a
        standalone file for downstream use (the study itself encodes with full precision).

    Returns
    -------
    pathlib.Path
        The folder.
    """
    out_dir = Path(out_dir)
    backbone = {name: t.detach().cpu().contiguous()
                for name, t in model.backbone.state_dict().items()}
    heads = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()
             if not name.startswith("backbone.")}
    header = None
    if base is not None:
        name, weights, seed = base
        trained = {n for n, p in model.backbone.named_parameters() if p.requires_grad}
        changed = trained | {n for n, _ in model.backbone.named_buffers()}
        if changed != set(backbone):
            weights = str(weights if is_weights_keyword(weights) else Path(weights).resolve())
            header = {PARTIAL_KEY: json.dumps({
                "backbone": name, "weights": weights, "seed": int(seed),
                "sha256": weights_fingerprint(weights)}, sort_keys=True)}
            backbone = {n: t for n, t in backbone.items() if n in changed}
    files = {BACKBONE: save(backbone, metadata=header), HEADS: save(heads)}
    if half_copy:
        files[HALF_COPY] = save({n: t.half() if t.is_floating_point() else t
                                 for n, t in model.backbone.state_dict().items()})
    for file, data in files.items():
        atomic_write_bytes(out_dir / file, data)
    atomic_write_json(out_dir / META, {**meta, "bytes": {
        file: len(data) for file, data in files.items()}})
    return out_dir


def model_bytes(path: str | Path) -> int:
    """Bytes a tuned model folder takes on disk (all its files)."""
    return sum(file.stat().st_size for file in Path(path).iterdir() if file.is_file())


def load_backbone(path: str | Path) -> nn.Module:
    """Load a tuned backbone as a plain timm / torchvision network in eval mode.

    Parameters
    ----------
    path : path
        A model folder written by `save_tuned`, or its ``backbone.safetensors`` (or
        ``backbone-float16.safetensors``) file. The architecture is the ``backbone`` its
        ``meta.json`` records (AlexNet when there is none); tensors a tuned file leaves out
        (frozen stages) come from the weights tuning started from.

    Returns
    -------
    torch.nn.Module
        The network with the tuned weights (e.g. ``torchvision.models.alexnet``, or timm's
        ``tf_efficientnet_lite0``), usable outside cortexcl.

    Raises
    ------
    InputError
        If there is no backbone file, or it does not fit the recorded architecture.
    """
    path = Path(path)
    file = path / BACKBONE if path.is_dir() else path
    if not file.is_file():
        raise InputError(f"{file}: no tuned backbone here (expected {BACKBONE})")
    meta = file.with_name(META)
    name = "alexnet"
    if meta.is_file():
        with contextlib.suppress(OSError, ValueError, AttributeError):
            name = str(json.loads(meta.read_text()).get("backbone", name))
    return build_backbone(name, file)


def load_heads(path: str | Path) -> dict[str, torch.Tensor]:
    """Load the tuning heads saved beside a backbone (keys as in the tuning model)."""
    return load_file(Path(path) / HEADS)


def read_meta(path: str | Path) -> dict[str, Any]:
    """Read a tuned model's ``meta.json``."""
    file = Path(path) / META
    try:
        return json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise InputError(f"{file}: cannot read tuned-model metadata ({error})") from None

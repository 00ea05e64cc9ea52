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
from cortexcl.models.backbones import build_backbone

BACKBONE = "backbone.safetensors"
HEADS = "heads.safetensors"
META = "meta.json"


def save_tuned(out_dir: str | Path, model: nn.Module, meta: dict[str, Any]) -> Path:
    """Write a tuned model: the backbone, the tuning heads and ``meta.json`` (written last).

    The backbone alone is what every downstream analysis uses; the heads (W_x, W_y, g, or the
    regression layer) are kept for the mutual-information bound. ``meta.json`` is written last,
    so its presence marks a complete model.

    Returns
    -------
    pathlib.Path
        The folder.
    """
    out_dir = Path(out_dir)
    state = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    backbone = {name.removeprefix("backbone."): t for name, t in state.items()
                if name.startswith("backbone.")}
    heads = {name: t for name, t in state.items() if not name.startswith("backbone.")}
    atomic_write_bytes(out_dir / BACKBONE, save(backbone))
    atomic_write_bytes(out_dir / HEADS, save(heads))
    atomic_write_json(out_dir / META, meta)
    return out_dir


def load_backbone(path: str | Path) -> nn.Module:
    """Load a tuned backbone as a plain timm / torchvision network in eval mode.

    Parameters
    ----------
    path : path
        A model folder written by `save_tuned`, or its ``backbone.safetensors`` file. The
        architecture is the ``backbone`` its ``meta.json`` records (AlexNet when there is none).

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

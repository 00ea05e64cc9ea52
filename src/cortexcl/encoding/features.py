"""Layer activations of a backbone for a set of images, in memory or streamed to disk."""

from __future__ import annotations

import contextlib
import copy
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from cortexcl.errors import InputError
from cortexcl.models.backbones import CANDIDATE_LAYERS, TOKEN_REDUCTIONS, resolve_device

_FLOAT16_MAX = float(np.finfo(np.float16).max)


class ImageSource(Protocol):
    """What `extract_features` needs from an `ImageStore`."""

    def __len__(self) -> int: ...

    def batches(self, indices: Any, batch_size: int, device: Any = None) -> Any: ...


def feature_path(out_dir: str | Path, layer: str) -> Path:
    """File holding the activations of ``layer`` in ``out_dir``: ``<layer>.npy``."""
    return Path(out_dir) / f"{layer}.npy"


class Float16Writer:
    """Float16 ``.npy`` files filled row block by row block, renamed into place when complete.

    Rows are written with ordinary file writes (not a memory map), so the pages written do not
    count towards the process's resident memory.
    """

    def __init__(self, out_dir: Path, layers: Sequence[str], n_rows: int) -> None:
        self.out_dir = out_dir
        self.n_rows = n_rows
        self.layers = tuple(layers)
        self.files: dict[str, tuple[str, BinaryIO]] = {}

    def open(self, layer: str, n_columns: int | tuple[int, ...]) -> None:
        """Start ``layer``'s file; ``n_columns`` may be a row shape, e.g. ``(H, W)``."""
        fd, tmp = tempfile.mkstemp(prefix=f".{layer}.", suffix=".tmp", dir=self.out_dir)
        handle = os.fdopen(fd, "wb")
        row_shape = n_columns if isinstance(n_columns, tuple) else (n_columns,)
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float16)),
                  "fortran_order": False, "shape": (self.n_rows, *row_shape)}
        np.lib.format.write_array_header_1_0(handle, header)
        self.files[layer] = (tmp, handle)

    def write(self, layer: str, block: np.ndarray) -> None:
        self.files[layer][1].write(np.ascontiguousarray(block).data)

    def finish(self) -> dict[str, np.ndarray]:
        for layer in self.layers:
            tmp, handle = self.files.pop(layer)
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
            os.replace(tmp, feature_path(self.out_dir, layer))
        return {layer: np.load(feature_path(self.out_dir, layer), mmap_mode="r")
                for layer in self.layers}

    def abort(self) -> None:
        for tmp, handle in self.files.values():
            handle.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        self.files.clear()


def extract_features(
    model: torch.nn.Module,
    images: ImageSource,
    layers: Sequence[str] = CANDIDATE_LAYERS,
    indices: Sequence[int] | np.ndarray | None = None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Flattened activations of ``layers`` for a set of images.

    The backbone runs in eval mode under ``torch.inference_mode`` (dropout off, no gradients);
    each image's activation of a layer (the output of the module of that name, read by a
    forward hook) is flattened to C·H·W values with no pooling (docs/method.md §3.1). A
    transformer layer ``<module>:cls`` keeps the CLS token of the module's ``(B, tokens, D)``
    output, ``<module>:mean`` the mean of its patch tokens (the tokens after the model's
    ``num_prefix_tokens``). On a GPU the forward passes use bfloat16 autocast and channels-last
    memory; channels-last is used on the CPU too, where it is faster. The model passed in is
    not modified (a copy runs).

    Parameters
    ----------
    model : torch.nn.Module
        A backbone (`cortexcl.models.backbones.build_backbone`), or any module with the named
        layers.
    images : ImageStore
        Source of normalised image batches (``images.batches(indices, batch_size, device)``).
    layers : sequence of str
        Module names, e.g. ``"features.2"``, ``"classifier.5"``, or ``"blocks.3:cls"``.
    indices : sequence of int, optional
        Images to use, in the order of the output rows; default all.
    batch_size : int
        Images per forward pass.
    device : str or torch.device, optional
        Where the backbone runs; default the GPU when present.
    out_dir : path, optional
        If given, each layer is streamed batch by batch to ``<out_dir>/<layer>.npy`` as float16
        (so memory stays bounded whatever the number of images) and returned as a read-only
        memory map. Otherwise float32 arrays are returned.
    progress : bool
        Show a progress bar (images per second).

    Returns
    -------
    dict of str to numpy.ndarray
        ``{layer: (n_images, n_features)}``.

    Raises
    ------
    InputError
        If a layer name is not a module of ``model`` or the batch size is not positive.
    """
    layers = tuple(layers)
    check_model_layers(model, layers)
    if batch_size < 1:
        raise InputError(f"batch_size must be positive, got {batch_size}")
    device = resolve_device(device)
    index = np.arange(len(images)) if indices is None else np.asarray(indices, dtype=np.int64)
    if index.size == 0:
        raise InputError("extract_features: no images to process")
    on_gpu = device.type == "cuda"
    network = copy.deepcopy(model).eval().to(device, memory_format=torch.channels_last)
    extractor = _LayerTaps(network, layers)
    writer = None
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        writer = Float16Writer(Path(out_dir), layers, index.size)
    arrays: dict[str, np.ndarray] = {}
    bar = tqdm(total=index.size, unit="img", desc="features", disable=not progress)
    row = 0
    try:
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16,
                                                     enabled=on_gpu):
            for batch in images.batches(index, batch_size, device):
                batch = batch.to(device).contiguous(memory_format=torch.channels_last)
                outputs = extractor(batch)
                for layer in layers:
                    activation = outputs[layer].flatten(1)
                    if writer is None:
                        if row == 0:
                            arrays[layer] = np.empty((index.size, activation.shape[1]),
                                                     np.float32)
                        arrays[layer][row : row + len(batch)] = activation.float().cpu().numpy()
                        continue
                    check_float16_range(layer, activation)
                    if row == 0:
                        writer.open(layer, activation.shape[1])
                    writer.write(layer, activation.to(torch.float16).cpu().numpy())
                row += len(batch)
                bar.update(len(batch))
        if row != index.size:
            raise RuntimeError(f"image source yielded {row} images, expected {index.size}")
        if writer is not None:
            arrays = writer.finish()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        bar.close()
    return arrays


def check_model_layers(model: nn.Module, layers: Sequence[str]) -> None:
    """Refuse an empty list, or names that are not modules of ``model`` (``<block>:cls`` /
    ``<block>:mean`` for transformer blocks).

    Raises
    ------
    InputError
        Naming the unknown layers and the command that lists the valid ones.
    """
    modules = dict(model.named_modules())
    unknown = [layer for layer in layers if not _known_layer(layer, modules)]
    if unknown or not layers:
        raise InputError(f"layers: unknown module name(s) {unknown or '(none given)'}; "
                         f"`cortexcl layers BACKBONE` lists them (AlexNet's candidates are "
                         f"{', '.join(CANDIDATE_LAYERS)})")


def _known_layer(layer: str, modules: dict[str, torch.nn.Module]) -> bool:
    module, _, reduction = layer.partition(":")
    return bool(module) and module in modules and reduction in ("", *TOKEN_REDUCTIONS)


class _LayerTaps:
    """Calls a network and returns the outputs of named modules (forward hooks)."""

    def __init__(self, network: torch.nn.Module, layers: Sequence[str]) -> None:
        self.network = network
        self.layers = tuple(layers)
        self.prefix = int(getattr(network, "num_prefix_tokens", 1))
        self.outputs: dict[str, torch.Tensor] = {}
        modules = dict(network.named_modules())
        for module in dict.fromkeys(layer.partition(":")[0] for layer in self.layers):
            modules[module].register_forward_hook(self._keeper(module))

    def _keeper(self, module: str) -> Any:
        def keep(_: torch.nn.Module, __: Any, output: Any) -> None:
            # A copy: a later in-place operation (ReLU(inplace=True)) must not change it.
            self.outputs[module] = (output[0] if isinstance(output, tuple) else output).clone()
        return keep

    def __call__(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        self.outputs.clear()
        self.network(batch)
        taken = {}
        for layer in self.layers:
            module, _, reduction = layer.partition(":")
            output = self.outputs[module]
            if reduction == "cls":
                output = output[:, 0]
            elif reduction == "mean":
                output = output[:, self.prefix:].mean(1)
            taken[layer] = output
        return taken


def check_float16_range(layer: str, activation: torch.Tensor) -> None:
    """Raise `InputError` if ``activation`` holds values float16 files cannot store."""
    peak = float(activation.abs().amax()) if activation.numel() else 0.0
    if not math.isfinite(peak) or peak > _FLOAT16_MAX:
        raise InputError(f"{layer}: activations reach {peak:g}, beyond float16; "
                         f"extract without out_dir to keep float32")

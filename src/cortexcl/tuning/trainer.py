"""One fit loop for every tuning method (contrastive, regression, pooled).

A model only has to provide ``loss(images, responses, subject)`` and a ``backbone`` attribute.
The loop shuffles with a seeded generator, checkpoints after every epoch (model, optimiser,
log) and resumes exactly: the shuffle order and the dropout masks of epoch ``e`` depend only on
``(seed, e)``, so a run killed and resumed gives the same weights as an uninterrupted one.
Early stopping (off by default, as published) ends the loop when the val loss has not improved
for ``patience`` epochs and keeps the weights of the epoch with the lowest val loss.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from cortexcl.atomic import atomic_write_bytes, atomic_write_text
from cortexcl.data.images import ImageStore, normalize
from cortexcl.errors import InputError
from cortexcl.models.backbones import resolve_device

CHECKPOINT = "checkpoint.pt"
TRAIN_LOG = "train_log.csv"


@dataclass(frozen=True)
class TrainingSet:
    """The training data of one subject.

    Attributes
    ----------
    name : str
        Subject name; pooled models keep one response branch per name.
    images : ImageStore
        The subject's images.
    responses : numpy.ndarray
        float32 ``(n_images, n_vertices)``: the ROI's responses, rows aligned with ``images``.
    train, val : numpy.ndarray
        Image indices. Only ``train`` updates the model; ``val`` is logged, and decides when
        to stop under early stopping.
    """

    name: str
    images: ImageStore
    responses: np.ndarray
    train: np.ndarray
    val: np.ndarray


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings (docs/method.md §2.3–2.5 defaults are those of contrastive tuning)."""

    epochs: int = 30
    batch_size: int = 1024
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    seed: int = 0
    interleave: bool = False
    patience: int | None = None


def train(model: nn.Module, datasets: Sequence[TrainingSet], settings: TrainSettings,
          out_dir: str | Path, *, device: str | torch.device | None = None,
          progress: bool = True) -> pd.DataFrame:
    """Train ``model`` on the train images of ``datasets``, resuming from a checkpoint.

    Parameters
    ----------
    model : torch.nn.Module
        A tuning model with ``loss(images, responses, subject)``.
    datasets : sequence of TrainingSet
        One per subject (one for subject-specific models). Each epoch visits the subjects in
        the given order and runs all batches of one before the next, as published, or
        interleaves batches at random when ``settings.interleave`` is set.
    settings : TrainSettings
        Optimiser, epochs, batch size, seed, and ``patience``: stop once the val loss has not
        improved for that many epochs and restore the best epoch's weights (None: train every
        epoch and keep the last, as published).
    out_dir : path
        Receives ``checkpoint.pt`` after every epoch and ``train_log.csv``.
    device : str or torch.device, optional
        The GPU when one is present. On CUDA, images stay on the GPU as uint8, the backbone is
        channels_last and the forward pass runs under bfloat16 autocast.
    progress : bool
        Show a progress bar with images per second.

    Returns
    -------
    pandas.DataFrame
        The training log: one row per epoch run with train and val loss.

    Raises
    ------
    InputError
        Early stopping without val images; a checkpoint of other settings.
    """
    out_dir = Path(out_dir)
    device = resolve_device(device)
    model.to(device)
    if device.type == "cuda":
        model.backbone.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad],
                                 lr=settings.lr, betas=settings.betas, eps=settings.eps,
                                 weight_decay=settings.weight_decay, fused=True)
    if settings.patience and not any(len(data.val) for data in datasets):
        raise InputError("early stopping needs val images (the clean protocol), and there are "
                         "none")
    log, best = _resume(model, optimizer, out_dir / CHECKPOINT, device, settings)
    sources = [_DeviceImages(data, device) for data in datasets]
    n_train = sum(len(data.train) for data in datasets)
    bar = tqdm(total=settings.epochs * n_train, initial=len(log) * n_train, unit="img",
               desc="tuning", disable=not progress, dynamic_ncols=True)
    # Dropout draws from the global RNG, seeded per epoch; the caller's state is restored.
    rng_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices):
        for epoch in range(len(log), settings.epochs):
            if _stalled(log, settings.patience):
                break
            started = time.perf_counter()
            generator = _epoch_generator(settings.seed, epoch)
            model.train()
            total, count = 0.0, 0
            for data, source, batch in _train_batches(datasets, sources, settings, generator):
                loss = _batch_loss(model, data, source, batch, device)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item() * len(batch)
                count += len(batch)
                bar.update(len(batch))
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
            seconds = time.perf_counter() - started
            log.append({"epoch": epoch + 1, "train_loss": total / max(count, 1),
                        "val_loss": evaluate_loss(model, datasets, sources, settings.batch_size,
                                                  device),
                        "seconds": seconds, "images_per_s": count / seconds})
            if settings.patience and best_epoch(log) == len(log) - 1:
                best = {name: t.detach().cpu().clone() for name, t in model.state_dict().items()}
            _save_checkpoint(model, optimizer, log, out_dir, settings, best)
    bar.close()
    if best is not None:
        model.load_state_dict(best)
    return pd.DataFrame(log)


def best_epoch(log: Sequence[dict]) -> int:
    """Index of the logged epoch with the lowest val loss (the first of ties)."""
    return int(np.argmin([row["val_loss"] for row in log]))


def _stalled(log: Sequence[dict], patience: int | None) -> bool:
    """Whether the val loss has not improved for ``patience`` epochs."""
    return bool(patience) and bool(log) and len(log) - 1 - best_epoch(log) >= patience


@torch.no_grad()
def evaluate_loss(model: nn.Module, datasets: Sequence[TrainingSet],
                  sources: Sequence[_DeviceImages], batch_size: int,
                  device: torch.device) -> float:
    """Mean loss over the val images of every subject, in eval mode (nan when there are none)."""
    model.eval()
    total, count = 0.0, 0
    for data, source in zip(datasets, sources, strict=True):
        for batch in _chunks(torch.from_numpy(np.array(data.val)), batch_size):
            total += _batch_loss(model, data, source, batch, device).item() * len(batch)
            count += len(batch)
    return total / count if count else float("nan")


class _DeviceImages:
    """uint8 images of one subject: all on the GPU when there is one, else read per batch."""

    def __init__(self, data: TrainingSet, device: torch.device) -> None:
        self.images = data.images
        self.device = device
        self.resident: torch.Tensor | None = None
        if device.type == "cuda":
            used = np.union1d(data.train, data.val)
            self.position = torch.full((len(data.images),), -1, dtype=torch.long)
            self.position[torch.as_tensor(used)] = torch.arange(len(used))
            self.resident = data.images.uint8(used, device=device)

    def batch(self, indices: torch.Tensor) -> torch.Tensor:
        if self.resident is not None:
            return self.resident[self.position[indices].to(self.device)]
        return self.images.uint8(indices.numpy(), device=self.device)


def _batch_loss(model: nn.Module, data: TrainingSet, source: _DeviceImages,
                batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    images = normalize(source.batch(batch), *data.images.normalization)
    responses = torch.from_numpy(np.ascontiguousarray(data.responses[batch.numpy()])).to(device)
    if device.type == "cuda":
        images = images.contiguous(memory_format=torch.channels_last)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else contextlib.nullcontext())
    with autocast:
        return model.loss(images, responses, subject=data.name)


def _train_batches(datasets: Sequence[TrainingSet], sources: Sequence[_DeviceImages],
                   settings: TrainSettings,
                   generator: torch.Generator) -> Iterator[tuple[TrainingSet, _DeviceImages,
                                                                 torch.Tensor]]:
    plan = []
    for index, data in enumerate(datasets):
        order = torch.from_numpy(np.array(data.train))[
            torch.randperm(len(data.train), generator=generator)]
        plan.extend((index, batch) for batch in _chunks(order, settings.batch_size))
    if settings.interleave:
        plan = [plan[i] for i in torch.randperm(len(plan), generator=generator)]
    for index, batch in plan:
        yield datasets[index], sources[index], batch


def _chunks(indices: torch.Tensor, size: int) -> list[torch.Tensor]:
    """Consecutive batches; a last batch of one image joins the previous one (BatchNorm needs 2)."""
    if indices.numel() == 0:  # e.g. no val part (the paper protocol)
        return []
    batches = list(torch.split(indices, size))
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2:] = [torch.cat(batches[-2:])]
    return batches


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """Seed the shuffle generator and the global RNG (dropout) from ``(seed, epoch)`` only."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(2)
    torch.manual_seed(int(state[0]))
    return torch.Generator().manual_seed(int(state[1]))


def _resume(model: nn.Module, optimizer: torch.optim.Optimizer, path: Path,
            device: torch.device,
            settings: TrainSettings) -> tuple[list[dict], dict[str, torch.Tensor] | None]:
    """Load the checkpoint, if any; it must come from the same settings (epochs may grow).
    Returns the log and the best epoch's weights (early stopping only)."""
    if not path.exists():
        return [], None
    state = torch.load(path, map_location=device, weights_only=True)
    saved, wanted = state["settings"], asdict(settings)
    changed = [f"{key} {saved.get(key)!r} -> {value!r}" for key, value in wanted.items()
               if key != "epochs" and saved.get(key) != value]
    if len(state["log"]) > settings.epochs:
        changed.append(f"epochs {len(state['log'])} done -> {settings.epochs}")
    if changed:
        raise InputError(f"{path}: checkpoint of other settings ({'; '.join(changed)}); "
                         "remove it or train in another folder")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    best = state.get("best")
    return [dict(row) for row in state["log"]], (
        {name: t.cpu() for name, t in best.items()} if best is not None else None)


def _save_checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer, log: list[dict],
                     out_dir: Path, settings: TrainSettings,
                     best: dict[str, torch.Tensor] | None) -> None:
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "log": log,
                "settings": asdict(settings), "best": best}, buffer)
    atomic_write_bytes(out_dir / CHECKPOINT, buffer.getvalue())
    text = io.StringIO()
    pd.DataFrame(log).to_csv(text, index=False)
    atomic_write_text(out_dir / TRAIN_LOG, text.getvalue())

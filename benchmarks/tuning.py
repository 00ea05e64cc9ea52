"""Contrastive tuning throughput: our training loop against a bare AlexNet step.

Prints one JSON object: images per second of `cortexcl.tuning.trainer.train` with a
`ContrastiveModel` on a simulated subject (image cache, normalisation, loss, heads, Adam,
per-epoch checkpoint and val loss), images per second of a bare torchvision AlexNet forward +
backward + Adam step on the same batches already in memory, the overhead of our loop, and
peak memory.

    python benchmarks/tuning.py --n-images 512 --image-size 112 --batch-size 128
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cortexcl.data.algonauts import load_subject
from cortexcl.data.images import normalize
from cortexcl.data.simulate import simulate_subject
from cortexcl.data.splits import make_splits
from cortexcl.models.backbones import load_alexnet, resolve_device
from cortexcl.models.contrastive import ContrastiveModel
from cortexcl.tuning.trainer import TrainingSet, TrainSettings, train


def bare_images_per_second(batches: list[torch.Tensor], device: torch.device,
                           epochs: int) -> float:
    """Throughput of AlexNet forward + backward + fused Adam on in-memory batches."""
    model = load_alexnet("none").to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)
    started, count = time.perf_counter(), 0
    for _ in range(epochs):
        for batch in batches:
            optimizer.zero_grad(set_to_none=True)
            model(batch.to(device)).square().mean().backward()
            optimizer.step()
            count += len(batch)
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=512)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--roi", default="V1v")
    parser.add_argument("--data", type=Path, default=None,
                        help="folder for the simulated subject (reused); default: temporary")
    args = parser.parse_args()
    device = resolve_device()
    with tempfile.TemporaryDirectory() as scratch:
        data_root = args.data or Path(scratch) / "data"
        if not (data_root / "subj01").is_dir():
            simulate_subject(data_root, n_images=args.n_images, image_size=128, progress=False)
        subject = load_subject(data_root, 1, image_size=args.image_size,
                               cache_dir=Path(scratch) / "cache", progress=False)
        split = make_splits(subject.n_images, seed=0)
        responses = subject.responses("lh", args.roi)
        subject.images.array()  # build the image cache outside the timed region
        model = ContrastiveModel(load_alexnet("none"), responses.shape[1])
        settings = TrainSettings(epochs=args.epochs, batch_size=args.batch_size)
        started = time.perf_counter()
        log = train(model, [TrainingSet("subj01", subject.images, responses, split.train,
                                        split.val)], settings, Path(scratch) / "run",
                    device=device, progress=False)
        ours_total = len(split.train) * args.epochs / (time.perf_counter() - started)
        order = torch.from_numpy(np.array(split.train))
        batches = [normalize(subject.images.uint8(b.numpy()))
                   for b in torch.split(order, args.batch_size)]
        bare = bare_images_per_second(batches, device, args.epochs)
    ours_steps = float(log["images_per_s"].mean())
    print(json.dumps({
        "device": str(device),
        "n_train_images": len(split.train),
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "roi_vertices": int(responses.shape[1]),
        "ours_images_per_s_training_steps": round(ours_steps, 2),
        "ours_images_per_s_with_val_and_checkpoints": round(ours_total, 2),
        "bare_alexnet_images_per_s": round(bare, 2),
        "overhead_training_steps_percent": round(100 * (bare / ours_steps - 1), 1),
        "overhead_total_percent": round(100 * (bare / ours_total - 1), 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_gpu_mb": (round(torch.cuda.max_memory_allocated() / 2**20, 1)
                        if device.type == "cuda" else None),
    }, indent=2))


if __name__ == "__main__":
    main()

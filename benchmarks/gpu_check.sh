#!/usr/bin/env bash
# GPU check: feature extraction, one contrastive (CL) tuning job and one encode of a simulated
# subject with the pretrained EfficientNet-Lite0, on CUDA (bf16 autocast, as cortexcl runs there).
# Prints one JSON object: images per second of each step and the peak GPU memory.
#
#   benchmarks/gpu_check.sh              # on cuda; exits 2 with a JSON error when there is none
#   benchmarks/gpu_check.sh cpu 64       # the same steps on the CPU at 64 px (a dry run)
set -euo pipefail
DEVICE="${1:-cuda}"
SIZE="${2:-224}"
PYTHON="${PYTHON:-python}"
exec "$PYTHON" - "$DEVICE" "$SIZE" <<'EOF'
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cortexcl.config import EncodingConfig
from cortexcl.data.algonauts import load_subject
from cortexcl.data.simulate import simulate_subject
from cortexcl.data.splits import make_splits
from cortexcl.encoding.features import extract_features
from cortexcl.encoding.pipeline import encode_subject
from cortexcl.models.backbones import build_backbone, get_backbone
from cortexcl.models.contrastive import ContrastiveModel
from cortexcl.rundir import RunDirectory
from cortexcl.tuning.trainer import TrainingSet, TrainSettings, train

device, size = sys.argv[1], int(sys.argv[2])
if device.startswith("cuda") and not torch.cuda.is_available():
    print(json.dumps({"error": "CUDA is not available on this machine"}))
    sys.exit(2)
cuda = device.startswith("cuda")
result = {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "image_size": size,
          "torch": torch.__version__, "backbone": "efficientnet_lite0 (ImageNet, packaged)"}


def peak_gib() -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None


with tempfile.TemporaryDirectory() as tmp:
    root = Path(tmp)
    simulate_subject(root / "data", subject=1, n_images=600, image_size=max(size, 64),
                     progress=False)
    subject = load_subject(root / "data", 1, image_size=size, cache_dir=root / "cache",
                           progress=False)
    spec = get_backbone("efficientnet_lite0")
    images = subject.images.normalized(spec.mean, spec.std)
    network = build_backbone(spec.name, "imagenet")

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    extract_features(network, images, layers=spec.layers, batch_size=128, device=device,
                     out_dir=root / "features", progress=False)
    seconds = time.perf_counter() - start
    result["features"] = {"images": len(images), "img_per_s": round(len(images) / seconds, 1),
                          "peak_gib": peak_gib()}

    split = make_splits(subject.n_images, seed=0)
    responses = subject.responses("lh", "V1v")
    model = ContrastiveModel(build_backbone(spec.name, "imagenet"), responses.shape[1],
                             n_outputs=spec.n_outputs)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    log = train(model, [TrainingSet("subj01", images, responses, split.train, split.val)],
                TrainSettings(epochs=3, batch_size=256, lr=1e-4, seed=0), root / "cl",
                device=device, progress=False)
    result["cl_tuning"] = {"epochs": 3, "train_images": len(split.train),
                           "img_per_s": round(float(log["images_per_s"].mean()), 1),
                           "final_val_infonce": round(float(log["val_loss"].iloc[-1]), 3),
                           "peak_gib": peak_gib()}

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    table, _ = encode_subject(subject, RunDirectory(root / "run"), hemispheres=["lh"],
                              rois=["V1v", "V2d"], weights="imagenet", backbone=spec.name,
                              settings=EncodingConfig(n_components=200, batch_size=128),
                              device=device, progress=False)
    seconds = time.perf_counter() - start
    result["encode"] = {"rois": 2, "seconds": round(seconds, 1),
                        "mean_r": [round(float(r), 3) for r in table["mean_r"]],
                        "peak_gib": peak_gib()}
print(json.dumps(result, indent=1))
EOF

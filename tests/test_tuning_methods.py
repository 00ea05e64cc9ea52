"""Tests of the registry of tuning methods."""

from __future__ import annotations

import subprocess
import sys
from functools import partial

import pytest
import torch

from cortexcl.config import TuningConfig
from cortexcl.errors import InputError
from cortexcl.models import TUNING_METHODS, get_tuning_method
from cortexcl.models.contrastive import ContrastiveModel
from cortexcl.models.pooled import PooledContrastiveModel
from cortexcl.models.regression import RegressionModel
from tiny_backbone import random_pairs, seeded, tiny_alexnet


def test_registry_entries():
    assert list(TUNING_METHODS) == ["cl", "rt", "pooled"]
    classes = {name: spec.model_class() for name, spec in TUNING_METHODS.items()}
    assert classes == {
        "cl": ContrastiveModel,
        "rt": RegressionModel,
        "pooled": PooledContrastiveModel,
    }
    settings = {name: (s.lr, s.epochs, s.batch_size) for name, s in TUNING_METHODS.items()}
    assert settings == {
        "cl": (1e-4, 30, 1024),
        "rt": (2.5e-5, 75, 1024),
        "pooled": (1e-4, 30, 1024),
    }
    for spec in TUNING_METHODS.values():
        assert (spec.betas, spec.eps, spec.weight_decay) == ((0.9, 0.999), 1e-8, 0.0)
        assert spec.multi_subject == (spec.name == "pooled")


def test_registry_defaults_agree_with_the_study_configuration():
    config = TuningConfig()
    for name, spec in TUNING_METHODS.items():
        section = getattr(config, name)
        assert (section.lr, section.epochs, section.batch_size) == (
            spec.lr,
            spec.epochs,
            spec.batch_size,
        )


def test_unknown_method():
    assert get_tuning_method("rt") is TUNING_METHODS["rt"]
    with pytest.raises(InputError, match="unknown 'simclr'; expected one of cl, rt, pooled"):
        get_tuning_method("simclr")


def test_importing_the_registry_is_light():
    code = (
        "import sys, cortexcl.models; "
        "print(sorted(m for m in sys.modules if m.startswith('cortexcl.models.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"  # model classes are imported on first use only


def test_every_method_builds_from_its_configuration_section():
    config = TuningConfig()
    counts = {"subj01": 37}
    for name, spec in TUNING_METHODS.items():
        backbone = tiny_alexnet()
        options = {"mode": "avg"} if spec.multi_subject else {}
        model = seeded(partial(spec.build, backbone, counts, getattr(config, name), **options))
        assert isinstance(model, spec.model_class()) and model.backbone is backbone
        model.train()
        loss = model.loss(*random_pairs(4, 37), subject="subj01")
        assert loss.ndim == 0 and torch.isfinite(loss)

"""Tests of tuned models on disk: safetensors backbone and heads, metadata, loading errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torchvision.models import AlexNet

from cortexcl.errors import InputError
from cortexcl.models.backbones import load_alexnet
from cortexcl.models.contrastive import ContrastiveModel
from cortexcl.tuning.checkpoints import (
    BACKBONE,
    HEADS,
    META,
    load_backbone,
    load_heads,
    read_meta,
    save_tuned,
)
from tiny_backbone import seeded

META_DATA = {"method": "cl", "roi": "V1v", "seed": 3, "final_train_loss": 1.25}


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A contrastive model on a real AlexNet, with weights unlike any initialisation, saved."""
    model = seeded(lambda: ContrastiveModel(load_alexnet("none", seed=1), 10), seed=2)
    with torch.no_grad():
        for parameter in model.backbone.parameters():
            parameter.add_(0.01)
    folder = tmp_path_factory.mktemp("tuned") / "model"
    assert save_tuned(folder, model, META_DATA) == folder
    return model, folder


def assert_same_weights(state: dict[str, torch.Tensor], model: torch.nn.Module) -> None:
    expected = model.state_dict()
    assert state.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(state[name], tensor), name


def test_save_writes_backbone_heads_and_meta(tuned):
    model, folder = tuned
    assert sorted(p.name for p in folder.iterdir()) == sorted([BACKBONE, HEADS, META])
    assert json.loads((folder / META).read_text()) == META_DATA
    assert read_meta(folder) == META_DATA
    heads = load_heads(folder)
    assert set(heads) == {name for name in model.state_dict() if not name.startswith("backbone.")}
    assert {"w_x.weight", "w_y.weight"} <= set(heads)
    for name, tensor in heads.items():
        assert torch.equal(tensor, model.state_dict()[name]), name


@pytest.mark.parametrize("where", ["folder", "file"])
def test_load_backbone_gives_a_plain_alexnet_with_the_tuned_weights(tuned, where):
    model, folder = tuned
    loaded = load_backbone(folder if where == "folder" else folder / BACKBONE)
    assert type(loaded) is AlexNet
    assert not loaded.training
    assert_same_weights(loaded.state_dict(), model.backbone)
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    model.backbone.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), model.backbone(images), rtol=0, atol=0)


def test_backbone_file_is_loadable_as_encoding_weights(tuned):
    model, folder = tuned
    assert_same_weights(load_alexnet(folder / BACKBONE).state_dict(), model.backbone)


def test_missing_backbone_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="no tuned backbone here"):
        load_backbone(tmp_path)


@pytest.mark.parametrize("content", ["garbage", "truncated", "other network"])
def test_unreadable_backbone_is_an_input_error(tuned, tmp_path, content):
    _, folder = tuned
    file = tmp_path / BACKBONE
    if content == "garbage":
        file.write_bytes(b"not a safetensors file" * 8)
    elif content == "truncated":
        file.write_bytes((folder / BACKBONE).read_bytes()[:5000])
    else:
        save_file({"fc.weight": torch.zeros(3, 2)}, file)
    with pytest.raises(InputError) as error:
        load_backbone(tmp_path)
    message = str(error.value)
    assert message.startswith(str(file)) and "\n" not in message


def test_backbone_with_a_missing_layer_is_an_input_error(tuned, tmp_path):
    _, folder = tuned
    state = load_file(folder / BACKBONE)
    del state["classifier.6.bias"]
    save_file(state, tmp_path / BACKBONE)
    with pytest.raises(InputError, match="not an AlexNet state"):
        load_backbone(tmp_path / BACKBONE)


def test_unreadable_meta_is_an_input_error(tmp_path):
    (tmp_path / META).write_text("{not json")
    with pytest.raises(InputError, match="cannot read tuned-model metadata"):
        read_meta(tmp_path)

"""Tests of tuned models on disk: safetensors backbone and heads, metadata, loading errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torchvision.models import AlexNet

from cortexcl.errors import InputError
from cortexcl.models.backbones import PARTIAL_KEY, load_alexnet
from cortexcl.models.contrastive import ContrastiveModel
from cortexcl.models.freezing import freeze_layers
from cortexcl.tuning.checkpoints import (
    BACKBONE,
    HALF_COPY,
    HEADS,
    META,
    load_backbone,
    load_heads,
    model_bytes,
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
    meta = read_meta(folder)
    assert meta == json.loads((folder / META).read_text())
    assert meta == {**META_DATA, "bytes": {BACKBONE: (folder / BACKBONE).stat().st_size,
                                           HEADS: (folder / HEADS).stat().st_size}}
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


def _tuned_alexnet(frozen: list[str]) -> ContrastiveModel:
    """A CL model on a random-init AlexNet (seed 1) with frozen layers and changed weights."""
    model = seeded(lambda: ContrastiveModel(load_alexnet("none", seed=1), 10), seed=2)
    freeze_layers(model.backbone, frozen)
    with torch.no_grad():
        for parameter in model.backbone.parameters():
            if parameter.requires_grad:
                parameter.add_(0.01)
    return model


def test_frozen_layers_are_not_stored_and_come_back_from_the_base(tmp_path):
    model = _tuned_alexnet(["features", "classifier.1"])
    full, lean = tmp_path / "full", tmp_path / "lean"
    save_tuned(full, model, META_DATA)
    save_tuned(lean, model, META_DATA, base=("alexnet", "none", 1))
    stored = load_file(lean / BACKBONE)
    assert set(stored) == {"classifier.4.weight", "classifier.4.bias", "classifier.6.weight",
                           "classifier.6.bias"}
    full_bytes, lean_bytes = (read_meta(f)["bytes"][BACKBONE] for f in (full, lean))
    assert lean_bytes < full_bytes - 4 * sum(  # the frozen parameters' bytes are gone
        p.numel() for p in model.backbone.parameters() if not p.requires_grad)
    loaded = load_backbone(lean)
    assert type(loaded) is AlexNet
    assert_same_weights(loaded.state_dict(), model.backbone)
    assert_same_weights(load_alexnet(lean / BACKBONE).state_dict(), model.backbone)


def test_a_model_with_nothing_frozen_is_stored_whole_without_a_base(tmp_path):
    model = _tuned_alexnet([])
    save_tuned(tmp_path, model, META_DATA, base=("alexnet", "none", 1))
    with safe_open(tmp_path / BACKBONE, "pt") as reader:
        assert not (reader.metadata() or {}).get(PARTIAL_KEY)
    assert_same_weights(load_file(tmp_path / BACKBONE), model.backbone)


def test_the_base_seed_decides_the_frozen_weights(tmp_path):
    model = _tuned_alexnet(["features"])
    save_tuned(tmp_path, model, META_DATA, base=("alexnet", "none", 7))
    loaded = load_backbone(tmp_path)  # the header names seed 7: features of seed 7, not 1
    torch.testing.assert_close(loaded.features[0].weight,
                               load_alexnet("none", seed=7).features[0].weight, rtol=0, atol=0)


def test_a_changed_or_missing_base_file_is_refused(tmp_path):
    base = tmp_path / "start.safetensors"
    save_file(load_alexnet("none", seed=1).state_dict(), base)
    model = _tuned_alexnet(["features"])
    save_tuned(tmp_path / "model", model, META_DATA, base=("alexnet", base, 1))
    assert_same_weights(load_backbone(tmp_path / "model").state_dict(), model.backbone)
    save_file(load_alexnet("none", seed=2).state_dict(), base)
    with pytest.raises(InputError, match="base weights .* missing or were modified") as error:
        load_backbone(tmp_path / "model")
    assert str(error.value).startswith(str(tmp_path / "model" / BACKBONE))
    base.unlink()
    with pytest.raises(InputError, match="missing or were modified"):
        load_backbone(tmp_path / "model")


def test_half_copy_is_a_complete_half_precision_network(tmp_path):
    model = _tuned_alexnet(["features"])
    save_tuned(tmp_path, model, META_DATA, base=("alexnet", "none", 1), half_copy=True)
    half = load_file(tmp_path / HALF_COPY)
    assert half.keys() == model.backbone.state_dict().keys()
    assert {t.dtype for t in half.values()} == {torch.float16}
    assert read_meta(tmp_path)["bytes"][HALF_COPY] == (tmp_path / HALF_COPY).stat().st_size
    loaded = load_backbone(tmp_path / HALF_COPY)
    for name, tensor in model.backbone.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor.half().float(),
                                   rtol=0, atol=0)
    assert model_bytes(tmp_path) == sum(f.stat().st_size for f in tmp_path.iterdir())


def test_identical_models_give_identical_files(tmp_path):
    for folder in ("a", "b"):
        save_tuned(tmp_path / folder, _tuned_alexnet(["features"]), META_DATA,
                   base=("alexnet", "none", 1))
    assert (tmp_path / "a" / BACKBONE).read_bytes() == (tmp_path / "b" / BACKBONE).read_bytes()

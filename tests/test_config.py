"""Tests of study configurations: the shipped files, one-line errors, and the digest."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from cortexcl.config import StudyConfig, load_config, parse_config
from cortexcl.data.rois import ROI_GROUPS
from cortexcl.errors import InputError
from cortexcl.study.jobs import plan_jobs

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(text)
    return path


def test_demo_config():
    config = load_config(CONFIGS / "demo.yaml")
    assert (config.name, config.backbone.weights, config.methods) == ("demo", "none",
                                                              ["untuned", "cl", "rt"])
    assert config.data.root is None and config.data.image_size == 64
    assert config.selection.rois == ["V1v", "V2d", "hV4"]
    assert (config.tuning.cl.epochs, config.tuning.cl.batch_size) == (3, 64)
    assert config.tuning.cl.temperature == 0.3  # default kept for keys not in the file


def test_packaged_demo_config_is_the_shipped_one():
    from importlib import resources

    packaged = Path(str(resources.files("cortexcl.study") / "demo.yaml"))
    assert load_config(packaged) == load_config(CONFIGS / "demo.yaml")


@pytest.mark.parametrize(("name", "protocol", "min_vertices"),
                         [("nsd-clean", "clean", 20), ("nsd-paper", "paper", 1)])
def test_nsd_configs(name, protocol, min_vertices):
    config = load_config(CONFIGS / f"{name}.yaml")
    assert config.name == name and config.backbone.weights == "imagenet"
    assert config.methods == ["untuned", "cl", "rt", "pooled-avg", "pooled-const"]
    assert config.data.subjects == list(range(1, 9)) and config.data.image_size == 224
    assert config.selection.rois == list(ROI_GROUPS["early+higher"])  # the group is expanded
    assert config.encoding.protocol == protocol
    assert config.selection.min_vertices == min_vertices
    assert (config.tuning.cl.epochs, config.tuning.rt.epochs, config.tuning.rt.lr) == (30, 75,
                                                                                       2.5e-5)
    assert config.evaluation.temperature_scan == (protocol == "paper")


def test_empty_file_gives_the_defaults(tmp_path):
    assert load_config(write(tmp_path, "")) == StudyConfig()


@pytest.mark.parametrize(
    ("text", "where", "problem"),
    [
        ("colour: red\n", "colour", "unknown key"),
        ("tuning:\n  cl: {epochs: 3, warmup: 2}\n", "tuning.cl.warmup", "unknown key"),
        ("data: {simulate: {n_image: 30}}\n", "data.simulate.n_image", "unknown key"),
        ("tuning:\n  cl: {epochs: ten}\n", "tuning.cl.epochs", "valid integer"),
        ("tuning:\n  rt: {epochs: 0}\n", "tuning.rt.epochs", "greater than or equal to 1"),
        ("selection: {hemispheres: [xh]}\n", "selection.hemispheres.0", "'lh' or 'rh'"),
        ("encoding: {protocol: foo}\n", "encoding.protocol", "'clean' or 'paper'"),
        ("selection: {rois: [V1v, V9]}\n", "selection.rois", "V9"),
        ("methods: [cl, simclr]\n", "methods.1", "'untuned'"),
        ("split_seed: 1.5\n", "split_seed", "valid integer"),
        ("seed: 0\n", "seed", "replaced by split_seed"),
        ("data: [1, 2]\n", "data", "valid dictionary"),
    ],
)
def test_errors_are_one_line_naming_file_and_key(tmp_path, text, where, problem):
    path = write(tmp_path, text)
    with pytest.raises(InputError) as error:
        load_config(path)
    message = str(error.value)
    assert message.startswith(f"{path}: {where}: ")
    assert problem in message
    assert "\n" not in message


def test_unknown_roi_message_lists_the_valid_names(tmp_path):
    with pytest.raises(InputError, match=r"V9.*V1v") as error:
        load_config(write(tmp_path, "selection: {rois: [V9]}\n"))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("text", "problem"),
    [("name: [unclosed\n", "not valid YAML"), ("- a\n- b\n", "the configuration must be a mapping"),
     ("just a string\n", "the configuration must be a mapping")],
)
def test_bad_documents(tmp_path, text, problem):
    path = write(tmp_path, text)
    with pytest.raises(InputError) as error:
        load_config(path)
    assert str(error.value).startswith(f"{path}: {problem}")
    assert "\n" not in str(error.value)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"missing\.yaml: cannot read the configuration"):
        load_config(tmp_path / "missing.yaml")


def test_parse_config_names_its_source():
    with pytest.raises(InputError, match=r"^inline: colour: unknown key$"):
        parse_config({"colour": "red"}, source="inline")


def test_digest_is_stable_and_sensitive(tmp_path):
    base = load_config(CONFIGS / "demo.yaml")
    raw = yaml.safe_load((CONFIGS / "demo.yaml").read_text())
    reordered = dict(reversed(list(raw.items())))
    same = parse_config(reordered)
    assert same.digest() == base.digest()
    assert base.digest() == load_config(CONFIGS / "demo.yaml").digest()
    assert len(base.digest()) == 16 and int(base.digest(), 16) >= 0

    changed = parse_config({**raw, "tuning": {**raw["tuning"], "cl": {"epochs": 4}}})
    assert changed.digest() != base.digest()
    assert changed.digest("tuning") != base.digest("tuning")
    # Sections that did not change keep their digest.
    for section in ("data", "split_seed", "backbone", "selection", "encoding"):
        assert changed.digest(section) == base.digest(section)
    assert base.digest("data") != base.digest("encoding")
    # A value written as its default is the same study.
    explicit = parse_config({**raw, "tuning": {**raw["tuning"],
                                               "cl": {**raw["tuning"]["cl"],
                                                      "temperature": 0.3}}})
    assert explicit.digest() == base.digest()


@pytest.mark.parametrize("path", sorted(Path(__file__).parents[1].glob("configs/*.yaml")),
                         ids=lambda path: path.name)
def test_example_configs_are_valid_and_plan(path):
    config = load_config(path)
    jobs = plan_jobs(config, lambda *_: 100)
    assert jobs[-1].kind == "aggregate"
    assert len({job.key for job in jobs}) == len(jobs)


def test_early_stopping_needs_the_clean_protocol():
    assert parse_config({"tuning": {"cl": {"early_stopping": 3, "weight_decay": 1e-4}}})
    with pytest.raises(InputError, match="tuning.rt.early_stopping: needs val images"):
        parse_config({"tuning": {"rt": {"early_stopping": 2}}, "encoding": {"protocol": "paper"}})
    with pytest.raises(InputError, match="early_stopping"):
        parse_config({"tuning": {"cl": {"early_stopping": 0}}})


def test_another_weights_file_at_the_same_path_reruns_every_job(tmp_path):
    from safetensors.torch import save_file

    from cortexcl.models.backbones import build_backbone

    path = tmp_path / "start.safetensors"
    save_file(build_backbone("alexnet", "none", seed=1).state_dict(), path)
    config = parse_config({"backbone": {"weights": str(path)}, "methods": ["untuned", "cl"],
                           "selection": {"rois": ["V1v"]}})
    before = {job.key: job.settings for job in plan_jobs(config, lambda *_: 100)}
    assert before == {job.key: job.settings for job in plan_jobs(config, lambda *_: 100)}  # stable
    save_file(build_backbone("alexnet", "none", seed=2).state_dict(), path)
    after = {job.key: job.settings for job in plan_jobs(config, lambda *_: 100)}
    assert before.keys() == after.keys()
    assert all(before[key] != after[key] for key in before)
    keyword = parse_config({"backbone": {"weights": "none"}, "methods": ["untuned"],
                            "selection": {"rois": ["V1v"]}})
    assert all(job.settings for job in plan_jobs(keyword, lambda *_: 100))


@pytest.mark.parametrize(("raw", "problem"), [
    ({"data": {"sessions": [1, 37]}}, "sessions: options of layout nsd (layout is algonauts)"),
    ({"data": {"layout": "nsd", "ncsnr": "/x"}}, "ncsnr: options of layout algonauts"),
    ({"data": {"layout": "nsd", "sessions": [5, 2]}}, "1 <= first <= last, got [5, 2]"),
    ({"encoding": {"split": "sessions"}}, "split: sessions needs scan sessions: data.layout: nsd"),
    ({"data": {"layout": "nod"}}, "data.root: layout nod reads a dataset folder"),
    ({"data": {"nod": {"top_k": 10}}}, "nod: options of layout nod"),
    ({"data": {"layout": "nod", "root": "/x"}, "selection": {"hemispheres": ["IT"]}},
     "'lh' or 'rh'"),
    ({"data": {"layout": "xyz"}}, "'algonauts', 'nsd', 'nod' or 'folder'"),
])
def test_layout_options_belong_to_their_layout(raw, problem):
    with pytest.raises(InputError, match=re.escape(problem)):
        parse_config(raw)


def test_nsd_native_config():
    config = load_config(CONFIGS / "nsd-native.yaml")
    assert (config.data.layout, config.encoding.split, config.data.space) == (
        "nsd", "sessions", "challenge")
    assert str(config.data.rois).endswith("{subject}/roi_masks")

"""A study's configuration: pydantic models read from YAML, with unknown keys refused."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from cortexcl.data.rois import HEMISPHERES, expand_rois
from cortexcl.errors import InputError
from cortexcl.statistics import N_BOOTSTRAP, N_PERMUTATIONS


def _own_names(info: ValidationInfo, parts: bool = False) -> bool:
    """Whether the study reads a dataset with its own ROI names (layouts nod and folder) or,
    with ``parts``, part names (folder): they are checked against the data when it is read."""
    return (info.context or {}).get("layout") in (("folder",) if parts else ("nod", "folder"))


def _expanded_rois(rois: list[str], info: ValidationInfo) -> list[str]:
    if _own_names(info):
        return list(dict.fromkeys(str(roi).strip() for roi in rois if str(roi).strip()))
    try:
        return expand_rois(rois)
    except InputError as error:
        raise ValueError(str(error)) from None


def _hemisphere(hemisphere: str, info: ValidationInfo) -> str:
    if hemisphere not in HEMISPHERES and not _own_names(info, parts=True):
        raise ValueError("Input should be 'lh' or 'rh' (the parts of NSD data; layout folder "
                         "takes its own)")
    return hemisphere


RoiNames = Annotated[list[str], AfterValidator(_expanded_rois)]
"""ROI names and groups, expanded to names (unknown names refused but for layout folder)."""

Method = Literal["untuned", "cl", "rt", "pooled-avg", "pooled-const"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class BackboneConfig(_Strict):
    """The image network: a name (`cortexcl.models.backbones.get_backbone`) and its weights."""

    name: str = Field("alexnet", description="alexnet, efficientnet_lite0 (ImageNet weights "
                                             "offline), efficientnet_lite1/2, timm:<model> or "
                                             "torchvision:<model>")
    weights: str = Field("imagenet", description="imagenet, none (random init) or a path")

    @field_validator("name")
    @classmethod
    def _known_backbone(cls, name: str) -> str:
        from cortexcl.models.backbones import get_backbone

        try:
            return get_backbone(name).name
        except InputError as error:
            raise ValueError(str(error)) from None


class SimulationConfig(_Strict):
    """A simulated data set, written once into the cache and reused."""

    n_images: int = Field(1000, ge=20)
    n_test_images: int = Field(20, ge=0)
    image_size: int = Field(256, ge=16)
    roi_scale: float = Field(0.1, gt=0)
    reference_subject: int = Field(1, ge=1, le=8)
    n_sessions: int = Field(8, ge=4, le=99, description="scan sessions (layout nsd)")
    seed: int = 0


class NODReadingConfig(_Strict):
    """How NOD subjects are read (`cortexcl.data.nod.load_nod_subject`)."""

    sessions: list[int] = Field(default_factory=lambda: [1, 2, 3, 4], min_length=1,
                                description="ImageNet sessions of a real root (a simulated NOD "
                                            "uses all its sessions)")
    top_k: int | None = Field(50, ge=1, description="vertices per area by pRF R²; null = all")
    normalization: Literal["run", "block"] = Field(
        "run", description="run: z-score each vertex per run; block: the published whole-run "
                           "z-score")
    image_fit: Literal["stretch", "crop"] = Field(
        "stretch", description="stretch the 4:3 stimuli to squares (published) or keep their "
                               "aspect: shorter side resized, centre cropped")


class DataConfig(_Strict):
    """Where the subjects come from: a dataset root of a layout, or a simulation if ``root`` is
    null."""

    layout: Literal["algonauts", "nsd", "nod", "folder"] = Field(
        "algonauts", description="algonauts: the Algonauts 2023 challenge release; nsd: the "
                                 "native NSD release (fsaverage betas); nod: the Natural Object "
                                 "Dataset (ds004496); folder: a lab's own images and responses")
    root: Path | None = None
    simulate: SimulationConfig = SimulationConfig()
    subjects: list[int] = Field(default_factory=lambda: [1], min_length=1)
    image_size: int = Field(224, ge=64, description="network input size (AlexNet needs ≥ 64)")
    sessions: tuple[int, int] | None = Field(
        None, description="layout nsd: first and last scan session read, e.g. [1, 37]; null: "
                          "every session present")
    space: Literal["challenge", "cortex"] = Field(
        "challenge", description="layout nsd: the vertices of any ROI (as the challenge) or "
                                 "every fsaverage vertex")
    rois: Path | None = Field(
        None, description="layout nsd: folder of fsaverage ROI labels ({lh,rh}.<class>.mgz or an "
                          "Algonauts roi_masks folder; {subject} stands for subjNN); null: "
                          "nsddata/freesurfer/subjNN/label")
    ncsnr: Path | None = Field(
        None, description="layout algonauts: root of the native NSD release, for noise "
                          "ceilings (its {lh,rh}.ncsnr.mgh and design file)")
    nod: NODReadingConfig = Field(NODReadingConfig(), description="layout nod: how subjects "
                                                                  "are read")

    @model_validator(mode="after")
    def _layout_options(self) -> DataConfig:
        options = {"nsd": ("rois", "sessions", "space"), "algonauts": ("ncsnr",),
                   "nod": ("nod",)}
        for layout, names in options.items():
            given = [name for name in names  # a dumped config holds the defaults too
                     if getattr(self, name) != DataConfig.model_fields[name].default]
            if given and layout != self.layout:
                raise ValueError(f"{', '.join(given)}: options of layout {layout} (layout is "
                                 f"{self.layout})")
        if self.sessions is not None and not 1 <= self.sessions[0] <= self.sessions[1]:
            raise ValueError(f"sessions: expected [first, last] with 1 <= first <= last, got "
                             f"{list(self.sessions)}")
        return self


class SelectionConfig(_Strict):
    """Which hemispheres and ROIs to study."""

    hemispheres: list[Annotated[str, AfterValidator(_hemisphere)]] = Field(
        default_factory=lambda: list(HEMISPHERES), description="lh, rh; layout folder: the "
                                                                "parts of its responses",
                                                   min_length=1)
    rois: RoiNames = Field(default_factory=lambda: ["early"], min_length=1)
    min_vertices: int = Field(20, ge=1)


class OptimizerConfig(_Strict):
    """Adam and the epoch loop."""

    epochs: int = Field(30, ge=1)
    batch_size: int = Field(1024, ge=2)
    lr: float = Field(1e-4, gt=0)
    frozen: list[str] = Field(default_factory=list, description="backbone modules kept fixed "
                                                               "(names or prefixes)")
    weight_decay: float = Field(0.0, ge=0, description="Adam's L2 penalty on the trained weights")
    early_stopping: StrictInt | None = Field(
        None, ge=1, description="patience: stop when the val loss has not improved for this "
                                "many epochs and keep the best epoch (null: off, as published)")
    image_features: Literal["logits", "penultimate"] = Field(
        "logits", description="what the image branch reads: the backbone's output logits "
                              "(published) or its pooled penultimate features")


class ContrastiveConfig(OptimizerConfig):
    """Contrastive (CL) tuning, docs/method.md §2.1–2.3."""

    temperature: float = Field(0.3, gt=0)
    symmetric: bool = False
    h_ratio: float = Field(0.8, gt=0)
    z_ratio: float = Field(0.2, gt=0)
    regression_weight: float = Field(0.0, ge=0, description="λ of the mixed CL + λ·MSE objective")


class RegressionConfig(OptimizerConfig):
    """Regression-tuned (RT) baseline, docs/method.md §2.4."""

    epochs: int = Field(75, ge=1)
    lr: float = Field(2.5e-5, gt=0)


class PooledConfig(OptimizerConfig):
    """Pooled multi-subject contrastive model, docs/method.md §2.5."""

    temperature: float = Field(0.3, gt=0)
    hidden_override: int | None = Field(None, ge=2)
    interleave: bool = False


class TuningConfig(_Strict):
    """Settings of every tuning method."""

    cl: ContrastiveConfig = ContrastiveConfig()
    rt: RegressionConfig = RegressionConfig()
    pooled: PooledConfig = PooledConfig()
    half_copy: bool = Field(False, description="also keep each tuned backbone complete in half "
                                               "precision (backbone-float16.safetensors)")


class EncodingConfig(_Strict):
    """PCA + ridge encoding, docs/method.md §3: the settings `encode_subject` takes."""

    protocol: Literal["clean", "paper"] = "clean"
    split: Literal["random", "sessions"] = Field(
        "random", description="random: test images drawn at random (split_seed); sessions: "
                              "test = the images shown only in the last three scan sessions "
                              "(layout nsd), train / val drawn from the others")
    n_components: int = Field(1000, ge=1)
    refit: Literal["train+val", "train"] = "train+val"
    batch_size: int = Field(64, ge=1)
    standardize: bool = Field(False, description="unit-variance features (train) before PCA")
    alpha_grid: Literal["relative", "absolute"] = Field(
        "relative", description="α × each fit's mean PCA eigenvalue, or the published "
                                "absolute 1e-1 … 1e7")
    layers: list[str] | None = Field(None, min_length=1,
                                     description="candidate layers (`cortexcl layers BACKBONE`); "
                                                 "null: the backbone's default")

    @field_validator("layers")
    @classmethod
    def _distinct_layers(cls, layers: list[str] | None) -> list[str] | None:
        repeated = sorted({layer for layer in layers or () if layers.count(layer) > 1})
        if repeated:
            raise ValueError(f"layer {', '.join(map(repr, repeated))} given twice")
        return layers
    selection: Literal["per-method", "shared-untuned"] = Field(
        "per-method", description="α per vertex and layer per ROI for each backbone, or the "
                                  "published P-A: one layer and α per ROI chosen on the "
                                  "untuned backbone and shared by all")


class NODSimulationConfig(_Strict):
    """A simulated NOD dataset (``cortexcl.data.simulate.nod``), written once into the cache."""

    n_sessions: int = Field(4, ge=1)
    n_runs: int = Field(10, ge=1)
    trials_per_run: int = Field(100, ge=2)
    image_size: int = Field(128, ge=16)
    vertices_per_roi: int = Field(60, ge=1)
    seed: int = 0


class NODTransferConfig(NODReadingConfig):
    """NSD backbones encode the Natural Object Dataset's V1-V4 (docs/method.md §4)."""

    root: Path | None = Field(None, description="ds004496 root; null = a simulated NOD")
    simulate: NODSimulationConfig = NODSimulationConfig()
    subjects: list[int] = Field(default_factory=lambda: [1], min_length=1)
    stream: Literal["ventral", "dorsal"] = Field(
        "ventral", description="NSD V1-V3 models used for NOD V1-V3: V1v… or V1d…")
    methods: list[Method] = Field(default_factory=lambda: ["untuned", "cl"], min_length=1)


class ClassificationConfig(_Strict):
    """Classification probes of every backbone (docs/method.md §5)."""

    dataset: Literal["imagenet", "caltech256", "places365", "imagefolder", "fake",
                     "simulated"] = Field(
        "simulated", description="simulated: procedural scenes labelled by background type")
    root: Path | None = Field(None, description="data set folder (not for fake / simulated)")
    n_images: int = Field(600, ge=20, description="images of the simulated data set")
    layer: str | None = Field(None, description="layer the probes read; default the "
                                                "backbone's penultimate (AlexNet: classifier.5)")
    probe: Literal["sklearn", "torch"] = "sklearn"
    image_size: int = Field(224, ge=64, description="centre crop (after resizing to 256/224 ×)")
    batch_size: int = Field(128, ge=1)
    methods: list[Method] = Field(
        default_factory=lambda: ["untuned", "cl", "rt", "pooled-avg", "pooled-const"],
        min_length=1, description="backbones probed (those the study tunes)")


class LandscapeConfig(_Strict):
    """Model landscape from the probes' test probabilities (docs/method.md §6)."""

    embedding: Literal["inpca", "mds-metric", "mds-classical"] = "inpca"


class SaliencyConfig(_Strict):
    """Salience maps and the flip-controlled lateralization index (docs/method.md §7.2)."""

    attribution: Literal["gradcam", "saliency", "integrated_gradients"] = "gradcam"
    methods: list[Method] = Field(default_factory=lambda: ["untuned", "cl"], min_length=1)
    rois: RoiNames = Field(default_factory=lambda: ["early"], min_length=1)
    n_images: int | None = Field(256, ge=2, description="probe-test images used; null = all")
    vertical: bool = Field(False, description="also the top/bottom index (vertical flip)")
    batch_size: int = Field(32, ge=1)


class StatisticsConfig(_Strict):
    """Resamples of the paired tests with the test image as the unit (cortexcl.statistics)."""

    n_permutations: int = Field(N_PERMUTATIONS, ge=100,
                                description="image-wise swap patterns of the permutation test")
    n_bootstrap: int = Field(N_BOOTSTRAP, ge=100,
                             description="image resamples of the bootstrap confidence interval")


class EvaluationConfig(_Strict):
    """Evaluations run after encoding."""

    statistics: StatisticsConfig = StatisticsConfig()
    mutual_info: bool = True
    temperature_scan: bool = Field(False, description="optimistic post-hoc τ, chosen on val")
    cross_subject: bool = Field(False, description="every subject's CL backbones encode every "
                                                   "other subject (docs/method.md §3.5)")
    pooled_vs_cross: bool = Field(False, description="compare pooled with cross-subject "
                                                     "backbones (needs cross_subject)")
    pooled_vs_cross_exclude: list[str] = Field(
        default_factory=list, description="entries left out of the comparison, 'lh:FBA-2'")
    nod_transfer: NODTransferConfig | None = None
    classification: ClassificationConfig | None = None
    landscape: LandscapeConfig | None = None
    saliency: SaliencyConfig | None = None


class RayConfig(_Strict):
    """The Ray executor: a local Ray instance, or a running cluster."""

    address: str | None = Field(None, description="address of a running Ray cluster ('auto': "
                                                  "the one on this machine); null starts a "
                                                  "local instance")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the local instance; "
                                                         "null: every CPU")
    num_gpus: float | None = Field(None, ge=0, description="GPUs of the local instance; "
                                                           "null: every GPU")
    cpus_per_job: int = Field(1, ge=1, description="CPUs of an encoding job, and of a tuning "
                                                   "job on a cluster without GPUs")
    encode_gpu_share: float = Field(0.25, gt=0, le=1, description="share of a GPU an encoding "
                                                                  "job takes (tuning: one GPU)")
    max_retries: int = Field(2, ge=0, description="reruns of a job whose worker died")
    retry_exceptions: int = Field(0, ge=0, description="reruns of a job that raised an error")


class SlurmConfig(_Strict):
    """The SLURM executor (submitit): one job per study job, arrays of the jobs ready together."""

    partition: str | None = Field(None, description="null: the cluster's default partition")
    time_min: int = Field(240, ge=1, description="time limit of each job, in minutes")
    gpus_per_job: int = Field(1, ge=0, description="GPUs of each job but the aggregation")
    cpus_per_task: int = Field(4, ge=1, description="CPUs of each job")
    mem_gb: int = Field(32, ge=1, description="memory of each job, in GB")
    array_parallelism: int = Field(16, ge=1, description="jobs of one array running at once")
    max_requeues: int = Field(3, ge=0, description="requeues after running out of time "
                                                   "(preempted jobs are always requeued); a "
                                                   "requeued job resumes from its checkpoint")
    cluster: Literal["auto", "local", "debug"] = Field(
        "auto", description="auto: SLURM where srun is found, else local processes; local: "
                            "local processes; debug: one after another in the runner's process")
    poll_s: float = Field(10.0, gt=0, description="seconds between checks of running jobs")


class ExecutionConfig(_Strict):
    """How jobs run; it changes no result, so no job's settings depend on it."""

    executor: Literal["serial", "ray", "slurm"] = Field(
        "serial", description="serial (in the runner's process), ray or slurm")
    device: str | None = None
    ray: RayConfig = RayConfig()
    slurm: SlurmConfig = SlurmConfig()


class StudyConfig(_Strict):
    """A whole study: data, selection, methods, tuning, encoding, evaluation and execution."""

    name: str = "study"
    split_seed: int = Field(0, description="seed of the train / val / test split (0: the "
                                           "published held-out set), of a random initial "
                                           "network and of the evaluations' resamples")
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1,
                             description="tuning replicates: each tuned model is trained once "
                                         "per seed (head initialisation, batch order)")
    backbone: BackboneConfig = BackboneConfig()
    methods: list[Method] = Field(default_factory=lambda: ["untuned", "cl", "rt"], min_length=1)
    data: DataConfig = DataConfig()
    selection: SelectionConfig = SelectionConfig()
    tuning: TuningConfig = TuningConfig()
    encoding: EncodingConfig = EncodingConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    execution: ExecutionConfig = ExecutionConfig()

    @model_validator(mode="before")
    @classmethod
    def _no_single_seed(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and "seed" in raw:
            raise ValueError("seed: replaced by split_seed (the split) and seeds (the tuning "
                             "replicates, e.g. [0, 1, 2])")
        if isinstance(raw, dict) and "weights" in raw:
            raise ValueError("weights: moved to backbone.weights (backbone: {name: alexnet, "
                             "weights: imagenet})")
        return raw

    @field_validator("seeds", mode="before")
    @classmethod
    def _distinct_seeds(cls, seeds: Any) -> Any:
        if isinstance(seeds, list):
            if not seeds:
                raise ValueError("give at least one tuning seed, e.g. [0, 1, 2]")
            if len(set(map(str, seeds))) != len(seeds):
                raise ValueError(f"the tuning seeds must differ (got {seeds})")
            if any(isinstance(seed, int) and seed < 0 for seed in seeds):
                raise ValueError(f"tuning seeds are non-negative integers (got {seeds})")
        return seeds

    @model_validator(mode="after")
    def _evaluations_have_their_methods(self) -> StudyConfig:
        evaluation, methods = self.evaluation, set(self.methods)
        if self.encoding.selection == "shared-untuned" and (
                "untuned" not in methods or (evaluation.nod_transfer is not None and "untuned"
                                             not in evaluation.nod_transfer.methods)):
            raise ValueError("encoding.selection: shared-untuned needs the untuned method "
                             "(in methods, and in nod_transfer.methods when NOD is used)")
        if evaluation.cross_subject and not {"untuned", "cl"} <= methods:
            raise ValueError("evaluation.cross_subject needs the methods untuned and cl")
        if evaluation.pooled_vs_cross and not (
                evaluation.cross_subject and methods & {"pooled-avg", "pooled-const"}):
            raise ValueError("evaluation.pooled_vs_cross needs cross_subject and a pooled "
                             "method (pooled-avg or pooled-const)")
        if evaluation.nod_transfer and not set(evaluation.nod_transfer.methods) <= methods:
            missing = sorted(set(evaluation.nod_transfer.methods) - methods)
            raise ValueError(f"evaluation.nod_transfer.methods: {', '.join(missing)} not among "
                             f"the study's methods")
        if self.data.layout in ("nod", "folder"):
            if self.data.root is None:
                raise ValueError(f"data.root: layout {self.data.layout} reads a dataset folder "
                                 f"(nothing is simulated for it); give its root")
            used = [name for name in ("classification", "nod_transfer")
                    if getattr(evaluation, name) is not None]
            if used:
                raise ValueError(f"evaluation.{used[0]}: needs NSD's ROIs and hemispheres, "
                                 f"which layout {self.data.layout} does not have")
        if self.encoding.split == "sessions" and self.data.layout != "nsd":
            raise ValueError("encoding.split: sessions needs scan sessions: data.layout: nsd")
        if self.encoding.layers:
            from cortexcl.models.backbones import check_layers

            try:
                check_layers(self.backbone.name, self.encoding.layers)
            except InputError as error:
                raise ValueError(f"encoding.{error}") from None
        self._check_tuning()
        self._check_probes()
        return self

    def _check_tuning(self) -> None:
        from cortexcl.models.freezing import check_frozen

        for name in ("cl", "rt", "pooled"):
            settings = getattr(self.tuning, name)
            if settings.early_stopping and self.encoding.protocol == "paper":
                raise ValueError(f"tuning.{name}.early_stopping: needs val images, and the "
                                 f"paper protocol has none; use encoding.protocol: clean or "
                                 f"drop early_stopping")
            try:
                check_frozen(self.backbone.name, settings.frozen)
            except InputError as error:
                raise ValueError(f"tuning.{name}.frozen: {error}") from None

    def _check_probes(self) -> None:
        evaluation, methods = self.evaluation, set(self.methods)
        classification, saliency = evaluation.classification, evaluation.saliency
        if (evaluation.landscape or saliency) and not classification:
            raise ValueError("evaluation.landscape and evaluation.saliency need "
                             "evaluation.classification (they use the probes)")
        if classification is None:
            return
        if classification.layer:
            from cortexcl.models.backbones import check_layers

            try:
                check_layers(self.backbone.name, [classification.layer])
            except InputError as error:
                raise ValueError(f"evaluation.classification.layer: "
                                 f"{str(error).removeprefix('layers: ')}") from None
        if "methods" in classification.model_fields_set:
            _require_subset("evaluation.classification.methods", classification.methods,
                            methods, "the study's methods")
        if saliency is None:
            return
        if saliency.attribution == "gradcam":
            from cortexcl.models.backbones import get_backbone

            if get_backbone(self.backbone.name).gradcam is None:
                raise ValueError(f"evaluation.saliency.attribution: gradcam explains a "
                                 f"convolutional stage, and {self.backbone.name} declares none "
                                 f"(a vision transformer); use saliency or integrated_gradients")
        probed = set(classification.methods) & methods
        if "methods" in saliency.model_fields_set:
            _require_subset("evaluation.saliency.methods", saliency.methods, probed,
                            "the probed methods (classification.methods and methods)")
        tuned = set(saliency.methods) & probed - {"untuned"}
        if tuned and "rois" in saliency.model_fields_set:
            _require_subset("evaluation.saliency.rois", saliency.rois, set(self.selection.rois),
                            "selection.rois")
        elif tuned and not set(saliency.rois) & set(self.selection.rois):
            raise ValueError(f"evaluation.saliency.rois: none of {', '.join(saliency.rois)} is "
                             f"among selection.rois, so no tuned model would be explained; set "
                             f"saliency.rois")

    def digest(self, *sections: str) -> str:
        """Short hash of the named sections (all when none), for job completion records."""
        data = self.model_dump(mode="json")
        if sections:
            data = {name: data[name] for name in sections}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _require_subset(setting: str, names: list[str], allowed: set[str], what: str) -> None:
    unknown = [name for name in names if name not in allowed]
    if unknown:
        raise ValueError(f"{setting}: {', '.join(unknown)} not among {what} "
                         f"({', '.join(sorted(allowed)) or 'none'})")


def load_config(path: str | Path) -> StudyConfig:
    """Read and validate a study configuration.

    Raises
    ------
    InputError
        One line naming the file and the first problem (missing file, bad YAML, unknown key,
        wrong type or value).
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as error:
        raise InputError(f"{path}: cannot read the configuration ({error.strerror})") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a UTF-8 text file") from None
    except yaml.YAMLError as error:
        raise InputError(f"{path}: not valid YAML ({_first_line(error)})") from None
    return parse_config(raw if raw is not None else {}, source=str(path))


def parse_config(raw: Any, source: str = "config") -> StudyConfig:
    """Validate a configuration given as a mapping (see `load_config`)."""
    if not isinstance(raw, dict):
        raise InputError(f"{source}: the configuration must be a mapping of sections")
    data = raw.get("data")
    layout = data.get("layout") if isinstance(data, dict) else None
    try:
        return StudyConfig.model_validate(raw, context={"layout": layout})
    except ValidationError as error:
        raise _input_error(error, f"{source}: ", lambda loc: ".".join(loc)) from None


def parse_section(name: str, raw: dict[str, Any], option: bool = False) -> Any:
    """Validate one section of a study (``encoding``, …) given as a mapping.

    With ``option``, an error names the command-line option (``--n-components``) instead of
    the setting.

    Raises
    ------
    InputError
        On the first invalid value.
    """
    model = StudyConfig.model_fields[name].annotation
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        options = {"layers": "--layer",  # repeatable options are named in the singular
                   "rois": "--labels"}  # data.rois of the NSD layout
        name_of = ((lambda loc: options.get(loc[0], "--" + loc[0].replace("_", "-")))
                   if option else (lambda loc: ".".join((name, *loc))))
        raise _input_error(error, "", name_of) from None


def _input_error(error: ValidationError, prefix: str,
                 name_of: Callable[[list[str]], str]) -> InputError:
    first = error.errors()[0]
    # A model-level error has no location: its message names the settings itself.
    where = name_of([str(part) for part in first["loc"]]) if first["loc"] else ""
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    elif isinstance(first.get("input"), str | int | float | bool) and \
            repr(first["input"]) not in message:
        message += f" (got {first['input']!r})"
    return InputError(f"{prefix}{where}: {message}" if where else f"{prefix}{message}")


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0]

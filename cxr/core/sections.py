"""The sections of ``params.yaml``, one typed and validated model per pipeline step."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from cxr.core.archs import SUPPORTED_ARCHS
from cxr.core.paths import Paths

#: Class folders of the Kaggle COVID-19 Radiography Database (v5), in the project's label order.
DATASET_CLASSES: tuple[str, ...] = ("COVID", "Normal", "Lung_Opacity", "Viral Pneumonia")


#: Images per class in the real dataset (v5); the synthetic ``full`` size matches it.
FULL_COUNTS: dict[str, int] = {"COVID": 3616, "Normal": 10192, "Lung_Opacity": 6012, "Viral Pneumonia": 1345}


class ConfigError(ValueError):
    """A params file that cannot be used; the message names the file and the key."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Base(Section):
    """Settings every step shares."""

    seed: int = Field(42, ge=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    #: A list of class folders (one label each), or a mapping label -> class folders merged into it.
    classes: list[str] | dict[str, list[str]] = Field(default_factory=lambda: list(DATASET_CLASSES))
    experiment: str = "cxr"
    model_name: str = "cxr-classifier"
    paths: Paths = Field(default_factory=Paths)

    @field_validator("classes")
    @classmethod
    def _check_classes(cls, v: list[str] | dict[str, list[str]]) -> list[str] | dict[str, list[str]]:
        mapping = {c: [c] for c in v} if isinstance(v, list) else v
        if len(mapping) < 2:
            raise ValueError("at least two classes are needed")
        if isinstance(v, list) and len(set(v)) != len(v):
            raise ValueError(f"duplicate class names: {v}")
        seen: set[str] = set()
        for label, folders in mapping.items():
            if not folders:
                raise ValueError(f"class {label!r} has no source folders")
            for folder in folders:
                if folder not in DATASET_CLASSES:
                    raise ValueError(f"unknown class folder {folder!r}; known: {list(DATASET_CLASSES)}")
                if folder in seen:
                    raise ValueError(f"class folder {folder!r} is used twice")
                seen.add(folder)
        return v

    @property
    def labels(self) -> tuple[str, ...]:
        """The ordered class names: the only source of label indices."""
        return tuple(self.classes) if isinstance(self.classes, list) else tuple(self.classes.keys())

    @property
    def folder_to_label(self) -> dict[str, str]:
        """Dataset class folder -> label."""
        if isinstance(self.classes, list):
            return {c: c for c in self.classes}
        return {folder: label for label, folders in self.classes.items() for folder in folders}

    @property
    def folders(self) -> tuple[str, ...]:
        """Dataset class folders this task reads, in dataset order."""
        used = self.folder_to_label
        return tuple(c for c in DATASET_CLASSES if c in used)


class SyntheticSource(Section):
    """The embedded default: a generated dataset in the Kaggle v5 layout."""

    #: Images per class folder; ``full`` gives the real dataset's 21,165.
    per_class: int | Literal["full"] = 500
    size: int = Field(299, ge=64, le=1024)
    workers: int = Field(2, ge=1)

    def counts(self, folders: tuple[str, ...]) -> dict[str, int]:
        """Images per class folder."""
        if self.per_class == "full":
            return {f: FULL_COUNTS[f] for f in folders}
        return {f: self.per_class for f in folders}

    @field_validator("per_class")
    @classmethod
    def _positive(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 1:
            raise ValueError("must be at least 1")
        return v


class KaggleSource(Section):
    """The real dataset through kagglehub."""

    handle: str = "tawsifurrahman/covid19-radiography-database"
    version: int | None = Field(5, ge=1)
    cache_dir: str = "~/.cache/kagglehub"
    timeout_s: float = Field(10.0, gt=0)


class LocalSource(Section):
    """A folder or the downloaded zip, in any of the dataset's layouts."""

    path: str | None = None


class Download(Section):
    """Where ``data/raw`` comes from."""

    source: Literal["synthetic", "kaggle", "local"] = "synthetic"
    policy: Literal["fail", "skip"] = "fail"
    #: An image with more pixels is refused from its header, before it is decoded (a decompression bomb).
    max_pixels: int = Field(25_000_000, ge=64 * 64)  # 64 px a side is the smallest image ingest accepts
    workers: int = Field(2, ge=1)
    synthetic: SyntheticSource = Field(default_factory=SyntheticSource)
    kaggle: KaggleSource = Field(default_factory=KaggleSource)
    local: LocalSource = Field(default_factory=LocalSource)

    @model_validator(mode="after")
    def _local_needs_path(self) -> Download:
        if self.source == "local" and not self.local.path:
            raise ValueError("source 'local' needs download.local.path")
        return self


class Split(Section):
    """The valid/test split; the rest is training."""

    mode: Literal["stratified", "balanced"] = "stratified"
    valid: int = Field(400, ge=1)
    test: int = Field(400, ge=1)
    #: Hamming distance (of the 256-bit difference hash) within which two images are near duplicates.
    near_duplicate_bits: int = Field(10, ge=0, le=256)
    #: Threads that read and hash images.
    workers: int = Field(2, ge=1)


def _extra_transform(entry: dict[str, Any]) -> dict[str, Any]:
    """One ``train.augment.extra`` entry's shape; the training step builds it (Albumentations is not imported here)."""
    name = entry.get("name")
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(
            "needs name: the class name of an Albumentations transform (e.g. GaussNoise), "
            "and its keyword arguments beside it"
        )
    return entry


class Augment(Section):
    """Train-time augmentation (an Albumentations ``Compose``); eval preprocessing is fixed."""

    rotate_deg: float = Field(10.0, ge=0, le=45)
    shift: float = Field(0.05, ge=0, le=0.3)
    scale: float = Field(0.10, ge=0, le=0.5)
    brightness: float = Field(0.10, ge=0, le=1)
    contrast: float = Field(0.10, ge=0, le=1)
    gamma: tuple[float, float] = (0.85, 1.15)
    clahe: float = Field(0.0, ge=0, le=1)
    #: Off by default: a flip moves the heart to the wrong side.
    hflip: float = Field(0.0, ge=0, le=1)
    p: float = Field(0.5, ge=0, le=1)
    #: Albumentations transforms applied after the built-in steps, each ``{name: ClassName, **kwargs}``,
    #: e.g. ``{name: GaussNoise, p: 0.2, std_range: [0.01, 0.03]}``. Any entry makes the whole ``Compose``
    #: the CPU path (the device path runs the built-in steps only).
    extra: list[Annotated[dict[str, Any], AfterValidator(_extra_transform)]] = Field(default_factory=list)

    @field_validator("gamma")
    @classmethod
    def _gamma(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1]:
            raise ValueError("gamma must be (low, high) with 0 < low <= high")
        return v


class Train(Section):
    """Model and optimisation."""

    arch: str = "resnet18"
    #: ``null`` trains from scratch; ``DEFAULT`` or a torchvision enum name loads ImageNet weights; or a file path.
    weights: str | None = None
    image_size: int = Field(128, ge=32, le=1024)
    epochs: int = Field(8, ge=1)
    batch_size: int = Field(32, ge=1)
    #: AdamW, or SGD with Nesterov momentum (``momentum``); ``lr`` and ``weight_decay`` apply to either.
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    #: SGD's momentum (Nesterov when above 0); unused by AdamW.
    momentum: float = Field(0.9, ge=0, lt=1)
    warmup_epochs: float = Field(0.5, ge=0)
    #: After the warm-up: cosine decay to zero, or the base rate throughout (the reference notebooks' way).
    schedule: Literal["cosine", "constant"] = "cosine"
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    #: Decay of a per-step exponential moving average of the weights, which is then validated and kept; null: off.
    #: Warmed up: ``min(decay, (1 + n) / (10 + n))`` after n steps, so the first steps' weights fade out.
    ema_decay: float | None = Field(None, gt=0, lt=1)
    #: Mixup's Beta(a, a) concentration: each batch is blended with a shuffled copy of itself; 0: off.
    mixup: float = Field(0.0, ge=0)
    class_balance: Literal["none", "loss", "sampler"] = "loss"
    grad_clip: float | None = Field(1.0, gt=0)
    amp: bool = True
    channels_last: bool = True
    compile: bool = False
    deterministic: bool = True
    num_workers: int = Field(1, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    monitor: Literal["val_accuracy", "val_loss", "val_macro_f1"] = "val_accuracy"
    patience: int | None = Field(None, ge=1)
    augment: Augment = Field(default_factory=Augment)
    #: Where augmentation runs: ``cpu`` in the DataLoader workers, ``device`` on whole batches on the training
    #: device, ``auto`` on the device when it is a GPU (the same parameters per sample either way).
    augment_backend: Literal["auto", "cpu", "device"] = "auto"
    #: The stride of the last block's feature map: 32 (torchvision's), or 16 (ResNets only: the last stage keeps
    #: the previous one's resolution, four times the cells for a map to place a lesion in, for about 1.6x the
    #: compute).
    output_stride: Literal[16, 32] = 16
    #: Weight of the lung-attention loss added to the cross-entropy: the share of the true class's activation map
    #: (the last block's, weighted by the classifier as CAM weighs it) that lies outside the image's lung mask
    #: (``<FOLDER>/masks/<name>``, moved with the image by the augmentation); 0: off. Images without a mask add
    #: nothing. Needs a classifier that is one linear layer on pooled features (resnet*, densenet*,
    #: efficientnet*) and no mixup.
    lung_attention: float = Field(1.0, ge=0)

    @field_validator("arch")
    @classmethod
    def _arch(cls, v: str) -> str:
        if v not in SUPPORTED_ARCHS:
            raise ValueError(f"unknown arch {v!r}; supported: {sorted(SUPPORTED_ARCHS)}")
        return v

    @model_validator(mode="after")
    def _levers_fit(self) -> Train:
        if self.output_stride != 32 and not self.arch.startswith("resnet"):
            raise ValueError(
                f"output_stride {self.output_stride} is for resnet* only, not {self.arch}: set output_stride: 32"
            )
        if self.lung_attention > 0:
            if self.arch.startswith("convnext"):
                raise ValueError(
                    f"lung_attention needs a classifier that is one linear layer on pooled features, which "
                    f"{self.arch} lacks (its head normalises first): set lung_attention: 0, or use resnet*, "
                    "densenet* or efficientnet*"
                )
            if self.mixup > 0:
                raise ValueError(
                    "lung_attention and mixup cannot both be on (a mixed image has two lung fields): set one to 0"
                )
        return self


class Evaluate(Section):
    """Metrics with bootstrap intervals."""

    n_boot: int = Field(1000, ge=0)
    ci: float = Field(0.95, gt=0, lt=1)
    positive_class: str | None = "COVID"
    batch_size: int = Field(64, ge=1)


#: The library's CAM methods that fit a CNN classifier at the cost of one forward and one backward pass (Score-CAM
#: and Ablation-CAM, a forward pass per channel, do not), by the names ``gradcam.method`` accepts.
CAM_METHODS = (
    "gradcam",
    "gradcam++",
    "hirescam",
    "xgradcam",
    "layercam",
    "eigencam",
    "eigengradcam",
    "gradcam-elementwise",
)


class GradCam(Section):
    """Explanations on test images."""

    #: The library's CAM method (one of ``CAM_METHODS``; compared in ``python -m benchmarks cam``).
    method: Literal[CAM_METHODS] = "gradcam"
    #: The library's smoothing: the mean map of six flipped and rescaled copies (six passes); the first principal
    #: component of the weighted activations instead of their sum.
    aug_smooth: bool = False
    eigen_smooth: bool = False
    #: The CAM's cell in input pixels: 32 reads the family's last block; 16 or 8 an earlier stage, for a finer map.
    stride: Literal[8, 16, 32] = 16
    #: Dotted name of the module the CAM reads (e.g. ``layer3.1.conv2``), overriding ``stride``.
    target_layer: str | None = Field(None, min_length=1)
    per_class: int = Field(4, ge=1)
    batch_size: int = Field(16, ge=1)


class Registry(Section):
    """What the registration step logs and registers, and the gate that promotes a version to champion."""

    enabled: bool = True
    #: Absolute floors on the challenger's test metrics.
    min_accuracy: float = Field(0.5, ge=0, le=1)
    min_macro_auc: float = Field(0.7, ge=0, le=1)
    #: Per-class sensitivity floors, e.g. {COVID: 0.98}.
    min_sensitivity: dict[str, float] = Field(default_factory=lambda: {"COVID": 0.5})
    #: Non-inferiority against the champion on the same test manifest: accuracy may drop by at most this margin.
    margin: float = Field(0.02, ge=0, lt=1)
    alpha: float = Field(0.05, gt=0, lt=1)
    test: Literal["mcnemar", "bootstrap"] = "mcnemar"
    n_boot: int = Field(2000, ge=100)
    #: Promote automatically when the gate passes (a new version always gets the challenger alias).
    auto_promote: bool = True


#: The drift check's tests at most (embedding, class mix, intensity, image sizes, image modes).
DRIFT_TESTS = 5


class Drift(Section):
    """The drift check: the images new since the champion's data against the champion's held-out images."""

    enabled: bool = True
    #: The whole check's false-alarm rate: each of its (up to five) tests flags drift below alpha / tests.
    alpha: float = Field(0.01, gt=0, lt=1)
    #: New images at most (a seeded sample), for the features and the tests.
    max_images: int = Field(400, ge=10)
    #: The champion's held-out (validation and test) images at most: the larger the fixed reference, the less
    #: its own sampling luck weighs on every later check.
    reference_images: int = Field(800, ge=10)
    #: Permutations of each test: the smallest p-value one can report is 1 / (permutations + 1).
    permutations: int = Field(2000, ge=50)
    #: Refuse to promote a new version to champion while drift is flagged.
    block_promotion: bool = False
    #: Post the drift notice to the failure webhook (CXR_NOTIFY_WEBHOOK) when drift is flagged.
    notify: bool = True

    @model_validator(mode="after")
    def _can_flag(self) -> Drift:
        # With five tests each held to alpha / 5, a p-value of 1 / (permutations + 1) must be able to fall below.
        need = math.ceil(DRIFT_TESTS / self.alpha)
        if self.permutations + 1 <= need:
            raise ValueError(
                f"permutations {self.permutations} can never give a p-value below alpha / {DRIFT_TESTS} "
                f"= {self.alpha / DRIFT_TESTS:.3g}: use at least {need}"
            )
        return self


class SplitTooLarge(ConfigError):
    """The valid/test split asks for more images than a class has."""


def check_split_fits(split: Split, per_label: dict[str, int]) -> None:
    """Raise naming ``split.valid``/``split.test`` when a class cannot fill its share and keep a training image."""
    total = sum(per_label.values())
    k = len(per_label)
    for label, n in per_label.items():
        if split.mode == "balanced":
            need_v, need_t = -(-split.valid // k), -(-split.test // k)
        else:
            need_v = max(1, round(split.valid * n / total))
            need_t = max(1, round(split.test * n / total))
        if need_v + need_t >= n:
            raise SplitTooLarge(
                f"split.valid={split.valid} and split.test={split.test} ({split.mode}) need "
                f"{need_v}+{need_t} images of class {label!r}, which has {n}: at least one must be left to train on"
            )

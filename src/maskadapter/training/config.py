"""Training configuration: nested dataclasses, YAML loading and ``--set key=value`` overrides.

A recipe is a YAML mapping with the sections below; every key is optional (defaults are the official
FC-CLIP-L stage-2 values) and is checked by name and type, so a typo or a wrong type is an error that
names the key. ``None`` defaults marked "per variant" are resolved from the preset's generator
(FC-CLIP vs MAFT+) by :meth:`TrainConfig.resolved`, as the official FC-CLIP and MAFT+ training code differ.

.. code-block:: yaml

    name: fcclip-large-mixed
    model: {preset: fcclip-large, weights: fcclip_cocopan.pth, adapter_weights: stage1.pth}
    data: {dataset: coco_panoptic, root: ~/datasets, image_size: 1024}
    train: {stage: mixed, num_gt_masks: 16, num_pred_masks: 8, matcher: iou, iou_threshold: 0.7}
    loss: {ce_weight: 2.0, cos_weight: 5.0}
    solver: {batch_size: 24, max_iter: 49286, schedule: multistep, steps: [43371, 47314]}
    eval: {period: 3300, dataset: none}
    run: {output_dir: runs/fcclip-large-mixed, seed: 123}
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Optional, Sequence, Union

import yaml

from ..data.user_data import DATA_SYNTAX, is_user_data

__all__ = [
    "ModelSection", "DataSection", "TrainSection", "LossSection", "SolverSection", "EvalSection", "RunSection",
    "TrainConfig", "ResolvedTraining", "load_config", "apply_overrides", "config_from_dict", "config_to_dict",
    "config_diff", "RESUME_NEUTRAL_KEYS",
]

Stage = Literal["warmup", "mixed"]
#: Built-in training sets; ``data.dataset`` also takes your own data (``coco:``, ``panoptic:``, ``labels:``).
TRAIN_DATASETS = ("coco_panoptic", "coco_stuff", "synthetic")


@dataclass
class ModelSection:
    """Which model to build, which weights to start from, what is trained."""

    preset: str = "fcclip-large"  #: preset name, or a preset JSON file (custom architecture)
    #: official-layout checkpoint for CLIP / generator / CDT / void; ``released``: the preset's released file
    #: (downloaded once); None: random weights (built from ``run.seed``)
    weights: Optional[str] = None
    #: parts of ``weights`` to load (``backbone.clip_model``, ``sem_seg_head``, ``cdt``, ``void_embedding``,
    #: ``mask_adapter``); None: every part the model has that the file holds
    load_parts: Optional[list[str]] = None
    #: stage-1 adapter (official file or a training checkpoint): its ``mask_adapter.*`` is loaded after
    #: ``weights``, the in-memory equivalent of ``maskadapter fuse``; None in stage 2 = warm-up off
    adapter_weights: Optional[str] = None
    num_output_maps: int = 16  #: K activation maps per mask (Table 7 ablation)
    num_blocks: int = 3  #: ConvNeXt blocks in the head (ablation)
    train_void: Optional[bool] = None  #: per variant: stage 1 and FC-CLIP stage 2 True, MAFT+ stage 2 False
    cdt_mode: Optional[Literal["semantic", "panoptic"]] = None  #: MAFT+ CDT formula (None: the preset's)
    mask_threshold: Optional[float] = None  #: binarisation of predicted masks for the adapter (None: preset)
    grad_checkpoint: bool = False  #: recompute the head's chunks in backward (memory)


@dataclass
class DataSection:
    """Training data (and its augmentation)."""

    #: ``coco_panoptic``, ``coco_stuff``, ``synthetic``, or your own data: ``coco:ANNOTATIONS.json,IMAGES_DIR``,
    #: ``panoptic:PANOPTIC.json,IMAGES_DIR[,PNG_DIR]``, ``labels:IMAGES_DIR,LABELS_DIR,CLASS_FILE``
    dataset: str = "coco_panoptic"
    root: Optional[str] = None  #: dataset root ($DETECTRON2_DATASETS layout); not used by ``synthetic`` / own data
    image_size: int = 1024  #: LSJ crop size (768 in stage 1, 1024 in stage 2)
    min_scale: float = 0.1
    max_scale: float = 2.0
    #: ``lsj``: the official large-scale jitter (random scale and crop, flip); ``resize``: the long side resized to
    #: ``image_size`` and padded (own data only; with ``flip``, each image has two looks: what a feature cache stores)
    augmentation: Literal["lsj", "resize"] = "lsj"
    flip: bool = True  #: random horizontal flip
    val_fraction: float = 0.0  #: own data: share of the images held out for ``eval.dataset: split``
    #: compute the frozen CLIP features (and stage 2's predicted masks) once into a memory-mapped cache in
    #: ``<output_dir>/feature_cache``; needs ``augmentation: resize``
    cache_features: bool = False
    cache_limit_gb: float = 32.0  #: refuse a feature cache estimated above this size
    num_workers: int = 4
    #: class embeddings: CLIP text of the dataset vocabulary, or the dataset's ``class_prototypes``
    #: (synthetic data, whose test CLIPs have random weights)
    text: Literal["clip", "prototypes"] = "clip"
    synthetic_num_classes: int = 24
    synthetic_size: int = 128
    synthetic_num_images: int = 256


@dataclass
class TrainSection:
    """Which masks the adapter sees, and how predictions are matched to ground truth."""

    stage: Stage = "mixed"  #: ``warmup`` = stage 1 (GT masks only), ``mixed`` = stage 2
    #: stage 2 mask mix: ``mixed`` = GT + matched predictions + their GT (official), ``predicted`` =
    #: matched predictions only for the CE loss (their GT still feeds the consistency loss)
    masks: Literal["mixed", "predicted"] = "mixed"
    num_gt_masks: int = 16  #: GT masks sampled per image (official: 32 in stage 1, 16 in stage 2)
    num_pred_masks: int = 8  #: matched predictions kept per image
    matcher: Literal["iou", "hungarian"] = "iou"
    iou_threshold: float = 0.7  #: a pair matches when IoU > this (Hungarian: pairs at or below are dropped)
    iou_binarize: Optional[float] = None  #: sigmoid threshold of predictions for IoU (per variant: 0.4 / 0.5)


@dataclass
class LossSection:
    """2.0 x CE(ignore -1) + 5.0 x (1 - cos)."""

    ce_weight: float = 2.0
    cos_weight: float = 5.0
    cos_detach_target: Optional[bool] = None  #: stop-gradient on the GT branch (per variant: FC-CLIP yes, MAFT+ no)
    #: average the consistency term over padded pairs too (official; they dilute the mean)
    cos_include_padding: bool = True


@dataclass
class SolverSection:
    """Optimizer, schedule, precision; batch size is global (over all processes)."""

    batch_size: int = 24
    max_iter: int = 49286
    lr: float = 1e-4
    weight_decay: float = 0.05
    weight_decay_norm: float = 0.0  #: for torch.nn norm layers (not the adapter's custom LayerNorm classes)
    weight_decay_embed: float = 0.0  #: for nn.Embedding (the void embedding)
    backbone_multiplier: float = 0.1  #: lr factor of trainable parameters under a ``backbone`` module
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    schedule: Literal["multistep", "poly"] = "multistep"
    steps: list[int] = field(default_factory=lambda: [43371, 47314])
    gamma: float = 0.1
    warmup_iters: int = 0
    warmup_factor: float = 1.0
    poly_power: float = 0.9
    poly_constant_ending: float = 0.0
    grad_clip: float = 1.0  #: full-model L2 norm; 0 disables
    #: the package's precision vocabulary: ``auto`` (bf16 where native and faster, else fp32), ``fp32``, ``bf16``,
    #: ``fp16`` (autocast + GradScaler on CUDA: the official AMP, which the official recipes use)
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"


@dataclass
class EvalSection:
    """Periodic GT-mask evaluation and best-checkpoint selection."""

    period: int = 0  #: iterations between evaluations (0: only at the end, when a dataset is set)
    #: ``none``, ``synthetic`` (held-out shapes), ``split`` (the ``data.val_fraction`` held out of your data), a
    #: benchmark of ``maskadapter.data.datasets`` (``ade20k-150`` as the official stage-1 evaluation, ...) or your
    #: own data in the ``data.dataset`` spelling (``coco:val.json,images/``)
    dataset: str = "none"
    root: Optional[str] = None  #: default: data.root
    num_images: int = 0  #: 0 = all (synthetic: 0 = 64 images)
    image_size: int = 896  #: long side of benchmark images at evaluation (official test size)
    synthetic_seed: int = 1000  #: held-out synthetic images use another seed than training
    metric: Literal["miou", "accuracy"] = "miou"  #: best-checkpoint criterion (accuracy when mIoU is unavailable)


@dataclass
class RunSection:
    """Where and how the run executes."""

    output_dir: Optional[str] = None  #: required: checkpoints, TensorBoard logs, metrics
    seed: int = 123
    device: str = "auto"  #: auto | cpu | cuda | cuda:N (with torchrun, the local rank's GPU)
    checkpoint_period: int = 1000
    keep_checkpoints: bool = False  #: keep every periodic checkpoint, not only last.pt / best.pt
    log_period: int = 20
    tensorboard: bool = True
    progress: bool = True
    #: at the end, write ``model.safetensors``: the best (else the last) checkpoint as a complete model
    export_model: bool = True
    text_cache_dir: Optional[str] = None
    threads: int = 0  #: torch CPU threads per process (0: torch's default)
    dist_timeout_min: int = 60


@dataclass
class TrainConfig:
    """A whole training recipe."""

    name: str = "maskadapter"
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    loss: LossSection = field(default_factory=LossSection)
    solver: SolverSection = field(default_factory=SolverSection)
    eval: EvalSection = field(default_factory=EvalSection)
    run: RunSection = field(default_factory=RunSection)

    def validate(self) -> "TrainConfig":
        """Cross-field checks; ValueError names the key. Returns self."""
        s, t, m = self.solver, self.train, self.model
        positive = {"solver.batch_size": s.batch_size, "solver.max_iter": s.max_iter, "model.num_blocks": m.num_blocks,
                    "model.num_output_maps": m.num_output_maps, "data.image_size": self.data.image_size,
                    "run.log_period": self.run.log_period, "run.dist_timeout_min": self.run.dist_timeout_min}
        for key, value in positive.items():
            if value <= 0:
                raise ValueError(f"config key '{key}' must be positive, got {value}")
        non_negative = {"solver.lr": s.lr, "solver.weight_decay": s.weight_decay, "solver.grad_clip": s.grad_clip,
                        "solver.warmup_iters": s.warmup_iters, "loss.ce_weight": self.loss.ce_weight,
                        "loss.cos_weight": self.loss.cos_weight, "train.num_gt_masks": t.num_gt_masks,
                        "train.num_pred_masks": t.num_pred_masks, "eval.period": self.eval.period,
                        "eval.num_images": self.eval.num_images, "run.checkpoint_period": self.run.checkpoint_period,
                        "data.num_workers": self.data.num_workers, "run.threads": self.run.threads}
        for key, value in non_negative.items():
            if value < 0:
                raise ValueError(f"config key '{key}' must be >= 0, got {value}")
        for key, value in (("train.iou_threshold", t.iou_threshold), ("train.iou_binarize", t.iou_binarize),
                           ("model.mask_threshold", m.mask_threshold)):
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"config key '{key}' must lie in [0, 1], got {value}")
        if list(s.steps) != sorted(s.steps):
            raise ValueError(f"config key 'solver.steps' must be increasing, got {s.steps}")
        if len(s.betas) != 2:
            raise ValueError(f"config key 'solver.betas' must have two values, got {s.betas}")
        if t.num_gt_masks == 0 and (t.stage == "warmup" or t.masks == "mixed"):
            raise ValueError("config key 'train.num_gt_masks' must be positive (0 only with train.masks=predicted)")
        if t.stage == "mixed" and t.masks == "predicted" and t.num_pred_masks == 0:
            raise ValueError("config key 'train.num_pred_masks' must be positive with train.masks=predicted")
        self._validate_data()
        if self.data.dataset in ("coco_panoptic", "coco_stuff") and self.data.text == "prototypes":
            raise ValueError("config key 'data.text' = prototypes needs data.dataset = synthetic (or a dataset of "
                             "your own passed to Trainer that has class_prototypes())")
        if not 0.0 < self.data.min_scale <= self.data.max_scale:
            raise ValueError(f"config keys 'data.min_scale' / 'data.max_scale' must satisfy 0 < min <= max, "
                             f"got {self.data.min_scale} / {self.data.max_scale}")
        return self

    def _validate_data(self) -> None:
        d = self.data
        if d.dataset not in TRAIN_DATASETS and not is_user_data(d.dataset):
            raise ValueError(f"config key 'data.dataset' must be one of {', '.join(TRAIN_DATASETS)} or your own data "
                             f"({DATA_SYNTAX}), got {d.dataset!r}")
        own = is_user_data(d.dataset)
        if d.augmentation == "resize" and not own:
            raise ValueError("config key 'data.augmentation' = resize is for your own data (data.dataset = "
                             "coco:... / panoptic:... / labels:...); the built-in sets use the official lsj")
        if not 0.0 <= d.val_fraction < 1.0 or (d.val_fraction and not own):
            raise ValueError(f"config key 'data.val_fraction' must lie in [0, 1) and needs your own data, got "
                             f"{d.val_fraction}")
        if (self.eval.dataset == "split") != (d.val_fraction > 0):
            raise ValueError("config keys 'eval.dataset' = split and 'data.val_fraction' > 0 go together")
        if d.cache_features and d.augmentation != "resize":
            raise ValueError(f"config key 'data.cache_features' needs data.augmentation = resize (a fixed-size "
                             f"resize, the flip stored as a second entry); the augmentation '{d.augmentation}' "
                             f"(random scale jitter and crop) makes new pixels every epoch, so there is nothing to "
                             f"cache")
        if d.cache_limit_gb <= 0:
            raise ValueError(f"config key 'data.cache_limit_gb' must be positive, got {d.cache_limit_gb}")

    def resolved(self, generator: str) -> "ResolvedTraining":
        """The per-variant defaults (FC-CLIP vs MAFT+ official training) filled in for a preset whose generator is ``generator``."""
        if generator not in ("fcclip", "maftp"):
            raise ValueError(f"generator must be 'fcclip' or 'maftp', got {generator!r}")
        fc = generator == "fcclip"
        stage1 = self.train.stage == "warmup"
        return ResolvedTraining(
            train_void=self.model.train_void if self.model.train_void is not None else (stage1 or fc),
            iou_binarize=self.train.iou_binarize if self.train.iou_binarize is not None else (0.4 if fc else 0.5),
            cos_detach_target=(self.loss.cos_detach_target if self.loss.cos_detach_target is not None else fc),
        )


@dataclass(frozen=True)
class ResolvedTraining:
    """Per-variant values after :meth:`TrainConfig.resolved`."""

    train_void: bool
    iou_binarize: float
    cos_detach_target: bool


#: Keys that may differ between a checkpoint's config and the config it is resumed with: they change
#: where files go or how progress is shown, not what is computed.
RESUME_NEUTRAL_KEYS = frozenset({
    "run.output_dir", "run.checkpoint_period", "run.keep_checkpoints", "run.log_period", "run.tensorboard",
    "run.progress", "run.text_cache_dir", "run.threads", "run.dist_timeout_min", "run.device",
    "data.num_workers", "data.root", "eval.root", "eval.period", "model.weights", "model.adapter_weights",
    "data.cache_limit_gb", "run.export_model",
})


# ---------------------------------------------------------------------------------------------- conversion
def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """Plain nested dict (YAML/JSON/checkpoint friendly) of ``config``."""
    return dataclasses.asdict(config)


def config_from_dict(data: Mapping[str, Any]) -> TrainConfig:
    """A validated TrainConfig from a nested mapping; unknown keys and wrong types raise, naming the key."""
    if not isinstance(data, Mapping):
        raise TypeError(f"a training config must be a mapping of sections, got {type(data).__name__}")
    return _build(TrainConfig, data, "").validate()


def load_config(path: Union[str, os.PathLike], overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML recipe and apply ``key=value`` overrides (``solver.lr=2e-4``)."""

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ValueError(f"config file {path} is not valid YAML: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    return apply_overrides(data, overrides)


def apply_overrides(data: Union[TrainConfig, Mapping[str, Any]], overrides: Sequence[str]) -> TrainConfig:
    """Apply ``section.key=value`` strings (values in YAML syntax) to a config or nested dict."""

    tree = config_to_dict(data) if isinstance(data, TrainConfig) else _deep_copy(data)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value, e.g. solver.lr=2e-4")
        key, raw = item.split("=", 1)
        key = key.strip()
        parts = key.split(".")
        if not all(parts):
            raise ValueError(f"override key {key!r} is malformed")
        _resolve_field(TrainConfig, parts, "")  # unknown keys are named before parsing the value
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ValueError(f"override {key}: cannot parse value {raw!r}: {exc}") from exc
        node = tree
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[parts[-1]] = value
    return config_from_dict(tree)


def config_diff(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested config dicts."""
    out = []
    for key in sorted(set(a) | set(b)):
        name = f"{prefix}{key}"
        va, vb = a.get(key, _MISSING), b.get(key, _MISSING)
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            out.extend(config_diff(va, vb, name + "."))
        elif _normal(va) != _normal(vb):
            out.append(name)
    return out


_MISSING = object()


def _normal(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _deep_copy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in data.items()}


def _resolve_field(cls: Any, parts: list[str], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    head = parts[0]
    full = prefix + ".".join(parts)
    if head not in names:
        raise ValueError(_unknown_message(full, prefix, head, names))
    tp = hints[head]
    if len(parts) == 1:
        return tp
    if not dataclasses.is_dataclass(tp):
        raise ValueError(f"config key '{full}': '{prefix}{head}' is a value, not a section")
    return _resolve_field(tp, parts[1:], f"{prefix}{head}.")


def _unknown_message(full: str, prefix: str, name: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(name, allowed, n=1)
    hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
    where = f"in section '{prefix[:-1]}'" if prefix else "at the top level"
    return f"unknown config key '{full}'{hint}; allowed {where}: {', '.join(allowed)}"


def _build(cls: Any, data: Mapping[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ValueError(_unknown_message(full, prefix, str(key), names))
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if value is None:
                value = {}
            if not isinstance(value, Mapping):
                raise TypeError(f"config key '{full}' must be a section (mapping), got {type(value).__name__}")
            kwargs[key] = _build(tp, value, full + ".")
        else:
            kwargs[key] = _coerce(value, tp, full)
    return cls(**kwargs)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Union:  # Optional[X]
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is Literal:
        if value not in args:
            raise ValueError(f"config key '{key}' must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin in (list, tuple, Sequence):
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"config key '{key}' must be a list, got {type(value).__name__} {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise TypeError(f"config key '{key}' must be true or false, got {type(value).__name__} {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"config key '{key}' must be an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool):
            raise TypeError(f"config key '{key}' must be a number, got bool {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # PyYAML reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise TypeError(f"config key '{key}' must be a number, got {type(value).__name__} {value!r}")
    if tp is str:
        if not isinstance(value, str):
            raise TypeError(f"config key '{key}' must be a string, got {type(value).__name__} {value!r}")
        return value
    raise TypeError(f"config key '{key}' has an unsupported type {tp}")  # pragma: no cover - schema bug

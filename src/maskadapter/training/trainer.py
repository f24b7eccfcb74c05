"""The training loop: stage 1 (GT-mask warm-up) and stage 2 (mixed masks), resumable, single- or multi-process.

Per step: the frozen CLIP gives dense features (always in eval mode and without autograd); in stage
2 the frozen generator proposes masks that are matched to the GT; the adapter embeds the sampled / mixed
masks; ``ce_weight x CE + cos_weight x (1 - cos)`` is back-propagated into the adapter (and the void
embedding where the variant trains it); AdamW steps with full-model gradient clipping under AMP.

Multi-process runs (``torchrun``) use DDP over the trainable parameters. Each loss term is normalised by
its count over the *global* batch, and every random draw is keyed by the image's dataset index, so N
processes with batch B/N compute the same update as one process with batch B.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from .. import distributed as dist_utils
from ..checkpoint import CheckpointError
from ..inference.preprocess import normalize_and_pad
from ..modeling.model import MaskAdapterModel
from ..data.train_datasets import SegmentationTrain
from ..fileio import atomic_write_text
from ..modeling.text import TextClassifier
from ..precision import resolve_precision
from ..vocabulary import Vocabulary
from .checkpointing import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    atomic_save,
    load_training_checkpoint,
    rng_state,
    set_rng_state,
)
from .config import RESUME_NEUTRAL_KEYS, ResolvedTraining, TrainConfig, config_diff, config_to_dict
from .data import (
    IndexedDataset,
    own_data_split,
    ResumableDistributedSampler,
    build_loader,
    build_train_dataset,
    describe_dataset,
    steps_per_epoch,
    target_generator,
)
from .evaluate import build_eval_set, evaluate_gt_masks
from .feature_cache import CachedFeatures, FeatureCache, open_cache
from .fuse import MODEL_FILE, write_model
from .setup import build_training_model, resolve_preset, set_trainable
from .losses import LossTerms, MaskAdapterLoss
from .matcher import build_matcher
from .optim import WarmupLRSchedule, build_optimizer
from .targets import MaskBatch, mixed_targets, pad_masks, valid_masks, warmup_targets

__all__ = ["Trainer", "TrainResult", "NonFiniteLossError", "build_training_model", "resolve_preset",
           "trainable_state"]

logger = logging.getLogger(__name__)

class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; nothing of that step was applied or saved."""

    def __init__(self, step: int, value: float) -> None:
        super().__init__(f"non-finite loss ({value}) at step {step}: training stopped; the last checkpoint "
                         f"written before this step is intact (lower solver.lr or check the data)")
        self.step = step
        self.value = value


@dataclass
class TrainResult:
    """Where a run ended."""

    iteration: int
    output_dir: Path
    last_checkpoint: Optional[Path]
    best_metric: Optional[float]
    metrics: dict[str, float]
    skipped_images: int
    seconds: float
    train_stats: dict[str, float] = dataclasses.field(default_factory=dict)  #: losses, lr of the last step
    model_file: Optional[Path] = None  #: complete model for ``segment --weights`` (``run.export_model``)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """CPU copies of the trainable parameters under their official names."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def _set_frozen_modes(model: MaskAdapterModel) -> None:
    """Frozen parts never train: CLIP (its wrapper enforces it), the generator and the CDT."""
    for part in (model.sem_seg_head, model.cdt):
        if part is not None:
            part.eval()


# ---------------------------------------------------------------------------------------------- step
class _StepModule(nn.Module):
    """One forward of training (what DDP wraps): images + GT -> un-normalised loss terms."""

    def __init__(self, model: MaskAdapterModel, config: TrainConfig, resolved: ResolvedTraining,
                 mask_threshold: float, text: torch.Tensor, num_synonyms: list[int]) -> None:
        super().__init__()
        self.model = model
        self.stage = config.train.stage
        self.mode = config.train.masks
        self.num_gt = config.train.num_gt_masks
        self.mask_threshold = mask_threshold
        self.matcher = build_matcher(config.train.matcher, config.train.iou_threshold, resolved.iou_binarize,
                                     config.train.num_pred_masks)
        self.loss = MaskAdapterLoss(config.loss.ce_weight, config.loss.cos_weight, resolved.cos_detach_target,
                                    config.loss.cos_include_padding)
        self.text = text
        self.num_synonyms = num_synonyms

    def targets(self, feats: dict, masks: list, labels: list, generators: list) -> MaskBatch:
        """The adapter's masks and labels for this batch (stage 2: predicted masks from the cache when it has them)."""
        if self.stage == "warmup":
            return warmup_targets(masks, labels, self.num_gt, generators)
        pred_masks = feats.get("pred_masks")
        if pred_masks is None:
            with torch.no_grad():
                pred_masks = self.model.sem_seg_head(feats, self.model.text_with_void(self.text),
                                                     self.num_synonyms)["pred_masks"]
        return mixed_targets(masks, labels, pred_masks, self.num_gt, self.matcher, self.mask_threshold,
                             generators, self.mode)

    def forward(self, images: Optional[torch.Tensor], masks: list, labels: list, generators: list,
                features: Optional[dict[str, torch.Tensor]] = None) -> dict[str, torch.Tensor]:
        """Loss terms (sums and counts) of the local batch; ``features``: cached frozen features instead of
        ``images``. An empty batch gives zero terms that still touch every trainable parameter (so every process
        joins the gradient all-reduce)."""
        if images is None and features is None:
            zero = sum(p.sum() for p in self.model.parameters() if p.requires_grad) * 0.0
            z = torch.zeros((), dtype=torch.long, device=zero.device)
            return {"ce_sum": zero, "ce_count": z, "cos_sum": zero, "cos_count": z}
        model = self.model
        if features is not None:
            feats = dict(features)
        else:
            with torch.no_grad():
                feats = model.dense_features(images)
        batch = self.targets(feats, masks, labels, generators)
        logits, emb = model.classify_masks(feats, batch.masks, self.text, self.num_synonyms, with_void=True,
                                           return_embeddings=True)
        t = self.loss.terms(logits, emb, batch)
        return {"ce_sum": t.ce_sum, "ce_count": t.ce_count, "cos_sum": t.cos_sum, "cos_count": t.cos_count}


# ---------------------------------------------------------------------------------------------- trainer
class Trainer:
    """Builds everything a config describes and runs (or resumes) the training loop.

    ``model`` / ``dataset`` may be passed in (tests, notebooks); otherwise they are built from the config.
    ``resume``: False, True (``<output_dir>/last.pt``) or a checkpoint path.
    """

    def __init__(self, config: TrainConfig, resume: Union[bool, str, Path] = False,
                 model: Optional[MaskAdapterModel] = None, dataset: Optional[Any] = None) -> None:
        self.config = config.validate()
        if config.run.output_dir is None:
            raise ValueError("config key 'run.output_dir' must be set (or pass --output-dir)")
        self.output_dir = Path(config.run.output_dir).expanduser()
        resume_state = None
        if resume:  # read (and check) the file first: a bad one fails before the model and data are built
            resume_path = self.output_dir / "last.pt" if resume is True else Path(resume)
            resume_state = load_training_checkpoint(resume_path)
        if config.run.threads:
            torch.set_num_threads(config.run.threads)
        try:
            self.device = dist_utils.resolve_device(config.run.device)
        except ValueError as exc:
            raise ValueError(f"config key 'run.device': {exc}") from exc
        self.dist = dist_utils.init_distributed(self.device, config.run.dist_timeout_min)
        if config.solver.batch_size % self.dist.world_size:
            raise ValueError(f"config key 'solver.batch_size' ({config.solver.batch_size}) must be a multiple of "
                             f"the number of processes ({self.dist.world_size})")
        self.batch_per_rank = config.solver.batch_size // self.dist.world_size
        self.amp_dtype = _amp_dtype(config.solver.precision, self.device)

        if model is None:
            model, self.preset = build_training_model(config)
        else:
            self.preset, _ = resolve_preset(config)
            set_trainable(model, config.resolved(self.preset.generator).train_void)
            model.mask_adapter.grad_checkpoint = config.model.grad_checkpoint
        self.model = model.to(self.device)
        self.resolved = config.resolved(self.preset.generator)
        self.dataset = dataset if dataset is not None else build_train_dataset(config)
        self.steps_per_epoch = steps_per_epoch(len(self.dataset), config.solver.batch_size)
        self.vocabulary = getattr(self.dataset, "vocabulary", None)
        if self.vocabulary is None:
            raise ValueError(f"the training dataset {type(self.dataset).__name__} has no .vocabulary")
        self.text, self.num_synonyms = self._class_embeddings()
        self.feature_cache = self._open_feature_cache() if config.data.cache_features else None
        self.indexed = IndexedDataset(self.dataset if self.feature_cache is None
                                      else CachedFeatures(self.dataset, self.feature_cache))
        mask_threshold = (config.model.mask_threshold if config.model.mask_threshold is not None
                          else self.preset.mask_threshold)
        self.step_module = _StepModule(self.model, config, self.resolved, mask_threshold, self.text, self.num_synonyms)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        s = config.solver
        self.optimizer = build_optimizer(self.model, s.lr, s.weight_decay, s.weight_decay_norm, s.weight_decay_embed,
                                         s.backbone_multiplier, s.betas, s.eps)
        self.scheduler = WarmupLRSchedule(self.optimizer, s.schedule, s.max_iter, s.steps, s.gamma, s.warmup_iters,
                                          s.warmup_factor, s.poly_power, s.poly_constant_ending)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.forward_module: nn.Module = self.step_module
        if self.dist.world_size > 1:
            self.forward_module = _wrap_ddp(self.step_module, self.device)
        self.sampler = ResumableDistributedSampler(self.indexed, self.dist.world_size, self.dist.rank, config.run.seed)

        self.iteration = 0
        self.best_metric: Optional[float] = None
        self.last_metrics: dict[str, float] = {}
        self.skipped_images = 0
        self.last_stats: dict[str, float] = {}
        self.eval_set = None
        self.model_file: Optional[Path] = None  #: the complete model written at the end (``run.export_model``)
        self._writer = None
        if self._eval_enabled():  # fail now, not after hours of training, if the evaluation data is missing
            self._eval_setup()
        if resume_state is not None:
            self.load_checkpoint(resume_path, resume_state)
        logger.info("training %s: %s, %d trainable tensors (%d values), %s, %d steps/epoch",
                    config.name, self.preset.name, len(self.trainable), sum(p.numel() for p in self.trainable),
                    describe_dataset(self.dataset), self.steps_per_epoch)

    # ------------------------------------------------------------------ setup helpers
    def _class_embeddings(self) -> tuple[torch.Tensor, list[int]]:
        vocab = Vocabulary.coerce(self.vocabulary)
        if self.config.data.text == "prototypes":
            if not hasattr(self.dataset, "class_prototypes"):
                raise ValueError("data.text = prototypes, but the dataset has no class_prototypes()")
            text = self.dataset.class_prototypes(self.model.backbone)
            return text.to(self.device).float(), [1] * len(vocab)
        classifier = TextClassifier(self.model.backbone, cache_dir=self.config.run.text_cache_dir)
        return classifier(vocab).to(self.device).float(), vocab.num_synonyms

    def _open_feature_cache(self) -> FeatureCache:
        if not isinstance(self.dataset, SegmentationTrain) or not getattr(self.dataset.transform, "fixed_size", False):
            raise ValueError("config key 'data.cache_features' needs your own data with data.augmentation = resize")
        return open_cache(self.model, self.dataset, self.output_dir, self.config.train.stage,
                          self.config.data.image_size, self.text, self.num_synonyms, self.config.data.cache_limit_gb,
                          self.config.run.progress and self.is_main, self.dist.rank, self.dist.world_size)

    @property
    def is_main(self) -> bool:
        """True on the process that logs and writes files."""
        return self.dist.is_main

    # ------------------------------------------------------------------ one step
    def run_step(self, batch: dict[str, Any]) -> dict[str, float]:
        """One optimisation step on a collated batch; returns the global losses, lr and skipped images."""
        step = self.iteration + 1
        self.model.train()
        _set_frozen_modes(self.model)
        keep = [i for i, (m, lab) in enumerate(zip(batch["masks"], batch["labels"]))
                if valid_masks(m, lab)[0].shape[0] > 0]
        skipped = len(batch["masks"]) - len(keep)
        images = features = None
        masks, labels, gens = [], [], []
        if keep and "features" in batch:  # cached: the frozen features of the padded images, stride 32
            features = {k: v[keep].to(self.device) for k, v in batch["features"].items()}
            h, w = features["clip_vis_dense"].shape[-2:]
            size = (32 * int(h), 32 * int(w))
        elif keep:
            images, _ = normalize_and_pad([batch["images"][i].to(self.device) for i in keep])
            size = tuple(images.shape[-2:])
        if keep:
            masks = [pad_masks(batch["masks"][i].to(self.device), size) for i in keep]
            labels = [batch["labels"][i].to(self.device) for i in keep]
            gens = [target_generator(self.config.run.seed, self.iteration, batch["indices"][i]) for i in keep]
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            out = self.forward_module(images, masks, labels, gens, features)
        counts = torch.stack([out["ce_count"].float(), out["cos_count"].float(),
                              torch.tensor(float(skipped), device=out["ce_count"].device)])
        dist_utils.all_reduce_sum(counts)
        world = self.dist.world_size
        losses = self.step_module.loss.combine(
            LossTerms(out["ce_sum"], out["ce_count"], out["cos_sum"], out["cos_count"]),
            ce_norm=float(counts[0]), cos_norm=float(counts[1]), scale=float(world))
        logged = torch.stack([losses["loss_ce"].detach(), losses["loss_cosine"].detach()]).float()
        dist_utils.all_reduce_sum(logged)
        logged /= world
        total = float(logged.sum())
        if not math.isfinite(total):
            raise NonFiniteLossError(step, total)
        self.scaler.scale(losses["total"]).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = float("nan")
        if self.config.solver.grad_clip > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.trainable, self.config.solver.grad_clip))
        lr = self.optimizer.param_groups[0]["lr"]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.iteration = step
        self.skipped_images += int(counts[2])
        self.last_stats = {"loss": total, "loss_ce": float(logged[0]), "loss_cosine": float(logged[1]), "lr": lr,
                "grad_norm": grad_norm, "skipped": int(counts[2]), "masks": int(counts[0])}
        return dict(self.last_stats)

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    # ------------------------------------------------------------------ loop
    def train(self, stop_after: Optional[int] = None) -> TrainResult:
        """Train until ``solver.max_iter`` (or until iteration ``stop_after``, without a final checkpoint:
        used to simulate an interruption). Periodic checkpoints, evaluation and logs along the way."""

        cfg = self.config
        total = cfg.solver.max_iter
        end = total if stop_after is None else min(total, stop_after)
        start_time = time.perf_counter()
        bar = tqdm(total=total, initial=self.iteration, desc=cfg.name, unit="it", dynamic_ncols=True,
                   disable=not (cfg.run.progress and self.is_main))
        window: list[float] = []
        stats: dict[str, float] = {}
        steps_done = 0
        try:
            while self.iteration < end:
                epoch, batch_in_epoch = divmod(self.iteration, self.steps_per_epoch)
                self.indexed.set_epoch(epoch)
                self.sampler.set_epoch(epoch)
                self.sampler.set_start(batch_in_epoch * self.batch_per_rank)
                loader = build_loader(self.indexed, self.sampler, self.batch_per_rank, cfg.data.num_workers,
                                      pin_memory=self.device.type == "cuda")
                tick = time.perf_counter()
                for batch in loader:
                    stats = self.run_step(batch)
                    now = time.perf_counter()
                    window = (window + [now - tick])[-20:]
                    tick = now
                    stats["images_per_s"] = cfg.solver.batch_size * len(window) / max(sum(window), 1e-9)
                    bar.update(1)
                    bar.set_postfix(loss=f"{stats['loss']:.4f}", lr=f"{stats['lr']:.2e}",
                                    img_s=f"{stats['images_per_s']:.2f}")
                    self._log(stats)
                    steps_done += 1
                    if self.iteration >= total:
                        break
                    # evaluation first, so the checkpoint written next records the best metric so far
                    if self._eval_enabled() and cfg.eval.period and self.iteration % cfg.eval.period == 0:
                        self.evaluate_and_select()
                    if cfg.run.checkpoint_period and self.iteration % cfg.run.checkpoint_period == 0:
                        self.save_checkpoint()
                    if self.iteration >= end:
                        break
            last: Optional[Path] = None
            if self.iteration >= total:
                if steps_done:
                    if self._eval_enabled():
                        self.evaluate_and_select()
                    last = self.save_checkpoint()
                    self.model_file = self._write_model(last)
                elif (self.output_dir / "last.pt").is_file():  # resumed a finished run: nothing to do
                    last = self.output_dir / "last.pt"
        finally:
            bar.close()
            if self._writer is not None:
                self._writer.flush()
        if self.skipped_images and self.is_main:
            logger.warning("%d training images had no usable mask and were skipped", self.skipped_images)
        return TrainResult(self.iteration, self.output_dir, last, self.best_metric, dict(self.last_metrics),
                           self.skipped_images, time.perf_counter() - start_time, dict(self.last_stats),
                           self.model_file)

    def _write_model(self, last: Path) -> Optional[Path]:
        """``model.safetensors`` of the best checkpoint (else ``last``) and ``classes.txt`` (rank 0)."""
        if not (self.is_main and self.config.run.export_model):
            return None
        best = self.output_dir / "best.pt"
        path = write_model(best if best.is_file() else last, self.output_dir / MODEL_FILE)
        classes = Vocabulary.coerce(self.vocabulary).classes
        atomic_write_text(self.output_dir / "classes.txt", "".join("|".join(syns) + "\n" for syns in classes))
        logger.info("complete model %s (segment --weights %s)", path, path)
        return path

    def _log(self, stats: dict[str, float]) -> None:
        if not self.is_main:
            return
        it = self.iteration
        if it % self.config.run.log_period == 0 or it == 1:
            logger.info("iter %d: loss %.4f (ce %.4f, cos %.4f), lr %.3g, %.2f img/s%s", it, stats["loss"],
                        stats["loss_ce"], stats["loss_cosine"], stats["lr"], stats["images_per_s"],
                        f", {self.skipped_images} images skipped so far" if self.skipped_images else "")
        writer = self._tensorboard()
        if writer is not None:
            for key in ("loss", "loss_ce", "loss_cosine", "lr", "images_per_s", "grad_norm"):
                if math.isfinite(stats.get(key, float("nan"))):
                    writer.add_scalar(f"train/{key}", stats[key], it)
            writer.add_scalar("train/skipped_images", self.skipped_images, it)

    def _tensorboard(self):
        if not (self.config.run.tensorboard and self.is_main):
            return None
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # pragma: no cover - tensorboard is an optional extra
                logger.warning("tensorboard is not installed (pip install 'maskadapter[train]'); logging disabled")
                self.config.run.tensorboard = False
                return None
            self._writer = SummaryWriter(log_dir=str(self.output_dir / "tensorboard"))
        return self._writer

    # ------------------------------------------------------------------ evaluation
    def _eval_enabled(self) -> bool:
        return self.config.eval.dataset != "none"

    def _eval_setup(self) -> None:
        cfg = self.config
        synthetic = None
        if cfg.eval.dataset == "synthetic":
            d = cfg.data
            synthetic = {"num_classes": d.synthetic_num_classes, "size": d.synthetic_size, "num_images": 64,
                         "seed": cfg.eval.synthetic_seed}
        source = own_data_split(cfg)[1] if cfg.eval.dataset == "split" else cfg.eval.dataset
        self.eval_set = build_eval_set(source, cfg.eval.root or cfg.data.root, cfg.eval.num_images,
                                       synthetic, cfg.eval.image_size)
        if cfg.data.text == "prototypes":
            if self.eval_set.vocabulary.names != list(self.vocabulary.names):
                raise ValueError("data.text = prototypes needs an evaluation set with the training classes")
            self.eval_text, self.eval_synonyms = self.text, self.num_synonyms
        else:
            classifier = TextClassifier(self.model.backbone, cache_dir=cfg.run.text_cache_dir)
            self.eval_text = classifier(self.eval_set.vocabulary).to(self.device).float()
            self.eval_synonyms = self.eval_set.vocabulary.num_synonyms

    def evaluate(self) -> dict[str, float]:
        """GT-mask accuracy and mIoU on the evaluation set (every process takes its share)."""

        if not self._eval_enabled():
            raise ValueError("no evaluation set: set eval.dataset")
        if self.eval_set is None:
            self._eval_setup()
        return evaluate_gt_masks(self.model, self.eval_set, self.eval_text, self.eval_synonyms, self.dist.rank,
                                 self.dist.world_size, progress=self.config.run.progress and self.is_main)

    def evaluate_and_select(self) -> dict[str, float]:
        """Evaluate, log, and write ``best.pt`` when the selection metric improved."""
        metrics = self.evaluate()
        self.last_metrics = metrics
        key = "mIoU" if self.config.eval.metric == "miou" and math.isfinite(metrics["mIoU"]) else "accuracy"
        value = metrics[key]
        improved = math.isfinite(value) and (self.best_metric is None or value > self.best_metric)
        if improved:
            self.best_metric = value
        if self.is_main:
            logger.info("eval at iter %d: accuracy %.2f, mIoU %.2f%s", self.iteration, metrics["accuracy"],
                        metrics["mIoU"], " (best)" if improved else "")
            writer = self._tensorboard()
            if writer is not None:
                for k in ("accuracy", "mIoU", "mean_class_accuracy"):
                    if math.isfinite(metrics[k]):
                        writer.add_scalar(f"eval/{k}", metrics[k], self.iteration)
            self.output_dir.mkdir(parents=True, exist_ok=True)
            with open(self.output_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps({"iteration": self.iteration, **metrics, "selected_by": key}) + "\n")
        if improved:
            self.save_checkpoint("best.pt")
        return metrics

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_payload(self) -> dict[str, Any]:
        """Everything needed to resume bit-exactly."""
        epoch, batch_in_epoch = divmod(self.iteration, self.steps_per_epoch)
        return {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
            "model": trainable_state(self.model),
            "config": config_to_dict(self.config),
            "preset": self.preset.name, "generator": self.preset.generator,
            "iteration": self.iteration, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "rng": rng_state(),
            "best_metric": self.best_metric, "metrics": dict(self.last_metrics),
            "skipped_images": self.skipped_images, "world_size": self.dist.world_size,
            "train_stats": dict(self.last_stats),  # losses (global means), lr, grad norm of the last step
        }

    def save_checkpoint(self, name: str = "last.pt") -> Optional[Path]:
        """Write ``<output_dir>/<name>`` atomically (rank 0; other processes wait). Returns its path."""
        path = self.output_dir / name
        if self.is_main:
            payload = self.checkpoint_payload()
            atomic_save(payload, path)
            if name == "last.pt" and self.config.run.keep_checkpoints:
                atomic_save(payload, self.output_dir / f"model_{self.iteration:07d}.pt")
            logger.info("checkpoint %s (iteration %d)", path, self.iteration)
        dist_utils.barrier()
        return path

    def load_checkpoint(self, path: Union[str, Path], ckpt: Optional[dict] = None) -> None:
        """Restore a checkpoint written by a run of the same config (keys in ``RESUME_NEUTRAL_KEYS`` may differ).

        The trained tensors are checked before any parameter changes; a file that does not fit, or whose optimizer
        state is damaged, raises CheckpointError naming it. ``ckpt``: the file's content when already read.
        """
        ckpt = load_training_checkpoint(path) if ckpt is None else ckpt
        differing = [k for k in config_diff(ckpt["config"], config_to_dict(self.config)) if k not in RESUME_NEUTRAL_KEYS]
        if differing:
            details = ", ".join(f"{k} (checkpoint {_lookup(ckpt['config'], k)!r}, now "
                                f"{_lookup(config_to_dict(self.config), k)!r})" for k in differing[:8])
            raise ValueError(f"cannot resume from {path}: it was written by another config; differing keys: {details}")
        state = ckpt["model"]
        own = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        if set(state) != set(own):
            raise CheckpointError(f"{path}: trained parameters do not match the model (missing "
                                  f"{sorted(set(own) - set(state))[:5]}, unexpected {sorted(set(state) - set(own))[:5]})")
        wrong = [f"{k} has shape {list(v.shape)}, the model {list(own[k].shape)}"
                 for k, v in state.items() if v.shape != own[k].shape]
        if wrong:
            raise CheckpointError(f"{path}: shape mismatch: {'; '.join(wrong[:5])}")
        with torch.no_grad():
            for name, value in state.items():
                own[name].copy_(value)
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            if ckpt.get("scaler"):
                self.scaler.load_state_dict(ckpt["scaler"])
            if ckpt.get("rng") and int(ckpt.get("world_size", 1)) == self.dist.world_size:
                set_rng_state(ckpt["rng"])
        except Exception as exc:  # noqa: BLE001 - a damaged entry of any kind: name the file, not a torch frame
            raise CheckpointError(f"{path}: optimizer, scheduler or RNG state is damaged "
                                  f"({type(exc).__name__}: {exc})") from exc
        self.iteration = int(ckpt["iteration"])
        self.best_metric = ckpt.get("best_metric")
        self.last_metrics = dict(ckpt.get("metrics") or {})
        self.skipped_images = int(ckpt.get("skipped_images", 0))
        self.last_stats = dict(ckpt.get("train_stats") or {})
        logger.info("resumed from %s at iteration %d", path, self.iteration)

    def close(self) -> None:
        """Flush logs and leave the process group."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        dist_utils.cleanup()


def _lookup(tree: dict, dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _amp_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """Autocast dtype of ``solver.precision`` (None = fp32), resolved like inference precision."""
    try:
        dtype = resolve_precision(precision, device)
    except ValueError as exc:
        raise ValueError(f"config key 'solver.precision': {exc}") from exc
    return None if dtype == torch.float32 else dtype


def _wrap_ddp(module: _StepModule, device: torch.device) -> nn.Module:
    # Frozen weights and buffers are identical on every process (same seed, same files): DDP neither
    # broadcasts nor syncs them; only the trainable parameters are reduced.
    frozen = [n for n, p in module.named_parameters() if not p.requires_grad] + [n for n, _ in module.named_buffers()]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, frozen)
    ids = [device.index] if device.type == "cuda" else None
    # The depthwise-conv weight gradients come out channels-last (NHWC head); DDP copies them into its
    # buckets anyway and would warn about the layout on every process.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    return DistributedDataParallel(module, device_ids=ids)

"""Predictor: open-vocabulary segmentation of any image with any vocabulary, in a few lines.

    p = Predictor.from_pretrained("fcclip-large")
    result = p.predict("photo.jpg", vocabulary="cat, sofa, window")
    result.semantic        # [H, W] class index per pixel
    result.segments        # panoptic segments: id, category_id, label, isthing, score, area
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoint import CheckpointError, read_state_dict
from ..data.vocabularies import builtin_vocabulary, coco_thing_mask
from ..hub import resolve_weights
from ..modeling.build import ArchitectureConfig, build_model
from ..modeling.generators.sam import MaskProposer
from ..modeling.model import MaskAdapterModel
from ..modeling.text import TextClassifier, Vocabulary, append_void, classification_logits
from ..precision import autocast
from ..presets import PresetConfig, get_preset, guess_preset
from ..preprocess import ImageInput, normalize_and_pad, resize_longest_side, to_rgb_tensor
from . import postprocess as pp

__all__ = ["Predictor", "SegmentationResult", "MaskClassification", "TASKS"]

logger = logging.getLogger(__name__)
TASKS = ("semantic", "panoptic", "instance")
Things = Optional[Union[Sequence[str], Sequence[bool], torch.Tensor]]


@dataclass
class SegmentationResult:
    """What :meth:`Predictor.predict` returns; maps are at the output size (the image's, or downscaled)."""

    vocabulary: Vocabulary
    image_size: tuple[int, int]  #: (H, W) of the maps below
    semantic: Optional[torch.Tensor] = None  #: [H, W] int64 class index, -1 where no mask covers a pixel
    panoptic: Optional[torch.Tensor] = None  #: [H, W] int32 segment id, 0 = no segment
    segments: list[dict] = field(default_factory=list)  #: id, category_id, label, isthing, score, area
    instances: Optional[dict[str, torch.Tensor]] = None  #: masks [K, H, W] bool, scores [K], classes [K]

    @property
    def class_names(self) -> list[str]:
        """Display name of each class index."""
        return self.vocabulary.names


@dataclass
class MaskClassification:
    """Adapter-only classification of given masks (SAM, user masks): no in-vocabulary head, no void."""

    vocabulary: Vocabulary
    logits: torch.Tensor  #: [N, C] adapter logits
    labels: torch.Tensor  #: [N] argmax class
    scores: torch.Tensor  #: [N] softmax probability of that class
    semantic: torch.Tensor  #: [H, W] int64, masks painted largest first (smaller masks on top), -1 elsewhere


class Predictor:
    """Runs a :class:`MaskAdapterModel` with a preset's constants; text embeddings are cached per vocabulary."""

    def __init__(
        self,
        model: MaskAdapterModel,
        preset: Union[str, PresetConfig],
        device: Union[str, torch.device] = "cpu",
        precision: str = "auto",
        text_cache_dir: Optional[Union[str, os.PathLike]] = None,
        mask_generator: Optional[MaskProposer] = None,
        max_image_pixels: int = 100_000_000,
        max_output_pixels: int = 4_000_000,
    ) -> None:
        self.preset = get_preset(preset) if isinstance(preset, str) else preset
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.precision = precision
        self.mask_generator = mask_generator
        self.max_image_pixels = max_image_pixels
        self.max_output_pixels = max_output_pixels
        if mask_generator is None and model.sem_seg_head is None:
            raise ValueError("the model has no mask generator (sem_seg_head): pass mask_generator= (e.g. SAM) "
                             "or use classify_masks()")
        self.text_classifier = TextClassifier(model.backbone, cache_dir=text_cache_dir)
        self._train_vocabulary = builtin_vocabulary(self.preset.train_vocabulary)
        #: seconds per stage of the last call (preprocess, text, backbone, generator, adapter, postprocess)
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def _stage(self, name: str):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(cls, preset: str = "fcclip-large", cache_dir: Optional[str] = None,
                        **kwargs: object) -> "Predictor":
        """Download (once) and load the released weights of ``preset``."""
        config = get_preset(preset)
        return cls.from_checkpoint(resolve_weights(config, cache_dir=cache_dir), config, **kwargs)

    @classmethod
    def from_checkpoint(cls, path: Union[str, os.PathLike], preset: Union[str, PresetConfig],
                        architecture: Optional[ArchitectureConfig] = None, **kwargs: object) -> "Predictor":
        """Load an official-layout checkpoint (``.pth`` or safetensors) for ``preset``; a checkpoint of another
        preset is refused with a message naming the preset it fits."""
        config = get_preset(preset) if isinstance(preset, str) else preset
        state = read_state_dict(path)
        model = build_model(config, architecture)
        try:
            model.load_official(state)
        except CheckpointError as exc:
            fits = guess_preset(state)
            hint = f" It looks like a checkpoint for preset {fits!r}." if fits and fits != config.name else ""
            raise CheckpointError(f"{path} does not fit preset {config.name!r}.{hint}\n{exc}") from exc
        return cls(model, config, **kwargs)

    # ------------------------------------------------------------------ public API
    @torch.no_grad()
    def predict(self, image: ImageInput, vocabulary: Union[Vocabulary, str, Sequence[str]],
                tasks: Sequence[str] = TASKS, things: Things = None) -> SegmentationResult:
        """Segment ``image`` (path, PIL, HxWx3 uint8 array or [3, H, W] uint8 tensor) into ``vocabulary``.

        ``things`` marks which classes get one panoptic segment per instance (class names or a bool per
        class); by default a class is a thing when it shares a synonym with a COCO thing class.
        """
        vocab = Vocabulary.coerce(vocabulary)
        tasks = _check_tasks(tasks)
        self.timings = {}
        with self._stage("preprocess"):
            rgb = self._load(image)
        if self.mask_generator is not None:
            return self._predict_with_proposals(rgb, vocab, tasks)
        is_thing = self._things(vocab, things)
        with self._stage("preprocess"):
            images, (h, w), out_size = self._prepare(rgb)
        with self._stage("text"):
            text = self.text_classifier(vocab).to(self.device)
        mask_cls, mask_pred = self._run_generator(images, text, vocab)
        with self._stage("postprocess"):
            return self._postprocess(vocab, tasks, is_thing, mask_cls, mask_pred, (h, w), out_size)

    def _postprocess(self, vocab: Vocabulary, tasks: tuple[str, ...], is_thing: torch.Tensor,
                     mask_cls: torch.Tensor, mask_pred: torch.Tensor, size: tuple[int, int],
                     out_size: tuple[int, int]) -> SegmentationResult:
        """Semantic / panoptic / instance outputs at ``out_size`` from [Q, C+1] log-probs and [Q, H, W] logits."""
        h, w = size
        result = SegmentationResult(vocab, out_size)
        mask_full = None
        if "semantic" in tasks and not self.preset.postprocess_before_inference:
            sem = pp.semantic_inference(mask_cls, mask_pred)
            result.semantic = pp.sem_seg_postprocess(sem, (h, w), *out_size).argmax(0)
        if ("semantic" in tasks and result.semantic is None) or "panoptic" in tasks or "instance" in tasks:
            mask_full = pp.sem_seg_postprocess(mask_pred, (h, w), *out_size)
            mask_cls = mask_cls.to(mask_full.dtype)
        if "semantic" in tasks and result.semantic is None:
            result.semantic = pp.semantic_inference(mask_cls, mask_full).argmax(0)
        if "panoptic" in tasks:
            result.panoptic, segments = pp.panoptic_inference(
                mask_cls, mask_full, is_thing, self.preset.object_mask_threshold, self.preset.overlap_threshold)
            result.segments = [{**s, "label": vocab.names[s["category_id"]]} for s in segments]
        if "instance" in tasks:
            result.instances = pp.instance_inference(mask_cls, mask_full, is_thing, self.preset.detections_per_image)
        return result

    @torch.no_grad()
    def classify_masks(self, image: ImageInput, masks: Union[torch.Tensor, np.ndarray],
                       vocabulary: Union[Vocabulary, str, Sequence[str]]) -> MaskClassification:
        """Classify ``masks`` [N, H, W] (bool or 0-1 float, at the image's size) with the adapter alone."""
        vocab = Vocabulary.coerce(vocabulary)
        rgb = self._load(image)
        masks = torch.as_tensor(np.asarray(masks)) if not isinstance(masks, torch.Tensor) else masks
        if masks.dim() != 3 or tuple(masks.shape[-2:]) != tuple(rgb.shape[-2:]):
            raise ValueError(f"masks must have shape [N, {rgb.shape[1]}, {rgb.shape[2]}] (the image size), "
                             f"got {list(masks.shape)}")
        images, (h, w), _ = self._prepare(rgb)
        text = self.text_classifier(vocab).to(self.device)
        resized = F.interpolate(masks[None].float().to(self.device), size=(h, w), mode="bilinear",
                                align_corners=False)
        padded = F.pad(resized, (0, images.shape[-1] - w, 0, images.shape[-2] - h))
        with autocast(self.precision, self.device):
            feats = self.model.dense_features(images)
            emb = self.model.embed_masks(feats, padded)
            adapter_text = self.model.adapter_text(feats, text)
        logits = classification_logits(emb.float(), adapter_text.float(), self.model.backbone.logit_scale,
                                       vocab.num_synonyms)[0].cpu()
        probs = logits.softmax(-1) if logits.numel() else logits
        scores, labels = probs.max(-1) if logits.numel() else (probs.new_zeros(0), probs.new_zeros(0).long())
        semantic = pp.paint_masks(masks.bool().cpu(), labels)
        return MaskClassification(vocab, logits, labels, scores, semantic)

    # ------------------------------------------------------------------ steps
    def _load(self, image: ImageInput) -> torch.Tensor:
        rgb = to_rgb_tensor(image)
        pixels = int(rgb.shape[1]) * int(rgb.shape[2])
        if pixels > self.max_image_pixels:
            raise ValueError(f"image of {rgb.shape[2]}x{rgb.shape[1]} = {pixels} pixels is over the limit of "
                             f"{self.max_image_pixels} pixels (Predictor(max_image_pixels=...)); downscale it first")
        return rgb

    def _prepare(self, rgb: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
        """Resized, normalised, padded batch [1, 3, H, W]; the resized size (h, w); the output size."""
        resized = resize_longest_side(rgb, self.preset.test_size)
        images, sizes = normalize_and_pad([resized.to(self.device)], self.preset.size_divisibility)
        H0, W0 = int(rgb.shape[1]), int(rgb.shape[2])
        if H0 * W0 > self.max_output_pixels:
            scale = math.sqrt(self.max_output_pixels / (H0 * W0))
            out = (max(1, int(H0 * scale)), max(1, int(W0 * scale)))
            logger.warning("output maps downscaled from %dx%d to %dx%d (max_output_pixels=%d)",
                           W0, H0, out[1], out[0], self.max_output_pixels)
        else:
            out = (H0, W0)
        return images, sizes[0], out

    def _run_generator(self, images: torch.Tensor, text: torch.Tensor, vocab: Vocabulary
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Ensembled class log-probs [Q, C+1] and mask logits [Q, H, W] at the padded input size."""
        text_void = append_void(text, self.model.void_embedding.weight)
        with autocast(self.precision, self.device):
            with self._stage("backbone"):
                feats = self.model.dense_features(images)
            with self._stage("generator"):
                out = self.model.sem_seg_head(feats, text_void, vocab.num_synonyms)
            with self._stage("adapter"):
                binary = out["pred_masks"].sigmoid() > self.preset.mask_threshold
                emb = self.model.embed_masks(feats, binary)
                adapter_text = self.model.adapter_text(feats, text_void)
        out_logits = classification_logits(emb.float(), adapter_text.float(), self.model.backbone.logit_scale,
                                           vocab.num_synonyms)
        seen = pp.category_overlap(vocab, self._train_vocabulary).to(self.device)
        mask_cls = pp.geometric_ensemble(out["pred_logits"].float(), out_logits, seen,
                                         self.preset.alpha, self.preset.beta)
        mask_pred = F.interpolate(out["pred_masks"].float(), size=images.shape[-2:], mode="bilinear",
                                  align_corners=False)
        return mask_cls[0], mask_pred[0]

    def _predict_with_proposals(self, rgb: torch.Tensor, vocab: Vocabulary, tasks: tuple[str, ...]
                                ) -> SegmentationResult:
        masks, quality = self.mask_generator(rgb.permute(1, 2, 0).numpy())
        cls = self.classify_masks(rgb, masks, vocab)
        H, W = int(rgb.shape[1]), int(rgb.shape[2])
        result = SegmentationResult(vocab, (H, W), semantic=cls.semantic)
        if "panoptic" in tasks:
            result.panoptic, result.segments = _segments_from_masks(masks, cls, vocab)
        if "instance" in tasks:
            result.instances = {"masks": masks.bool(), "scores": cls.scores * quality.to(cls.scores),
                                "classes": cls.labels}
        return result

    def _things(self, vocab: Vocabulary, things: Things) -> torch.Tensor:
        if things is None:
            return coco_thing_mask(vocab)
        if isinstance(things, torch.Tensor) or (len(things) and isinstance(things[0], (bool, np.bool_))):
            flags = torch.as_tensor(things, dtype=torch.bool)
            if flags.shape != (len(vocab),):
                raise ValueError(f"things must have one flag per class ({len(vocab)}), got {tuple(flags.shape)}")
            return flags
        names = {n.lower() for n in things}
        unknown = names - {n.lower() for n in vocab.names}
        if unknown:
            raise ValueError(f"things names classes not in the vocabulary: {sorted(unknown)}")
        return torch.tensor([n.lower() in names for n in vocab.names])


def _check_tasks(tasks: Sequence[str]) -> tuple[str, ...]:
    tasks = (tasks,) if isinstance(tasks, str) else tuple(tasks)
    bad = [t for t in tasks if t not in TASKS]
    if bad or not tasks:
        raise ValueError(f"tasks must be a non-empty subset of {TASKS}, got {list(tasks)}")
    return tasks


def _segments_from_masks(masks: torch.Tensor, cls: MaskClassification, vocab: Vocabulary
                         ) -> tuple[torch.Tensor, list[dict]]:
    """Panoptic map of proposal masks painted like the semantic map (largest first): one segment per mask."""
    ids = pp.paint_masks(masks.bool(), torch.arange(1, masks.shape[0] + 1), background=0).to(torch.int32)
    segments = []
    for i in range(masks.shape[0]):
        area = int((ids == i + 1).sum())
        if area:
            c = int(cls.labels[i])
            segments.append({"id": i + 1, "category_id": c, "label": vocab.names[c], "isthing": True,
                             "score": float(cls.scores[i]), "area": area})
    return ids, segments

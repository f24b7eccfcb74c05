"""Predictor: open-vocabulary segmentation of any image with any vocabulary, in a few lines.

    p = Predictor.from_pretrained("fcclip-large")
    result = p.predict("photo.jpg", vocabulary="cat, sofa, window")
    result.semantic        # [H, W] class index per pixel
    result.segments        # panoptic segments: id, category_id, label, isthing, score, area
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoint import CheckpointError, read_state_dict, split_checkpoint
from ..constants import TASKS
from ..data.vocabularies import builtin_vocabulary, coco_thing_mask
from ..hub import resolve_weights
from ..images import ImageInput, to_rgb_tensor
from ..modeling.build import ArchitectureConfig, build_model, default_architecture, load_preset
from ..modeling.generators.sam import MaskProposer, PromptPredictor
from ..modeling.model import MaskAdapterModel
from ..modeling.text import TextClassifier, resolve_text_cache_dir
from ..precision import autocast, resolve_precision
from ..presets import PresetConfig, guess_preset
from ..vocabulary import Vocabulary, VocabularyLike
from . import postprocess as pp
from .banded import postprocess_banded
from .classify import classify_image_masks
from .instances import Instances
from .options import InferenceOptions
from .prompts import PromptSegmentation, segment_prompts
from .preprocess import normalize, pad_batch, padded_size, resize_longest_side

__all__ = ["Predictor", "SegmentationResult", "MaskClassification", "PreparedImage", "ImagePreparer", "TASKS",
           "things_mask", "check_tasks"]

logger = logging.getLogger(__name__)
#: On a GPU, post-processing resizes all Q logits at once up to this size; larger outputs are banded on the CPU.
_GPU_FULL_BYTES = 4 * 2**30
Things = Optional[Union[Sequence[str], Sequence[bool], torch.Tensor]]
TextCache = Union[str, os.PathLike, None, bool]


@dataclass
class SegmentationResult:
    """What :meth:`Predictor.predict` returns; maps are at the output size (the image's, or downscaled)."""

    vocabulary: Vocabulary
    image_size: tuple[int, int]  #: (H, W) of the maps below
    semantic: Optional[torch.Tensor] = None  #: [H, W] int64 class index, -1 where no mask covers a pixel
    panoptic: Optional[torch.Tensor] = None  #: [H, W] int32 segment id, 0 = no segment
    segments: list[dict] = field(default_factory=list)  #: id, category_id, label, isthing, score, area
    instances: Optional[Instances] = None  #: K instances: RLE masks (``.masks`` decodes [K, H, W]), scores, classes
    input_size: Optional[tuple[int, int]] = None  #: (H, W) of the input image (differs when downscaled)

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


@dataclass
class PreparedImage:
    """An image ready for the network, made without the model (so DataLoader workers can make it): normalised
    [3, h, w] at the preset's test size, its size and the input image's size (and the RGB image itself when the
    predictor's masks come from a proposal generator such as SAM, which works at full resolution)."""

    tensor: torch.Tensor  #: float32 [3, h, w], normalised, not padded
    input_size: tuple[int, int]  #: (H, W) of the input image
    rgb: Optional[torch.Tensor] = None  #: uint8 [3, H, W], only for proposal generators

    @property
    def size(self) -> tuple[int, int]:
        """(h, w) of the resized image inside the padding."""
        return int(self.tensor.shape[1]), int(self.tensor.shape[2])


@dataclass(frozen=True)
class ImagePreparer:
    """Makes :class:`PreparedImage` s without a model: small and picklable, so DataLoader workers get this, not
    the predictor."""

    test_size: int  #: long side of the network input
    max_pixels: int  #: larger images are refused from their header
    keep_rgb: bool = False  #: keep the decoded image (proposal generators work at full resolution)

    def __call__(self, image: ImageInput) -> PreparedImage:
        """Decode (size checked from the header), resize to the test size and normalise one image."""
        rgb = to_rgb_tensor(image, max_pixels=self.max_pixels)
        tensor = normalize(resize_longest_side(rgb, self.test_size))
        return PreparedImage(tensor, (int(rgb.shape[1]), int(rgb.shape[2])), rgb if self.keep_rgb else None)


class Predictor:
    """Runs a :class:`MaskAdapterModel` with a preset's constants and frozen :class:`InferenceOptions`.

    ``text_cache_dir``: where text embeddings persist across runs - None (default): the user cache
    (``$MASKADAPTER_TEXT_CACHE`` or ``~/.cache/maskadapter/text``), a folder, or False for memory only.
    Option keywords (``precision=``, ``max_image_pixels=``, ...) may be given instead of ``options``.
    """

    def __init__(
        self,
        model: MaskAdapterModel,
        preset: Union[str, PresetConfig],
        device: Union[str, torch.device] = "cpu",
        options: Optional[InferenceOptions] = None,
        text_cache_dir: TextCache = None,
        mask_generator: Optional[MaskProposer] = None,
        text_classifier: Optional[TextClassifier] = None,
        prompt_model: Optional[PromptPredictor] = None,
        **option_values: Any,
    ) -> None:
        self.preset = load_preset(preset)[0] if isinstance(preset, str) else preset
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.options = (options or InferenceOptions()).replace(**option_values)
        self.mask_generator = mask_generator
        self.prompt_model = prompt_model  #: SAM / SAM 2 prompt predictor for segment_prompts
        self.text_classifier = text_classifier or TextClassifier(model.backbone,
                                                                 cache_dir=resolve_text_cache_dir(text_cache_dir))
        if self.text_classifier.cache_dir is not None:
            self.model.backbone.text_fingerprint()  # hash the weights now, with the load, not in the first request
        self._train_vocabulary = builtin_vocabulary(self.preset.train_vocabulary)
        self._seen: dict[Vocabulary, torch.Tensor] = {}  # shared by with_options copies
        #: seconds per stage of the last call (preprocess, text, backbone, generator, adapter, postprocess)
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(cls, preset: Union[str, PresetConfig] = "fcclip-large", cache_dir: Optional[str] = None,
                        **kwargs: Any) -> "Predictor":
        """Download (once) and load the released weights of ``preset`` (a name or a preset JSON file)."""
        config, architecture = load_preset(preset)
        return cls.from_checkpoint(resolve_weights(config, cache_dir=cache_dir), config, architecture, **kwargs)

    @classmethod
    def from_checkpoint(cls, path: Union[str, os.PathLike], preset: Union[str, PresetConfig],
                        architecture: Optional[ArchitectureConfig] = None, **kwargs: Any) -> "Predictor":
        """Load an official-layout checkpoint (``.pth`` or safetensors) for ``preset`` (a preset name, a preset
        JSON file or a :class:`PresetConfig`); a checkpoint of another preset is refused with a message
        naming the preset it fits."""
        config, file_architecture = load_preset(preset)
        state = read_state_dict(path)
        model = build_model(config, architecture or file_architecture)
        try:
            model.load_official(state, name=str(path))
        except CheckpointError as exc:
            fits = guess_preset(state)
            hint = f" (it looks like a checkpoint for preset {fits!r})" if fits and fits != config.name else ""
            raise CheckpointError(f"{path} does not fit preset {config.name!r}{hint}:\n{exc}") from exc
        return cls(model, config, **kwargs)

    @classmethod
    def from_adapter(cls, path: Union[str, os.PathLike], preset: Union[str, PresetConfig] = "fcclip-large",
                     architecture: Optional[ArchitectureConfig] = None,
                     clip_weights: Union[str, os.PathLike, None] = None, **kwargs: Any) -> "Predictor":
        """An adapter-only predictor (no Mask2Former decoder): for SAM masks, prompts and your own masks.

        ``path`` holds ``mask_adapter.*`` (a stage-1 checkpoint, ``maskadapter export`` output or a released
        file, whose decoder is then not loaded), with ``void_embedding`` and MAFT+'s ``cdt`` when present.
        CLIP comes from ``path`` when it holds ``backbone.clip_model.*``, else from ``clip_weights`` (any
        official-layout file with those keys, e.g. the preset's released checkpoint).
        """
        config, file_architecture = load_preset(preset)
        arch = architecture or file_architecture or default_architecture(config)
        model = build_model(config, dataclasses.replace(arch, generator=None))
        state = split_checkpoint(read_state_dict(path))
        if "mask_adapter" not in state.parts:
            raise CheckpointError(f"{path} has no mask_adapter.* keys: it is not an adapter checkpoint "
                                  f"(it holds {', '.join(sorted(state.parts)) or 'no known part'})")
        parts = [p for p in model.part_modules() if p in state.parts]
        model.load_official(path, parts=parts)
        if "backbone.clip_model" not in parts:
            if clip_weights is None:
                raise CheckpointError(f"{path} holds no CLIP weights (backbone.clip_model.*): pass clip_weights= "
                                      f"(CLI: --clip-weights), e.g. the released {config.weights_file}")
            model.load_official(clip_weights, parts=["backbone.clip_model"])
        missing = [p for p in ("cdt",) if p in model.part_modules() and p not in parts]
        if missing and clip_weights is not None:
            model.load_official(clip_weights, parts=missing)
        elif missing:
            raise CheckpointError(f"{path} has no cdt.* keys, which preset {config.name!r} needs: pass clip_weights= "
                                  f"with them (the released {config.weights_file})")
        return cls(model, config, **kwargs)

    def with_options(self, options: Optional[InferenceOptions] = None, **changes: Any) -> "Predictor":
        """A predictor with other options that shares this one's model, text cache and mask generator; this
        predictor is not changed."""
        other = copy.copy(self)
        other.options = (options or self.options).replace(**changes)
        other.timings = {}
        return other

    def with_sam(self, mask_generator: Optional[MaskProposer] = None,
                 prompt_model: Optional[PromptPredictor] = None) -> "Predictor":
        """A predictor sharing this one's model, text cache and options whose masks come from ``mask_generator``
        (e.g. SAM automatic masks) and whose prompts go to ``prompt_model``; this predictor is not changed."""
        other = self.with_options()
        other.mask_generator = mask_generator
        other.prompt_model = prompt_model
        return other

    # ------------------------------------------------------------------ properties
    @property
    def precision(self) -> str:
        """The requested precision (``auto``, ``fp32``, ``bf16``, ``fp16``)."""
        return self.options.precision

    @property
    def resolved_precision(self) -> str:
        """What the requested precision means on this device: ``fp32``, ``bf16`` or ``fp16``."""
        dtype = resolve_precision(self.options.precision, self.device)
        return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]

    @property
    def max_image_pixels(self) -> int:
        """Images with more pixels are refused."""
        return self.options.max_image_pixels

    @property
    def postprocess_before_inference(self) -> bool:
        """Whether mask logits are resized to the output size before semantic inference."""
        before = self.options.postprocess_before_inference
        return self.preset.postprocess_before_inference if before is None else before

    # ------------------------------------------------------------------ public API
    @torch.no_grad()
    def predict(self, image: ImageInput, vocabulary: VocabularyLike, tasks: Sequence[str] = TASKS,
                things: Things = None) -> SegmentationResult:
        """Segment ``image`` (path, PIL, HxWx3 uint8 array or [3, H, W] uint8 tensor) into ``vocabulary``.

        ``things`` marks which classes get one panoptic segment per instance (class names or a bool per
        class); by default a class is a thing when it shares a synonym with a COCO thing class.
        """
        self.timings = {}
        with self._stage("preprocess"):
            prepared = self.prepare(image)
        return self.predict_prepared([prepared], vocabulary, tasks, things, _reset_timings=False)[0]

    @torch.no_grad()
    def predict_batch(self, images: Sequence[ImageInput], vocabulary: VocabularyLike,
                      tasks: Sequence[str] = TASKS, things: Things = None) -> list[SegmentationResult]:
        """:meth:`predict` for several images in one forward pass (padded to a common size, as the official
        test pipeline pads a batch). For images that share their padded size (:meth:`padded_size`; group images
        by it), maps and masks equal one-by-one prediction and scores agree to float rounding (matrix kernels
        sum in another order for another batch size)."""
        self.timings = {}
        with self._stage("preprocess"):
            prepared = [self.prepare(image) for image in images]
        return self.predict_prepared(prepared, vocabulary, tasks, things, _reset_timings=False)

    @property
    def preparer(self) -> ImagePreparer:
        """What :meth:`prepare` runs, as a picklable object for DataLoader worker processes."""
        return ImagePreparer(self.preset.test_size, self.options.max_image_pixels, self.mask_generator is not None)

    def prepare(self, image: ImageInput) -> PreparedImage:
        """Decode (size checked from the header), resize to the preset's test size and normalise one image."""
        return self.preparer(image)

    def padded_size(self, prepared: PreparedImage) -> tuple[int, int]:
        """The padded network input size of a prepared image: images with the same one batch like one by one."""
        return padded_size([prepared.size], self.preset.size_divisibility)

    @torch.no_grad()
    def predict_prepared(self, batch: Sequence[PreparedImage], vocabulary: VocabularyLike,
                         tasks: Sequence[str] = TASKS, things: Things = None, _reset_timings: bool = True
                         ) -> list[SegmentationResult]:
        """Segment prepared images (:meth:`prepare`) in one forward pass; one result per image."""
        vocab = Vocabulary.coerce(vocabulary)
        tasks = check_tasks(tasks)
        is_thing = things_mask(vocab, things)
        if _reset_timings:
            self.timings = {}
        if self.mask_generator is not None:
            return [self._predict_with_proposals(p.rgb, vocab, tasks) for p in batch]
        if self.model.sem_seg_head is None:
            raise ValueError("this predictor has no mask generator (an adapter-only model): classify your own masks "
                             "with classify_masks() or segment_prompts(), or pass mask_generator= (e.g. SAM)")
        with self._stage("preprocess"):
            images = pad_batch([p.tensor for p in batch], self.preset.size_divisibility).to(self.device)
        with self._stage("text"):
            text = self.text_classifier(vocab).to(self.device)
        mask_cls, mask_pred = self._run_generator(images, text, vocab)
        results = []
        for i, prepared in enumerate(batch):
            with self._stage("postprocess"):
                result = self._postprocess(vocab, tasks, is_thing, mask_cls[i], mask_pred[i], prepared.size,
                                           self._output_size(prepared.input_size))
            result.input_size = prepared.input_size
            results.append(result)
        return results

    @torch.no_grad()
    def classify_masks(self, image: ImageInput, masks: Union[torch.Tensor, np.ndarray],
                       vocabulary: VocabularyLike) -> MaskClassification:
        """Classify ``masks`` [N, H, W] (bool or 0-1 float, at the image's size) with the adapter alone."""
        vocab = Vocabulary.coerce(vocabulary)
        self.timings = {}
        with self._stage("preprocess"):
            rgb = self._load(image)
            masks = _as_mask_tensor(masks, tuple(rgb.shape[-2:]))
        return self._classify(rgb, masks, vocab)

    def segment_prompts(self, image: ImageInput, vocabulary: VocabularyLike, points: Sequence[Sequence[Any]] = (),
                        boxes: Sequence[Sequence[float]] = (), top_k: int = 5, multimask: bool = True,
                        prompt_model: Optional[PromptPredictor] = None) -> PromptSegmentation:
        """Click to segment: SAM point prompts ``(x, y, positive)`` and boxes ``(x0, y0, x1, y1)`` in pixels of
        ``image`` -> one mask [H, W] per prompt group with SAM's quality, classified into ``vocabulary`` by the
        adapter (top-k classes). The SAM image embedding is computed once per image and reused across calls.
        ``prompt_model``: the SAM / SAM 2 prompt predictor (default: the one given to the constructor)."""
        model = prompt_model or self.prompt_model
        if model is None:
            raise ValueError("segment_prompts needs a SAM prompt predictor: Predictor(..., prompt_model="
                             "SamPromptPredictor(checkpoint)) or prompt_model=")
        return segment_prompts(self, model, image, vocabulary, points=points, boxes=boxes, top_k=top_k,
                               multimask=multimask)

    # ------------------------------------------------------------------ steps
    @contextlib.contextmanager
    def _stage(self, name: str) -> Iterator[None]:
        sync = self.options.sync_timings and self.device.type == "cuda"
        if sync:
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        yield
        if sync:
            torch.cuda.synchronize(self.device)
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start

    def _load(self, image: ImageInput) -> torch.Tensor:
        return to_rgb_tensor(image, max_pixels=self.options.max_image_pixels)

    def _output_size(self, input_size: tuple[int, int]) -> tuple[int, int]:
        H0, W0 = input_size
        cap = self.options.max_output_pixels
        if cap is None or H0 * W0 <= cap:
            return H0, W0
        scale = math.sqrt(cap / (H0 * W0))
        out = (max(1, int(H0 * scale)), max(1, int(W0 * scale)))
        logger.warning("output maps downscaled from %dx%d to %dx%d (max_output_pixels=%d)",
                       W0, H0, out[1], out[0], cap)
        return out

    def _classify(self, rgb: torch.Tensor, masks: torch.Tensor, vocab: Vocabulary) -> MaskClassification:
        with self._stage("text"):
            text = self.text_classifier(vocab)
        with self._stage("adapter"):
            if masks.shape[0]:
                logits = classify_image_masks(self.model, rgb, masks, text, vocab.num_synonyms, with_void=False,
                                              resize=self.preset.test_size, precision=self.options.precision).cpu()
            else:
                logits = torch.zeros((0, len(vocab)))
        with self._stage("postprocess"):
            probs = logits.softmax(-1)
            scores, labels = probs.max(-1) if logits.numel() else (probs.new_zeros(0), probs.new_zeros(0).long())
            semantic = pp.paint_masks(masks.bool().cpu(), labels)
        return MaskClassification(vocab, logits, labels, scores, semantic)

    def _run_generator(self, images: torch.Tensor, text: torch.Tensor, vocab: Vocabulary
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Ensembled class log-probs [B, Q, C+1] and mask logits [B, Q, H, W] at the padded input size."""
        model = self.model
        with autocast(self.options.precision, self.device):
            with self._stage("backbone"):
                feats = model.dense_features(images)
            with self._stage("generator"):
                out = model.sem_seg_head(feats, model.text_with_void(text), vocab.num_synonyms)
            with self._stage("adapter"):
                binary = out["pred_masks"].sigmoid() > self.preset.mask_threshold
                out_logits = model.classify_masks(feats, binary, text, vocab.num_synonyms, with_void=True)
        mask_cls = pp.geometric_ensemble(out["pred_logits"].float(), out_logits, self._seen_mask(vocab),
                                         self.preset.alpha, self.preset.beta)
        mask_pred = F.interpolate(out["pred_masks"].float(), size=images.shape[-2:], mode="bilinear",
                                  align_corners=False)
        return mask_cls, mask_pred

    def _postprocess(self, vocab: Vocabulary, tasks: tuple[str, ...], is_thing: torch.Tensor,
                     mask_cls: torch.Tensor, mask_pred: torch.Tensor, size: tuple[int, int],
                     out_size: tuple[int, int]) -> SegmentationResult:
        """Semantic / panoptic / instance outputs at ``out_size`` from [Q, C+1] log-probs and [Q, H, W] logits,
        band by band (bit-identical to resizing all Q logits at once, in memory bounded by the band budget).

        Banding replicates CPU kernels: on a GPU the full-tensor path runs, unless the Q resized logits would
        exceed ``_GPU_FULL_BYTES``; those go to the CPU and are banded there (exact to the CPU computation)."""
        full_bytes = mask_pred.shape[0] * out_size[0] * out_size[1] * 4
        if mask_pred.device.type != "cpu" and full_bytes > _GPU_FULL_BYTES:
            mask_cls, mask_pred = mask_cls.float().cpu(), mask_pred.float().cpu()
        out = postprocess_banded(mask_cls, mask_pred, size, out_size, tasks, is_thing,
                                 before=self.postprocess_before_inference,
                                 object_mask_threshold=self.preset.object_mask_threshold,
                                 overlap_threshold=self.preset.overlap_threshold,
                                 top_k=self.preset.detections_per_image,
                                 band_bytes=self.options.band_mb * 2**20)
        segments = [{**s, "label": vocab.names[s["category_id"]]} for s in out.segments]
        return SegmentationResult(vocab, out_size, semantic=out.semantic, panoptic=out.panoptic,
                                  segments=segments, instances=out.instances)

    def _predict_with_proposals(self, rgb: torch.Tensor, vocab: Vocabulary, tasks: tuple[str, ...]
                                ) -> SegmentationResult:
        with self._stage("generator"):
            masks, quality = self.mask_generator(rgb.permute(1, 2, 0).numpy())
        cls = self._classify(rgb, masks, vocab)
        H, W = int(rgb.shape[1]), int(rgb.shape[2])
        result = SegmentationResult(vocab, (H, W), semantic=cls.semantic, input_size=(H, W))
        if "panoptic" in tasks:
            result.panoptic, result.segments = _segments_from_masks(masks, cls, vocab)
        if "instance" in tasks:
            result.instances = Instances.from_masks(masks, cls.scores * quality.to(cls.scores), cls.labels)
        return result

    def _seen_mask(self, vocab: Vocabulary) -> torch.Tensor:
        if vocab not in self._seen:
            self._seen[vocab] = pp.category_overlap(vocab, self._train_vocabulary).to(self.device)
        return self._seen[vocab]

def things_mask(vocab: Vocabulary, things: Things = None) -> torch.Tensor:
    """Bool [C]: which classes are things, from ``things`` (names or flags) or by default the COCO things."""
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
        raise ValueError(f"things names classes not in the vocabulary: {sorted(unknown)} "
                         f"(classes: {', '.join(vocab.names)})")
    return torch.tensor([n.lower() in names for n in vocab.names])


def check_tasks(tasks: Union[str, Sequence[str]]) -> tuple[str, ...]:
    """``tasks`` as a tuple; ValueError unless it is a non-empty subset of ``TASKS``."""
    tasks = (tasks,) if isinstance(tasks, str) else tuple(tasks)
    bad = [t for t in tasks if t not in TASKS]
    if bad or not tasks:
        raise ValueError(f"tasks must be a non-empty subset of {TASKS}, got {list(tasks)}")
    return tasks


def _as_mask_tensor(masks: Union[torch.Tensor, np.ndarray], size: tuple[int, int]) -> torch.Tensor:
    """Validated masks [N, H, W] of an image of ``size``: shape, finite values (the public boundary)."""
    if not isinstance(masks, torch.Tensor):
        array = np.asarray(masks)
        masks = torch.from_numpy(array if array.flags.writeable else array.copy())
    if masks.dim() != 3 or tuple(masks.shape[-2:]) != tuple(size):
        raise ValueError(f"masks must have shape [N, {size[0]}, {size[1]}] (the image size), got {list(masks.shape)}")
    if masks.is_floating_point() and masks.numel() and not bool(torch.isfinite(masks).all()):
        raise ValueError("masks contain NaN or infinite values")
    return masks


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

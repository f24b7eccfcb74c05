"""Predictor: open-vocabulary segmentation of any image with any vocabulary, in a few lines.

    p = Predictor.from_pretrained("fcclip-large")
    result = p.predict("photo.jpg", vocabulary="cat, sofa, window")
    result.semantic        # [H, W] class index per pixel
    result.segments        # panoptic segments: id, category_id, label, isthing, score, area
    result.timings         # seconds per stage of the call

Every image goes through one flow: prepare -> backbone features -> the mask source (the preset's decoder, or
proposals such as SAM's) -> the adapter's classification of its masks -> post-processing. Decoder sources also
give in-vocabulary class logits, which are ensembled with the adapter's; proposal masks are named by the adapter
alone. A predictor never changes after it is made: ``with_options`` / ``with_mask_source`` return new ones.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..constants import TASKS
from ..data.vocabularies import builtin_vocabulary
from ..images import ImageInput, to_rgb_tensor
from ..modeling.build import ArchitectureConfig, load_preset
from ..modeling.generators.source import MaskOutput, MaskProposer, MaskSource, ProposalSource, SourceInput
from ..modeling.load import ADAPTER_PARTS, load_model
from ..modeling.model import MaskAdapterModel
from ..modeling.text import TextClassifier, resolve_text_cache_dir
from ..precision import autocast, resolve_precision
from ..presets import PresetConfig
from ..vocabulary import Vocabulary, VocabularyLike
from . import postprocess as pp
from .banded import postprocess_banded
from .classify import classify_image_masks
from .instances import Instances
from .options import InferenceOptions, check_tasks
from .preprocess import fit_masks, normalize, pad_batch, padded_size, resize_longest_side
from .results import MaskClassification, SegmentationResult
from .vocabularies import PreparedVocabulary, Things, things_key, things_mask

__all__ = ["Predictor", "SegmentationResult", "MaskClassification", "PreparedImage", "ImagePreparer",
           "PreparedVocabulary", "TASKS", "things_mask", "check_tasks"]

logger = logging.getLogger(__name__)
#: On a GPU, post-processing resizes all Q logits at once up to this size; larger outputs are banded on the CPU.
_GPU_FULL_BYTES = 4 * 2**30
#: Prepared vocabularies a predictor (and its with_options copies) keeps, most recently used first.
_VOCABULARY_CACHE = 16
TextCache = Union[str, os.PathLike, None, bool]
Vocab = Union[VocabularyLike, PreparedVocabulary]
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


class _Timer:
    """Seconds per stage of one call (exact on CUDA with ``sync``: the device is waited for at each boundary)."""

    def __init__(self, device: torch.device, sync: bool) -> None:
        self.device, self.sync = device, sync and device.type == "cuda"
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if self.sync:
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        yield
        if self.sync:
            torch.cuda.synchronize(self.device)
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


class Predictor:
    """Runs a :class:`MaskAdapterModel` with a preset's constants and frozen :class:`InferenceOptions`.

    ``mask_source``: where masks come from (a :class:`~maskadapter.modeling.generators.source.MaskSource`, or any
    callable ``image [H, W, 3] uint8 -> (masks [N, H, W], scores [N])`` such as ``SamMaskGenerator``); default:
    the model's own decoder (none for an adapter-only model). ``mask_generator`` is the same argument's older name.
    ``text_cache_dir``: where text embeddings persist across runs - None (default): the user cache
    (``$MASKADAPTER_TEXT_CACHE`` or ``~/.cache/maskadapter/text``), a folder, or False for memory only.
    Option keywords (``precision=``, ``max_image_pixels=``, ...) may be given instead of ``options``.
    Immutable: setting an attribute is an error; ``with_options`` / ``with_mask_source`` make new predictors.
    """

    def __init__(
        self,
        model: MaskAdapterModel,
        preset: Union[str, PresetConfig],
        device: Union[str, torch.device] = "cpu",
        options: Optional[InferenceOptions] = None,
        text_cache_dir: TextCache = None,
        mask_source: Union[MaskSource, MaskProposer, None] = None,
        text_classifier: Optional[TextClassifier] = None,
        *,
        mask_generator: Union[MaskSource, MaskProposer, None] = None,
        **option_values: Any,
    ) -> None:
        self.preset = load_preset(preset)[0] if isinstance(preset, str) else preset
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.options = (options or InferenceOptions()).replace(**option_values)
        self.mask_source = _as_source(mask_source if mask_source is not None else mask_generator, model)
        self.text_classifier = text_classifier or TextClassifier(model.backbone,
                                                                 cache_dir=resolve_text_cache_dir(text_cache_dir))
        if self.text_classifier.cache_dir is not None:
            self.model.backbone.text_fingerprint()  # hash the weights now, with the load, not in the first request
        self.train_vocabulary = builtin_vocabulary(self.preset.train_vocabulary)
        # prepared vocabularies, shared by with_options copies (same model): a cache, not state of the predictor
        self._vocabularies: collections.OrderedDict = collections.OrderedDict()
        self._vocabularies_lock = threading.Lock()
        self._frozen = True

    def __setattr__(self, name: str, value: Any) -> None:
        if getattr(self, "_frozen", False):
            raise AttributeError(f"a Predictor is immutable (cannot set {name!r}): use with_options(...) or "
                                 "with_mask_source(...) for another one")
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"a Predictor is immutable (cannot delete {name!r})")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(cls, preset: Union[str, PresetConfig] = "fcclip-large", cache_dir: Optional[str] = None,
                        **kwargs: Any) -> "Predictor":
        """Download (once) and load the released weights of ``preset`` (a name or a preset JSON file)."""
        model, config = load_model(preset, cache_dir=cache_dir)
        return cls(model, config, **kwargs)

    @classmethod
    def from_checkpoint(cls, path: Union[str, os.PathLike], preset: Union[str, PresetConfig],
                        architecture: Optional[ArchitectureConfig] = None, **kwargs: Any) -> "Predictor":
        """Load an official-layout checkpoint (``.pth`` or safetensors) for ``preset`` (a preset name, a preset
        JSON file or a :class:`PresetConfig`); a checkpoint of another preset is refused with a message
        naming the preset it fits."""
        if path is None:
            raise ValueError("path is None: give a checkpoint file (from_pretrained downloads the released one)")
        model, config = load_model(preset, path, architecture=architecture)
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
        if path is None:
            raise ValueError("path is None: give the adapter checkpoint file")
        model, config = load_model(preset, path, parts=ADAPTER_PARTS, clip_weights=clip_weights,
                                   architecture=architecture)
        return cls(model, config, **kwargs)

    def with_options(self, options: Optional[InferenceOptions] = None, **changes: Any) -> "Predictor":
        """A predictor with other options that shares this one's model, text cache and mask source; this
        predictor is not changed."""
        return self._evolve(options=(options or self.options).replace(**changes))

    def with_mask_source(self, mask_source: Union[MaskSource, MaskProposer, None]) -> "Predictor":
        """A predictor sharing this one's model, text cache and options whose masks come from ``mask_source``
        (e.g. ``SamMaskGenerator``; None: the model's own decoder); this predictor is not changed."""
        return self._evolve(mask_source=_as_source(mask_source, self.model))

    def _evolve(self, **changes: Any) -> "Predictor":
        other = copy.copy(self)  # copies __dict__ without __setattr__
        for name, value in changes.items():
            object.__setattr__(other, name, value)
        return other

    # ------------------------------------------------------------------ properties
    @property
    def mask_generator(self) -> Optional[MaskSource]:
        """The mask source when it is not the model's own decoder (e.g. SAM), else None."""
        return None if self.mask_source is self.model.sem_seg_head else self.mask_source

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

    # ------------------------------------------------------------------ vocabularies and images
    def prepare_vocabulary(self, vocabulary: Vocab, things: Things = None) -> PreparedVocabulary:
        """``vocabulary`` ready for this model: coerced, text encoded [S, D], things decided (``things``: class
        names or one flag per class; default: classes sharing a synonym with a COCO thing class), seen classes
        marked. Prepared once per vocabulary and things (a small cache shared with ``with_options`` copies)."""
        if isinstance(vocabulary, PreparedVocabulary):
            if vocabulary.model_id != id(self.model):
                raise ValueError("this PreparedVocabulary was prepared for another model: prepare it with "
                                 "this predictor's prepare_vocabulary()")
            if things is not None:
                raise ValueError("things are part of a PreparedVocabulary: give them to prepare_vocabulary()")
            return vocabulary
        vocab = Vocabulary.coerce(vocabulary)
        key = (vocab, things_key(things))
        with self._vocabularies_lock:
            prepared = self._vocabularies.get(key)
            if prepared is not None:
                self._vocabularies.move_to_end(key)
                return prepared
        prepared = PreparedVocabulary.build(vocab, self.text_classifier, self.train_vocabulary, self.device,
                                            id(self.model), things)
        with self._vocabularies_lock:
            self._vocabularies[key] = prepared
            while len(self._vocabularies) > _VOCABULARY_CACHE:
                self._vocabularies.popitem(last=False)
        return prepared

    @property
    def preparer(self) -> ImagePreparer:
        """What :meth:`prepare` runs, as a picklable object for DataLoader worker processes."""
        keep_rgb = bool(self.mask_source is not None and self.mask_source.needs_rgb)
        return ImagePreparer(self.preset.test_size, self.options.max_image_pixels, keep_rgb)

    def prepare(self, image: ImageInput) -> PreparedImage:
        """Decode (size checked from the header), resize to the preset's test size and normalise one image."""
        return self.preparer(image)

    def padded_size(self, prepared: PreparedImage) -> tuple[int, int]:
        """The padded network input size of a prepared image: images with the same one batch like one by one."""
        return padded_size([prepared.size], self.preset.size_divisibility)

    # ------------------------------------------------------------------ public API
    @torch.no_grad()
    def predict(self, image: ImageInput, vocabulary: Vocab, tasks: Sequence[str] = TASKS,
                things: Things = None) -> SegmentationResult:
        """Segment ``image`` (path, PIL, HxWx3 uint8 array or [3, H, W] uint8 tensor) into ``vocabulary`` (or a
        :class:`PreparedVocabulary`).

        ``things`` marks which classes get one panoptic segment per instance (class names or a bool per
        class); by default a class is a thing when it shares a synonym with a COCO thing class.
        """
        timer = self._timer()
        with timer("preprocess"):
            prepared = self.prepare(image)
        return self._predict([prepared], vocabulary, tasks, things, timer)[0]

    @torch.no_grad()
    def predict_batch(self, images: Sequence[ImageInput], vocabulary: Vocab, tasks: Sequence[str] = TASKS,
                      things: Things = None) -> list[SegmentationResult]:
        """:meth:`predict` for several images in one forward pass (padded to a common size, as the official
        test pipeline pads a batch). For images that share their padded size (:meth:`padded_size`; group images
        by it), maps and masks equal one-by-one prediction except where the deciding logits are within float
        rounding of a tie or threshold, and scores agree to about 1e-4 relative (matrix kernels sum in another
        order for another batch size). Each result's ``timings`` are the batch's."""
        timer = self._timer()
        with timer("preprocess"):
            prepared = [self.prepare(image) for image in images]
        return self._predict(prepared, vocabulary, tasks, things, timer)

    @torch.no_grad()
    def predict_prepared(self, batch: Sequence[PreparedImage], vocabulary: Vocab, tasks: Sequence[str] = TASKS,
                         things: Things = None) -> list[SegmentationResult]:
        """Segment prepared images (:meth:`prepare`) in one forward pass; one result per image."""
        return self._predict(batch, vocabulary, tasks, things, self._timer())

    @torch.no_grad()
    def classify_masks(self, image: ImageInput, masks: Union[torch.Tensor, np.ndarray],
                       vocabulary: Vocab) -> MaskClassification:
        """Classify ``masks`` [N, H, W] (bool or 0-1 float, at the image's size) with the adapter alone."""
        timer = self._timer()
        with timer("text"):
            vocab = self.prepare_vocabulary(vocabulary)
        with timer("preprocess"):
            rgb = to_rgb_tensor(image, max_pixels=self.options.max_image_pixels)
            masks = _as_mask_tensor(masks, tuple(rgb.shape[-2:]))
        with timer("adapter"):
            if masks.shape[0]:
                logits = classify_image_masks(self.model, rgb, masks, vocab.text, vocab.num_synonyms,
                                              with_void=False, resize=self.preset.test_size,
                                              precision=self.options.precision).cpu()
            else:
                logits = torch.zeros((0, len(vocab)))
        with timer("postprocess"):
            result = _named_masks(vocab.vocabulary, masks, logits)
        result.timings = dict(timer.seconds)
        return result

    # ------------------------------------------------------------------ the flow
    def _timer(self) -> _Timer:
        return _Timer(self.device, self.options.sync_timings)

    def _predict(self, batch: Sequence[PreparedImage], vocabulary: Vocab, tasks: Sequence[str], things: Things,
                 timer: _Timer) -> list[SegmentationResult]:
        """prepare -> features -> mask source -> adapter -> post-processing, for a batch of prepared images."""
        tasks = check_tasks(tasks)
        with timer("text"):
            vocab = self.prepare_vocabulary(vocabulary, things)
        if self.mask_source is None:
            raise ValueError("this predictor has no mask generator (an adapter-only model): classify your own masks "
                             "with classify_masks() or prompts with PromptSegmenter, or give it a mask source "
                             "(with_mask_source(SamMaskGenerator(...)))")
        model = self.model
        with timer("preprocess"):
            images = pad_batch([p.tensor for p in batch], self.preset.size_divisibility).to(self.device)
        with autocast(self.options.precision, self.device):
            with timer("backbone"):
                features = model.dense_features(images)
            inputs = SourceInput(images, [p.size for p in batch], [p.input_size for p in batch], features,
                                 model.text_with_void(vocab.text), vocab.num_synonyms, [p.rgb for p in batch])
            with timer("generator"):
                out = self.mask_source.propose(inputs)
            with timer("adapter"):
                logits = self._classify_proposals(out, inputs, vocab)
        if out.class_logits is not None:
            results = self._finish_decoder(batch, out, logits, vocab, tasks, timer)
        else:
            results = [self._finish_proposals(out, i, logits[i], vocab, tasks, timer) for i in range(len(batch))]
        for result in results:
            result.timings = dict(timer.seconds)
        return results

    def _classify_proposals(self, out: MaskOutput, inputs: SourceInput, vocab: PreparedVocabulary
                            ) -> Union[torch.Tensor, list[torch.Tensor]]:
        """The adapter's logits of the source's masks: [B, Q, C+1] for a decoder (its masks binarised at the
        preset's threshold, void included), else per image [N_i, C] of full-size masks (no void)."""
        model = self.model
        if out.class_logits is not None:
            binary = out.mask_logits.sigmoid() > self.preset.mask_threshold
            return model.classify_masks(inputs.features, binary, vocab.text, vocab.num_synonyms, with_void=True)
        padded = tuple(inputs.images.shape[-2:])
        logits = []
        for i, masks in enumerate(out.mask_logits):
            if masks.shape[0] == 0:
                logits.append(torch.zeros((0, len(vocab))))
                continue
            fitted = fit_masks(_binary(masks).to(self.device), inputs.sizes[i], padded)
            features = {k: v[i:i + 1] for k, v in inputs.features.items()}
            logits.append(model.classify_masks(features, fitted, vocab.text, vocab.num_synonyms,
                                               with_void=False)[0].cpu())
        return logits

    def _finish_decoder(self, batch: Sequence[PreparedImage], out: MaskOutput, adapter_logits: torch.Tensor,
                        vocab: PreparedVocabulary, tasks: tuple[str, ...], timer: _Timer) -> list[SegmentationResult]:
        """Ensemble the decoder's and the adapter's class logits, then semantic / panoptic / instance outputs."""
        mask_cls = pp.geometric_ensemble(out.class_logits.float(), adapter_logits, vocab.seen,
                                         self.preset.alpha, self.preset.beta)
        mask_pred = F.interpolate(out.mask_logits.float(), size=_padded(batch, self.preset.size_divisibility),
                                  mode="bilinear", align_corners=False)
        results = []
        for i, prepared in enumerate(batch):
            with timer("postprocess"):
                result = self._postprocess(vocab, tasks, mask_cls[i], mask_pred[i], prepared.size,
                                           self._output_size(prepared.input_size))
            result.input_size = prepared.input_size
            results.append(result)
        return results

    def _finish_proposals(self, out: MaskOutput, i: int, logits: torch.Tensor, vocab: PreparedVocabulary,
                          tasks: tuple[str, ...], timer: _Timer) -> SegmentationResult:
        """Full-size proposal masks named by the adapter: painted largest first, one segment / instance each."""
        masks = _binary(out.mask_logits[i]).cpu()
        with timer("postprocess"):
            cls = _named_masks(vocab.vocabulary, masks, logits)
        H, W = int(masks.shape[-2]), int(masks.shape[-1])
        result = SegmentationResult(vocab.vocabulary, (H, W), semantic=cls.semantic, input_size=(H, W))
        if "panoptic" in tasks:
            result.panoptic, result.segments = _segments_from_masks(masks, cls, vocab.vocabulary)
        if "instance" in tasks:
            quality = out.scores[i] if out.scores is not None else torch.ones(masks.shape[0])
            result.instances = Instances.from_masks(masks, cls.scores * quality.to(cls.scores), cls.labels)
        return result

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

    def _postprocess(self, vocab: PreparedVocabulary, tasks: tuple[str, ...], mask_cls: torch.Tensor,
                     mask_pred: torch.Tensor, size: tuple[int, int], out_size: tuple[int, int]
                     ) -> SegmentationResult:
        """Semantic / panoptic / instance outputs at ``out_size`` from [Q, C+1] log-probs and [Q, H, W] logits,
        band by band (decisions of resizing all Q logits at once up to float-rounding near-ties, in memory
        bounded by the band budget). On a GPU the full-tensor path runs, unless the Q resized logits would
        exceed ``_GPU_FULL_BYTES``; those go to the CPU and are banded there."""
        full_bytes = mask_pred.shape[0] * out_size[0] * out_size[1] * 4
        if mask_pred.device.type != "cpu" and full_bytes > _GPU_FULL_BYTES:
            mask_cls, mask_pred = mask_cls.float().cpu(), mask_pred.float().cpu()
        out = postprocess_banded(mask_cls, mask_pred, size, out_size, tasks, vocab.is_thing,
                                 before=self.postprocess_before_inference,
                                 object_mask_threshold=self.preset.object_mask_threshold,
                                 overlap_threshold=self.preset.overlap_threshold,
                                 top_k=self.preset.detections_per_image,
                                 band_bytes=self.options.band_mb * 2**20)
        segments = [{**s, "label": vocab.names[s["category_id"]]} for s in out.segments]
        return SegmentationResult(vocab.vocabulary, out_size, semantic=out.semantic, panoptic=out.panoptic,
                                  segments=segments, instances=out.instances)


def _as_source(source: Union[MaskSource, MaskProposer, None], model: MaskAdapterModel) -> Optional[MaskSource]:
    """``source`` as a MaskSource (a bare proposer callable is wrapped); None: the model's decoder, if any."""
    if source is None:
        return model.sem_seg_head
    if hasattr(source, "propose") and hasattr(source, "needs_rgb"):
        return source
    if callable(source):
        return ProposalSource(source)
    raise TypeError(f"mask_source must be a MaskSource (needs_rgb, propose) or a callable image -> (masks, "
                    f"scores), got {type(source).__name__}")


def _padded(batch: Sequence[PreparedImage], divisor: int) -> tuple[int, int]:
    return padded_size([p.size for p in batch], divisor)


def _binary(masks: torch.Tensor) -> torch.Tensor:
    """Proposal masks [N, H, W] as bool: kept as they are when bool, else where the logit is > 0."""
    return masks if masks.dtype == torch.bool else masks > 0


def _named_masks(vocab: Vocabulary, masks: torch.Tensor, logits: torch.Tensor) -> MaskClassification:
    """Labels, scores and the painted label map of ``masks`` [N, H, W] from the adapter's ``logits`` [N, C]."""
    probs = logits.softmax(-1)
    scores, labels = probs.max(-1) if logits.numel() else (probs.new_zeros(0), probs.new_zeros(0).long())
    semantic = pp.paint_masks(masks.bool().cpu(), labels)
    return MaskClassification(vocab, logits, labels, scores, semantic)


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

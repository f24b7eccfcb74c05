"""Ground-truth-mask mode: one mask per class present in a label map, classified by the adapter.

This is the paper's Table 3 "upper bound" and the official stage-1 evaluation (the ``MASK_Adapter``
meta-architecture): the masks are perfect, so the result measures the adapter's classification alone.

The official evaluation turns semantic, panoptic and instance output on, with rules of its own:

* class probabilities are ``softmax(logits)`` over the C classes and void, and every post-processing step
  applies its usual softmax to them again (so semantic and panoptic scores are softmaxed twice);
* the masks are the 0/1 ground-truth masks themselves: no sigmoid;
* panoptic: the usual rules (``panoptic_inference``) on those probabilities and masks, overlap threshold 0.8,
  object threshold 0.0;
* instance: score ``sigmoid(probability)`` (not a softmax) for the best ``top_k`` (mask, class) pairs, times
  the mean of the mask inside ``mask > 0.45``; thing classes only.

Deviation kept from the rest of the package: the masks are padded exactly like the image, so they stay on
their pixels (the official code stretches them to the padded size, up to 31 pixels).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
import torch

from ..constants import TASKS
from ..data.transforms import label_map_to_masks
from ..images import ImageInput, to_rgb_tensor
from ..modeling.model import MaskAdapterModel
from ..modeling.text import TextClassifier
from ..vocabulary import Vocabulary, VocabularyLike
from . import postprocess as pp
from .classify import classify_image_masks
from .instances import Instances

__all__ = ["GroundTruthResult", "classify_ground_truth", "ground_truth_panoptic", "ground_truth_instances",
           "GT_OVERLAP_THRESHOLD", "GT_OBJECT_MASK_THRESHOLD", "GT_MASK_THRESHOLD"]

#: The official ground-truth evaluation configs' ``OVERLAP_THRESHOLD`` / ``OBJECT_MASK_THRESHOLD`` and the
#: ``MASK_ADAPTER.MASK_THRESHOLD`` default that binarises instance masks.
GT_OVERLAP_THRESHOLD = 0.8
GT_OBJECT_MASK_THRESHOLD = 0.0
GT_MASK_THRESHOLD = 0.45


@dataclass
class GroundTruthResult:
    """Per-mask classification of ground-truth masks and the outputs it implies."""

    class_ids: torch.Tensor  #: [N] ground-truth class of each mask
    logits: torch.Tensor  #: [N, C+1] adapter logits, void last
    predicted: torch.Tensor  #: [N] predicted class (argmax over the C real classes)
    semantic: torch.Tensor  #: [H, W] predicted class per pixel, ``ignore_index`` where unlabelled
    panoptic: Optional[torch.Tensor] = None  #: [H, W] int32 segment ids (0 = none), official GT rules
    segments: Optional[list[dict]] = None  #: id, isthing, category_id, score, area
    instances: Optional[Instances] = None  #: RLE masks, scores [K], classes [K]

    @property
    def accuracy(self) -> float:
        """Fraction of masks whose predicted class is the ground-truth class (nan without masks)."""
        if self.class_ids.numel() == 0:
            return float("nan")
        return float((self.predicted == self.class_ids).float().mean())


def ground_truth_panoptic(probs: torch.Tensor, masks: torch.Tensor, is_thing: Sequence[bool],
                          overlap_threshold: float = GT_OVERLAP_THRESHOLD,
                          object_mask_threshold: float = GT_OBJECT_MASK_THRESHOLD) -> tuple[torch.Tensor, list[dict]]:
    """Official GT-mode panoptic output from class probabilities [N, C+1] and 0/1 masks [N, H, W]: the usual
    rules with a second softmax over ``probs`` and no sigmoid on the masks."""
    return pp.panoptic_inference(probs, masks.float(), is_thing, object_mask_threshold, overlap_threshold,
                                 masks_are_probabilities=True)


def ground_truth_instances(probs: torch.Tensor, masks: torch.Tensor, is_thing: Optional[Sequence[bool]],
                           top_k: int = 100, mask_threshold: float = GT_MASK_THRESHOLD) -> Instances:
    """Official GT-mode instances from class probabilities [N, C+1] and 0/1 masks [N, H, W]: the ``top_k``
    (mask, class) pairs by ``sigmoid(probability)``, masks ``mask > mask_threshold``, score times the mean of the
    mask inside it; only thing classes when ``is_thing`` is given."""
    scores, classes, queries = pp.top_k_detections(probs[:, :-1].float().sigmoid(), is_thing, top_k)
    values = masks[queries].float()
    binary = values > mask_threshold
    flat = binary.flatten(1).float()
    mask_score = (values.flatten(1) * flat).sum(1) / (flat.sum(1) + 1e-6)
    return Instances.from_masks(binary, scores * mask_score, classes)


@torch.no_grad()
def classify_ground_truth(
    model: MaskAdapterModel,
    image: ImageInput,
    label_map: Union[torch.Tensor, np.ndarray],
    vocabulary: VocabularyLike,
    text_classifier: Optional[TextClassifier] = None,
    ignore_index: int = 255,
    precision: str = "fp32",
    tasks: Sequence[str] = ("semantic",),
    is_thing: Optional[Sequence[bool]] = None,
    resize: Optional[int] = None,
    top_k: int = 100,
) -> GroundTruthResult:
    """Classify one mask per labelled class of ``label_map`` [H, W] (ids index ``vocabulary``) in ``image``.

    ``tasks``: ``semantic`` always; ``panoptic`` and ``instance`` (official GT rules, see the module doc)
    need ``is_thing`` [C]. ``resize``: long side of the network input, None for the native size. The
    adapter (with MAFT+'s CDT when the model has one) runs through :meth:`MaskAdapterModel.classify_masks`.
    """
    vocab = Vocabulary.coerce(vocabulary)
    bad = [t for t in tasks if t not in TASKS]
    if bad:
        raise ValueError(f"tasks must be a subset of {TASKS}, got {list(tasks)}")
    if ("panoptic" in tasks or "instance" in tasks) and is_thing is None:
        raise ValueError("panoptic and instance output in ground-truth mode need is_thing (one flag per class)")
    rgb = to_rgb_tensor(image)
    labels = label_map if isinstance(label_map, torch.Tensor) else torch.as_tensor(np.asarray(label_map))
    if tuple(labels.shape) != tuple(rgb.shape[-2:]):
        raise ValueError(f"label_map size {tuple(labels.shape)} differs from the image size {tuple(rgb.shape[-2:])}")
    masks, class_ids = label_map_to_masks(labels, len(vocab), ignore_index)
    classifier = text_classifier or TextClassifier(model.backbone)
    text = classifier(vocab)
    if masks.shape[0]:
        logits = classify_image_masks(model, rgb, masks, text, vocab.num_synonyms, with_void=True, resize=resize,
                                      precision=precision).cpu()
    else:  # nothing labelled: no model call
        logits = torch.zeros((0, len(vocab) + 1))
    predicted = logits[:, :-1].argmax(dim=-1)
    semantic = pp.paint_masks(masks, predicted, background=ignore_index)
    result = GroundTruthResult(class_ids, logits, predicted, semantic)
    probs = logits.softmax(-1)
    if "panoptic" in tasks:
        result.panoptic, result.segments = ground_truth_panoptic(probs, masks, is_thing)
    if "instance" in tasks:
        result.instances = ground_truth_instances(probs, masks, is_thing, top_k)
    return result

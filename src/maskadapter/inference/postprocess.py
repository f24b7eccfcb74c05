"""Inference post-processing as pure functions (the official FC-CLIP / MAFT+ eval branch): thresholds as arguments.

* :func:`category_overlap` - the "seen" mask of the geometric ensemble.
* :func:`geometric_ensemble` - in-vocabulary x out-of-vocabulary class probabilities -> ``log(p + 1e-8)``.
* :func:`sem_seg_postprocess` - crop the padding away and resize to the output size (detectron2's function).
* :func:`semantic_inference`, :func:`panoptic_inference`, :func:`instance_inference` - per image.

FC-CLIP vs MAFT+ (``FCCLIP.forward`` / ``MAFT_Plus.forward`` eval branches of hustvl/MaskAdapter): the
ensembles compute the same numbers. Both drop the void column from the in- and out-of-vocabulary logits,
softmax each, combine with the same seen/unseen exponents, take the void probability from the in-vocabulary
head and renormalise with a second softmax. MAFT+ only orders the statements differently (the in-vocab
softmax comes before the out-of-vocab void slice). Its comment "in_vocab is not used !!!" is stale: the
in-vocab probabilities are used, and with beta = 1 they only drop out for unseen classes. So no variant
parameter is needed. The post-processing functions are line-for-line the same in both files.
Differences that belong to the callers, not here:
* MAFT+ produces panoptic/instance output only on ``openvocab_ade20k_panoptic_val``.
* The presets use different thresholds (overlap 0.8 for FC-CLIP, 0.7 for MAFT+).
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

from ..vocabulary import Vocabulary

__all__ = [
    "category_overlap", "geometric_ensemble", "sem_seg_postprocess", "semantic_inference",
    "panoptic_inference", "decide_segments", "instance_inference", "top_k_detections", "paint_masks",
    "check_cls_and_masks", "as_bool_list",
]

BoolLike = Union[torch.Tensor, Sequence[bool]]


def category_overlap(test: Vocabulary, train: Vocabulary) -> torch.Tensor:
    """Seen mask, bool [C_test]: True where any synonym of a test class is also a synonym of some training class.

    The comparison is an exact, case-sensitive string match, as in the official
    ``set(train).isdisjoint(set(test))``. The official code normalises only when splitting a class name
    (``', '`` -> ``','``, then split on ``','``). A :class:`Vocabulary` already holds split synonyms, so
    nothing else is normalised here: ``"Sofa"`` does not match ``"sofa"``.
    """
    if not isinstance(test, Vocabulary) or not isinstance(train, Vocabulary):
        raise ValueError("test and train must be Vocabulary objects "
                         f"(got {type(test).__name__} and {type(train).__name__})")
    train_synonyms = set(train.synonyms)
    return torch.tensor([not train_synonyms.isdisjoint(syns) for syns in test.classes], dtype=torch.bool)


def geometric_ensemble(
    in_vocab_logits: Optional[torch.Tensor],
    out_vocab_logits: torch.Tensor,
    seen: torch.Tensor,
    alpha: float,
    beta: float,
) -> torch.Tensor:
    """Ensembled class log-probabilities [B, Q, C+1] (void last) from logits [B, Q, C+1] and ``seen`` [C].

    This follows the official eval branch. Any leading dims are accepted, as long as
    both logit tensors have the same shape. ``p_in`` and ``p_out`` are the softmaxes of the two heads
    without their void column. Seen classes use ``p_in^(1-alpha) * p_out^alpha`` and unseen classes use
    the same with ``beta``. The log of that is renormalised by a second softmax and scaled by
    ``1 - void``, where ``void`` is the in-vocab head's void probability (the out-of-vocab void logit is
    discarded). The result is ``log(probs + 1e-8)``, which the post-processing softmaxes again.

    The official code mixes the two branches as ``log_seen * seen + log_unseen * (1 - seen)``, which gives
    NaN when the branch not taken is ``-inf`` (a probability that underflowed to 0). Here the branch is
    selected with ``torch.where``: the official expression's value wherever it is finite (the same operations in
    the same order, so the same bits on the same machine and thread count), with no NaN.

    ``in_vocab_logits=None`` covers mask sources without an in-vocab head (SAM, user or ground-truth masks).
    There is no ensemble and no void. The result is ``log_softmax`` over the C real classes, shape
    [..., C]. ``out_vocab_logits`` may then have C+1 columns (the void column is dropped) or C columns.
    """
    if not isinstance(out_vocab_logits, torch.Tensor) or out_vocab_logits.dim() < 1:
        raise ValueError("out_vocab_logits must be a tensor [B, Q, C+1]")
    C = _check_seen(seen)
    if not out_vocab_logits.is_floating_point():
        raise ValueError(f"out_vocab_logits must be floating point, got {out_vocab_logits.dtype}")
    if in_vocab_logits is None:
        if out_vocab_logits.shape[-1] not in (C, C + 1):
            raise ValueError(f"out_vocab_logits must have {C} or {C + 1} columns (seen has {C} classes), "
                             f"got shape {list(out_vocab_logits.shape)}")
        return F.log_softmax(out_vocab_logits[..., :C], dim=-1)
    if not isinstance(in_vocab_logits, torch.Tensor) or not in_vocab_logits.is_floating_point():
        raise ValueError("in_vocab_logits must be a floating-point tensor [B, Q, C+1] or None")
    if out_vocab_logits.shape[-1] != C + 1:
        raise ValueError(f"out_vocab_logits must have C+1 = {C + 1} columns (void last), "
                         f"got shape {list(out_vocab_logits.shape)}")
    if in_vocab_logits.shape != out_vocab_logits.shape:
        raise ValueError(f"in_vocab_logits shape {list(in_vocab_logits.shape)} differs from "
                         f"out_vocab_logits shape {list(out_vocab_logits.shape)}")
    if in_vocab_logits.device != out_vocab_logits.device:
        raise ValueError(f"in_vocab_logits is on {in_vocab_logits.device}, "
                         f"out_vocab_logits on {out_vocab_logits.device}")
    for name, value in (("alpha", alpha), ("beta", beta)):
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    alpha, beta = float(alpha), float(beta)

    p_in = in_vocab_logits[..., :-1].softmax(-1)
    p_out = out_vocab_logits[..., :-1].softmax(-1)
    # Keep the official operation order (power, product, log): the official code on the same machine gives the
    # same bits.
    log_seen = (p_in ** (1 - alpha) * p_out ** alpha).log()
    log_unseen = (p_in ** (1 - beta) * p_out ** beta).log()
    cls_results = torch.where(seen.to(device=p_in.device, dtype=torch.bool), log_seen, log_unseen)
    void = F.softmax(in_vocab_logits, dim=-1)[..., -1:]
    probs = torch.cat([cls_results.softmax(-1) * (1.0 - void), void], dim=-1)
    return torch.log(probs + 1e-8)


def sem_seg_postprocess(
    result: torch.Tensor, image_size: tuple[int, int], output_height: int, output_width: int
) -> torch.Tensor:
    """Crop ``result`` [..., H, W] to ``image_size`` (h, w), then resize bilinearly -> [..., out_h, out_w].

    This is detectron2's ``sem_seg_postprocess``: crop ``[..., :h, :w]`` (drop the bottom/right padding),
    then bilinear interpolation with ``align_corners=False`` and no antialias. Each leading slice is
    resized on its own.
    """
    if not isinstance(result, torch.Tensor) or result.dim() < 2:
        raise ValueError("result must be a tensor with at least 2 dims [..., H, W]")
    if not result.is_floating_point():
        raise ValueError(f"result must be floating point (bilinear resize), got {result.dtype}")
    if len(image_size) != 2:
        raise ValueError(f"image_size must be (h, w), got {image_size!r}")
    h, w = int(image_size[0]), int(image_size[1])
    H, W = result.shape[-2:]
    if not (0 < h <= H and 0 < w <= W):
        raise ValueError(f"image_size {(h, w)} must be positive and fit in result's {H}x{W}")
    if int(output_height) <= 0 or int(output_width) <= 0:
        raise ValueError(f"output_height/output_width must be positive, got {output_height}x{output_width}")
    out_hw = (int(output_height), int(output_width))
    lead = result.shape[:-2]
    cropped = result[..., :h, :w]
    if cropped.numel() == 0:
        return result.new_zeros((*lead, *out_hw))
    resized = F.interpolate(cropped.reshape(1, -1, h, w), size=out_hw, mode="bilinear", align_corners=False)
    return resized.reshape(*lead, *out_hw)


def semantic_inference(mask_cls: torch.Tensor, mask_pred: torch.Tensor, has_void: bool = True) -> torch.Tensor:
    """Per-class score maps [C, H, W] from ``mask_cls`` [Q, C+1] (or [Q, C]) and mask logits ``mask_pred`` [Q, H, W].

    ``einsum("qc,qhw->chw", softmax(mask_cls)[:, :C], sigmoid(mask_pred))``. With ``has_void=True`` the last
    column is void: the softmax runs over all C+1 columns, then void is dropped. With ``has_void=False``
    (e.g. the log-probabilities from ``geometric_ensemble(None, ...)``) the softmax runs over the C columns.
    ``mask_cls`` is cast to ``mask_pred``'s dtype first, as the official code does, so the result has
    ``mask_pred``'s dtype.
    """
    check_cls_and_masks(mask_cls, mask_pred, has_void)
    probs = F.softmax(mask_cls.to(mask_pred.dtype), dim=-1)
    if has_void:
        probs = probs[:, :-1]
    return torch.einsum("qc,qhw->chw", probs, mask_pred.sigmoid())


def panoptic_inference(
    mask_cls: torch.Tensor,
    mask_pred: torch.Tensor,
    is_thing: BoolLike,
    object_mask_threshold: float = 0.0,
    overlap_threshold: float = 0.8,
    masks_are_probabilities: bool = False,
) -> tuple[torch.Tensor, list[dict]]:
    """Panoptic map int32 [H, W] (0 = none, ids from 1) + segment dicts from mask_cls [Q, C+1], mask_pred [Q, H, W].

    The official rules (``panoptic_inference`` in ``fcclip/fcclip.py`` and ``maft/maft_plus.py``):
    * A query is kept if its argmax label is not void and its score is strictly greater than
      ``object_mask_threshold`` (``>``).
    * Every pixel goes to the kept query with the largest ``score * sigmoid`` (argmax, first on ties).
    * A query's segment is the pixels it wins where its own ``sigmoid >= 0.5``.
    * The segment is kept if the won area is > 0, the ``sigmoid >= 0.5`` area is > 0, the segment is not
      empty, and ``won_area / sigmoid_area`` is not ``< overlap_threshold`` (a ratio equal to the
      threshold is kept). The won area may include pixels below 0.5.
    * Stuff segments (``is_thing[c]`` False) of one class share the id of the first one kept.
    Each dict has the official keys ``id``, ``isthing`` and ``category_id``. We add ``score``, the
    query's class probability (the max over merged stuff queries), and ``area``, the pixels in the map.
    ``masks_are_probabilities``: ``mask_pred`` holds 0-1 masks used as they are, without the sigmoid (the
    official ground-truth-mask evaluation).
    """
    C = check_cls_and_masks(mask_cls, mask_pred, has_void=True)
    thing = as_bool_list(is_thing, C, "is_thing")
    H, W = mask_pred.shape[-2:]
    scores, labels = F.softmax(mask_cls.to(mask_pred.dtype), dim=-1).max(-1)
    keep = labels.ne(C) & (scores > object_mask_threshold)
    cur_scores, cur_classes = scores[keep], labels[keep]
    cur_masks = mask_pred[keep] if masks_are_probabilities else mask_pred[keep].sigmoid()
    panoptic_seg = torch.zeros((H, W), dtype=torch.int32, device=mask_pred.device)
    K = cur_masks.shape[0]
    if K == 0:
        return panoptic_seg, []

    winner = (cur_scores.view(-1, 1, 1) * cur_masks).argmax(0)  # [H, W]
    confident = cur_masks >= 0.5
    in_segment = confident.gather(0, winner.unsqueeze(0))[0]  # the winner's own sigmoid >= 0.5
    # Counting all queries at once saves one device sync per query (the official loop has three).
    won_area = torch.bincount(winner.flatten(), minlength=K).tolist()
    original_area = confident.sum((1, 2)).tolist()
    seg_area = torch.bincount(winner[in_segment], minlength=K).tolist()

    segment_of_query, segments = decide_segments(cur_classes.tolist(), cur_scores.tolist(), won_area, original_area,
                                                 seg_area, thing, overlap_threshold)

    # Won regions are disjoint, so painting them all at once equals the official per-query painting.
    ids = torch.tensor(segment_of_query, dtype=torch.int32, device=mask_pred.device)[winner]
    panoptic_seg = torch.where(in_segment, ids, panoptic_seg)
    return panoptic_seg, segments


def decide_segments(classes: list[int], scores: list[float], won_area: list[int], original_area: list[int],
                    seg_area: list[int], thing: list[bool], overlap_threshold: float
                    ) -> tuple[list[int], list[dict]]:
    """The official keep / overlap / stuff-merge rules of panoptic inference on per-query areas: each kept query's
    segment id (0 = dropped) and the segment dicts (id, isthing, category_id, score, area)."""
    segment_of_query = [0] * len(classes)
    segments: list[dict] = []
    stuff_segment: dict[int, dict] = {}
    for k, (cls, score) in enumerate(zip(classes, scores)):
        if not (won_area[k] > 0 and original_area[k] > 0 and seg_area[k] > 0):
            continue
        if won_area[k] / original_area[k] < overlap_threshold:
            continue
        if not thing[cls] and cls in stuff_segment:
            merged = stuff_segment[cls]
            merged["score"] = max(merged["score"], score)
            merged["area"] += seg_area[k]
            segment_of_query[k] = merged["id"]
            continue
        info = {"id": len(segments) + 1, "isthing": thing[cls], "category_id": cls, "score": score,
                "area": seg_area[k]}
        segments.append(info)
        segment_of_query[k] = info["id"]
        if not thing[cls]:
            stuff_segment[cls] = info
    return segment_of_query, segments


def instance_inference(
    mask_cls: torch.Tensor, mask_pred: torch.Tensor, is_thing: Optional[BoolLike] = None, top_k: int = 100
) -> dict[str, torch.Tensor]:
    """Instances (masks bool [K, H, W], scores [K], classes [K]) from mask_cls [Q, C+1], mask logits [Q, H, W].

    As in the official code, the top ``top_k`` entries of ``softmax(mask_cls)[:, :C]`` over all Q*C
    (query, class) pairs are taken, so one query can yield several instances. When ``is_thing`` is given
    (the official code passes it when panoptic is on), only thing classes are kept. Each mask is
    ``mask_pred > 0``. Each score is multiplied by the mean sigmoid inside the mask,
    ``sum(sigmoid * mask) / (sum(mask) + 1e-6)``.
    Deviations: the official ``topk(..., sorted=False)`` leaves the order unspecified. Here results are
    sorted by class probability, descending (before rescoring; ties go in topk's order). ``top_k`` is
    clamped to Q*C, where the official topk would raise. Scores have ``mask_pred``'s dtype, and the mask
    mean is computed in at least float32 so that large fp16 masks cannot overflow.
    """
    check_cls_and_masks(mask_cls, mask_pred, has_void=True)
    probs = F.softmax(mask_cls.to(mask_pred.dtype), dim=-1)[:, :-1]
    scores, classes, queries = top_k_detections(probs, is_thing, top_k)
    logits = mask_pred[queries]
    masks = logits > 0
    acc = torch.promote_types(logits.dtype, torch.float32)
    flat = masks.flatten(1).to(acc)
    mask_score = (logits.sigmoid().flatten(1).to(acc) * flat).sum(1) / (flat.sum(1) + 1e-6)
    return {"masks": masks, "scores": (scores.to(acc) * mask_score).to(mask_pred.dtype), "classes": classes}


def top_k_detections(class_scores: torch.Tensor, is_thing: Optional[BoolLike], top_k: int
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``top_k`` best (query, class) pairs of ``class_scores`` [Q, C] over all Q*C, sorted descending
    (ties in topk's order), then only thing classes when ``is_thing`` [C] is given -> scores, classes, queries."""
    if int(top_k) < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    Q, C = class_scores.shape
    scores, flat_index = class_scores.flatten().topk(min(int(top_k), Q * C), sorted=True)
    classes, queries = flat_index % C, flat_index // C
    if is_thing is not None:
        thing = torch.tensor(as_bool_list(is_thing, C, "is_thing"), dtype=torch.bool, device=classes.device)
        keep = thing[classes]
        scores, classes, queries = scores[keep], classes[keep], queries[keep]
    return scores, classes, queries


def paint_masks(masks: torch.Tensor, labels: torch.Tensor, background: int = -1) -> torch.Tensor:
    """Label map [H, W] (int64) from possibly overlapping binary ``masks`` [N, H, W] and their ``labels`` [N].

    Masks are painted largest first, so where masks overlap the smaller (more specific) one wins, as SAM
    demos do; pixels no mask covers get ``background``.
    """
    if masks.dim() != 3:
        raise ValueError(f"masks must have shape [N, H, W], got {list(masks.shape)}")
    if labels.shape != masks.shape[:1]:
        raise ValueError(f"labels must have shape [{masks.shape[0]}], got {list(labels.shape)}")
    out = torch.full(masks.shape[1:], background, dtype=torch.long, device=masks.device)
    masks = masks.bool()
    order = torch.argsort(masks.flatten(1).sum(1), descending=True, stable=True)
    for i in order.tolist():
        out[masks[i]] = int(labels[i])
    return out


def _check_seen(seen: torch.Tensor) -> int:
    if not isinstance(seen, torch.Tensor) or seen.dim() != 1 or seen.numel() == 0:
        raise ValueError(f"seen must be a non-empty 1-D tensor [C], got {_describe(seen)}")
    if seen.dtype != torch.bool:
        if seen.is_floating_point() or seen.is_complex() or not bool(((seen == 0) | (seen == 1)).all()):
            raise ValueError(f"seen must be bool (or integer 0/1), got dtype {seen.dtype}")
    return int(seen.numel())


def check_cls_and_masks(mask_cls: torch.Tensor, mask_pred: torch.Tensor, has_void: bool) -> int:
    """Validate a per-image (mask_cls [Q, C(+1)], mask_pred [Q, H, W]) pair; return C."""
    if not isinstance(mask_cls, torch.Tensor) or mask_cls.dim() != 2:
        raise ValueError(f"mask_cls must have shape [Q, C+1], got {_describe(mask_cls)}")
    if not isinstance(mask_pred, torch.Tensor) or mask_pred.dim() != 3:
        raise ValueError(f"mask_pred must have shape [Q, H, W], got {_describe(mask_pred)}")
    if not mask_cls.is_floating_point():
        raise ValueError(f"mask_cls must be floating point, got {mask_cls.dtype}")
    if not mask_pred.is_floating_point():
        raise ValueError(f"mask_pred must hold floating-point mask logits, got {mask_pred.dtype}")
    if mask_cls.shape[0] != mask_pred.shape[0]:
        raise ValueError(f"mask_cls has {mask_cls.shape[0]} queries but mask_pred has {mask_pred.shape[0]}")
    if mask_cls.device != mask_pred.device:
        raise ValueError(f"mask_cls is on {mask_cls.device}, mask_pred on {mask_pred.device}")
    C = mask_cls.shape[1] - int(has_void)
    if C < 1:
        raise ValueError(f"mask_cls must have at least {1 + int(has_void)} columns "
                         f"({'C real classes + void' if has_void else 'C classes'}), got {mask_cls.shape[1]}")
    return C


def as_bool_list(flags: BoolLike, num_classes: int, name: str) -> list[bool]:
    """``flags`` ([C] tensor or sequence) as C Python bools; ValueError naming ``name`` otherwise."""
    if isinstance(flags, torch.Tensor):
        if flags.dim() != 1 or (flags.dtype != torch.bool and flags.is_floating_point()):
            raise ValueError(f"{name} must be a 1-D bool tensor [C], got {flags.dtype} {list(flags.shape)}")
        values = [bool(v) for v in flags.tolist()]
    else:
        values = [bool(v) for v in flags]
    if len(values) != num_classes:
        raise ValueError(f"{name} has {len(values)} entries but mask_cls has {num_classes} classes")
    return values


def _describe(x: object) -> str:
    return str(list(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__

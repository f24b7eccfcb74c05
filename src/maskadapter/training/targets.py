"""The masks and labels the adapter is trained on: stage-1 GT sampling and the stage-2 mask mix.

Instead of the official hard-coded slices (``16:24`` / ``24:``), a :class:`MaskBatch` names its groups
(``gt``, ``pred``, ``matched_gt``), so the consistency loss and any ablation address them by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Sequence

import torch
import torch.nn.functional as F

from ..data.train_datasets import sample_gt_masks
from .matcher import Matcher, gather_matches

__all__ = ["MaskBatch", "valid_masks", "pad_masks", "warmup_targets", "mixed_targets"]


@dataclass
class MaskBatch:
    """Adapter input ``masks`` [B, N, H, W] (bool or float), CE labels [B, N] (-1 = no CE) and named groups."""

    masks: torch.Tensor
    labels: torch.Tensor
    groups: dict[str, slice] = field(default_factory=dict)
    #: GT-mask pairs of the consistency loss: (predicted group, GT group) and which pairs are real [B, M]
    pairs: Optional[tuple[str, str]] = None
    pair_valid: Optional[torch.Tensor] = None

    def group(self, name: str) -> slice:
        """The mask slice of group ``name``; KeyError lists the groups."""
        if name not in self.groups:
            raise KeyError(f"no mask group {name!r}; groups are {sorted(self.groups)}")
        return self.groups[name]


def valid_masks(masks: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks [N, H, W] with at least one pixel (official ``area > 0``) and their labels."""
    if masks.dim() != 3 or labels.dim() != 1 or masks.shape[0] != labels.shape[0]:
        raise ValueError(f"masks [N, H, W] and labels [N] must agree, got {list(masks.shape)} and {list(labels.shape)}")
    keep = masks.flatten(1).any(dim=1) & (labels >= 0)
    return masks[keep], labels[keep]


def pad_masks(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Zero-pad masks [N, h, w] at the bottom/right to ``size`` (the padded image size)."""
    h, w = masks.shape[-2:]
    if (h, w) == tuple(size):
        return masks
    if h > size[0] or w > size[1]:
        raise ValueError(f"masks of {h}x{w} do not fit the padded image of {size[0]}x{size[1]}")
    return F.pad(masks, (0, size[1] - w, 0, size[0] - h))


def _sample(masks: torch.Tensor, labels: torch.Tensor, n: int, generator: torch.Generator
            ) -> tuple[torch.Tensor, torch.Tensor]:
    return sample_gt_masks(masks, labels, n, generator)


def warmup_targets(gt_masks: Sequence[torch.Tensor], gt_labels: Sequence[torch.Tensor], num_gt: int,
                   generators: Sequence[torch.Generator]) -> MaskBatch:
    """Stage 1: ``num_gt`` random valid GT masks per image (zero masks labelled -1 pad) -> MaskBatch [B, num_gt, H, W]."""
    if not (len(gt_masks) == len(gt_labels) == len(generators)):
        raise ValueError(f"got {len(gt_masks)} mask sets, {len(gt_labels)} label sets and {len(generators)} generators")
    masks, labels = [], []
    for m, lab, g in zip(gt_masks, gt_labels, generators):
        m, lab = valid_masks(m, lab)
        sm, sl = _sample(m, lab, num_gt, g)
        masks.append(sm.bool())
        labels.append(sl.long())
    return MaskBatch(torch.stack(masks), torch.stack(labels), {"gt": slice(0, num_gt)})


def mixed_targets(
    gt_masks: Sequence[torch.Tensor],
    gt_labels: Sequence[torch.Tensor],
    pred_logits: torch.Tensor,
    num_gt: int,
    matcher: Matcher,
    mask_threshold: float,
    generators: Sequence[torch.Generator],
    mode: Literal["mixed", "predicted"] = "mixed",
) -> MaskBatch:
    """Stage 2 (GT sampling, matching, mixing, padding) from valid GT masks [N_i, H, W] and generator mask logits [B, Q, h, w].

    Per image: ``num_gt`` sampled GT masks; predictions matched against *all* valid GTs resized (bilinear)
    to h x w; matched logits binarised with ``sigmoid > mask_threshold`` then upsampled bilinearly to
    H x W; their GT masks stay soft (bilinear down to h x w and back up). ``mode="mixed"`` gives groups
    ``gt``, ``pred``, ``matched_gt`` with labels on all three; ``mode="predicted"`` drops ``gt`` and keeps
    CE labels on ``pred`` only (``matched_gt`` serves the consistency loss).
    """
    B = pred_logits.shape[0]
    if len(gt_masks) != B or len(gt_labels) != B or len(generators) != B:
        raise ValueError(f"got {len(gt_masks)} mask sets, {len(gt_labels)} label sets and {len(generators)} "
                         f"generators for {B} images")
    H, W = (int(s) for s in gt_masks[0].shape[-2:]) if B else (0, 0)
    h, w = pred_logits.shape[-2:]
    M = matcher.max_matches
    sampled, sampled_labels, srcs, tgts, match_labels = [], [], [], [], []
    for b in range(B):
        m, lab = valid_masks(gt_masks[b], gt_labels[b])
        if tuple(m.shape[-2:]) != (H, W):
            raise ValueError(f"image {b}: masks are {tuple(m.shape[-2:])}, expected {(H, W)} like image 0")
        if mode == "mixed":
            sm, sl = _sample(m, lab, num_gt, generators[b])
            sampled.append(sm.bool())
            sampled_labels.append(sl.long())
        small = (F.interpolate(m[:, None].float(), size=(h, w), mode="bilinear", align_corners=False)[:, 0]
                 if m.shape[0] else m.new_zeros((0, h, w), dtype=torch.float32))
        match = matcher(pred_logits[b], small.to(pred_logits.device), generators[b])
        src, tgt, ml = gather_matches(pred_logits[b], small, lab, match, M)
        srcs.append(src)
        tgts.append(tgt)
        match_labels.append(ml)
    device = pred_logits.device
    src = torch.stack(srcs).float()
    binary = (src.sigmoid() > mask_threshold).float()
    pred_up = F.interpolate(binary, size=(H, W), mode="bilinear", align_corners=False)
    tgt_up = F.interpolate(torch.stack(tgts).to(device), size=(H, W), mode="bilinear", align_corners=False)
    ml = torch.stack(match_labels).to(device)
    pair_valid = ml >= 0
    if mode == "mixed":
        gt = torch.stack(sampled).to(device)
        masks = torch.cat([gt.float(), pred_up, tgt_up], dim=1)
        labels = torch.cat([torch.stack(sampled_labels).to(device), ml, ml], dim=1)
        groups = {"gt": slice(0, num_gt), "pred": slice(num_gt, num_gt + M),
                  "matched_gt": slice(num_gt + M, num_gt + 2 * M)}
    elif mode == "predicted":
        masks = torch.cat([pred_up, tgt_up], dim=1)
        labels = torch.cat([ml, torch.full_like(ml, -1)], dim=1)
        groups = {"pred": slice(0, M), "matched_gt": slice(M, 2 * M)}
    else:
        raise ValueError(f"mode must be 'mixed' or 'predicted', got {mode!r}")
    return MaskBatch(masks, labels, groups, pairs=("pred", "matched_gt"), pair_valid=pair_valid)

"""Matching predicted masks to ground-truth masks for mixed-mask training (the official IoU matcher, or Hungarian matching).

:class:`IoUMatcher` is the official ``match_via_iou``: binarise predictions (``sigmoid >= t``, 0.4 for
FC-CLIP, 0.5 for MAFT+) and ground truth (``> 0.5``), compute IoU, pick for every GT one random
prediction among those with IoU above the threshold (0.7), keep a random subset of at most
``max_matches`` (8) pairs. :class:`HungarianMatcher` is the one-to-one alternative of the paper's
Table 5 (``scipy.optimize.linear_sum_assignment`` on ``-IoU``). Both draw their random numbers from an
explicit ``torch.Generator`` so a run is reproducible whatever the process layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol

import torch

__all__ = ["MatchResult", "mask_iou", "IoUMatcher", "HungarianMatcher", "Matcher", "gather_matches", "build_matcher"]


@dataclass(frozen=True)
class MatchResult:
    """Matched pairs of one image: prediction index, GT index and their IoU (``[M]`` each, M <= max_matches)."""

    pred_index: torch.Tensor
    gt_index: torch.Tensor
    iou: torch.Tensor

    def __len__(self) -> int:
        return int(self.pred_index.numel())


class Matcher(Protocol):
    """Anything that matches one image's predictions to its GT masks."""

    max_matches: int

    def __call__(self, pred_logits: torch.Tensor, gt_masks: torch.Tensor,
                 generator: Optional[torch.Generator] = None) -> MatchResult: ...


def mask_iou(pred_logits: torch.Tensor, gt_masks: torch.Tensor, pred_threshold: float) -> torch.Tensor:
    """IoU [Q, N] of predictions ``pred_logits`` [Q, h, w] (``sigmoid >= pred_threshold``) and GT ``gt_masks``
    [N, h, w] (``> 0.5``), with the official ``+1e-6`` in the denominator."""
    if pred_logits.dim() != 3 or gt_masks.dim() != 3 or pred_logits.shape[-2:] != gt_masks.shape[-2:]:
        raise ValueError(f"pred_logits [Q, h, w] and gt_masks [N, h, w] must share h, w; got "
                         f"{list(pred_logits.shape)} and {list(gt_masks.shape)}")
    pred = (pred_logits.float().sigmoid() >= pred_threshold).float().flatten(1)
    gt = (gt_masks.float() > 0.5).float().flatten(1)
    inter = pred @ gt.t()
    union = pred.sum(1)[:, None] + gt.sum(1)[None, :] - inter
    return inter / (union + 1e-6)


def _check_args(threshold: float, pred_threshold: float, max_matches: int) -> None:
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
    if not 0.0 <= pred_threshold <= 1.0:
        raise ValueError(f"pred_threshold must lie in [0, 1], got {pred_threshold}")
    if not isinstance(max_matches, int) or max_matches < 0:
        raise ValueError(f"max_matches must be a non-negative int, got {max_matches!r}")


def _limit(pred: list[int], gt: list[int], ious: torch.Tensor, max_matches: int,
           generator: Optional[torch.Generator]) -> MatchResult:
    """Keep a random subset of at most ``max_matches`` pairs (in the drawn order, as the official code)."""
    if len(pred) > max_matches:
        keep = torch.randperm(len(pred), generator=generator)[:max_matches].tolist()
        pred, gt = [pred[i] for i in keep], [gt[i] for i in keep]
    p = torch.tensor(pred, dtype=torch.long)
    g = torch.tensor(gt, dtype=torch.long)
    return MatchResult(p, g, ious[p, g] if len(pred) else ious.new_zeros(0))


class _Matcher:
    """Shared settings: IoU ``threshold`` for a pair, ``pred_threshold`` binarising predicted masks, at most
    ``max_matches`` pairs per image."""

    def __init__(self, threshold: float, pred_threshold: float = 0.4, max_matches: int = 8) -> None:
        _check_args(threshold, pred_threshold, max_matches)
        self.threshold = threshold
        self.pred_threshold = pred_threshold
        self.max_matches = max_matches


class IoUMatcher(_Matcher):
    """Official matcher: for every GT, one random prediction with IoU > ``threshold``; at most ``max_matches`` pairs."""

    def __init__(self, threshold: float = 0.7, pred_threshold: float = 0.4, max_matches: int = 8) -> None:
        super().__init__(threshold, pred_threshold, max_matches)

    def __call__(self, pred_logits: torch.Tensor, gt_masks: torch.Tensor,
                 generator: Optional[torch.Generator] = None) -> MatchResult:
        """Match predictions ``pred_logits`` [Q, h, w] (logits) to ``gt_masks`` [N, h, w] (soft or binary)."""
        ious = mask_iou(pred_logits, gt_masks, self.pred_threshold).cpu()
        pred, gt = [], []
        for j in range(ious.shape[1]):
            candidates = (ious[:, j] > self.threshold).nonzero(as_tuple=True)[0]
            if candidates.numel():
                pick = int(torch.randint(0, candidates.numel(), (1,), generator=generator))
                pred.append(int(candidates[pick]))
                gt.append(j)
        return _limit(pred, gt, ious, self.max_matches, generator)


class HungarianMatcher(_Matcher):
    """One-to-one assignment maximising total IoU (Table 5 alternative); pairs with IoU <= ``threshold`` are dropped."""

    def __init__(self, threshold: float = 0.0, pred_threshold: float = 0.4, max_matches: int = 8) -> None:
        super().__init__(threshold, pred_threshold, max_matches)

    def __call__(self, pred_logits: torch.Tensor, gt_masks: torch.Tensor,
                 generator: Optional[torch.Generator] = None) -> MatchResult:
        """Match predictions ``pred_logits`` [Q, h, w] to ``gt_masks`` [N, h, w] one-to-one."""
        from scipy.optimize import linear_sum_assignment

        ious = mask_iou(pred_logits, gt_masks, self.pred_threshold).cpu()
        if ious.numel() == 0:
            return _limit([], [], ious, self.max_matches, generator)
        rows, cols = linear_sum_assignment(-ious.double().numpy())
        order = cols.argsort()  # GT order, like the IoU matcher
        pairs = [(int(rows[i]), int(cols[i])) for i in order if float(ious[rows[i], cols[i]]) > self.threshold]
        return _limit([p for p, _ in pairs], [g for _, g in pairs], ious, self.max_matches, generator)


def build_matcher(kind: str, threshold: float, pred_threshold: float, max_matches: int) -> Matcher:
    """``iou`` -> :class:`IoUMatcher`, ``hungarian`` -> :class:`HungarianMatcher`."""
    if kind == "iou":
        return IoUMatcher(threshold, pred_threshold, max_matches)
    if kind == "hungarian":
        return HungarianMatcher(threshold, pred_threshold, max_matches)
    raise ValueError(f"matcher must be 'iou' or 'hungarian', got {kind!r}")


def gather_matches(pred_logits: torch.Tensor, gt_masks: torch.Tensor, gt_labels: torch.Tensor,
                   match: MatchResult, max_matches: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Matched prediction logits [M', h, w], their GT masks [M', h, w] and labels [M'] with M' = ``max_matches``:
    pairs beyond the matches are zero masks (zero logits) labelled -1, as in the official code."""
    n = len(match)
    if n > max_matches:
        raise ValueError(f"{n} matches exceed max_matches={max_matches}")
    device = pred_logits.device
    src = pred_logits.new_zeros((max_matches, *pred_logits.shape[1:]))
    tgt = gt_masks.new_zeros((max_matches, *gt_masks.shape[1:]), dtype=torch.float32)
    labels = torch.full((max_matches,), -1, dtype=torch.long, device=device)
    if n:
        src[:n] = pred_logits[match.pred_index.to(device)]
        tgt[:n] = gt_masks[match.gt_index.to(gt_masks.device)].float()
        labels[:n] = gt_labels[match.gt_index.to(gt_labels.device)].to(device)
    return src, tgt, labels

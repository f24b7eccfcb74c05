"""Training losses: ``ce_weight x CE(logits, labels, ignore -1) + cos_weight x (1 - cos(pred, matched GT))``.

Each term is computed as a sum and a count so that, with several processes, it can be normalised by
the *global* count (all-reduced) and the result equals a single-process run over the same global batch.
With one process and the default normaliser this is exactly the official loss (2 x CE with ignore index -1, 5 x (1 - cos) in stage 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from .targets import MaskBatch

__all__ = ["classification_terms", "consistency_terms", "LossTerms", "MaskAdapterLoss"]


def classification_terms(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of CE over labelled masks and their count, from ``logits`` [B, N, C+1] and ``labels`` [B, N] (-1 ignored).

    With no labelled mask the sum is ``0 * logits.sum()`` (still attached to the graph, as the official code).
    """
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(f"logits [B, N, C] and labels [B, N] must agree, got {list(logits.shape)} and "
                         f"{list(labels.shape)}")
    valid = labels >= 0
    count = valid.sum()
    if not bool(valid.any()):
        return logits.float().sum() * 0.0, count
    if int(labels.max()) >= logits.shape[-1]:
        raise ValueError(f"label {int(labels.max())} out of range for {logits.shape[-1]} logits")
    total = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten().long(), ignore_index=-1, reduction="sum")
    return total, count


def consistency_terms(pred: torch.Tensor, target: torch.Tensor, detach_target: bool,
                      valid: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of ``1 - cos(pred, target)`` over pairs and their count, for embeddings [B, M, D].

    ``detach_target`` stops the gradient through ``target`` (official FC-CLIP: on, MAFT+: off). ``valid``
    [B, M] restricts the sum to real pairs; without it every pair counts (official: padded pairs included).
    """
    if pred.shape != target.shape or pred.dim() != 3:
        raise ValueError(f"pred and target must both be [B, M, D], got {list(pred.shape)} and {list(target.shape)}")
    if detach_target:
        target = target.detach()
    dist = 1.0 - F.cosine_similarity(pred.float(), target.float(), dim=-1)  # [B, M]
    if valid is None:
        return dist.sum(), torch.tensor(dist.numel(), device=dist.device)
    valid = valid.to(dist.device)
    return (dist * valid).sum(), valid.sum()


@dataclass
class LossTerms:
    """Un-normalised terms of one (local) batch: sums and counts."""

    ce_sum: torch.Tensor
    ce_count: torch.Tensor
    cos_sum: torch.Tensor
    cos_count: torch.Tensor


class MaskAdapterLoss:
    """The weighted CE + consistency loss over a :class:`MaskBatch`'s embeddings and logits."""

    def __init__(self, ce_weight: float = 2.0, cos_weight: float = 5.0, detach_target: bool = True,
                 include_padding: bool = True) -> None:
        if ce_weight < 0 or cos_weight < 0:
            raise ValueError(f"loss weights must be >= 0, got ce_weight={ce_weight}, cos_weight={cos_weight}")
        self.ce_weight = ce_weight
        self.cos_weight = cos_weight
        self.detach_target = detach_target
        self.include_padding = include_padding

    def terms(self, logits: torch.Tensor, embeddings: torch.Tensor, batch: MaskBatch) -> LossTerms:
        """Sums and counts of both terms; the consistency term is zero when the batch has no pairs."""
        ce_sum, ce_count = classification_terms(logits, batch.labels)
        if batch.pairs is None or self.cos_weight == 0:
            zero = embeddings.float().sum() * 0.0
            return LossTerms(ce_sum, ce_count, zero, torch.zeros((), dtype=torch.long, device=zero.device))
        a, b = (batch.group(name) for name in batch.pairs)
        valid = None if self.include_padding else batch.pair_valid
        cos_sum, cos_count = consistency_terms(embeddings[:, a], embeddings[:, b], self.detach_target, valid)
        return LossTerms(ce_sum, ce_count, cos_sum, cos_count)

    def combine(self, terms: LossTerms, ce_norm: Optional[float] = None, cos_norm: Optional[float] = None,
                scale: float = 1.0) -> dict[str, torch.Tensor]:
        """Weighted losses ``loss_ce``, ``loss_cosine`` and ``total``; each sum is divided by its normaliser
        (default: its own count, i.e. the official mean), floored at 1, then multiplied by ``scale``."""
        ce_n = max(float(terms.ce_count) if ce_norm is None else ce_norm, 1.0)
        cos_n = max(float(terms.cos_count) if cos_norm is None else cos_norm, 1.0)
        loss_ce = self.ce_weight * terms.ce_sum / ce_n * scale
        loss_cos = self.cos_weight * terms.cos_sum / cos_n * scale
        return {"loss_ce": loss_ce, "loss_cosine": loss_cos, "total": loss_ce + loss_cos}

    def __call__(self, logits: torch.Tensor, embeddings: torch.Tensor, batch: MaskBatch) -> dict[str, torch.Tensor]:
        """Official (single-process) losses of one batch: weighted means."""
        return self.combine(self.terms(logits, embeddings, batch))

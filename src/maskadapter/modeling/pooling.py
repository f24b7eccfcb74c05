"""From masks or activation maps to mask embeddings: the one home of every pooling used in the project.

* :func:`activation_pool` + :func:`mask_embeddings` - Mask-Adapter: sigmoid-normalised activation maps pool the raw CLIP features.
* :func:`mask_pool` - FC-CLIP's mask pooling, the paper's Table 3 baseline.
* :func:`mask_crop_embeddings` - crop each mask's box, blank the background, run CLIP on it (baseline).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

__all__ = ["activation_pool", "mask_embeddings", "mask_pool", "mask_crop_embeddings"]

Projector = Callable[[torch.Tensor], torch.Tensor]


def activation_pool(maps: torch.Tensor, raw_dense: torch.Tensor) -> torch.Tensor:
    """Pool ``raw_dense`` [B, Cv, h, w] with each activation map of ``maps`` [B, M, h', w'] -> [B, M, Cv].

    Each map becomes spatial weights ``softmax(logsigmoid(map))`` = ``sigmoid(map) / sum(sigmoid(map))``
    over the whole image; maps of another size are first resized bilinearly to h x w.
    """
    _check_4d(maps, "maps")
    _check_4d(raw_dense, "raw_dense")
    if maps.shape[0] != raw_dense.shape[0]:
        raise ValueError(f"batch sizes differ: maps has {maps.shape[0]}, raw_dense has {raw_dense.shape[0]}")
    B, Cv, h, w = raw_dense.shape
    M = maps.shape[1]
    if M == 0:
        return raw_dense.new_zeros((B, 0, Cv))
    if maps.shape[-2:] != raw_dense.shape[-2:]:
        maps = F.interpolate(maps, size=(h, w), mode="bilinear", align_corners=False)
    weights = F.softmax(F.logsigmoid(maps).reshape(B, M, h * w), dim=-1)
    return torch.bmm(weights, raw_dense.reshape(B, Cv, h * w).transpose(1, 2).to(weights.dtype))


def mask_embeddings(pooled: torch.Tensor, project: Projector, num_maps: int) -> torch.Tensor:
    """Mask embeddings [B, N, D] from K-map pooled vectors ``pooled`` [B, N*K, Cv]: project each, mean over K."""
    if pooled.dim() != 3 or pooled.shape[1] % num_maps:
        raise ValueError(f"pooled must have shape [B, N*{num_maps}, Cv], got {list(pooled.shape)}")
    B, NK, _ = pooled.shape
    emb = project(pooled)  # [B, N*K, D]
    # The mean over the K maps is taken after projection and before any normalisation, as in the official code.
    return emb.reshape(B, NK // num_maps, num_maps, emb.shape[-1]).mean(dim=2)


def mask_pool(raw_dense: torch.Tensor, masks: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """FC-CLIP mask pooling: mean of ``raw_dense`` [B, Cv, h, w] inside each mask of ``masks`` [B, N, H, W] -> [B, N, Cv].

    ``masks`` are resized bilinearly to h x w and kept where ``> threshold``: pass mask logits with the
    default 0 (FC-CLIP), or binary / probability masks with 0.5. An empty mask pools to zeros.
    """
    _check_4d(raw_dense, "raw_dense")
    _check_4d(masks, "masks")
    if masks.shape[0] != raw_dense.shape[0]:
        raise ValueError(f"batch sizes differ: masks has {masks.shape[0]}, raw_dense has {raw_dense.shape[0]}")
    m = masks.to(raw_dense.dtype)
    if m.shape[-2:] != raw_dense.shape[-2:]:
        m = F.interpolate(m, size=raw_dense.shape[-2:], mode="bilinear", align_corners=False)
    m = (m > threshold).to(raw_dense.dtype)
    denom = m.sum(dim=(-1, -2), keepdim=True) + 1e-8
    return torch.einsum("bchw,bqhw->bqc", raw_dense, m / denom)


def mask_crop_embeddings(
    images: torch.Tensor,
    masks: torch.Tensor,
    encode_image: Projector,
    crop_size: int = 224,
    blank_background: bool = True,
    batch_size: int = 32,
) -> torch.Tensor:
    """Mask-cropping baseline: CLIP embedding [B, N, D] of each mask's bounding box in ``images`` [B, 3, H, W].

    ``images`` are normalised (so 0 is the mean colour); ``masks`` [B, N, H, W] are binary at image
    resolution. Pixels outside the mask are set to 0 when ``blank_background``; each crop is resized
    to ``crop_size``. An empty mask gives a zero embedding.
    """
    _check_4d(images, "images")
    _check_4d(masks, "masks")
    if masks.shape[0] != images.shape[0] or masks.shape[-2:] != images.shape[-2:]:
        raise ValueError(f"masks {list(masks.shape)} must match images {list(images.shape)} in batch and size")
    B, N = masks.shape[:2]
    crops, owners = [], []
    for b in range(B):
        for n in range(N):
            m = masks[b, n] > 0.5
            if not bool(m.any()):
                continue
            ys, xs = torch.nonzero(m, as_tuple=True)
            y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
            crop = images[b, :, y0:y1, x0:x1]
            if blank_background:
                crop = crop * m[y0:y1, x0:x1].to(crop.dtype)
            crops.append(F.interpolate(crop[None], size=(crop_size, crop_size), mode="bilinear",
                                       align_corners=False)[0])
            owners.append(b * N + n)
    out = None
    for start in range(0, len(crops), batch_size):
        emb = encode_image(torch.stack(crops[start:start + batch_size]))
        if out is None:
            out = emb.new_zeros((B * N, emb.shape[-1]))
        out[owners[start:start + batch_size]] = emb
    if out is None:  # no non-empty mask: the embedding width is only known from the encoder
        probe = encode_image(images.new_zeros((1, 3, crop_size, crop_size)))
        out = probe.new_zeros((B * N, probe.shape[-1]))
    return out.reshape(B, N, -1)


def _check_4d(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must have rank 4, got rank {x.dim()} with shape {list(x.shape)}")

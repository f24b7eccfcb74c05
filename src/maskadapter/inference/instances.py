"""Instance predictions stored as COCO run-length encodings: K masks of a 50-megapixel image cost kilobytes,
not K x H x W bytes.

:class:`Instances` is what :attr:`SegmentationResult.instances` holds. Its RLEs are exactly pycocotools'
(column-major, ``counts`` as an ASCII string), so the JSON writers, the evaluation cache and the COCO exports
use them as they are; ``instances.masks`` decodes them on demand. ``instances["masks"]``, ``["scores"]`` and
``["classes"]`` also work, as with the dictionary of earlier versions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import torch
from pycocotools import mask as mask_util

__all__ = ["Instances", "encode_rle", "decode_rle", "RunLengths"]


def encode_rle(masks: "torch.Tensor | np.ndarray") -> list[dict]:
    """COCO RLEs (``{"size": [H, W], "counts": str}``) of binary ``masks`` [K, H, W]."""

    array = masks.cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    if array.ndim != 3:
        raise ValueError(f"masks must have shape [K, H, W], got {list(array.shape)}")
    if array.shape[0] == 0:
        return []
    encoded = mask_util.encode(np.asfortranarray(array.astype(np.uint8).transpose(1, 2, 0)))
    return [{"size": [int(s) for s in r["size"]], "counts": r["counts"].decode("ascii")} for r in encoded]


def decode_rle(rles: Sequence[dict], size: tuple[int, int]) -> torch.Tensor:
    """Binary masks bool [K, H, W] of COCO RLEs (``counts`` as str or bytes)."""

    if not rles:
        return torch.zeros((0, *size), dtype=torch.bool)
    coded = [dict(r, counts=r["counts"].encode("ascii") if isinstance(r["counts"], str) else r["counts"])
             for r in rles]
    return torch.from_numpy(np.ascontiguousarray(mask_util.decode(coded).transpose(2, 0, 1))).bool()


@dataclass(repr=False)
class Instances:
    """K instances of an image of ``size`` (H, W): COCO RLE masks, scores [K] and class indices [K]."""

    size: tuple[int, int]
    scores: torch.Tensor
    classes: torch.Tensor
    rles: list[dict]
    _masks: Optional[torch.Tensor] = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not (len(self.rles) == len(self.scores) == len(self.classes)):
            raise ValueError(f"instances need as many masks ({len(self.rles)}), scores ({len(self.scores)}) and "
                             f"classes ({len(self.classes)})")

    @classmethod
    def from_masks(cls, masks: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor) -> "Instances":
        """Instances of binary ``masks`` [K, H, W] with ``scores`` [K] and ``classes`` [K]."""
        masks = masks.bool()
        return cls(tuple(int(s) for s in masks.shape[-2:]), scores, classes.long(), encode_rle(masks), masks.cpu())

    @property
    def masks(self) -> torch.Tensor:
        """Decoded binary masks bool [K, H, W] (computed once)."""
        if self._masks is None:
            self._masks = decode_rle(self.rles, self.size)
        return self._masks

    def areas(self) -> list[int]:
        """Pixels of each mask."""

        return [int(a) for a in mask_util.area(_coded(self.rles))] if self.rles else []

    def boxes(self) -> list[list[int]]:
        """COCO boxes ``[x, y, width, height]`` of each mask (zeros for an empty mask)."""

        return [[int(v) for v in b] for b in mask_util.toBbox(_coded(self.rles))] if self.rles else []

    def __len__(self) -> int:
        return len(self.rles)

    def __repr__(self) -> str:
        # the RLE strings run to kilobytes per mask: a summary, not the data
        classes = self.classes.tolist()
        counts = ", ".join(f"{c}: {classes.count(c)}" for c in sorted(set(classes))[:8])
        more = ", ..." if len(set(classes)) > 8 else ""
        scores = f", scores {float(self.scores.min()):.3f}..{float(self.scores.max()):.3f}" if len(self) else ""
        return f"Instances({len(self)} masks of {self.size[0]}x{self.size[1]}, classes {{{counts}{more}}}{scores})"

    def __getitem__(self, key: str) -> Any:
        if key not in ("masks", "scores", "classes", "rles"):
            raise KeyError(key)
        return getattr(self, key)


def _coded(rles: Sequence[dict]) -> list[dict]:
    return [dict(r, counts=r["counts"].encode("ascii") if isinstance(r["counts"], str) else r["counts"]) for r in rles]


class RunLengths:
    """COCO RLEs (runs in column-major order) of K binary masks [K, H, W] whose rows arrive in bands.

    Only the positions where the mask changes along a column are kept, with the first and last rows, so the
    cost is the masks' boundary length, not K x H x W."""

    def __init__(self, K: int, H: int, W: int) -> None:
        self.K, self.H, self.W = K, H, W
        self.keys: list[torch.Tensor] = []  # k * H * W + column-major index of each change
        self.first: Optional[torch.Tensor] = None
        self.last: Optional[torch.Tensor] = None

    def add(self, masks: torch.Tensor, r0: int) -> None:
        """Rows [r0, r0 + n) of the masks, bool [K, n, W]."""
        if self.last is None:
            self.first, rows, base = masks[:, 0].clone(), masks, r0 + 1
        else:
            rows, base = torch.cat([self.last.unsqueeze(1), masks], 1), r0
        k, r, c = torch.nonzero(rows[:, 1:] != rows[:, :-1], as_tuple=True)
        self.keys.append(k * (self.H * self.W) + c * self.H + r + base)
        self.last = masks[:, -1].clone()

    def finish(self) -> list[dict]:
        """The RLEs, ``{"size": [H, W], "counts": str}`` each, exactly as pycocotools encodes the masks."""
        from pycocotools import mask as mask_util

        if self.K == 0:
            return []
        N = self.H * self.W
        k, c = torch.nonzero(self.first[:, 1:] != self.last[:, :-1], as_tuple=True)  # column c+1 starts a run
        starts = torch.nonzero(self.first[:, 0], as_tuple=True)[0]  # masks that begin with a 1
        keys = torch.cat(self.keys + [k * N + (c + 1) * self.H, starts * N]).sort().values.numpy()
        owner, position = np.divmod(keys, N)
        ends = np.searchsorted(owner, np.arange(self.K + 1))
        rles = []
        for i in range(self.K):
            bounds = np.concatenate([[0], position[ends[i]:ends[i + 1]], [N]])
            coded = mask_util.frPyObjects({"size": [self.H, self.W], "counts": np.diff(bounds).tolist()},
                                          self.H, self.W)
            rles.append({"size": [self.H, self.W], "counts": coded["counts"].decode("ascii")})
        return rles

"""The Mask-Adapter head: binary masks + projected CLIP map -> K semantic activation maps per mask.

Two computations of the same function live here:

* ``path="reference"`` follows the official ``MASKAdapterHead.forward`` step by step (the CLIP map
  repeated N times, ``fuse`` on the sum, NCHW blocks). It is kept for parity tests and benchmarks.
* ``path="fast"`` (the default) is exact up to float rounding but never copies the CLIP map N times:
  ``fuse`` is a 1x1 conv, hence linear, so ``fuse(clip + m) = fuse(clip) + W_fuse m``, and the mask
  stem's last 1x1 conv folds into ``W_fuse`` (16 -> 768 instead of 16 -> D -> 768). Masks run in chunks
  so peak memory is bounded, in NHWC layout so the blocks need no permute copies. For training,
  ``grad_checkpoint = True`` recomputes each chunk in the backward pass instead of storing its activations.

Without autograd the fast path also skips most of the blocks' MLPs (nearly all of the head's work) for
object-like masks: the mask stem sees a cell's 7x7 window of the resized mask only, and each 7x7 depthwise conv
widens a change by 3 cells, so a pixel farther from every mask edge than that equals the same pixel of an
all-zero mask (outside) or an all-one mask (inside). Those two masks run once per image; every mask's MLPs run
on the pixels its edges reach (:func:`block_reach`). Masks speckled over the whole image skip nothing.
"""

from __future__ import annotations

from typing import Literal, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..config import HeadConfig
from .layers import ConvNextBlock, LayerNorm2d

__all__ = ["MaskAdapterHead"]

HeadPath = Literal["fast", "reference"]

# Pixel rows (masks x h x w) per chunk of the fast path: a chunk's 768-wide activations are about 25 MB in fp32;
# its MLPs run in row tiles of layers.mlp_row_tile (None: 4096 rows at 768 wide) or of this many rows.
_ROWS_PER_CHUNK = 8192
_MLP_ROW_TILE: Optional[int] = None
# Without autograd, pixels that no mask edge can reach (through the mask stem and the 7x7 depthwise convs) skip
# the blocks' MLPs: they equal an all-zero or an all-one mask's. Those two masks per image cost MLP rows too, so
# skipping is used where it saves this many times their rows; a block whose reached pixels exceed this fraction
# of the chunk runs dense (gathering them would cost more than it saves).
_SKIP_MARGIN = 2.0
_DENSE_FRACTION = 0.9


class _SkipPlan(NamedTuple):
    """Block outputs [B, h, w, C] (one per block) of an all-zero and an all-one mask, and per block which pixels
    of each mask [blocks, B*N, h, w] (bool) its non-zero and its non-one pixels reach."""

    zero: list[torch.Tensor]
    one: list[torch.Tensor]
    off_zero: torch.Tensor
    off_one: torch.Tensor

    def chunk(self, start: int, stop: int) -> "_SkipPlan":
        """The plan of masks ``start:stop``."""
        return self._replace(off_zero=self.off_zero[:, start:stop], off_one=self.off_one[:, start:stop])


class MaskAdapterHead(nn.Module):
    """Mask-Adapter head with the official parameter names (``mask_downscaling``, ``fuse``, ``cnext1-3``, ``norm``, ``final``)."""

    def __init__(
        self,
        clip_dim: int,
        num_channels: int = 768,
        mask_in_chans: int = 16,
        num_output_maps: int = 16,
        num_blocks: int = 3,
        grad_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (("clip_dim", clip_dim), ("num_channels", num_channels),
                            ("num_output_maps", num_output_maps), ("num_blocks", num_blocks)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(mask_in_chans, int) or mask_in_chans < 4 or mask_in_chans % 4:
            raise ValueError(f"mask_in_chans must be a positive multiple of 4, got {mask_in_chans!r}")
        self.config = HeadConfig(clip_dim, num_channels, mask_in_chans, num_output_maps, num_blocks)
        self.num_output_maps = num_output_maps
        #: Recompute each fast-path chunk in the backward pass instead of keeping its activations
        #: (training memory; only acts while autograd records, and the result is unchanged).
        self.grad_checkpoint = bool(grad_checkpoint)
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=3, stride=2, padding=1),
            LayerNorm2d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=3, stride=2, padding=1),
            LayerNorm2d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, clip_dim, kernel_size=1),
        )
        self.fuse = nn.Conv2d(clip_dim, num_channels, 1)
        # Blocks are attributes cnext1..cnextN (not a ModuleList) so the official keys load strictly.
        for i in range(1, num_blocks + 1):
            setattr(self, f"cnext{i}", ConvNextBlock(num_channels))
        self.norm = nn.LayerNorm(num_channels)  # eps 1e-5, unlike the 1e-6 of the blocks
        self.final = nn.Conv2d(num_channels, num_output_maps, 1)

    @classmethod
    def from_config(cls, config: HeadConfig) -> "MaskAdapterHead":
        """Build a head from a :class:`HeadConfig`."""
        return cls(config.clip_dim, config.num_channels, config.mask_in_chans,
                   config.num_output_maps, config.num_blocks)

    @property
    def blocks(self) -> list[ConvNextBlock]:
        """The ConvNeXt blocks in order (``cnext1``, ``cnext2``, ...)."""
        return [getattr(self, f"cnext{i}") for i in range(1, self.config.num_blocks + 1)]

    # ------------------------------------------------------------------ public entry point
    def forward(
        self,
        dense_proj: torch.Tensor,
        masks: torch.Tensor,
        path: HeadPath = "fast",
        chunk_size: Optional[int] = None,
        dedupe: bool = True,
    ) -> torch.Tensor:
        """Activation-map logits [B, N*K, h, w] (channel n*K+k) from ``dense_proj`` [B, D, h, w] and ``masks`` [B, N, Hm, Wm].

        ``masks`` may be bool, integer 0/1 or float (soft masks are used as given); they are resized
        bilinearly to 4h x 4w as in the official head. ``chunk_size`` (fast path only) is the number of
        masks processed at once; by default it is chosen so a chunk holds about 8192 pixel rows. With
        ``dedupe`` (fast path) identical masks of an image - typically the many empty proposals of a
        mask generator - are computed once: their outputs are identical anyway.
        """
        self._check_inputs(dense_proj, masks)
        B, N = masks.shape[:2]
        h, w = dense_proj.shape[-2:]
        if N == 0:
            return dense_proj.new_zeros((B, 0, h, w))
        if path == "reference":
            return self._forward_reference(dense_proj, masks)
        if path != "fast":
            raise ValueError(f"path must be 'fast' or 'reference', got {path!r}")
        if chunk_size is None:
            chunk_size = max(1, _ROWS_PER_CHUNK // (h * w))
        elif not isinstance(chunk_size, int) or chunk_size <= 0:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        if dedupe and N > 1:
            return self._forward_unique(dense_proj, masks, chunk_size)
        return self._forward_fast(dense_proj, masks, chunk_size)

    def _forward_unique(self, dense_proj: torch.Tensor, masks: torch.Tensor, chunk_size: int) -> torch.Tensor:
        """Fast path on the distinct masks of each image only, outputs gathered back to every mask."""
        B, N = masks.shape[:2]
        h, w = dense_proj.shape[-2:]
        K = self.num_output_maps
        outputs = []
        for b in range(B):
            unique, inverse = torch.unique(masks[b].reshape(N, -1), dim=0, return_inverse=True)
            if unique.shape[0] == N:
                outputs.append(self._forward_fast(dense_proj[b:b + 1], masks[b:b + 1], chunk_size))
                continue
            maps = self._forward_fast(dense_proj[b:b + 1], unique.view(1, -1, *masks.shape[-2:]), chunk_size)
            outputs.append(maps.view(-1, K, h, w)[inverse].view(1, N * K, h, w))
        return torch.cat(outputs) if B > 1 else outputs[0]

    # ------------------------------------------------------------------ the two computations
    def _forward_reference(self, dense_proj: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Official computation: repeat the CLIP map per mask, add the mask embedding, fuse, refine."""
        B, N = masks.shape[:2]
        h, w = dense_proj.shape[-2:]
        m = masks.reshape(B * N, 1, *masks.shape[-2:]).float()
        clip_rep = dense_proj.repeat_interleave(N, dim=0)
        m = F.interpolate(m, size=(4 * h, 4 * w), mode="bilinear", align_corners=False)
        x = self.fuse(clip_rep + self.mask_downscaling(m))
        for block in self.blocks:
            x = block(x)
        x = self.norm(x.permute(0, 2, 3, 1).contiguous()).permute(0, 3, 1, 2)
        x = self.final(x.contiguous())
        return x.reshape(B, N * self.num_output_maps, h, w)

    def _forward_fast(self, dense_proj: torch.Tensor, masks: torch.Tensor, chunk_size: int) -> torch.Tensor:
        """Exact rewrite: fuse the CLIP map once, add a folded 16->C mask embedding per chunk of masks."""
        B, N = masks.shape[:2]
        h, w = dense_proj.shape[-2:]
        K = self.num_output_maps
        clip_fused = self.fuse(dense_proj).permute(0, 2, 3, 1).contiguous()  # [B, h, w, C], with fuse's bias
        last = self.mask_downscaling[6]
        fuse_w = self.fuse.weight.flatten(1)  # [C, D]
        fold_w = fuse_w @ last.weight.flatten(1)  # [C, 16]
        fold_b = fuse_w @ last.bias  # [C]
        flat_masks = masks.reshape(B * N, 1, *masks.shape[-2:])
        use_checkpoint = self.grad_checkpoint and torch.is_grad_enabled()
        skip = None if torch.is_grad_enabled() else self._skip_plan(flat_masks, clip_fused, fold_w, fold_b, chunk_size)
        chunks, out = [], None
        for start in range(0, B * N, chunk_size):
            stop = min(start + chunk_size, B * N)
            image_idx = torch.arange(start, stop, device=masks.device) // N if B > 1 else None
            args = (flat_masks[start:stop], clip_fused, image_idx, fold_w, fold_b)
            if use_checkpoint:
                # Non-reentrant checkpointing keeps only the chunk's inputs (the per-mask copy of the CLIP map
                # is made inside, so it is recomputed too); the shared folded weights stay in the graph once,
                # so their gradients accumulate over chunks as usual.
                x = checkpoint(self._chunk, *args, use_reentrant=False)
            else:
                x = self._chunk(*args, skip=skip.chunk(start, stop) if skip is not None else None)
            if torch.is_grad_enabled() or chunk_size >= B * N:
                chunks.append(x.permute(0, 3, 1, 2))
                continue
            if out is None:  # without autograd, chunks are written into the output: no concatenation copy
                out = x.new_empty((B * N, K, h, w))
            out[start:stop] = x.permute(0, 3, 1, 2)
        if out is None:
            out = torch.cat(chunks) if len(chunks) > 1 else chunks[0].contiguous()
        return out.reshape(B, N * K, h, w)

    def _skip_plan(self, flat_masks: torch.Tensor, clip_fused: torch.Tensor, fold_w: torch.Tensor,
                   fold_b: torch.Tensor, chunk_size: int) -> Optional["_SkipPlan"]:
        """Where each mask's block MLPs may be skipped, and the values there; None where skipping would save
        fewer MLP rows than ``_SKIP_MARGIN`` times the two constant masks per image it needs."""
        B, (h, w) = clip_fused.shape[0], clip_fused.shape[1:3]
        blocks = len(self.blocks)
        one = F.interpolate(flat_masks.new_ones((1, *flat_masks.shape[1:])).float(), size=(4 * h, 4 * w),
                            mode="bilinear", align_corners=False)
        reach = []
        for start in range(0, flat_masks.shape[0], chunk_size):  # resized masks of one chunk at a time
            m = F.interpolate(flat_masks[start:start + chunk_size].float(), size=(4 * h, 4 * w), mode="bilinear",
                              align_corners=False)
            reach.append((block_reach(m != 0, blocks), block_reach(m != one, blocks)))
        off_zero = torch.cat([r[0] for r in reach], dim=1)
        off_one = torch.cat([r[1] for r in reach], dim=1)
        skipped = off_zero.numel() - int((off_zero & off_one).sum())
        if skipped < _SKIP_MARGIN * 2 * B * blocks * h * w:
            return None
        # Each block's output for an all-zero and an all-one mask on every image: a pixel that no mask pixel
        # reaches equals the first; one that no non-one pixel reaches equals the second.
        constant = flat_masks.new_zeros((2 * B, *flat_masks.shape[1:]))
        constant[B:] = 1
        states: list[torch.Tensor] = []
        image_idx = torch.arange(B, device=clip_fused.device).repeat(2)
        self._chunk(constant, clip_fused, image_idx, fold_w, fold_b, record=states)
        return _SkipPlan([s[:B] for s in states], [s[B:] for s in states], off_zero, off_one)

    def _chunk(self, masks: torch.Tensor, clip_fused: torch.Tensor, image_idx: Optional[torch.Tensor],
               fold_w: torch.Tensor, fold_b: torch.Tensor, skip: Optional["_SkipPlan"] = None,
               record: Optional[list[torch.Tensor]] = None) -> torch.Tensor:
        """One chunk of the fast path: ``masks`` [n, 1, Hm, Wm] of images ``image_idx`` [n] (None: the single
        image) + fused CLIP maps ``clip_fused`` [B, h, w, C] -> [n, h, w, K].

        With ``skip`` (this chunk's part of :meth:`_skip_plan`) each block runs its MLP only where the masks'
        edges reach; ``record`` collects each block's output."""
        h, w = clip_fused.shape[1:3]
        m = F.interpolate(masks.float(), size=(4 * h, 4 * w), mode="bilinear", align_corners=False)
        m = self.mask_downscaling[:6](m).permute(0, 2, 3, 1)  # [n, h, w, 16]
        x = torch.addmm(fold_b, m.reshape(-1, m.shape[-1]), fold_w.t()).view(*m.shape[:3], -1)
        base = clip_fused[image_idx] if image_idx is not None else clip_fused
        # broadcast over the chunk's masks; out of place under autocast (bf16 x, fp32 base: the sum is fp32)
        x = x.add_(base) if x.dtype == base.dtype and not torch.is_grad_enabled() else x + base
        for k, block in enumerate(self.blocks):
            # x is this chunk's own tensor, so the blocks may update it in place (they do only without autograd)
            edge = skip.off_zero[k] & skip.off_one[k] if skip is not None else None
            rows = edge.view(-1).nonzero().squeeze(1) if edge is not None else None
            if rows is None or rows.numel() > _DENSE_FRACTION * edge.numel():
                x = block.forward_nhwc(x, _MLP_ROW_TILE, inplace=True)
            else:
                zero, one = skip.zero[k], skip.one[k]
                if image_idx is not None:
                    zero, one = zero[image_idx], one[image_idx]
                near_one = skip.off_zero[k].unsqueeze(-1)
                x = block.forward_rows(x, rows, lambda t: torch.where(near_one, one, zero, out=t), _MLP_ROW_TILE)
            if record is not None:
                record.append(x.clone())
        return F.linear(self.norm(x), self.final.weight.flatten(1), self.final.bias)  # [n, h, w, K]

    # ------------------------------------------------------------------ validation
    def _check_inputs(self, dense_proj: torch.Tensor, masks: torch.Tensor) -> None:
        if not isinstance(dense_proj, torch.Tensor):
            raise TypeError(f"dense_proj must be a torch.Tensor, got {type(dense_proj).__name__}")
        if not isinstance(masks, torch.Tensor):
            raise TypeError(f"masks must be a torch.Tensor, got {type(masks).__name__}")
        if dense_proj.dim() != 4 or dense_proj.shape[1] != self.config.clip_dim:
            raise ValueError(
                f"dense_proj must have shape [B, {self.config.clip_dim}, h, w] (the projected CLIP map), "
                f"got {list(dense_proj.shape)}")
        if not dense_proj.is_floating_point():
            raise TypeError(f"dense_proj must be a floating tensor, got {dense_proj.dtype}")
        if dense_proj.shape[-1] == 0 or dense_proj.shape[-2] == 0:
            raise ValueError(f"dense_proj has an empty spatial size {list(dense_proj.shape[-2:])}")
        if masks.dim() != 4:
            raise ValueError(f"masks must have rank 4 [B, N, H, W], got rank {masks.dim()} "
                             f"with shape {list(masks.shape)}")
        if masks.shape[0] != dense_proj.shape[0]:
            raise ValueError(f"batch sizes differ: masks has {masks.shape[0]} images, "
                             f"dense_proj has {dense_proj.shape[0]}")
        if masks.dtype.is_complex:
            raise TypeError(f"masks must be bool, integer or floating, got {masks.dtype}")
        if masks.shape[1] > 0 and (masks.shape[-1] == 0 or masks.shape[-2] == 0):
            raise ValueError(f"masks have an empty spatial size {list(masks.shape[-2:])}")

    def extra_repr(self) -> str:
        c = self.config
        return (f"clip_dim={c.clip_dim}, num_channels={c.num_channels}, mask_in_chans={c.mask_in_chans}, "
                f"num_output_maps={c.num_output_maps}, num_blocks={c.num_blocks}")


def block_reach(changed: torch.Tensor, num_blocks: int, kernel_size: int = 7) -> torch.Tensor:
    """Which pixels of each block's output [num_blocks, n, h, w] (bool) the pixels ``changed`` [n, 1, 4h, 4w]
    (bool) of the mask stem's input can affect.

    The stem's two 3x3 stride-2 convs see a cell's 7x7 window only; each block's ``kernel_size`` depthwise
    conv then widens the reach by its radius (the MLPs are per pixel).
    """
    reached = changed.float()
    for _ in range(2):
        reached = F.max_pool2d(reached, 3, stride=2, padding=1)
    steps = []
    for _ in range(num_blocks):
        reached = F.max_pool2d(reached, kernel_size, stride=1, padding=kernel_size // 2)
        steps.append(reached[:, 0] > 0)
    return torch.stack(steps)

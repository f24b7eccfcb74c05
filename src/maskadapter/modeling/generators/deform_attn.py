"""Multi-scale deformable attention (Deformable DETR) in pure PyTorch, without the compiled CUDA op.

The sampling core has the semantics of the official ``ms_deform_attn_core_pytorch`` (which the official
module also falls back to on CPU) and of the CUDA kernel: bilinear sampling with zero padding and
``align_corners=False``, so a location (x, y) in [0, 1] reads the map at pixel coordinate
(x*W - 0.5, y*H - 0.5), and corners outside the map contribute zero.

Two computations of it live here:

* ``"grid_sample"``: one ``F.grid_sample`` per level, heads folded into the batch (differentiable;
  used on accelerators and whenever autograd needs it).
* ``"sparse"``: the whole attention as one sparse-dense product. Every query row holds
  ``levels * points * 4`` bilinear corner weights (already multiplied by the attention weights) into
  zero-bordered copies of the level maps, so out-of-map corners need no masking. It never
  materialises the ``[B*nH, Dh, Lq, P]`` samples and is about twice as fast on CPU, but it has no
  autograd, so ``"auto"`` uses it only on CPU when no gradient is required.
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from typing import Literal, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ms_deform_attn", "MSDeformAttn"]

logger = logging.getLogger(__name__)

SpatialShapes = Union[torch.Tensor, Sequence[Sequence[int]]]
Method = Literal["auto", "grid_sample", "sparse"]


def _shape_list(spatial_shapes: SpatialShapes) -> list[tuple[int, int]]:
    if isinstance(spatial_shapes, torch.Tensor):
        spatial_shapes = spatial_shapes.tolist()
    return [(int(h), int(w)) for h, w in spatial_shapes]


def _work_dtype(value: torch.Tensor) -> torch.dtype:
    return torch.float64 if value.dtype == torch.float64 else torch.float32


def ms_deform_attn(value: torch.Tensor, spatial_shapes: SpatialShapes, sampling_locations: torch.Tensor,
                   attention_weights: torch.Tensor, method: Method = "auto") -> torch.Tensor:
    """Weighted bilinear samples: value [B,S,nH,Dh], shapes [L,2], loc [B,Lq,nH,L,P,2], weights [B,Lq,nH,L,P] -> [B,Lq,nH*Dh].

    ``value`` holds the levels flattened row-major one after the other; ``spatial_shapes`` are their
    (H_l, W_l); sampling locations are (x, y) in [0, 1] (anything outside samples zero padding).
    ``method`` picks the computation (module docstring); both give the same result up to rounding.
    """
    shapes = _shape_list(spatial_shapes)
    levels = sampling_locations.shape[3]
    if len(shapes) != levels or sum(h * w for h, w in shapes) != value.shape[1]:
        raise ValueError(f"spatial_shapes {shapes} do not match value length {value.shape[1]} and {levels} levels")
    if method == "auto":
        needs_grad = torch.is_grad_enabled() and any(
            t.requires_grad for t in (value, sampling_locations, attention_weights))
        fits = sum((h + 2) * (w + 2) for h, w in shapes) < 2 ** 24  # exact fp32 cell indices
        use_sparse = value.device.type == "cpu" and not needs_grad and fits and _sparse_path_agrees()
        method = "sparse" if use_sparse else "grid_sample"
    if method == "sparse":
        return _ms_deform_attn_sparse(value, shapes, sampling_locations, attention_weights)
    if method != "grid_sample":
        raise ValueError(f"unknown method {method!r}: expected 'auto', 'grid_sample' or 'sparse'")
    return _ms_deform_attn_grid_sample(value, shapes, sampling_locations, attention_weights)


@functools.lru_cache(maxsize=1)
def _sparse_path_agrees() -> bool:
    """Once per process: does this torch build's CSR product sum repeated, unsorted columns as the sparse
    path assumes? Checked on a small problem with points sharing cells; if not, "auto" uses grid_sample."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(3, 4), (2, 2)]
    value = torch.randn(2, 16, 2, 3, generator=gen)
    loc = torch.rand(2, 5, 2, 2, 3, 2, generator=gen) * 1.4 - 0.2
    loc[..., 1, :] = loc[..., 0, :]  # two points on exactly the same location: repeated columns
    weights = torch.rand(2, 5, 2, 2, 3, generator=gen)
    sparse = _ms_deform_attn_sparse(value, shapes, loc, weights)
    dense = _ms_deform_attn_grid_sample(value, shapes, loc, weights)
    if torch.allclose(sparse, dense, rtol=1e-4, atol=1e-5):
        return True
    logger.warning("this torch build's sparse CSR product disagrees with grid_sample; deformable attention "
                   "uses the slower grid_sample path")
    return False


def _ms_deform_attn_grid_sample(value: torch.Tensor, shapes: list[tuple[int, int]],
                                sampling_locations: torch.Tensor, attention_weights: torch.Tensor) -> torch.Tensor:
    batch, num_values, heads, head_dim = value.shape
    _, num_queries, _, levels, points, _ = sampling_locations.shape
    # Half-precision grids cannot address pixels of large maps, so those run in fp32 (as autocast does).
    dtype = _work_dtype(value)
    # Heads join the batch axis so one grid_sample call per level serves all of them.
    value_maps = value.to(dtype).permute(0, 2, 3, 1).reshape(batch * heads, head_dim, num_values)
    grids = (2 * sampling_locations.to(dtype) - 1).transpose(1, 2)
    grids = grids.reshape(batch * heads, num_queries, levels, points, 2)
    weights = attention_weights.to(dtype).transpose(1, 2).reshape(batch * heads, 1, num_queries, levels, points)
    out: Optional[torch.Tensor] = None
    start = 0
    for level, (h, w) in enumerate(shapes):
        value_l = value_maps[:, :, start:start + h * w].reshape(batch * heads, head_dim, h, w)
        start += h * w
        sampled = F.grid_sample(value_l, grids[:, :, level], mode="bilinear", padding_mode="zeros",
                                align_corners=False)  # [B*nH, Dh, Lq, P]
        contrib = (sampled * weights[:, :, :, level]).sum(-1)  # [B*nH, Dh, Lq]
        out = contrib if out is None else out + contrib
    assert out is not None
    # Channel index is head * Dh + d, the official output layout.
    return out.view(batch, heads * head_dim, num_queries).transpose(1, 2).to(value.dtype).contiguous()


def _bordered_values(value: torch.Tensor, shapes: list[tuple[int, int]]) -> tuple[torch.Tensor, list[int]]:
    """value [B,S,nH,Dh] -> [B,nH,S',Dh]: each level map with a one-cell zero border, plus a zero tail.

    The tail (one bordered row and a cell) keeps the weight-zero corner reads of points clamped to the
    bottom-right border inside the buffer. Returns the buffer and each level's start row.
    """
    batch, _, heads, head_dim = value.shape
    starts, total = [], 0
    for h, w in shapes:
        starts.append(total)
        total += (h + 2) * (w + 2)
    tail = max(w for _, w in shapes) + 3
    out = value.new_zeros(batch, heads, total + tail, head_dim)
    for (h, w), start, level in zip(shapes, starts, value.split([h * w for h, w in shapes], dim=1)):
        target = out[:, :, start:start + (h + 2) * (w + 2)].view(batch, heads, h + 2, w + 2, head_dim)
        target[:, :, 1:-1, 1:-1] = level.view(batch, h, w, heads, head_dim).permute(0, 3, 1, 2, 4)
    return out, starts


def _ms_deform_attn_sparse(value: torch.Tensor, shapes: list[tuple[int, int]],
                           sampling_locations: torch.Tensor, attention_weights: torch.Tensor) -> torch.Tensor:
    if value.device.type != "cpu":
        raise ValueError("method='sparse' is implemented for CPU tensors only; use 'grid_sample'")
    batch, _, heads, head_dim = value.shape
    num_queries = sampling_locations.shape[1]
    rows = batch * num_queries * heads
    dtype = _work_dtype(value)
    bordered, starts = _bordered_values(value.to(dtype), shapes)
    buffer_len = bordered.shape[2]
    levels_points = sampling_locations.shape[3] * sampling_locations.shape[4]
    small = max(batch * heads * buffer_len, rows * 4 * levels_points) < 2 ** 31
    cols, weights = _bilinear_entries(sampling_locations.to(dtype), attention_weights.to(dtype), shapes,
                                      starts, buffer_len, torch.int32 if small else torch.int64)
    # Rows are (b, q, h); the buffer is (b, h, s), so row r owns the column block of its (b, h).
    row_ids = torch.arange(rows)
    block = ((row_ids // (num_queries * heads)) * heads + row_ids % heads) * buffer_len
    cols += block.to(cols.dtype)[:, None, None]
    per_row = cols.shape[1] * cols.shape[2]
    crow = torch.arange(0, rows * per_row + 1, per_row, dtype=cols.dtype)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        # A row may hold a column twice (two points on one cell) and columns are unsorted; the product
        # only sums entries, which torch's CPU kernels (MKL and native) do for such rows, hence no check.
        matrix = torch.sparse_csr_tensor(crow, cols.reshape(-1), weights.reshape(-1),
                                         size=(rows, batch * heads * buffer_len), check_invariants=False)
        out = matrix @ bordered.reshape(-1, head_dim)
    return out.view(batch, num_queries, heads * head_dim).to(value.dtype)


def _bilinear_entries(locations: torch.Tensor, attention_weights: torch.Tensor, shapes: list[tuple[int, int]],
                      starts: list[int], buffer_len: int, index_dtype: torch.dtype
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Corner cells and weights of every sample in the bordered buffer: [R, 4, L*P] each (R = B*Lq*nH).

    ``locations`` [B,Lq,nH,L,P,2] and ``attention_weights`` [B,Lq,nH,L,P] are in fp32 or fp64, where cell
    indices below 2**24 (fp32) are exact. Columns are relative to the row's (batch, head) block.
    """
    dtype = locations.dtype
    if dtype != torch.float64 and buffer_len >= 2 ** 24:
        raise ValueError("sparse deformable attention: level maps too large for exact fp32 cell indices")
    points = locations.shape[4]
    per_row = locations.shape[3] * points
    rows = locations.numel() // (2 * per_row)

    # Level constants laid out like one row's L*P entries, so they broadcast with a long inner loop.
    def per_entry(values: list[float]) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype).repeat_interleave(points)

    size = torch.stack([per_entry([w for _, w in shapes]), per_entry([h for h, _ in shapes])], -1)
    row_stride = per_entry([w + 2 for _, w in shapes])
    # Pixel coordinate in the bordered map is loc*size - 0.5 + 1; beyond [0, size+1] all corners are border.
    pix = torch.addcmul(torch.full((), 0.5, dtype=dtype), locations.reshape(rows, per_row, 2), size)
    pix = torch.minimum(pix.clamp_(min=0), size + 1)
    # NaN locations must still give in-range cells (the matrix is unchecked); their weights stay NaN.
    low = pix.floor().nan_to_num_(0.0)
    frac = pix.sub_(low)
    top_left = torch.addcmul(low[..., 0] + per_entry([float(s) for s in starts]), low[..., 1], row_stride)
    top_left = top_left.to(index_dtype)
    stride = row_stride.to(index_dtype)
    cols = torch.stack([top_left, top_left + 1, top_left + stride, top_left + stride + 1], 1)

    attn = attention_weights.reshape(rows, per_row)
    fx, fy = frac[..., 0], frac[..., 1]
    bottom = attn * fy
    top = attn - bottom
    top_right, bottom_right = top * fx, bottom * fx
    weights = torch.stack([top - top_right, top_right, bottom - bottom_right, bottom_right], 1)
    return cols, weights


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention: query [B,Lq,C] reads P points per head and level of input [B,S,C] -> [B,Lq,C]."""

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        #: sampling computation passed to :func:`ms_deform_attn` (not part of the state dict)
        self.method: Method = "auto"
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Deformable DETR init: head h starts sampling along direction 2*pi*h/nH at 1..P cells, uniform weights."""
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        directions = torch.stack([thetas.cos(), thetas.sin()], -1)
        # Scale each direction so its larger component is +-1: the first point lands on a neighbour cell.
        directions = directions / directions.abs().max(-1, keepdim=True)[0]
        steps = torch.arange(1, self.n_points + 1, dtype=torch.float32)
        grid = directions[:, None, None, :] * steps[None, None, :, None]
        grid = grid.expand(self.n_heads, self.n_levels, self.n_points, 2)
        self.sampling_offsets.bias.copy_(grid.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(self, query: torch.Tensor, reference_points: torch.Tensor, input_flatten: torch.Tensor,
                input_spatial_shapes: torch.Tensor, input_level_start_index: Optional[torch.Tensor] = None,
                input_padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Attend: query [B,Lq,C], reference_points [B,Lq,L,2|4] (x, y[, w, h] in [0,1]), input [B,S,C] -> [B,Lq,C].

        ``input_level_start_index`` is accepted for signature compatibility; the level boundaries
        follow from ``input_spatial_shapes``. ``input_padding_mask`` [B,S] is True where the input is padding.
        """
        batch, num_queries, _ = query.shape
        num_values = input_flatten.shape[1]
        heads, levels, points = self.n_heads, self.n_levels, self.n_points
        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(batch, num_values, heads, self.d_model // heads)
        offsets = self.sampling_offsets(query).view(batch, num_queries, heads, levels, points, 2)
        weights = self.attention_weights(query).view(batch, num_queries, heads, levels * points)
        weights = weights.softmax(-1).view(batch, num_queries, heads, levels, points)
        locations = self.sampling_locations(reference_points, offsets, input_spatial_shapes)
        return self.output_proj(ms_deform_attn(value, input_spatial_shapes, locations, weights, self.method))

    def sampling_locations(self, reference_points: torch.Tensor, offsets: torch.Tensor,
                           spatial_shapes: SpatialShapes) -> torch.Tensor:
        """Locations [B,Lq,nH,L,P,2] from reference points [B,Lq,L,2|4] and raw offsets [B,Lq,nH,L,P,2]."""
        ref = reference_points[:, :, None, :, None, :]
        if reference_points.shape[-1] == 2:
            # Offsets are in cells of each level: divide by (W_l, H_l).
            hw = torch.as_tensor(_shape_list(spatial_shapes), dtype=offsets.dtype, device=offsets.device)
            normalizer = hw.flip(-1)[None, None, None, :, None, :]
            return ref + offsets / normalizer
        if reference_points.shape[-1] == 4:
            # Offsets are relative to the box size, spread over +-half a box across the P points.
            return ref[..., :2] + offsets / self.n_points * ref[..., 2:] * 0.5
        raise ValueError(f"reference_points must end in 2 or 4 coordinates, got {reference_points.shape[-1]}")

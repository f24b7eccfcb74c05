"""Exact replicas of the torch CPU kernels that post-processing runs, applied to a band of output rows.

Used by :mod:`maskadapter.inference.banded` to reproduce, bit for bit, what the full-tensor computation gives:

* :class:`Rows`: rows of a bilinear resize (align_corners=False) from the input rows they read. Torch's
  generic CPU kernel is separable: a band's width pass is torch's own kernel; the height pass uses the kernel's
  row indices and weights and combines the two rows as the kernel does (a fused multiply-add where torch was
  built with FMA). A probe against ``F.interpolate`` checks every output row for each (h, H).
* :func:`vector_sigmoid` / :func:`patch_scalar_tails`: ``torch.sigmoid`` rounds differently in its vectorised body
  and in the scalar remainder of each thread's chunk; the positions of the remainder follow from the full
  tensor's size and the thread count.
* :class:`CascadeSum`: torch's cascade summation of ``x.sum(1)``, replayed over bands (same lanes, blocks,
  levels, per-thread chunks for a single row).
* :func:`platform`: the sigmoid block and the summation lanes, measured once per process and thread count.

These rest on torch internals, so each is checked against torch at run time; a failed check makes the caller
fall back to the full-tensor computation (or warn that scores may differ in the last bit).
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

__all__ = ["GRAIN", "MIN_GENERIC", "Scratch", "Rows", "vector_sigmoid", "patch_scalar_tails", "CascadeSum",
           "Platform", "platform"]

logger = logging.getLogger(__name__)

GRAIN = 32768  # at::internal::GRAIN_SIZE: element-wise ops and reductions give each thread a chunk of >= this
MIN_GENERIC = 129  # torch's CPU bilinear kernel is the generic (separable) one only when out_h + out_w >= this


def _fresh(key: str, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A new tensor (what :class:`Scratch` hands out when no buffer is to be reused)."""
    return torch.empty(*shape, dtype=dtype)


class Scratch:
    """Buffers reused from band to band. A fresh tensor above glibc's 32 MB mmap threshold is mapped anew at
    every allocation, and its page faults cost as much as the arithmetic; reusing the buffers avoids that."""

    def __init__(self) -> None:
        self.buffers: dict[str, torch.Tensor] = {}

    def __call__(self, key: str, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """An uninitialised contiguous tensor of ``shape``, sharing memory with the last one of this ``key``."""
        numel = math.prod(shape)
        buffer = self.buffers.get(key)
        if buffer is None or buffer.numel() < numel or buffer.dtype != dtype:
            buffer = self.buffers[key] = torch.empty(numel, dtype=dtype)
        return buffer[:numel].view(*shape)


# ------------------------------------------------------------------------------------------------ bilinear rows

class Rows:
    """Rows [r0, r1) of ``F.interpolate(src[None], (H, W), mode="bilinear", align_corners=False)[0]`` for
    ``src`` [Ch, h, w], bit for bit, computed from the input rows they read (see the module docstring)."""

    def __init__(self, h: int, w: int, H: int, W: int, threads: int) -> None:
        self.h, self.w, self.H, self.W, self.threads = h, w, H, W, threads
        self.weights = None if H == h else _height_weights(h, H)
        self.exact = H == h or self.weights is not None

    def span(self, r0: int, r1: int) -> tuple[int, int]:
        """Input rows [a, b) that output rows [r0, r1) read."""
        if self.weights is None:
            return r0, r1
        i0, i1 = self.weights[0], self.weights[1]
        return int(i0[r0]), int(i1[r1 - 1]) + 1

    def __call__(self, src: torch.Tensor, index: Optional[torch.Tensor], r0: int, r1: int,
                 scratch: Optional[Scratch] = None) -> torch.Tensor:
        """Rows [r0, r1) [len(index) or Ch, r1-r0, W] of channels ``index`` (None: all) of ``src`` resized
        (in ``scratch`` buffers when given: valid until its next use)."""
        a, b = self.span(r0, r1)
        # The width pass must take the generic kernel as the full resize does: >= MIN_GENERIC output rows +
        # columns, no 1x1 input plane, not 3 channels on one thread. Extra (repeated) rows are dropped after.
        extra = max(MIN_GENERIC - self.W - (b - a), 1 if (b - a == 1 and self.w == 1) else 0, 0)
        # advanced indexing is one kernel; index_select of a strided view copies index by index (slow)
        x = src[:, a:b] if index is None else src[index, a:b]
        if extra:
            x = torch.cat([x, x[:, -1:].expand(-1, extra, -1)], 1)
        channels = x.shape[0]
        if channels == 3 and self.threads == 1:
            x = torch.cat([x, x[:1]])
        rows = F.interpolate(x.unsqueeze(0), size=(x.shape[1], self.W), mode="bilinear", align_corners=False)[0]
        rows = rows[:channels]
        if self.weights is None:
            return rows[:, :r1 - r0]
        i0, i1, w0, w1, fused = self.weights
        take, shape = scratch or _fresh, (channels, r1 - r0, self.W)
        t0 = torch.index_select(rows, 1, i0[r0:r1] - a, out=take("row0", shape))
        t1 = torch.index_select(rows, 1, i1[r0:r1] - a, out=take("row1", shape))
        return _combine(t0, t1, w0[r0:r1, None], w1[r0:r1, None], fused)


def _source_rows(h: int, H: int, fused: bool) -> tuple[torch.Tensor, ...]:
    """Torch's bilinear source rows and weights (i0, i1, w0, w1) [H] for resizing h rows to H.

    ``src = scale * (r + 0.5) - 0.5`` in float32 with ``scale = float(h) / H``, clamped at 0, as one fused
    multiply-add when ``fused`` (exact in float64, then rounded once) or as two rounded operations;
    i0 = floor(src) (at most h - 1), lambda = src - i0, i1 = i0 + 1 except on the last row."""
    scale = torch.tensor(float(h), dtype=torch.float32) / H
    if fused:
        src = (scale.double() * (torch.arange(H, dtype=torch.float64) + 0.5) - 0.5).float()
    else:
        src = scale * (torch.arange(H, dtype=torch.float32) + 0.5) - 0.5
    src = src.clamp(min=0)
    i0 = src.floor().long().clamp(max=h - 1)
    lam = (src - i0.float()).clamp(0, 1)
    i1 = i0 + (i0 < h - 1).long()
    return i0, i1, 1 - lam, lam


def _combine(t0: torch.Tensor, t1: torch.Tensor, w0: torch.Tensor, w1: torch.Tensor, fused: bool) -> torch.Tensor:
    """``t0 * w0 + t1 * w1`` as torch's kernel rounds it: ``fma(t0, w0, t1 * w1)`` when ``fused``. Overwrites
    ``t0`` and ``t1`` (fresh gathers)."""
    if fused:
        return t1.mul_(w1).addcmul_(t0, w0)
    return t0.mul_(w0).add_(t1.mul_(w1))


@functools.lru_cache(maxsize=64)
def _height_weights(h: int, H: int) -> Optional[tuple]:
    """(i0, i1, w0, w1, fused) reproducing ``F.interpolate`` from h to H rows on this platform, or None.

    Each variant (fused or rounded source index, fused or rounded combination) is checked on a random probe
    whose width is kept: the one that gives every output row bit for bit is used."""
    gen = torch.Generator().manual_seed(h * 100003 + H)
    k = max(1, MIN_GENERIC - H)  # enough columns for the generic kernel
    probe = torch.randn(1, 1, h, k, generator=gen) * 4
    want = F.interpolate(probe, size=(H, k), mode="bilinear", align_corners=False)[0, 0]
    for fused_index in (True, False):
        i0, i1, w0, w1 = _source_rows(h, H, fused_index)
        for fused in (True, False):
            got = _combine(probe[0, 0, i0], probe[0, 0, i1], w0[:, None], w1[:, None], fused)
            if torch.equal(got, want):
                return i0, i1, w0, w1, fused
    return None


# ------------------------------------------------------------------------------------------------ sigmoid paths

def _scalar_ranges(numel: int, threads: int, block: int) -> list[tuple[int, int]]:
    """Flat ranges that ``torch.sigmoid`` of a contiguous tensor of ``numel`` elements computes with its scalar
    formula: the last ``n % block`` elements of each thread's chunk (``at::parallel_for``'s split)."""
    if numel < GRAIN or threads == 1:
        chunks = [(0, numel)]
    else:
        parts = min(threads, -(-numel // GRAIN))
        size = -(-numel // parts)
        chunks = [(t * size, min(numel, (t + 1) * size)) for t in range(parts) if t * size < numel]
    return [(e - (e - b) % block, e) for b, e in chunks if (e - b) % block]


def vector_sigmoid(x: torch.Tensor, block: Optional[int], threads: int, out: Optional[torch.Tensor] = None
                    ) -> torch.Tensor:
    """``torch.sigmoid(x)`` with the vectorised formula at every element (this call's scalar tails redone)."""
    out = torch.sigmoid(x, out=out)
    if block is None:
        return out
    flat_x, flat = x.reshape(-1), out.view(-1)
    for s, e in _scalar_ranges(out.numel(), threads, block):
        padded = flat_x.new_zeros(256)  # a multiple of the block, so no element is left to the scalar loop
        padded[:e - s] = flat_x[s:e]
        flat[s:e] = torch.sigmoid(padded)[:e - s]
    return out


def patch_scalar_tails(sig: torch.Tensor, logits: torch.Tensor, rows: Optional[torch.Tensor],
                        band: tuple[int, int], H: int, block: Optional[int], threads: int) -> None:
    """Give ``sig`` [K, n, W] (rows ``band`` of a full [K, H, W] sigmoid, from ``logits[rows]``) the scalar
    formula's values where the full path's ``torch.sigmoid`` of K x H x W elements used it."""
    if block is None:
        return
    K, n, W = sig.shape
    r0, plane = band[0], H * W
    flat = sig.view(-1)
    for s, e in _scalar_ranges(K * plane, threads, block):
        for k in range(s // plane, (e - 1) // plane + 1):
            lo, hi = max(s, k * plane + r0 * W), min(e, k * plane + (r0 + n) * W)
            if lo < hi:
                src = logits[k if rows is None else int(rows[k])].reshape(-1)
                a = lo - k * plane - r0 * W
                # fewer elements than one vector block: torch computes them all with the scalar formula
                flat[k * n * W + a:k * n * W + a + hi - lo] = torch.sigmoid(src[a:a + hi - lo].clone())


# ------------------------------------------------------------------------------------------------ cascade sum

class _Level:
    """One accumulator of torch's cascade sum: adds values in order and, every ``step`` values, hands its sum
    to the level above and restarts from 0 (the top level has no step)."""

    def __init__(self, shape: tuple[int, int], step: Optional[int], up: Optional["_Level"]) -> None:
        self.acc, self.count, self.step, self.up = torch.zeros(shape), 0, step, up

    def push(self, values: torch.Tensor) -> None:
        """Add ``values`` [K, m, lanes] in order along m."""
        m, j = values.shape[1], 0
        if self.step is None:
            for j in range(m):
                self.acc = self.acc + values[:, j]
            return
        while self.count and j < m:
            self._add(values[:, j])
            j += 1
        full = (m - j) // self.step
        if full:  # whole groups at once: their sums go up in order
            groups = values[:, j:j + full * self.step].reshape(values.shape[0], full, self.step, -1)
            sums = torch.zeros_like(groups[:, :, 0])
            for i in range(self.step):
                sums += groups[:, :, i]
            self.up.push(sums)
            j += full * self.step
        for i in range(j, m):
            self._add(values[:, i])

    def _add(self, value: torch.Tensor) -> None:
        self.acc = self.acc + value
        self.count += 1
        if self.count == self.step:
            self.up.push(self.acc.unsqueeze(1))
            self.acc, self.count = torch.zeros_like(self.acc), 0


class _Cascade:
    """Torch's float32 inner-dimension sum of rows of n values (``vectorized_inner_sum``), fed in order.

    The n values are read as vectors of ``lanes``; groups of 4 vectors form "rows" summed lane-wise over 4
    levels of accumulators that flush every 2**p rows (p = max(4, ceil(log2(rows)) // 4)); the vectors after
    the last whole row go into the first vector, the 4 vectors are added, then the leftover scalars and the
    lanes are added one by one to a scalar."""

    def __init__(self, K: int, n: int, lanes: int) -> None:
        self.K, self.n, self.lanes = K, n, lanes
        self.vectors = n // lanes
        rows = self.vectors // 4
        self.rows_end = rows * 4 * lanes
        p = max(4, (1 if rows <= 2 else (rows - 1).bit_length()) // 4)
        top = _Level((K, 4 * lanes), None, None)
        self.levels = [_Level((K, 4 * lanes), 1 << p, None) for _ in range(3)] + [top]
        for low, high in zip(self.levels, self.levels[1:]):
            low.up = high
        self.seen, self.pending, self.tail = 0, torch.zeros(K, 0), []

    def add(self, x: torch.Tensor) -> None:
        """Feed the next columns [K, c]."""
        take = max(0, min(x.shape[1], self.rows_end - self.seen))
        self.seen += x.shape[1]
        if take < x.shape[1]:
            self.tail.append(x[:, take:].clone())  # the caller may reuse x's memory
        x = x[:, :take]
        width = 4 * self.lanes
        if self.pending.shape[1]:
            need = width - self.pending.shape[1]
            self.pending = torch.cat([self.pending, x[:, :need]], 1)
            x = x[:, need:]
            if self.pending.shape[1] < width:
                return
            self.levels[0].push(self.pending.unsqueeze(1))
            self.pending = self.pending[:, :0]
        whole = x.shape[1] // width * width
        if whole:
            self.levels[0].push(x[:, :whole].reshape(self.K, -1, width))
        self.pending = x[:, whole:].clone()

    def result(self) -> torch.Tensor:
        """The K sums (float32)."""
        if self.seen != self.n:
            raise RuntimeError(f"the sum was fed {self.seen} of {self.n} values")
        acc = self.levels[0].acc
        for level in self.levels[1:]:
            acc = acc + level.acc
        vec = acc.reshape(self.K, 4, self.lanes)
        first = vec[:, 0]
        tail = torch.cat(self.tail, 1) if self.tail else torch.zeros(self.K, 0)
        loose = self.vectors * self.lanes - self.rows_end  # whole vectors after the last whole row
        for v in range(0, loose, self.lanes):
            first = first + tail[:, v:v + self.lanes]
        for k in range(1, 4):
            first = first + vec[:, k]
        total = torch.zeros(self.K)
        for i in range(loose, tail.shape[1]):
            total = total + tail[:, i]
        for lane in range(self.lanes):
            total = total + first[:, lane]
        return total


class CascadeSum:
    """``x.sum(1)`` of float32 x [K, N] as torch computes it, with the N columns fed in order in chunks.

    With K >= 2 each row is one cascade. A single row of N >= GRAIN values on several threads is torch's
    two-pass reduction: one cascade per thread chunk, then the per-thread results summed."""

    def __init__(self, K: int, N: int, lanes: int, threads: int) -> None:
        self.K = K
        if K == 1 and N >= GRAIN and threads > 1:
            parts = min(threads, -(-N // GRAIN))
            size = -(-N // parts)
            self.bounds = [(t * size, min(N, (t + 1) * size)) for t in range(parts) if t * size < N]
        else:
            self.bounds = [(0, N)]
        self.threads = threads
        self.parts = [_Cascade(K, e - b, lanes) for b, e in self.bounds]
        self.fed = 0

    def add(self, x: torch.Tensor) -> None:
        """Feed the next columns [K, c]."""
        for (b, e), part in zip(self.bounds, self.parts):
            lo, hi = max(b, self.fed), min(e, self.fed + x.shape[1])
            if lo < hi:
                part.add(x[:, lo - self.fed:hi - self.fed])
        self.fed += x.shape[1]

    def result(self) -> torch.Tensor:
        """The K sums (float32)."""
        if self.K == 0:
            return torch.zeros(0)
        sums = [part.result() for part in self.parts]
        if len(sums) == 1:
            return sums[0]
        buffer = torch.zeros(self.threads)  # one slot per thread, as torch's two-pass buffer
        buffer[:len(sums)] = torch.cat(sums)
        return buffer.sum().reshape(1)


# ------------------------------------------------------------------------------------------------ platform

@dataclass(frozen=True)
class Platform:
    """What this platform's torch does, measured: ``sigmoid_block`` is the element count of the vectorised
    sigmoid loop's step (None: its scalar and vector formulas agree), ``sum_lanes`` the vector width of the
    float32 cascade sum (None: not reproduced, instance scores may then differ in the last bit)."""

    sigmoid_block: Optional[int]
    sum_lanes: Optional[int]


@functools.lru_cache(maxsize=None)
def platform(threads: int) -> Platform:
    """Measure :class:`Platform` for ``threads`` threads (once per process and thread count)."""
    block, ok = _measure_sigmoid_block(threads)
    lanes = _measure_sum_lanes(threads)
    if not ok:
        logger.warning("banded post-processing: torch.sigmoid's split into vector and scalar code was not "
                       "reproduced; a few sigmoids may differ from the full path in the last bit")
    if lanes is None:
        logger.warning("banded post-processing: torch's float32 sum was not reproduced; instance scores may "
                       "differ from the full path in the last bit")
    return Platform(block, lanes)


def _measure_sigmoid_block(threads: int) -> tuple[Optional[int], bool]:
    """(block, reproduced): the step of torch.sigmoid's vector loop, None if both formulas agree."""
    x = torch.randn(8192, generator=torch.Generator().manual_seed(0)) * 6
    vector = torch.sigmoid(x)  # one chunk whose length is a multiple of any block: all vectorised
    scalar = torch.cat([torch.sigmoid(x[i:i + 4]) for i in range(0, x.numel(), 4)])  # shorter than a block
    differ = (vector != scalar).nonzero().flatten()
    if differ.numel() == 0:
        return None, True
    # a probe where every element differs between the formulas tells exactly which path computed it
    n = GRAIN * max(2, threads) + 4095  # split across threads; 4095 tells blocks of 8 ... 256 apart
    reps = -(-n // differ.numel())
    probe, vec, sca = (t[differ].repeat(reps)[:n] for t in (x, vector, scalar))
    got = torch.sigmoid(probe)
    for block in (8, 16, 32, 64, 128, 256):
        expected = vec.clone()
        for s, e in _scalar_ranges(n, threads, block):
            expected[s:e] = sca[s:e]
        if torch.equal(expected, got) and torch.equal(torch.sigmoid(probe[:4095]), torch.where(
                torch.arange(4095) >= 4095 - 4095 % block, sca[:4095], vec[:4095])):
            return block, True
    return 32, False


def _measure_sum_lanes(threads: int) -> Optional[int]:
    """The vector width with which :class:`CascadeSum` reproduces ``torch.sum`` here, or None."""
    gen = torch.Generator().manual_seed(1)
    probes = [torch.rand(3, 4095, generator=gen), torch.rand(2, 70001, generator=gen),
              torch.rand(1, 2 * GRAIN * max(2, threads) + 12345, generator=gen)]
    for lanes in (8, 16, 4, 32):
        if all(torch.equal(_replay_sum(x, lanes, threads), x.sum(1)) for x in probes):
            return lanes
    return None


def _replay_sum(x: torch.Tensor, lanes: int, threads: int) -> torch.Tensor:
    """:class:`CascadeSum` of x [K, N], fed in uneven chunks."""
    total = CascadeSum(x.shape[0], x.shape[1], lanes, threads)
    for s in range(0, x.shape[1], 9973):
        total.add(x[:, s:s + 9973])
    return total.result()

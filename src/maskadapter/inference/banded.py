"""Banded post-processing: the full-tensor outputs at any output size, holding one band of output rows at a time.

The full-tensor composition (:func:`postprocess_full`, what ``Predictor._postprocess`` runs) resizes all Q mask
logits to the output size at once: Q x H x W floats, 12 GB for 250 queries at 12 megapixels.
:func:`postprocess_banded` returns the same outputs bit for bit: semantic argmax, panoptic ids, segments, areas
and scores, instance RLEs, scores and order. It holds only a band of output rows of the resized logits
(``band_bytes``) plus the [H, W] output maps.

Being exact means repeating, band by band, the arithmetic of the CPU kernels that the full path runs:

* Bilinear resize (align_corners=False). Torch's generic CPU kernel is separable. Each output value is the
  height interpolation of two width-interpolated input rows. A band's width pass is torch's own kernel, run on
  the input rows the band reads; keeping the height copies values exactly. The height pass uses the kernel's
  row indices and weights, and combines the two rows like the kernel does: with a fused multiply-add
  (``addcmul``) where torch was built with FMA, else ``a * w0 + b * w1``. A probe against ``F.interpolate``
  picks that variant for each (h, H) and checks it on every output row.
* ``torch.sigmoid`` rounds differently in its vectorised body and in its scalar remainder, which is the last
  ``n % block`` elements of each thread's chunk. The positions where the full path used the scalar formula
  follow from its tensor size and the thread count. Each band is patched at those positions.
* The instance mask score ``x.sum(1)`` is torch's cascade sum. :class:`_CascadeSum` replays it over the bands,
  with the same lanes, blocks and levels, and per-thread chunks when there is a single row.
* The semantic einsum calls the same GEMM on a band of pixel columns. Each output column does not depend on the
  other columns, as long as the band is wide enough for GEMM: torch uses a plain loop below Q*C*N = 400 and
  GEMV for N = 1.

The sigmoid block and the summation lanes are measured once per process and thread count (:func:`_platform`).
Inputs on other devices or dtypes, tiny outputs, and budgets the whole output fits in take the full path.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..constants import TASKS
from . import postprocess as pp
from .instances import Instances

__all__ = ["BandedOutput", "postprocess_banded", "postprocess_full"]

logger = logging.getLogger(__name__)

BoolLike = Union[torch.Tensor, Sequence[bool]]

_GRAIN = 32768  # at::internal::GRAIN_SIZE: element-wise ops and reductions give each thread a chunk of >= this
_MIN_GENERIC = 129  # torch's CPU bilinear kernel is the generic (separable) one only when out_h + out_w >= this
_SMALL_GEMM = 400  # torch multiplies matrices with Q*C*N < this by a plain loop instead of GEMM


@dataclass
class BandedOutput:
    """Post-processing outputs at ``size`` (H, W), as ``Predictor._postprocess`` computes them."""

    size: tuple[int, int]
    semantic: Optional[torch.Tensor] = None  #: [H, W] int64 class index
    panoptic: Optional[torch.Tensor] = None  #: [H, W] int32 segment id, 0 = none
    segments: list[dict] = field(default_factory=list)  #: id, isthing, category_id, score, area
    instances: Optional[Instances] = None  #: RLE masks, scores, classes
    bands: int = 1  #: row bands of the longest pass (the full-tensor path counts as 1; 0: nothing to resize)


# ------------------------------------------------------------------------------------------------ entry points

def postprocess_full(
    mask_cls: torch.Tensor, mask_pred: torch.Tensor, size: tuple[int, int], out_size: tuple[int, int],
    tasks: Sequence[str], is_thing: Optional[BoolLike], *, before: bool, object_mask_threshold: float,
    overlap_threshold: float, top_k: int,
) -> BandedOutput:
    """Outputs at ``out_size`` from log-probs [Q, C+1] and padded logits [Q, Hp, Wp], all Q resized at once."""
    tasks = _check_tasks(tasks)
    out = BandedOutput(size=(int(out_size[0]), int(out_size[1])))
    mask_full = None
    if "semantic" in tasks and not before:
        sem = pp.semantic_inference(mask_cls, mask_pred)
        out.semantic = pp.sem_seg_postprocess(sem, size, *out.size).argmax(0)
    if ("semantic" in tasks and out.semantic is None) or "panoptic" in tasks or "instance" in tasks:
        mask_full = pp.sem_seg_postprocess(mask_pred, size, *out.size)
        mask_cls = mask_cls.to(mask_full.dtype)
    if "semantic" in tasks and out.semantic is None:
        out.semantic = pp.semantic_inference(mask_cls, mask_full).argmax(0)
    if "panoptic" in tasks:
        out.panoptic, out.segments = pp.panoptic_inference(
            mask_cls, mask_full, is_thing, object_mask_threshold, overlap_threshold)
    if "instance" in tasks:
        inst = pp.instance_inference(mask_cls, mask_full, is_thing, top_k)
        out.instances = Instances.from_masks(inst["masks"], inst["scores"], inst["classes"])
    return out


def postprocess_banded(
    mask_cls: torch.Tensor, mask_pred: torch.Tensor, size: tuple[int, int], out_size: tuple[int, int],
    tasks: Sequence[str], is_thing: Optional[BoolLike], *, before: bool, object_mask_threshold: float,
    overlap_threshold: float, top_k: int, band_bytes: int = 256 * 2**20, progress: bool = False,
) -> BandedOutput:
    """:func:`postprocess_full`'s outputs, bit for bit, from log-probs [Q, C+1] and padded logits [Q, Hp, Wp].

    ``size`` (h, w) is the image inside the padding and ``out_size`` (H, W) the output size. ``before`` is
    ``postprocess_before_inference``: when False, the semantic scores are computed at network resolution and
    then resized. ``band_bytes`` is the approximate peak size of one band's working tensors: the band's resized
    logits and what is derived from them. The [H, W] outputs come on top of it. The full path runs instead
    (``BandedOutput.bands == 1``) when the whole output fits in the budget, when the logits are not float32 on
    the CPU, and for tiny outputs. ``progress`` shows a progress bar over the bands.
    """
    tasks = _check_tasks(tasks)
    hwHW = _check_sizes(mask_cls, mask_pred, size, out_size)
    if int(band_bytes) < 1:
        raise ValueError(f"band_bytes must be positive, got {band_bytes}")
    args = {"before": bool(before), "object_mask_threshold": object_mask_threshold,
            "overlap_threshold": overlap_threshold, "top_k": top_k}
    threads = torch.get_num_threads()
    reason = _full_path_reason(mask_cls, mask_pred, hwHW, tasks, bool(before), threads)
    job = None if reason else _Job(mask_cls, mask_pred, hwHW, tasks, is_thing, threads, **args)
    if job is not None and not job.resizer.exact:
        reason = "torch's bilinear kernel was not reproduced on this platform"
        logger.warning("banded post-processing: %s; using the full-tensor path", reason)
    elif job is not None and job.fits(int(band_bytes)):
        reason = "the output fits in band_bytes"
    if reason:
        logger.debug("full-tensor post-processing: %s", reason)
        return postprocess_full(mask_cls, mask_pred, size, out_size, tasks, is_thing, **args)
    return job.run(int(band_bytes), progress)


def _check_tasks(tasks: Union[str, Sequence[str]]) -> tuple[str, ...]:
    tasks = (tasks,) if isinstance(tasks, str) else tuple(tasks)
    if not tasks or any(t not in TASKS for t in tasks):
        raise ValueError(f"tasks must be a non-empty subset of {TASKS}, got {list(tasks)}")
    return tasks


def _check_sizes(mask_cls: torch.Tensor, mask_pred: torch.Tensor, size: Sequence[int],
                 out_size: Sequence[int]) -> tuple[int, int, int, int]:
    pp._check_cls_and_masks(mask_cls, mask_pred, has_void=True)
    if len(size) != 2 or len(out_size) != 2:
        raise ValueError(f"size and out_size must be (h, w) pairs, got {size!r} and {out_size!r}")
    h, w, H, W = int(size[0]), int(size[1]), int(out_size[0]), int(out_size[1])
    if not (0 < h <= mask_pred.shape[1] and 0 < w <= mask_pred.shape[2]):
        raise ValueError(f"size {(h, w)} must be positive and fit in mask_pred's {tuple(mask_pred.shape[1:])}")
    if H <= 0 or W <= 0:
        raise ValueError(f"out_size must be positive, got {(H, W)}")
    return h, w, H, W


def _full_path_reason(mask_cls: torch.Tensor, mask_pred: torch.Tensor, hwHW: tuple[int, int, int, int],
                      tasks: tuple[str, ...], before: bool, threads: int) -> Optional[str]:
    """Why the full path must run, or None: the kernels are reproduced for float32 CPU tensors only, and only
    torch's generic bilinear kernel is (not its channels-last one, taken for tiny outputs and for 3 channels
    on one thread)."""
    h, w, H, W = hwHW
    if mask_pred.device.type != "cpu" or mask_pred.dtype != torch.float32:
        return f"banding reproduces float32 CPU kernels, got {mask_pred.dtype} on {mask_pred.device}"
    if H + W < _MIN_GENERIC or h * w == 1:
        return "tiny output or input"
    resized = {mask_pred.shape[0]} | ({mask_cls.shape[1] - 1} if "semantic" in tasks and not before else set())
    if threads == 1 and 3 in resized:
        return "3 channels on one thread"
    return None


def _argmax0(x: torch.Tensor) -> torch.Tensor:
    """``x.argmax(0)``: torch documents both as the first maximal index; ``max`` is several times faster over a
    short leading dimension."""
    return x.max(0).indices


def _bands(H: int, rows: int, min_rows: int) -> list[tuple[int, int]]:
    """Row ranges [r0, r1) of ``rows`` rows covering [0, H); a last band shorter than ``min_rows`` is merged."""
    bands = [(r0, min(H, r0 + rows)) for r0 in range(0, H, rows)]
    if len(bands) > 1 and bands[-1][1] - bands[-1][0] < min_rows:
        bands[-2:] = [(bands[-2][0], H)]
    return bands


def _progress(bands: list[tuple[int, int]], progress: bool, desc: str):
    from tqdm import tqdm

    return tqdm(bands, desc=desc, unit="band", disable=not progress, leave=False)


# ------------------------------------------------------------------------------------------------ the job

class _Scratch:
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


def _fresh(key: str, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.empty(*shape, dtype=dtype)


class _Job:
    """One banded call: the tasks' accumulators, the queries to resize, the band plan and the passes."""

    def __init__(self, mask_cls: torch.Tensor, mask_pred: torch.Tensor, hwHW: tuple[int, int, int, int],
                 tasks: tuple[str, ...], is_thing: Optional[BoolLike], threads: int, *, before: bool,
                 object_mask_threshold: float, overlap_threshold: float, top_k: int) -> None:
        h, w, H, W = hwHW
        self.hwHW, self.threads = hwHW, threads
        self.mask_cls, self.mask_pred = mask_cls, mask_pred
        self.platform = _platform(threads)
        self.resizer = _Rows(h, w, H, W, threads)
        cls = mask_cls.to(mask_pred.dtype)  # the full path casts it to the resized logits' dtype
        Q, C = mask_cls.shape[0], mask_cls.shape[1] - 1
        self.sem_after = "semantic" in tasks and not before
        self.semantic = _Semantic(cls, H, W) if "semantic" in tasks and before else None
        self.panoptic = (_Panoptic(cls, is_thing, object_mask_threshold, overlap_threshold, H, W)
                         if "panoptic" in tasks else None)
        self.instance = _Instances(cls, is_thing, top_k, H, W, self.platform, threads) \
            if "instance" in tasks else None
        self.parts = [p for p in (self.semantic, self.panoptic, self.instance) if p is not None]
        if self.semantic is not None:
            self.queries = torch.arange(Q)
        else:
            self.queries = torch.cat([p.queries for p in self.parts] + [torch.zeros(0, dtype=torch.long)]).unique()
        self.position = torch.full((Q,), -1, dtype=torch.long)  # query -> its row among the resized ones
        self.position[self.queries] = torch.arange(len(self.queries))
        self.C = C

    def _rows(self, band_bytes: int, channels: int, per_row_extra: float) -> int:
        """Rows per band so that the band's float tensors stay near ``band_bytes``: the resized channels (the
        width pass's input rows, the two gathered rows, the result, its sigmoid) and the tasks' tensors."""
        h, _, H, W = self.hwHW
        per_row = 4 * W * (4 * channels + per_row_extra + channels * h / H)
        return max(1, int((band_bytes - 12 * W * channels) // max(per_row, 1.0)))

    def _mask_rows(self, band_bytes: int) -> int:
        rows = self._rows(band_bytes, len(self.queries), sum(p.per_row for p in self.parts))
        return max(rows, self._min_rows())

    def _min_rows(self) -> int:
        return self.semantic.min_rows(len(self.queries), self.hwHW[3]) if self.semantic is not None else 1

    def fits(self, band_bytes: int) -> bool:
        """True when one band would hold what the full path resizes (all Q logits for the mask tasks, the C
        class scores for a semantic map after inference): the full path is then as small, and faster."""
        H, Q = self.hwHW[2], self.position.numel()
        masks_fit = not self.parts or self._rows(band_bytes, Q, sum(p.per_row for p in self.parts)) >= H
        sem_fits = not self.sem_after or self._rows(band_bytes, self.C, 1) >= H
        return masks_fit and sem_fits

    @torch.no_grad()
    def run(self, band_bytes: int, progress: bool) -> BandedOutput:
        """Run the passes over the bands; returns the outputs."""
        H, W = self.hwHW[2:]
        out = BandedOutput(size=(H, W), bands=0)
        if self.sem_after:
            bands = _bands(H, self._rows(band_bytes, self.C, 1), 1)
            out.semantic, out.bands = self._semantic_after(bands, progress), len(bands)
        if len(self.queries):
            bands = _bands(H, self._mask_rows(band_bytes), self._min_rows())
            self._mask_pass(bands, progress)
            out.bands = max(out.bands, len(bands))
        if self.semantic is not None:
            out.semantic = self.semantic.labels
        if self.panoptic is not None:
            out.panoptic, out.segments = self.panoptic.finish()
        if self.instance is not None:
            out.instances = self.instance.finish()
        return out

    def _semantic_after(self, bands: list[tuple[int, int]], progress: bool) -> torch.Tensor:
        """Semantic scores at network resolution (the full path's tensor), resized and arg-maxed band by band."""
        h, w, H, W = self.hwHW
        sem = pp.semantic_inference(self.mask_cls, self.mask_pred)[:, :h, :w]
        labels = torch.empty((H, W), dtype=torch.long)
        scratch = _Scratch()
        for r0, r1 in _progress(bands, progress, "semantic"):
            labels[r0:r1] = _argmax0(self.resizer(sem, None, r0, r1, scratch))
        return labels

    def _mask_pass(self, bands: list[tuple[int, int]], progress: bool) -> None:
        """Resize the wanted queries band by band; give each task its rows of logits and sigmoids."""
        h, w = self.hwHW[:2]
        src = self.mask_pred[:, :h, :w]
        index = None if len(self.queries) == self.position.numel() else self.queries
        users = [p for p in (self.panoptic, self.instance, self.semantic) if p is not None and len(p.queries)]
        rows = [self.position[p.queries] for p in users]
        # each task patches its own copy of the sigmoids, except the last one when it takes them all in order
        shared = [i == len(users) - 1 and torch.equal(r, torch.arange(len(self.queries))) for i, r in enumerate(rows)]
        scratch = _Scratch()
        for r0, r1 in _progress(bands, progress, "postprocess"):
            logits = self.resizer(src, index, r0, r1, scratch)
            sig = _vector_sigmoid(logits, self.platform.sigmoid_block, self.threads, scratch("sig", logits.shape))
            for i, (part, index_rows, last) in enumerate(zip(users, rows, shared)):
                own = sig if last else torch.index_select(
                    sig, 0, index_rows, out=scratch(f"own{i}", (len(index_rows), *sig.shape[1:])))
                self._patch(own, logits, index_rows, r0, r1)
                part.band(r0, r1, own, logits, index_rows, scratch)

    def _patch(self, sig: torch.Tensor, logits: torch.Tensor, rows: Optional[torch.Tensor], r0: int, r1: int
               ) -> None:
        _patch_scalar_tails(sig, logits, rows, (r0, r1), self.hwHW[2], self.platform.sigmoid_block, self.threads)


# ------------------------------------------------------------------------------------------------ tasks

class _Semantic:
    """Semantic argmax of ``einsum(softmax(cls)[:, :C], sigmoid(logits))``, one band at a time."""

    def __init__(self, cls: torch.Tensor, H: int, W: int) -> None:
        self.probs = F.softmax(cls, dim=-1)[:, :-1]
        self.labels = torch.empty((H, W), dtype=torch.long)
        self.queries = torch.arange(cls.shape[0])
        self.per_row = self.probs.shape[1]  # the band's class scores

    def min_rows(self, Q: int, W: int) -> int:
        """Fewest rows that keep the band's einsum on GEMM, as the full one is (not GEMV, not the plain loop)."""
        columns = max(2, math.ceil(_SMALL_GEMM / max(1, Q * self.probs.shape[1])))
        return math.ceil(columns / W)

    def band(self, r0: int, r1: int, sig: torch.Tensor, logits: torch.Tensor, rows: torch.Tensor,
             scratch: _Scratch) -> None:
        """Labels of rows [r0, r1) from the sigmoids [Q, r1-r0, W] of all queries."""
        self.labels[r0:r1] = _argmax0(torch.einsum("qc,qhw->chw", self.probs, sig))


class _Panoptic:
    """Panoptic inference in two passes: per-band winners and areas, then segment ids painted from a code map."""

    def __init__(self, cls: torch.Tensor, is_thing: Optional[BoolLike], object_mask_threshold: float,
                 overlap_threshold: float, H: int, W: int) -> None:
        C = cls.shape[1] - 1
        self.thing = pp._as_bool_list(is_thing, C, "is_thing")
        self.overlap_threshold = overlap_threshold
        scores, labels = F.softmax(cls, dim=-1).max(-1)
        keep = labels.ne(C) & (scores > object_mask_threshold)
        self.queries, self.scores, self.classes = keep.nonzero().flatten(), scores[keep], labels[keep]
        K = len(self.queries)
        self.won, self.confident, self.in_segment = (torch.zeros(K, dtype=torch.long) for _ in range(3))
        # winner + 1 where the winner's own sigmoid >= 0.5, else 0
        self.code = torch.zeros((H, W), dtype=torch.int16 if K < 2**15 - 1 else torch.int32)
        self.per_row = 2 * K + 1  # the sigmoids of the kept queries and their scores times sigmoids

    def band(self, r0: int, r1: int, sig: torch.Tensor, logits: torch.Tensor, rows: torch.Tensor,
             scratch: _Scratch) -> None:
        """Winners and areas of rows [r0, r1) from the kept queries' sigmoids [K, r1-r0, W]."""
        K = len(self.queries)
        winner = _argmax0(torch.mul(self.scores.view(-1, 1, 1), sig, out=scratch("prob", sig.shape)))
        confident = torch.ge(sig, 0.5, out=scratch("confident", sig.shape, torch.bool))
        in_segment = confident.gather(0, winner.unsqueeze(0))[0]
        self.won += torch.bincount(winner.flatten(), minlength=K)
        self.confident += confident.view(K, -1).sum(1)
        self.in_segment += torch.bincount(winner[in_segment], minlength=K)
        self.code[r0:r1] = torch.where(in_segment, winner + 1, 0).to(self.code.dtype)

    def finish(self) -> tuple[torch.Tensor, list[dict]]:
        """Panoptic map int32 [H, W] and segment dicts, as :func:`postprocess.panoptic_inference` gives them."""
        segment_of_query, segments = _decide_segments(
            self.classes.tolist(), self.scores.tolist(), self.won.tolist(), self.confident.tolist(),
            self.in_segment.tolist(), self.thing, self.overlap_threshold)
        ids = torch.tensor([0] + segment_of_query, dtype=torch.int32)
        panoptic = torch.empty(self.code.shape, dtype=torch.int32)
        step = max(1, 2**22 // max(1, self.code.shape[1]))  # the int64 index copy stays small
        for r0 in range(0, self.code.shape[0], step):
            panoptic[r0:r0 + step] = ids[self.code[r0:r0 + step].long()]
        return panoptic, segments


def _decide_segments(classes: list[int], scores: list[float], won_area: list[int], original_area: list[int],
                     seg_area: list[int], thing: list[bool], overlap_threshold: float
                     ) -> tuple[list[int], list[dict]]:
    """The keep / overlap / stuff-merge rules of :func:`postprocess.panoptic_inference` on per-query areas:
    returns each kept query's segment id (0 = dropped) and the segment dicts."""
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


class _Instances:
    """Instance inference: masks as COCO RLEs built from the bands, mask scores as torch's sums replayed."""

    def __init__(self, cls: torch.Tensor, is_thing: Optional[BoolLike], top_k: int, H: int, W: int,
                 platform: "_Platform", threads: int) -> None:
        probs = F.softmax(cls, dim=-1)[:, :-1]
        self.class_scores, self.classes, self.queries = pp.top_k_detections(probs, is_thing, top_k)
        K = len(self.queries)
        self.size = (H, W)
        self.dtype = cls.dtype
        lanes = platform.sum_lanes or 8
        self.sums = _CascadeSum(K, H * W, lanes, threads)  # of sigmoid * mask
        self.areas = _CascadeSum(K, H * W, lanes, threads)  # of the mask as 0/1 floats
        self.runs = _RunLengths(K, H, W)
        self.per_row = 4 * K  # the instances' sigmoids, masks, masks as floats, products

    def band(self, r0: int, r1: int, sig: torch.Tensor, logits: torch.Tensor, rows: torch.Tensor,
             scratch: _Scratch) -> None:
        """Feed rows [r0, r1) of the instances' sigmoids [K, r1-r0, W] and of all resized logits [U, ., W]."""
        K = len(self.queries)
        own = torch.index_select(logits, 0, rows, out=scratch("instance logits", sig.shape))
        masks = torch.gt(own, 0, out=scratch("instance masks", sig.shape, torch.bool))
        flat = scratch("instance flat", (K, sig[0].numel())).copy_(masks.view(K, -1))
        self.sums.add(torch.mul(sig.view(K, -1), flat, out=scratch("instance product", flat.shape)))
        self.areas.add(flat)
        self.runs.add(masks, r0)

    def finish(self) -> Instances:
        """Instances as ``Instances.from_masks(**instance_inference(...))`` gives them."""
        acc = torch.promote_types(self.dtype, torch.float32)
        mask_score = self.sums.result() / (self.areas.result() + 1e-6)
        scores = (self.class_scores.to(acc) * mask_score).to(self.dtype)
        return Instances(self.size, scores, self.classes.long(), self.runs.finish())


# ------------------------------------------------------------------------------------------------ bilinear rows

class _Rows:
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
                 scratch: Optional[_Scratch] = None) -> torch.Tensor:
        """Rows [r0, r1) [len(index) or Ch, r1-r0, W] of channels ``index`` (None: all) of ``src`` resized
        (in ``scratch`` buffers when given: valid until its next use)."""
        a, b = self.span(r0, r1)
        # The width pass must take the generic kernel as the full resize does: >= _MIN_GENERIC output rows +
        # columns, no 1x1 input plane, not 3 channels on one thread. Extra (repeated) rows are dropped after.
        extra = max(_MIN_GENERIC - self.W - (b - a), 1 if (b - a == 1 and self.w == 1) else 0, 0)
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
    k = max(1, _MIN_GENERIC - H)  # enough columns for the generic kernel
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
    if numel < _GRAIN or threads == 1:
        chunks = [(0, numel)]
    else:
        parts = min(threads, -(-numel // _GRAIN))
        size = -(-numel // parts)
        chunks = [(t * size, min(numel, (t + 1) * size)) for t in range(parts) if t * size < numel]
    return [(e - (e - b) % block, e) for b, e in chunks if (e - b) % block]


def _vector_sigmoid(x: torch.Tensor, block: Optional[int], threads: int, out: Optional[torch.Tensor] = None
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


def _patch_scalar_tails(sig: torch.Tensor, logits: torch.Tensor, rows: Optional[torch.Tensor],
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


class _CascadeSum:
    """``x.sum(1)`` of float32 x [K, N] as torch computes it, with the N columns fed in order in chunks.

    With K >= 2 each row is one cascade. A single row of N >= GRAIN values on several threads is torch's
    two-pass reduction: one cascade per thread chunk, then the per-thread results summed."""

    def __init__(self, K: int, N: int, lanes: int, threads: int) -> None:
        self.K = K
        if K == 1 and N >= _GRAIN and threads > 1:
            parts = min(threads, -(-N // _GRAIN))
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


# ------------------------------------------------------------------------------------------------ RLE

class _RunLengths:
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


# ------------------------------------------------------------------------------------------------ platform

@dataclass(frozen=True)
class _Platform:
    """What this platform's torch does, measured: ``sigmoid_block`` is the element count of the vectorised
    sigmoid loop's step (None: its scalar and vector formulas agree), ``sum_lanes`` the vector width of the
    float32 cascade sum (None: not reproduced, instance scores may then differ in the last bit)."""

    sigmoid_block: Optional[int]
    sum_lanes: Optional[int]


@functools.lru_cache(maxsize=None)
def _platform(threads: int) -> _Platform:
    """Measure :class:`_Platform` for ``threads`` threads (once per process and thread count)."""
    block, ok = _measure_sigmoid_block(threads)
    lanes = _measure_sum_lanes(threads)
    if not ok:
        logger.warning("banded post-processing: torch.sigmoid's split into vector and scalar code was not "
                       "reproduced; a few sigmoids may differ from the full path in the last bit")
    if lanes is None:
        logger.warning("banded post-processing: torch's float32 sum was not reproduced; instance scores may "
                       "differ from the full path in the last bit")
    return _Platform(block, lanes)


def _measure_sigmoid_block(threads: int) -> tuple[Optional[int], bool]:
    """(block, reproduced): the step of torch.sigmoid's vector loop, None if both formulas agree."""
    x = torch.randn(8192, generator=torch.Generator().manual_seed(0)) * 6
    vector = torch.sigmoid(x)  # one chunk whose length is a multiple of any block: all vectorised
    scalar = torch.cat([torch.sigmoid(x[i:i + 4]) for i in range(0, x.numel(), 4)])  # shorter than a block
    differ = (vector != scalar).nonzero().flatten()
    if differ.numel() == 0:
        return None, True
    # a probe where every element differs between the formulas tells exactly which path computed it
    n = _GRAIN * max(2, threads) + 4095  # split across threads; 4095 tells blocks of 8 ... 256 apart
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
    """The vector width with which :class:`_CascadeSum` reproduces ``torch.sum`` here, or None."""
    gen = torch.Generator().manual_seed(1)
    probes = [torch.rand(3, 4095, generator=gen), torch.rand(2, 70001, generator=gen),
              torch.rand(1, 2 * _GRAIN * max(2, threads) + 12345, generator=gen)]
    for lanes in (8, 16, 4, 32):
        if all(torch.equal(_replay_sum(x, lanes, threads), x.sum(1)) for x in probes):
            return lanes
    return None


def _replay_sum(x: torch.Tensor, lanes: int, threads: int) -> torch.Tensor:
    """:class:`_CascadeSum` of x [K, N], fed in uneven chunks."""
    total = _CascadeSum(x.shape[0], x.shape[1], lanes, threads)
    for s in range(0, x.shape[1], 9973):
        total.add(x[:, s:s + 9973])
    return total.result()

"""Banded post-processing: the full-tensor outputs at any output size, holding one band of output rows at a time.

The full-tensor composition (:func:`postprocess_full`, what ``Predictor._postprocess`` runs on small outputs)
resizes all Q mask logits to the output size at once: Q x H x W floats, 12 GB for 250 queries at 12 megapixels.
:func:`postprocess_banded` computes the same formulas over bands of output rows (``band_bytes`` of working
tensors) plus the [H, W] output maps: it resizes only the queries some task keeps, takes maxima instead of
argmax (the same first index, faster over a short leading dimension) and reuses its buffers from band to band.

The contract with the full path is that of any two float computations run in another order: the bilinear rows,
sigmoids, GEMMs and sums of a band round like the full tensor's only up to a few float32 ulps (torch picks
kernels, vector widths and thread splits by tensor size and CPU). So decisions (semantic labels, panoptic ids,
instance mask pixels) are equal except where the deciding values are within float rounding of a tie or of a
threshold, and scores agree to float rounding (``tests/contract.py`` states the tolerances, 1e-5). The same holds
between thread counts and CPU instruction sets for the full path itself.

Infinite mask logits are saturated to the dtype's largest finite value / 4 on both paths before resizing: their
sigmoid and sign are unchanged, and a zero interpolation weight then gives 0 instead of ``inf * 0 = NaN``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

from ..constants import TASKS
from . import postprocess as pp
from .instances import Instances, RunLengths

__all__ = ["BandedOutput", "postprocess_banded", "postprocess_full"]

logger = logging.getLogger(__name__)

BoolLike = Union[torch.Tensor, Sequence[bool]]


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
    mask_pred = saturate_infinite(mask_pred)
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
    """:func:`postprocess_full`'s outputs (equal up to float-rounding near-ties) from log-probs [Q, C+1] and
    padded logits [Q, Hp, Wp], holding one band of output rows at a time.

    ``size`` (h, w) is the image inside the padding and ``out_size`` (H, W) the output size. ``before`` is
    ``postprocess_before_inference``: when False, the semantic scores are computed at network resolution and
    then resized. ``band_bytes`` is the approximate peak size of one band's working tensors: the band's resized
    logits and what is derived from them. The [H, W] outputs come on top of it. The full path runs instead
    (``BandedOutput.bands == 1``) when the whole output fits in the budget and when the logits are not float32 /
    float64 on the CPU. ``progress`` shows a progress bar over the bands.
    """
    tasks = _check_tasks(tasks)
    hwHW = _check_sizes(mask_cls, mask_pred, size, out_size)
    if int(band_bytes) < 1:
        raise ValueError(f"band_bytes must be positive, got {band_bytes}")
    args = {"before": bool(before), "object_mask_threshold": object_mask_threshold,
            "overlap_threshold": overlap_threshold, "top_k": top_k}
    reason = None
    if mask_pred.device.type != "cpu" or mask_pred.dtype not in (torch.float32, torch.float64):
        reason = f"banding runs on float32/float64 CPU tensors, got {mask_pred.dtype} on {mask_pred.device}"
    job = None if reason else _Job(mask_cls, mask_pred, hwHW, tasks, is_thing, **args)
    if job is not None and job.fits(int(band_bytes)):
        reason = "the output fits in band_bytes"
    if reason:
        logger.debug("full-tensor post-processing: %s", reason)
        return postprocess_full(mask_cls, mask_pred, size, out_size, tasks, is_thing, **args)
    return job.run(int(band_bytes), progress)


def saturate_infinite(mask_pred: torch.Tensor) -> torch.Tensor:
    """``mask_pred`` [..., H, W] with +-inf replaced by +-(largest finite / 4), NaN kept: same sigmoid and sign,
    and resizing never multiplies an infinity by a zero weight (NaN) nor overflows a weighted sum."""
    if not _maybe_infinite(mask_pred):
        return mask_pred
    big = torch.finfo(mask_pred.dtype).max / 4
    return mask_pred.clamp(-big, big)


def _maybe_infinite(x: torch.Tensor) -> bool:
    """False when ``x`` surely holds no infinity: its min and max (one pass, no [..] temporary) are finite; a NaN
    hides them, so NaN counts as maybe."""
    if not x.is_floating_point() or x.numel() == 0:
        return False
    return not bool(torch.isfinite(torch.stack(torch.aminmax(x))).all())


def _check_tasks(tasks: Union[str, Sequence[str]]) -> tuple[str, ...]:
    tasks = (tasks,) if isinstance(tasks, str) else tuple(tasks)
    if not tasks or any(t not in TASKS for t in tasks):
        raise ValueError(f"tasks must be a non-empty subset of {TASKS}, got {list(tasks)}")
    return tasks


def _check_sizes(mask_cls: torch.Tensor, mask_pred: torch.Tensor, size: Sequence[int],
                 out_size: Sequence[int]) -> tuple[int, int, int, int]:
    pp.check_cls_and_masks(mask_cls, mask_pred, has_void=True)
    if len(size) != 2 or len(out_size) != 2:
        raise ValueError(f"size and out_size must be (h, w) pairs, got {size!r} and {out_size!r}")
    h, w, H, W = int(size[0]), int(size[1]), int(out_size[0]), int(out_size[1])
    if not (0 < h <= mask_pred.shape[1] and 0 < w <= mask_pred.shape[2]):
        raise ValueError(f"size {(h, w)} must be positive and fit in mask_pred's {tuple(mask_pred.shape[1:])}")
    if H <= 0 or W <= 0:
        raise ValueError(f"out_size must be positive, got {(H, W)}")
    return h, w, H, W


def _argmax0(x: torch.Tensor) -> torch.Tensor:
    """``x.argmax(0)``: torch documents both as the first maximal index; ``max`` is several times faster over a
    short leading dimension."""
    return x.max(0).indices


def _bands(H: int, rows: int) -> list[tuple[int, int]]:
    """Row ranges [r0, r1) of ``rows`` rows covering [0, H)."""
    return [(r0, min(H, r0 + rows)) for r0 in range(0, H, rows)]


def _progress(bands: list[tuple[int, int]], progress: bool, desc: str):
    from tqdm import tqdm

    return tqdm(bands, desc=desc, unit="band", disable=not progress, leave=False)


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


class _Rows:
    """Rows [r0, r1) of ``F.interpolate(src[None], (H, W), mode="bilinear", align_corners=False)[0]`` for
    ``src`` [Ch, h, w] (to float rounding), from the input rows they read: a 1-D linear resize of those rows'
    width, then each output row as the weighted sum of its two input rows, with torch's own rows and weights."""

    def __init__(self, h: int, w: int, H: int, W: int, dtype: torch.dtype, saturate: bool = False) -> None:
        self.w, self.W, self.identity, self.saturate = w, W, h == H, saturate
        if not self.identity:  # same height: every output row is its input row
            self.i0, self.i1, w0, w1 = _height_weights(h, H, dtype)
            self.w0, self.w1 = w0[:, None], w1[:, None]

    def span(self, r0: int, r1: int) -> tuple[int, int]:
        """Input rows [a, b) that output rows [r0, r1) read."""
        return (r0, r1) if self.identity else (int(self.i0[r0]), int(self.i1[r1 - 1]) + 1)

    def __call__(self, src: torch.Tensor, index: Optional[torch.Tensor], r0: int, r1: int,
                 scratch: Scratch) -> torch.Tensor:
        """Rows [len(index) or Ch, r1-r0, W] of channels ``index`` (None: all) of ``src`` resized (in ``scratch``
        buffers: valid until its next use)."""
        a, b = self.span(r0, r1)
        # advanced indexing is one kernel; index_select of a strided view copies index by index (slow)
        x = src[:, a:b] if index is None else src[index, a:b]
        if self.saturate:  # the band's rows only: no copy of the whole input
            x = saturate_infinite(x)
        if self.w != self.W:
            x = F.interpolate(x, size=self.W, mode="linear", align_corners=False)  # [Ch, rows, w] as [N, C, L]
        if self.identity:
            return x
        shape = (x.shape[0], r1 - r0, self.W)
        t0 = torch.index_select(x, 1, self.i0[r0:r1] - a, out=scratch("row0", shape, x.dtype))
        t1 = torch.index_select(x, 1, self.i1[r0:r1] - a, out=scratch("row1", shape, x.dtype))
        return t1.mul_(self.w1[r0:r1]).addcmul_(t0, self.w0[r0:r1])  # two passes over the band, not three



def _height_weights(h: int, H: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """Torch's source rows and weights (i0, i1, w0, w1) [H] of a bilinear resize from h to H rows.

    Asked of ``F.interpolate`` itself, so they hold for any torch version and build: resizing one-hot rows
    gives each weight exactly (``1 * w + 0 * w'``). A formula would round the source index differently (by
    up to one ulp of the index, 1e-5 of a logit step at 200 rows), which moves values near a threshold."""
    chunk, width = 256, max(1, 129 - H)  # kept width: the width weights are exactly (1, 0)
    weights = torch.zeros(h + 1, H, dtype=dtype)  # row h: the zero weight of a missing next row
    for j0 in range(0, h, chunk):
        j = torch.arange(j0, min(h, j0 + chunk))
        probe = torch.zeros(max(4, len(j)), h, width, dtype=dtype)  # >= 4 channels: the generic kernel
        probe[torch.arange(len(j)), j] = 1
        out = F.interpolate(probe[None], size=(H, width), mode="bilinear", align_corners=False)[0, :, :, 0]
        weights[j] = out[:len(j)]
    i0 = (weights[:h] != 0).to(torch.int8).argmax(0).long()  # the first row with a weight
    i1 = (i0 + 1).clamp(max=h - 1)
    w0, w1 = weights[i0, torch.arange(H)], weights[torch.where(i0 + 1 < h, i0 + 1, h), torch.arange(H)]
    return i0, i1, w0, w1

# ------------------------------------------------------------------------------------------------ the job

class _Job:
    """One banded call: the tasks' accumulators, the queries to resize, the band plan and the passes."""

    def __init__(self, mask_cls: torch.Tensor, mask_pred: torch.Tensor, hwHW: tuple[int, int, int, int],
                 tasks: tuple[str, ...], is_thing: Optional[BoolLike], *, before: bool,
                 object_mask_threshold: float, overlap_threshold: float, top_k: int) -> None:
        h, w, H, W = hwHW
        self.hwHW, self.itemsize = hwHW, mask_pred.element_size()
        self.mask_cls, self.mask_pred = mask_cls, mask_pred
        self.rows = _Rows(h, w, H, W, mask_pred.dtype, saturate=_maybe_infinite(mask_pred))
        cls = mask_cls.to(mask_pred.dtype)  # the full path casts it to the resized logits' dtype
        Q, self.C = mask_cls.shape[0], mask_cls.shape[1] - 1
        self.sem_after = "semantic" in tasks and not before
        self.semantic = _Semantic(cls, H, W) if "semantic" in tasks and before else None
        self.panoptic = (_Panoptic(cls, is_thing, object_mask_threshold, overlap_threshold, H, W)
                         if "panoptic" in tasks else None)
        self.instance = _Instances(cls, is_thing, top_k, H, W) if "instance" in tasks else None
        self.parts = [p for p in (self.semantic, self.panoptic, self.instance) if p is not None]
        # only the queries some task reads are resized
        self.queries = torch.cat([p.queries for p in self.parts] + [torch.zeros(0, dtype=torch.long)]).unique()
        self.position = torch.full((Q,), -1, dtype=torch.long)  # query -> its row among the resized ones
        self.position[self.queries] = torch.arange(len(self.queries))

    def _rows(self, band_bytes: int, channels: int, per_row_extra: float) -> int:
        """Rows per band so that the band's float tensors stay near ``band_bytes``: the resized channels (the
        width pass's input rows, the two gathered rows, the result, its sigmoid) and the tasks' tensors."""
        h, _, H, W = self.hwHW
        per_row = self.itemsize * W * (4 * channels + per_row_extra + channels * h / H)
        return max(1, int((band_bytes - 3 * self.itemsize * W * channels) // max(per_row, 1.0)))

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
            bands = _bands(H, self._rows(band_bytes, self.C, 1))
            out.semantic, out.bands = self._semantic_after(bands, progress), len(bands)
        if len(self.queries):
            bands = _bands(H, self._rows(band_bytes, len(self.queries), sum(p.per_row for p in self.parts)))
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
        scratch = Scratch()
        for r0, r1 in _progress(bands, progress, "semantic"):
            labels[r0:r1] = _argmax0(self.rows(sem, None, r0, r1, scratch))
        return labels

    def _mask_pass(self, bands: list[tuple[int, int]], progress: bool) -> None:
        """Resize the wanted queries band by band; give each task its rows of logits and sigmoids."""
        h, w = self.hwHW[:2]
        src = self.mask_pred[:, :h, :w]
        index = None if len(self.queries) == self.position.numel() else self.queries
        users = [p for p in (self.panoptic, self.instance, self.semantic) if p is not None and len(p.queries)]
        rows = [self.position[p.queries] for p in users]
        every = [torch.equal(r, torch.arange(len(self.queries))) for r in rows]
        scratch = Scratch()
        for r0, r1 in _progress(bands, progress, "postprocess"):
            logits = self.rows(src, index, r0, r1, scratch)
            sig = torch.sigmoid(logits, out=scratch("sig", logits.shape, logits.dtype))
            for i, (part, index_rows, all_rows) in enumerate(zip(users, rows, every)):
                own = sig if all_rows else torch.index_select(
                    sig, 0, index_rows, out=scratch(f"own{i}", (len(index_rows), *sig.shape[1:]), sig.dtype))
                part.band(r0, r1, own, logits, index_rows, scratch)


# ------------------------------------------------------------------------------------------------ tasks

class _Semantic:
    """Semantic argmax of ``einsum(softmax(cls)[:, :C], sigmoid(logits))``, one band at a time."""

    def __init__(self, cls: torch.Tensor, H: int, W: int) -> None:
        self.probs = F.softmax(cls, dim=-1)[:, :-1]
        # zeros: with no query every class scores 0 and the full path's argmax is class 0 everywhere
        self.labels = torch.zeros((H, W), dtype=torch.long)
        self.queries = torch.arange(cls.shape[0])
        self.per_row = self.probs.shape[1]  # the band's class scores

    def band(self, r0: int, r1: int, sig: torch.Tensor, logits: torch.Tensor, rows: torch.Tensor,
             scratch: Scratch) -> None:
        """Labels of rows [r0, r1) from the sigmoids [Q, r1-r0, W] of all queries."""
        self.labels[r0:r1] = _argmax0(torch.einsum("qc,qhw->chw", self.probs, sig))


class _Panoptic:
    """Panoptic inference in two passes: per-band winners and areas, then segment ids painted from a code map."""

    def __init__(self, cls: torch.Tensor, is_thing: Optional[BoolLike], object_mask_threshold: float,
                 overlap_threshold: float, H: int, W: int) -> None:
        C = cls.shape[1] - 1
        self.thing = pp.as_bool_list(is_thing, C, "is_thing")
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
             scratch: Scratch) -> None:
        """Winners and areas of rows [r0, r1) from the kept queries' sigmoids [K, r1-r0, W]."""
        K = len(self.queries)
        winner = _argmax0(torch.mul(self.scores.view(-1, 1, 1), sig, out=scratch("prob", sig.shape, sig.dtype)))
        confident = torch.ge(sig, 0.5, out=scratch("confident", sig.shape, torch.bool))
        in_segment = confident.gather(0, winner.unsqueeze(0))[0]
        self.won += torch.bincount(winner.flatten(), minlength=K)
        self.confident += confident.view(K, -1).sum(1)
        self.in_segment += torch.bincount(winner[in_segment], minlength=K)
        self.code[r0:r1] = torch.where(in_segment, winner + 1, 0).to(self.code.dtype)

    def finish(self) -> tuple[torch.Tensor, list[dict]]:
        """Panoptic map int32 [H, W] and segment dicts, as :func:`postprocess.panoptic_inference` gives them."""
        segment_of_query, segments = pp.decide_segments(
            self.classes.tolist(), self.scores.tolist(), self.won.tolist(), self.confident.tolist(),
            self.in_segment.tolist(), self.thing, self.overlap_threshold)
        ids = torch.tensor([0] + segment_of_query, dtype=torch.int32)
        panoptic = torch.empty(self.code.shape, dtype=torch.int32)
        step = max(1, 2**22 // max(1, self.code.shape[1]))  # the int64 index copy stays small
        for r0 in range(0, self.code.shape[0], step):
            panoptic[r0:r0 + step] = ids[self.code[r0:r0 + step].long()]
        return panoptic, segments


class _Instances:
    """Instance inference: masks as COCO RLEs built from the bands, mask scores from per-band sums."""

    def __init__(self, cls: torch.Tensor, is_thing: Optional[BoolLike], top_k: int, H: int, W: int) -> None:
        probs = F.softmax(cls, dim=-1)[:, :-1]
        self.class_scores, self.classes, self.queries = pp.top_k_detections(probs, is_thing, top_k)
        K = len(self.queries)
        self.size, self.dtype = (H, W), cls.dtype
        # float64 totals of each band's sum: rounding no larger than the full path's single float32 sum
        self.sums = torch.zeros(K, dtype=torch.float64)  # of sigmoid inside the mask
        self.areas = torch.zeros(K, dtype=torch.long)  # pixels of the mask
        self.runs = RunLengths(K, H, W)
        self.per_row = 3 * K  # the instances' sigmoids, logits, products (and the masks, a quarter as much)

    def band(self, r0: int, r1: int, sig: torch.Tensor, logits: torch.Tensor, rows: torch.Tensor,
             scratch: Scratch) -> None:
        """Feed rows [r0, r1) of the instances' sigmoids [K, r1-r0, W] and of all resized logits [U, ., W]."""
        K = len(self.queries)
        own = torch.index_select(logits, 0, rows, out=scratch("instance logits", sig.shape, sig.dtype))
        masks = torch.gt(own, 0, out=scratch("instance masks", sig.shape, torch.bool))
        inside = torch.mul(sig, masks, out=scratch("instance product", sig.shape, sig.dtype))
        self.sums += inside.view(K, -1).sum(1, dtype=torch.float64)
        self.areas += masks.view(K, -1).sum(1)
        self.runs.add(masks, r0)

    def finish(self) -> Instances:
        """Instances as ``Instances.from_masks(**instance_inference(...))`` gives them."""
        acc = torch.promote_types(self.dtype, torch.float32)
        mask_score = (self.sums / (self.areas.double() + 1e-6)).to(acc)
        scores = (self.class_scores.to(acc) * mask_score).to(self.dtype)
        return Instances(self.size, scores, self.classes.long(), self.runs.finish())

"""Banded post-processing: the full-tensor outputs at any output size, holding one band of output rows at a time.

The full-tensor composition (:func:`postprocess_full`, what ``Predictor._postprocess`` runs) resizes all Q mask
logits to the output size at once: Q x H x W floats, 12 GB for 250 queries at 12 megapixels.
:func:`postprocess_banded` returns the same outputs bit for bit: semantic argmax, panoptic ids, segments, areas
and scores, instance RLEs, scores and order. It holds only a band of output rows of the resized logits
(``band_bytes``) plus the [H, W] output maps.

Being exact means repeating, band by band, the arithmetic of the CPU kernels the full path runs: the bilinear
resize, ``torch.sigmoid``'s two rounding paths and torch's cascade sum are replicated in
:mod:`maskadapter.inference.torch_kernels` (checked against torch at run time), and the semantic einsum calls
the same GEMM on a band of pixel columns (wide enough that torch keeps using GEMM). Inputs on other devices or
dtypes, tiny outputs, and budgets the whole output fits in take the full path.
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
from .torch_kernels import (
    MIN_GENERIC,
    CascadeSum,
    Platform,
    Rows,
    Scratch,
    patch_scalar_tails,
    platform,
    vector_sigmoid,
)

__all__ = ["BandedOutput", "postprocess_banded", "postprocess_full"]

logger = logging.getLogger(__name__)

BoolLike = Union[torch.Tensor, Sequence[bool]]

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
    pp.check_cls_and_masks(mask_cls, mask_pred, has_void=True)
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
    if H + W < MIN_GENERIC or h * w == 1:
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

class _Job:
    """One banded call: the tasks' accumulators, the queries to resize, the band plan and the passes."""

    def __init__(self, mask_cls: torch.Tensor, mask_pred: torch.Tensor, hwHW: tuple[int, int, int, int],
                 tasks: tuple[str, ...], is_thing: Optional[BoolLike], threads: int, *, before: bool,
                 object_mask_threshold: float, overlap_threshold: float, top_k: int) -> None:
        h, w, H, W = hwHW
        self.hwHW, self.threads = hwHW, threads
        self.mask_cls, self.mask_pred = mask_cls, mask_pred
        self.platform = platform(threads)
        self.resizer = Rows(h, w, H, W, threads)
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
        scratch = Scratch()
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
        scratch = Scratch()
        for r0, r1 in _progress(bands, progress, "postprocess"):
            logits = self.resizer(src, index, r0, r1, scratch)
            sig = vector_sigmoid(logits, self.platform.sigmoid_block, self.threads, scratch("sig", logits.shape))
            for i, (part, index_rows, last) in enumerate(zip(users, rows, shared)):
                own = sig if last else torch.index_select(
                    sig, 0, index_rows, out=scratch(f"own{i}", (len(index_rows), *sig.shape[1:])))
                self._patch(own, logits, index_rows, r0, r1)
                part.band(r0, r1, own, logits, index_rows, scratch)

    def _patch(self, sig: torch.Tensor, logits: torch.Tensor, rows: Optional[torch.Tensor], r0: int, r1: int
               ) -> None:
        patch_scalar_tails(sig, logits, rows, (r0, r1), self.hwHW[2], self.platform.sigmoid_block, self.threads)


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
        winner = _argmax0(torch.mul(self.scores.view(-1, 1, 1), sig, out=scratch("prob", sig.shape)))
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
    """Instance inference: masks as COCO RLEs built from the bands, mask scores as torch's sums replayed."""

    def __init__(self, cls: torch.Tensor, is_thing: Optional[BoolLike], top_k: int, H: int, W: int,
                 platform: "Platform", threads: int) -> None:
        probs = F.softmax(cls, dim=-1)[:, :-1]
        self.class_scores, self.classes, self.queries = pp.top_k_detections(probs, is_thing, top_k)
        K = len(self.queries)
        self.size = (H, W)
        self.dtype = cls.dtype
        lanes = platform.sum_lanes or 8
        self.sums = CascadeSum(K, H * W, lanes, threads)  # of sigmoid * mask
        self.areas = CascadeSum(K, H * W, lanes, threads)  # of the mask as 0/1 floats
        self.runs = RunLengths(K, H, W)
        self.per_row = 4 * K  # the instances' sigmoids, masks, masks as floats, products

    def band(self, r0: int, r1: int, sig: torch.Tensor, logits: torch.Tensor, rows: torch.Tensor,
             scratch: Scratch) -> None:
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

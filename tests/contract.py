"""The numeric contract of post-processed outputs, as test assertions shared by every test tier.

Two runs of the same prediction (batch size 2 vs 1, two processes vs one, banded vs full post-processing, 1 vs 4
threads, AVX2 vs AVX-512 kernels, GPU vs CPU) round floats differently, so their decisions may differ where the
deciding values are within float rounding of each other. The contract, checked here from the *reference* run's
deciding values (what a test can compute from the logits):

* a semantic label may differ only where both labels' scores are within ``tol`` of the pixel's best score;
* a panoptic pixel may differ only where the two best ``score * sigmoid`` of the kept queries are within ``tol``
  (the winner), where the winner's ``sigmoid`` is within ``tol`` of 0.5 (its segment), or where the winner's whole
  segment is a near-tie of the overlap rule (its area ratio can cross ``overlap_threshold`` by near-tie pixels);
* an instance mask pixel may differ only where the logit is within ``tol`` of the threshold 0;
* scores agree within ``rtol`` relative error (plus what flipped near-tie mask pixels can move a mask mean).

``tol = atol + rtol * |value|``. Pixels whose deciding values are NaN are exempt (NaN has no order). Every
``assert_*`` function returns the number of differing pixels, so tests can report it.

Tolerances (why these numbers):

* :data:`TIE_ATOL` / :data:`TIE_RTOL` (1e-5): post-processing alone (banded vs full, thread counts, CPU ISAs)
  computes the same formulas in another order or vector width: resized logits and probabilities differ by a few
  float32 ulps (1.2e-7 relative each), so 1e-5 leaves two orders of magnitude of margin and still rejects any
  real bug (a wrong row, weight or query moves values by far more).
* :data:`MODEL_TIE_ATOL` / :data:`MODEL_TIE_RTOL` (1e-3): whole-model runs (batch size, processes, devices)
  also round the backbone, decoder and adapter differently. Measured on the tiny test model, batch size 2 vs 1:
  mask logits differ by up to 1.4e-6 (AVX-512 and AVX2 alike); real-size models accumulate more layers and GPUs
  other kernels, so near-ties are 1e-3 wide: still narrow enough that a wrong query, row or weight fails.
* :data:`SCORE_RTOL` (1e-5) / :data:`SCORE_ATOL` (1e-6): scores of post-processing alone;
  :data:`MODEL_SCORE_RTOL` (1e-4) for whole-model runs.

Usage (``tests/`` is on ``sys.path``): ``from contract import assert_outputs_contract, MODEL_TIE_ATOL``.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import torch

from maskadapter.inference import postprocess as pp

__all__ = [
    "TIE_ATOL", "TIE_RTOL", "MODEL_TIE_ATOL", "MODEL_TIE_RTOL", "SCORE_RTOL", "SCORE_ATOL", "MODEL_SCORE_RTOL",
    "assert_semantic_contract", "assert_masks_contract", "assert_panoptic_contract", "assert_scores_close",
    "assert_outputs_contract", "deciding_values", "capture_postprocess", "read_coco_run", "assert_coco_runs_contract",
]

TIE_ATOL = 1e-5  #: near-tie width of post-processing alone (absolute part)
TIE_RTOL = 1e-5  #: near-tie width of post-processing alone (relative part)
MODEL_TIE_ATOL = 1e-3  #: near-tie width of whole-model runs (batch size, processes, devices)
MODEL_TIE_RTOL = 1e-3
SCORE_RTOL = 1e-5  #: relative error of scores, post-processing alone
SCORE_ATOL = 1e-6
MODEL_SCORE_RTOL = 1e-4  #: relative error of scores, whole-model runs


def _tol(value: torch.Tensor, atol: float, rtol: float) -> torch.Tensor:
    return atol + rtol * value.abs()


def _t(x: Any) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def _report(what: str, bad: torch.Tensor, detail: str) -> None:
    if bool(bad.any()):
        where = bad.nonzero()[:5].tolist()
        raise AssertionError(f"{what}: {int(bad.sum())} differing pixels are not near-ties ({detail}); "
                             f"first at {where}")


def assert_semantic_contract(labels_a: Any, labels_b: Any, scores: Any, atol: float = TIE_ATOL,
                             rtol: float = TIE_RTOL, what: str = "semantic") -> int:
    """Labels [H, W] of two runs differ only where both labels' ``scores`` [C, H, W] are within tolerance of the
    best score (a top-2 near-tie); returns the number of differing pixels."""
    a, b, s = _t(labels_a).long().cpu(), _t(labels_b).long().cpu(), _t(scores).double().cpu()
    assert a.shape == b.shape == s.shape[1:], f"{what}: shapes {tuple(a.shape)}, {tuple(b.shape)}, {tuple(s.shape)}"
    differ = a != b
    if not bool(differ.any()):
        return 0
    C = s.shape[0]
    assert bool(((a[differ] >= 0) & (a[differ] < C) & (b[differ] >= 0) & (b[differ] < C)).all()), \
        f"{what}: labels outside [0, {C})"
    best = s.max(0).values
    sa, sb = s.gather(0, a.clamp(0, C - 1)[None])[0], s.gather(0, b.clamp(0, C - 1)[None])[0]
    tol = _tol(best, atol, rtol)
    near = (best - sa <= tol) & (best - sb <= tol)
    _report(what, differ & ~near & ~s.isnan().any(0), f"tolerance {atol} + {rtol} * |score|")
    return int(differ.sum())


def assert_masks_contract(masks_a: Any, masks_b: Any, logits: Any, threshold: float = 0.0,
                          atol: float = TIE_ATOL, rtol: float = TIE_RTOL, what: str = "masks") -> int:
    """Binary masks [K, H, W] of two runs differ only where ``logits`` [K, H, W] (the values thresholded) are
    within tolerance of ``threshold``; returns the number of differing pixels."""
    a, b, x = _t(masks_a).bool().cpu(), _t(masks_b).bool().cpu(), _t(logits).double().cpu()
    assert a.shape == b.shape == x.shape, f"{what}: shapes {tuple(a.shape)}, {tuple(b.shape)}, {tuple(x.shape)}"
    differ = a != b
    near = (x - threshold).abs() <= atol + rtol * abs(threshold)
    _report(what, differ & ~near & ~x.isnan(), f"|value - {threshold}| <= {atol} + {rtol} * |threshold|")
    return int(differ.sum())


def assert_scores_close(a: Any, b: Any, rtol: float = SCORE_RTOL, atol: float = SCORE_ATOL,
                        what: str = "scores", slack: Optional[Any] = None) -> float:
    """Scores [K] agree within ``atol + rtol * |b|`` (+ ``slack`` [K] where given), NaN only where NaN; returns
    the largest relative difference."""
    x, y = _t(a).double().cpu().flatten(), _t(b).double().cpu().flatten()
    assert x.shape == y.shape, f"{what}: {x.numel()} vs {y.numel()} scores"
    assert torch.equal(x.isnan(), y.isnan()), f"{what}: NaN in one run only: {x.tolist()} vs {y.tolist()}"
    ok = ~x.isnan()
    diff = (x - y).abs()[ok]
    limit = atol + rtol * y.abs()[ok] + (0 if slack is None else _t(slack).double().flatten()[ok])
    bad = diff > limit
    assert not bool(bad.any()), f"{what}: differ beyond {rtol} relative: {x[ok][bad].tolist()} vs {y[ok][bad].tolist()}"
    return float((diff / y.abs()[ok].clamp_min(1e-30)).max()) if diff.numel() else 0.0


def _segment_pixels_equal(pan_a: torch.Tensor, pan_b: torch.Tensor) -> torch.Tensor:
    """True where the two maps put a pixel in corresponding segments: ids are matched by mutual largest overlap
    (segment ids may be renumbered when a near-tie segment is kept in one run only)."""
    a, b = pan_a.long().flatten(), pan_b.long().flatten()
    ua, ia = a.unique(return_inverse=True)
    ub, ib = b.unique(return_inverse=True)
    table = torch.zeros(len(ua), len(ub), dtype=torch.long)
    table.index_put_((ia, ib), torch.ones_like(ia), accumulate=True)
    best_b, best_a = table.argmax(1), table.argmax(0)
    mutual = best_a[best_b] == torch.arange(len(ua))
    same = (best_b[ia] == ib) & mutual[ia]
    none_a, none_b = ua[ia] == 0, ub[ib] == 0  # "no segment" only corresponds to itself
    same &= none_a == none_b
    return same.view(pan_a.shape)


def _ambiguous_segments(probs: torch.Tensor, confidence: torch.Tensor, winner_near: torch.Tensor,
                        overlap_threshold: float, tol_p: torch.Tensor, atol: float, rtol: float) -> torch.Tensor:
    """Bool [K]: kept queries whose segment keep-decision can flip by near-tie pixels (bounds of won, confident
    and in-segment areas straddle a rule of panoptic inference)."""
    K = probs.shape[0]
    best = probs.max(0).values
    can_win = best[None] - probs <= tol_p[None]
    sure_win = can_win & ~winner_near[None]
    ctol = atol + rtol * 0.5
    can_conf, sure_conf = confidence >= 0.5 - ctol, confidence - 0.5 > ctol
    won = (sure_win.view(K, -1).sum(1), can_win.view(K, -1).sum(1))
    conf = (sure_conf.view(K, -1).sum(1), can_conf.view(K, -1).sum(1))
    seg = ((sure_win & sure_conf).view(K, -1).sum(1), (can_win & can_conf).view(K, -1).sum(1))
    ambiguous = torch.zeros(K, dtype=torch.bool)
    for lo, hi in (won, conf, seg):
        ambiguous |= (lo == 0) & (hi > 0)
    low = won[0].double() / conf[1].clamp_min(1).double()
    high = won[1].double() / conf[0].clamp_min(1).double()
    ambiguous |= (low < overlap_threshold) & (high >= overlap_threshold)
    return ambiguous


def assert_panoptic_contract(pan_a: Any, pan_b: Any, probs: Any, confidence: Any,
                             overlap_threshold: Optional[float] = None, atol: float = TIE_ATOL,
                             rtol: float = TIE_RTOL, what: str = "panoptic") -> int:
    """Panoptic id maps [H, W] of two runs (any id numbering) differ only at near-ties of the reference run's
    kept queries: ``probs`` [K, H, W] (``score * sigmoid``, the winner's value) and ``confidence`` [K, H, W]
    (``sigmoid``, inside the segment at >= 0.5). With ``overlap_threshold``, whole segments whose keep decision
    is a near-tie may differ too. Returns the number of differing pixels."""
    a, b = _t(pan_a).long().cpu(), _t(pan_b).long().cpu()
    p, c = _t(probs).double().cpu(), _t(confidence).double().cpu()
    assert a.shape == b.shape, f"{what}: shapes {tuple(a.shape)} vs {tuple(b.shape)}"
    differ = ~_segment_pixels_equal(a, b)
    if not bool(differ.any()):
        return 0
    assert p.shape[0] > 0, f"{what}: maps differ but no query is kept"
    top = p.topk(min(2, p.shape[0]), dim=0).values
    tol_p = _tol(top[0], atol, rtol)
    winner_near = (top[0] - top[-1] <= tol_p) if p.shape[0] > 1 else torch.zeros_like(differ)
    winner = p.argmax(0)
    conf_near = (c.gather(0, winner[None])[0] - 0.5).abs() <= atol + rtol * 0.5
    allowed = winner_near | conf_near | p.isnan().any(0) | c.isnan().any(0)
    if overlap_threshold is not None:
        ambiguous = _ambiguous_segments(p, c, winner_near, float(overlap_threshold), tol_p, atol, rtol)
        allowed |= ambiguous[winner]
    _report(what, differ & ~allowed, f"tolerance {atol} + {rtol} * |value|")
    return int(differ.sum())


def deciding_values(mask_cls: torch.Tensor, mask_pred: torch.Tensor, size: Sequence[int], out_size: Sequence[int],
                    *, before: bool = True, object_mask_threshold: float = 0.0) -> dict[str, torch.Tensor]:
    """The reference run's deciding values at ``out_size`` in float64, from log-probs [Q, C+1] and padded mask
    logits [Q, Hp, Wp]: ``logits`` [Q, H, W], ``semantic`` [C, H, W], and the kept queries' ``probs`` and
    ``confidence`` [K, H, W] for panoptic inference."""
    cls, pred = mask_cls.detach().double().cpu(), mask_pred.detach().double().cpu()
    logits = pp.sem_seg_postprocess(pred, tuple(size), *out_size)
    if before:
        semantic = pp.semantic_inference(cls, logits)
    else:
        semantic = pp.sem_seg_postprocess(pp.semantic_inference(cls, pred), tuple(size), *out_size)
    scores, labels = torch.softmax(cls, -1).max(-1)
    keep = labels.ne(cls.shape[1] - 1) & (scores > object_mask_threshold)
    confidence = logits[keep].sigmoid()
    return {"logits": logits, "semantic": semantic, "probs": scores[keep].view(-1, 1, 1) * confidence,
            "confidence": confidence}


def assert_outputs_contract(a: Any, b: Any, mask_cls: torch.Tensor, mask_pred: torch.Tensor, size: Sequence[int],
                            is_thing: Any, *, before: bool = True, object_mask_threshold: float = 0.0,
                            overlap_threshold: Optional[float] = None, top_k: int = 100,
                            atol: float = TIE_ATOL, rtol: float = TIE_RTOL, score_rtol: float = SCORE_RTOL
                            ) -> dict[str, int]:
    """Two runs' outputs (objects with ``semantic``, ``panoptic``, ``segments``, ``instances``, e.g.
    ``BandedOutput`` or ``SegmentationResult``) meet the contract, measured from the reference log-probs
    [Q, C+1] and padded logits [Q, Hp, Wp]; returns the differing pixels per output."""
    out_size = tuple(int(s) for s in (a.semantic if a.semantic is not None else a.panoptic
                                      if a.panoptic is not None else a.instances.masks[0]).shape[-2:])
    values = deciding_values(mask_cls, mask_pred, size, out_size, before=before,
                             object_mask_threshold=object_mask_threshold)
    counts = {}
    if a.semantic is not None or b.semantic is not None:
        counts["semantic"] = assert_semantic_contract(a.semantic, b.semantic, values["semantic"], atol, rtol)
    if a.panoptic is not None or b.panoptic is not None:
        counts["panoptic"] = assert_panoptic_contract(a.panoptic, b.panoptic, values["probs"], values["confidence"],
                                                      overlap_threshold, atol, rtol)
        _assert_segments(a, b, score_rtol)
    if a.instances is not None or b.instances is not None:
        counts["instance"] = _assert_instances(a.instances, b.instances, mask_cls, values["logits"], is_thing,
                                               top_k, atol, rtol, score_rtol, mask_pred.dtype)
    return counts


def _assert_segments(a: Any, b: Any, score_rtol: float) -> None:
    """Matched segments keep their class and thing flag, scores agree, areas count their own map's pixels."""
    for out in (a, b):
        for s in out.segments:
            assert s["area"] == int((_t(out.panoptic) == s["id"]).sum()), f"segment {s['id']} area"
    pa, pb = _t(a.panoptic).long().flatten(), _t(b.panoptic).long().flatten()
    by_a, by_b = {s["id"]: s for s in a.segments}, {s["id"]: s for s in b.segments}
    same = _segment_pixels_equal(pa, pb)
    for ida, idb in {(int(x), int(y)) for x, y in zip(pa[same].tolist(), pb[same].tolist())} - {(0, 0)}:
        sa, sb = by_a[ida], by_b[idb]
        assert (sa["category_id"], sa["isthing"]) == (sb["category_id"], sb["isthing"]), (sa, sb)
        assert_scores_close([sa["score"]], [sb["score"]], score_rtol, what=f"segment {ida} score")


def _assert_instances(ia: Any, ib: Any, mask_cls: torch.Tensor, logits: torch.Tensor, is_thing: Any, top_k: int,
                      atol: float, rtol: float, score_rtol: float, dtype: Optional[torch.dtype] = None) -> int:
    """Same instances in the same order; masks differ only at near-zero logits; scores agree up to what the
    flipped pixels can move a mask mean."""
    assert len(ia) == len(ib), f"instances: {len(ia)} vs {len(ib)}"
    assert torch.equal(ia.classes.cpu(), ib.classes.cpu()), "instance classes"
    # the runs' own dtype: exact ties of class probabilities (equal logits) then break as in the runs
    probs = torch.softmax(mask_cls.detach().cpu().to(logits.dtype if dtype is None else dtype), -1)[:, :-1]
    _, classes, queries = pp.top_k_detections(probs, is_thing, top_k)
    assert torch.equal(classes, ib.classes.cpu()), "instance classes differ from the reference top-k"
    if not len(ia):
        return 0
    ma, mb = ia.masks, ib.masks
    differ = assert_masks_contract(ma, mb, logits[queries], 0.0, atol, rtol, "instance masks")
    flipped = (ma != mb).flatten(1).sum(1).double()
    area = torch.minimum(ma.flatten(1).sum(1), mb.flatten(1).sum(1)).double().clamp_min(1)
    assert_scores_close(ia.scores, ib.scores, score_rtol, what="instance scores", slack=flipped / area)
    return differ


# ------------------------------------------------------------------------------------------------ whole runs

def capture_postprocess(monkeypatch: Any) -> list[dict]:
    """Record the inputs of every post-processing call the predictor makes from now on (CPU copies): the
    reference deciding values of a run. Each entry: ``mask_cls``, ``mask_pred``, ``size``, ``out_size``,
    ``is_thing`` and the keyword thresholds (``before``, ``object_mask_threshold``, ``overlap_threshold``,
    ``top_k``), ready for :func:`assert_outputs_contract`."""
    from maskadapter.inference import predictor as module

    real, calls = module.postprocess_banded, []

    def spy(mask_cls, mask_pred, size, out_size, tasks, is_thing, **kw):
        calls.append({"mask_cls": mask_cls.detach().float().cpu().clone(),
                      "mask_pred": mask_pred.detach().float().cpu().clone(), "size": tuple(size),
                      "out_size": tuple(out_size), "is_thing": None if is_thing is None else _t(is_thing).cpu(),
                      **{k: kw[k] for k in ("before", "object_mask_threshold", "overlap_threshold", "top_k")}})
        return real(mask_cls, mask_pred, size, out_size, tasks, is_thing, **kw)

    monkeypatch.setattr(module, "postprocess_banded", spy)
    return calls


def read_coco_run(folder: Any) -> dict[str, Any]:
    """The outputs of a ``segment --format coco`` folder by input file name: objects with ``semantic`` [H, W]
    (label PNG values), ``panoptic`` [H, W] (segment ids), ``segments`` and ``instances`` (in file order)."""
    import json
    import types
    from pathlib import Path

    from PIL import Image

    from maskadapter.inference.instances import Instances

    root = Path(folder)
    pan = json.loads((root / "panoptic.json").read_text())
    names = {im["id"]: im["file_name"] for im in pan["images"]}
    per_image: dict[int, list] = {}
    if (root / "instances.json").exists():
        for inst in json.loads((root / "instances.json").read_text()):
            per_image.setdefault(inst["image_id"], []).append(inst)
    runs = {}
    for ann in pan["annotations"]:
        png = root / "panoptic" / ann["file_name"]
        rgb = np.asarray(Image.open(png).convert("RGB")).astype(np.int64)
        ids = torch.from_numpy(rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2])
        semantic = torch.from_numpy(np.asarray(Image.open(root / "semantic" / ann["file_name"])).astype(np.int64))
        found = per_image.get(ann["image_id"], [])
        instances = Instances(tuple(ids.shape), torch.tensor([i["score"] for i in found], dtype=torch.float32),
                              torch.tensor([i["category_id"] for i in found], dtype=torch.long),
                              [i["segmentation"] for i in found])
        runs[names[ann["image_id"]]] = types.SimpleNamespace(
            semantic=semantic, panoptic=ids, segments=ann["segments_info"], instances=instances)
    return runs


def assert_coco_runs_contract(got: Any, reference: Any, calls: dict[str, dict], atol: float = MODEL_TIE_ATOL,
                              rtol: float = MODEL_TIE_RTOL, score_rtol: float = MODEL_SCORE_RTOL
                              ) -> dict[str, int]:
    """Two ``segment --format coco`` folders meet the contract image by image, measured from ``calls`` (input
    file name -> a :func:`capture_postprocess` entry of the reference prediction); returns the differing pixels
    per output, summed over the images."""
    a, b = read_coco_run(got), read_coco_run(reference)
    assert a.keys() == b.keys() and set(calls) >= set(b), (sorted(a), sorted(b), sorted(calls))
    totals: dict[str, int] = {}
    for name in sorted(b):
        call = calls[name]
        assert tuple(b[name].panoptic.shape) == call["out_size"], name
        counts = assert_outputs_contract(
            a[name], b[name], call["mask_cls"], call["mask_pred"], call["size"], call["is_thing"],
            before=call["before"], object_mask_threshold=call["object_mask_threshold"],
            overlap_threshold=call["overlap_threshold"], top_k=call["top_k"], atol=atol, rtol=rtol,
            score_rtol=score_rtol)
        for key, value in counts.items():
            totals[key] = totals.get(key, 0) + value
    return totals

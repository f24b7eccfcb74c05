"""Banded post-processing meets the numeric contract with the full-tensor composition (decisions equal except at
float-rounding near-ties measured from the logits, scores within 1e-5), band boundaries at every offset, on any
thread count; and the edge cases that broke it (no query, infinite logits, kept height, 1-pixel outputs)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import types

import pytest
import torch
import torch.nn.functional as F

from contract import SCORE_RTOL, assert_outputs_contract, assert_scores_close
from maskadapter.inference import banded
from maskadapter.inference.banded import postprocess_banded, postprocess_full
from maskadapter.inference.instances import RunLengths, encode_rle
from maskadapter.vocabulary import Vocabulary

pytestmark = pytest.mark.numeric

TASKS = ("semantic", "panoptic", "instance")
THRESHOLDS = {"object_mask_threshold": 0.0, "overlap_threshold": 0.8, "top_k": 10}


def inputs(Q: int, C: int, Hp: int, Wp: int, seed: int = 0, scale: float = 3.0):
    """Ensemble-like log-probs [Q, C+1], mask logits [Q, Hp, Wp] and a thing flag per class."""
    g = torch.Generator().manual_seed(seed)
    mask_cls = (torch.randn(Q, C + 1, generator=g) * 2).log_softmax(-1)
    mask_pred = torch.randn(Q, Hp, Wp, generator=g) * scale
    is_thing = torch.arange(C) % 2 == 0
    return mask_cls, mask_pred, is_thing


def both(mask_cls, mask_pred, size, out_size, band_bytes, tasks=TASKS, is_thing=None, before=True, banded=True,
         **changes):
    """(banded, full) outputs of the same call; ``band_bytes`` may be a tuple: a list of banded outputs. With
    ``banded``, every banded output of more than one row must really come in several bands."""
    kw = {**THRESHOLDS, "before": before, **changes}
    if is_thing is None:
        is_thing = torch.arange(mask_cls.shape[1] - 1) % 2 == 0
    ref = postprocess_full(mask_cls, mask_pred, size, out_size, tasks, is_thing, **kw)
    outs = [postprocess_banded(mask_cls, mask_pred, size, out_size, tasks, is_thing, band_bytes=b, **kw)
            for b in (band_bytes if isinstance(band_bytes, tuple) else (band_bytes,))]
    if banded and out_size[0] > 1:
        assert all(out.bands > 1 for out in outs), [out.bands for out in outs]
    return (outs if isinstance(band_bytes, tuple) else outs[0]), ref


def check(out, ref, mask_cls, mask_pred, size, is_thing=None, before=True, **changes) -> dict[str, int]:
    """``out`` meets the contract with ``ref`` (same structure, decisions up to near-ties, scores to 1e-5)."""
    kw = {**THRESHOLDS, **changes}
    if is_thing is None:
        is_thing = torch.arange(mask_cls.shape[1] - 1) % 2 == 0
    assert out.size == ref.size
    for name in ("semantic", "panoptic"):
        a, b = getattr(out, name), getattr(ref, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert a.dtype == b.dtype and a.shape == b.shape, name
    assert (out.instances is None) == (ref.instances is None)
    if ref.instances is not None:
        assert out.instances.size == ref.instances.size and out.instances.scores.dtype == ref.instances.scores.dtype
    return assert_outputs_contract(out, ref, mask_cls, mask_pred, size, is_thing, before=before, **kw)


@pytest.fixture
def threads():
    """Set torch's thread count inside a test; restored after."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------- end to end

CASES = [  # Q, C, (Hp, Wp), (h, w), (H, W)
    (5, 4, (20, 16), (13, 11), (101, 67)),  # upscale by odd factors, crop inside the padding
    (7, 3, (24, 20), (24, 17), (131, 97)),  # prime output sizes
    (6, 5, (40, 36), (37, 31), (23, 150)),  # downscale in height, upscale in width
    (9, 4, (64, 48), (61, 47), (40, 113)),  # downscale in both
    (4, 3, (9, 7), (9, 7), (1, 200)),  # a one-row output
    (4, 3, (9, 7), (9, 7), (200, 1)),  # a one-column output
    (8, 6, (12, 30), (1, 29), (60, 120)),  # a one-row input crop
    (8, 6, (30, 12), (29, 1), (120, 60)),  # a one-column input crop
    (6, 4, (50, 40), (50, 40), (50, 90)),  # height kept, width resized
    (3, 2, (8, 8), (1, 1), (1, 1)),  # one pixel in, one pixel out
    (3, 2, (8, 8), (1, 1), (70, 90)),  # one pixel in, many out
]


@pytest.mark.parametrize("before", [True, False])
@pytest.mark.parametrize("Q,C,padded,size,out_size", CASES)
def test_banded_meets_the_contract_with_full(Q, C, padded, size, out_size, before):
    mask_cls, mask_pred, _ = inputs(Q, C, *padded, seed=Q * 31 + C)
    # bands of 1 row (a boundary at every offset), a few rows, many rows
    outs, ref = both(mask_cls, mask_pred, size, out_size, (1, 40_000, 200_000), before=before, banded=False)
    for out in outs:
        check(out, ref, mask_cls, mask_pred, size, before=before)
    assert out_size[0] == 1 or outs[0].bands > 1  # the smallest budget really banded


def test_band_sizes_follow_the_budget():
    mask_cls, mask_pred, _ = inputs(6, 4, 30, 30)
    outs, ref = both(mask_cls, mask_pred, (30, 30), (100, 170), (1, 100_000, 400_000, 2_000_000, 10**9),
                     banded=False)
    for out in outs:
        check(out, ref, mask_cls, mask_pred, (30, 30))
    counts = [out.bands for out in outs]
    assert counts[0] == 100  # one row per band at the smallest budget
    assert counts == sorted(counts, reverse=True) and counts[-1] == 1  # the whole output fits: full path


def test_argmax_ties_take_the_first_query_and_class():
    mask_cls, mask_pred, _ = inputs(6, 4, 16, 16, seed=3)
    mask_pred[3] = mask_pred[1]  # identical masks and classes: every pixel ties between queries 1 and 3
    mask_cls[3] = mask_cls[1]
    mask_cls[4, :2] = mask_cls[4, :2].mean()  # two equal classes in one query
    outs, ref = both(mask_cls, mask_pred, (16, 16), (100, 90), (1, 150_000), top_k=24)
    for out in outs:
        # exact ties are computed identically by both paths (same values, same first index): no pixel may differ
        assert check(out, ref, mask_cls, mask_pred, (16, 16), top_k=24)["panoptic"] == 0
    assert ref.panoptic.numel() and {s["category_id"] for s in ref.segments}
    x = torch.randint(0, 3, (5, 40, 7)).float()  # exact ties, integer values: max(0).indices is argmax's index
    assert torch.equal(banded._argmax0(x), x.argmax(0))


def test_logits_exactly_zero_after_resizing():
    mask_cls, mask_pred, _ = inputs(5, 3, 20, 20, seed=5)
    mask_pred[0] = 0.0  # sigmoid exactly 0.5: confident (>= 0.5) but not in the instance mask (> 0)
    mask_pred[2, :, :10] = 0.0
    outs, ref = both(mask_cls, mask_pred, (20, 20), (130, 70), (100_000, 300_000), top_k=15)
    for out in outs:
        check(out, ref, mask_cls, mask_pred, (20, 20), top_k=15)
    rows = banded._Rows(20, 20, 130, 70, torch.float32)
    assert (rows(mask_pred, None, 0, 130, banded.Scratch())[0] == 0).all()  # 0 * w + 0 * w is exactly 0


def test_no_kept_queries_and_no_instances():
    mask_cls, mask_pred, _ = inputs(5, 3, 16, 16, seed=7)
    mask_cls[:, -1] = 5.0  # void wins every query: nothing is kept
    mask_cls = mask_cls.log_softmax(-1)
    no_things = torch.zeros(3, dtype=torch.bool)  # instances keep thing classes only: none
    out, ref = both(mask_cls, mask_pred, (16, 16), (120, 100), 1, is_thing=no_things)
    check(out, ref, mask_cls, mask_pred, (16, 16), is_thing=no_things)
    assert ref.segments == out.segments == [] and not out.panoptic.any() and len(out.instances) == 0
    out, ref = both(mask_cls, mask_pred, (16, 16), (120, 100), 1, tasks=("panoptic",), is_thing=no_things,
                    banded=False)
    assert out.bands == 0 and not out.panoptic.any() and out.segments == []


def test_stuff_segments_merge():
    Q, C = 6, 3
    mask_pred = torch.full((Q, 24, 24), -8.0)
    for q in range(Q):  # six vertical strips, one per query
        mask_pred[q, :, 4 * q:4 * q + 4] = 8.0
    mask_cls = torch.full((Q, C + 1), -6.0)
    mask_cls[torch.arange(Q), torch.tensor([0, 1, 1, 2, 1, 0])] = 3.0  # class 1 (stuff) three times
    mask_cls = mask_cls.log_softmax(-1)
    is_thing = torch.tensor([True, False, True])
    outs, ref = both(mask_cls, mask_pred, (24, 24), (150, 140), (100_000, 400_000), is_thing=is_thing,
                     overlap_threshold=0.7)
    for out in outs:
        check(out, ref, mask_cls, mask_pred, (24, 24), is_thing=is_thing, overlap_threshold=0.7)
        stuff = [s for s in out.segments if s["category_id"] == 1]
        assert len(stuff) == 1 and len(out.segments) == 4  # three queries, one merged segment
        assert stuff[0]["area"] == int((out.panoptic == stuff[0]["id"]).sum())


def test_single_instance_over_several_thread_chunks():
    mask_cls, mask_pred, _ = inputs(4, 3, 20, 20, seed=11)  # one instance over >= 2 x 32768 pixels
    out, ref = both(mask_cls, mask_pred, (20, 20), (300, 250), 60_000, tasks=("instance",), top_k=1)
    assert len(ref.instances) == 1 and out.bands > 1
    check(out, ref, mask_cls, mask_pred, (20, 20), top_k=1)


def test_full_path_for_half_precision_and_big_budgets():
    mask_cls, mask_pred, _ = inputs(5, 3, 16, 16)
    for pred, budget in ((mask_pred.half(), 1), (mask_pred.bfloat16(), 1), (mask_pred, 10**9)):
        out, ref = both(mask_cls, pred, (16, 16), (100, 100), budget, banded=False)
        assert out.bands == 1
        check(out, ref, mask_cls, pred.float(), (16, 16))
    out, ref = both(mask_cls, mask_pred.double(), (16, 16), (100, 100), 1)  # float64 is banded too
    assert out.bands == 100 and out.instances.scores.dtype == torch.float64
    check(out, ref, mask_cls, mask_pred.double(), (16, 16))


def test_full_path_mirrors_the_predictor():
    from maskadapter.inference.options import InferenceOptions
    from maskadapter.inference.predictor import Predictor

    mask_cls, mask_pred, is_thing = inputs(6, 4, 20, 20, seed=2)
    vocab = Vocabulary((("cat",), ("sky",), ("dog",), ("grass",)))
    for before in (True, False):
        stub = Predictor.__new__(Predictor)  # _postprocess reads only the options and the preset constants
        stub.options = InferenceOptions()
        stub.preset = types.SimpleNamespace(postprocess_before_inference=before, object_mask_threshold=0.0,
                                            overlap_threshold=0.8, detections_per_image=10)
        prepared = types.SimpleNamespace(vocabulary=vocab, is_thing=is_thing, names=vocab.names)
        result = stub._postprocess(prepared, TASKS, mask_cls, mask_pred, (17, 19), (90, 80))
        ref = postprocess_full(mask_cls, mask_pred, (17, 19), (90, 80), TASKS, is_thing, before=before,
                               **THRESHOLDS)
        # deterministic: the predictor runs this very full-path call (the output fits the band budget) in the
        # same process on the same thread count, so the outputs are the same bits
        assert torch.equal(result.semantic, ref.semantic) and torch.equal(result.panoptic, ref.panoptic)
        assert [{k: v for k, v in s.items() if k != "label"} for s in result.segments] == ref.segments
        assert result.instances.rles == ref.instances.rles
        assert torch.equal(result.instances.scores, ref.instances.scores)


def test_bad_arguments_name_the_argument():
    mask_cls, mask_pred, is_thing = inputs(4, 3, 10, 10)
    call = dict(before=True, **THRESHOLDS)
    with pytest.raises(ValueError, match="tasks"):
        postprocess_banded(mask_cls, mask_pred, (10, 10), (50, 50), ("depth",), is_thing, **call)
    with pytest.raises(ValueError, match="size"):
        postprocess_banded(mask_cls, mask_pred, (11, 10), (50, 50), TASKS, is_thing, **call)
    with pytest.raises(ValueError, match="out_size"):
        postprocess_banded(mask_cls, mask_pred, (10, 10), (0, 50), TASKS, is_thing, **call)
    with pytest.raises(ValueError, match="band_bytes"):
        postprocess_banded(mask_cls, mask_pred, (10, 10), (50, 50), TASKS, is_thing, band_bytes=0, **call)
    with pytest.raises(ValueError, match="queries"):
        postprocess_banded(mask_cls[:3], mask_pred, (10, 10), (50, 50), TASKS, is_thing, **call)


# --------------------------------------------------------------------------------------------- edge cases

def test_no_query_semantic_map_is_written():
    """Q = 0, semantic before inference: every class scores 0, so the full path's argmax is class 0 everywhere
    (a label map taken from uninitialised memory once leaked what the allocator held)."""
    mask_cls, mask_pred, _ = inputs(0, 3, 40, 40)
    garbage = torch.full((300 * 300,), 123456789, dtype=torch.long)  # freed memory the allocator may hand out
    del garbage
    out, ref = both(mask_cls, mask_pred, (40, 40), (300, 300), 1, tasks=("semantic",), banded=False)
    assert torch.equal(ref.semantic, torch.zeros(300, 300, dtype=torch.long))
    assert torch.equal(out.semantic, ref.semantic)  # deterministic: no arithmetic, every label is 0
    out, ref = both(mask_cls, mask_pred, (40, 40), (300, 300), 1, banded=False)
    assert torch.equal(out.semantic, ref.semantic) and out.segments == [] and len(out.instances) == 0


@pytest.mark.parametrize("before", [True, False])
def test_infinite_logits(before):
    """+-inf mask logits (a saturated fp16 head, a user's hard masks) give no NaN and the same decisions on both
    paths: resizing never multiplies an infinity by a zero weight."""
    mask_cls, mask_pred, _ = inputs(6, 3, 24, 20, seed=13)
    mask_pred[0, :12] = float("inf")
    mask_pred[0, 12:] = float("-inf")
    mask_pred[1, :, :5] = float("inf")  # next to finite values: weights of 0 meet inf in both passes
    mask_pred[2, 3, 4] = float("-inf")
    mask_pred[3] = float("inf")  # a whole mask
    things = torch.ones(3, dtype=torch.bool)
    for out_size in ((120, 100), (24, 60), (24, 20), (7, 5)):
        outs, ref = both(mask_cls, mask_pred, (24, 20), out_size, (1, 5_000), before=before, is_thing=things,
                         top_k=18)
        assert not ref.instances.scores.isnan().any() and len(ref.instances) == 18
        for out in outs:
            assert not out.instances.scores.isnan().any()
            check(out, ref, mask_cls, mask_pred, (24, 20), before=before, is_thing=things, top_k=18)
        full_logits = F.interpolate(banded.saturate_infinite(mask_pred)[None], out_size, mode="bilinear")[0]
        assert not full_logits.isnan().any()
        assert any(bool(m.all()) for m in ref.instances.masks)  # query 3's masks: every pixel


def test_nan_logits_agree_where_defined():
    """A NaN logit spreads through the resize; both paths decide every other pixel alike, and an instance whose
    mask mean meets a NaN scores NaN on both."""
    mask_cls, mask_pred, _ = inputs(5, 3, 20, 20, seed=17)
    mask_pred[1, 4, 5] = float("nan")
    outs, ref = both(mask_cls, mask_pred, (20, 20), (90, 110), (50_000, 200_000), top_k=15)
    assert ref.instances.scores.isnan().any()
    for out in outs:
        check(out, ref, mask_cls, mask_pred, (20, 20), top_k=15)  # NaN where NaN, contract elsewhere


@pytest.mark.parametrize("out_size", [(130, 7), (130, 1), (130, 3), (130, 20)])
def test_kept_height_narrow_outputs(out_size):
    """Output height equal to the input's: each band is a strided view of the width pass, not a copy."""
    mask_cls, mask_pred, _ = inputs(12, 4, 140, 40, seed=19)
    things = torch.ones(4, dtype=torch.bool)
    outs, ref = both(mask_cls, mask_pred, (130, 33), out_size, (1, 20_000), tasks=("instance", "panoptic"),
                     is_thing=things, top_k=12)
    assert len(ref.instances) == 12
    for out in outs:
        check(out, ref, mask_cls, mask_pred, (130, 33), is_thing=things, top_k=12)
        assert_scores_close(out.instances.scores, ref.instances.scores, SCORE_RTOL)


def test_non_contiguous_inputs():
    mask_cls, mask_pred, _ = inputs(6, 4, 30, 26, seed=23)
    strided_pred = mask_pred.transpose(1, 2).contiguous().transpose(1, 2)  # same values, column-major
    strided_cls = torch.cat([mask_cls, mask_cls], 1)[:, ::2]  # every other column of a wider tensor
    strided_cls.copy_(mask_cls)
    assert not strided_pred.is_contiguous() and not strided_cls.is_contiguous()
    outs, ref = both(mask_cls, mask_pred, (27, 25), (80, 61), (50_000, 150_000))
    strided, _ = both(strided_cls, strided_pred, (27, 25), (80, 61), (50_000, 150_000))
    for out in outs + strided:
        check(out, ref, mask_cls, mask_pred, (27, 25))


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_thread_counts(n, threads):
    """Banded on n threads and the full path on n threads, both against the full path on one thread."""
    mask_cls, mask_pred, _ = inputs(9, 3, 40, 30, seed=29)
    threads(1)
    is_thing = torch.arange(3) % 2 == 0
    ref = postprocess_full(mask_cls, mask_pred, (37, 29), (200, 170), TASKS, is_thing, before=True, **THRESHOLDS)
    threads(n)
    outs, full = both(mask_cls, mask_pred, (37, 29), (200, 170), (200_000, 1_000_000), is_thing=is_thing)
    for out in [full, *outs]:
        check(out, ref, mask_cls, mask_pred, (37, 29), is_thing=is_thing)


# --------------------------------------------------------------------------------------------- the pieces

@pytest.mark.parametrize("h,w,H,W", [(13, 17, 211, 97), (64, 48, 300, 217), (97, 89, 101, 83), (5, 3, 1, 200),
                                     (3, 200, 130, 1), (50, 60, 23, 113), (2, 9, 200, 9), (1, 7, 150, 40),
                                     (7, 1, 40, 150), (29, 31, 29, 200), (224, 168, 300, 131), (1, 1, 5, 5)])
def test_rows_equal_interpolate(h, w, H, W):
    x = torch.randn(5, h + 2, w + 1, generator=torch.Generator().manual_seed(h * W))
    src = x[:, :h, :w]  # a crop of a padded tensor, as the predictor passes it
    full = F.interpolate(src.unsqueeze(0), size=(H, W), mode="bilinear", align_corners=False)[0]
    rows, scratch = banded._Rows(h, w, H, W, torch.float32), banded.Scratch()
    for step in (1, 2, 7, 64):
        for r0 in range(0, H, step):
            r1 = min(H, r0 + step)
            torch.testing.assert_close(rows(src, None, r0, r1, scratch), full[:, r0:r1], rtol=1e-6, atol=1e-6)
    for index in ([2, 0], [4, 1, 2]):
        torch.testing.assert_close(rows(src, torch.tensor(index), 0, H, scratch), full[index], rtol=1e-6, atol=1e-6)


def test_run_lengths_equal_pycocotools():
    g = torch.Generator().manual_seed(4)
    masks = torch.rand(5, 37, 23, generator=g) > 0.6
    masks[0] = False  # empty
    masks[1] = True  # full
    masks[2, 0, 0] = True  # starts with a 1
    masks[3] = torch.rand(37, 23, generator=g) > 0.98  # sparse
    for step in (1, 3, 37):
        runs = RunLengths(5, 37, 23)
        for r0 in range(0, 37, step):
            runs.add(masks[:, r0:r0 + step], r0)
        assert runs.finish() == encode_rle(masks)  # integer bookkeeping: exact


@pytest.mark.slow
def test_50_megapixel_panoptic_memory_is_bounded():
    """Q=4 logits from a 64x48 input to 8660x5774: the full path's resized logits alone are Q*H*W*4 = 762 MiB
    (and its sigmoids and products as much again each); the banded peak is the [H, W] outputs plus bands."""
    H, W, band_bytes = 8660, 5774, 64 * 2**20
    script = textwrap.dedent(f"""
        import json, resource, torch
        from maskadapter.inference.banded import postprocess_banded
        Q, C = 4, 3
        pred = torch.full((Q, 64, 48), -6.0)
        for q in range(Q):
            pred[q, 16 * q:16 * q + 16] = 6.0  # four horizontal strips
        pred[2, :, 24:] = -6.0
        cls = torch.full((Q, C + 1), -5.0)
        cls[torch.arange(Q), torch.tensor([0, 1, 1, 2])] = 4.0
        cls = cls.log_softmax(-1)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        out = postprocess_banded(cls, pred, (64, 48), ({H}, {W}), ("panoptic",), torch.tensor([True, False, True]),
                                 before=True, object_mask_threshold=0.0, overlap_threshold=0.5, top_k=100,
                                 band_bytes={band_bytes})
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
        ids = out.panoptic.unique().tolist()
        print(json.dumps({{"peak": peak, "bands": out.bands, "segments": out.segments, "ids": ids}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["bands"] > 1
    assert [s["category_id"] for s in result["segments"]] == [0, 1, 2]  # queries 1 and 2 merge (stuff)
    assert result["ids"] == [0, 1, 2, 3]
    full_logits = 4 * H * W * 4
    outputs = H * W * (4 + 2)  # the int32 panoptic map and the int16 winner code map
    assert result["peak"] < outputs + 2 * band_bytes + 128 * 2**20
    assert result["peak"] < full_logits


@pytest.mark.slow
def test_a_50_megapixel_photo_on_the_tiny_preset_in_bounded_memory(tmp_path):
    """The whole predictor at 50 Mpx: outputs at the image's size, peak memory far below the full path's."""
    from conftest import write_tiny_checkpoint

    preset_file, weights = write_tiny_checkpoint(tmp_path)
    H, W = 6124, 8165
    script = textwrap.dedent(f"""
        import json, resource
        import numpy as np, torch
        from maskadapter import Predictor
        p = Predictor.from_checkpoint({str(weights)!r}, {str(preset_file)!r}, precision="fp32", text_cache_dir=False)
        image = np.zeros(({H}, {W}, 3), np.uint8)
        image[: {H} // 2] = (40, 120, 220)
        p.predict(np.zeros((64, 64, 3), np.uint8), "sky, road, car", tasks=["panoptic"])  # warm up
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        r = p.predict(image, "sky, road, car", tasks=["panoptic"])
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(json.dumps({{"size": list(r.image_size), "growth": peak - base, "segments": len(r.segments),
                          "queries": p.model.sem_seg_head.num_queries}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["size"] == [H, W]
    full_path = out["queries"] * H * W * 4  # the full path's resized logits alone
    image_and_maps = H * W * (3 + 4 + 2)  # the decoded image, the panoptic map, the int16 winner code
    assert out["growth"] < image_and_maps + 2 * 256 * 2**20 + 200 * 2**20 < full_path

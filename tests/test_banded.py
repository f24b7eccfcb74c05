"""Banded post-processing equals the full-tensor composition bit for bit, band boundaries at every offset."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import types

import pytest
import torch
import torch.nn.functional as F

from maskadapter.inference import banded, torch_kernels
from maskadapter.inference.banded import postprocess_banded, postprocess_full
from maskadapter.inference.instances import RunLengths, encode_rle
from maskadapter.inference.options import InferenceOptions
from maskadapter.inference.predictor import Predictor
from maskadapter.vocabulary import Vocabulary

TASKS = ("semantic", "panoptic", "instance")
THRESHOLDS = {"object_mask_threshold": 0.0, "overlap_threshold": 0.8, "top_k": 10}
THREADS = torch.get_num_threads()


def inputs(Q: int, C: int, Hp: int, Wp: int, seed: int = 0, scale: float = 3.0):
    """Ensemble-like log-probs [Q, C+1], mask logits [Q, Hp, Wp] and a thing flag per class."""
    g = torch.Generator().manual_seed(seed)
    mask_cls = (torch.randn(Q, C + 1, generator=g) * 2).log_softmax(-1)
    mask_pred = torch.randn(Q, Hp, Wp, generator=g) * scale
    is_thing = torch.arange(C) % 2 == 0
    return mask_cls, mask_pred, is_thing


def assert_same(out, ref) -> None:
    """Every output of ``out`` equals ``ref``'s: values, dtypes, segment dicts, instance RLEs/scores/order."""
    assert out.size == ref.size
    for name in ("semantic", "panoptic"):
        a, b = getattr(out, name), getattr(ref, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert a.dtype == b.dtype and a.shape == b.shape, name
            assert torch.equal(a, b), f"{name}: {int((a != b).sum())} pixels differ"
    assert out.segments == ref.segments
    assert (out.instances is None) == (ref.instances is None)
    if ref.instances is not None:
        a, b = out.instances, ref.instances
        assert a.size == b.size and a.scores.dtype == b.scores.dtype
        assert torch.equal(a.classes, b.classes)
        assert torch.equal(a.scores, b.scores), (a.scores - b.scores).abs().max()
        assert a.rles == b.rles


def both(mask_cls, mask_pred, size, out_size, band_bytes, tasks=TASKS, is_thing=None, before=True, **changes):
    """(banded, full) outputs of the same call; ``band_bytes`` may be a tuple: a list of banded outputs."""
    kw = {**THRESHOLDS, "before": before, **changes}
    if is_thing is None:
        is_thing = torch.arange(mask_cls.shape[1] - 1) % 2 == 0
    ref = postprocess_full(mask_cls, mask_pred, size, out_size, tasks, is_thing, **kw)
    outs = [postprocess_banded(mask_cls, mask_pred, size, out_size, tasks, is_thing, band_bytes=b, **kw)
            for b in (band_bytes if isinstance(band_bytes, tuple) else (band_bytes,))]
    return (outs if isinstance(band_bytes, tuple) else outs[0]), ref


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
]


@pytest.mark.parametrize("before", [True, False])
@pytest.mark.parametrize("Q,C,padded,size,out_size", CASES)
def test_banded_equals_full(Q, C, padded, size, out_size, before):
    mask_cls, mask_pred, _ = inputs(Q, C, *padded, seed=Q * 31 + C)
    # bands of 1 row (a boundary at every offset), a few rows, many rows
    outs, ref = both(mask_cls, mask_pred, size, out_size, (1, 40_000, 200_000), before=before)
    for out in outs:
        assert_same(out, ref)
    # on one thread torch resizes 3 channels with another kernel: then the full path runs
    channels_last = THREADS == 1 and (Q == 3 or (not before and C == 3))
    assert out_size[0] == 1 or channels_last or outs[0].bands > 1


def test_band_sizes_follow_the_budget():
    mask_cls, mask_pred, _ = inputs(6, 4, 30, 30)
    outs, ref = both(mask_cls, mask_pred, (30, 30), (100, 170), (1, 100_000, 400_000, 2_000_000, 10**9))
    for out in outs:
        assert_same(out, ref)
    counts = [out.bands for out in outs]
    assert counts[0] == 100  # one row per band at the smallest budget
    assert counts == sorted(counts, reverse=True) and counts[-1] == 1  # the whole output fits: full path


def test_argmax_ties_take_the_first_query_and_class():
    mask_cls, mask_pred, _ = inputs(6, 4, 16, 16, seed=3)
    mask_pred[3] = mask_pred[1]  # identical masks and classes: every pixel ties between queries 1 and 3
    mask_cls[3] = mask_cls[1]
    mask_cls[4, :2] = mask_cls[4, :2].mean()  # two equal classes in one query
    outs, ref = both(mask_cls, mask_pred, (16, 16), (100, 90), (1, 30_000), top_k=24)
    for out in outs:
        assert_same(out, ref)
    winners = {s["category_id"] for s in ref.segments}
    assert ref.panoptic.numel() and winners  # the tie case produced segments to compare
    x = torch.randint(0, 3, (5, 40, 7)).float()  # many ties: max(0).indices is argmax's first index
    assert torch.equal(banded._argmax0(x), x.argmax(0))


def test_logits_exactly_zero_after_resizing():
    mask_cls, mask_pred, _ = inputs(5, 3, 20, 20, seed=5)
    mask_pred[0] = 0.0  # sigmoid exactly 0.5: confident (>= 0.5) but not in the instance mask (> 0)
    mask_pred[2, :, :10] = 0.0
    outs, ref = both(mask_cls, mask_pred, (20, 20), (130, 70), (1, 50_000), top_k=15)
    for out in outs:
        assert_same(out, ref)
    assert (torch_kernels.Rows(20, 20, 130, 70, THREADS)(mask_pred, None, 0, 130)[0] == 0).all()


def test_no_kept_queries_and_no_instances():
    mask_cls, mask_pred, _ = inputs(5, 3, 16, 16, seed=7)
    mask_cls[:, -1] = 5.0  # void wins every query: nothing is kept
    mask_cls = mask_cls.log_softmax(-1)
    no_things = torch.zeros(3, dtype=torch.bool)  # instances keep thing classes only: none
    out, ref = both(mask_cls, mask_pred, (16, 16), (120, 100), 1, is_thing=no_things)
    assert_same(out, ref)
    assert ref.segments == [] and not ref.panoptic.any() and len(ref.instances) == 0
    out, ref = both(mask_cls, mask_pred, (16, 16), (120, 100), 1, tasks=("panoptic",), is_thing=no_things)
    assert_same(out, ref)


def test_stuff_segments_merge():
    Q, C = 6, 3
    mask_pred = torch.full((Q, 24, 24), -8.0)
    for q in range(Q):  # six vertical strips, one per query
        mask_pred[q, :, 4 * q:4 * q + 4] = 8.0
    mask_cls = torch.full((Q, C + 1), -6.0)
    mask_cls[torch.arange(Q), torch.tensor([0, 1, 1, 2, 1, 0])] = 3.0  # class 1 (stuff) three times
    mask_cls = mask_cls.log_softmax(-1)
    is_thing = torch.tensor([True, False, True])
    outs, ref = both(mask_cls, mask_pred, (24, 24), (150, 140), (1, 20_000), is_thing=is_thing,
                     overlap_threshold=0.7)
    for out in outs:
        assert_same(out, ref)
    stuff = [s for s in ref.segments if s["category_id"] == 1]
    assert len(stuff) == 1 and len(ref.segments) == 4  # three queries, one merged segment
    assert stuff[0]["area"] == int((ref.panoptic == stuff[0]["id"]).sum())


def test_single_instance_sums_per_thread_chunk():
    mask_cls, mask_pred, _ = inputs(4, 3, 20, 20, seed=11)  # one instance over >= 2 x 32768 pixels: torch's
    out, ref = both(mask_cls, mask_pred, (20, 20), (300, 250), 60_000, tasks=("instance",), top_k=1)
    assert len(ref.instances) == 1 and out.bands > 1  # two-pass sum when several threads run
    assert_same(out, ref)


def test_full_path_for_non_float32_tiny_outputs_and_big_budgets():
    mask_cls, mask_pred, _ = inputs(5, 3, 16, 16)
    for pred, out_size, budget in ((mask_pred.double(), (100, 100), 1), (mask_pred, (60, 60), 1),
                                   (mask_pred, (100, 100), 10**9)):
        out, ref = both(mask_cls, pred, (16, 16), out_size, budget)
        assert out.bands == 1
        assert_same(out, ref)


def test_full_path_mirrors_the_predictor():
    mask_cls, mask_pred, is_thing = inputs(6, 4, 20, 20, seed=2)
    vocab = Vocabulary((("cat",), ("sky",), ("dog",), ("grass",)))
    for before in (True, False):
        stub = Predictor.__new__(Predictor)  # _postprocess reads only the options and the preset constants
        stub.options = InferenceOptions()
        stub.preset = types.SimpleNamespace(postprocess_before_inference=before, object_mask_threshold=0.0,
                                            overlap_threshold=0.8, detections_per_image=10)
        result = stub._postprocess(vocab, TASKS, is_thing, mask_cls, mask_pred, (17, 19), (90, 80))
        ref = postprocess_full(mask_cls, mask_pred, (17, 19), (90, 80), TASKS, is_thing, before=before,
                               **THRESHOLDS)
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


# --------------------------------------------------------------------------------------------- the pieces

@pytest.mark.parametrize("h,w,H,W", [(13, 17, 211, 97), (64, 48, 300, 217), (97, 89, 101, 83), (5, 3, 1, 200),
                                     (3, 200, 130, 1), (50, 60, 23, 113), (2, 9, 200, 9), (1, 7, 150, 40),
                                     (7, 1, 40, 150), (29, 31, 29, 200), (224, 168, 300, 131)])
def test_rows_equal_interpolate(h, w, H, W):
    x = torch.randn(5, h + 2, w + 1, generator=torch.Generator().manual_seed(h * W))
    src = x[:, :h, :w]  # a crop of a padded tensor, as the predictor passes it
    full = F.interpolate(src.unsqueeze(0), size=(H, W), mode="bilinear", align_corners=False)[0]
    rows = torch_kernels.Rows(h, w, H, W, THREADS)
    assert rows.exact
    for step in (1, 2, 7, 64):
        for r0 in range(0, H, step):
            r1 = min(H, r0 + step)
            assert torch.equal(rows(src, None, r0, r1), full[:, r0:r1]), (r0, r1)
    for index in ([2, 0], [4, 1, 2]):  # 3 channels on one thread: padded to keep torch's generic kernel
        assert torch.equal(rows(src, torch.tensor(index), 0, H), full[index])


def test_sigmoid_tails_reproduce_the_full_call():
    block = torch_kernels.platform(THREADS).sigmoid_block
    if block is None:
        pytest.skip("torch.sigmoid's vector and scalar formulas agree on this platform")
    x = torch.randn(8192, generator=torch.Generator().manual_seed(0)) * 3
    scalar = torch.cat([torch.sigmoid(x[i:i + 4]) for i in range(0, 8192, 4)])
    differ = x[torch.sigmoid(x) != scalar]  # every element rounds differently in the two formulas
    for K, H, W, step in ((6, 150, 233, 7), (1, 300, 301, 13), (3, 5, 1001, 1)):
        logits = differ[torch.randint(0, len(differ), (K, H, W), generator=torch.Generator().manual_seed(K))]
        full = torch.sigmoid(logits)
        unpatched_equal = True
        for r0 in range(0, H, step):
            band = logits[:, r0:r0 + step].contiguous()
            sig = torch_kernels.vector_sigmoid(band, block, THREADS)
            unpatched_equal &= torch.equal(sig, full[:, r0:r0 + step])
            torch_kernels.patch_scalar_tails(sig, band, None, (r0, r0 + step), H, block, THREADS)
            assert torch.equal(sig, full[:, r0:r0 + step])
        assert not unpatched_equal  # the patches are needed


@pytest.mark.parametrize("K,N", [(3, 4095), (2, 70001), (1, 140000), (4, 33), (1, 1000)])
def test_cascade_sum_equals_torch_sum(K, N):
    lanes = torch_kernels.platform(THREADS).sum_lanes
    assert lanes is not None
    x = torch.rand(K, N, generator=torch.Generator().manual_seed(N)) * (torch.rand(K, N) > 0.3)
    total = torch_kernels.CascadeSum(K, N, lanes, THREADS)
    for s, e in ((0, 5), (5, 1000), (1000, N // 2), (N // 2, N)):
        total.add(x[:, min(s, N):min(e, N)])
    assert torch.equal(total.result(), x.sum(1))


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
        assert runs.finish() == encode_rle(masks)


@pytest.mark.slow
def test_50_megapixel_panoptic_memory_is_bounded():
    """Q=4 logits from a 64x48 input to 8660x5774: the full path's resized logits alone are Q*H*W*4 = 762 MiB
    (and its sigmoids and products as much again each); the banded peak is the [H, W] outputs plus bands."""
    H, W, band_bytes = 8660, 5774, 64 * 2**20
    script = textwrap.dedent(f"""
        import json, resource, torch
        from maskadapter.inference.banded import postprocess_banded
        from maskadapter.inference.torch_kernels import platform as _platform
        Q, C = 4, 3
        pred = torch.full((Q, 64, 48), -6.0)
        for q in range(Q):
            pred[q, 16 * q:16 * q + 16] = 6.0  # four horizontal strips
        pred[2, :, 24:] = -6.0
        cls = torch.full((Q, C + 1), -5.0)
        cls[torch.arange(Q), torch.tensor([0, 1, 1, 2])] = 4.0
        cls = cls.log_softmax(-1)
        _platform(torch.get_num_threads())
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
    assert result["peak"] < outputs + 2 * band_bytes + 128 * 2**20  # measured: 383 MiB of at most 542
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

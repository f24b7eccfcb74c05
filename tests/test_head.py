"""MaskAdapterHead: parity with an independent implementation of the official formula,
fast path == reference path, strict official keys, gradients, precision and layout, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import maskadapter.modeling.head as head_module
from maskadapter import MaskAdapterHead, load_part
from maskadapter.checkpoint import CheckpointError

from conftest import randomize_
from official_layout import fabricated_state, official_key_shapes

D, C, K = 24, 32, 16


def official_formula(sd: dict, clip: torch.Tensor, masks: torch.Tensor, k: int = K) -> torch.Tensor:
    """The official head formula written from scratch on raw tensors (float64), not using any maskadapter code."""
    sd = {n: t.double() for n, t in sd.items()}
    clip = clip.double()
    B, N, Hm, Wm = masks.shape
    h, w = clip.shape[-2:]

    def ln_channels(x, weight, bias, eps):  # biased variance over dim 1
        u = x.mean(1, keepdim=True)
        s = ((x - u) ** 2).mean(1, keepdim=True)
        return weight[None, :, None, None] * (x - u) / torch.sqrt(s + eps) + bias[None, :, None, None]

    m = masks.reshape(B * N, 1, Hm, Wm).double()
    m = F.interpolate(m, size=(4 * h, 4 * w), mode="bilinear", align_corners=False)
    m = F.conv2d(m, sd["mask_downscaling.0.weight"], sd["mask_downscaling.0.bias"], stride=2, padding=1)
    m = F.gelu(ln_channels(m, sd["mask_downscaling.1.weight"], sd["mask_downscaling.1.bias"], 1e-6))
    m = F.conv2d(m, sd["mask_downscaling.3.weight"], sd["mask_downscaling.3.bias"], stride=2, padding=1)
    m = F.gelu(ln_channels(m, sd["mask_downscaling.4.weight"], sd["mask_downscaling.4.bias"], 1e-6))
    m = F.conv2d(m, sd["mask_downscaling.6.weight"], sd["mask_downscaling.6.bias"])
    rep = torch.stack([clip[b] for b in range(B) for _ in range(N)])  # b-major repeat
    x = F.conv2d(rep + m, sd["fuse.weight"], sd["fuse.bias"])
    ch = x.shape[1]
    for i in (1, 2, 3):
        p = f"cnext{i}."
        y = F.conv2d(x, sd[p + "dwconv.weight"], sd[p + "dwconv.bias"], padding=3, groups=ch)
        y = ln_channels(y, sd[p + "norm.weight"], sd[p + "norm.bias"], 1e-6)
        y = torch.einsum("oc,bchw->bohw", sd[p + "pwconv1.weight"], y) + sd[p + "pwconv1.bias"][None, :, None, None]
        y = 0.5 * y * (1 + torch.erf(y / 2 ** 0.5))
        y = torch.einsum("oc,bchw->bohw", sd[p + "pwconv2.weight"], y) + sd[p + "pwconv2.bias"][None, :, None, None]
        x = x + sd[p + "gamma"][None, :, None, None] * y
    x = ln_channels(x, sd["norm.weight"], sd["norm.bias"], 1e-5)
    x = F.conv2d(x, sd["final.weight"], sd["final.bias"])  # [(B N), K, h, w]
    return x.reshape(B, N * k, h, w)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


@pytest.fixture(scope="module")
def head() -> MaskAdapterHead:
    h = MaskAdapterHead(D, num_channels=C)
    load_part(h, fabricated_state(), "mask_adapter")
    return h.eval()


def test_official_keys_load_strictly_and_match_formula(head):
    sd = fabricated_state()
    assert set(head.state_dict()) == set(official_key_shapes(D, C))
    torch.manual_seed(1)
    clip = torch.randn(2, D, 5, 6)
    masks = torch.rand(2, 3, 40, 48) > 0.5
    expected = official_formula(sd, clip, masks)
    with torch.no_grad():
        ref = head(clip, masks, path="reference")
        fast = head(clip, masks)
    assert ref.shape == (2, 3 * K, 5, 6)
    assert rel_err(ref, expected) < 1e-5
    assert rel_err(fast, expected) < 1e-5


def test_channel_order_is_mask_major(head):
    """Output channel n*K+k belongs to mask n: permuting masks permutes K-blocks of channels."""
    torch.manual_seed(2)
    clip = torch.randn(1, D, 4, 4)
    masks = torch.rand(1, 4, 16, 16)
    perm = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        out = head(clip, masks).view(1, 4, K, 4, 4)
        out_perm = head(clip, masks[:, perm]).view(1, 4, K, 4, 4)
        single = head(clip, masks[:, 2:3])
    torch.testing.assert_close(out_perm, out[:, perm], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(single.view(1, K, 4, 4), out[0, 2][None], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", [1, 3, 7])
@pytest.mark.parametrize("chunk", [1, 2, 5, None])
@pytest.mark.parametrize("mask_size", [(16, 20), (37, 53), (64, 80)])
def test_fast_equals_reference(head, n, chunk, mask_size):
    torch.manual_seed(n * 100 + (chunk or 0))
    clip = torch.randn(2, D, 4, 5)
    masks = torch.rand(2, n, *mask_size)
    with torch.no_grad():
        ref = head(clip, masks, path="reference")
        fast = head(clip, masks, chunk_size=chunk)
    assert rel_err(fast, ref) < 1e-5


@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8, torch.float32, torch.float64])
def test_mask_dtypes_agree(head, dtype):
    torch.manual_seed(3)
    clip = torch.randn(1, D, 4, 4)
    binary = torch.rand(1, 5, 16, 16) > 0.5
    with torch.no_grad():
        expected = head(clip, binary.float(), path="reference")
        for path in ("fast", "reference"):
            assert rel_err(head(clip, binary.to(dtype), path=path), expected) < 1e-5


def test_mlp_row_tiling_is_exact(head, monkeypatch):
    torch.manual_seed(4)
    clip = torch.randn(1, D, 6, 6)
    masks = torch.rand(1, 9, 24, 24) > 0.3
    with torch.no_grad():
        untiled = head(clip, masks, chunk_size=4)
        monkeypatch.setattr(head_module, "_MLP_ROW_TILE", 7)  # tiles that cut through masks and rows
        tiled = head(clip, masks, chunk_size=4)
        ref = head(clip, masks, path="reference")
    assert rel_err(tiled, untiled) < 1e-6
    assert rel_err(tiled, ref) < 1e-5


def test_channels_last_input(head):
    torch.manual_seed(5)
    clip = torch.randn(2, D, 5, 5)
    masks = torch.rand(2, 3, 20, 20) > 0.5
    with torch.no_grad():
        ref = head(clip, masks, path="reference")
        cl = clip.to(memory_format=torch.channels_last)
        assert rel_err(head(cl, masks), ref) < 1e-5
        assert rel_err(head(cl, masks, path="reference"), ref) < 1e-5


def test_gradients_flow_and_agree():
    h = randomize_(MaskAdapterHead(D, num_channels=C), seed=6)
    torch.manual_seed(6)
    clip = torch.randn(2, D, 4, 4)
    masks = torch.rand(2, 3, 16, 16)
    grads = {}
    for path in ("reference", "fast"):
        h.zero_grad()
        x = clip.clone().requires_grad_(True)
        (h(x, masks, path=path, chunk_size=2 if path == "fast" else None) ** 2).sum().backward()
        grads[path] = {n: p.grad.clone() for n, p in h.named_parameters()} | {"input": x.grad.clone()}
    assert all(g.abs().sum() > 0 for g in grads["fast"].values())
    for name, g in grads["reference"].items():
        assert rel_err(grads["fast"][name], g) < 1e-4, name


def test_bf16_autocast_close_to_fp32(head):
    torch.manual_seed(7)
    clip = torch.randn(1, D, 4, 4)
    masks = torch.rand(1, 3, 16, 16) > 0.5
    with torch.no_grad():
        ref = head(clip, masks, path="reference")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = head(clip, masks)
    assert torch.isfinite(fast).all()
    assert rel_err(fast.float(), ref) < 5e-2


def test_released_architecture_parameter_counts():
    assert sum(p.numel() for p in MaskAdapterHead(768).parameters()) == 14_907_568
    assert sum(p.numel() for p in MaskAdapterHead(640).parameters()) == 14_807_088


def test_real_width_fast_equals_reference():
    h = randomize_(MaskAdapterHead(768), seed=8, std=0.05).eval()
    torch.manual_seed(8)
    clip = torch.randn(1, 768, 3, 4)
    masks = torch.rand(1, 5, 12, 16) > 0.5
    with torch.no_grad():
        assert rel_err(h(clip, masks), h(clip, masks, path="reference")) < 1e-5


def test_zero_masks_give_empty_output(head):
    clip = torch.randn(2, D, 4, 4)
    for path in ("fast", "reference"):
        out = head(clip, torch.zeros(2, 0, 16, 16, dtype=torch.bool), path=path)
        assert out.shape == (2, 0, 4, 4)


@pytest.mark.parametrize("clip_shape, mask_shape, exc, words", [
    ((1, D, 4, 4), (1, 16, 16), ValueError, "masks must have rank 4"),
    ((1, D, 4, 4), (1, 1, 2, 16, 16), ValueError, "masks must have rank 4"),
    ((2, D, 4, 4), (3, 2, 16, 16), ValueError, "batch sizes differ"),
    ((1, D + 1, 4, 4), (1, 2, 16, 16), ValueError, "dense_proj must have shape"),
    ((1, D, 4), (1, 2, 16, 16), ValueError, "dense_proj must have shape"),
    ((1, D, 4, 4), (1, 2, 0, 16), ValueError, "empty spatial size"),
])
def test_bad_shapes(head, clip_shape, mask_shape, exc, words):
    with pytest.raises(exc, match=words):
        head(torch.randn(clip_shape), torch.zeros(mask_shape))


def test_bad_values_and_types(head):
    clip = torch.randn(1, D, 4, 4)
    masks = torch.zeros(1, 2, 16, 16)
    with pytest.raises(TypeError, match="masks must be a torch.Tensor"):
        head(clip, masks.numpy())
    with pytest.raises(ValueError, match="chunk_size"):
        head(clip, masks, chunk_size=0)
    with pytest.raises(ValueError, match="path must be"):
        head(clip, masks, path="turbo")
    with pytest.raises(ValueError, match="mask_in_chans"):
        MaskAdapterHead(D, mask_in_chans=6)


def test_missing_and_misshaped_keys_are_listed():
    h = MaskAdapterHead(D, num_channels=C)
    sd = fabricated_state()
    del sd["cnext2.gamma"], sd["final.bias"]
    sd["fuse.weight"] = torch.zeros(C, D + 1, 1, 1)
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as info:
        load_part(h, sd, "mask_adapter")
    msg = str(info.value)
    assert "2 missing keys: cnext2.gamma, final.bias" in msg
    assert "unexpected keys: extra.weight" in msg
    assert "fuse.weight: checkpoint [32, 25, 1, 1] vs model [32, 24, 1, 1]" in msg


def test_small_activations_expose_each_eps():
    """With activations near the eps scale, a wrong eps anywhere (1e-6 stem/blocks, 1e-5 final) shows."""
    sd = fabricated_state(seed=9)
    for key in ("mask_downscaling.0.weight", "mask_downscaling.3.weight", "mask_downscaling.6.weight",
                "fuse.weight", "fuse.bias", *(f"cnext{i}.{n}" for i in (1, 2, 3) for n in ("gamma", "dwconv.bias"))):
        sd[key] = sd[key] * 1e-3
    h = MaskAdapterHead(D, num_channels=C)
    load_part(h, sd, "mask_adapter")
    torch.manual_seed(9)
    clip = torch.randn(1, D, 4, 4) * 1e-3
    masks = torch.rand(1, 3, 16, 16) > 0.5
    expected = official_formula(sd, clip, masks)
    with torch.no_grad():
        for path in ("reference", "fast"):
            assert rel_err(h(clip, masks, path=path), expected) < 1e-4, path


def test_duplicate_and_empty_masks_are_computed_once(head, monkeypatch):
    torch.manual_seed(10)
    clip = torch.randn(2, D, 4, 4)
    masks = torch.rand(2, 6, 16, 16) > 0.5
    masks[0, 1] = masks[0, 4]  # a duplicate
    masks[0, [2, 3]] = False  # two empty proposals
    masks[1, 5] = masks[0, 0]  # same mask in another image: must NOT be shared across images
    seen = []
    original = MaskAdapterHead._forward_fast
    monkeypatch.setattr(MaskAdapterHead, "_forward_fast",
                        lambda self, d, m, c: seen.append(m.shape[1]) or original(self, d, m, c))
    with torch.no_grad():
        fast = head(clip, masks)
        ref = head(clip, masks, path="reference")
        plain = head(clip, masks, dedupe=False)
    assert seen == [4, 6, 6]  # image 0: 6 masks, 4 distinct; image 1: all distinct; then dedupe off
    assert rel_err(fast, ref) < 1e-5 and rel_err(plain, ref) < 1e-5
    clip.requires_grad_(True)
    (head(clip, masks) ** 2).sum().backward()
    g_fast = clip.grad.clone()
    clip.grad = None
    (head(clip, masks, path="reference") ** 2).sum().backward()
    assert rel_err(g_fast, clip.grad) < 1e-4


@pytest.mark.parametrize("gemm", ["mkl", "onednn"])
def test_both_cpu_gemm_libraries_match_the_reference(head, monkeypatch, gemm):
    monkeypatch.setenv("MASKADAPTER_CPU_GEMM", gemm)
    torch.manual_seed(11)
    clip = torch.randn(2, D, 5, 4)
    masks = torch.rand(2, 7, 20, 16) > 0.5
    with torch.no_grad():
        assert rel_err(head(clip, masks, chunk_size=3), head(clip, masks, path="reference")) < 1e-5


def test_nhwc_block_updates_in_place_only_when_asked(head):
    block = head.cnext1
    torch.manual_seed(12)
    x = torch.randn(2, 5, 6, C)
    with torch.no_grad():
        expected = block(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        kept = x.clone()
        out = block.forward_nhwc(x, row_tile=7)
        assert torch.equal(x, kept) and out.data_ptr() != x.data_ptr()
        same = block.forward_nhwc(x, row_tile=7, inplace=True)
        assert same.data_ptr() == x.data_ptr()
    assert rel_err(same, expected) < 1e-5 and rel_err(out, expected) < 1e-5
    leaf = kept.clone().requires_grad_(True)  # with autograd: never in place, gradients flow
    grad_out = block.forward_nhwc(leaf, inplace=True)
    assert grad_out.grad_fn is not None and torch.equal(leaf.detach(), kept)
    assert rel_err(grad_out.detach(), expected.detach()) < 1e-5

"""FC-CLIP pixel decoder: deformable-attention core, sine positions, module init, key layout, parity, dtypes.

Expected values are re-derived here independently: a loop-and-scalar bilinear sampler, hand-written sine
values, the official key list, and a functional re-statement of the official forward (with the official
stack-then-weight ``grid_sample`` core) that shares no code with the module under test.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import randomize_
from maskadapter.checkpoint import CheckpointError, load_part
from maskadapter.modeling.generators.deform_attn import MSDeformAttn, ms_deform_attn
from maskadapter.modeling.generators.pixel_decoder import MSDeformAttnPixelDecoder, PixelDecoderConfig
from maskadapter.modeling.generators.position_encoding import PositionEmbeddingSine

METHODS = ("auto", "grid_sample", "sparse")
TINY_IN = {"res2": 40, "res3": 80, "res4": 160, "res5": 320}
CONVNEXT_L_IN = {"res2": 192, "res3": 384, "res4": 768, "res5": 1536}
TINY = dict(conv_dim=64, mask_dim=48, num_encoder_layers=2, nheads=8, dim_feedforward=96, num_groups=32)


# ----------------------------------------------------------------------------------------------------------
# Independent references
# ----------------------------------------------------------------------------------------------------------
def naive_ms_deform_attn(value, shapes, loc, attn):
    """Scalar loops over batch/query/head/level/point; bilinear with zero padding, pixel centres at +0.5."""
    B, _, nH, Dh = value.shape
    _, Lq, _, L, P, _ = loc.shape
    out = torch.zeros(B, Lq, nH, Dh, dtype=value.dtype)
    starts = [0]
    for h, w in shapes[:-1]:
        starts.append(starts[-1] + h * w)
    for b in range(B):
        for q in range(Lq):
            for m in range(nH):
                for lv, (h, w) in enumerate(shapes):
                    for p in range(P):
                        x = float(loc[b, q, m, lv, p, 0]) * w - 0.5
                        y = float(loc[b, q, m, lv, p, 1]) * h - 0.5
                        x0, y0 = math.floor(x), math.floor(y)
                        sample = torch.zeros(Dh, dtype=value.dtype)
                        for cy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
                            for cx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
                                if 0 <= cx < w and 0 <= cy < h:
                                    sample += wy * wx * value[b, starts[lv] + cy * w + cx, m]
                        out[b, q, m] += float(attn[b, q, m, lv, p]) * sample
    return out.reshape(B, Lq, nH * Dh)


def official_style_core(value, shapes, loc, attn):
    """The official pytorch core's formulation: grid_sample per level, stack all samples, then weight."""
    B, _, nH, Dh = value.shape
    _, Lq, _, L, P, _ = loc.shape
    maps = value.split([h * w for h, w in shapes], dim=1)
    samples = []
    for lv, (h, w) in enumerate(shapes):
        v = maps[lv].flatten(2).transpose(1, 2).reshape(B * nH, Dh, h, w)
        g = (2 * loc[:, :, :, lv] - 1).transpose(1, 2).flatten(0, 1)
        samples.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    a = attn.transpose(1, 2).reshape(B * nH, 1, Lq, L * P)
    out = (torch.stack(samples, dim=-2).flatten(-2) * a).sum(-1).view(B, nH * Dh, Lq)
    return out.transpose(1, 2)


def hand_sine(H, W, feats, normalize, temperature=10000.0, valid_w=None):
    """Sine positions from the formula, element by element: [1, 2*feats, H, W]."""
    valid_w = W if valid_w is None else valid_w
    out = torch.zeros(1, 2 * feats, H, W, dtype=torch.float64)
    for i in range(H):
        for j in range(W):
            # A padded column has no valid cell above it, so its y count is 0; x counts stop growing.
            y, x = (float(i + 1) if j < valid_w else 0.0), float(min(j + 1, valid_w))
            if normalize:
                y_total = H if j < valid_w else 0
                y, x = y / (y_total + 1e-6) * 2 * math.pi, x / (valid_w + 1e-6) * 2 * math.pi
            for k in range(feats):
                freq = temperature ** (2 * (k // 2) / feats)
                fn = math.sin if k % 2 == 0 else math.cos
                out[0, k, i, j] = fn(y / freq)
                out[0, feats + k, i, j] = fn(x / freq)
    return out


def random_sampling_inputs(B, shapes, nH, Dh, Lq, P, seed, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    S = sum(h * w for h, w in shapes)
    value = torch.randn(B, S, nH, Dh, generator=gen, dtype=dtype)
    # Locations well outside [0, 1] too, so the zero padding and fully-outside points are exercised.
    loc = torch.rand(B, Lq, nH, len(shapes), P, 2, generator=gen, dtype=dtype) * 1.8 - 0.4
    attn = torch.rand(B, Lq, nH, len(shapes), P, generator=gen, dtype=dtype)
    return value, loc, attn


# ----------------------------------------------------------------------------------------------------------
# Sampling core
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_ms_deform_attn_matches_naive_loops(method):
    shapes = [(3, 5), (1, 1), (4, 2)]
    value, loc, attn = random_sampling_inputs(2, shapes, nH=3, Dh=4, Lq=6, P=2, seed=0)
    # Corner cases: exact pixel centres, exact borders, far outside, the last cell's far corner.
    loc[0, 0, 0, 0, 0] = torch.tensor([0.5 / 5, 0.5 / 3], dtype=loc.dtype)
    loc[0, 1, 1, 2, 1] = torch.tensor([0.0, 1.0], dtype=loc.dtype)
    loc[1, 2, 2, 0, 0] = torch.tensor([-3.0, 7.0], dtype=loc.dtype)
    loc[1, 5, 2, 2, 1] = torch.tensor([1.0 + 0.49 / 2, 1.0 + 0.49 / 4], dtype=loc.dtype)
    expected = naive_ms_deform_attn(value, shapes, loc, attn)
    got = ms_deform_attn(value, torch.tensor(shapes), loc, attn, method=method)
    assert got.shape == (2, 6, 12) and got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    assert (expected.abs() > 0).all(), "inputs should not leave outputs at zero"


@pytest.mark.parametrize("method", ("grid_sample", "sparse"))
def test_ms_deform_attn_fp32_close_to_fp64(method):
    shapes = [(6, 7), (3, 4)]
    value, loc, attn = random_sampling_inputs(1, shapes, nH=2, Dh=8, Lq=20, P=3, seed=1)
    expected = official_style_core(value, shapes, loc, attn)
    got = ms_deform_attn(value.float(), torch.tensor(shapes), loc.float(), attn.float(), method=method)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ("grid_sample", "sparse"))
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16))
def test_ms_deform_attn_half_inputs(method, dtype):
    shapes = [(20, 30), (5, 7)]  # more cells than bf16 can index exactly
    value, loc, attn = random_sampling_inputs(1, shapes, nH=2, Dh=4, Lq=30, P=2, seed=4)
    loc = loc * 0.5 + 0.25
    expected = official_style_core(value.to(dtype).double(), shapes, loc.to(dtype).double(), attn.to(dtype).double())
    got = ms_deform_attn(value.to(dtype), torch.tensor(shapes), loc.to(dtype), attn.to(dtype), method=method)
    assert got.dtype == dtype
    torch.testing.assert_close(got.double(), expected, rtol=2e-2, atol=2e-2)


def test_ms_deform_attn_sparse_rejects_nothing_and_keeps_nan():
    shapes = [(2, 3)]
    value, loc, attn = random_sampling_inputs(1, shapes, nH=1, Dh=2, Lq=3, P=1, seed=2)
    loc[0, 1, 0, 0, 0, 0] = float("nan")
    out = ms_deform_attn(value, torch.tensor(shapes), loc, attn, method="sparse")
    assert torch.isnan(out[0, 1]).all() and torch.isfinite(out[0, [0, 2]]).all()
    with pytest.raises(ValueError, match="unknown method"):
        ms_deform_attn(value, torch.tensor(shapes), loc, attn, method="cuda")
    with pytest.raises(ValueError, match="do not match"):
        ms_deform_attn(value, torch.tensor([(2, 2)]), loc, attn)


# ----------------------------------------------------------------------------------------------------------
# MSDeformAttn module
# ----------------------------------------------------------------------------------------------------------
def test_msdeformattn_init_is_deformable_detr():
    attn = MSDeformAttn(d_model=16, n_levels=2, n_heads=4, n_points=3)
    bias = attn.sampling_offsets.bias.detach().view(4, 2, 3, 2)
    # Head h points along angle 2*pi*h/4, scaled so the larger component is 1, at 1, 2, 3 cells.
    directions = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    for h in range(4):
        for lv in range(2):
            for p in range(3):
                torch.testing.assert_close(bias[h, lv, p], directions[h] * (p + 1), atol=1e-6, rtol=0)
    assert torch.count_nonzero(attn.sampling_offsets.weight) == 0
    assert torch.count_nonzero(attn.attention_weights.weight) == 0
    assert torch.count_nonzero(attn.attention_weights.bias) == 0
    assert torch.count_nonzero(attn.value_proj.bias) == 0 and torch.count_nonzero(attn.output_proj.bias) == 0
    bound = math.sqrt(6 / (16 + 16))  # xavier-uniform bound
    assert attn.value_proj.weight.abs().max() <= bound and attn.value_proj.weight.std() > bound / 4
    assert [n for n, _ in attn.named_children()] == ["sampling_offsets", "attention_weights", "value_proj",
                                                     "output_proj"]


@pytest.mark.parametrize("ref_dim", (2, 4))
def test_msdeformattn_forward_matches_formula(ref_dim):
    torch.manual_seed(0)
    C, nH, L, P, Lq = 12, 3, 2, 2, 5
    shapes = [(3, 4), (2, 2)]
    module = randomize_(MSDeformAttn(C, L, nH, P), seed=3).double()
    S = sum(h * w for h, w in shapes)
    query, inp = torch.randn(2, Lq, C, dtype=torch.float64), torch.randn(2, S, C, dtype=torch.float64)
    ref = torch.rand(2, Lq, L, ref_dim, dtype=torch.float64)
    pad = torch.zeros(2, S, dtype=torch.bool)
    pad[1, -3:] = True
    spatial = torch.tensor(shapes)
    start = torch.tensor([0, 12])
    module.requires_grad_(False)
    value = (inp @ module.value_proj.weight.T + module.value_proj.bias).masked_fill(pad[..., None], 0)
    offsets = (query @ module.sampling_offsets.weight.T + module.sampling_offsets.bias).view(2, Lq, nH, L, P, 2)
    logits = (query @ module.attention_weights.weight.T + module.attention_weights.bias).view(2, Lq, nH, L * P)
    weights = logits.softmax(-1).view(2, Lq, nH, L, P)
    if ref_dim == 2:
        loc = ref[:, :, None, :, None, :] + offsets / torch.tensor([[4.0, 3.0], [2.0, 2.0]])[:, None, :]
    else:
        loc = ref[:, :, None, :, None, :2] + offsets / P * ref[:, :, None, :, None, 2:] * 0.5
    sampled = naive_ms_deform_attn(value.view(2, S, nH, C // nH).detach(), shapes, loc.detach(), weights.detach())
    expected = sampled @ module.output_proj.weight.T + module.output_proj.bias
    for method in METHODS:
        module.method = method
        got = module(query, ref, inp, spatial, start, pad)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_msdeformattn_trains_through_grid_sample_path():
    torch.manual_seed(0)
    module = MSDeformAttn(16, 2, 4, 2)
    shapes = torch.tensor([(4, 4), (2, 2)])
    query, inp = torch.randn(1, 7, 16), torch.randn(1, 20, 16)
    ref = torch.rand(1, 7, 2, 2)
    with torch.no_grad():
        fast = module(query, ref, inp, shapes)  # "auto" without grad: the sparse path
    out = module(query, ref, inp, shapes)  # with grad: the grid_sample path
    torch.testing.assert_close(out, fast, rtol=1e-5, atol=1e-6)
    out.square().mean().backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"no gradient reaches {name}"


# ----------------------------------------------------------------------------------------------------------
# Position encoding
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("normalize", (False, True))
def test_position_embedding_sine_hand_values(normalize):
    pe = PositionEmbeddingSine(num_pos_feats=4, normalize=normalize)
    x = torch.zeros(1, 7, 2, 3, dtype=torch.float64)
    got = pe(x)
    assert got.shape == (1, 8, 2, 3)
    torch.testing.assert_close(got, hand_sine(2, 3, 4, normalize), rtol=0, atol=1e-12)
    # Spot values written out: y=2 (row 1) at the lowest frequency -> sin(2); x=3 (col 2) -> cos(3).
    if not normalize:
        assert got[0, 0, 1, 0].item() == pytest.approx(math.sin(2.0), abs=1e-12)
        assert got[0, 5, 0, 2].item() == pytest.approx(math.cos(3.0), abs=1e-12)
        assert got[0, 2, 1, 0].item() == pytest.approx(math.sin(2.0 / 100), abs=1e-12)  # 10000^(2/4) = 100
    else:
        assert got[0, 4, 0, 2].item() == pytest.approx(math.sin(3 / (3 + 1e-6) * 2 * math.pi), abs=1e-12)


def test_position_embedding_sine_mask_dtype_and_scale():
    pe = PositionEmbeddingSine(num_pos_feats=6, normalize=True)
    mask = torch.zeros(1, 3, 4, dtype=torch.bool)
    mask[:, :, 3] = True  # a padded last column: x counts stop at 3 and normalise by 3
    got = pe(torch.zeros(1, 2, 3, 4, dtype=torch.float64), mask)
    torch.testing.assert_close(got, hand_sine(3, 4, 6, True, valid_w=3), rtol=0, atol=1e-12)
    half = pe(torch.zeros(1, 2, 3, 4, dtype=torch.bfloat16))
    assert half.dtype == torch.float32  # computed in fp32 whatever the input, as the official module
    torch.testing.assert_close(half.double(), hand_sine(3, 4, 6, True), rtol=0, atol=1e-5)
    scaled = PositionEmbeddingSine(2, temperature=10, normalize=True, scale=1.0)(torch.zeros(1, 1, 1, 2))
    torch.testing.assert_close(scaled[0, :, 0, 1], torch.tensor([math.sin(1 / (1 + 1e-6)), math.cos(1 / (1 + 1e-6)),
                                                               math.sin(2 / (2 + 1e-6)), math.cos(2 / (2 + 1e-6))]))
    with pytest.raises(ValueError):
        PositionEmbeddingSine(4, scale=2.0)


# ----------------------------------------------------------------------------------------------------------
# Pixel decoder: official key layout
# ----------------------------------------------------------------------------------------------------------
def official_pixel_decoder_keys(in_ch, conv_dim, mask_dim, layers, ffn, heads=8, levels=3, points=4):
    """``sem_seg_head.pixel_decoder.*`` keys and shapes, prefix removed."""
    keys = {}
    for i, name in enumerate(("res5", "res4", "res3")):  # coarsest first
        keys[f"input_proj.{i}.0.weight"] = (conv_dim, in_ch[name], 1, 1)
        keys[f"input_proj.{i}.0.bias"] = (conv_dim,)
        keys[f"input_proj.{i}.1.weight"] = (conv_dim,)
        keys[f"input_proj.{i}.1.bias"] = (conv_dim,)
    keys["transformer.level_embed"] = (levels, conv_dim)
    for j in range(layers):
        p = f"transformer.encoder.layers.{j}."
        keys.update({
            p + "self_attn.sampling_offsets.weight": (heads * levels * points * 2, conv_dim),
            p + "self_attn.sampling_offsets.bias": (heads * levels * points * 2,),
            p + "self_attn.attention_weights.weight": (heads * levels * points, conv_dim),
            p + "self_attn.attention_weights.bias": (heads * levels * points,),
            p + "self_attn.value_proj.weight": (conv_dim, conv_dim), p + "self_attn.value_proj.bias": (conv_dim,),
            p + "self_attn.output_proj.weight": (conv_dim, conv_dim), p + "self_attn.output_proj.bias": (conv_dim,),
            p + "norm1.weight": (conv_dim,), p + "norm1.bias": (conv_dim,),
            p + "linear1.weight": (ffn, conv_dim), p + "linear1.bias": (ffn,),
            p + "linear2.weight": (conv_dim, ffn), p + "linear2.bias": (conv_dim,),
            p + "norm2.weight": (conv_dim,), p + "norm2.bias": (conv_dim,),
        })
    keys.update({
        "mask_features.weight": (mask_dim, conv_dim, 1, 1), "mask_features.bias": (mask_dim,),
        "adapter_1.weight": (conv_dim, in_ch["res2"], 1, 1),
        "adapter_1.norm.weight": (conv_dim,), "adapter_1.norm.bias": (conv_dim,),
        "layer_1.weight": (conv_dim, conv_dim, 3, 3),
        "layer_1.norm.weight": (conv_dim,), "layer_1.norm.bias": (conv_dim,),
    })
    return keys


def tiny_decoder(seed=0):
    torch.manual_seed(seed)
    return MSDeformAttnPixelDecoder(TINY_IN, **TINY)


def shapes_of(module):
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_tiny_decoder_keys_equal_official_layout():
    decoder = tiny_decoder()
    assert shapes_of(decoder) == official_pixel_decoder_keys(TINY_IN, 64, 48, layers=2, ffn=96)
    assert list(decoder.named_buffers()) == []
    norms = [m for m in decoder.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert len(norms) == 5 and all(m.num_groups == 32 and m.eps == 1e-5 for m in norms)
    assert decoder.adapter_1.bias is None and decoder.layer_1.bias is None
    assert decoder.layer_1.padding == (1, 1) and decoder.adapter_1.kernel_size == (1, 1)


def test_real_size_decoder_keys_and_shapes():
    decoder = MSDeformAttnPixelDecoder(CONVNEXT_L_IN)  # FC-CLIP defaults: 256 dims, 6 layers, 8 heads, 1024 FFN
    got = shapes_of(decoder)
    assert got == official_pixel_decoder_keys(CONVNEXT_L_IN, 256, 256, layers=6, ffn=1024)
    assert got["transformer.encoder.layers.5.linear1.weight"] == (1024, 256)
    assert got["transformer.encoder.layers.5.self_attn.sampling_offsets.weight"] == (192, 256)
    assert got["input_proj.0.0.weight"] == (256, 1536, 1, 1) and got["adapter_1.weight"] == (256, 192, 1, 1)
    config = PixelDecoderConfig(in_channels=CONVNEXT_L_IN)
    assert shapes_of(MSDeformAttnPixelDecoder.from_config(config)) == got
    assert decoder.config == config


def test_strict_load_of_fabricated_official_state():
    decoder = tiny_decoder()
    gen = torch.Generator().manual_seed(5)
    state = {k: torch.randn(s, generator=gen) for k, s in official_pixel_decoder_keys(TINY_IN, 64, 48, 2, 96).items()}
    load_part(decoder, state, "sem_seg_head.pixel_decoder")
    for k, v in decoder.state_dict().items():
        assert torch.equal(v, state[k]), k
    extra = dict(state, **{"lateral_convs.0.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="unexpected"):
        load_part(decoder, extra, "sem_seg_head.pixel_decoder")
    missing = {k: v for k, v in state.items() if k != "transformer.level_embed"}
    with pytest.raises(CheckpointError, match="missing"):
        load_part(decoder, missing, "sem_seg_head.pixel_decoder")


def test_config_validation():
    with pytest.raises(ValueError, match="divisible"):
        MSDeformAttnPixelDecoder(TINY_IN, conv_dim=48, num_groups=32)
    with pytest.raises(ValueError, match="stride"):
        MSDeformAttnPixelDecoder({"res2": 8, "res3": 8, "res4": 8, "res5": 8, "res6": 8})


# ----------------------------------------------------------------------------------------------------------
# Pixel decoder: forward
# ----------------------------------------------------------------------------------------------------------
def tiny_features(batch=2, height=128, width=96, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return {name: torch.randn(batch, c, height // s, width // s, generator=gen).to(dtype)
            for (name, c), s in zip(TINY_IN.items(), (4, 8, 16, 32))}


def reference_decoder_forward(sd, feats, heads=8, groups=32, points=4):
    """The official forward restated with functional ops on the state dict (fp64)."""
    names = ("res5", "res4", "res3")
    srcs = [F.group_norm(F.conv2d(feats[n], sd[f"input_proj.{i}.0.weight"], sd[f"input_proj.{i}.0.bias"]),
                         groups, sd[f"input_proj.{i}.1.weight"], sd[f"input_proj.{i}.1.bias"])
            for i, n in enumerate(names)]
    B, C = srcs[0].shape[:2]
    shapes = [tuple(s.shape[2:]) for s in srcs]
    pos = [hand_sine(h, w, C // 2, True).expand(B, -1, -1, -1) for h, w in shapes]
    src = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)
    pos = torch.cat([p.flatten(2).transpose(1, 2) + sd["transformer.level_embed"][i] for i, p in enumerate(pos)], 1)
    ref = torch.cat([torch.tensor([[(j + 0.5) / w, (i + 0.5) / h] for i in range(h) for j in range(w)],
                                  dtype=torch.float64) for h, w in shapes])
    ref = ref[None, :, None, :].expand(B, -1, 3, 2)
    S, Dh = src.shape[1], C // heads
    lin = lambda x, name: F.linear(x, sd[name + ".weight"], sd[name + ".bias"])  # noqa: E731
    norm = torch.tensor([[w, h] for h, w in shapes], dtype=torch.float64)
    j = 0
    while f"transformer.encoder.layers.{j}.norm1.weight" in sd:
        p = f"transformer.encoder.layers.{j}."
        q = src + pos
        value = lin(src, p + "self_attn.value_proj").view(B, S, heads, Dh)
        off = lin(q, p + "self_attn.sampling_offsets").view(B, S, heads, 3, points, 2)
        aw = lin(q, p + "self_attn.attention_weights").view(B, S, heads, 3 * points).softmax(-1)
        loc = ref[:, :, None, :, None, :] + off / norm[None, None, None, :, None, :]
        attn = official_style_core(value, shapes, loc, aw.view(B, S, heads, 3, points))
        src = F.layer_norm(src + lin(attn, p + "self_attn.output_proj"), (C,),
                           sd[p + "norm1.weight"], sd[p + "norm1.bias"])
        ffn = lin(F.relu(lin(src, p + "linear1")), p + "linear2")
        src = F.layer_norm(src + ffn, (C,), sd[p + "norm2.weight"], sd[p + "norm2.bias"])
        j += 1
    pieces = src.split([h * w for h, w in shapes], 1)
    outs = [z.transpose(1, 2).reshape(B, C, h, w) for z, (h, w) in zip(pieces, shapes)]
    lateral = F.group_norm(F.conv2d(feats["res2"], sd["adapter_1.weight"]), groups,
                           sd["adapter_1.norm.weight"], sd["adapter_1.norm.bias"])
    y = lateral + F.interpolate(outs[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False)
    y = F.relu(F.group_norm(F.conv2d(y, sd["layer_1.weight"], padding=1), groups,
                            sd["layer_1.norm.weight"], sd["layer_1.norm.bias"]))
    return F.conv2d(y, sd["mask_features.weight"], sd["mask_features.bias"]), outs


@pytest.mark.parametrize("method", ("auto", "grid_sample"))
def test_decoder_matches_functional_official_forward(method):
    decoder = randomize_(tiny_decoder(), seed=7, std=0.2).double().eval()
    for m in decoder.modules():
        if isinstance(m, MSDeformAttn):
            m.method = method
    feats = {k: v.double() for k, v in tiny_features(height=64, width=96).items()}
    with torch.no_grad():
        mask, multi = decoder.forward_features(feats)
        exp_mask, exp_multi = reference_decoder_forward(decoder.state_dict(), feats)
    assert mask.dtype == torch.float64
    torch.testing.assert_close(mask, exp_mask, rtol=0, atol=1e-9)
    assert len(multi) == 3
    for got, exp in zip(multi, exp_multi):
        torch.testing.assert_close(got, exp, rtol=0, atol=1e-9)


def test_decoder_shapes_dtype_and_determinism():
    decoder = tiny_decoder(seed=1).eval()
    feats = tiny_features()
    with torch.no_grad():
        mask, multi = decoder(feats)
        again, multi_again = decoder.forward_features(feats)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto_mask, auto_multi = decoder.forward_features(feats)
        bf16_mask, _ = decoder.forward_features({k: v.bfloat16() for k, v in feats.items()})
        rounded_mask, _ = decoder.forward_features({k: v.bfloat16().float() for k, v in feats.items()})
    assert mask.shape == (2, 48, 32, 24)
    assert [tuple(m.shape) for m in multi] == [(2, 64, 4, 3), (2, 64, 8, 6), (2, 64, 16, 12)]
    assert torch.isfinite(mask).all() and all(torch.isfinite(m).all() for m in multi)
    assert mask.std() > 0.1 and not torch.allclose(mask[0], mask[1])
    assert torch.equal(mask, again) and all(torch.equal(a, b) for a, b in zip(multi, multi_again))
    # Autocast is switched off inside: fp32 results, bitwise the fp32 computation.
    assert auto_mask.dtype == torch.float32 and all(m.dtype == torch.float32 for m in auto_multi)
    assert torch.equal(auto_mask, mask) and all(torch.equal(a, b) for a, b in zip(auto_multi, multi))
    assert bf16_mask.dtype == torch.float32 and torch.equal(bf16_mask, rounded_mask)


def test_decoder_batch_items_are_independent():
    decoder = tiny_decoder(seed=2).eval()
    feats = tiny_features(seed=3)
    with torch.no_grad():
        both, _ = decoder(feats)
        second, _ = decoder({k: v[1:] for k, v in feats.items()})
    torch.testing.assert_close(both[1:], second, rtol=1e-5, atol=1e-5)


def test_decoder_trains_from_scratch():
    decoder = tiny_decoder(seed=4).train()
    feats = tiny_features(batch=1, height=64, width=64)
    target = torch.randn(1, 48, 16, 16, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.SGD(decoder.parameters(), lr=0.05)
    losses = []
    for step in range(4):
        optimizer.zero_grad()
        loss = F.mse_loss(decoder(feats)[0], target)
        loss.backward()
        grads = {n: p.grad for n, p in decoder.named_parameters()}
        assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
        # At init the query reaches the output only through the zero-initialised offset and weight
        # projections, so the level embedding gets no gradient until those have moved.
        silent = {n for n, g in grads.items() if g.abs().sum() == 0}
        assert silent == ({"transformer.level_embed"} if step == 0 else set()), silent
        optimizer.step()
        losses.append(loss.item())
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < losses[0] * 0.97, losses


def test_auto_falls_back_when_the_sparse_product_misbehaves(monkeypatch):
    import maskadapter.modeling.generators.deform_attn as da

    assert da._sparse_path_agrees()  # this torch build sums repeated CSR columns
    gen = torch.Generator().manual_seed(3)
    value = torch.randn(1, 12, 2, 3, generator=gen)
    loc = torch.rand(1, 4, 2, 1, 2, 2, generator=gen)
    weights = torch.rand(1, 4, 2, 1, 2, generator=gen)
    expected = da.ms_deform_attn(value, [(3, 4)], loc, weights, method="grid_sample")
    broken = lambda *args: da._ms_deform_attn_grid_sample(*args) + 1.0  # noqa: E731
    monkeypatch.setattr(da, "_ms_deform_attn_sparse", broken)
    da._sparse_path_agrees.cache_clear()
    try:
        torch.testing.assert_close(da.ms_deform_attn(value, [(3, 4)], loc, weights), expected)
    finally:
        da._sparse_path_agrees.cache_clear()

"""FCCLIPTransformerDecoder: official key layout, strict loading, parity with an independent
per-image implementation of the masked-attention decoder, inference == training outputs, text batching."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from maskadapter.checkpoint import CheckpointError, load_part
from maskadapter.modeling.generators.transformer_decoder import (
    FCCLIPTransformerDecoder,
    TransformerDecoderConfig,
)

TINY = dict(hidden_dim=32, nheads=4, dec_layers=3, num_queries=10, dim_feedforward=64, mask_dim=32,
            clip_embedding_dim=16)
NUM_SYNONYMS = [2, 1, 3]  # S = 6 synonyms, C = 3 classes (+ void)
LEVEL_SIZES = [(2, 3), (4, 6), (8, 12)]  # res5, res4, res3
MASK_SIZE = (16, 24)


def official_key_shapes(h: int, heads: int, layers: int, q: int, ffn: int, clip: int,
                        in_channels: int | None = None) -> dict[str, tuple]:
    """``sem_seg_head.predictor.*`` keys and shapes, written out by hand from the spec and the official module."""
    del heads  # nn.MultiheadAttention packs all heads into one in_proj matrix
    keys: dict[str, tuple] = {}
    for i in range(layers):
        for kind, attn in (("cross", "multihead_attn"), ("self", "self_attn")):
            p = f"transformer_{kind}_attention_layers.{i}."
            keys.update({p + f"{attn}.in_proj_weight": (3 * h, h), p + f"{attn}.in_proj_bias": (3 * h,),
                         p + f"{attn}.out_proj.weight": (h, h), p + f"{attn}.out_proj.bias": (h,),
                         p + "norm.weight": (h,), p + "norm.bias": (h,)})
        p = f"transformer_ffn_layers.{i}."
        keys.update({p + "linear1.weight": (ffn, h), p + "linear1.bias": (ffn,),
                     p + "linear2.weight": (h, ffn), p + "linear2.bias": (h,),
                     p + "norm.weight": (h,), p + "norm.bias": (h,)})
    keys.update({"decoder_norm.weight": (h,), "decoder_norm.bias": (h,),
                 "query_feat.weight": (q, h), "query_embed.weight": (q, h), "level_embed.weight": (3, h),
                 "_mask_pooling_proj.0.weight": (h,), "_mask_pooling_proj.0.bias": (h,),
                 "_mask_pooling_proj.1.weight": (h, h), "_mask_pooling_proj.1.bias": (h,),
                 "logit_scale": ()})
    for name, out in (("mask_embed", h), ("class_embed", clip)):
        keys.update({f"{name}.layers.0.weight": (h, h), f"{name}.layers.0.bias": (h,),
                     f"{name}.layers.1.weight": (h, h), f"{name}.layers.1.bias": (h,),
                     f"{name}.layers.2.weight": (out, h), f"{name}.layers.2.bias": (out,)})
    if in_channels is not None:
        for i in range(3):
            keys.update({f"input_proj.{i}.weight": (h, in_channels, 1, 1), f"input_proj.{i}.bias": (h,)})
    return keys


def tiny_keys(in_channels: int | None = None) -> dict[str, tuple]:
    return official_key_shapes(32, 4, 3, 10, 64, 16, in_channels)


def fabricated_state(keys: dict[str, tuple], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors for ``keys``; the last mask-embedding layer is boosted on channel 0 (see ``make_inputs``)
    so that some queries are blocked from every pixel, others from part of the image."""
    gen = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(s, generator=gen) * 0.3 for k, s in keys.items()}
    state["mask_embed.layers.2.weight"][0] *= 2.0
    return state


def make_inputs(in_channels: int, batch: int = 2, seed: int = 1, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    feats = [torch.randn(batch, in_channels, h, w, generator=gen, dtype=dtype) for h, w in LEVEL_SIZES]
    mask_features = torch.randn(batch, 32, *MASK_SIZE, generator=gen, dtype=dtype) * 0.15
    # A constant channel makes each query's channel-0 coefficient shift its whole mask up or down.
    mask_features[:, 0] = 1.0
    text = F.normalize(torch.randn(sum(NUM_SYNONYMS) + 1, 16, generator=gen, dtype=dtype), dim=-1)
    return feats, mask_features, text


def build(in_channels: int = 32, seed: int = 0, **overrides) -> FCCLIPTransformerDecoder:
    dec = FCCLIPTransformerDecoder(TransformerDecoderConfig(in_channels=in_channels, **TINY), **overrides)
    proj = in_channels if in_channels != 32 or overrides.get("enforce_input_project") else None
    load_part(dec, fabricated_state(tiny_keys(proj), seed), "sem_seg_head.predictor")
    return dec.double()


# ---------------------------------------------------------------- independent reference (float64)

def _ln(x, sd, p):
    u = x.mean(-1, keepdim=True)
    var = ((x - u) ** 2).mean(-1, keepdim=True)
    return (x - u) / torch.sqrt(var + 1e-5) * sd[p + ".weight"] + sd[p + ".bias"]


def _lin(x, sd, p):
    return x @ sd[p + ".weight"].T + sd[p + ".bias"]


def _mlp3(x, sd, p):
    x = torch.relu(_lin(x, sd, p + ".layers.0"))
    x = torch.relu(_lin(x, sd, p + ".layers.1"))
    return _lin(x, sd, p + ".layers.2")


def _attention(query, key, value, sd, p, heads, blocked=None):
    """softmax(QK^T / sqrt(d)) V per head, blocked positions excluded; [L, C] x [S, C] -> [L, C]."""
    c = query.shape[-1]
    w, b = sd[p + ".in_proj_weight"], sd[p + ".in_proj_bias"]
    q, k, v = (x @ w[i * c:(i + 1) * c].T + b[i * c:(i + 1) * c] for i, x in enumerate((query, key, value)))
    d = c // heads
    outs = []
    for h in range(heads):
        s = q[:, h * d:(h + 1) * d] @ k[:, h * d:(h + 1) * d].T / math.sqrt(d)
        if blocked is not None:
            s = s.masked_fill(blocked, float("-inf"))
        outs.append(torch.softmax(s, dim=-1) @ v[:, h * d:(h + 1) * d])
    return _lin(torch.cat(outs, dim=-1), sd, p + ".out_proj")


def _sine_positions(h, w, c):
    """[h*w, c]: y features then x features, even channels sin, odd cos, normalised 1-based positions."""
    npf = c // 2
    freq = 10000.0 ** (2 * (torch.arange(npf) // 2).double() / npf)
    even = (torch.arange(npf) % 2 == 0)

    def enc(n):
        t = torch.arange(1, n + 1).double() / (n + 1e-6) * 2 * math.pi
        a = t[:, None] / freq
        return torch.where(even, a.sin(), a.cos())  # [n, npf]

    py, px = enc(h)[:, None, :].expand(h, w, npf), enc(w)[None, :, :].expand(h, w, npf)
    return torch.cat([py, px], dim=-1).reshape(h * w, c)


def _heads(q, sd, mf, text, counts):
    dn = _ln(q, sd, "decoder_norm")
    masks = torch.einsum("qc,chw->qhw", _mlp3(dn, sd, "mask_embed"), mf)
    binary = (masks > 0).double()
    pooled = torch.einsum("chw,qhw->qc", mf, binary) / (binary.sum((-1, -2))[:, None] + 1e-8)
    emb = _mlp3(_lin(_ln(pooled, sd, "_mask_pooling_proj.0"), sd, "_mask_pooling_proj.1") + dn, sd, "class_embed")
    sims = min(sd["logit_scale"].exp().item(), 100.0) * (emb / emb.norm(dim=-1, keepdim=True)) @ text.T
    cols, start = [], 0
    for n in counts:
        cols.append(sims[:, start:start + n].max(-1).values)
        start += n
    cols.append(sims[:, -1])
    return torch.stack(cols, dim=-1), masks


def reference_decoder(sd, feats, mf, text, counts, heads, stats):
    """One image at a time, straight from the formulas; returns every step's (logits, masks)."""
    sd = {k: v.double() for k, v in sd.items()}
    steps_all = []
    for b in range(mf.shape[0]):
        srcs, poss = [], []
        for lvl, f in enumerate(feats):
            x = f[b].flatten(1).T  # [hw, C_in]
            if f"input_proj.{lvl}.weight" in sd:
                x = x @ sd[f"input_proj.{lvl}.weight"][:, :, 0, 0].T + sd[f"input_proj.{lvl}.bias"]
            srcs.append(x + sd["level_embed.weight"][lvl])
            poss.append(_sine_positions(*f.shape[-2:], x.shape[-1]))
        q, qpos = sd["query_feat.weight"], sd["query_embed.weight"]
        steps = [_heads(q, sd, mf[b], text[b] if text.dim() == 3 else text, counts)]
        layers = sum(1 for k in sd if k.endswith("linear1.weight"))
        for i in range(layers):
            lvl = i % 3
            small = F.interpolate(steps[-1][1][None], size=feats[lvl].shape[-2:], mode="bilinear",
                                  align_corners=False)[0]
            blocked = small.sigmoid().flatten(1) < 0.5
            full = blocked.all(-1)
            stats["full"] += int(full.sum())
            stats["partial"] += int((blocked.any(-1) & ~full).sum())
            blocked[full] = False
            p = f"transformer_cross_attention_layers.{i}"
            q = _ln(q + _attention(q + qpos, srcs[lvl] + poss[lvl], srcs[lvl], sd, p + ".multihead_attn",
                                   heads, blocked), sd, p + ".norm")
            p = f"transformer_self_attention_layers.{i}"
            q = _ln(q + _attention(q + qpos, q + qpos, q, sd, p + ".self_attn", heads), sd, p + ".norm")
            p = f"transformer_ffn_layers.{i}"
            q = _ln(q + _lin(torch.relu(_lin(q, sd, p + ".linear1")), sd, p + ".linear2"), sd, p + ".norm")
            steps.append(_heads(q, sd, mf[b], text[b] if text.dim() == 3 else text, counts))
        steps_all.append(steps)
    return [(torch.stack([s[j][0] for s in steps_all]), torch.stack([s[j][1] for s in steps_all]))
            for j in range(len(steps_all[0]))]


# ---------------------------------------------------------------- tests

def _shapes(module):
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_tiny_keys_and_shapes():
    assert _shapes(FCCLIPTransformerDecoder(in_channels=32, **TINY)) == tiny_keys()
    assert _shapes(FCCLIPTransformerDecoder(in_channels=24, **TINY)) == tiny_keys(in_channels=24)
    enforced = FCCLIPTransformerDecoder(in_channels=32, enforce_input_project=True, **TINY)
    assert _shapes(enforced) == tiny_keys(in_channels=32)


def test_real_config_keys_shapes_and_init():
    dec = FCCLIPTransformerDecoder(TransformerDecoderConfig())
    assert _shapes(dec) == official_key_shapes(256, 8, 9, 250, 2048, 768)
    assert dec.logit_scale.dim() == 0 and dec.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    maftp = FCCLIPTransformerDecoder(num_queries=100, clip_embedding_dim=640)
    shapes = _shapes(maftp)
    assert shapes["query_feat.weight"] == (100, 256) and shapes["class_embed.layers.2.weight"] == (640, 256)


def test_strict_load_of_fabricated_state():
    state = fabricated_state(tiny_keys(), seed=3)
    dec = FCCLIPTransformerDecoder(in_channels=32, **TINY)
    load_part(dec, state, "sem_seg_head.predictor")
    for k, v in dec.state_dict().items():
        assert torch.equal(v, state[k]), k
    with pytest.raises(CheckpointError, match="unexpected"):
        load_part(dec, {**state, "input_proj.0.weight": torch.zeros(32, 32, 1, 1)}, "sem_seg_head.predictor")
    with pytest.raises(CheckpointError, match="missing"):
        load_part(dec, {k: v for k, v in state.items() if k != "logit_scale"}, "sem_seg_head.predictor")


@pytest.mark.parametrize("in_channels", [32, 24])
def test_parity_with_reference(in_channels):
    dec = build(in_channels)
    feats, mf, text = make_inputs(in_channels)
    stats = {"full": 0, "partial": 0}
    ref = reference_decoder(dec.state_dict(), feats, mf, text, NUM_SYNONYMS, heads=4, stats=stats)
    # The attention-mask path must really be exercised: partly blocked rows and fully blocked ones.
    assert stats["full"] > 0 and stats["partial"] > 0, stats
    with torch.no_grad():
        out = dec.train()(feats, mf, text, NUM_SYNONYMS)
        evaluated = dec.eval()(feats, mf, text, NUM_SYNONYMS)
    assert len(out["aux_outputs"]) == len(ref) - 1 == 3
    got = [(a["pred_logits"], a["pred_masks"]) for a in out["aux_outputs"]]
    got.append((out["pred_logits"], out["pred_masks"]))
    for (gl, gm), (rl, rm) in zip(got, ref):
        torch.testing.assert_close(gm, rm, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(gl, rl, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(evaluated["pred_logits"], ref[-1][0], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(evaluated["pred_masks"], ref[-1][1], rtol=1e-9, atol=1e-9)


def test_inference_equals_training_forward_and_shapes():
    dec = build().float()
    feats, mf, text = make_inputs(32, dtype=torch.float32)
    with torch.no_grad():
        train = dec.train()(feats, mf, text, NUM_SYNONYMS)
        infer = dec.eval()(feats, mf, text, NUM_SYNONYMS)
    assert "aux_outputs" not in infer and set(infer) == {"pred_logits", "pred_masks"}
    assert infer["pred_logits"].shape == (2, 10, len(NUM_SYNONYMS) + 1)
    assert infer["pred_masks"].shape == (2, 10, *MASK_SIZE)
    for aux in train["aux_outputs"]:
        assert aux["pred_logits"].shape == (2, 10, 4) and aux["pred_masks"].shape == (2, 10, *MASK_SIZE)
    assert torch.equal(infer["pred_logits"], train["pred_logits"])
    assert torch.equal(infer["pred_masks"], train["pred_masks"])


def test_inference_projects_full_resolution_masks_once(monkeypatch):
    """Intermediate steps at inference need only the attention mask: they project the mask features resized to
    the attended level, not the full-resolution masks (the train-mode outputs above are equal all the same)."""
    dec = build().float()
    feats, mf, text = make_inputs(32, dtype=torch.float32)
    full = []
    einsum = torch.einsum
    def counted(eq, *operands):
        if eq == "bqc,bchw->bqhw":  # the mask projection
            full.append(operands[1].shape[-2:] == mf.shape[-2:])
        return einsum(eq, *operands)
    monkeypatch.setattr(torch, "einsum", counted)
    with torch.no_grad():
        dec.eval()(feats, mf, text, NUM_SYNONYMS)
        assert full == [False] * dec.num_layers + [True]
        full.clear()
        dec.train()(feats, mf, text, NUM_SYNONYMS)
        assert full == [True] * (dec.num_layers + 1)


def test_per_image_text_classifier():
    dec = build().eval()
    feats, mf, text = make_inputs(32)
    other = F.normalize(torch.randn_like(text), dim=-1)
    with torch.no_grad():
        shared = dec(feats, mf, text, NUM_SYNONYMS)["pred_logits"]
        expanded = dec(feats, mf, text.expand(2, -1, -1), NUM_SYNONYMS)["pred_logits"]
        mixed = dec(feats, mf, torch.stack([text, other]), NUM_SYNONYMS)["pred_logits"]
        alone = dec([f[1:] for f in feats], mf[1:], other, NUM_SYNONYMS)["pred_logits"]
    torch.testing.assert_close(expanded, shared, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mixed[0], shared[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mixed[1], alone[0], rtol=1e-12, atol=1e-12)
    assert not torch.allclose(mixed[1], shared[1])


def test_training_gradients_reach_every_parameter():
    dec = build(24).float().train()
    feats, mf, text = make_inputs(24, dtype=torch.float32)
    out = dec(feats, mf, text, NUM_SYNONYMS)
    loss = out["pred_logits"].sum() + out["pred_masks"].sum()
    loss = loss + sum(a["pred_logits"].sum() + a["pred_masks"].sum() for a in out["aux_outputs"])
    loss.backward()
    missing = [n for n, p in dec.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


def test_bad_inputs_and_config():
    dec = build()
    feats, mf, text = make_inputs(32)
    with pytest.raises(ValueError, match="3 feature levels"):
        dec(feats[:2], mf, text, NUM_SYNONYMS)
    with pytest.raises(ValueError, match="feature level 1"):
        dec([feats[0], feats[1][:, :8], feats[2]], mf, text, NUM_SYNONYMS)
    with pytest.raises(ValueError, match="divisible"):
        TransformerDecoderConfig(hidden_dim=32, nheads=5, mask_dim=32)
    with pytest.raises(ValueError, match="mask_dim"):
        TransformerDecoderConfig(mask_dim=128)

"""Benchmark: the full FC-CLIP + Mask-Adapter pipeline per image, by stage, at real ConvNeXt-L dimensions.

Random weights (no download), a 1024x768 photo-sized input (processed at 896x672, 250 queries), the ADE20K-150
vocabulary, semantic + panoptic outputs. For the CPU's own kernels and for forced AVX2 kernels (each in fresh
child processes), it prints per stage the project's seconds against its own naive reference path (backbone:
open_clip's trunk called directly; head: the official computation repeating the CLIP map per mask), the head's
achieved GEMM rate as a fraction of the measured fp32 GEMM peak, peak memory, and with ``--baseline-src`` the
whole pipeline per image against another checkout (e.g. an older commit) timed in the same run. The explicit
bf16 option is timed too, with its agreement with fp32.

    git worktree add /tmp/base <commit>             # the code to compare with (remove it afterwards)
    python benchmarks/pipeline.py --baseline-src /tmp/base/src [--isa native,avx2] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
import torch

from common import MlpFlops, gemm_peak, head_gemm_flops, isa_variants, kernels, peak_rss_bytes, run_child, segment_masks

STAGES = ("backbone", "generator", "adapter", "head")


def _use_segment_masks(model: torch.nn.Module) -> None:
    """Replace the generator's mask logits by +-8 logits of photo segments (as many as it has queries): random
    weights propose masks that each cover about 70% of the image in random speckles, a trained generator object
    masks. Its class logits and its run time are kept."""
    inner, made = model.sem_seg_head.forward, {}

    def forward(*args, **kwargs):
        out = inner(*args, **kwargs)
        shape = out["pred_masks"].shape[1:]
        if shape not in made:  # made during the warm-up image, outside the timed one
            made[shape] = torch.from_numpy(segment_masks(*shape)).to(out["pred_masks"]) * 16 - 8
        out["pred_masks"] = made[shape].unsqueeze(0).expand_as(out["pred_masks"]).contiguous()
        return out
    model.sem_seg_head.forward = forward


def _instrument(model: torch.nn.Module, seconds: dict, seen: dict, counter: MlpFlops) -> None:
    """Time the model's stages by wrapping its methods (the same names in old and new checkouts) and keep the
    inputs of the backbone and the head for the naive reference runs."""
    def wrap(owner, name, stage, keep=None):
        inner = getattr(owner, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            out = inner(*args, **kwargs)
            seconds[stage] = seconds.get(stage, 0.0) + time.perf_counter() - start
            if keep is not None:
                keep(args, out)
            return out
        setattr(owner, name, timed)

    wrap(model, "dense_features", "backbone", lambda a, o: seen.update(images=a[0]))
    wrap(model.sem_seg_head, "forward", "generator")
    wrap(model, "classify_masks", "adapter", lambda a, o: seen.update(logits=o))
    wrap(model.mask_adapter, "forward", "head", lambda a, o: seen.update(dense_proj=a[0], masks=a[1]))
    head_forward = model.mask_adapter.forward

    def counted(*args, **kwargs):  # the block-MLP FLOPs the head really runs
        counter.flops, counter.active = 0.0, True
        try:
            return head_forward(*args, **kwargs)
        finally:
            counter.active = False
    model.mask_adapter.forward = counted


def child(spec: dict) -> dict:
    """Build the model, run two images (the second is timed), then the naive references on its inputs."""
    from maskadapter.data.vocabularies import builtin_vocabulary
    from maskadapter.inference.predictor import Predictor
    from maskadapter.modeling.build import build_model

    torch.manual_seed(0)
    device = spec["device"]
    model = build_model("fcclip-large").to(device).eval()
    predictor = Predictor(model, "fcclip-large", device=device, precision=spec["precision"],
                          text_cache_dir=spec["text_cache"])
    vocab = builtin_vocabulary(spec["vocab"])
    if spec.get("masks") == "segments":
        _use_segment_masks(model)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (768, 1024, 3), dtype=np.uint8) for _ in range(2)]
    seconds, seen, counter = {}, {}, MlpFlops()
    _instrument(model, seconds, seen, counter)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    result = None
    for image in images:  # the first image warms up (text embeddings, kernel selection, allocator)
        seconds.clear()
        start = time.perf_counter()
        result = predictor.predict(image, vocab, tasks=("semantic", "panoptic"))
        sync()
        seconds["total"] = time.perf_counter() - start
    out = {"seconds": dict(seconds), "kernels": kernels(),
           "peak": torch.cuda.max_memory_allocated() if device == "cuda" else peak_rss_bytes()}
    head = model.mask_adapter
    out["head_flops"] = head_gemm_flops(seen["masks"], seen["dense_proj"], head, "fast",
                                        counter.flops if counter.available else None)
    if spec.get("save"):
        torch.save({"logits": seen["logits"].float().cpu(), "semantic": torch.as_tensor(result.semantic)},
                   spec["save"])
    if spec.get("naive"):
        trunk = model.backbone.clip_model.visual.trunk
        with torch.no_grad():
            trunk.forward_features(seen["images"])  # warm-up
            start = time.perf_counter()
            trunk.forward_features(seen["images"])
            sync()
            out["naive_backbone"] = time.perf_counter() - start
            start = time.perf_counter()
            model.mask_adapter(seen["dense_proj"], seen["masks"], path="reference")
            sync()
            out["naive_head"] = time.perf_counter() - start
        out["naive_head_flops"] = head_gemm_flops(seen["masks"], seen["dense_proj"], head, "reference")
    if spec.get("peak_gemm"):
        out["gemm"] = gemm_peak(device)
    return out


def _stage_table(isa: str, res: dict, base: dict | None) -> list[str]:
    """Rows: stage, project seconds, naive reference seconds, speed-up; then GEMM rate, memory, baseline."""
    s = res["seconds"]
    rows = [f"  {'stage':<26} {'project s':>10} {'naive s':>10} {'speed':>7}"]
    naive = {"backbone": res.get("naive_backbone"), "head": res.get("naive_head")}
    labels = {"backbone": "backbone (naive: open_clip)", "generator": "generator", "adapter": "adapter (head+pool+cls)",
              "head": "  head (naive: repeat map)"}
    for stage in STAGES:
        ref = naive.get(stage)
        cells = f"{ref:10.2f} {ref / s.get(stage, float('nan')):6.2f}x" if ref else f"{'-':>10} {'':>7}"
        rows.append(f"  {labels[stage]:<26} {s.get(stage, 0.0):10.2f} {cells}")
    other = s["total"] - sum(s.get(k, 0.0) for k in STAGES if k != "head")
    rows.append(f"  {'other (prep, text, post)':<26} {other:10.2f}")
    rows.append(f"  {'total per image':<26} {s['total']:10.2f}")
    gemm = res.get("gemm", {})
    if gemm:
        rate = res["head_flops"] / s["head"] / 1e9
        line = (f"  head GEMM rate {rate:.0f} GFLOP/s = {100 * rate / gemm['peak']:.0f}% of the measured fp32 GEMM "
                f"peak {gemm['peak']:.0f} GFLOP/s (torch.mm {gemm['mm']:.0f}"
                + (f", oneDNN {gemm['onednn']:.0f}" if "onednn" in gemm else "") + ")")
        if "naive_head" in res:
            naive_rate = res["naive_head_flops"] / res["naive_head"] / 1e9
            line += f"; naive head {100 * naive_rate / gemm['peak']:.0f}%"
        rows.append(line)
    rows.append(f"  peak memory {res['peak'] / 2**20:.0f} MiB (process high-water mark before the naive runs, "
                f"weights included)")
    if base is not None:
        b = base["seconds"]
        rows.append(f"  baseline checkout: total {b['total']:.2f} s/image (backbone {b.get('backbone', 0):.2f}, "
                    f"generator {b.get('generator', 0):.2f}, adapter {b.get('adapter', 0):.2f}), peak "
                    f"{base['peak'] / 2**20:.0f} MiB -> project is {b['total'] / s['total']:.2f}x faster per image")
    return rows


def _agreement(fp32_file: str, other_file: str) -> str:
    """bf16 vs fp32: adapter logits' largest difference relative to their range, and semantic label agreement."""
    a, b = torch.load(fp32_file, weights_only=True), torch.load(other_file, weights_only=True)
    diff = float((a["logits"] - b["logits"]).abs().max() / a["logits"].abs().max().clamp_min(1e-12))
    same = float((a["semantic"] == b["semantic"]).float().mean())
    return f"adapter logits max |diff| {100 * diff:.2f}% of max |logit|, semantic labels equal at {100 * same:.2f}% of pixels"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--vocab", default="ade20k_150", help="built-in vocabulary (default ade20k_150)")
    parser.add_argument("--isa", default="native,avx2", help="CPU kernel sets: native and/or avx2 (forced)")
    parser.add_argument("--baseline-src", help="another checkout's src/ folder, timed per image in the same run")
    parser.add_argument("--masks", choices=["generator", "segments"], default="segments",
                        help="the masks the adapter classifies: the random generator's own (speckles over ~70%% of "
                             "the image: the head skips nothing) or photo segments and near-duplicates in their "
                             "place, as a trained generator proposes (default; needs scikit-image)")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive backbone and head references")
    parser.add_argument("--no-bf16", action="store_true", help="skip the explicit bf16 option")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    here = os.path.abspath(__file__)
    print(f"device: {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads; fcclip-large "
          f"dimensions, random weights, 1024x768 input processed at 896x672, 250 queries ({args.masks} masks), "
          f"vocabulary {args.vocab}; "
          f"seconds per image (the second image of each process), fp32 unless stated")
    with tempfile.TemporaryDirectory() as tmp:
        # one text cache for every child: the text tower runs once, not once per process
        spec = {"device": args.device, "precision": "fp32", "vocab": args.vocab, "text_cache": tmp,
                "masks": args.masks}
        for isa, env in isa_variants(args.device, args.isa):
            fp32_file = os.path.join(tmp, f"{isa}-fp32.pt")
            res = run_child(here, {**spec, "naive": not args.no_naive, "peak_gemm": True, "save": fp32_file}, env)
            base = run_child(here, spec, env, args.baseline_src) if args.baseline_src else None
            print(f"\n[{isa}] {res['kernels']}")
            print("\n".join(_stage_table(isa, res, base)), flush=True)
            if not args.no_bf16 and isa == "native":
                bf16_file = os.path.join(tmp, f"{isa}-bf16.pt")
                bf = run_child(here, {**spec, "precision": "bf16", "save": bf16_file}, env)
                s = bf["seconds"]
                print(f"  bf16 option (explicit): total {s['total']:.2f} s (backbone {s.get('backbone', 0):.2f}, "
                      f"generator {s.get('generator', 0):.2f}, adapter {s.get('adapter', 0):.2f}), "
                      f"{res['seconds']['total'] / s['total']:.2f}x fp32; {_agreement(fp32_file, bf16_file)}",
                      flush=True)
    print("\nnaive: the same network run the straightforward way in the same process; baseline: --baseline-src "
          "in its own process with the same kernels")


if __name__ == "__main__":
    main()

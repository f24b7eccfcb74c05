"""Benchmark: Mask-Adapter head, naive reference (the CLIP map repeated per mask) vs fast path, ConvNeXt-L sizes.

For the CPU's own kernels and for forced AVX2 kernels (``--isa``), prints the measured fp32 GEMM peak (a large
``torch.mm`` and oneDNN's linear, in a child with the same kernels), then for N masks in {16, 100, 250} on 20x20
(640 px) and 32x32 (1024 px) CLIP grids: time per call, peak memory, speed and memory ratios against the
reference, the GEMM rate of the path's own matrix products and its fraction of the GEMM peak, and the max abs
difference from the fp32 reference (the explicit bf16 option included where the CPU has native bf16). Every
measurement runs in a fresh subprocess so its peak memory is its own.

    python benchmarks/head.py            # full table (several minutes on 2 cores per kernel set)
    python benchmarks/head.py --quick    # N=16 and N=100 on the 20x20 grid only
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time

import torch

from common import MlpFlops, gemm_peak, head_gemm_flops, isa_variants, kernels, run_child, segment_masks

CLIP_DIM, CHANNELS, K = 768, 768, 16


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(spec: dict) -> dict:
    """One measurement in this process: returns seconds per call, peak extra memory, GEMM FLOPs, output file;
    or, for ``{"peak": true}``, the measured GEMM peak and the kernel set."""
    if spec.get("peak"):
        from maskadapter.precision import cpu_gemm_backend

        backend = cpu_gemm_backend() if spec["device"] == "cpu" else "cuBLAS"
        return {"gemm": gemm_peak(spec["device"]), "kernels": kernels(), "backend": backend}
    from maskadapter import MaskAdapterHead

    torch.manual_seed(0)
    device = torch.device(spec["device"])
    head = MaskAdapterHead(CLIP_DIM, CHANNELS).to(device).eval()
    with torch.no_grad():
        for p in head.parameters():  # layer scales of 1e-6 would make the blocks near-identities
            if p.dim() == 1:
                p.normal_(0, 0.2)
    g, n = spec["grid"], spec["n"]
    dense = torch.randn(1, CLIP_DIM, g, g, device=device)
    if spec["masks"] == "segments":
        masks = torch.from_numpy(segment_masks(n, 8 * g, 8 * g)).unsqueeze(0).to(device)
    else:  # every mask pixel random: every mask reaches every pixel, so nothing is skipped
        masks = torch.rand(1, n, 4 * g, 4 * g, device=device) > 0.5
    counter = MlpFlops()
    dtype = torch.bfloat16 if spec["precision"] == "bf16" else None

    def call():
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = head(dense, masks, path=spec["path"])
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out

    if device.type == "cuda":
        call()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_bytes()
    times = []
    start = time.perf_counter()
    counter.active = True
    out = call()  # the first call also gives the peak (nothing was allocated before it)
    counter.active = False
    times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    for _ in range(spec["reps"] - 1):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    torch.save(out.float().cpu(), spec["out"])
    return {"seconds": min(times), "peak": max(peak, 0), "flops": head_gemm_flops(
        masks, dense, head, spec["path"], counter.flops if spec["path"] == "fast" else None)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N=16 and N=100 on the 20x20 grid only")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", choices=["auto", "yes", "no"], default="auto",
                        help="also time the explicit bf16 option (auto: where the hardware reports native bf16)")
    parser.add_argument("--isa", default="native,avx2", help="CPU kernel sets: native and/or avx2 (forced)")
    parser.add_argument("--masks", default="noise,segments",
                        help="mask sets: noise (each pixel random: every mask reaches every pixel, nothing is "
                             "skipped) and/or segments (segments of a photo and near-duplicates, as a trained "
                             "generator proposes; needs scikit-image)")
    parser.add_argument("--repeat", type=int, default=1, help="interleaved repetitions of each row (best kept)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    from maskadapter.precision import has_native_bf16, resolve_precision

    native = has_native_bf16(args.device)
    print(f"device: {args.device}   torch {torch.__version__}, {torch.get_num_threads()} threads; precision 'auto' "
          f"resolves to {str(resolve_precision('auto', args.device)).replace('torch.', '')}")
    sizes = [(20, 16), (20, 100)] if args.quick else [(g, n) for g in (20, 32) for n in (16, 100, 250)]
    mask_sets = [m.strip() for m in args.masks.split(",") if m.strip()]
    if not mask_sets or any(m not in ("noise", "segments") for m in mask_sets):
        parser.error(f"--masks takes noise and/or segments, got {args.masks!r}")
    cases = [(kind, g, n) for kind in mask_sets for g, n in sizes]
    header = (f"{'masks':>8} {'grid':>5} {'N':>4} {'path':>9} {'prec':>4} {'s/call':>8} {'peak MiB':>9} {'speed':>6} "
              f"{'mem':>6} {'GFLOP/s':>8} {'%peak':>6} {'max|diff|':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for isa, env in isa_variants(args.device, args.isa):
            info = run_child(__file__, {"peak": True, "device": args.device}, env)
            gemm = info["gemm"]
            print(f"\n[{isa}] {info['kernels']}; fp32 GEMM library of the fast path: {info['backend']}")
            print(f"measured fp32 GEMM peak (3072^3 product): {gemm['peak']:.0f} GFLOP/s (torch.mm "
                  f"{gemm['mm']:.0f}" + (f", oneDNN {gemm['onednn']:.0f}" if "onednn" in gemm else "") + ")")
            with_bf16 = isa == "native" and (args.bf16 == "yes" or (args.bf16 == "auto" and native))
            variants = [("reference", "fp32"), ("fast", "fp32")] + ([("fast", "bf16")] if with_bf16 else [])
            print("speed and mem: ratios against the fp32 reference of the row group; GFLOP/s: the matrix-product "
                  "FLOPs the path really runs (the fast path skips pixels far from mask edges) per second; %peak: "
                  "of the fp32 GEMM peak above")
            print(header)
            print("-" * len(header))
            for kind, grid, n in cases:
                base, found = None, {}
                for _ in range(args.repeat):  # interleaved, best of each: a burst of other load hits all alike
                    for path, prec in variants:
                        out = os.path.join(tmp, f"{isa}_{kind}_{grid}_{n}_{path}_{prec}.pt")
                        big = n * grid * grid > 100 * 400
                        res = run_child(__file__, {"grid": grid, "n": n, "path": path, "precision": prec, "out": out,
                                                   "masks": kind, "device": args.device, "reps": 1 if big else 3}, env)
                        old = found.get((path, prec))
                        found[(path, prec)] = res if old is None or res["seconds"] < old["seconds"] else old
                for path, prec in variants:
                    res = found[(path, prec)]
                    result = torch.load(os.path.join(tmp, f"{isa}_{kind}_{grid}_{n}_{path}_{prec}.pt"),
                                        weights_only=True)
                    if base is None:
                        base, base_out = res, result
                    rate = res["flops"] / res["seconds"] / 1e9
                    diff = float((result - base_out).abs().max())
                    print(f"{kind:>8} {grid}x{grid:<2} {n:>4} {path:>9} {prec:>4} {res['seconds']:8.3f} "
                          f"{res['peak'] / 2**20:9.0f} {base['seconds'] / res['seconds']:5.2f}x "
                          f"{res['peak'] / max(base['peak'], 1):5.2f}x {rate:8.0f} {100 * rate / gemm['peak']:5.0f}% "
                          f"{diff:10.2e}", flush=True)
    print(f"(outputs have max |value| about {float(base_out.abs().max()):.1f})")


if __name__ == "__main__":
    main()

"""Benchmark: Mask-Adapter head, reference vs fast path, at ConvNeXt-L dimensions.

Prints the CPU's vector ISA, the machine's measured GEMM rate, then for N masks in {16, 100, 250} on
20x20 (640 px) and 32x32 (1024 px) CLIP grids: time per call, peak memory, speed and memory ratios,
effective GFLOP/s (the reference computation's FLOPs divided by the time) and the max abs difference
between paths. Every measurement runs in a fresh subprocess so its peak memory is its own.

    python benchmarks/head.py            # full table (several minutes on 2 cores)
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

from common import run_child  # benchmarks/common.py (scripts run from their folder)

CLIP_DIM, CHANNELS, K = 768, 768, 16


def reference_flops(n: int, h: int, w: int) -> float:
    """Multiply-adds x2 of the official head for n masks on an h x w grid (mask stem, fuse, 3 blocks, final)."""
    rows = n * h * w
    stem = n * (2 * h * 2 * w) * 4 * 9 * 2 + rows * 16 * 4 * 9 * 2 + rows * 16 * CLIP_DIM * 2
    block = rows * (CHANNELS * 49 * 2 + 2 * CHANNELS * 4 * CHANNELS * 2)
    return stem + rows * CLIP_DIM * CHANNELS * 2 + 3 * block + rows * CHANNELS * K * 2


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(spec: dict) -> dict:
    """One measurement in this process: returns seconds per call, peak extra memory, output file."""
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
    masks = torch.rand(1, n, 4 * g, 4 * g, device=device) > 0.5
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
    out = call()  # the first call also gives the peak (nothing was allocated before it)
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
    return {"seconds": min(times), "peak": max(peak, 0)}


def gemm_gflops(dtype: torch.dtype, device: str) -> float:
    """Measured GFLOP/s of a head-shaped GEMM ([8192, 768] x [768, 3072]), best of 5."""
    a = torch.randn(8192, 768, device=device, dtype=dtype)
    b = torch.randn(768, 3072, device=device, dtype=dtype)
    best = float("inf")
    for i in range(7):
        start = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            best = min(best, time.perf_counter() - start)
    return 2 * 8192 * 768 * 3072 / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N=16 and N=100 on the 20x20 grid only")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", choices=["auto", "yes", "no"], default="auto",
                        help="also time bf16 autocast (auto: where the hardware reports native bf16)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    from maskadapter.precision import describe_isa, has_native_bf16, resolve_precision

    native = has_native_bf16(args.device)
    with_bf16 = args.bf16 == "yes" or (args.bf16 == "auto" and native)
    print(f"device: {args.device}   CPU ISA: {describe_isa()}   torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    fp32_rate = gemm_gflops(torch.float32, args.device)
    bf16_rate = gemm_gflops(torch.bfloat16, args.device)
    print(f"measured GEMM [8192x768]x[768x3072]: fp32 {fp32_rate:.0f} GFLOP/s, bf16 {bf16_rate:.0f} GFLOP/s "
          f"(bf16/fp32 {bf16_rate / fp32_rate:.2f}x); precision 'auto' resolves to "
          f"{str(resolve_precision('auto', args.device)).replace('torch.', '')}")
    cases = [(20, 16), (20, 100)] if args.quick else [(g, n) for g in (20, 32) for n in (16, 100, 250)]
    variants = [("reference", "fp32"), ("fast", "fp32")] + ([("reference", "bf16"), ("fast", "bf16")]
                                                            if with_bf16 else [])
    header = (f"{'grid':>5} {'N':>4} {'path':>9} {'prec':>4} {'s/call':>8} {'peak MiB':>9} {'speed':>6} "
              f"{'mem':>6} {'GFLOP/s':>8} {'%GEMM':>6} {'max|diff|':>10}")
    print("speed and mem are ratios against the fp32 reference in the same row group; GFLOP/s counts the "
          "reference computation's FLOPs; %GEMM compares with the fp32 GEMM rate above")
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        for grid, n in cases:
            base = None
            for path, prec in variants:
                out = os.path.join(tmp, f"{grid}_{n}_{path}_{prec}.pt")
                big = n * grid * grid > 100 * 400
                res = run_child(__file__, {"grid": grid, "n": n, "path": path, "precision": prec, "out": out,
                                 "device": args.device, "reps": 1 if big else 3})
                result = torch.load(out, weights_only=True)
                if base is None:
                    base, base_out = res, result
                rate = reference_flops(n, grid, grid) / res["seconds"] / 1e9
                diff = float((result - base_out).abs().max())
                print(f"{grid}x{grid:<2} {n:>4} {path:>9} {prec:>4} {res['seconds']:8.3f} "
                      f"{res['peak'] / 2**20:9.0f} {base['seconds'] / res['seconds']:5.2f}x "
                      f"{res['peak'] / max(base['peak'], 1):5.2f}x {rate:8.0f} {100 * rate / fp32_rate:5.0f}% "
                      f"{diff:10.2e}", flush=True)
    print(f"(outputs have max |value| about {float(base_out.abs().max()):.1f})")


if __name__ == "__main__":
    main()

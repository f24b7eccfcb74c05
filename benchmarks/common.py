"""What the benchmark scripts share: each configuration runs in a fresh child process (so its peak memory is its
own) that prints one JSON line; CPU kernels can be forced to AVX2 in a child; the machine's fp32 GEMM peak."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Optional

#: Environment that makes PyTorch, MKL and oneDNN use their AVX2 kernels on an AVX-512 CPU.
AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def isa_variants(device: str, which: str = "native,avx2") -> list[tuple[str, dict]]:
    """(name, environment) of the CPU kernel sets to run: ``native`` and ``avx2`` (forced); CUDA runs native only."""
    names = [n.strip() for n in which.split(",") if n.strip()]
    unknown = [n for n in names if n not in ("native", "avx2")]
    if unknown or not names:
        raise ValueError(f"--isa takes native and/or avx2, got {which!r}")
    if device != "cpu":
        return [("native", {})]
    return [(n, AVX2_ENV if n == "avx2" else {}) for n in names]


def run_child(script: str, spec: dict, env: Optional[dict] = None, pythonpath: Optional[str] = None) -> dict:
    """Run ``script --child SPEC`` in a fresh interpreter (with ``env`` added, and ``pythonpath`` first on the
    import path, e.g. another checkout's ``src``); its last stdout line, parsed as JSON."""
    child_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    if pythonpath:
        child_env["PYTHONPATH"] = os.pathsep.join(p for p in (pythonpath, os.environ.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, script, "--child", json.dumps(spec)], capture_output=True, text=True,
                          check=False, env=child_env)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child failed for {spec}:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def kernels() -> str:
    """The kernel set this process runs: PyTorch's CPU capability (AVX2 when forced) and the CPU's flags."""
    import torch

    from maskadapter.precision import describe_isa

    return f"ATen kernels {torch.backends.cpu.get_cpu_capability()}, CPU flags {describe_isa()}"


def gemm_peak(device: str = "cpu", size: int = 3072) -> dict:
    """Measured fp32 GEMM rate (GFLOP/s) of a large square product: ``torch.mm`` (MKL / cuBLAS) and, on a CPU
    with it, oneDNN's linear; ``peak`` is the faster. Best of 4 after a warm-up."""
    import torch

    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    calls = {"mm": lambda: torch.mm(a, b)}
    if device == "cpu":
        from maskadapter.precision import onednn_linear_available

        if onednn_linear_available():
            calls["onednn"] = lambda: torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")
    rates = {}
    for name, call in calls.items():
        call()
        best = float("inf")
        for _ in range(4):
            start = time.perf_counter()
            call()
            if device == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        rates[name] = 2 * size ** 3 / best / 1e9
    rates["peak"] = max(rates.values())
    return rates


def head_gemm_flops(masks, dense_proj, head, path: str) -> float:
    """FLOPs of the head's matrix products (1x1 convs / linears; the depthwise convs are not GEMMs) for
    ``masks`` [B, N, H, W]: the fast path computes distinct masks once and fuses the CLIP map once."""
    import torch

    cfg = head.config
    B, N = masks.shape[:2]
    h, w = dense_proj.shape[-2:]
    D, C, K, m = cfg.clip_dim, cfg.num_channels, cfg.num_output_maps, cfg.mask_in_chans
    if path == "fast":
        n = sum(int(torch.unique(masks[b].reshape(N, -1), dim=0).shape[0]) for b in range(B))
        per_row = m * C + cfg.num_blocks * 8 * C * C + C * K
        return 2.0 * (n * h * w * per_row + B * h * w * D * C)
    per_row = m * D + D * C + cfg.num_blocks * 8 * C * C + C * K
    return 2.0 * B * N * h * w * per_row


def peak_rss_bytes() -> int:
    """This process's resident-memory high-water mark."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

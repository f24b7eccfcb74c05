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


def head_gemm_flops(masks, dense_proj, head, path: str, mlp_flops: Optional[float] = None) -> float:
    """FLOPs of the head's matrix products (1x1 convs / linears; the depthwise convs are not GEMMs) for
    ``masks`` [B, N, H, W]: the fast path computes distinct masks once and fuses the CLIP map once; its block
    MLPs skip the pixels far from mask edges, so pass the ``mlp_flops`` it counted (see :class:`MlpFlops`)."""
    import torch

    cfg = head.config
    B, N = masks.shape[:2]
    h, w = dense_proj.shape[-2:]
    D, C, K, m = cfg.clip_dim, cfg.num_channels, cfg.num_output_maps, cfg.mask_in_chans
    if path == "fast":
        n = sum(int(torch.unique(masks[b].reshape(N, -1), dim=0).shape[0]) for b in range(B))
        blocks = 2.0 * n * h * w * cfg.num_blocks * 8 * C * C if mlp_flops is None else mlp_flops
        return 2.0 * (n * h * w * (m * C + C * K) + B * h * w * D * C) + blocks
    per_row = m * D + D * C + cfg.num_blocks * 8 * C * C + C * K
    return 2.0 * B * N * h * w * per_row


class MlpFlops:
    """Counts the FLOPs of the ConvNeXt block MLPs (the rows each really runs) while ``active`` is true."""

    def __init__(self) -> None:
        from maskadapter.modeling import layers

        self.flops, self.active = 0.0, False
        inner = getattr(layers, "_mlp_rows_into", None)
        self.available = inner is not None  # an older checkout (--baseline-src) may not have it
        if inner is None:
            return

        def counted(flat, out_flat, norm, fc1, fc2, *rest):
            if self.active:
                self.flops += 2.0 * flat.shape[0] * (fc1[0].numel() + fc2[0].numel())
            return inner(flat, out_flat, norm, fc1, fc2, *rest)
        layers._mlp_rows_into = counted


def segment_masks(count: int, height: int, width: int, photo: str = "coffee", seed: int = 0):
    """``count`` object-like masks [count, height, width] (bool numpy): segments of a real photo at four
    Felzenszwalb scales (each >= 0.5% of the image), filled up with near-duplicates (dilated or eroded by
    1-2 px) as a trained mask generator proposes them. Needs scikit-image (its sample photos)."""
    import numpy as np
    try:
        from skimage import data, morphology, segmentation, transform
    except ImportError as exc:
        raise SystemExit("--masks segments needs scikit-image: pip install -e '.[bench]'") from exc

    img = transform.resize(getattr(data, photo)(), (height, width), anti_aliasing=True)
    found, seen = [], set()
    for scale in (100, 300, 1000, 3000):
        labels = segmentation.felzenszwalb(img, scale=scale, sigma=0.8, min_size=max(4, height * width // 2000))
        for label in range(labels.max() + 1):
            mask = labels == label
            if mask.sum() >= 0.005 * height * width and mask.tobytes() not in seen:
                seen.add(mask.tobytes())
                found.append(mask)
    rng = np.random.default_rng(seed)
    while len(found) < count:
        mask, radius = found[rng.integers(len(found))], morphology.disk(int(rng.integers(1, 3)))
        mask = morphology.dilation(mask, radius) if rng.random() < 0.5 else morphology.erosion(mask, radius)
        if mask.any() and mask.tobytes() not in seen:
            seen.add(mask.tobytes())
            found.append(mask)
    return np.stack([found[i] for i in rng.choice(len(found), count, replace=False)])


def peak_rss_bytes() -> int:
    """This process's resident-memory high-water mark."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

"""Numeric precision: one vocabulary (``auto``, ``fp32``, ``bf16``, ``fp16``) for inference and training.

``auto`` is bf16 where the hardware computes it natively and, on a CPU, measurably faster than fp32;
fp32 elsewhere. ``fp16`` (CUDA only) is the official training AMP.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from typing import Iterator, Literal, Union

import torch

__all__ = ["Precision", "cpu_isa", "describe_isa", "has_native_bf16", "cpu_bf16_speedup", "resolve_precision",
           "autocast"]

logger = logging.getLogger(__name__)
Precision = Literal["auto", "fp32", "bf16", "fp16"]


@functools.lru_cache(maxsize=1)
def cpu_isa() -> dict[str, bool]:
    """The CPU's vector features that matter for GEMM speed: avx2, avx512, avx512_bf16, amx."""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags.update(line.split(":", 1)[1].split())
                    break
    except OSError:  # not Linux: fall back to what PyTorch detected
        pass
    capability = str(torch.backends.cpu.get_cpu_capability()).upper()
    return {
        "avx2": "avx2" in flags or capability.startswith(("AVX2", "AVX512")),
        "avx512": "avx512f" in flags or capability.startswith("AVX512"),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx": "amx_bf16" in flags or "amx_tile" in flags,
    }


def describe_isa() -> str:
    """A one-line description of the CPU's vector ISA, e.g. ``AVX2 AVX512 AVX512-BF16``."""
    isa = cpu_isa()
    names = [n for n, k in (("AVX2", "avx2"), ("AVX512", "avx512"), ("AVX512-BF16", "avx512_bf16"),
                            ("AMX", "amx")) if isa[k]]
    return " ".join(names) or "no AVX2"


def has_native_bf16(device: Union[str, torch.device]) -> bool:
    """True where bf16 matrix products run natively: CUDA with bf16 support, or a CPU with AVX512-BF16/AMX."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        isa = cpu_isa()
        return isa["avx512_bf16"] or isa["amx"]
    return False


@functools.lru_cache(maxsize=1)
def cpu_bf16_speedup() -> float:
    """Measured speed of a bf16 over an fp32 CPU matrix product of head-like shape (about 0.1 s, once).

    ISA flags are not enough: on some virtual machines with AVX512-BF16 the bf16 GEMM runs at half the
    fp32 speed, so ``auto`` trusts this measurement rather than the flags alone.
    """
    a = torch.randn(1024, 768)
    b = torch.randn(768, 1536)
    pairs = [(a.to(dtype), b.to(dtype)) for dtype in (torch.float32, torch.bfloat16)]
    for x, y in pairs * 2:  # warm-up: thread pool start, page faults, kernel selection
        x @ y
    timings = [float("inf"), float("inf")]
    for _ in range(4):  # interleaved, best of 4, so a burst of other load hits both alike
        for i, (x, y) in enumerate(pairs):
            start = time.perf_counter()
            x @ y
            timings[i] = min(timings[i], time.perf_counter() - start)
    return timings[0] / max(timings[1], 1e-9)


def resolve_precision(precision: str, device: Union[str, torch.device]) -> torch.dtype:
    """Map ``auto`` / ``fp32`` / ``bf16`` / ``fp16`` to a dtype; ``auto`` is bf16 only where it is native (and,
    on a CPU, measurably faster than fp32). ``fp16`` needs a CUDA device (ValueError elsewhere)."""
    if precision == "fp32":
        return torch.float32
    if precision == "fp16":
        if torch.device(device).type != "cuda":
            raise ValueError(f"precision fp16 needs a CUDA device, got {device}; use bf16 or fp32")
        return torch.float16
    if precision == "bf16":
        if not has_native_bf16(device):
            logger.warning("bf16 requested on %s without native bf16 support: expect it to be slower than fp32",
                           device)
        return torch.bfloat16
    if precision == "auto":
        if not has_native_bf16(device):
            return torch.float32
        if torch.device(device).type == "cpu" and cpu_bf16_speedup() < 1.2:
            logger.info("auto precision: this CPU reports native bf16 but its bf16 GEMM is not faster "
                        "(%.2fx fp32); using fp32", cpu_bf16_speedup())
            return torch.float32
        return torch.bfloat16
    raise ValueError(f"precision must be 'auto', 'fp32', 'bf16' or 'fp16', got {precision!r}")


@contextlib.contextmanager
def autocast(precision: str, device: Union[str, torch.device]) -> Iterator[torch.dtype]:
    """Context that runs the enclosed ops in the resolved precision (autocast for bf16, nothing for fp32)."""
    dtype = resolve_precision(precision, device)
    device_type = torch.device(device).type
    if dtype == torch.float32:
        yield dtype
        return
    with torch.autocast(device_type=device_type, dtype=dtype):
        yield dtype

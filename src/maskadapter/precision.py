"""Numeric precision: one vocabulary (``auto``, ``fp32``, ``bf16``, ``fp16``) for inference and training.

``auto`` is bf16 where the hardware computes it natively and, on a CPU, measurably faster than fp32;
fp32 elsewhere. ``fp16`` (CUDA only) is the official training AMP.

The fp32 CPU matrix products of the ConvNeXt MLPs (backbone and head) run on MKL (``torch.addmm``) or on
oneDNN, whichever this CPU runs faster (:func:`cpu_gemm_backend`, measured once like ``auto`` precision).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import statistics
import time
from typing import Callable, Iterator, Literal, Union

import torch

__all__ = ["Precision", "CpuGemm", "cpu_isa", "describe_isa", "has_native_bf16", "cpu_bf16_speedup",
           "resolve_precision", "autocast", "onednn_linear_available", "cpu_onednn_speedup", "cpu_gemm_backend"]

logger = logging.getLogger(__name__)
Precision = Literal["auto", "fp32", "bf16", "fp16"]
CpuGemm = Literal["mkl", "onednn"]
#: Environment variable that fixes the fp32 CPU GEMM (``mkl`` or ``onednn``) instead of measuring it.
GEMM_ENV = "MASKADAPTER_CPU_GEMM"


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
    (a32, b32), (a16, b16) = [(a.to(dtype), b.to(dtype)) for dtype in (torch.float32, torch.bfloat16)]
    return _speedup(lambda: a32 @ b32, lambda: a16 @ b16, 5)


def _speedup(baseline: Callable[[], object], candidate: Callable[[], object], rounds: int) -> float:
    """Median over ``rounds`` of the wall-time ratio baseline / candidate, each round timing both back to back
    (in alternating order): a burst of other load on a shared machine hits both sides of a round alike, and the
    median ignores the rounds it splits (best-of times picked the slower library in 1 of 10 probes)."""
    for call in (baseline, candidate):  # warm-up: thread pool start, page faults, kernel selection
        call()
    ratios = []
    for i in range(rounds):
        seconds = {}
        for name, call in ((("b", baseline), ("c", candidate)) if i % 2 == 0 else (("c", candidate), ("b", baseline))):
            start = time.perf_counter()
            call()
            seconds[name] = time.perf_counter() - start
        ratios.append(seconds["b"] / max(seconds["c"], 1e-9))
        if len(ratios) == 2 and (max(ratios) < 0.5 or min(ratios) > 2.0):
            break  # a clear answer twice: no need to spend more (an emulated bf16 GEMM is slow)
    return statistics.median(ratios)


def onednn_linear_available() -> bool:
    """True where PyTorch exposes oneDNN's fused linear (``torch.ops.mkldnn._linear_pointwise``) for CPU tensors."""
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except (AttributeError, RuntimeError):
        return False


@functools.lru_cache(maxsize=1)
def cpu_onednn_speedup() -> float:
    """Measured speed of oneDNN's over MKL's fp32 linear of a head-sized row tile (about 0.5 s, once); 0 where
    oneDNN's linear is missing or fails.

    Which library is faster depends on the CPU: on some AMD CPUs MKL takes a generic code path and oneDNN's
    kernels run about 10% faster; on others MKL wins.
    """
    if not onednn_linear_available():
        return 0.0
    x, w, b = torch.randn(1024, 768), torch.randn(3072, 768), torch.randn(3072)
    try:
        torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")
    except RuntimeError as exc:  # a build whose oneDNN lacks this primitive
        logger.info("oneDNN linear unavailable (%s); using MKL", exc)
        return 0.0
    with torch.no_grad():
        return _speedup(lambda: torch.addmm(b, x, w.t()),
                        lambda: torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], ""), 7)


def cpu_gemm_backend() -> CpuGemm:
    """The library of the fp32 CPU GEMMs in the ConvNeXt MLPs: ``$MASKADAPTER_CPU_GEMM`` (``mkl`` / ``onednn``)
    where set, else oneDNN where it measured at least 3% faster than MKL on this CPU (:func:`cpu_onednn_speedup`)."""
    forced = os.environ.get(GEMM_ENV, "").strip().lower()
    if forced in ("mkl", "onednn"):
        return "onednn" if forced == "onednn" and onednn_linear_available() else "mkl"
    if forced not in ("", "auto"):
        raise ValueError(f"${GEMM_ENV} must be 'mkl', 'onednn' or 'auto', got {forced!r}")
    return "onednn" if cpu_onednn_speedup() >= 1.03 else "mkl"


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

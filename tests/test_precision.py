"""Precision choice: `auto` is bf16 only where bf16 is native and measurably faster."""

from __future__ import annotations

import pytest
import torch

import maskadapter.precision as precision


@pytest.fixture
def fake_cpu(monkeypatch):
    def configure(bf16_flag: bool, speedup: float):
        flags = {"avx2": True, "avx512": bf16_flag, "avx512_bf16": bf16_flag, "amx": False}
        monkeypatch.setattr(precision, "cpu_isa", lambda: flags)
        monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda: speedup)
    return configure


def test_explicit_choices():
    assert precision.resolve_precision("fp32", "cpu") == torch.float32
    assert precision.resolve_precision("bf16", "cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="precision must be"):
        precision.resolve_precision("fp64", "cpu")
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        precision.resolve_precision("fp16", "cpu")


@pytest.mark.parametrize("flag, speedup, expected", [
    (False, 3.0, torch.float32),   # AVX2 only: never bf16
    (True, 0.55, torch.float32),   # AVX512-BF16 flag but slow bf16 GEMM (seen on a VM here)
    (True, 2.1, torch.bfloat16),   # native and faster
])
def test_auto_on_cpu(fake_cpu, flag, speedup, expected):
    fake_cpu(flag, speedup)
    assert precision.resolve_precision("auto", "cpu") == expected
    assert precision.has_native_bf16("cpu") == flag


def test_autocast_context(fake_cpu):
    fake_cpu(True, 2.0)
    a = torch.randn(4, 4)
    with precision.autocast("auto", "cpu") as dtype:
        assert dtype == torch.bfloat16 and (a @ a).dtype == torch.bfloat16
    with precision.autocast("fp32", "cpu") as dtype:
        assert dtype == torch.float32 and (a @ a).dtype == torch.float32


def test_describe_isa_and_real_probe():
    assert isinstance(precision.describe_isa(), str)
    assert precision.cpu_bf16_speedup() > 0


@pytest.mark.parametrize("env, speedup, expected", [
    ("", 1.12, "onednn"), ("", 1.01, "mkl"), ("auto", 1.5, "onednn"), ("mkl", 2.0, "mkl"), ("onednn", 0.5, "onednn"),
])
def test_cpu_gemm_backend_is_measured_unless_fixed(monkeypatch, env, speedup, expected):
    monkeypatch.setenv("MASKADAPTER_CPU_GEMM", env)
    monkeypatch.setattr(precision, "cpu_onednn_speedup", lambda: speedup)
    assert precision.cpu_gemm_backend() == expected


def test_cpu_gemm_backend_errors_and_fallback(monkeypatch):
    monkeypatch.setenv("MASKADAPTER_CPU_GEMM", "blas")
    with pytest.raises(ValueError, match="MASKADAPTER_CPU_GEMM"):
        precision.cpu_gemm_backend()
    monkeypatch.setenv("MASKADAPTER_CPU_GEMM", "onednn")
    monkeypatch.setattr(precision, "onednn_linear_available", lambda: False)
    assert precision.cpu_gemm_backend() == "mkl"  # asked for, but this build has no oneDNN linear


def test_speed_probe_takes_the_median_of_paired_rounds(monkeypatch):
    """One burst of load that slows a single call must not flip the answer (best-of timings could), and a clear
    answer stops the probe early."""
    clock = {"t": 0.0}
    monkeypatch.setattr(precision.time, "perf_counter", lambda: clock["t"])

    def timed(seconds):
        def call():
            clock["t"] += seconds.pop(0) if isinstance(seconds, list) else seconds
        return call
    # candidate 10% faster, but its first round hit a burst (5x) and the baseline's last one was lucky (0.5x)
    baseline = timed([1.0, 1.1, 1.1, 1.1, 1.1, 0.5])
    candidate = timed([1.0, 5.0, 1.0, 1.0, 1.0, 1.0])
    assert precision._speedup(baseline, candidate, 5) == pytest.approx(1.1)
    calls = []
    slow = timed(10.0)
    assert precision._speedup(lambda: calls.append(1), lambda: (calls.append(1), slow()), 5) < 0.5
    assert len(calls) == 2 + 4  # the warm-up pair, then two rounds


def test_onednn_speed_probe_is_real():
    assert precision.cpu_onednn_speedup() >= 0.0
    assert precision.cpu_gemm_backend() in ("mkl", "onednn")


@pytest.mark.parametrize("gemm", ["mkl", "onednn"])
def test_linear_dispatch_keeps_autograd_autocast_and_values(monkeypatch, gemm):
    from maskadapter.modeling.layers import linear

    monkeypatch.setenv("MASKADAPTER_CPU_GEMM", gemm)
    torch.manual_seed(0)
    x, w, b = torch.randn(33, 24), torch.randn(40, 24), torch.randn(40)
    expected = torch.nn.functional.linear(x.double(), w.double(), b.double())
    with torch.no_grad():
        out = linear(x, w, b)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert linear(x, w, b).dtype == torch.bfloat16  # autocast still applies
    w.requires_grad_(True)
    assert linear(x, w, b).grad_fn is not None  # training runs on the autograd path

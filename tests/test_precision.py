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

"""Helpers of the CUDA tier (``tests/test_cuda.py``): the device under test, fp16 on the CPU stand-in, a spy on the
post-processing inputs (the values that decide every label), and the figures printed at the end of the run.

The tier runs on CUDA when a GPU is present. ``MASKADAPTER_TEST_DEVICE=cpu`` makes the CPU stand in for the GPU
(CPU against CPU), so the tier's own code runs - and is kept working - on machines without one.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

DEVICE_ENV = "MASKADAPTER_TEST_DEVICE"
#: where the figures also go (one line each) when set; benchmarks/run_gpu_checks.sh sets it under $OUT
FIGURES_ENV = "MASKADAPTER_FIGURES_FILE"


def device_under_test() -> tuple[Optional[torch.device], str]:
    """(the device the tier runs on, or None and the reason it is skipped)."""
    requested = os.environ.get(DEVICE_ENV, "").strip().lower()
    if requested == "cpu":
        return torch.device("cpu"), ""
    if requested not in ("", "cuda"):
        return None, f"{DEVICE_ENV}={requested!r} is neither 'cpu' nor 'cuda'"
    if torch.cuda.is_available():
        return torch.device("cuda"), ""
    return None, f"needs CUDA (no GPU here); {DEVICE_ENV}=cpu runs this tier with the CPU standing in for the GPU"


def is_stand_in(device: torch.device) -> bool:
    """True when the CPU stands in for the GPU (branches that exist only on CUDA do not run)."""
    return device.type == "cpu"


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (timings, memory peaks); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _loaded_modules_holding(obj: Any) -> list[tuple[Any, str]]:
    """(module, attribute) of every loaded ``maskadapter`` module that holds ``obj`` under some name."""
    found = []
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "maskadapter" or name.startswith("maskadapter.")):
            continue
        for attr, value in list(vars(module).items()):
            if value is obj:
                found.append((module, attr))
    return found


def patch_everywhere(monkeypatch, original: Callable, replacement: Callable) -> int:
    """Replace ``original`` in every loaded maskadapter module that imported it (``from x import f`` binds the
    function in each importer); returns how many places were patched."""
    places = _loaded_modules_holding(original)
    for module, attr in places:
        monkeypatch.setattr(module, attr, replacement)
    return len(places)


def allow_fp16_on_cpu(monkeypatch, device: torch.device) -> None:
    """On the CPU stand-in, let precision ``fp16`` resolve to float16 (CPU autocast and ``GradScaler("cpu")``
    support it), so the fp16 code paths run here too; on CUDA nothing changes."""
    if not is_stand_in(device):
        return
    import maskadapter.evaluation.runner  # noqa: F401 (load every importer before patching)
    import maskadapter.inference.predictor  # noqa: F401
    import maskadapter.precision as precision
    import maskadapter.training.trainer  # noqa: F401

    original = precision.resolve_precision

    def resolve(value: str, where: Any) -> torch.dtype:
        return torch.float16 if value == "fp16" else original(value, where)

    assert patch_everywhere(monkeypatch, original, resolve) >= 1


@dataclass
class PostprocessCall:
    """The inputs of one post-processing call (one image): log-probs [Q, C+1] and padded mask logits
    [Q, Hp, Wp] copied to the CPU as float32, the device they were on, and the call's other arguments."""

    mask_cls: torch.Tensor
    mask_pred: torch.Tensor
    device: torch.device  #: where the post-processing ran
    size: tuple[int, int]  #: (h, w) of the image inside the padding
    is_thing: Any
    options: dict  #: before, object_mask_threshold, overlap_threshold, top_k, ...
    output: Any = None  #: what the call returned (``BandedOutput``: semantic, panoptic, segments, instances, bands)

    def assert_contract(self, result: Any, other: Any, atol: float, rtol: float, score_rtol: float
                        ) -> dict[str, int]:
        """``other`` meets the numeric contract against ``result`` (this call's output), measured from this
        call's deciding values (``tests/contract.py``); the differing pixels per output."""
        from contract import assert_outputs_contract

        keys = ("before", "object_mask_threshold", "overlap_threshold", "top_k")
        return assert_outputs_contract(result, other, self.mask_cls, self.mask_pred, self.size, self.is_thing,
                                       **{k: self.options[k] for k in keys if k in self.options},
                                       atol=atol, rtol=rtol, score_rtol=score_rtol)


def spy_postprocess(monkeypatch) -> list[PostprocessCall]:
    """Record the inputs of every banded post-processing call the predictor makes (one per image)."""
    from maskadapter.inference import banded

    calls: list[PostprocessCall] = []
    original = banded.postprocess_banded

    def spy(mask_cls, mask_pred, size, out_size, tasks, is_thing, **kwargs):
        call = PostprocessCall(mask_cls.detach().float().cpu(), mask_pred.detach().float().cpu(), mask_pred.device,
                               tuple(int(s) for s in size), is_thing, dict(kwargs))
        call.output = original(mask_cls, mask_pred, size, out_size, tasks, is_thing, **kwargs)
        calls.append(call)
        return call.output

    assert patch_everywhere(monkeypatch, original, spy) >= 2, "the predictor no longer calls postprocess_banded"
    return calls


def lower_gpu_full_bytes(monkeypatch, value: int) -> None:
    """Lower the size above which the predictor moves GPU post-processing to CPU bands (4 GiB) to ``value``."""
    places = [(module, name) for module_name, module in list(sys.modules.items())
              if module is not None and module_name.startswith("maskadapter.")
              for name in list(vars(module)) if name.lstrip("_").upper() == "GPU_FULL_BYTES"]
    assert places, "no GPU_FULL_BYTES constant found in maskadapter (was the 4 GiB threshold renamed?)"
    for module, name in places:
        monkeypatch.setattr(module, name, value)


class Figures:
    """Lines of measured figures, shown in pytest's terminal summary (visible without ``-s``; register the object
    as a plugin) and appended to ``$MASKADAPTER_FIGURES_FILE`` when it is set."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        """pytest hook: write the collected lines at the end of the run (and to the figures file)."""
        if not self.lines:
            return
        title = f"CUDA tier figures on {describe_device(self.device)}"
        terminalreporter.write_sep("-", title)
        for line in self.lines:
            terminalreporter.write_line(line)
        path = os.environ.get(FIGURES_ENV)
        if path:
            with open(path, "a", encoding="utf-8") as f:
                f.write("\n".join([title, *self.lines]) + "\n")


def describe_device(device: torch.device) -> str:
    """``NVIDIA H100 80GB HBM3 (CUDA 13.0, torch 2.x)`` or ``CPU stand-in (...)``."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda}, torch {torch.__version__})"
    from maskadapter.precision import describe_isa

    return f"CPU stand-in ({describe_isa()}, torch {torch.__version__}, {torch.get_num_threads()} threads)"


def max_relative_error(actual: torch.Tensor, expected: torch.Tensor, floor: float = 1e-6) -> float:
    """max |a - e| / max(|e|, floor) over all elements (0 for empty tensors)."""
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    if actual.shape != expected.shape:
        raise AssertionError(f"shapes differ: {tuple(actual.shape)} vs {tuple(expected.shape)}")
    if not actual.numel():
        return 0.0
    return float(((actual - expected).abs() / expected.abs().clamp_min(floor)).max())

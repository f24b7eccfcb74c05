"""Benchmark: post-processing at large output sizes, full-tensor reference vs banded, at fcclip-large sizes.

250 queries, 150 classes + void, mask logits at the padded network input (672x896, a 4:3 photo), made as the
Predictor makes them: smooth stride-4 logits resized to the padded size. For output sizes of 1, 4, 12 and 50
megapixels and each task (semantic / panoptic / instance, postprocess_before_inference as in fcclip-large),
prints seconds and peak memory of the full-tensor composition (only where its resized logits, Q*H*W*4 bytes,
fit in --max-gb) and of the banded one, their ratios (banded / full, measured in the same run), and how far the
outputs differ: pixels whose semantic label, panoptic id or instance mask differ (the contract allows them only
at float-rounding near-ties) and the largest relative difference of instance scores. Each measurement runs in a
fresh subprocess, so its peak memory (resident set growth over the inputs) is its own.

    python benchmarks/postprocess.py            # 1, 4, 12 and 50 Mpx (about half an hour on 2 cores)
    python benchmarks/postprocess.py --quick    # 1 and 4 Mpx only
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from common import run_child  # benchmarks/common.py (scripts run from their folder)

Q, C = 250, 150
PADDED = (672, 896)  # the network input: 896 on the long side, a multiple of 32
SIZES = {1: (866, 1155), 4: (1732, 2309), 12: (3000, 4000), 50: (6124, 8165)}  # 4:3, H x W
TASKS = ("semantic", "panoptic", "instance")
THRESHOLDS = {"before": True, "object_mask_threshold": 0.0, "overlap_threshold": 0.8, "top_k": 100}


def make_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-probs [Q, C+1] (about half the queries void), mask logits [Q, 672, 896] (a blob per query on a
    negative background), thing flags [C]."""
    g = torch.Generator().manual_seed(0)
    coarse = torch.randn(1, Q, 21, 28, generator=g) * 2 - 6  # mostly background ...
    for q in range(Q):  # ... and one object each, as a rectangle of a few cells
        y, x, hh, ww = (int(v) for v in torch.randint(0, 21, (4,), generator=g))
        coarse[0, q, y:y + 2 + hh // 3, x % 24:x % 24 + 2 + ww // 3] += 12
    stride4 = F.interpolate(coarse, size=(PADDED[0] // 4, PADDED[1] // 4), mode="bilinear", align_corners=False)
    stride4 = stride4 + torch.randn(stride4.shape, generator=g) * 0.5
    mask_pred = F.interpolate(stride4, size=PADDED, mode="bilinear", align_corners=False)[0]
    logits = torch.randn(Q, C + 1, generator=g) * 3
    logits[: Q // 2, -1] += 8.0
    return logits.log_softmax(-1), mask_pred, torch.arange(C) % 3 != 0


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def save_outputs(out, path: str) -> None:
    """The outputs to compare (maps, instance RLEs, scores) as a weights-only torch file."""
    torch.save({"semantic": out.semantic, "panoptic": out.panoptic,
                "rles": out.instances.rles if out.instances is not None else [],
                "scores": out.instances.scores if out.instances is not None else torch.zeros(0)}, path)


def differences(full_file: str, banded_file: str) -> tuple[int, float]:
    """(pixels that differ in the maps and instance masks, largest relative instance score difference)."""
    from maskadapter.inference.instances import decode_rle

    a, b = (torch.load(f, weights_only=True) for f in (full_file, banded_file))
    pixels = sum(int((a[k] != b[k]).sum()) for k in ("semantic", "panoptic") if a[k] is not None)
    if a["rles"]:
        if len(a["rles"]) != len(b["rles"]):
            return -1, float("nan")  # another number of instances: far beyond the contract
        size = tuple(a["rles"][0]["size"])
        pixels += int((decode_rle(a["rles"], size) != decode_rle(b["rles"], size)).sum())
    rel = ((a["scores"].double() - b["scores"].double()).abs() / a["scores"].double().abs().clamp_min(1e-12))
    return pixels, float(rel.max()) if rel.numel() else 0.0


def child(spec: dict) -> dict:
    """One measurement in this process: seconds, peak memory over the inputs, bands; the outputs go to a file."""
    from maskadapter.inference.banded import postprocess_banded, postprocess_full

    mask_cls, mask_pred, is_thing = make_inputs()
    size, out_size, tasks = PADDED, tuple(spec["out_size"]), (spec["task"],)
    base = _rss_bytes()
    times = []
    for _ in range(spec["reps"]):  # the first call sets the peak; the time is the best call's
        start = time.perf_counter()
        with torch.no_grad():
            if spec["path"] == "full":
                out = postprocess_full(mask_cls, mask_pred, size, out_size, tasks, is_thing, **THRESHOLDS)
            else:
                out = postprocess_banded(mask_cls, mask_pred, size, out_size, tasks, is_thing, **THRESHOLDS,
                                         band_bytes=spec["band_mb"] * 2**20)
        times.append(time.perf_counter() - start)
        if len(times) == 1:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    save_outputs(out, spec["save"])
    return {"seconds": min(times), "peak": max(peak, 0), "bands": out.bands,
            "segments": len(out.segments), "instances": len(out.instances) if out.instances is not None else 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 and 4 Mpx only")
    parser.add_argument("--max-gb", type=float, default=8.0,
                        help="run the full-tensor reference only where Q*H*W*4 bytes fit in this (default 8)")
    parser.add_argument("--band-mb", type=int, default=256, help="band budget of the banded path (default 256)")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated tasks (default all three)")
    parser.add_argument("--reps", type=int, default=2,
                        help="calls per measurement up to 4 Mpx, best time reported (default 2; 1 above)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    from maskadapter.precision import describe_isa

    print(f"CPU ISA: {describe_isa()}   torch {torch.__version__}, {torch.get_num_threads()} threads   "
          f"Q={Q}, C={C}+void, logits {PADDED[0]}x{PADDED[1]}, band budget {args.band_mb} MiB")
    print("| Mpx | H x W | task | full s | banded s | time banded/full | full MiB | banded MiB | "
          "memory banded/full | bands | differing pixels | max score rel. diff |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for mpx in (1, 4) if args.quick else (1, 4, 12, 50):
            H, W = SIZES[mpx]
            for task in args.tasks.split(","):
                spec = {"out_size": [H, W], "task": task, "band_mb": args.band_mb,
                        "reps": args.reps if mpx <= 4 else 1}
                files = {path: str(Path(tmp) / f"{path}.pt") for path in ("full", "banded")}
                res = run_child(__file__, {**spec, "path": "banded", "save": files["banded"]})
                full = None
                if Q * H * W * 4 <= args.max_gb * 2**30:
                    full = run_child(__file__, {**spec, "path": "full", "save": files["full"]})
                print(_row(mpx, (H, W), task, full, res, files), flush=True)


def _row(mpx: int, size: tuple[int, int], task: str, full, res, files: dict[str, str]) -> str:
    """One table row: both paths' time and memory, their ratios and the output differences."""
    mib = 2**20
    cells = [f"{mpx}", f"{size[0]}x{size[1]}", task]
    if full is None:
        cells += ["-", f"{res['seconds']:.2f}", "-", "-", f"{res['peak'] / mib:.0f}", "-", f"{res['bands']}", "-",
                  "-"]
    else:
        pixels, rel = differences(files["full"], files["banded"])
        cells += [f"{full['seconds']:.2f}", f"{res['seconds']:.2f}", f"{res['seconds'] / full['seconds']:.2f}",
                  f"{full['peak'] / mib:.0f}", f"{res['peak'] / mib:.0f}",
                  f"{res['peak'] / max(full['peak'], 1):.3f}", f"{res['bands']}", f"{pixels}", f"{rel:.1e}"]
    return "| " + " | ".join(cells) + " |"


if __name__ == "__main__":
    main()

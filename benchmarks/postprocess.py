"""Benchmark: post-processing at large output sizes, full-tensor reference vs banded, at fcclip-large sizes.

250 queries, 150 classes + void, mask logits at the padded network input (672x896, a 4:3 photo), made as the
Predictor makes them: smooth stride-4 logits resized to the padded size. For output sizes of 1, 4, 12 and 50
megapixels and each task (semantic / panoptic / instance, postprocess_before_inference as in fcclip-large),
prints seconds and peak memory of the full-tensor composition (only where its resized logits, Q*H*W*4 bytes,
fit in --max-gb) and of the banded one, and whether their outputs are identical (semantic and panoptic maps,
segments, instance RLEs, scores and classes). Each measurement runs in a fresh subprocess, so its peak memory
(resident set growth over the inputs) is its own.

    python benchmarks/postprocess.py            # 1, 4, 12 and 50 Mpx (about half an hour on 2 cores)
    python benchmarks/postprocess.py --quick    # 1 and 4 Mpx only
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import time

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


def digest(out) -> str:
    """A hash of every output: maps, segments, instance RLEs, scores and classes."""
    h = hashlib.sha256()
    for tensor in (out.semantic, out.panoptic):
        if tensor is not None:
            h.update(str(tensor.dtype).encode() + tensor.numpy().tobytes())
    h.update(json.dumps(out.segments, sort_keys=True).encode())
    if out.instances is not None:
        h.update(json.dumps(out.instances.rles).encode())
        h.update(out.instances.scores.numpy().tobytes() + out.instances.classes.numpy().tobytes())
    return h.hexdigest()


def child(spec: dict) -> dict:
    """One measurement in this process: seconds, peak memory over the inputs, bands, output digest."""
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
    return {"seconds": min(times), "peak": max(peak, 0), "bands": out.bands, "digest": digest(out),
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
    print("| Mpx | H x W | task | path | s | peak MiB | bands | identical |")
    print("|---|---|---|---|---|---|---|---|")
    for mpx in (1, 4) if args.quick else (1, 4, 12, 50):
        H, W = SIZES[mpx]
        for task in args.tasks.split(","):
            spec = {"out_size": [H, W], "task": task, "band_mb": args.band_mb, "reps": args.reps if mpx <= 4 else 1}
            full = None
            if Q * H * W * 4 <= args.max_gb * 2**30:
                full = run_child(__file__, {**spec, "path": "full"})
                print(f"| {mpx} | {H}x{W} | {task} | full | {full['seconds']:.2f} | {full['peak'] / 2**20:.0f} "
                      f"| 1 | - |", flush=True)
            res = run_child(__file__, {**spec, "path": "banded"})
            same = "-" if full is None else ("yes" if full["digest"] == res["digest"] else "NO")
            print(f"| {mpx} | {H}x{W} | {task} | banded | {res['seconds']:.2f} | {res['peak'] / 2**20:.0f} "
                  f"| {res['bands']} | {same} |", flush=True)


if __name__ == "__main__":
    main()

"""Benchmark: the full FC-CLIP + Mask-Adapter pipeline per image, by stage, at real ConvNeXt-L dimensions.

Random weights (no download), a 1024x768 photo-sized input (processed at 896 px, 250 queries), the
ADE20K-150 vocabulary. Each configuration runs in a fresh subprocess so its peak memory is its own:
fp32 and bf16, each with an uncached text classifier (first image) and a cached one (second image).

    python benchmarks/pipeline.py [--device cuda] [--vocab coco_panoptic]
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import torch

from common import run_child  # benchmarks/common.py (scripts run from their folder)

STAGES = ("preprocess", "text", "backbone", "generator", "adapter", "postprocess")


def child(spec: dict) -> dict:
    """Build the model, run two images (uncached then cached text), return timings and peak memory."""
    from maskadapter.data.vocabularies import builtin_vocabulary
    from maskadapter.inference.predictor import Predictor
    from maskadapter.modeling.build import build_model

    torch.manual_seed(0)
    model = build_model("fcclip-large")
    predictor = Predictor(model, "fcclip-large", device=spec["device"], precision=spec["precision"],
                          text_cache_dir=False)  # "uncached" must mean uncached
    vocab = builtin_vocabulary(spec["vocab"])
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (768, 1024, 3), dtype=np.uint8) for _ in range(2)]
    runs = []
    for image in images:
        start = time.perf_counter()
        result = predictor.predict(image, vocab, tasks=("semantic", "panoptic"))
        runs.append({"total": time.perf_counter() - start, **result.timings})
    if spec["device"] == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"runs": runs, "peak": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--vocab", default="ade20k_150", help="built-in vocabulary (default ade20k_150)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    from maskadapter.precision import describe_isa

    print(f"device: {args.device}   CPU ISA: {describe_isa()}   torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; fcclip-large dimensions, random weights, 1024x768 input "
          f"processed at 896x672, vocabulary {args.vocab}")
    header = f"{'precision':>9} {'text':>8} " + " ".join(f"{s:>11}" for s in STAGES) + f" {'total s':>8} {'peak MiB':>9}"
    print(header)
    print("-" * len(header))
    for precision in ("fp32", "bf16"):
        spec = {"device": args.device, "precision": precision, "vocab": args.vocab}
        try:
            res = run_child(__file__, spec)
        except RuntimeError as exc:
            print(f"{precision}: failed\n{exc}")
            continue
        for label, run in zip(("uncached", "cached"), res["runs"]):
            cells = " ".join(f"{run.get(s, 0.0):11.2f}" for s in STAGES)
            print(f"{precision:>9} {label:>8} {cells} {run['total']:8.2f} {res['peak'] / 2**20:9.0f}", flush=True)
    print("stages in seconds; peak memory is the process high-water mark (model weights included)")


if __name__ == "__main__":
    main()

"""Benchmark: every preset on a GPU at 896 px, random weights in the real dimensions, beside the authors' 125 ms.

For each preset (fcclip-large, maftp-base, maftp-large) and precision (fp32, auto), in a fresh child process (so
its peak memory is its own): text encoding of the vocabulary cold (the first encoding in the process, CUDA
start-up included) and warm (encoded again, nothing cached); then, with the text cached, milliseconds per image
at batch size 1 and at the best of the batch sizes tried (larger ones stop at the first out-of-memory), and the
peak GPU memory of each. Inputs are 1024x768 photos (processed at 896x672), the ADE20K-150 vocabulary, semantic
output. The authors report 125 ms per image on an RTX 4090 with cached text.

    python benchmarks/gpu.py [--device cuda] [--vocab ade20k_150] [--batch-sizes 1,2,4,8] [--images 8]
    python benchmarks/gpu.py --device cpu --tiny     # a quick smoke run of the same code: tiny models, 64 px
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

from common import run_child  # benchmarks/common.py (scripts run from their folder)

REPO = Path(__file__).resolve().parents[1]
PRESETS = ("fcclip-large", "maftp-base", "maftp-large")
PRECISIONS = ("fp32", "auto")
AUTHORS_MS = 125.0  #: per image, RTX 4090, cached text (the authors' figure)


# ---------------------------------------------------------------------------------------------- child process
def build(spec: dict):
    """(model with random weights, preset): the real dimensions, or with ``tiny`` the test suite's tiny ones."""
    from maskadapter.modeling.build import build_model
    from maskadapter.presets import get_preset

    torch.manual_seed(0)
    if not spec["tiny"]:
        return build_model(spec["preset"]), get_preset(spec["preset"])
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import tiny_architecture, tiny_preset  # the one home of the tiny test configuration

    preset = tiny_preset(spec["preset"])
    return build_model(preset, tiny_architecture()), preset


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so wall time covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    """Start a new peak-memory measurement (GPU only: a process's CPU high-water mark cannot be reset)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_bytes(device: torch.device) -> int:
    """Peak GPU memory allocated since the last reset; on the CPU the process's high-water mark."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def load_vocabulary(text: str):
    """A built-in vocabulary by name, else ``text`` in the inline syntax (``"cat, sofa|couch, sky"``)."""
    from maskadapter.data.vocabularies import builtin_vocabulary
    from maskadapter.vocabulary import Vocabulary

    try:
        return builtin_vocabulary(text)
    except (KeyError, ValueError):
        return Vocabulary.parse(text)


def text_seconds(model, vocab, device: torch.device) -> float:
    """Seconds to encode ``vocab`` with a fresh in-memory text classifier (nothing cached)."""
    from maskadapter.modeling.text import TextClassifier

    start = time.perf_counter()
    TextClassifier(model.backbone, cache_dir=None)(vocab)
    sync(device)
    return time.perf_counter() - start


def ms_per_image(predictor, images: list, vocab, batch: int, tasks: tuple) -> float:
    """Wall milliseconds per image over ``images`` in batches of ``batch`` (the text is cached)."""
    start = time.perf_counter()
    for i in range(0, len(images), batch):
        chunk = images[i:i + batch]
        if batch == 1:
            predictor.predict(chunk[0], vocab, tasks=tasks)
        else:
            predictor.predict_batch(chunk, vocab, tasks=tasks)
    sync(predictor.device)
    return 1000 * (time.perf_counter() - start) / len(images)


def child(spec: dict) -> dict:
    """One preset and precision: text encoding cold / warm, ms per image and peak memory per batch size."""
    from maskadapter.inference.predictor import Predictor

    device = torch.device(spec["device"])
    model, preset = build(spec)
    model = model.to(device).eval()
    vocab = load_vocabulary(spec["vocab"])
    with torch.no_grad():
        cold = text_seconds(model, vocab, device)
        warm = text_seconds(model, vocab, device)
    predictor = Predictor(model, preset, device=device, precision=spec["precision"], text_cache_dir=False)
    rng = np.random.default_rng(0)
    h, w = spec["image_size"]
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for _ in range(spec["images"])]
    tasks = tuple(spec["tasks"])
    predictor.predict(images[0], vocab, tasks=tasks)  # warm-up: the text into the predictor's cache
    runs = []
    for batch in spec["batch_sizes"]:
        reset_peak(device)
        try:
            ms_per_image(predictor, images[:batch], vocab, batch, tasks)  # warm-up: kernels for this batch shape
            ms = ms_per_image(predictor, images[: len(images) // batch * batch], vocab, batch, tasks)
        except torch.cuda.OutOfMemoryError:
            runs.append({"batch": batch, "oom": True})
            break
        runs.append({"batch": batch, "ms": ms, "peak": peak_bytes(device)})
    return {"text_cold_s": cold, "text_warm_s": warm, "resolved": predictor.resolved_precision,
            "prompts": sum(vocab.num_synonyms), "runs": runs}


# ---------------------------------------------------------------------------------------------- parent
def describe(device: str) -> str:
    """The GPU (or CPU) the numbers come from."""
    from maskadapter.precision import describe_isa

    cpu = f"CPU ISA {describe_isa()}, {torch.get_num_threads()} threads"
    if device.startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.device(device))
        return (f"{props.name} ({props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}, "
                f"torch {torch.__version__}); {cpu}")
    return f"{device} (torch {torch.__version__}); {cpu}"


def row(name: str, precision: str, res: dict) -> str:
    """One table row: text cold / warm, batch 1 and best batch (ms per image, peak MiB), ratio to the authors."""
    done = [r for r in res["runs"] if not r.get("oom")]
    one = next(r for r in done if r["batch"] == 1)
    best = min(done, key=lambda r: r["ms"])
    oom = [r["batch"] for r in res["runs"] if r.get("oom")]
    best_label = f"{best['batch']}" + (f" (OOM at {oom[0]})" if oom else "")
    return (f"| {name} | {precision} ({res['resolved']}) | {res['text_cold_s']:.2f} | {res['text_warm_s']:.2f} | "
            f"{one['ms']:.1f} | {one['peak'] / 2**20:.0f} | {best_label} | {best['ms']:.1f} | "
            f"{best['peak'] / 2**20:.0f} | {AUTHORS_MS:.0f} | {one['ms'] / AUTHORS_MS:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny random models at 64 px: a smoke run of this script")
    parser.add_argument("--vocab", default=None, help="a built-in vocabulary or inline classes (default ade20k_150; "
                                                       "--tiny: 'cat, sofa|couch, sky, road')")
    parser.add_argument("--batch-sizes", default=None, help="comma separated (default 1,2,4,8; --tiny 1,2)")
    parser.add_argument("--images", type=int, default=None, help="images per measurement (default 8; --tiny 2)")
    parser.add_argument("--tasks", default="semantic", help="outputs per image (default semantic)")
    parser.add_argument("--presets", default=",".join(PRESETS), help="comma separated (default: all three)")
    parser.add_argument("--precisions", default=",".join(PRECISIONS), help="comma separated (default fp32,auto)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda needs a GPU (none is visible); --device cpu --tiny runs a smoke test")
    batch_sizes = [int(b) for b in (args.batch_sizes or ("1,2" if args.tiny else "1,2,4,8")).split(",")]
    if 1 not in batch_sizes:
        batch_sizes = [1] + batch_sizes
    images = max(args.images or (2 if args.tiny else 8), max(batch_sizes))  # every batch size gets full batches
    size = (120, 160) if args.tiny else (768, 1024)
    vocab = args.vocab or ("cat, sofa|couch, sky, road" if args.tiny else "ade20k_150")
    print(f"device: {describe(args.device)}")
    print(f"{'tiny test models, 64 px' if args.tiny else 'real dimensions, random weights, 896 px'}; "
          f"{size[1]}x{size[0]} inputs, vocabulary {vocab!r}, outputs {args.tasks}; {images} images per "
          f"measurement; ms per image with the text cached\n")
    print("| preset | precision | text cold s | text warm s | ms/img b1 | peak MiB b1 | best batch | ms/img best "
          "| peak MiB best | authors ms (RTX 4090) | b1 / authors |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    failed = 0
    for preset in args.presets.split(","):
        name = f"tiny-{preset}" if args.tiny else preset
        for precision in args.precisions.split(","):
            spec = {"device": args.device, "preset": preset, "precision": precision, "vocab": vocab,
                    "tiny": args.tiny, "images": images, "batch_sizes": batch_sizes, "image_size": size,
                    "tasks": args.tasks.split(",")}
            try:
                print(row(name, precision, run_child(__file__, spec)), flush=True)
            except RuntimeError as exc:
                failed += 1
                print(f"| {name} | {precision} | failed: {str(exc).strip().splitlines()[-1][:150]} |", flush=True)
    print(f"\ntext cold: the first encoding in a fresh process (CUDA start-up included); warm: encoded again with "
          f"nothing cached. Peak: {'GPU memory allocated' if args.device.startswith('cuda') else 'process RSS'}. "
          f"Authors: {AUTHORS_MS:.0f} ms per image on an RTX 4090 with cached text.")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

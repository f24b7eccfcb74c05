"""Benchmark: batch segmentation throughput (``maskadapter segment`` over a collection) in images/s.

Each configuration runs in fresh processes started by ``torchrun`` (gloo on the CPU, NCCL on GPUs), with random
weights (no download), generated JPEGs (``--size``, default 640x480) and a 10-class vocabulary, writing COCO
outputs (``--tasks``, default panoptic + instance) to a temporary folder. Varied: processes (1 vs 2 on the CPU, threads split between them), batch size
(1 / 2 / 4; images of one size, so batches are full) and DataLoader workers (0: decoding in the model's process,
the time share "input wait" is then the decode/resize share; 2: decoding overlaps the model). Models: the tiny
preset (``configs/tiny_preset.json``; decoding and writing matter) and fcclip-large dimensions (the model is
everything; about 25 s per image on 2 CPU cores, hence few images).

    python benchmarks/batch.py --quick                 # CPU, a few minutes
    python benchmarks/batch.py --models tiny --tasks semantic --size 1024x768 --threads 1   # the input pipeline
    python benchmarks/batch.py --device cuda           # one process per GPU: images/s at batch 1 and the best batch
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VOCAB = "person, car, tree, sky, road, building, grass, dog, cat, water"
STAGES = ("input wait", "model", "postprocess", "write")


def child(spec: dict) -> None:
    """One configuration in this process (a torchrun worker): build the model, segment, print rank 0's report."""
    import torch

    from maskadapter.inference.batch import BatchOptions, run_batch
    from maskadapter.inference.inputs import collect_inputs
    from maskadapter.inference.predictor import Predictor
    from maskadapter.modeling.build import build_model, load_preset

    preset, architecture = load_preset(spec["preset"])
    torch.manual_seed(0)  # every process builds the same random weights
    model = build_model(preset, architecture)
    predictor = Predictor(model, preset, device=spec["device"], precision="fp32", text_cache_dir=spec["text_cache"])
    predictor.text_classifier(VOCAB)  # text encoding once, outside the timed loop
    items = collect_inputs([spec["images"]]).items
    options = BatchOptions(tuple(spec["tasks"].split(",")), "coco", batch_size=spec["batch"],
                           workers=spec["workers"], progress=False)
    report = run_batch(predictor, items, VOCAB, spec["output"], options)
    if int(os.environ.get("RANK", "0")) == 0:
        total = report.stage_seconds["total"]
        print("RESULT " + json.dumps({"images_per_s": report.images_per_second, "computed": report.computed,
                                      "seconds": report.seconds, "decode": report.decode_seconds,
                                      "shares": {s: report.stage_seconds[s] / total for s in STAGES}}), flush=True)


def make_images(folder: Path, count: int, size: tuple[int, int] = (640, 480)) -> None:
    """Photo-like JPEGs of ``size`` (W, H): smooth random colour fields, so they compress and decode like photos."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        small = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
        Image.fromarray(small).resize(size, Image.BICUBIC).save(folder / f"img{i:04d}.jpg", quality=90)


def launch(spec: dict, processes: int, threads: int) -> dict:
    """Run one configuration under torchrun; its result, or {"error": ...}."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore",
               PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
           __file__, "--child", json.dumps(spec)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode or not lines:
        return {"error": (proc.stderr or proc.stdout)[-1500:]}
    return {**json.loads(lines[-1][len("RESULT "):]), "wall": time.perf_counter() - start}


def configurations(model: str, device: str, quick: bool, cores: int) -> list[tuple[int, int, int]]:
    """(processes, batch size, workers per process) to measure."""
    if device == "cuda":
        import torch

        gpus = max(1, torch.cuda.device_count())
        return [(gpus, b, 4) for b in (1, 2, 4, 8, 16)]
    big = model != "tiny"
    batches = (1, 2) if big and quick else (1, 2, 4)
    rows = [(1, 1, 0)] + [(1, b, 2) for b in batches]
    if cores >= 2:
        rows += [(2, b, 1) for b in ((1,) if big and quick else batches)]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--models", default="tiny,fcclip-large", help="tiny and / or fcclip-large")
    parser.add_argument("--quick", action="store_true", help="fewer images and configurations")
    parser.add_argument("--images", type=int, help="images per configuration (default: by model and --quick)")
    parser.add_argument("--tasks", default="panoptic,instance", help="outputs (default panoptic,instance)")
    parser.add_argument("--size", default="640x480", help="input image size WxH (default 640x480)")
    parser.add_argument("--threads", type=int,
                        help="threads per process (default: the CPU cores split between the processes)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per configuration; the fastest counts (default 1; more on a busy machine)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    cores = os.cpu_count() or 1
    print(f"device {args.device}, {cores} CPU cores; random weights, {args.size} JPEGs, {len(VOCAB.split(','))} "
          f"classes, {args.tasks}, COCO outputs")
    head = ("| model | procs | threads/proc | batch | workers | images | img/s | vs first row | "
            + " | ".join(f"{s} %" for s in STAGES) + " | decode s |")
    print(head + "\n|" + "---|" * (head.count("|") - 1), flush=True)
    work = Path(tempfile.mkdtemp(prefix="maskadapter-bench-batch-"))
    try:
        for model in args.models.split(","):
            run_model(model.strip(), args, cores, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_model(model: str, args: argparse.Namespace, cores: int, work: Path) -> None:
    """Measure every configuration of one model; print a table row each."""
    preset = str(REPO / "configs" / "tiny_preset.json") if model == "tiny" else model
    count = args.images or {("tiny", True): 24, ("tiny", False): 64}.get((model, args.quick), 2 if args.quick else 4)
    if args.device == "cuda":
        count = args.images or 64
    images = work / f"images-{count}-{args.size}"
    if not images.is_dir():
        make_images(images, count, tuple(int(v) for v in args.size.split("x")))
    base = None
    best: tuple[float, int] = (0.0, 0)
    for processes, batch, workers in configurations(model, args.device, args.quick, cores):
        out = work / f"out-{model}-{processes}-{batch}-{workers}"
        spec = {"preset": preset, "device": args.device, "images": str(images), "output": str(out),
                "batch": batch, "workers": workers, "text_cache": str(work / "text-cache"), "tasks": args.tasks}
        threads = args.threads or (max(1, cores // processes) if args.device == "cpu" else 4)
        runs = []
        for _ in range(max(1, args.repeat)):
            runs.append(launch(spec, processes, threads))
            shutil.rmtree(out, ignore_errors=True)
        done = [r for r in runs if "error" not in r]
        res = max(done, key=lambda r: r["images_per_s"]) if done else runs[-1]
        if "error" in res:
            print(f"| {model} | {processes} | {threads} | {batch} | {workers} | {count} | failed: "
                  f"{res['error'].strip().splitlines()[-1] if res['error'].strip() else '?'} |", flush=True)
            continue
        rate = res["images_per_s"]
        base = base or rate
        best = max(best, (rate, batch))
        shares = " | ".join(f"{100 * res['shares'][s]:.0f}" for s in STAGES)
        print(f"| {model} | {processes} | {threads} | {batch} | {workers} | {res['computed']} | {rate:.3g} | "
              f"{rate / base:.2f}x | {shares} | {res['decode']:.2f} |", flush=True)
    if args.device == "cuda" and best[0]:
        print(f"{model}: best batch size {best[1]} at {best[0]:.3g} images/s")


if __name__ == "__main__":
    main()

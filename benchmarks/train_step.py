"""Benchmark: one stage-2 (mixed-mask) training step at real FC-CLIP ConvNeXt-L sizes (random weights).

The step is ``Trainer.run_step``: frozen CLIP and FC-CLIP generator forward (250 queries), IoU matching,
16 GT + 8 predicted + 8 matched masks through the 768-wide adapter, CE + consistency loss, backward, AdamW.
Prints images/s and peak memory for fp32 and bf16 autocast, head gradient checkpointing off and on; every
configuration runs in a fresh subprocess so its peak memory is its own.

Inputs are fabricated: a random image with 20 rectangular GT masks; the generator's mask logits are
replaced by GT-derived ones (its forward still runs and is timed), so the matcher finds real matches and all
32 adapter masks are distinct, as in real training.

    python benchmarks/train_step.py                      # batch 1 at 1024 px, 1 timed step (a few minutes, CPU)
    python benchmarks/train_step.py --steps 3 --batch 2  # GPU
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch

from common import run_child  # benchmarks/common.py (scripts run from their folder)

NUM_GT = 20


def _status(key: str) -> int:
    """A byte count from /proc/self/status (``VmRSS:`` now, ``VmHWM:`` peak since the last reset)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))


class _Boxes(torch.utils.data.Dataset):
    """Random images with a grid of rectangular GT masks (4 x 5 cells)."""

    def __init__(self, size: int, n: int) -> None:
        from maskadapter.vocabulary import Vocabulary

        self.size, self.n = size, n
        self.vocabulary = Vocabulary.from_classes([f"class {i}" for i in range(24)])

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        s = self.size
        masks = torch.zeros(NUM_GT, s, s, dtype=torch.bool)
        for k in range(NUM_GT):
            r, c = divmod(k, 5)
            masks[k, r * s // 4:(r + 1) * s // 4, c * s // 5:(c + 1) * s // 5] = True
        return {"image": torch.randint(0, 256, (3, s, s), dtype=torch.uint8, generator=g), "masks": masks,
                "labels": torch.randint(0, 24, (NUM_GT,), generator=g), "file_name": f"boxes-{i}"}


def child(spec: dict) -> dict:
    """One configuration in this process: seconds per step and peak memory."""
    import torch.nn.functional as F

    from maskadapter.modeling.build import build_model
    from maskadapter.training import Trainer, apply_overrides
    from maskadapter.training.config import TrainConfig
    from maskadapter.training.data import collate_indexed

    torch.manual_seed(0)
    device = spec["device"]
    model = build_model("fcclip-large")
    cfg = apply_overrides(TrainConfig(), [
        "model.preset=fcclip-large", f"model.grad_checkpoint={'true' if spec['ckpt'] else 'false'}",
        f"solver.batch_size={spec['batch']}", f"solver.precision={spec['precision']}", "solver.max_iter=100",
        f"run.output_dir={spec['out']}", f"run.device={device}", "run.tensorboard=false", "run.progress=false",
        f"data.image_size={spec['size']}", "data.num_workers=0"])
    dataset = _Boxes(spec["size"], spec["batch"])
    trainer = Trainer(cfg, model=model, dataset=dataset)
    batch = collate_indexed([{**dataset[i], "index": i} for i in range(spec["batch"])])

    # GT-derived proposals so the matcher matches (the real generator forward still runs first).
    head = trainer.model.sem_seg_head
    real_forward = head.forward

    def forward(features, text, num_synonyms):
        out = real_forward(features, text, num_synonyms)
        h, w = out["pred_masks"].shape[-2:]
        gt = torch.stack([b.float() for b in batch["masks"]]).to(out["pred_masks"].device)
        gt = F.interpolate(gt, size=(h, w), mode="bilinear", align_corners=False)
        fake = torch.full_like(out["pred_masks"], -8.0)
        fake[:, :NUM_GT] = (gt - 0.5) * 16.0
        return {**out, "pred_masks": fake}

    head.forward = forward
    # the first gradient-checkpoint call imports modules (~150 MiB): not part of the step
    torch.utils.checkpoint.checkpoint(lambda x: x * 2, torch.ones(1, requires_grad=True), use_reentrant=False)

    def step() -> float:
        start = time.perf_counter()
        stats = trainer.run_step(batch)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        assert stats["masks"] == spec["batch"] * 32, stats  # 16 GT + 8 + 8 labelled masks per image
        return time.perf_counter() - start

    first = step()  # warm-up: kernel selection, lazy initialisation
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        with open("/proc/self/clear_refs", "w") as f:  # reset the peak RSS (VmHWM) to the current RSS
            f.write("5")
        base = _status("VmRSS:")
    times = [step() for _ in range(max(1, spec["steps"]))]
    if device.startswith("cuda"):
        total = torch.cuda.max_memory_allocated()
    else:
        total = _status("VmHWM:")
    return {"seconds": sum(times) / len(times), "first": first, "peak": max(total - base, 0), "total": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=1024, help="image size (official stage 2: 1024)")
    parser.add_argument("--batch", type=int, default=1, help="images per step")
    parser.add_argument("--steps", type=int, default=1, help="timed steps after one untimed warm-up step")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    from maskadapter.precision import describe_isa

    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({describe_isa()})"
    print(f"stage-2 training step, fcclip-large sizes (random weights), {args.batch} x {args.size}^2 px, "
          f"32 adapter masks per image; {where}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("s/step, img/s, peak: timed steps after one warm-up step ('first s'); peak MiB above the memory before the "
          "step (RSS on CPU, allocated on GPU), total MiB the whole process; ratios against fp32 without checkpointing")
    header = f"{'precision':>9} {'head ckpt':>9} {'s/step':>8} {'img/s':>7} {'first s':>8} {'peak MiB':>9} " \
             f"{'total MiB':>9} {'speed':>6} {'mem':>6}"
    print(header)
    print("-" * len(header))
    base = None
    with tempfile.TemporaryDirectory() as tmp:
        for precision in args.precisions:
            for ckpt in (False, True):
                spec = {"device": args.device, "size": args.size, "batch": args.batch, "steps": args.steps,
                        "precision": precision, "ckpt": ckpt, "out": os.path.join(tmp, f"{precision}-{ckpt}")}
                res = run_child(__file__, spec)
                base = base or res
                print(f"{precision:>9} {'on' if ckpt else 'off':>9} {res['seconds']:8.2f} "
                      f"{args.batch / res['seconds']:7.3f} {res['first']:8.2f} {res['peak'] / 2**20:9.0f} "
                      f"{res['total'] / 2**20:9.0f} {base['seconds'] / res['seconds']:5.2f}x "
                      f"{res['peak'] / max(base['peak'], 1):5.2f}x", flush=True)


if __name__ == "__main__":
    main()

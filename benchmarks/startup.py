"""Benchmark: what a new user waits for - command-line start-up and the persistent text-embedding cache.

1. Wall time of ``maskadapter --help``, ``maskadapter segment --help`` and ``import maskadapter`` (best of N runs,
   each a fresh interpreter; target: ``--help`` under 0.5 s).
2. The text stage of a first and a second process that segment one image with the ADE20K-150 vocabulary
   (403 synonyms x 14 templates) and share the default cache folder: seconds and text-encoder calls, on the tiny
   preset and at fcclip-large dimensions with random weights (target: second run < 0.1 s, 0 encoder calls).

    python benchmarks/startup.py [--runs 5] [--skip-large]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_CHILD = """
import json, sys, time
import numpy as np, torch
from maskadapter import Predictor, builtin_vocabulary, build_model
spec = json.loads(sys.argv[1])
torch.manual_seed(0)
if spec["preset"] == "tiny":
    from maskadapter.modeling.build import load_preset
    preset, arch = load_preset(spec["preset_file"])
    model = build_model(preset, arch)
else:
    preset = spec["preset"]
    model = build_model(preset)
start = time.perf_counter()
p = Predictor(model, preset, precision="fp32")
image = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
r = p.predict(image, builtin_vocabulary("ade20k_150"), tasks=["semantic"])
print(json.dumps({"text_s": r.timings["text"], "encoded": p.text_classifier.encoded_prompts,
                  "total_s": time.perf_counter() - start}))
"""


def best_wall(cmd: list[str], runs: int) -> float:
    """Fastest wall time of ``runs`` fresh runs of ``cmd`` (the first run warms the file cache)."""
    times = []
    for _ in range(runs + 1):
        start = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return min(times[1:])


def text_cache_runs(preset: str, cache: Path, preset_file: Path) -> list[dict]:
    """Two processes (same weights, vocabulary and cache folder): their text stage."""
    env = dict(os.environ, MASKADAPTER_CACHE=str(cache), PYTHONWARNINGS="ignore")
    spec = json.dumps({"preset": preset, "preset_file": str(preset_file)})
    out = []
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", _CHILD, spec], capture_output=True, text=True, env=env)
        if proc.returncode:
            raise RuntimeError(proc.stderr[-2000:])
        out.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--skip-large", action="store_true", help="only the tiny preset for the text cache")
    args = parser.parse_args()
    from maskadapter.precision import describe_isa

    print(f"CPU ISA: {describe_isa()}   python {sys.version.split()[0]}\n")
    print("| command | wall s (best of %d) |\n|---|---|" % args.runs)
    for label, cmd in (("maskadapter --help", [sys.executable, "-m", "maskadapter", "--help"]),
                       ("maskadapter segment --help", [sys.executable, "-m", "maskadapter", "segment", "--help"]),
                       ("import maskadapter", [sys.executable, "-c", "import maskadapter"]),
                       ("from maskadapter import Predictor", [sys.executable, "-c",
                                                              "from maskadapter import Predictor"]),
                       ("python (empty interpreter)", [sys.executable, "-c", "pass"])):
        print(f"| `{label}` | {best_wall(cmd, args.runs):.3f} |", flush=True)

    print("\n| model | run | text stage s | text-encoder prompts | total s |\n|---|---|---|---|---|")
    presets = ["tiny"] + ([] if args.skip_large else ["fcclip-large"])
    with tempfile.TemporaryDirectory() as tmp:
        sys.path.insert(0, str(REPO / "tests"))
        from conftest import write_tiny_preset

        preset_file = write_tiny_preset(Path(tmp) / "tiny.json")
        for preset in presets:
            for i, run in enumerate(text_cache_runs(preset, Path(tmp) / f"cache-{preset}", preset_file)):
                print(f"| {preset} | {'first' if i == 0 else 'second'} process | {run['text_s']:.3f} | "
                      f"{run['encoded']} | {run['total_s']:.2f} |", flush=True)


if __name__ == "__main__":
    main()

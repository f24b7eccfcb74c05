"""The README is a contract: every shell and Python block in it runs as written (offline, on the CPU).

Hub downloads are the only thing a test machine cannot do, so a ``sitecustomize`` module (on PYTHONPATH of the
child processes only) maps each released preset to the tiny test architecture and a fabricated checkpoint in the
official key layout. Files the README names (``photo.jpg``, ``more_photos/``, ``classes.txt``, the released
checkpoint file names, ``configs/``) are made in a fresh working folder. A block that cannot run offline (it needs
a dataset download, a GPU or SAM weights) is preceded by ``<!-- readme-test: skip REASON -->``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maskadapter.modeling.build import build_model, load_preset_file
from maskadapter.presets import PRESETS

from conftest import write_tiny_preset

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
SKIP = re.compile(r"<!--\s*readme-test:\s*skip\s+(?P<reason>[^>]*?)\s*-->\s*$")
FENCE = re.compile(r"^```(?P<lang>\w*)\s*$")

_SITECUSTOMIZE = '''
import os
if os.environ.get("MASKADAPTER_README_TINY"):
    from pathlib import Path
    import maskadapter.hub as hub
    import maskadapter.modeling.build as build
    import maskadapter.modeling.load as load

    _preset, _arch = build.load_preset_file(os.environ["MASKADAPTER_README_TINY"])
    _weights = Path(os.environ["MASKADAPTER_README_WEIGHTS"])
    _resolve = hub.resolve_weights

    def default_architecture(preset):
        return _arch

    def resolve_weights(preset, weights=None, cache_dir=None):
        if weights is not None:
            return _resolve(preset, weights, cache_dir)
        return _weights / preset.weights_file

    build.default_architecture = load.default_architecture = default_architecture
    hub.resolve_weights = load.resolve_weights = resolve_weights
'''


def readme_blocks() -> list[tuple[int, str, str, str]]:
    """(line number, language, code, skip reason or '') of every fenced block of the README."""
    lines = README.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if match and match["lang"] in ("bash", "python", "sh"):
            skip = SKIP.match(lines[i - 1]) if i else None
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            blocks.append((i + 1, match["lang"], "\n".join(lines[i + 1:end]), skip["reason"] if skip else ""))
            i = end
        i += 1
    return blocks


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder holding what the README's commands name, and the environment that stands in for the hub."""
    root = tmp_path_factory.mktemp("readme")
    work = root / "work"
    (work / "more_photos").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, (h, w) in (("photo.jpg", (60, 80)), ("more_photos/beach.jpg", (48, 64)),
                         ("more_photos/street.png", (64, 48))):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(work / name)
    (work / "classes.txt").write_text("cat\nsofa, couch\nwindow\nlamp\n")
    shutil.copytree(REPO / "configs", work / "configs")
    tiny = write_tiny_preset(root / "tiny.json")
    _, arch = load_preset_file(tiny)
    weights = root / "weights"
    weights.mkdir()
    for preset in PRESETS.values():  # each released preset on the tiny architecture
        torch.manual_seed(0)
        torch.save({"model": build_model(preset, arch).state_dict()}, weights / preset.weights_file)
    shutil.copy(weights / PRESETS["fcclip-large"].weights_file, work / PRESETS["fcclip-large"].weights_file)
    site = root / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
               MASKADAPTER_README_TINY=str(tiny), MASKADAPTER_README_WEIGHTS=str(weights),
               MASKADAPTER_CACHE=str(root / "cache"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    return work, env


def run_block(lang: str, code: str, work: Path, env: dict) -> subprocess.CompletedProcess:
    if lang == "python":
        return subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True,
                              timeout=600)
    script = []
    for line in code.splitlines():
        command = line.split("#")[0].strip() if not line.strip().startswith("#") else ""
        if command.startswith("pip install"):  # already installed by the test command; the extras must exist
            extras = re.findall(r"\[([\w,]+)\]", command)
            for extra in ",".join(extras).split(",") if extras else []:
                assert f"\n{extra} = [" in (REPO / "pyproject.toml").read_text(), f"unknown extra {extra!r}"
            command = command.split("&&", 1)[1].strip() if "&&" in command else ""
        if command:
            script.append(command)
    return subprocess.run(["bash", "-euo", "pipefail", "-c", "\n".join(script)], cwd=work, env=env,
                          capture_output=True, text=True, timeout=600)


BLOCKS = readme_blocks()


def test_the_readme_has_runnable_blocks_and_every_skip_says_why():
    runnable = [b for b in BLOCKS if not b[3]]
    assert len(runnable) >= 6 and any(b[1] == "python" for b in runnable)
    for line, _, _, reason in BLOCKS:
        assert reason is not None


@pytest.mark.slow
@pytest.mark.parametrize("line, lang, code, skip", BLOCKS, ids=[f"README.md:{b[0]}" for b in BLOCKS])
def test_readme_block_runs(workdir, line, lang, code, skip):
    if skip:
        pytest.skip(f"README.md:{line}: {skip}")
    work, env = workdir
    proc = run_block(lang, code, work, env)
    assert proc.returncode == 0, f"README.md:{line} failed:\n{code}\n--- stdout\n{proc.stdout[-3000:]}\n" \
                                 f"--- stderr\n{proc.stderr[-3000:]}"

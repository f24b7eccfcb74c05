"""What a new user touches first: the public API, vocabulary files, the persistent text cache, offline hub
errors, and one predictor API that accepts what the command line accepts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import maskadapter
from maskadapter.hub import resolve_weights
from maskadapter.inference.predictor import Predictor
from maskadapter.modeling.text import TextClassifier
from maskadapter.presets import get_preset
from maskadapter.vocabulary import Vocabulary

from conftest import write_tiny_checkpoint

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("first")
    preset_file, weights = write_tiny_checkpoint(root)
    image = root / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(image)
    return {"root": root, "preset": preset_file, "weights": weights, "image": image}


# ----------------------------------------------------------------------------- public API
def test_public_names_load_lazily():
    probe = ("import sys, maskadapter\nassert 'torch' not in sys.modules\n"
             "from maskadapter import Predictor, SegmentationResult, MaskClassification, PRESETS, get_preset, "
             "InferenceOptions, Vocabulary\nprint(sorted(PRESETS), Predictor.__name__)\n")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "['fcclip-large', 'maftp-base', 'maftp-large'] Predictor" in proc.stdout
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        maskadapter.Nope  # noqa: B018
    assert {"Predictor", "get_preset", "Vocabulary"} <= set(dir(maskadapter))


# ----------------------------------------------------------------------------- vocabulary files
@pytest.mark.parametrize("text, expected", [
    ("rocket, spaceship\ncat\n", (("rocket", "spaceship"), ("cat",))),          # one class per line
    ("sofa|couch\n\n# a comment\ntv, television|monitor\n", (("sofa", "couch"), ("tv", "television", "monitor"))),
    ("1:person, people\n0:background\n2:tv,television\n", (("person", "people"), ("tv", "television"))),
    ("0:background\n1:cat\n", (("cat",),)),
])
def test_vocabulary_file_is_one_class_per_line(tmp_path, text, expected):
    path = tmp_path / "classes.txt"
    path.write_text(text)
    assert Vocabulary.from_file(path).classes == expected


def test_vocabulary_file_errors_name_the_file(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("# nothing\n\n")
    with pytest.raises(ValueError, match=r"classes\.txt.*no classes"):
        Vocabulary.from_file(path)
    path.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ValueError, match=r"cannot read vocabulary file .*classes\.txt"):
        Vocabulary.from_file(path)


def test_inline_syntax_round_trips():
    v = Vocabulary.parse("cat, sofa|couch; sky")
    assert Vocabulary.parse(v.to_text()) == v


# ----------------------------------------------------------------------------- persistent text cache
_CACHE_PROBE = """
import json, sys
from maskadapter import Predictor
p = Predictor.from_checkpoint(sys.argv[1], sys.argv[2], precision="fp32")
r = p.predict(sys.argv[3], "cat, sofa|couch, sky, road", tasks=["semantic"])
print(json.dumps({"encoded": p.text_classifier.encoded_prompts, "text_s": r.timings["text"]}))
"""


def _probe(tiny, env):
    proc = subprocess.run([sys.executable, "-c", _CACHE_PROBE, str(tiny["weights"]), str(tiny["preset"]),
                           str(tiny["image"])], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def test_a_second_process_makes_zero_text_encoder_calls(tiny, tmp_path):
    env = dict(os.environ, MASKADAPTER_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    first, _ = _probe(tiny, env)
    second, _ = _probe(tiny, env)
    assert first["encoded"] == 5 * 14 and second["encoded"] == 0  # 5 synonyms x 14 templates, then none
    files = list((tmp_path / "cache" / "text").glob("*.safetensors"))
    assert len(files) == 1
    # a corrupt cache file is ignored with a warning and rewritten, never trusted
    files[0].write_bytes(b"garbage")
    third, err = _probe(tiny, env)
    assert third["encoded"] == 70 and "ignoring text-embedding cache file" in err
    assert _probe(tiny, env)[0]["encoded"] == 0
    # the environment variable moves the cache
    env["MASKADAPTER_TEXT_CACHE"] = str(tmp_path / "elsewhere")
    assert _probe(tiny, env)[0]["encoded"] == 70 and list((tmp_path / "elsewhere").glob("*.safetensors"))


def test_a_foreign_cache_file_is_not_trusted(tiny_model, tmp_path, caplog):
    first = TextClassifier(tiny_model.backbone, cache_dir=tmp_path)
    emb = first("cat, dog")
    path = next(tmp_path.glob("*.safetensors"))
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    save_file({"text": tensors["text"] * 0}, str(path), metadata={"format": "1", "synonyms": '["cat", "dog"]'})
    second = TextClassifier(tiny_model.backbone, cache_dir=tmp_path)
    torch.testing.assert_close(second("cat, dog"), emb)
    assert second.encoded_prompts == 28 and "another model" in caplog.text


def test_text_cache_off_and_fingerprint_computed_once(tiny, tmp_path, monkeypatch):
    p = Predictor.from_checkpoint(tiny["weights"], tiny["preset"], precision="fp32", text_cache_dir=False)
    assert p.text_classifier.cache_dir is None
    calls = []
    backbone = p.model.backbone
    original = backbone.text_tensors
    monkeypatch.setattr(backbone, "text_tensors", lambda: calls.append(1) or original())
    before = backbone.text_fingerprint()
    for _ in range(3):
        p.predict(tiny["image"], "cat, dog", tasks=["semantic"])
    assert backbone.text_fingerprint() == before
    # the cache key checks tensor versions (cheap) every call but hashes the weights only once
    hashed = len(calls)
    with torch.no_grad():
        backbone.clip_model.ln_final.weight.add_(1.0)  # new weights: new fingerprint
    assert backbone.text_fingerprint() != before and len(calls) == hashed + 1
    assert not (Path(os.environ["MASKADAPTER_CACHE"]) / "text").exists()


# ----------------------------------------------------------------------------- offline hub
def test_offline_fails_fast_without_retries(monkeypatch):
    import socket

    import huggingface_hub

    calls = []

    def download(*args, **kwargs):
        calls.append(kwargs.get("local_files_only", False))
        raise huggingface_hub.errors.LocalEntryNotFoundError("not cached")

    def unresolvable(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    monkeypatch.setattr(socket, "getaddrinfo", unresolvable)
    start = time.perf_counter()
    with pytest.raises(maskadapter.WeightsUnavailableError) as info:
        resolve_weights(get_preset("maftp-base"))
    assert time.perf_counter() - start < 2 and calls == [True]  # only the cache was looked at
    message = str(info.value)
    assert "maftp_convnext_base_maskadapter.pth" in message and "--weights" in message and "https://" in message
    assert "cannot resolve huggingface.co" in message
    # the file's own address (curl gets the file), not the hub's web page about it (curl would get HTML)
    assert "https://huggingface.co/owl10/Mask-Adapter/resolve/main/maftp_convnext_base_maskadapter.pth" in message
    assert "/blob/" not in message


def test_hf_hub_offline_and_cached_files(monkeypatch, tmp_path):
    import huggingface_hub
    from huggingface_hub import constants

    cached = tmp_path / "weights.pth"
    cached.write_bytes(b"x")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda *a, **k: str(cached) if k.get("local_files_only") else pytest.fail("network used"))
    assert resolve_weights(get_preset("fcclip-large")) == cached
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: (_ for _ in ()).throw(OSError("x")))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(maskadapter.WeightsUnavailableError, match="HF_HUB_OFFLINE"):
        resolve_weights(get_preset("fcclip-large"))


def test_cli_offline_prints_each_line_once(tiny, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    proc = subprocess.run([sys.executable, "-m", "maskadapter", "segment", str(tiny["image"]), "--vocab", "cat",
                           "-o", str(tmp_path / "out")], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == len(set(lines)) and any("fcclip_convnext_large_maskadapter.pth" in line for line in lines)


# ----------------------------------------------------------------------------- one API
def test_predictor_accepts_what_preset_accepts(tiny):
    by_file = Predictor.from_checkpoint(tiny["weights"], str(tiny["preset"]), precision="fp32", text_cache_dir=False)
    assert by_file.preset.name == "tiny-fcclip-large"
    with pytest.raises(FileNotFoundError, match="preset file not found"):
        Predictor.from_checkpoint(tiny["weights"], str(tiny["root"] / "missing.json"))
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        Predictor.from_checkpoint(tiny["weights"], "nope")


def test_timings_describe_the_last_call_and_read_only_arrays_are_silent(tiny):
    p = Predictor.from_checkpoint(tiny["weights"], tiny["preset"], precision="fp32", text_cache_dir=False)
    image = np.asarray(Image.open(tiny["image"]))
    assert not image.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = p.predict(image, "cat, dog", tasks=["semantic"])
        assert {"preprocess", "text", "backbone", "generator", "adapter", "postprocess"} <= set(result.timings)
        masks = np.zeros((2, 48, 64), bool)
        masks[0, :24] = masks[1, 24:] = True
        masks.setflags(write=False)
        classified = p.classify_masks(image, masks, "cat, dog")
    assert set(classified.timings) == {"preprocess", "text", "adapter", "postprocess"}  # this call's stages only


def test_with_options_shares_the_model_and_leaves_the_original_alone(tiny):
    p = Predictor.from_checkpoint(tiny["weights"], tiny["preset"], precision="fp32", text_cache_dir=False)
    q = p.with_options(precision="bf16", max_output_pixels=1000)
    assert q.model is p.model and q.text_classifier is p.text_classifier
    assert (p.options.precision, q.options.precision) == ("fp32", "bf16") and p.options.max_output_pixels is None
    with pytest.raises(TypeError, match="unknown inference option"):
        p.with_options(colour="red")
    with pytest.raises(ValueError, match="precision must be one of"):
        p.with_options(precision="fp64")


# ----------------------------------------------------------------------------- small frictions
def test_instances_repr_is_a_summary_not_the_rle_data():
    from maskadapter.inference.instances import Instances

    masks = torch.zeros(30, 400, 600, dtype=torch.bool)
    for k in range(30):
        masks[k, 10 * k:10 * k + 90, ::3] = True  # striped: long RLE strings
    inst = Instances.from_masks(masks, torch.linspace(0.2, 0.9, 30), torch.arange(30) % 3)
    text = repr(inst)
    assert len(text) < 200 and inst.rles[0]["counts"][:20] not in text
    assert text.startswith("Instances(30 masks of 400x600") and "0: 10, 1: 10, 2: 10" in text
    assert "Instances(0 masks" in repr(Instances.from_masks(torch.zeros(0, 4, 4, dtype=torch.bool), torch.zeros(0),
                                                            torch.zeros(0, dtype=torch.long)))


def test_training_runs_folder_is_ignored_by_git(tmp_path):
    # the README's training commands write runs/ in the clone
    if not (REPO / ".git").exists():
        pytest.skip("not a git clone")
    proc = subprocess.run(["git", "-C", str(REPO), "check-ignore", "-q", "runs/syn/last.pt"], timeout=60)
    assert proc.returncode == 0


def test_checkpoint_errors_read_as_one_line_without_stray_colons(tiny, tmp_path):
    from maskadapter.checkpoint import read_state_dict
    from maskadapter.cli import _one_line
    from maskadapter.errors import CheckpointError

    state = read_state_dict(tiny["weights"])
    partial = tmp_path / "partial.pth"
    torch.save({"model": {k: v for k, v in state.items() if ".predictor." not in k}}, partial)
    with pytest.raises(CheckpointError) as info:
        Predictor.from_checkpoint(partial, tiny["preset"], precision="fp32", text_cache_dir=False)
    line = _one_line(info.value)
    assert "\n" not in line and "does not fit preset" in line and "missing keys" in line
    assert ":;" not in line and ": ;" not in line, line
    assert _one_line(ValueError("a:\n  b\n\n c")) == "a: b; c"


def test_a_failed_image_is_reported_once(tiny, tmp_path, capsys):
    # "error: x: ..." as it failed, then "failed: x: ..." in the summary: the same line twice
    from maskadapter.cli import main

    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    code = main(["segment", str(tiny["image"]), str(bad), "--preset", str(tiny["preset"]), "--weights",
                 str(tiny["weights"]), "--vocab", "cat, dog", "-o", str(tmp_path / "out"), "--quiet",
                 "--device", "cpu", "--precision", "fp32", "--no-text-cache"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("cannot identify image file") == 1, err
    assert "1 of 2 images failed" in err


def test_skipped_browser_tests_are_named_in_the_summary(tmp_path):
    # without chromium the demo's browser tests skipped silently, among hundreds of passes
    import shutil

    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_page.py").write_text(
        "import pytest\n\n@pytest.mark.browser\ndef test_page():\n"
        "    pytest.skip('chromium is not installed (apt-get install chromium)')\n\ndef test_other():\n    pass\n")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore",
                           str(tmp_path / "test_page.py")], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "browser tests skipped" in proc.stdout
    assert "1 browser test(s) of the demo did not run: chromium is not installed" in proc.stdout


def test_readme_documents_the_cpu_only_install():
    # a plain pip install on a CPU-only box pulled the CUDA build of torch (5.2 GB)
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    cpu = readme.index("pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu")
    assert cpu < readme.index('pip install ".[demo]"', cpu)  # torch first, then the package
    assert "/blob/" not in readme and "huggingface.co/owl10/Mask-Adapter/resolve/main/" in readme

"""A resumed batch run never mixes results: outputs are verified by size and SHA-256, the run fingerprint covers
everything that changes an output (and every weight byte), damaged records and manifests are handled, and
temporary files of killed writers are removed."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from maskadapter import fingerprint
from maskadapter.fingerprint import cached_sha256, sha256_file
from maskadapter.inference import formats
from maskadapter.inference.batch import BatchOptions, run_batch
from maskadapter.inference.inputs import collect_inputs
from maskadapter.inference.options import InferenceOptions
from maskadapter.inference.predictor import Predictor
from maskadapter.inference.runstore import config_differences, merge_outputs, run_config
from maskadapter.presets import get_preset
from maskadapter.vocabulary import Vocabulary

from conftest import count_model_calls, save_random_photo, write_tiny_checkpoint

VOCAB = "cat, sofa|couch, sky"
OPTIONS = BatchOptions(workers=0, progress=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    preset_file, weights = write_tiny_checkpoint(root)
    images = root / "images"
    images.mkdir()
    for i, name in enumerate("abc"):
        save_random_photo(images / f"{name}.png", 30 + 2 * i, 40, i)
    predictor = Predictor.from_checkpoint(weights, str(preset_file), precision="fp32", text_cache_dir=False)
    return SimpleNamespace(root=root, preset=preset_file, weights=weights, images=images, predictor=predictor,
                           items=collect_inputs([str(images)]).items)


def test_a_damaged_output_is_found_by_merge_and_recomputed_by_resume(tiny, tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert run_batch(tiny.predictor, tiny.items, VOCAB, out, OPTIONS).computed == 3
    record = json.loads((out / "records" / "a.json").read_text())
    assert record["outputs"]["a_labels.png"] == {"size": (out / "a_labels.png").stat().st_size,
                                                 "sha256": sha256_file(out / "a_labels.png")}
    labels = (out / "a_labels.png").read_bytes()
    (out / "a_labels.png").write_bytes(labels[: len(labels) // 2])  # truncated by a full disk or a kill
    text = (out / "b.json").read_text()
    (out / "b.json").write_text(text.replace('"height"', '"heighT"'))  # same size, other content
    report = merge_outputs(out, progress=False)
    assert (report.ok, report.missing) == (1, 2)
    calls = count_model_calls(monkeypatch)
    report = run_batch(tiny.predictor, tiny.items, VOCAB, out, OPTIONS)
    assert report.computed == 2 and len(calls) == 2 and report.ok == 3
    assert (out / "a_labels.png").read_bytes() == labels and (out / "b.json").read_text() == text


def test_a_record_without_fields_is_recomputed_and_a_damaged_manifest_is_one_error(tiny, tmp_path, caplog):
    out = tmp_path / "out"
    run_batch(tiny.predictor, tiny.items, VOCAB, out, OPTIONS)
    record = json.loads((out / "records" / "c.json").read_text())
    del record["height"]
    (out / "records" / "c.json").write_text(json.dumps(record))
    (out / "records" / "b.json").write_text("{not json")
    with caplog.at_level(logging.WARNING):
        report = run_batch(tiny.predictor, tiny.items, VOCAB, out, OPTIONS)
    assert report.computed == 2 and report.ok == 3
    assert "records/c.json is damaged ('height' missing" in caplog.text and "b.json is unreadable" in caplog.text

    (out / "manifest.json").write_text(json.dumps({"config": "x"}))
    with pytest.raises(ValueError, match="is not a batch-run manifest .*pass --overwrite"):
        run_batch(tiny.predictor, tiny.items, VOCAB, out, OPTIONS)
    with pytest.raises(ValueError, match="is not a batch-run manifest"):
        merge_outputs(out, progress=False)
    (out / "manifest.json").write_text("[1, 2")
    with pytest.raises(ValueError, match="unreadable"):
        merge_outputs(out, progress=False)
    assert run_batch(tiny.predictor, tiny.items, VOCAB, out, dataclasses.replace(OPTIONS, overwrite=True)).ok == 3


def test_every_weight_byte_counts_and_file_hashes_are_remembered(tiny, tmp_path, monkeypatch):
    state = torch.load(tiny.weights, weights_only=True)["model"]
    name = max(state, key=lambda k: state[k].numel())
    changed = {k: v.clone() for k, v in state.items()}
    changed[name].reshape(-1)[state[name].numel() // 2] += 1.0  # far from the first and last values
    other = tmp_path / "other.pth"
    torch.save({"model": changed}, other)
    second = Predictor.from_checkpoint(other, str(tiny.preset), precision="fp32", text_cache_dir=False)
    assert second.model.weights_fingerprint() != tiny.predictor.model.weights_fingerprint()

    out = tmp_path / "out"
    run_batch(tiny.predictor, tiny.items, VOCAB, out, OPTIONS)
    with pytest.raises(ValueError, match=r"differs in weights\.model\); pass --overwrite"):
        run_batch(second, tiny.items, VOCAB, out, OPTIONS)
    report = run_batch(second, tiny.items, VOCAB, out, dataclasses.replace(OPTIONS, overwrite=True))
    assert report.computed == 3

    reads = []
    real = fingerprint.sha256_file
    monkeypatch.setattr(fingerprint, "sha256_file", lambda p: reads.append(p) or real(p))
    cache = tmp_path / "cache"
    digest = cached_sha256(other, cache)
    assert cached_sha256(other, cache) == digest == real(other) and len(reads) == 1  # read once
    os.utime(other, ns=(1, 1))  # another version of the file: read again
    assert cached_sha256(other, cache) == digest and len(reads) == 2


def test_the_fingerprint_covers_preset_precision_options_generator_format_and_tasks(tiny):
    class Generator:
        def __init__(self, points_per_side: int) -> None:
            self.points_per_side = points_per_side
            self.net = torch.nn.Linear(2, 2)

    base = SimpleNamespace(preset=get_preset("fcclip-large"), options=InferenceOptions(), resolved_precision="fp32",
                           model=tiny.predictor.model, mask_generator=None)
    vocab, things = Vocabulary.parse(VOCAB), [True, False, False]
    files = formats.create("files")

    def config(**changes):
        predictor = SimpleNamespace(**{**vars(base), **changes.pop("predictor", {})})
        return run_config(changes.get("fmt", files), changes.get("tasks", ["semantic"]), predictor, vocab, things)

    first = config()
    assert config() == first
    torch.manual_seed(0)
    generator = Generator(32)
    cases = {
        "preset.object_mask_threshold": config(predictor={"preset": dataclasses.replace(
            base.preset, object_mask_threshold=0.1)}),
        "precision": config(predictor={"resolved_precision": "bf16"}),
        "options.band_mb": config(predictor={"options": InferenceOptions(band_mb=1)}),
        "options.max_output_pixels": config(predictor={"options": InferenceOptions(max_output_pixels=1000)}),
        "format.overlays": config(fmt=formats.create("files", overlays=False)),
        "tasks": config(tasks=["semantic", "instance"]),
    }
    for name, other in cases.items():
        assert name in config_differences(first, other), name
    with_generator = config(predictor={"mask_generator": generator})
    assert "generator" in config_differences(first, with_generator)
    generator.points_per_side = 16
    assert "generator.settings.points_per_side" in config_differences(with_generator, config(
        predictor={"mask_generator": generator}))
    generator.points_per_side = 32
    with torch.no_grad():
        generator.net.weight[0, 0] += 1
    assert config_differences(with_generator, config(predictor={"mask_generator": generator})) == [
        "weights.generator"]
    files_config = run_config(files, ["semantic"], base, vocab, things, weight_files=[tiny.weights])
    assert files_config["weights"] == {"files": [["tiny.pth", sha256_file(tiny.weights)]]}


def test_temporary_files_of_dead_writers_are_removed_at_the_start(tiny, tmp_path):
    out = tmp_path / "out"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = out / "sub" / f".a_labels.tmp-{dead_pid}-0123abcd.png"
    live = out / f".b.tmp-{os.getpid()}-0123abcd.json"
    for path in (stale, live):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    run_batch(tiny.predictor, tiny.items, VOCAB, out, OPTIONS)
    assert not stale.exists() and live.exists()

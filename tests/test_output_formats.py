"""Output formats are objects: a format defined in this file alone runs batch segmentation, resumes and merges,
with no edit to the package; a format that fails on one image never stops the run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import pytest

from maskadapter.fileio import atomic_write_text
from maskadapter.inference import formats
from maskadapter.inference.batch import BatchOptions, run_batch
from maskadapter.inference.formats import DoneImage, ImageOutput, OutputFormat
from maskadapter.inference.inputs import collect_inputs
from maskadapter.inference.predictor import Predictor
from maskadapter.inference.runstore import merge_outputs

from conftest import count_model_calls, save_random_photo, write_tiny_checkpoint

VOCAB = "cat, sofa|couch, sky"


class TextFormat:
    """One text file per image (its size and top class) and a list of all images at the end."""

    name = "text"
    needs_image = False

    def __init__(self, fail_on: str = "") -> None:
        self.fail_on = fail_on

    def describe(self) -> dict:
        return {"name": self.name}

    def paths(self, key: str) -> dict[str, str]:
        return {"text": f"text/{key}.txt"}

    def write(self, folder: Path, image: ImageOutput) -> dict:
        if image.key == self.fail_on:
            raise OSError("disk full (simulated)")
        H, W = image.result.image_size
        atomic_write_text(folder / self.paths(image.key)["text"], f"{image.name} {W}x{H}\n")
        return {"text_lines": 1}

    def finish(self, folder: Path, head: dict, images: Iterable[DoneImage]) -> list[str]:
        names = [f"{done.image_id} {done.name} {done.record['text_lines']}" for done in images]
        atomic_write_text(folder / "all.txt", "\n".join(names) + "\n")
        return ["all.txt"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("formats")
    preset_file, weights = write_tiny_checkpoint(root)
    images = root / "images"
    images.mkdir()
    for i, (h, w) in enumerate([(30, 40), (40, 30), (36, 36)]):
        save_random_photo(images / f"im{i}.png", h, w, i)
    predictor = Predictor.from_checkpoint(weights, str(preset_file), precision="fp32", text_cache_dir=False)
    return predictor, images


def test_a_format_defined_in_a_test_runs_resumes_and_merges(tiny, tmp_path, monkeypatch):
    predictor, images = tiny
    assert isinstance(TextFormat(), OutputFormat) and "text" not in formats.NAMES
    items = collect_inputs([str(images)]).items
    out = tmp_path / "out"
    options = BatchOptions(format=TextFormat(), workers=0, progress=False)
    report = run_batch(predictor, items, VOCAB, out, options)
    assert (report.total, report.ok, report.computed) == (3, 3, 3) and report.files == ["all.txt", "manifest.json"]
    assert (out / "text" / "im0.txt").read_text() == "im0.png 40x30\n"
    assert (out / "all.txt").read_text().splitlines() == ["1 im0.png 1", "2 im1.png 1", "3 im2.png 1"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["format"] == {"name": "text"} and manifest["layout"] == {"text": "text/{key}.txt"}

    calls = count_model_calls(monkeypatch)
    (out / "text" / "im1.txt").write_text("edited\n")  # an output changed since: segmented again
    report = run_batch(predictor, items, VOCAB, out, options)
    assert report.computed == 1 and len(calls) == 1 and (out / "text" / "im1.txt").read_text() == "im1.png 30x40\n"
    (out / "all.txt").unlink()
    assert merge_outputs(out, progress=False, format=TextFormat()).ok == 3 and (out / "all.txt").is_file()
    with pytest.raises(ValueError, match="not a built-in one"):
        merge_outputs(out, progress=False)


def test_one_failing_image_never_stops_the_run(tiny, tmp_path, monkeypatch):
    predictor, images = tiny
    items = collect_inputs([str(images)]).items
    out = tmp_path / "out"
    messages: list[str] = []
    report = run_batch(predictor, items, VOCAB, out, BatchOptions(format=TextFormat(fail_on="im0"), workers=0,
                                                                  progress=False), on_message=messages.append)
    assert (report.ok, report.failed) == (2, 1) and "disk full (simulated)" in messages[0]
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"

    from maskadapter.inference import runstore

    def unwritable(*args, **kwargs):
        raise OSError("File name too long (simulated)")

    monkeypatch.setattr(runstore.RunStore, "write_error", unwritable)  # not even its error record is written
    messages.clear()
    out2 = tmp_path / "out2"
    report = run_batch(predictor, items, VOCAB, out2, BatchOptions(format=TextFormat(fail_on="im0"), workers=0,
                                                                   progress=False), on_message=messages.append)
    assert (report.ok, report.failed, report.missing) == (2, 0, 1)
    assert json.loads((out2 / "manifest.json").read_text())["status"] == "incomplete"
    assert any("cannot be written either" in m for m in messages)


def test_a_format_whose_files_share_a_name_is_refused(tiny, tmp_path):
    predictor, images = tiny

    class Clashing(TextFormat):
        def paths(self, key: str) -> dict[str, str]:
            return {"a": f"{key}.txt", "b": f"{key}.txt"}

    items = collect_inputs([str(images)]).items
    with pytest.raises(ValueError, match="one name"):
        run_batch(predictor, items, VOCAB, tmp_path / "out", BatchOptions(format=Clashing(), progress=False))
    assert not (tmp_path / "out").exists()

"""Growth without package edits: a mask source and an output format, both defined in this file alone, run batch
segmentation (the engine of ``maskadapter segment``) together; a second run resumes from the toy format's files."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch

from maskadapter.fileio import atomic_write_text
from maskadapter.inference.batch import BatchOptions, run_batch
from maskadapter.inference.formats import DoneImage, ImageOutput
from maskadapter.inference.inputs import collect_inputs
from maskadapter.inference.predictor import Predictor
from maskadapter.modeling.generators.source import MaskOutput, SourceInput

from conftest import save_random_photo, tiny_preset

VOCAB = "sky, road, car"


def quadrants(h: int, w: int) -> torch.Tensor:
    """[4, H, W] bool: the four quadrants of an image."""
    quads = torch.zeros((4, h, w), dtype=torch.bool)
    quads[0, : h // 2, : w // 2] = quads[1, : h // 2, w // 2:] = True
    quads[2, h // 2:, : w // 2] = quads[3, h // 2:, w // 2:] = True
    return quads


class Quadrants:
    """A mask source: the four quadrants of each image, at the image's own size."""

    needs_rgb = False

    def __init__(self) -> None:
        self.images = 0

    def describe(self) -> dict:
        """What changes the masks (none here): the run store fingerprints this, not the image counter."""
        return {}

    def propose(self, inputs: SourceInput) -> MaskOutput:
        self.images += len(inputs.input_sizes)
        return MaskOutput([quadrants(h, w) for h, w in inputs.input_sizes])


class ClassListFormat:
    """An output format: one line per image naming the class of each quadrant, and an index at the end."""

    name = "classlist"
    needs_image = False

    def describe(self) -> dict:
        return {"name": self.name}

    def paths(self, key: str) -> dict[str, str]:
        return {"classes": f"{key}.classes.txt"}

    def write(self, folder: Path, image: ImageOutput) -> dict:
        result = image.result
        names = [result.class_names[s["category_id"]] for s in result.segments]
        atomic_write_text(folder / self.paths(image.key)["classes"], " ".join(names) + "\n")
        return {"segments": len(names)}

    def finish(self, folder: Path, head: dict, images: Iterable[DoneImage]) -> list[str]:
        lines = [f"{done.name}: {done.record['segments']}" for done in images]
        atomic_write_text(folder / "index.txt", "\n".join(lines) + "\n")
        return ["index.txt"]


def test_a_toy_mask_source_and_a_toy_format_run_segmentation_together(tiny_fcclip, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i, (h, w) in enumerate([(40, 60), (50, 50)]):
        save_random_photo(images / f"photo{i}.png", h, w, i)
    source = Quadrants()
    predictor = Predictor(tiny_fcclip, tiny_preset(), precision="fp32", text_cache_dir=False).with_mask_source(source)
    items = collect_inputs([str(images)]).items
    options = BatchOptions(("semantic", "panoptic"), format=ClassListFormat(), workers=0, progress=False)

    report = run_batch(predictor, items, VOCAB, tmp_path / "out", options)
    assert (report.total, report.ok, report.failed) == (2, 2, 0) and source.images == 2
    index = []
    for i, (h, w) in enumerate([(40, 60), (50, 50)]):
        named = (tmp_path / "out" / f"photo{i}.classes.txt").read_text().split()
        # each quadrant is one proposal, named by the adapter alone (panoptic merges stuff of one class)
        expected = predictor.classify_masks(images / f"photo{i}.png", quadrants(h, w), VOCAB)
        assert 1 <= len(named) <= 4 and set(named) == {expected.vocabulary.names[c] for c in expected.labels.tolist()}
        index.append(f"photo{i}.png: {len(named)}")
    assert (tmp_path / "out" / "index.txt").read_text().splitlines() == index

    again = run_batch(predictor, items, VOCAB, tmp_path / "out", options)
    assert (again.ok, again.computed) == (2, 0) and source.images == 2  # resumed from the toy format's files


"""A new mask source is one class: toy sources defined here alone (a fixed grid of rectangles, as proposals and as
a decoder with class logits) run through Predictor.predict and the batch runner with no edit to the package."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from maskadapter.inference.batch import BatchOptions, run_batch
from maskadapter.inference.inputs import collect_inputs
from maskadapter.inference.predictor import Predictor
from maskadapter.inference.writers import encode_label_map
from maskadapter.modeling.generators.source import MaskOutput, SourceInput

from conftest import random_photo, tiny_preset

VOCAB = "sky, road, car"


def grid(height: int, width: int, rows: int = 2, cols: int = 3) -> torch.Tensor:
    """[rows * cols, H, W] bool: the image cut into a grid of rectangles."""
    masks = torch.zeros((rows * cols, height, width), dtype=torch.bool)
    for r in range(rows):
        for c in range(cols):
            masks[r * cols + c, r * height // rows:(r + 1) * height // rows,
                  c * width // cols:(c + 1) * width // cols] = True
    return masks


class GridProposals:
    """Proposals: the same grid of rectangles at each image's full size (no decoded image needed)."""

    needs_rgb = False

    def __init__(self) -> None:
        self.calls = 0

    def propose(self, inputs: SourceInput) -> MaskOutput:
        self.calls += 1
        return MaskOutput([grid(h, w) for h, w in inputs.input_sizes])


class GridDecoder:
    """A decoder: grid logits (+10 inside, -10 outside) at a quarter of the padded input, uniform class logits."""

    needs_rgb = False

    def propose(self, inputs: SourceInput) -> MaskOutput:
        B, _, Hp, Wp = inputs.images.shape
        logits = torch.where(grid(Hp // 4, Wp // 4), 10.0, -10.0)[None].expand(B, -1, -1, -1)
        classes = torch.zeros((B, logits.shape[1], len(inputs.num_synonyms) + 1))
        return MaskOutput(logits.to(inputs.images.device), classes.to(inputs.images.device))


def photo(seed: int, height: int = 48, width: int = 64) -> np.ndarray:
    return random_photo(height, width, seed)


@pytest.fixture(scope="module")
def model(tiny_fcclip):
    return tiny_fcclip


def test_a_proposal_source_defined_in_a_test_runs_predict(model):
    source = GridProposals()
    predictor = Predictor(model, tiny_preset(), precision="fp32", text_cache_dir=False, mask_source=source)
    image = photo(0)
    result = predictor.predict(image, VOCAB)
    assert source.calls == 1 and predictor.preparer.keep_rgb is False
    named = predictor.classify_masks(image, grid(48, 64), VOCAB)  # the adapter alone names each rectangle
    assert torch.equal(result.semantic, named.semantic)
    assert [s["category_id"] for s in result.segments] == named.labels.tolist()
    assert [s["area"] for s in result.segments] == grid(48, 64).flatten(1).sum(1).tolist()
    assert len(result.instances.rles) == 6 and torch.allclose(result.instances.scores, named.scores)
    assert {"backbone", "generator", "adapter", "postprocess"} <= set(result.timings)


def test_a_decoder_source_defined_in_a_test_is_ensembled(model):
    predictor = Predictor(model, tiny_preset(), precision="fp32", text_cache_dir=False, mask_source=GridDecoder())
    result = predictor.predict(photo(1), VOCAB, tasks=("semantic", "panoptic"))
    assert result.semantic.shape == (48, 64) and bool((result.semantic >= 0).all())
    # each rectangle is one class: labels are constant inside the grid cells away from their borders
    for r in range(2):
        for c in range(3):
            cell = result.semantic[r * 24 + 3:(r + 1) * 24 - 3, c * 21 + 3:(c + 1) * 21 - 3]
            assert cell.unique().numel() == 1


def test_the_batch_runner_takes_a_source_defined_in_a_test(model, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    images = {f"p{i}": photo(i, 40 + 8 * i, 64) for i in range(3)}
    for name, array in images.items():
        Image.fromarray(array).save(folder / f"{name}.png")
    source = GridProposals()
    predictor = Predictor(model, tiny_preset(), precision="fp32", text_cache_dir=False, mask_source=source)
    items = collect_inputs([str(folder)]).items
    report = run_batch(predictor, items, VOCAB, tmp_path / "out", BatchOptions(workers=0, progress=False))
    assert report.ok == 3 and report.failed == 0 and source.calls == 3
    for name, array in images.items():
        labels = np.array(Image.open(tmp_path / "out" / f"{name}_labels.png"))
        expected = predictor.predict(array, VOCAB, tasks=("semantic",)).semantic
        assert np.array_equal(labels, encode_label_map(expected, 3))


def test_a_source_must_have_the_protocol(model):
    with pytest.raises(TypeError, match="mask_source must be a MaskSource"):
        Predictor(model, tiny_preset(), text_cache_dir=False, mask_source=42)


def test_a_proposer_runs_outside_the_predictors_autocast(model):
    """A plain callable is wrapped as a proposal source; like SAM before, it runs in its own precision even when
    the predictor runs the backbone and the adapter in bf16."""
    states = []

    def proposer(rgb: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        states.append(torch.is_autocast_enabled("cpu"))
        return grid(*rgb.shape[:2]), torch.full((6,), 0.5)

    predictor = Predictor(model, tiny_preset(), precision="bf16", text_cache_dir=False, mask_source=proposer)
    assert predictor.preparer.keep_rgb is True
    result = predictor.predict(photo(2), VOCAB, tasks=("instance",))
    assert states == [False] and len(result.instances.rles) == 6
    assert bool((result.instances.scores <= 0.5).all())  # instance scores carry the proposer's quality

"""MaskAdapterHead's fast path skips the block MLPs where a pixel equals an all-zero or an all-one mask's:
the skipped pixels are exactly those no mask edge can reach, results meet the reference, work really drops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import maskadapter.modeling.head as head_module
import maskadapter.modeling.layers as layers
from maskadapter import MaskAdapterHead, load_part
from maskadapter.modeling.head import block_reach

from official_layout import fabricated_state
from test_head import official_formula, rel_err

D, C = 24, 32
GRID = (14, 17)  # CLIP grid h x w; masks at 4x that
MASK = (4 * GRID[0], 4 * GRID[1])


@pytest.fixture(scope="module")
def head() -> MaskAdapterHead:
    h = MaskAdapterHead(D, num_channels=C)
    load_part(h, fabricated_state(D, C), "mask_adapter")
    return h.eval()


def object_masks(batch: int = 2) -> torch.Tensor:
    """[batch, 9, 56, 68] float masks: empty, full, blobs inside / touching borders / corners, a large blob with
    an interior, a single pixel, a soft blob and a thin stripe."""
    m = torch.zeros(batch, 9, *MASK)
    m[:, 1] = 1
    m[:, 2, 20:28, 30:40] = 1
    m[:, 3, 0:10, 50:68] = 1
    m[:, 4, 44:56, 0:6] = 1
    m[:, 5, 4:52, 6:60] = 1
    m[:, 6, 30, 33] = 1
    m[:, 7, 10:30, 10:30] = 0.4
    m[:, 8, :, 33] = 1
    if batch > 1:
        m[1] = m[1].roll(7, dims=-1)  # other positions in the second image
    return m


def count_mlp_rows(monkeypatch) -> list[int]:
    """Rows that each block-MLP call of the head runs, appended to the returned list."""
    rows: list[int] = []
    inner = layers._mlp_rows_into

    def counted(flat, *args):
        rows.append(flat.shape[0])
        return inner(flat, *args)
    monkeypatch.setattr(layers, "_mlp_rows_into", counted)
    return rows


@pytest.mark.numeric
@pytest.mark.parametrize("dtype", [torch.float32, torch.bool])
@pytest.mark.parametrize("chunk", [2, None])
def test_skipping_meets_the_official_formula_and_runs_fewer_rows(head, monkeypatch, dtype, chunk):
    torch.manual_seed(0)
    clip = torch.randn(2, D, *GRID)
    masks = object_masks()
    if dtype == torch.bool:
        masks = masks > 0  # the soft blob stays a distinct mask
    expected = official_formula(fabricated_state(D, C), clip, masks.float())
    rows = count_mlp_rows(monkeypatch)
    with torch.no_grad():
        padded = head(clip, masks, chunk_size=chunk)  # row counts padded to a multiple of 256
        monkeypatch.setattr(layers, "_ROW_BUCKET", 1)
        rows.clear()
        fast = head(clip, masks, chunk_size=chunk)
        skipping = sum(rows)
        monkeypatch.setattr(head_module, "_SKIP_MARGIN", float("inf"))
        rows.clear()
        dense = head(clip, masks, chunk_size=chunk)
    assert rel_err(fast, expected) < 1e-5
    assert rel_err(fast, dense) < 1e-6 and rel_err(padded, fast) < 1e-6
    assert sum(rows) == 2 * 9 * GRID[0] * GRID[1] * 3  # the dense path runs every pixel of every block
    assert skipping < 0.8 * sum(rows)  # with the two constant masks per image (a third of what is run here)


def test_reach_is_exactly_where_a_pixel_changes_the_output(head):
    """A one-pixel change to an all-zero (or all-one) mask changes the output exactly on the last block's
    reach: nowhere else (so skipping is safe) and everywhere there (so the reach is not wider than needed)."""
    torch.manual_seed(1)
    clip = torch.randn(1, D, *GRID)
    sd = fabricated_state(D, C)
    for fill in (0.0, 1.0):
        masks = torch.full((1, 5, *MASK), fill)
        for i, (y, x) in enumerate([(0, 0), (27, 33), (55, 67), (0, 40), (30, 1)]):
            masks[0, i, y, x] = 1 - fill
        base = official_formula(sd, clip, torch.full((1, 1, *MASK), fill)).view(1, 16, *GRID)
        out = official_formula(sd, clip, masks).view(5, 16, *GRID)
        changed = (out - base).abs().amax(1) > 1e-9  # [5, h, w]
        resized = F.interpolate(masks.view(5, 1, *MASK), size=MASK, mode="bilinear", align_corners=False)
        reach = block_reach(resized != fill, num_blocks=3)[-1]
        assert torch.equal(changed, reach), fill
        assert 0 < int(reach.sum()) < reach.numel()


def test_skipping_only_where_it_pays_and_never_under_autograd(head, monkeypatch):
    """The two constant masks per image cost more than they save for a handful of masks or for masks speckled
    over the whole image: those run dense, without them. Training needs the whole graph."""
    torch.manual_seed(2)
    clip = torch.randn(1, D, *GRID)
    dense_rows = GRID[0] * GRID[1]
    rows = count_mlp_rows(monkeypatch)
    with torch.no_grad():
        head(clip, object_masks(1)[:, 2:5])
        assert rows == [3 * dense_rows] * 3
        rows.clear()
        head(clip, torch.rand(1, 12, *MASK) > 0.5)
        assert rows == [12 * dense_rows] * 3
        rows.clear()
        head(clip, object_masks(1))
        assert sum(rows) < 9 * dense_rows * 3
    rows.clear()
    clip.requires_grad_(True)
    head(clip, object_masks(1)).sum().backward()
    assert rows == [] and clip.grad is not None  # autograd takes the block's untiled branch, whole rows


def test_bf16_autocast_skipping_stays_close(head):
    torch.manual_seed(3)
    clip = torch.randn(2, D, *GRID)
    masks = object_masks() > 0.5
    with torch.no_grad():
        ref = head(clip, masks, path="reference")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = head(clip, masks)
    assert fast.dtype in (torch.bfloat16, torch.float32)
    assert rel_err(fast.float(), ref) < 5e-2

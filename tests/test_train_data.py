"""Training data: LSJ (detectron2 geometry), COCO readers, GT-mask sampling, collation, synthetic shapes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from maskadapter.data.synthetic import SyntheticShapes
from maskadapter.data.train_datasets import (CocoPanopticTrain, CocoStuffTrain, collate_masks, sample_generator,
                                             sample_gt_masks)
from maskadapter.data.transforms import (LargeScaleJitter, fixed_size_crop_offset, nearest_indices,
                                         resize_scale_shape)
from maskadapter.data.vocabularies import builtin_vocabulary


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _random_sample(h: int, w: int, seed: int = 0, n: int = 3) -> dict:
    g = _gen(seed)
    image = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
    label_map = torch.randint(0, n, (h, w), generator=g)
    masks = label_map[None] == torch.arange(n)[:, None, None]
    return {"image": image, "masks": masks, "labels": torch.arange(n) + 10, "file_name": "x.jpg"}


# ---------------------------------------------------------------------------------------------- geometry
def test_resize_scale_and_crop_geometry_hand_computed():
    # 480x640 into a 768 box: scale min(768/480, 768/640) = 1.2.
    assert resize_scale_shape(480, 640, 768, 1.0) == (576, 768)
    # scale 2: box 1536, min(3.2, 2.4) = 2.4.
    assert resize_scale_shape(480, 640, 768, 2.0) == (1152, 1536)
    # scale 0.1: box 76.8, factor 0.12 -> 57.6 -> 58, 76.8 -> 77.
    assert resize_scale_shape(480, 640, 768, 0.1) == (58, 77)
    # np.round is round-half-to-even: 10 * 0.25 = 2.5 -> 2 (int(x + 0.5) would give 3).
    assert resize_scale_shape(10, 10, 5, 0.5) == (2, 2)
    assert resize_scale_shape(10, 30, 20, 0.5) == (3, 10)  # factor 1/3: 3.33 -> 3, 10
    # A side that rounds to 0 is kept at 1 pixel.
    assert resize_scale_shape(1, 5000, 64, 0.1) == (1, 6)
    # FixedSizeCrop: one draw for both axes, offset = round(max(in - size, 0) * u), half to even.
    assert fixed_size_crop_offset(1152, 1536, 768, 0.5) == (192, 384)
    assert fixed_size_crop_offset(773, 768, 768, 0.5) == (2, 0)  # 2.5 -> 2
    assert fixed_size_crop_offset(771, 700, 768, 0.5) == (2, 0)  # 1.5 -> 2, smaller side: 0
    assert fixed_size_crop_offset(1000, 900, 768, 0.999) == (232, 132)


def test_nearest_indices_match_pil_and_torch_nearest():
    rng = np.random.default_rng(0)
    for h, w, nh, nw in [(7, 5, 13, 3), (480, 640, 58, 77), (33, 17, 66, 34), (100, 101, 257, 99)]:
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ref = np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.NEAREST))
        r, c = nearest_indices(h, nh, "pil").numpy(), nearest_indices(w, nw, "pil").numpy()
        np.testing.assert_array_equal(rgb[r][:, c], ref)
        lab = torch.from_numpy(rng.integers(0, 255, (h, w)).astype(np.float64))
        ref2 = F.interpolate(lab[None, None], (nh, nw), mode="nearest")[0, 0]
        r, c = nearest_indices(h, nh, "torch"), nearest_indices(w, nw, "torch")
        assert torch.equal(lab[r][:, c], ref2)
    # The two conventions really differ (half a pixel), so choosing the mode matters.
    assert not torch.equal(nearest_indices(10, 4, "pil"), nearest_indices(10, 4, "torch"))
    with pytest.raises(ValueError, match="nearest"):
        nearest_indices(4, 4, "bilinear")


def _detectron2_reference(image: np.ndarray, pan_rgb: np.ndarray, sem: np.ndarray, p, size: int):
    """The official mappers' ops spelled out with numpy / PIL / F.interpolate, as detectron2 + fvcore run them."""
    sem = sem.astype("double")  # the semantic mapper's cast
    if p.flip:
        image, pan_rgb, sem = image[:, ::-1], pan_rgb[:, ::-1], sem[:, ::-1]
    nh, nw = p.resized
    image = np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((nw, nh), Image.BILINEAR))
    pan_rgb = np.asarray(Image.fromarray(np.ascontiguousarray(pan_rgb)).resize((nw, nh), Image.NEAREST))
    sem = F.interpolate(torch.from_numpy(np.ascontiguousarray(sem))[None, None], (nh, nw), mode="nearest")[0, 0]
    sem = sem.numpy()
    y0, x0 = p.offset

    def crop_pad(a, value):
        a = a[y0:y0 + size, x0:x0 + size]
        pad = ((0, size - a.shape[0]), (0, size - a.shape[1])) + ((0, 0),) * (a.ndim - 2)
        return np.pad(a, pad, mode="constant", constant_values=value)

    return crop_pad(image, 128), crop_pad(pan_rgb, 255), crop_pad(sem, 255).astype("long")


@pytest.mark.parametrize("seed", range(6))
def test_lsj_matches_detectron2_pipeline(seed):
    rng = np.random.default_rng(seed)
    h, w, size = int(rng.integers(20, 90)), int(rng.integers(20, 90)), 48
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    ids = rng.integers(0, 4, (h // 5 + 1, w // 5 + 1)).repeat(5, 0).repeat(5, 1)[:h, :w] * 300 + 1
    pan_rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
    sem = (ids // 300 * 7).astype(np.uint8)
    sem[:3] = 255
    lsj = LargeScaleJitter(size, scale=(0.3, 1.6))
    p = lsj.get_params(h, w, _gen(seed))
    ref_img, ref_pan, ref_sem = _detectron2_reference(image, pan_rgb, sem, p, size)

    seg_ids = torch.tensor([1, 301, 601, 901])
    sample = {"image": torch.from_numpy(image).permute(2, 0, 1).contiguous(),
              "masks": torch.from_numpy(ids)[None] == seg_ids[:, None, None], "labels": torch.arange(4),
              "sem_seg": torch.from_numpy(sem.astype(np.int64))}
    out = lsj(sample, _gen(seed))
    assert torch.equal(out["image"], torch.from_numpy(ref_img).permute(2, 0, 1))
    ref_ids = torch.from_numpy(ref_pan.astype(np.int64) @ np.array([1, 256, 65536]))
    ref_masks = ref_ids[None] == seg_ids[:, None, None]
    keep = ref_masks.flatten(1).any(1)
    assert torch.equal(out["masks"], ref_masks[keep]) and torch.equal(out["labels"], torch.arange(4)[keep])
    # The semantic (float64) path of detectron2 uses torch's nearest, reproduced by nearest="torch".
    out_t = LargeScaleJitter(size, scale=(0.3, 1.6), nearest="torch")(sample, _gen(seed))
    assert torch.equal(out_t["sem_seg"], torch.from_numpy(ref_sem))
    assert torch.equal(out_t["image"], out["image"])


# ---------------------------------------------------------------------------------------------- LSJ behaviour
def test_lsj_output_size_and_padding_values():
    sample = _random_sample(40, 60)
    sample["sem_seg"] = torch.zeros(40, 60, dtype=torch.long)
    lsj = LargeScaleJitter(64, scale=(0.3, 0.3))
    out = lsj(sample, _gen(0))
    nh, nw = resize_scale_shape(40, 60, 64, 0.3)
    assert (nh, nw) == (13, 19)
    assert out["image"].shape == (3, 64, 64) and out["image"].dtype == torch.uint8
    assert out["masks"].shape[1:] == (64, 64) and out["masks"].dtype == torch.bool
    assert out["sem_seg"].shape == (64, 64)
    assert (out["image"][:, nh:] == 128).all() and (out["image"][:, :, nw:] == 128).all()
    assert (out["sem_seg"][nh:] == 255).all() and (out["sem_seg"][:, nw:] == 255).all()
    assert (out["sem_seg"][:nh, :nw] == 0).all()
    assert not out["masks"][:, nh:].any() and not out["masks"][:, :, nw:].any()
    # Inside the image, the masks still partition the pixels.
    assert (out["masks"][:, :nh, :nw].sum(0) == 1).all()
    assert out["file_name"] == "x.jpg"
    # Other padding values are honoured.
    out2 = LargeScaleJitter(64, scale=(0.3, 0.3), pad_image=7, pad_label=99)(sample, _gen(0))
    assert (out2["image"][:, nh:] == 7).all() and (out2["sem_seg"][nh:] == 99).all()
    # Scale-up: the crop fills the output entirely.
    big = LargeScaleJitter(32, scale=(2.0, 2.0))(sample, _gen(1))
    assert big["image"].shape == (3, 32, 32) and (big["masks"].sum(0) == 1).all()


def test_lsj_flip_is_horizontal_and_applies_to_masks():
    image = torch.zeros(3, 32, 32, dtype=torch.uint8)
    image[0, :, :16] = 255  # red left half
    image[2, :, 16:] = 255  # blue right half
    image[1, :4, :4] = 200  # a marker in the top-left corner
    left = torch.zeros(32, 32, dtype=torch.bool)
    left[:, :16] = True
    sample = {"image": image, "masks": torch.stack([left, ~left]), "labels": torch.tensor([0, 1])}
    lsj = LargeScaleJitter(32, scale=(1.0, 1.0))  # no resize, no crop: only the flip acts
    flips = 0
    for seed in range(40):
        p = lsj.get_params(32, 32, _gen(seed))
        assert p.resized == (32, 32) and p.offset == (0, 0)
        out = lsj(sample, _gen(seed))
        if p.flip:
            flips += 1
            assert torch.equal(out["image"], image.flip(-1))
            assert (out["image"][1, :4, -4:] == 200).all() and (out["image"][0, :, 16:] == 255).all()
            assert torch.equal(out["masks"][0], ~left)
        else:
            assert torch.equal(out["image"], image) and torch.equal(out["masks"][0], left)
    assert 8 <= flips <= 32
    no_flip = LargeScaleJitter(32, scale=(1.0, 1.0), flip=False)
    assert all(torch.equal(no_flip(sample, _gen(s))["image"], image) for s in range(40))


def test_lsj_scale_range_statistics():
    lsj = LargeScaleJitter(100)  # default scale (0.1, 2.0)
    g = _gen(123)
    params = [lsj.get_params(100, 200, g) for _ in range(3000)]
    scales = np.array([p.scale for p in params])
    assert scales.min() >= 0.1 and scales.max() <= 2.0
    assert scales.min() < 0.12 and scales.max() > 1.98
    assert abs(scales.mean() - 1.05) < 0.04 and abs(scales.std() - 1.9 / np.sqrt(12)) < 0.03
    # Uniform: each fifth of the range gets about a fifth of the draws.
    hist, _ = np.histogram(scales, bins=5, range=(0.1, 2.0))
    assert (np.abs(hist / len(scales) - 0.2) < 0.03).all()
    assert abs(np.mean([p.flip for p in params]) - 0.5) < 0.04
    for p in params[:200]:
        assert p.resized == resize_scale_shape(100, 200, 100, p.scale)
        assert abs(p.resized[1] - 100 * p.scale) <= 0.5 + 1e-9 and abs(p.resized[0] - 50 * p.scale) <= 0.5 + 1e-9
        assert 0 <= p.offset[0] <= max(p.resized[0] - 100, 0) and 0 <= p.offset[1] <= max(p.resized[1] - 100, 0)


def test_lsj_is_deterministic_given_the_generator():
    sample = _random_sample(50, 70, n=5)
    lsj = LargeScaleJitter(48)
    a, b = lsj(sample, _gen(5)), lsj(sample, _gen(5))
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["masks"], b["masks"])
    torch.manual_seed(0)
    c = lsj(sample, _gen(5))
    torch.manual_seed(1)  # the global RNG plays no part
    d = lsj(sample, _gen(5))
    assert torch.equal(c["image"], d["image"]) and torch.equal(a["image"], c["image"])
    others = [lsj(sample, _gen(s))["image"] for s in range(6, 10)]
    assert any(not torch.equal(a["image"], o) for o in others)


def test_lsj_drops_masks_emptied_by_the_crop():
    image = torch.randint(0, 256, (3, 100, 100), dtype=torch.uint8, generator=_gen(0))
    corner = torch.zeros(100, 100, dtype=torch.bool)
    corner[96:, :] = True  # a bottom strip: unaffected by the flip
    sample = {"image": image, "masks": torch.stack([~corner, corner]), "labels": torch.tensor([3, 7])}
    lsj = LargeScaleJitter(50, scale=(2.0, 2.0))  # 100x100 box: no resize, a random 50x50 crop
    seen_dropped = seen_kept = False
    for seed in range(30):
        p = lsj.get_params(100, 100, _gen(seed))
        out = lsj(sample, _gen(seed))
        if p.offset[0] + 50 <= 96:  # the crop misses the corner
            seen_dropped = True
            assert out["labels"].tolist() == [3] and out["masks"].shape == (1, 50, 50)
        else:
            seen_kept = True
            assert out["labels"].tolist() == [3, 7] and out["masks"][1].sum() > 0
    assert seen_dropped and seen_kept


def test_lsj_validates_input():
    lsj = LargeScaleJitter(32)
    sample = _random_sample(20, 20)
    with pytest.raises(ValueError, match="masks"):
        lsj({**sample, "masks": sample["masks"][:, :10]}, _gen(0))
    with pytest.raises(ValueError, match="labels"):
        lsj({**sample, "labels": sample["labels"][:1]}, _gen(0))
    with pytest.raises(TypeError, match="uint8"):
        lsj({**sample, "image": sample["image"].float()}, _gen(0))
    with pytest.raises(TypeError, match="generator"):
        lsj(sample, 0)
    with pytest.raises(ValueError, match="scale"):
        LargeScaleJitter(32, scale=(2.0, 1.0))


# ---------------------------------------------------------------------------------------------- COCO readers
def _write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _write_jpg(path, h, w, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path, quality=95)


def _rgb_ids(ids: np.ndarray) -> np.ndarray:
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)


@pytest.fixture()
def coco_panoptic_root(tmp_path):
    coco = tmp_path / "coco"
    ids = np.zeros((20, 30), dtype=np.int64)
    ids[:, :10] = 1          # person
    ids[:, 10:20] = 300      # banner (stuff, COCO id 92), id 300 needs the G channel
    ids[:, 20:] = 70000      # crowd car, id needs the B channel
    ids[:2, :2] = 0          # unlabelled
    _write_jpg(coco / "train2017" / "000000000001.jpg", 20, 30)
    _write_png(coco / "panoptic_train2017" / "000000000001.png", _rgb_ids(ids))
    _write_jpg(coco / "train2017" / "000000000002.jpg", 20, 30, seed=1)
    _write_png(coco / "panoptic_train2017" / "000000000002.png", _rgb_ids(np.full((20, 30), 5)))
    ann = {
        "images": [{"id": 1, "file_name": "000000000001.jpg", "height": 20, "width": 30},
                   {"id": 2, "file_name": "000000000002.jpg", "height": 20, "width": 30}],
        "annotations": [
            {"image_id": 1, "file_name": "000000000001.png", "segments_info": [
                {"id": 1, "category_id": 1, "iscrowd": 0},
                {"id": 300, "category_id": 92, "iscrowd": 0},
                {"id": 70000, "category_id": 3, "iscrowd": 1},
                {"id": 123, "category_id": 200, "iscrowd": 0}]},  # listed but absent from the PNG
            {"image_id": 2, "file_name": "000000000002.png", "segments_info": [
                {"id": 5, "category_id": 1, "iscrowd": 1}]},
        ],
        "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 92, "name": "banner"},
                       {"id": 200, "name": "rug-merged"}],
    }
    (coco / "annotations").mkdir()
    (coco / "annotations" / "panoptic_train2017.json").write_text(json.dumps(ann))
    return tmp_path


def test_coco_panoptic_reader(coco_panoptic_root, caplog):
    with caplog.at_level("WARNING"):
        ds = CocoPanopticTrain(coco_panoptic_root)
    assert len(ds) == 2 and len(ds.vocabulary) == 133
    assert ds.vocabulary.names == builtin_vocabulary("coco_panoptic").names
    s = ds[0]
    assert s["image"].shape == (3, 20, 30) and s["image"].dtype == torch.uint8
    assert s["masks"].dtype == torch.bool and s["labels"].dtype == torch.int64
    # person -> 0, banner (id 92) -> 80 (after the 80 things); the crowd car and the absent segment are gone.
    assert s["labels"].tolist() == [0, 80]
    assert [ds.vocabulary.names[i] for i in s["labels"]] == ["person", "banner"]
    expected_person = torch.zeros(20, 30, dtype=torch.bool)
    expected_person[:, :10] = True
    expected_person[:2, :2] = False
    assert torch.equal(s["masks"][0], expected_person)
    assert s["masks"][1].sum() == 200 and not s["masks"][:, :, 20:].any()
    assert s["file_name"].endswith("train2017/000000000001.jpg")
    # The crowd-only image is returned with N=0 and reported.
    empty = ds[1]
    assert empty["masks"].shape == (0, 20, 30) and empty["labels"].shape == (0,)
    assert ds.empty_indices == [1]
    assert "1 of 2 images have no non-crowd segment" in caplog.text


def test_coco_panoptic_transform_determinism(coco_panoptic_root):
    ds = CocoPanopticTrain(coco_panoptic_root, transform=LargeScaleJitter(24), seed=3)
    a, b = ds[0], ds[0]
    assert a["image"].shape == (3, 24, 24) and torch.equal(a["image"], b["image"])
    assert torch.equal(a["masks"], b["masks"])
    again = CocoPanopticTrain(coco_panoptic_root, transform=LargeScaleJitter(24), seed=3)[0]
    assert torch.equal(again["image"], a["image"])
    epochs = []
    for e in range(1, 6):
        ds.set_epoch(e)
        epochs.append(ds[0]["image"])
    assert any(not torch.equal(x, a["image"]) for x in epochs)
    ds.set_epoch(0)
    assert torch.equal(ds[0]["image"], a["image"])
    assert ds.generator(0).initial_seed() == sample_generator(3, 0, 0).initial_seed()
    assert sample_generator(3, 0, 1).initial_seed() != sample_generator(3, 1, 0).initial_seed()


def test_coco_panoptic_errors(coco_panoptic_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="expected .*coco/val2017"):
        CocoPanopticTrain(coco_panoptic_root, split="val2017")
    with pytest.raises(FileNotFoundError, match="expected .*nowhere/coco/train2017"):
        CocoPanopticTrain(tmp_path / "nowhere")
    path = coco_panoptic_root / "coco" / "annotations" / "panoptic_train2017.json"
    ann = json.loads(path.read_text())
    ann["annotations"][0]["segments_info"][0]["category_id"] = 91  # an unused COCO id
    path.write_text(json.dumps(ann))
    with pytest.raises(ValueError, match="category id 91"):
        CocoPanopticTrain(coco_panoptic_root)
    path.unlink()
    with pytest.raises(FileNotFoundError, match="panoptic_train2017.json"):
        CocoPanopticTrain(coco_panoptic_root)


@pytest.fixture()
def coco_stuff_root(tmp_path):
    coco = tmp_path / "coco"
    labels = np.full((16, 24), 5, dtype=np.uint8)
    labels[:, :6] = 170
    labels[:4] = 0
    labels[-2:] = 255
    _write_jpg(coco / "train2017" / "b.jpg", 16, 24)
    _write_png(coco / "stuffthingmaps_detectron2" / "train2017" / "b.png", labels)
    _write_jpg(coco / "train2017" / "a.jpg", 16, 24, seed=1)
    _write_png(coco / "stuffthingmaps_detectron2" / "train2017" / "a.png", np.full((16, 24), 255, dtype=np.uint8))
    _write_jpg(coco / "train2017" / "c_unlabelled.jpg", 16, 24)  # no label map: skipped
    return tmp_path


def test_coco_stuff_reader(coco_stuff_root):
    ds = CocoStuffTrain(coco_stuff_root)
    assert len(ds) == 2 and len(ds.vocabulary) == 171
    assert ds.vocabulary.names == builtin_vocabulary("coco_stuff").names
    empty, s = ds[0], ds[1]  # sorted by stem: a, b
    assert empty["masks"].shape == (0, 16, 24) and empty["file_name"].endswith("a.jpg")
    assert s["labels"].tolist() == [0, 5, 170]
    assert s["masks"].dtype == torch.bool and s["masks"].shape == (3, 16, 24)
    assert s["masks"][0].sum() == 4 * 24 and s["masks"][2].sum() == 10 * 6 and s["masks"][1].sum() == 10 * 18
    assert not s["masks"][:, -2:].any()  # 255 is ignored
    assert ds.empty_indices is None
    assert ds.scan_empty() == [0] and ds.empty_indices == [0]
    ds_t = CocoStuffTrain(coco_stuff_root, transform=LargeScaleJitter(32, nearest="torch"), seed=1)
    t = ds_t[1]
    assert t["image"].shape == (3, 32, 32) and set(t["labels"].tolist()) <= {0, 5, 170}
    assert torch.equal(t["masks"], ds_t[1]["masks"])


def test_coco_stuff_errors(coco_stuff_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="expected .*stuffthingmaps_detectron2/val2017|expected .*val2017"):
        CocoStuffTrain(coco_stuff_root, split="val2017")
    (tmp_path / "other" / "coco" / "train2017").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="expected .*coco/stuffthingmaps_detectron2/train2017"):
        CocoStuffTrain(tmp_path / "other")
    bad = np.full((16, 24), 200, dtype=np.uint8)  # neither a class (0..170) nor the ignore value
    _write_png(coco_stuff_root / "coco" / "stuffthingmaps_detectron2" / "train2017" / "a.png", bad)
    with pytest.raises(ValueError, match="outside 0..170"):
        CocoStuffTrain(coco_stuff_root)[0]


# ---------------------------------------------------------------------------------------------- sampling, collation
def test_sample_gt_masks_more_than_n_takes_a_random_subset():
    masks = torch.zeros(40, 8, 8, dtype=torch.bool)
    for i in range(40):
        masks[i].view(-1)[i] = True  # mask i holds pixel i: masks and labels stay paired
    labels = torch.arange(40) + 100
    m, l = sample_gt_masks(masks, labels, 32, _gen(0))
    assert m.shape == (32, 8, 8) and m.dtype == torch.bool and l.dtype == torch.int64
    assert len(set(l.tolist())) == 32 and (l >= 100).all()
    for mask, label in zip(m, l):
        assert mask.view(-1).nonzero().item() == label.item() - 100
    m2, l2 = sample_gt_masks(masks, labels, 32, _gen(0))
    assert torch.equal(l, l2)
    assert not torch.equal(l, sample_gt_masks(masks, labels, 32, _gen(1))[1])
    assert l.tolist() != list(range(100, 132))  # a random subset, not the first 32


def test_sample_gt_masks_fewer_than_n_pads_with_minus_one():
    masks = torch.zeros(5, 4, 4, dtype=torch.bool)
    masks[0, 0, 0] = masks[2, 1, 1] = masks[3, 2, 2] = masks[4] = True  # mask 1 is empty
    labels = torch.tensor([7, 8, 9, 10, 11])
    m, l = sample_gt_masks(masks, labels, 32, _gen(0))
    assert m.shape == (32, 4, 4) and l.tolist() == [7, 9, 10, 11] + [-1] * 28
    assert torch.equal(m[:4], masks[[0, 2, 3, 4]]) and not m[4:].any()
    m, l = sample_gt_masks(masks[:0], labels[:0], 3)
    assert m.shape == (3, 4, 4) and l.tolist() == [-1, -1, -1]
    with pytest.raises(ValueError, match="labels"):
        sample_gt_masks(masks, labels[:2], 3)
    with pytest.raises(ValueError, match="n must"):
        sample_gt_masks(masks, labels, 0)


def test_collate_masks_handles_different_mask_counts():
    a, b = _random_sample(16, 16, n=3), _random_sample(16, 16, seed=1, n=5)
    b["masks"], b["labels"] = b["masks"][:0], b["labels"][:0]
    batch = collate_masks([a, b, _random_sample(16, 16, seed=2, n=7)])
    assert batch["images"].shape == (3, 3, 16, 16) and batch["images"].dtype == torch.uint8
    assert [m.shape[0] for m in batch["masks"]] == [3, 0, 7] and [len(x) for x in batch["labels"]] == [3, 0, 7]
    assert torch.equal(batch["images"][0], a["image"]) and batch["file_names"][0] == "x.jpg"
    with pytest.raises(ValueError, match="different image sizes"):
        collate_masks([a, _random_sample(16, 20)])
    with pytest.raises(ValueError, match="empty"):
        collate_masks([])


# ---------------------------------------------------------------------------------------------- synthetic
@pytest.fixture()
def one_thread():
    """Many tiny tensor ops on a shared CPU: intra-op threads only add synchronisation cost (restored after)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_synthetic_shapes_deterministic_and_well_formed(one_thread):
    ds = SyntheticShapes(num_classes=24, size=64, num_images=20, seed=0)
    assert ds.vocabulary.names[0] == "red stripes" and len(ds.vocabulary) == 24
    assert len(set(ds.vocabulary.names)) == 24
    again = SyntheticShapes(num_classes=24, size=64, num_images=20, seed=0)
    other = SyntheticShapes(num_classes=24, size=64, num_images=20, seed=1)
    differs = 0
    for i in range(len(ds)):
        s = ds[i]
        assert s["image"].shape == (3, 64, 64) and s["image"].dtype == torch.uint8
        assert s["masks"].dtype == torch.bool and s["labels"].dtype == torch.int64
        assert (s["masks"].sum(0) == 1).all()  # background + visible shapes partition the image
        assert s["labels"][0] == i % 24 and len(set(s["labels"].tolist())) == len(s["labels"])
        assert 2 <= len(s["labels"]) <= 5 and (s["masks"].flatten(1).sum(1) > 0).all()
        t = again[i]
        assert torch.equal(s["image"], t["image"]) and torch.equal(s["masks"], t["masks"])
        differs += not torch.equal(s["image"], other[i]["image"])
    assert differs == len(ds)
    # Textures are not flat colours, and instances of one class vary.
    bg = ds[0]["image"][:, ds[0]["masks"][0]].float()
    assert bg.std(dim=1).min() > 10
    with pytest.raises(ValueError, match="num_classes"):
        SyntheticShapes(num_classes=60)


def test_synthetic_shapes_class_balance(one_thread):
    ds = SyntheticShapes(num_classes=12, size=32, num_images=240, seed=0, max_shapes=3)
    counts = torch.zeros(12)
    backgrounds = torch.zeros(12)
    for i in range(len(ds)):
        labels = ds[i]["labels"]
        counts += torch.bincount(labels, minlength=12)
        backgrounds[labels[0]] += 1
    assert (backgrounds == 20).all()
    assert counts.min() > 0.6 * counts.mean() and counts.max() < 1.4 * counts.mean()


def test_synthetic_shapes_are_learnable_with_mask_pooling(one_thread):
    """With the texture prototypes as classifier, pooling inside the GT masks beats chance by far;
    pooling over the whole image does not identify the shapes (it sees mostly the background)."""
    import maskadapter
    from maskadapter.modeling.pooling import mask_pool

    from conftest import tiny_clip_config

    torch.manual_seed(0)
    backbone = maskadapter.ClipBackbone(tiny_clip_config()).eval()
    ds = SyntheticShapes(num_classes=24, size=128, num_images=48, seed=0)
    protos = ds.class_prototypes(backbone, samples_per_class=4)
    assert protos.shape == (24, backbone.embed_dim)
    torch.testing.assert_close(protos.norm(dim=-1), torch.ones(24))
    torch.testing.assert_close(protos, ds.class_prototypes(backbone, samples_per_class=4))
    samples = [ds[i] for i in range(len(ds))]
    dense = backbone(backbone.normalize(torch.stack([s["image"] for s in samples]).float()))["clip_vis_dense"]
    mask_hits = shape_hits_mask = shape_hits_image = n_all = n_shapes = 0
    for b, s in enumerate(samples):
        emb = backbone.project_pooled(mask_pool(dense[b:b + 1], s["masks"][None].float(), 0.5))[0]
        pred = (F.normalize(emb, dim=-1) @ protos.T).argmax(-1)
        whole = backbone.project_pooled(dense[b:b + 1].mean(dim=(2, 3))[:, None])[0]
        whole_pred = (F.normalize(whole, dim=-1) @ protos.T).argmax(-1)
        mask_hits += int((pred == s["labels"]).sum())
        shape_hits_mask += int((pred[1:] == s["labels"][1:]).sum())
        shape_hits_image += int((whole_pred == s["labels"][1:]).sum())
        n_all += len(s["labels"])
        n_shapes += len(s["labels"]) - 1
    chance = 1 / 24
    assert mask_hits / n_all > 4 * chance
    assert shape_hits_mask / n_shapes > 3 * chance
    assert shape_hits_image / n_shapes < 2 * chance

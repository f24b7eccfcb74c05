"""Fine-tuning on your own labelled images: the three data formats, bad-data errors, the feature cache, the
``train --data --init`` command, pseudo-labels from ``segment --format coco`` as training data, and the one
dataset table."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import maskadapter.cli as cli
from maskadapter.checkpoint import read_state_dict
from maskadapter.data.samples import DatasetError
from maskadapter.data.table import BUILTIN_VOCABULARIES, DATASET_NAMES, DATASETS
from maskadapter.data.train_datasets import SegmentationTrain
from maskadapter.data.transforms import LargeScaleJitter
from maskadapter.data.user_data import load_user_dataset, parse_data, split_dataset
from maskadapter.training.config import config_from_dict
from maskadapter.training.trainer import Trainer

from conftest import write_tiny_checkpoint
from training_utils import synthetic_config, write_own_dataset


@pytest.fixture
def own(tmp_path):
    return write_own_dataset(tmp_path / "data", num_images=6)


def _spellings(d) -> dict[str, str]:
    return {"coco": f"coco:{d['instances']},{d['images']}", "panoptic": f"panoptic:{d['panoptic']},{d['images']}",
            "labels": f"labels:{d['images']},{d['labels']},{d['classes']}"}


def _rect(shape, box) -> torch.Tensor:
    x0, y0, x1, y1, _ = box
    m = torch.zeros(shape, dtype=torch.bool)
    m[y0:y1, x0:x1] = True
    return m


# ---------------------------------------------------------------------------------------------- formats
@pytest.mark.parametrize("kind", ["coco", "panoptic", "labels"])
def test_each_format_gives_the_hand_built_masks_and_classes(own, kind):
    ds = load_user_dataset(_spellings(own)[kind])
    train = SegmentationTrain(ds)
    assert len(train) == 6
    for i, box in enumerate(own["boxes"]):
        sample = train[i]
        rect = _rect(sample["image"].shape[1:], box)
        c = box[4]
        masks, labels = sample["masks"], sample["labels"].tolist()
        if kind == "coco":  # classes red, green, blue only; image 0's crowd annotation is not a mask
            assert train.vocabulary.names == ["red", "green", "blue"] and labels == [c]
            assert torch.equal(masks[0], rect)
        elif kind == "panoptic":  # segments in JSON order: sky, then the rectangle
            assert train.vocabulary.names == own["names"] and labels == [3, c]
            assert torch.equal(masks[1], rect) and torch.equal(masks[0], ~rect)
        else:  # one mask per class present, ascending
            assert train.vocabulary.names == own["names"] and labels == [c, 3]
            assert torch.equal(masks[0], rect) and torch.equal(masks[1], ~rect)


def test_semantic_and_instance_ground_truth_for_evaluation(own):
    coco = load_user_dataset(_spellings(own)["coco"])
    ex = coco.samples[0].load(("semantic", "instance"))
    box = own["boxes"][0]
    rect = _rect(ex.semantic.shape, box)
    assert (ex.semantic[rect] == box[4]).all() and ex.semantic[0, 0] == 255  # crowd corner -> ignore
    assert [i["iscrowd"] for i in ex.instances] == [0, 1]
    pan = load_user_dataset(_spellings(own)["panoptic"])
    assert pan.evaluations == ("semantic", "panoptic", "instance") and pan.thing_classes == [True, True, True, False]
    assert (pan.samples[0].load(("semantic",)).semantic[~rect] == 3).all()


def test_spelling_is_checked_and_shared_with_eval(own):
    assert parse_data("custom:a,b,c")[0] == "labels"
    assert parse_data("panoptic:p.json,img")[1][1].name == "img"
    for bad in ("coco:only.json", "panoptic:a,b,c,d", "labels:a,b", "nope:a,b"):
        with pytest.raises(ValueError, match="coco:|panoptic:|labels:"):
            parse_data(bad)
    from maskadapter.data.datasets import load_dataset

    assert load_dataset(_spellings(own)["coco"]).extra["format"] == "coco"  # the reader `eval --dataset` uses


def test_held_out_split_is_disjoint_stable_and_sized(own):
    ds = load_user_dataset(_spellings(own)["labels"])
    train, val = split_dataset(ds, 0.34, seed=1)
    ids = lambda d: [s.image_id for s in d.samples]  # noqa: E731
    assert len(val) == 2 and len(train) == 4 and not set(ids(train)) & set(ids(val))
    assert ids(split_dataset(ds, 0.34, seed=1)[1]) == ids(val)
    with pytest.raises(ValueError, match="too few"):
        split_dataset(ds.subset([0]), 0.5)


# ---------------------------------------------------------------------------------------------- bad data
def _edit(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_missing_image_is_named(own):
    (own["images"] / "img03.png").unlink()
    with pytest.raises(DatasetError, match=r"instances.json: 1 images not found: image id 4: .*img03.png"):
        load_user_dataset(_spellings(own)["coco"])


def test_polygon_outside_the_image_is_named(own):
    _edit(own["instances"], lambda d: d["annotations"][2]["segmentation"][0].__setitem__(0, 500))
    with pytest.raises(DatasetError, match=r"annotation 3 \(image img02.png\) has a polygon outside its 64x48 image"):
        load_user_dataset(_spellings(own)["coco"])


def test_category_not_in_the_class_list_is_named(own):
    _edit(own["instances"], lambda d: d["annotations"][1].__setitem__("category_id", 77))
    with pytest.raises(DatasetError, match=r"annotation 2 \(image img01.png\) has category id 77, which is not in "
                                           r"the class list \(category ids 1, 2, 3\)"):
        load_user_dataset(_spellings(own)["coco"])
    _edit(own["panoptic"], lambda d: d["annotations"][0]["segments_info"][1].__setitem__("category_id", 9))
    with pytest.raises(DatasetError, match="segment 2 of image img00.png has category id 9"):
        load_user_dataset(_spellings(own)["panoptic"])
    Image.fromarray(np.full((48, 64), 7, np.uint8)).save(own["labels"] / "img05.png")
    labels = SegmentationTrain(load_user_dataset(_spellings(own)["labels"]))
    with pytest.raises(DatasetError, match=r"label map .*img05.png: category ids not in the class list of 4"):
        labels[5]


def test_empty_dataset_is_refused(own):
    _edit(own["instances"], lambda d: d.__setitem__("images", []))
    with pytest.raises(DatasetError, match="empty dataset: it lists no images"):
        load_user_dataset(_spellings(own)["coco"])
    _edit(own["panoptic"], lambda d: [a.__setitem__("segments_info", []) for a in d["annotations"]])
    with pytest.raises(DatasetError, match="empty dataset: no annotation has a"):
        load_user_dataset(_spellings(own)["panoptic"])


def test_panoptic_png_ids_absent_from_the_json_are_named(own):
    png = own["root"] / "panoptic" / "img02.png"
    array = np.array(Image.open(png))
    array[0, 0] = (5, 0, 0)
    Image.fromarray(array).save(png)
    train = SegmentationTrain(load_user_dataset(_spellings(own)["panoptic"]))
    with pytest.raises(DatasetError, match=r"panoptic PNG .*img02.png holds segment ids \[5\] that its annotation "
                                           r"in .*panoptic.json does not list"):
        train[2]


# ---------------------------------------------------------------------------------------------- feature cache
def _own_config(tmp_path, own, stage, cache, **sections):
    cfg = synthetic_config(tmp_path, stage, data={
        "dataset": _spellings(own)["coco"], "text": "clip", "augmentation": "resize", "image_size": 64,
        "cache_features": cache}, solver={"max_iter": 3, "batch_size": 2}, run={"export_model": False})
    for name, values in sections.items():
        cfg[name].update(values)
    return config_from_dict(cfg)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["warmup", "mixed"])
def test_cached_and_uncached_first_steps_agree(tmp_path, own, stage):
    stats = {}
    for cache in (False, True):
        trainer = Trainer(_own_config(tmp_path / f"{stage}{cache}", own, stage, cache))
        stats[cache] = [trainer.train(stop_after=k).train_stats for k in (1, 2)]
        if cache:
            meta = json.loads((trainer.output_dir / "feature_cache" / "meta.json").read_text())
            assert meta["complete"] and len(meta["images"]) == 6
            assert ("pred_masks" in meta["shapes"]) == (stage == "mixed")
    for a, b in zip(stats[False], stats[True]):
        for key in ("loss", "loss_ce", "loss_cosine"):
            assert abs(a[key] - b[key]) <= 1e-5, (key, a[key], b[key])


@pytest.mark.slow
def test_resume_with_the_cache_is_bit_exact(tmp_path, own):
    full = Trainer(_own_config(tmp_path / "full", own, "mixed", True))
    full.train()
    part = Trainer(_own_config(tmp_path / "part", own, "mixed", True))
    part.train(stop_after=2)
    part.save_checkpoint()
    cache = part.output_dir / "feature_cache" / "clip_vis_dense.npy"
    built = cache.stat().st_mtime_ns
    resumed = Trainer(_own_config(tmp_path / "part", own, "mixed", True), resume=True)
    assert cache.stat().st_mtime_ns == built  # reused, not recomputed
    resumed.train()
    for (name, a), (_, b) in zip(full.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.equal(a, b), name


def test_cache_refusals_name_the_augmentation_and_the_size(tmp_path, own):
    with pytest.raises(ValueError, match="the augmentation 'lsj' .random scale jitter and crop."):
        config_from_dict(synthetic_config(tmp_path, data={"dataset": _spellings(own)["coco"], "text": "clip",
                                                          "cache_features": True}))
    with pytest.raises(ValueError, match=r"the feature cache would take 0\.\d+ GB \(12 entries x 0\.\d+ MB\) in "
                                         r".*feature_cache, above the limit of 1e-06 GB"):
        Trainer(_own_config(tmp_path, own, "warmup", True, data={"cache_limit_gb": 1e-6}))
    assert not (tmp_path / "run" / "feature_cache" / "meta.json").exists()


def test_fixed_size_transform_flip_of_matches_the_random_draw(own):
    train = SegmentationTrain(load_user_dataset(_spellings(own)["labels"]), LargeScaleJitter(64, (1.0, 1.0)), seed=3)
    for epoch in range(3):
        train.set_epoch(epoch)
        for i in range(len(train)):
            assert torch.equal(train[i]["masks"], train.look(i, train.flip_of(i))["masks"])


# ---------------------------------------------------------------------------------------------- commands
@pytest.mark.slow
def test_finetune_command_end_to_end_and_segment_with_the_result(tmp_path, own, capsys):
    preset, weights = write_tiny_checkpoint(tmp_path)
    out = tmp_path / "runs" / "mine"
    args = ["train", "--data", _spellings(own)["panoptic"], "--init", str(preset), "--weights", str(weights),
            "--output-dir", str(out), "--epochs", "2", "--batch-size", "2", "--image-size", "64",
            "--val-fraction", "0.34", "--augmentation", "resize", "--cache-features", "--set", "data.num_workers=0"]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "complete model" in printed and "segment with: maskadapter segment" in printed
    # the finished model on the held-out third through the benchmark evaluators (panoptic data: mIoU, PQ, AP)
    held = json.loads((out / "held-out-eval" / "results.json").read_text())["metrics"]
    assert {"semantic", "panoptic", "instance"} <= set(held) and 0 <= held["panoptic"]["PQ"] <= 100
    assert "held-out images (" in printed and "mIoU" in printed and "PQ" in printed and "AP" in printed
    assert (out / "best.pt").is_file() and (out / "classes.txt").read_text().splitlines()[0] == "red"
    assert (out / "tensorboard").is_dir()
    model = read_state_dict(out / "model.safetensors")
    assert any(k.startswith("sem_seg_head.") for k in model) and any(k.startswith("backbone.") for k in model)
    seg = tmp_path / "seg"
    assert cli.main(["segment", str(own["images"] / "img00.png"), "--preset", str(preset), "--weights",
                     str(out / "model.safetensors"), "--vocab-file", str(out / "classes.txt"), "-o", str(seg)]) == 0
    assert (seg / "img00_labels.png").is_file()


def test_finetune_command_errors(tmp_path, own, capsys):
    assert cli.main(["train", "--data", _spellings(own)["coco"], "--output-dir", str(tmp_path / "x")]) == 1
    assert "--data needs --init PRESET" in capsys.readouterr().err
    assert cli.main(["train", "--data", _spellings(own)["coco"], "--init", "fcclip-large", "--output-dir",
                     str(tmp_path / "x"), "--cache-features"]) == 1
    assert "augmentation 'lsj'" in capsys.readouterr().err
    assert cli.main(["train", "--data", _spellings(own)["coco"], "--init", "fcclip-large", "--output-dir",
                     str(tmp_path / "x"), "--print-config", "--stage", "1"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["train"]["stage"] == "warmup" and cfg["train"]["num_gt_masks"] == 32
    assert cfg["model"]["weights"] == "released" and cfg["solver"]["batch_size"] == 6


@pytest.mark.slow
def test_segment_coco_output_is_training_data(tmp_path, own):
    """Pseudo-labels round trip: `segment --format coco` output read back by the panoptic: and labels: readers."""
    preset, weights = write_tiny_checkpoint(tmp_path)
    labels = tmp_path / "pseudo"
    assert cli.main(["segment", str(own["images"]), "--preset", str(preset), "--weights", str(weights),
                     "--vocab-file", str(own["classes"]), "--task", "semantic,panoptic,instance", "--format", "coco",
                     "-o", str(labels)]) == 0
    for spelling in (f"panoptic:{labels / 'panoptic.json'},{own['images']}",
                     f"labels:{own['images']},{labels / 'semantic'},{own['classes']}"):
        train = SegmentationTrain(load_user_dataset(spelling))
        assert len(train) == 6 and train.vocabulary.names == own["names"]
        for i in range(len(train)):
            sample = train[i]
            assert sample["masks"].shape[1:] == (48, 64) and len(sample["labels"]) == len(sample["masks"])
            assert (sample["labels"] >= 0).all() and (sample["labels"] < 4).all()
    trainer = Trainer(config_from_dict(synthetic_config(tmp_path / "t", data={
        "dataset": f"panoptic:{labels / 'panoptic.json'},{own['images']}", "text": "clip", "image_size": 64},
        solver={"max_iter": 1, "batch_size": 2}, run={"export_model": False})))
    assert np.isfinite(trainer.train().train_stats["loss"])


@pytest.mark.slow
def test_export_full_of_a_random_init_run_is_a_complete_model(tmp_path):
    """Issue: train -> export --full -> segment --weights failed ('no model.weights', then 'no sem_seg_head')."""
    cfg = synthetic_config(tmp_path, "warmup", solver={"max_iter": 2})
    Trainer(config_from_dict(cfg)).train()
    run = tmp_path / "run"
    assert cli.main(["export", str(run / "last.pt"), str(tmp_path / "model.pth"), "--full"]) == 0
    state = read_state_dict(tmp_path / "model.pth")
    assert any(k.startswith("sem_seg_head.") for k in state)
    trained = torch.load(run / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(state[k], v) for k, v in trained.items())
    image = tmp_path / "photo.png"
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(image)
    assert cli.main(["segment", str(image), "--preset", cfg["model"]["preset"], "--weights",
                     str(tmp_path / "model.pth"), "--vocab", "a, b", "-o", str(tmp_path / "seg")]) == 0


# ---------------------------------------------------------------------------------------------- dataset table
def test_names_vocabularies_and_converters_derive_from_one_table():
    import maskadapter.data.prepare as prepare
    from maskadapter.cli.prepare import register  # noqa: F401 - the CLI's choices come from the table
    from maskadapter.data.vocabularies import builtin_vocabulary

    assert DATASET_NAMES == tuple(DATASETS) and set(BUILTIN_VOCABULARIES) == {s.vocabulary for s in DATASETS.values()}
    for spec in DATASETS.values():
        assert callable(getattr(prepare, f"_prepare_{spec.converter}"))
        assert len(builtin_vocabulary(spec.vocabulary)) > 0
    assert prepare.PREPARE_TARGETS == DATASET_NAMES
    assert len(builtin_vocabulary("pascal_voc_21")) == len(builtin_vocabulary("pascal_voc_20")) + 1


@pytest.mark.distributed
@pytest.mark.slow
def test_torchrun_with_the_cache_matches_one_process(tmp_path, own):
    import os
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    from maskadapter.training.checkpointing import load_training_checkpoint

    repo = Path(__file__).resolve().parents[1]
    cfg = synthetic_config(tmp_path, "mixed", data={
        "dataset": _spellings(own)["panoptic"], "text": "clip", "augmentation": "resize", "image_size": 64,
        "cache_features": True}, solver={"max_iter": 3, "batch_size": 2},
        run={"threads": 1, "checkpoint_period": 0, "export_model": False})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(repo / "src"))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "maskadapter", "train", "--config", str(path), "--output-dir", str(tmp_path / "ddp")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "ddp" / "feature_cache" / "meta.json").read_text())["complete"]
    single = dict(cfg, run={**cfg["run"], "output_dir": str(tmp_path / "single"), "threads": 0})
    Trainer(config_from_dict(single)).train()
    a = load_training_checkpoint(tmp_path / "ddp" / "last.pt")["model"]
    b = load_training_checkpoint(tmp_path / "single" / "last.pt")["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=2e-6, msg=key)

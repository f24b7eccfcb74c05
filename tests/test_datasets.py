"""Dataset readers on every prepared layout, bad inputs, and the `prepare` converters on fabricated raw downloads."""

from __future__ import annotations

import json
import logging
import zipfile

import numpy as np
import pytest
import scipy.io
from PIL import Image

import maskadapter.cli as cli
from maskadapter.data.datasets import (DATASETS, DatasetError, id_to_rgb, load_custom_dataset, load_dataset,
                                       rgb_to_id)
from maskadapter.data.prepare import (convert_ade20k_150_labels, convert_coco_stuff_labels,
                                      convert_pascal_context_59, convert_pascal_context_459, convert_voc20_labels,
                                      prepare_dataset, read_ade847_mapping)

RNG = np.random.default_rng(0)


def write(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def rand_image(h, w):
    return RNG.integers(0, 255, (h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------- fabricated raw data
ADE_MAPPING = "Instacne100\tSceneParse150\tFullADE20K\n1\t\t8\t\t165\n2\t\t13\t\t1831\n3\t\t21\t\t401\n3\t\t21\t\t402\n"
ADE_THINGS = {7: "bed", 12: "person", 20: "car"}  # 0-based ADE-150 index of instance classes 1, 2, 3


def make_raw_ade(raw, n=3, h=20, w=28):
    """ADEChallengeData2016 with semantic (1-based, 0 = other) and instance annotations (R = class, G = id).

    Image k: wall (1) on top, sky (3) bottom-left, a person instance (semantic 13) and a car (semantic 21), a
    few 'other' (0) pixels, and a semantic 'bed' (8) region with no instance (must be void in panoptic)."""
    src = raw / "ADEChallengeData2016"
    expected = []
    for k in range(n):
        stem = f"ADE_val_{k + 1:08d}"
        write(src / "images" / "validation" / f"{stem}.jpg", rand_image(h, w))
        sem = np.full((h, w), 1, np.uint8)
        sem[h // 2:, : w // 2] = 3
        sem[0, :3] = 0
        ins = np.zeros((h, w, 3), np.uint8)
        person = np.zeros((h, w), bool)
        person[2:8, 10 + k:16 + k] = True
        car = np.zeros((h, w), bool)
        car[12:18, 16:26] = True
        sem[person], sem[car] = 13, 21
        ins[person] = (2, 1, 0)
        ins[car] = (3, 2, 0)
        bed = np.zeros((h, w), bool)
        bed[19, 20:] = True
        sem[bed] = 8
        write(src / "annotations" / "validation" / f"{stem}.png", sem)
        write(src / "annotations_instance" / "validation" / f"{stem}.png", ins)
        expected.append({"stem": stem, "sem": sem, "person": person, "car": car, "bed": bed})
    mapping = raw / "ade20k_instance_catid_mapping.txt"
    mapping.write_text(ADE_MAPPING)
    return src, mapping, expected


def prepared_ade(tmp_path, n=3, panoptic=True):
    raw, root = tmp_path / "raw", tmp_path / "root"
    src, mapping, expected = make_raw_ade(raw, n)
    counts = prepare_dataset("ade20k-150", src, root, mapping=mapping if panoptic else None)
    return root, expected, counts


# ---------------------------------------------------------------------------------------------- pure converters
def test_label_converters_match_the_official_rules():
    ade = np.array([[0, 1, 150]], np.uint8)
    assert convert_ade20k_150_labels(ade).tolist() == [[255, 0, 149]]
    voc = np.array([[0, 1, 20, 255]], np.uint8)
    assert convert_voc20_labels(voc).tolist() == [[255, 0, 19, 255]]
    ctx = np.array([[0, 1, 2, 85, 62, 458, 459]], np.uint16)
    assert convert_pascal_context_459(ctx).tolist() == [[65535, 0, 1, 84, 61, 457, 458]]
    # PC-59: aeroplane (459 id 2) -> 0, computer (85) -> 18, tvmonitor (458) -> 58; 459-class "computer case" (62)
    # is not one of the 59 (although PC-59's class 18 is *named* "computer case"), accordion (1) neither
    assert convert_pascal_context_59(ctx).tolist() == [[255, 255, 0, 18, 255, 58, 255]]
    # stuffthingmaps hold COCO id - 1: 0 person -> 0; 11 (id 12 unused) -> 255; 12 stop sign -> 11; 181 -> 170
    assert convert_coco_stuff_labels(np.array([[0, 11, 12, 181, 255]], np.uint8)).tolist() == [[0, 255, 11, 170, 255]]
    with pytest.raises(ValueError, match="uint8"):
        convert_ade20k_150_labels(ade.astype(np.int32))
    ids = np.array([[0, 1, 255, 256, 65536 * 3 + 7]])
    assert (rgb_to_id(id_to_rgb(ids)) == ids).all()
    assert id_to_rgb(np.array([[256 + 2]])).tolist() == [[[2, 1, 0]]]


# ---------------------------------------------------------------------------------------------- ADE20K-150
def test_ade150_prepare_and_read_semantic_panoptic_instances(tmp_path):
    root, expected, counts = prepared_ade(tmp_path)
    assert counts == {"images": 3, "semantic": 3, "panoptic": 3, "instances": 6}
    ds = load_dataset("ade20k-150", root)
    assert ds.name == "ade20k-150" and ds.short_name == "A-150" and ds.ignore_label == 255 and len(ds.vocabulary) == 150
    assert ds.evaluations == ("semantic", "panoptic", "instance")
    assert [s.image_id for s in ds.samples] == [e["stem"] for e in expected]
    assert [i for i, t in enumerate(ds.thing_classes) if t] == sorted(ADE_THINGS)
    for sample, exp in zip(ds.samples, expected):
        ex = sample.load(("semantic", "panoptic", "instance"))
        assert ex.image.shape == (3, 20, 28)
        sem = ex.semantic.numpy()
        assert (sem == np.where(exp["sem"] == 0, 255, exp["sem"].astype(int) - 1)).all()
        pan, segs = ex.panoptic.numpy(), ex.segments
        by_cat = {}
        for s in segs:
            by_cat.setdefault(s["category_id"], []).append(s)
        assert sorted(by_cat) == [0, 2, 12, 20]  # wall, sky (stuff), person, car; the bed has no instance
        for cat, mask in ((12, exp["person"]), (20, exp["car"])):
            (seg,) = by_cat[cat]
            assert seg["isthing"] and ((pan == seg["id"]) == mask).all()
        assert not by_cat[0][0]["isthing"] and (pan[exp["bed"]] == 0).all() and (pan[0, :3] == 0).all()
        assert sorted((i["category_id"], int(i["mask"].sum())) for i in ex.instances) == sorted(
            [(12, int(exp["person"].sum())), (20, int(exp["car"].sum()))])
        person = next(i for i in ex.instances if i["category_id"] == 12)
        assert (person["mask"].numpy() == exp["person"]).all() and person["iscrowd"] == 0
    # JSON categories: the 150 classes with contiguous ids 0..149, isthing from the mapping
    data = json.loads((root / "ADEChallengeData2016" / "ade20k_panoptic_val.json").read_text())
    assert [c["id"] for c in data["categories"]] == list(range(150))
    assert data["categories"][12]["name"] == "person" and data["categories"][12]["isthing"] == 1


def test_ade150_semantic_only_without_mapping(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        root, _, counts = prepared_ade(tmp_path, n=2, panoptic=False)
    assert counts == {"images": 2, "semantic": 2} and "--mapping" in caplog.text
    ds = load_dataset("ade20k-150", root)
    assert ds.evaluations == ("semantic",) and ds.thing_classes is None
    with pytest.raises(ValueError, match="no panoptic"):
        ds[0]._load_panoptic(None)


def test_missing_folder_names_path_and_prepare_command(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("ade20k-150", tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "ADEChallengeData2016" / "images" / "validation") in msg
    assert "maskadapter prepare ade20k-150 --raw" in msg and str(tmp_path) in msg
    (tmp_path / "pascal_ctx_d2" / "images" / "validation").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="annotations_ctx459.*maskadapter prepare pascal-context-459"):
        load_dataset("pascal-context-459", tmp_path)
    with pytest.raises(ValueError, match="unknown dataset 'ade-150'"):
        load_dataset("ade-150", tmp_path)
    assert set(DATASETS) == {"ade20k-150", "ade20k-847", "pascal-context-59", "pascal-context-459", "pascal-voc-20",
                             "pascal-voc-21", "coco-panoptic", "coco-stuff"}


def test_unpaired_files_are_listed_or_skipped_with_a_warning(tmp_path, caplog):
    root, _, _ = prepared_ade(tmp_path, n=3, panoptic=False)
    base = root / "ADEChallengeData2016"
    write(base / "images" / "validation" / "ADE_val_extra_image.jpg", rand_image(8, 8))
    write(base / "annotations_detectron2" / "validation" / "ADE_val_orphan_label.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(DatasetError) as err:
        load_dataset("ade20k-150", root)
    assert "1 images" in str(err.value) and "ADE_val_extra_image" in str(err.value)
    assert "1 label maps" in str(err.value) and "ADE_val_orphan_label" in str(err.value)
    with caplog.at_level(logging.WARNING):
        ds = load_dataset("ade20k-150", root, strict=False)
    assert len(ds) == 3 and "1 images without labels and 1 labels without images" in caplog.text


def test_label_size_mismatch_names_the_file(tmp_path):
    root, _, _ = prepared_ade(tmp_path, n=2, panoptic=False)
    label = root / "ADEChallengeData2016" / "annotations_detectron2" / "validation" / "ADE_val_00000002.png"
    write(label, np.zeros((19, 28), np.uint8))
    ds = load_dataset("ade20k-150", root)
    ds[0].load()
    with pytest.raises(ValueError, match=r"ADE_val_00000002\.png is 28x19 .* is 28x20"):
        ds[1].load()


def test_labels_outside_the_classes_are_left_to_the_evaluator(tmp_path):
    root, _, _ = prepared_ade(tmp_path, n=1, panoptic=False)
    label = root / "ADEChallengeData2016" / "annotations_detectron2" / "validation" / "ADE_val_00000001.png"
    labels = np.array(Image.open(label))
    labels[0, 0] = 200
    write(label, labels)
    assert int(load_dataset("ade20k-150", root)[0].load().semantic[0, 0]) == 200


# ---------------------------------------------------------------------------------------------- Pascal VOC / Context
def test_pascal_voc_prepare_and_read(tmp_path):
    voc = tmp_path / "raw" / "VOCdevkit" / "VOC2012"
    ids = ["2007_000033", "2007_000042"]
    raws = {}
    for k, i in enumerate(ids):
        write(voc / "JPEGImages" / f"{i}.jpg", rand_image(12, 10 + k))
        lab = np.zeros((12, 10 + k), np.uint8)
        lab[2:6, 2:6] = 15 + k
        lab[6, :] = 255
        lab[8:, 5:] = 1
        im = Image.fromarray(lab, mode="P")
        im.putpalette([v for c in range(256) for v in (c, 255 - c, 7)])
        (voc / "SegmentationClass").mkdir(parents=True, exist_ok=True)
        im.save(voc / "SegmentationClass" / f"{i}.png")
        raws[i] = lab
    write(voc / "SegmentationClass" / "2007_999999.png", np.zeros((4, 4), np.uint8))  # not in the val list
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids) + "\n")
    root = tmp_path / "root"
    assert prepare_dataset("pascal-voc-20", tmp_path / "raw", root) == {"images": 2, "semantic": 2}
    d20, d21 = load_dataset("pascal-voc-20", root), load_dataset("pascal-voc-21", root)
    assert len(d20.vocabulary) == 20 and len(d21.vocabulary) == 21 and d21.vocabulary.names[0] == "background"
    assert [s.image_id for s in d20.samples] == ids
    for s20, s21 in zip(d20.samples, d21.samples):
        lab = raws[s20.image_id]
        assert (s21.load().semantic.numpy() == lab).all()
        expected = np.where((lab == 0) | (lab == 255), 255, lab.astype(int) - 1)
        assert (s20.load().semantic.numpy() == expected).all()


def test_pascal_context_prepare_and_read(tmp_path):
    voc = tmp_path / "raw" / "VOC2010"
    ids = ["2008_000002", "2008_000003"]
    maps = {}
    for k, i in enumerate(ids):
        write(voc / "JPEGImages" / f"{i}.jpg", rand_image(9, 11))
        lm = np.zeros((9, 11), np.uint16)
        lm[:3] = 2  # aeroplane
        lm[3:5] = 85  # computer
        lm[5:7] = 62  # computer case: PC-459 only
        lm[7:, :5] = 459
        lm[8, 10] = 300 + k
        (voc / "trainval").mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(voc / "trainval" / f"{i}.mat", {"LabelMap": lm})
        maps[i] = lm
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "ImageSets" / "Main" / "val.txt").write_text("\n".join(ids))
    root = tmp_path / "root"
    prepare_dataset("pascal-context-59", tmp_path / "raw", root)
    prepare_dataset("pascal-context-459", tmp_path / "raw", root)
    tif = root / "pascal_ctx_d2" / "annotations_ctx459" / "validation" / f"{ids[0]}.tif"
    assert np.array(Image.open(tif)).dtype == np.uint16
    d59, d459 = load_dataset("pascal-context-59", root), load_dataset("pascal-context-459", root)
    assert d59.ignore_label == 255 and d459.ignore_label == 65535 and len(d459.vocabulary) == 459
    for s59, s459 in zip(d59.samples, d459.samples):
        lm = maps[s59.image_id]
        assert (s459.load().semantic.numpy() == np.where(lm == 0, 65535, lm.astype(int) - 1)).all()
        sem59 = s59.load().semantic.numpy()
        assert (sem59[:3] == 0).all() and (sem59[3:5] == 18).all() and (sem59[5:7] == 255).all()
        assert (sem59[7:, :5] == 255).all() and (sem59[8, 10] == 255) and len(d59.vocabulary) == 59
    # a custom split file
    (tmp_path / "one.txt").write_text(ids[1] + "\n")
    assert prepare_dataset("pascal-context-59", tmp_path / "raw", tmp_path / "r2",
                           split_file=tmp_path / "one.txt")["images"] == 1


# ---------------------------------------------------------------------------------------------- COCO
def test_coco_stuff_prepare_and_read(tmp_path):
    coco = tmp_path / "raw" / "coco"
    labs = {}
    for k, stem in enumerate(["000000000139", "000000000285", "000000000632"]):
        write(coco / "val2017" / f"{stem}.jpg", rand_image(8, 9))
        lab = np.full((8, 9), 255, np.uint8)
        if k < 2:
            lab[:4] = 0
            lab[4:6] = 11 + k  # 11: unused COCO id 12 -> 255; 12: stop sign -> 11
            lab[6:] = 181
        write(coco / "stuffthingmaps" / "val2017" / f"{stem}.png", lab)
        labs[stem] = lab
    root = tmp_path / "root"
    # the all-unlabelled map is not written (official behaviour); its image is then skipped by the reader
    assert prepare_dataset("coco-stuff", tmp_path / "raw", root) == {"images": 3, "semantic": 2}
    ds = load_dataset("coco-stuff", root)
    assert len(ds) == 2 and len(ds.vocabulary) == 171
    first = ds[0].load().semantic.numpy()
    assert (first[:4] == 0).all() and (first[4:6] == 255).all() and (first[6:] == 170).all()
    assert (ds[1].load().semantic.numpy()[4:6] == 11).all() and ds.vocabulary.names[11] == "stop sign"


def make_raw_coco_panoptic(raw, zipped=True):
    coco = raw / "coco"
    categories = [{"id": 1, "name": "person", "isthing": 1}, {"id": 3, "name": "car", "isthing": 1},
                  {"id": 92, "name": "banner", "isthing": 0}, {"id": 200, "name": "rug", "isthing": 0}]
    images, annotations, pngs = [], [], {}
    for k in range(2):
        stem = f"00000000{k + 1:04d}"
        write(coco / "val2017" / f"{stem}.jpg", rand_image(10, 12))
        ids = np.zeros((10, 12), np.int64)
        ids[:4] = 1000 + k
        ids[4:7, :6] = 70000 + k
        ids[7:, :] = 2
        ids[4:7, 6:] = 5
        segments = [{"id": 1000 + k, "category_id": 92, "iscrowd": 0},
                    {"id": 70000 + k, "category_id": 1, "iscrowd": 0},
                    {"id": 2, "category_id": 200, "iscrowd": 0}, {"id": 5, "category_id": 3, "iscrowd": 1}]
        images.append({"id": 100 + k, "file_name": f"{stem}.jpg", "height": 10, "width": 12})
        annotations.append({"image_id": 100 + k, "file_name": f"{stem}.png", "segments_info": segments})
        pngs[f"{stem}.png"] = id_to_rgb(ids)
    (coco / "annotations").mkdir(parents=True)
    (coco / "annotations" / "panoptic_val2017.json").write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": categories}))
    if zipped:
        import io

        with zipfile.ZipFile(coco / "annotations" / "panoptic_val2017.zip", "w") as zf:
            for name, arr in pngs.items():
                buf = io.BytesIO()
                Image.fromarray(arr).save(buf, format="PNG")
                zf.writestr(f"panoptic_val2017/{name}", buf.getvalue())
    else:
        for name, arr in pngs.items():
            write(coco / "panoptic_val2017" / name, arr)
    return coco


def test_coco_panoptic_prepare_and_read(tmp_path):
    make_raw_coco_panoptic(tmp_path / "raw")
    root = tmp_path / "root"
    assert prepare_dataset("coco-panoptic", tmp_path / "raw", root) == {"images": 2, "semantic": 2, "panoptic": 2}
    ds = load_dataset("coco-panoptic", root)
    assert ds.evaluations == ("semantic", "panoptic", "instance") and len(ds.vocabulary) == 133
    # contiguous ids in the built-in order: person 0, car 2, banner 80, rug 132; things = ids < 92
    assert sum(ds.thing_classes) == 80 and ds.thing_classes[2] and not ds.thing_classes[80]
    ex = ds[0].load(("semantic", "panoptic", "instance"))
    sem = ex.semantic.numpy()
    assert (sem[:4] == 80).all() and (sem[4:7, :6] == 0).all() and (sem[7:] == 132).all() and (sem[4:7, 6:] == 2).all()
    assert sorted((s["id"], s["category_id"], s["iscrowd"]) for s in ex.segments) == [
        (2, 132, 0), (5, 2, 1), (1000, 80, 0), (70000, 0, 0)]
    assert (ex.panoptic.numpy()[4:7, :6] == 70000).all()
    # instances derived from the panoptic things (no instances json): person and the crowd car
    derived = sorted((i["category_id"], i["iscrowd"], int(i["mask"].sum())) for i in ex.instances)
    assert derived == [(0, 0, 18), (2, 1, 18)]
    # without panoptic_semseg the semantic maps are derived from the panoptic PNGs: the same maps
    import shutil

    shutil.rmtree(root / "coco" / "panoptic_semseg_val2017")
    assert (load_dataset("coco-panoptic", root)[0].load().semantic.numpy() == sem).all()
    # an instances json (polygons) replaces the derived instances and carries its areas
    inst = {"images": [{"id": 100, "file_name": "000000000001.jpg", "height": 10, "width": 12}],
            "categories": [{"id": 1, "name": "person"}],
            "annotations": [{"id": 9, "image_id": 100, "category_id": 1, "iscrowd": 0, "area": 11.5,
                             "segmentation": [[0, 0, 6, 0, 6, 4, 0, 4]]}]}
    (root / "coco" / "annotations" / "instances_val2017.json").write_text(json.dumps(inst))
    ds = load_dataset("coco-panoptic", root)
    (person,) = ds[0].load(("instance",)).instances
    assert person["category_id"] == 0 and person["area"] == 11.5 and person["mask"][:4, :6].all()
    assert ds[1].load(("instance",)).instances == []


def test_coco_panoptic_missing_png_is_listed(tmp_path):
    make_raw_coco_panoptic(tmp_path / "raw", zipped=False)
    root = tmp_path / "root"
    prepare_dataset("coco-panoptic", tmp_path / "raw", root)
    (root / "coco" / "panoptic_val2017" / "000000000002.png").unlink()
    with pytest.raises(DatasetError, match="1 annotations .* lack their files: .*000000000002.png"):
        load_dataset("coco-panoptic", root)
    assert len(load_dataset("coco-panoptic", root, strict=False)) == 1


# ---------------------------------------------------------------------------------------------- ADE20K-847
def test_ade847_prepare_parses_the_official_table_without_running_it(tmp_path):
    table = tmp_path / "prepare_ade20k_full_sem_seg.py"
    table.write_text('raise SystemExit("this file must not run")\nimport os\n'
                     'ADE20K_SEM_SEG_FULL_CATEGORIES = [\n    {"name": "wall", "id": 2978, "trainId": 0},\n'
                     '    {"name": "building, edifice", "id": 312, "trainId": 1},\n]\n')
    assert read_ade847_mapping(table) == {2978: 0, 312: 1}
    src = tmp_path / "raw" / "ADE20K_2021_17_01" / "images" / "ADE" / "validation" / "home" / "bedroom"
    for stem, (h, w) in (("ADE_val_00000001", (9, 7)), ("ADE_val_00000002", (520, 600))):
        write(src / f"{stem}.jpg", rand_image(h, w))
        seg = np.zeros((h, w, 3), np.uint8)
        seg[: h // 2] = (114, 162, 0)  # floor(114 / 10) * 256 + 162 = 2978 (wall)
        seg[h // 2:, : w // 2] = (10, 56, 0)  # 312 (building)
        write(src / f"{stem}_seg.png", seg)
    write(src.parent / "ADE_train_00000001.jpg", rand_image(5, 5))  # training images are not converted
    root = tmp_path / "root"
    with pytest.raises(ValueError, match="needs --mapping"):
        prepare_dataset("ade20k-847", tmp_path / "raw", root)
    assert prepare_dataset("ade20k-847", tmp_path / "raw", root, mapping=table) == {"images": 2, "semantic": 2}
    ds = load_dataset("ade20k-847", root)
    assert ds.ignore_label == 65535 and len(ds.vocabulary) == 847 and len(ds) == 2
    small, large = ds[0].load(), ds[1].load()
    assert small.image.shape == (3, 9, 7)
    sem = small.semantic.numpy()
    assert (sem[:4] == 0).all() and (sem[4:, :3] == 1).all() and (sem[4:, 3:] == 65535).all()
    # short side 520 > 512: resized to 512 x round(600 / 520 * 512) = 591, labels with nearest neighbour
    assert large.image.shape == (3, 512, 591) and large.semantic.shape == (512, 591)
    assert set(np.unique(large.semantic.numpy()).tolist()) == {0, 1, 65535}
    json_table = tmp_path / "table.json"
    json_table.write_text(json.dumps([{"id": 5, "trainId": 1}, {"id": 6, "trainId": 1}]))
    with pytest.raises(ValueError, match="without repeats"):
        read_ade847_mapping(json_table)


# ---------------------------------------------------------------------------------------------- custom + CLI
def test_custom_dataset(tmp_path):
    images, labels = tmp_path / "img", tmp_path / "lab"
    write(images / "a.png", rand_image(6, 5))
    write(images / "b.jpg", rand_image(4, 4))
    write(labels / "a.png", np.array([[0, 1, 2, 255, 7]] * 6, np.uint8))
    write(labels / "b.png", np.ones((4, 4), np.uint8))
    (tmp_path / "classes.txt").write_text("cat\nsofa|couch\nsky\n")
    ds = load_dataset(f"custom:{images},{labels},{tmp_path / 'classes.txt'}")
    assert ds.vocabulary.names == ["cat", "sofa", "sky"] and ds.ignore_label == 255 and ds.evaluations == ("semantic",)
    assert [s.image_id for s in ds.samples] == ["a", "b"]
    assert ds[0].load().semantic[0].tolist() == [0, 1, 2, 255, 7]
    (labels / "b.png").unlink()
    with pytest.raises(DatasetError, match="1 images .* no label map .*: b$"):
        load_custom_dataset(images, labels, tmp_path / "classes.txt")
    with pytest.raises(ValueError, match="custom:IMAGES_DIR,LABELS_DIR,CLASS_FILE"):
        load_dataset(f"custom:{images},{labels}")
    with pytest.raises(FileNotFoundError, match="labels folder not found"):
        load_custom_dataset(images, tmp_path / "nope", tmp_path / "classes.txt")


def test_prepare_cli(tmp_path, monkeypatch, capsys):
    raw, mapping, _ = make_raw_ade(tmp_path / "raw", n=1)
    out = tmp_path / "root"
    assert cli.main(["prepare", "ade20k-150", "--raw", str(tmp_path / "raw"), "--out", str(out),
                     "--mapping", str(mapping)]) == 0
    printed = capsys.readouterr().out
    assert "prepared ade20k-150" in printed and "1 panoptic" in printed and "--dataset ade20k-150" in printed
    assert load_dataset("ade20k-150", out).evaluations == ("semantic", "panoptic", "instance")
    assert cli.main(["prepare", "pascal-voc-21", "--raw", str(tmp_path / "nothing"), "--out", str(out)]) == 1
    assert "raw download folder not found" in capsys.readouterr().err
    assert cli.main(["prepare", "coco-stuff", "--raw", str(tmp_path / "raw"), "--out", str(out)]) == 1
    assert "stuffthingmaps/val2017" in capsys.readouterr().err

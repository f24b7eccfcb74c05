"""Batch inputs without a model: output keys stay inside the output folder, are short enough for any file system,
keep the names an earlier run gave them, never make an output replace an input, and links are reported."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from maskadapter.inference import formats
from maskadapter.inference.inputs import MAX_KEY_PART_BYTES, OutputTarget, collect_inputs
from maskadapter.inference.runstore import RESERVED_KEYS, output_target


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def _safe(key: str) -> bool:
    parts = key.split("/")
    return not os.path.isabs(key) and all(p not in ("", ".", "..") for p in parts)


def test_keys_from_json_list_and_pattern_never_climb_out(tmp_path, monkeypatch):
    work = tmp_path / "work"
    (work / "a").mkdir(parents=True)
    for name in ("x.jpg", "y.jpg", "z.jpg"):
        _touch(tmp_path / name)
    monkeypatch.chdir(work)
    Path("ann.json").write_text(json.dumps({"images": [{"id": 3, "file_name": "../x.jpg"}]}))
    Path("list.txt").write_text("../y.jpg\n")
    routes = {
        "json beside it": collect_inputs(images_json="ann.json"),
        "json, root .": collect_inputs(images_json="ann.json", image_root="."),
        "list": collect_inputs(image_lists=["list.txt"]),
        "pattern": collect_inputs(["*/../../z.jpg"]),
    }
    keys = {route: [item.key for item in found.items] for route, found in routes.items()}
    assert keys == {"json beside it": ["x"], "json, root .": ["x"], "list": ["y"], "pattern": ["z"]}
    assert all(_safe(k) for ks in keys.values() for k in ks)


def test_long_names_are_shortened_deterministically(tmp_path):
    long_a = "a" * 240 + "1.jpg"
    long_b = "a" * 240 + "2.jpg"
    folder = tmp_path / ("é" * 120)  # 240 bytes in UTF-8
    for name in (long_a, long_b):
        _touch(folder / name)
    found = collect_inputs([str(tmp_path)], recursive=True)
    keys = [i.key for i in found.items]
    assert len(set(keys)) == 2
    for key in keys:
        parts = key.split("/")
        assert all(len(p.encode()) <= MAX_KEY_PART_BYTES for p in parts)
        assert parts[0].startswith("é" * 10) and parts[1].startswith("a" * 100) and "~" in parts[1]
        # every file the formats write, and its hidden temporary, fits a 255-byte name
        for fmt in (formats.create("files"), formats.create("coco", ("panoptic",), True)):
            for rel in fmt.paths(key).values():
                name = Path(rel).name
                assert len(f".{name}.tmp-4194304-abcdef12".encode()) <= 255
    assert collect_inputs([str(tmp_path)], recursive=True) == found


def test_symlinked_folders_are_listed_not_entered(tmp_path):
    src = tmp_path / "in"
    _touch(src / "top.png")
    _touch(tmp_path / "elsewhere" / "far.png")
    (src / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    deep = collect_inputs([str(src)], recursive=True)
    assert [i.key for i in deep.items] == ["top"] and deep.skipped_links == [str(src / "link")]
    flat = collect_inputs([str(src)])
    assert flat.skipped_links == [str(src / "link")] and flat.skipped_folders == []


def test_a_file_that_is_no_image_is_refused(tmp_path):
    notes = _touch(tmp_path / "notes.txt")
    with pytest.raises(ValueError, match="notes.txt is not an image"):
        collect_inputs([str(notes)])


def test_earlier_keys_are_kept_and_outputs_never_replace_inputs(tmp_path):
    files = formats.create("files")
    photo, more = _touch(tmp_path / "photo.jpg"), _touch(tmp_path / "more_photos" / "photo.png")
    out = tmp_path / "out"
    fresh = collect_inputs([str(photo), str(more)], target=OutputTarget(out, lambda k: files.paths(k).values()))
    assert [i.key for i in fresh.items] == ["photo_jpg", "photo_png"]
    pinned = OutputTarget(out, lambda k: files.paths(k).values(), {os.path.realpath(photo): "photo"})
    assert [i.key for i in collect_inputs([str(photo), str(more)], target=pinned).items] == ["photo", "photo_png"]

    p = tmp_path / "p"
    cat, own_labels = _touch(p / "cat.jpg"), _touch(p / "cat_labels.png")  # the user's own file
    (p / "dog_labels.png").mkdir()  # a folder where an output would go
    _touch(p / "dog.jpg")
    found = collect_inputs([str(p / "*")], target=output_target(p, files), reserved=RESERVED_KEYS)
    keys = {Path(i.path).name: i.key for i in found.items}
    assert keys == {"cat.jpg": "cat_2", "cat_labels.png": "cat_labels", "dog.jpg": "dog_2"}
    assert sorted(Path(path).name for path, _ in found.conflicts) == ["cat.jpg", "dog.jpg"]
    reasons = dict((Path(path).name, why) for path, why in found.conflicts)
    assert "cat_labels.png is an input image" in reasons["cat.jpg"] and "is a folder" in reasons["dog.jpg"]
    for item in found.items:
        assert not any((p / rel).resolve() in (cat.resolve(), own_labels.resolve())
                       for rel in files.paths(item.key).values())


def test_files_an_earlier_run_wrote_are_skipped(tmp_path):
    files = formats.create("files")
    p = tmp_path / "p"
    _touch(p / "cat.jpg")
    for rel in files.paths("cat").values():
        _touch(p / rel)
    manifest = {"format": "maskadapter-batch", "run_id": "r", "categories": [], "layout": files.paths("{key}"),
                "config": {"format": files.describe(), "tasks": ["semantic"]},
                "images": [{"id": 1, "key": "cat", "file_name": "cat.jpg", "path": str(p / "cat.jpg"),
                            "source": os.path.realpath(p / "cat.jpg")}]}
    (p / "manifest.json").write_text(json.dumps(manifest))
    found = collect_inputs([str(p / "*")], target=output_target(p, files), reserved=RESERVED_KEYS)
    assert [(Path(i.path).name, i.key) for i in found.items] == [("cat.jpg", "cat")]
    assert sorted(Path(f).name for f in found.own_outputs) == ["cat_labels.png", "cat_overlay.png"]

"""Batch segmentation (`maskadapter segment` over collections): inputs, sharding, resume, pipelining, batching,
COCO outputs, merging; several processes through torchrun (gloo on the CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maskadapter.cli import COMMANDS, main
from maskadapter.cli import merge as merge_cmd
from maskadapter.data.datasets import read_array, rgb_to_id
from maskadapter.evaluation.panoptic import PanopticEvaluator
from maskadapter.fileio import is_temporary
from maskadapter.fingerprint import sha256_file
from maskadapter.inference.batch import BatchOptions, SizeBatcher, run_batch
from maskadapter.inference.inputs import collect_inputs
from maskadapter.inference.predictor import Predictor

from conftest import count_model_calls, save_random_photo, write_tiny_checkpoint
from contract import assert_coco_runs_contract

VOCAB = "cat, sofa|couch, sky"
SIZES = [(90, 120), (64, 48), (100, 100), (50, 120), (120, 90), (70, 70), (33, 99), (80, 60), (60, 80), (48, 64)]
COMMANDS_WITH_MERGE = COMMANDS if merge_cmd in COMMANDS else (*COMMANDS, merge_cmd)


def _image(path: Path, h: int, w: int, seed: int) -> None:
    save_random_photo(path, h, w, seed)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch")
    preset_file, weights = write_tiny_checkpoint(root)
    images = root / "images"
    images.mkdir()
    for i, (h, w) in enumerate(SIZES):
        _image(images / f"im{i:02d}.png", h, w, i)
    (images / "broken.png").write_bytes(b"this is no png")
    return {"root": root, "preset": preset_file, "weights": weights, "images": images}


@pytest.fixture
def one_thread():
    """Single-threaded kernels: what OMP_NUM_THREADS=1 gives the subprocesses (same float rounding)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def segment_args(setup, out: Path, *extra: str) -> list[str]:
    return ["segment", str(setup["images"]), "--vocab", VOCAB, "--preset", str(setup["preset"]), "--weights",
            str(setup["weights"]), "--precision", "fp32", "--task", "panoptic,instance", "--format", "coco",
            "-o", str(out), "--workers", "0", "--quiet", *extra]


def predictor(setup) -> Predictor:
    return Predictor.from_checkpoint(setup["weights"], str(setup["preset"]), precision="fp32", text_cache_dir=False)


def output_files(out: Path) -> dict[str, bytes]:
    """Every output a run leaves that must not depend on how it was run (not the manifest: it holds times; not
    the hidden temporary file a killed writer may leave)."""
    files = {}
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out).as_posix()
        if path.is_file() and not rel.startswith(("records/", "manifest")) and not is_temporary(path):
            files[rel] = path.read_bytes()
    return files


@pytest.fixture(scope="module")
def reference(setup):
    """One process, batch size 1, single-threaded: the outputs every other way of running must reproduce."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = setup["root"] / "reference"
        assert main(segment_args(setup, out)) == 1  # broken.png fails
    finally:
        torch.set_num_threads(threads)
    return out


def run_things(out: Path) -> list[bool]:
    """The panoptic "things" of a finished coco run, in vocabulary order."""
    categories = json.loads((out / "panoptic.json").read_text())["categories"]
    return [bool(c["isthing"]) for c in sorted(categories, key=lambda c: c["id"])]


def deciding_values(setup, folder: Path, names, things: list[bool]) -> dict[str, dict]:
    """Input file name -> the reference prediction's post-processing inputs (what decides each pixel), for
    :func:`contract.assert_coco_runs_contract`: runs that differ in batch size, process count or CPU kernels
    meet the numeric contract, not byte equality."""
    from contract import capture_postprocess

    model = predictor(setup)
    with pytest.MonkeyPatch.context() as patch:
        values = capture_postprocess(patch)
        deciding = {}
        for name in names:
            model.predict(folder / name, VOCAB, things=things, tasks=("panoptic", "instance"))
            deciding[name] = values[-1]
    return deciding


@pytest.fixture(scope="module")
def reference_deciding(setup, reference) -> dict[str, dict]:
    """The deciding values of every image of the reference run."""
    return deciding_values(setup, setup["images"], [f"im{i:02d}.png" for i in range(len(SIZES))],
                           run_things(reference))


# ------------------------------------------------------------------------------------------- inputs (no model)
def test_inputs_folders_patterns_lists_and_keys(tmp_path):
    d1, d2, sub = tmp_path / "d1", tmp_path / "d2", tmp_path / "d1" / "sub"
    sub.mkdir(parents=True)
    d2.mkdir()
    for path in (d1 / "img.png", d2 / "img.png", d1 / "pic.jpg", d1 / "pic.png", d1 / "pic_jpg.PNG", sub / "deep.png",
                 d2 / "Img.jpg"):
        path.write_bytes(b"x")
    (d1 / "notes.txt").write_text("not an image")
    (d1 / ".hidden.png").write_bytes(b"x")

    flat = collect_inputs([str(d1), str(d2)])
    # one key per input, case-insensitively: suffixes tell pic.jpg / pic.png apart, numbers the rest
    assert [(i.name, i.key) for i in flat.items] == [
        ("img.png", "img_png"), ("pic.jpg", "pic_jpg"), ("pic.png", "pic_png"), ("pic_jpg.PNG", "pic_jpg_2"),
        ("Img.jpg", "Img_jpg"), ("img.png", "img_png_2")]
    assert [i.path for i in flat.items][-2:] == [str(d2 / "Img.jpg"), str(d2 / "img.png")]
    assert flat.skipped_folders == [str(sub)] and flat.non_images == [str(d1 / "notes.txt")]
    assert (str(d1 / "pic.jpg"), "pic_jpg") in flat.renamed and len(flat.renamed) == 6
    assert collect_inputs([str(d2 / "img.png")]).renamed == []
    assert collect_inputs([str(d1), str(d2)]) == flat  # deterministic

    twice = collect_inputs([str(d2), str(d2 / "img.png"), str(d2)])
    assert [i.name for i in twice.items] == ["Img.jpg", "img.png"] and len(twice.repeated) == 3
    deep = collect_inputs([str(d1)], recursive=True)
    assert ("sub/deep.png", "sub/deep") in [(i.name, i.key) for i in deep.items] and not deep.skipped_folders
    out_inside = collect_inputs([str(d1)], recursive=True, exclude=str(sub))
    assert "sub/deep" not in [i.key for i in out_inside.items] and out_inside.excluded == [str(sub)]

    pattern = collect_inputs([str(tmp_path / "**" / "*.png")])
    assert [i.key for i in pattern.items] == ["d1/img", "d1/pic", "d1/sub/deep", "d2/img"]
    listing = tmp_path / "list.txt"
    listing.write_text(f"# images\nd2/img.png\n\n{d1 / 'pic.png'}\nd1/sub/deep.png\n")
    assert [(i.name, i.key) for i in collect_inputs(image_lists=[str(listing)]).items] == [
        ("d2/img.png", "d2/img"), ("d1/pic.png", "d1/pic"), ("d1/sub/deep.png", "d1/sub/deep")]
    d3 = tmp_path / "elsewhere" / "d3"
    for rel in ("manifest.png", "records/a.png", "records_2/a.png"):  # the output folder's own names
        (d3 / rel).parent.mkdir(parents=True, exist_ok=True)
        (d3 / rel).write_bytes(b"x")
    own = collect_inputs([str(d3)], recursive=True, reserved=("manifest", "records"))
    assert [i.key for i in own.items] == ["manifest_2", "records_3/a", "records_2/a"]


def test_inputs_coco_json_and_errors(tmp_path):
    images = tmp_path / "val"
    images.mkdir()
    for name in ("a.jpg", "b.jpg"):
        (images / name).write_bytes(b"x")
    ann = tmp_path / "instances.json"
    ann.write_text(json.dumps({"images": [{"id": 42, "file_name": "b.jpg"}, {"id": 7, "file_name": "a.jpg"}]}))
    got = collect_inputs(images_json=str(ann), image_root=str(images))
    assert [(i.name, i.key, i.image_id) for i in got.items] == [("b.jpg", "b", 42), ("a.jpg", "a", 7)]

    with pytest.raises(ValueError, match="cannot be combined"):
        collect_inputs([str(images)], images_json=str(ann))
    ann.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 1, "file_name": "b.jpg"}]}))
    with pytest.raises(ValueError, match="id twice"):
        collect_inputs(images_json=str(ann), image_root=str(images))
    ann.write_text(json.dumps({"images": [{"id": 1, "file_name": "c.jpg"}]}))
    with pytest.raises(FileNotFoundError, match="c.jpg"):
        collect_inputs(images_json=str(ann), image_root=str(images))
    with pytest.raises(FileNotFoundError, match="no files match"):
        collect_inputs([str(tmp_path / "*.webp")])
    with pytest.raises(FileNotFoundError, match="no such image or folder"):
        collect_inputs([str(tmp_path / "missing")])
    with pytest.raises(ValueError, match="no images"):
        collect_inputs([str(tmp_path)])  # only sub-folders here
    listing = tmp_path / "list.txt"
    listing.write_text("val/a.jpg\nval/zzz.jpg\n")
    with pytest.raises(FileNotFoundError, match="line 2"):
        collect_inputs(image_lists=[str(listing)])


def test_size_batcher_groups_equal_sizes_in_arrival_order():
    def run(samples, batch_size, max_pending):
        batcher = SizeBatcher(batch_size, size_of=lambda s: s[1], max_pending=max_pending)
        ready = [batch for s in samples for batch in batcher.add(s)] + batcher.flush()
        return [[s[0] for s in batch] for batch in ready]

    samples = [(0, "A"), (1, "B"), (2, "A"), (3, "C"), (4, "D"), (5, "B")]
    assert run(samples, 2, 3) == [[0, 2], [1, 5], [3], [4]]
    # past max_pending waiting samples, the fullest group leaves unfilled (so memory stays bounded)
    assert run(samples, 3, 2) == [[0, 2], [1], [3], [4], [5]]
    assert run([(0, "A"), (1, "A"), (2, "B"), (3, "C")], 3, 2) == [[0, 1], [2], [3]]
    assert run(samples, 1, None) == [[i] for i in range(6)]


# ------------------------------------------------------------------------------------------- one process
@pytest.mark.numeric
def test_batches_and_workers_reproduce_one_by_one(setup, reference, reference_deciding, one_thread,
                                                 monkeypatch):
    calls = count_model_calls(monkeypatch)
    out = setup["root"] / "batched"
    assert main(segment_args(setup, out, "--batch-size", "2", "--workers", "2")) == 1
    # 8 images share a padded size of 64x64 and 2 one of 32x64: five forward passes of two images
    assert sorted(calls) == [2, 2, 2, 2, 2]
    ref, got = output_files(reference), output_files(out)
    assert got.keys() == ref.keys()
    # Batch size 2 runs the network's kernels on other shapes (other blocking, other float rounding, and on
    # another CPU other vector widths): label maps, panoptic maps and masks equal one-by-one prediction except
    # where the reference logits are within float rounding of a tie or threshold; scores agree to 1e-4.
    assert_coco_runs_contract(out, reference, reference_deciding)  # measured: 0 pixels differ (AVX-512), 2 (AVX2)
    calls.clear()
    inline = setup["root"] / "batched-inline"
    assert main(segment_args(setup, inline, "--batch-size", "2", "--workers", "0")) == 1
    # worker processes only decode images: the same batches without them meet the same contract (not bytes:
    # MKL's AVX2 GEMM may round by buffer alignment, even within one process)
    assert output_files(inline).keys() == got.keys()
    assert_coco_runs_contract(inline, reference, reference_deciding)


def test_corrupt_image_is_recorded_and_the_rest_complete(setup, reference):
    manifest = json.loads((reference / "manifest.json").read_text())
    status = {e["file_name"]: e["status"] for e in manifest["images"]}
    assert status.pop("broken.png") == "error" and set(status.values()) == {"ok"} and len(status) == len(SIZES)
    assert manifest["status"] == "complete" and manifest["counts"] == {"images": 11, "ok": 10, "error": 1,
                                                                      "missing": 0}
    broken = next(e for e in manifest["images"] if e["file_name"] == "broken.png")
    assert "cannot read image" in broken["error"]
    record = json.loads((reference / "records" / "broken.json").read_text())
    assert record["status"] == "error" and record["stage"] == "decode"
    assert not (reference / "semantic" / "broken.png").exists()
    assert not [p for p in reference.rglob("*") if is_temporary(p)] and not (reference / "shards").exists()
    assert manifest["config"]["preset"]["name"] == "tiny-fcclip-large" and manifest["versions"]["torch"]
    assert manifest["config"]["vocabulary"] == [["cat"], ["sofa", "couch"], ["sky"]]
    assert manifest["config"]["weights"] == {"files": [["tiny.pth", sha256_file(setup["weights"])]]}
    assert manifest["config"]["precision"] == "fp32" and manifest["config"]["generator"] is None


def test_coco_outputs_load_in_the_panoptic_evaluator_and_pycocotools(setup, reference, one_thread):
    from pycocotools import mask as mask_util
    from pycocotools.coco import COCO

    pan = json.loads((reference / "panoptic.json").read_text())
    is_thing = [bool(c["isthing"]) for c in sorted(pan["categories"], key=lambda c: c["id"])]
    assert is_thing == [True, True, False]  # COCO things by default: cat, sofa (couch); sky is stuff
    model = predictor(setup)
    by_id = {im["id"]: im for im in pan["images"]}
    evaluator = PanopticEvaluator(3, is_thing)
    gt_instances, expected = [], {}
    for ann in pan["annotations"]:
        image = by_id[ann["image_id"]]
        ids = rgb_to_id(read_array(reference / "panoptic" / ann["file_name"]))
        assert ids.shape == (image["height"], image["width"])
        for seg in ann["segments_info"]:
            assert {"id", "category_id", "iscrowd", "bbox", "area"} <= set(seg)
            ys, xs = np.nonzero(ids == seg["id"])
            assert seg["area"] == ys.size and seg["bbox"] == [xs.min(), ys.min(), np.ptp(xs) + 1, np.ptp(ys) + 1]
        direct = model.predict(setup["images"] / image["file_name"], VOCAB, things=is_thing)
        evaluator.process(ids, ann["segments_info"], direct.panoptic.numpy(), direct.segments)
        inst = direct.instances
        expected[ann["image_id"]] = inst.rles
        for k, (rle, c) in enumerate(zip(inst.rles, inst.classes.tolist())):
            gt_instances.append({"id": len(gt_instances) + 1, "image_id": ann["image_id"], "category_id": c,
                                 "segmentation": rle, "iscrowd": 0, "area": inst.areas()[k], "bbox": inst.boxes()[k]})
    pq = evaluator.evaluate()
    assert pq["num_images"] == 10 and pq["PQ"] == pytest.approx(100.0)  # the files hold what predict() returns

    gt = COCO()
    gt.dataset = {"images": pan["images"], "annotations": gt_instances, "categories": pan["categories"]}
    gt.createIndex()
    results = gt.loadRes(str(reference / "instances.json"))
    assert len(results.anns) == len(gt_instances) > 0
    for image_id, rles in expected.items():
        anns = results.loadAnns(results.getAnnIds(imgIds=[image_id]))
        assert [a["segmentation"]["counts"] for a in anns] == [r["counts"] for r in rles]
        assert all(a["bbox"] == [float(v) for v in mask_util.toBbox(a["segmentation"])] for a in anns)
    ours = json.loads((reference / "instances.json").read_text())
    assert all(r["area"] == int(mask_util.area(r["segmentation"])) for r in ours)  # mask areas in the file


def test_merge_after_a_crash_then_resume(setup, reference, reference_deciding, one_thread, monkeypatch, capsys):
    import shutil

    out = setup["root"] / "crashed"
    shutil.copytree(reference, out)
    lost = ["im03", "im07", "im08"]  # a crash before their records were written
    for key in lost:
        (out / "records" / f"{key}.json").unlink()
    (out / "semantic" / "im07.png").unlink()
    for name in ("panoptic.json", "instances.json"):
        (out / name).unlink()
    assert main(["merge", str(out), "--quiet"], commands=COMMANDS_WITH_MERGE) == 1
    assert "11 images: 7 segmented, 1 failed, 3 missing" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "incomplete" and manifest["counts"]["missing"] == 3
    assert sorted(e["key"] for e in manifest["images"] if e["status"] == "missing") == lost
    merged = json.loads((out / "panoptic.json").read_text())
    assert len(merged["images"]) == len(merged["annotations"]) == 7

    calls = count_model_calls(monkeypatch)
    assert main(segment_args(setup, out)) == 1
    assert len(calls) == 3  # only the lost images (the broken one fails again in its decoder)
    got, ref = output_files(out), output_files(reference)
    assert got.keys() == ref.keys()
    kept = [f"semantic/{k}.png" for k in ("im00", "im01", "im02", "im04", "im05", "im06", "im09")]
    assert all(got[name] == ref[name] for name in kept)  # the images done before are not rewritten
    # recomputed images: even in one process MKL's AVX2 GEMM may round by the alignment of its buffers, so the
    # recomputed outputs meet the numeric contract of the reference, not byte equality
    assert_coco_runs_contract(out, reference, reference_deciding)
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"
    calls.clear()
    assert main(segment_args(setup, out)) == 1 and calls == []  # nothing left to do
    assert main(segment_args(setup, out, "--overwrite")) == 1 and len(calls) == 10


def test_a_coco_folder_of_another_configuration_is_refused(setup, reference, capsys):
    args = segment_args(setup, reference)
    args[args.index(VOCAB)] = "cat, dog"
    before = (reference / "manifest.json").read_bytes()
    assert main(args) == 1
    assert "holds outputs of another run (differs in things, vocabulary)" in capsys.readouterr().err
    assert (reference / "manifest.json").read_bytes() == before


# ------------------------------------------------------------------------------------------- several processes
def torchrun(args: list[str], **popen) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             "-m", "maskadapter", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, **popen)


def descendants(pid: int) -> list[int]:
    """The ids of every process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def finished(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


@pytest.mark.slow
@pytest.mark.distributed
def test_torchrun_two_processes_meet_the_contract_of_one_process(setup, reference, reference_deciding):
    out = setup["root"] / "two"
    code, stdout, stderr = finished(torchrun(segment_args(setup, out)))
    assert code != 0 and "1 of 11 images failed" in stderr  # the broken image
    assert stdout.count("11 images: 10 segmented (10 now, 0 done before)") == 1  # rank 0 alone reports
    assert "on 2 process(es)" in stdout
    # other processes, other kernels' blocking: the numeric contract of one process, not byte equality
    assert output_files(out).keys() == output_files(reference).keys()
    assert_coco_runs_contract(out, reference, reference_deciding)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and not (out / "shards").exists()


@pytest.mark.slow
@pytest.mark.distributed
def test_torchrun_resumes_a_one_process_run(setup, reference, reference_deciding, one_thread):
    out = setup["root"] / "grow"
    assert main(segment_args(setup, out, "--limit", "4")) == 1  # broken.png, im00-im02
    done = {p.name: p.stat().st_mtime_ns for p in (out / "records").glob("im*.json")}
    assert len(done) == 3
    code, stdout, stderr = finished(torchrun(segment_args(setup, out)))
    assert "11 images: 10 segmented (7 now, 3 done before)" in stdout, stdout + stderr[-3000:]
    assert {p: (out / "records" / p).stat().st_mtime_ns for p in done} == done  # not recomputed
    assert output_files(out).keys() == output_files(reference).keys()
    assert_coco_runs_contract(out, reference, reference_deciding)


@pytest.mark.slow
@pytest.mark.distributed
def test_killed_two_process_run_resumes_in_one_process(setup, tmp_path, one_thread, monkeypatch, capsys):
    images = tmp_path / "many"
    images.mkdir()
    for i in range(16):
        _image(images / f"p{i:02d}.jpg", 200 + 4 * i, 260, 100 + i)
    args = segment_args(setup, tmp_path / "out")
    args[1] = str(images)
    proc = torchrun(args)
    records = tmp_path / "out" / "records"
    try:
        while proc.poll() is None and len(list(records.glob("*.json")) if records.is_dir() else []) < 3:
            time.sleep(0.005)
    finally:
        for pid in [proc.pid, *descendants(proc.pid)]:  # torchrun starts its workers in sessions of their own
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.communicate(timeout=60)
    out = tmp_path / "out"
    done = {p.name: p.stat().st_mtime_ns for p in records.glob("*.json")}
    assert 3 <= len(done) < 16, "the run ended before it could be killed"
    for name in done:  # a record is written last: its outputs are complete
        assert Image.open(out / "semantic" / name.replace(".json", ".png")).size[0] == 260

    assert main(["merge", str(out), "--quiet"], commands=COMMANDS_WITH_MERGE) == 1
    assert f"16 images: {len(done)} segmented, 0 failed, {16 - len(done)} missing" in capsys.readouterr().out
    assert len(json.loads((out / "panoptic.json").read_text())["annotations"]) == len(done)

    calls = count_model_calls(monkeypatch)
    assert main(args) == 0
    assert len(calls) == 16 - len(done)  # one process finishes what two began
    assert {p: (records / p).stat().st_mtime_ns for p in done} == done
    fresh = tmp_path / "fresh"
    assert main([*args[:args.index("-o")], "-o", str(fresh), *args[args.index("-o") + 2:]]) == 0
    assert output_files(out).keys() == output_files(fresh).keys()
    assert_coco_runs_contract(out, fresh, deciding_values(setup, images, [f"p{i:02d}.jpg" for i in range(16)],
                                                       run_things(fresh)))


@pytest.mark.slow
def test_run_batch_from_python(setup, tmp_path):
    model = predictor(setup)
    items = collect_inputs([str(setup["images"])]).items[1:4]  # im00-im02
    options = BatchOptions(("panoptic",), workers=0, progress=False)
    report = run_batch(model, items, VOCAB, tmp_path / "files", options)
    assert (report.total, report.ok, report.computed, report.failed, report.missing) == (3, 3, 3, 0, 0)
    assert [r["name"] for r in report.rows] == ["im00.png", "im01.png", "im02.png"]
    assert report.rows[0]["size"] == report.rows[0]["input_size"] == SIZES[0]
    for item in items:
        data = json.loads((tmp_path / "files" / f"{item.key}.json").read_text())
        assert data["task"] == "panoptic" and "segments_info" in data
        assert (tmp_path / "files" / f"{item.key}_overlay.png").is_file()
    assert report.files == ["manifest.json"]

    options = BatchOptions(("semantic",), "coco", overlays=True, workers=0, progress=False)
    report = run_batch(model, items, VOCAB, tmp_path / "coco", options)
    assert sorted(p.name for p in (tmp_path / "coco" / "overlays").iterdir()) == ["im00.png", "im01.png", "im02.png"]
    assert report.files == ["manifest.json"] and not (tmp_path / "coco" / "panoptic").exists()
    with pytest.raises(ValueError, match="format must be one of"):
        BatchOptions(format="parquet")
    with pytest.raises(ValueError, match="batch_size"):
        BatchOptions(batch_size=0)

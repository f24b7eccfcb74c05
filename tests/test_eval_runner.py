"""`maskadapter eval` end to end on a fabricated ADE-150-style dataset with a fabricated tiny checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_util

import maskadapter.cli as cli
from maskadapter.data.datasets import load_dataset, rgb_to_id
from maskadapter.data.prepare import prepare_dataset
from maskadapter.data.vocabularies import builtin_vocabulary
from maskadapter.evaluation import InstanceEvaluator, PanopticEvaluator, SemSegEvaluator
from maskadapter.evaluation.runner import run_evaluation
from maskadapter.inference.postprocess import category_overlap
from maskadapter.inference.predictor import Predictor
from maskadapter.modeling.build import build_model, load_preset_file

from conftest import write_tiny_preset


def write(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def make_raw_ade_from_predictions(raw, predictor, n=3, h=20, w=28):
    """A raw ADEChallengeData2016 whose annotations are built from the tiny model's own predictions, so that
    mIoU, PQ, AP and the GT-mask accuracy are neither 0 nor 100.

    Each image: rows 0-1 'other' (ignored); elsewhere the predicted class, except a block labelled with the
    class the adapter gives that block in GT-mask mode (when it differs); the predicted panoptic segments of
    the thing classes (= the classes predicted anywhere) become the instances."""
    from maskadapter.inference.ground_truth import classify_ground_truth

    vocab = builtin_vocabulary("ade20k_150")
    rng = np.random.default_rng(1)
    src = raw / "ADEChallengeData2016"
    images = []
    for k in range(n):  # predictions are made on the decoded JPEGs, as the evaluation will see them
        path = src / "images" / "validation" / f"ADE_val_{k + 1:08d}.jpg"
        write(path, rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        images.append(np.array(Image.open(path)))
    semantic = [predictor.predict(im, vocab, tasks=("semantic",)).semantic.numpy() for im in images]
    things = sorted({int(c) for sem in semantic for c in np.unique(sem)})
    flags = [c in things for c in range(150)]
    mapping = raw / "ade20k_instance_catid_mapping.txt"
    raw.mkdir(parents=True, exist_ok=True)
    mapping.write_text("Instance\tSemantic\tFull\n" + "".join(f"{j + 1}\t{c + 1}\t0\n" for j, c in enumerate(things)))
    block = np.zeros((h, w), bool)
    block[14:, 18:] = True
    for k, (image, sem) in enumerate(zip(images, semantic)):
        stem = f"ADE_val_{k + 1:08d}"
        labels = sem.astype(np.int64)
        labels[block] = 0 if 0 not in labels[~block] else 1  # wall (or building), a stuff class
        labels[:2] = 255
        gt = classify_ground_truth(predictor.model, image, labels, vocab, text_classifier=predictor.text_classifier)
        block_class = int(gt.predicted[gt.class_ids.tolist().index(int(labels[block][0]))])
        if block_class not in labels[~block]:
            labels[block] = block_class
        result = predictor.predict(image, vocab, tasks=("panoptic",), things=flags)
        ins = np.zeros((h, w, 3), np.uint8)
        for i, seg in enumerate(s for s in result.segments if s["isthing"]):
            mask = (result.panoptic.numpy() == seg["id"]) & ~block
            mask[:2] = False
            ins[mask] = (things.index(seg["category_id"]) + 1, i + 1, 0)
        write(src / "annotations" / "validation" / f"{stem}.png", ((labels + 1) % 256).astype(np.uint8))
        write(src / "annotations_instance" / "validation" / f"{stem}.png", ins)
    return src, mapping


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("eval")
    # overlap threshold 0 so that the random-weight generator yields panoptic segments
    preset_file = write_tiny_preset(base / "tiny.json", overlap_threshold=0.0)
    preset, arch = load_preset_file(preset_file)
    torch.manual_seed(0)
    model = build_model(preset, arch)
    weights = base / "tiny.pth"
    torch.save({"model": model.state_dict()}, weights)
    text_cache = base / "text-cache"  # shared by every run: the 150 classes are encoded once
    predictor = Predictor(model, preset, precision="fp32", text_cache_dir=text_cache)
    src, mapping = make_raw_ade_from_predictions(base / "raw", predictor)
    root = base / "datasets"
    prepare_dataset("ade20k-150", src, root, mapping=mapping)
    return {"base": base, "preset": preset_file, "weights": weights, "root": root, "text_cache": text_cache,
            "predictor": predictor}


def run_cli(monkeypatch, args):
    return cli.main(args)


def eval_args(setup, out, *extra):
    return ["eval", "--preset", str(setup["preset"]), "--weights", str(setup["weights"]), "--dataset", "ade20k-150",
            "--data-root", str(setup["root"]), "--output", str(out), "--device", "cpu", "--quiet",
            "--text-cache-dir", str(setup["text_cache"]), *extra]


@pytest.fixture(scope="module")
def first_run(setup):
    """One 1-process CLI evaluation (all tasks): its output folder and what it printed."""
    import contextlib
    import io

    out = setup["base"] / "out1"
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        assert run_cli(mp, eval_args(setup, out)) == 0
    return out, printed.getvalue()


def nan_to_none(value):
    if isinstance(value, dict):
        return {k: nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [nan_to_none(v) for v in value]
    return None if isinstance(value, float) and value != value else value


def evaluate_cache_directly(out, dataset, seen):
    """Metrics from the cached files, decoded here independently of the runner."""
    C, names = len(dataset.vocabulary), dataset.vocabulary.names
    sem = SemSegEvaluator(C, 255, names, seen)
    pan = PanopticEvaluator(C, dataset.thing_classes, names, seen)
    ins = InstanceEvaluator(C, names, seen)
    for index, sample in enumerate(dataset.samples):
        ex = sample.load(("semantic", "panoptic", "instance"))
        pred_dir = out / "predictions"
        record = json.loads((pred_dir / f"{sample.image_id}.json").read_text())
        sem_pred = np.array(Image.open(pred_dir / f"{sample.image_id}_sem.png")).astype(np.int64)
        sem.process(np.where(sem_pred == 255, -1, sem_pred), ex.semantic)
        pan_ids = rgb_to_id(np.array(Image.open(pred_dir / f"{sample.image_id}_pan.png")))
        pan.process(pan_ids, record["segments"], ex.panoptic, ex.segments)
        inst = record["instances"]
        masks = np.stack([mask_util.decode(dict(i["segmentation"], counts=i["segmentation"]["counts"].encode()))
                          for i in inst]).astype(bool) if inst else np.zeros((0, *ex.semantic.shape), bool)
        ins.process(index, {"masks": masks, "scores": [i["score"] for i in inst],
                            "classes": [i["category_id"] for i in inst]}, ex.instances)
    return {"semantic": sem.evaluate(), "panoptic": pan.evaluate(), "instance": ins.evaluate()}


def test_eval_cli_results_match_the_cached_predictions(setup, first_run):
    out, printed = first_run
    assert "| model | A-150 mIoU | A-150 PQ | A-150 AP |" in printed and "| tiny-fcclip-large |" in printed
    assert "mIoU" in printed and "PQ_th" in printed and "AP50" in printed
    results = json.loads((out / "results.json").read_text())
    assert (results["num_images"], results["computed"], results["cached"]) == (3, 3, 0)
    assert results["tasks"] == ["semantic", "panoptic", "instance"] and results["precision"] == "fp32"
    assert results["postprocess_before_inference"] is True
    assert (out / "results.md").read_text().startswith("| model | A-150 mIoU | A-150 PQ | A-150 AP |\n|---|")
    dataset = load_dataset("ade20k-150", setup["root"])
    seen = category_overlap(dataset.vocabulary, builtin_vocabulary("coco_panoptic")).tolist()
    assert results["seen_classes"] == sum(seen) and 0 < sum(seen) < 150
    direct = evaluate_cache_directly(out, dataset, seen)
    for task in ("semantic", "panoptic", "instance"):
        assert results["metrics"][task] == nan_to_none(direct[task]), task
    m = results["metrics"]
    assert m["semantic"]["num_images"] == 3 and m["instance"]["num_gt"] == sum(len(s.instances) for s in dataset) > 3
    # the dataset is built from the model's predictions, so no metric is trivially 0 or 100
    assert 0 < m["semantic"]["mIoU"] < 100 and 0 < m["panoptic"]["PQ"] < 100 and 0 < m["instance"]["AP"] < 100
    assert results["summary"]["A-150 mIoU"] == m["semantic"]["mIoU"]
    # the cache holds what the predictor predicts for that image
    predictor = setup["predictor"]
    sample = dataset[1]
    result = predictor.predict(sample.load().image, dataset.vocabulary, things=dataset.thing_classes)
    cached = np.array(Image.open(out / "predictions" / f"{sample.image_id}_sem.png")).astype(np.int64)
    assert (np.where(cached == 255, -1, cached) == result.semantic.numpy()).all()
    record = json.loads((out / "predictions" / f"{sample.image_id}.json").read_text())
    assert [s["category_id"] for s in record["segments"]] == [s["category_id"] for s in result.segments]
    assert [i["score"] for i in record["instances"]] == result.instances["scores"].tolist()


def test_resume_recomputes_only_the_missing_image(setup, first_run, monkeypatch, capsys):
    import shutil

    out = setup["base"] / "out-resume"
    shutil.copytree(first_run[0], out)
    first = json.loads((out / "results.json").read_text())
    (out / "predictions" / "ADE_val_00000002_sem.png").unlink()
    calls = []
    original = Predictor.predict

    def counting(self, image, *args, **kwargs):
        calls.append(tuple(image.shape))
        return original(self, image, *args, **kwargs)

    monkeypatch.setattr(Predictor, "predict", counting)
    assert run_cli(monkeypatch, eval_args(setup, out)) == 0
    second = json.loads((out / "results.json").read_text())
    assert len(calls) == 1 and (second["computed"], second["cached"]) == (1, 2)
    assert second["metrics"] == first["metrics"]
    assert "1 computed, 2 from cache" in capsys.readouterr().out
    # a cache made with other settings is refused; resume=False starts over
    dataset = load_dataset("ade20k-150", setup["root"])
    with pytest.raises(ValueError, match=r"differs in \['precision'\].*--no-resume"):
        run_evaluation(setup["predictor"], dataset, output_dir=out, precision="bf16", progress=False)
    void = setup["predictor"].model.void_embedding.weight
    with torch.no_grad():
        void.add_(1.0)  # other weights under the same preset name
        try:
            with pytest.raises(ValueError, match=r"differs in \['weights'\]"):
                run_evaluation(setup["predictor"], dataset, output_dir=out, progress=False)
        finally:
            void.sub_(1.0)
    calls.clear()
    third = run_evaluation(setup["predictor"], dataset, tasks=["semantic"], output_dir=out, limit=1, resume=False,
                           progress=False)
    assert len(calls) == 1 and (third["num_images"], third["computed"]) == (1, 1)
    assert list(third["metrics"]) == ["semantic"]
    assert sorted(p.name for p in (out / "predictions").iterdir()) == ["ADE_val_00000001.json",
                                                                       "ADE_val_00000001_sem.png"]
    # the interactive output-size cap does not apply to evaluation: predictions stay at full resolution
    capped_predictor = setup["predictor"].with_options(max_output_pixels=100, precision="bf16",
                                                      postprocess_before_inference=False)  # 20x28 images
    options = capped_predictor.options
    capped = run_evaluation(capped_predictor, dataset, tasks=["semantic"], output_dir=out, limit=1,
                            resume=False, progress=False)
    assert capped["metrics"] == third["metrics"]
    assert capped_predictor.options is options  # the evaluation never changes the predictor it is given
    assert setup["predictor"].options.precision == "fp32"


def test_gt_masks_mode(setup, monkeypatch, capsys):
    out = setup["base"] / "out-gt"
    assert run_cli(monkeypatch, eval_args(setup, out, "--gt-masks")) == 0
    printed = capsys.readouterr().out
    assert "| model | A-150 acc | A-150 mIoU (GT masks) |" in printed and "GT masks" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["gt_masks"] and set(results["metrics"]) == {"classification", "semantic"}
    dataset = load_dataset("ade20k-150", setup["root"])
    correct = total = 0
    sem = SemSegEvaluator(150, 255)
    for sample in dataset.samples:
        record = json.loads((out / "predictions" / f"{sample.image_id}.json").read_text())
        gt = sample.load().semantic
        assert record["gt"]["class_ids"] == sorted(int(v) for v in gt.unique() if v != 255)
        correct += sum(a == b for a, b in zip(record["gt"]["class_ids"], record["gt"]["predicted"]))
        total += len(record["gt"]["class_ids"])
        pred = np.array(Image.open(out / "predictions" / f"{sample.image_id}_sem.png")).astype(np.int64)
        sem.process(np.where(pred == 255, -1, pred), gt)
    assert results["metrics"]["classification"]["num_segments"] == total >= 6
    assert 0 < results["metrics"]["classification"]["accuracy"] < 100
    assert results["metrics"]["classification"]["accuracy"] == pytest.approx(100 * correct / total, abs=1e-9)
    assert results["metrics"]["semantic"]["mIoU"] == pytest.approx(sem.evaluate()["mIoU"], abs=1e-9)
    # a bare model gives the same classes
    model = setup["predictor"].model
    res = run_evaluation(model, dataset, output_dir=setup["base"] / "out-gt-model", gt_masks=True,
                         train_vocabulary="coco_panoptic", progress=False, text_cache_dir=setup["text_cache"])
    assert res["metrics"]["classification"] == results["metrics"]["classification"]
    with pytest.raises(ValueError, match="gt_masks=True"):
        run_evaluation(model, dataset, output_dir=setup["base"] / "x")
    with pytest.raises(ValueError, match="tasks"):
        run_evaluation(setup["predictor"], dataset, tasks=["depth"], output_dir=setup["base"] / "x", gt_masks=True)


def test_gt_masks_mode_with_panoptic_and_instance_output(setup, monkeypatch, capsys):
    out = setup["base"] / "out-gt-all"
    assert run_cli(monkeypatch, eval_args(setup, out, "--gt-masks", "--tasks", "semantic,panoptic,instance")) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["metrics"]) == {"classification", "semantic", "panoptic", "instance"}
    assert "A-150 PQ (GT masks)" in results["summary"] and "A-150 AP (GT masks)" in results["summary"]
    dataset = load_dataset("ade20k-150", setup["root"])
    things = dataset.thing_classes
    for sample in dataset.samples:
        record = json.loads((out / "predictions" / f"{sample.image_id}.json").read_text())
        gt_classes = record["gt"]["class_ids"]
        # one panoptic segment per predicted class (stuff of one class merged), ids in the PNG
        assert {s["category_id"] for s in record["segments"]} <= set(record["gt"]["predicted"])
        assert all(things[i["category_id"]] for i in record["instances"])  # thing classes only
        assert len(record["instances"]) <= len(gt_classes) * len(dataset.vocabulary)
    # the semantic part equals the semantic-only GT run of the test above
    sem_only = json.loads((setup["base"] / "out-gt" / "results.json").read_text())
    assert results["metrics"]["semantic"] == sem_only["metrics"]["semantic"]


def test_custom_dataset_semantic_only(setup, monkeypatch, capsys):
    images, labels = setup["base"] / "custom-img", setup["base"] / "custom-lab"
    rng = np.random.default_rng(3)
    for stem in ("x", "y"):
        write(images / f"{stem}.png", rng.integers(0, 255, (16, 12, 3), dtype=np.uint8))
        write(labels / f"{stem}.png", rng.integers(0, 3, (16, 12), dtype=np.uint8))
    classes = setup["base"] / "classes.txt"
    classes.write_text("cat\nsofa|couch\nsky\n")
    spec = f"custom:{images},{labels},{classes}"
    out = setup["base"] / "out-custom"
    args = [a for a in eval_args(setup, out) if a not in ("ade20k-150", "--data-root", str(setup["root"]))]
    args[args.index("--dataset") + 1:args.index("--dataset") + 1] = [spec]
    assert run_cli(monkeypatch, args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["dataset"] == "custom" and results["num_images"] == 2 and list(results["metrics"]) == ["semantic"]
    # FC-CLIP's official configs turn panoptic off except on ADE-150 / COCO: semantic inference before resizing
    assert results["postprocess_before_inference"] is False
    assert results["metrics"]["semantic"]["IoU_per_class"] is not None and results["seen_classes"] == 3
    assert "| model | custom mIoU |" in capsys.readouterr().out
    assert run_cli(monkeypatch, args + ["--tasks", "panoptic"]) == 1
    assert "has no annotations for ['panoptic']" in capsys.readouterr().err


@pytest.mark.distributed
@pytest.mark.slow
def test_torchrun_two_processes_equal_one_process(setup, first_run):
    script = setup["base"] / "run_cli.py"
    script.write_text("import sys\nimport maskadapter.cli as cli\nsys.exit(cli.main(sys.argv[1:]))\n")
    two = setup["base"] / "out-two"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(script), *eval_args(setup, two)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("| model | A-150 mIoU") == 1  # only rank 0 prints
    a = json.loads((first_run[0] / "results.json").read_text())
    b = json.loads((two / "results.json").read_text())
    assert b["processes"] == 2 and (b["computed"], b["num_images"]) == (3, 3)
    assert b["metrics"] == a["metrics"]


def test_eval_options_are_checked_before_the_model_loads(setup, monkeypatch, capsys, tmp_path):
    import maskadapter.cli.eval as eval_cmd

    loads = []
    monkeypatch.setattr(eval_cmd, "build_predictor", lambda args: loads.append(args) or pytest.fail("loaded"))
    (tmp_path / "file").write_text("x")
    for extra, message in ((["--tasks", "depth"], "--tasks must name some of"),
                           (["--limit", "0"], "--limit must be a positive"),
                           (["--output", str(tmp_path / "file")], "is not a folder")):
        args = [a for a in eval_args(setup, tmp_path / "out") if a not in ("--output", str(tmp_path / "out"))]
        assert run_cli(monkeypatch, [*args, *extra]) == 1
        assert message in capsys.readouterr().err
    assert not loads

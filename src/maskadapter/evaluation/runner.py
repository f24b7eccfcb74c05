"""Run a model over an evaluation dataset, cache its per-image predictions and compute the paper's metrics.

:func:`run_evaluation` is what ``maskadapter eval`` calls. Per image it runs
:meth:`Predictor.predict <maskadapter.inference.predictor.Predictor.predict>` (or, with ``gt_masks=True``,
:func:`maskadapter.ground_truth.classify_ground_truth`: the paper's Table 3 setting), writes the predictions
under ``output_dir/predictions`` and feeds the evaluators *from the cached files*, so a resumed run and a
fresh one compute bit-identical metrics.

Cache layout (``output_dir/predictions``, one set per image, ``<id>`` = image file stem):

* ``<id>.json``: the record, written last (its presence marks the image as done): tasks, image size,
  panoptic ``segments`` (id, category_id, isthing, score, area), ``instances`` (category_id, score, COCO RLE),
  and in GT-mask mode the GT class of each mask with its predicted class;
* ``<id>_sem.png``: semantic map, uint8 with 255 = no prediction (uint16 / 65535 with 255 classes or more);
* ``<id>_pan.png``: panoptic ids as RGB (``id = R + 256 G + 65536 B``, 0 = no segment).

``output_dir/cache.json`` records what produced the cache (dataset, classes, model, precision, mode); a
resumed run with another configuration is refused. ``results.json`` and ``results.md`` are written at the end.

Several processes: under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) the process group is
initialised (gloo on CPU, nccl on CUDA), rank r takes images ``[r::world]``, the evaluators are reduced
exactly with :func:`~maskadapter.evaluation.distributed.reduce_evaluator` and rank 0 writes the results.

Faithfulness: evaluation runs in fp32 by default, as the official evaluation. FC-CLIP's official evaluation
configs turn panoptic / instance output on for ADE20K-150 and COCO only, which switches semantic inference to
"resize the mask logits first" (spec §3.4); for the other datasets they are off. For an FC-CLIP preset the
runner therefore sets ``postprocess_before_inference`` from the dataset. MAFT+ presets keep theirs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from ..data.datasets import SegmentationDataset, id_to_rgb, rgb_to_id
from ..data.vocabularies import builtin_vocabulary
from ..modeling.text import Vocabulary
from .classification import MaskClassificationEvaluator
from .distributed import StatefulEvaluator, reduce_evaluator
from .instance import InstanceEvaluator, encode_masks
from .panoptic import PanopticEvaluator
from .semantic import SemSegEvaluator

__all__ = ["run_evaluation", "CACHE_FORMAT", "markdown_row", "summary_metrics"]

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1
_TASKS = ("semantic", "panoptic", "instance")


# ---------------------------------------------------------------------------------------------- public API
def run_evaluation(
    predictor_or_model: Any,
    dataset: SegmentationDataset,
    tasks: Optional[Sequence[str]] = None,
    output_dir: Union[str, os.PathLike, None] = None,
    limit: Optional[int] = None,
    resume: bool = True,
    gt_masks: bool = False,
    precision: str = "fp32",
    train_vocabulary: Union[str, Vocabulary, None] = None,
    progress: bool = True,
    text_cache_dir: Union[str, os.PathLike, None] = None,
) -> dict:
    """Evaluate on ``dataset``; returns (and writes to ``output_dir/results.json``) the metrics per task.

    ``predictor_or_model``: a :class:`~maskadapter.inference.predictor.Predictor`, or with ``gt_masks=True``
    also a bare :class:`~maskadapter.modeling.model.MaskAdapterModel`. ``tasks``: subset of the dataset's
    ``evaluations`` (default: all of them); ignored in GT-mask mode, which reports mask classification accuracy
    and the oracle mIoU. ``limit``: the first N images only. ``resume``: reuse the predictions cached in
    ``output_dir``; otherwise they are deleted first. ``train_vocabulary``: the vocabulary deciding seen /
    unseen classes (default: the predictor preset's). ``text_cache_dir``: where a bare model's text embeddings
    are cached (a Predictor uses its own text classifier).
    """
    from ..inference.predictor import Predictor
    from ..modeling.model import MaskAdapterModel

    if not isinstance(dataset, SegmentationDataset):
        raise TypeError(f"dataset must be a SegmentationDataset (maskadapter.data.datasets.load_dataset), "
                        f"got {type(dataset).__name__}")
    if output_dir is None:
        raise ValueError("output_dir is required: predictions are cached there")
    if limit is not None and int(limit) < 1:
        raise ValueError(f"limit must be a positive number of images, got {limit}")
    if precision not in ("fp32", "bf16", "auto"):
        raise ValueError(f"precision must be 'fp32', 'bf16' or 'auto', got {precision!r}")
    predictor = predictor_or_model if isinstance(predictor_or_model, Predictor) else None
    if predictor is None:
        if not isinstance(predictor_or_model, MaskAdapterModel):
            raise TypeError("predictor_or_model must be a Predictor or a MaskAdapterModel, got "
                            f"{type(predictor_or_model).__name__}")
        if not gt_masks:
            raise ValueError("a bare MaskAdapterModel can only be evaluated with gt_masks=True; wrap it in a "
                             "Predictor (with its preset) for predicted masks")
    tasks = _check_tasks(tasks, dataset, gt_masks)
    model_name = predictor.preset.name if predictor is not None else "model"
    train_vocab = _train_vocabulary(train_vocabulary, predictor)
    seen = None
    if train_vocab is not None:
        from ..inference.postprocess import category_overlap

        seen = category_overlap(dataset.vocabulary, train_vocab).tolist()

    output_dir = Path(output_dir).expanduser()
    cache_dir = output_dir / "predictions"
    rank, world, created_group = _init_distributed(_device_of(predictor_or_model))
    try:
        indices = list(range(len(dataset)))[: int(limit) if limit is not None else None]
        model = predictor.model if predictor is not None else predictor_or_model
        config = _cache_config(dataset, model_name, _weights_fingerprint(model), gt_masks, precision)
        _prepare_cache(output_dir, cache_dir, config, resume, rank, world)
        evaluators = _make_evaluators(dataset, tasks, gt_masks, seen)
        before = _evaluation_postprocess(predictor, dataset)
        runner = _ImageRunner(predictor, predictor_or_model, dataset, tasks, gt_masks, precision, cache_dir,
                              text_cache_dir)
        start = time.perf_counter()
        with _patched_predictor(predictor, precision, before):
            counts = _loop(runner, indices[rank::world], evaluators, dataset, rank, progress)
        for ev in evaluators.values():
            reduce_evaluator(ev)
        counts = _sum_counts(counts, world)
        seconds = time.perf_counter() - start
        results = None
        if rank == 0:
            metrics = {name: _sanitize(ev.evaluate()) for name, ev in evaluators.items()}
            results = {
                "dataset": dataset.name, "short_name": dataset.short_name or dataset.name, "model": model_name,
                "gt_masks": bool(gt_masks), "tasks": list(tasks), "precision": precision,
                "num_images": len(indices), "computed": counts["computed"], "cached": counts["cached"],
                "seconds": round(seconds, 3), "processes": world,
                "postprocess_before_inference": before,
                "seen_classes": None if seen is None else int(sum(seen)),
                "metrics": metrics,
            }
            results["summary"] = summary_metrics(results)
            output_dir.mkdir(parents=True, exist_ok=True)
            _atomic_write(output_dir / "results.json", json.dumps(results, indent=1))
            _atomic_write(output_dir / "results.md", markdown_row(results) + "\n")
        results = _broadcast(results, world)
    finally:
        if created_group:
            import torch.distributed as dist

            dist.destroy_process_group()
    return results


def summary_metrics(results: dict) -> dict[str, Optional[float]]:
    """The headline numbers of ``results`` as ``{column name: value}`` (columns like the paper's tables)."""
    m = results["metrics"]
    short = results.get("short_name") or results["dataset"]
    out: dict[str, Optional[float]] = {}
    if results.get("gt_masks"):
        out[f"{short} acc"] = m["classification"]["accuracy"]
        out[f"{short} mIoU (GT masks)"] = m["semantic"]["mIoU"]
        return out
    if "semantic" in m:
        out[f"{short} mIoU"] = m["semantic"]["mIoU"]
    if "panoptic" in m:
        out[f"{short} PQ"] = m["panoptic"]["PQ"]
    if "instance" in m:
        out[f"{short} AP"] = m["instance"]["AP"]
    return out


def markdown_row(results: dict) -> str:
    """A markdown table (header, rule, one row) like the paper's: ``| model | A-150 mIoU | ... |``."""
    summary = results.get("summary") or summary_metrics(results)
    head = "| model | " + " | ".join(summary) + " |"
    rule = "|---|" + "---|" * len(summary)
    values = " | ".join("n/a" if v is None else f"{v:.1f}" for v in summary.values())
    return f"{head}\n{rule}\n| {results['model']} | {values} |"


# ---------------------------------------------------------------------------------------------- setup
def _check_tasks(tasks: Optional[Sequence[str]], dataset: SegmentationDataset, gt_masks: bool) -> tuple[str, ...]:
    if gt_masks:
        if tasks is not None and set(tasks) - {"semantic"}:
            raise ValueError(f"gt_masks mode evaluates mask classification and the oracle mIoU only; "
                             f"tasks {sorted(set(tasks) - {'semantic'})} are not available")
        return ("semantic",)
    if tasks is None:
        return tuple(dataset.evaluations)
    tasks = (tasks,) if isinstance(tasks, str) else tuple(tasks)
    unknown = [t for t in tasks if t not in _TASKS]
    if unknown or not tasks:
        raise ValueError(f"tasks must be a non-empty subset of {_TASKS}, got {list(tasks)}")
    missing = [t for t in tasks if t not in dataset.evaluations]
    if missing:
        hint = f" (make them with: {dataset.spec.prepare_command(dataset.root)})" if dataset.spec else ""
        raise ValueError(f"dataset {dataset.name} has no annotations for {missing}: it supports "
                         f"{list(dataset.evaluations)}{hint}")
    return tuple(t for t in _TASKS if t in tasks)


def _train_vocabulary(train_vocabulary: Union[str, Vocabulary, None], predictor: Any) -> Optional[Vocabulary]:
    if isinstance(train_vocabulary, Vocabulary):
        return train_vocabulary
    if isinstance(train_vocabulary, str):
        return builtin_vocabulary(train_vocabulary)
    if predictor is not None:
        return builtin_vocabulary(predictor.preset.train_vocabulary)
    return None


def _device_of(obj: Any) -> torch.device:
    if hasattr(obj, "device") and isinstance(obj.device, torch.device):
        return obj.device
    try:
        return next(obj.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def _init_distributed(device: torch.device) -> tuple[int, int, bool]:
    """(rank, world size, whether this call created the process group), from torchrun's environment."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world < 2 or "RANK" not in os.environ:
        return 0, 1, False
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but torch.distributed is not available in this PyTorch build")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl":  # NCCL collectives run on the current device: this process's GPU
        torch.cuda.set_device(device if device.index is not None else int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, init_method="env://")
    logger.info("process group: rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), backend)
    return dist.get_rank(), dist.get_world_size(), True


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _broadcast(obj: Any, world: int) -> Any:
    if world < 2:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _sum_counts(counts: dict[str, int], world: int) -> dict[str, int]:
    if world < 2:
        return counts
    import torch.distributed as dist

    gathered: list = [None] * world
    dist.all_gather_object(gathered, counts)
    return {k: sum(int(g[k]) for g in gathered) for k in counts}


def _weights_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of every tensor's name, shape and first / last values: tells checkpoints apart cheaply."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        flat = t.detach().reshape(-1)
        h.update(f"{name}{tuple(t.shape)}".encode())
        h.update(torch.cat([flat[:16], flat[-16:]]).float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _cache_config(dataset: SegmentationDataset, model: str, weights: str, gt_masks: bool, precision: str) -> dict:
    classes = hashlib.sha256(json.dumps(dataset.vocabulary.classes).encode()).hexdigest()[:16]
    return {"format": CACHE_FORMAT, "dataset": dataset.name, "classes": classes, "num_classes": len(dataset.vocabulary),
            "model": model, "weights": weights, "gt_masks": bool(gt_masks), "precision": precision}


def _prepare_cache(output_dir: Path, cache_dir: Path, config: dict, resume: bool, rank: int, world: int) -> None:
    """Create (or, without ``resume``, empty) the cache; refuse a cache made by another configuration."""
    meta = output_dir / "cache.json"
    error = None
    if rank == 0:
        try:
            if not resume and cache_dir.exists():
                shutil.rmtree(cache_dir)
            if resume and meta.is_file() and cache_dir.is_dir():
                old = json.loads(meta.read_text(encoding="utf-8"))
                if old != config:
                    diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
                    error = (f"{output_dir} holds predictions of another evaluation (differs in {diff}); pass "
                             f"--no-resume (resume=False) to replace them, or use another output folder")
            if error is None:
                cache_dir.mkdir(parents=True, exist_ok=True)
                _atomic_write(meta, json.dumps(config, indent=1))
        except (OSError, json.JSONDecodeError) as exc:
            error = f"cannot prepare the prediction cache in {output_dir}: {exc}"
    error = _broadcast(error, world)  # every rank raises, none is left waiting in a collective
    if error:
        raise ValueError(error)
    _barrier(world)


def _make_evaluators(dataset: SegmentationDataset, tasks: tuple[str, ...], gt_masks: bool,
                     seen: Optional[list[bool]]) -> dict[str, StatefulEvaluator]:
    C, names = len(dataset.vocabulary), dataset.vocabulary.names
    out: dict[str, StatefulEvaluator] = {}
    if gt_masks:
        out["classification"] = MaskClassificationEvaluator(C, class_names=names, seen=seen)
    if "semantic" in tasks:
        out["semantic"] = SemSegEvaluator(C, ignore_label=dataset.ignore_label, class_names=names, seen=seen)
    if "panoptic" in tasks:
        if dataset.thing_classes is None:
            raise ValueError(f"dataset {dataset.name} has no thing classes, which panoptic evaluation needs")
        out["panoptic"] = PanopticEvaluator(C, is_thing=dataset.thing_classes, class_names=names, seen=seen)
    if "instance" in tasks:
        out["instance"] = InstanceEvaluator(C, class_names=names, seen=seen)
    return out


def _evaluation_postprocess(predictor: Any, dataset: SegmentationDataset) -> Optional[bool]:
    """``postprocess_before_inference`` of the official evaluation config of this preset on this dataset."""
    if predictor is None:
        return None
    if predictor.preset.generator == "fcclip":
        return "panoptic" in (dataset.spec.evaluations if dataset.spec else ())
    return predictor.preset.postprocess_before_inference


class _patched_predictor:
    """Temporarily set the predictor's precision and post-processing order, and lift its output-size cap so
    predictions come at the image's resolution as in the official evaluation (all restored on exit)."""

    def __init__(self, predictor: Any, precision: str, before: Optional[bool]) -> None:
        self.predictor, self.precision, self.before = predictor, precision, before

    def __enter__(self) -> None:
        p = self.predictor
        if p is None:
            return
        self.saved = (p.precision, p.preset, p.max_output_pixels)
        p.precision = self.precision
        p.max_output_pixels = max(p.max_output_pixels, p.max_image_pixels)
        if self.before is not None and p.preset.postprocess_before_inference != self.before:
            p.preset = dataclasses.replace(p.preset, postprocess_before_inference=self.before)

    def __exit__(self, *exc: object) -> None:
        if self.predictor is not None:
            self.predictor.precision, self.predictor.preset, self.predictor.max_output_pixels = self.saved


# ---------------------------------------------------------------------------------------------- per image
class _ImageRunner:
    """Predicts one image (or reads its cached prediction) and returns the prediction as cached."""

    def __init__(self, predictor: Any, model_or_predictor: Any, dataset: SegmentationDataset,
                 tasks: tuple[str, ...], gt_masks: bool, precision: str, cache_dir: Path,
                 text_cache_dir: Union[str, os.PathLike, None] = None) -> None:
        self.predictor, self.dataset, self.tasks = predictor, dataset, tasks
        self.gt_masks, self.precision, self.cache_dir = gt_masks, precision, cache_dir
        self.num_classes = len(dataset.vocabulary)
        self.model = predictor.model if predictor is not None else model_or_predictor
        if predictor is not None:
            self.text_classifier = predictor.text_classifier
        else:  # one classifier for the whole run: it caches the vocabulary's text embeddings
            from ..modeling.text import TextClassifier

            self.text_classifier = TextClassifier(self.model.backbone, cache_dir=text_cache_dir)
        self.things = dataset.thing_classes

    def paths(self, image_id: str) -> tuple[Path, Path, Path]:
        """Record JSON, semantic PNG and panoptic PNG of an image."""
        d = self.cache_dir
        return d / f"{image_id}.json", d / f"{image_id}_sem.png", d / f"{image_id}_pan.png"

    def cached(self, image_id: str) -> Optional[dict]:
        """The cached prediction of an image, or None when absent, incomplete or unreadable."""
        record_path, sem_path, pan_path = self.paths(image_id)
        if not record_path.is_file():
            return None
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
            if not set(self.tasks) <= set(record.get("tasks", [])) or bool(record.get("gt_masks")) != self.gt_masks:
                return None
            pred: dict = {"record": record}
            if "semantic" in self.tasks:
                pred["semantic"] = self._read_semantic(sem_path)
            if "panoptic" in self.tasks:
                pred["panoptic"] = torch.from_numpy(rgb_to_id(_read_image(pan_path)))
            return pred
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
            logger.info("cached prediction of %s is unusable (%s); recomputing it", image_id, exc)
            return None

    def predict_and_cache(self, image_id: str, image: torch.Tensor, semantic_gt: Optional[torch.Tensor]) -> None:
        """Run the model on one image and write its prediction files (record last)."""
        record_path, sem_path, pan_path = self.paths(image_id)
        H, W = int(image.shape[1]), int(image.shape[2])
        record: dict = {"image_id": image_id, "height": H, "width": W, "tasks": list(self.tasks),
                        "gt_masks": self.gt_masks}
        if self.gt_masks:
            semantic, record["gt"] = self._classify_ground_truth(image, semantic_gt)
            self._write_semantic(semantic, sem_path)
        else:
            result = self.predictor.predict(image, self.dataset.vocabulary, tasks=self.tasks, things=self.things)
            if tuple(result.image_size) != (H, W):
                raise ValueError(f"prediction of {image_id} is {result.image_size} but the image is {(H, W)}: raise "
                                 "Predictor(max_output_pixels=...) to evaluate at full resolution")
            if "semantic" in self.tasks:
                self._write_semantic(result.semantic, sem_path)
            if "panoptic" in self.tasks:
                _write_image(id_to_rgb(result.panoptic.cpu().numpy()), pan_path)
                record["segments"] = [{"id": int(s["id"]), "category_id": int(s["category_id"]),
                                       "isthing": bool(s.get("isthing", False)), "score": float(s.get("score", 0.0)),
                                       "area": int(s.get("area", 0))} for s in result.segments]
            if "instance" in self.tasks:
                inst = result.instances
                rles = encode_masks(inst["masks"].cpu().bool(), "instances['masks']")
                record["instances"] = [{"category_id": int(c), "score": float(s), "segmentation": r}
                                       for r, s, c in zip(rles, inst["scores"].float().tolist(),
                                                          inst["classes"].tolist())]
        _atomic_write(record_path, json.dumps(record))

    def _classify_ground_truth(self, image: torch.Tensor, semantic_gt: torch.Tensor) -> tuple[torch.Tensor, dict]:
        from ..ground_truth import classify_ground_truth

        ignore = self.dataset.ignore_label
        # labels outside the classes get no mask (classify_ground_truth refuses them); the evaluator counts them
        labels = semantic_gt.clone()
        labels[(labels < 0) | (labels >= self.num_classes)] = ignore
        res = classify_ground_truth(self.model, image, labels, self.dataset.vocabulary,
                                    text_classifier=self.text_classifier, ignore_index=ignore,
                                    precision=self.precision)
        semantic = res.semantic.clone()
        semantic[semantic == ignore] = -1
        return semantic, {"class_ids": res.class_ids.tolist(), "predicted": res.predicted.tolist()}

    def _write_semantic(self, semantic: torch.Tensor, path: Path) -> None:
        sem = semantic.cpu().numpy().astype(np.int64)
        if self.num_classes < 255:
            out = np.where(sem < 0, 255, sem).astype(np.uint8)
        else:
            out = np.where(sem < 0, 65535, sem).astype(np.uint16)
        _write_image(out, path)

    def _read_semantic(self, path: Path) -> torch.Tensor:
        sem = _read_image(path).astype(np.int64)
        none = 255 if self.num_classes < 255 else 65535
        sem[sem == none] = -1
        return torch.from_numpy(sem)


def _loop(runner: _ImageRunner, indices: list[int], evaluators: dict[str, StatefulEvaluator],
          dataset: SegmentationDataset, rank: int, progress: bool) -> dict[str, int]:
    from tqdm import tqdm

    counts = {"computed": 0, "cached": 0}
    gt_tasks = ("semantic",) if runner.gt_masks else runner.tasks
    bar = tqdm(indices, desc=f"eval {dataset.name}", unit="img", disable=not progress or rank != 0,
               dynamic_ncols=True)
    for index in bar:
        sample = dataset[index]
        example = sample.load(gt_tasks)
        pred = runner.cached(sample.image_id)
        if pred is None:
            runner.predict_and_cache(sample.image_id, example.image, example.semantic)
            pred = runner.cached(sample.image_id)
            if pred is None:
                raise RuntimeError(f"the prediction of {sample.image_id} written to {runner.cache_dir} cannot be "
                                   "read back")
            counts["computed"] += 1
        else:
            counts["cached"] += 1
        _feed(evaluators, index, example, pred)
        bar.set_postfix(cached=counts["cached"], refresh=False)
    return counts


def _feed(evaluators: dict[str, StatefulEvaluator], index: int, example: Any, pred: dict) -> None:
    """Give one image's cached prediction and its ground truth to every evaluator."""
    record = pred["record"]
    if "classification" in evaluators:
        gt = record["gt"]
        evaluators["classification"].process(np.asarray(gt["class_ids"], dtype=np.int64),
                                             np.asarray(gt["predicted"], dtype=np.int64))
    if "semantic" in evaluators:
        evaluators["semantic"].process(pred["semantic"], example.semantic)
    if "panoptic" in evaluators:
        evaluators["panoptic"].process(pred["panoptic"], record["segments"], example.panoptic, example.segments)
    if "instance" in evaluators:
        H, W = record["height"], record["width"]
        inst = record["instances"]
        if inst:
            from pycocotools import mask as mask_util

            rles = [dict(i["segmentation"], counts=i["segmentation"]["counts"].encode("ascii")) for i in inst]
            masks = torch.from_numpy(mask_util.decode(rles).transpose(2, 0, 1).astype(bool))
        else:
            masks = torch.zeros((0, H, W), dtype=torch.bool)
        prediction = {"masks": masks, "scores": torch.tensor([i["score"] for i in inst], dtype=torch.float64),
                      "classes": torch.tensor([i["category_id"] for i in inst], dtype=torch.int64)}
        evaluators["instance"].process(index, prediction, example.instances)


# ---------------------------------------------------------------------------------------------- files
def _read_image(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.array(im)


def _write_image(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    Image.fromarray(array).save(tmp)
    os.replace(tmp, path)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _sanitize(value: Any) -> Any:
    """JSON-safe copy: nan / inf become None, numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): _sanitize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_sanitize(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value

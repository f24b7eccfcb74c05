"""Batch segmentation of image collections, one process or many (``torchrun``: several GPUs and nodes).

Rank r of W takes every W-th image (:func:`maskadapter.distributed.shard`). DataLoader worker processes
decode, EXIF-rotate, resize and normalise images (:meth:`Predictor.prepare`) while the model runs. Images that
share their padded network size go through the model together (``batch_size``): label maps, panoptic maps and
masks are those of one-by-one prediction, scores agree to float rounding (matrix kernels depend on the batch
size, on the CPU as on GPUs). Every file is written atomically, and a per-image record written last marks an
image as done, so a killed run restarted with any number of processes recomputes only the images without
one, or whose outputs changed since. A failed image gets a record with its error; no single image stops the
run. At the end each process writes its shard of the records and rank 0 merges them into the manifest and the
format's dataset-level files (:mod:`.runstore` describes the files, :mod:`.formats` the output formats;
:func:`merge_outputs` merges after a crash). Several nodes need an output folder they all see.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import torch

from .. import distributed
from ..vocabulary import Vocabulary, VocabularyLike
from . import formats
from .formats import ImageOutput, OutputFormat
from .inputs import ImageItem
from .predictor import PreparedImage, PreparedVocabulary, Predictor, check_tasks
from .runstore import BatchReport, RunStore, config_hash, merge_outputs, run_config

__all__ = ["BatchOptions", "BatchReport", "run_batch", "merge_outputs", "on_main_process", "SharedError",
           "SizeBatcher"]

logger = logging.getLogger(__name__)

STAGES = ("input wait", "model", "postprocess", "write")


class SharedError(ValueError):
    """An error rank 0 met and every process raises: only rank 0 needs to report it."""


@dataclass(frozen=True)
class BatchOptions:
    """How a batch run writes and schedules its work (the vocabulary and model are the predictor's call)."""

    tasks: tuple[str, ...] = ("semantic",)  #: "semantic" is always computed (label maps)
    #: a built-in format's name (:data:`~.formats.NAMES`: "files", per-image PNG + JSON; "coco", dataset-level
    #: files) or any :class:`~.formats.OutputFormat` object
    format: Union[str, OutputFormat] = "files"
    overlays: Optional[bool] = None  #: built-in formats' overlays; None: yes for "files", no for "coco"
    overlay_task: Optional[str] = None  #: what overlays draw and per-image JSONs name; None: the last task
    batch_size: int = 1  #: images per forward pass (same padded size only)
    workers: int = 2  #: DataLoader worker processes decoding images (0: in the main process)
    overwrite: bool = False  #: recompute images that are done; replace a manifest of another configuration
    sync_every: int = 8  #: batches between progress exchanges of the processes
    progress: bool = True  #: progress bar on rank 0
    output: OutputFormat = field(init=False, repr=False, compare=False)  #: the format object ``format`` names

    def __post_init__(self) -> None:
        tasks = check_tasks(self.tasks)
        object.__setattr__(self, "tasks", tuple(t for t in ("semantic", "panoptic", "instance")
                                                if t in tasks or t == "semantic"))
        for name, low in (("batch_size", 1), ("workers", 0), ("sync_every", 1)):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {getattr(self, name)!r}")
        if self.overlay_task is None:
            object.__setattr__(self, "overlay_task", tasks[-1])
        elif self.overlay_task not in self.tasks:
            raise ValueError(f"overlay_task {self.overlay_task!r} is not one of the tasks {self.tasks}")
        if isinstance(self.format, str):
            output = formats.create(self.format, self.tasks, self.overlays, str(self.overlay_task))
        elif isinstance(self.format, OutputFormat):
            output = self.format
        else:
            raise TypeError(f"format must be a format name ({', '.join(formats.NAMES)}) or an OutputFormat, "
                            f"got {type(self.format).__name__}")
        object.__setattr__(self, "output", output)


# ---------------------------------------------------------------------------------------------- coordination
def on_main_process(fn: Callable[[], Any]) -> Any:
    """``fn()`` run on rank 0 only, its value given to every process; its ValueError / OSError is raised on
    rank 0 and, as :class:`SharedError`, on the others (so a message is reported once)."""
    value, error = None, None
    if distributed.env_rank() == 0 or not distributed.is_distributed():
        try:
            value = fn()
        except (ValueError, OSError) as exc:
            error = exc
    message, value = distributed.broadcast_object((None if error is None else str(error), value))
    if error is not None:
        raise error
    if message is not None:
        raise SharedError(message)
    return value


# ---------------------------------------------------------------------------------------------- input pipeline
@dataclass
class _Sample:
    """One decoded image from a worker: its prepared tensor, or the error that stopped it."""

    index: int
    prepared: Optional[PreparedImage] = None
    rgb: Optional[torch.Tensor] = None  #: uint8 [3, H, W], kept for overlays
    error: Optional[str] = None
    seconds: float = 0.0


class _ImageDataset(torch.utils.data.Dataset):
    """Decodes and prepares images (in DataLoader workers); a failure becomes an error sample, not a crash."""

    def __init__(self, items: Sequence[ImageItem], prepare: Callable[[Any], PreparedImage], max_pixels: int,
                 keep_rgb: bool) -> None:
        self.items, self.prepare, self.max_pixels, self.keep_rgb = items, prepare, max_pixels, keep_rgb

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> _Sample:
        from ..images import to_rgb_tensor

        start = time.perf_counter()
        try:
            rgb = to_rgb_tensor(self.items[index].path, max_pixels=self.max_pixels)
            prepared = self.prepare(rgb)
        except Exception as exc:  # any decoder failure is this image's error; the run goes on
            return _Sample(index, error=_describe(exc), seconds=time.perf_counter() - start)
        return _Sample(index, prepared, rgb if self.keep_rgb else None, seconds=time.perf_counter() - start)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, (ValueError, OSError)) and str(exc):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _keep(sample: _Sample) -> _Sample:
    return sample


def _loader(dataset: _ImageDataset, workers: int, batch_size: int) -> Iterable[_Sample]:
    if workers == 0:
        return (dataset[i] for i in range(len(dataset)))
    # the dataset holds a small ImagePreparer, never the model, so any start method is cheap
    return torch.utils.data.DataLoader(
        dataset, batch_size=None, shuffle=False, num_workers=workers, collate_fn=_keep,
        prefetch_factor=max(2, -(-2 * batch_size // workers)))


class SizeBatcher:
    """Groups samples of equal padded size into batches of ``batch_size``, in arrival order (deterministic).
    At most ``max_pending`` samples wait: past that, the fullest group goes out unfilled."""

    def __init__(self, batch_size: int, size_of: Callable[[Any], tuple[int, int]],
                 max_pending: Optional[int] = None) -> None:
        self.batch_size, self.size_of = batch_size, size_of
        self.max_pending = max_pending or 4 * batch_size
        self.groups: dict[tuple[int, int], list] = {}

    def add(self, sample: Any) -> list[list]:
        """Add a sample; returns the batches now ready."""
        group = self.groups.setdefault(self.size_of(sample), [])
        group.append(sample)
        ready = []
        if len(group) >= self.batch_size:
            ready.append(self.groups.pop(self.size_of(sample)))
        if sum(len(g) for g in self.groups.values()) > self.max_pending:
            fullest = max(self.groups, key=lambda k: len(self.groups[k]))
            ready.append(self.groups.pop(fullest))
        return ready

    def flush(self) -> list[list]:
        """The batches still waiting, oldest group first."""
        ready, self.groups = list(self.groups.values()), {}
        return ready


# ---------------------------------------------------------------------------------------------- progress
class _Progress:
    """One bar for all processes on rank 0. Each process counts its own images at once; every ``every`` steps
    the processes add up their counts (a collective every process calls in turn), and a process that has
    finished keeps joining those exchanges until every process has, so none waits for a partner that left."""

    def __init__(self, total: int, done: int, world: int, every: int, show: bool) -> None:
        from tqdm import tqdm

        self.world, self.every, self.steps, self.failed = world, every, 0, 0
        self.unsynced = [0, 0]
        self.bar = tqdm(total=total, initial=done, desc="segment", unit="img", dynamic_ncols=True,
                        file=sys.stderr) if show else None

    def step(self, done: int, failed: int) -> None:
        """Count ``done`` segmented and ``failed`` images of this process."""
        self.unsynced[0] += done
        self.unsynced[1] += failed
        self.steps += 1
        if self.bar is not None:
            self.bar.update(done + failed)
        if self.steps % self.every == 0:
            self._exchange(finished=False)

    def _exchange(self, finished: bool) -> bool:
        own = self.unsynced[0] + self.unsynced[1]
        counts = distributed.all_reduce_sum(torch.tensor([*self.unsynced, int(finished)], dtype=torch.int64))
        self.unsynced = [0, 0]
        self.failed += int(counts[1])
        if self.bar is not None:
            self.bar.update(int(counts[0] + counts[1]) - own)
            if self.failed:
                self.bar.set_postfix(failed=self.failed, refresh=False)
        return int(counts[2]) >= self.world

    def finish(self) -> None:
        """Wait for every process, keeping the bar up to date; close it."""
        while not self._exchange(finished=True):
            pass
        if self.bar is not None:
            self.bar.close()


# ---------------------------------------------------------------------------------------------- the loop
class _Runner:
    """Segments one process's pending images and writes their outputs and records."""

    def __init__(self, predictor: Predictor, vocab: PreparedVocabulary, is_thing: torch.Tensor,
                 options: "BatchOptions", store: RunStore, run_id: str, inputs: "set[str]",
                 on_message: Callable[[str], None]) -> None:
        # exact per-stage times: one device sync per stage costs little next to a forward pass
        self.predictor = predictor.with_options(sync_timings=True)
        self.vocab, self.is_thing, self.store, self.run_id = vocab, is_thing, store, run_id
        self.options, self.on_message, self.inputs = options, on_message, inputs
        self.real_root = os.path.realpath(store.root)
        self.stages = {s: 0.0 for s in STAGES}
        self.decode = 0.0
        self.computed = 0
        self.written: set[str] = set()  #: keys whose records this run wrote
        self.progress: Optional[_Progress] = None
        self.items: Sequence[ImageItem] = ()

    def run(self, items: Sequence[ImageItem], progress: _Progress) -> None:
        """Segment ``items``; failures become error records."""
        self.items, self.progress = items, progress
        if not items:
            return
        dataset = _ImageDataset(items, self.predictor.preparer, self.predictor.max_image_pixels,
                                self.options.output.needs_image)
        batcher = SizeBatcher(self.options.batch_size, lambda s: self.predictor.padded_size(s.prepared))
        waited = time.perf_counter()
        for sample in _loader(dataset, self.options.workers, self.options.batch_size):
            self.stages["input wait"] += time.perf_counter() - waited
            self.decode += sample.seconds
            if sample.error is not None:
                self._fail(sample, sample.error, "decode")
                progress.step(0, 1)
            else:
                for batch in batcher.add(sample):
                    self._segment(batch)
            waited = time.perf_counter()
        for batch in batcher.flush():
            self._segment(batch)

    def _segment(self, batch: list[_Sample]) -> None:
        start = time.perf_counter()
        try:
            results = self.predictor.predict_prepared([s.prepared for s in batch], self.vocab,
                                                      self.options.tasks)
        except Exception as exc:  # noqa: BLE001 - an image the model cannot take must not end a long run
            if len(batch) > 1:  # find the culprit: the others still get their results
                for sample in batch:
                    self._segment([sample])
                return
            self._fail(batch[0], _describe(exc), "model")
            assert self.progress is not None
            self.progress.step(0, 1)
            return
        elapsed = time.perf_counter() - start
        post = _timings(self.predictor, results).get("postprocess", 0.0)
        self.stages["model"] += elapsed - post
        self.stages["postprocess"] += post
        done = sum(self._save(s, r, s.seconds + elapsed / len(batch)) for s, r in zip(batch, results))
        assert self.progress is not None
        self.progress.step(done, len(batch) - done)

    def _save(self, sample: _Sample, result: Any, seconds: float) -> bool:
        """Write one image's outputs, then its record; False (and an error record) when that fails."""
        from .writers import result_to_json

        item = self.items[sample.index]
        start = time.perf_counter()
        try:
            data = result_to_json(result, item.name, str(self.options.overlay_task))
            rgb = sample.rgb.permute(1, 2, 0).numpy() if sample.rgb is not None else None
            image = ImageOutput(item.key, item.name, result, data, rgb, str(self.options.overlay_task))
            self.stages["postprocess"] += time.perf_counter() - start
            start = time.perf_counter()
            self._check_targets(item)
            extra = self.options.output.write(self.store.root, image) or {}
            (height, width), (input_height, input_width) = result.image_size, result.input_size or result.image_size
            seconds += time.perf_counter() - start
            self.store.write_ok(item, self.run_id, {
                "height": height, "width": width, "input_height": input_height, "input_width": input_width,
                **_summary(result, data), "seconds": round(seconds, 4), **extra})
        except Exception as exc:  # noqa: BLE001 - e.g. a full disk: recorded, retried by the next run
            self._fail(sample, _describe(exc), "write")
            return False
        self.stages["write"] += time.perf_counter() - start
        self.written.add(item.key)
        self.computed += 1
        return True

    def _check_targets(self, item: ImageItem) -> None:
        """ValueError naming the conflict when an output of ``item`` is a folder, lies outside the output folder
        (through a symbolic link inside it) or is an input file."""
        for path in self.store.outputs(item.key).values():
            real = os.path.realpath(path)
            if os.path.commonpath([real, self.real_root]) != self.real_root:
                raise ValueError(f"output {path} leads outside the output folder (to {real}) through a symbolic "
                                 "link: remove the link or choose another output folder")
            if os.path.isdir(real):
                raise ValueError(f"output {path} is a folder: remove or rename it, or choose another output folder")
            if real in self.inputs:
                raise ValueError(f"output {path} is an input image: choose another output folder")

    def _fail(self, sample: _Sample, message: str, stage: str) -> None:
        item = self.items[sample.index]
        self.on_message(f"error: {item.path}: {message}")
        try:
            self.store.write_error(item, self.run_id, stage, message)
        except Exception as exc:  # noqa: BLE001 - the image is then reported missing; the run goes on
            self.on_message(f"error: {item.path}: its error record cannot be written either: {_describe(exc)}")
        self.written.add(item.key)


def _timings(predictor: Any, results: Sequence[Any]) -> dict:
    """Seconds per stage of the last call: the results' own timings when they carry them, else the predictor's."""
    own = getattr(results[0], "timings", None) if results else None
    return own if isinstance(own, dict) else getattr(predictor, "timings", {}) or {}


def _summary(result: Any, data: dict) -> dict:
    """Segments count and the top classes (share of the image's pixels) of the task's segments; a result with no
    segments lists no class. A class's share counts each pixel once, however many of its instances overlap."""
    total = max(1, data["height"] * data["width"])
    key = {"panoptic": "segments_info", "instance": "instances"}.get(data.get("task"), "semantic")
    segments = data.get(key, [])
    names = [c["name"] for c in data["categories"]]
    areas: dict[str, int] = {}
    if key == "instances" and segments:
        masks, classes = result.instances.masks, result.instances.classes
        for c in sorted({s["category_id"] for s in segments}):
            areas[names[c]] = int(masks[classes == c].any(dim=0).sum())
    else:
        for s in segments:  # a class's segments summed (they do not overlap)
            areas[names[s["category_id"]]] = areas.get(names[s["category_id"]], 0) + s["area"]
    top = [[label, round(area / total, 4)] for label, area in sorted(areas.items(), key=lambda kv: -kv[1])[:4]]
    return {"segments": len(segments), "top": top}


# ---------------------------------------------------------------------------------------------- public API
def run_batch(predictor: Predictor, items: Sequence[ImageItem], vocabulary: "VocabularyLike | PreparedVocabulary",
              output_dir: "str | Path", options: Optional[BatchOptions] = None, things: Any = None,
              on_message: Optional[Callable[[str], None]] = None,
              weight_files: Optional[Sequence["str | os.PathLike"]] = None) -> BatchReport:
    """Segment ``items`` (:func:`~maskadapter.inference.inputs.collect_inputs`) into ``output_dir``.

    Under ``torchrun`` every process calls this with the same items; each segments its shard, and rank 0
    merges. Images done by an earlier run of the same configuration are skipped (unless ``overwrite``); a folder
    of another configuration is refused, naming what differs. ``things``: class names or flags (default: COCO
    things). ``on_message``: receives one line per failed image (default: a logged warning). ``weight_files``:
    the files the predictor's weights came from, hashed (once per file version) for the run's fingerprint
    instead of the weights in memory. Every process returns the same report.
    """
    options = options or BatchOptions()
    prepared = predictor.prepare_vocabulary(vocabulary, things)  # once per run: text, things, seen classes
    vocab, is_thing = prepared.vocabulary, prepared.is_thing
    store = RunStore(Path(output_dir), options.output)
    inputs = _check_items(store, items)
    say = on_message or logger.warning
    info = distributed.init_distributed(predictor.device)
    try:
        def start() -> tuple[str, dict]:
            config = run_config(options.output, options.tasks, predictor, vocab, is_thing.tolist(), weight_files)
            head = store.start(config, items, predictor.resolved_precision, options.overwrite,
                               _categories(vocab, is_thing.tolist()))
            return config_hash(config), head

        run_id, head = on_main_process(start)
        distributed.barrier()
        mine = distributed.shard(items, info.rank, info.world_size)
        verified: set[str] = set()
        pending = []
        for item in mine:
            record = None if options.overwrite else store.read(item, run_id)
            if record is None or record["status"] != "ok":
                pending.append(item)
            else:
                verified.add(item.key)
        done = int(distributed.all_reduce_sum(torch.tensor([len(mine) - len(pending)]))[0])
        progress = _Progress(len(items), done, info.world_size, options.sync_every,
                             options.progress and info.is_main)
        runner = _Runner(predictor, prepared, is_thing, options, store, run_id, inputs, say)
        start_time = time.perf_counter()
        runner.run(pending, progress)
        stats = {"computed": runner.computed, "seconds": time.perf_counter() - start_time, "stages": runner.stages,
                 "decode": runner.decode}
        progress.finish()
        store.write_shard(mine, run_id, info.rank, info.world_size, verified | runner.written)
        gathered = distributed.all_gather_object(stats)  # also waits for every shard
        report = on_main_process(lambda: _merge_shards(store, items, head, info.world_size, gathered))
    finally:
        distributed.cleanup(info)
    return report


def _categories(vocab: Vocabulary, is_thing: Sequence[bool]) -> list[dict]:
    """COCO categories of a vocabulary: id = class index, name, synonyms, isthing (1 / 0)."""
    from .writers import categories_json

    return [{**category, "isthing": int(bool(thing)), "supercategory": "thing" if thing else "stuff"}
            for category, thing in zip(categories_json(vocab), is_thing)]


def _check_items(store: RunStore, items: Sequence[ImageItem]) -> "set[str]":
    """The inputs' real paths; ValueError for a key that could leave the output folder, a format whose files of
    one key coincide, or an output that is an input (keys from :func:`collect_inputs` never are)."""
    inputs = {os.path.realpath(item.path) for item in items}
    root = os.path.realpath(store.root)
    for item in items:
        parts = item.key.split("/")
        if not item.key or item.key.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in item.key:
            raise ValueError(f"the output key {item.key!r} of {item.path} is not a plain relative path")
        paths = list(store.format.paths(item.key).values())
        if len(set(paths)) != len(paths):
            raise ValueError(f"the output format {store.format.name!r} gives two outputs of {item.key!r} one name")
        for rel in paths:
            if os.path.join(root, rel) in inputs:
                raise ValueError(f"output {store.root / rel} of {item.path} is an input image")
    return inputs


def _merge_shards(store: RunStore, items: Sequence[ImageItem], head: dict, world: int,
                  gathered: list[dict]) -> BatchReport:
    """Rank 0: the dataset-level files from every process's shard, and the run's report."""
    report = store.merge(items, store.shard_records(len(items), world), head)
    store.remove_shards()
    report.processes = len(gathered)
    report.computed = sum(s["computed"] for s in gathered)
    report.seconds = max(s["seconds"] for s in gathered)
    report.decode_seconds = sum(s["decode"] for s in gathered)
    report.stage_seconds = {k: sum(s["stages"][k] for s in gathered) for k in STAGES}
    report.stage_seconds["total"] = sum(s["seconds"] for s in gathered)
    return report

"""The files of a batch run (:mod:`maskadapter.inference.batch`): where each image's outputs go, the per-image
records that mark images as done, the manifest, and the dataset-level COCO files merged from the records.

Per image (``key`` = output name, see :mod:`.inputs`):

* ``format="files"``: ``<key>_labels.png`` (class index per pixel, 255 = none), ``<key>.json``
  (:func:`~maskadapter.inference.writers.result_to_json`) and ``<key>_overlay.png`` (optional);
* ``format="coco"``: ``semantic/<key>.png`` (the same label map), ``panoptic/<key>.png`` and
  ``overlays/<key>.png`` (optional);
* ``records/<key>.json``, written last: status (``ok`` / ``error`` with the message), sizes, the run it
  belongs to, and for COCO the image's ``segments_info`` and instance results.

Dataset-level (merged from the records by rank 0 at the end, or by :func:`merge_outputs` after a crash):

* ``manifest.json``: format, run id, configuration (vocabulary, things, preset, weights fingerprint),
  categories, package versions and every image with its status (``ok``, ``error``, ``missing``);
* ``panoptic.json`` (with ``panoptic/``): panopticapi's format. Each PNG holds segment ids as
  ``id = R + 256 G + 65536 B`` (0 = no segment); each annotation has ``image_id``, ``file_name`` (the PNG,
  relative to ``panoptic/``) and ``segments_info`` with ``id``, ``category_id``, ``iscrowd`` (0), ``bbox``
  ``[x, y, w, h]`` and ``area`` (plus ``isthing`` and ``score``); ``categories`` carry ``isthing``;
* ``instances.json``: a COCO results list (``pycocotools.coco.COCO.loadRes``): ``image_id``, ``category_id``,
  ``segmentation`` (RLE, ``counts`` a string), ``score``, ``bbox``, ``area``.

Category ids are vocabulary indices (0-based), the values of the label maps. Image ids are the input's
position + 1, or the ids of a COCO image JSON input. Large files are streamed (a million images never sit in
memory) and every file appears atomically when complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator, Optional, Sequence

from .. import __version__
from ..fileio import atomic_path
from ..vocabulary import Vocabulary
from .inputs import ImageItem
from .writers import categories_json

__all__ = ["FORMATS", "MANIFEST", "RESERVED_KEYS", "PANOPTIC_JSON", "INSTANCES_JSON", "OutputLayout", "BatchReport",
           "run_config", "config_hash", "start_manifest", "read_record", "write_shard", "shard_records", "remove_shards",
           "merge", "merge_outputs", "segments_info", "instance_results", "panoptic_png", "categories", "JsonSpool",
           "write_json_with_arrays", "CocoWriter"]

FORMATS = ("files", "coco")
MANIFEST = "manifest.json"
PANOPTIC_JSON = "panoptic.json"
INSTANCES_JSON = "instances.json"
RECORDS = "records"
SHARDS = "shards"
#: what an image's key must not start with: the folder's own files (a "manifest.png" input would overwrite
#: manifest.json with its per-image JSON) and folders
RESERVED_KEYS = ("manifest", RECORDS, SHARDS)
MANIFEST_FORMAT = 1
ROW_LIMIT = 50  #: runs of up to this many images report one row per image
FAILURE_LIMIT = 100  #: failures listed in a report (all are in the manifest)
_SEGMENT_KEYS = ("id", "category_id", "iscrowd", "bbox", "area", "isthing", "score")
_INSTANCE_KEYS = ("category_id", "segmentation", "score", "bbox", "area")
_PACKAGES = ("torch", "torchvision", "open_clip_torch", "timm", "numpy", "pillow", "pycocotools")


class OutputLayout:
    """Where the files of an image go, for an output format, tasks and whether overlays are written."""

    def __init__(self, root: Path, format: str, tasks: Sequence[str], overlays: bool, overlay_task: str) -> None:
        if format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
        self.root, self.format, self.tasks = Path(root), format, tuple(tasks)
        self.overlays, self.overlay_task = bool(overlays), overlay_task

    def outputs(self, key: str) -> dict[str, Path]:
        """The files an image of ``key`` gets: kind -> path (the record excluded)."""
        r = self.root
        if self.format == "files":
            out = {"labels": r / f"{key}_labels.png", "json": r / f"{key}.json"}
            if self.overlays:
                out["overlay"] = r / f"{key}_overlay.png"
            return out
        out = {"semantic": r / "semantic" / f"{key}.png"}
        if "panoptic" in self.tasks:
            out["panoptic"] = r / "panoptic" / f"{key}.png"
        if self.overlays:
            out["overlay"] = r / "overlays" / f"{key}.png"
        return out

    def record(self, key: str) -> Path:
        """The per-image record: written last, it marks the image as done."""
        return self.root / RECORDS / f"{key}.json"

    def shard(self, rank: int, world: int) -> Path:
        """The records of one rank's share, gathered for rank 0's merge."""
        return self.root / SHARDS / f"rank-{rank:05d}-of-{world:05d}.jsonl"


@dataclass
class BatchReport:
    """What a batch run did: counts, failures, per-image rows (small runs), time per stage."""

    output_dir: Path
    total: int = 0
    ok: int = 0
    failed: int = 0
    missing: int = 0
    computed: int = 0  #: images segmented by this run (the others were done before)
    downscaled: int = 0  #: images whose maps are smaller than the image (the predictor's max_output_pixels)
    seconds: float = 0.0  #: wall time of the slowest process's loop
    processes: int = 1
    stage_seconds: dict[str, float] = field(default_factory=dict)  #: summed over processes
    decode_seconds: float = 0.0  #: decode / resize / normalise time (in workers when ``workers`` > 0)
    failures: list[tuple[str, str]] = field(default_factory=list)  #: (image, error), at most FAILURE_LIMIT
    rows: list[dict] = field(default_factory=list)  #: name, size, input_size, segments, seconds, top
    files: list[str] = field(default_factory=list)  #: dataset-level files written (relative)

    @property
    def images_per_second(self) -> float:
        """Images segmented by this run per second of wall time (all processes together)."""
        return self.computed / self.seconds if self.seconds > 0 else 0.0


def segments_info(data: dict) -> list[dict]:
    """panopticapi ``segments_info`` of a :func:`~maskadapter.inference.writers.result_to_json` dict."""
    return [{k: s[k] for k in _SEGMENT_KEYS if k in s} for s in data.get("segments_info", [])]


def instance_results(data: dict) -> list[dict]:
    """COCO instance results (no ``image_id`` yet) of a ``result_to_json`` dict: RLE, score, bbox, area."""
    return [{k: r[k] for k in _INSTANCE_KEYS} for r in data.get("instances", [])]


def panoptic_png(panoptic: Any) -> "PIL.Image.Image":  # noqa: F821
    """The panopticapi PNG (RGB, ``id = R + 256 G + 65536 B``) of segment ids [H, W]."""
    import numpy as np
    from PIL import Image

    from ..data.datasets import id_to_rgb

    ids = panoptic.cpu().numpy() if hasattr(panoptic, "cpu") else np.asarray(panoptic)
    return Image.fromarray(id_to_rgb(ids))


def categories(vocabulary: Vocabulary, is_thing: Sequence[bool]) -> list[dict]:
    """COCO categories of a vocabulary: id = class index, name, synonyms, isthing (1 / 0)."""
    return [{**category, "isthing": int(bool(thing)), "supercategory": "thing" if thing else "stuff"}
            for category, thing in zip(categories_json(vocabulary), is_thing)]


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


class JsonSpool:
    """The items of one JSON array, written one by one to an anonymous temporary file beside the output."""

    def __init__(self, folder: Path) -> None:
        self.file: IO[str] = tempfile.TemporaryFile("w+", encoding="utf-8", dir=folder)
        self.count = 0

    def add(self, item: Any) -> None:
        """Append one item (JSON-serialisable)."""
        self.file.write(("," if self.count else "") + _dumps(item))
        self.count += 1

    def copy_to(self, out: IO[str]) -> None:
        """Write ``[item, ...]`` to ``out``."""
        self.file.flush()
        self.file.seek(0)
        out.write("[")
        shutil.copyfileobj(self.file, out)
        out.write("]")

    def close(self) -> None:
        """Delete the temporary file."""
        self.file.close()


def write_json_with_arrays(path: Path, head: dict, arrays: dict[str, JsonSpool]) -> None:
    """Write ``{**head, name: [spooled items], ...}`` to ``path`` atomically without holding the items."""
    text = _dumps(head)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as out:
        out.write(text[:-1])
        for i, (name, spool) in enumerate(arrays.items()):
            out.write(("," if (i or head) else "") + _dumps(name) + ":")
            spool.copy_to(out)
        out.write("}")


class CocoWriter:
    """Streams per-image records into ``panoptic.json`` and / or ``instances.json`` of ``folder``."""

    def __init__(self, folder: Path, tasks: Sequence[str], cats: list[dict], info: dict) -> None:
        self.folder, self.cats, self.info = Path(folder), cats, info
        self.panoptic = "panoptic" in tasks
        self.instance = "instance" in tasks
        self._stack = contextlib.ExitStack()
        self._images = self._spool() if self.panoptic else None
        self._annotations = self._spool() if self.panoptic else None
        self._instances = self._spool() if self.instance else None

    def _spool(self) -> JsonSpool:
        spool = JsonSpool(self.folder)
        self._stack.callback(spool.close)
        return spool

    def __enter__(self) -> "CocoWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.close()

    def add(self, image_id: int, file_name: str, key: str, record: dict) -> None:
        """Add one segmented image: its record holds ``height``, ``width``, ``segments_info``, ``instances``."""
        if self._images is not None and self._annotations is not None:
            self._images.add({"id": image_id, "file_name": file_name, "height": record["height"],
                              "width": record["width"]})
            self._annotations.add({"image_id": image_id, "file_name": f"{key}.png",
                                   "segments_info": record.get("segments_info", [])})
        if self._instances is not None:
            for inst in record.get("instances", []):
                self._instances.add({"image_id": image_id, **inst})

    def finish(self) -> list[Path]:
        """Write the JSON files; returns their paths."""
        written = []
        if self._images is not None and self._annotations is not None:
            path = self.folder / PANOPTIC_JSON
            write_json_with_arrays(path, {"info": self.info, "licenses": [], "categories": self.cats},
                                   {"images": self._images, "annotations": self._annotations})
            written.append(path)
        if self._instances is not None:
            path = self.folder / INSTANCES_JSON
            with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as out:
                self._instances.copy_to(out)
            written.append(path)
        return written


# ---------------------------------------------------------------------------------------------- manifest, records
def run_config(layout: OutputLayout, predictor: Any, vocab: Vocabulary, is_thing: Sequence[bool]) -> dict:
    """What decides the outputs of an image (``predictor``: a Predictor); a resumed run must match it."""
    return {"format": layout.format, "tasks": list(layout.tasks), "vocabulary": [list(c) for c in vocab.classes],
            "things": [bool(t) for t in is_thing], "preset": predictor.preset.name,
            "weights_fingerprint": predictor.model.weights_fingerprint()}


def config_hash(config: dict) -> str:
    """A short hash of a run configuration: records carry it, so records of another configuration are redone."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def _versions() -> dict[str, Optional[str]]:
    from importlib import metadata

    out: dict[str, Optional[str]] = {"maskadapter": __version__, "python": sys.version.split()[0]}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def start_manifest(layout: OutputLayout, config: dict, items: Sequence[ImageItem], predictor: Any,
                   overwrite: bool, say: Callable[[str], None]) -> dict:
    """Refuse a COCO output folder of another configuration (unless ``overwrite``; per-image files of another
    configuration are recomputed, with a note); write the run's manifest (status "running", every input
    image); returns its head (all but the images)."""
    layout.root.mkdir(parents=True, exist_ok=True)
    path = layout.root / MANIFEST
    if path.is_file() and not overwrite:
        try:
            with open(path, encoding="utf-8") as f:
                old = json.load(f).get("config") or {}
        except (OSError, ValueError, AttributeError) as exc:
            raise ValueError(f"{path} is unreadable ({exc}); pass --overwrite to start over") from exc
        if old != config:
            diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
            if layout.format == "coco":  # dataset-level files must not mix two configurations
                raise ValueError(f"{layout.root} holds outputs of another run (differs in {', '.join(diff)}); "
                                 "pass --overwrite to replace them, or choose another output folder")
            say(f"note: {layout.root} holds outputs of another run (differs in {', '.join(diff)}): "
                "its images are segmented again")
    head = _start_head(layout, config, predictor)
    spool = JsonSpool(layout.root)
    try:
        for index, item in enumerate(items):
            spool.add(_manifest_entry(index, item))
        write_json_with_arrays(path, head, {"images": spool})
    finally:
        spool.close()
    return head


def _start_head(layout: OutputLayout, config: dict, predictor: Any) -> dict:
    vocab = Vocabulary(tuple(tuple(c) for c in config["vocabulary"]))
    return {"format": "maskadapter-batch", "version": MANIFEST_FORMAT, "status": "running",
            "run_id": config_hash(config), "config": config,
            "options": {"overlays": layout.overlays, "overlay_task": layout.overlay_task},
            "categories": categories(vocab, config["things"]),
            "layout": {k: p.relative_to(layout.root).as_posix() for k, p in layout.outputs("{key}").items()},
            "precision": predictor.resolved_precision, "versions": _versions()}


def _manifest_entry(index: int, item: ImageItem) -> dict:
    return {"id": item.image_id if item.image_id is not None else index + 1, "file_name": item.name,
            "key": item.key, "path": item.path}


def read_record(layout: OutputLayout, item: ImageItem, run_id: str) -> Optional[dict]:
    """The record of ``item`` from this configuration: status "ok" only when every output exists; None when
    absent, of another run or input, unreadable, or with outputs missing."""
    try:
        with open(layout.record(item.key), encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("run") != run_id or record.get("file_name") != item.name:
        return None
    if record.get("status") == "ok" and not all(p.is_file() for p in layout.outputs(item.key).values()):
        return None
    return record


# ---------------------------------------------------------------------------------------------- merge
def merge_outputs(output_dir: "str | Path", progress: bool = True) -> BatchReport:
    """Merge the per-image records of a batch run in ``output_dir`` (e.g. after a crash) into its
    dataset-level files and a complete manifest; images without a record are reported as missing."""
    from tqdm import tqdm

    root = Path(output_dir).expanduser()
    path = root / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{root} has no {MANIFEST}: it is not the output folder of a batch run")
    try:
        with open(path, encoding="utf-8") as f:
            head = json.load(f)
        entries = head.pop("images")
        config, opts = head["config"], head["options"]
        items = [ImageItem(e["path"], e["file_name"], e["key"], e["id"]) for e in entries]
        layout = OutputLayout(root, config["format"], config["tasks"], opts["overlays"], opts["overlay_task"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} is not a batch-run manifest: {exc}") from exc
    records = (read_record(layout, item, head["run_id"])
               for item in tqdm(items, desc="merge", unit="img", disable=not progress, file=sys.stderr))
    return merge(layout, items, records, {k: v for k, v in head.items() if k not in ("counts", "files")})


def merge(layout: OutputLayout, items: Sequence[ImageItem], records: Iterable[Optional[dict]],
          head: dict) -> BatchReport:
    """Write the dataset-level files and the final manifest from the records (in input order)."""
    report = BatchReport(layout.root, total=len(items))
    info = {"description": "maskadapter batch segmentation", "version": __version__, "run_id": head["run_id"]}
    spool = JsonSpool(layout.root)
    try:
        with CocoWriter(layout.root, layout.tasks if layout.format == "coco" else (), head["categories"],
                        info) as writer:
            for index, (item, record) in enumerate(zip(items, records)):
                spool.add(_merge_one(report, writer, index, item, record))
            report.files = [p.name for p in writer.finish()]
        status = "complete" if report.missing == 0 else "incomplete"
        counts = {"images": report.total, "ok": report.ok, "error": report.failed, "missing": report.missing}
        final = {**head, "status": status, "counts": counts, "files": report.files}
        write_json_with_arrays(layout.root / MANIFEST, final, {"images": spool})
    finally:
        spool.close()
    report.files.append(MANIFEST)
    return report


def _merge_one(report: BatchReport, writer: CocoWriter, index: int, item: ImageItem,
               record: Optional[dict]) -> dict:
    entry = {**_manifest_entry(index, item), "status": "missing" if record is None else record["status"]}
    if record is None:
        report.missing += 1
    elif record["status"] == "ok":
        report.ok += 1
        entry.update(height=record["height"], width=record["width"])
        report.downscaled += (record["height"], record["width"]) != (record["input_height"], record["input_width"])
        writer.add(entry["id"], item.name, item.key, record)
        if report.total <= ROW_LIMIT:
            report.rows.append({"name": item.name, "size": (record["height"], record["width"]),
                                "input_size": (record["input_height"], record["input_width"]),
                                "segments": record["segments"], "seconds": record["seconds"], "top": record["top"]})
    else:
        report.failed += 1
        entry["error"] = record.get("error", "")
        if len(report.failures) < FAILURE_LIMIT:
            report.failures.append((item.path, entry["error"]))
    return entry


def write_shard(layout: OutputLayout, mine: Sequence[ImageItem], run_id: str, rank: int, world: int) -> None:
    """This process's records (null for a missing one), one line each, for rank 0 to merge."""
    with atomic_path(layout.shard(rank, world)) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for item in mine:
            f.write(json.dumps(read_record(layout, item, run_id), ensure_ascii=False) + "\n")


def shard_records(layout: OutputLayout, total: int, world: int) -> Iterator[Optional[dict]]:
    """All records in input order: image i is line i // world of rank i % world's shard."""
    with contextlib.ExitStack() as stack:
        files = [stack.enter_context(open(layout.shard(r, world), encoding="utf-8")) for r in range(world)]
        for i in range(total):
            yield json.loads(files[i % world].readline())


def remove_shards(layout: OutputLayout) -> None:
    """Delete the shards (merged; or left by a crashed run of any number of processes)."""
    folder = layout.root / SHARDS
    for path in folder.glob("rank-*-of-*.jsonl"):
        path.unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        pass

"""The run store of batch segmentation: manifest, per-image records, shards, resume and merge.

An output folder holds, besides each image's files (its :class:`~.formats.OutputFormat`'s ``paths``):

* ``records/<key>.json``, written after the image's files: status (``ok`` / ``error`` with the message), sizes,
  the run it belongs to, each output file's size and SHA-256, and the format's per-image fields. An image is
  done when its record is ``ok``, of this run, and every output still has its recorded size and hash;
  anything else is segmented again (a damaged record with a warning);
* ``manifest.json``: the run's configuration and id (a hash of everything that changes an output: format,
  tasks, vocabulary, things, the resolved preset, precision, inference options, mask generator, every weight
  byte), categories, package versions and every image with its key and status. A folder holding another
  configuration's run is refused, naming what differs, unless ``overwrite``. The keys it lists stay the
  images' keys in later runs, and the files it lists are never read as inputs;
* ``shards/``: each process's records at the end of a run, merged by rank 0 (or by :func:`merge_outputs`).

Image ids are the input's position + 1, or the ids of a COCO image JSON input.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import json
import logging
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

from .. import __version__
from ..fileio import JsonSpool, atomic_path, atomic_write_json, remove_stale_temporaries, write_json_with_arrays
from ..fingerprint import sha256_file
from .formats import DoneImage, OutputFormat, from_description
from .inputs import ImageItem, OutputTarget

__all__ = ["MANIFEST", "RESERVED_KEYS", "RunStore", "BatchReport", "ManifestError", "read_manifest",
           "config_hash", "config_differences", "output_target", "merge_outputs"]

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
RECORDS = "records"
SHARDS = "shards"
#: what an image's key must not start with: the folder's own files and folders
RESERVED_KEYS = ("manifest", RECORDS, SHARDS)
MANIFEST_FORMAT = 2
ROW_LIMIT = 50  #: runs of up to this many images report one row per image
FAILURE_LIMIT = 100  #: failures listed in a report (all are in the manifest)
_PACKAGES = ("torch", "torchvision", "open_clip_torch", "timm", "numpy", "pillow", "pycocotools")
_OK_FIELDS = {"height": int, "width": int, "input_height": int, "input_width": int, "segments": int, "top": list,
              "seconds": (int, float), "outputs": dict}


class ManifestError(ValueError):
    """A manifest that cannot be read or is not a batch run's."""


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


# ---------------------------------------------------------------------------------------------- configuration
def config_hash(config: dict) -> str:
    """A short hash of a run configuration: records carry it, so records of another configuration are redone."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def config_differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The dotted names of the entries that differ between two configurations (``preset.mask_threshold``)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            out += config_differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [prefix[:-1] or "config"]


def _versions() -> dict[str, Optional[str]]:
    from importlib import metadata

    out: dict[str, Optional[str]] = {"maskadapter": __version__, "python": sys.version.split()[0]}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def read_manifest(path: Path) -> dict:
    """A batch run's manifest, checked for the fields resume and merge use; :class:`ManifestError` otherwise."""
    try:
        with open(path, encoding="utf-8") as f:
            head = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ManifestError(f"{path} is unreadable ({exc})") from exc
    problem = _manifest_problem(head)
    if problem:
        raise ManifestError(f"{path} is not a batch-run manifest ({problem})")
    return head


def _manifest_problem(head: Any) -> Optional[str]:
    if not isinstance(head, dict):
        return "not a JSON object"
    for name, kind in (("config", dict), ("run_id", str), ("images", list), ("categories", list)):
        if not isinstance(head.get(name), kind):
            return f"{name!r} missing or not a {kind.__name__}"
    if not isinstance(head["config"].get("format"), dict) or not isinstance(head["config"].get("tasks"), list):
        return "config without format and tasks"
    for entry in head["images"]:
        if not (isinstance(entry, dict) and isinstance(entry.get("key"), str) and isinstance(entry.get("id"), int)
                and isinstance(entry.get("file_name"), str) and isinstance(entry.get("path"), str)):
            return f"image entry {str(entry)[:80]} lacks key, id, file_name or path"
    return None


# ---------------------------------------------------------------------------------------------- the store
class RunStore:
    """The files of one output folder for one output format (see the module doc)."""

    def __init__(self, root: "str | Path", fmt: OutputFormat) -> None:
        self.root, self.format = Path(root), fmt

    def outputs(self, key: str) -> dict[str, Path]:
        """The files of the image ``key``: kind -> path."""
        return {kind: self.root / rel for kind, rel in self.format.paths(key).items()}

    def record(self, key: str) -> Path:
        """The per-image record: written last, it marks the image as done."""
        return self.root / RECORDS / f"{key}.json"

    def shard(self, rank: int, world: int) -> Path:
        """The records of one rank's share, gathered for rank 0's merge."""
        return self.root / SHARDS / f"rank-{rank:05d}-of-{world:05d}.jsonl"

    # ------------------------------------------------------------------------------------------ manifest
    def start(self, config: dict, items: Sequence[ImageItem], precision: str, overwrite: bool,
              categories: list[dict]) -> dict:
        """Refuse a folder of another configuration (unless ``overwrite``), remove temporary files of killed
        writers, write the manifest (status "running", every image); returns its head (all but the images)."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / MANIFEST
        if path.is_file() and not overwrite:
            try:
                old = read_manifest(path)
            except ManifestError as exc:
                raise ManifestError(f"{exc}; pass --overwrite to start over") from exc
            diff = config_differences(old["config"], config)
            if diff:
                raise ValueError(f"{self.root} holds outputs of another run (differs in {', '.join(diff)}); pass "
                                 "--overwrite to replace them, or choose another output folder")
        for stale in remove_stale_temporaries(self.root):
            logger.info("removed %s, left by a killed writer", stale)
        head = {"format": "maskadapter-batch", "version": MANIFEST_FORMAT, "status": "running",
                "run_id": config_hash(config), "config": config, "categories": categories,
                "layout": self.format.paths("{key}"), "precision": precision, "versions": _versions()}
        spool = JsonSpool(self.root)
        try:
            for index, item in enumerate(items):
                spool.add(_manifest_entry(index, item))
            write_json_with_arrays(path, head, {"images": spool})
        finally:
            spool.close()
        return head

    # ------------------------------------------------------------------------------------------ records
    def write_ok(self, item: ImageItem, run_id: str, fields: dict) -> None:
        """The record of a segmented image: ``fields`` plus each output's size and SHA-256."""
        outputs = {}
        for path in self.outputs(item.key).values():
            outputs[path.relative_to(self.root).as_posix()] = {"size": path.stat().st_size,
                                                               "sha256": sha256_file(path)}
        record = {**_base(item, run_id), "status": "ok", **fields, "outputs": outputs}
        atomic_write_json(self.record(item.key), record, indent=None)

    def write_error(self, item: ImageItem, run_id: str, stage: str, message: str) -> None:
        """The record of a failed image (segmented again by the next run)."""
        record = {**_base(item, run_id), "status": "error", "stage": stage, "error": message}
        atomic_write_json(self.record(item.key), record, indent=None)

    def read(self, item: ImageItem, run_id: str, verify: bool = True) -> Optional[dict]:
        """The record of ``item`` from this run: None when absent, of another run or input, damaged (with a
        warning), or (``verify``) when an output is missing or changed since it was written."""
        path = self.record(item.key)
        try:
            with open(path, encoding="utf-8") as f:
                record = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            problem: Optional[str] = f"is unreadable ({exc})"
        else:
            if not isinstance(record, dict) or record.get("run") != run_id or record.get("file_name") != item.name:
                return None
            problem = self._problem(item, record, verify)
        if problem:  # one message text, so the CLI shows the first few of a million
            logger.warning("record %s %s: %s is segmented again", path, problem, item.name)
            return None
        return record

    def _problem(self, item: ImageItem, record: dict, verify: bool) -> Optional[str]:
        if record.get("status") == "error":
            return None if isinstance(record.get("error"), str) else "is damaged (error without a message)"
        if record.get("status") != "ok":
            return f"is damaged (status {record.get('status')!r})"
        for name, kind in _OK_FIELDS.items():
            if not isinstance(record.get(name), kind) or isinstance(record.get(name), bool):
                return f"is damaged ({name!r} missing or not a {getattr(kind, '__name__', 'number')})"
        expected = {p.relative_to(self.root).as_posix() for p in self.outputs(item.key).values()}
        if set(record["outputs"]) != expected:
            return "lists other outputs than this format writes"
        if verify:
            for rel, meta in record["outputs"].items():
                problem = _changed(self.root / rel, meta)
                if problem:
                    return f"does not match {rel} ({problem})"
        return None

    # ------------------------------------------------------------------------------------------ shards
    def write_shard(self, mine: Sequence[ImageItem], run_id: str, rank: int, world: int,
                    verified: "set[str]") -> None:
        """This process's records (null for a missing one), one line each, for rank 0 to merge; records in
        ``verified`` (checked or written by this run) are not hashed again."""
        with atomic_path(self.shard(rank, world)) as tmp, open(tmp, "w", encoding="utf-8") as f:
            for item in mine:
                record = self.read(item, run_id, verify=item.key not in verified)
                f.write(json.dumps(record, ensure_ascii=False) + "\n")

    def shard_records(self, total: int, world: int) -> Iterator[Optional[dict]]:
        """All records in input order: image i is line i // world of rank i % world's shard."""
        with contextlib.ExitStack() as stack:
            files = [stack.enter_context(open(self.shard(r, world), encoding="utf-8")) for r in range(world)]
            for i in range(total):
                yield json.loads(files[i % world].readline())

    def remove_shards(self) -> None:
        """Delete the shards (merged; or left by a crashed run of any number of processes)."""
        folder = self.root / SHARDS
        for path in folder.glob("rank-*-of-*.jsonl"):
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            folder.rmdir()

    # ------------------------------------------------------------------------------------------ merge
    def merge(self, items: Sequence[ImageItem], records: Iterable[Optional[dict]], head: dict) -> BatchReport:
        """Write the format's dataset-level files and the final manifest from the records (in input order)."""
        report = BatchReport(self.root, total=len(items))
        spool = JsonSpool(self.root)
        with tempfile.TemporaryFile("w+", encoding="utf-8", dir=self.root) as done:
            try:
                for index, (item, record) in enumerate(zip(items, records)):
                    spool.add(_merge_one(report, done, index, item, record))
                done.seek(0)
                report.files = list(self.format.finish(self.root, head, _done_images(done)))
                status = "complete" if report.missing == 0 else "incomplete"
                counts = {"images": report.total, "ok": report.ok, "error": report.failed, "missing": report.missing}
                final = {**head, "status": status, "counts": counts, "files": report.files}
                write_json_with_arrays(self.root / MANIFEST, final, {"images": spool})
            finally:
                spool.close()
        report.files.append(MANIFEST)
        return report


def _changed(path: Path, meta: Any) -> Optional[str]:
    if not isinstance(meta, dict) or not isinstance(meta.get("size"), int) or not isinstance(meta.get("sha256"), str):
        return "no size and hash recorded"
    try:
        size = path.stat().st_size
        if size != meta["size"]:
            return f"{size} bytes, {meta['size']} recorded"
        if sha256_file(path) != meta["sha256"]:
            return "content changed"
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _base(item: ImageItem, run_id: str) -> dict:
    return {"file_name": item.name, "key": item.key, "source": os.path.abspath(item.path), "run": run_id}


def _manifest_entry(index: int, item: ImageItem) -> dict:
    return {"id": item.image_id if item.image_id is not None else index + 1, "file_name": item.name,
            "key": item.key, "path": item.path, "source": os.path.realpath(item.path)}


def _merge_one(report: BatchReport, done: Any, index: int, item: ImageItem, record: Optional[dict]) -> dict:
    entry = {**_manifest_entry(index, item), "status": "missing" if record is None else record["status"]}
    if record is None:
        report.missing += 1
    elif record["status"] == "ok":
        report.ok += 1
        entry.update(height=record["height"], width=record["width"])
        report.downscaled += (record["height"], record["width"]) != (record["input_height"], record["input_width"])
        done.write(json.dumps([entry["id"], item.name, item.key, record], ensure_ascii=False) + "\n")
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


def _done_images(lines: Iterable[str]) -> Iterator[DoneImage]:
    for line in lines:
        image_id, name, key, record = json.loads(line)
        yield DoneImage(image_id, name, key, record)


# ---------------------------------------------------------------------------------------------- earlier runs
def output_target(root: "str | Path", fmt: OutputFormat) -> OutputTarget:
    """What input collection needs to know of the output folder: the format's paths, and from an earlier run's
    manifest the keys its inputs had (kept) and the files it wrote (never inputs). A manifest that cannot be
    read pins nothing (the run refuses it later, naming the problem)."""
    root = Path(root)
    pinned: dict[str, str] = {}
    own: set[str] = set()
    if (root / MANIFEST).is_file():
        with contextlib.suppress(ManifestError):
            head = read_manifest(root / MANIFEST)
            layout = head.get("layout") if isinstance(head.get("layout"), dict) else fmt.paths("{key}")
            real_root = os.path.realpath(root)
            for entry in head["images"]:
                if isinstance(entry.get("source"), str):
                    pinned[entry["source"]] = entry["key"]
                for rel in layout.values():
                    own.add(os.path.join(real_root, str(rel).replace("{key}", entry["key"])))
    return OutputTarget(root, lambda key: fmt.paths(key).values(), pinned, frozenset(own))


def merge_outputs(output_dir: "str | Path", progress: bool = True,
                  format: Optional[OutputFormat] = None) -> BatchReport:
    """Merge the per-image records of a batch run in ``output_dir`` (e.g. after a crash) into its dataset-level
    files and a complete manifest; images without a valid record are reported as missing. ``format``: the
    run's output format object when it is not a built-in one."""
    from tqdm import tqdm

    root = Path(output_dir).expanduser()
    path = root / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{root} has no {MANIFEST}: it is not the output folder of a batch run")
    head = read_manifest(path)
    entries = head.pop("images")
    fmt = format if format is not None else from_description(head["config"]["format"])
    store = RunStore(root, fmt)
    items = [ImageItem(e["path"], e["file_name"], e["key"], e["id"]) for e in entries]
    records = (store.read(item, head["run_id"])
               for item in tqdm(items, desc="merge", unit="img", disable=not progress, file=sys.stderr))
    return store.merge(items, records, {k: v for k, v in head.items() if k not in ("counts", "files")})


def describe_object(obj: Any) -> dict:
    """A JSON-ready description of a configuration object (a dataclass, or an object's plain attributes)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        data = dataclasses.asdict(obj)
    else:
        data = {k: v for k, v in vars(obj).items() if not k.startswith("_")
                and isinstance(v, (bool, int, float, str, type(None), tuple, list))}
    return json.loads(json.dumps(data, sort_keys=True, default=str))


def run_config(fmt: OutputFormat, tasks: Sequence[str], predictor: Any, vocab: Any, is_thing: Sequence[bool],
               weight_files: Optional[Sequence["str | os.PathLike"]] = None) -> dict:
    """Everything that changes an image's outputs (``predictor``: a Predictor); a resumed run must match it.

    Weights: the SHA-256 of each of ``weight_files`` when given (the files the model and the mask generator were
    loaded from; hashed once per file version), else a hash of every weight byte in memory.
    """
    from ..fingerprint import cached_sha256

    generator = getattr(predictor, "mask_generator", None)
    options = {k: v for k, v in describe_object(predictor.options).items() if k not in ("precision", "sync_timings")}
    if weight_files:
        weights: dict = {"files": [[Path(f).name, cached_sha256(f)] for f in weight_files]}
    else:
        weights = {"model": predictor.model.weights_fingerprint(), "generator": _modules_hash(generator)}
    return {"format": fmt.describe(), "tasks": list(tasks), "vocabulary": [list(c) for c in vocab.classes],
            "things": [bool(t) for t in is_thing], "preset": describe_object(predictor.preset),
            "precision": predictor.resolved_precision, "options": options,
            "generator": _describe_generator(generator), "weights": weights}


def _describe_generator(obj: Any, depth: int = 3) -> Any:
    """The type and plain settings of a mask generator and of the objects it holds (a few levels deep); an object
    with a ``describe()`` method describes itself (so counters and caches it keeps do not count as settings)."""
    import torch

    if obj is None:
        return None
    out: dict = {"type": f"{type(obj).__module__}.{type(obj).__qualname__}"}
    if callable(getattr(obj, "describe", None)):
        out["settings"] = json.loads(json.dumps(obj.describe(), sort_keys=True, default=str))
        return out
    if isinstance(obj, torch.nn.Module) or not hasattr(obj, "__dict__"):
        return out
    out["settings"] = describe_object(obj)
    if depth > 0:
        parts = {k: _describe_generator(v, depth - 1) for k, v in vars(obj).items()
                 if hasattr(v, "__dict__") and not isinstance(v, (type, torch.Tensor)) and not inspect.isroutine(v)}
        if parts:
            out["parts"] = parts
    return out


def _modules_hash(obj: Any) -> Optional[str]:
    """A hash of every weight of the torch modules an object holds (a few attribute levels deep), or None."""
    if obj is None:
        return None
    import torch

    from ..fingerprint import tensors_sha256

    found: dict[int, torch.nn.Module] = {}

    seen: set[int] = set()

    def visit(value: Any, depth: int) -> None:
        if id(value) in seen:
            return
        seen.add(id(value))
        if isinstance(value, torch.nn.Module):
            found.setdefault(id(value), value)
        elif depth < 6 and hasattr(value, "__dict__") and not isinstance(value, type):
            for child in vars(value).values():
                visit(child, depth + 1)

    visit(obj, 0)
    named = ((f"{i}.{name}", t) for i, module in enumerate(found.values()) for name, t in module.state_dict().items())
    return tensors_sha256(named)[:16] if found else None

"""``maskadapter segment``: segment images - a few photos or a whole collection, on one or many GPUs - and
write per-image PNGs and JSON (``--format files``) or dataset-level COCO files (``--format coco``)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from ..constants import TASKS
from ..inference.options import check_tasks
from ..inference import formats
from ..vocabulary import FILE_SYNTAX, INLINE_SYNTAX
from .common import add_model_arguments, build_predictor, build_sam, say

__all__ = ["register", "run_segment"]

# kept in sync with maskadapter.inference.prompts.POINTS_SYNTAX / BOXES_SYNTAX (that module imports torch)
_POINTS_HELP = '"x,y;x,y" in pixels, "+x,y" (default) on the object, "-x,y" off it'
_BOXES_HELP = '"x0,y0,x1,y1;..." in pixels, each box one object'

#: Runs of more images print totals instead of one row per image.
TABLE_LIMIT = 50
_NOTE_LIMIT = 10  # paths listed per kind of note (skipped folders, non-images, renames, failures)

_EPILOG = """\
inputs: image files, folders (--recursive enters sub-folders), glob patterns ('photos/**/*.jpg', quoted),
  --image-list FILE (one path per line) or --images-json FILE (COCO images[].file_name under --image-root).
  Outputs keep the inputs' paths relative to their folder (or root), always inside -o (no '..'; parts over
  160 bytes shortened with a hash); inputs that would share an output name are told apart (pic.jpg + pic.png
  -> pic_jpg, pic_png; a second img.png -> img_2), and once written an input's outputs keep their names.
  Files a run wrote are never read as inputs, and no output replaces an input.
--format files (default): per image NAME_labels.png (class index per pixel, 255 = none), NAME.json and
  NAME_overlay.png. --format coco: semantic/NAME.png, panoptic/NAME.png + panoptic.json (panopticapi) and
  instances.json (COCO results, RLE masks) by --task; overlays/NAME.png with --overlays.
Both write manifest.json (vocabulary, model, versions, per-image status) and records/NAME.json per image
(with each output's size and SHA-256): a re-run over the same output folder skips finished images whose
outputs are intact (an interrupted run resumes) unless --overwrite; a folder of another configuration
(preset, weights, precision, vocabulary, ...) is refused, naming what differs, unless --overwrite.
A failed image (unreadable, too large) is recorded with its error and the run goes on; the exit status is then 1.
Several GPUs or nodes: torchrun --nproc-per-node N -m maskadapter segment ... (one shard per process; the
output folder must be shared). After a crash, `maskadapter merge OUT` writes the dataset-level files."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``segment`` sub-command."""
    p = subparsers.add_parser("segment", help="segment images with any vocabulary",
                              description="Segment images (files, folders, patterns, lists) into the classes of a "
                                          "vocabulary; resumable, one or many processes (torchrun).",
                              epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="*", help="image files, folders or glob patterns")
    p.add_argument("-r", "--recursive", action="store_true", help="also segment the images in sub-folders")
    p.add_argument("--image-list", action="append", default=[], metavar="FILE",
                   help="a text file naming one image per line (relative to --image-root, else to the file)")
    p.add_argument("--images-json", metavar="FILE", help="a COCO-style JSON: segment its images[].file_name")
    p.add_argument("--image-root", metavar="DIR", help="folder of the --images-json / --image-list images")
    vocab = p.add_mutually_exclusive_group(required=True)
    vocab.add_argument("--vocab", help=f"the classes inline: {INLINE_SYNTAX}")
    vocab.add_argument("--vocab-file", help=f"a class file: {FILE_SYNTAX}")
    p.add_argument("--task", default="semantic",
                   help=f"comma-separated outputs among {', '.join(TASKS)} (default semantic; label maps always)")
    p.add_argument("--things", help="classes that are countable objects (panoptic/instance), comma separated; "
                                    "default: classes matching a COCO thing class")
    p.add_argument("--points", help="click to segment: SAM point prompts, " + _POINTS_HELP + " (needs "
                                    "--sam-checkpoint; one image)")
    p.add_argument("--boxes", help="SAM box prompts, " + _BOXES_HELP + " (needs --sam-checkpoint; one image)")
    p.add_argument("--top-k", type=int, default=5, help="classes listed per prompt (default 5)")
    p.add_argument("--multimask", action=argparse.BooleanOptionalAction, default=None,
                   help="keep the best of SAM's three masks (--multimask) or SAM's single mask (--no-multimask) for "
                        "every prompt group; default: SAM's rule, three for a single click, one otherwise")
    # "--points -20,70;+35,40": a value starting with "-" and a digit is a value (a negative point), not an option
    p._negative_number_matcher = re.compile(r"^-\.?\d")
    p.add_argument("-o", "--output", required=True, help="output folder (created if missing)")
    p.add_argument("--format", choices=formats.NAMES, default="files", help="output format (default files)")
    p.add_argument("--overlays", action=argparse.BooleanOptionalAction, default=None,
                   help="write an overlay PNG per image (default: yes for --format files, no for coco)")
    p.add_argument("--overwrite", action="store_true", help="recompute images whose outputs exist")
    p.add_argument("--batch-size", type=int, default=1,
                   help="images per forward pass, by padded size (default 1); maps equal batch size 1 but at ties, "
                        "scores agree to float rounding")
    p.add_argument("--workers", type=int, default=2, help="processes decoding images (default 2; 0: none)")
    p.add_argument("--limit", type=int, help="segment the first N input images only")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_model_arguments(p)
    p.set_defaults(func=run_segment)


@dataclass
class _Settings:
    """The options checked before anything heavy is loaded."""

    vocab: Any
    things: Optional[list[str]]
    tasks: tuple[str, ...]
    output: Path  #: not created yet: the run creates it once the model is loaded
    format: Any = None  #: the OutputFormat
    inputs: Any = None  #: the collected InputSet (None with prompts)
    points: list = field(default_factory=list)  #: SAM point prompts (x, y, positive)
    boxes: list = field(default_factory=list)  #: SAM box prompts (x0, y0, x1, y1)


def _check_args(args: argparse.Namespace) -> _Settings:
    """Every check that needs no model: vocabulary, tasks, numbers, preset, device, precision, mask generator,
    output folder, inputs, then things. Up to the inputs no torch is imported, and nothing is created."""
    from ..vocabulary import Vocabulary

    vocab = Vocabulary.from_file(args.vocab_file) if args.vocab_file else Vocabulary.parse(args.vocab)
    tasks = check_tasks(args.task, "--task")
    for name, low in (("batch_size", 1), ("workers", 0)):
        if getattr(args, name) < low:
            raise ValueError(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(args, name)}")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be a positive number of images, got {args.limit}")
    if not (args.images or args.image_list or args.images_json):
        raise ValueError("give images: files, folders, glob patterns, --image-list or --images-json")
    _check_model_options(args)
    output = _check_output(args.output)
    points, boxes = _check_prompts(args)
    fmt = formats.create(args.format, tasks, args.overlays, tasks[0])
    inputs = None if (points or boxes) else _collect(args, output, fmt)
    things = [t.strip() for t in args.things.split(",") if t.strip()] if args.things else None
    if things is not None:
        from ..inference.predictor import things_mask

        try:
            things_mask(vocab, things)
        except ValueError as exc:
            raise ValueError(f"--{exc}") from exc
    return _Settings(vocab, things, tasks, output, fmt, inputs, points, boxes)


def _check_model_options(args: argparse.Namespace) -> None:
    """Preset, device, precision and mask generator, without torch."""
    from ..presets import get_preset

    preset = str(args.preset)
    if preset.endswith(".json") or os.path.sep in preset or Path(preset).exists():
        if not Path(preset).expanduser().is_file():
            raise FileNotFoundError(f"preset file not found: {preset}")
    else:
        get_preset(preset)
    device = args.device or "auto"
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", device):
        raise ValueError(f"--device must be cpu, cuda or cuda:N, got {device!r}")
    if args.precision == "fp16" and device == "cpu":
        raise ValueError("--precision fp16 needs a CUDA device (on the CPU use fp32 or bf16)")
    if args.generator == "sam" and not args.sam_checkpoint:
        raise ValueError("--generator sam needs --sam-checkpoint PATH")
    if args.adapter_only and args.generator != "sam" and not (args.points or args.boxes):
        raise ValueError("--adapter-only has no mask generator: add --generator sam --sam-checkpoint PATH "
                         "(SAM's automatic masks) or prompt with --points / --boxes")


def _check_output(path: str) -> Path:
    """The output folder, not created: ValueError when it is a file or cannot be created."""
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"output {folder} exists and is not a folder")
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"cannot create the output folder {folder}: {existing} is not a writable folder")
    return folder


def _collect(args: argparse.Namespace, output: Path, fmt: Any) -> Any:
    """The input images, keyed for ``output`` (earlier keys kept, earlier outputs skipped)."""
    from ..inference.inputs import collect_inputs
    from ..inference.runstore import RESERVED_KEYS, output_target

    return collect_inputs(args.images, args.recursive, args.image_list, args.images_json, args.image_root,
                          str(output), RESERVED_KEYS, output_target(output, fmt))


def _check_prompts(args: argparse.Namespace) -> tuple[list, list]:
    """Parsed --points / --boxes (an empty one is an error); they need SAM and exactly one image file, and must
    lie inside it (its size read from the header, before the model loads)."""
    if args.points is None and args.boxes is None:
        if args.multimask is not None:
            raise ValueError("--multimask / --no-multimask go with --points / --boxes")
        return [], []
    from ..inference.prompts import parse_boxes, parse_points, prompt_groups

    points = parse_points(args.points) if args.points is not None else []
    boxes = parse_boxes(args.boxes) if args.boxes is not None else []
    if not args.sam_checkpoint:
        raise ValueError("--points / --boxes need --sam-checkpoint PATH (SAM or SAM 2 weights)")
    if len(args.images) != 1 or args.image_list or args.images_json or not Path(args.images[0]).is_file():
        raise ValueError("--points / --boxes are pixels of one image: give exactly one image file")
    if args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
    try:
        prompt_groups(points, boxes, _upright_size(Path(args.images[0])))
    except ValueError as exc:
        raise ValueError(f"--points / --boxes: {exc}") from exc
    return points, boxes


def _upright_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image file as it will be decoded (EXIF orientation applied), from its header."""
    from PIL import Image

    from ..images import image_size

    width, height = image_size(path)
    with Image.open(path) as im:
        orientation = im.getexif().get(0x0112, 1)  # 5-8: the picture is stored rotated by 90 degrees
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


def run_segment(args: argparse.Namespace) -> int:
    """Check the options, collect the inputs, load the model, segment; exit status 1 if any image failed."""
    settings = _check_args(args)
    from ..distributed import cleanup, init_distributed, resolve_device
    from ..inference.batch import SharedError

    if settings.points or settings.boxes:
        return _segment_prompts(args, settings)
    info = init_distributed(resolve_device(args.device))
    try:
        return _segment(args, settings, info.is_main)
    except SharedError:  # rank 0 reports it
        return 1
    finally:
        cleanup(info)


def _segment(args: argparse.Namespace, settings: _Settings, main: bool) -> int:
    from tqdm.contrib.logging import logging_redirect_tqdm

    from ..inference.batch import BatchOptions, run_batch

    inputs = settings.inputs
    items = inputs.items[: args.limit] if args.limit else inputs.items
    options = BatchOptions(settings.tasks, settings.format, None, settings.tasks[0], args.batch_size,
                           args.workers, args.overwrite, progress=main and not args.quiet)
    if main:
        _print_input_notes(inputs)
    predictor = build_predictor(args)
    with logging_redirect_tqdm(), _few_of_a_kind():
        report = run_batch(predictor, items, settings.vocab, settings.output, options, settings.things,
                           on_message=_write_line, weight_files=_weight_files(args, predictor))
    if main:
        _print_summary(report, options)
    return 1 if report.failed else 0


def _weight_files(args: argparse.Namespace, predictor: Any) -> Optional[list[str]]:
    """The files the model and SAM were loaded from (their hashes are remembered per file); None when the
    released file cannot be named (the run then hashes the weights in memory)."""
    if args.weights:
        files = [args.weights]
    else:
        try:
            from ..hub import resolve_weights

            files = [str(resolve_weights(predictor.preset))]
        except Exception:  # noqa: BLE001 - only the fingerprint's speed depends on it
            return None
    return files + [f for f in (args.clip_weights, args.sam_checkpoint) if f]


def _segment_prompts(args: argparse.Namespace, settings: _Settings) -> int:
    """Click to segment one image: overlay with the prompts, label map and JSON (prompts, classes, top-k)."""
    from PIL import Image

    from ..fileio import atomic_save_image, atomic_write_json
    from ..images import to_rgb_tensor
    from ..inference.prompts import PromptSegmenter, prompt_overlay
    from ..inference.writers import categories_json, encode_label_map
    from ..modeling.generators.sam import SamPromptPredictor

    path = Path(args.images[0])
    sam = build_sam(args)  # one network: the prompts, and the automatic masks with --generator sam
    predictor = build_predictor(args, sam=sam)
    rgb = to_rgb_tensor(path, max_pixels=predictor.max_image_pixels)
    segmenter = PromptSegmenter(predictor, SamPromptPredictor(sam), multimask=args.multimask)
    result = segmenter(rgb, settings.vocab, points=settings.points, boxes=settings.boxes, top_k=args.top_k)
    stem, H, W = path.stem, int(rgb.shape[1]), int(rgb.shape[2])
    atomic_save_image(prompt_overlay(rgb.permute(1, 2, 0).numpy(), result), settings.output / f"{stem}_overlay.png")
    atomic_save_image(Image.fromarray(encode_label_map(result.semantic, len(settings.vocab))),
                      settings.output / f"{stem}_labels.png")
    atomic_write_json(settings.output / f"{stem}.json", {
        "file_name": path.name, "height": H, "width": W,
        "categories": categories_json(settings.vocab),
        "prompts": result.records()})
    for record in result.records():
        top = ", ".join(f"{t['label']} {t['score']:.2f}" for t in record["top_k"]) if record["label"] else "-"
        share = 100 * record["area"] / (H * W)
        print(f"#{record['id']} {record['label'] or 'empty mask'} (SAM {record['sam_score']:.2f}) "
              f"{share:.1f}% of the image; top: {top}")
    print(f"outputs written to {settings.output}/: {stem}_overlay.png, {stem}_labels.png, {stem}.json")
    return 0


@contextlib.contextmanager
def _few_of_a_kind(limit: int = 3) -> Iterator[None]:
    """Show the first ``limit`` log records of each message (a warning per image of a million would bury the
    bar); the summary counts what they report."""
    seen: Counter = Counter()

    def keep(record: logging.LogRecord) -> bool:
        if not hasattr(record, "few_of_a_kind"):  # decided once, however many handlers ask
            seen[record.msg] += 1
            record.few_of_a_kind = seen[record.msg] <= limit
            if seen[record.msg] == limit:
                record.msg = f"{record.msg} (further warnings like this one are not shown)"
        return record.few_of_a_kind

    handlers = logging.getLogger().handlers
    for handler in handlers:
        handler.addFilter(keep)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(keep)


def _write_line(message: str) -> None:
    """A status line that does not break the progress bar."""
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


def _listing(paths: list, limit: int = _NOTE_LIMIT) -> str:
    shown = ", ".join(str(p) for p in paths[:limit])
    return shown + (f", ... ({len(paths) - limit} more)" if len(paths) > limit else "")


def _print_input_notes(inputs: Any) -> None:
    """What was met but not segmented, and inputs renamed so their outputs stay apart."""
    notes = [
        (inputs.skipped_folders, "sub-folder(s) not entered (add --recursive)"),
        (inputs.non_images, "file(s) that are not images skipped"),
        (inputs.repeated, "input(s) name an image met before (segmented once)"),
        (inputs.skipped_links, "link(s) to folders not entered (name them to segment them)"),
        (inputs.own_outputs, "file(s) written by an earlier run into the output folder skipped"),
    ]
    for paths, what in notes:
        if paths:
            say(f"note: {len(paths)} {what}: {_listing(paths)}")
    if inputs.excluded:
        say(f"note: the output folder inside an input folder is not read: {_listing(inputs.excluded)}")
    for path, reason in inputs.conflicts[:_NOTE_LIMIT]:
        say(f"note: {path} gets another output name: {reason}")
    if inputs.renamed:
        say(f"note: {len(inputs.renamed)} input(s) renamed so their outputs stay apart: "
            f"{_listing([f'{path} -> {key}' for path, key in inputs.renamed])}")


def _size(size: tuple, input_size: tuple) -> str:
    out = f"{size[1]}x{size[0]}"
    return out if tuple(size) == tuple(input_size) else f"{input_size[1]}x{input_size[0]}->{out}"


def _print_summary(report: Any, options: Any) -> None:
    """One row per image for small runs, totals for large ones; failures; time per stage."""
    if report.rows and report.total <= TABLE_LIMIT:
        name_w = max(5, *(len(r["name"]) for r in report.rows))
        size_w = max(9, *(len(_size(r["size"], r["input_size"])) for r in report.rows))
        print(f"{'image':<{name_w}}  {'size':>{size_w}}  {'segments':>8}  {'time':>6}  top classes (share of pixels)")
        for r in report.rows:
            top = ", ".join(f"{label} {100 * share:.0f}%" for label, share in r["top"]) or "no segments found"
            print(f"{r['name']:<{name_w}}  {_size(r['size'], r['input_size']):>{size_w}}  {r['segments']:>8}  "
                  f"{r['seconds']:5.1f}s  {top}")
    skipped = report.ok - min(report.ok, report.computed)
    print(f"{report.total} images: {report.ok} segmented ({report.computed} now, {skipped} done before), "
          f"{report.failed} failed, {report.missing} missing; {report.seconds:.1f} s, "
          f"{report.images_per_second:.2f} images/s on {report.processes} process(es)")
    if report.downscaled:
        print(f"{report.downscaled} image(s) have maps smaller than the image (the output-size cap, "
              "max_output_pixels)")
    _print_stages(report)
    layout = ", ".join(options.output.paths("<name>").values())
    print(f"outputs ({', '.join(options.tasks)}) written to {report.output_dir}/: {layout}, records/<name>.json; "
          f"{', '.join(report.files)}")
    if report.failed:  # each failure had its "error:" line as it happened: the count, not the lines again
        print(f"{report.failed} of {report.total} images failed (each named above with its error; all listed in "
              f"{report.output_dir / 'manifest.json'})", file=sys.stderr)
    sys.stdout.flush()


def _print_stages(report: Any) -> None:
    total = report.stage_seconds.get("total", 0.0)
    if report.computed == 0 or total <= 0:
        return
    shares = ", ".join(f"{name} {100 * report.stage_seconds[name] / total:.0f}%"
                       for name in ("input wait", "model", "postprocess", "write"))
    print(f"time share: {shares} (decode/resize {report.decode_seconds:.1f} s, in worker processes when "
          f"--workers > 0)")

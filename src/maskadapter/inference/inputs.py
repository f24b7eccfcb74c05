"""The images of a batch run: files, folders, glob patterns, list files or a COCO image JSON, in a fixed order,
each with an output name (``key``) that no other input shares.

Keys are relative paths without the suffix, written with ``/``: a folder input keeps the paths inside it
(``photos/`` holding ``a/b.jpg`` gives ``a/b``), a glob pattern the paths below its fixed prefix, a list file or
a COCO JSON the paths below the image root, a single file its stem. Inputs whose keys would still meet
(``d1/img.png`` and ``d2/img.png``, or ``pic.jpg`` and ``pic.png`` in one folder; compared case-insensitively,
since many file systems are) are told apart deterministically: by their suffix when it differs
(``pic_jpg``, ``pic_png``), else the first keeps its key and the later ones get ``_2``, ``_3``, ...

Nothing here reads pixels or imports torch: collecting a million paths costs a directory walk.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterable, Optional, Sequence

from ..constants import IMAGE_SUFFIXES

__all__ = ["ImageItem", "InputSet", "collect_inputs", "is_glob_pattern"]

_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class ImageItem:
    """One input image: where it is, its name relative to its source, its output key and (COCO JSON) its id."""

    path: str  #: the file to read
    name: str  #: relative file name (``sub/pic.jpg``): the ``file_name`` of the outputs
    key: str  #: output name without suffix, unique among the inputs (``sub/pic`` or ``sub/pic_jpg``)
    image_id: Optional[int] = None  #: the id of a COCO image JSON entry; None for other inputs


@dataclass
class InputSet:
    """The collected images and what was met but not taken (reported to the user, never silently dropped)."""

    items: list[ImageItem]
    skipped_folders: list[str] = field(default_factory=list)  #: sub-folders not entered (no ``recursive``)
    non_images: list[str] = field(default_factory=list)  #: files in folders / pattern matches that are no images
    renamed: list[tuple[str, str]] = field(default_factory=list)  #: (input path, key) of told-apart inputs
    excluded: list[str] = field(default_factory=list)  #: input folders' parts left out (the output folder)
    repeated: list[str] = field(default_factory=list)  #: inputs naming a file met before (segmented once)


@dataclass
class _Found:
    path: Path
    rel: PurePosixPath  # path relative to its source, suffix included
    image_id: Optional[int] = None


def is_glob_pattern(text: str) -> bool:
    """True when ``text`` holds glob characters (``*``, ``?``, ``[``)."""
    return any(c in _GLOB_CHARS for c in text)


def collect_inputs(sources: Sequence[str] = (), recursive: bool = False, image_lists: Sequence[str] = (),
                   images_json: Optional[str] = None, image_root: Optional[str] = None,
                   exclude: Optional[str] = None, reserved: Sequence[str] = ()) -> InputSet:
    """Every input image in a deterministic order with a unique key (see the module doc).

    ``sources``: image files, folders and glob patterns (``**`` spans folders); ``image_lists``: text files
    with one image path per line (blank lines and ``#`` comments skipped; relative paths are relative to
    ``image_root``, else to the list file's folder); ``images_json``: a COCO-style JSON whose
    ``images[].file_name`` lie under ``image_root`` (default: the JSON's folder), kept with their ids.
    ``exclude``: a folder never read (the output folder, when it lies inside an input folder). ``reserved``:
    names a key must not start with (the output folder's own files and folders; ``manifest`` -> ``manifest_2``).
    FileNotFoundError / ValueError name the source that fails.
    """
    if images_json and (sources or image_lists):
        raise ValueError("--images-json cannot be combined with other inputs: its image ids number the outputs")
    if image_root and not (images_json or image_lists):
        raise ValueError("--image-root applies to --images-json and --image-list only")
    out = InputSet(items=[])
    found: list[_Found] = []
    skip = Path(exclude).resolve() if exclude else None
    for source in sources:
        found.extend(_from_source(source, recursive, skip, out))
    for list_file in image_lists:
        found.extend(_from_list(Path(list_file), image_root))
    if images_json:
        found.extend(_from_coco_json(Path(images_json), image_root))
    if not found:
        raise ValueError("no input images: give image files, folders, glob patterns, --image-list or --images-json")
    found = _first_of_each_file(found, out)
    keys = _unique_keys([f.rel for f in found], reserved)
    out.items = [ImageItem(str(f.path), f.rel.as_posix(), key, f.image_id) for f, key in zip(found, keys)]
    out.renamed = [(str(f.path), key) for f, key in zip(found, keys) if key != _stem_key(f.rel)]
    return out


def _from_source(source: str, recursive: bool, skip: Optional[Path], out: InputSet) -> list[_Found]:
    path = Path(source).expanduser()
    if path.is_dir():
        return _from_folder(path, recursive, skip, out)
    if path.is_file():
        return [_Found(path, PurePosixPath(path.name))]
    if is_glob_pattern(source):
        return _from_pattern(source, out)
    raise FileNotFoundError(f"no such image or folder: {path}")


def _from_folder(folder: Path, recursive: bool, skip: Optional[Path], out: InputSet) -> list[_Found]:
    """Images of ``folder`` (and with ``recursive`` its sub-folders), sorted by relative path."""
    if skip is not None and folder.resolve() == skip:
        raise ValueError(f"the output folder {folder} is an input folder: a later run would read the outputs as "
                         "inputs; choose another output folder")
    found: list[_Found] = []
    subfolders: list[str] = []
    for root, dirs, files in os.walk(folder):
        here = Path(root)
        kept = []
        for d in sorted(dirs):
            if d.startswith("."):
                continue  # hidden folders (.git, caches) are not image folders
            if skip is not None and (here / d).resolve() == skip:
                out.excluded.append(str(here / d))
                continue
            kept.append(d)
        if not recursive:
            subfolders.extend(str(here / d) for d in kept)
            kept = []
        dirs[:] = kept
        for name in files:
            if name.startswith("."):
                continue  # hidden files (.DS_Store, unfinished atomic writes)
            file = here / name
            if file.suffix.lower() in IMAGE_SUFFIXES:
                found.append(_Found(file, PurePosixPath(file.relative_to(folder).as_posix())))
            else:
                out.non_images.append(str(file))
    out.skipped_folders.extend(sorted(subfolders))
    if not found:
        hint = f" ({len(subfolders)} sub-folder(s) not entered: add --recursive)" if subfolders else ""
        raise ValueError(f"folder {folder} has no images ({', '.join(IMAGE_SUFFIXES)}){hint}")
    return sorted(found, key=lambda f: f.rel.as_posix())


def _from_pattern(pattern: str, out: InputSet) -> list[_Found]:
    """Files matching a glob pattern, keyed by their path below the pattern's fixed leading folders."""
    expanded = os.path.expanduser(pattern)
    matches = sorted(Path(m) for m in glob.glob(expanded, recursive=True))
    files = [m for m in matches if m.is_file() and not m.name.startswith(".")]
    if not files:
        raise FileNotFoundError(f"no files match the pattern {pattern!r}")
    parts = Path(expanded).parts
    fixed = next(i for i, part in enumerate(parts) if is_glob_pattern(part))
    base = Path(*parts[:fixed]) if fixed else Path(".")
    found = []
    for file in files:
        if file.suffix.lower() not in IMAGE_SUFFIXES:
            out.non_images.append(str(file))
            continue
        found.append(_Found(file, _relative(file, base)))
    if not found:
        raise ValueError(f"the pattern {pattern!r} matches no images ({', '.join(IMAGE_SUFFIXES)})")
    return sorted(found, key=lambda f: f.rel.as_posix())


def _from_list(list_file: Path, image_root: Optional[str]) -> list[_Found]:
    """Images named in a text file, one path per line, in the file's order."""
    if not list_file.is_file():
        raise FileNotFoundError(f"image list not found: {list_file}")
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read image list {list_file}: {exc}") from exc
    root = Path(image_root).expanduser() if image_root else list_file.parent
    found = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        path = Path(text).expanduser()
        path = path if path.is_absolute() else root / path
        if not path.is_file():
            raise FileNotFoundError(f"image list {list_file}, line {number}: no such image: {path}")
        found.append(_Found(path, _relative(path, root)))
    if not found:
        raise ValueError(f"image list {list_file} names no images")
    return found


def _from_coco_json(json_file: Path, image_root: Optional[str]) -> list[_Found]:
    """The ``images`` of a COCO-style JSON (``file_name`` under ``image_root``), in the JSON's order."""
    if not json_file.is_file():
        raise FileNotFoundError(f"image JSON not found: {json_file}")
    try:
        data = json.loads(json_file.read_text(encoding="utf-8"))
        images = data["images"]
        entries = [(str(im["file_name"]), int(im["id"])) for im in images]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{json_file} is not a COCO-style image JSON (images[].file_name and id): {exc}") from exc
    root = Path(image_root).expanduser() if image_root else json_file.parent
    if not root.is_dir():
        raise FileNotFoundError(f"image root not found: {root}")
    ids = [i for _, i in entries]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{json_file} lists an image id twice")
    found = []
    for name, image_id in entries:
        path = root / name
        if not path.is_file():
            raise FileNotFoundError(f"{json_file}: image {name!r} (id {image_id}) not found under {root}")
        found.append(_Found(path, _relative(path, root), image_id))
    if not found:
        raise ValueError(f"{json_file} lists no images")
    return found


def _first_of_each_file(found: list[_Found], out: InputSet) -> list[_Found]:
    """``found`` without repeats of a file met before (given twice, or in a folder and by name)."""
    seen: set[str] = set()
    kept = []
    for f in found:
        real = os.path.realpath(f.path)
        if real in seen:
            out.repeated.append(str(f.path))
            continue
        seen.add(real)
        kept.append(f)
    return kept


def _relative(path: Path, base: Path) -> PurePosixPath:
    """``path`` below ``base`` as a posix path; just the file name when it lies elsewhere."""
    try:
        rel = Path(os.path.normpath(path)).relative_to(os.path.normpath(base))
    except ValueError:
        return PurePosixPath(path.name)
    return PurePosixPath(rel.as_posix())


def _stem_key(rel: PurePosixPath) -> str:
    return rel.with_suffix("").as_posix() if rel.suffix else rel.as_posix()


def _unique_keys(rels: Sequence[PurePosixPath], reserved: Sequence[str] = ()) -> list[str]:
    """A key per input, unique case-insensitively and not starting with a ``reserved`` name (see the module doc)."""
    keys = [_stem_key(r) for r in rels]
    groups: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key.casefold(), []).append(i)
    for members in groups.values():
        suffixes = {rels[i].suffix.casefold() for i in members}
        if len(members) > 1 and len(suffixes) > 1:
            for i in members:
                keys[i] = f"{keys[i]}_{rels[i].suffix[1:].lower()}" if rels[i].suffix else keys[i]
    return _number_repeats(_avoid_reserved(keys, reserved))


def _avoid_reserved(keys: list[str], reserved: Sequence[str]) -> list[str]:
    """Keys whose first part is a reserved name get that part numbered (``records/a`` -> ``records_2/a``)."""
    names = {r.casefold() for r in reserved}
    taken = {k.casefold() for k in keys}
    out = []
    for key in keys:
        head, sep, rest = key.partition("/")
        out.append(_numbered(head, sep + rest, taken) if head.casefold() in names else key)
    return out


def _number_repeats(keys: Iterable[str]) -> list[str]:
    """Keys in order; a key met again (case-insensitively) gets the smallest free ``_2``, ``_3``, ... suffix."""
    keys = list(keys)
    taken = {k.casefold() for k in keys}
    seen: set[str] = set()
    out = []
    for key in keys:
        if key.casefold() in seen:
            key = _numbered(key, "", taken)
        seen.add(key.casefold())
        out.append(key)
    return out


def _numbered(head: str, tail: str, taken: set[str]) -> str:
    """``head_N + tail`` with the smallest N >= 2 not in ``taken`` (case-insensitive); the result is added to it."""
    n = 2
    while f"{head}_{n}{tail}".casefold() in taken:
        n += 1
    key = f"{head}_{n}{tail}"
    taken.add(key.casefold())
    return key

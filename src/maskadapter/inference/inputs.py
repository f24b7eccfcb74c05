"""The images of a batch run: files, folders, glob patterns, list files or a COCO image JSON, in a fixed order,
each with an output name (``key``) that no other input shares.

Keys are relative paths without the suffix, written with ``/``: a folder input keeps the paths inside it
(``photos/`` holding ``a/b.jpg`` gives ``a/b``), a glob pattern the paths below its fixed prefix, a list file or
a COCO JSON the paths below the image root, a single file its stem. Inputs whose keys would still meet
(``d1/img.png`` and ``d2/img.png``, or ``pic.jpg`` and ``pic.png`` in one folder; compared case-insensitively,
since many file systems are) are told apart deterministically: by their suffix when it differs
(``pic_jpg``, ``pic_png``), else the first keeps its key and the later ones get ``_2``, ``_3``, ...

Keys never leave the output folder: they are normalised relative paths without ``..`` or absolute parts (a
list line ``../y.jpg`` gives ``y``), and a part longer than :data:`MAX_KEY_PART_BYTES` is cut to a prefix plus
a short hash of the whole part (deterministic, within every file system's 255-byte name limit). With an
:class:`OutputTarget`, the keys an earlier run gave its inputs are kept (adding ``photo.png`` beside
``photo.jpg`` never renames ``photo.jpg``'s outputs), files the earlier run wrote are never inputs (listed as
skipped), and no output of a key is an input file (``cat.jpg`` beside a ``cat_labels.png`` of your own gets
``cat_2``). Symbolic links to folders are never entered (listed).

Nothing here reads pixels or imports torch: collecting a million paths costs a directory walk.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Mapping, Optional, Sequence

from ..constants import IMAGE_SUFFIXES

__all__ = ["ImageItem", "InputSet", "OutputTarget", "collect_inputs", "is_glob_pattern", "MAX_KEY_PART_BYTES"]

_GLOB_CHARS = set("*?[")
#: longest part of a key, in UTF-8 bytes: leaves room for suffixes and temporary-file marks within 255 bytes
MAX_KEY_PART_BYTES = 160
_HASH_CHARS = 12


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
    skipped_links: list[str] = field(default_factory=list)  #: symbolic links to folders, never entered
    own_outputs: list[str] = field(default_factory=list)  #: files an earlier run wrote into the output folder
    conflicts: list[tuple[str, str]] = field(default_factory=list)  #: (input path, why its first key was not used)


@dataclass(frozen=True)
class OutputTarget:
    """The output folder keys are chosen for (see the module doc)."""

    root: Path
    paths: Callable[[str], Iterable[str]]  #: the output files of a key, relative to ``root``
    pinned: Mapping[str, str] = field(default_factory=dict)  #: real input path -> its key in an earlier run
    own: frozenset = frozenset()  #: real paths of the files an earlier run wrote


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
                   exclude: Optional[str] = None, reserved: Sequence[str] = (),
                   target: Optional[OutputTarget] = None) -> InputSet:
    """Every input image in a deterministic order with a unique key (see the module doc).

    ``sources``: image files, folders and glob patterns (``**`` spans folders); ``image_lists``: text files
    with one image path per line (blank lines and ``#`` comments skipped; relative paths are relative to
    ``image_root``, else to the list file's folder); ``images_json``: a COCO-style JSON whose
    ``images[].file_name`` lie under ``image_root`` (default: the JSON's folder), kept with their ids.
    ``exclude``: a folder never read (the output folder, when it lies inside an input folder). ``reserved``:
    names a key must not start with (the output folder's own files and folders; ``manifest`` -> ``manifest_2``).
    ``target``: the output folder (earlier keys kept, its own outputs skipped, no output over an input).
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
    kept = _first_of_each_file(found, out, target.own if target else frozenset())
    if not kept:
        raise ValueError("no input images: every image given is an output of an earlier run in the output folder")
    found, reals = [f for f, _ in kept], [real for _, real in kept]
    rels = [_safe_rel(f.rel) for f in found]
    pinned = [target.pinned.get(real) if target else None for real in reals]
    keys = _unique_keys(rels, reserved, pinned)
    if target is not None:
        keys = _off_inputs(keys, set(reals), target, [str(f.path) for f in found], out.conflicts)
    out.items = [ImageItem(str(f.path), f.rel.as_posix(), key, f.image_id) for f, key in zip(found, keys)]
    out.renamed = [(str(f.path), key) for f, key in zip(found, keys) if key != _stem_key(f.rel)]
    return out


def _from_source(source: str, recursive: bool, skip: Optional[Path], out: InputSet) -> list[_Found]:
    path = Path(source).expanduser()
    if path.is_dir():
        return _from_folder(path, recursive, skip, out)
    if path.is_file():
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise ValueError(f"{path} is not an image ({', '.join(IMAGE_SUFFIXES)})")
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
            if (here / d).is_symlink():  # may lead anywhere, even into a loop: the user names it to segment it
                out.skipped_links.append(str(here / d))
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


def _first_of_each_file(found: list[_Found], out: InputSet, own: frozenset) -> list[tuple[_Found, str]]:
    """The files to segment with their real paths: repeats of a file met before (given twice, or in a folder
    and by name) and files an earlier run wrote (``own``) left out, and listed."""
    seen: set[str] = set()
    kept = []
    for f in found:
        real = os.path.realpath(f.path)
        if real in own:
            out.own_outputs.append(str(f.path))
        elif real in seen:
            out.repeated.append(str(f.path))
        else:
            seen.add(real)
            kept.append((f, real))
    return kept


def _relative(path: Path, base: Path) -> PurePosixPath:
    """``path`` relative to ``base`` as a posix path (may start with ``..``: :func:`_safe_rel` strips it)."""
    rel = os.path.relpath(os.path.normpath(os.path.abspath(path)), os.path.normpath(os.path.abspath(base)))
    return PurePosixPath(Path(rel).as_posix())


def _safe_rel(rel: PurePosixPath) -> PurePosixPath:
    """``rel`` without empty, ``.``, ``..`` or root parts, each part within :data:`MAX_KEY_PART_BYTES` (the
    suffix kept); never empty."""
    parts = [p for p in PurePosixPath(os.path.normpath(rel.as_posix())).parts if p not in ("", ".", "..", "/")]
    if not parts:
        parts = ["image"]
    *folders, name = parts
    stem, suffix = (name[: -len(rel.suffix)], rel.suffix) if rel.suffix and name.endswith(rel.suffix) else (name, "")
    return PurePosixPath(*[_short(p) for p in folders], _short(stem) + suffix)


def _short(part: str) -> str:
    """``part``, or when longer than :data:`MAX_KEY_PART_BYTES` its prefix and a hash of the whole part."""
    data = part.encode("utf-8", "surrogateescape")
    if len(data) <= MAX_KEY_PART_BYTES:
        return part
    digest = hashlib.sha256(data).hexdigest()[:_HASH_CHARS]
    prefix = data[: MAX_KEY_PART_BYTES - _HASH_CHARS - 1].decode("utf-8", "ignore")
    return f"{prefix}~{digest}"


def _stem_key(rel: PurePosixPath) -> str:
    return rel.with_suffix("").as_posix() if rel.suffix else rel.as_posix()


def _unique_keys(rels: Sequence[PurePosixPath], reserved: Sequence[str] = (),
                 pinned: Optional[Sequence[Optional[str]]] = None) -> list[str]:
    """A key per input, unique case-insensitively and not starting with a ``reserved`` name (see the module doc);
    ``pinned``: keys of an earlier run (None: choose one), kept as they are."""
    fixed = list(pinned) if pinned is not None else [None] * len(rels)
    keys = [fixed[i] or _stem_key(r) for i, r in enumerate(rels)]
    groups: dict[str, list[int]] = {}
    for i, rel in enumerate(rels):
        groups.setdefault(_stem_key(rel).casefold(), []).append(i)
    for members in groups.values():
        suffixes = {rels[i].suffix.casefold() for i in members}
        if len(members) > 1 and len(suffixes) > 1:
            for i in members:
                if rels[i].suffix and fixed[i] is None:
                    keys[i] = f"{keys[i]}_{rels[i].suffix[1:].lower()}"
    free = [i for i in range(len(keys)) if fixed[i] is None]
    chosen = _avoid_reserved([keys[i] for i in free], reserved, {k.casefold() for k in keys})
    for i, key in zip(free, chosen):
        keys[i] = key
    return _number_repeats(keys, fixed)


def _avoid_reserved(keys: list[str], reserved: Sequence[str], taken: set[str]) -> list[str]:
    """Keys whose first part is a reserved name get that part numbered (``records/a`` -> ``records_2/a``)."""
    names = {r.casefold() for r in reserved}
    out = []
    for key in keys:
        head, sep, rest = key.partition("/")
        out.append(_numbered(head, sep + rest, taken) if head.casefold() in names else key)
    return out


def _number_repeats(keys: Sequence[str], fixed: Sequence[Optional[str]]) -> list[str]:
    """Keys in order; a key met again (case-insensitively) or a pinned one (``fixed``) gets the smallest free
    ``_2``, ``_3``, ... suffix; pinned keys stay."""
    taken = {k.casefold() for k in keys}
    seen: set[str] = {k.casefold() for k in fixed if k is not None}
    out = []
    for key, pin in zip(keys, fixed):
        if pin is None and key.casefold() in seen:
            key = _numbered(key, "", taken)
        seen.add(key.casefold())
        out.append(key)
    return out


def _off_inputs(keys: list[str], inputs: set[str], target: OutputTarget, paths: list[str],
                conflicts: list[tuple[str, str]]) -> list[str]:
    """Keys renumbered where one of their outputs would replace an input file (compared case-insensitively) or
    anything else not written by an earlier run (a folder, a file of yours); each such input is listed with
    the reason in ``conflicts``."""
    root = os.path.realpath(target.root)
    inputs_cf = {p.casefold() for p in inputs}
    taken = {k.casefold() for k in keys}

    def conflict(key: str) -> Optional[str]:
        for rel in target.paths(key):
            path = os.path.join(root, rel)
            if path.casefold() in inputs_cf:
                return f"{path} is an input image"
            if path not in target.own and os.path.lexists(path):
                kind = "a folder" if os.path.isdir(path) else "a file"
                return f"{path} is {kind} not written by a run into this output folder"
        return None

    out = []
    for key, path in zip(keys, paths):
        base, reason = key, conflict(key)
        if reason:
            conflicts.append((path, reason))
        while reason:
            key = _numbered(base, "", taken)
            reason = conflict(key)
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

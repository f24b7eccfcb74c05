"""Image inputs: pixel limits are checked from the file header, before any decode, with messages naming the file,
its size and the limit that fired; allowed images decode once; read-only arrays need no copy."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maskadapter.images import image_size, read_image_file, to_rgb_tensor


def header_only_png(path: Path, width: int, height: int) -> Path:
    """A PNG whose header announces ``width`` x ``height`` RGB pixels but carries a single tiny IDAT chunk:
    a few hundred bytes on disk, gigabytes if anything tried to decode it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
                     + chunk(b"IEND", b""))
    return path


_PROBE = """
import json, resource, sys, time
from maskadapter.images import to_rgb_tensor
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
try:
    to_rgb_tensor(sys.argv[1], max_pixels=int(sys.argv[2]))
    message = None
except ValueError as exc:
    message = str(exc)
print(json.dumps({"seconds": time.perf_counter() - start, "message": message,
                  "rss_growth_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before}))
"""


def refuse_in_subprocess(path: Path, max_pixels: int) -> dict:
    proc = subprocess.run([sys.executable, "-c", _PROBE, str(path), str(max_pixels)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_160_megapixel_png_is_refused_from_its_header(tmp_path):
    path = header_only_png(tmp_path / "huge.png", 20000, 8000)
    assert path.stat().st_size < 1000 and image_size(path) == (20000, 8000)
    out = refuse_in_subprocess(path, 100_000_000)
    # 160 Mpx of RGB would be 480 MB decoded (and ~3.5 GB with the former copies)
    assert out["seconds"] < 1.0 and out["rss_growth_kib"] < 20 * 1024
    message = out["message"]
    assert "huge.png" in message and "20000x8000 = 160000000 pixels" in message and "100000000" in message


def test_the_limit_that_fired_is_the_one_quoted(tmp_path):
    bomb = header_only_png(tmp_path / "bomb.png", 20000, 10000)  # 200 Mpx: over Pillow's 2 x 89478485
    with pytest.raises(ValueError) as info:
        to_rgb_tensor(bomb, max_pixels=10**9)  # our own limit is higher: Pillow's is the one that fires
    message = str(info.value)
    assert "bomb.png" in message and "200000000 pixels" in message and str(2 * Image.MAX_IMAGE_PIXELS) in message
    assert "89478485 pixels" not in message


def test_pillows_warning_is_not_repeated_for_large_allowed_images(tmp_path):
    path = header_only_png(tmp_path / "big.png", 10000, 9000)  # 90 Mpx: Pillow would warn
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert image_size(path) == (10000, 9000)
        with pytest.raises(ValueError, match="over the limit of 50000000"):
            to_rgb_tensor(path, max_pixels=50_000_000)


def test_arrays_and_pil_images_are_checked_too():
    with pytest.raises(ValueError, match="100x50 = 5000 pixels is over the limit of 4000"):
        to_rgb_tensor(np.zeros((50, 100, 3), np.uint8), max_pixels=4000)
    with pytest.raises(ValueError, match="over the limit"):
        to_rgb_tensor(Image.new("RGB", (100, 50)), max_pixels=4000)
    with pytest.raises(ValueError, match="over the limit"):
        to_rgb_tensor(torch.zeros(3, 50, 100, dtype=torch.uint8), max_pixels=4000)


def test_exif_orientation_is_applied_without_a_copy_when_upright(tmp_path):
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[:, :10] = 255  # white on the left
    image = Image.fromarray(rgb)
    exif = image.getexif()
    exif[0x0112] = 6  # rotated 90 degrees clockwise when shown: stored sideways
    image.save(tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=100)
    image.save(tmp_path / "upright.png")
    rotated = read_image_file(tmp_path / "rotated.jpg")
    assert tuple(rotated.shape) == (3, 30, 20) and rotated[:, :10].float().mean() > 200  # white now on top
    upright = read_image_file(tmp_path / "upright.png")
    assert torch.equal(upright, torch.from_numpy(rgb).permute(2, 0, 1))


def test_read_only_arrays_are_shared_not_copied_and_silent():
    array = np.asarray(Image.new("RGB", (8, 6), (10, 20, 30)))
    assert not array.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tensor = to_rgb_tensor(array)
    assert tensor.shape == (3, 6, 8) and tensor.data_ptr() == array.ctypes.data


def test_unreadable_files_name_the_file(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"cannot read image .*bad\.png"):
        to_rgb_tensor(bad)
    with pytest.raises(FileNotFoundError, match="image not found"):
        to_rgb_tensor(tmp_path / "missing.png")

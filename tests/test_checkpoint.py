"""Checkpoints: official .pth / bare / safetensors reading, strict loading of the full official layout,
refusal of code-running pickles, corrupt files, readable key reports, `maskadapter convert`."""

from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file

from maskadapter import (CheckpointError, MaskAdapterModel, UnsafeCheckpointError, read_state_dict,
                         split_checkpoint)
from maskadapter.cli import main

from conftest import TINY_HEAD, tiny_clip_config
from official_layout import fabricated_official_checkpoint


class Payload:
    """Unpickling this calls ``open(marker, 'w')``: a stand-in for arbitrary code execution."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def official():
    return fabricated_official_checkpoint()


def assert_loaded(model: MaskAdapterModel, state: dict) -> None:
    for key, value in state.items():
        if key.startswith(("backbone.clip_model.", "mask_adapter.", "void_embedding.")):
            assert torch.equal(model.state_dict()[key], value), key


@pytest.mark.parametrize("layout", ["detectron2", "bare", "safetensors"])
def test_full_official_layout_loads_strictly(tmp_path, official, layout):
    path = tmp_path / ("ckpt.safetensors" if layout == "safetensors" else "ckpt.pth")
    if layout == "safetensors":
        save_file(official, str(path))
    else:
        torch.save({"model": official, "iteration": 7} if layout == "detectron2" else official, path)
    model = MaskAdapterModel(tiny_clip_config(), TINY_HEAD)
    unused = model.load_official(path)
    assert unused == ["cdt", "sem_seg_head"]
    assert_loaded(model, official)


def test_split_reports_ignored_unknown_and_remaps_legacy(official):
    split = split_checkpoint({**official, "mystery.weight": torch.zeros(1)})
    assert split.ignored == ["criterion.empty_weight"] and split.unknown == ["mystery.weight"]
    assert set(split.parts) == {"backbone.clip_model", "mask_adapter", "void_embedding", "sem_seg_head", "cdt"}
    legacy = {k.replace("mask_adapter.", "sem_seg_head."): v for k, v in official.items()
              if not k.startswith("sem_seg_head.")}
    remapped = split_checkpoint(legacy)
    assert "sem_seg_head" not in remapped.parts
    assert remapped.parts["mask_adapter"].keys() == split.parts["mask_adapter"].keys()
    assert "sem_seg_head" in split_checkpoint(legacy, remap_legacy=False).parts


def test_missing_keys_are_listed(official):
    state = {k: v for k, v in official.items() if k not in ("mask_adapter.cnext3.gamma", "mask_adapter.norm.bias")}
    model = MaskAdapterModel(tiny_clip_config(), TINY_HEAD)
    with pytest.raises(CheckpointError, match=r"part 'mask_adapter'.*\n  2 missing keys: cnext3.gamma, norm.bias"):
        model.load_official(state)
    no_adapter = {k: v for k, v in official.items() if not k.startswith("mask_adapter.")}
    with pytest.raises(CheckpointError, match=r"no keys for mask_adapter\.\*"):
        model.load_official(no_adapter)
    wrong_clip = MaskAdapterModel(tiny_clip_config("linear"), TINY_HEAD)  # B-style head: other keys
    with pytest.raises(CheckpointError, match=r"(?s)backbone.clip_model.*missing keys: visual.head.proj.weight.*unexpected keys: visual.head.mlp.fc1.bias"):
        wrong_clip.load_official(official)


def test_code_running_pickle_is_refused_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "payload": Payload(str(marker))}, path)
    with pytest.raises(UnsafeCheckpointError, match="refused to load"):
        read_state_dict(path)
    assert not marker.exists()
    assert main(["convert", str(path), str(tmp_path / "out.safetensors")]) == 2
    assert not marker.exists() and not (tmp_path / "out.safetensors").exists()
    with open(path, "rb"):  # the file really is malicious: a plain unpickler runs the payload
        torch.load(path, weights_only=False)
    assert marker.exists()


def test_corrupt_missing_and_empty_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        read_state_dict(tmp_path / "nope.pth")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        read_state_dict(tmp_path / "empty.pth")
    (tmp_path / "noise.pth").write_bytes(bytes(range(256)) * 8)
    with pytest.raises(CheckpointError, match="corrupt|could not"):
        read_state_dict(tmp_path / "noise.pth")
    good = tmp_path / "good.pth"
    torch.save({"model": {"w": torch.zeros(1000)}}, good)
    data = good.read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        read_state_dict(tmp_path / "truncated.pth")
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError, match="safetensors"):
        read_state_dict(tmp_path / "bad.safetensors")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="not a state dict"):
        read_state_dict(tmp_path / "list.pth")


def test_convert_cli_roundtrip(tmp_path, official, capsys):
    src, dst = tmp_path / "official.pth", tmp_path / "out.safetensors"
    torch.save({"model": official}, src)
    assert main(["convert", str(src), str(dst)]) == 0
    printed = capsys.readouterr().out
    assert "mask_adapter" in printed and "(ignored)" in printed
    converted = load_file(str(dst))
    assert converted.keys() == official.keys()
    assert all(torch.equal(converted[k], official[k]) for k in official)
    assert main(["convert", str(src), str(dst)]) == 2  # refuses to overwrite
    assert "--force" in capsys.readouterr().err
    assert main(["convert", str(src), str(dst), "--force"]) == 0
    assert main(["convert", str(src), str(tmp_path / "out.pth")]) == 2
    model = MaskAdapterModel(tiny_clip_config(), TINY_HEAD)
    model.load_official(dst)  # the converted file loads like the original
    assert_loaded(model, official)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_files_without_tensors_or_not_from_torch(tmp_path):
    path = tmp_path / "plain.pth"
    torch.save({"model": {"a": 1, "b": "text"}}, path)
    with pytest.raises(CheckpointError, match="no tensors"):
        read_state_dict(path)
    with open(path, "wb") as f:
        pickle.dump({"model": {"a": 1}}, f, protocol=5)  # a bare pickle, not a torch checkpoint
    with pytest.raises(CheckpointError, match="corrupt or not a plain tensor checkpoint") as info:
        read_state_dict(path)
    assert not isinstance(info.value, UnsafeCheckpointError)


@pytest.mark.parametrize("content", [b"\x80\x02garbage garbage", b"\x80\x04\x95" + bytes(range(200))])
def test_a_damaged_pickle_is_one_clean_message(tmp_path, content):
    # torch's refusal asks the user to file an issue with torch and suggests weights_only=False: neither helps
    path = tmp_path / "model.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        read_state_dict(path)
    message = str(info.value)
    assert str(path) in message and "corrupt" in message and "\n" not in message
    for leak in ("file an issue", "WeightsUnpickler", "weights_only", "Weights only load failed"):
        assert leak not in message, message

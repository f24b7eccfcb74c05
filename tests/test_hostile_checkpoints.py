"""Every checkpoint entry point fails clean on hostile files: a CheckpointError (UnsafeCheckpointError for code)
naming the file and the reason, never a torch / safetensors traceback; on the command line one ``error:`` line
and exit status 2. Code in a pickle is never run (a marker file it would create never appears)."""

from __future__ import annotations

import builtins
import copy
import os
import pickle
import re
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import maskadapter.checkpoint as checkpoint_module
import maskadapter.modeling.build as build_module
import maskadapter.modeling.load as load_module
from maskadapter.checkpoint import (CheckpointError, UnsafeCheckpointError, convert_checkpoint, load_weights_only,
                                    read_state_dict)
from maskadapter.cli import main
from maskadapter.inference.predictor import Predictor
from maskadapter.training.config import config_from_dict, config_to_dict, load_config
from maskadapter.training.fuse import export_state, fuse_checkpoints
from maskadapter.training.trainer import Trainer, build_training_model

from conftest import write_tiny_preset

REPO = Path(__file__).resolve().parents[1]
TARGET_KEY = "mask_adapter.final.weight"  # the key the non-tensor / wrong-shape files spoil (in every loaded part)


class Payload:
    """Unpickling this calls ``open(marker, 'w')``: a stand-in for arbitrary code execution."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


# ------------------------------------------------------------------------------------------ hostile files
def _pth_bytes(obj: Any, folder: Path) -> bytes:
    tmp = folder / "_tmp.pth"
    torch.save(obj, tmp)
    data = tmp.read_bytes()
    tmp.unlink()
    return data


def _tensors(obj: dict) -> dict[str, torch.Tensor]:
    return {k: v.contiguous() for k, v in (obj["model"] if "model" in obj else obj).items()}


def _spoil(obj: dict, value: Any) -> dict:
    """``obj`` (a state dict or a training checkpoint) with ``TARGET_KEY`` (or its first key) set to ``value``."""
    obj = copy.copy(obj)
    if obj.get("format") == "maskadapter-train":
        obj["model"] = dict(obj["model"])
        obj["model"][TARGET_KEY if TARGET_KEY in obj["model"] else next(iter(obj["model"]))] = value
    else:
        obj[TARGET_KEY] = value
    return obj


def _write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


#: name -> (builder(good object, folder, marker) -> path, exception type, reason pattern)
HOSTILE: dict[str, tuple[Callable[[dict, Path, Path], Path], type, str]] = {
    "truncated": (lambda o, d, m: _write(d, "truncated.pth", _pth_bytes(o, d)[:-200]),
                  CheckpointError, "corrupt, truncated"),
    "empty": (lambda o, d, m: _write(d, "empty.pth", b""), CheckpointError, r"empty \(0 bytes\)"),
    "pth_named_safetensors": (lambda o, d, m: _write(d, "renamed.safetensors", _pth_bytes(o, d)),
                              CheckpointError, r"named \.safetensors but holds a PyTorch checkpoint"),
    "safetensors_named_pth": (lambda o, d, m: save_file(_tensors(o), str(d / "renamed.pth")) or d / "renamed.pth",
                              CheckpointError, r"named \.pth but holds safetensors data"),
    "bad_header_json": (lambda o, d, m: _write(d, "badjson.safetensors", struct.pack("<Q", 16) + b"{not json at all"),
                        CheckpointError, "not a valid safetensors file.*header"),
    "header_past_end": (lambda o, d, m: _write(d, "long.safetensors", struct.pack("<Q", 10**6) + b'{"a": 1}'),
                        CheckpointError, "not a valid safetensors file.*header"),
    "code_pickle": (lambda o, d, m: _write(d, "evil.pth", _pth_bytes({**o, "payload": Payload(str(m))}, d)),
                    UnsafeCheckpointError, r"refused to load .*references code \(io\.open\)"),
    "plain_pickle_code": (lambda o, d, m: _write(d, "evil_plain.pth", pickle.dumps({"p": Payload(str(m))}, 4)),
                          UnsafeCheckpointError, r"refused to load .*references code \(io\.open\)"),
    "non_tensor": (lambda o, d, m: _write(d, "text.pth", _pth_bytes(_spoil(o, "text"), d)),
                   CheckpointError, r"key '[\w.]+' holds a str, not a tensor"),
    "wrong_shape": (lambda o, d, m: _write(d, "shape.pth", _pth_bytes(_spoil(o, torch.zeros(3)), d)),
                    CheckpointError, "shape"),
    "directory": (lambda o, d, m: (d / "folder.pth").mkdir() or d / "folder.pth", CheckpointError, "is a directory"),
    "unreadable": (lambda o, d, m: _write(d, "locked.pth", _pth_bytes(o, d)), CheckpointError, "Permission denied"),
}
#: Files only a loader that knows the model can reject (the others copy tensors without a model to check).
MODEL_ONLY = {"wrong_shape"}
#: Files that are valid pickles: load_weights_only returns any weights-only object, so it accepts them.
LAYOUT = {"non_tensor", "wrong_shape"}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A tiny preset, its model's official state, a training checkpoint of the tiny synthetic recipe, hostile
    variants of both, and inputs for segment / eval / fuse."""
    root = tmp_path_factory.mktemp("hostile")
    threads = torch.get_num_threads()  # run.threads=1 (tiny models: more threads only contend) is process-wide
    preset_file = write_tiny_preset(root / "tiny.json")
    overrides = [f"model.preset={preset_file}", f"run.output_dir={root / 'run'}", "solver.max_iter=1",
                 "eval.period=0", "run.progress=false", "run.tensorboard=false", "data.synthetic_size=64",
                 "data.synthetic_num_images=8", "run.threads=1"]
    config = load_config(REPO / "configs" / "synthetic.yaml", overrides)
    trainer = Trainer(config)
    good_train = torch.load(trainer.save_checkpoint(), weights_only=True)
    torch.save(good_train, root / "good_last.pt")  # the run folder is the CLI's too: keep a copy aside
    preset, arch = build_module.load_preset_file(preset_file)
    torch.manual_seed(0)
    model = build_module.build_model(preset, arch)
    good_sd = {k: v.clone() for k, v in model.state_dict().items()}
    files: dict[tuple[str, str], Path] = {}
    for base, obj in (("sd", good_sd), ("train", good_train)):
        for name, (builder, _, _) in HOSTILE.items():
            folder = root / base / name
            folder.mkdir(parents=True)
            files[base, name] = builder(obj, folder, root / "pwned")
    segmentor = root / "segmentor.pth"
    torch.save({"model": good_sd}, segmentor)
    stage1 = root / "stage1.pth"
    torch.save({"model": {k: v for k, v in good_sd.items() if not k.startswith("sem_seg_head.")}}, stage1)
    images, labels = root / "images", root / "labels"
    images.mkdir(), labels.mkdir()
    Image.fromarray(np.full((24, 32, 3), 90, np.uint8)).save(images / "a.png")
    Image.fromarray(np.zeros((24, 32), np.uint8)).save(labels / "a.png")
    (root / "classes.txt").write_text("sky\ngrass\n", encoding="utf-8")
    yield dict(root=root, preset_file=preset_file, config=config, overrides=overrides, trainer=trainer,
               files=files, segmentor=segmentor, stage1=stage1, model=model, marker=root / "pwned", build_cache={},
               dataset=f"custom:{images},{labels},{root / 'classes.txt'}")
    trainer.close()
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _fast_builds(monkeypatch, env):
    """Tiny models are built once; every loader then gets a copy (loading, not building, is under test)."""
    cache: dict[str, torch.nn.Module] = env["build_cache"]
    real = build_module.build_model

    def cached(preset, architecture=None):
        key = repr((preset, architecture))
        if key not in cache:
            cache[key] = real(preset, architecture)
        return copy.deepcopy(cache[key])

    monkeypatch.setattr(build_module, "build_model", cached)
    monkeypatch.setattr(load_module, "build_model", cached)
    yield
    assert not env["marker"].exists(), "a checkpoint pickle ran code"


def _deny_read(monkeypatch, target: Path) -> None:
    """Make ``target`` unreadable for the checkpoint reader (tests run as root, where chmod 000 does not)."""
    def guarded_open(file, *args, **kwargs):
        if Path(file) == target:
            raise PermissionError(13, "Permission denied", str(file))
        return builtins.open(file, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module, "open", guarded_open, raising=False)


# ------------------------------------------------------------------------------------------ entry points
def _config(env, **model) -> Any:
    data = config_to_dict(env["config"])
    data["model"].update(model)
    return config_from_dict(data)


def _cli_train(env, *extra: str) -> list[str]:
    return ["train", "--config", str(REPO / "configs" / "synthetic.yaml"), "--set", *env["overrides"], *extra]


def _cli_model(env, path: Path, *head: str) -> list[str]:
    return [*head, "--preset", str(env["preset_file"]), "--weights", str(path), "--device", "cpu",
            "--no-text-cache"]


#: name -> (which good file the hostile variants derive from, call(env, path, tmp_path))
LIBRARY: dict[str, tuple[str, Callable]] = {
    "read_state_dict": ("sd", lambda env, p, t: read_state_dict(p)),
    "load_weights_only": ("train", lambda env, p, t: load_weights_only(p)),
    "load_official": ("sd", lambda env, p, t: env["model"].load_official(p)),
    "Predictor.from_checkpoint": ("sd", lambda env, p, t: Predictor.from_checkpoint(p, env["preset_file"])),
    "model.weights": ("sd", lambda env, p, t: build_training_model(_config(env, weights=str(p)))),
    "model.adapter_weights": ("sd", lambda env, p, t: build_training_model(_config(env, adapter_weights=str(p)))),
    "Trainer.load_checkpoint": ("train", lambda env, p, t: env["trainer"].load_checkpoint(p)),
    "export_state": ("train", lambda env, p, t: export_state(p)),
    "fuse stage1": ("train", lambda env, p, t: fuse_checkpoints(p, env["segmentor"], t / "out.pth")),
    "fuse segmentor": ("sd", lambda env, p, t: fuse_checkpoints(env["stage1"], p, t / "out.pth")),
    "convert_checkpoint": ("sd", lambda env, p, t: convert_checkpoint(p, t / "out.safetensors")),
}
CLI: dict[str, tuple[str, Callable]] = {
    "convert": ("sd", lambda env, p, t: ["convert", str(p), str(t / "out.safetensors")]),
    "fuse": ("train", lambda env, p, t: ["fuse", str(p), str(env["segmentor"]), str(t / "out.pth")]),
    "export": ("train", lambda env, p, t: ["export", str(p), str(t / "out.safetensors")]),
    "train --resume": ("train", lambda env, p, t: _cli_train(env, "--resume", str(p))),
    "train model.weights": ("sd", lambda env, p, t: _cli_train(env, f"model.weights={p}")),
    "segment --weights": ("sd", lambda env, p, t: _cli_model(
        env, p, "segment", str(env["root"] / "images" / "a.png"), "--vocab", "sky, grass", "-o", str(t / "out"))),
    "eval --weights": ("sd", lambda env, p, t: _cli_model(env, p, "eval", "--dataset", env["dataset"], "-o",
                                                          str(t / "out"), "--quiet")),
}
#: Entry points that load into a model (so a wrong shape is theirs to find).
KNOWS_MODEL = {"load_official", "Predictor.from_checkpoint", "model.weights", "model.adapter_weights",
               "Trainer.load_checkpoint", "train --resume", "train model.weights", "segment --weights",
               "eval --weights"}


def _cases(entries: dict) -> list:
    cases = []
    for entry in entries:
        for name in HOSTILE:
            if name in MODEL_ONLY and entry not in KNOWS_MODEL:
                continue
            if name in LAYOUT and entry == "load_weights_only":
                continue
            cases.append(pytest.param(entry, name, id=f"{entry}-{name}".replace(" ", "_")))
    return cases


def _hostile(env, monkeypatch, base: str, name: str) -> Path:
    path = env["files"][base, name]
    if name == "unreadable":
        _deny_read(monkeypatch, path)
    return path


@pytest.mark.parametrize("entry, name", _cases(LIBRARY))
def test_library_entry_point_fails_clean(env, monkeypatch, tmp_path, entry, name):
    base, call = LIBRARY[entry]
    path = _hostile(env, monkeypatch, base, name)
    _, error, reason = HOSTILE[name]
    with pytest.raises(error) as info:
        call(env, path, tmp_path)
    message = str(info.value)
    assert path.name in message, message
    assert re.search(reason, message), message
    assert not any(tmp_path.iterdir()), "nothing is written for a refused input"


@pytest.mark.parametrize("entry, name", _cases(CLI))
def test_cli_fails_with_one_error_line_and_status_2(env, monkeypatch, tmp_path, capsys, entry, name):
    base, argv = CLI[entry]
    path = _hostile(env, monkeypatch, base, name)
    _, _, reason = HOSTILE[name]
    status = main(argv(env, path, tmp_path))
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert status == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and path.name in lines[0], err
    assert re.search(reason, lines[0]), lines[0]


# ------------------------------------------------------------------------------------------ specifics
def test_resume_failure_leaves_the_trainer_untouched(env):
    """Shapes are checked before any parameter is overwritten."""
    trainer = env["trainer"]
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    ckpt = torch.load(env["root"] / "good_last.pt", weights_only=True)
    keys = list(ckpt["model"])
    ckpt["model"][keys[-1]] = torch.zeros(3)  # the first tensors fit, the last does not
    bad = env["root"] / "last_shape.pt"
    torch.save(ckpt, bad)
    with pytest.raises(CheckpointError, match=rf"{bad.name}: shape mismatch: {keys[-1]}"):
        trainer.load_checkpoint(bad)
    after = trainer.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_damaged_optimizer_state_names_the_file(env, tmp_path):
    ckpt = torch.load(env["root"] / "good_last.pt", weights_only=True)
    ckpt["optimizer"] = {"state": {}, "param_groups": []}  # no parameter groups: torch raises ValueError
    bad = tmp_path / "opt.pt"
    torch.save(ckpt, bad)
    with pytest.raises(CheckpointError, match=r"opt\.pt: optimizer, scheduler or RNG state is damaged"):
        env["trainer"].load_checkpoint(bad)


def test_state_dict_in_memory_with_a_non_tensor(env):
    state = {k: v for k, v in env["model"].state_dict().items()}
    state[TARGET_KEY] = [1, 2]
    with pytest.raises(CheckpointError, match=rf"key '{TARGET_KEY}' holds a list, not a tensor"):
        env["model"].load_official(state)
    with pytest.raises(CheckpointError, match="key 3 is a int, not a parameter name"):
        env["model"].load_official({3: torch.zeros(1)})
    with pytest.raises(TypeError, match="checkpoint path or a state dict"):
        env["model"].load_official(42)


def test_unknown_non_tensor_entries_are_skipped_not_fatal(tmp_path, caplog):
    """Only values a model would load must be tensors; extra bookkeeping entries are reported and skipped."""
    path = tmp_path / "extra.pth"
    torch.save({"model": {"mask_adapter.w": torch.ones(2), "note": "made by hand"}}, path)
    assert list(read_state_dict(path)) == ["mask_adapter.w"]
    assert "ignoring 1 non-tensor entries: note" in caplog.text


def test_old_torch_refuses_every_pickle(tmp_path, monkeypatch):
    """Before torch 2.6 the weights-only loader could be bypassed (CVE-2025-32434): no pickle is read then."""
    path = tmp_path / "plain.pth"
    torch.save({"model": {"w": torch.zeros(1)}}, path)
    monkeypatch.setattr(torch, "__version__", "2.5.1")
    with pytest.raises(UnsafeCheckpointError, match=r"plain\.pth: torch 2\.5\.1 cannot read pickles safely.*"
                                                    "CVE-2025-32434"):
        read_state_dict(path)
    save_file({"w": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))  # safetensors never unpickles
    assert list(read_state_dict(tmp_path / "plain.safetensors")) == ["w"]


def test_installed_torch_weights_only_loader_refuses_code(tmp_path):
    """The guarantee rests on torch itself: its weights-only loader refuses the payload without running it,
    while a plain unpickler runs it (so the payload really is code)."""
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    torch.save({"payload": Payload(str(marker))}, path)
    with pytest.raises(pickle.UnpicklingError, match="io.open"):
        torch.load(path, weights_only=True)
    assert not marker.exists()
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root reads files whatever their permissions")
def test_real_unreadable_file(tmp_path):
    path = tmp_path / "locked.pth"
    torch.save({"w": torch.zeros(1)}, path)
    path.chmod(0)
    with pytest.raises(CheckpointError, match="locked.pth: Permission denied"):
        read_state_dict(path)


@pytest.mark.slow
def test_console_script_prints_exactly_one_line(env, tmp_path):
    """In a fresh process (no pytest log capture): no warning, log record or traceback besides the error."""
    for path in (env["files"]["sd", "code_pickle"], env["files"]["sd", "header_past_end"]):
        proc = subprocess.run([sys.executable, "-m", "maskadapter", "convert", str(path),
                               str(tmp_path / "out.safetensors")], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ") and path.name in proc.stderr


@pytest.mark.slow
def test_demo_refuses_a_bad_weights_file_before_serving(env, tmp_path, capsys):
    """``demo --weights`` loads through Predictor.from_checkpoint too (importing gradio is what takes long)."""
    pytest.importorskip("gradio")
    path = env["files"]["sd", "code_pickle"]
    assert main(_cli_model(env, path, "demo")) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("loading model") and len(lines) == 2  # the demo announces the load first
    assert lines[1].startswith("error: refused to load") and path.name in lines[1]

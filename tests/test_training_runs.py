"""Whole training runs on synthetic data with the tiny model: learning, bit-exact resume, 2-process gloo DDP,
bad input (empty images, NaN loss, foreign resume files), frozen parts, stage 1 -> fuse -> stage 2, CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import maskadapter.cli
from maskadapter.checkpoint import CheckpointError, read_state_dict, split_checkpoint
from maskadapter.training import NonFiniteLossError, Trainer, config_from_dict
from maskadapter.training.checkpointing import load_training_checkpoint

from training_utils import synthetic_config, write_tiny_preset

REPO = Path(__file__).resolve().parents[1]


def _params(path: Path) -> dict[str, torch.Tensor]:
    return load_training_checkpoint(path)["model"]


# ---------------------------------------------------------------------------------------------- learning
@pytest.mark.slow
def test_synthetic_warmup_learns_to_classify_gt_masks(tmp_path):
    """16 classes (chance 6.25%). Measured on the 2-core dev VM: 21.8% before training (random activation
    maps already pool class-specific regions), 39.7% after 100 steps (mIoU 37.2 -> 50.2), in 8-90 s depending
    on the load."""
    num_classes = 16
    cfg = config_from_dict(synthetic_config(
        tmp_path, "warmup",
        data={"synthetic_num_classes": num_classes, "synthetic_size": 128, "synthetic_num_images": 512},
        solver={"max_iter": 100, "lr": 2e-3, "steps": [80]},
        eval={"dataset": "synthetic", "num_images": 64, "period": 50},
        run={"checkpoint_period": 0}))
    trainer = Trainer(cfg)
    before = trainer.evaluate()
    result = trainer.train()
    after = result.metrics
    chance = 100.0 / num_classes
    assert before["num_masks"] == after["num_masks"] > 150
    assert before["accuracy"] < 4 * chance
    assert after["accuracy"] > 5 * chance
    assert after["accuracy"] > before["accuracy"] + 10
    assert after["mIoU"] > before["mIoU"]
    # periodic evaluation and best-checkpoint selection by mIoU
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    best = load_training_checkpoint(tmp_path / "run" / "best.pt")
    assert best["best_metric"] == pytest.approx(result.best_metric)
    assert result.best_metric == pytest.approx(max(yaml.safe_load(line)["mIoU"] for line in lines))
    assert best["iteration"] in (50, 100)


# ---------------------------------------------------------------------------------------------- resume
@pytest.mark.parametrize("stage", ["warmup", "mixed"])
def test_resume_after_interruption_is_bit_exact(tmp_path, stage):
    base = synthetic_config(tmp_path, stage, data={"synthetic_num_images": 12},
                            solver={"max_iter": 6, "steps": [4]}, run={"checkpoint_period": 2})
    Trainer(config_from_dict(base)).train()
    interrupted = dict(base, run={**base["run"], "output_dir": str(tmp_path / "b")})
    first = Trainer(config_from_dict(interrupted))
    first.train(stop_after=3)  # "crash" after step 3: the last checkpoint is step 2
    assert load_training_checkpoint(tmp_path / "b" / "last.pt")["iteration"] == 2
    del first
    resumed = Trainer(config_from_dict(interrupted), resume=True)
    assert resumed.iteration == 2
    resumed.train()  # crosses the epoch boundary (3 steps per epoch)
    a, b = load_training_checkpoint(tmp_path / "run" / "last.pt"), load_training_checkpoint(tmp_path / "b" / "last.pt")
    assert a["iteration"] == b["iteration"] == 6
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for i, state in a["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg_sq"], b["optimizer"]["state"][i]["exp_avg_sq"])
    # and training changed something (the comparison is not vacuous)
    init = Trainer(config_from_dict(dict(base, run={**base["run"], "output_dir": str(tmp_path / "c")})))
    assert not torch.equal(init.model.mask_adapter.final.weight.cpu(), a["model"]["mask_adapter.final.weight"])


def test_resume_refuses_another_config_and_foreign_files(tmp_path):
    base = synthetic_config(tmp_path, "warmup", solver={"max_iter": 2})
    Trainer(config_from_dict(base)).train()
    other = dict(base, solver={**base["solver"], "lr": 5e-4})
    with pytest.raises(ValueError, match=r"another config.*solver\.lr"):
        Trainer(config_from_dict(other), resume=True)
    # operational keys may change
    moved = dict(base, run={**base["run"], "log_period": 7, "progress": False})
    assert Trainer(config_from_dict(moved), resume=True).iteration == 2
    torch.save({"model": {"mask_adapter.x": torch.zeros(1)}}, tmp_path / "official.pth")
    with pytest.raises(CheckpointError, match="not a maskadapter training checkpoint"):
        Trainer(config_from_dict(base), resume=tmp_path / "official.pth")
    with pytest.raises(FileNotFoundError):
        Trainer(config_from_dict(base), resume=tmp_path / "missing.pt")


# ---------------------------------------------------------------------------------------------- DDP
@pytest.mark.distributed
@pytest.mark.slow
def test_two_processes_with_gloo_match_one_process(tmp_path):
    cfg = synthetic_config(tmp_path, "mixed", data={"synthetic_num_images": 8},
                           solver={"max_iter": 3, "batch_size": 4}, run={"threads": 1, "checkpoint_period": 0},
                           eval={"dataset": "synthetic", "num_images": 6})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "maskadapter", "train", "--config", str(path), "--output-dir", str(tmp_path / "ddp")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("finished test") == 1  # rank 0 reports
    # (threads only matter for the two processes sharing this machine; the in-process run keeps torch's default)
    single = dict(cfg, run={**cfg["run"], "output_dir": str(tmp_path / "single"), "threads": 0})
    Trainer(config_from_dict(single)).train()
    a, b = _params(tmp_path / "ddp" / "last.pt"), _params(tmp_path / "single" / "last.pt")
    init = Trainer(config_from_dict(dict(cfg, run={**single["run"], "output_dir": str(tmp_path / "init")})))
    moved = max(float((b[k] - p.detach()).abs().max()) for k, p in init.model.named_parameters() if k in b)
    assert moved > 1e-3  # three AdamW steps at lr 1e-3 moved the weights
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=2e-6, msg=key)
    ckpt = load_training_checkpoint(tmp_path / "ddp" / "last.pt")
    assert ckpt["world_size"] == 2 and ckpt["iteration"] == 3
    # the reported losses are the global-batch means too
    ref = load_training_checkpoint(tmp_path / "single" / "last.pt")["train_stats"]
    for key in ("loss_ce", "loss_cosine", "grad_norm"):
        assert ckpt["train_stats"][key] == pytest.approx(ref[key], rel=1e-4, abs=1e-6), key
    assert ckpt["train_stats"]["masks"] == ref["masks"]
    # evaluation splits the images over the processes and reduces the counts exactly
    single_metrics = load_training_checkpoint(tmp_path / "single" / "last.pt")["metrics"]
    assert ckpt["metrics"]["num_masks"] == single_metrics["num_masks"] > 6
    assert abs(ckpt["metrics"]["accuracy"] - single_metrics["accuracy"]) <= 100 / single_metrics["num_masks"] + 1e-9


# ---------------------------------------------------------------------------------------------- bad input
class _WithEmpty(torch.utils.data.Dataset):
    """A dataset whose odd images have no usable mask (all masks empty)."""

    def __init__(self, base):
        self.base = base
        self.vocabulary = base.vocabulary

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        s = self.base[i]
        if i % 2:
            s = {**s, "masks": torch.zeros_like(s["masks"])}
        return s

    def class_prototypes(self, backbone):
        return self.base.class_prototypes(backbone)


@pytest.mark.parametrize("stage", ["warmup", "mixed"])
def test_images_without_usable_masks_are_skipped_and_counted(tmp_path, stage, caplog):
    from maskadapter.data.synthetic import SyntheticShapes

    cfg = config_from_dict(synthetic_config(tmp_path, stage, solver={"max_iter": 4}))
    base = SyntheticShapes(num_classes=8, size=64, num_images=16, seed=0)
    trainer = Trainer(cfg, dataset=_WithEmpty(base))
    with caplog.at_level("WARNING"):
        result = trainer.train()
    assert result.skipped_images == 8  # 4 steps x 4 images, every other one empty
    assert "8 training images had no usable mask" in caplog.text
    assert load_training_checkpoint(result.last_checkpoint)["skipped_images"] == 8
    # a batch with no usable image at all still steps (no crash), with a zero loss
    trainer = Trainer(config_from_dict(synthetic_config(tmp_path / "all", stage, solver={"max_iter": 1})),
                      dataset=_AllEmpty(base))
    stats = trainer.run_step(next(iter(_loader(trainer))))
    assert stats["loss"] == 0.0 and stats["skipped"] == 4


class _AllEmpty(_WithEmpty):
    def __getitem__(self, i):
        s = self.base[i]
        return {**s, "masks": s["masks"][:0], "labels": s["labels"][:0]}


def _loader(trainer):
    from maskadapter.training.data import build_loader

    return build_loader(trainer.indexed, trainer.sampler, trainer.batch_per_rank, 0)


def test_nan_loss_stops_with_the_step_and_saves_nothing_corrupt(tmp_path):
    cfg = config_from_dict(synthetic_config(tmp_path, "warmup", solver={"max_iter": 6},
                                            run={"checkpoint_period": 2}))
    trainer = Trainer(cfg)
    trainer.train(stop_after=2)
    good = _params(tmp_path / "run" / "last.pt")
    with torch.no_grad():
        trainer.model.mask_adapter.final.bias.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match="at step 3") as info:
        trainer.train()
    assert info.value.step == 3
    assert trainer.iteration == 2
    files = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert files == ["last.pt"]  # no temporary or partial file left behind
    ckpt = load_training_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["iteration"] == 2
    for key, value in ckpt["model"].items():
        assert torch.isfinite(value).all() and torch.equal(value, good[key])


# ---------------------------------------------------------------------------------------------- frozen parts
@pytest.mark.parametrize("variant, void_trained", [("fcclip-large", True), ("maftp-large", False)])
def test_only_the_adapter_and_the_official_void_train(tmp_path, variant, void_trained):
    preset = write_tiny_preset(tmp_path / "p.json", base=variant)
    cfg = config_from_dict(synthetic_config(tmp_path, "mixed", model={"preset": str(preset)},
                                            solver={"max_iter": 2}))
    trainer = Trainer(cfg)
    before = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    assert (trainer.model.cdt is not None) is (variant == "maftp-large")
    trainer.train()
    after = trainer.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert {k for k in changed if not k.startswith("mask_adapter.")} == ({"void_embedding.weight"} if void_trained
                                                                         else set())
    assert any(k.startswith("mask_adapter.") for k in changed)
    assert not trainer.model.backbone.clip_model.training  # CLIP stays in eval mode
    assert not trainer.model.sem_seg_head.training
    assert set(_params(tmp_path / "run" / "last.pt")) == {n for n, p in trainer.model.named_parameters()
                                                          if p.requires_grad}


def test_ablation_knobs_build_without_code_changes(tmp_path):
    cfg = config_from_dict(synthetic_config(tmp_path, "mixed", solver={"max_iter": 1},
                                            model={"num_output_maps": 4, "num_blocks": 1, "grad_checkpoint": True},
                                            train={"matcher": "hungarian", "iou_threshold": 0.0, "masks": "predicted"},
                                            loss={"cos_weight": 0.0}))
    trainer = Trainer(cfg)
    head = trainer.model.mask_adapter
    assert head.num_output_maps == 4 and len(head.blocks) == 1 and head.grad_checkpoint
    assert type(trainer.step_module.matcher).__name__ == "HungarianMatcher"
    assert trainer.train().iteration == 1


# ---------------------------------------------------------------------------------------------- stages and files
def test_stage1_fuse_stage2_export_round_trip(tmp_path):
    from maskadapter.modeling.build import build_model, load_preset_file
    from maskadapter.training.fuse import export_state, fuse_checkpoints

    preset_file = write_tiny_preset(tmp_path / "p.json")
    preset, arch = load_preset_file(preset_file)
    torch.manual_seed(42)
    segmentor = build_model(preset, arch)  # plays fcclip_cocopan.pth: CLIP + generator + void
    torch.save({"model": {k: v for k, v in segmentor.state_dict().items() if not k.startswith("mask_adapter.")}},
               tmp_path / "segmentor.pth")
    s1 = synthetic_config(tmp_path / "s1", "warmup", model={"preset": str(preset_file),
                                                            "weights": str(tmp_path / "segmentor.pth"),
                                                            "load_parts": ["backbone.clip_model"]},
                          solver={"max_iter": 2})
    Trainer(config_from_dict(s1)).train()
    stage1 = tmp_path / "s1" / "run" / "last.pt"
    trained1 = _params(stage1)
    assert set(trained1) == {k for k in segmentor.state_dict() if k.startswith("mask_adapter.")} | {
        "void_embedding.weight"}
    # the official-layout stage-1 file: CLIP + adapter + void, no generator
    full1 = export_state(stage1, full=True)
    assert {k.split(".")[0] for k in full1} == {"backbone", "mask_adapter", "void_embedding"}
    assert torch.equal(full1["backbone.clip_model.logit_scale"], segmentor.backbone.clip_model.logit_scale)
    # fuse: generator and void from the segmentor, adapter from stage 1
    fuse_checkpoints(stage1, tmp_path / "segmentor.pth", tmp_path / "fused.pth")
    fused = read_state_dict(tmp_path / "fused.pth")
    assert torch.equal(fused["void_embedding.weight"], segmentor.void_embedding.weight)
    assert torch.equal(fused["mask_adapter.final.weight"], trained1["mask_adapter.final.weight"])
    assert set(split_checkpoint(fused).parts) == {"backbone.clip_model", "mask_adapter", "sem_seg_head",
                                                  "void_embedding"}
    # stage 2 from the fused file == stage 2 from the segmentor + model.adapter_weights (in-memory fuse)
    starts = []
    for name, model_cfg in (("a", {"weights": str(tmp_path / "fused.pth")}),
                            ("b", {"weights": str(tmp_path / "segmentor.pth"), "adapter_weights": str(stage1)})):
        cfg = synthetic_config(tmp_path / name, "mixed", model={"preset": str(preset_file), **model_cfg},
                               solver={"max_iter": 1})
        trainer = Trainer(config_from_dict(cfg))
        starts.append({k: v.detach().clone() for k, v in trainer.model.state_dict().items()})
        trainer.train()
    for key in starts[0]:
        assert torch.equal(starts[0][key], starts[1][key]), key
    assert torch.equal(starts[0]["mask_adapter.final.weight"], trained1["mask_adapter.final.weight"])
    # export of stage 2: adapter safetensors, and a complete official model that loads strictly
    from maskadapter.training.fuse import save_state

    stage2 = tmp_path / "b" / "run" / "last.pt"
    save_state(export_state(stage2), tmp_path / "adapter.safetensors")
    adapter = read_state_dict(tmp_path / "adapter.safetensors")
    assert set(adapter) == set(_params(stage2))
    save_state(export_state(stage2, full=True), tmp_path / "final.pth")
    fresh = build_model(preset, arch)
    assert fresh.load_official(tmp_path / "final.pth") == []
    for key, value in _params(stage2).items():
        assert torch.equal(fresh.state_dict()[key], value)
    assert torch.equal(fresh.state_dict()["sem_seg_head.predictor.query_feat.weight"],
                       segmentor.state_dict()["sem_seg_head.predictor.query_feat.weight"])


def test_cli_train_export_fuse(tmp_path, monkeypatch, capsys):
    preset = write_tiny_preset(tmp_path / "tiny.json")
    out = tmp_path / "run"
    args = ["train", "--config", str(REPO / "configs" / "synthetic.yaml"), "--output-dir", str(out),
            "--set", f"model.preset={preset}", "solver.max_iter=2", "eval.period=0", "eval.num_images=4",
            "--set", "data.synthetic_size=64", "data.synthetic_num_images=8", "run.tensorboard=true",
            "run.progress=false", "run.keep_checkpoints=true", "run.checkpoint_period=1"]
    assert maskadapter.cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "finished synthetic-warmup: 2 iterations" in printed and "GT-mask accuracy" in printed
    assert (out / "last.pt").is_file() and (out / "best.pt").is_file()
    assert load_training_checkpoint(out / "model_0000001.pt")["iteration"] == 1  # kept periodic checkpoints
    assert load_training_checkpoint(out / "model_0000002.pt")["iteration"] == 2
    assert any((out / "tensorboard").iterdir())  # TensorBoard event file
    # resuming a finished run does nothing more
    assert maskadapter.cli.main(args + ["--resume"]) == 0
    assert load_training_checkpoint(out / "last.pt")["iteration"] == 2
    assert maskadapter.cli.main(["export", str(out / "last.pt"), str(tmp_path / "a.safetensors")]) == 0
    assert "exported" in capsys.readouterr().out
    assert set(read_state_dict(tmp_path / "a.safetensors")) == set(_params(out / "last.pt"))
    assert maskadapter.cli.main(["export", str(out / "last.pt"), str(tmp_path / "a.safetensors")]) == 2
    assert "--force" in capsys.readouterr().err
    # bad input: the error names the key, nothing is trained
    assert maskadapter.cli.main(["train", "--config", str(REPO / "configs" / "synthetic.yaml"),
                                 "--set", "solver.lrr=1"]) == 1
    assert "solver.lrr" in capsys.readouterr().err
    assert maskadapter.cli.main(["train", "--config", str(REPO / "configs" / "synthetic.yaml"),
                                 "--set", "solver.lr=fast"]) == 1
    assert "solver.lr" in capsys.readouterr().err
    assert maskadapter.cli.main(["fuse", str(out / "last.pt"), str(tmp_path / "a.safetensors"),
                                 str(tmp_path / "f.pth")]) == 1  # no base weights and no generator keys
    capsys.readouterr()

"""Training pieces on hand-built inputs: config (YAML, overrides, errors), IoU / Hungarian matcher, the stage-2
mask mix, losses (hand values, stop-gradient), parameter groups and weight decay, LR schedules, recipes,
fuse / export round trips. Whole training runs are in test_training_runs.py."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from maskadapter.checkpoint import read_state_dict
from maskadapter.training.config import (TrainConfig, apply_overrides, config_diff, config_from_dict, config_to_dict,
                                         load_config)
from maskadapter.training.fuse import export_state, fuse_checkpoints, save_state
from maskadapter.training.losses import MaskAdapterLoss, classification_terms, consistency_terms
from maskadapter.training.matcher import HungarianMatcher, IoUMatcher, gather_matches, mask_iou
from maskadapter.training.optim import WarmupLRSchedule, build_optimizer, build_param_groups, lr_factor
from maskadapter.training.targets import MaskBatch, mixed_targets, warmup_targets

REPO = Path(__file__).resolve().parents[1]
BIG = 20.0  # a logit far from any threshold


# ---------------------------------------------------------------------------------------------- config
def test_yaml_config_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\nsolver:\n  lr: 1e-4\n  steps: [10, 20]\ntrain:\n  matcher: hungarian\n")
    cfg = load_config(path, ["solver.lr=3e-4", "model.weights=null", "train.iou_threshold=0.5", "loss.cos_weight=0"])
    assert cfg.solver.lr == pytest.approx(3e-4) and isinstance(cfg.solver.lr, float)
    assert cfg.solver.steps == [10, 20] and cfg.train.matcher == "hungarian"
    assert cfg.train.iou_threshold == 0.5 and cfg.loss.cos_weight == 0.0 and cfg.model.weights is None
    # defaults are the official FC-CLIP stage-2 values
    assert (cfg.train.num_gt_masks, cfg.train.num_pred_masks, cfg.loss.ce_weight) == (16, 8, 2.0)
    assert config_from_dict(config_to_dict(cfg)) == cfg


@pytest.mark.parametrize("override, key, exc", [
    ("solver.lrr=1", "solver.lrr", ValueError),
    ("sovler.lr=1", "sovler.lr", ValueError),
    ("solver.lr=fast", "solver.lr", TypeError),
    ("solver.batch_size=2.5", "solver.batch_size", TypeError),
    ("run.tensorboard=1", "run.tensorboard", TypeError),
    ("train.matcher=greedy", "train.matcher", ValueError),
    ("solver.steps=5", "solver.steps", TypeError),
    ("model.preset.name=x", "model.preset.name", ValueError),
    ("solver.steps=[20,10]", "solver.steps", ValueError),
    ("train.iou_threshold=1.5", "train.iou_threshold", ValueError),
    ("solver.batch_size=0", "solver.batch_size", ValueError),
    ("novalue", "novalue", ValueError),
])
def test_bad_config_names_the_key(override, key, exc):
    with pytest.raises(exc, match=key.replace(".", r"\.").replace("[", r"\[")):
        apply_overrides(TrainConfig(), [override])


def test_bad_yaml_file_names_the_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("solver:\n  learning_rate: 0.1\n")
    with pytest.raises(ValueError, match=r"solver\.learning_rate"):
        load_config(path)
    path.write_text("data: 5\n")
    with pytest.raises(TypeError, match="'data' must be a section"):
        load_config(path)
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.yaml")


def test_unknown_key_suggests_the_right_one():
    with pytest.raises(ValueError, match=r"did you mean 'solver\.lr'"):
        apply_overrides(TrainConfig(), ["solver.lrr=1"])


def test_per_variant_defaults():
    cfg = TrainConfig()
    fc, maft = cfg.resolved("fcclip"), cfg.resolved("maftp")
    assert (fc.train_void, fc.iou_binarize, fc.cos_detach_target) == (True, 0.4, True)
    assert (maft.train_void, maft.iou_binarize, maft.cos_detach_target) == (False, 0.5, False)
    warm = apply_overrides(cfg, ["train.stage=warmup"]).resolved("maftp")
    assert warm.train_void is True  # stage 1 trains the void embedding for both variants
    forced = apply_overrides(cfg, ["loss.cos_detach_target=true", "train.iou_binarize=0.45"]).resolved("maftp")
    assert forced.cos_detach_target is True and forced.iou_binarize == 0.45


def test_config_diff():
    a = config_to_dict(TrainConfig())
    b = config_to_dict(apply_overrides(TrainConfig(), ["solver.lr=1", "run.seed=3"]))
    assert config_diff(a, b) == ["run.seed", "solver.lr"]


@pytest.mark.parametrize("name, checks", [
    ("fcclip_large_stage1", {"train.stage": "warmup", "train.num_gt_masks": 32, "data.image_size": 768,
                             "data.dataset": "coco_panoptic", "solver.batch_size": 8, "solver.max_iter": 295717,
                             "solver.steps": [260231, 283888], "solver.weight_decay": 0.05,
                             "solver.schedule": "multistep", "solver.warmup_iters": 10}),
    ("fcclip_large_stage2", {"train.stage": "mixed", "train.num_gt_masks": 16, "train.num_pred_masks": 8,
                             "data.image_size": 1024, "solver.batch_size": 24, "solver.max_iter": 49286,
                             "solver.steps": [43371, 47314], "solver.weight_decay": 0.05, "solver.warmup_iters": 0,
                             "loss.cos_weight": 5.0, "train.iou_threshold": 0.7}),
    ("maftp_large_stage1", {"train.stage": "warmup", "data.dataset": "coco_stuff", "model.cdt_mode": "panoptic",
                            "train.num_gt_masks": 32}),
    ("maftp_large_stage2", {"train.stage": "mixed", "data.dataset": "coco_stuff", "solver.schedule": "poly",
                            "solver.weight_decay": 2e-5, "solver.warmup_iters": 10, "solver.poly_power": 0.9,
                            "run.seed": 123, "solver.max_iter": 49286}),
    ("maftp_base_stage2", {"train.stage": "mixed", "data.dataset": "coco_stuff", "solver.schedule": "poly",
                           "solver.weight_decay": 2e-5, "model.preset": "maftp-base"}),
    ("synthetic", {"data.dataset": "synthetic", "data.text": "prototypes", "eval.dataset": "synthetic"}),
])
def test_recipes_hold_the_official_values(name, checks):
    cfg = config_to_dict(load_config(REPO / "configs" / f"{name}.yaml"))
    for key, expected in checks.items():
        section, field = key.split(".")
        assert cfg[section][field] == expected, key
    assert cfg["solver"]["lr"] == 1e-4 or name == "synthetic"
    assert cfg["solver"]["grad_clip"] == 1.0


@pytest.mark.parametrize("name, generator, cdt, threshold, resolved", [
    ("fcclip_large_stage1", False, None, 0.5, (True, 0.4, True)),
    ("fcclip_large_stage2", True, None, 0.5, (True, 0.4, True)),
    ("maftp_large_stage1", False, "panoptic", 0.4, (True, 0.5, False)),
    ("maftp_large_stage2", True, "panoptic", 0.4, (False, 0.5, False)),
    ("maftp_base_stage1", False, "panoptic", 0.45, (True, 0.5, False)),  # stage-1 configs: PANOPTIC_ON True
    ("maftp_base_stage2", True, "semantic", 0.45, (False, 0.5, False)),
])
def test_recipes_build_the_official_model_variant(name, generator, cdt, threshold, resolved):
    from maskadapter.training.trainer import resolve_preset

    cfg = load_config(REPO / "configs" / f"{name}.yaml")
    preset, arch = resolve_preset(cfg)
    assert (arch.generator is not None) is generator  # stage 1 has no mask generator
    assert preset.cdt_mode == cdt and preset.mask_threshold == threshold
    assert (arch.head.num_output_maps, arch.head.num_blocks, arch.head.num_channels) == (16, 3, 768)
    r = cfg.resolved(preset.generator)
    assert (r.train_void, r.iou_binarize, r.cos_detach_target) == resolved
    small = apply_overrides(cfg, ["model.num_output_maps=8", "model.num_blocks=2"])
    assert resolve_preset(small)[1].head.num_output_maps == 8 and resolve_preset(small)[1].head.num_blocks == 2


def test_missing_data_root_and_bad_precision_are_reported(tmp_path):
    from maskadapter.training import Trainer
    from maskadapter.training.data import build_train_dataset

    with pytest.raises(ValueError, match=r"data\.root"):
        build_train_dataset(apply_overrides(TrainConfig(), ["data.root=null"]))
    with pytest.raises(FileNotFoundError):
        build_train_dataset(apply_overrides(TrainConfig(), [f"data.root={tmp_path}"]))
    cfg = apply_overrides(TrainConfig(), ["solver.precision=fp16", "run.device=cpu", f"run.output_dir={tmp_path}"])
    with pytest.raises(ValueError, match=r"solver\.precision"):
        Trainer(cfg)
    with pytest.raises(ValueError, match=r"run\.output_dir"):
        Trainer(TrainConfig())
    with pytest.raises(ValueError, match="cdt_mode"):
        from maskadapter.training.trainer import resolve_preset

        resolve_preset(apply_overrides(TrainConfig(), ["model.cdt_mode=semantic"]))


# ---------------------------------------------------------------------------------------------- matcher
def _masks(rows: list[str]) -> torch.Tensor:
    """Masks [N, 1, W] from strings of '0'/'1'."""
    return torch.tensor([[[c == "1" for c in r]] for r in rows], dtype=torch.float32)


def _logits(rows: list[str]) -> torch.Tensor:
    return (_masks(rows) * 2 - 1) * BIG


def test_iou_threshold_is_strict_and_binarisation_per_variant():
    gt = _masks(["1111111111" + "0" * 10])  # 10 pixels
    preds = _logits([
        "1111111111" + "0" * 10,   # IoU 1
        "1111111100" + "0" * 10,   # IoU 0.8
        "1111111000" + "0" * 10,   # IoU 0.7 exactly: not above the threshold (and 7/(10+1e-6) < 0.7)
        "0" * 20,                  # IoU 0
    ])
    ious = mask_iou(preds, gt, 0.4)[:, 0]
    assert ious[0] == pytest.approx(1.0, abs=1e-6) and ious[1] == pytest.approx(0.8, abs=1e-6)
    assert ious[2] < 0.7
    for keep, thr in ((1, 0.79), (0, 0.8)):
        m = IoUMatcher(threshold=thr)(preds[1:2], gt, torch.Generator().manual_seed(0))
        assert len(m) == keep
    assert len(IoUMatcher(threshold=0.7)(preds[2:3], gt)) == 0
    # probability 0.45 inside the GT: foreground for FC-CLIP (>= 0.4), background for MAFT+ (>= 0.5)
    soft = torch.where(_masks(["1111111111" + "0" * 10]) > 0, math.log(0.45 / 0.55), -BIG)
    assert len(IoUMatcher(0.7, pred_threshold=0.4)(soft, gt)) == 1
    assert len(IoUMatcher(0.7, pred_threshold=0.5)(soft, gt)) == 0
    # sigmoid >= t (inclusive) for predictions, gt > 0.5 (strict) for the soft GT
    exact = torch.zeros(1, 1, 4)
    assert mask_iou(exact, torch.ones(1, 1, 4), 0.5)[0, 0] == pytest.approx(1.0, abs=1e-6)
    assert mask_iou(exact, torch.full((1, 1, 4), 0.5), 0.5)[0, 0] == 0


def test_one_random_candidate_per_gt():
    gt = _masks(["1111111111" + "0" * 10, "0" * 10 + "1111111111"])
    preds = _logits(["1111111111" + "0" * 10, "1111111110" + "0" * 10, "1111111111" + "1" + "0" * 9,
                     "0" * 10 + "1111111111"])
    picks = set()
    for seed in range(40):
        m = IoUMatcher()(preds, gt, torch.Generator().manual_seed(seed))
        assert m.gt_index.tolist() == [0, 1]
        assert int(m.pred_index[1]) == 3  # the only candidate of GT 1
        assert int(m.pred_index[0]) in (0, 1, 2)
        assert (m.iou > 0.7).all()
        picks.add(int(m.pred_index[0]))
        # the draw is the official one: randint over the candidate list, from the given generator
        g = torch.Generator().manual_seed(seed)
        assert int(m.pred_index[0]) == [0, 1, 2][int(torch.randint(0, 3, (1,), generator=g))]
    assert picks == {0, 1, 2}


def test_more_than_max_matches_keeps_a_random_subset():
    n = 12
    gt = torch.eye(n)[:, None, :]  # GT j = pixel j
    preds = (torch.eye(n)[:, None, :] * 2 - 1) * BIG
    subsets = set()
    for seed in range(5):
        m = IoUMatcher(max_matches=8)(preds, gt, torch.Generator().manual_seed(seed))
        assert len(m) == 8
        assert m.pred_index.tolist() == m.gt_index.tolist()  # pairs stay consistent
        assert len(set(m.gt_index.tolist())) == 8
        subsets.add(tuple(sorted(m.gt_index.tolist())))
    assert len(subsets) > 1
    labels = torch.arange(100, 100 + n)
    src, tgt, lab = gather_matches(preds, gt, labels, m, 8)
    assert torch.equal(lab, labels[m.gt_index])
    assert torch.equal(src, preds[m.pred_index]) and torch.equal(tgt, gt[m.gt_index])


def test_no_match_pads_with_zero_masks_and_minus_one():
    gt = _masks(["1111100000"])
    preds = _logits(["0000011111", "0000000000"])
    m = IoUMatcher()(preds, gt)
    assert len(m) == 0
    src, tgt, lab = gather_matches(preds, gt, torch.tensor([3]), m, 8)
    assert src.shape == (8, 1, 10) and tgt.shape == (8, 1, 10)
    assert not src.any() and not tgt.any() and (lab == -1).all()
    assert len(IoUMatcher()(preds, gt[:0])) == 0  # an image without GT


def test_hungarian_is_one_to_one_and_optimal():
    import itertools

    # pred 0 covers GT 0 best and overlaps GT 1; pred 1 covers GT 1
    gt = _masks(["1111111111" + "0" * 10, "0000011111" + "1111100000"])
    preds = _logits(["111111111" + "0" * 11, "0000111111" + "1111100000"])
    m = HungarianMatcher(threshold=0.0)(preds, gt, torch.Generator().manual_seed(0))
    assert sorted(zip(m.pred_index.tolist(), m.gt_index.tolist())) == [(0, 0), (1, 1)]
    # random instances: the assignment is one-to-one and its total IoU is the brute-force optimum
    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        gt = (torch.rand(3, 1, 12, generator=g) > 0.5).float()
        preds = (torch.rand(4, 1, 12, generator=g) - 0.5) * BIG
        ious = mask_iou(preds, gt, 0.4)
        m = HungarianMatcher(threshold=0.0, max_matches=8)(preds, gt)
        assert len(set(m.pred_index.tolist())) == len(m) == len(set(m.gt_index.tolist()))
        best = max(sum(float(ious[p, j]) for j, p in enumerate(perm)) for perm in itertools.permutations(range(4), 3))
        assert float(m.iou.sum()) == pytest.approx(best, abs=1e-6)
    # pairs at or below the threshold are dropped
    pairs = dict(zip(m.gt_index.tolist(), m.iou.tolist()))
    low = min(pairs, key=pairs.get)
    m2 = HungarianMatcher(threshold=pairs[low])(preds, gt)
    assert low not in m2.gt_index.tolist() and len(m2) < len(m)
    # unlike the IoU matcher, a poor match is kept with a low threshold
    gt = _masks(["1111111111" + "0" * 10])
    far = _logits(["1" + "0" * 19])
    assert len(HungarianMatcher(threshold=0.0)(far, gt)) == 1 and len(IoUMatcher()(far, gt)) == 0


# ---------------------------------------------------------------------------------------------- targets
def _scene():
    H = W = 16
    gt = torch.zeros(3, H, W, dtype=torch.bool)
    gt[0, :8, :8] = True
    gt[1, 8:, 8:] = True  # gt 2 stays empty: not a valid mask
    labels = torch.tensor([5, 7, 9])
    pred = torch.full((1, 4, 4, 4), -BIG)
    pred[0, 0, :2, :2] = BIG      # matches GT 0 exactly at H/4
    pred[0, 1, 2:, 2:] = BIG      # matches GT 1
    pred[0, 2, :, :] = BIG        # whole image: no match
    return gt, labels, pred


def test_mixed_targets_groups_and_official_mask_processing():
    gt, labels, pred = _scene()
    batch = mixed_targets([gt], [labels], pred, num_gt=4, matcher=IoUMatcher(max_matches=3), mask_threshold=0.5,
                          generators=[torch.Generator().manual_seed(0)])
    assert batch.groups == {"gt": slice(0, 4), "pred": slice(4, 7), "matched_gt": slice(7, 10)}
    assert batch.masks.shape == (1, 10, 16, 16) and batch.pairs == ("pred", "matched_gt")
    assert batch.labels[0].tolist() == [5, 7, -1, -1, 5, 7, -1, 5, 7, -1]
    assert batch.pair_valid[0].tolist() == [True, True, False]
    # GT group: the valid masks, binary, at full size
    assert torch.equal(batch.masks[0, 0].bool(), gt[0]) and torch.equal(batch.masks[0, 1].bool(), gt[1])
    # predicted: binarised at H/4 first (sigmoid > 0.5), then bilinear up
    up = F.interpolate((pred[:, :2].sigmoid() > 0.5).float(), size=(16, 16), mode="bilinear", align_corners=False)
    assert torch.allclose(batch.masks[0, 4:6], up[0])
    # matched GT: soft (bilinear down to H/4, bilinear up), not binary
    down = F.interpolate(gt[None, :2].float(), size=(4, 4), mode="bilinear", align_corners=False)
    soft = F.interpolate(down, size=(16, 16), mode="bilinear", align_corners=False)
    assert torch.allclose(batch.masks[0, 7:9], soft[0])
    assert ((batch.masks[0, 7] > 0) & (batch.masks[0, 7] < 1)).any()


def test_padded_predictions_follow_the_threshold():
    """Padding is zero logits, binarised like real ones: sigmoid(0) = 0.5 > 0.4 gives an all-ones mask with
    the MAFT+-L threshold (official behaviour), an empty one with FC-CLIP's 0.5."""
    gt, labels, pred = _scene()
    for thr, filled in ((0.5, False), (0.4, True)):
        batch = mixed_targets([gt], [labels], pred, 4, IoUMatcher(max_matches=3), thr,
                              [torch.Generator().manual_seed(0)])
        assert bool((batch.masks[0, 6] == 1).all()) is filled and batch.labels[0, 6] == -1


def test_predicted_only_mode():
    gt, labels, pred = _scene()
    batch = mixed_targets([gt], [labels], pred, 4, IoUMatcher(max_matches=2), 0.5,
                          [torch.Generator().manual_seed(0)], mode="predicted")
    assert batch.groups == {"pred": slice(0, 2), "matched_gt": slice(2, 4)}
    assert batch.labels[0].tolist() == [5, 7, -1, -1]  # CE on predictions only


def test_warmup_targets_drop_empty_masks_and_sample():
    gt, labels, _ = _scene()
    batch = warmup_targets([gt], [labels], 4, [torch.Generator()])
    assert batch.labels[0].tolist() == [5, 7, -1, -1] and batch.groups == {"gt": slice(0, 4)}
    assert batch.pairs is None and not batch.masks[0, 2:].any()
    many = torch.eye(10, dtype=torch.bool).view(10, 1, 10).expand(10, 2, 10)
    picks = {tuple(warmup_targets([many], [torch.arange(10)], 4, [torch.Generator().manual_seed(s)]).labels[0].tolist())
             for s in range(5)}
    assert all(len(set(p)) == 4 for p in picks) and len(picks) > 1  # a random subset, drawn from the generator


# ---------------------------------------------------------------------------------------------- losses
def test_losses_against_hand_values():
    logits = torch.tensor([[[2.0, 0.0, -1.0], [0.0, 0.0, 0.0], [1.0, 3.0, 0.5]]])
    labels = torch.tensor([[0, -1, 2]])

    def ce(row, k):
        return -(row[k] - math.log(sum(math.exp(v) for v in row)))

    expected_ce = (ce([2.0, 0.0, -1.0], 0) + ce([1.0, 3.0, 0.5], 2)) / 2
    total, count = classification_terms(logits, labels)
    assert float(total) / int(count) == pytest.approx(expected_ce, rel=1e-6)
    emb = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [0.0, 2.0], [3.0, 0.0]]])  # pairs (0, 2), (1, 3)
    batch = MaskBatch(torch.zeros(1, 4, 2, 2), torch.tensor([[0, -1, 2, -1]]),
                      {"pred": slice(0, 2), "matched_gt": slice(2, 4)}, ("pred", "matched_gt"),
                      torch.tensor([[True, False]]))
    logits4 = torch.cat([logits, torch.zeros(1, 1, 3)], dim=1)
    cos_pairs = [0.0, 1 / math.sqrt(2)]
    out = MaskAdapterLoss(2.0, 5.0)(logits4, emb, batch)
    assert float(out["loss_ce"]) == pytest.approx(2.0 * expected_ce, rel=1e-6)
    assert float(out["loss_cosine"]) == pytest.approx(5.0 * (1 - sum(cos_pairs) / 2), rel=1e-6)
    assert float(out["total"]) == pytest.approx(float(out["loss_ce"] + out["loss_cosine"]))
    real_only = MaskAdapterLoss(2.0, 5.0, include_padding=False)(logits4, emb, batch)
    assert float(real_only["loss_cosine"]) == pytest.approx(5.0 * (1 - cos_pairs[0]))
    assert float(MaskAdapterLoss(2.0, 0.0)(logits4, emb, batch)["loss_cosine"]) == 0.0


def test_all_ignored_labels_give_a_zero_loss_that_keeps_the_graph():
    logits = torch.randn(2, 3, 4, requires_grad=True)
    total, count = classification_terms(logits, torch.full((2, 3), -1))
    assert float(total.detach()) == 0.0 and int(count) == 0
    total.backward()
    assert logits.grad is not None and not logits.grad.any()


@pytest.mark.parametrize("detach", [True, False])
def test_stop_gradient_on_the_gt_branch(detach):
    pred = torch.randn(2, 3, 8, requires_grad=True)
    target = torch.randn(2, 3, 8, requires_grad=True)
    total, count = consistency_terms(pred, target, detach_target=detach)
    (total / count).backward()
    assert pred.grad.abs().sum() > 0
    if detach:
        assert target.grad is None
    else:
        assert target.grad is not None and target.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------- optimizer
def test_param_groups_follow_the_official_weight_decay_rules(tiny_model):
    import copy

    model = copy.deepcopy(tiny_model)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.mask_adapter.parameters():
        p.requires_grad_(True)
    model.void_embedding.weight.requires_grad_(True)
    model.backbone.clip_model.visual.head.mlp.fc1.weight.requires_grad_(True)  # only to see the lr rule
    groups = build_param_groups(model, lr=1e-4, weight_decay=0.05)
    by_name = {n: (g["lr"], g["weight_decay"]) for g in groups for n in g["names"]}
    assert by_name["void_embedding.weight"] == (1e-4, 0.0)                       # nn.Embedding
    assert by_name["mask_adapter.norm.weight"] == (1e-4, 0.0)                    # nn.LayerNorm
    assert by_name["mask_adapter.norm.bias"] == (1e-4, 0.0)
    assert by_name["mask_adapter.mask_downscaling.1.weight"] == (1e-4, 0.05)     # custom LayerNorm2d: decayed
    assert by_name["mask_adapter.cnext1.norm.weight"] == (1e-4, 0.05)            # custom channels-last LN
    assert by_name["mask_adapter.cnext2.gamma"] == (1e-4, 0.05)
    assert by_name["mask_adapter.fuse.bias"] == (1e-4, 0.05)
    assert by_name["backbone.clip_model.visual.head.mlp.fc1.weight"] == pytest.approx((1e-5, 0.05))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(by_name) == trainable  # frozen parameters are left out
    opt = build_optimizer(model, 1e-4, 0.05)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.9, 0.999)


def test_merged_groups_update_like_per_parameter_groups():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    ref = [torch.nn.Parameter(p.detach().clone()) for p in net.parameters()]
    opt = build_optimizer(net, 1e-2, 0.05)
    wds = [0.05, 0.05, 0.0, 0.0, 0.05, 0.05]
    ref_opt = torch.optim.AdamW([{"params": [p], "weight_decay": wd} for p, wd in zip(ref, wds)], lr=1e-2)
    for _ in range(3):
        x = torch.randn(5, 3)
        for o, params, fn in ((opt, list(net.parameters()), net), (ref_opt, ref, None)):
            o.zero_grad()
            out = fn(x) if fn else F.linear(F.layer_norm(F.linear(x, params[0], params[1]), (4,), params[2],
                                                            params[3]), params[4], params[5])
            out.square().sum().backward()
            o.step()
    for a, b in zip(net.parameters(), ref):
        assert torch.allclose(a, b, atol=1e-7)


def test_schedules():
    kw = dict(schedule="multistep", max_iter=10, steps=[3, 5], gamma=0.1)
    assert [round(lr_factor(i, **kw), 6) for i in range(7)] == [1, 1, 1, 0.1, 0.1, 0.01, 0.01]
    warm = dict(kw, warmup_iters=10, warmup_factor=0.001, steps=[100])
    assert lr_factor(0, **warm) == pytest.approx(0.001)
    assert lr_factor(5, **warm) == pytest.approx(0.001 * 0.5 + 0.5)
    assert lr_factor(10, **warm) == 1.0
    poly = dict(schedule="poly", max_iter=100, power=0.9)
    assert lr_factor(0, **poly) == 1.0
    assert lr_factor(50, **poly) == pytest.approx(0.5 ** 0.9)
    assert lr_factor(100, **poly) == 0.0
    assert lr_factor(99, **poly, constant_ending=0.3) == pytest.approx(0.3)
    assert lr_factor(5, **poly, warmup_iters=10, warmup_factor=0.5) == pytest.approx(0.75 * 0.95 ** 0.9)
    # official WarmupPolyLR with warmup factor 1.0: the warm-up changes nothing
    assert lr_factor(5, **poly, warmup_iters=10, warmup_factor=1.0) == pytest.approx(0.95 ** 0.9)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([{"params": [p], "lr": 2.0}, {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 4.0}])
    sched = WarmupLRSchedule(opt, "multistep", 10, steps=[1])
    assert sched.get_last_lr() == [2.0, 4.0]
    sched.step()
    assert sched.get_last_lr() == pytest.approx([0.2, 0.4])
    state = sched.state_dict()
    sched.apply(0)
    sched.load_state_dict(state)
    assert sched.get_last_lr() == pytest.approx([0.2, 0.4]) and sched.iteration == 1


# ---------------------------------------------------------------------------------------------- fuse / export
def _fake_state(prefixes: dict[str, float]) -> dict[str, torch.Tensor]:
    return {key: torch.full((2,), value) for key, value in prefixes.items()}


def test_fuse_copies_generator_and_void_from_the_segmentor(tmp_path):
    stage1 = {"model": _fake_state({"backbone.clip_model.a": 1, "mask_adapter.fuse.weight": 2,
                                    "void_embedding.weight": 3}), "iteration": 7}
    torch.save(stage1, tmp_path / "stage1.pth")
    seg_model = _fake_state({"backbone.clip_model.a": 10, "sem_seg_head.x": 11, "sem_seg_head.y": 12,
                             "void_embedding.weight": 13, "criterion.empty_weight": 14})
    for name, seg in (("fcclip", {"model": seg_model}), ("maftp", dict(seg_model))):  # {'model': sd} vs bare
        torch.save(seg, tmp_path / f"{name}.pth")
        counts = fuse_checkpoints(tmp_path / "stage1.pth", tmp_path / f"{name}.pth", tmp_path / f"out_{name}.pth")
        assert counts == {"sem_seg_head": 2, "void": 1}
        out = torch.load(tmp_path / f"out_{name}.pth", weights_only=True)
        assert out["iteration"] == 7  # everything else of the stage-1 file is kept
        sd = out["model"]
        assert float(sd["backbone.clip_model.a"][0]) == 1 and float(sd["mask_adapter.fuse.weight"][0]) == 2
        assert float(sd["sem_seg_head.x"][0]) == 11 and float(sd["void_embedding.weight"][0]) == 13
        assert "criterion.empty_weight" not in sd
    with pytest.raises(ValueError, match="already holds sem_seg_head"):
        fuse_checkpoints(tmp_path / "out_fcclip.pth", tmp_path / "fcclip.pth", tmp_path / "again.pth")
    torch.save({"model": _fake_state({"backbone.clip_model.a": 1})}, tmp_path / "noseg.pth")
    with pytest.raises(ValueError, match="no sem_seg_head"):
        fuse_checkpoints(tmp_path / "stage1.pth", tmp_path / "noseg.pth", tmp_path / "x.pth")


def test_save_state_containers(tmp_path):
    state = _fake_state({"mask_adapter.a": 1.5})
    save_state(state, tmp_path / "a.safetensors")
    save_state(state, tmp_path / "a.pth")
    for name in ("a.safetensors", "a.pth"):
        assert torch.equal(read_state_dict(tmp_path / name)["mask_adapter.a"], state["mask_adapter.a"])
    with pytest.raises(ValueError, match="must end in"):
        save_state(state, tmp_path / "a.bin")


def test_export_full_takes_the_base_weights_or_rebuilds_them_from_the_seed(tmp_path):
    from maskadapter.training.checkpointing import CHECKPOINT_FORMAT, atomic_save
    from maskadapter.training.setup import seeded_model

    from training_utils import write_tiny_preset

    config = TrainConfig()
    config.model.preset = str(write_tiny_preset(tmp_path / "tiny.json"))
    config.train.stage = "warmup"
    ckpt = {"format": CHECKPOINT_FORMAT, "version": 1, "model": _fake_state({"mask_adapter.a": 2}),
            "config": config_to_dict(config), "iteration": 3, "optimizer": {}}
    atomic_save(ckpt, tmp_path / "last.pt")
    assert set(export_state(tmp_path / "last.pt")) == {"mask_adapter.a"}
    # no model.weights: the run's random frozen parts (and a generator, even in stage 1) from run.seed
    rebuilt = export_state(tmp_path / "last.pt", full=True)
    reference = seeded_model(config).state_dict()
    assert float(rebuilt["mask_adapter.a"][0]) == 2 and any(k.startswith("sem_seg_head.") for k in rebuilt)
    assert all(torch.equal(rebuilt[k], v) for k, v in reference.items())
    torch.save({"model": _fake_state({"backbone.clip_model.b": 4, "mask_adapter.a": 9, "sem_seg_head.z": 5,
                                      "void_embedding.weight": 6})}, tmp_path / "base.pth")
    full = export_state(tmp_path / "last.pt", full=True, base=tmp_path / "base.pth")
    assert float(full["mask_adapter.a"][0]) == 2  # trained values win over the base file's
    assert float(full["backbone.clip_model.b"][0]) == 4
    assert "sem_seg_head.z" not in full  # a stage-1 run with a base file: the official stage-1 layout

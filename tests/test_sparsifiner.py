"""Sparsifiner beyond the fixtures and the conformance suite: the connectivity predictor's
budgets and token pruning, the phase-1 reconstruction forward, the checkpoints users have (the
official training checkpoints with their pickled argparse.Namespace, the dense DeiT / LV-ViT ones),
clear errors, the MAC accounting, and the two-phase recipe with a resume across its boundary."""
import argparse
import glob
import json
import math
import os

import pytest
import timm
import torch

import backbones
import backbones.sparsifiner as sparsifiner
import ops

# 64x64 images in 8x8 patches: 65 tokens, K = 65 // 6 = 10 basis rows (>= the 8 kept coefficients)
TINY = dict(img_size=64, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=3)


def _tiny(name="sparsifiner_deit_small_224", seed=0, **kwargs):
    torch.manual_seed(seed)
    return timm.create_model(name, **dict(TINY, **kwargs)).eval()


def _x(batch=2, size=64, seed=1):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_connectivity_keeps_the_budget_and_the_class_row_attends_everything():
    model = _tiny()
    with torch.no_grad():
        trace = model.forward_trace(_x())
    n = 65
    budget = math.ceil(0.25 * n)
    assert [b for b, _ in model.attention_budget()] == [budget, budget]
    for layer in trace.layers:
        assert layer.attn_mask.shape == (2, 2, n, n) and layer.attn_mask.dtype == torch.bool
        assert layer.attn_mask[:, :, 0].all()
        assert (layer.attn_mask[:, :, 1:].sum(-1) == budget).all()
        assert layer.approx_attn.shape == (2, 2, n - 1, n) and (layer.approx_attn >= 0).all()
    expected = 1 - (n + (n - 1) * budget) / n ** 2
    assert trace.attn_mask_sparsity().item() == pytest.approx(expected, abs=1e-6)


def test_token_pruning_budgets_are_pure_functions_of_the_kept_count():
    """The official predictor stores min(budget, kept tokens) on itself at the first pruned
    forward and keeps it; here each call computes it, and the kept counts are ceil(rate * 64)."""
    model = _tiny(depth=3, attn_keep_rate=0.9, token_keep_rates=[0.5, 0.25, 1.0],
                  token_pruning_layers=(0, 1))
    assert model.attention_budget() == [(59, None), (32, 32), (16, 16)]
    with torch.no_grad():
        trace = model.forward_trace(_x())
        maps = model.forward_intermediates(_x(), intermediates_only=True)
    assert [int(t.token_mask[0].sum()) for t in trace.layers] == [32, 16, 16]
    # pruned patch tokens are zero from the block that pruned them on, and no patch query keeps them
    dropped = ~trace.layers[0].token_mask
    assert (maps[0].flatten(2).transpose(1, 2)[dropped] == 0).all()
    later = trace.layers[1].attn_mask[:, :, 1:, 1:]
    assert not (later & dropped[:, None, None, :]).any()
    for _ in range(2):  # no state carried between calls
        assert model.attention_budget()[1] == (32, 32)


def test_reconstruction_forward_is_dense_and_trains_only_through_the_predictor():
    model = _tiny().train()
    trace = model.forward_trace(_x(), reconstruct=True, need_attn=True)
    assert all(t.attn_mask is None for t in trace.layers)
    torch.testing.assert_close(trace.layers[0].attn.sum(-1), torch.ones(2, 2, 65))
    sum(t.approx_attn.sum() for t in trace.layers).backward()
    predictor = model.blocks[0].attn.mask_predictor
    assert predictor.proj_back_n.grad is not None and predictor.proj_c_q.weight.grad is not None
    # the signed basis: negative reconstructions are possible, unlike the sparse form
    assert (trace.layers[0].approx_attn < 0).any()


def test_attention_maps_of_a_timm_vit_teacher_equal_its_explicit_attention():
    vit = timm.create_model("vit_tiny_patch16_224", img_size=64, patch_size=8, embed_dim=32,
                            depth=2, num_heads=2, num_classes=3).eval()
    with torch.no_grad():
        logits, tokens, maps = sparsifiner.attention_maps(vit, _x())
        torch.testing.assert_close(logits, vit(_x()))
        block = vit.blocks[0]
        h = block.norm1(vit._pos_embed(vit.patch_embed(_x())))
        q, k, _ = block.attn.qkv(h).view(2, 65, 3, 2, 16).permute(2, 0, 3, 1, 4)
        torch.testing.assert_close(maps[0], ((q @ k.transpose(-1, -2)) * 16 ** -0.5).softmax(-1))
    assert tokens.shape == (2, 64, 32) and len(maps) == 2


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_both_backends_agree(backend):
    model = _tiny()
    with torch.no_grad(), ops.use_backend("reference"):
        want = model(_x())
    with torch.no_grad(), ops.use_backend(backend):
        torch.testing.assert_close(model(_x()), want, rtol=1e-4, atol=1e-5)


def test_bad_inputs_and_settings_are_clear_errors():
    model = _tiny()
    with pytest.raises(ValueError, match="takes 64x64 inputs only.*proj_n"):
        model(_x(size=96))
    with pytest.raises(ValueError, match="attn_keep_rate must lie in"):
        _tiny(attn_keep_rate=1.5)
    with pytest.raises(ValueError, match="token_keep_rates, one per"):
        _tiny(token_pruning_layers=(0,))
    with pytest.raises(ValueError, match="coef_topk must lie in"):
        _tiny(coef_topk=20)
    with pytest.raises(ValueError, match="attention dropout"):
        _tiny(attn_drop_rate=0.1)
    q = torch.randn(1, 2, 65, 16)
    with pytest.raises(ValueError, match="mask of dtype torch.bool must be"):
        ops.masked_attention(q, q, q, torch.ones(1, 2, 65, 64, dtype=torch.bool))
    with pytest.raises(ValueError, match="phase-1 training switch"):
        sparsifiner.create_from_official(dict(attn_keep_rate_list=[0.25] * 2, depth=2,
                                              token_keep_rate_list=[1, 1],
                                              token_pruning_loc_indicator=[False, False],
                                              cfg=dict(LOSS=dict(USE_ATTN_RECON=True))))


def test_pretrained_without_released_weights_names_the_dense_tag():
    """No Sparsifiner weights exist: a bare pretrained=True (whose default tag would be the dense
    starting point) and the explicit in1k tag both say so, offline, before any download."""
    with pytest.raises(backbones.PretrainedWeightsError, match="'sparsifiner_deit_small_224"
                                                               ".dense_init_in1k', pretrained"):
        timm.create_model("sparsifiner_deit_small_224", pretrained=True)
    with pytest.raises(backbones.PretrainedWeightsError, match="no pretrained weights.*ever "
                                                               "released"):
        timm.create_model("sparsifiner_lvvit_small_224.in1k", pretrained=True)


def _save(obj, path):
    torch.save(obj, path)
    return str(path)


def test_official_training_checkpoint_loads_its_ema_through_the_pretrained_path(tmp_path):
    """src/utils.py:save_model's layout, argparse.Namespace included (weights_only loading needs
    the allow-list); the EMA weights are the ones loaded."""
    live, ema = _tiny(seed=1).state_dict(), _tiny(seed=2).state_dict()
    path = _save({"model": live, "model_ema": ema, "optimizer": {}, "epoch": 49, "scaler": {},
                  "args": argparse.Namespace(model="sparsifiner", lr=8e-5), "best": 1.0,
                  "best_ema": 1.0}, tmp_path / "checkpoint-best.pth")
    model = timm.create_model("sparsifiner_deit_small_224", pretrained=True,
                              pretrained_cfg_overlay=dict(file=path, num_classes=3), **TINY)
    for k, v in model.state_dict().items():
        assert torch.equal(v, ema[k]), k


def test_dense_deit_checkpoint_loads_with_the_predictor_at_its_init(tmp_path):
    dense = timm.create_model("deit_small_patch16_224", img_size=64, patch_size=8, embed_dim=32,
                              depth=2, num_heads=2, num_classes=3).state_dict()
    path = _save({"model": dense}, tmp_path / "deit_small_patch16_224-cd65a155.pth")
    with pytest.warns(UserWarning, match="mask_predictor tensors keep their initialisation"):
        model = timm.create_model("sparsifiner_deit_small_224", pretrained=True,
                                  pretrained_cfg_overlay=dict(file=path, num_classes=3), **TINY)
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in dense.items())
    # the DeiT backbone without its predictor is the dense model: with every key kept, ours equals it
    full = _tiny(attn_keep_rate=1.0, coef_topk=None, coef_threshold=0.0)
    full.load_state_dict(sparsifiner.checkpoint_filter_fn({"model": dense}, full))
    vit = timm.create_model("deit_small_patch16_224", img_size=64, patch_size=8, embed_dim=32,
                            depth=2, num_heads=2, num_classes=3).eval()
    vit.load_state_dict(dense)
    with torch.no_grad():
        torch.testing.assert_close(full(_x()), vit(_x()), rtol=1e-4, atol=1e-5)


def test_mhsa_macs_follow_the_paper_definition():
    """Attention-matrix MACs (q k^T and attn v), dense vs at the budget, plus the predictor's."""
    model = timm.create_model("sparsifiner_deit_small_224")
    macs = backbones.get_family("sparsifiner").mac_breakdown(model)
    n, h, d, b = 197, 6, 64, 50
    assert macs["mhsa_dense"] == pytest.approx(12 * 2 * h * n * n * d / 1e9)
    assert macs["mhsa_sparse"] == pytest.approx(12 * 2 * h * d * (n + (n - 1) * b) / 1e9)
    c, k = 32, 197 // 6
    per_block = h * ((2 * n - 1) * d * c + n * c * k + (n - 1) * c * k + (n - 1) * k * n)
    assert macs["predictor"] == pytest.approx(12 * per_block / 1e9)
    assert "model_at_budget" not in macs
    with_model = backbones.get_family("sparsifiner").mac_breakdown(model, 4.6)
    assert with_model["model_at_budget"] == pytest.approx(4.6 - macs["mhsa_dense"]
                                                          + macs["mhsa_sparse"])


# ---------------------------------------------------------------------------------------------
# the two-phase recipe

def _phased_recipe(tmp_path):
    from test_train import _image_folder
    torch.manual_seed(3)
    vit = timm.create_model("vit_tiny_patch16_224", img_size=64, patch_size=8, embed_dim=32,
                            depth=2, num_heads=2, num_classes=3)
    teacher = _save(vit.state_dict(), tmp_path / "teacher.pth")
    data = _image_folder(tmp_path / "data", classes=3, train=4, val=1, size=64)
    base = os.path.join(os.path.dirname(__file__), "..", "configs", "imagenet", "_base_",
                        "sparsifiner.py")
    tiny = {k: v for k, v in TINY.items() if k != "num_classes"}
    recipe = tmp_path / "recipe.py"
    recipe.write_text(f"""
_base_ = [{os.path.abspath(base)!r}]
model = "sparsifiner_deit_small_224"
pretrained = False
model_kwargs = {tiny!r}
img_size = 64
crop_pct = 1.0
data_dir = {str(data)!r}
workers = 0
batch_size = 4
max_train_steps = 2
log_interval = 1
model_ema_decay = 0.5
aa = None
teacher = dict(model="vit_tiny_patch16_224", checkpoint={teacher!r},
               model_kwargs=dict(img_size=64, patch_size=8, embed_dim=32, depth=2, num_heads=2))
epochs = 2
phases = [
    dict(name="attn_recon", epochs=1, train=["blocks.*.attn.mask_predictor.*"], lr=3e-3,
         min_lr=2e-3, warmup_epochs=0, loss=dict(type="sparsifiner_attn_recon", weight=0.01)),
    dict(name="cls_distill", epochs=1, freeze=["blocks.*.attn.mask_predictor.*"], lr=1e-3,
         min_lr=1e-4, warmup_epochs=0, loss=dict(type="sparsifiner_distill")),
]
""")
    return recipe


@pytest.mark.slow
def test_two_phase_recipe_trains_each_part_in_its_phase_and_resumes_across_the_boundary(tmp_path):
    from backbones.training.classification import build_runner
    from test_train import _cfg, _final_state, _train
    recipe = _phased_recipe(tmp_path)
    start = _tiny(num_classes=3, seed=0)  # what the runner builds (seed 0)
    unbroken = _train([recipe, "--output", tmp_path, "--experiment", "unbroken"])
    net = unbroken.model.net
    assert unbroken.epoch == 2 and type(unbroken.model.train_loss).__name__ == \
        "SparsifinerDistillationLoss"

    # phase 1 moved only the predictor; phase 2 only the rest (the live weights, not the EMA)
    after_phase1 = torch.load(tmp_path / "unbroken" / "epoch_1.pth", map_location="cpu",
                              weights_only=False)["state_dict"]
    initial = start.state_dict()
    final = net.state_dict()
    for k, v in initial.items():
        predictor = ".mask_predictor." in k
        assert torch.equal(after_phase1["net." + k], v) != predictor, k
        if predictor:
            assert torch.equal(final[k], after_phase1["net." + k]), k
    assert any(not torch.equal(final[k], after_phase1["net." + k]) for k in initial
               if ".mask_predictor." not in k)
    # the teacher is frozen and in no checkpoint; each phase logged its own loss terms
    assert not unbroken.model.teacher.training
    assert all(k.startswith("net.") for k in after_phase1)
    scalars = glob.glob(str(tmp_path / "unbroken" / "*" / "vis_data" / "scalars.json"))
    records = [json.loads(line) for line in open(scalars[0])]
    steps = [r for r in records if "loss" in r]
    assert ["loss_token_distill" in r for r in steps] == [False, False, True, True]
    assert all(r["loss"] == pytest.approx(r["loss_attn_recon"]) for r in steps[:2])
    assert all(r["loss_cls"] > 0 and r["loss_cls_distill"] >= 0 for r in steps[2:])
    assert steps[0]["lr"] == pytest.approx(3e-3) and steps[2]["lr"] == pytest.approx(1e-3)

    # stop at the boundary, resume: identical to the unbroken run, EMA and all
    _train([recipe, "--output", tmp_path, "--experiment", "broken", "--stop-after-epochs", "1"])
    resumed = _train([recipe, "--output", tmp_path, "--experiment", "broken", "--resume",
                      tmp_path / "broken"])
    assert resumed.epoch == 2
    a, b = _final_state(unbroken), _final_state(resumed)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for k, v in final.items():
        assert torch.equal(v, resumed.model.net.state_dict()[k]), k


def test_mask_picture_tool_draws_each_block_and_head_for_the_query(tmp_path, capsys):
    import numpy as np
    from PIL import Image
    from backbones.cli import sparsifiner_masks
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    tiny = [f"{k}={v}" for k, v in TINY.items()]
    model = _tiny()
    _save(model.state_dict(), tmp_path / "w.pth")
    pictures = []
    for query in ("4,4", "60,60"):
        out = tmp_path / f"{query}.png"
        assert sparsifiner_masks.main(["sparsifiner_deit_small_224", str(tmp_path / "in.png"),
                                       "--query", query, "--checkpoint", str(tmp_path / "w.pth"),
                                       "--model-kwargs", *tiny, "--output", str(out)]) == 0
        pictures.append(np.asarray(Image.open(out)))
    tile = sparsifiner_masks.TILE
    assert pictures[0].shape == (24 + 2 * (tile + 16), (2 + 2) * tile, 3)  # 2 blocks, 2 heads
    assert (pictures[0] != pictures[1]).any()
    assert "weights: " + str(tmp_path / "w.pth") in capsys.readouterr().out
    assert sparsifiner_masks.main(["sparsifiner_deit_small_224", str(tmp_path / "in.png"),
                                   "--query", "64,1", "--model-kwargs", *tiny]) == 2
    assert "lies outside the 64x64 input" in capsys.readouterr().err
    assert sparsifiner_masks.main(["cswin_tiny_224", str(tmp_path / "in.png")]) == 2
    assert "is not a Sparsifiner model" in capsys.readouterr().err


def test_benchmark_pairs_ours_with_the_authors_model_built_as_their_main_py_builds_it(tmp_path,
                                                                                      capsys):
    """``--paired --official DIR``: the family record's official_builder builds the authors'
    class with main.py's arguments and a yacs-like config, and its dict output becomes logits.
    The stand-in repository checks exactly those arguments and answers with our model."""
    from backbones.cli import benchmark
    models = tmp_path / "official" / "src" / "models"
    models.mkdir(parents=True)
    (models / "sparsifiner.py").write_text('''
import backbones.sparsifiner as ours

def Sparsifiner(cfg, **kwargs):
    assert kwargs["depth"] == 12 and kwargs["embed_dim"] == 384 and kwargs["reduce_n_factor"] == 6
    assert cfg.SPAR.BASIS_COEF.TOPK == 8 and cfg.LOSS.USE_ATTN_RECON is False
    spar = cfg.SPAR
    model = ours.create_from_official(dict(kwargs, cfg=dict(SPAR=dict(
        BASIS_THRESHOLD=spar.BASIS_THRESHOLD, BASIS_COEF=vars(spar.BASIS_COEF),
        ATTN_SCORE=vars(spar.ATTN_SCORE)))))
    forward = model.forward
    model.forward = lambda x: {"x": forward(x), "features": None}
    return model
''')
    rows = benchmark.run(["--models", "sparsifiner_deit_small_224", "--paired", "--official",
                          str(tmp_path / "official"), "--batch-sizes", "1", "--iters", "1",
                          "--warmup", "1"])
    (row,) = rows
    assert row["twin"] == "official src/models/sparsifiner.py:Sparsifiner"
    assert row["ours_ms"] > 0 and row["twin_ms"] > 0
    assert "| official src/models/sparsifiner.py:Sparsifiner |" in capsys.readouterr().out

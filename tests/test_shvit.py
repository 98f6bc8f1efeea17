"""SHViT behaviour beyond the shared conformance and golden suites: exact equality with timm's
``shvit_sN`` (same weights, two input sizes), official parameter counts, every checkpoint layout
through the filter (official release, timm hub, zoo, fused, mmdet), ``fuse()``, attention through
``ops``, training-mode gradients equal to timm's, any input size and clear input errors."""
import argparse
import copy
import itertools
import re
import warnings

import pytest
import torch
import timm
from timm.data import resolve_data_config

import ops
from backbones import shvit
from conftest import GOLDEN
from golden import build_from_fixture, load_fixture

# Exact counts of the official entrypoints (model/build.py, ImageNet-1k heads), counted by running
# the official model/shvit.py; timm's shvit_sN have the same counts.
OFFICIAL_PARAMS = dict(shvit.FAMILY.param_counts)
# The golden fixture's architecture as overrides of a registered variant.
FIXTURE_ARCH = dict(embed_dim=(32, 64, 96), partial_dim=(8, 16, 24), depth=(2, 2, 2),
                    types=("i", "s", "s"), num_classes=10)


def _randomize_bn(model, seed=0):
    """Non-trivial BatchNorm weights and statistics: the zero-initialised output BNs would
    otherwise switch every residual branch (attention included) off."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model


def _timm_and_zoo(name, **kwargs):
    torch.manual_seed(0)
    ref = _randomize_bn(timm.create_model(shvit.FAMILY.timm_equivalents[name], **kwargs)).eval()
    zoo = timm.create_model(name, **kwargs).eval()
    zoo.load_state_dict(shvit.checkpoint_filter_fn(ref.state_dict(), zoo), strict=True)
    return ref, zoo


def _to_official(state_dict):
    """Zoo / timm keys -> the official release layout, written from the spec's key table
    (independently of the filter): stage ``s`` -> ``blocks{s+1}``; a transition's
    ``downsample.0/1`` -> ``.0.0/.0.1``, ``.2`` -> ``.1``, ``.3/.4`` -> ``.2.0/.2.1``; blocks
    shift by 3 behind a transition."""
    out = {}
    for k, v in state_dict.items():
        m = re.match(r"^stages\.(\d+)\.(downsample|blocks)\.(\d+)\.(.*)$", k)
        if not m:
            out[k] = v
            continue
        s, part, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        if part == "downsample":
            idx = {0: "0.0", 1: "0.1", 2: "1", 3: "2.0", 4: "2.1"}[j]
        else:
            idx = str(j + 3 if s > 0 else j)
        out[f"blocks{s + 1}.{idx}.{rest}"] = v
    return out


@pytest.mark.parametrize("name", sorted(OFFICIAL_PARAMS))
def test_param_count_is_official_and_timms(name):
    model = timm.create_model(name)
    ref = timm.create_model(shvit.FAMILY.timm_equivalents[name])
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMS[name]
    assert sum(p.numel() for p in ref.parameters()) == OFFICIAL_PARAMS[name]


# ------------------------------------------------------------------------------------ timm twin

@pytest.mark.parametrize("name", sorted(OFFICIAL_PARAMS))
def test_exact_match_with_timm(name):
    """timm's shvit_sN with random weights, loaded through the filter: logits and the three stage
    features agree at the default size and at a non-square size off the stride grid."""
    ref, zoo = _timm_and_zoo(name)
    default = zoo.pretrained_cfg["input_size"][1:]
    for size in (default, (160, 200)):
        x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            want_final, want = ref.forward_intermediates(x)
            got_final, got = zoo.forward_intermediates(x)
            logits_ref, logits_zoo = ref(x), zoo(x)
        assert (logits_ref - logits_zoo).abs().max() < 1e-5, size
        assert (want_final - got_final).abs().max() < 1e-5
        assert len(got) == 3
        for a, b in zip(want, got):
            assert a.shape == b.shape and (a - b).abs().max() < 1e-5, size
        assert logits_zoo.abs().max() > 1e-2  # the comparison saw non-trivial outputs


def test_state_dict_is_timms_both_ways():
    ref, zoo = _timm_and_zoo("shvit_s1_224")
    assert zoo.state_dict().keys() == ref.state_dict().keys()
    sd = ref.state_dict()
    passed = shvit.checkpoint_filter_fn(sd, zoo)
    assert passed.keys() == sd.keys() and all(passed[k] is sd[k] for k in sd)
    back = timm.create_model("shvit_s1").eval()
    back.load_state_dict(zoo.state_dict(), strict=True)  # zoo weights run in timm unchanged
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert (back(x) - zoo(x)).abs().max() < 1e-5


def test_training_gradients_equal_timms():
    """Train mode (batch statistics, in-place residual sums and ReLUs): the loss and every
    parameter gradient equal timm's."""
    torch.manual_seed(0)
    ref = _randomize_bn(timm.create_model("shvit_s1", **FIXTURE_ARCH)).train()
    zoo = timm.create_model("shvit_s1_224", **FIXTURE_ARCH).train()
    zoo.load_state_dict(ref.state_dict())
    x = torch.randn(3, 3, 96, 112, generator=torch.Generator().manual_seed(2))
    target = torch.tensor([1, 5, 9])
    losses = []
    for model in (ref, zoo):
        loss = torch.nn.functional.cross_entropy(model(x), target)
        loss.backward()
        losses.append(loss.item())
    assert abs(losses[0] - losses[1]) < 1e-6
    grads = dict(ref.named_parameters())
    for n, p in zoo.named_parameters():
        assert p.grad is not None, n
        assert (p.grad - grads[n].grad).abs().max() < 1e-5 * max(1., grads[n].grad.abs().max()), n
    for (n, a), b in zip(ref.named_buffers(), zoo.buffers()):  # running stats updated alike
        assert torch.allclose(a.float(), b.float(), atol=1e-6), n


def test_grad_checkpointing_and_drop_path_train():
    model = timm.create_model("shvit_s1_224", drop_path_rate=0.2, drop_rate=0.1,
                              **FIXTURE_ARCH).train()
    model.set_grad_checkpointing()
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    blocks = [b for s in model.stages for b in s.blocks]
    assert blocks[0].conv.drop_path is None
    assert blocks[-1].ffn.drop_path.drop_prob == pytest.approx(0.2)


# ----------------------------------------------------------------------------------- attention

def test_attention_goes_through_the_window_op(monkeypatch):
    """Every type-'s' block calls ops.window_attention_2d once, full grid (window None), one head,
    d_qk 16 and d_v = partial_dim, with strided views (no copies) of the qkv projection."""
    calls = []
    real = ops.window_attention_2d

    def spy(q, k, v, window_size=None, **kwargs):
        calls.append((tuple(q.shape), tuple(k.shape), tuple(v.shape), window_size,
                      q.is_contiguous(), kwargs.get("scale")))
        return real(q, k, v, window_size, **kwargs)

    monkeypatch.setattr(ops, "window_attention_2d", spy)
    model = timm.create_model("shvit_s1_224").eval()
    with torch.no_grad():
        model(torch.randn(2, 3, 224, 224))
    assert len(calls) == 4 + 5  # stages 2 and 3 are type 's'
    assert calls[0][:4] == ((2, 1, 7, 7, 16), (2, 1, 7, 7, 16), (2, 1, 7, 7, 48), None)
    assert calls[-1][:4] == ((2, 1, 4, 4, 16), (2, 1, 4, 4, 16), (2, 1, 4, 4, 68), None)
    assert not any(c[4] for c in calls) and all(c[5] == 0.25 for c in calls)


def test_attention_matches_a_naive_single_head():
    torch.manual_seed(0)
    attn = _randomize_bn(shvit.SingleHeadAttention(40, 16, 12)).eval()
    x = torch.randn(2, 40, 5, 7)
    with torch.no_grad():
        got = attn(x)
        x1 = attn.pre_norm(x[:, :12])
        qkv = attn.qkv(x1).flatten(2)  # (B, 2 * 16 + 12, N)
        q, k, v = qkv[:, :16], qkv[:, 16:32], qkv[:, 32:]
        a = torch.einsum("bcn,bcm->bnm", q, k).mul(16 ** -0.5).softmax(-1)
        o = torch.einsum("bnm,bcm->bcn", a, v).reshape(2, 12, 5, 7)
        want = attn.proj(torch.cat([o, x[:, 12:]], 1))
    assert (got - want).abs().max() < 1e-5


# ------------------------------------------------------------------------------------- fuse

@pytest.mark.parametrize("name", ["shvit_s1_224", "shvit_s4_256"])
def test_fuse_keeps_outputs(name):
    torch.manual_seed(0)
    model = _randomize_bn(timm.create_model(name)).eval()
    fused = copy.deepcopy(model).fuse()
    assert not any(isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d))
                   for m in fused.modules())
    assert not any(isinstance(m, shvit.ConvNorm) for m in fused.modules())
    # residual depthwise convs became plain convs: no Residual around a depthwise conv is left
    assert all(not isinstance(m.m, torch.nn.Conv2d) for m in fused.modules()
               if isinstance(m, shvit.Residual))
    x = torch.randn(2, 3, 200, 168)
    with torch.no_grad():
        a, feats_a = model.forward_intermediates(x)
        b, feats_b = fused.forward_intermediates(x)
        assert (model(x) - fused(x)).abs().max() < 1e-4
    for fa, fb in zip(feats_a + [a], feats_b + [b]):
        assert (fa - fb).abs().max() < 1e-4
    ref = timm.create_model(shvit.FAMILY.timm_equivalents[name]).eval()
    ref.load_state_dict(model.state_dict())
    ref.fuse()
    with torch.no_grad():  # the same folding as timm's fuse()
        assert (ref(x) - fused(x)).abs().max() < 1e-4
    # fused checkpoints (timm's, whose head is a bare Linear) load into a fused zoo model
    again = timm.create_model(name).eval().fuse()
    again.load_state_dict(shvit.checkpoint_filter_fn(ref.state_dict(), again), strict=True)
    with pytest.raises(ValueError, match="fused"):
        shvit.checkpoint_filter_fn(ref.state_dict(), timm.create_model(name))


# --------------------------------------------------------------------------------- checkpoints

def test_filter_maps_the_official_fixture_and_takes_every_wrapping():
    config, official, io = load_fixture(GOLDEN, "shvit")
    model = build_from_fixture(shvit, config, official)
    direct = shvit.checkpoint_filter_fn(official, model)
    assert direct.keys() == model.state_dict().keys()
    assert torch.equal(direct["stages.1.downsample.2.se.fc1.weight"],
                       official["blocks2.1.se.fc1.weight"])
    assert torch.equal(direct["stages.2.downsample.4.m.pw2.bn.running_var"],
                       official["blocks3.2.1.m.pw2.bn.running_var"])
    assert torch.equal(direct["stages.2.blocks.1.mixer.m.qkv.c.weight"],
                       official["blocks3.4.mixer.m.qkv.c.weight"])
    assert torch.equal(direct["stages.0.blocks.1.ffn.m.pw1.c.weight"],
                       official["blocks1.1.ffn.m.pw1.c.weight"])
    assert _to_official(direct).keys() == official.keys()
    for wrapped in ({"model": official, "epoch": 299, "args": argparse.Namespace(lr=1e-3)},
                    {"state_dict": {"module." + k: v for k, v in official.items()}},
                    {"model": {"_orig_mod." + k: v for k, v in official.items()}}):
        out = shvit.checkpoint_filter_fn(wrapped, model)
        assert out.keys() == direct.keys() and all(torch.equal(out[k], direct[k]) for k in out)


def test_filter_has_no_depth_limit_and_unsqueezes_2d_convs():
    """timm's first remap only covered blocks 3..9 of an official stage; ours any depth."""
    arch = dict(FIXTURE_ARCH, depth=(1, 9, 8))
    torch.manual_seed(0)
    zoo = _randomize_bn(timm.create_model("shvit_s1_224", **arch)).eval()
    official = _to_official(zoo.state_dict())
    assert "blocks2.11.ffn.m.pw2.c.weight" in official
    key = "blocks3.10.ffn.m.pw1.c.weight"
    official[key] = official[key][:, :, 0, 0]  # a 2-D 1x1-conv weight
    fresh = timm.create_model("shvit_s1_224", **arch).eval()
    fresh.load_state_dict(shvit.checkpoint_filter_fn({"model": official}, fresh), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(fresh(x), zoo(x))


def test_dense_backbone_and_mmdet_checkpoints():
    """downstream/shvit.py:Partial_ViT_Exp has no head; an mmdet file has 'backbone.' keys beside
    neck and heads. The three stage outputs are the fixture's features."""
    config, official, io = load_fixture(GOLDEN, "shvit")
    kwargs = {k: v for k, v in config["kwargs"].items() if k != "num_classes"}
    dense = shvit.create_from_official(dict(kwargs, img_size=224, frozen_stages=0),
                                       "downstream/shvit.py:Partial_ViT_Exp")
    assert dense.num_classes == 0 and not any(k.startswith("head.") for k in dense.state_dict())
    mmdet = {"meta": {"epoch": 12}, "state_dict": {
        **{"backbone." + k: v for k, v in official.items() if not k.startswith("head.")},
        "neck.lateral_convs.0.conv.weight": torch.zeros(256, 32, 1, 1),
        "bbox_head.retina_cls.weight": torch.zeros(720, 256, 3, 3)}}
    for checkpoint in (mmdet, {"model": official}):  # classification release: head dropped
        dense.load_state_dict(shvit.checkpoint_filter_fn(checkpoint, dense), strict=True)
        with torch.no_grad():
            feats = dense.eval().forward_intermediates(io["input"], intermediates_only=True)
        for i, feat in enumerate(feats):
            assert (feat - io[f"features.{i}"]).abs().max() < 1e-4
    features = timm.create_model("shvit_s1_224", features_only=True,
                                 **{k: v for k, v in FIXTURE_ARCH.items() if k != "num_classes"})
    features.model.load_state_dict(dense.state_dict(), strict=True)
    assert features.feature_info.reduction() == [16, 32, 64]
    with torch.no_grad():
        for i, feat in enumerate(features.eval()(io["input"])):
            assert (feat - io[f"features.{i}"]).abs().max() < 1e-4


def test_distillation_head_is_dropped_with_a_warning():
    config, official, _ = load_fixture(GOLDEN, "shvit")
    model = build_from_fixture(shvit, config, official)
    with_dist = dict(official, **{"head_dist." + k[len("head."):]: v for k, v in official.items()
                                  if k.startswith("head.")})
    with pytest.warns(UserWarning, match="distillation head"):
        out = shvit.checkpoint_filter_fn({"model": with_dist}, model)
    assert not any(k.startswith("head_dist") for k in out)


def test_pretrained_file_in_the_official_release_layout(tmp_path):
    """pretrained=True with a local official-layout file ({'model', 'args': Namespace, ...}) goes
    through the filter and reproduces the official logits."""
    config, official, io = load_fixture(GOLDEN, "shvit")
    path = tmp_path / "shvit_fixture.pth"
    torch.save({"model": official, "epoch": 299, "args": argparse.Namespace(model="shvit_s1")},
               path)
    model = timm.create_model("shvit_s1_224", pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(path), num_classes=10),
                              **FIXTURE_ARCH).eval()
    with torch.no_grad():
        assert (model(io["input"]) - io["logits"]).abs().max() < 1e-4


def test_create_from_official_options():
    base = dict(embed_dim=[16, 32, 48], partial_dim=[4, 8, 12], depth=[1, 1, 1],
                types=["s", "s", "s"], num_classes=5)
    for cls in (None, "SHViT", "model/shvit.py:SHViT", "SHViT (model/shvit.py)"):
        model = shvit.create_from_official(base, cls)
        assert model.num_classes == 5 and model.feature_info[2]["reduction"] == 64
        assert model.head_dist is None
    no_sub = shvit.create_from_official(dict(base, embed_dim=[16, 16, 48],
                                             down_ops=[[""], ["subsample", 2], [""]]))
    assert isinstance(no_sub.stages[1].downsample, torch.nn.Identity)
    assert [f["reduction"] for f in no_sub.feature_info] == [16, 16, 32]
    with pytest.raises(ValueError, match="without a transition"):
        shvit.create_from_official(dict(base, down_ops=[[""], ["subsample", 2], [""]]))
    with pytest.raises(ValueError, match="after the last stage"):
        shvit.create_from_official(dict(base, down_ops=[["subsample", 2]] * 3))
    with pytest.raises(ValueError, match="unknown official SHViT class"):
        shvit.create_from_official(base, "model/efficientvit.py:EfficientViT")
    with pytest.raises(TypeError, match="img_size"):  # a Partial_ViT_Exp argument
        shvit.create_from_official(dict(base, img_size=224), "model/shvit.py:SHViT")
    distilled = shvit.create_from_official(dict(base, distillation=True))
    assert distilled.head_dist.l.out_features == 5
    # Partial_ViT_Exp takes distillation / img_size / patch_size and uses none of them
    backbone = {k: v for k, v in base.items() if k != "num_classes"}
    dense = shvit.create_from_official(
        dict(backbone, distillation=True, img_size=512, patch_size=16, frozen_stages=-1,
             pretrained=None), "downstream/shvit.py:Partial_ViT_Exp")
    assert dense.head_dist is None and dense.num_classes == 0


def test_create_from_official_zips_the_stage_lists():
    """The official loop zips embed_dim, qk_dim, partial_dim, depth, down_ops and types: stages
    past the shortest list get no BasicBlocks (a transition can still lead into them)."""
    kwargs = dict(embed_dim=[16, 32, 32], partial_dim=[4, 8], depth=[1, 2, 3],
                  types=["s", "s", "s", "i"], down_ops=[["subsample", 2], [""], [""]],
                  num_classes=3)
    model = shvit.create_from_official(kwargs)
    assert [len(s.blocks) for s in model.stages] == [1, 2, 0]
    short_ops = shvit.create_from_official(dict(kwargs, partial_dim=[4, 8, 8],
                                                down_ops=[["subsample", 2]]))
    assert [len(s.blocks) for s in short_ops.stages] == [1, 0, 0]
    assert not isinstance(short_ops.stages[1].downsample, torch.nn.Identity)


# ---------------------------------------------------------------------- non-default fixtures

NON_DEFAULT_FIXTURES = ["shvit_nondefault", "shvit_distill", "shvit_dense"]


@pytest.mark.parametrize("fixture", NON_DEFAULT_FIXTURES)
def test_non_default_fixture_param_count_is_official(fixture):
    """The generator (tests/golden/make/shvit.py) counted the official model's parameters."""
    config, official, _ = load_fixture(GOLDEN, fixture)
    model = build_from_fixture(shvit.FAMILY, config, official)
    assert sum(p.numel() for p in model.parameters()) == config["params"]
    assert sum(v.numel() for k, v in official.items() if not k.endswith(
        ("running_mean", "running_var", "num_batches_tracked"))) == config["params"]


def test_non_default_fixtures_cover_every_official_class():
    classes = {load_fixture(GOLDEN, f)[0]["official_class"] for f in NON_DEFAULT_FIXTURES}
    assert classes == set(shvit.FAMILY.official_classes)


# ------------------------------------------------------------------------------ distillation

def test_distillation_head():
    """distillation=True: head_dist (official keys) on the pooled features; eval output is the
    mean of both heads, train output too unless distilled training is switched on (then the
    pair, as the official model returns in train mode)."""
    config, official, io = load_fixture(GOLDEN, "shvit_distill")
    model = build_from_fixture(shvit.FAMILY, config, official)
    assert torch.equal(model.state_dict()["head_dist.l.weight"], official["head_dist.l.weight"])
    x = io["input"]
    with torch.no_grad():
        feats = model.forward_features(x)
        pooled = model.forward_head(feats, pre_logits=True)
        both = model.head.classify(pooled), model.head_dist(pooled)
        assert torch.equal(model(x), (both[0] + both[1]) / 2)
    assert len(model.get_classifier()) == 2
    fused = copy.deepcopy(model).fuse()
    assert isinstance(fused.head_dist.bn, torch.nn.Identity)
    with torch.no_grad():
        assert (fused(x) - io["logits"]).abs().max() < 1e-4
    # fused official / timm-style heads are bare Linears: head_dist.weight too
    fused_sd = {re.sub(r"^(head|head_dist)\.l\.", r"\1.", k): v
                for k, v in fused.state_dict().items()}
    again = shvit.create_from_official(config["kwargs"]).eval().fuse()
    again.load_state_dict(shvit.checkpoint_filter_fn(fused_sd, again), strict=True)
    model.train()
    assert isinstance(model(x), torch.Tensor)
    model.set_distilled_training(True)
    out, out_dist = model(x)
    assert out.shape == out_dist.shape == (2, 6)
    model.eval()
    model.reset_classifier(4)
    assert model.head.l.out_features == model.head_dist.l.out_features == 4
    assert not model.head_dist.bn.training
    model.reset_classifier(0)
    with torch.no_grad():  # (x + x) / 2, as the official head-less distilled model
        assert torch.equal(model(x), model.forward_features(x).mean((2, 3)))


def test_distillation_head_is_kept_without_a_model():
    _, official, _ = load_fixture(GOLDEN, "shvit_distill")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = shvit.checkpoint_filter_fn({"model": official})
    assert "head_dist.bn.running_var" in out


# ----------------------------------------------------------------------------- device / dtype

def test_device_and_dtype():
    meta = shvit.SHViT(embed_dim=(16, 32, 48), partial_dim=(4, 8, 12), distillation=True,
                       device="meta")
    assert all(t.device.type == "meta" for t in itertools.chain(meta.parameters(),
                                                                  meta.buffers()))
    half = shvit.SHViT(embed_dim=(16, 32, 48), partial_dim=(4, 8, 12), num_classes=3,
                       dtype=torch.bfloat16).eval()
    assert all(p.dtype == torch.bfloat16 for p in half.parameters())
    half.reset_classifier(0)
    half.reset_classifier(5)  # a new head joins the model's dtype
    assert half.head.l.weight.dtype == torch.bfloat16
    with torch.no_grad():
        out = half(torch.randn(2, 3, 64, 64, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and out.shape == (2, 5)
    assert torch.get_default_dtype() == torch.float32


def test_empty_batch_gives_empty_logits():
    model = timm.create_model("shvit_s1_224", **FIXTURE_ARCH).eval()
    with torch.no_grad():
        assert model(torch.randn(0, 3, 64, 64)).shape == (0, 10)
        feats = model.forward_intermediates(torch.randn(0, 3, 64, 64), intermediates_only=True)
    assert [f.shape[0] for f in feats] == [0, 0, 0]


def test_export_in_eval_mode():
    """The BatchNorm1d head only checks the batch (more than one value per channel) in train
    mode; an eval-mode batch of one exports and runs."""
    model = timm.create_model("shvit_s1_224", **FIXTURE_ARCH).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad(), ops.use_backend("reference"):
        program = torch.export.export(model, (x,))
        assert torch.equal(program.module()(x), model(x))


# ------------------------------------------------------------------------------- input sizes

@pytest.mark.parametrize("size", [(224, 224), (200, 304), (65, 33), (17, 1)])
def test_any_input_size(size):
    model = timm.create_model("shvit_s1_224", **FIXTURE_ARCH).eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        final, feats = model.forward_intermediates(x)
        logits = model(x)
    h, w = size
    for i, feat in enumerate(feats):
        red = 2 ** (4 + i)
        assert feat.shape == (1, FIXTURE_ARCH["embed_dim"][i], -(-h // red), -(-w // red))
    assert torch.isfinite(final).all() and logits.shape == (1, 10)


def test_input_errors_are_clear():
    model = timm.create_model("shvit_s1_224", **FIXTURE_ARCH).eval()
    with pytest.raises(ValueError, match="3 input channels, got 1"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="4-D"):
        model(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="more than 1 value per channel"):  # BatchNorm1d head
        model.train()(torch.randn(1, 3, 128, 128))
    model.train().forward_intermediates(torch.randn(1, 3, 128, 128))  # no head: no limit
    with pytest.raises(ValueError, match="needs pooling"):
        timm.create_model("shvit_s1_224", global_pool="")
    with pytest.raises(ValueError, match="one entry per stage"):
        shvit.SHViT(embed_dim=(16, 32), depth=(1, 1, 1))
    with pytest.raises(ValueError, match="partial_dim"):
        shvit.SHViT(embed_dim=(16, 32, 48), partial_dim=(4, 40, 8))


def test_reset_classifier_and_pooling():
    model = timm.create_model("shvit_s1_224", **FIXTURE_ARCH).eval()
    x = torch.randn(2, 3, 64, 64)
    model.reset_classifier(7)
    assert model.get_classifier().out_features == 7 and model(x).shape == (2, 7)
    assert not model.head.bn.training  # a new head follows the model's mode
    model.reset_classifier(0)
    assert model(x).shape == (2, 96)
    model.reset_classifier(0, "")
    assert model(x).shape == (2, 96, 1, 1)
    model.reset_classifier(3, "max")
    assert model(x).shape == (2, 3)


def test_data_config_and_sources():
    for name in OFFICIAL_PARAMS:
        model = timm.create_model(name)
        cfg = resolve_data_config({}, model=model)
        res = 256 if name.endswith("256") else 224
        assert cfg["input_size"] == (3, res, res)
        assert cfg["crop_pct"] == 0.875 and cfg["interpolation"] == "bicubic"
        assert cfg["mean"] == (0.485, 0.456, 0.406) and cfg["std"] == (0.229, 0.224, 0.225)
        variant = name.split("_")[1]
        assert model.pretrained_cfg["url"] == (
            f"https://github.com/ysj9909/SHViT/releases/download/v1.0/shvit_{variant}.pth")
        timm_cfg = timm.models.get_pretrained_cfg(shvit.FAMILY.timm_equivalents[name])
        assert timm_cfg.input_size == model.pretrained_cfg["input_size"]
        assert timm_cfg.first_conv == model.pretrained_cfg["first_conv"]
        assert timm_cfg.classifier == model.pretrained_cfg["classifier"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # our names never replace timm's shvit_sN
        assert timm.models.get_pretrained_cfg("shvit_s1").hf_hub_id == "timm/shvit_s1.in1k"

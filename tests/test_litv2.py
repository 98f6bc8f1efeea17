"""LITv2 behaviour beyond the shared conformance and golden suites: exact official parameter counts
(variants, alpha-ablation tags and the non-default golden fixtures), the official checkpoint
layouts through the filter (classifier and mmdet / mmseg dense backbones), HiLo's head split and
padding semantics against a naive loop, DTM against a naive bilinear deformable convolution, any
input size and batch size, the Triton path, and clear input errors."""
import functools
import os
import re

import pytest
import torch
import torch.nn.functional as F
import timm
from timm.data import resolve_data_config

import ops
from backbones import litv2
from conftest import GOLDEN
from golden import build_from_fixture, load_fixture, model_outputs

# Exact counts of the alpha-ablation releases (counted by running the official classification code).
ALPHA_TAG_PARAMS = {  # tag: (params, Lo-Fi heads, Hi-Fi heads of the 12-head stage 3)
    "in1k_alpha0": (28_089_760, 0, 12),
    "in1k_alpha0_2": (27_844_000, 2, 10),
    "in1k_alpha0_4": (27_696_544, 4, 8),
    "in1k_alpha0_5": (27_647_392, 6, 6),
    "in1k_alpha0_7": (27_696_544, 8, 4),
    "in1k_alpha0_9": (27_844_000, 10, 2),
    "in1k_alpha1": (28_089_760, 12, 0),
}

SMALL = dict(embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8))


def _small(name="litv2_small_224", **kwargs):
    torch.manual_seed(0)
    model = timm.create_model(name, **dict(SMALL, num_classes=10, **kwargs))
    _randomize(model)
    return model.eval()


def _randomize(model, seed=0):
    """Non-trivial weights everywhere: biases, norms, BN statistics and DTM offsets of ~1 px."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "conv_offset" in name:
                p.normal_(0, 0.5 if name.endswith("bias") else 0.2, generator=g)
            elif p.dim() == 1:
                p.normal_(1. if re.search(r"norm\d?\.weight$", name) else 0., 0.1, generator=g)
            else:
                p.normal_(0, p[0].numel() ** -0.5, generator=g)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.normal_(0, 0.2, generator=g)
            elif name.endswith("running_var"):
                b.uniform_(0.5, 1.5, generator=g)


def _to_official(zoo_sd):
    """Zoo keys -> the official classification keys, written independently of the filter."""
    rules = [
        (r"^stem\.", lambda m: "patch_embed."),
        (r"^stages\.(\d+)\.downsample\.dconv\.", lambda m: f"layers.{int(m[1]) - 1}.downsample.dconv."),
        (r"^stages\.(\d+)\.downsample\.norm\.",
         lambda m: f"layers.{int(m[1]) - 1}.downsample.norm_layer."),
        (r"^stages\.(\d+)\.blocks\.(\d+)\.mlp\.dwconv\.",
         lambda m: f"layers.{m[1]}.blocks.{m[2]}.mlp.dwconv.dwconv."),
        (r"^stages\.(\d+)\.blocks\.(\d+)\.", lambda m: f"layers.{m[1]}.blocks.{m[2]}."),
        (r"^head\.fc\.", lambda m: "head."),
    ]
    out = {}
    for key, value in zoo_sd.items():
        for pattern, repl in rules:
            key, n = re.subn(pattern, repl, key)
            if n:
                break
        out[key] = value
    return out


# ----------------------------------------------------------------------------- parameter counts



@pytest.mark.parametrize("tag", sorted(ALPHA_TAG_PARAMS))
def test_alpha_tags_build_their_own_architecture(tag):
    """`litv2_small_224.in1k_alpha0_5` etc. carry alpha: the head split and the l_* / h_* shapes
    (and so the parameter count) of the official ablation model."""
    params, lofi, hifi = ALPHA_TAG_PARAMS[tag]
    model = timm.create_model(f"litv2_small_224.{tag}")
    assert sum(p.numel() for p in model.parameters()) == params
    attn = model.stages[2].blocks[0].attn
    assert (attn.lofi_heads, attn.hifi_heads) == (lofi, hifi)
    sd = model.state_dict()
    assert ("stages.2.blocks.0.attn.l_q.weight" in sd) == (lofi > 0)
    assert ("stages.2.blocks.0.attn.h_qkv.weight" in sd) == (hifi > 0)
    if lofi:
        assert sd["stages.2.blocks.0.attn.l_proj.weight"].shape == (32 * lofi, 32 * lofi)
    if hifi:
        assert sd["stages.2.blocks.0.attn.h_qkv.weight"].shape == (96 * hifi, 384)
    # stage 4 (s=1) is plain global attention through the Lo-Fi weights whatever alpha is
    last = model.stages[3].blocks[0].attn
    assert (last.lofi_heads, last.hifi_heads) == (24, 0)
    assert model.pretrained_cfg["tag"] == tag and model.pretrained_cfg["url"].endswith(".pth")
    assert model.pretrained_model_args == {"alpha": litv2.ALPHA_TAGS[tag][0]}
    # the same through pretrained_cfg= (timm's other way of naming a tag)
    other = timm.create_model("litv2_small_224", pretrained_cfg=tag, **SMALL)
    assert other.stages[2].blocks[0].attn.lofi_heads == int(4 * litv2.ALPHA_TAGS[tag][0])


def test_default_tag_is_the_main_release():
    model = timm.create_model("litv2_small_224", **SMALL)
    assert model.pretrained_cfg["tag"] == "in1k"
    assert model.pretrained_cfg["url"].endswith("/v1.0/litv2_s.pth")
    assert model.stages[2].blocks[0].attn.lofi_heads == int(4 * 0.9)


# ----------------------------------------------------------------------------- HiLo

@pytest.mark.parametrize("heads, alpha, ws, split", [
    (3, 0.9, 2, (2, 1)),     # the golden fixture's stage 3: int(2.7) = 2, round() would give 3
    (12, 0.9, 2, (10, 2)),   # LITv2-S/M stage 3
    (16, 0.9, 2, (14, 2)),   # LITv2-B stage 3
    (4, 0.7, 2, (2, 2)),     # int(2.8) = 2
    (12, 0.7, 2, (8, 4)),    # 12 * 0.7 = 8.3999... -> 8
    (12, 0.4, 2, (4, 8)),
    (6, 0.0, 2, (0, 6)),
    (6, 1.0, 2, (6, 0)),
    (24, 0.9, 1, (24, 0)),   # window size 1: every head Lo-Fi (global attention)
    (8, 0.0, 1, (8, 0)),
])
def test_hilo_head_split_truncates(heads, alpha, ws, split):
    assert litv2.hilo_head_split(heads, alpha, ws) == split
    attn = litv2.HiLoAttention(heads * 4, heads, ws, alpha)
    assert (attn.lofi_heads, attn.hifi_heads) == split
    names = {n.split(".")[0] for n, _ in attn.named_parameters()}
    assert names == ({"l_q", "l_kv", "l_proj"} if split[0] else set()) | (
        {"h_qkv", "h_proj"} if split[1] else set())
    if split[0]:
        assert attn.l_kv.weight.shape == (2 * 4 * split[0], heads * 4)
    if split[1]:
        assert attn.h_proj.weight.shape == (4 * split[1], 4 * split[1])


def _naive_hilo(attn, x):
    """HiLo from the paper and the official dense code, one window / query at a time: zero-pad
    the input to a multiple of s, Hi-Fi softmax inside each s x s window of the padded map
    (padded tokens unmasked), Lo-Fi against keys / values of the block means of the padded map,
    crop, h_proj / l_proj, Hi-Fi channels first."""
    B, H, W, C = x.shape
    s, d, scale = attn.window_size, attn.head_dim, attn.scale
    Hp, Wp = -(-H // s) * s, -(-W // s) * s
    xp = torch.zeros(B, Hp, Wp, C)
    xp[:, :H, :W] = x
    outs = []
    if attn.hifi_heads:
        hd = attn.hifi_dim
        qkv = attn.h_qkv(xp)
        q, k, v = qkv[..., :hd], qkv[..., hd:2 * hd], qkv[..., 2 * hd:]
        out = torch.zeros(B, Hp, Wp, hd)
        for b in range(B):
            for wy in range(Hp // s):
                for wx in range(Wp // s):
                    ys, xs = slice(wy * s, (wy + 1) * s), slice(wx * s, (wx + 1) * s)
                    for m in range(attn.hifi_heads):
                        cs = slice(m * d, (m + 1) * d)
                        qq, kk, vv = (t[b, ys, xs, cs].reshape(-1, d) for t in (q, k, v))
                        a = torch.softmax((qq @ kk.T) * scale, -1) @ vv
                        out[b, ys, xs, cs] = a.reshape(s, s, d)
        outs.append(attn.h_proj(out[:, :H, :W]))
    if attn.lofi_heads:
        ld = attn.lofi_dim
        q = attn.l_q(x).reshape(B, H * W, ld)
        pooled = xp.reshape(B, Hp // s, s, Wp // s, s, C).mean((2, 4)).reshape(B, -1, C)
        kv = attn.l_kv(pooled)
        k, v = kv[..., :ld], kv[..., ld:]
        out = torch.zeros(B, H * W, ld)
        for b in range(B):
            for m in range(attn.lofi_heads):
                cs = slice(m * d, (m + 1) * d)
                out[b, :, cs] = torch.softmax((q[b, :, cs] @ k[b, :, cs].T) * scale, -1) @ v[b, :, cs]
        outs.append(attn.l_proj(out.reshape(B, H, W, ld)))
    return torch.cat(outs, -1)


@pytest.mark.parametrize("heads, alpha, ws", [(3, 0.9, 2), (4, 0.5, 3), (2, 0.0, 2), (2, 1.0, 2),
                                              (2, 0.5, 1)])
@pytest.mark.parametrize("size", [(4, 6), (5, 7), (1, 3)])
def test_hilo_matches_a_naive_loop(heads, alpha, ws, size):
    """Includes non-divisible grids (padding before the projections: padded keys are the biases,
    unmasked; pooling divides by s*s) and Hi-Fi-only / Lo-Fi-only splits."""
    torch.manual_seed(0)
    attn = litv2.HiLoAttention(heads * 8, heads, ws, alpha)
    for p in attn.parameters():  # large biases so that padded tokens matter
        torch.nn.init.normal_(p, std=0.4)
    x = torch.randn(2, *size, heads * 8)
    with torch.no_grad():
        got = attn(x)
        want = _naive_hilo(attn, x)
    assert got.shape == want.shape == x.shape
    assert (got - want).abs().max() < 1e-5


def test_hifi_branch_runs_through_the_window_op_on_an_exact_grid(monkeypatch):
    """Hi-Fi calls ops.window_attention_2d with s x s windows on an already padded (divisible)
    grid; Lo-Fi with s=1 calls it with one window (global attention)."""
    calls = []
    original = litv2.ops.window_attention_2d

    def spy(q, k, v, window_size=None, **kw):
        calls.append((tuple(q.shape), window_size))
        return original(q, k, v, window_size, **kw)

    monkeypatch.setattr(litv2.ops, "window_attention_2d", spy)
    mixed = litv2.HiLoAttention(24, 3, 2, 0.9)
    global_ = litv2.HiLoAttention(24, 3, 1, 0.9)
    with torch.no_grad():
        mixed(torch.randn(1, 5, 7, 24))
        global_(torch.randn(1, 5, 7, 24))
    assert calls == [((1, 1, 6, 8, 8), (2, 2)), ((1, 3, 5, 7, 8), None)]


def test_padding_before_projection_differs_from_zero_vector_padding():
    """The official dense HiLo pads the normed input (padded keys = qkv bias), not q/k/v with zero
    vectors (the op's padding='zeros'): on an odd grid the two disagree."""
    torch.manual_seed(0)
    attn = litv2.HiLoAttention(16, 2, 2, 0.0)
    torch.nn.init.normal_(attn.h_qkv.bias, std=1.0)
    x = torch.randn(1, 5, 5, 16)
    with torch.no_grad():
        got = attn(x)
        q, k, v = attn.h_qkv(x).view(1, 5, 5, 3, 2, 8).permute(3, 0, 4, 1, 2, 5).unbind(0)
        zero_vec = ops.window_attention_2d(q, k, v, (2, 2), padding="zeros", scale=attn.scale)
        zero_vec = attn.h_proj(zero_vec.permute(0, 2, 3, 1, 4).reshape(1, 5, 5, 16))
    assert (got - _naive_hilo(attn, x)).abs().max() < 1e-5
    assert (got - zero_vec).abs().max() > 1e-3


# ----------------------------------------------------------------------------- DTM

def _naive_deform_conv(x, offset, weight, bias):
    """DCNv1, kernel 2, stride 2, padding 0: tap (i, j) of output (y, x) samples the input
    bilinearly at (2y + i + dy, 2x + j + dx) with dy, dx from offset channels 2k, 2k + 1
    (k = 2i + j); 0 outside (-1, H) x (-1, W), out-of-image corners contribute 0."""
    B, C, H, W = x.shape
    Ho, Wo = offset.shape[2:]
    out = torch.zeros(B, weight.shape[0], Ho, Wo, dtype=torch.float64)
    x, weight = x.double(), weight.double()

    def sample(b, py, px):
        if not (-1 < py < H and -1 < px < W):
            return torch.zeros(C, dtype=torch.float64)
        y0, x0 = int(torch.floor(torch.tensor(py))), int(torch.floor(torch.tensor(px)))
        val = torch.zeros(C, dtype=torch.float64)
        for yy, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
            for xx, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
                if 0 <= yy < H and 0 <= xx < W:
                    val += wy * wx * x[b, :, yy, xx]
        return val

    for b in range(B):
        for y in range(Ho):
            for xo in range(Wo):
                acc = bias.double().clone()
                for i in range(2):
                    for j in range(2):
                        k = 2 * i + j
                        py = 2 * y + i + float(offset[b, 2 * k, y, xo])
                        px = 2 * xo + j + float(offset[b, 2 * k + 1, y, xo])
                        acc += weight[:, :, i, j] @ sample(b, py, px)
                out[b, :, y, xo] = acc
    return out.float()


def test_dtm_matches_a_naive_bilinear_deformable_conv():
    torch.manual_seed(0)
    dtm = litv2.DeformableTokenMerging(3, 4).eval()
    with torch.no_grad():
        dtm.dconv.conv_offset.weight.normal_(0, 0.8)  # offsets of several px: some out of bounds
        dtm.dconv.conv_offset.bias.normal_(0, 1.5)
        dtm.norm.running_mean.normal_(0, 0.2)
        dtm.norm.running_var.uniform_(0.5, 1.5)
    x = torch.randn(2, 5, 7, 3)  # NHWC, odd sizes: floor to 2x3
    xc = x.permute(0, 3, 1, 2)
    with torch.no_grad():
        offset = dtm.dconv.conv_offset(xc)
        got = dtm.dconv(xc)
        want = _naive_deform_conv(xc, offset, dtm.dconv.weight, dtm.dconv.bias)
        full = dtm(x)
    lo, hi = offset.min().item(), offset.max().item()
    assert lo < -2 and hi > 2, (lo, hi)  # the case does exercise out-of-bounds samples
    assert got.shape == (2, 4, 2, 3)
    assert (got - want).abs().max() < 1e-5
    expect_full = F.gelu(dtm.norm(want)).permute(0, 2, 3, 1)
    assert (full - expect_full).abs().max() < 1e-5


def test_dtm_init_starts_as_a_plain_strided_conv():
    dtm = litv2.DeformableTokenMerging(4, 8)
    assert not dtm.dconv.conv_offset.weight.any() and not dtm.dconv.conv_offset.bias.any()
    x = torch.randn(1, 4, 6, 6)
    with torch.no_grad():
        plain = F.conv2d(x, dtm.dconv.weight, dtm.dconv.bias, stride=2)
        assert (dtm.dconv(x) - plain).abs().max() < 1e-5


# ----------------------------------------------------------------------------- checkpoints

def test_filter_maps_official_keys_and_passes_zoo_layout_through():
    config, official, _ = load_fixture(GOLDEN, "litv2")
    model = build_from_fixture(litv2.FAMILY, config, official)
    zoo = model.state_dict()
    assert _to_official(zoo).keys() == official.keys()  # one-to-one layouts
    direct = litv2.checkpoint_filter_fn(official, model)
    assert direct.keys() == zoo.keys()
    assert torch.equal(direct["stages.1.downsample.dconv.conv_offset.weight"],
                       official["layers.0.downsample.dconv.conv_offset.weight"])
    assert torch.equal(direct["stages.3.downsample.norm.running_var"],
                       official["layers.2.downsample.norm_layer.running_var"])
    assert torch.equal(direct["stages.0.blocks.1.mlp.dwconv.weight"],
                       official["layers.0.blocks.1.mlp.dwconv.dwconv.weight"])
    assert torch.equal(direct["stem.proj.weight"], official["patch_embed.proj.weight"])
    assert torch.equal(direct["head.fc.bias"], official["head.bias"])
    for wrapped in ({"model": official, "optimizer": {"state": {}}, "epoch": 299,
                     "max_accuracy": 82.0},
                    {"model": {"module." + k: v for k, v in official.items()}},
                    {"state_dict": {"module." + k: v for k, v in official.items()}}):
        out = litv2.checkpoint_filter_fn(wrapped, model)
        assert out.keys() == direct.keys() and all(torch.equal(out[k], direct[k]) for k in out)
    passed = litv2.checkpoint_filter_fn(zoo, model)
    assert passed.keys() == zoo.keys() and all(passed[k] is zoo[k] for k in zoo)
    # and back: official -> zoo -> official is the identity
    assert all(torch.equal(v, official[k]) for k, v in _to_official(direct).items())


def _mm_checkpoint(official, norms, widths):
    return {"meta": {"epoch": 12}, "state_dict": {
        **{"backbone." + k: v for k, v in official.items() if not k.startswith(("head.", "norm."))},
        **{f"backbone.norm{i}.weight": torch.full((widths[i],), 2.0 + i) for i in norms},
        **{f"backbone.norm{i}.bias": torch.full((widths[i],), 0.5) for i in norms},
        "neck.lateral_convs.0.conv.weight": torch.zeros(256, widths[1], 1, 1),
        "bbox_head.retina_cls.weight": torch.zeros(720, 256, 3, 3),
        "decode_head.conv_seg.weight": torch.zeros(150, 128, 1, 1)}}


@pytest.mark.parametrize("kind, norms", [("detection", (1, 2, 3)), ("segmentation", (0, 1, 2, 3))])
def test_dense_backbone_checkpoints_load_and_normalise_features(kind, norms):
    """mmdet (norm1..3, none on stage 0) and mmseg (norm0..3) files: `backbone.` keys beside neck
    and heads; the official classification checkpoint loads too, its norms left fresh."""
    config, official, io = load_fixture(GOLDEN, "litv2")
    path = litv2._OFFICIAL_CLASSES[kind]
    dense = litv2.create_from_official(config["kwargs"], path).eval()
    assert dense.num_classes == 0 and isinstance(dense.norm, torch.nn.Identity)
    widths = (12, 24, 48, 96)
    assert [type(n).__name__ for n in dense.feature_norms] == [
        "LayerNorm" if i in norms else "Identity" for i in range(4)]
    dense.load_state_dict(litv2.checkpoint_filter_fn(_mm_checkpoint(official, norms, widths), dense),
                          strict=True)
    with torch.no_grad():
        feats = dense.forward_intermediates(io["input"], intermediates_only=True)
    for i, feat in enumerate(feats):
        want = io[f"features.{i}"]
        if i in norms:
            want = F.layer_norm(want.permute(0, 2, 3, 1), (widths[i],), torch.full((widths[i],), 2.0 + i),
                                torch.full((widths[i],), 0.5)).permute(0, 3, 1, 2)
        assert (feat - want).abs().max() < 1e-4, i
    fresh = litv2.create_from_official(config["kwargs"], path)
    fresh.load_state_dict(litv2.checkpoint_filter_fn({"model": official}, fresh), strict=True)
    assert torch.equal(fresh.feature_norms[3].weight, torch.ones(96))
    assert torch.equal(fresh.stages[3].blocks[0].attn.l_q.weight,
                       official["layers.3.blocks.0.attn.l_q.weight"])


def test_zoo_feature_norms_kwarg():
    det = timm.create_model("litv2_small_224", feature_norms="detection", **SMALL)
    seg = timm.create_model("litv2_small_224", feature_norms="segmentation", **SMALL)
    assert isinstance(det.feature_norms[0], torch.nn.Identity)
    assert all(isinstance(n, torch.nn.LayerNorm) for n in det.feature_norms[1:])
    assert all(isinstance(n, torch.nn.LayerNorm) for n in seg.feature_norms)
    assert timm.create_model("litv2_small_224", **SMALL).feature_norms is None
    # True: one norm per stage, every stage (what feature_norms=True means in every family)
    every = timm.create_model("litv2_small_224", feature_norms=True, **SMALL)
    assert [n.normalized_shape for n in every.feature_norms] == [(16,), (32,), (64,), (128,)]
    assert timm.create_model("litv2_small_224", feature_norms=False, **SMALL).feature_norms is None
    picked = timm.create_model("litv2_small_224", feature_norms=(1, -1), **SMALL)
    assert [type(n).__name__ for n in picked.feature_norms] == ["Identity", "LayerNorm",
                                                                 "Identity", "LayerNorm"]
    with pytest.raises(ValueError, match="feature_norms"):
        timm.create_model("litv2_small_224", feature_norms="mmdet", **SMALL)
    feats = timm.create_model("litv2_small_224", features_only=True, feature_norms="detection",
                              **SMALL)
    assert feats(torch.randn(1, 3, 64, 64))[0].shape == (1, 16, 16, 16)


def test_golden_harness_adds_the_detection_backbone_tensors():
    """The `lofi_only_det` fixture's det_input (90x122: stem padding, DTM flooring, HiLo padding)
    goes through the shared harness as `det_features.i`, raw stage outputs of the same model."""
    config, official, io = load_fixture(GOLDEN, "litv2/lofi_only_det")
    model = build_from_fixture(litv2.FAMILY, config, official)
    inputs = {"input": io["input"], "det_input": io["det_input"]}
    with torch.no_grad():
        out = model_outputs(model, inputs, set(io) - set(inputs))
        plain = model_outputs(model, {"input": io["input"]}, {"logits", "features.0"})
    assert not any(k.startswith("det_") for k in plain)
    for i in range(4):
        assert out[f"det_features.{i}"].shape == io[f"det_features.{i}"].shape
        assert (out[f"det_features.{i}"] - io[f"det_features.{i}"]).abs().max() < 1e-4


NONDEFAULT_FIXTURES = ("litv2_nondefault", "litv2_det_nondefault", "litv2_seg_nondefault")


@pytest.mark.parametrize("fixture", NONDEFAULT_FIXTURES)
def test_nondefault_fixture_param_count_is_official(fixture):
    """The official class at non-default arguments (tests/golden/make/litv2.py counted its
    parameters): the zoo model create_from_official builds has exactly as many, in the same
    per-stage layout (one-to-one keys after the filter)."""
    config, official, _ = load_fixture(GOLDEN, fixture)
    model = litv2.create_from_official(config["kwargs"], config["official_class"])
    assert sum(p.numel() for p in model.parameters()) == config["param_count"]
    assert sum(v.numel() for k, v in official.items()
               if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))) == \
        config["param_count"]
    assert len(model.stages) == len(config["kwargs"]["depths"])


def test_official_drop_rate_and_norm_layer():
    """drop_rate reaches the ConvFFNs only (the classifier's pos_drop is never called);
    norm_layer is any callable (used for every token norm), never a name."""
    kw = dict(embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 4], local_ws=[0, 0, 2, 1],
              drop_rate=0.3, norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6))
    model = litv2.create_from_official(kw)
    assert model.stem.drop.p == 0 and model.stages[2].blocks[0].mlp.drop.p == 0.3
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and all(m.eps == 1e-6 for m in norms)
    dense = litv2.create_from_official(kw, litv2._OFFICIAL_CLASSES["segmentation"])
    assert all(n.eps == 1e-6 for n in dense.feature_norms)
    with pytest.raises(ValueError, match="norm_layer"):
        litv2.create_from_official(dict(kw, norm_layer="LayerNorm"))
    # out_indices: stage numbers; negative ones select nothing officially
    det = litv2.create_from_official(dict(kw, out_indices=(-1, 0, 2)),
                                     litv2._OFFICIAL_CLASSES["detection"])
    assert [type(n).__name__ for n in det.feature_norms] == ["Identity", "Identity", "LayerNorm",
                                                            "Identity"]


def test_hilo_takes_an_empty_batch():
    for ws, alpha in ((2, 0.5), (3, 1.0), (1, 0.5)):
        attn = litv2.HiLoAttention(16, 2, ws, alpha)
        with torch.no_grad():
            assert attn(torch.randn(0, 5, 7, 16)).shape == (0, 5, 7, 16)


# ----------------------------------------------------------------------------- pretrained tags

def test_alpha_tag_loads_its_official_file_offline(tmp_path, monkeypatch):
    """A cached official-layout file for `in1k_alpha0_5` loads into the alpha=0.5 architecture
    through `timm.create_model(..., pretrained=True)` (no network: timm's cache path)."""
    from backbones._pretrained import cache_path_for
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    source = timm.create_model("litv2_small_224.in1k_alpha0_5", **SMALL)
    _randomize(source, seed=3)
    url = timm.models.get_pretrained_cfg("litv2_small_224.in1k_alpha0_5").url
    path = cache_path_for(url)
    assert os.path.basename(path) == "alpha_0.5.pth"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save({"model": _to_official(source.state_dict()), "epoch": 299}, path)
    loaded = timm.create_model("litv2_small_224.in1k_alpha0_5", pretrained=True, **SMALL)
    assert loaded.stages[2].blocks[0].attn.lofi_heads == 2  # int(4 * 0.5)
    want = source.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in loaded.state_dict().items())
    with pytest.raises(ValueError, match="alpha=0.5"):
        timm.create_model("litv2_small_224.in1k_alpha0_5", pretrained=True, alpha=0.9, **SMALL)
    # the default tag's file is not cached: its load fails, naming the model
    monkeypatch.setenv("BACKBONES_DOWNLOAD_TIMEOUT", "1")
    with pytest.raises(Exception, match="litv2_small_224"):
        timm.create_model("litv2_small_224", pretrained=True, **SMALL)


def test_data_config_matches_official_eval():
    for name, size, crop in (("litv2_small_224", 224, 0.875), ("litv2_base_384", 384, 1.0)):
        cfg = resolve_data_config({}, model=timm.create_model(name, **SMALL))
        assert cfg["input_size"] == (3, size, size)
        assert cfg["crop_pct"] == crop and cfg["interpolation"] == "bicubic"
        assert cfg["mean"] == (0.485, 0.456, 0.406) and cfg["std"] == (0.229, 0.224, 0.225)
    cfg = timm.models.get_pretrained_cfg("litv2_base_384.in1k")
    assert cfg.url == "https://github.com/ziplab/LITv2/releases/download/v1.0/litv2_b_384.pth"
    assert cfg.pool_size == (12, 12) and cfg.license == "apache-2.0"


# ----------------------------------------------------------------------------- sizes and API

def _expected_grids(h, w):
    h, w = -(-h // 4), -(-w // 4)  # the stem pads to a multiple of 4
    grids = [(h, w)]
    for _ in range(3):
        h, w = h // 2, w // 2  # DTM floors
        grids.append((h, w))
    return grids


@pytest.mark.parametrize("size", [(224, 224), (200, 232), (97, 131), (65, 33), (29, 29)])
def test_any_input_size(size):
    model = _small()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        final, feats = model.forward_intermediates(x)
        logits = model(x)
    for i, (feat, grid) in enumerate(zip(feats, _expected_grids(*size))):
        assert feat.shape == (1, 16 * 2 ** i, *grid)
    assert torch.isfinite(final).all() and logits.shape == (1, 10)


def test_stem_zero_pads_right_and_bottom():
    model = _small()
    x = torch.randn(1, 3, 90, 122)
    with torch.no_grad():
        assert torch.equal(model(x), model(F.pad(x, (0, 2, 0, 2))))


def test_odd_batch_sizes_run_and_match_per_sample():
    """The official DCN kernel asserts on odd batches >= 5 (im2col_step = batch // 2)."""
    model = _small()
    x = torch.randn(5, 3, 64, 96)
    with torch.no_grad():
        batched = model(x)
        single = torch.cat([model(x[i:i + 1]) for i in range(5)])
    assert (batched - single).abs().max() < 1e-4
    model.train()
    out = model(torch.randn(7, 3, 64, 64))
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model.stages[1].downsample.dconv.conv_offset.weight.grad.abs().sum() > 0


def test_features_only_shapes_and_strides():
    model = timm.create_model("litv2_base_224", features_only=True,
                              **dict(SMALL, embed_dim=32, num_heads=(1, 2, 4, 8)))
    assert model.feature_info.channels() == [32, 64, 128, 256]
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        feats = model(torch.randn(2, 3, 200, 232))
    assert [tuple(f.shape) for f in feats] == [(2, 32 * 2 ** i, *g)
                                              for i, g in enumerate(_expected_grids(200, 232))]
    sub = timm.create_model("litv2_small_224", features_only=True, out_indices=(1, 3), **SMALL)
    assert sub.feature_info.channels() == [32, 128]




def test_triton_path_matches_reference():
    """Hi-Fi windows and the global (s=1) stage through the fused kernel under the interpreter, on
    a grid that needs HiLo padding (stage-3 map 5x7)."""
    model = _small()
    x = torch.randn(1, 3, 90, 122)
    with torch.no_grad():
        with ops.use_backend("reference"):
            ref = model.forward_intermediates(x)
        with ops.use_backend("triton"):
            tri = model.forward_intermediates(x)
    assert (ref[0] - tri[0]).abs().max() < 1e-4
    for a, b in zip(ref[1], tri[1]):
        assert (a - b).abs().max() < 1e-4




def test_unsupported_and_invalid_options_are_refused():
    with pytest.raises(ValueError, match="attn_drop_rate|attention-probability"):
        timm.create_model("litv2_small_224", attn_drop_rate=0.1)
    with pytest.raises(ValueError, match="alpha"):
        timm.create_model("litv2_small_224", alpha=1.5, **SMALL)
    base = dict(embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 4], alpha=0.9)
    with pytest.raises(ValueError, match="local_ws"):
        litv2.create_from_official(base)  # the classifier's default local_ws=None crashes officially
    with pytest.raises(ValueError, match="has_msa=1"):
        litv2.create_from_official(dict(base, has_msa=[0, 1, 1, 1], local_ws=[0, 0, 2, 1]))
    with pytest.raises(ValueError, match="unknown official LITv2 class"):
        litv2.create_from_official(dict(base, local_ws=[0, 0, 2, 1]), "models/swin.py:Swin")
    with pytest.raises(ValueError, match="norm_layer"):
        litv2.create_from_official(dict(base, local_ws=[0, 0, 2, 1], norm_layer="BatchNorm2d"))
    # official defaults: alpha 0.5, dense local_ws [0, 0, 2, 1]; no-op kwargs accepted
    dense = litv2.create_from_official(
        dict(embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 4], ape=True, window_size=7,
             frozen_stages=-1, pretrain_img_size=800),
        "detection/mmdet/models/backbones/litv2.py:LITv2")
    assert dense.stages[2].blocks[0].attn.lofi_heads == 1  # int(2 * 0.5)
    assert dense.stages[2].blocks[0].attn.window_size == 2 and dense.stages[1].blocks[0].attn is None

"""HaloNet beyond the shared conformance suite: exact equality with timm's models and layer (the
only HaloNet reference there is), timm's border semantics against a loop-level definition, any
input size, the paper family's widths, timm's weights and cfgs, and clear errors."""
import math

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.layers import EcaModule
from timm.layers.halo_attn import HaloAttn
from timm.models.byoanet import model_cfgs as timm_byoa_cfgs
from timm.models.byobnet import ByoBlockCfg, ByoModelCfg, ByobNet

import ops
from backbones import PretrainedWeightsError, halonet
from backbones.halonet import HaloAttention

TWINS = sorted(halonet.FAMILY.timm_equivalents.items())
PAPER = {  # spec halonet.md: (block, halo, rv, rb, l3, df, res, params (M) "rebuilt here")
    "halonet_h0_256": (8, 3, 1.0, 0.5, 7, None, 256, 5.50),
    "halonet_h1_256": (8, 3, 1.0, 1.0, 10, None, 256, 8.10),
    "halonet_h2_256": (8, 3, 1.0, 1.25, 11, None, 256, 9.40),
    "halonet_h3_320": (10, 3, 1.0, 1.5, 12, 1024, 320, 11.84),
    "halonet_h4_384": (12, 2, 1.0, 3.0, 12, 1280, 384, 19.10),
    "halonet_h5_448": (14, 2, 2.5, 2.0, 23, 1536, 448, 30.72),
    "halonet_h6_512": (8, 4, 3.0, 2.75, 24, 1536, 512, 43.46),
    "halonet_h7_600": (10, 3, 4.0, 3.5, 26, 2048, 600, 67.43),
}


def _randomize_norms(model, seed=0):
    """timm zero-inits the last BN of every residual branch: with those weights the attention
    would not reach the output at all. Give every BN random affine parameters and statistics."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data = torch.rand(m.weight.shape, generator=g) + 0.5
            m.bias.data = torch.rand(m.bias.shape, generator=g) * 0.2 - 0.1
            m.running_mean.data = torch.rand(m.running_mean.shape, generator=g) * 0.2 - 0.1
            m.running_var.data = torch.rand(m.running_var.shape, generator=g) + 0.5
    return model


def _timm_and_zoo(name, twin, **kwargs):
    torch.manual_seed(0)
    ref = _randomize_norms(timm.create_model(twin, **kwargs)).eval()
    ours = timm.create_model(name, **kwargs).eval()
    ours.load_state_dict(halonet.checkpoint_filter_fn(ref.state_dict(), ours), strict=True)
    return ref, ours


def _image(size, batch=1, seed=1):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------- timm twins

@pytest.mark.parametrize("name,twin", TWINS)
def test_timm_twin_logits_and_features_match(name, twin):
    """timm's model with random weights, its state_dict loaded through the filter: logits and
    every feature level agree at the default size and at twice it (the next size timm accepts)."""
    ref, ours = _timm_and_zoo(name, twin)
    default = ours.pretrained_cfg["input_size"][-1]
    assert default == timm.models.get_pretrained_cfg(twin).input_size[-1]
    for size in (default, 2 * default):
        x = _image(size)
        with torch.no_grad():
            final_ref, feats_ref = ref.forward_intermediates(x)
            final, feats = ours.forward_intermediates(x)
            logits_ref, logits = ref.forward_head(final_ref), ours.forward_head(final)
        assert logits_ref.abs().max() > 1e-2  # the comparison is not vacuous
        assert (logits - logits_ref).abs().max() < 1e-5, (size, (logits - logits_ref).abs().max())
        assert len(feats) == len(feats_ref) == 5
        for a, b in zip(feats, feats_ref):
            assert a.shape == b.shape
            assert (a - b).abs().max() < 1e-5, size


def test_training_gradients_match_timm():
    """One training forward / backward of halonet26t: every parameter gradient equals timm's."""
    ref, ours = _timm_and_zoo("halonet26t_256", "halonet26t", num_classes=10)
    ref.train(), ours.train()
    x = _image(256, batch=2)
    for model in (ref, ours):
        model.zero_grad()
        F.cross_entropy(model(x), torch.tensor([1, 7])).backward()
    grads_ref = dict(ref.named_parameters())
    for n, p in ours.named_parameters():
        g_ref = grads_ref[n].grad
        assert torch.allclose(p.grad, g_ref, rtol=1e-4, atol=1e-6 * g_ref.abs().max() + 1e-9), n


def test_h1_is_timm_halonet_h1_key_for_key():
    ours, ref = timm.create_model("halonet_h1_256"), timm.create_model("halonet_h1")
    assert {k: v.shape for k, v in ours.state_dict().items()} == \
        {k: v.shape for k, v in ref.state_dict().items()}


def test_timm_registry_is_untouched():
    """Registering the zoo replaced none of timm's models or attention layers: timm's names still
    build timm's HaloAttn, and 'halo' in timm's factory is still timm's."""
    from timm.layers import get_attn
    assert get_attn("halo") is HaloAttn
    for _, twin in TWINS:
        model = timm.create_model(twin)
        assert type(model).__module__ == "timm.models.byobnet"
        layers = [m for m in model.modules() if isinstance(m, (HaloAttn, HaloAttention))]
        assert layers and all(type(m) is HaloAttn for m in layers)
    for name in halonet.FAMILY.timm_equivalents:
        model = timm.create_model(name)
        layers = [m for m in model.modules() if isinstance(m, (HaloAttn, HaloAttention))]
        assert layers and all(type(m) is HaloAttention for m in layers)


# --------------------------------------------------------------------- layer against timm's

LAYER_CASES = [
    dict(stride=1, block_size=4, halo_size=1),
    dict(stride=2, block_size=4, halo_size=2),                     # strided queries
    dict(stride=2, block_size=3, halo_size=1),                     # avg-pool fallback (odd block)
    dict(stride=2, block_size=4, halo_size=1, avg_down=True),      # avg-pool fallback (avg_down)
    dict(stride=1, block_size=4, halo_size=2, dim_head=6),         # d_qk != d_v
    dict(stride=1, block_size=4, halo_size=1, qk_ratio=0.5),
    dict(stride=1, block_size=4, halo_size=1, qkv_bias=True, scale_pos_embed=True),
    dict(stride=1, block_size=4, halo_size=1, num_heads=4),
    dict(stride=2, block_size=4, halo_size=1, num_heads=1, dim_head=12),  # strided, d_qk != d_v
    dict(stride=1, block_size=5, halo_size=2),                     # odd block, stride 1
    dict(stride=1, block_size=4, halo_size=0),                     # no halo
    dict(stride=2, block_size=4, halo_size=3, qk_ratio=0.75, qkv_bias=True, scale_pos_embed=True),
    dict(stride=1, block_size=4, halo_size=1, dim_out=None),       # dim_out defaults to dim
]


def _timm_layer_and_ours(dim=16, dim_out=24, num_heads=2, seed=0, **kw):
    if "dim_out" in kw:
        dim_out = kw.pop("dim_out")
    if "num_heads" in kw:
        num_heads = kw.pop("num_heads")
    torch.manual_seed(seed)
    ref = HaloAttn(dim, dim_out, num_heads=num_heads, **kw).eval()
    if kw.get("qkv_bias"):
        nn.init.normal_(ref.q.bias), nn.init.normal_(ref.kv.bias)
    ours = HaloAttention(dim, dim_out, num_heads=num_heads, **kw).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


@pytest.mark.parametrize("kw", LAYER_CASES, ids=lambda kw: "-".join(f"{k}{v}" for k, v in kw.items()))
def test_layer_equals_timm_halo_attn(kw):
    ref, ours = _timm_layer_and_ours(**dict(kw))
    bs = kw["block_size"]
    x = torch.randn(2, 16, 4 * bs, 2 * bs)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=1e-5)


def _naive_halo(layer, x, masked=False):
    """Loop-level definition of timm's halo attention (spec halonet.md, points 2-7), written
    without unfold or the rel->abs padding trick. Keys outside the image are zero keys / values
    that stay in the softmax with their relative logits, unless ``masked`` (what a masked kernel,
    e.g. lucidrains' halonet-pytorch, would do)."""
    B, _, H, W = x.shape
    nh, dq, dv = layer.num_heads, layer.dim_head_qk, layer.dim_head_v
    bs, h, win, s = layer.block_size, layer.halo_size, layer.win_size, layer.block_stride
    bq = bs // s
    q = layer.q(x)
    Hq, Wq = q.shape[-2:]
    q = q.view(B, nh, dq, Hq, Wq)
    kv = layer.kv(x).view(B, nh, dq + dv, H, W)
    rel_h, rel_w = layer.pos_embed.height_rel, layer.pos_embed.width_rel
    out = torch.zeros(B, nh, dv, Hq, Wq)
    for qy in range(Hq):
        for qx in range(Wq):
            by, bx, i, j = qy // bq, qx // bq, qy % bq, qx % bq
            qv = q[:, :, :, qy, qx]                                           # (B, nh, dq)
            logits, values = [], []
            for ki in range(win):
                for kj in range(win):
                    y, xx = by * bs - h + ki, bx * bs - h + kj
                    inside = 0 <= y < H and 0 <= xx < W
                    k = kv[:, :, :dq, y, xx] if inside else torch.zeros(B, nh, dq)
                    v = kv[:, :, dq:, y, xx] if inside else torch.zeros(B, nh, dv)
                    rel = (qv * rel_h[win - 1 + ki - i]).sum(-1) + (qv * rel_w[win - 1 + kj - j]).sum(-1)
                    qk = (qv * k).sum(-1)
                    logit = (qk + rel) * layer.scale if layer.scale_pos_embed else qk * layer.scale + rel
                    if masked and not inside:
                        logit = torch.full_like(logit, float("-inf"))
                    logits.append(logit)
                    values.append(v)
            attn = torch.stack(logits, -1).softmax(-1)                      # (B, nh, win²)
            out[:, :, :, qy, qx] = (attn[:, :, :, None] * torch.stack(values, 2)).sum(2)
    out = out.reshape(B, nh * dv, Hq, Wq)
    return F.avg_pool2d(out, 2, 2, ceil_mode=True) if layer.use_avg_pool else out


@pytest.mark.parametrize("kw,size", [
    (dict(stride=1, block_size=4, halo_size=1), (8, 8)),
    (dict(stride=2, block_size=4, halo_size=2), (8, 12)),
    (dict(stride=2, block_size=3, halo_size=1), (6, 6)),
    (dict(stride=1, block_size=4, halo_size=2, scale_pos_embed=True), (8, 4)),
    (dict(stride=1, block_size=4, halo_size=1), (7, 5)),       # zoo padding to 8 x 8
    (dict(stride=2, block_size=4, halo_size=1), (7, 9)),       # zoo padding, strided
    (dict(stride=2, block_size=3, halo_size=1), (7, 5)),       # zoo padding, avg-pool fallback
], ids=str)
def test_border_semantics_zero_keys_stay_in_the_softmax(kw, size):
    """The padded keys of the halo (and of the zoo's padding to a block multiple) are zero keys
    and zero values that take part in the softmax with their relative logits (timm): the layer
    equals the loop-level definition, and differs clearly from the masked variant."""
    _, layer = _timm_layer_and_ours(dim=8, dim_out=8, num_heads=2, **kw)
    x = torch.randn(1, 8, *size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = layer(x)
        unmasked, masked = _naive_halo(layer, x), _naive_halo(layer, x, masked=True)
    assert out.shape == unmasked.shape
    torch.testing.assert_close(out, unmasked, rtol=0, atol=2e-6)
    # Padding dilutes every border query: a masked implementation is a different model.
    assert (out - masked).abs().amax() > 0.05
    border = (out - masked).abs().amax(dim=1)[0]
    assert border[0].min() > 1e-3 and border[:, 0].min() > 1e-3


@pytest.mark.parametrize("stride", (1, 2))
@pytest.mark.parametrize("size", [(13, 13), (12, 9), (5, 16)])
def test_any_size_equals_timm_on_a_zero_padded_input(stride, size):
    """Off the block lattice the zoo pads to the next block multiple: without qkv bias that is
    timm's layer on the zero-padded input, cropped (ceil(size / stride))."""
    ref, ours = _timm_layer_and_ours(stride=stride, block_size=4, halo_size=2)
    x = torch.randn(1, 16, *size)
    Hp, Wp = (math.ceil(s / 4) * 4 for s in size)
    with torch.no_grad():
        expected = ref(F.pad(x, (0, Wp - size[1], 0, Hp - size[0])))
        expected = expected[:, :, :math.ceil(size[0] / stride), :math.ceil(size[1] / stride)]
        torch.testing.assert_close(ours(x), expected, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_triton_path_matches_reference():
    """The fused kernel (interpreted on the CPU) takes the layer's strided q / k / v views,
    strided queries and the padding: forward and gradients equal the reference."""
    _, layer = _timm_layer_and_ours(dim=16, dim_out=16, stride=2, block_size=4, halo_size=1)
    x = torch.randn(1, 16, 10, 10, requires_grad=True)
    results = []
    for backend in ("triton", "reference"):
        layer.zero_grad(), setattr(x, "grad", None)
        with ops.use_backend(backend):
            out = layer(x)
        out.square().sum().backward()
        results.append([out.detach(), x.grad] + [p.grad for p in layer.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())


# ----------------------------------------------------------------------------- whole models

@pytest.mark.parametrize("name,size", [("halonet26t_256", 200), ("haloregnetz_b_224", 97),
                                       ("halonet_h0_256", 130), ("halonet_h3_320", 96)])
def test_any_input_size(name, size):
    """timm accepts only multiples of 256 (224 for haloregnetz_b) and fails with an empty
    AssertionError elsewhere; the zoo runs any size, features at ceil(size / stride)."""
    torch.manual_seed(0)
    model = timm.create_model(name, features_only=True).eval()
    with torch.no_grad():
        feats = model(_image(size))
    for feat, red, chs in zip(feats, model.feature_info.reduction(), model.feature_info.channels()):
        assert feat.shape[1:] == (chs, math.ceil(size / red), math.ceil(size / red))
        assert torch.isfinite(feat).all()
    twin = halonet.FAMILY.timm_equivalents.get(name)
    if twin:
        with pytest.raises(AssertionError):
            timm.create_model(twin).eval()(_image(size))


def test_input_errors_are_clear():
    model = timm.create_model("halonet26t_256").eval()
    with pytest.raises(ValueError, match="unsqueeze"):
        model(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="in_chans"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(TypeError, match="floating"):
        model(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="NCHW"):
        model.forward_intermediates(torch.randn(1, 3, 64, 64), output_fmt="NHWC")


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_family_widths_and_params(name):
    """q / k width = base (8 heads, dim_head base / 8), value width = rv * base, block output
    rb * base, depths (3, 3, l3, 3), strided attention opening stages 2-4, final conv df."""
    block, halo, rv, rb, l3, df, res, params_m = PAPER[name]
    model = timm.create_model(name)
    assert model.pretrained_cfg["input_size"] == (3, res, res)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == params_m
    assert [len(s) for s in model.stages] == [3, 3, l3, 3]
    for base, stage in zip((64, 128, 256, 512), model.stages):
        for i, blk in enumerate(stage):
            attn = blk.self_attn
            assert isinstance(attn, HaloAttention)
            assert (attn.num_heads, attn.dim_head_qk, attn.dim_head_v) == (8, base // 8, rv * base / 8)
            assert (attn.block_size, attn.halo_size) == (block, halo)
            assert attn.block_stride == (2 if i == 0 and base > 64 else 1)
            assert blk.conv1_1x1.conv.out_channels == base
            assert blk.conv3_1x1.conv.weight.shape[:2] == (rb * base, rv * base)
    assert model.num_features == (df or rb * 512)


def test_untrained_models_say_so():
    for name in PAPER:
        assert not timm.is_model_pretrained(name)
    with pytest.raises(PretrainedWeightsError, match="no pretrained weights"):
        timm.create_model("halonet_h0_256", pretrained=True)


# ------------------------------------------------------------------------ weights and cfgs

@pytest.mark.parametrize("name,twin", [t for t in TWINS if t[1] != "halonet_h1"])
def test_cfgs_point_at_timms_weights_with_timms_preprocessing(name, twin):
    ours, ref = timm.models.get_pretrained_cfg(name), timm.models.get_pretrained_cfg(twin)
    assert ours.url == ref.url and ours.hf_hub_id == ref.hf_hub_id == f"timm/{twin}.{ref.tag}"
    assert ours.tag == ref.tag
    for field in ("input_size", "pool_size", "crop_pct", "crop_mode", "interpolation", "mean",
                  "std", "first_conv", "classifier", "num_classes", "license"):
        assert getattr(ours, field) == getattr(ref, field), field
    assert not ours.fixed_input_size and ours.min_input_size is None  # any size runs


def test_pretrained_loads_timms_checkpoint_files(tmp_path):
    """timm's release layout (.pth state dict, also wrapped) and the hub's model.safetensors load
    through pretrained=True with a local file and reproduce timm's logits."""
    ref, _ = _timm_and_zoo("eca_halonext26ts_256", "eca_halonext26ts")
    sd = ref.state_dict()
    files = {"release.pth": sd, "wrapped.pth": {"state_dict_ema": sd, "state_dict": {}, "epoch": 3}}
    for fname, obj in files.items():
        torch.save(obj, tmp_path / fname)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "model.safetensors"))
    x = _image(256)
    with torch.no_grad():
        expected = ref(x)
        for fname in list(files) + ["model.safetensors"]:
            model = timm.create_model("eca_halonext26ts_256", pretrained=True,
                                      pretrained_cfg_overlay=dict(file=str(tmp_path / fname)))
            assert (model.eval()(x) - expected).abs().max() < 1e-5, fname
        head = timm.create_model("eca_halonext26ts_256", pretrained=True, num_classes=5,
                                 pretrained_cfg_overlay=dict(file=str(tmp_path / "release.pth")))
        assert head(x).shape == (1, 5)


def test_filter_strips_wrappers_and_passes_timm_layout():
    model = timm.create_model("haloregnetz_b_224")
    sd = model.state_dict()
    for wrapped in (sd, {"model": {"module." + k: v for k, v in sd.items()}},
                    {"state_dict": {"_orig_mod." + k: v for k, v in sd.items()}}):
        out = halonet.checkpoint_filter_fn(wrapped, model)
        assert out.keys() == sd.keys()
    zeros = {k: torch.zeros_like(v) for k, v in sd.items()}
    out = halonet.checkpoint_filter_fn({"state_dict": zeros, "state_dict_ema": sd})
    assert out["stem.conv.weight"] is sd["stem.conv.weight"]


def test_create_from_official_builds_timms_architectures():
    ref, _ = _timm_and_zoo("sehalonet33ts_256", "sehalonet33ts")
    x = _image(256)
    expected = ref(x)
    builds = [halonet.create_from_official({}, "sehalonet33ts"),
              halonet.create_from_official({}, "timm/models/byoanet.py:sehalonet33ts"),
              halonet.create_from_official({"model_name": "sehalonet33ts"}),
              halonet.create_from_official({"cfg": timm_byoa_cfgs["sehalonet33ts"]}, "ByobNet")]
    for model in builds:
        model.load_state_dict(halonet.checkpoint_filter_fn(ref.state_dict(), model), strict=True)
        with torch.no_grad():
            assert (model.eval()(x) - expected).abs().max() < 1e-5
        assert all(type(m) is not HaloAttn for m in model.modules())
    small = halonet.create_from_official({"num_classes": 3, "in_chans": 1}, "halonet_h1")
    assert small(torch.randn(1, 1, 64, 64)).shape == (1, 3)
    with pytest.raises(ValueError, match="unknown HaloNet"):
        halonet.create_from_official({}, "resnet50")
    with pytest.raises(ValueError, match="only halo"):
        halonet.create_from_official({"cfg": timm_byoa_cfgs["botnet26t"]})


def _nondefault_cfg():
    """Every halo argument away from timm's released values, per block group: heads, qk_ratio,
    qkv_bias, scale_pos_embed, strided queries, the odd-block and avg_down pooling fallbacks,
    dim_head; plus ECA channel attention (the zoo swaps in its batch-safe copy)."""
    return ByoModelCfg(
        blocks=(
            ByoBlockCfg(type="bottle", d=1, c=32, s=1, gs=0, br=0.25),
            ByoBlockCfg(type="self_attn", d=2, c=64, s=2, gs=0, br=0.5),
            ByoBlockCfg(type="self_attn", d=1, c=96, s=2, gs=0, br=0.5,
                        self_attn_kwargs=dict(block_size=3, halo_size=1, num_heads=3)),
            ByoBlockCfg(type="self_attn", d=1, c=128, s=2, gs=0, br=0.5,
                        self_attn_kwargs=dict(block_size=2, halo_size=1, num_heads=2, dim_head=8,
                                              avg_down=True)),
        ),
        stem_chs=16, stem_type="tiered", stem_pool="maxpool", attn_layer="eca",
        self_attn_layer="halo",
        self_attn_kwargs=dict(block_size=4, halo_size=1, num_heads=4, qk_ratio=0.5, qkv_bias=True,
                              scale_pos_embed=True))


def test_nondefault_attention_arguments_match_timm():
    """A timm ByobNet with timm's HaloAttn at non-default attention arguments, and the zoo model
    create_from_official builds from the same cfg: same keys, same logits and features."""
    torch.manual_seed(0)
    ref = _randomize_norms(ByobNet(_nondefault_cfg(), num_classes=5)).eval()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.endswith(("q.bias", "kv.bias")):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)  # timm zero-inits conv biases
    ours = halonet.create_from_official({"cfg": _nondefault_cfg(), "num_classes": 5}).eval()
    ours.load_state_dict(halonet.checkpoint_filter_fn(ref.state_dict(), ours), strict=True)
    layers = [m for m in ours.modules() if isinstance(m, HaloAttention)]
    assert {(m.num_heads, m.block_size, m.halo_size, m.use_avg_pool, m.block_stride) for m in layers} \
        == {(4, 4, 1, False, 2), (4, 4, 1, False, 1), (3, 3, 1, True, 1), (2, 2, 1, True, 1)}
    assert all(m.q.bias is not None and m.scale_pos_embed for m in layers if m.num_heads == 4)
    n_eca = sum(type(m) is EcaModule for m in ref.modules())
    assert n_eca and sum(type(m) is halonet.EcaModuleAnyBatch for m in ours.modules()) == n_eca
    x = _image(96, batch=2)
    with torch.no_grad():
        final_ref, feats_ref = ref.forward_intermediates(x)
        final, feats = ours.forward_intermediates(x)
        logits_ref, logits = ref.forward_head(final_ref), ours.forward_head(final)
    assert logits_ref.abs().max() > 1e-2
    torch.testing.assert_close(logits, logits_ref, rtol=0, atol=1e-5)
    for a, b in zip(feats, feats_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    with torch.no_grad():
        assert ours(torch.randn(0, 3, 96, 96)).shape == (0, 5)


def test_batch_safe_eca_equals_timms():
    torch.manual_seed(0)
    ref = EcaModule(channels=48).eval()
    ours = halonet.EcaModuleAnyBatch(channels=48).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 48, 5, 7)
    assert torch.equal(ours(x), ref(x))
    assert ours(x[:0]).shape == (0, 48, 5, 7)

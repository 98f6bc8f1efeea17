"""CSWin behaviour beyond the shared conformance and golden suites: the official layouts the filter
takes, the official constructor's traps, any input size, and clear input errors."""
import pytest
import torch
import torch.nn.functional as F
import timm
from timm.data import resolve_data_config

import ops
from backbones import cswin
from conftest import GOLDEN
from golden import build_from_fixture, load_fixture

SMALL = dict(embed_dim=12, depths=(1, 2, 2, 1), num_heads=(4, 4, 8, 8), split_sizes=(1, 2, 7, None))


def _small(**kwargs):
    torch.manual_seed(0)
    return timm.create_model("cswin_tiny_224", **dict(SMALL, num_classes=10, **kwargs)).eval()


def test_filter_passes_zoo_layout_through_and_strips_wrappers():
    model = _small()
    zoo = model.state_dict()
    filtered = cswin.checkpoint_filter_fn(zoo, model)
    assert filtered.keys() == zoo.keys() and all(filtered[k] is zoo[k] for k in zoo)
    config, official, _ = load_fixture(GOLDEN, "cswin")
    direct = cswin.checkpoint_filter_fn(official)
    for wrapped in ({"state_dict_ema": official, "state_dict": {}, "epoch": 1},
                    {"model": {"module." + k: v for k, v in official.items()}},
                    {"state_dict": {"_orig_mod.module." + k: v for k, v in official.items()}}):
        out = cswin.checkpoint_filter_fn(wrapped)
        assert out.keys() == direct.keys()
    assert "stem.conv.weight" in direct and "head.fc.weight" in direct
    assert not any(k.startswith(("stage1_conv_embed", "merge", "stage1.")) for k in direct)


def test_filter_prefers_ema_weights():
    _, official, _ = load_fixture(GOLDEN, "cswin")
    zeros = {k: torch.zeros_like(v) for k, v in official.items()}
    out = cswin.checkpoint_filter_fn({"state_dict": zeros, "state_dict_ema": official})
    assert torch.equal(out["stem.conv.weight"], official["stage1_conv_embed.0.weight"])


def test_mmseg_upernet_checkpoint_loads_into_dense_backbone():
    """ADE20K releases are mmseg files: 'state_dict' with 'backbone.' keys beside the heads."""
    config, official, io = load_fixture(GOLDEN, "cswin_dense")
    mmseg = {"meta": {"epoch": 160}, "state_dict": {
        **{"backbone." + k: v for k, v in official.items()},
        "decode_head.conv_seg.weight": torch.zeros(150, 512, 1, 1),
        "auxiliary_head.conv_seg.weight": torch.zeros(150, 256, 1, 1)}}
    model = cswin.create_from_official(config["kwargs"], config["official_class"])
    model.load_state_dict(cswin.checkpoint_filter_fn(mmseg, model), strict=True)
    with torch.no_grad():
        feats = model.eval().forward_intermediates(io["input"], intermediates_only=True)
    for i, feat in enumerate(feats):
        assert (feat - io[f"features.{i}"]).abs().max() < 1e-4


def test_dense_features_through_features_only():
    """The zoo model with feature_norms=True and features_only reproduces the official dense
    backbone, weights loaded through the filter."""
    config, official, io = load_fixture(GOLDEN, "cswin_dense")
    kwargs = dict(SMALL, num_heads=(2, 4, 8, 16), feature_norms=True, features_only=True)
    torch.manual_seed(0)
    features = timm.create_model("cswin_tiny_224", **kwargs).eval()
    reference = build_from_fixture(cswin, config, official)
    features.model.load_state_dict(reference.state_dict(), strict=True)
    with torch.no_grad():
        for i, feat in enumerate(features(io["input"])):
            assert (feat - io[f"features.{i}"]).abs().max() < 1e-4


def test_official_resolution_equals_split_trap():
    """The official classifier builds a stage as one full-attention branch when its token grid at
    img_size equals its split (e.g. img_size 112, split 7 in stage 3)."""
    kwargs = dict(img_size=112, embed_dim=12, depth=[1, 1, 1, 1], split_size=[1, 2, 7, 7],
                  num_heads=[2, 2, 4, 4], num_classes=10)
    model = cswin.create_from_official(kwargs)
    attn = model.stages[2].blocks[0].attn
    assert attn.num_branches == 1 and attn.lepe[0].weight.shape == (48, 1, 3, 3)
    assert model.stages[1].blocks[0].attn.num_branches == 2
    assert model(torch.randn(1, 3, 112, 112)).shape == (1, 10)


def test_dense_class_widths_follow_head_ratio():
    """Official dense CSWin-L (heads 6,12,24,24) keeps stage 4 at 576 channels."""
    kwargs = dict(embed_dim=144, depth=[1, 1, 1, 1], split_size=[1, 2, 7, 7],
                  num_heads=[6, 12, 24, 24])
    model = cswin.create_from_official(kwargs, "segmentation/backbone/cswin_transformer.py:CSWin")
    assert [f["num_chs"] for f in model.feature_info] == [144, 288, 576, 576]
    assert model.num_classes == 0 and isinstance(model.norm, torch.nn.Identity)


@pytest.mark.parametrize("size", [(224, 224), (100, 150), (65, 33), (512, 384), (3, 3)])
def test_any_input_size(size):
    model = _small()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        out, feats = model.forward_intermediates(x)
    h = (size[0] - 3) // 4 + 1
    w = (size[1] - 3) // 4 + 1
    for i, feat in enumerate(feats):
        assert feat.shape[-2:] == (h, w)
        h, w = -(-h // 2), -(-w // 2)
    assert torch.isfinite(out).all()


def _explicit_stripe_attention(attn, x, front):
    """The official dense backbone's recipe, written out with plain tensor ops: q, k, v zero-padded
    after the projection with ``front(pad)`` rows / columns before the grid and the rest after,
    cut into stripes, attention with the padded keys left in the softmax, LePE (the depthwise conv
    of v) run on each stripe on its own, the padding cropped, the branches concatenated and
    projected. ``x``: (B, H, W, C)."""
    B, H, W, C = x.shape
    cb, heads, d = C // attn.num_branches, attn.branch_heads, attn.head_dim
    qkv = attn.qkv(x).view(B, H, W, 3, C)
    outs = []
    for b in range(attn.num_branches):
        wh, ww = attn.branch_window(b, H, W) or (H, W)
        ph, pw = (-H) % wh, (-W) % ww
        top, left = front(ph), front(pw)
        t = qkv[..., b * cb:(b + 1) * cb].permute(0, 3, 4, 1, 2)              # (B, 3, cb, H, W)
        t = F.pad(t, (left, pw - left, top, ph - top))
        nwy, nwx = (H + ph) // wh, (W + pw) // ww
        t = t.reshape(B, 3, cb, nwy, wh, nwx, ww).permute(1, 0, 3, 5, 2, 4, 6)
        q, k, v = t.reshape(3, B * nwy * nwx, cb, wh, ww)                      # one row per stripe
        lepe = F.conv2d(v, attn.lepe[b].weight, attn.lepe[b].bias, padding=1, groups=cb)

        def tokens(z):
            return z.reshape(-1, heads, d, wh * ww).transpose(-1, -2)

        logits = tokens(q) @ tokens(k).transpose(-1, -2) * attn.scale
        out = logits.softmax(-1) @ tokens(v) + tokens(lepe)                  # (N, heads, L, d)
        out = out.transpose(-1, -2).reshape(B, nwy, nwx, cb, wh, ww)
        out = out.permute(0, 1, 4, 2, 5, 3).reshape(B, nwy * wh, nwx * ww, cb)
        outs.append(out[:, top:top + H, left:left + W])
    return attn.proj(torch.cat(outs, dim=-1))


def _centred(pad):
    return pad // 2


def test_padding_is_centred(monkeypatch):
    """A grid that does not divide into stripes is padded with the first half of the padding
    (rounded down) before it: the layer equals the explicit pad / crop computation, and the
    explicit computation with the padding all behind or all in front (what a layer that ignores
    the centring would compute) is clearly different, so the comparison can fail."""
    attn = _small().stages[2].blocks[0].attn
    assert attn.num_branches == 2 and attn.split_size == 7
    # 11 x 16 with stripes of 7: (11, 7) windows pad W by 5 (2 before, 3 after), (7, 16) windows
    # pad H by 3 (1 before, 2 after): unequal halves on both axes.
    x = torch.randn(2, 11, 16, attn.dim, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out = attn(x)
        centred = _explicit_stripe_attention(attn, x, _centred)
        behind = _explicit_stripe_attention(attn, x, lambda pad: 0)
        in_front = _explicit_stripe_attention(attn, x, lambda pad: pad)
        ceil_half = _explicit_stripe_attention(attn, x, lambda pad: pad - pad // 2)
    torch.testing.assert_close(out, centred, rtol=0, atol=2e-5)
    for other in (behind, in_front, ceil_half):
        assert (other - centred).abs().max() > 1e-2
    # The layer's offset decides: padding everything behind (window offset 0) gives the
    # explicit 'behind' numbers, not the centred ones.
    monkeypatch.setattr(cswin.ops, "centered_window_offset", lambda grid, window: (0, 0))
    with torch.no_grad():
        shifted = attn(x)
    torch.testing.assert_close(shifted, behind, rtol=0, atol=2e-5)
    assert (shifted - centred).abs().max() > 1e-2


def test_padded_keys_are_not_masked():
    """Padded keys take part in the softmax (logit 0, value 0) as in the official dense backbone:
    masking them instead gives different numbers."""
    model = _small()
    x = torch.randn(1, 3, 100, 150)
    with torch.no_grad():
        base = model(x)
        original = ops.window_attention_2d

        def masked(*args, **kwargs):
            kwargs["padding"] = "masked"
            return original(*args, **kwargs)
        cswin.ops.window_attention_2d = masked
        try:
            changed = model(x)
        finally:
            cswin.ops.window_attention_2d = original
    assert (base - changed).abs().max() > 1e-4


@pytest.mark.parametrize("fixture", ["cswin_nondefault", "cswin_dense_nondefault"])
def test_nondefault_fixture_parameter_count_equals_official(fixture):
    """The official model of each non-default fixture and the zoo model built from its kwargs
    have the same number of parameters (the official state dict holds parameters only)."""
    config, official, _ = load_fixture(GOLDEN, fixture)
    official_count = sum(v.numel() for v in official.values())
    assert official_count == config["param_count"]
    model = cswin.create_from_official(config["kwargs"], config["official_class"])
    assert sum(p.numel() for p in model.parameters()) == official_count




def test_unsupported_options_are_refused():
    with pytest.raises(ValueError, match="attn_drop_rate"):
        timm.create_model("cswin_tiny_224", attn_drop_rate=0.1)
    with pytest.raises(ValueError, match="split_size"):
        cswin.create_from_official(dict(embed_dim=12, depth=[1, 1, 1, 1], num_heads=[2, 2, 2, 2]))
    with pytest.raises(ValueError, match="unknown official CSWin class"):
        cswin.create_from_official(dict(SMALL), "models/other.py:Net")


def test_data_config_matches_official_eval():
    for name, size, crop in (("cswin_tiny_224", 224, 0.9), ("cswin_base_384", 384, 1.0)):
        cfg = resolve_data_config({}, model=timm.create_model(name, **SMALL))
        assert cfg["input_size"] == (3, size, size)
        assert cfg["crop_pct"] == crop and cfg["interpolation"] == "bicubic"
    large_22k = timm.models.get_pretrained_cfg("cswin_large_224.in22k")
    assert large_22k.num_classes == 21841

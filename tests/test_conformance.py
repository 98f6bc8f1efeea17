"""The checks timm runs on its own models (tests/test_models.py), over every zoo model.

Parametrised over ``backbones.list_zoo_models()``, never over ``timm.list_models(module=...)``
(timm groups by module basename, which would mix in timm's own models of the same family name).
Inputs are reduced (timm uses 128 for backward and 96 for features) so the largest variants run
on two CPU cores; none is skipped.
"""
import fnmatch
import math

import pytest
import torch
import timm
import timm.optim
from timm.models._features import FeatureGetterNet

import backbones

MODELS = backbones.list_zoo_models()

# Exact parameter counts of the official implementations (ImageNet-1k heads), counted by running
# the official code: ../shared/specs/<family>.md, "params (counted)".
OFFICIAL_PARAM_COUNTS = {
    "biformer_tiny_224": 13_142_760,
    "biformer_small_224": 25_536_232,
    "biformer_base_224": 56_804_968,
    "biformer_stl_224": 28_372_552,
    "biformer_stl_nchw_224": 28_372_552,
    "cswin_tiny_224": 22_320_552,
    "cswin_small_224": 34_643_304,
    "cswin_base_224": 77_382_184,
    "cswin_base_384": 77_382_184,
    "cswin_large_224": 173_262_664,
    "cswin_large_384": 173_262_664,
    # HaloNet: no official code; H0-H7 = the spec's "rebuilt" column (paper's params to 0.1 M),
    # H1 and the timm hybrids = timm's own models (halonet.md).
    "halonet_h0_256": 5_500_952,
    "halonet_h1_256": 8_100_056,
    "halonet_h2_256": 9_404_312,
    "halonet_h3_320": 11_841_304,
    "halonet_h4_384": 19_101_976,
    "halonet_h5_448": 30_717_272,
    "halonet_h6_512": 43_456_792,
    "halonet_h7_600": 67_433_240,
    "halonet26t_256": 12_480_288,
    "sehalonet33ts_256": 13_691_712,
    "halonet50ts_256": 22_733_280,
    "eca_halonext26ts_256": 10_756_885,
    "haloregnetz_b_224": 11_680_072,
    "litv2_small_224": 27_844_000,
    "litv2_medium_224": 48_830_368,
    "litv2_base_224": 86_520_704,
    "litv2_base_384": 86_520_704,
    "shvit_s1_224": 6_330_808,
    "shvit_s2_224": 11_483_072,
    "shvit_s3_224": 14_245_273,
    "shvit_s4_256": 16_588_484,
}
# Non-default pretrained tags whose architecture differs (another head; LITv2-S alpha ablations:
# another Lo-Fi / Hi-Fi head split, counted with the official code).
OFFICIAL_TAG_PARAM_COUNTS = {
    "cswin_large_224.in22k": 197_292_337,
    "litv2_small_224.in1k_alpha0": 28_089_760,
    "litv2_small_224.in1k_alpha0_4": 27_696_544,
    "litv2_small_224.in1k_alpha0_5": 27_647_392,
    "litv2_small_224.in1k_alpha0_7": 27_696_544,
    "litv2_small_224.in1k_alpha1": 28_089_760,
}

BACKWARD_SIZE = 128
FEATURE_SIZE = 96


def _create(name, **kwargs):
    torch.manual_seed(0)  # two models of one name built by _create have identical weights
    return timm.create_model(name, **kwargs)


def _input(model_or_cfg, size=None, batch=1):
    cfg = model_or_cfg if isinstance(model_or_cfg, dict) else model_or_cfg.pretrained_cfg
    c, h, w = cfg["input_size"]
    if size is not None:
        h = w = size
    return torch.randn(batch, c, h, w, generator=torch.Generator().manual_seed(1))


def test_every_model_has_an_official_count():
    assert MODELS, "no zoo model is registered"
    assert sorted(OFFICIAL_PARAM_COUNTS) == MODELS


@pytest.mark.parametrize("name", MODELS)
def test_param_count_equals_official(name):
    model = _create(name)
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAM_COUNTS[name]


@pytest.mark.parametrize("name_tag", sorted(OFFICIAL_TAG_PARAM_COUNTS))
def test_tag_param_count_equals_official(name_tag):
    model = _create(name_tag)
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_TAG_PARAM_COUNTS[name_tag]


@pytest.mark.parametrize("name", MODELS)
def test_model_forward_and_grad_checkpointing(name):
    """timm test_model_forward: batch 1 at the cfg size, no NaN, grad checkpointing changes nothing."""
    model = _create(name).eval()
    x = _input(model)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (1, model.num_classes)
        assert not torch.isnan(out).any()
        model.set_grad_checkpointing()
        out2 = model(x)
    torch.testing.assert_close(out, out2, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_model_backward(name):
    """timm test_model_backward: 42 classes, batch 2, every parameter gets a gradient."""
    model = _create(name, num_classes=42)
    model.train()
    x = _input(model, BACKWARD_SIZE, batch=2)
    out = model(x)
    out.mean().backward()
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:10]}"
    assert out.shape == (2, 42)
    assert not torch.isnan(out).any()
    assert all(not torch.isnan(p.grad).any() for p in params.values())


@pytest.mark.parametrize("name", MODELS)
def test_model_default_cfgs(name):
    """timm test_model_default_cfgs: pool size, feature widths, reset_classifier, cfg keys."""
    model = _create(name).eval()
    cfg = model.pretrained_cfg
    assert model.num_classes == cfg["num_classes"] >= 0
    assert model.num_features > 0 and model.head_hidden_size > 0
    x = _input(model, batch=2)
    fmt = getattr(model, "output_fmt", "NCHW")
    with torch.no_grad():
        feat = model.forward_features(x)
        spatial = tuple(feat.shape[1:3]) if fmt == "NHWC" else tuple(feat.shape[-2:])
        channels = feat.shape[-1] if fmt == "NHWC" else feat.shape[1]
        assert spatial == tuple(cfg["pool_size"])
        assert channels == model.num_features
        pre_logits = model.forward_head(feat, pre_logits=True)
        assert pre_logits.shape == (2, model.head_hidden_size)
        logits = model.forward_head(feat)

        model.reset_classifier(0)
        assert model.num_classes == 0
        pooled = model(x)
        assert pooled.shape == pre_logits.shape
        torch.testing.assert_close(pooled, pre_logits)

        model.reset_classifier(0, "")
        unpooled = model(x)
        assert unpooled.dim() == 4
        torch.testing.assert_close(unpooled, feat)

        model.reset_classifier(7, "avg")  # None would keep the '' pooling, as in timm
        assert model(x).shape == (2, 7)
        assert model.get_classifier().out_features == 7

    headless = _create(name, num_classes=0, global_pool="").eval()
    assert headless.num_classes == 0
    state = model.state_dict()
    assert cfg["classifier"] + ".weight" in state
    assert cfg["first_conv"] + ".weight" in state
    assert logits.shape == (2, cfg["num_classes"])


@pytest.mark.parametrize("name", MODELS)
def test_model_forward_features(name):
    """timm test_model_forward_features / _intermediates_features: features_only, NCHW maps whose
    channels and strides match feature_info."""
    model = _create(name, features_only=True).eval()
    assert isinstance(model, FeatureGetterNet)
    expected_channels = model.feature_info.channels()
    expected_reduction = model.feature_info.reduction()
    assert len(expected_channels) >= 3
    x = _input(model, FEATURE_SIZE)
    with torch.no_grad():
        outs = model(x)
    assert len(outs) == len(expected_channels)
    for out, chs, red in zip(outs, expected_channels, expected_reduction):
        assert out.shape[1] == chs
        assert out.shape[2] <= math.ceil(FEATURE_SIZE / red) + 1
        assert out.shape[3] <= math.ceil(FEATURE_SIZE / red) + 1
        assert not torch.isnan(out).any()


@pytest.mark.parametrize("name", MODELS)
def test_features_only_out_indices(name):
    model = _create(name, features_only=True, out_indices=(1, -1)).eval()
    full = _create(name).eval()
    assert model.feature_info.channels() == [full.feature_info[1]["num_chs"],
                                             full.feature_info[-1]["num_chs"]]
    with pytest.raises(ValueError, match="out_indices"):
        _create(name, features_only=True, out_indices=(0, 9))


@pytest.mark.parametrize("name", MODELS)
def test_model_forward_intermediates(name):
    """timm test_model_forward_intermediates: one NCHW map per feature_info entry; the final output
    equals forward_features, with and without grad checkpointing; features_only agrees."""
    model = _create(name).eval()
    x = _input(model, FEATURE_SIZE)
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
        for info, feat in zip(model.feature_info, intermediates):
            assert feat.shape[1] == info["num_chs"]
            assert feat.shape[2] == math.ceil(FEATURE_SIZE / info["reduction"])
        model.set_grad_checkpointing()
        final2, intermediates2 = model.forward_intermediates(x)
        torch.testing.assert_close(final, final2)
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
    assert len(intermediates) == len(model.feature_info)
    for a, b in zip(intermediates[-2:], last_two):
        torch.testing.assert_close(a, b)

    features = _create(name, features_only=True).eval()
    with torch.no_grad():
        for a, b in zip(intermediates, features(x)):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", MODELS)
def test_group_matcher_and_no_weight_decay(name):
    model = _create(name)
    optimizer = timm.optim.create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05,
                                               layer_decay=0.9)
    n_in_groups = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
    assert n_in_groups == sum(p.numel() for p in model.parameters())
    assert len({g["lr_scale"] for g in optimizer.param_groups}) > 2  # layer decay saw the stages
    assert isinstance(model.no_weight_decay(), set)
    names = {n for n, _ in model.named_parameters()}
    for pattern in model.no_weight_decay():
        assert any(fnmatch.fnmatch(n, pattern) for n in names), pattern

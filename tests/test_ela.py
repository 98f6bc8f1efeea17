"""ELA family: the module's four versions, its clear errors, its use as a timm attention layer,
and the host networks (placement, the DeepLab code's identity option, timm's host weights loading
with only the ELA layers missing). The golden fixtures run in test_golden.py, timm's model checks
in test_conformance.py."""
import os
import re
import warnings
from functools import partial

import pytest
import timm
import torch
import torch.nn as nn
from safetensors.torch import load_file
from timm.models._efficientnet_blocks import InvertedResidual

from conftest import GOLDEN

import backbones.ela  # noqa: F401  (registers the family before backbones imports it)
from backbones.ela import (ELA, ElaBottleneck, ElaMobileNetV2, checkpoint_filter_fn,
                           create_from_official, ela_layer)

# version -> (k, Conv1d weight (C, C / groups, k) at C = 256, GroupNorm groups, params per channel)
PAPER = {"t": (5, 1, 32, 7), "b": (7, 1, 16, 9), "s": (5, 8, 16, 42), "l": (7, 8, 16, 58)}


def _record(module, seen, name, what="output"):
    """A forward hook keeping a copy of the module's first input or its output (returning None:
    a hook's return value would replace the output)."""
    def hook(_m, inputs, output):
        seen[name] = (inputs[0] if what == "input" else output).detach().clone()
    module.register_forward_hook(hook)


@pytest.mark.parametrize("version", sorted(PAPER))
def test_versions_match_the_paper_table(version):
    k, per_group, groups, per_channel = PAPER[version]
    m = ELA(256, version)
    assert tuple(m.conv.weight.shape) == (256, per_group, k)
    assert m.conv.padding == (k // 2,) and m.conv.bias is None
    assert m.gn.num_groups == groups and m.gn.eps == 1e-5
    assert sum(p.numel() for p in m.parameters()) == per_channel * 256
    assert sorted(m.state_dict()) == ["conv.weight", "gn.bias", "gn.weight"]


@pytest.mark.parametrize("version", sorted(PAPER))
@pytest.mark.parametrize("hw", [(7, 12), (12, 7), (1, 5), (3, 3)])
def test_shapes_and_direction_on_non_square_inputs(version, hw):
    """Output shape = input shape; the H gate varies along rows and the W gate along columns (a
    transposed map, the bug of a widely copied variant, fails this on non-square inputs)."""
    torch.manual_seed(0)
    m = ELA(32, version).eval()
    x = torch.randn(2, 32, *hw)
    with torch.no_grad():
        out = m(x)
        a_h = torch.sigmoid(m.gn(m.conv(x.mean(3))))
        a_w = torch.sigmoid(m.gn(m.conv(x.mean(2))))
    assert out.shape == x.shape
    torch.testing.assert_close(out, x * a_h[..., :, None] * a_w[..., None, :])


@pytest.mark.parametrize("channels, version, match", [
    (24, "t", r"ELA-T normalises with GroupNorm\(32\).*divisible by 32, got 24"),
    (24, "b", r"ELA-B .*GroupNorm\(16\).*got 24"),
    (24, "s", r"ELA-S .*GroupNorm\(16\)"),
    (48, "t", r"Versions that fit 48 channels: \['b', 's', 'l'\]"),
    (4, "l", r"ELA-L groups its Conv1d by C // 8 and needs at least 8 channels"),
])
def test_indivisible_channels_are_a_clear_error(channels, version, match):
    with pytest.raises(ValueError, match=match):
        ELA(channels, version)


def test_overrides_and_unknown_version():
    assert ELA(24, "b", num_groups=8).gn.num_groups == 8
    assert ELA(24, "s", num_groups=8).conv.groups == 3
    with pytest.raises(ValueError, match="unknown ELA version 'x'"):
        ELA(64, "x")
    with pytest.raises(ValueError, match="odd"):
        ELA(64, "b", kernel_size=4)
    with pytest.raises(ValueError, match="groups"):
        ELA(64, "b", groups=5)


def test_listing_names_load():
    """The paper listing's con1 / GN names map onto the official names."""
    src = ELA(64, "l")
    listing = {"con1.weight": src.conv.weight, "GN.weight": src.gn.weight, "GN.bias": src.gn.bias}
    dst = ELA(64, "l")
    dst.load_state_dict(checkpoint_filter_fn(listing, dst), strict=True)
    torch.testing.assert_close(dst.conv.weight, src.conv.weight)


def test_timm_attn_layer_in_timm_resnet_and_mobilenet():
    """ELA plugs into timm's own builders: ResNet's attn_layer (after bn3, timm's SE slot) and
    EfficientNet / MobileNet's se_layer (after the depthwise conv; ELA refuses the rd_ratio
    probe, so the builder passes none)."""
    resnet = timm.create_model("resnet18", block_args=dict(attn_layer=ela_layer("t")),
                               num_classes=3).eval()
    assert isinstance(resnet.layer1[0].se, ELA) and resnet.layer1[0].se.gn.num_groups == 32
    mobile = timm.create_model("efficientnet_b0", se_layer=partial(ELA, version="b"),
                               num_classes=3).eval()
    elas = [m for m in mobile.modules() if isinstance(m, ELA)]
    assert elas and all(m.gn.num_groups == 16 for m in elas)
    with torch.no_grad():
        assert resnet(torch.randn(1, 3, 64, 48)).shape == (1, 3)
        assert mobile(torch.randn(1, 3, 64, 48)).shape == (1, 3)


def test_mobilenetv2_placement_is_the_official_one():
    """ELA in every inverted residual with expansion (not the first block), on the expanded
    channels, between the depthwise conv's activation and the projection."""
    model = ElaMobileNetV2(ela_version="l", channel_multiplier=0.5, num_classes=10).eval()
    blocks = [b for stage in model.blocks for b in stage]
    assert not isinstance(blocks[0].se, ELA)
    assert all(isinstance(b, InvertedResidual) and isinstance(b.se, ELA) for b in blocks[1:])
    seen = {}
    block = blocks[3]
    _record(block.bn2, seen, "dw")
    _record(block.se, seen, "ela_in", "input")
    _record(block.conv_pwl, seen, "pwl_in", "input")
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
        torch.testing.assert_close(seen["ela_in"], seen["dw"])  # bn2 is BN + ReLU6 in timm
        torch.testing.assert_close(seen["pwl_in"], block.se(seen["ela_in"]))
    assert block.se.conv.in_channels == block.conv_pw.out_channels


def test_mobilenetv2_ela_t_fails_clearly():
    """MobileNetV2's 144-channel blocks cannot take ELA-T's 32 groups."""
    with pytest.raises(ValueError, match=r"ELA-T .*got 144"):
        ElaMobileNetV2(ela_version="t")


@pytest.mark.parametrize("residual", [False, True])
def test_resnet_placement_and_identity_option(residual):
    """ELA sits after conv2 + bn2 + act2 of a Bottleneck and feeds conv3; with ela_residual its
    input is added back (the official DeepLab code's ``ELA(x) + x``)."""
    torch.manual_seed(0)
    block = ElaBottleneck(64, 16, ela_version="b", ela_residual=residual,
                          downsample=nn.Sequential(nn.Conv2d(64, 64, 1), nn.BatchNorm2d(64))).eval()
    seen = {}
    _record(block.act2, seen, "act2")
    _record(block.ela, seen, "ela_in", "input")
    _record(block.ela, seen, "ela")
    _record(block.conv3, seen, "conv3_in", "input")
    with torch.no_grad():
        block(torch.randn(2, 64, 9, 13))
    torch.testing.assert_close(seen["ela_in"], seen["act2"])
    expected = seen["ela"] + seen["ela_in"] if residual else seen["ela"]
    torch.testing.assert_close(seen["conv3_in"], expected)


def test_resnet_basic_block_placement():
    model = timm.create_model("ela_resnet18_b_224", num_classes=4).eval()
    block = model.layer2[0]
    seen = {}
    _record(block.bn2, seen, "bn2")
    _record(block.ela, seen, "ela_in", "input")
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 80))
    torch.testing.assert_close(seen["ela_in"], seen["bn2"])
    assert block.ela.conv.in_channels == 128


@pytest.mark.parametrize("name, host", [("ela_mobilenetv2_100_l_224", "mobilenetv2_100"),
                                        ("ela_resnet18_b_224", "resnet18")])
def test_host_weights_load_with_only_ela_missing(name, host, tmp_path):
    """The host_in1k tag's file (timm's plain network, here a local copy with random values)
    loads: every host tensor is taken, only the ELA layers keep their init, and the load says
    so."""
    torch.manual_seed(1)
    plain = timm.create_model(host)
    path = tmp_path / "host.pth"
    torch.save(plain.state_dict(), path)
    with pytest.warns(UserWarning, match=r"no weights for the \d+ ELA layers"):
        model = timm.create_model(f"{name}.host_in1k", pretrained=True,
                                  pretrained_cfg_overlay=dict(file=str(path)))
    own = model.state_dict()
    host_keys = set(plain.state_dict())
    ela_keys = set(own) - host_keys
    assert ela_keys and all(".ela." in k or ".se." in k for k in ela_keys)
    for k, v in plain.state_dict().items():
        torch.testing.assert_close(own[k], v, msg=k)
    # the tag names timm's own file of the host, not an ELA file
    timm_cfg = timm.models.get_pretrained_cfg(
        f"{host}." + ("ra_in1k" if host.startswith("mobilenet") else "tv_in1k"))
    assert model.pretrained_cfg["url"] == timm_cfg.url
    assert model.pretrained_cfg["hf_hub_id"] == timm_cfg.hf_hub_id


def test_zoo_checkpoint_loads_silently(tmp_path):
    """A full ELA checkpoint (all keys present) loads without the host warning."""
    src = timm.create_model("ela_resnet18_b_224")
    path = tmp_path / "full.pth"
    torch.save(src.state_dict(), path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        model = timm.create_model("ela_resnet18_b_224", pretrained=True,
                                  pretrained_cfg_overlay=dict(file=str(path)))
    torch.testing.assert_close(model.layer1[0].ela.conv.weight, src.layer1[0].ela.conv.weight)


def test_untrained_tag_has_no_weights():
    with pytest.raises(Exception, match="no pretrained weights are published"):
        timm.create_model("ela_resnet50_b_224.untrained", pretrained=True)


def test_official_plain_mobilenetv2_checkpoint_loads_into_the_host():
    """A checkpoint of the official plain MobileNetV2 (``MbV2/models/mb.py`` layout: projection at
    ``conv.6`` / ``conv.7``, no ELA) maps onto timm's keys: the host tensors land where the
    ELA-layout checkpoint puts them, and only the ELA layers are reported missing."""
    folder = os.path.join(GOLDEN, "ela", "mbv2_ela_reduced")
    with_ela = load_file(os.path.join(folder, "state_dict.safetensors"))
    plain = {}
    for k, v in with_ela.items():
        m = re.match(r"^(features\.\d+\.conv\.)(\d+)\.(.+)$", k)
        if m and not k.startswith("features.1.") and m[2] == "6":
            continue  # the ELA layer
        if m and not k.startswith("features.1.") and int(m[2]) > 6:
            k = f"{m[1]}{int(m[2]) - 1}.{m[3]}"
        plain[k] = v
    model = create_from_official({"num_classes": 10, "width_mult": 0.25},
                                 "MbV2/models/mbv2_ela72.py:MBV2_ELA72")
    reference = checkpoint_filter_fn({"state_dict": with_ela}, model)
    with pytest.warns(UserWarning, match=r"no weights for the 16 ELA layers \(48 tensors"):
        mapped = checkpoint_filter_fn({"state_dict": plain}, model)
    model.load_state_dict(mapped, strict=True)
    ela_keys = {k for k in reference if ".se." in k}
    assert len(ela_keys) == 48 and set(mapped) == set(reference)
    for k in set(reference) - ela_keys:
        torch.testing.assert_close(mapped[k], reference[k], msg=k)

"""ULSAM beyond the shared conformance and golden suites: the vectorised module against a
per-subspace definition written from the spec (g = 1, 4, 8, 16, eval and train, non-square
inputs, gradients, BatchNorm momentum), the official key layout through the filter, clear errors,
use as a timm attention layer, the hosts' placements (insert / replace, keys, feature taps), their
costs against the authors' table rows, and timm's host weights loading with only ULSAM missing."""
import math
import warnings
from functools import partial

import pytest
import torch
import torch.nn.functional as F
import timm

import backbones.ulsam as ulsam
from backbones.ulsam import ULSAM, UlsamMobileNet


def _randomize(module, seed=0):
    """Non-identity parameters and BN statistics (fresh BNs would make the folds trivial)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var") or (name.endswith("weight") and t.dim() == 1):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * 0.5)
    return module


def per_subspace(module, x, training=False):
    """ULSAM as the spec (§2) defines it: a Python loop over the g subspaces, each with its own
    slice of the parameters, BN with batch statistics when ``training`` (running statistics
    updated with PyTorch's momentum convention)."""
    g, C = module.num_splits, module.channels
    G = C // g
    outs = []
    for n in range(g):
        sl = slice(n * G, (n + 1) * G)
        xs = x[:, sl]
        d = F.conv2d(xs, module.conv_dw.weight[sl], module.conv_dw.bias[sl], groups=G)
        bn = module.bn_dw
        d = F.batch_norm(d, bn.running_mean[sl], bn.running_var[sl], bn.weight[sl], bn.bias[sl],
                         training, bn.momentum, bn.eps)
        p = F.max_pool2d(F.relu(d), 3, 1, 1)
        s = F.conv2d(p, module.conv_pw.weight[n:n + 1], module.conv_pw.bias[n:n + 1])
        bn = module.bn_pw
        s = F.relu(F.batch_norm(s, bn.running_mean[n:n + 1], bn.running_var[n:n + 1],
                                bn.weight[n:n + 1], bn.bias[n:n + 1], training, bn.momentum, bn.eps))
        B, _, H, W = s.shape
        a = torch.softmax(s.reshape(B, 1, H * W), dim=2).reshape(B, 1, H, W)
        outs.append(a.expand_as(xs) * xs + xs)
    return torch.cat(outs, 1)


# --------------------------------------------------------------------------------- the module

@pytest.mark.parametrize("g", [1, 4, 8, 16])
@pytest.mark.parametrize("shape", [(2, 64, 28, 28), (3, 32, 9, 14)])
def test_module_equals_per_subspace_definition_eval(g, shape):
    if shape[1] % g:
        pytest.skip("channels not divisible")
    torch.manual_seed(g)
    m = _randomize(ULSAM(shape[1], num_splits=g), seed=g).eval()
    x = 6 * torch.randn(shape)  # peaked softmax: every stage of the branch shows
    with torch.no_grad():
        out = m(x)
        want = per_subspace(m, x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    assert ((out - x) / x).abs().max() > 0.01  # the attention really is peaked here


@pytest.mark.parametrize("g", [1, 4, 8, 16])
def test_module_train_mode_and_bn_momentum(g):
    """Training: batch statistics, running stats = 0.1 * old + 0.9 * batch (the official
    momentum=0.9), outputs and gradients equal to the per-subspace definition."""
    # float64: BN's batch statistics make some gradients near-cancelling sums
    m = _randomize(ULSAM(32, num_splits=g), seed=1).double().train()
    ref = _randomize(ULSAM(32, num_splits=g), seed=1).double().train()
    x = 4 * torch.randn(4, 32, 10, 13, dtype=torch.float64)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    old_mean = m.bn_dw.running_mean.clone()
    out = m(x1)
    want = per_subspace(ref, x2, training=True)
    torch.testing.assert_close(out, want)
    w = torch.randn_like(out)
    (out * w).sum().backward()
    (want * w).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad)
    for (name, p), q in zip(m.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
    torch.testing.assert_close(m.bn_dw.running_mean, ref.bn_dw.running_mean)
    torch.testing.assert_close(m.bn_pw.running_var, ref.bn_pw.running_var)
    batch_mean = F.conv2d(x, m.conv_dw.weight, m.conv_dw.bias, groups=32).mean((0, 2, 3))
    torch.testing.assert_close(m.bn_dw.running_mean, 0.1 * old_mean + 0.9 * batch_mean)


def test_bn_momentum_option():
    m = ULSAM(16, num_splits=4, bn_momentum=0.1).train()
    x = torch.randn(2, 16, 5, 5) + 3
    m(x)
    assert m.bn_dw.momentum == 0.1 and m.bn_pw.momentum == 0.1
    batch_mean = F.conv2d(x, m.conv_dw.weight, m.conv_dw.bias, groups=16).mean((0, 2, 3))
    torch.testing.assert_close(m.bn_dw.running_mean, 0.1 * batch_mean)


def test_eval_gradients_through_folded_op():
    """Eval mode (folded BNs, one op call) is differentiable in the input and every parameter,
    with the per-subspace definition's gradients (frozen-BN fine-tuning)."""
    m = _randomize(ULSAM(24, num_splits=4)).eval()
    x = (5 * torch.randn(2, 24, 7, 11)).requires_grad_()
    xr = x.detach().clone().requires_grad_()
    out, want = m(x), per_subspace(m, xr)
    w = torch.randn_like(out)
    g_out = torch.autograd.grad((out * w).sum(), [x] + list(m.parameters()))
    g_want = torch.autograd.grad((want * w).sum(), [xr] + list(m.parameters()))
    for a, b in zip(g_out, g_want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("g", [1, 4, 16])
def test_param_count_formula(g):
    """5 C + 3 g trainable parameters (spec §2; C = 256: 1,283 / 1,292 / 1,328)."""
    assert sum(p.numel() for p in ULSAM(256, num_splits=g).parameters()) == 5 * 256 + 3 * g


def test_clear_errors():
    valid = r"\[1, 2, 4, 8, 16, 32, 64\]"
    with pytest.raises(ValueError, match=r"cannot be split into num_splits=3.*" + valid):
        ULSAM(64, num_splits=3)
    with pytest.raises(ValueError, match="positive int"):
        ULSAM(64, num_splits=0)
    m = ULSAM(16, num_splits=4).eval()
    with pytest.raises(ValueError, match="C = 8"):
        m(torch.randn(1, 8, 5, 5))
    with pytest.raises(ValueError, match="4-D"):
        m(torch.randn(16, 5, 5))


# --------------------------------------------------------------------------------- checkpoints

def _to_official(state_dict, g):
    """Zoo module keys -> the official per-subspace layout (spec §2 key table), written
    independently of the filter."""
    C = state_dict["conv_dw.weight"].shape[0]
    G = C // g
    names = {"conv_dw": "conv_dws", "bn_dw": "bn_dws", "conv_pw": "conv_point", "bn_pw": "bn_point"}
    out = {}
    for k, v in state_dict.items():
        layer, param = k.split(".")
        for n in range(g):
            if param == "num_batches_tracked":
                part = v
            elif layer.endswith("dw"):
                part = v[n * G:(n + 1) * G]
            else:
                part = v[n:n + 1]
            out[f"subspaces.{n}.{names[layer]}.{param}"] = part.clone()
    return out


@pytest.mark.parametrize("g", [1, 4, 16])
def test_filter_maps_official_keys_and_passes_zoo_keys(g):
    src = _randomize(ULSAM(32, num_splits=g)).eval()
    official = _to_official(src.state_dict(), g)
    assert len(official) == 14 * g  # 7 tensors per BN pair + 2 per conv, per subspace
    for ckpt in (official, {"state_dict": official}, src.state_dict()):
        dst = ULSAM(32, num_splits=g).eval()
        dst.load_state_dict(ulsam.checkpoint_filter_fn(ckpt, dst), strict=True)
        x = torch.randn(2, 32, 6, 9)
        torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)


def test_create_from_official_kwargs():
    m = ulsam.create_from_official(dict(nin=48, nout=48, h=7, w=7, num_splits=8), "ulsam.py:ULSAM")
    assert (m.channels, m.num_splits) == (48, 8)
    with pytest.raises(ValueError, match="nin, nout, h, w, num_splits"):
        ulsam.create_from_official(dict(nin=48, groups=8))
    with pytest.raises(ValueError, match="unknown official ULSAM class"):
        ulsam.create_from_official(dict(nin=48, num_splits=8), "ulsam.py:SubSpace")
    with pytest.raises(ValueError, match="cannot be split"):
        ulsam.create_from_official(dict(nin=48, nout=48, h=7, w=7, num_splits=5))


# --------------------------------------------------------------------------------- timm attn_layer

def test_as_timm_attention_layer():
    """partial(ULSAM, num_splits=g) plugs into timm's ResNet (``block_args=dict(attn_layer=
    ...)``) and EfficientNet / MobileNet blocks (``se_layer``, which passes act_layer)."""
    net = timm.create_model("resnet18", block_args=dict(attn_layer=partial(ULSAM, num_splits=4)),
                            num_classes=5).eval()
    layers = [m for m in net.modules() if isinstance(m, ULSAM)]
    assert len(layers) == 8 and {m.channels for m in layers} == {64, 128, 256, 512}
    mv2 = timm.create_model("efficientnet_b0", se_layer=partial(ULSAM, num_splits=8), num_classes=5)
    assert sum(isinstance(m, ULSAM) for m in mv2.modules()) == 16  # every block's SE
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        assert net(x).shape == (2, 5)
        assert mv2.eval()(x).shape == (2, 5)


# --------------------------------------------------------------------------------- hosts

def test_insert_keeps_timm_keys_and_adds_ulsam():
    model = timm.create_model("ulsam_mobilenetv2_100_224")
    host = timm.create_model("mobilenetv2_100")
    keys, host_keys = set(model.state_dict()), set(host.state_dict())
    assert host_keys <= keys
    assert sorted({k.rsplit(".", 2)[0] for k in keys - host_keys}) == ["blocks.5.2_ulsam"]
    assert list(model.blocks[5]._modules) == ["0", "1", "2", "2_ulsam"]
    assert model.blocks[5][3].channels == 160


def test_replace_drops_blocks_and_keeps_indices():
    model = timm.create_model("ulsam_mobilenetv2_100_e3_224")
    assert list(model.blocks[4]._modules) == ["0", "1_ulsam", "2_ulsam"]
    assert list(model.blocks[5]._modules) == ["0", "1_ulsam", "2_ulsam"]
    assert [m.channels for m in model.blocks[4][1:]] == [96, 96]
    host_keys = set(timm.create_model("mobilenetv2_100").state_dict())
    kept = {k for k in model.state_dict() if "_ulsam." not in k}
    assert kept <= host_keys
    assert {k for k in host_keys - kept} == {k for k in host_keys if k.startswith(
        ("blocks.4.1.", "blocks.4.2.", "blocks.5.1.", "blocks.5.2."))}


@pytest.mark.parametrize("g", [1, 4, 8, 16])
def test_host_with_every_g(g):
    """The hosts take any g dividing their ULSAM channels; each layer adds 5 C + 3 g."""
    base = sum(p.numel() for p in timm.create_model("mobilenetv1_100").parameters())
    model = timm.create_model("ulsam_mobilenetv1_100_224", ulsam_splits=g, num_classes=1000).eval()
    assert sum(p.numel() for p in model.parameters()) == base + 5 * 512 + 3 * g
    assert all(m.num_splits == g for m in model.modules() if isinstance(m, ULSAM))
    with torch.no_grad():
        assert model(torch.randn(1, 3, 80, 96)).shape == (1, 1000)


def test_custom_positions_and_errors():
    kw = ulsam.host_kwargs("mobilenetv2")  # reusable: the host copies block_args before timm's builder
    model = UlsamMobileNet(**kw, ulsam_positions=[(3, 0), (6, 0)], ulsam_splits=8)
    assert [m.channels for m in model.modules() if isinstance(m, ULSAM)] == [64, 320]
    with pytest.raises(ValueError, match="changes the shape"):
        UlsamMobileNet(**kw, ulsam_positions=[(3, 0)], ulsam_replace=True)
    with pytest.raises(ValueError, match="does not exist"):
        UlsamMobileNet(**kw, ulsam_positions=[(7, 0)])
    with pytest.raises(ValueError, match="pairs"):
        UlsamMobileNet(**kw, ulsam_positions=[3])
    with pytest.raises(ValueError, match="twice"):
        UlsamMobileNet(**kw, ulsam_positions=[(3, 1), (3, 1)])
    with pytest.raises(ValueError, match="cannot be split"):
        UlsamMobileNet(**kw, ulsam_positions=[(4, 1)], ulsam_splits=7)


def test_group_matcher_puts_ulsam_with_its_block():
    model = timm.create_model("ulsam_mobilenetv1_100_e_224")
    from timm.models import group_parameters
    groups = group_parameters(model, model.group_matcher())
    ulsam_group = [g for g, names in groups.items() if any("_ulsam" in n for n in names)]
    assert len(ulsam_group) == 1
    assert not any("classifier" in n for n in groups[ulsam_group[0]])


def test_host_weights_load_with_only_ulsam_missing(tmp_path):
    """host_in1k: timm's MobileNet-V2 file loads; every kept layer is timm's, the replaced blocks'
    weights are dropped, the ULSAM layers keep their initialisation and the load says so."""
    torch.manual_seed(0)
    host = timm.create_model("mobilenetv2_100")
    path = tmp_path / "mobilenetv2_100.pth"
    torch.save(host.state_dict(), path)
    with pytest.warns(UserWarning, match=r"no weights for the 2 ULSAM layers.*blocks\.4\.2_ulsam.*blocks\.5\.2_ulsam"):
        model = timm.create_model("ulsam_mobilenetv2_100_e1_224", pretrained=True,
                                  pretrained_cfg_overlay=dict(file=str(path)))
    assert model.pretrained_cfg["tag"] == "host_in1k"
    own, ref = model.state_dict(), host.state_dict()
    for k, v in own.items():
        if "_ulsam." not in k:
            assert torch.equal(v, ref[k]), k
    fresh = ULSAM(96, num_splits=4)
    torch.testing.assert_close(model.blocks[4][2].bn_dw.running_var, fresh.bn_dw.running_var)
    # a zoo checkpoint (ULSAM included) loads silently
    zoo_path = tmp_path / "zoo.pth"
    torch.save(model.state_dict(), zoo_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        timm.create_model("ulsam_mobilenetv2_100_e1_224", pretrained=True,
                          pretrained_cfg_overlay=dict(file=str(zoo_path)))


def test_untrained_variants_refuse_pretrained():
    with pytest.raises(Exception, match="no pretrained weights"):
        timm.create_model("ulsam_mobilenetv1_050_e_224", pretrained=True)


def test_default_cfgs_point_at_timms_host_weights():
    mv2 = timm.create_model("ulsam_mobilenetv2_100_224").pretrained_cfg
    ref = timm.create_model("mobilenetv2_100").pretrained_cfg
    assert mv2["url"] == ref["url"] and mv2["hf_hub_id"] == "timm/mobilenetv2_100.ra_in1k"
    mv1 = timm.create_model("ulsam_mobilenetv1_100_e_224").pretrained_cfg
    ref = timm.create_model("mobilenetv1_100").pretrained_cfg
    assert mv1["hf_hub_id"] == "timm/" + ref["architecture"] + "." + ref["tag"]
    assert tuple(mv1["mean"]) == tuple(ref["mean"]) and not mv1["url"]


# --------------------------------------------------------------------------------- paper costs

# The authors' rows (poster / slides, spec §6) per host, as printed, with our placement of each:
# (host, width, positions, replace, params M, MFLOPs). The vanilla rows are the MobileNet papers'
# figures. Params print with 1 or 2 decimals, MFLOPs with 0, 1 or 2.
_ROWS = {
    ("mobilenetv1", 1.0): [((), False, "4.2", "569"), (((3, 5),), False, "4.2", "569.2"),
                           (((4, 1),), False, "4.2", "569.1"), (((3, 5),), True, "3.9", "517")],
    ("mobilenetv1", 0.75): [((), False, "2.6", "325"), (((3, 5),), True, "2.4", "296")],
    ("mobilenetv1", 0.5): [((), False, "1.3", "149"), (((3, 5),), True, "1.2", "136")],
    # MV2 (ImageNet table; the 2.96 M model of that table is the 2.97 M one of the Birds table,
    # both 261.88 MFLOPs: the Birds value is the one consistent with the other rows, used here)
    ("mobilenetv2", 1.0): [(((5, 2),), False, "3.4", "300.01"),
                           (((4, 2),), True, "3.28", "277.34"),
                           (((5, 2),), True, "3.08", "284.54"),
                           (((3, 3), (4, 2)), True, "3.23", "267.06"),
                           (((5, 1), (5, 2)), True, "2.77", "269.07"),
                           (((4, 2), (5, 2)), True, "2.97", "261.88"),
                           (((4, 1), (4, 2), (5, 1), (5, 2)), True, "2.54", "223.77")],
}


def _baseline_interval(rows, deltas):
    """The values of the (unknown) vanilla count B for which every printed row equals
    round(B + delta): the intersection of the rows' rounding intervals."""
    lo, hi = -math.inf, math.inf
    for printed, delta in zip(rows, deltas):
        digits = len(printed.split(".")[1]) if "." in printed else 0
        half = 0.5 * 10 ** -digits
        lo, hi = max(lo, float(printed) - half - delta), min(hi, float(printed) + half - delta)
    return lo, hi


@pytest.mark.parametrize("host", sorted(_ROWS), ids=lambda h: f"{h[0]}_{h[1]}")
def test_costs_reproduce_the_authors_rows(host):
    """Every row the registered variants (and the other inferred placements) claim is
    reproduced: one vanilla count B makes every printed params / MFLOPs value of the host equal to
    B + (our model - timm's host), rounded as printed; B agrees with the vanilla row printed."""
    name, width = host
    base_params, base_macs = ulsam.paper_cost(UlsamMobileNet(**ulsam.host_kwargs(name, width)))
    dp, df, rp, rf = [], [], [], []
    for positions, replace, params_m, mflops in _ROWS[host]:
        model = UlsamMobileNet(**ulsam.host_kwargs(name, width), ulsam_positions=positions,
                               ulsam_replace=replace)
        p, f = ulsam.paper_cost(model)
        dp.append((p - base_params) / 1e6)
        df.append((f - base_macs) / 1e6)
        rp.append(params_m)
        rf.append(mflops)
    for rows, deltas, what in ((rp, dp, "params"), (rf, df, "MFLOPs")):
        lo, hi = _baseline_interval(rows, deltas)
        assert lo < hi, f"no single vanilla {what} count fits the rows {rows} (deltas {deltas})"


def test_registered_variants_claim_their_rows():
    """Each registered model's placement is one of the rows checked above, its g=4 paper result
    names that row's cost, and its exact parameter count is recorded."""
    rows = {(h, tuple(pos), rep): (p, f) for h, entries in _ROWS.items() for pos, rep, p, f in entries}
    for variant, (host, width, positions, replace, _, _) in ulsam._ARCHS.items():
        p, f = rows[((host, width), tuple(positions), replace)]
        result = ulsam.FAMILY.paper_results[variant]
        if (host, variant) != ("mobilenetv2", "ulsam_mobilenetv2_100_e1_224"):
            assert result.params_m == float(p), variant
        assert abs(result.gflops * 1000 - float(f)) < 1e-6, variant
        model = timm.create_model(variant)
        assert sum(q.numel() for q in model.parameters()) == ulsam.FAMILY.param_counts[variant]

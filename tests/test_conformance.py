"""The checks timm runs on its own models (timm's tests/test_models.py), over every zoo model,
plus the zoo's own promises, read from each family's record (``backbones.FAMILIES``).

Parametrised over ``backbones.list_zoo_models()``, never over ``timm.list_models(module=...)``
(timm groups by module basename, which would mix in timm's own models of the same family name).
timm's checks mirrored here: forward (+ grad checkpointing), backward, default cfgs, features
(getter and FX), forward_intermediates, FX forward, FX backward, FX through TorchScript and
TorchScript (where the family record says TorchScript works), and load-pretrained (in
test_pretrained.py, from local files). Added: ``torch.export`` (what replaces TorchScript),
``device="meta"`` / ``dtype=``, an empty batch, any input size, clear input errors, data configs.
Inputs are reduced (timm uses 128 for backward and 96 for features) so the largest variants run
on two CPU cores; none is skipped.
"""
import fnmatch
import importlib
import json
import math
import os

import itertools

import pytest
import torch
import timm
import timm.data
import timm.optim
from PIL import Image
from timm.layers import get_notrace_functions, get_notrace_modules, set_scriptable
from timm.models._features import FeatureGetterNet
from torchvision.models.feature_extraction import (
    NodePathTracer, create_feature_extractor, get_graph_node_names)

import ops

import backbones
from conftest import GOLDEN
from golden import family_of, fixture_dirs

MODELS = backbones.list_zoo_models()


def fixture_config(fixture):
    with open(os.path.join(GOLDEN, fixture, "config.json")) as f:
        return json.load(f)

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


TAGS = sorted(t for f in backbones.FAMILIES.values() for t in f.tag_param_counts)


@pytest.mark.parametrize("family", sorted(backbones.FAMILIES))
def test_family_record_is_complete(family):
    """What a family must declare before it is done: every registered model's exact official
    parameter count, a golden fixture for every official class, and metadata only about models it
    registers."""
    record = backbones.FAMILIES[family]
    models = backbones.list_zoo_models(family)
    assert models, f"family {family} registers no model"
    assert sorted(record.param_counts) == models, "param_counts must name exactly the registered models"
    for field in ("paper_results", "official_entrypoints", "timm_equivalents"):
        unknown = set(getattr(record, field)) - set(models)
        assert not unknown, f"{field} names models the family does not register: {sorted(unknown)}"
    assert set(t.split(".")[0] for t in record.tag_param_counts) <= set(models)
    assert record.official_repo or not record.official_classes
    classes = {}
    for fixture in fixture_dirs(GOLDEN):
        config = fixture_config(fixture)
        if family_of(fixture) == family:
            classes.setdefault(config.get("official_class"), []).append(fixture)
    without = [c for c in record.official_classes if c not in classes]
    assert not without, f"official classes without a golden fixture in tests/golden: {without}"
    assert record.create_from_official is getattr(importlib.import_module(record.module),
                                                  "create_from_official")
    assert record.checkpoint_filter_fn is getattr(importlib.import_module(record.module),
                                                  "checkpoint_filter_fn")


@pytest.mark.parametrize("name", MODELS)
def test_param_count_equals_official(name):
    model = _create(name)
    expected = backbones.get_family(name).param_counts[name]
    assert sum(p.numel() for p in model.parameters()) == expected


@pytest.mark.parametrize("name_tag", TAGS)
def test_tag_param_count_equals_official(name_tag):
    model = _create(name_tag)
    expected = backbones.get_family(name_tag).tag_param_counts[name_tag]
    assert sum(p.numel() for p in model.parameters()) == expected


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
    """timm test_model_backward: 42 classes, batch 2, every parameter gets a gradient (but those
    the family record names as taking none by design, which must then get none)."""
    model = _create(name, num_classes=42)
    model.train()
    x = _input(model, _size_for(name, BACKWARD_SIZE), batch=2)
    out = model(x)
    out.mean().backward()
    params = dict(model.named_parameters())
    _check_gradients(name, params)
    assert out.shape == (2, 42)
    assert not torch.isnan(out).any()
    assert all(not torch.isnan(p.grad).any() for p in params.values() if p.grad is not None)


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
        if fmt == "NLC":  # token models (timm's ViTs): (B, tokens, C), no pool size
            assert feat.dim() == 3 and cfg["pool_size"] is None
            channels = feat.shape[-1]
        else:
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
        assert unpooled.dim() == (3 if fmt == "NLC" else 4)
        torch.testing.assert_close(unpooled, feat)

        model.reset_classifier(7, "avg")  # None would keep the '' pooling, as in timm
        assert model(x).shape == (2, 7)
        assert model.get_classifier().out_features == 7

    headless = _create(name, num_classes=0, global_pool="").eval()
    assert headless.num_classes == 0
    state = model.state_dict()
    classifiers = cfg["classifier"] if isinstance(cfg["classifier"], (tuple, list)) \
        else (cfg["classifier"],)
    assert all(c + ".weight" in state for c in classifiers)
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
    size = _size_for(name, FEATURE_SIZE) or model.pretrained_cfg["input_size"][-1]
    x = _input(model, size)
    with torch.no_grad():
        outs = model(x)
    assert len(outs) == len(expected_channels)
    for out, chs, red in zip(outs, expected_channels, expected_reduction):
        assert out.shape[1] == chs
        assert out.shape[2] <= math.ceil(size / red) + 1
        assert out.shape[3] <= math.ceil(size / red) + 1
        assert not torch.isnan(out).any()


@pytest.mark.parametrize("name", MODELS)
def test_features_only_out_indices(name):
    model = _create(name, features_only=True, out_indices=(1, -1)).eval()
    full = _create(name).eval()
    assert model.feature_info.channels() == [full.feature_info[1]["num_chs"],
                                             full.feature_info[-1]["num_chs"]]
    with pytest.raises(ValueError, match="out_indices"):
        _create(name, features_only=True, out_indices=(0, len(full.feature_info)))


@pytest.mark.parametrize("name", MODELS)
def test_model_forward_intermediates(name):
    """timm test_model_forward_intermediates: one NCHW map per feature_info entry; the final output
    equals forward_features, with and without grad checkpointing; features_only agrees."""
    model = _create(name).eval()
    size = _size_for(name, FEATURE_SIZE) or model.pretrained_cfg["input_size"][-1]
    x = _input(model, size)
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
        for info, feat in zip(model.feature_info, intermediates):
            assert feat.shape[1] == info["num_chs"]
            assert feat.shape[2] == math.ceil(size / info["reduction"])
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
def test_group_matcher_layer_decay(name):
    model = _create(name)
    optimizer = timm.optim.create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05,
                                               layer_decay=0.9)
    n_in_groups = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
    assert n_in_groups == sum(p.numel() for p in model.parameters())
    assert len({g["lr_scale"] for g in optimizer.param_groups}) > 2  # layer decay saw the stages


# ----------------------------------------------------------------------------- the no-decay split

@pytest.mark.parametrize("name", MODELS)
def test_no_weight_decay_split(name):
    """timm's optimizer factory puts exactly the 1-D parameters and the names ``no_weight_decay``
    lists into weight-decay-free groups, and everything else into decayed ones."""
    model = _create(name)
    skip = model.no_weight_decay()
    assert isinstance(skip, set)
    names = {n for n, _ in model.named_parameters()}
    for pattern in skip:  # each entry names real parameters
        assert any(fnmatch.fnmatch(n, pattern) for n in names), pattern
    optimizer = timm.optim.create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05)
    no_decay = {id(p) for g in optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    for pname, p in model.named_parameters():
        expected_free = p.ndim <= 1 or pname.endswith(".bias") or any(
            fnmatch.fnmatch(pname, pattern) for pattern in skip)
        assert (id(p) in no_decay) == expected_free, pname
    assert no_decay and len(no_decay) < len(list(model.parameters()))


# ----------------------------------------------------------------------------- FX

FX_SIZE = 96
FX_BACKWARD_SIZE = 64


def _fx_model(model, train=False):
    """timm's ``_create_fx_model``: trace with timm's notrace registry and return the node that
    feeds the output (in train mode, every node that feeds it)."""
    tracer_kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
                         param_shapes_constant=True)
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    eval_return_nodes, train_return_nodes = [eval_nodes[-1]], [train_nodes[-1]]
    if train:
        graph_nodes = list(reversed(NodePathTracer(**tracer_kwargs).trace(model).nodes))
        names = [n.name for n in graph_nodes]
        train_return_nodes = [train_nodes[-names.index(n.name)] for n in graph_nodes[0]._input_nodes]
    return create_feature_extractor(model, train_return_nodes=train_return_nodes,
                                    eval_return_nodes=eval_return_nodes, tracer_kwargs=tracer_kwargs)


def _check_gradients(name, params):
    """Every parameter has a gradient, except the family's ``no_grad_params``, which have none."""
    patterns = backbones.get_family(name).no_grad_params
    by_design = {n for n in params if any(fnmatch.fnmatch(n, p) for p in patterns)}
    missing = [n for n, p in params.items() if p.grad is None and n not in by_design]
    assert not missing, f"parameters without gradient: {missing[:10]}"
    unexpected = [n for n in by_design if params[n].grad is not None]
    assert not unexpected, f"no_grad_params of the family record got gradients: {unexpected[:10]}"


def _size_for(name, size):
    """``size`` for models that take any input size, else the cfg's."""
    return size if backbones.get_family(name).any_input_size else None


@pytest.mark.parametrize("name", MODELS)
def test_model_forward_fx(name):
    """timm test_model_forward_fx: the traced model's output equals the eager one, bit for bit."""
    model = _create(name).eval()
    x = _input(model, _size_for(name, FX_SIZE))
    with torch.inference_mode():
        eager = model(x)
        traced = torch.cat(tuple(_fx_model(model)(x).values()))
    assert torch.equal(traced, eager)
    assert not torch.isnan(eager).any()


@pytest.mark.parametrize("name", MODELS)
def test_model_backward_fx(name):
    """timm test_model_backward_fx: batch 2, 42 classes, every parameter of the traced model gets
    a gradient."""
    model = _create(name, num_classes=42).train()
    x = _input(model, _size_for(name, FX_BACKWARD_SIZE), batch=2)
    model = _fx_model(model, train=True)
    out = torch.cat(tuple(model(x).values()))
    out.mean().backward()
    _check_gradients(name, dict(model.named_parameters()))
    assert out.shape[-1] == 42 and not torch.isnan(out).any()


@pytest.mark.parametrize("name", MODELS)
def test_features_fx_equal_features_getter(name):
    """``features_only=True, feature_cls='fx'`` (timm's FeatureGraphNet) gives the maps of the
    default getter, in the layout its ``output_fmt`` declares. Families whose record says FX
    feature extraction does not work refuse it clearly (the record's reason stays true)."""
    if backbones.get_family(name).fx is not None:
        with pytest.raises(ValueError, match="feature_cls"):
            _create(name, features_only=True, feature_cls="fx")
        return
    fx_net = _create(name, features_only=True, feature_cls="fx").eval()
    getter = _create(name, features_only=True).eval()
    x = _input(getter, _size_for(name, FX_SIZE))
    with torch.no_grad():
        for a, b in zip(fx_net(x), getter(x), strict=True):
            if a.dim() == 3:  # token models: the block's (B, prefix + H * W, C) token rows
                a = a[:, a.shape[1] - b.shape[2] * b.shape[3]:].transpose(1, 2).reshape(b.shape)
            elif fx_net.output_fmt.value == "NHWC":
                a = a.permute(0, 3, 1, 2)
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", MODELS)
def test_model_torchscript(name):
    """timm test_model_forward_torchscript and test_model_forward_fx_torchscript, for families
    whose record says TorchScript works; for the others, scripting still fails (the record's
    reason, repeated in the model card, stays true)."""
    reason = backbones.get_family(name).torchscript
    with set_scriptable(True):
        model = _create(name).eval()
    x = _input(model, _size_for(name, FX_SIZE))
    if reason is not None:
        with pytest.raises(Exception):
            torch.jit.script(model)
        return
    scripted = torch.jit.script(model)
    with torch.inference_mode():
        torch.testing.assert_close(scripted(x), model(x))
        fx_scripted = torch.jit.script(_fx_model(model))
        out = torch.cat(tuple(fx_scripted(x).values()))
    assert out.shape[0] == 1 and not torch.isnan(out).any()


# ----------------------------------------------------------------------------- export, device, dtype

@pytest.mark.parametrize("name", MODELS)
def test_torch_export(name):
    """``torch.export`` (what replaces TorchScript) on the reference path: the exported program
    gives the eager output."""
    model = _create(name).eval()
    x = _input(model, _size_for(name, FX_SIZE))
    with torch.no_grad(), ops.use_backend("reference"):
        program = torch.export.export(model, (x,))
        torch.testing.assert_close(program.module()(x), model(x))


@pytest.mark.parametrize("name", MODELS)
def test_create_on_meta_device(name):
    """``device="meta"`` builds the model without allocating it (timm's factory kwargs)."""
    model = timm.create_model(name, device="meta")
    assert all(t.device.type == "meta" for t in itertools.chain(model.parameters(), model.buffers()))
    model.to_empty(device="cpu")  # the usual next step: materialise, then load weights
    assert all(t.device.type == "cpu" for t in model.parameters())


@pytest.mark.parametrize("name", MODELS)
def test_create_in_bfloat16(name):
    model = _create(name, dtype=torch.bfloat16).eval()
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert torch.get_default_dtype() == torch.float32  # building it changed nothing global
    with torch.no_grad():
        out = model(_input(model, _size_for(name, 64)).bfloat16())
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


# ----------------------------------------------------------------------------- inputs users send

@pytest.mark.parametrize("name", MODELS)
def test_empty_batch(name):
    model = _create(name).eval()
    with torch.no_grad():
        out = model(_input(model, _size_for(name, 64), batch=0))
        feats = model.forward_intermediates(_input(model, _size_for(name, 64), batch=0),
                                            intermediates_only=True)
    assert out.shape == (0, model.num_classes)
    assert all(f.shape[0] == 0 for f in feats)


ODD_SIZE = (97, 131)


@pytest.mark.parametrize("name", MODELS)
def test_any_input_size(name):
    """Families that take any input size run a non-square size no stride divides; the features
    have the channels of feature_info and floor- or ceil-divided sides."""
    model = _create(name).eval()
    if not backbones.get_family(name).any_input_size:
        with pytest.raises(ValueError, match="input"):
            model(torch.randn(1, 3, *ODD_SIZE))
        return
    x = torch.randn(1, model.pretrained_cfg["input_size"][0], *ODD_SIZE)
    with torch.no_grad():
        final, feats = model.forward_intermediates(x)
        logits = model.forward_head(final)
    assert logits.shape == (1, model.num_classes) and torch.isfinite(logits).all()
    for info, feat in zip(model.feature_info, feats, strict=True):
        assert feat.shape[1] == info["num_chs"]
        for side, n in zip(ODD_SIZE, feat.shape[-2:]):
            assert side // info["reduction"] <= n <= math.ceil(side / info["reduction"]), \
                (info, tuple(feat.shape))


@pytest.mark.parametrize("name", MODELS)
def test_input_errors_are_clear(name):
    model = _create(name).eval()
    size = _size_for(name, 64) or model.pretrained_cfg["input_size"][-1]
    with pytest.raises(ValueError, match="in_chans=1"):
        model(torch.randn(1, 1, size, size))
    with pytest.raises(ValueError, match="channels-last"):
        model(torch.randn(1, size, size, 3))
    with pytest.raises(ValueError, match="unsqueeze"):
        model(torch.randn(3, size, size))
    with pytest.raises(TypeError, match="floating-point"):
        model(torch.zeros(1, 3, size, size, dtype=torch.uint8))
    with pytest.raises(TypeError, match="torch.Tensor"):
        model(torch.randn(1, 3, size, size).numpy())
    smallest = getattr(model, "min_input_size", 1)
    if smallest > 1:
        with pytest.raises(ValueError, match=f"at least {smallest}x{smallest}"):
            model(torch.randn(1, 3, smallest - 1, size))


@pytest.mark.parametrize("name", MODELS)
def test_data_config(name):
    """timm's data pipeline resolves the cfg's preprocessing and its eval transform makes inputs
    of the cfg's size."""
    model = _create(name)
    cfg = model.pretrained_cfg
    data = timm.data.resolve_data_config(model=model)
    assert data["input_size"] == tuple(cfg["input_size"])
    assert data["interpolation"] == cfg["interpolation"] and data["crop_pct"] == cfg["crop_pct"]
    assert tuple(data["mean"]) == tuple(cfg["mean"]) and tuple(data["std"]) == tuple(cfg["std"])
    image = Image.new("RGB", (320, 240), (120, 30, 200))
    x = timm.data.create_transform(**data)(image)
    assert tuple(x.shape) == tuple(cfg["input_size"])


# ----------------------------------------------------------------------------- pretrained loading

def _smallest_pretrained(family):
    """The family's smallest model with published weights, else its smallest model (a family
    without released weights still loads the files users train through the pretrained path)."""
    models = backbones.list_zoo_models(family)
    tagged = [m for m in models if timm.list_pretrained(m + ".*")] or models
    return min(tagged, key=lambda m: backbones.FAMILIES[family].param_counts[m])


@pytest.mark.parametrize("family", sorted(backbones.FAMILIES))
def test_model_load_pretrained(family, tmp_path):
    """timm test_model_load_pretrained / test_model_features_pretrained, offline: a checkpoint
    file loads with ``in_chans=1`` (timm adapts the cfg's ``first_conv``), with another class
    count (the cfg's ``classifier`` is re-initialised), headless, and under ``features_only``."""
    name = _smallest_pretrained(family)
    source = _create(name)
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)

    def load(**kwargs):
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                                 **kwargs).eval()

    gray = load(in_chans=1, num_classes=5)
    first_conv = gray.pretrained_cfg["first_conv"]
    torch.testing.assert_close(gray.get_parameter(first_conv + ".weight"),
                               source.get_parameter(first_conv + ".weight").sum(1, keepdim=True))
    size = _size_for(name, 64)
    with torch.no_grad():
        assert gray(_input(dict(input_size=(1,) + source.pretrained_cfg["input_size"][1:]), size)
                    ).shape == (1, 5)
        assert load(num_classes=0)(_input(source, size)).shape == (1, source.num_features)
        assert len(load(features_only=True)(_input(source, size))) == len(source.feature_info)

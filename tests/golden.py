"""Golden fixtures (../shared/golden): outputs of the official implementations.

The contract (../shared/golden/README.md): build the zoo model from ``config.json`` through the
family's ``create_from_official``, pass the official ``state_dict`` (wrapped as official releases
wrap it) through ``checkpoint_filter_fn``, load it strictly, and reproduce every stored tensor to
1e-4 in float32. A family module may define ``golden_outputs(model, x, config, inputs=None)``
returning a dict of named tensors for fixtures that store more than logits and features (``inputs``:
every stored input, ``input`` and e.g. ``det_input``); otherwise logits / output come from
``model(x)`` and ``features.i`` from ``forward_intermediates``.
"""
import json
import os

import torch
from safetensors.torch import load_file

import backbones
import ops

TOLERANCE = 1e-4


def fixture_dirs(root):
    """Every folder under ``root`` holding a ``config.json``, relative to root, sorted."""
    found = []
    for dirpath, _, filenames in os.walk(root):
        if "config.json" in filenames:
            found.append(os.path.relpath(dirpath, root))
    return sorted(found)


def family_of(fixture):
    """``cswin_dense`` -> ``cswin``; ``biformer/stl`` -> ``biformer``."""
    return fixture.split(os.sep)[0].split("_")[0]


def load_fixture(root, fixture):
    path = os.path.join(root, fixture)
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    state_dict = load_file(os.path.join(path, "state_dict.safetensors"))
    io = load_file(os.path.join(path, "io.safetensors"))
    return config, state_dict, io


def build_from_fixture(family_module, config, state_dict):
    model = family_module.create_from_official(config["kwargs"], config.get("official_class"))
    wrapper = config.get("checkpoint_wrapper_key")
    checkpoint = {wrapper: state_dict} if wrapper else state_dict
    model.load_state_dict(family_module.checkpoint_filter_fn(checkpoint, model), strict=True)
    return model.eval()


def default_outputs(model, x, expected_names):
    outputs = {}
    if {"logits", "output"} & set(expected_names):
        out = model(x)
        outputs["logits" if "logits" in expected_names else "output"] = out
    n_features = sum(1 for name in expected_names if name.startswith("features."))
    if n_features:
        feats = model.forward_intermediates(x, intermediates_only=True)
        outputs.update({f"features.{i}": f for i, f in enumerate(feats)})
    return outputs


def run_fixture(root, fixture, backend):
    """Max abs difference per stored tensor; raises AssertionError naming every mismatch."""
    family = backbones.get_family_module(family_of(fixture))
    config, state_dict, io = load_fixture(root, fixture)
    model = build_from_fixture(family, config, state_dict)
    x = io["input"]
    inputs = {k: v for k, v in io.items() if k == "input" or k.endswith("_input")}
    expected = {k: v for k, v in io.items() if k not in inputs}
    with torch.no_grad(), ops.use_backend(backend):
        if hasattr(family, "golden_outputs"):
            outputs = family.golden_outputs(model, x, config, inputs)
        else:
            outputs = default_outputs(model, x, expected)
    missing = sorted(set(expected) - set(outputs))
    assert not missing, f"{fixture}: model produced no {missing} to compare"
    diffs, problems = {}, []
    for name, want in expected.items():
        got = outputs[name]
        if got.shape != want.shape:
            problems.append(f"{name}: shape {tuple(got.shape)} != fixture {tuple(want.shape)}")
            continue
        if want.dtype in (torch.bool, torch.int64, torch.int32):
            diffs[name] = float((got != want).sum())
            if diffs[name]:
                problems.append(f"{name}: {int(diffs[name])} elements differ (exact match required)")
            continue
        diffs[name] = (got.float() - want.float()).abs().max().item()
        if not diffs[name] < TOLERANCE:
            problems.append(f"{name}: max abs diff {diffs[name]:.3g} >= {TOLERANCE}")
    assert not problems, f"{fixture} on {backend}: " + "; ".join(problems)
    return diffs

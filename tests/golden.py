"""Golden fixtures (tests/golden): outputs of the official implementations.

The contract (tests/golden/README.md): build the zoo model from ``config.json`` through the
family's ``create_from_official``, pass the official ``state_dict`` (wrapped as official releases
wrap it) through ``checkpoint_filter_fn``, load it strictly, and reproduce every stored tensor to
1e-4 in float32.

What is compared: ``logits`` / ``output`` and ``features.i`` of ``input`` (one
``forward_intermediates`` pass), ``<name>_features.i`` of every other stored ``<name>_input``, and
what the family's capture in ``golden_captures.py`` records with forward hooks on named submodules
during the ``input`` pass (BiFormer's routing indices). Nothing test-only lives in the models.
"""
import json
import os

import torch
from safetensors.torch import load_file

import backbones
import ops
from golden_captures import CAPTURES

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


def wrapper_key(config):
    """The key official checkpoints wrap the state_dict in: ``checkpoint_wrapper_key`` is the key
    itself (``model``) or a sentence that starts with it (``'model' (and 'model_ema') in ...``,
    ``state_dict (official imagenet.py saves ...)``); ``none: ...`` or no entry: a bare state_dict."""
    import re
    text = (config.get("checkpoint_wrapper_key") or "").strip()
    match = re.match(r"'?([A-Za-z_][A-Za-z0-9_]*)'?", text)
    if not match or match[1].lower() == "none":
        return None
    return match[1]


def build_from_fixture(family, config, state_dict):
    """The zoo model of a fixture, official weights loaded strictly (``family``: the record)."""
    model = family.create_from_official(config["kwargs"], config.get("official_class"))
    wrapper = wrapper_key(config)
    checkpoint = {wrapper: state_dict} if wrapper else state_dict
    model.load_state_dict(family.checkpoint_filter_fn(checkpoint, model), strict=True)
    return model.eval()


def model_outputs(model, inputs, expected_names):
    """The tensors the fixture names, from the zoo model. One pass over ``input`` gives both the
    final output and the features (forward_intermediates' final output is forward_features', as
    the conformance suite checks): the Triton path under the interpreter is slow enough to count
    passes."""
    outputs = {}
    head = [n for n in ("logits", "output") if n in expected_names]
    wants_features = any(n.startswith("features.") for n in expected_names)
    x = inputs["input"]
    if wants_features:
        final, feats = model.forward_intermediates(x)
        outputs.update({f"features.{i}": f for i, f in enumerate(feats)})
        if head:
            outputs[head[0]] = model.forward_head(final)
    elif head:
        outputs[head[0]] = model(x)
    for name in head[1:]:  # a fixture may store the logits under both names
        outputs[name] = outputs[head[0]]
    for name, extra in inputs.items():
        prefix = name[:-len("_input")]
        if name != "input" and any(n.startswith(prefix + "_features.") for n in expected_names):
            feats = model.forward_intermediates(extra, intermediates_only=True)
            outputs.update({f"{prefix}_features.{i}": f for i, f in enumerate(feats)})
    return outputs


def run_with_captures(family_name, model, config, fn):
    """``fn()``'s outputs plus what the family's capture hooks record while it runs."""
    captures = CAPTURES[family_name](model, config) if family_name in CAPTURES else {}
    recorded, handles = {}, []
    for name, (module, extract) in captures.items():
        def hook(_module, _args, output, name=name, extract=extract):
            recorded[name] = extract(output)
        handles.append(module.register_forward_hook(hook))
    try:
        outputs = fn()
    finally:
        for h in handles:
            h.remove()
    outputs.update(recorded)
    return outputs


def run_fixture(root, fixture, backend):
    """Max abs difference per stored tensor; raises AssertionError naming every mismatch."""
    family = backbones.get_family(family_of(fixture))
    config, state_dict, io = load_fixture(root, fixture)
    model = build_from_fixture(family, config, state_dict)
    inputs = {k: v for k, v in io.items() if k == "input" or k.endswith("_input")}
    expected = {k: v for k, v in io.items() if k not in inputs}
    with torch.no_grad(), ops.use_backend(backend):
        outputs = run_with_captures(family.name, model, config,
                                    lambda: model_outputs(model, inputs, expected))
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

"""Make BiFormer's golden fixtures by running the official code (rayleizhu/BiFormer).

    python tests/golden/make/biformer.py /path/to/BiFormer [--only NAME ...] [--check] [--out DIR]

``/path/to/BiFormer``: a checkout of the official repository at ``COMMIT`` (needs ``einops`` and
``fairscale`` installed; nothing in it is patched). Each fixture of ``FIXTURES`` is written to
``DIR/<name>`` (default: ``tests/golden``); ``--check`` regenerates instead and compares with the
stored files (the three original fixtures were made with the same recipe and regenerate bit for
bit with the default thread count).

Recipe (tests/golden/README.md): the official model is built from ``kwargs``; every parameter and
floating buffer is re-initialised from ``torch.Generator().manual_seed(seed)`` in state_dict order
(norm weights, BN running_var and other 1-D non-bias parameters such as layer-scale gammas
U(0.5, 1.5); BN running_mean and biases N(0, 0.1); conv / linear weights
N(0, clamp(1 / sqrt(fan_in), 0.02, 0.2))); the input is the next ``torch.randn`` draw of the same generator; eval mode, float32,
CPU. Stored: the official state_dict (official keys), ``input``, ``logits`` (classifiers),
``features.i`` (the stage outputs; BiFormer_mm: its own outputs, after ``extra_norms``) and
``routing_idx.<official module path>`` (the top-k region indices of every routed layer, recorded at
the official ``torch.topk`` call).

Routing robustness: a fixture is only kept when every routed layer's top-k decision has a margin
(k-th minus (k+1)-th region score) far above the float32 noise of the scores (measured against the
same official forward in float64, which must route identically): ``seed`` is the first seed from
``seed_from`` that passes.
"""
import argparse
import contextlib
import importlib
import json
import math
import os
import sys
import types

import torch
import torch.nn as nn

OFFICIAL_REPO = "rayleizhu/BiFormer"
COMMIT = "1697bbbeafb8680524898f1dcaac10defd0604be"
HERE = os.path.dirname(os.path.abspath(__file__))
MIN_MARGIN_OVER_NOISE = 100.0

CLASSES = {
    "BiFormer": "models/biformer.py:BiFormer",
    "BiFormerSTL": "models/biformer_stl.py:BiFormerSTL",
    "nchwBiFormerSTL": "models/biformer_stl_nchw.py:nchwBiFormerSTL",
    "BiFormer_mm": "object_detection/models_mm/biformer_mm.py:BiFormer_mm",
}

_TSB_ROUTING = dict(kv_downsample_mode="identity", kv_per_wins=[-1, -1, -1, -1],
                    param_routing=False, diff_routing=False, soft_routing=False, pe=None)

FIXTURES = {
    # --- the original fixtures (released layouts, reduced widths) ---
    "biformer": dict(
        cls="BiFormer", input_shape=[2, 3, 224, 224], seed_from=0,
        kwargs=dict(depth=[2, 2, 1, 1], embed_dim=[16, 32, 48, 64], mlp_ratios=[3, 3, 3, 3],
                    n_win=7, kv_downsample_mode="identity", kv_per_wins=[-1, -1, -1, -1],
                    topks=[1, 4, 16, -2], side_dwconv=5, before_attn_dwconv=3,
                    layer_scale_init_value=-1, qk_dims=[16, 32, 48, 64], head_dim=8,
                    param_routing=False, diff_routing=False, soft_routing=False, pre_norm=True,
                    pe=None, num_classes=1000)),
    "biformer/stl": dict(
        cls="BiFormerSTL", input_shape=[2, 3, 224, 224], seed_from=0,
        kwargs=dict(depth=[1, 1, 2, 1], embed_dim=[16, 32, 48, 64], head_dim=8,
                    mlp_ratios=[4, 4, 4, 4], norm_layer="torch.nn.BatchNorm2d", n_wins=[7, 7, 7, 7],
                    topks=[1, 4, 16, -2], side_dwconv=5)),
    "biformer/stl_nchw": dict(
        cls="nchwBiFormerSTL", input_shape=[2, 3, 224, 224], seed_from=0,
        kwargs=dict(depth=[1, 1, 2, 1], embed_dim=[16, 32, 48, 64], head_dim=8,
                    mlp_ratios=[4, 4, 4, 4], norm_layer="torch.nn.BatchNorm2d", n_wins=[7, 7, 7, 7],
                    topks=[1, 4, 16, -1], side_dwconv=5)),
    # --- non-default constructor arguments ---
    "biformer/tsb_nondefault": dict(
        cls="BiFormer", input_shape=[2, 3, 120, 152], seed_from=0,
        kwargs=dict(depth=[1, 2, 1, 1], embed_dim=[16, 32, 48, 64], qk_dims=[8, 16, 32, 64],
                    head_dim=4, mlp_ratios=[2, 3, 4, 1.5], n_win=4, topks=[3, 5, 2, -1],
                    side_dwconv=3, before_attn_dwconv=3, layer_scale_init_value=0.5, qk_scale=0.4,
                    mlp_dwconv=True, param_attention="qkvo", pre_norm=True, auto_pad=True,
                    num_classes=10, **_TSB_ROUTING),
        notes="Non-default BiFormer arguments: qk_dims != embed_dim (8/16/32 q/k channels for "
              "16/32/48 value channels), head_dim 4 (2/4/8 BRA heads), per-stage mlp_ratios "
              "[2, 3, 4, 1.5], n_win 4, topks [3, 5, 2, -1] (last stage: plain Attention, no "
              "LePE), side_dwconv 3, layer_scale_init_value 0.5 (gamma1/gamma2 exist; "
              "re-initialised U(0.5,1.5) like every 1-D non-bias parameter), qk_scale 0.4 (BRA "
              "router and token attention; the global stage keeps its own head_dim**-0.5), "
              "mlp_dwconv (3x3 depthwise conv in the MLP), auto_pad with a 120x152 input: "
              "30x38 / 15x19 / 8x10 / 4x5 maps, each BRA stage zero-padded to a multiple of "
              "n_win before the qkv projection, without any region being all padding."),
    "biformer/tsb_postnorm": dict(
        cls="BiFormer", input_shape=[2, 3, 96, 96], seed_from=0,
        kwargs=dict(depth=[1, 1, 2, 1], embed_dim=[16, 32, 48, 64], qk_dims=[16, 32, 48, 64],
                    head_dim=16, mlp_ratios=[4, 2, 3, 2], n_win=3, topks=[2, 4, 6, -2],
                    side_dwconv=7, before_attn_dwconv=0, layer_scale_init_value=-1,
                    param_attention="qkv", pre_norm=False, num_classes=10, **_TSB_ROUTING),
        notes="Non-default BiFormer arguments: pre_norm False (post-norm blocks), "
              "param_attention 'qkv' (no BRA output projection), before_attn_dwconv 0 (no conv "
              "position embedding), side_dwconv 7 (BRA LePE and the last stage's AttentionLePE), "
              "head_dim 16 (1/2/3 BRA heads), per-stage mlp_ratios [4, 2, 3, 2], n_win 3, topks "
              "[2, 4, 6, -2]; a 96x96 input (24/12/6/3 maps, divisible by n_win: no padding)."),
    "biformer/stl_nondefault": dict(
        cls="BiFormerSTL", input_shape=[2, 3, 128, 160], seed_from=0,
        kwargs=dict(depth=[1, 1, 2, 1], embed_dim=[16, 32, 48, 64], head_dim=16,
                    mlp_ratios=[2, 3, 1, 4], pre_head_norm_layer="torch.nn.BatchNorm2d",
                    n_wins=[4, 4, 2, 1], topks=[2, 5, 3, -1], side_dwconv=3, qk_scale=0.25,
                    num_classes=10),
        notes="Non-default BiFormerSTL arguments: norm_layer left at the class default (timm "
              "LayerNorm2d, eps 1e-6, for the stem and patch merging; the release passes "
              "BatchNorm2d) with pre_head_norm_layer BatchNorm2d, head_dim 16 (1/2/3 heads), "
              "per-stage mlp_ratios [2, 3, 1, 4] and n_wins [4, 4, 2, 1], topks [2, 5, 3, -1] "
              "(last stage: plain Attention, no LePE), side_dwconv 3, qk_scale 0.25 (which the "
              "official BasicLayer never passes to its blocks: ignored, the BRA scale stays "
              "qk_dim**-0.5); 128x160 input (32x40 / 16x20 / 8x10 / 4x5 maps)."),
    "biformer/stl_nchw_sidedw3": dict(
        cls="nchwBiFormerSTL", input_shape=[2, 3, 136, 200], seed_from=0,
        kwargs=dict(depth=[1, 1, 2, 1], embed_dim=[16, 32, 48, 64], head_dim=8,
                    mlp_ratios=[3, 2, 4, 2], pre_head_norm_layer="torch.nn.BatchNorm2d",
                    n_wins=[4, 3, 2, 1], topks=[3, 4, 2, -1], side_dwconv=3, qk_scale=0.3,
                    num_classes=10),
        notes="Non-default nchwBiFormerSTL arguments: side_dwconv 3 (nchwBRA's LePE is 3x3, "
              "while the official block builds nchwAttentionLePE(dim) without side_dwconv, so the "
              "topk=-1 stage keeps a 5x5 LePE), norm_layer at the class default (timm "
              "LayerNorm2d) with pre_head_norm_layer BatchNorm2d, per-stage mlp_ratios "
              "[3, 2, 4, 2] and n_wins [4, 3, 2, 1], topks [3, 4, 2, -1], qk_scale 0.3 (never "
              "passed to the blocks: ignored); a 136x200 input gives 34x50 / 17x25 / 8x12 / 4x6 "
              "maps: floor-size regions (8x12, 5x8, 4x6) that do not tile the first two maps, so "
              "the nchw op's ceil-mode region means over valid tokens and its zero padding of "
              "q/k/v after the projection are exercised."),
    "biformer/mm_autopad": dict(
        cls="BiFormer_mm", input_shape=[2, 3, 104, 152], seed_from=0, classifier=False,
        kwargs=dict(depth=[1, 1, 2, 1], embed_dim=[16, 32, 48, 64], mlp_ratios=[3, 3, 3, 3],
                    n_win=4, topks=[2, 4, 6, -2], side_dwconv=5, before_attn_dwconv=3,
                    layer_scale_init_value=-1, qk_dims=[16, 32, 48, 64], head_dim=8,
                    pre_norm=True, auto_pad=True, use_checkpoint_stages=[], drop_path_rate=0.2,
                    num_classes=80, pretrained=None, **_TSB_ROUTING),
        notes="The official dense backbone (object_detection/models_mm/biformer_mm.py, as the "
              "COCO configs build it: auto_pad, drop_path_rate 0.2, head and pre-head norm "
              "deleted, per-stage timm LayerNorm2d 'extra_norms') at n_win 4 (the configs use "
              "16 / 8) and topks [2, 4, 6, -2]; a 104x152 input gives 26x38 / 13x19 / 7x10 / 4x5 "
              "maps, none divisible by n_win (legacy auto_pad before the qkv projection; no "
              "region is all padding). features.i are the wrapper's outputs (after extra_norms.i, "
              "re-initialised like every norm). Imported with stub modules for mmdet's BACKBONES "
              "registry, get_root_logger and mmcv_custom.load_checkpoint (only used to register "
              "the class and to load a checkpoint, which pretrained=None skips)."),
}


# ----------------------------------------------------------------------------- official code

def _stub_mm_imports():
    """The dense wrapper imports mmdet's registry and logger and mmcv_custom's loader at module
    level; none of them runs when pretrained=None."""
    class Registry:
        def register_module(self, *args, **kwargs):
            return lambda cls: cls

    stubs = {
        "mmdet": {}, "mmdet.models": {},
        "mmdet.models.builder": {"BACKBONES": Registry()},
        "mmdet.utils": {"get_root_logger": lambda *a, **k: None},
        "mmcv_custom": {"load_checkpoint": lambda *a, **k: None},
    }
    for name, attrs in stubs.items():
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        sys.modules[name] = module


def official_class(root, cls):
    path = CLASSES[cls].split(":")[0]
    if root not in sys.path:
        sys.path.insert(0, root)
    if cls == "BiFormer_mm":
        _stub_mm_imports()
        det = os.path.join(root, "object_detection")
        if det not in sys.path:
            sys.path.insert(0, det)
        module = importlib.import_module("models_mm.biformer_mm")
    else:
        module = importlib.import_module(path[:-3].replace("/", "."))
    return getattr(module, cls)


def _resolve(value):
    """``"torch.nn.BatchNorm2d"`` -> the class (config.json stores dotted names)."""
    if isinstance(value, str) and value.startswith(("torch.", "timm.")):
        module, _, name = value.rpartition(".")
        return getattr(importlib.import_module(module), name)
    return value


def build(root, spec):
    cls = official_class(root, spec["cls"])
    kwargs = {k: _resolve(v) for k, v in spec["kwargs"].items()}
    model = cls(**kwargs)
    model.eval()  # not chained: BiFormer_mm's train() override returns None
    return model


# ---------------------------------------------------------------------------------- recipe

def reinitialise(model, generator):
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            attr = name.rpartition(".")[2]
            if attr in ("running_mean", "bias"):
                new = torch.randn(t.shape, generator=generator) * 0.1
            elif t.dim() == 1:  # norm weights, running_var, layer-scale gammas
                new = torch.rand(t.shape, generator=generator) + 0.5
            elif t.dim() >= 2:
                std = min(max(1 / math.sqrt(t[0].numel()), 0.02), 0.2)
                new = torch.randn(t.shape, generator=generator) * std
            else:
                raise RuntimeError(f"no re-initialisation rule for {name} {tuple(t.shape)}")
            t.copy_(new)


@contextlib.contextmanager
def recording_topk():
    """Every ``torch.topk`` call (the official routers') as ``(scores, k, indices)``."""
    calls, original = [], torch.topk

    def topk(input, k, dim=-1, *args, **kwargs):
        out = original(input, k, dim, *args, **kwargs)
        # clone: the nchw router reshapes its indices in place (unsqueeze_)
        calls.append((input.detach().clone(), k, out.indices.clone()))
        return out

    torch.topk = topk
    try:
        yield calls
    finally:
        torch.topk = original


def routed_layer_names(model):
    """Official module paths of the routed blocks, in forward order."""
    names = [name[:-len(".attn")] for name, module in model.named_modules()
             if type(module).__name__ in ("BiLevelRoutingAttention", "nchwBRA")]
    assert all(n.startswith("stages.") for n in names), names
    return names


def run(model, x, classifier):
    """Stored outputs, the router calls, with stage outputs hooked as features."""
    feats, handles = {}, []
    if classifier:
        for i, stage in enumerate(model.stages):
            handles.append(stage.register_forward_hook(
                lambda m, a, out, i=i: feats.__setitem__(f"features.{i}", out.detach().clone())))
    with torch.no_grad(), recording_topk() as calls:
        out = model(x)
    for h in handles:
        h.remove()
    outputs = dict(feats)
    if classifier:
        outputs["logits"] = out
    else:
        outputs.update({f"features.{i}": f for i, f in enumerate(out)})
    return outputs, calls


def margins(calls, calls64):
    """Per routed layer: the smallest gap between the k-th and (k+1)-th score, exact ties at the
    boundary, the float32-vs-float64 noise of the scores, and whether float64 routes the same."""
    stats = []
    for (s, k, idx), (s64, _, idx64) in zip(calls, calls64):
        top = s.sort(-1, descending=True).values
        if k < s.shape[-1]:
            gap = top[..., k - 1] - top[..., k]
        else:  # every region is routed: no decision to flip
            gap = torch.full(s.shape[:-1], math.inf)
        stats.append(dict(min_gap=gap.min().item(), ties=int((gap == 0).sum()),
                          noise=(s.double() - s64).abs().max().item(),
                          same_in_float64=torch.equal(idx.sort(-1).values,
                                                      idx64.sort(-1).values)))
    return stats


def make(root, name, spec):
    classifier = spec.get("classifier", True)
    for seed in range(spec["seed_from"], spec["seed_from"] + 50):
        model = build(root, spec)
        generator = torch.Generator().manual_seed(seed)
        reinitialise(model, generator)
        x = torch.randn(spec["input_shape"], generator=generator)
        outputs, calls = run(model, x, classifier)
        model64 = build(root, spec)
        model64.load_state_dict(model.state_dict())
        _, calls64 = run(model64.double(), x.double(), classifier)
        layers = routed_layer_names(model)
        assert len(calls) == len(layers) == len(calls64), (len(calls), layers)
        stats = margins(calls, calls64)
        ok = all(s["ties"] == 0 and s["same_in_float64"]
                 and s["min_gap"] > MIN_MARGIN_OVER_NOISE * max(s["noise"], 1e-7) for s in stats)
        summary = ", ".join(f"gap {s['min_gap']:.3g} noise {s['noise']:.2g}" for s in stats)
        print(f"{name} seed {seed}: {summary} -> {'ok' if ok else 'retry'}")
        if ok:
            break
    else:
        raise RuntimeError(f"{name}: no seed gives robust routing")
    for layer, (_, _, idx) in zip(layers, calls):
        outputs[f"routing_idx.{layer}"] = idx
    outputs["input"] = x
    return model, seed, outputs, stats


def config_for(name, spec, model, seed, stats, command):
    classifier = spec.get("classifier", True)
    features = ("features.i = output of model.stages[i] (NCHW, before any norm), taken with "
                "forward hooks on the official classifier" if classifier else
                "features.i = the official dense wrapper's i-th output (stage i after "
                "extra_norms[i], NCHW)")
    notes = (
        f"Every parameter and floating buffer was re-initialised from "
        f"torch.Generator().manual_seed({seed}) in state_dict order: norm weights, BN running_var "
        "and other 1-D non-bias parameters U(0.5,1.5), BN running_mean N(0,0.1), biases (incl. "
        "norm biases) N(0,0.1), conv/linear weights N(0, clamp(1/sqrt(fan_in),0.02,0.2)); the "
        "input is the next torch.randn draw from the same generator. Eval mode, float32, CPU. "
        "routing_idx.<block> holds the official top-k region indices (int64, [N, regions, topk], "
        "descending-score order from torch.topk). " + spec.get("notes", "") +
        " Routing robustness: per routed layer (forward order) the smallest gap between the k-th "
        "and (k+1)-th region score is [" + ", ".join(f"{s['min_gap']:.4g}" for s in stats) +
        "], the float32 noise of the scores (vs the same official forward in float64, which "
        "routes identically) is [" + ", ".join(f"{s['noise']:.2g}" for s in stats) +
        "]; exact ties: " + str(sum(s["ties"] for s in stats)) + ".")
    return {
        "official_repo": OFFICIAL_REPO,
        "commit": COMMIT,
        "official_class": CLASSES[spec["cls"]],
        "kwargs": spec["kwargs"],
        "input_shape": spec["input_shape"],
        "features": features,
        "checkpoint_wrapper_key": "model",
        "official_param_count": sum(p.numel() for p in model.parameters()),
        "seed": seed,
        "made_by": command,
        "notes": notes,
    }


def main():
    from safetensors.torch import load_file, save_file

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("official", help="checkout of rayleizhu/BiFormer at " + COMMIT)
    parser.add_argument("--only", nargs="*", help="fixture names (default: all)")
    parser.add_argument("--check", action="store_true", help="compare with the stored files")
    parser.add_argument("--out", default=os.path.dirname(HERE))
    args = parser.parse_args()
    root = os.path.abspath(args.official)
    for name in args.only or FIXTURES:
        spec = FIXTURES[name]
        model, seed, outputs, stats = make(root, name, spec)
        folder = os.path.join(args.out, name)
        state_dict = {k: v.contiguous() for k, v in model.state_dict().items()}
        if args.check:  # bit for bit on the same machine and thread count; else float noise
            for what, got in (("state_dict", state_dict), ("io", outputs)):
                want = load_file(os.path.join(folder, f"{what}.safetensors"))
                assert got.keys() == want.keys(), (name, what, sorted(set(got) ^ set(want)))
                diff = max((got[k].double() - want[k].double()).abs().max().item() for k in want)
                print(f"{name}: {what} max abs diff {diff:.3g}")
            continue
        os.makedirs(folder, exist_ok=True)
        save_file(state_dict, os.path.join(folder, "state_dict.safetensors"))
        save_file({k: v.contiguous() for k, v in outputs.items()},
                  os.path.join(folder, "io.safetensors"))
        command = f"python tests/golden/make/biformer.py /path/to/BiFormer --only {name}"
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(config_for(name, spec, model, seed, stats, command), f, indent=2)
            f.write("\n")
        print(f"wrote {folder}")


if __name__ == "__main__":
    main()

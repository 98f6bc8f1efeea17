"""CSWin golden fixtures with non-default constructor arguments, made by running the OFFICIAL code.

    python tests/golden/make/cswin.py /tmp/CSWin-Transformer [--out tests/golden]

The first argument is a checkout (or ``git archive``) of microsoft/CSWin-Transformer at COMMIT; the
official classes are imported from there and run on the CPU in float32, eval mode. Nothing of the
official code is in this file.

The segmentation backbone's module imports mmcv / mmseg only for its registry decorator, its
logger and its checkpoint loader (none of which the forward pass uses): this script puts stand-ins
for exactly those three names into ``sys.modules`` and loads the file as a package module so its
relative ``from ..builder import BACKBONES`` resolves to the stand-in.
"""
import argparse
import importlib.util
import json
import math
import os
import shlex
import sys
import types
import warnings

import torch
import torch.nn as nn
from safetensors.torch import save_file

COMMIT = "f111ae2f771df32006e7afd7916835dd67d4cb9d"
REPO = "microsoft/CSWin-Transformer"
CLASSIFIER = "models/cswin.py:CSWinTransformer"
DENSE = "segmentation/backbone/cswin_transformer.py:CSWin"

REINIT = ("All parameters re-initialised from torch.manual_seed({seed}) in state_dict order: "
          "LayerNorm weight U(0.5, 1.5), every bias N(0, 0.1), get_v (LePE depthwise conv) weight "
          "N(0, 0.3), qkv.weight N(0, sqrt(2 / fan_in)) so attention is far from uniform, other "
          "weights N(0, 1 / sqrt(fan_in)). Input from torch.Generator().manual_seed({input_seed}) "
          "(standard normal).")

FIXTURES = {
    "cswin_nondefault": dict(
        official_class=CLASSIFIER,
        kwargs=dict(img_size=96, patch_size=4, in_chans=3, num_classes=7, embed_dim=16,
                    depth=[2, 1, 3, 2], split_size=[3, 4, 6, 3], num_heads=[2, 8, 4, 2],
                    mlp_ratio=2.5, qkv_bias=False, qk_scale=0.2, drop_rate=0.0,
                    attn_drop_rate=0.0, drop_path_rate=0.1, use_chk=False),
        input_shape=[2, 3, 96, 96],
        checkpoint_wrapper_key="state_dict_ema",
        seed=0, input_seed=1234,
        features=("features.i = output of the LAST CSWinBlock of stage{i+1} (forward hook on "
                  "model.stage{i+1}[-1]), tokens (B, H*W, C) reshaped row-major to (B, H, W, C) and "
                  "permuted to NCHW; no norm. logits = head(mean_tokens(norm(stage4 output)))."),
        notes=("Official CLASSIFICATION class at non-default arguments the released configs never "
               "change. img_size 96 -> token grids 24/12/6/3 with split_size [3, 4, 6, 3]: stage 3's "
               "grid (6) equals its split, so the official CSWinBlock sets last_stage=True there and "
               "builds ONE full-attention branch with all 4 heads (attns.0 only, get_v on all 64 "
               "channels) although it is not the last stage; stages 1-2 have two stripe branches "
               "of different widths (3 and 4). num_heads [2, 8, 4, 2] is not monotone (head dims "
               "8, 4, 16, 64); depth [2, 1, 3, 2]; mlp_ratio 2.5 (hidden 40/80/160/320); "
               "qkv_bias=False (no qkv.bias keys); qk_scale=0.2 replaces head_dim ** -0.5 in every "
               "branch; drop_path_rate 0.1 (identity in eval). Stage dims 16/32/64/128 "
               "(embed_dim * 2^i in this class). norm_layer left at nn.LayerNorm (eps 1e-5).")),
    "cswin_dense_nondefault": dict(
        official_class=DENSE,
        kwargs=dict(img_size=224, patch_size=4, in_chans=3, embed_dim=12, depth=[1, 2, 1, 2],
                    split_size=[4, 3, 8, 4], num_heads=[2, 6, 6, 12], mlp_ratio=3.0,
                    qkv_bias=False, qk_scale=0.3, drop_rate=0.0, attn_drop_rate=0.0,
                    drop_path_rate=0.1, use_chk=False),
        input_shape=[2, 3, 100, 76],
        checkpoint_wrapper_key="state_dict",
        seed=0, input_seed=4321,
        features=("features.i = element i of the tuple returned by CSWin.forward: output of the "
                  "last block of stage{i+1} through the top-level LayerNorm norm{i+1}, NCHW. No "
                  "logits: this backbone has no classifier head."),
        notes=("Official SEGMENTATION backbone at non-default arguments. num_heads [2, 6, 6, 12] "
               "-> stage widths embed_dim * heads[i+1] // heads[i] = 12/36/36/72 (ratios 3, 1, 2, "
               "not the released 2, 2, 2). split_size [4, 3, 8, 4] (stage 4 is always one "
               "full-grid branch). Input 100x76 -> token grids 25x19, 13x10, 7x5, 4x3, so every "
               "stripe stage pads with the first half of the padding in front: stage 1 (split 4) "
               "H 25->28 (top 1, bottom 2) and W 19->20 (0, 1); stage 2 (split 3) H 13->15 (1, 1) "
               "and W 10->12 (1, 1); stage 3 (split 8) has stripes WIDER than the grid: the (H, 8) "
               "branch pads W 5->8 (left 1, right 2) and the (8, W) branch H 7->8 (0, 1). "
               "mlp_ratio 3.0; qk_scale 0.3; qkv_bias=False, which this class IGNORES (its qkv "
               "always has a bias, so the state dict holds qkv.bias); drop_path_rate 0.1 "
               "(identity in eval). Official segmentation checkpoints are mmseg files "
               "('state_dict', keys under 'backbone.'); this file stores the bare backbone keys. "
               "mmcv_custom.load_checkpoint, mmseg.utils.get_root_logger and the relative "
               "..builder.BACKBONES registry were stubbed in sys.modules (registry decorator = "
               "identity); the model code ran unchanged.")),
}


def _stub_mm_imports():
    """Stand-ins for the three mmcv / mmseg names the segmentation module imports."""
    class Registry:
        def register_module(self, *args, **kwargs):
            return lambda cls: cls

    stubs = {
        "mmcv_custom": dict(load_checkpoint=None),
        "mmseg": {},
        "mmseg.utils": dict(get_root_logger=lambda *a, **k: None),
        "_cswin_seg": {},
        "_cswin_seg.backbone": {},
        "_cswin_seg.builder": dict(BACKBONES=Registry()),
    }
    for name, attrs in stubs.items():
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        if name in ("mmseg", "_cswin_seg", "_cswin_seg.backbone"):
            module.__path__ = []
        sys.modules.setdefault(name, module)


def _load(path, name, package=None):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    if package:
        module.__package__ = package
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def official_class(root, official):
    rel, cls = official.split(":")
    if official == DENSE:
        _stub_mm_imports()
        module = _load(os.path.join(root, rel), "_cswin_seg.backbone.cswin_transformer",
                       package="_cswin_seg.backbone")
    else:
        module = _load(os.path.join(root, rel), "_cswin_models_cswin")
    return getattr(module, cls)


@torch.no_grad()
def reinit(model, seed):
    torch.manual_seed(seed)
    modules = dict(model.named_modules())
    for name, p in model.named_parameters():
        owner_name, _, leaf = name.rpartition(".")
        owner = modules[owner_name]
        if isinstance(owner, nn.LayerNorm):
            if leaf == "weight":
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0, 0.1)
        elif leaf == "bias":
            p.normal_(0, 0.1)
        elif owner_name.endswith("get_v"):
            p.normal_(0, 0.3)
        else:
            fan_in = p[0].numel()
            std = math.sqrt(2 / fan_in) if owner_name.endswith("qkv") else 1 / math.sqrt(fan_in)
            p.normal_(0, std)
    for name, b in model.named_buffers():
        if b.is_floating_point():
            raise RuntimeError(f"unexpected float buffer {name}: give it a re-initialisation")


def make(root, name, spec, out_root, made_by):
    cls = official_class(root, spec["official_class"])
    model = cls(**spec["kwargs"])
    reinit(model, spec["seed"])
    model.eval()
    x = torch.randn(*spec["input_shape"], generator=torch.Generator().manual_seed(spec["input_seed"]))
    io = {"input": x}
    with torch.no_grad():
        if spec["official_class"] == DENSE:
            for i, feat in enumerate(model(x)):
                io[f"features.{i}"] = feat
        else:
            captured, handles = {}, []
            size = spec["kwargs"]["img_size"] // 4
            for i in range(4):
                def hook(_m, _a, out, i=i, res=size // 2 ** i):
                    B, L, C = out.shape
                    captured[i] = out.reshape(B, res, res, C).permute(0, 3, 1, 2)
                handles.append(getattr(model, f"stage{i + 1}")[-1].register_forward_hook(hook))
            io["logits"] = model(x)
            for h in handles:
                h.remove()
            io.update({f"features.{i}": f for i, f in sorted(captured.items())})
    path = os.path.join(out_root, name)
    os.makedirs(path, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              os.path.join(path, "state_dict.safetensors"))
    save_file({k: v.contiguous() for k, v in io.items()}, os.path.join(path, "io.safetensors"))
    config = dict(
        official_repo=REPO, commit=COMMIT, official_class=spec["official_class"],
        kwargs=spec["kwargs"], input_shape=spec["input_shape"], features=spec["features"],
        checkpoint_wrapper_key=spec["checkpoint_wrapper_key"], made_by=made_by,
        param_count=sum(p.numel() for p in model.parameters()),
        notes=spec["notes"] + " " + REINIT.format(seed=spec["seed"], input_seed=spec["input_seed"]))
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    print(name, {k: tuple(v.shape) for k, v in io.items()}, config["param_count"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("official", help=f"checkout of {REPO} at {COMMIT}")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), os.pardir))
    parser.add_argument("--only", nargs="*", default=sorted(FIXTURES))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")  # timm's deprecated import paths in the official code
    made_by = "python tests/golden/make/cswin.py <CSWin-Transformer checkout at commit>"
    if args.only != sorted(FIXTURES):
        made_by += " --only " + " ".join(shlex.quote(n) for n in args.only)
    for name in args.only:
        make(args.official, name, FIXTURES[name], os.path.normpath(args.out), made_by)


if __name__ == "__main__":
    main()

"""Make the non-default SHViT golden fixtures by running the OFFICIAL code.

    python tests/golden/make/shvit.py /path/to/SHViT-checkout [--out tests/golden]

The checkout is ysj9909/SHViT at the commit below (``git archive`` of it is enough). Nothing of the
official code is copied here: its two model files are imported from the checkout. The detection
backbone file (``downstream/shvit.py``) imports mmdet / mmcv helpers it needs only for loading
weights and registering the class; stand-ins for those names are put into ``sys.modules`` first.

Recipe (that of tests/golden/shvit): every parameter and float buffer re-initialised from a
torch.Generator seeded 0 with non-identity values, eval mode, float32, CPU; input from a
generator seeded 1; ``features.i`` = the official ``blocks{i+1}`` outputs (forward hooks on the
classifier, the returned tuple of ``Partial_ViT_Exp``).
"""
import argparse
import importlib.util
import json
import os
import sys
import types

import torch
import torch.nn as nn
from safetensors.torch import save_file

COMMIT = "6a729ccf18e0b941714b529638bd3d9bacebcef0"
REPO = "ysj9909/SHViT"

FIXTURES = {
    "shvit_nondefault": dict(
        official_class="model/shvit.py:SHViT",
        kwargs=dict(in_chans=4, num_classes=7, embed_dim=[48, 80, 112], partial_dim=[12, 20, 40],
                    qk_dim=[8, 24, 12], depth=[2, 3, 1], types=["s", "i", "s"],
                    down_ops=[["subsample", 2], ["subsample", 2], [""]], distillation=False),
        input_shape=[2, 4, 150, 200],
        checkpoint_wrapper_key="model",
        notes="Non-default arguments: in_chans=4, num_classes=7; qk_dim differs per stage "
              "(8, 24, 12) and from 16; partial_dim not embed_dim / 4 (12/48, 20/80, 40/112); "
              "types s, i, s (attention in the first stage, none in the middle one, unlike every "
              "release's i, s, s); depth 2, 3, 1; input 150x200 (neither square nor a multiple "
              "of 64: ceil sizes 10x13, 5x7, 3x4)."),
    "shvit_distill": dict(
        official_class="model/shvit.py:SHViT",
        kwargs=dict(in_chans=3, num_classes=6, embed_dim=[32, 48, 48], partial_dim=[8, 12, 20],
                    qk_dim=[16, 4, 32], depth=[1, 2, 2], types=["i", "s", "s"],
                    down_ops=[["subsample", 2], [""], [""]], distillation=True),
        input_shape=[2, 3, 128, 96],
        checkpoint_wrapper_key="model",
        notes="Non-default arguments: distillation=True (second BN_Linear head_dist; logits are "
              "the eval-mode mean (head + head_dist) / 2); down_ops without a transition before "
              "blocks3 (embed_dim 48 -> 48: strides 16, 32, 32); qk_dim 16, 4, 32; partial_dim "
              "8, 12, 20; num_classes=6."),
    "shvit_dense": dict(
        official_class="downstream/shvit.py:Partial_ViT_Exp",
        kwargs=dict(img_size=320, patch_size=16, frozen_stages=0, in_chans=3,
                    embed_dim=[40, 64, 96], partial_dim=[10, 24, 16], qk_dim=[16, 8, 20],
                    depth=[1, 2, 3], types=["s", "s", "i"],
                    down_ops=[["subsample", 2], ["subsample", 2], [""]], pretrained=None,
                    distillation=True),
        input_shape=[1, 3, 200, 264],
        checkpoint_wrapper_key="state_dict",
        notes="The mmdet backbone (no head; output = the tuple of blocks1..3 outputs). Non-default "
              "arguments: types s, s, i (attention in stages 1 and 2, none in stage 3); "
              "partial_dim 10, 24, 16; qk_dim 16, 8, 20; img_size=320 and distillation=True, which "
              "Partial_ViT_Exp accepts and does not use; frozen_stages=0 (the default: the stem's "
              "parameters frozen, no effect in eval). Input 200x264."),
}


def _stub_mm_modules():
    """Names downstream/shvit.py imports from mmdet / mmcv_custom; unused by the model itself."""
    def module(name, **attrs):
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        sys.modules.setdefault(name, m)
        return m

    class _Registry:
        def register_module(self, *args, **kwargs):
            return lambda obj: obj

    def _unused(*args, **kwargs):
        raise RuntimeError("not available in the fixture generator")

    module("mmcv_custom", load_checkpoint=_unused, _load_checkpoint=_unused,
           load_state_dict=_unused)
    module("mmdet")
    module("mmdet.utils", get_root_logger=_unused)
    module("mmdet.models")
    module("mmdet.models.builder", BACKBONES=_Registry())


def _import_file(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def official_class(checkout, spec):
    path, cls = spec.split(":")
    if path.startswith("downstream/"):
        _stub_mm_modules()
    return getattr(_import_file(os.path.join(checkout, path),
                                "official_" + path.replace("/", "_")[:-3]), cls)


@torch.no_grad()
def reinitialise(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in = m.weight[0].numel()
            std = min(max(fan_in ** -0.5, 0.02), 0.2)
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) * std)
            if m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm)):
            m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model


@torch.no_grad()
def run(model, x, headless):
    if headless:
        return None, list(model(x))
    feats = []
    handles = [getattr(model, f"blocks{i}").register_forward_hook(
        lambda _m, _a, out: feats.append(out.clone())) for i in (1, 2, 3)]
    try:
        logits = model(x)
    finally:
        for h in handles:
            h.remove()
    return logits, feats


def make(checkout, out_root, name, spec):
    cls = official_class(checkout, spec["official_class"])
    torch.manual_seed(0)
    model = reinitialise(cls(**spec["kwargs"]))
    model.eval()  # not chained: Partial_ViT_Exp.train() returns None
    headless = spec["official_class"].endswith(":Partial_ViT_Exp")
    x = torch.randn(spec["input_shape"], generator=torch.Generator().manual_seed(1))
    logits, feats = run(model, x, headless)

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    again = cls(**spec["kwargs"])
    again.eval()
    again.load_state_dict(state, strict=True)
    logits2, feats2 = run(again, x, headless)
    reload = max((a - b).abs().max().item() for a, b in zip(feats, feats2))
    if logits is not None:
        reload = max(reload, (logits - logits2).abs().max().item())

    io = {"input": x}
    if logits is not None:
        io["logits"] = logits
    io.update({f"features.{i}": f.contiguous() for i, f in enumerate(feats)})
    folder = os.path.join(out_root, name)
    os.makedirs(folder, exist_ok=True)
    save_file(state, os.path.join(folder, "state_dict.safetensors"))
    save_file(io, os.path.join(folder, "io.safetensors"))
    import timm
    params = sum(p.numel() for p in model.parameters())
    config = dict(
        official_repo=REPO, commit=COMMIT, official_class=spec["official_class"],
        kwargs=spec["kwargs"], input_shape=spec["input_shape"],
        features=("features.i = output of official blocks{i+1} (i = 0, 1, 2)"
                  + (", the tuple Partial_ViT_Exp.forward returns" if headless else
                     ", captured with forward hooks")
                  + "; shapes " + ", ".join(str(list(f.shape)) for f in feats)),
        checkpoint_wrapper_key=spec["checkpoint_wrapper_key"],
        made_by=f"python tests/golden/make/shvit.py <checkout of {REPO} at {COMMIT[:7]}>",
        params=params,
        notes=(spec["notes"] + " Parameters re-initialised with torch.Generator seed 0: "
               "Conv2d/Linear weight ~ N(0, clamp(1/sqrt(fan_in), 0.02, 0.2)), biases ~ N(0, 0.1); "
               "BatchNorm/GroupNorm weight ~ U(0.5, 1.5), bias ~ N(0, 0.1); BN running_mean ~ "
               "N(0, 0.1), running_var ~ U(0.5, 1.5); num_batches_tracked left at 0. Input = "
               "torch.randn(shape) from a torch.Generator seeded 1. eval mode, float32, CPU, "
               f"torch {torch.__version__}, timm {timm.__version__} (the official code imports "
               "SqueezeExcite and trunc_normal_ from timm; unchanged since the repo's timm "
               "0.5.4)"
               + ("; mmdet / mmcv_custom imports of downstream/shvit.py replaced by stand-ins "
                  "(used only to load weights and register the class)" if headless else "")
               + f". Reload check (fresh official model, strict load): max diff {reload:.2e}. "
               f"params={params}."))
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    sizes = {n: os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder)}
    print(name, params, sizes)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkout", help="ysj9909/SHViT checkout at " + COMMIT)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), ".."))
    parser.add_argument("--only", nargs="*", default=sorted(FIXTURES))
    args = parser.parse_args()
    for name in args.only:
        make(os.path.abspath(args.checkout), args.out, name, FIXTURES[name])


if __name__ == "__main__":
    main()

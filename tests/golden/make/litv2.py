"""LITv2 golden fixtures with non-default constructor arguments, made by running the OFFICIAL code.

    python tests/golden/make/litv2.py /tmp/LITv2 [--out DIR] [--only NAME ...]

The first argument is a checkout (or ``git archive``) of ziplab/LITv2 at COMMIT. The three
official ``LITv2`` classes (classifier, mmdet backbone, mmseg backbone) are imported from there and
run on the CPU in float32, eval mode. Nothing of the official code is in this file.

What the official modules need that cannot run here gets a stand-in in ``sys.modules``, and nothing
else does:

* ``DCN``, the compiled DCNv1 extension behind ``DeformConv2dPack`` (its CPU path raises 'Not
  implemented'): ``deform_conv2d_forward`` is ``torchvision.ops.deform_conv2d``, checked below
  against a float64 transcription of the sampling rule of the official CUDA im2col kernel;
* ``apex`` (``amp.float_function`` = identity; it only casts under apex mixed precision);
* the mm registries / loggers / checkpoint loaders the dense modules import but whose forward passes
  never use (``mmdet.registry.MODELS``, ``mmengine.*``; ``mmcv_custom.load_checkpoint``,
  ``mmseg.utils.get_root_logger`` and the relative ``..builder.BACKBONES``): the registry decorators
  are the identity, so no mmcv / mmdet / mmseg install is needed. The dense files are loaded as
  package modules so the relative import resolves to the stand-in.

The official Python modules (models, blocks, HiLo, DTM, ``DeformConv2dPack`` and
``DeformConv2dFunction``) run unchanged; each class's own ``mm_modules`` copy is imported.
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
from torchvision.ops import deform_conv2d

COMMIT = "7501c8662991cad6db780b61fac0886b56a76588"
REPO = "ziplab/LITv2"
CLASSIFIER = "classification/models/litv2.py:LITv2"
DETECTION = "detection/mmdet/models/backbones/litv2.py:LITv2"
SEGMENTATION = "segmentation/mmseg/models/backbones/litv2.py:LITv2"

REINIT = ("Every parameter and floating buffer re-initialised after construction from "
          "torch.manual_seed({seed}), in state_dict order: LayerNorm / BatchNorm weight U(0.5, "
          "1.5), bias N(0, 0.1); DTM conv_offset weight N(0, min(0.2, 1.2 / sqrt(fan_in))), "
          "bias N(0, 0.5) (sampling offsets of O(1) px, fractional, some out of bounds); other "
          "weights N(0, clamp(1 / sqrt(fan_in), 0.02, 0.2)), other biases N(0, 0.1); BatchNorm "
          "running_mean N(0, 0.2), running_var U(0.5, 1.5); num_batches_tracked left at 0. The "
          "input is torch.randn right after, from the same stream. The official DCN kernel was "
          "replaced by torchvision.ops.deform_conv2d (no mask), checked by this script against "
          "a float64 transcription of the CUDA kernel's bilinear sampling rule (corners outside "
          "the map read 0, samples outside (-1, H) x (-1, W) are 0). Verified: the stored "
          "state_dict loaded with strict=True into a freshly built official model reproduces "
          "every stored output exactly.")

FIXTURES = {
    "litv2_nondefault": dict(
        official_class=CLASSIFIER,
        kwargs=dict(img_size=48, patch_size=2, in_chans=4, num_classes=7, embed_dim=12,
                    depths=[1, 2, 1], num_heads=[2, 2, 4], mlp_ratio=2.7, qkv_bias=False,
                    qk_scale=0.3, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.15,
                    ape=False, patch_norm=False, use_checkpoint=False, has_msa=[1, 0, 1],
                    alpha=0.6, local_ws=[3, 5, 1]),
        input_shape=[2, 4, 48, 48],
        checkpoint_wrapper_key="model",
        seed=0,
        features=("features.i (i=0..2) = output of the last block of official stage i "
                  "(model.layers[i].blocks[-1], BEFORE that stage's DTM), (B, H*W, C) reshaped "
                  "row-major to (B, C, H, W), H=W=24, 12, 6; no norm (features.2 is before "
                  "model.norm). logits = head(mean over tokens of norm(stage 2 output))."),
        notes=("Official CLASSIFICATION class at arguments no release changes. THREE stages "
               "(depths [1, 2, 1]: two DTMs, 48 -> 24 -> 12 -> 6 tokens a side); patch_size 2; "
               "in_chans 4; patch_norm=False (no patch_embed.norm keys). has_msa [1, 0, 1]: "
               "attention in stage 0 (never in a release) and none in stage 1, whose local_ws 5 "
               "the ConvFFN block ignores. local_ws [3, 5, 1]: stage 0 HiLo with s=3 on a 24x24 "
               "grid (8x8 pooled Lo-Fi keys, 3x3 Hi-Fi windows); stage 2 s=1 (plain global "
               "attention through l_q / l_kv / l_proj). alpha 0.6: stage 0's 2 heads split "
               "int(1.2) = 1 Lo-Fi / 1 Hi-Fi; s=1 ignores alpha. mlp_ratio 2.7: ConvFFN widths "
               "int(dim * 2.7) = 32, 64, 129 (truncated). qkv_bias=False (no l_q / l_kv / h_qkv "
               "biases); qk_scale 0.3 replaces head_dim ** -0.5 in both branches. "
               "drop_path_rate 0.15 (identity in eval). num_classes 7.")),
    "litv2_det_nondefault": dict(
        official_class=DETECTION,
        kwargs=dict(pretrain_img_size=96, patch_size=3, in_chans=3, embed_dim=12,
                    depths=[1, 1, 2, 1], num_heads=[1, 3, 2, 4], window_size=5, mlp_ratio=3.5,
                    qkv_bias=False, qk_scale=0.25, drop_rate=0.0, attn_drop_rate=0.0,
                    drop_path_rate=0.1, ape=False, patch_norm=True, out_indices=[0, 2, 3],
                    frozen_stages=-1, use_checkpoint=False, has_msa=[0, 1, 1, 1], alpha=0.34,
                    local_ws=[0, 3, 4, 2]),
        input_shape=[2, 3, 90, 122],
        checkpoint_wrapper_key="state_dict",
        seed=0,
        features=("features.i for i in out_indices (0, 2, 3), named by STAGE index: element k of "
                  "the tuple LITv2.forward returns is features.{out_indices[k]}. Stage outputs "
                  "x_out (before the DTM), through norm{i} for i != 0 (this class never norms "
                  "stage 0; stage 1 is not in out_indices, so there is no norm1), NCHW. No "
                  "logits: the backbone has no head."),
        notes=("Official DETECTION (mmdet) backbone at arguments no release changes. patch_size "
               "3 on a 90x122 input: PatchEmbed pads W 122 -> 123, tokens 30x41; DTMs floor to "
               "15x20, 7x10, 3x5. has_msa [0, 1, 1, 1] (attention from stage 1 on). local_ws "
               "[0, 3, 4, 2] with alpha 0.34: stage 1 (3 heads) int(1.02) = 1 Lo-Fi / 2 Hi-Fi, "
               "s=3, grid padded 15x20 -> 15x21; stage 2 (2 heads) int(0.68) = 0 Lo-Fi: Hi-Fi "
               "only, s=4, padded 7x10 -> 8x12; stage 3 (4 heads) int(1.36) = 1 Lo-Fi / 3 Hi-Fi, "
               "s=2, padded 3x5 -> 4x6 (2x3 pooled keys). The padding is of the normed input "
               "before the projections (padded tokens carry no bias here: qkv_bias=False, but "
               "the pooled Lo-Fi keys average the zeros in). num_heads [1, 3, 2, 4] (head dims "
               "12, 8, 24, 24); mlp_ratio 3.5 (ConvFFN widths 42, 84, 168, 336); qk_scale 0.25; "
               "out_indices [0, 2, 3] (norm2 / norm3 only); window_size 5 and pretrain_img_size "
               "96 have no effect in this class; drop_path_rate 0.1 (identity in eval). Official "
               "detection checkpoints are mmdet files ('state_dict', keys under 'backbone.'); "
               "this file stores the bare backbone keys. mmdet.registry.MODELS, "
               "mmengine.runner.checkpoint and mmengine.logging were stubbed in sys.modules "
               "(registry decorator = identity).")),
    "litv2_seg_nondefault": dict(
        official_class=SEGMENTATION,
        kwargs=dict(pretrain_img_size=128, patch_size=4, in_chans=3, embed_dim=8,
                    depths=[2, 1, 1, 2], num_heads=[2, 2, 4, 4], window_size=7, mlp_ratio=1.5,
                    qkv_bias=True, qk_scale=None, drop_rate=0.0, attn_drop_rate=0.0,
                    drop_path_rate=0.3, ape=False, patch_norm=True, out_indices=[1, 3],
                    frozen_stages=-1, use_checkpoint=False, has_msa=[1, 1, 0, 1], alpha=0.75,
                    local_ws=[2, 1, 7, 3]),
        input_shape=[2, 3, 70, 84],
        checkpoint_wrapper_key="state_dict",
        seed=0,
        features=("features.i for i in out_indices (1, 3), named by STAGE index: element k of "
                  "the tuple LITv2.forward returns is features.{out_indices[k]}. Stage outputs "
                  "x_out (before the DTM) through norm{i}, NCHW. No logits: the backbone has no "
                  "head."),
        notes=("Official SEGMENTATION (mmseg) backbone at arguments no release changes. Input "
               "70x84: PatchEmbed pads H 70 -> 72, tokens 18x21; DTMs floor to 9x10, 4x5, 2x2. "
               "has_msa [1, 1, 0, 1]: attention in stages 0, 1 and 3, stage 2 ConvFFN-only (its "
               "local_ws 7 ignored). local_ws [2, 1, 7, 3] with alpha 0.75: stage 0 (2 heads) "
               "int(1.5) = 1 Lo-Fi / 1 Hi-Fi, s=2, grid padded 18x21 -> 18x22; stage 1 s=1: "
               "global attention with both heads; stage 3 (4 heads) int(3.0) = 3 Lo-Fi / 1 "
               "Hi-Fi, s=3 on a 2x2 grid padded to 3x3 (one Hi-Fi window of which 5 tokens are "
               "padding, whose keys are the qkv biases: qkv_bias=True; one pooled Lo-Fi key). "
               "depths [2, 1, 1, 2]; num_heads [2, 2, 4, 4]; mlp_ratio 1.5 (ConvFFN widths 12, "
               "24, 48, 96); out_indices [1, 3] (norm1 / norm3 only); window_size 7 (the blocks' "
               "unused shift_size) and pretrain_img_size have no effect; drop_path_rate 0.3 "
               "(identity in eval). Official segmentation checkpoints are mmseg files "
               "('state_dict', keys under 'backbone.'); this file stores the bare backbone keys. "
               "mmcv_custom.load_checkpoint, mmseg.utils.get_root_logger and the relative "
               "..builder.BACKBONES were stubbed in sys.modules (registry decorator = "
               "identity).")),
}


class _Registry:
    def register_module(self, *args, **kwargs):
        return lambda cls: cls


def _module(name, package=False, **attrs):
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    if package:
        module.__path__ = []
    sys.modules[name] = module
    return module


def _dcn_forward(input, weight, bias, offset, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                 dilation_h, dilation_w, group, deformable_group, im2col_step):
    """The compiled ``DCN.deform_conv2d_forward`` (argument order of deform_conv2d_func.py)."""
    if group != 1 or deformable_group != 1:
        raise NotImplementedError("LITv2's DTM uses one group and one deformable group")
    assert weight.shape[2:] == (kernel_h, kernel_w)
    return deform_conv2d(input, offset, weight, bias, stride=(stride_h, stride_w),
                         padding=(pad_h, pad_w), dilation=(dilation_h, dilation_w))


def _cuda_rule_deform_conv(x, offset, weight, bias, stride, padding):
    """float64 DCNv1 written from the official CUDA im2col kernel's sampling rule."""
    x, offset, weight, bias = (t.double() for t in (x, offset, weight, bias))
    B, C, H, W = x.shape
    kh, kw = weight.shape[2:]
    Ho, Wo = offset.shape[2:]
    base_y = (torch.arange(Ho, dtype=torch.float64) * stride - padding).view(Ho, 1)
    base_x = (torch.arange(Wo, dtype=torch.float64) * stride - padding).view(1, Wo)
    flat = x.reshape(B, C, H * W)
    cols = []
    for i in range(kh):
        for j in range(kw):
            k = i * kw + j
            h = base_y + i + offset[:, 2 * k]        # (B, Ho, Wo)
            w = base_x + j + offset[:, 2 * k + 1]
            inside = (h > -1) & (w > -1) & (h < H) & (w < W)
            h0, w0 = torch.floor(h), torch.floor(w)
            lh, lw = h - h0, w - w0
            val = torch.zeros(B, C, Ho, Wo, dtype=torch.float64)
            for hy, wy in ((h0, 1 - lh), (h0 + 1, lh)):
                for hx, wx in ((w0, 1 - lw), (w0 + 1, lw)):
                    ok = inside & (hy >= 0) & (hy <= H - 1) & (hx >= 0) & (hx <= W - 1)
                    idx = (hy.clamp(0, H - 1) * W + hx.clamp(0, W - 1)).long().view(B, 1, -1)
                    v = flat.gather(2, idx.expand(B, C, -1)).view(B, C, Ho, Wo)
                    val += (wy * wx * ok).unsqueeze(1) * v
            cols.append(val)
    cols = torch.stack(cols, 2)  # (B, C, kh*kw, Ho, Wo)
    out = torch.einsum("bckyx,ock->boyx", cols, weight.reshape(weight.shape[0], C, kh * kw))
    return out + bias.view(1, -1, 1, 1)


def check_dcn_stand_in():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 5, 7, 9, generator=g)
    weight = torch.randn(6, 5, 2, 2, generator=g)
    bias = torch.randn(6, generator=g)
    offset = 2.5 * torch.randn(2, 8, 3, 4, generator=g)  # several px: many samples out of bounds
    got = _dcn_forward(x, weight, bias, offset, 2, 2, 2, 2, 0, 0, 1, 1, 1, 1, 1)
    want = _cuda_rule_deform_conv(x, offset, weight, bias, 2, 0)
    err = (got.double() - want).abs().max().item()
    assert err < 1e-4, f"torchvision deform_conv2d differs from the CUDA kernel's rule by {err}"
    return err


def _forget(prefixes):
    for name in [n for n in sys.modules if n.split(".")[0] in prefixes]:
        del sys.modules[name]


def _load(path, name, package=None):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    if package:
        module.__package__ = package
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def official_class(root, official):
    """The official class, imported from ``root`` with its own ``mm_modules``."""
    rel, cls = official.split(":")
    top = rel.split("/")[0]
    _module("DCN", deform_conv2d_forward=_dcn_forward)
    _module("apex", package=True, amp=types.SimpleNamespace(float_function=lambda fn: fn))
    # every official tree has its own mm_modules / models packages under the same names
    _forget({"mm_modules", "models"})
    sys.path[:] = [p for p in sys.path if not p.startswith(os.path.abspath(root))]
    sys.path.insert(0, os.path.join(os.path.abspath(root), top))
    if official == CLASSIFIER:
        module = importlib.import_module("models.litv2")
    elif official == DETECTION:
        _module("mmdet", package=True)
        _module("mmdet.registry", MODELS=_Registry())
        _module("mmengine", package=True)
        _module("mmengine.runner", package=True)
        _module("mmengine.runner.checkpoint", load_state_dict=None, CheckpointLoader=None)
        _module("mmengine.logging", MMLogger=None)
        module = _load(os.path.join(root, rel), "_litv2_det_backbone")
    elif official == SEGMENTATION:
        _module("mmcv_custom", load_checkpoint=None)
        _module("mmseg", package=True)
        _module("mmseg.utils", get_root_logger=lambda *a, **k: None)
        _module("_litv2_seg", package=True)
        _module("_litv2_seg.backbones", package=True)
        _module("_litv2_seg.builder", BACKBONES=_Registry())
        module = _load(os.path.join(root, rel), "_litv2_seg.backbones.litv2",
                       package="_litv2_seg.backbones")
    else:
        raise ValueError(official)
    return getattr(module, cls)


@torch.no_grad()
def reinit(model, seed):
    torch.manual_seed(seed)
    modules = dict(model.named_modules())
    for name, t in model.state_dict(keep_vars=True).items():
        owner_name, _, leaf = name.rpartition(".")
        owner = modules[owner_name]
        if not t.is_floating_point():
            continue  # num_batches_tracked
        if isinstance(owner, (nn.LayerNorm, nn.BatchNorm2d)):
            if leaf == "weight":
                t.uniform_(0.5, 1.5)
            elif leaf == "bias":
                t.normal_(0, 0.1)
            elif leaf == "running_mean":
                t.normal_(0, 0.2)
            elif leaf == "running_var":
                t.uniform_(0.5, 1.5)
            else:
                raise RuntimeError(f"unexpected norm tensor {name}")
        elif owner_name.endswith("conv_offset"):
            if leaf == "weight":
                t.normal_(0, min(0.2, 1.2 / math.sqrt(t[0].numel())))
            else:
                t.normal_(0, 0.5)
        elif leaf == "bias":
            t.normal_(0, 0.1)
        elif leaf == "weight" and t.dim() > 1:
            t.normal_(0, min(max(1 / math.sqrt(t[0].numel()), 0.02), 0.2))
        else:
            raise RuntimeError(f"unexpected tensor {name}: give it a re-initialisation")


def run(model, spec, x):
    kw = spec["kwargs"]
    if spec["official_class"] != CLASSIFIER:
        out_indices = [i for i in range(len(kw["depths"])) if i in kw["out_indices"]]
        return {f"features.{i}": f for i, f in zip(out_indices, model(x))}
    captured, handles = {}, []
    side = kw["img_size"] // kw["patch_size"]
    for i, layer in enumerate(model.layers):
        def hook(_m, _a, out, i=i, res=side // 2 ** i):
            B, _, C = out.shape
            captured[i] = out.reshape(B, res, res, C).permute(0, 3, 1, 2).contiguous()
        handles.append(layer.blocks[-1].register_forward_hook(hook))
    io = {"logits": model(x)}
    for h in handles:
        h.remove()
    io.update({f"features.{i}": f for i, f in sorted(captured.items())})
    return io


def make(root, name, spec, out_root, made_by, dcn_err):
    cls = official_class(root, spec["official_class"])
    model = cls(**spec["kwargs"])
    reinit(model, spec["seed"])
    model.eval()
    x = torch.randn(*spec["input_shape"])
    with torch.no_grad():
        io = run(model, spec, x)
        fresh = cls(**spec["kwargs"])
        fresh.eval()  # not chained: the dense classes' train() returns None
        fresh.load_state_dict(model.state_dict(), strict=True)
        again = run(fresh, spec, x)
    assert all(torch.equal(io[k], again[k]) for k in io), "reloaded official model differs"
    io["input"] = x
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
        notes=(spec["notes"] + " " + REINIT.format(seed=spec["seed"])
               + " (torchvision vs the kernel's rule on random offsets: max abs diff "
               + f"{dcn_err:.1e}.)"))
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
    made_by = "python tests/golden/make/litv2.py <ziplab/LITv2 checkout at commit>"
    if args.only != sorted(FIXTURES):
        made_by += " --only " + " ".join(shlex.quote(n) for n in args.only)
    dcn_err = check_dcn_stand_in()
    for name in args.only:
        make(args.official, name, FIXTURES[name], os.path.normpath(args.out), made_by, dcn_err)


if __name__ == "__main__":
    main()

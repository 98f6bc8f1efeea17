"""Make the non-default ULSAM golden fixtures by running the OFFICIAL module.

    python tests/golden/make/ulsam.py /path/to/ULSAM-checkout [--out tests/golden]

The checkout is Nandan91/ULSAM at the commit below. Nothing of the official code is copied here:
``ulsam.py`` is imported from the checkout. Its import-time
``torch.set_default_tensor_type(torch.cuda.FloatTensor)`` is neutralised for the import (the same
single change the shared fixtures made); nothing else is touched.

Recipe (that of tests/golden/ulsam): the module built under ``torch.manual_seed(0)``, every
parameter and float buffer then re-initialised in ``named_modules()`` order from the global RNG
(conv weight ~ N(0, clamp(1/sqrt(fan_in), 0.02, 0.2)), bias ~ N(0, 0.1); BN weight ~ U(0.5, 1.5),
bias ~ N(0, 0.1), running_mean ~ N(0, 0.2), running_var ~ U(0.5, 1.5)), the input drawn right
after from the same stream and scaled; eval mode, float32, CPU.
"""
import argparse
import importlib.util
import json
import os

import torch
import torch.nn as nn
from safetensors.torch import save_file

COMMIT = "9a07d686b69ff41b6b640791719f6b6889eae84b"
REPO = "Nandan91/ULSAM"

FIXTURES = {
    "ulsam_g1": dict(
        kwargs=dict(nin=20, nout=20, h=13, w=17, num_splits=1), input_shape=[2, 20, 13, 17],
        scale=16.0,
        notes="num_splits=1 (one attention map for all channels, the paper's baseline case); "
              "non-square 13x17 input, odd sides (max-pool borders on every side)."),
    "ulsam_g16": dict(
        kwargs=dict(nin=64, nout=64, h=9, w=20, num_splits=16), input_shape=[3, 64, 9, 20],
        scale=6.0,
        notes="num_splits=16 (G = 4 channels per subspace, the most subspaces the paper uses); "
              "non-square 9x20 input, batch 3."),
    "ulsam_g8": dict(
        kwargs=dict(nin=40, nout=40, h=7, w=7, num_splits=8), input_shape=[2, 40, 7, 7],
        scale=8.0,
        notes="num_splits=8 with G = 5 (an odd subspace width), 7x7 (the last MobileNet stage's "
              "size), peaked softmax."),
}


def official_class(checkout):
    """``ulsam.py:ULSAM`` from the checkout, with its import-time CUDA default disabled."""
    original = torch.set_default_tensor_type
    torch.set_default_tensor_type = lambda *a, **k: None
    try:
        spec = importlib.util.spec_from_file_location("official_ulsam", os.path.join(checkout, "ulsam.py"))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        torch.set_default_tensor_type = original
    return mod.ULSAM


@torch.no_grad()
def reinitialise(model):
    for _, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            std = min(max(m.weight[0].numel() ** -0.5, 0.02), 0.2)
            m.weight.normal_(0, std)
            if m.bias is not None:
                m.bias.normal_(0, 0.1)
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_(0, 0.1)
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model


def make(checkout, out_root, name, spec):
    cls = official_class(checkout)
    torch.manual_seed(0)
    model = reinitialise(cls(**spec["kwargs"])).eval()
    x = spec["scale"] * torch.randn(spec["input_shape"])
    with torch.no_grad():
        out = model(x)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    again = cls(**spec["kwargs"]).eval()
    again.load_state_dict(state, strict=True)
    with torch.no_grad():
        reload = (again(x) - out).abs().max().item()
    attn = ((out - x) / x).abs()
    folder = os.path.join(out_root, name)
    os.makedirs(folder, exist_ok=True)
    save_file(state, os.path.join(folder, "state_dict.safetensors"))
    save_file({"input": x, "output": out.contiguous()}, os.path.join(folder, "io.safetensors"))
    config = dict(
        source_repo=REPO, official_repo=REPO, commit=COMMIT, source_class="ulsam.py:ULSAM",
        official_class="ulsam.py:ULSAM", kwargs=spec["kwargs"], input_shape=spec["input_shape"],
        output_shape=list(out.shape),
        made_by=f"python tests/golden/make/ulsam.py <checkout of {REPO} at {COMMIT[:7]}>",
        params=sum(p.numel() for p in model.parameters()),
        notes=(spec["notes"] + f" input = {spec['scale']} * torch.randn(input_shape), drawn after "
               "the re-initialisation (same RNG stream, torch.manual_seed(0) before building). "
               "Re-initialisation in named_modules() order: Conv2d weight ~ N(0, clamp(1/sqrt("
               "fan_in), 0.02, 0.2)), bias ~ N(0, 0.1); BatchNorm weight ~ U(0.5, 1.5), bias ~ "
               "N(0, 0.1), running_mean ~ N(0, 0.2), running_var ~ U(0.5, 1.5); "
               "num_batches_tracked left at 0. The official ulsam.py's import-time "
               "torch.set_default_tensor_type(torch.cuda.FloatTensor) was neutralised for the "
               "import (no other change). eval mode, float32, CPU, torch "
               f"{torch.__version__}. Attention range |out - x| / |x| in [{attn.min():.2e}, "
               f"{attn.max():.2e}]. Reload check (fresh official module, strict load): max diff "
               f"{reload:.2e}."),
        verified_reload_max_abs_diff=reload)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    print(name, config["params"], f"attn max {attn.max():.3f}", f"reload {reload:.1e}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkout", help="Nandan91/ULSAM checkout at " + COMMIT)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), ".."))
    parser.add_argument("--only", nargs="*", default=sorted(FIXTURES))
    args = parser.parse_args()
    for name in args.only:
        make(os.path.abspath(args.checkout), args.out, name, FIXTURES[name])


if __name__ == "__main__":
    main()

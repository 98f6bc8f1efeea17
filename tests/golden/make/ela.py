"""Make the ELA golden fixtures of the versions the shared set does not cover (ELA-T, ELA-S,
ELA-L as modules) by running the OFFICIAL classes, at non-default arguments.

    python tests/golden/make/ela.py /path/to/ELA_Code-checkout [--out tests/golden]

The checkout is Xuwei86/ELA_Code at the commit below (``git archive`` of the three attention
files is enough; they import only torch). Nothing of the official code is copied here: the
classes are imported from the checkout.

Recipe (that of tests/golden/ela, spec ``ela.md`` section 11): every parameter re-initialised
after construction with ``torch.manual_seed(seed)``, modules visited in ``named_modules()`` order:
Conv1d weight ~ N(0, clamp(1 / sqrt(fan_in), 0.02, 0.2)) with fan_in = weight[0].numel(),
GroupNorm weight ~ U(0.5, 1.5), bias ~ N(0, 0.1); the input drawn with ``torch.randn`` right
after (same RNG stream). CPU, float32, eval mode. Non-square inputs, sides shorter than the
kernel, a non-default ``ks`` and channel counts other than the shared fixture's.
"""
import argparse
import importlib.util
import json
import os

import torch
import torch.nn as nn
from safetensors.torch import save_file

COMMIT = "cd4594da47e76d2f7fdedd1fbdb105ea1becfc79"
REPO = "Xuwei86/ELA_Code"

FIXTURES = {
    "ela_t": dict(
        official_class="YOLOF/models/yolof/attention.py:ELA72", paper_version="ELA-T",
        kwargs=dict(channel=64), input_shape=[2, 64, 20, 33], seed=1,
        notes="ELA-T (kernel_size=5, Conv1d groups=C (depthwise), GroupNorm(32, C)) as the "
              "official YOLOF attention.py:ELA72 builds it. Non-square input (20 x 33)."),
    "ela_s": dict(
        official_class="semantic/network/backbone/attention.py:ELA72", paper_version="ELA-S",
        kwargs=dict(channel=48, ks=3), input_shape=[3, 48, 2, 17], seed=2,
        notes="semantic attention.py:ELA72 (ELA-S: Conv1d groups=C // 8, GroupNorm(16, C)) at "
              "a non-default ks=3 (not a paper version: ELA-S has k=5) and C=48 (6 conv groups "
              "of 8 channels). Input 2 x 17: the H direction is shorter than the kernel, so its "
              "zero padding reaches both ends."),
    "ela_l": dict(
        official_class="MbV2/models/attention.py:ELA72", paper_version="ELA-L",
        kwargs=dict(channel=96), input_shape=[1, 96, 9, 4], seed=3,
        notes="ELA-L (kernel_size=7, Conv1d groups=C // 8, GroupNorm(16, C)) as the official "
              "MbV2 attention.py:ELA72 builds it (= custom_att in mbv2_ela72.py). Input 9 x 4: "
              "W shorter than the kernel."),
}


def _import_file(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def official_class(checkout, spec):
    path, cls = spec.split(":")
    return getattr(_import_file(os.path.join(checkout, path), f"ela_{abs(hash(path))}"), cls)


@torch.no_grad()
def reinitialise(model):
    for _, m in model.named_modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            std = min(max(1 / m.weight[0].numel() ** 0.5, 0.02), 0.2)
            m.weight.normal_(0, std)
            if m.bias is not None:
                m.bias.normal_(0, 0.1)
        elif isinstance(m, (nn.GroupNorm, nn.BatchNorm2d)):
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_(0, 0.1)


def make(checkout, out_root, name, spec):
    torch.manual_seed(spec["seed"])
    model = official_class(checkout, spec["official_class"])(**spec["kwargs"]).eval()
    reinitialise(model)
    x = torch.randn(spec["input_shape"])
    with torch.no_grad():
        out = model(x)
        reloaded = official_class(checkout, spec["official_class"])(**spec["kwargs"]).eval()
        reloaded.load_state_dict(model.state_dict(), strict=True)
        diff = (reloaded(x) - out).abs().max().item()
    folder = os.path.join(out_root, name)
    os.makedirs(folder, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              os.path.join(folder, "state_dict.safetensors"))
    save_file({"input": x.contiguous(), "output": out.contiguous()},
              os.path.join(folder, "io.safetensors"))
    config = dict(
        source_repo=REPO, official_repo=REPO, commit=COMMIT,
        source_class=spec["official_class"], official_class=spec["official_class"],
        kwargs=spec["kwargs"], input_shape=spec["input_shape"],
        output_shape=list(out.shape), paper_version=spec["paper_version"],
        notes=spec["notes"] + f" Re-initialised from torch.manual_seed({spec['seed']}) as "
              "tests/golden/ela (see make/ela.py); input torch.randn right after. CPU, float32, "
              "eval mode.",
        verified_reload_max_abs_diff=diff,
        made_by=f"python tests/golden/make/ela.py <checkout of {REPO} at {COMMIT[:7]}>",
    )
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    print(f"{name}: {spec['official_class']} {spec['kwargs']} -> {tuple(out.shape)}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkout")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), ".."))
    args = parser.parse_args()
    for name, spec in FIXTURES.items():
        make(args.checkout, args.out, name, spec)


if __name__ == "__main__":
    main()

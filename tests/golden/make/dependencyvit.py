"""Make the non-default DependencyViT golden fixture by running the REFERENCE code.

    python tests/golden/make/dependencyvit.py /path/to/checkout [--out tests/golden]

No official code exists (dingmyu/DependencyViT holds only a licence); the reference is timm pull
request #2062, branch ``dependencyvit`` of fffffgggg54/pytorch-image-models at the commit below. The
checkout needs only its ``timm/`` folder (``git archive <commit> timm | tar -x -C <checkout>``); it
is put first on ``sys.path``, so the reference runs on its own timm 0.9.13dev0 tree. Nothing of the
reference code is copied here.

Recipe (that of tests/golden/dependencyvit*): every parameter re-initialised from a torch.Generator
seeded 0 (Linear / Conv weights N(0, clamp(1/sqrt(fan_in), 0.02, 0.2)), biases N(0, 0.05),
LayerNorm weight U(0.5, 1.5) and bias N(0, 0.05), LayerScale gamma U(0.5, 1.5), pos_embed
N(0, 0.1), head weight N(0, 1)), eval mode, float32, CPU; input from a generator seeded 1. Every
per-token tensor is stored in ascending original patch order: the reference's TokenPruner keeps
``topk(sorted=False)`` order, tracked here by re-running its (deterministic) topk in a hook.
"""
import argparse
import json
import math
import os
import sys

COMMIT = "11e873956eda5732b4b34d9171289e7d987a9229"
REPO = "fffffgggg54/pytorch-image-models"
OFFICIAL_CLASS = "timm/models/dependencyvit.py:DependencyViT"

FIXTURES = {
    "dependencyvit_nondefault": dict(
        kwargs=dict(img_size=160, patch_size=16, in_chans=1, num_classes=10, embed_dim=32, depth=4,
                    num_heads=2, mlp_ratio=2.0, qk_norm=True, pre_norm=True,
                    prune_layers=[4, 1, 2, 2], prune_ratio=0.2),
        input_shape=[2, 1, 160, 160],
        notes="Non-default arguments: img_size=160 (10x10 = 100 patches), in_chans=1, "
              "num_classes=10, embed_dim=32, depth=4, num_heads=2 (head width 16), mlp_ratio=2, "
              "qk_norm=True (LayerNorm on q and k per head), pre_norm=True (norm_pre after the "
              "position table), prune_layers=[4, 1, 2, 2] (unsorted, with a duplicate: the "
              "reference de-duplicates and sorts to [1, 2, 4]) at prune_ratio=0.2: pruning after "
              "the attention of blocks 0, 1 and 3 with keep fractions 0.8, "
              "(1-0.4)/(1-0.2) = 0.7499999999999999 (float64) and 0.6666666666666667: "
              "100 -> 80 -> 59 (not 60: the float trap) -> 39 tokens."),
}


def reinitialise(model, seed=0):
    import torch
    import torch.nn as nn
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                std = 1.0 if name == "head" else min(max(fan_in ** -0.5, 0.02), 0.2)
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * std)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.05)
            elif isinstance(m, nn.LayerNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.05)
        for name, p in model.named_parameters():
            if name.endswith(".gamma"):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
        model.pos_embed.copy_(torch.randn(model.pos_embed.shape, generator=g) * 0.1)
    return model


def run(model, x):
    """The reference forward with hooks: every tensor of the fixture, in ascending patch order."""
    import torch
    B = x.shape[0]
    N = model.patch_embed.num_patches
    state = {"order": torch.arange(N).expand(B, N).clone()}
    out, handles = {}, []

    def by_patch(t, axis):
        """``t``'s token axis ``axis`` reordered from the reference's order to patch order."""
        perm = state["order"].argsort(dim=1)
        return torch.stack([t[b].index_select(axis - 1, perm[b]) for b in range(B)])

    for i, block in enumerate(model.blocks):
        def enter(_m, _args, i=i):
            out[f"token_index.{i}"] = state["order"].sort(dim=1).values.clone()
        handles.append(block.register_forward_pre_hook(enter))

        def head(_m, _args, logits, i=i):
            p = (logits / block_temperature(model, i)).softmax(dim=-1).transpose(1, 2)
            out[f"head_weight.{i}"] = by_patch(p, 2)
        handles.append(block.attn.head_selector.register_forward_hook(head))

        def attn(mod, _args, result, i=i):
            _, m, _ = result
            out[f"message_weight.{i}"] = by_patch(m.reshape(B, -1), 1)
            mask = by_patch(mod.dependency_mask, 1)
            out[f"dependency_mask.{i}"] = by_patch(mask, 2)
        handles.append(block.attn.register_forward_hook(attn))

        if block.token_pruner is not None:
            def prune(mod, args, _result):
                x_in, _, scores = args
                keep = math.floor(mod.pct_kept_tokens * x_in.shape[1])
                idx = scores.topk(keep, sorted=False)[1]  # the reference's own call, again
                state["order"] = state["order"].gather(1, idx)
            handles.append(block.token_pruner.register_forward_hook(prune))
    try:
        model.track_dependency_mask(True)
        with torch.no_grad():
            feats = model.forward_features(x)
            logits = model.forward_head(feats)
    finally:
        for h in handles:
            h.remove()
    out["features"] = by_patch(feats, 1)
    out["logits"] = logits
    return {k: v.contiguous() for k, v in out.items()}


def block_temperature(model, i):
    return model.blocks[i].attn.head_selector_temperature


def make(checkout, out_root, name, spec):
    sys.path.insert(0, checkout)  # the reference's own timm tree
    import timm
    import torch
    from safetensors.torch import save_file
    from timm.models.dependencyvit import DependencyViT
    assert os.path.abspath(timm.__file__).startswith(os.path.abspath(checkout)), timm.__file__

    torch.manual_seed(0)
    model = reinitialise(DependencyViT(**spec["kwargs"])).eval()
    x = torch.randn(spec["input_shape"], generator=torch.Generator().manual_seed(1))
    io = run(model, x)

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    again = DependencyViT(**spec["kwargs"]).eval()
    again.load_state_dict(state, strict=True)
    reload = (run(again, x)["logits"] - io["logits"]).abs().max().item()
    double = run(again.double(), x.double())
    kept_same = all(torch.equal(double[k], io[k]) for k in io if k.startswith("token_index"))
    f64 = (double["logits"] - io["logits"]).abs().max().item()
    noise_ok, noise_move = True, 0.
    for eps in (1e-6, 3e-6):
        for s in range(4):
            noisy = x + eps * torch.randn(x.shape, generator=torch.Generator().manual_seed(10 + s))
            other = run(model, noisy)
            noise_ok &= all(torch.equal(other[k], io[k]) for k in io if k.startswith("token_index"))
            noise_move = max(noise_move, (other["logits"] - io["logits"]).abs().max().item())

    folder = os.path.join(out_root, name)
    os.makedirs(folder, exist_ok=True)
    save_file(state, os.path.join(folder, "state_dict.safetensors"))
    save_file(dict(input=x, **io), os.path.join(folder, "io.safetensors"))
    params = sum(p.numel() for p in model.parameters())
    counts = [io[f"token_index.{i}"].shape[1] for i in range(len(model.blocks))]
    config = dict(
        official_repo=REPO, commit=COMMIT, official_class=OFFICIAL_CLASS,
        kwargs=spec["kwargs"], input_shape=spec["input_shape"],
        extra_outputs={
            "features": "forward_features (norm(x) * cumulative m), [B, N_final, C], ascending "
                        "original patch index",
            "message_weight.{i}": "cumulative m returned by blocks[i].attn, [B, N_i]",
            "head_weight.{i}": "softmax(head_selector(norm1(x)) / temperature) over heads, "
                               "[B, H, N_i] (forward hook on attn.head_selector)",
            "dependency_mask.{i}": "blocks[i].attn.dependency_mask with "
                                   "track_dependency_mask(True), [B, N_i, N_i], row = parent, "
                                   "column = child",
            "token_index.{i}": f"sorted original patch indices entering blocks[i]: {counts}",
        },
        checkpoint_wrapper_key=None,
        made_by=f"python tests/golden/make/dependencyvit.py <checkout of {REPO} at {COMMIT[:7]}>",
        params=params,
        notes=(spec["notes"] + " REFERENCE, NOT OFFICIAL (no official code exists): timm PR "
               "#2062 on its own timm 0.9.13dev0 tree. Re-initialised as the module docstring of "
               f"the generator says; input torch.randn from a generator seeded 1; eval, float32, "
               f"CPU, torch {torch.__version__}. Reload check (fresh reference model, strict "
               f"load): logits diff {reload:.1e}. float64 rerun: logits diff {f64:.1e}, same kept "
               f"tokens: {kept_same}. Input noise 1e-6 / 3e-6 (4 draws each): same kept tokens: "
               f"{noise_ok}, logits move at most {noise_move:.1e}. params={params}."))
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    print(name, params, counts, {n: os.path.getsize(os.path.join(folder, n))
                                 for n in os.listdir(folder)})
    if not (kept_same and noise_ok):
        raise SystemExit(f"{name}: kept tokens are not robust; change the seed or the arguments")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkout", help=f"{REPO} checkout at {COMMIT} (its timm/ folder)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), ".."))
    parser.add_argument("--only", nargs="*", default=sorted(FIXTURES))
    args = parser.parse_args()
    for name in args.only:
        make(os.path.abspath(args.checkout), os.path.abspath(args.out), name, FIXTURES[name])


if __name__ == "__main__":
    main()

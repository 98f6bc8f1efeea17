"""DependencyViT behaviour beyond the shared conformance and golden suites: the reference's
parameter counts and Lite token schedule (its float64 trap), the dependency outputs against the
reference fixtures, the tree / part / saliency API on hand-made masks whose trees are known, the
paper-side options, the reversed attention on both ops backends at the model's own shapes,
training, weights (none released; local files) and clear errors."""
import math

import numpy as np
import pytest
import torch
import timm

import ops
from backbones import PretrainedWeightsError
from backbones import dependencyvit
from backbones.dependency_tree import (
    DependencyOutput, dependency_parents, dependency_parts, dependency_saliency, tree_edges,
    upsample_parts, upsample_saliency)
from backbones.dependencyvit import DependencyViT, create_from_official, kept_token_counts
from conftest import GOLDEN
from golden import build_from_fixture, load_fixture

# A narrow model with the registered entrypoints' structure, for fast checks (Lite keeps its 12
# blocks: it prunes after blocks 2, 5, 8, 11; the others take 4).
NARROW = dict(embed_dim=48, num_heads=3)


def _model(name="dependencyvit_tiny_224", seed=0, **kwargs):
    torch.manual_seed(seed)
    kwargs.setdefault("depth", 12 if "lite" in name else 4)
    return timm.create_model(name, **dict(NARROW, **kwargs)).eval()


@torch.no_grad()
def _randomize(model, seed=0):
    """Non-trivial weights (the fixtures' recipe): LayerScale 1e-6 and a 0.02 head would make
    every output nearly zero and every option look alike."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith(".gamma"):
            p.copy_(torch.rand(p.shape, generator=g) + 0.5)
        elif name == "head.weight":
            p.copy_(torch.randn(p.shape, generator=g))
        elif p.dim() >= 2:
            p.copy_(torch.randn(p.shape, generator=g) * min(max(p[0].numel() ** -0.5, 0.02), 0.2))
    return model


def _image(batch=2, size=224, channels=3, seed=1):
    return torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- architecture

@pytest.mark.parametrize("name,params", [("dependencyvit_tiny_224", 5_964_712),
                                         ("dependencyvit_small_224", 22_987_624),
                                         ("dependencyvit_lite_tiny_224", 5_964_712)])
def test_param_counts_are_the_references(name, params):
    """Counted by running the reference (timm PR #2062); pruning has no parameters."""
    model = timm.create_model(name, device="meta")
    assert sum(p.numel() for p in model.parameters()) == params
    assert dependencyvit.FAMILY.param_counts[name] == params


def test_lite_schedule_and_the_float_trap():
    """Kept counts: floor of the reference's float64 keep fraction times the tokens left."""
    assert kept_token_counts(196, (2, 5, 8, 11), 0.16, 12) == \
        [196, 196, 164, 164, 164, 132, 132, 132, 100, 100, 100, 69, 69]
    # r = 0.2: the second fraction is 0.7499999999999999, so 80 -> 59 and 156 -> 116
    assert (1 - 2 * 0.2) / (1 - 0.2) < 0.75
    assert kept_token_counts(100, (1, 2), 0.2, 2) == [100, 80, 59]
    assert kept_token_counts(195, (1, 2), 0.2, 2) == [195, 156, 116]
    # duplicates and order do not matter (the reference de-duplicates and sorts)
    assert kept_token_counts(100, (2, 1, 2), 0.2, 2) == [100, 80, 59]


def test_lite_tokens_per_block_and_order():
    """The model follows the schedule, keeps tokens in ascending patch order, and keeps exactly
    the tokens with the largest cumulative message weight."""
    model = _model("dependencyvit_lite_tiny_224", depth=12)
    out = model.forward_dependencies(_image(batch=2))
    counts = [t.shape[1] for t in out.token_indices]
    assert counts == kept_token_counts(196, (2, 5, 8, 11), 0.16, 12)[:12]
    assert model.kept_tokens(196) == 69
    for k, index in enumerate(out.token_indices):
        assert torch.equal(index, index.sort(dim=1).values)
        assert out.masks[k].shape == (2, counts[k], counts[k])
        assert out.message_weights[k].shape == out.token_indices[k].shape
        assert out.head_weights[k].shape == (2, 3, counts[k])
    for block in (1, 4, 7, 10):  # the pruning blocks: survivors are the top-m tokens
        m, index, nxt = out.message_weights[block], out.token_indices[block], \
            out.token_indices[block + 1]
        keep = nxt.shape[1]
        top = index.gather(1, m.topk(keep, dim=1).indices).sort(dim=1).values
        assert torch.equal(top, nxt)


def test_forward_features_grid_and_pooling():
    """Full models give the token map; Lite scatters its kept tokens onto the grid (zeros
    elsewhere) and pools over the kept tokens only."""
    x = _image(batch=1)
    for name in ("dependencyvit_tiny_224", "dependencyvit_lite_tiny_224"):
        model = _model(name, depth=12)
        with torch.no_grad():
            feats = model.forward_features(x)
            tokens, m, index, grid = model.forward_tokens(x)
            pooled = model.forward_head(feats, pre_logits=True)
        assert feats.shape == (1, 48, 14, 14) and grid == (14, 14)
        torch.testing.assert_close(pooled, tokens.mean(1))
        flat = feats.flatten(2).transpose(1, 2)[0]
        if index is None:
            torch.testing.assert_close(flat, tokens[0])
        else:
            assert index.shape == (1, 69)
            torch.testing.assert_close(flat[index[0]], tokens[0])
            pruned = torch.ones(196, dtype=torch.bool)
            pruned[index[0]] = False
            assert (flat[pruned] == 0).all()


def test_dependency_outputs_match_the_reference():
    """forward_dependencies returns what the reference's tracked masks, message and head weights
    are (the fixtures), and the reference-compatible track / get API keeps the same masks."""
    for fixture in ("dependencyvit", "dependencyvit_lite", "dependencyvit_nondefault"):
        config, state_dict, io = load_fixture(GOLDEN, fixture)
        model = build_from_fixture(dependencyvit.FAMILY, config, state_dict)
        out = model.forward_dependencies(io["input"])
        torch.testing.assert_close(out.logits, io["logits"], atol=1e-4, rtol=0)
        for k, layer in enumerate(out.layers):
            if f"token_index.{layer}" in io:
                assert torch.equal(out.token_indices[k], io[f"token_index.{layer}"])
            torch.testing.assert_close(out.message_weights[k], io[f"message_weight.{layer}"],
                                       atol=1e-5, rtol=0)
            torch.testing.assert_close(out.head_weights[k], io[f"head_weight.{layer}"],
                                       atol=1e-4, rtol=0)
            if f"dependency_mask.{layer}" in io:
                torch.testing.assert_close(out.masks[k], io[f"dependency_mask.{layer}"],
                                           atol=1e-5, rtol=0)
            # each child's column sums to its cumulative message weight (heads sum to one)
            torch.testing.assert_close(out.masks[k].sum(1), out.message_weights[k],
                                       atol=1e-5, rtol=1e-4)
        model.track_dependency_mask(True)
        with torch.no_grad():
            model(io["input"])
        tracked = model.get_dependency_mask()
        for k in range(len(tracked)):
            torch.testing.assert_close(tracked[k], out.masks[k])
        model.track_dependency_mask(False)
        assert all(m is None for m in model.get_dependency_mask())


def test_forward_dependencies_layers_and_no_state():
    model = _model()
    x = _image(batch=1)
    out = model.forward_dependencies(x, layers=[1, -1])
    assert out.layers == [1, 3] and len(out.masks) == 2
    with torch.no_grad():
        torch.testing.assert_close(out.logits, model(x))
    assert all(b.attn.dependency_mask is None for b in model.blocks)
    with pytest.raises(ValueError, match="not recorded"):
        out.tree(layer=0)
    with pytest.raises(ValueError, match="out of range"):
        model.forward_dependencies(x, layers=[4])


# ----------------------------------------------------------------------------- trees on known masks

def _mask_from_parents(parents, strong=1.0, weak=0.01):
    """A (1, N, N) mask in which every child sends most to the given parent (row = parent)."""
    n = len(parents)
    mask = torch.full((1, n, n), weak)
    for child, parent in enumerate(parents):
        mask[0, parent, child] = strong
    return mask


def test_tree_of_a_chain():
    parents = [1, 2, 3, 4, 4]  # 0 -> 1 -> 2 -> 3 -> 4, 4 is its own strongest receiver: root
    tree = dependency_parents(_mask_from_parents(parents))
    assert tree.tolist() == [parents]
    parts = dependency_parts(tree, num_parts=2)
    # the most even cut of a chain of 5 detaches the subtree {0, 1} or {0, 1, 2}: sizes 3 and 2
    assert sorted(torch.bincount(parts[0]).tolist()) == [2, 3]
    assert dependency_parts(tree).tolist() == [[0] * 5]  # one tree, one part


def test_tree_of_a_star_and_saliency():
    mask = _mask_from_parents([0] * 6)  # everyone sends to 0 (0 to itself): the hub is the root
    tree = dependency_parents(mask)
    assert tree.tolist() == [[0] * 6]
    sal = dependency_saliency(mask)
    assert sal[0, 0] == 1 and (sal[0, 1:] < 0.1).all()
    assert tree_edges(tree[0], mask[0]) == [(c, 0, 1.0) for c in range(1, 6)]
    # a star cut into 3 parts: two leaves split off, the largest part (the hub) is label 0
    parts = dependency_parts(tree, num_parts=3)[0]
    assert parts[0] == 0 and sorted(torch.bincount(parts).tolist()) == [1, 1, 4]


def test_ties_go_to_the_lowest_index():
    mask = torch.zeros(1, 3, 3)
    mask[0, :, 2] = 0.5  # child 2 sends equally to 0, 1 and 2
    mask[0, 0, 0] = mask[0, 0, 1] = 1.
    assert dependency_parents(mask).tolist() == [[0, 0, 0]]


def test_cycles_become_roots_at_the_most_receiving_member():
    # 0 <-> 1 send to each other; 2 and 3 send to 1, so 1 receives the most: 1 is the root
    mask = _mask_from_parents([1, 0, 1, 1])
    assert dependency_parents(mask).tolist() == [[1, 1, 1, 1]]
    # a cycle with equal reception breaks at the lowest index
    assert dependency_parents(_mask_from_parents([1, 0])).tolist() == [[0, 0]]


def test_forest_parts_sorted_by_size():
    tree = dependency_parents(_mask_from_parents([0, 0, 0, 3, 3]))  # trees {0,1,2} and {3,4}
    assert dependency_parts(tree).tolist() == [[0, 0, 0, 1, 1]]
    assert dependency_parts(tree, num_parts=1).tolist() == [[0, 0, 0, 0, 0]]


def test_pruned_patches_on_the_grid():
    """A Lite mask over 3 surviving tokens of a 2x2 grid: the tree is read in patch numbers,
    the pruned patch is -1, filled from its nearest kept patch when upsampled."""
    mask = _mask_from_parents([0, 0, 2])  # tokens at patches 0, 1, 3; token 2 (patch 3) a root
    index = torch.tensor([[0, 1, 3]])
    tree = dependency_parents(mask, index, num_patches=4)
    assert tree.tolist() == [[0, 0, -1, 3]]
    parts = dependency_parts(tree)
    assert parts.tolist() == [[0, 0, -1, 1]]
    image = upsample_parts(parts, (2, 2), (32, 32))
    assert image.shape == (1, 32, 32) and (image >= 0).all()
    assert (image[0, 16:, :16] == 0).all()  # patch 2 (bottom left) takes patch 0's part
    assert (upsample_parts(parts, (2, 2), (32, 32), fill_pruned=False) == -1).sum() == 256
    sal = dependency_saliency(mask, index, num_patches=4)
    assert sal[0, 2] == 0 and sal.max() == 1


def test_maps_have_the_image_size_and_cover_it():
    for name in ("dependencyvit_tiny_224", "dependencyvit_lite_tiny_224"):
        model = _model(name, depth=12)
        out = model.forward_dependencies(_image(batch=2))
        assert isinstance(out, DependencyOutput) and out.image_size == (224, 224)
        parents = out.tree()
        assert parents.shape == (2, 196)
        kept = out.token_indices[-1]
        assert ((parents >= 0).sum(1) == kept.shape[1]).all()
        for b in range(2):  # every kept patch reaches a root without leaving the kept set
            for v in kept[b].tolist():
                for _ in range(197):
                    if parents[b, v] == v:
                        break
                    v = parents[b, v].item()
                assert parents[b, v] == v
        parts = out.parts(num_parts=4, image_size=(224, 224))
        sal = out.saliency(image_size=(224, 224))
        assert parts.shape == sal.shape == (2, 224, 224)
        assert (parts >= 0).all() and parts.max() <= 3
        assert sal.min() >= 0 and sal.max() <= 1
        assert out.parts().shape == out.saliency().shape == (2, 14, 14)
        assert upsample_saliency(torch.ones(1, 196), (14, 14), (50, 70)).shape == (1, 50, 70)


def test_tree_api_rejects_bad_masks():
    with pytest.raises(ValueError, match=r"\(B, N, N\)"):
        dependency_parents(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="num_patches"):
        dependency_parents(torch.zeros(1, 2, 2), torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match="num_parts"):
        dependency_parts(torch.zeros(1, 2, dtype=torch.long), num_parts=0)


# ----------------------------------------------------------------------------- options

def test_paper_side_options_change_the_model_and_default_to_the_reference():
    x = _image(batch=1)
    base = _randomize(_model("dependencyvit_lite_tiny_224", depth=12))
    with torch.no_grad():
        reference = base(x)
    assert base.blocks[0].attn.head_selector.temperature == 0.1
    assert base.blocks[0].attn.cumulative_message and base.norm.message_scale == "after_norm"
    for option in (dict(head_temperature=1.0), dict(cumulative_message=False),
                   dict(message_scale="before_norm"), dict(message_scale="none"),
                   dict(prune_score="received")):
        model = _model("dependencyvit_lite_tiny_224", depth=12, **option)
        model.load_state_dict(base.state_dict())
        with torch.no_grad():
            assert (model(x) - reference).abs().max() > 1e-3 * reference.abs().max(), option
    # 'received' keeps the tokens receiving the most message mass
    model = _model("dependencyvit_lite_tiny_224", depth=12, prune_score="received")
    model.load_state_dict(base.state_dict())
    out = model.forward_dependencies(x)
    received = out.masks[1].sum(-1)
    keep = out.token_indices[2].shape[1]
    top = out.token_indices[1].gather(1, received.topk(keep, dim=1).indices).sort(dim=1).values
    assert torch.equal(top, out.token_indices[2])
    # per-block message weights: no longer a product, each in (0, 1)
    model = _model(cumulative_message=False)
    out = model.forward_dependencies(_image(batch=1))
    assert all(((w > 0) & (w < 1)).all() for w in out.message_weights)


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="below 1"):
        DependencyViT(depth=4, prune_layers=(1, 2, 3), prune_ratio=0.4)
    with pytest.raises(ValueError, match="1-based"):
        DependencyViT(depth=4, prune_layers=(0, 2), prune_ratio=0.1)
    with pytest.raises(ValueError, match="prune_ratio"):
        DependencyViT(depth=4, prune_layers=(2,))
    with pytest.raises(ValueError, match="message_scale"):
        DependencyViT(depth=1, message_scale="inside")
    with pytest.raises(ValueError, match="global_pool"):
        DependencyViT(depth=1, global_pool="token")
    with pytest.raises(TypeError, match="fixes"):
        create_from_official(dict(depth=1, class_token=True))
    with pytest.raises(TypeError, match="unsupported"):
        create_from_official(dict(depth=1, no_embed_class=True))


def test_input_sizes():
    """Any multiple of the patch size runs (position table resampled); other sizes and the
    reference's fixed 224 cfg are explained."""
    model = _model("dependencyvit_lite_tiny_224")
    with torch.no_grad():
        assert model.forward_features(_image(batch=1, size=96)).shape == (1, 48, 6, 6)
        assert model(torch.randn(1, 3, 128, 160)).shape == (1, 1000)
    with pytest.raises(ValueError, match="multiples of 16"):
        model(torch.randn(1, 3, 100, 224))
    with pytest.raises(ValueError, match="at least 16x16"):
        model(torch.randn(1, 3, 8, 224))
    assert model.pretrained_cfg["fixed_input_size"] is True


# ----------------------------------------------------------------------------- ops, training

@pytest.mark.parametrize("heads,dim,tokens", [(12, 192, 196), (12, 384, 196), (12, 192, 69)])
def test_reversed_attention_on_both_backends_at_model_shapes(heads, dim, tokens):
    """The attention of tiny / small (12 heads of width 16 or 32, 196 tokens; Lite's last 69)
    on the fused path (Triton, under the interpreter on a CPU) equals the reference, forward and
    backward, mask included."""
    torch.manual_seed(0)
    attn = dependencyvit.ReversedAttention(dim, heads)
    x = torch.randn(1, tokens, dim, requires_grad=True)
    m = torch.rand(1, tokens)
    results = {}
    for backend in ("reference", "triton"):
        attn.zero_grad()
        x.grad = None
        with ops.use_backend(backend):
            out, m_out, mask = attn(x, m, need_mask=True)
        (out * torch.linspace(-1, 1, dim)).sum().backward()
        results[backend] = (out.detach(), mask, x.grad.clone(), attn.qkv.weight.grad.clone())
    for a, b in zip(results["reference"], results["triton"]):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


def _gmacs(model, x):
    from fvcore.nn import FlopCountAnalysis
    analysis = FlopCountAnalysis(model, x).set_op_handle(**ops.flops.fvcore_handles())
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return analysis.total()


def test_fvcore_counts_the_fused_and_reference_paths_alike():
    """The fused op (a custom op fvcore cannot see into) is counted like the reference's
    matmuls; the tiny model counts the spec's 1.300 GMACs."""
    pytest.importorskip("fvcore")
    with ops.use_backend("reference"):
        assert round(_gmacs(timm.create_model("dependencyvit_tiny_224").eval(),
                            torch.randn(1, 3, 224, 224)) / 1e9, 3) == 1.300
    model = _model("dependencyvit_lite_tiny_224", depth=4, prune_layers=(2, 3))
    x = _image(batch=1, size=64)
    counts = {}
    for backend in ("reference", "triton"):
        with ops.use_backend(backend):
            counts[backend] = _gmacs(model, x)
    assert counts["reference"] == counts["triton"] > 0


def test_training_step_reduces_the_loss_and_reaches_every_parameter():
    """A few AdamW steps on a fixed batch, Lite (gradients flow through the gathered tokens and
    message weights into every block), with drop path and attention dropout on."""
    torch.manual_seed(0)
    model = timm.create_model("dependencyvit_lite_tiny_224", embed_dim=48, num_heads=3,
                              num_classes=5, drop_path_rate=0.1, attn_drop_rate=0.1).train()
    x, y = _image(batch=4, size=64), torch.tensor([0, 1, 2, 3])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(8):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        if step == 0:
            missing = [n for n, p in model.named_parameters() if p.grad is None]
            assert not missing, missing
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]


# ----------------------------------------------------------------------------- weights

def test_no_released_weights_and_local_files(tmp_path):
    with pytest.raises(PretrainedWeightsError, match="no pretrained weights"):
        timm.create_model("dependencyvit_tiny_224", pretrained=True)
    assert all(cfg.get("url", "") == "" for cfg in
               (timm.models.get_pretrained_cfg(n).to_dict() for n in
                timm.list_models("dependencyvit_*", pretrained=True)))
    trained = _model("dependencyvit_lite_tiny_224", num_classes=7)
    path = tmp_path / "trained.pth"
    torch.save({"state_dict_ema": trained.state_dict()}, path)
    loaded = timm.create_model("dependencyvit_lite_tiny_224", pretrained=True, num_classes=7,
                               pretrained_cfg_overlay=dict(file=str(path), num_classes=7),
                               **NARROW).eval()
    x = _image(batch=1)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), trained(x))
    # a checkpoint made at 224 loads into a model built for 160 (position table resampled)
    smaller = timm.create_model("dependencyvit_lite_tiny_224", pretrained=True, num_classes=7,
                                img_size=160, **NARROW,
                                pretrained_cfg_overlay=dict(file=str(path), num_classes=7)).eval()
    assert smaller.pos_embed.shape == (1, 100, 48)


# ----------------------------------------------------------------------------- the drawing tool

def test_drawing_tool(tmp_path, capsys):
    from PIL import Image

    from backbones.cli import dependency_tree as tool
    ramp = torch.linspace(0, 255, 300).byte()
    pixels = torch.stack([ramp.expand(200, 300), ramp.flip(0).expand(200, 300),
                          torch.full((200, 300), 90, dtype=torch.uint8)], -1)
    image = tmp_path / "photo.png"
    Image.fromarray(pixels.numpy()).save(image)
    narrow = ["--model-kwargs", "embed_dim=48", "num_heads=3"]

    # random weights, Lite: a pruning block's tree on the 14x14 grid
    out = tmp_path / "fig.png"
    written = tool.run([str(image), "--model", "dependencyvit_lite_tiny_224", "--layer", "9",
                        "--num-parts", "4", "--output", str(out), "--scale", "1", *narrow])
    assert written == [str(out)]
    figure = Image.open(out)
    assert figure.size == (4 * 224 + 5 * 6, 224 + 18 + 16 + 6)
    panels = [torch.from_numpy(np.asarray(figure.crop((6 + i * 230, 18, 6 + i * 230 + 224, 242))))
              for i in range(4)]
    assert all(not torch.equal(panels[0], p) for p in panels[1:])  # tree, parts, saliency drawn

    # a trained checkpoint (here: one saved from a model) with a 3-class head
    torch.manual_seed(0)
    model = timm.create_model("dependencyvit_tiny_224", depth=2, num_classes=3, **NARROW)
    ckpt = tmp_path / "weights.pth"
    torch.save({"model": model.state_dict()}, ckpt)
    written = tool.run([str(image), "--checkpoint", str(ckpt), "--output-dir", str(tmp_path / "o"),
                        "--scale", "1", "--model-kwargs", "embed_dim=48", "num_heads=3", "depth=2"])
    assert written == [str(tmp_path / "o" / "photo_dependency.png")]

    assert tool.main([str(image), "--layer", "12", *narrow]) == 2
    assert "out of range" in capsys.readouterr().err
    assert tool.main([str(image), "--model", "cswin_tiny_224"]) == 2
    assert "not a DependencyViT" in capsys.readouterr().err
    assert tool.main([str(tmp_path / "missing.png"), *narrow, "--model-kwargs", "depth=1"]) == 2
    assert "cannot read image" in capsys.readouterr().err


def test_drawing_tool_runs_as_script_and_command():
    """``python tools/dependency_tree.py`` (the shim) and ``zoo-dependency-tree`` (installed by
    ``pip install -e .``) are one command."""
    import os
    import shutil
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    commands = [[sys.executable, os.path.join(root, "tools", "dependency_tree.py")]]
    if shutil.which("zoo-dependency-tree"):
        commands.append([shutil.which("zoo-dependency-tree")])
    for command in commands:
        proc = subprocess.run(command + ["--help"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.startswith("usage: zoo-dependency-tree "), proc.stdout[:200]

"""zoo-visualize (backbones/cli/visualize.py) and the families' query_attention maps it draws
(backbones/query_attention.py), on a real photo, on the CPU, without network."""
import os
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import backbones
import ops
from backbones import query_attention as qa
from backbones.cli import visualize

skimage_data = pytest.importorskip("skimage.data")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One model per family (the smallest), with the panels ``--layers 0 -1`` draws: LITv2's first
# HiLo block has a Hi-Fi and a Lo-Fi panel, its last is global attention; the ULSAM host has one
# ULSAM layer, so 0 and -1 name the same one.
MODELS = {
    "cswin": ("cswin_tiny_224", 2),
    "halonet": ("halonet26t_256", 2),
    "biformer": ("biformer_tiny_224", 2),
    "litv2": ("litv2_small_224", 3),
    "shvit": ("shvit_s1_224", 2),
    "sparsifiner": ("sparsifiner_deit_small_224", 2),
    "dependencyvit": ("dependencyvit_lite_tiny_224", 2),
    "ela": ("ela_mobilenetv2_100_s_224", 2),
    "ulsam": ("ulsam_mobilenetv1_050_e_224", 1),
}
GATE_FAMILIES = ("ela", "ulsam")


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """Chelsea the cat (scikit-image's sample data), 451 x 300."""
    path = tmp_path_factory.mktemp("photo") / "chelsea.png"
    Image.fromarray(skimage_data.chelsea()).save(path)
    return str(path)


@pytest.fixture(scope="module")
def built(photo):
    """``built(name)``: (eval model with random weights of seed 0, its input for the photo),
    built once per model."""
    cache = {}

    def get(name):
        if name not in cache:
            torch.manual_seed(0)
            model = timm.create_model(name).eval()
            cache[name] = model, visualize.load_image(photo, model)[0]
        return cache[name]
    return get


def _panel_box(index, size):
    """Pixel box of panel ``index`` (0: the input) in a figure of ``size = (w, h)`` panels."""
    width, height = size
    row, column = divmod(index, visualize.COLUMNS)
    x = visualize.PAD + column * (width + visualize.PAD)
    y = visualize.HEADER_H + row * (height + visualize.CAPTION_H + visualize.PAD)
    return x, y, x + width, y + height


# ----------------------------------------------------------------------------- the query rows


def _reconstruct(weights, v):
    """The output of one query from its row ``(heads, H, W)`` and values ``(heads, H, W, d_v)``
    (padded keys have zero values: they only take weight)."""
    return torch.einsum("hyx,hyxd->hd", weights, v.float())


@pytest.mark.parametrize("window, offset, padding, d_v", [
    (None, (0, 0), "zeros", 8),         # whole grid (SHViT, global stages)
    ((13, 2), (0, 0), "zeros", 8),      # CSWin's vertical stripes, padded at the right
    ((3, 13), (1, 0), "zeros", 8),      # horizontal stripes, centred padding
    ((4, 4), (1, 2), "masked", 12),     # padded keys left out of the softmax; d_qk != d_v
])
def test_window_row_is_the_ops_row(window, offset, padding, d_v):
    torch.manual_seed(0)
    q, k = torch.randn(2, 1, 3, 13, 11, 8).unbind(0)
    v = torch.randn(1, 3, 13, 11, d_v)
    out = ops.window_attention_2d(q, k, v, window, window_offset=offset, padding=padding,
                                  scale=0.7, backend="reference")
    for i, j in [(0, 0), (6, 5), (12, 10), (3, 9)]:
        weights, support = qa.window_query_weights(q[0], k[0], (i, j), window, offset, padding,
                                                   0.7)
        assert torch.allclose(_reconstruct(weights, v[0]), out[0, :, i, j], atol=1e-5)
        assert support[i, j] and not weights[:, ~support].any()
        if padding == "masked" or window is None:
            assert torch.allclose(weights.sum((1, 2)), torch.ones(3))


@pytest.mark.parametrize("stride, scale_pos_embed, grid", [
    (1, False, (16, 16)), (2, False, (16, 16)), (1, True, (16, 16)),
    (1, False, (13, 10)),               # not whole blocks: the model zero-pads k / v
])
def test_halo_row_is_the_ops_row(stride, scale_pos_embed, grid):
    torch.manual_seed(0)
    block, halo, d = 4, 2, 8
    win = block + 2 * halo
    H, W = grid
    Hp, Wp = -(-H // block) * block, -(-W // block) * block
    k, v = torch.randn(2, 1, 2, H, W, d).unbind(0)
    q = torch.randn(1, 2, -(-H // stride), -(-W // stride), d)
    rel = tuple(torch.randn(2 * win - 1, d) * 0.3 for _ in range(2))
    pad = (0, 0, 0, Wp - W, 0, Hp - H)
    qp = torch.nn.functional.pad(q, (0, 0, 0, Wp // stride - q.shape[3], 0,
                                     Hp // stride - q.shape[2]))
    out = ops.halo_attention_2d(qp, torch.nn.functional.pad(k, pad),
                                torch.nn.functional.pad(v, pad), block, halo, stride=stride,
                                rel_pos=rel, scale=0.5, scale_pos_embed=scale_pos_embed,
                                backend="reference")
    for i, j in [(0, 0), (q.shape[2] - 1, q.shape[3] - 1), (1, 2)]:
        weights, support = qa.halo_query_weights(q[0], k[0], (i, j), block, halo, stride, rel,
                                                 0.5, scale_pos_embed)
        assert torch.allclose(_reconstruct(weights, v[0]), out[0, :, i, j], atol=1e-5)
        by, bx = i * stride // block, j * stride // block
        expected = torch.zeros(H, W, dtype=torch.bool)
        expected[max(by * block - halo, 0):by * block + block + halo,
                 max(bx * block - halo, 0):bx * block + block + halo] = True
        assert torch.equal(support, expected)


def test_routed_row_is_the_ops_row():
    torch.manual_seed(0)
    q, k = torch.randn(2, 1, 2, 8, 12, 8).unbind(0)
    v = torch.randn(1, 2, 8, 12, 4)
    region_index = torch.randint(0, 6, (1, 6, 3))
    region_index[0, 4] = torch.tensor([2, 2, 5])  # a region listed twice weighs twice
    out = ops.routed_attention_2d(q, k, v, region_index, (4, 4), scale=0.6, backend="reference")
    for i, j in [(0, 0), (5, 1), (7, 11)]:
        weights, support = qa.routed_query_weights(q[0], k[0], (i, j), region_index[0], (4, 4),
                                                   0.6)
        assert torch.allclose(_reconstruct(weights, v[0]), out[0, :, i, j], atol=1e-5)
        assert torch.allclose(weights.sum((1, 2)), torch.ones(2))
        routed = region_index[0, (i // 4) * 3 + j // 4].unique()
        assert int(support.sum()) == 16 * len(routed)


# ----------------------------------------------------------------------------- the maps


def _record_ops(monkeypatch, names):
    """Every call of ``ops.<name>`` for ``names`` from here on, in call order: (name, args,
    kwargs)."""
    calls = []

    def recording(name, op):
        def call(*args, **kwargs):
            calls.append((name, args, kwargs))
            return op(*args, **kwargs)
        return call
    for name in names:
        monkeypatch.setattr(ops, name, recording(name, getattr(ops, name)))
    return calls


def _op_row(name, args, kwargs, token):
    """Per-head row ``(heads, H, W)`` of ``token`` in one recorded op call, on its key grid."""
    q, k = args[0][0], args[1][0]
    if name == "window_attention_2d":
        window = args[3] if len(args) > 3 else None
        row = qa.window_query_weights(q, k, token, window, kwargs.get("window_offset", (0, 0)),
                                      kwargs.get("padding", "zeros"), kwargs["scale"])[0]
    elif name == "halo_attention_2d":
        row = qa.halo_query_weights(q, k, token, args[3], args[4], kwargs["stride"],
                                    kwargs["rel_pos"], kwargs["scale"],
                                    kwargs["scale_pos_embed"])[0]
    else:
        row = qa.routed_query_weights(q, k, token, args[3][0], args[4], kwargs["scale"])[0]
    return row


@pytest.mark.parametrize("family, op_names", [
    ("cswin", ["window_attention_2d"]),
    ("halonet", ["halo_attention_2d"]),
    ("biformer", ["routed_attention_2d", "window_attention_2d"]),
    ("shvit", ["window_attention_2d"]),
    ("litv2", ["window_attention_2d"]),  # Hi-Fi windows and global blocks; Lo-Fi is plain SDPA
])
def test_maps_are_rows_of_what_the_attention_ops_received(family, op_names, built, monkeypatch):
    """The q / k a map is computed from are those the model hands its attention op, with the
    op's own window, padding, relative positions, routing and scale (at these input sizes no
    layer pads its grid, so the op's grid is the layer's)."""
    model, x = built(MODELS[family][0])
    calls = iter(_record_ops(monkeypatch, op_names))
    query, size = (150, 60), tuple(x.shape[-2:])
    for m in backbones.get_family(family).query_attention(model, x, query):
        if "Lo-Fi" in m.label:
            continue
        # CSWin calls the op once per stripe branch, once in its full-attention stage
        branches = 2 if family == "cswin" and "stripes" in m.label else 1
        rows = []
        for name, args, kwargs in (next(calls) for _ in range(branches)):
            token = qa._token_of(query, tuple(args[0].shape[2:4]), size)
            rows.append(_op_row(name, args, kwargs, token))
        expected = qa._to_image(torch.cat(rows).mean(0), tuple(args[1].shape[2:4]), size)
        assert torch.allclose(m.weights, expected, atol=1e-6), m.layer
    assert next(calls, None) is None  # one map per attention layer


@pytest.mark.parametrize("family", sorted(MODELS))
def test_maps_are_on_the_input_and_hold_the_query(family, built):
    model, x = built(MODELS[family][0])
    query = (150, 60)
    maps = backbones.get_family(family).query_attention(model, x, query)
    modules = dict(model.named_modules())
    assert maps and all(m.layer in modules for m in maps)
    for m in maps:
        assert m.support.shape == m.weights.shape == x.shape[-2:] and m.support.dtype == torch.bool
        assert (m.weights >= 0).all() and m.label
        x0, y0, x1, y1 = m.query_box
        assert x0 <= query[0] < x1 and y0 <= query[1] < y1
        if family not in GATE_FAMILIES:
            assert not m.weights[~m.support].any()  # attention reaches nothing else
            assert m.weights.max() <= 1


def _token_pixels(grid, size):
    """Input pixels of one token of ``grid`` (square tokens)."""
    return (size[0] // grid[0]) * (size[1] // grid[1])


def test_cswin_first_stage_is_the_querys_row_and_column_stripes(built):
    model, x = built("cswin_tiny_224")
    first = backbones.get_family("cswin").query_attention(model, x, (150, 60))[0]
    assert first.layer == "stages.0.blocks.0.attn"  # stripes one token (4 px) wide
    expected = torch.zeros(224, 224, dtype=torch.bool)
    expected[60 // 4 * 4:60 // 4 * 4 + 4] = True
    expected[:, 150 // 4 * 4:150 // 4 * 4 + 4] = True
    assert torch.equal(first.support, expected)


def test_biformer_draws_the_regions_its_router_picked(built):
    model, x = built("biformer_tiny_224")
    routed = {}
    attn = model.stages[1].blocks[0].attn
    handle = attn.router.register_forward_hook(lambda _m, _a, out: routed.setdefault("i", out))
    try:
        maps = backbones.get_family("biformer").query_attention(model, x, (150, 60))
    finally:
        handle.remove()
    (m,) = [m for m in maps if m.layer == "stages.1.blocks.0.attn"]
    # stage 1: a 28 x 28 grid, 7 x 7 regions of 4 x 4 tokens, 8 px each
    expected = torch.zeros(7, 7, dtype=torch.bool)
    expected.view(-1)[routed["i"][0, (60 // 32) * 7 + 150 // 32]] = True
    assert torch.equal(m.support, expected.repeat_interleave(32, 0).repeat_interleave(32, 1))
    assert float(m.weights.sum()) / 64 == pytest.approx(1, abs=1e-4)  # one softmax, no padding


def test_litv2_hifi_window_beside_lofi_pooled_map(built):
    model, x = built("litv2_small_224")
    hifi, lofi = backbones.get_family("litv2").query_attention(model, x, (150, 60))[:2]
    assert hifi.layer == lofi.layer == "stages.2.blocks.0.attn"
    assert "Hi-Fi" in hifi.label and "Lo-Fi" in lofi.label
    # stage 2: 14 x 14 tokens of 16 px; the Hi-Fi window is the query's 2 x 2 cell
    expected = torch.zeros(224, 224, dtype=torch.bool)
    expected[60 // 32 * 32:60 // 32 * 32 + 32, 150 // 32 * 32:150 // 32 * 32 + 32] = True
    assert torch.equal(hifi.support, expected) and lofi.support.all()
    # every pooled key stands for a 2 x 2 cell (1024 px): the Lo-Fi softmax sums to 1
    assert float(lofi.weights.sum()) / 1024 == pytest.approx(1, abs=1e-4)


def test_sparsifiner_support_is_the_predictors_mask(built):
    model, x = built("sparsifiner_deit_small_224")
    maps = backbones.get_family("sparsifiner").query_attention(model, x, (150, 60))
    with torch.no_grad():
        trace = model.forward_trace(x)
    row = (60 // 16) * 14 + 150 // 16 + 1
    for m, layer in zip(maps, trace.layers):
        keys = layer.attn_mask[0, :, row, 1:].any(0).view(14, 14)
        assert torch.equal(m.support, keys.repeat_interleave(16, 0).repeat_interleave(16, 1))


def test_dependencyvit_sends_its_message_weight_along_its_tree(built):
    model, x = built("dependencyvit_lite_tiny_224")
    first = backbones.get_family("dependencyvit").query_attention(model, x, (150, 60))[0]
    with torch.no_grad():
        out = model.forward_dependencies(x, layers=[0])
    patch = (60 // 16) * 14 + 150 // 16
    # a child's column of the dependency mask adds up to its message weight
    assert float(first.weights.sum()) / 256 == pytest.approx(
        float(out.message_weights[0][0, patch]), rel=1e-4)
    parents = out.tree(0)[0]
    assert len(first.path) >= 1 and first.path[0] == ((150 // 16 + .5) * 16, (60 // 16 + .5) * 16)
    root = first.path[-1]
    root_patch = int(root[1] // 16) * 14 + int(root[0] // 16)
    assert int(parents[root_patch]) == root_patch


def test_shvit_and_ulsam_maps_are_softmaxes_over_the_whole_grid(built):
    for family, name in (("shvit", "shvit_s1_224"), ("ulsam", "ulsam_mobilenetv1_050_e_224")):
        model, x = built(name)
        m = backbones.get_family(family).query_attention(model, x, (150, 60))[0]
        assert m.support.all()
        tokens = {"shvit": (7, 7), "ulsam": (14, 14)}[family]  # stage 1 / block 3 grids
        assert float(m.weights.sum()) / _token_pixels(tokens, (224, 224)) == \
            pytest.approx(1, abs=1e-4)


def test_ela_support_is_the_strips_its_conv_reads(built):
    model, x = built("ela_mobilenetv2_100_s_224")
    first = backbones.get_family("ela").query_attention(model, x, (150, 60))[0]
    assert first.layer == "blocks.1.0.se"  # 56 x 56 map (4 px tokens), ELA-S: k = 5
    i, j = 60 // 4, 150 // 4
    expected = torch.zeros(56, 56, dtype=torch.bool)
    expected[i - 2:i + 3] = True
    expected[:, j - 2:j + 3] = True
    assert torch.equal(first.support, expected.repeat_interleave(4, 0).repeat_interleave(4, 1))
    assert ((first.weights > 0) & (first.weights < 1)).all()  # a product of two sigmoids
    assert f"{float(first.weights[60, 150]):.2f}" in first.note


def test_maps_need_eval_mode_and_an_input_pixel(built):
    model, x = built("shvit_s1_224")
    query_attention = backbones.get_family("shvit").query_attention
    with pytest.raises(ValueError, match="outside the 224x224 input"):
        query_attention(model, x, (224, 0))
    model.train()
    try:
        with pytest.raises(ValueError, match=r"model\.eval\(\)"):
            query_attention(model, x, (0, 0))
    finally:
        model.eval()


# ----------------------------------------------------------------------------- the tool


@pytest.mark.parametrize("family", sorted(MODELS))
def test_tool_writes_a_png_that_follows_the_query(family, photo, tmp_path, capsys):
    name, panels = MODELS[family]
    pictures = []
    for query in ("60,50", "380,250"):
        output = tmp_path / f"{query.replace(',', '_')}.png"
        assert visualize.main([name, photo, "--query", query, "--layers", "0", "-1",
                               "--output", str(output)]) == 0, capsys.readouterr().err
        pictures.append(torch.from_numpy(np.array(Image.open(output))))
    assert "RANDOM weights (seed 0)" in capsys.readouterr().out
    size = timm.models.get_pretrained_cfg(name).input_size[-1]
    expected = visualize.figure_size(panels + 1, (size, size))
    rows = -(-(panels + 1) // visualize.COLUMNS)
    assert expected == (visualize.PAD + 4 * (size + visualize.PAD), visualize.HEADER_H + rows * (
        size + visualize.CAPTION_H + visualize.PAD) + visualize.FOOTER_H)
    assert pictures[0].shape == pictures[1].shape == (expected[1], expected[0], 3)
    for index in range(1, panels + 1):
        x0, y0, x1, y1 = _panel_box(index, (size, size))
        changed = (pictures[0][y0:y1, x0:x1] != pictures[1][y0:y1, x0:x1]).any(-1)
        # the query's marks move in every panel; the attention itself in all but the gate maps
        assert changed.float().mean() > (0.001 if family in GATE_FAMILIES else 0.01), index


def test_panel_is_grey_where_the_query_cannot_look(photo, built):
    model, x = built("cswin_tiny_224")
    image = visualize.load_image(photo, model)[1]
    m = backbones.get_family("cswin").query_attention(model, x, (150, 60))[1]  # stage 1 stripes
    panel = torch.from_numpy(np.array(visualize.draw_panel(image, m, (150, 60))))
    grey = (panel[..., 0] == panel[..., 1]) & (panel[..., 1] == panel[..., 2])
    far = torch.nn.functional.max_pool2d(m.support[None, None].float(), 5, 1, 2)[0, 0] == 0
    far[50:71, 140:161] = False  # the query's marks
    assert grey[far].all() and not grey[m.support].all()


def test_checkpoint_draws_what_the_same_random_weights_draw(photo, tmp_path):
    from safetensors.torch import save_file
    torch.manual_seed(1)
    save_file(timm.create_model("shvit_s1_224").state_dict(), tmp_path / "w.safetensors")
    outputs = []
    for flags in (["--checkpoint", str(tmp_path / "w.safetensors")], ["--seed", "1"]):
        outputs.append(tmp_path / f"{len(outputs)}.png")
        assert visualize.main(["shvit_s1_224", photo, "--layers", "-1", "--output",
                               str(outputs[-1])] + flags) == 0
    a, b = (np.asarray(Image.open(p)) for p in outputs)
    top = visualize.HEADER_H
    assert (a[top:] == b[top:]).all() and (a[:top] != b[:top]).any()  # only the header differs


@pytest.mark.parametrize("argv, message", [
    (["--query", "451,10"], "--query 451,10 lies outside the 451x300 image"),
    (["--query", "10"], "--query takes X,Y"),
    (["--layers", "5"], "the model has 1 attention layers"),
    (["--colors", "1"], "--colors takes 2..256"),
    (["--checkpoint", "missing.safetensors"], "is not a file"),
])
def test_bad_inputs_end_with_one_error_line(argv, message, photo, capsys):
    assert visualize.main(["ulsam_mobilenetv1_050_e_224", photo] + argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("zoo-visualize: error: ") and message in err, err


def test_bad_image_and_models_without_maps_are_errors(photo, tmp_path, capsys, monkeypatch):
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    assert visualize.main(["shvit_s1_224", str(text)]) == 2
    assert "cannot read image" in capsys.readouterr().err
    assert visualize.main(["resnet18", photo]) == 2
    assert "'resnet18' is not a zoo model" in capsys.readouterr().err
    import dataclasses
    record = dataclasses.replace(backbones.FAMILIES["shvit"], query_attention=None)
    object.__setattr__(record, "module", backbones.FAMILIES["shvit"].module)
    monkeypatch.setitem(backbones._family._FAMILIES, "shvit", record)
    assert visualize.main(["shvit_s1_224", photo]) == 2
    assert "the shvit family declares no query_attention" in capsys.readouterr().err


def test_shim_is_the_command():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "visualize.py"), "--help"],
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("usage: zoo-visualize ")

"""What one query pixel's attention sees and weighs, layer by layer: what ``zoo-visualize`` draws.

Every family declares a ``query_attention`` function in its :class:`~backbones.Family` record:
``query_attention(model, x, query) -> [QueryAttention, ...]`` for an eval-mode model, one image
``x`` ``(1, C, H, W)`` (normalised as the model expects) and a query pixel ``query = (x, y)`` of
that input. Each :class:`QueryAttention` is one panel: the pixels whose tokens the query's
attention can reach (``support``) and how much it weighs each (``weights``), both at the input's
resolution. The maps are read off what the model computes for this image, never redrawn from its
configuration alone:

* window / stripe / halo / routed / Hi-Fi / Lo-Fi attention (CSWin, HaloNet, BiFormer, LITv2,
  SHViT): forward hooks capture the q / k projections a layer computed (and BiFormer's router's
  top-k regions); the query's softmax row is recomputed from them with the layer's own window
  geometry, scale, padding and relative positions (``*_query_weights`` below, each checked against
  its op in ``tests/test_visualize.py``);
* Sparsifiner: the mask its connectivity predictor output and the softmax over the kept keys
  (``forward_trace``);
* DependencyViT: the message the query's token sends to every other token in the reversed
  attention, and its chain of parents in the dependency tree (``forward_dependencies``);
* ELA, ULSAM: the gate map each layer multiplies its features by (these modules have no
  per-query attention; the query picks out the strips that feed ELA's gate at that pixel).

Weights are averaged over heads. A token's weight is drawn on every input pixel the token covers
(token ``i`` of an ``h``-row grid covers rows ``y`` with ``y * h // H == i``).
"""
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

import ops

__all__ = ["QueryAttention", "window_query_weights", "halo_query_weights",
           "routed_query_weights", "biformer_query_attention", "cswin_query_attention",
           "dependencyvit_query_attention", "ela_query_attention", "halonet_query_attention",
           "litv2_query_attention", "shvit_query_attention", "sparsifiner_query_attention",
           "ulsam_query_attention"]


@dataclass(frozen=True)
class QueryAttention:
    """One layer's attention of the query pixel, on the model's input image ``(H, W)``.

    Args:
        layer: the attention module's name in the model (``stages.2.blocks.0.attn``).
        label: what the panel shows, in a few words (``stripes of 7, vertical + horizontal``).
        support: bool ``(H, W)``: pixels whose tokens the query's attention can reach.
        weights: float ``(H, W)``: the head-averaged attention probability of the token under
            each pixel (0 outside ``support``); for the gate families the gate value.
        query_box: ``(x0, y0, x1, y1)``, half-open: the input pixels of the query's token at this
            layer's resolution.
        stage: the model stage the layer belongs to (None for isotropic models).
        note: a number worth printing under the panel (class-token share, gate at the query).
        path: input-pixel points joined by a line over the panel (DependencyViT: the query's
            patch, its parent, ..., the root of its tree).
    """
    layer: str
    label: str
    support: torch.Tensor
    weights: torch.Tensor
    query_box: Tuple[int, int, int, int]
    stage: Optional[int] = None
    note: str = ""
    path: Tuple[Tuple[float, float], ...] = ()


# ---------------------------------------------------------------------------------------------
# One query's softmax row of each attention pattern, from the q / k a layer computed. Layouts are
# the ops' (``(heads, H, W, d)`` for one image); each returns ``(weights (heads, H, W),
# support (H, W))`` on the key grid.

def _softmax_row(logits, padded_keys=0):
    """Softmax over the last axis of ``(heads, n)`` logits with ``padded_keys`` extra zero logits
    (zero keys that take part, as the ops' zero padding), the real keys' share returned."""
    if padded_keys:
        logits = torch.cat([logits, logits.new_zeros(logits.shape[0], padded_keys)], dim=-1)
    probs = logits.float().softmax(dim=-1)
    return probs[:, :probs.shape[-1] - padded_keys] if padded_keys else probs


def window_query_weights(q, k, query, window_size=None, window_offset=(0, 0), padding="zeros",
                         scale=None):
    """The row of query token ``query = (i, j)`` in ``ops.window_attention_2d`` with the same
    arguments (``q``, ``k``: ``(heads, H, W, d)``): its window's keys, zero-padded keys taking part
    with logit 0 under ``padding='zeros'`` (so a row at the border may sum to less than 1)."""
    heads, H, W, d = q.shape
    i, j = query
    (wh, ww), (oy, ox) = ((H, W), (0, 0)) if window_size is None else (window_size, window_offset)
    y0, x0 = (i + oy) // wh * wh - oy, (j + ox) // ww * ww - ox
    ys, xs = slice(max(y0, 0), min(y0 + wh, H)), slice(max(x0, 0), min(x0 + ww, W))
    scale = d ** -0.5 if scale is None else scale
    keys = k[:, ys, xs]
    logits = torch.einsum("hd,hyxd->hyx", q[:, i, j], keys) * scale
    real = keys.shape[1] * keys.shape[2]
    padded = wh * ww - real if padding == "zeros" else 0
    weights = q.new_zeros(heads, H, W, dtype=torch.float32)
    weights[:, ys, xs] = _softmax_row(logits.flatten(1), padded).view_as(logits)
    support = torch.zeros(H, W, dtype=torch.bool, device=q.device)
    support[ys, xs] = True
    return weights, support


def halo_query_weights(q, k, query, block_size, halo_size, stride=1, rel_pos=None, scale=None,
                       scale_pos_embed=False):
    """The row of query token ``query = (i, j)`` (on the query grid, ``q`` ``(heads, H / stride,
    W / stride, d)``) in ``ops.halo_attention_2d``: the ``win x win`` window around its block,
    keys outside the ``(heads, H, W, d)`` grid ``k`` zero keys that take part, plus the relative
    position logits. ``H``, ``W`` need not be multiples of ``block_size``: beyond them the op's
    padding is zero keys too."""
    heads, H, W, d = k.shape
    i, j = query
    bq, win = block_size // stride, block_size + 2 * halo_size
    y0, x0 = i // bq * block_size - halo_size, j // bq * block_size - halo_size
    ys, xs = slice(max(y0, 0), min(y0 + win, H)), slice(max(x0, 0), min(x0 + win, W))
    wys, wxs = slice(ys.start - y0, ys.stop - y0), slice(xs.start - x0, xs.stop - x0)
    window = k.new_zeros(heads, win, win, d)
    window[:, wys, wxs] = k[:, ys, xs]
    qv = q[:, i, j]
    scale = d ** -0.5 if scale is None else scale
    logits = torch.einsum("hd,hyxd->hyx", qv, window) * scale
    if rel_pos is not None:
        rel_h, rel_w = (qv @ table.transpose(0, 1) for table in rel_pos)  # (heads, 2 win - 1)
        if scale_pos_embed:
            rel_h, rel_w = rel_h * scale, rel_w * scale
        # key row ki seen from query row i % bq of its block: offset win - 1 + ki - i % bq
        offsets = torch.arange(win, device=q.device) + win - 1
        logits = logits + rel_h[:, offsets - i % bq, None] + rel_w[:, None, offsets - j % bq]
    probs = _softmax_row(logits.flatten(1)).view(heads, win, win)
    weights = q.new_zeros(heads, H, W, dtype=torch.float32)
    weights[:, ys, xs] = probs[:, wys, wxs]
    support = torch.zeros(H, W, dtype=torch.bool, device=q.device)
    support[ys, xs] = True
    return weights, support


def routed_query_weights(q, k, query, region_index, region_size, scale=None):
    """The row of query token ``query = (i, j)`` in ``ops.routed_attention_2d``: one softmax over
    the tokens of the regions ``region_index`` ``(regions, topk)`` lists for its region (a region
    listed twice counts twice, as in the op). ``q``, ``k``: ``(heads, H, W, d)``, ``H``, ``W``
    multiples of ``region_size``."""
    heads, H, W, d = q.shape
    i, j = query
    rh, rw = region_size
    regions_x = W // rw
    routed = region_index[(i // rh) * regions_x + j // rw].long()             # (topk,)
    rows = (routed // regions_x)[:, None] * rh + torch.arange(rh, device=q.device)
    cols = (routed % regions_x)[:, None] * rw + torch.arange(rw, device=q.device)
    token = (rows[:, :, None] * W + cols[:, None, :]).flatten()               # (topk * rh * rw,)
    keys = k.reshape(heads, H * W, d)[:, token]
    scale = d ** -0.5 if scale is None else scale
    probs = _softmax_row(torch.einsum("hd,hnd->hn", q[:, i, j], keys) * scale)
    weights = q.new_zeros(heads, H * W, dtype=torch.float32).index_add_(1, token, probs)
    support = torch.zeros(H * W, dtype=torch.bool, device=q.device)
    support[token] = True
    return weights.view(heads, H, W), support.view(H, W)


# ---------------------------------------------------------------------------------------------
# Grids, capture, results

def _token_of(query, grid, image_size):
    """The token of ``grid`` ``(h, w)`` under input pixel ``query = (x, y)``: ``(row, column)``."""
    (qx, qy), (h, w), (H, W) = query, grid, image_size
    return qy * h // H, qx * w // W


def _token_box(token, grid, image_size):
    """Input pixels ``(x0, y0, x1, y1)`` (half-open) of ``token`` of ``grid``."""
    (i, j), (h, w), (H, W) = token, grid, image_size
    return -(-j * W // w), -(-i * H // h), -(-(j + 1) * W // w), -(-(i + 1) * H // h)


def _to_image(grid_map, grid, image_size):
    """A ``(>= h, >= w)`` map on a token grid (padded grids are cropped to ``grid``) -> one value
    per input pixel, the value of the token that covers it."""
    (h, w), (H, W) = grid, image_size
    rows = torch.arange(H, device=grid_map.device) * h // H
    cols = torch.arange(W, device=grid_map.device) * w // W
    return grid_map[:h, :w][rows][:, cols]


def _result(layer, label, weights, support, grid, query, image_size, stage=None, note="",
            path=(), query_grid=None):
    """A :class:`QueryAttention` from maps on a token ``grid`` (``query``: the query pixel; its
    token is on ``query_grid``, ``grid`` unless the layer's queries are strided)."""
    query_grid = query_grid or grid
    return QueryAttention(
        layer=layer, label=label, support=_to_image(support, grid, image_size).cpu(),
        weights=_to_image(weights.float(), grid, image_size).cpu(),
        query_box=_token_box(_token_of(query, query_grid, image_size), query_grid, image_size),
        stage=stage, note=note, path=tuple(path))


def _stage(name, pattern=r"^(?:stages|blocks)\.(\d+)\.", first=0):
    match = re.search(pattern, name)
    return None if match is None else int(match.group(1)) - first


def _modules(model, types):
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, types)]
    if not found:
        raise ValueError(f"{type(model).__name__} has no {' / '.join(t.__name__ for t in types)} "
                         "layer: nothing to draw")
    return found


def _check_call(model, x, query):
    if model.training:
        raise ValueError("the model is in training mode: call model.eval() first (dropout, "
                         "BatchNorm batch statistics and token dropping change what it attends)")
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"x must be one image (1, C, H, W), got {tuple(x.shape)}")
    H, W = x.shape[-2:]
    qx, qy = query
    if not (0 <= qx < W and 0 <= qy < H):
        raise ValueError(f"query {query} lies outside the {W}x{H} input")
    return H, W


@contextmanager
def _captured(hooks: Sequence[Tuple[str, nn.Module, str]]):
    """``{key: tensor}`` filled during the ``with`` block: for every ``(key, module, what)`` the
    module's first ``'input'`` or its ``'output'`` (the first tuple element of a tuple output)."""
    seen: Dict[str, torch.Tensor] = {}
    handles = []

    def hook(key, what):
        def read(_module, args, out=None):
            value = args[0] if what == "input" else out
            seen[key] = value[0] if isinstance(value, tuple) else value
        return read

    for key, module, what in hooks:
        if what == "input":
            handles.append(module.register_forward_pre_hook(hook(key, what)))
        else:
            handles.append(module.register_forward_hook(hook(key, what)))
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def _run(model, x, hooks):
    with _captured(hooks) as seen:
        model(x)
    missing = sorted({key for key, _, _ in hooks} - set(seen))
    if missing:
        raise RuntimeError(f"{type(model).__name__}'s forward did not run {missing[:4]}: the "
                           "picture cannot be drawn from layers that were not called")
    return seen


def _heads(t, heads):
    """``(..., H, W, heads * d)`` (one image) -> ``(heads, H, W, d)``."""
    return t.unflatten(-1, (heads, -1)).movedim(-2, 0)


# ---------------------------------------------------------------------------------------------
# The families

def _centered_offset(grid, window):
    return (0, 0) if window is None else ops.centered_window_offset(grid, window)


@torch.no_grad()
def cswin_query_attention(model, x, query) -> List[QueryAttention]:
    """Per block: the query's vertical and horizontal stripe (half the heads each; one panel,
    the heads averaged over both), or the whole grid in full-attention stages."""
    from .cswin import CrossShapedWindowAttention
    image_size = _check_call(model, x, query)
    attns = _modules(model, (CrossShapedWindowAttention,))
    qkv = _run(model, x, [(name, attn.qkv, "output") for name, attn in attns])
    results = []
    for name, attn in attns:
        y = qkv[name][0]  # (H, W, 3 C), as attn.forward views it
        H, W = y.shape[:2]
        qkv_b = y.unflatten(-1, (3, attn.num_branches, -1))  # (H, W, q|k|v, branch, C / nb)
        token = _token_of(query, (H, W), image_size)
        maps, support = [], torch.zeros(H, W, dtype=torch.bool)
        for branch in range(attn.num_branches):
            window = attn.branch_window(branch, H, W)
            offset = _centered_offset((H, W), window)
            w, s = window_query_weights(_heads(qkv_b[:, :, 0, branch], attn.branch_heads),
                                        _heads(qkv_b[:, :, 1, branch], attn.branch_heads), token,
                                        window, offset, "zeros", attn.scale)
            maps.append(w)
            support |= s.cpu()
        label = ("full attention (all heads)" if attn.split_size is None else
                 f"stripes {attn.split_size} wide: vertical + horizontal")
        results.append(_result(name, label, torch.cat(maps).mean(0), support, (H, W), query,
                               image_size, _stage(name)))
    return results


@torch.no_grad()
def halonet_query_attention(model, x, query) -> List[QueryAttention]:
    """Per halo layer: the query block's ``block + 2 * halo`` window (zero keys beyond the map
    take part, so weights near the border sum to less than 1)."""
    from .halonet import HaloAttention
    image_size = _check_call(model, x, query)
    attns = _modules(model, (HaloAttention,))
    seen = _run(model, x, [hook for name, attn in attns for hook in (
        (name + ".q", attn.q, "output"), (name + ".kv", attn.kv, "output"))])
    results = []
    for name, attn in attns:
        heads, d_qk = attn.num_heads, attn.dim_head_qk
        q = seen[name + ".q"][0].unflatten(0, (heads, d_qk)).permute(0, 2, 3, 1)
        kv = seen[name + ".kv"][0].unflatten(0, (heads, -1)).permute(0, 2, 3, 1)
        (Hq, Wq), (H, W) = q.shape[1:3], kv.shape[1:3]
        token = _token_of(query, (Hq, Wq), image_size)
        weights, support = halo_query_weights(
            q, kv[..., :d_qk], token, attn.block_size, attn.halo_size, attn.block_stride,
            (attn.pos_embed.height_rel, attn.pos_embed.width_rel), attn.scale,
            attn.scale_pos_embed)
        label = f"block {attn.block_size} + halo {attn.halo_size}"
        if attn.block_stride > 1:
            label += f", queries strided {attn.block_stride}"
        results.append(_result(name, label, weights.mean(0), support, (H, W), query, image_size,
                               _stage(name), query_grid=(Hq, Wq)))
    return results


@torch.no_grad()
def biformer_query_attention(model, x, query) -> List[QueryAttention]:
    """Per BRA block: the ``topk`` regions its router picked for the query's region on this
    image (full-attention blocks: the whole grid)."""
    from .biformer import BiLevelRoutingAttention, GlobalAttention
    image_size = _check_call(model, x, query)
    attns = _modules(model, (BiLevelRoutingAttention, GlobalAttention))
    hooks = [(name + ".in", attn, "input") for name, attn in attns]
    hooks += [(name + ".qkv", attn.qkv, "output") for name, attn in attns]
    hooks += [(name + ".router", attn.router, "output") for name, attn in attns
              if isinstance(attn, BiLevelRoutingAttention)]
    seen = _run(model, x, hooks)
    results = []
    for name, attn in attns:
        grid = tuple(seen[name + ".in"].shape[1:3])            # NHWC block input
        y = seen[name + ".qkv"][0]
        token = _token_of(query, grid, image_size)
        if isinstance(attn, GlobalAttention):
            q, k = y.unflatten(-1, (3, -1))[..., :2, :].unbind(-2)
            weights, support = window_query_weights(_heads(q, attn.num_heads),
                                                    _heads(k, attn.num_heads), token,
                                                    scale=attn.scale)
            label = "full attention"
        else:
            region_size, padded = attn.region_layout(*grid)
            # the nchw layout zero-pads q / k / v after the projection (legacy: x before it)
            y = F.pad(y, (0, 0, 0, padded[1] - y.shape[1], 0, padded[0] - y.shape[0]))
            qk = attn.qk_dim
            weights, support = routed_query_weights(
                _heads(y[..., :qk], attn.num_heads), _heads(y[..., qk:2 * qk], attn.num_heads),
                token, seen[name + ".router"][0], region_size, attn.scale)
            regions = (padded[0] // region_size[0]) * (padded[1] // region_size[1])
            topk = seen[name + ".router"].shape[-1]
            label = f"{topk} of {regions} regions, routed for this image"
        results.append(_result(name, label, weights.mean(0), support, grid, query, image_size,
                               _stage(name)))
    return results


@torch.no_grad()
def litv2_query_attention(model, x, query) -> List[QueryAttention]:
    """Per HiLo block two panels: the Hi-Fi heads' ``s x s`` window, and the Lo-Fi heads'
    attention over the ``s x s`` average-pooled map (each pooled key drawn over its cell); blocks
    with ``s = 1`` are global attention, all heads Lo-Fi."""
    from .litv2 import HiLoAttention
    image_size = _check_call(model, x, query)
    attns = _modules(model, (HiLoAttention,))
    hooks = []
    for name, attn in attns:
        hooks.append((name + ".in", attn, "input"))
        if attn.hifi_heads:
            hooks.append((name + ".h_qkv", attn.h_qkv, "output"))
        if attn.lofi_heads:
            hooks += [(name + ".l_q", attn.l_q, "output"), (name + ".l_kv", attn.l_kv, "output")]
    seen = _run(model, x, hooks)
    results = []
    for name, attn in attns:
        grid = tuple(seen[name + ".in"].shape[1:3])            # NHWC, before HiLo's padding
        token = _token_of(query, grid, image_size)
        s, stage = attn.window_size, _stage(name)
        if attn.hifi_heads:
            qkv = seen[name + ".h_qkv"][0].unflatten(-1, (3, -1))  # the padded map
            weights, support = window_query_weights(
                _heads(qkv[..., 0, :], attn.hifi_heads), _heads(qkv[..., 1, :], attn.hifi_heads),
                token, (s, s), scale=attn.scale)
            results.append(_result(name, f"Hi-Fi: {s}x{s} window, {attn.hifi_heads} heads",
                                   weights.mean(0), support, grid, query, image_size, stage))
        if attn.lofi_heads:
            q = _heads(seen[name + ".l_q"][0], attn.lofi_heads)   # (heads, H, W, d)
            kv = seen[name + ".l_kv"][0]
            if s == 1:
                k = _heads(kv.unflatten(-1, (2, -1))[..., 0, :], attn.lofi_heads)
                label = f"global attention, {attn.lofi_heads} heads"
            else:                                                 # (pooled tokens, 2 C) rows
                pooled = (-(-grid[0] // s), -(-grid[1] // s))
                k = _heads(kv.unflatten(-1, (2, -1))[..., 0, :].unflatten(0, pooled),
                           attn.lofi_heads)
                label = f"Lo-Fi: {s}x{s}-pooled keys, {attn.lofi_heads} heads"
            weights = _softmax_row(torch.einsum("hd,hyxd->hyx", q[:, token[0], token[1]], k)
                                   .flatten(1) * attn.scale).view(k.shape[:3]).mean(0)
            # every pooled key stands for its s x s cell of the (padded) grid
            weights = weights.repeat_interleave(s, 0).repeat_interleave(s, 1)
            results.append(_result(name, label, weights, torch.ones_like(weights, dtype=torch.bool),
                                   grid, query, image_size, stage))
    return results


@torch.no_grad()
def shvit_query_attention(model, x, query) -> List[QueryAttention]:
    """Per attention block: the single head's softmax over the whole grid."""
    from .shvit import SingleHeadAttention
    image_size = _check_call(model, x, query)
    attns = _modules(model, (SingleHeadAttention,))
    qkv = _run(model, x, [(name, attn.qkv, "output") for name, attn in attns])
    results = []
    for name, attn in attns:
        t = qkv[name][0].permute(1, 2, 0)[None]                  # (1 head, H, W, 2 qk + pdim)
        grid = tuple(t.shape[1:3])
        weights, support = window_query_weights(
            t[..., :attn.qk_dim], t[..., attn.qk_dim:2 * attn.qk_dim],
            _token_of(query, grid, image_size), scale=attn.scale)
        results.append(_result(name, f"single head over the {grid[0]}x{grid[1]} grid",
                               weights[0], support, grid, query, image_size, _stage(name)))
    return results


@torch.no_grad()
def sparsifiner_query_attention(model, x, query) -> List[QueryAttention]:
    """Per block: the patches the connectivity predictor kept for the query's patch (any head),
    and the softmax over them (``forward_trace``'s mask and attention); the class token's share
    is in the note."""
    image_size = _check_call(model, x, query)
    trace = model.forward_trace(x, need_attn=True)
    grid = tuple(model.grid_size)
    i, j = _token_of(query, grid, image_size)
    row = i * grid[1] + j + 1                                   # the class token is token 0
    results, alive = [], None
    for index, layer in enumerate(trace.layers):
        keys = layer.attn_mask[0, :, row]                        # (heads, N)
        probs = layer.attn[0, :, row] * keys
        probs = probs / probs.sum(-1, keepdim=True)
        kept = keys[:, 1:].sum(-1).float().mean()
        note = f"class token {float(probs[:, 0].mean()):.0%}"
        if alive is not None and not bool(alive[i * grid[1] + j]):
            note += "; the query's patch was pruned (zeroed) before this block"
        label = f"predictor kept {kept:.0f} of {keys.shape[-1] - 1} patches a head " \
                f"({keys.shape[0]} heads)"
        results.append(_result(f"blocks.{index}.attn", label, probs[:, 1:].mean(0).view(grid),
                               keys[:, 1:].any(0).view(grid), grid, query, image_size,
                               note=note))
        if layer.token_mask is not None:
            alive = layer.token_mask[0]
    return results


@torch.no_grad()
def dependencyvit_query_attention(model, x, query) -> List[QueryAttention]:
    """Per block: what the query's token sends to every other token in the reversed attention
    (its softmax row times its head selector and message weight: its column of the dependency
    mask), and its path up the block's dependency tree (parent, grandparent, ..., root)."""
    image_size = _check_call(model, x, query)
    out = model.forward_dependencies(x)
    grid = tuple(out.grid_size)
    i, j = _token_of(query, grid, image_size)
    patch, num_patches = i * grid[1] + j, out.num_patches
    results = []
    for k, layer in enumerate(out.layers):
        index = out.token_indices[k][0]
        support = torch.zeros(num_patches, dtype=torch.bool, device=index.device)
        support[index] = True
        weights = torch.zeros(num_patches, device=index.device)
        position = (index == patch).nonzero()
        path, note = (), "the query's patch was pruned by Lite before this block"
        if len(position):
            c = int(position[0])
            weights[index] = out.masks[k][0, :, c].float()
            note = f"message weight {float(out.message_weights[k][0, c]):.2f}; line: to its root"
            path = _tree_path(out.tree(layer)[0].tolist(), patch, grid, image_size)
        results.append(_result(f"blocks.{layer}.attn", "message sent (reversed attention)",
                               weights.view(grid), support.view(grid), grid, query, image_size,
                               note=note, path=path))
    return results


def _tree_path(parents, patch, grid, image_size):
    """Centres (input pixels) of ``patch``, its parent, ... up to the root of its tree."""
    (h, w), (H, W) = grid, image_size
    chain, seen = [patch], {patch}
    while parents[chain[-1]] not in seen and parents[chain[-1]] >= 0:
        chain.append(parents[chain[-1]])
        seen.add(chain[-1])
    return [((p % w + 0.5) * W / w, (p // w + 0.5) * H / h) for p in chain]


@torch.no_grad()
def ela_query_attention(model, x, query) -> List[QueryAttention]:
    """Per ELA layer: the gate ``a_h * a_w`` it multiplies the features by (mean over channels)
    over the whole image; the support is the rows and columns whose strip means the 1-D conv
    reads for the gate at the query (its GroupNorm's statistics span the whole map)."""
    from ops.ela_gate import ela_sequence_gate
    from .ela import ELA
    image_size = _check_call(model, x, query)
    layers = _modules(model, (ELA,))
    inputs = _run(model, x, [(name, ela, "input") for name, ela in layers])
    results = []
    for name, ela in layers:
        feat = inputs[name]
        grid = tuple(feat.shape[-2:])
        args = (ela.conv.weight, ela.gn.weight, ela.gn.bias, ela.gn.num_groups, ela.gn.eps)
        a_h = ela_sequence_gate(feat.mean(-1), *args)[0]         # (C, H): the row gates
        a_w = ela_sequence_gate(feat.mean(-2), *args)[0]         # (C, W): the column gates
        gate = (a_h[:, :, None] * a_w[:, None, :]).mean(0)
        i, j = _token_of(query, grid, image_size)
        reach = ela.conv.kernel_size[0] // 2
        support = torch.zeros(grid, dtype=torch.bool, device=gate.device)
        support[max(i - reach, 0):i + reach + 1] = True
        support[:, max(j - reach, 0):j + reach + 1] = True
        stage = _stage(name, r"^layer(\d+)\.", first=1) if name.startswith("layer") \
            else _stage(name)
        results.append(_result(name, f"gate a_h * a_w; strips within the k={2 * reach + 1} conv",
                               gate, support, grid, query, image_size, stage,
                               note=f"gate at the query {float(gate[i, j]):.2f} "
                                    f"(map {float(gate.min()):.2f}..{float(gate.max()):.2f})"))
    return results


@torch.no_grad()
def ulsam_query_attention(model, x, query) -> List[QueryAttention]:
    """Per ULSAM layer: its spatial softmax maps ``A`` (mean over the subspaces), which scale the
    features by ``1 + A``; a softmax over every position, so the support is the whole map."""
    from ops.ulsam import max_pool3x3_nonneg, subspace_conv
    from .ulsam import ULSAM
    image_size = _check_call(model, x, query)
    layers = _modules(model, (ULSAM,))
    inputs = _run(model, x, [(name, m, "input") for name, m in layers])
    results = []
    for name, module in layers:
        feat = inputs[name]
        dw_scale, dw_shift, pw_weight, pw_bias = module.folded()
        d = torch.relu(torch.addcmul(dw_shift[:, None, None], feat, dw_scale[:, None, None]))
        logits = torch.relu(subspace_conv(max_pool3x3_nonneg(d), pw_weight, pw_bias))[0]
        attn = logits.flatten(1).softmax(-1).view_as(logits).mean(0)   # (H, W)
        grid = tuple(attn.shape)
        i, j = _token_of(query, grid, image_size)
        note = f"A at the query {float(attn[i, j]) * attn.numel():.3g} x uniform " \
               f"(1 / {attn.numel()})"
        results.append(_result(
            name, f"spatial softmax, mean of {module.num_splits} subspaces", attn,
            torch.ones_like(attn, dtype=torch.bool), grid, query, image_size, _stage(name),
            note=note))
    return results

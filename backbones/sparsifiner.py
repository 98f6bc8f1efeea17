"""Sparsifiner: learned, instance-dependent sparse attention for ViTs (DeiT and LV-ViT backbones).

Paper: "Sparsifiner: Learning Sparse Instance-Dependent Attention for Efficient Vision
Transformers", Cong Wei, Brendan Duke, Ruowei Jiang, Parham Aarabi, Graham W. Taylor, Florian
Shkurti, CVPR 2023, arXiv:2303.13755. Official code: https://github.com/lim142857/Sparsifiner (MIT
licence, read at commit 9a11e26; no Sparsifiner weights were released). This is an independent
implementation with the official state_dict layout (``blocks.i.attn.mask_predictor.*``).

Every block predicts, per head and per patch query, which keys it attends to:

1. a cheap low-rank attention ``softmax(scale * q_c (k_c^T P_n))`` over ``K = N // reduce_n_factor``
   "basis" rows, with ``q_c, k_c`` the head's q, k projected to ``head_dim // reduce_c_factor``
   channels and ``P_n`` (``proj_n``) a learned ``N -> K`` sequence projection; ``scale`` is
   ``num_heads ** -0.5`` (the official choice, not ``head_dim ** -0.5``);
2. the ``coef_topk`` largest coefficients kept (not renormalised), times a sparse non-negative basis
   ``|proj_back_n|`` with entries ``<= basis_threshold`` zeroed: the approximate attention of each
   patch query over all ``N`` keys;
3. its ``ceil(attn_keep_rate * N)`` largest entries (fewer when token pruning left fewer tokens) are
   the query's keys. The class-token query attends every key.

The block's attention is then exact softmax attention restricted to those keys
(``ops.masked_attention``: masked logits are ``-inf`` before the softmax). The mask takes no
gradient: in ordinary training only the backbone learns; the predictor is trained by
reconstructing a dense teacher's attention (``forward_trace(x, reconstruct=True)`` and the
``sparsifiner_attn_recon`` loss, phase 1 of the recipe in ``configs/imagenet``).

Token pruning (the paper's "attention + token sparsity" rows, off by default): after the blocks
in ``token_pruning_layers`` only the ``ceil(token_keep_rates[i] * (N - 1))`` patch tokens with the
largest mean class attention stay; as in the official code the others are zeroed, not removed:
their q, k, v are zero in later blocks, patch queries cannot attend them, the class query still
does (a zero key, a zero value).

The model has a fixed token count: ``proj_n`` / ``proj_back_n`` are ``N x K`` parameters, so the
resolution is part of the weights (a clear error for other input sizes).
"""
import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, Mlp, trunc_normal_
from timm.models import checkpoint as timm_checkpoint
from timm.models import generate_default_cfgs
from timm.models._features import feature_take_indices

import ops

from ._builder import build_zoo_model
from ._family import Family, PaperResult, register_family
from ._helpers import check_image_input, unwrap_checkpoint
from ._pretrained import PretrainedWeightsError
from ._registry import register_zoo_model
from .layers import (DeviceLike, calculate_drop_path_rates, factory_context, notrace_function,
                     notrace_module)
from .query_attention import sparsifiner_query_attention

__all__ = ["Sparsifiner", "ConnectivityPredictor", "SparsifinerTrace", "LayerTrace",
           "checkpoint_filter_fn", "create_from_official", "attention_maps"]


def keep_count(rate: float, n: int) -> int:
    """``ceil(rate * n)`` in float64, as the official budgets (``ceil(0.343 * 196) = 68``)."""
    return int(math.ceil(float(rate) * n))


@dataclass
class LayerTrace:
    """What one block computed (see :meth:`Sparsifiner.forward_trace`).

    ``approx_attn``: ``(B, heads, N - 1, N)``, the predictor's low-rank attention of each patch
    query; ``attn_mask``: bool ``(B, heads, N, N)``, the keys each query attended (row 0: the class
    token, all True; None in reconstruction mode, where attention is dense); ``token_mask``: bool
    ``(B, N - 1)``, patch tokens alive after the block (None without pruning); ``attn``: the dense
    softmax attention ``(B, heads, N, N)`` when asked for (teachers, ``need_attn=True``).
    """
    approx_attn: torch.Tensor
    attn_mask: Optional[torch.Tensor]
    token_mask: Optional[torch.Tensor]
    attn: Optional[torch.Tensor] = None


@dataclass
class SparsifinerTrace:
    """:meth:`Sparsifiner.forward_trace`'s result: ``logits`` (the model's output), ``cls_logits``
    (the class head alone: the official training-mode logits, what the recipe's losses read; equal
    to ``logits`` without an auxiliary head), ``tokens`` (final-norm tokens, ``(B, N, C)``),
    ``features`` (what the official code calls features: the final-norm patch
    tokens, or with an auxiliary head its per-token logits) and one :class:`LayerTrace` per
    block."""
    logits: torch.Tensor
    cls_logits: torch.Tensor
    tokens: torch.Tensor
    features: torch.Tensor
    layers: List[LayerTrace] = field(default_factory=list)

    @property
    def token_mask(self) -> Optional[torch.Tensor]:
        """Patch tokens alive at the end (None without pruning)."""
        return self.layers[-1].token_mask if self.layers else None

    def attn_mask_sparsity(self) -> torch.Tensor:
        """Mean over blocks of the fraction of masked (query, key) pairs, class row included (the
        official ``attn_mask_sparsity``)."""
        masks = [t.attn_mask for t in self.layers if t.attn_mask is not None]
        if not masks:
            raise ValueError("no attention masks: the trace was taken in reconstruction mode")
        return torch.stack([1.0 - m.float().mean() for m in masks]).mean()


def _as_ordered_ints(x):
    """``x`` (float32, every entry >= 0 or -inf) as int32 bit patterns, which order exactly as the
    floats do: the integer top-k is 10-20 % faster on the CPU (same entries, ties aside). Other
    dtypes keep floats, as do torch.jit's tracer (fvcore) and torch.export (ONNX): no dtype view."""
    if x.dtype == torch.float32 and not (torch.jit.is_tracing() or torch.compiler.is_exporting()):
        return x.view(torch.int32)
    return x


def _true_like(index):
    """An all-True bool source shaped like ``index`` (no copy), for ``scatter_``: the scalar
    ``True`` form has no TorchScript schema, so torch.jit's tracer (fvcore) cannot count it."""
    return torch.ones((), dtype=torch.bool, device=index.device).expand(index.shape)


@notrace_module  # one FX node: it builds its mask in place (FX cannot trace item assignment)
class ConnectivityPredictor(nn.Module):
    """The official ``MaskPredictor`` (same parameters and keys): from one block's per-head q, k
    (``(B, heads, N, head_dim)``, before any scaling) to the approximate attention of each patch
    query and the keys it keeps.

    Args:
        head_dim, num_heads, num_tokens: the block's attention shape (``num_tokens`` includes the
            class token; it fixes the size of ``proj_n`` / ``proj_back_n``).
        attn_keep_rate: keys kept per patch query, ``ceil(attn_keep_rate * num_tokens)``.
        reduce_n_factor: ``K = num_tokens // reduce_n_factor`` basis rows.
        reduce_c_factor: ``q_c, k_c`` have ``head_dim // reduce_c_factor`` channels.
        share_inout_proj: ``proj_back_n`` is ``proj_n`` (one parameter, both keys).
        basis_threshold: basis entries ``|b| <= basis_threshold`` are zero.
        coef_topk: keep the largest ``coef_topk`` basis coefficients per query (None: keep those
            ``> coef_threshold`` instead, or all when ``coef_threshold`` is 0).
        connectivity: ``"topk"`` (the budget above) or ``"threshold"`` (keys whose approximate
            attention is ``> score_threshold``).
        prune_query_rows: with token pruning, pruned patch queries attend nothing (their output
            is zero; official ``PRUNE_ATTN_MATRIX_ROW``, default off: they never reach the output).
    """

    def __init__(self, head_dim: int, num_heads: int, num_tokens: int,
                 attn_keep_rate: float = 0.25, reduce_n_factor: int = 8,
                 reduce_c_factor: int = 2, share_inout_proj: bool = False,
                 basis_threshold: float = 0.02, coef_topk: Optional[int] = 8,
                 coef_threshold: float = 0.05, connectivity: str = "topk",
                 score_threshold: float = 1e-4, prune_query_rows: bool = False):
        super().__init__()
        if connectivity not in ("topk", "threshold"):
            raise ValueError(f"connectivity must be 'topk' or 'threshold', got {connectivity!r}")
        if not 0.0 < attn_keep_rate <= 1.0:
            raise ValueError(f"attn_keep_rate must lie in (0, 1], got {attn_keep_rate}: it is the "
                             "fraction of keys each query keeps")
        self.num_heads, self.num_tokens = num_heads, num_tokens
        self.reduced_c = head_dim // reduce_c_factor
        self.reduced_n = int(num_tokens // reduce_n_factor)
        if self.reduced_c < 1 or self.reduced_n < 1:
            raise ValueError(f"reduce factors leave no basis: head_dim {head_dim} // "
                             f"{reduce_c_factor} and num_tokens {num_tokens} // {reduce_n_factor} "
                             "must both be >= 1")
        if coef_topk is not None and not 1 <= coef_topk <= self.reduced_n:
            raise ValueError(f"coef_topk must lie in [1, {self.reduced_n}] (the basis size), "
                             f"got {coef_topk}")
        self.scale = num_heads ** -0.5
        self.attn_budget = keep_count(attn_keep_rate, num_tokens)
        self.basis_threshold, self.coef_topk = float(basis_threshold), coef_topk
        self.coef_threshold, self.connectivity = float(coef_threshold), connectivity
        self.score_threshold, self.prune_query_rows = float(score_threshold), prune_query_rows
        self.proj_c_q = nn.Linear(head_dim, self.reduced_c)
        self.proj_c_k = nn.Linear(head_dim, self.reduced_c)
        self.proj_n = nn.Parameter(torch.zeros(num_tokens, self.reduced_n))
        self.proj_back_n = self.proj_n if share_inout_proj else \
            nn.Parameter(torch.zeros(num_tokens, self.reduced_n))
        trunc_normal_(self.proj_n, std=.02)
        if not share_inout_proj:
            trunc_normal_(self.proj_back_n, std=.02)

    def budget(self, kept_patch_tokens: Optional[int] = None) -> int:
        """Keys per patch query: the keep-rate budget, at most the patch tokens still alive (the
        official module stores that clamp on itself at the first pruned forward and never resets
        it; here it is a function of the call)."""
        if kept_patch_tokens is None:
            return self.attn_budget
        return min(self.attn_budget, kept_patch_tokens)

    def basis(self, signed: bool = False) -> torch.Tensor:
        """``(K, N)``: the raw ``proj_back_n^T`` (``signed``, phase-1 training) or its sparse
        non-negative form ``|b| if |b| > basis_threshold else 0``."""
        basis = self.proj_back_n.t()
        if signed:
            return basis
        basis = basis.abs()
        return basis.masked_fill(basis <= self.basis_threshold, 0.0)

    def approximate(self, q, k, keep=None, reconstruct=False):
        """``(B, heads, N - 1, N)`` low-rank attention of every patch query over all N keys.

        ``keep``: bool ``(B, N)`` of live tokens (class token True) under token pruning.
        ``reconstruct``: the phase-1 form (signed basis, every coefficient), differentiable."""
        q_c, k_c = self.proj_c_q(q[:, :, 1:]), self.proj_c_k(k)
        if keep is not None:
            q_c = q_c.masked_fill(~keep[:, None, 1:, None], 0.0)
            k_c = k_c.masked_fill(~keep[:, None, :, None], 0.0)
        k_low = k_c.transpose(-1, -2) @ self.proj_n                  # (B, heads, c, K)
        # scaled after the product, as the official code: the top-k boundaries are that close
        coef = ((q_c @ k_low) * self.scale).softmax(dim=-1)          # (B, heads, N - 1, K)
        if reconstruct:
            return coef @ self.basis(signed=True)
        if self.coef_topk is not None:
            index = _as_ordered_ints(coef).topk(self.coef_topk, dim=-1, sorted=False).indices
            coef = torch.zeros_like(coef).scatter_(-1, index, coef.gather(-1, index))
        elif self.coef_threshold > 0:
            coef = coef.masked_fill(coef <= self.coef_threshold, 0.0)
        return coef @ self.basis()

    def connectivity_mask(self, approx_attn, keep=None, kept_patch_tokens=None, additive=False):
        """bool ``(B, heads, N, N)``: the keys of every query (row 0, the class token: all); with
        ``additive``, the same mask as ``0`` / ``-inf`` floats (what SDPA computes with)."""
        score = approx_attn
        if keep is not None:
            score = score.masked_fill(~keep[:, None, None, :], float("-inf"))
        n = score.shape[-1]
        if additive:
            return self._additive_mask(score, keep, kept_patch_tokens)
        mask = score.new_zeros((score.shape[0], score.shape[1], n, n), dtype=torch.bool)
        mask[:, :, 0] = True
        if self.connectivity == "topk":
            index = self._top_keys(score, kept_patch_tokens)
            mask[:, :, 1:].scatter_(-1, index, _true_like(index))
        else:
            mask[:, :, 1:] = score > self.score_threshold
        if keep is not None and self.prune_query_rows:
            mask[:, :, 1:] &= keep[:, None, 1:, None]
        return mask

    def _top_keys(self, score, kept_patch_tokens):
        # scores are >= 0 (non-negative coefficients times a non-negative basis) or -inf
        return _as_ordered_ints(score).topk(self.budget(kept_patch_tokens), dim=-1,
                                            sorted=False).indices

    def _additive_mask(self, score, keep, kept_patch_tokens):
        n = score.shape[-1]
        mask = score.new_full((score.shape[0], score.shape[1], n, n), float("-inf"))
        mask[:, :, 0] = 0.0
        if self.connectivity == "topk":
            index = self._top_keys(score, kept_patch_tokens)
            mask[:, :, 1:].scatter_(-1, index, score.new_zeros(()).expand(index.shape))
        else:
            mask[:, :, 1:].masked_fill_(score > self.score_threshold, 0.0)
        if keep is not None and self.prune_query_rows:
            mask[:, :, 1:].masked_fill_(~keep[:, None, 1:, None], float("-inf"))
        return mask

    def forward(self, q, k, keep=None, kept_patch_tokens=None):
        """(approx_attn, attn_mask) of one block; the mask takes no gradient. On the CPU the mask
        is in the additive float form (``ops.masked_attention``'s reference then skips SDPA's
        bool -> float pass, ~15 % of the model's time); elsewhere bool, what the fused kernel
        reads."""
        with torch.no_grad():
            approx = self.approximate(q, k, keep)
            return approx, self.connectivity_mask(approx, keep, kept_patch_tokens,
                                                  additive=q.device.type == "cpu")


class SparseAttention(nn.Module):
    """Multi-head self-attention over the keys the predictor keeps (official ``Attention``)."""

    def __init__(self, dim: int, num_heads: int, num_tokens: int, qkv_bias: bool = True,
                 proj_drop: float = 0.0, token_keep_rate: Optional[float] = None,
                 **predictor_kwargs):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.mask_predictor = ConnectivityPredictor(self.head_dim, num_heads, num_tokens,
                                                    **predictor_kwargs)
        # patch tokens kept after this block (None: no pruning here)
        self.token_budget = None if token_keep_rate is None else \
            keep_count(token_keep_rate, num_tokens - 1)

    def forward(self, x, keep=None, kept_patch_tokens=None, trace=None, reconstruct=False,
                need_attn=False):
        """``x`` ``(B, N, C)``; ``keep`` bool ``(B, N)`` of live tokens or None. Returns
        ``(out, keep after this block)``; appends a :class:`LayerTrace` to ``trace`` if given."""
        B, N, C = x.shape
        qkv = self.qkv(x)
        if keep is not None and not reconstruct:
            qkv = qkv.masked_fill(~keep[..., None], 0.0)
        q, k, v = qkv.view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        attn_mask = attn = None
        if reconstruct:  # phase 1: dense attention, the predictor learns to approximate it
            approx = self.mask_predictor.approximate(q, k, reconstruct=True)
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        else:
            approx, attn_mask = self.mask_predictor(q, k, keep, kept_patch_tokens)
            out = ops.masked_attention(q, k, v, attn_mask, scale=self.scale)
        if need_attn:
            attn = ((q @ k.transpose(-1, -2)) * self.scale).softmax(dim=-1)
        new_keep = keep
        if self.token_budget is not None and not reconstruct:
            new_keep = self._prune(q, k, keep)
        out = self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, C)))
        if trace is not None:
            if attn_mask is not None and attn_mask.is_floating_point():
                attn_mask = attn_mask == 0
            trace.append(LayerTrace(approx, attn_mask,
                                    None if new_keep is None else new_keep[:, 1:], attn))
        return out, new_keep

    def _prune(self, q, k, keep):
        """Keep the patch tokens with the largest class attention, averaged over heads (the class
        query attends every key, so its row is the dense softmax)."""
        cls_attn = ((q[:, :, :1] @ k.transpose(-1, -2)) * self.scale).softmax(dim=-1)
        score = cls_attn[:, :, 0, 1:].mean(dim=1)                    # (B, N - 1)
        if keep is not None:
            score = score.masked_fill(~keep[:, 1:], float("-inf"))
        index = score.topk(self.token_budget, dim=-1, sorted=False).indices
        kept = torch.zeros_like(score, dtype=torch.bool).scatter_(-1, index, _true_like(index))
        return torch.cat([torch.ones_like(kept[:, :1]), kept], dim=1)


class Block(nn.Module):
    """Pre-norm transformer block; LV-ViT scales both residual branches by ``1 / skip_lam``."""

    def __init__(self, dim, num_heads, num_tokens, mlp_ratio=4.0, qkv_bias=True, drop=0.0,
                 drop_path=0.0, norm_eps=1e-6, skip_lam=1.0, token_keep_rate=None,
                 **predictor_kwargs):
        super().__init__()
        self.skip_lam = skip_lam
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = SparseAttention(dim, num_heads, num_tokens, qkv_bias=qkv_bias, proj_drop=drop,
                                    token_keep_rate=token_keep_rate, **predictor_kwargs)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)

    @property
    def prunes_tokens(self) -> bool:
        return self.attn.token_budget is not None

    def forward(self, x, keep=None, kept_patch_tokens=None, trace=None, reconstruct=False,
                need_attn=False):
        out, new_keep = self.attn(self.norm1(x), keep, kept_patch_tokens, trace, reconstruct,
                                  need_attn)
        if self.skip_lam != 1.0:
            out = out / self.skip_lam
        x = x + self.drop_path(out)
        out = self.mlp(self.norm2(x))
        if self.skip_lam != 1.0:
            out = out / self.skip_lam
        x = x + self.drop_path(out)
        if new_keep is not None:
            x = x.masked_fill(~new_keep[..., None], 0.0)
        return x, new_keep


class PatchEmbed(nn.Module):
    """DeiT's patchify convolution (``patch_embed.proj``), NCHW out."""

    def __init__(self, in_chans, embed_dim, patch_size):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, patch_size)

    def forward(self, x):
        return self.proj(x)


class ConvStem(nn.Module):
    """LV-ViT's ``PatchEmbed4_2`` (same keys): conv7x7/2 + two conv3x3, each bias-free with BN and
    ReLU, at 64 channels, then a ``patch_size / 2`` patchify convolution."""

    def __init__(self, in_chans, embed_dim, patch_size, width=64):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.proj = nn.Conv2d(width, embed_dim, patch_size // 2, patch_size // 2)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        return self.proj(x)


@notrace_function
def _check_resolution(x, img_size, model_name):
    if tuple(x.shape[-2:]) != tuple(img_size):
        raise ValueError(
            f"{model_name} takes {img_size[0]}x{img_size[1]} inputs only, got "
            f"{x.shape[-2]}x{x.shape[-1]}: its connectivity predictor's proj_n / proj_back_n are "
            "(tokens x basis) parameters, so the resolution is part of the weights. Resize the "
            "input (timm.data.resolve_data_config + create_transform) or build the model with "
            "img_size= and train its predictor")
    return x


class Sparsifiner(nn.Module):
    """Sparsifiner on a DeiT (``stem="patch"``) or LV-ViT (``stem="conv4_2"``, ``skip_lam=2``,
    ``aux_head=True``) backbone.

    Args:
        img_size, patch_size, in_chans, num_classes, embed_dim, depth, num_heads, mlp_ratio,
            qkv_bias, drop_rate, drop_path_rate: as timm's ``VisionTransformer``.
        representation_size: a Linear + Tanh pre-logits layer of this width (official option).
        stem: ``"patch"`` (DeiT conv patchify) or ``"conv4_2"`` (LV-ViT's 4-conv stem).
        norm_eps: LayerNorm epsilon (DeiT 1e-6, LV-ViT 1e-5).
        skip_lam: residual branches are divided by it (LV-ViT 2.0).
        aux_head: LV-ViT's token-labelling head: logits are
            ``head(cls) + 0.5 * max over patches of aux_head(patch)`` (see :meth:`forward_head`).
        attn_keep_rate: fraction of keys each patch query keeps, one value or one per block.
        token_keep_rates: one per block, the fraction of the patch tokens alive after it in the
            blocks of ``token_pruning_layers`` (the official ``token_keep_rate_list``).
        token_pruning_layers: blocks after which tokens are pruned (official indicator list).
        reduce_n_factor, reduce_c_factor, share_inout_proj, basis_threshold, coef_topk,
            coef_threshold, connectivity, score_threshold, prune_query_rows: the predictor's
            settings (:class:`ConnectivityPredictor`; defaults: the official default config).
        device, dtype: where and in which precision to create the parameters.
    """

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: int = 16,
            in_chans: int = 3,
            num_classes: int = 1000,
            embed_dim: int = 384,
            depth: int = 12,
            num_heads: int = 6,
            mlp_ratio: float = 4.0,
            qkv_bias: bool = True,
            representation_size: Optional[int] = None,
            drop_rate: float = 0.0,
            attn_drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            stem: str = "patch",
            norm_eps: float = 1e-6,
            skip_lam: float = 1.0,
            aux_head: bool = False,
            attn_keep_rate: Union[float, Sequence[float]] = 0.25,
            token_keep_rates: Optional[Sequence[float]] = None,
            token_pruning_layers: Sequence[int] = (),
            reduce_n_factor: int = 6,
            reduce_c_factor: int = 2,
            share_inout_proj: bool = False,
            basis_threshold: float = 0.02,
            coef_topk: Optional[int] = 8,
            coef_threshold: float = 0.05,
            connectivity: str = "topk",
            score_threshold: float = 1e-4,
            prune_query_rows: bool = False,
            global_pool: str = "token",
            device: DeviceLike = None,
            dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        if global_pool not in ("token", "avg", ""):
            raise ValueError(f"global_pool must be 'token' (the paper's), 'avg' or '', got "
                             f"{global_pool!r}")
        self.global_pool = global_pool
        if attn_drop_rate:
            raise ValueError("attention dropout is not supported: the attention runs in "
                             "ops.masked_attention (the official recipes use 0)")
        if stem not in ("patch", "conv4_2"):
            raise ValueError(f"stem must be 'patch' (DeiT) or 'conv4_2' (LV-ViT), got {stem!r}")
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if img_size[0] % patch_size or img_size[1] % patch_size:
            raise ValueError(f"img_size {img_size} must be a multiple of patch_size {patch_size}")
        self.img_size, self.patch_size, self.in_chans = img_size, patch_size, in_chans
        self.grid_size = (img_size[0] // patch_size, img_size[1] // patch_size)
        num_tokens = self.grid_size[0] * self.grid_size[1] + 1
        keep_rates = [float(attn_keep_rate)] * depth if isinstance(attn_keep_rate, (int, float)) \
            else [float(r) for r in attn_keep_rate]
        pruning = sorted(set(int(i) for i in token_pruning_layers))
        if len(keep_rates) != depth:
            raise ValueError(f"attn_keep_rate needs one value or {depth} (one per block), got "
                             f"{len(keep_rates)}")
        if pruning and (token_keep_rates is None or len(token_keep_rates) != depth):
            raise ValueError(f"token_pruning_layers {pruning} need token_keep_rates, one per "
                             f"block ({depth})")
        if any(not 0 <= i < depth for i in pruning):
            raise ValueError(f"token_pruning_layers must index blocks 0..{depth - 1}, got {pruning}")
        self.token_pruning_layers = tuple(pruning)
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1
        self.output_fmt = "NLC"
        self.grad_checkpointing = False
        dpr = calculate_drop_path_rates(drop_path_rate, depth)
        predictor_kwargs = dict(reduce_n_factor=reduce_n_factor, reduce_c_factor=reduce_c_factor,
                                share_inout_proj=share_inout_proj, basis_threshold=basis_threshold,
                                coef_topk=coef_topk, coef_threshold=coef_threshold,
                                connectivity=connectivity, score_threshold=score_threshold,
                                prune_query_rows=prune_query_rows)
        with factory_context(device, dtype):
            self.patch_embed = (PatchEmbed if stem == "patch" else ConvStem)(
                in_chans, embed_dim, patch_size)
            self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
            self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, embed_dim))
            self.pos_drop = nn.Dropout(drop_rate)
            self.blocks = nn.ModuleList([
                Block(embed_dim, num_heads, num_tokens, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                      drop=drop_rate, drop_path=dpr[i], norm_eps=norm_eps, skip_lam=skip_lam,
                      attn_keep_rate=keep_rates[i],
                      token_keep_rate=token_keep_rates[i] if i in pruning else None,
                      **predictor_kwargs)
                for i in range(depth)])
            self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
            self.pre_logits = nn.Identity()
            if representation_size:
                self.pre_logits = nn.Sequential()
                self.pre_logits.add_module("fc", nn.Linear(embed_dim, representation_size))
                self.pre_logits.add_module("act", nn.Tanh())
                self.head_hidden_size = self.num_features = representation_size
            self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
            self.aux_head = None
            if aux_head:
                self.aux_head = nn.Linear(embed_dim, num_classes) if num_classes else nn.Identity()
        self.feature_info = [dict(num_chs=embed_dim, reduction=patch_size, module=f"blocks.{i}")
                             for i in range(depth)]
        if self.pos_embed.device.type != "meta":
            self.init_weights()

    # ----------------------------------------------------------------------------------------
    # timm's model API

    def init_weights(self):
        trunc_normal_(self.pos_embed, std=.02)
        trunc_normal_(self.cls_token, std=.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for block in self.blocks:  # re-drawn after the Linear pass above, as the official init
            predictor = block.attn.mask_predictor
            trunc_normal_(predictor.proj_n, std=.02)
            if predictor.proj_back_n is not predictor.proj_n:
                trunc_normal_(predictor.proj_back_n, std=.02)

    @torch.jit.ignore
    def no_weight_decay(self):
        return {"pos_embed", "cls_token"}

    @torch.jit.ignore
    def group_matcher(self, coarse=False):
        return dict(stem=r"^cls_token|^pos_embed|^patch_embed",
                    blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable=True):
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self):
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        if global_pool is not None:
            if global_pool not in ("token", "avg", ""):
                raise ValueError(f"global_pool must be 'token', 'avg' or '', got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        ref = self.cls_token
        with factory_context(ref.device, ref.dtype):
            self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
            if self.aux_head is not None:
                self.aux_head = nn.Linear(self.embed_dim, num_classes) if num_classes \
                    else nn.Identity()

    def _embed(self, x):
        x = check_image_input(x, self.in_chans, type(self).__name__)
        x = _check_resolution(x, self.img_size, type(self).__name__)
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.pos_drop(x + self.pos_embed)

    def _kept_counts(self):
        """Patch tokens alive before each block (None: no pruning yet); static given the config."""
        counts, kept = [], None
        for block in self.blocks:
            counts.append(kept)
            if block.prunes_tokens:
                kept = block.attn.token_budget
        return counts

    def _run_blocks(self, x, trace=None, reconstruct=False, need_attn=False, stop=None):
        keep, kept_counts, taken = None, self._kept_counts(), []
        blocks = self.blocks if stop is None else self.blocks[:stop + 1]
        for i, block in enumerate(blocks):
            if self.grad_checkpointing and trace is None and not torch.jit.is_scripting():
                x, keep = timm_checkpoint(block, x, keep, kept_counts[i])
            else:
                x, keep = block(x, keep, kept_counts[i], trace, reconstruct, need_attn)
            taken.append(x)
        return x, taken

    def forward_features(self, x):
        """Final-norm tokens ``(B, N, C)``, class token first."""
        x, _ = self._run_blocks(self._embed(x))
        return self.norm(x)

    def forward_head(self, x, pre_logits: bool = False):
        """Class token (``global_pool='token'``), mean patch token (``'avg'``) or every token
        (``''``) -> pre-logits -> head; with LV-ViT's auxiliary head (pooled models) plus half
        the per-class maximum of its token logits. The official code drops that term in training
        mode (its recipe trains the auxiliary head through the token-distillation loss); here the
        function is the same in both modes, so a plain classification loss trains both heads, and
        ``forward_trace`` gives the official training-mode logits as ``cls_logits``."""
        if self.global_pool == "token":
            pooled = x[:, 0]
        elif self.global_pool == "avg":
            pooled = x[:, self.num_prefix_tokens:].mean(dim=1)
        else:
            pooled = x
        pooled = self.pre_logits(pooled)
        if pre_logits:
            return pooled
        logits = self.head(pooled)
        if self.aux_head is not None and self.global_pool and self.num_classes:
            logits = logits + 0.5 * self.aux_head(x[:, 1:]).max(dim=1).values
        return logits

    def forward(self, x):
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x, indices=None, return_prefix_tokens=False, norm=False,
                              stop_early=False, output_fmt="NCHW", intermediates_only=False):
        """Block outputs as timm's ViTs give them: ``(B, C, H/16, W/16)`` maps (``NCHW``) or token
        rows (``NLC``); pruned tokens are zero in them."""
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        x, taken = self._run_blocks(self._embed(x), stop=max_index if stop_early else None)
        intermediates = []
        for i in take_indices:
            y = self.norm(taken[i]) if norm else taken[i]
            prefix, y = y[:, :1], y[:, 1:]
            if output_fmt == "NCHW":
                y = y.reshape(y.shape[0], *self.grid_size, y.shape[-1]).permute(0, 3, 1, 2)
                y = y.contiguous()
            intermediates.append((y, prefix) if return_prefix_tokens else y)
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(self, indices=1, prune_norm=False, prune_head=True):
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]
        self.feature_info = self.feature_info[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0)
        return take_indices

    # ----------------------------------------------------------------------------------------
    # what the predictor learned, and what the training losses read

    @torch.jit.ignore
    def forward_trace(self, x, reconstruct: bool = False, need_attn: bool = False):
        """Logits plus every block's approximate attention, attention mask and token mask.

        ``reconstruct=True``: the phase-1 forward of the official recipe (dense attention, no
        token pruning, the signed basis with every coefficient, gradients into the predictor);
        ``need_attn=True``: also each block's dense softmax attention (a teacher's targets).
        Otherwise the ordinary sparse forward. Used by the Sparsifiner losses and
        ``tools/sparsifiner_masks.py``; see :class:`SparsifinerTrace`."""
        trace = []
        x, _ = self._run_blocks(self._embed(x), trace, reconstruct, need_attn)
        tokens = self.norm(x)
        logits = self.forward_head(tokens)
        cls_logits = logits if self.aux_head is None else self.head(self.pre_logits(tokens[:, 0]))
        features = tokens[:, 1:] if self.aux_head is None else self.aux_head(tokens[:, 1:])
        return SparsifinerTrace(logits, cls_logits, tokens, features, trace)

    def attention_budget(self):
        """Per block: (keys per patch query, patch tokens alive before it); what the MAC count
        of the sparse attention depends on."""
        return [(b.attn.mask_predictor.budget(kept), kept)
                for b, kept in zip(self.blocks, self._kept_counts())]


def attention_maps(model, x):
    """(logits, final-norm tokens, per-block dense softmax attention ``(B, heads, N, N)``) of a
    dense teacher: a zoo Sparsifiner (its dense attention) or a timm ``VisionTransformer`` (its
    blocks' unfused attention path for this call, whose ``attn_drop`` sees the probabilities: the
    maps cost no extra matmul)."""
    if isinstance(model, Sparsifiner):
        trace = model.forward_trace(x, reconstruct=True, need_attn=True)
        return trace.logits, trace.features, [t.attn for t in trace.layers]
    blocks = getattr(model, "blocks", None)
    if blocks is None or not all(hasattr(getattr(b, "attn", None), "fused_attn")
                                 and hasattr(b.attn, "attn_drop") for b in blocks):
        raise TypeError(f"{type(model).__name__} is not a timm ViT whose blocks' attention has "
                        "fused_attn / attn_drop: it cannot be the dense attention teacher of a "
                        "Sparsifiner")
    maps, handles, fused = [], [], [b.attn.fused_attn for b in blocks]
    for block in blocks:
        block.attn.fused_attn = False
        handles.append(block.attn.attn_drop.register_forward_hook(
            lambda _module, _args, probs: maps.append(probs)))
    try:
        tokens = model.forward_features(x)
        logits = model.forward_head(tokens)
    finally:
        for h, block, was_fused in zip(handles, blocks, fused):
            h.remove()
            block.attn.fused_attn = was_fused
    return logits, tokens[:, model.num_prefix_tokens:], maps


def mac_breakdown(model, gmacs=None):
    """Per-image GMACs of the attention, as the paper counts "FLOPs of MHSA" (the attention
    matrix: ``q k^T`` and ``attn v``; the qkv / output projections are outside it):

    * ``mhsa_dense``: dense attention, ``2 h N^2 d`` per block;
    * ``mhsa_sparse``: the kept (query, key) pairs, ``2 h d (N + (N - 1) b)`` with ``b`` keys per
      patch query and the class row dense;
    * ``predictor``: the connectivity predictor as computed (``q_c``, ``k_c`` projections, the
      low-rank products and the dense ``coef @ basis``);
    * with ``gmacs`` (fvcore's whole-model count, which counts the masked attention densely):
      ``model_at_budget``, the whole model with the attention at its budget.
    """
    dense = sparse = predictor = 0
    n = model.pos_embed.shape[1]
    for block, (budget, _) in zip(model.blocks, model.attention_budget()):
        attn, pred = block.attn, block.attn.mask_predictor
        h, d, c, k = attn.num_heads, attn.head_dim, pred.reduced_c, pred.reduced_n
        shape = (1, h, n, d)
        dense += ops.masked_attention_macs(shape, shape, shape)
        sparse += ops.masked_attention_macs(shape, shape, shape, keys_per_query=budget,
                                            dense_rows=1)
        predictor += h * ((2 * n - 1) * d * c + n * c * k + (n - 1) * c * k + (n - 1) * k * n)
    out = dict(mhsa_dense=dense / 1e9, mhsa_sparse=sparse / 1e9, predictor=predictor / 1e9)
    if gmacs is not None:
        out["model_at_budget"] = gmacs - out["mhsa_dense"] + out["mhsa_sparse"]
    return out


# ---------------------------------------------------------------------------------------------
# Checkpoints and the official constructors

def checkpoint_filter_fn(state_dict, model):
    """Official Sparsifiner training checkpoints (``{'model', 'model_ema', 'args', ...}``; the EMA
    weights are taken first), the dense DeiT / LV-ViT checkpoints training starts from (no
    ``mask_predictor`` keys: the predictor keeps its initialisation, with a warning) and zoo
    checkpoints, to this model's keys. A linear patch-embedding weight is reshaped to the conv."""
    import warnings
    sd = unwrap_checkpoint(state_dict)
    out = {}
    for k, v in sd.items():
        if k == "patch_embed.proj.weight" and v.dim() < 4:
            v = v.reshape(model.patch_embed.proj.weight.shape)
        if k in ("dist_token", "head_dist.weight", "head_dist.bias"):
            continue  # DeiT distilled checkpoints: no distillation token here
        out[k] = v
    own = model.state_dict()
    predictor = [k for k in own if ".mask_predictor." in k]
    if predictor and not any(k in out for k in predictor):
        warnings.warn(
            f"the checkpoint is a dense backbone without the connectivity predictor: its "
            f"{len(predictor)} mask_predictor tensors keep their initialisation. Train them "
            "(phase 1 of configs/imagenet/sparsifiner_*.py) before relying on the sparse "
            "attention", stacklevel=2)
        out.update({k: own[k] for k in predictor})
    if "pos_embed" in out and out["pos_embed"].shape != own["pos_embed"].shape:
        raise ValueError(
            f"pos_embed {tuple(out['pos_embed'].shape)} does not fit this model's "
            f"{tuple(own['pos_embed'].shape)}: Sparsifiner's predictor is sized for one token "
            "count, build the model at the checkpoint's img_size")
    return out


OFFICIAL_CLASSES = ("src/models/sparsifiner.py:Sparsifiner",
                    "src/models/sparsifiner_lvvit.py:SparsifinerLVViT")
_COMMON_KWARGS = {"img_size", "patch_size", "in_chans", "num_classes", "embed_dim", "depth",
                  "num_heads", "mlp_ratio", "qkv_bias", "qk_scale", "representation_size",
                  "drop_rate", "attn_drop_rate", "drop_path_rate", "hybrid_backbone",
                  "norm_layer", "distill", "attn_keep_rate_list", "reduce_n_factor",
                  "reduce_c_factor", "share_inout_proj", "cfg"}
_OFFICIAL_KWARGS = {
    "Sparsifiner": _COMMON_KWARGS | {"token_keep_rate_list", "token_pruning_loc_indicator"},
    "SparsifinerLVViT": _COMMON_KWARGS | {"drop_path_decay", "p_emb", "skip_lam", "order",
                                          "mix_token", "return_dense"},
}


def _predictor_kwargs_from_cfg(cfg):
    """The official yacs config's fields the forward reads -> predictor kwargs."""
    spar = dict((cfg or {}).get("SPAR", {}))
    loss = dict((cfg or {}).get("LOSS", {}))
    if loss.get("USE_ATTN_RECON"):
        raise ValueError("cfg LOSS.USE_ATTN_RECON=True is the phase-1 training switch: use "
                         "model.forward_trace(x, reconstruct=True) instead")
    coef = dict(spar.get("BASIS_COEF", {}))
    score = dict(spar.get("ATTN_SCORE", {}))
    use_topk_score = score.get("USE_TOPK", True)
    if not use_topk_score and not score.get("THRESHOLD", 1e-4) > 0:
        raise ValueError("cfg ATTN_SCORE: USE_TOPK=False needs THRESHOLD > 0 (the official code "
                         "raises NotImplementedError)")
    return dict(basis_threshold=spar.get("BASIS_THRESHOLD", 0.02),
                coef_topk=coef.get("TOPK", 8) if coef.get("USE_TOPK", True) else None,
                coef_threshold=coef.get("THRESHOLD", 0.05),
                connectivity="topk" if use_topk_score else "threshold",
                score_threshold=score.get("THRESHOLD", 1e-4),
                prune_query_rows=bool(spar.get("PRUNE_ATTN_MATRIX_ROW", False)))


def create_from_official(kwargs, official_class=None):
    """The zoo model the official constructor builds from ``kwargs`` (``cfg`` as a plain dict of
    the yacs fields the forward reads: ``SPAR.*``, ``LOSS.USE_ATTN_RECON``).

    ``official_class``: ``src/models/sparsifiner.py:Sparsifiner`` (default, DeiT backbone) or
    ``src/models/sparsifiner_lvvit.py:SparsifinerLVViT``. Arguments the official classes accept
    but never use (``distill``, ``mix_token``) are accepted and ignored; ones that change nothing
    at their defaults are checked to be at them.
    """
    name = (official_class or "Sparsifiner").split(":")[-1].strip()
    if name not in _OFFICIAL_KWARGS:
        raise ValueError(f"unknown official Sparsifiner class {official_class!r}; expected one of "
                         f"{OFFICIAL_CLASSES}")
    kw = dict(kwargs)
    unknown = set(kw) - _OFFICIAL_KWARGS[name]
    if unknown:
        raise TypeError(f"{name} takes no argument(s) {sorted(unknown)}")
    for arg, default in (("hybrid_backbone", None), ("norm_layer", None), ("qk_scale", None),
                         ("order", None), ("drop_path_decay", "linear")):
        if kw.get(arg, default) != default:
            raise ValueError(f"{name}({arg}={kw[arg]!r}) is not supported (only the default)")
    depth = kw.get("depth", 12)
    lvvit = name == "SparsifinerLVViT"
    if lvvit and kw.get("p_emb", "4_2") != "4_2":
        raise ValueError("only p_emb='4_2' (the LV-ViT stem every released LV-ViT uses)")
    if lvvit and not kw.get("return_dense", False):
        raise ValueError("SparsifinerLVViT's forward always reads aux_head: return_dense=True")
    if kw.get("attn_keep_rate_list") is None:
        raise ValueError(f"{name} needs attn_keep_rate_list (one rate per block)")
    pruning = ()
    if not lvvit:
        if kw.get("token_keep_rate_list") is None or kw.get("token_pruning_loc_indicator") is None:
            raise ValueError("Sparsifiner needs token_keep_rate_list and "
                             "token_pruning_loc_indicator (one per block)")
        pruning = tuple(i for i, on in enumerate(kw["token_pruning_loc_indicator"]) if on)
    return Sparsifiner(
        img_size=kw.get("img_size", 224), patch_size=kw.get("patch_size", 16),
        in_chans=kw.get("in_chans", 3), num_classes=kw.get("num_classes", 1000),
        embed_dim=kw.get("embed_dim", 768), depth=depth, num_heads=kw.get("num_heads", 12),
        mlp_ratio=kw.get("mlp_ratio", 4.0), qkv_bias=kw.get("qkv_bias", not lvvit),
        representation_size=kw.get("representation_size"), drop_rate=kw.get("drop_rate", 0.0),
        attn_drop_rate=kw.get("attn_drop_rate", 0.0),
        drop_path_rate=kw.get("drop_path_rate", 0.0),
        stem="conv4_2" if lvvit else "patch", norm_eps=1e-5 if lvvit else 1e-6,
        skip_lam=kw.get("skip_lam", 1.0) if lvvit else 1.0, aux_head=lvvit,
        attn_keep_rate=list(kw["attn_keep_rate_list"]),
        token_keep_rates=None if lvvit else list(kw["token_keep_rate_list"]),
        token_pruning_layers=pruning,
        reduce_n_factor=kw.get("reduce_n_factor", 8), reduce_c_factor=kw.get("reduce_c_factor", 2),
        share_inout_proj=kw.get("share_inout_proj", False),
        **_predictor_kwargs_from_cfg(kw.get("cfg")))


# ---------------------------------------------------------------------------------------------
# Pretrained configs and entrypoints

def _cfg(url="", **kwargs):
    # The official evaluation (DeiT's): resize 256 (bicubic), centre crop 224, ImageNet mean / std.
    return {
        "url": url,
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": None,
        "crop_pct": 0.875, "interpolation": "bicubic", "fixed_input_size": True,
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj", "classifier": "head",
        "license": "mit",
        "origin_url": "https://github.com/lim142857/Sparsifiner",
        "paper_ids": "arXiv:2303.13755",
        "paper_name": "Sparsifiner: Learning Sparse Instance-Dependent Attention for Efficient "
                      "Vision Transformers",
        **kwargs,
    }


_NO_RELEASE = ("No Sparsifiner weights were ever released (the official README lists only the "
               "dense checkpoints training starts from): train one with "
               "configs/imagenet/sparsifiner_*.py, then load it with "
               "pretrained_cfg_overlay=dict(file=...). The dense starting point is the "
               "'dense_init_in1k' tag.")
_DENSE_INIT = ("The dense {name} checkpoint the paper's training starts from (official README), "
               "with the connectivity predictor at its random initialisation: the sparse "
               "attention is untrained until phase 1 of the recipe has run.")
_LVVIT_CFG = dict(first_conv="patch_embed.conv1", classifier=("head", "aux_head"))
_LVVIT_LICENSE = "apache-2.0 (LV-ViT weights); mit (Sparsifiner code)"

default_cfgs = generate_default_cfgs({
    "sparsifiner_deit_small_224.in1k": _cfg(notes=(_NO_RELEASE,)),
    "sparsifiner_deit_small_224.dense_init_in1k": _cfg(
        url="https://dl.fbaipublicfiles.com/deit/deit_small_patch16_224-cd65a155.pth",
        license="apache-2.0 (DeiT weights); mit (Sparsifiner code)",
        notes=(_DENSE_INIT.format(name="DeiT-S"),)),
    "sparsifiner_deit_base_224.in1k": _cfg(notes=(
        _NO_RELEASE, "Architecture inferred: the official main.py cannot build Sparsifiner on "
        "DeiT-B; embed_dim 768 / 12 heads with the DeiT-S settings otherwise.")),
    "sparsifiner_deit_base_224.dense_init_in1k": _cfg(
        url="https://dl.fbaipublicfiles.com/deit/deit_base_patch16_224-b5f2ef4d.pth",
        license="apache-2.0 (DeiT weights); mit (Sparsifiner code)",
        notes=(_DENSE_INIT.format(name="DeiT-B"),)),
    "sparsifiner_lvvit_small_224.in1k": _cfg(notes=(_NO_RELEASE,), crop_pct=0.9, **_LVVIT_CFG),
    "sparsifiner_lvvit_small_224.dense_init_in1k": _cfg(
        url="https://github.com/zihangJiang/TokenLabeling/releases/download/1.0/"
            "lvvit_s-26M-224-83.3.pth.tar",
        crop_pct=0.9, license=_LVVIT_LICENSE, notes=(_DENSE_INIT.format(name="LV-ViT-S"),),
        **_LVVIT_CFG),
    "sparsifiner_lvvit_medium_224.in1k": _cfg(notes=(
        _NO_RELEASE, "Architecture inferred: the official main.py cannot build Sparsifiner on "
        "LV-ViT-M; LV-ViT-M's embed_dim 512 / depth 20 / 8 heads with the LV-ViT-S settings "
        "otherwise."), crop_pct=1.0, **_LVVIT_CFG),
    "sparsifiner_lvvit_medium_224.dense_init_in1k": _cfg(
        url="https://github.com/zihangJiang/TokenLabeling/releases/download/1.0/"
            "lvvit_m-56M-224-84.0.pth.tar",
        crop_pct=1.0, license=_LVVIT_LICENSE, notes=(_DENSE_INIT.format(name="LV-ViT-M"),),
        **_LVVIT_CFG),
})

# What src/main.py passes (the default experiment: 25 % keys, no token pruning) and the default
# yaml config's fields the forward reads, for timing the authors' model beside ours.
_OFFICIAL_MAIN_KWARGS = {
    "sparsifiner_deit_small_224": dict(
        patch_size=16, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4, qkv_bias=True,
        distill=True, attn_keep_rate_list=[0.25] * 12, token_keep_rate_list=[1.0] * 12,
        token_pruning_loc_indicator=[False] * 12, reduce_n_factor=6, reduce_c_factor=2,
        share_inout_proj=False),
    "sparsifiner_lvvit_small_224": dict(
        patch_size=16, embed_dim=384, depth=16, num_heads=6, mlp_ratio=3, p_emb="4_2",
        skip_lam=2.0, return_dense=True, mix_token=True, distill=True,
        attn_keep_rate_list=[0.25] * 16, reduce_n_factor=6, reduce_c_factor=2,
        share_inout_proj=False),
}
_OFFICIAL_DEFAULT_CFG = {
    "SPAR": {"BASIS_THRESHOLD": 0.02, "BASIS_COEF": {"USE_TOPK": True, "TOPK": 8, "THRESHOLD": 0.05},
             "ATTN_SCORE": {"USE_TOPK": True, "THRESHOLD": 1e-4}, "PRUNE_ATTN_MATRIX_ROW": False,
             "OUT_BASIS_SPARSITY": True, "OUT_BASIS_COEF_SPARSITY": True,
             "OUT_ATTN_MASK_SPARSITY": True},
    "LOSS": {"USE_ATTN_RECON": False},
}


def build_official(module, entry, name):
    """The authors' model of zoo model ``name``, as their ``src/main.py`` builds it (a yacs-like
    config object, the hard-coded kwargs), with its forward returning the logits instead of its
    output dict (timing and output comparisons only)."""
    from types import SimpleNamespace

    def namespace(d):
        return SimpleNamespace(**{k: namespace(v) if isinstance(v, dict) else v
                                  for k, v in d.items()})

    if name not in _OFFICIAL_MAIN_KWARGS:
        raise ValueError(f"the official code builds no {name} (src/main.py hard-codes "
                         f"{sorted(_OFFICIAL_MAIN_KWARGS)})")
    model = getattr(module, entry)(cfg=namespace(_OFFICIAL_DEFAULT_CFG),
                                   **_OFFICIAL_MAIN_KWARGS[name])
    forward = model.forward
    model.forward = lambda x: forward(x)["x"]
    return model


_PARAMS = {
    "sparsifiner_deit_small_224": 22_251_880,
    "sparsifiner_deit_base_224": 86_768_872,
    "sparsifiner_lvvit_small_224": 26_420_112,
    "sparsifiner_lvvit_medium_224": 56_165_904,
}

FAMILY = register_family(Family(
    name="sparsifiner",
    model_cls=Sparsifiner,
    checkpoint_filter_fn=checkpoint_filter_fn,
    create_from_official=create_from_official,
    official_repo="lim142857/Sparsifiner",
    official_classes=OFFICIAL_CLASSES,
    param_counts=_PARAMS,
    tag_param_counts={f"{name}.dense_init_in1k": n for name, n in _PARAMS.items()},
    # the official entrypoints are main.py's hard-coded constructions (DeiT-S, LV-ViT-S only)
    official_builder=build_official,
    official_entrypoints={
        "sparsifiner_deit_small_224": "src/models/sparsifiner.py:Sparsifiner",
        "sparsifiner_lvvit_small_224": "src/models/sparsifiner_lvvit.py:SparsifinerLVViT",
    },
    # The paper's per-variant table could not be re-read here (spec §1); the dense starting
    # points' top-1 are in the model card, not claimed as Sparsifiner results.
    paper_results={},
    any_input_size=False,
    mac_breakdown=mac_breakdown,
    no_grad_params=("blocks.*.attn.mask_predictor.*",),
    no_grad_reason=("the connectivity predictor only chooses which keys each query attends (a "
                    "top-k, no gradient); it learns by reconstructing a dense teacher's attention "
                    "(forward_trace(reconstruct=True), phase 1 of the recipe), as in the paper"),
    torchscript=("the attention calls ops.masked_attention, whose keyword-only arguments and "
                 "backend dispatch TorchScript cannot compile; torch.export is the supported "
                 "path"),
    query_attention=sparsifiner_query_attention,
))


def _create(variant, pretrained=False, **kwargs):
    # timm makes the first tag with weights the default, here the dense starting point. Loading it
    # for a bare pretrained=True would hand out a Sparsifiner with an untrained predictor: that
    # takes naming the tag.
    if pretrained and not kwargs.get("pretrained_cfg") \
            and not (kwargs.get("pretrained_cfg_overlay") or {}).get("file"):
        raise PretrainedWeightsError(
            f"no trained {variant} weights exist. {_NO_RELEASE} Name it to load it: "
            f"timm.create_model('{variant}.dense_init_in1k', pretrained=True)")
    depth = kwargs.get("depth", 12)
    model = build_zoo_model(Sparsifiner, variant, pretrained, num_stages=depth,
                            pretrained_filter_fn=checkpoint_filter_fn, **kwargs)
    # the only size the model takes: the data config (resolve_data_config) must say so
    target = getattr(model, "model", model)  # features_only wraps the model
    if hasattr(target, "img_size") and hasattr(model, "pretrained_cfg"):
        size = (target.in_chans, *target.img_size)
        if tuple(model.pretrained_cfg.get("input_size", ())) != size:
            model.pretrained_cfg = model.default_cfg = dict(model.pretrained_cfg, input_size=size)
    return model


_LVVIT = dict(stem="conv4_2", norm_eps=1e-5, skip_lam=2.0, aux_head=True, qkv_bias=False,
              mlp_ratio=3.0)


@register_zoo_model
def sparsifiner_deit_small_224(pretrained=False, **kwargs) -> Sparsifiner:
    """Sparsifiner on DeiT-S (official ``--model sparsifiner``), 25 % keys per query, 22.3M
    params."""
    model_args = dict(embed_dim=384, depth=12, num_heads=6)
    return _create("sparsifiner_deit_small_224", pretrained, **dict(model_args, **kwargs))


@register_zoo_model
def sparsifiner_deit_base_224(pretrained=False, **kwargs) -> Sparsifiner:
    """Sparsifiner on DeiT-B (architecture inferred: no official construction), 86.8M params."""
    model_args = dict(embed_dim=768, depth=12, num_heads=12)
    return _create("sparsifiner_deit_base_224", pretrained, **dict(model_args, **kwargs))


@register_zoo_model
def sparsifiner_lvvit_small_224(pretrained=False, **kwargs) -> Sparsifiner:
    """Sparsifiner on LV-ViT-S (official ``--model sparsifiner_lvvit``), 26.4M params."""
    model_args = dict(embed_dim=384, depth=16, num_heads=6, **_LVVIT)
    return _create("sparsifiner_lvvit_small_224", pretrained, **dict(model_args, **kwargs))


@register_zoo_model
def sparsifiner_lvvit_medium_224(pretrained=False, **kwargs) -> Sparsifiner:
    """Sparsifiner on LV-ViT-M (architecture inferred: no official construction), 56.2M
    params."""
    model_args = dict(embed_dim=512, depth=20, num_heads=8, **_LVVIT)
    return _create("sparsifiner_lvvit_medium_224", pretrained, **dict(model_args, **kwargs))

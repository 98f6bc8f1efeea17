"""Forward and forward+backward time of the attention ops at the zoo's layer shapes, per backend.

    zoo-benchmark-ops                          # every pattern; CUDA, bf16, B=128
    zoo-benchmark-ops --patterns 'cswin_t_*' --dtype bf16 fp16 fp32 --csv ops.csv
    zoo-benchmark-ops --backends triton flex   # leave out the reference / NATTEN columns
    TRITON_INTERPRET=1 zoo-benchmark-ops --device cpu      # tiny, correctness only

(``python tools/benchmark_ops.py`` is the same command.)

Every pattern (``PATTERNS``) is one op call of a real layer at 224x224 input: window attention
(CSWin, Swin, full), BiFormer's routed attention (``ops.routed_attention_2d``, with a fixed seeded
routing), HaloNet's halo attention (``ops.halo_attention_2d``), neighborhood attention
(``ops.neighborhood_attention_2d``, plain and dilated), Sparsifiner's masked attention
(``ops.masked_attention``, fixed seeded top-k mask) and DependencyViT's reversed attention
(``ops.reversed_attention``). Per (pattern, dtype) the tool times ``ops.*`` on its Triton and
reference backends and on the baselines that exist here: FlexAttention (CUDA, compiled, with a
block mask of the same pattern; window, routed, neighborhood and masked only) and NATTEN (if
importable; window and neighborhood only). For window, routed and masked patterns the reference
backend *is* ``F.scaled_dot_product_attention`` on gathered windows / regions / with the mask, so
no separate SDPA row is printed.

Columns: median ms of a forward (under ``torch.no_grad``) and of forward+backward
(``torch.autograd.grad`` with a random dO); achieved GB/s on the op's compulsory traffic
(forward: Q, K, V read, O written, fp32 LSE written; backward: Q, K, V, O, dO, LSE, delta read,
dQ, dK, dV written; forward+backward: the sum; for halo, Q and O on the strided query grid and
K, V on the full one), also as a fraction of the GPU's HBM bandwidth;
and the max abs difference of output and gradients against the reference run in fp32 on the same
input values (for fp32 inputs: the reference itself). Useful TFLOP/s are in the CSV.

On the CPU the shapes are shrunk (``--tiny``, automatic there) because the Triton column runs in
Triton's interpreter, 100-1000x slower than anything real: CPU timings are not performance numbers.
"""
import argparse
import dataclasses
import difflib
import fnmatch
import importlib.util
import math
import statistics
import sys
import time
import warnings

import torch
from tqdm import tqdm

import ops
from . import report

PROG = "zoo-benchmark-ops"
CPU_CAVEAT = ("CPU: timings are not performance numbers; the Triton column runs in the interpreter "
              "(correctness only)")

# Peak HBM bandwidth in TB/s, keyed by substrings that must all appear (case-insensitively) in
# torch.cuda.get_device_name(); the first match wins. "NVIDIA H100 80GB HBM3" is the SXM5 part.
PEAK_HBM_TBPS = [
    (("H200",), 4.8),
    (("H100", "PCIE"), 2.0),
    (("H100", "HBM3"), 3.35),
    (("H100", "SXM"), 3.35),
    (("A100", "80GB"), 2.0),
    (("A100", "40GB"), 1.55),
]


# ----------------------------------------------------------------------------- pattern table

@dataclasses.dataclass(frozen=True)
class Pattern:
    """One attention call of one real layer (224x224 input).

    ``args`` are the op's geometry:

    * ``op="window"``: ``window`` = ``(wh, ww)``, where ``"H"`` / ``"W"`` stand for the grid's
      extent (CSWin stripes), or None for the whole grid.
    * ``op="routed"`` (BiFormer): ``region`` = ``(rh, rw)`` tokens per region, ``topk`` routed
      regions per query region, ``qk_dim`` = the layer's full q/k width (BiFormer's scale is
      ``qk_dim ** -0.5``, not the head dim's).
    * ``op="halo"`` (HaloNet): ``block``, ``halo``, ``stride`` (timm's ``block_size``,
      ``halo_size``, ``block_stride``) and ``rel_pos`` (timm's shared height/width tables or none).
      ``grid`` is the key/value grid; queries live on it sub-sampled by ``stride``.
    * ``op="neighborhood"`` (NATTEN's na2d): ``kernel`` and ``dilation``.
    * ``op="masked"`` (Sparsifiner): ``cls_tokens`` dense rows before the grid's tokens, ``topk``
      kept keys per patch row.
    * ``op="reversed"`` (DependencyViT): none.
    """
    name: str
    op: str
    grid: tuple
    heads: int
    head_dim: int
    args: dict
    layer: str


PATTERNS = [
    # name               op        grid      heads d   args                        layer
    Pattern("cswin_t_s1_v", "window", (56, 56), 1, 32, dict(window=("H", 1)),
            "CSWin-T stage 1, (H, sw) branch: C=64, 2 heads, 1 per branch"),
    Pattern("cswin_t_s1_h", "window", (56, 56), 1, 32, dict(window=(1, "W")),
            "CSWin-T stage 1, (sw, W) branch"),
    Pattern("cswin_t_s2_v", "window", (28, 28), 2, 32, dict(window=("H", 2)),
            "CSWin-T stage 2, (H, sw) branch: C=128, 4 heads, 2 per branch"),
    Pattern("cswin_t_s2_h", "window", (28, 28), 2, 32, dict(window=(2, "W")),
            "CSWin-T stage 2, (sw, W) branch"),
    Pattern("cswin_t_s3_v", "window", (14, 14), 4, 32, dict(window=("H", 7)),
            "CSWin-T stage 3, (H, sw) branch: C=256, 8 heads, 4 per branch"),
    Pattern("cswin_t_s3_h", "window", (14, 14), 4, 32, dict(window=(7, "W")),
            "CSWin-T stage 3, (sw, W) branch"),
    Pattern("cswin_t_s4_full", "window", (7, 7), 16, 32, dict(window=None),
            "CSWin-T stage 4, full attention: C=512, 16 heads"),
    Pattern("swin_w7_56", "window", (56, 56), 3, 32, dict(window=(7, 7)),
            "Swin-T stage 1 style 7x7 windows: C=96, 3 heads"),
    Pattern("full_14", "window", (14, 14), 6, 64, dict(window=None),
            "full attention over a 14x14 grid, DeiT-S heads: C=384, 6 heads"),
    # BiFormer-S at 224 (biformer.md): n_win=7 regions per side, head_dim 32, qk_dim = C.
    Pattern("biformer_s_s1", "routed", (56, 56), 2, 32, dict(region=(8, 8), topk=1, qk_dim=64),
            "BiFormer-S stage 1 BRA: C=64, 2 heads, 7x7 regions of 8x8 tokens, top-1"),
    Pattern("biformer_s_s3", "routed", (14, 14), 8, 32, dict(region=(2, 2), topk=16, qk_dim=256),
            "BiFormer-S stage 3 BRA: C=256, 8 heads, 7x7 regions of 2x2 tokens, top-16"),
    # HaloNet-H1 (timm halonet_h1 = paper H1, halonet.md): b8 h3, 8 heads, d = mid / 8.
    Pattern("halonet_h1_s1", "halo", (56, 56), 8, 8,
            dict(block=8, halo=3, stride=1, rel_pos=True),
            "HaloNet-H1 stage 1: C=64, 8 heads, block 8, halo 3 (win 14), rel-pos tables"),
    Pattern("halonet_h1_s1_norel", "halo", (56, 56), 8, 8,
            dict(block=8, halo=3, stride=1, rel_pos=False),
            "HaloNet-H1 stage 1 geometry without the rel-pos logits (attention core only)"),
    Pattern("halonet_h1_s2_down", "halo", (56, 56), 8, 16,
            dict(block=8, halo=3, stride=2, rel_pos=True),
            "HaloNet-H1 stage 2 first block, strided queries: C=128, 8 heads, k/v 56x56, "
            "q 28x28 (4x4 query blocks), block 8, halo 3, rel-pos tables"),
    # Neighborhood attention (NATTEN semantics; spec ops.md §5.3 "7x7 NA, 56x56, C=96").
    Pattern("na_7x7_56", "neighborhood", (56, 56), 3, 32, dict(kernel=7, dilation=1),
            "7x7 neighborhood attention, 56x56, C=96, 3 heads (NAT-T stage 1)"),
    Pattern("na_7x7_d2_56", "neighborhood", (56, 56), 3, 32, dict(kernel=7, dilation=2),
            "7x7 dilated (d=2) neighborhood attention, 56x56, C=96, 3 heads (DiNAT-T stage 1)"),
    # Sparsifiner DeiT-S (spec §5.3 "k=40 of 197"): 1 cls + 14x14 patches, cls row dense.
    Pattern("sparsifiner_s_k40", "masked", (14, 14), 6, 64, dict(cls_tokens=1, topk=40),
            "Sparsifiner DeiT-S: C=384, 6 heads, N=197, cls row dense, top-40 keys per patch row"),
    # DependencyViT-S (spec §5.3 "dense, N=196"): 14x14 tokens, no cls token.
    Pattern("dependencyvit_s", "reversed", (14, 14), 6, 64, dict(),
            "DependencyViT-S reversed attention: C=384, 6 heads, N=196, per-(head, token) "
            "weights"),
]


def resolve_patterns(names):
    """Rows of PATTERNS for names and fnmatch wildcards, in table order; unknown names exit."""
    known = [p.name for p in PATTERNS]
    if not names:
        return list(PATTERNS)
    wanted = set()
    for name in names:
        found = fnmatch.filter(known, name)
        if not found:
            close = difflib.get_close_matches(name, known, n=3)
            raise SystemExit(f"{PROG}: error: unknown pattern {name!r}"
                             + (f"; did you mean {', '.join(close)}?" if close else "")
                             + f" (known patterns: {', '.join(known)})")
        wanted.update(found)
    return [p for p in PATTERNS if p.name in wanted]


def tiny_grid_side(n):
    """Grid side in --tiny mode: about a quarter, but at least 8 (or the whole side if smaller),
    so that stripes, windows and CSWin's zero-padded windows keep their character."""
    return max(math.ceil(n / 4), min(n, 8))


def tiny_tile_count(n, at_least=1):
    """Regions / blocks per side in --tiny mode: about a quarter of ``n``, at least ``at_least``
    (never more than ``n``); the tile size itself is kept, so grids stay divisible by it."""
    return min(n, max(math.ceil(n / 4), at_least))


# ----------------------------------------------------------------------------- ops

FLEX_CPU_NOTE = ("FlexAttention skipped on the CPU: it has no backward there and eager mode "
                 "materializes the scores (spec ops.md §5.4)")


class OpCase:
    """One op of ``ops`` at one concrete shape of a :class:`Pattern`, called as the models call it.

    The interface every op has: ``make_inputs`` gives the leaf tensors (the projection outputs,
    plus any learned tables), ``split`` the tensors an implementation takes and that the gradients
    are taken of, ``call(backend)`` / ``flex`` / ``natten`` the implementations,
    ``compulsory_bytes`` and ``forward_flops`` the rates' numerators.

    The base implements the layout most ops share: q, k, v are strided views of one
    ``(B, *token_shape, 3, heads, d)`` qkv projection output (a Linear over NHWC or sequence
    tokens), the output is ``(B, heads, *token_shape, d)`` and the compulsory traffic is Q, K, V,
    O and an fp32 LSE per query.
    """

    reference_label = "reference"
    natten_label = None    # the NATTEN column's label where it is not BACKEND_LABELS' one
    natten_skipped = None  # why NATTEN cannot compute this op; None: it can, :meth:`natten_kwargs`
    NOTES = []             # method notes under the table, once per op present

    @staticmethod
    def tiny_grid(pattern):
        return tuple(tiny_grid_side(n) for n in pattern.grid)

    def __init__(self, pattern, batch, heads, grid):
        self.batch, self.heads, self.grid, self.d = batch, heads, tuple(grid), pattern.head_dim
        self.token_shape = self.grid  # (H, W) for ops on grids, (N,) for ops on sequences
        self.scale = self.d ** -0.5

    def make_inputs(self, dtype, device, generator):
        """One qkv projection output; :meth:`split` gives the q, k, v views."""
        shape = (self.batch, *self.token_shape, 3, self.heads, self.d)
        return (torch.randn(shape, generator=generator, device=device).to(dtype),)

    def split(self, leaves):
        """q, k, v ``(B, heads, *token_shape, d)``: timm's ``qkv.reshape(..., 3, heads, d)``
        permuted, views of the projection output."""
        return leaves[0].movedim(-3, 0).movedim(-2, 2).unbind(0)

    def output_shape(self):
        return (self.batch, self.heads, *self.token_shape, self.d)

    def tokens(self):
        return self.batch * self.heads * math.prod(self.token_shape)

    def compulsory_bytes(self, itemsize):
        """(forward, backward) bytes, every tensor read or written once (spec ops.md §5.3)."""
        tokens = self.tokens()
        fwd = tokens * (4 * self.d * itemsize + 4)      # Q, K, V, O; LSE fp32
        bwd = tokens * (8 * self.d * itemsize + 2 * 4)  # Q, K, V, O, dO, dQ, dK, dV; LSE, delta
        return fwd, bwd

    # -- baselines

    def flex(self, device):
        """Compiled FlexAttention computing this op: (callable, None), or (None, why not); a
        None reason means the class's NOTES say it."""
        if device.type != "cuda":
            return None, FLEX_CPU_NOTE
        return self.flex_attention(device)

    def flex_attention(self, device, compiled=True):
        """(FlexAttention taking :meth:`split`'s tensors, None) or (None, why not): the base
        has none (the class's NOTES say why). ``compiled=False``: eager (the CPU tests' check of
        the mask, forward only)."""
        return None, None

    def natten(self, device):
        """NATTEN's ``na2d``, heads-last, on permuted views: (callable, None), (None, reason),
        or (None, None) when NATTEN is not installed."""
        if importlib.util.find_spec("natten") is None:
            return None, None
        if self.natten_skipped:
            return None, self.natten_skipped
        if device.type != "cuda":
            return None, "NATTEN skipped on the CPU"
        try:
            from natten import na2d
        except ImportError as e:
            return None, f"NATTEN skipped: no natten.na2d ({e})"
        kwargs, scale = self.natten_kwargs(), self.scale

        def run(q, k, v):  # NATTEN is heads-last: (B, H, W, heads, d)
            q, k, v = (t.permute(0, 2, 3, 1, 4) for t in (q, k, v))
            return na2d(q, k, v, scale=scale, **kwargs).permute(0, 3, 1, 2, 4)
        return run, None


def flex_on_sequence(mask_mod, batch, heads, length, scale, device, compiled=True):
    """FlexAttention over ``(B, heads, length, d)`` sequences under ``mask_mod``."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    block_mask = create_block_mask(mask_mod, batch, heads, length, length, device=device)
    attend = flex_attention
    if compiled:
        _raise_recompile_limits()
        attend = torch.compile(flex_attention, dynamic=False)

    def run(q, k, v):
        return attend(q, k, v, block_mask=block_mask, scale=scale)
    return run


def flex_on_grid(mask_mod, grid, scale, device, compiled=True):
    """:func:`flex_on_sequence` over the raster-order tokens of ``(B, heads, H, W, d)`` inputs."""
    H, W = grid
    attend = flex_on_sequence(mask_mod, None, None, H * W, scale, device, compiled)

    def run(q, k, v):
        return attend(q.flatten(2, 3), k.flatten(2, 3), v.flatten(2, 3)).unflatten(2, (H, W))
    return run


def _raise_recompile_limits():
    """Every pattern and dtype is a new static-shape graph of the same compiled flex function;
    dynamo's default limit (8) would silently fall back to eager after a few."""
    import torch._dynamo.config as dynamo_config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo_config, name):
            setattr(dynamo_config, name, max(getattr(dynamo_config, name), 256))


class WindowAttention(OpCase):
    """``ops.window_attention_2d`` with CSWin's centred window offset and zero padding."""

    reference_label = "reference (SDPA on gathered windows)"

    def __init__(self, pattern, batch, heads, grid):
        super().__init__(pattern, batch, heads, grid)
        window = pattern.args["window"]
        if window is not None:
            window = tuple(self.grid[i] if w in ("H", "W") else w for i, w in enumerate(window))
        self.window = window  # None: the whole grid
        self.extent = window or self.grid  # the window's (wh, ww) either way
        self.offset = ops.centered_window_offset(self.grid, self.extent)
        self.num_windows, self.padding = ops.window_grid(self.grid, self.extent, self.offset)
        self.window_text = "full" if window is None else "x".join(map(str, window))
        if any(self.padding):
            self.natten_skipped = (f"NATTEN skipped for {self.label()}: the grid is not "
                                   "divisible by the window")

    def label(self):
        (H, W), pad = self.grid, " (padded)" if any(self.padding) else ""
        return f"B{self.batch} h{self.heads} {H}x{W} d{self.d} win {self.window_text}{pad}"

    def call(self, backend):
        def run(q, k, v):
            return ops.window_attention_2d(q, k, v, self.window, window_offset=self.offset,
                                           padding="zeros", scale=self.scale, backend=backend)
        return run

    def forward_flops(self):
        shape = self.output_shape()
        return 2 * ops.window_attention_macs(shape, shape, self.extent, self.offset)

    def flex_attention(self, device, compiled=True):
        """Over the raster-order token sequence with a same-window mask."""
        if any(self.padding):
            return None, (f"FlexAttention skipped for {self.label()}: zero-padded keys that take "
                          "part in the softmax are not expressible as a mask")
        (_, W), (wh, ww) = self.grid, self.extent  # no padding, hence no offset

        def same_window(b, h, q_idx, kv_idx):
            return (((q_idx // W) // wh == (kv_idx // W) // wh)
                    & ((q_idx % W) // ww == (kv_idx % W) // ww))

        return flex_on_grid(same_window, self.grid, self.scale, device, compiled), None

    def natten_kwargs(self):
        """Non-overlapping windows: stride = kernel size = window (NATTEN >= 0.20)."""
        return dict(kernel_size=self.extent, stride=self.extent)


def to_regions(x, region):
    """``(B, h, H, W, c)`` -> ``(B, h, regions * rh * rw, c)``: region-major, each region's
    tokens row-major (the order in which a routed key set is a run of whole regions)."""
    B, h, H, W, c = x.shape
    rh, rw = region
    return x.reshape(B, h, H // rh, rh, W // rw, rw, c).transpose(3, 4).reshape(B, h, -1, c)


def from_regions(x, grid, region):
    """Inverse of :func:`to_regions`."""
    B, h, _, c = x.shape
    (H, W), (rh, rw) = grid, region
    return x.reshape(B, h, H // rh, W // rw, rh, rw, c).transpose(3, 4).reshape(B, h, H, W, c)


class RoutedAttention(OpCase):
    """``ops.routed_attention_2d`` (BiFormer's bi-level routing attention after the router):
    BiFormer's NHWC ``qkv`` Linear (rows q | k | v, head-major channels), and ``region_index`` a
    fixed random routing (seeded; ``topk`` distinct regions per query region, as ``torch.topk``
    over BiFormer's region logits gives), shared by all heads."""

    reference_label = "reference (SDPA on gathered regions)"
    natten_skipped = ("NATTEN skipped for routed patterns: NATTEN has no data-dependent "
                      "(routed) key sets")
    NOTES = ["routed: region_index is a fixed seeded random routing with distinct regions per "
             "query region (the op's cost does not depend on which regions are routed); scale = "
             "qk_dim ** -0.5 over the layer's full q/k width, as BiFormer uses."]

    @staticmethod
    def tiny_grid(pattern):
        """Keep the region size and top-k; shrink the region grid, keeping more regions than
        top-k (a real choice among regions)."""
        (rh, rw), topk = pattern.args["region"], pattern.args["topk"]
        side = math.isqrt(topk) + 1  # side * side > topk
        return (rh * tiny_tile_count(pattern.grid[0] // rh, side),
                rw * tiny_tile_count(pattern.grid[1] // rw, side))

    def __init__(self, pattern, batch, heads, grid):
        super().__init__(pattern, batch, heads, grid)
        self.region, self.topk = tuple(pattern.args["region"]), pattern.args["topk"]
        (H, W), (rh, rw) = self.grid, self.region
        if H % rh or W % rw:
            raise ValueError(f"{pattern.name}: grid {H}x{W} is not divisible into {rh}x{rw} regions")
        self.region_grid = (H // rh, W // rw)
        self.num_regions = self.region_grid[0] * self.region_grid[1]
        if not 1 <= self.topk <= self.num_regions:
            raise ValueError(f"{pattern.name}: top-{self.topk} of {self.num_regions} regions")
        self.scale = pattern.args["qk_dim"] ** -0.5
        generator = torch.Generator().manual_seed(0)
        scores = torch.rand(batch, self.num_regions, self.num_regions, generator=generator)
        self.region_index_cpu = scores.argsort(-1)[..., :self.topk].contiguous()  # int64, distinct
        self.region_index = self.region_index_cpu
        self.window_text = f"{rh}x{rw} regions top-{self.topk}"

    def label(self):
        (H, W), (ny, nx) = self.grid, self.region_grid
        return (f"B{self.batch} h{self.heads} {H}x{W} d{self.d} {ny}x{nx} regions of "
                f"{self.region[0]}x{self.region[1]}, top-{self.topk}")

    def make_inputs(self, dtype, device, generator):
        """The qkv projection output; also puts the routing on ``device``."""
        self.region_index = self.region_index_cpu.to(device)
        return super().make_inputs(dtype, device, generator)

    def call(self, backend):
        def run(q, k, v):
            return ops.routed_attention_2d(q, k, v, self.region_index, self.region,
                                           scale=self.scale, backend=backend)
        return run

    def forward_flops(self):
        shape = self.output_shape()
        return 2 * ops.routed_attention_macs(shape, shape, self.topk, self.region)

    def flex_attention(self, device, compiled=True):
        """Over region-major token order (one permuting copy of q, k, v and O per call, inside
        the timing) with a mask looked up in a dense (B, nR, nR) routing table."""
        B, nR, T = self.batch, self.num_regions, self.region[0] * self.region[1]
        table = torch.zeros(B, nR, nR, dtype=torch.bool, device=device)
        table.scatter_(2, self.region_index_cpu.to(device), True)

        def routed(b, h, q_idx, kv_idx):
            return table[b, q_idx // T, kv_idx // T]

        attend = flex_on_sequence(routed, B, None, nR * T, self.scale, device, compiled)
        grid, region = self.grid, self.region

        def run(q, k, v):
            return from_regions(attend(*(to_regions(t, region) for t in (q, k, v))), grid, region)
        return run, None


class HaloAttention(OpCase):
    """``ops.halo_attention_2d`` (timm's ``HaloAttn`` minus projections), as timm calls it: q a
    view of the (strided) ``(B, heads * d, H / s, W / s)`` q projection, k and v views of the
    ``(B, heads * 2d, H, W)`` kv projection, interleaved per head (``[k_h0, v_h0, k_h1, ...]``),
    and, with rel-pos, the shared ``(2 * win - 1, d)`` ``height_rel`` / ``width_rel`` tables
    (gradients flow to them too)."""

    natten_skipped = ("NATTEN skipped for halo patterns: NATTEN's windows shift inwards at "
                      "borders, HaloNet's are zero-padded")
    NOTES = ["halo: bytes = Q on the (strided) query grid + K, V on the full grid + O + LSE "
             "(+ the two rel-pos tables, read once; their gradients written once in backward); "
             "FLOPs count every window key, zero-padded ones included (they are computed); "
             "grads include d(height_rel), d(width_rel) where rel-pos is on.",
             "FlexAttention skipped for halo patterns: HaloNet's zero-padded border keys take "
             "part in the softmax (timm does not mask them), which a mask cannot express."]

    @staticmethod
    def tiny_grid(pattern):
        """Keep block, halo and stride; shrink the block grid (about /4, at least 2x2 blocks)."""
        block = pattern.args["block"]
        return tuple(block * tiny_tile_count(n // block, 2) for n in pattern.grid)

    def __init__(self, pattern, batch, heads, grid):
        super().__init__(pattern, batch, heads, grid)
        a = pattern.args
        self.block, self.halo, self.stride = a["block"], a["halo"], a["stride"]
        self.rel_pos = bool(a["rel_pos"])
        self.win = self.block + 2 * self.halo
        H, W = self.grid
        if H % self.block or W % self.block or self.block % self.stride:
            raise ValueError(f"{pattern.name}: grid {H}x{W} / block {self.block} / stride "
                             f"{self.stride} do not divide")
        self.q_grid = (H // self.stride, W // self.stride)
        self.token_shape = self.q_grid  # queries and outputs; keys and values are on self.grid
        self.window_text = (f"b{self.block} h{self.halo}"
                            + (f" s{self.stride}" if self.stride > 1 else "")
                            + (" rel-pos" if self.rel_pos else ""))
        self.reference_label = ("reference (matmul + softmax on unfolded windows)" if self.rel_pos
                                else "reference (SDPA on unfolded windows)")

    def label(self):
        (H, W), (Hq, Wq) = self.grid, self.q_grid
        q = f" q {Hq}x{Wq}" if self.stride > 1 else ""
        return f"B{self.batch} h{self.heads} {H}x{W}{q} d{self.d} win {self.win} {self.window_text}"

    def make_inputs(self, dtype, device, generator):
        """q and kv projection outputs (NCHW), plus the rel-pos tables (timm's init scale)."""
        B, (H, W), (Hq, Wq), h, d = self.batch, self.grid, self.q_grid, self.heads, self.d
        leaves = [torch.randn(B, h * d, Hq, Wq, generator=generator, device=device),
                  torch.randn(B, h * 2 * d, H, W, generator=generator, device=device)]
        if self.rel_pos:
            leaves += [torch.randn(2 * self.win - 1, d, generator=generator, device=device)
                       * self.scale for _ in range(2)]
        return tuple(t.to(dtype) for t in leaves)

    def split(self, leaves):
        B, (H, W), (Hq, Wq), h, d = self.batch, self.grid, self.q_grid, self.heads, self.d
        q = leaves[0].view(B, h, d, Hq, Wq).permute(0, 1, 3, 4, 2)
        kv = leaves[1].view(B, h, 2 * d, H, W).permute(0, 1, 3, 4, 2)
        return (q, kv[..., :d], kv[..., d:], *leaves[2:])

    def call(self, backend):
        def run(q, k, v, *rel_pos):
            return ops.halo_attention_2d(q, k, v, self.block, self.halo, stride=self.stride,
                                         rel_pos=rel_pos or None, scale=self.scale,
                                         backend=backend)
        return run

    def compulsory_bytes(self, itemsize):
        """Q (query grid), K, V (full grid), O, fp32 LSE; backward reads Q, K, V, O, dO, LSE,
        delta and writes dQ, dK, dV; the rel tables are read once (their gradients written
        once)."""
        B, h, d = self.batch, self.heads, self.d
        nq = B * h * self.q_grid[0] * self.q_grid[1]
        nk = B * h * self.grid[0] * self.grid[1]
        rel = 2 * (2 * self.win - 1) * d * itemsize if self.rel_pos else 0
        fwd = (nq * d + 2 * nk * d + nq * d) * itemsize + nq * 4 + rel
        bwd = (2 * nq * d + 2 * nk * d + 2 * nq * d + 2 * nk * d) * itemsize + nq * 8 + 2 * rel
        return fwd, bwd

    def forward_flops(self):
        return 2 * ops.halo_attention_macs(self.output_shape(), self.output_shape(),
                                           self.block, self.halo)


def na_mask_mod(grid, kernel, dilation):
    """FlexAttention ``mask_mod`` over the raster-order token sequence of a ``grid`` with NATTEN's
    clamped window (spec ops.md §6): per axis, with sub-grid ``g = i % dilation`` of length
    ``L_g``, the query's centre ``i // dilation`` is clamped into ``[r, L_g - 1 - r]`` and a key
    of the same sub-grid is kept when ``|key // dilation - centre| <= r``."""
    (H, W), r = grid, kernel // 2

    def axis(q, kv, length):
        g = q % dilation
        sub_len = (length - g + dilation - 1) // dilation
        centre = torch.minimum((q // dilation).clamp(min=r), sub_len - 1 - r)
        return (kv % dilation == g) & ((kv // dilation - centre).abs() <= r)

    def neighborhood(b, h, q_idx, kv_idx):
        return axis(q_idx // W, kv_idx // W, H) & axis(q_idx % W, kv_idx % W, W)
    return neighborhood


class NeighborhoodAttention(OpCase):
    """``ops.neighborhood_attention_2d`` (NATTEN's ``na2d``: a ``k x k`` window centred on the
    query, shifted inwards at borders, optionally dilated), from NAT's NHWC ``qkv`` Linear."""

    reference_label = "reference (explicit softmax on gathered neighborhoods)"
    natten_label = "natten (na2d)"
    NOTES = ["neighborhood: bytes and FLOPs as for windows, with K_eff = kernel^2 keys per query "
             "(no padding exists; dilation changes neither); FlexAttention uses a mask_mod with "
             "NATTEN's clamped (dilated) window over the raster-order sequence (spec ops.md §6)."]

    @staticmethod
    def tiny_grid(pattern):
        """About a quarter of each side, but at least kernel * dilation (NATTEN's minimum)."""
        need = pattern.args["kernel"] * pattern.args["dilation"]
        return tuple(max(tiny_grid_side(n), min(n, need)) for n in pattern.grid)

    def __init__(self, pattern, batch, heads, grid):
        super().__init__(pattern, batch, heads, grid)
        self.kernel, self.dilation = pattern.args["kernel"], pattern.args["dilation"]
        if any(self.kernel * self.dilation > n for n in self.grid):
            raise ValueError(f"{pattern.name}: kernel {self.kernel} x dilation {self.dilation} "
                             f"exceeds the grid {self.grid}")
        self.window_text = (f"na {self.kernel}x{self.kernel}"
                            + (f" dil {self.dilation}" if self.dilation > 1 else ""))

    def label(self):
        (H, W) = self.grid
        return f"B{self.batch} h{self.heads} {H}x{W} d{self.d} {self.window_text}"

    def call(self, backend):
        def run(q, k, v):
            return ops.neighborhood_attention_2d(q, k, v, self.kernel, dilation=self.dilation,
                                                 scale=self.scale, backend=backend)
        return run

    def forward_flops(self):
        shape = self.output_shape()
        return 2 * ops.neighborhood_attention_macs(shape, shape, self.kernel)

    def flex_attention(self, device, compiled=True):
        """Over the raster-order token sequence, :func:`na_mask_mod` as the mask."""
        mask_mod = na_mask_mod(self.grid, self.kernel, self.dilation)
        return flex_on_grid(mask_mod, self.grid, self.scale, device, compiled), None

    def natten_kwargs(self):
        return dict(kernel_size=self.kernel, dilation=self.dilation)


class MaskedAttention(OpCase):
    """``ops.masked_attention`` (Sparsifiner's sparse attention): DeiT's ``(B, N, 3, heads, d)``
    qkv projection, N = cls tokens + grid tokens; the mask is packed (``ops.topk_mask``), per
    head, with the cls row(s) dense and every patch row a fixed seeded random set of ``topk``
    distinct keys (as Sparsifiner's ``topk`` + ``scatter`` gives)."""

    reference_label = "reference (SDPA with a bool mask)"
    natten_skipped = ("NATTEN skipped for masked patterns: NATTEN has no arbitrary per-query key "
                      "sets")
    NOTES = ["masked: the mask is a fixed seeded random top-k per patch row and head (the op's "
             "cost does not depend on which keys are kept), cls row dense, packed uint8; bytes = "
             "the window formula + the packed mask read once per pass (spec §5.3's 78 MB leaves "
             "it out); FLOPs count kept (query, key) pairs only.",
             "FlexAttention for masked patterns: a mask_mod reading the dense (B, heads, N, N) "
             "bool mask (unstructured: no block is skippable at N=197)."]

    def __init__(self, pattern, batch, heads, grid):
        super().__init__(pattern, batch, heads, grid)
        self.cls_tokens = pattern.args["cls_tokens"]
        patches, full = grid[0] * grid[1], pattern.grid[0] * pattern.grid[1]
        self.n = self.cls_tokens + patches
        self.token_shape = (self.n,)
        # --tiny keeps the keep rate: top-k scaled with the patch count (exact at full size).
        self.topk = min(self.n, max(1, round(pattern.args["topk"] * patches / full)))
        generator = torch.Generator().manual_seed(0)
        scores = torch.rand(batch, heads, patches, self.n, generator=generator)
        key_index = scores.topk(self.topk, dim=-1).indices  # int64, distinct
        patch_rows = ops.topk_mask(key_index, self.n)
        cls_rows = torch.full((batch, heads, self.cls_tokens, patch_rows.shape[-1]), 255,
                              dtype=torch.uint8)
        self.mask_cpu = torch.cat([cls_rows, patch_rows], dim=2).contiguous()
        self.mask = self.mask_cpu
        self.window_text = f"top-{self.topk} of {self.n}"

    def label(self):
        return (f"B{self.batch} h{self.heads} N{self.n} d{self.d} top-{self.topk} of {self.n}, "
                f"cls row dense")

    def make_inputs(self, dtype, device, generator):
        """The qkv projection output; also puts the mask on ``device``."""
        self.mask = self.mask_cpu.to(device)
        return super().make_inputs(dtype, device, generator)

    def call(self, backend):
        def run(q, k, v):
            return ops.masked_attention(q, k, v, self.mask, scale=self.scale, backend=backend)
        return run

    def mask_bytes(self):
        return self.mask_cpu.numel()  # packed uint8

    def compulsory_bytes(self, itemsize):
        """The window formula plus the packed mask, read once in each pass."""
        fwd, bwd = super().compulsory_bytes(itemsize)
        return fwd + self.mask_bytes(), bwd + self.mask_bytes()

    def forward_flops(self):
        shape = self.output_shape()
        return 2 * ops.masked_attention_macs(shape, shape, shape, keys_per_query=self.topk,
                                             dense_rows=self.cls_tokens)

    def flex_attention(self, device, compiled=True):
        """A ``mask_mod`` looking the pair up in the dense bool mask."""
        table = ops.unpack_mask(self.mask_cpu.to(device), self.n)  # (B, heads, N, N) bool

        def kept(b, h, q_idx, kv_idx):
            return table[b, h, q_idx, kv_idx]

        return flex_on_sequence(kept, self.batch, self.heads, self.n, self.scale, device,
                                compiled), None


class ReversedAttention(OpCase):
    """``ops.reversed_attention`` (DependencyViT): DeiT's ``(B, N, 3, heads, d)`` qkv projection
    and the per-(head, token) weights, a leaf of their own (head selector times message weight:
    random positive, gradients flow to it)."""

    reference_label = "reference (matmul + softmax, transposed accumulation)"
    natten_skipped = "NATTEN skipped for reversed patterns: not a neighborhood op"
    NOTES = ["reversed: bytes = the window formula + the (B, heads, N) weights read once (and "
             "their gradient written once in backward); FLOPs dense; grads include d(weights).",
             "FlexAttention skipped for reversed patterns: it normalizes over keys per query, "
             "the transposed accumulation is not expressible with score_mod / mask_mod."]

    def __init__(self, pattern, batch, heads, grid):
        super().__init__(pattern, batch, heads, grid)
        self.n = grid[0] * grid[1]
        self.token_shape = (self.n,)
        self.window_text = "dense reversed"

    def label(self):
        return f"B{self.batch} h{self.heads} N{self.n} d{self.d} dense, weighted"

    def make_inputs(self, dtype, device, generator):
        """The qkv projection output and the weights ``softmax_heads(selector) * m``, m in
        [0, 1)."""
        B, h, n = self.batch, self.heads, self.n
        qkv = super().make_inputs(dtype, device, generator)
        selector = torch.randn(B, h, n, generator=generator, device=device).softmax(1)
        m = torch.rand(B, 1, n, generator=generator, device=device)
        return (*qkv, (selector * m).to(dtype))

    def split(self, leaves):
        return (*super().split(leaves), leaves[1])

    def call(self, backend):
        def run(q, k, v, weights):
            return ops.reversed_attention(q, k, v, weights, scale=self.scale, backend=backend)
        return run

    def compulsory_bytes(self, itemsize):
        """The window formula plus the weights (read once; backward: read and their gradient
        written)."""
        fwd, bwd = super().compulsory_bytes(itemsize)
        weights = self.tokens() * itemsize
        return fwd + weights, bwd + 2 * weights

    def forward_flops(self):
        shape = self.output_shape()
        return 2 * ops.reversed_attention_macs(shape, shape)


OPS = {"window": WindowAttention, "routed": RoutedAttention, "halo": HaloAttention,
       "neighborhood": NeighborhoodAttention, "masked": MaskedAttention,
       "reversed": ReversedAttention}


# ----------------------------------------------------------------------------- measuring

def peak_hbm_tbps(device_name):
    name = device_name.upper()
    for keys, tbps in PEAK_HBM_TBPS:
        if all(k in name for k in keys):
            return tbps
    return None


def gpu_compiled_kernels():
    """Triton kernels of ``ops`` built for the GPU: their modules were imported before
    TRITON_INTERPRET was set, and the interpreter cannot run them."""
    from triton.runtime.jit import JITFunction
    return sorted(f"{name}.{attr}" for name, module in list(sys.modules.items())
                  if name.startswith(f"{ops.__name__}.")
                  for attr, obj in vars(module).items() if isinstance(obj, JITFunction))


def triton_status(device):
    """None when the Triton backend can run on ``device``, else why not."""
    if importlib.util.find_spec("triton") is None:
        return "Triton backend skipped: triton is not installed"
    if device.type == "cpu":
        if not ops.interpreter_enabled():
            return ("Triton backend skipped: TRITON_INTERPRET is not set, and on the CPU Triton "
                    "kernels run only in its interpreter (start Python with TRITON_INTERPRET=1); "
                    "reference only")
        if gpu_compiled_kernels():
            return ("Triton backend skipped: its kernels were imported before TRITON_INTERPRET "
                    "was set, so they cannot run on the CPU")
    return None


def time_ms(fn, device, warmup, iters):
    """Median ms of ``iters`` calls after ``warmup`` untimed ones (CUDA events on the GPU)."""
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize()
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def forward_backward(case, run, leaves, dout):
    """Output and gradients (dq, dk, dv, and those of any learned tables) of one
    forward+backward on the tensors ``case.split(leaves)`` (views of the projection outputs)."""
    inputs = case.split(leaves)
    out = run(*inputs)
    return out, torch.autograd.grad(out, inputs, dout)


def max_abs_diff(a, b):
    return (a.float() - b.float()).abs().max().item()


def seeded_inputs(case, dtype, device):
    """(leaves requiring grad, upstream gradient dO) of ``case`` in ``dtype``, seeded: every
    dtype and implementation sees the same values, up to rounding."""
    generator = torch.Generator(device=device).manual_seed(0)
    leaves = tuple(t.requires_grad_(True) for t in case.make_inputs(dtype, device, generator))
    dout = torch.randn(case.output_shape(), generator=generator, device=device).to(dtype)
    return leaves, dout


def reference_truth(case, leaves, dout):
    """(output, gradients) of the reference backend in fp32 on the values of ``leaves``: what
    every implementation in every dtype is compared against."""
    return forward_backward(case, case.call("reference"),
                            tuple(t.detach().float().requires_grad_(True) for t in leaves),
                            dout.float())


def benchmark_case(case, impls, dtype, settings):
    """One row per implementation of ``case`` (an op instance) in ``dtype``."""
    device = settings["device"]
    leaves, dout = seeded_inputs(case, dtype, device)
    truth_out, truth_grads = reference_truth(case, leaves, dout)
    fwd_bytes, bwd_bytes = case.compulsory_bytes(torch.finfo(dtype).bits // 8)
    fwd_flops = case.forward_flops()
    # On the GPU the first call of each mode compiles (Triton JIT, torch.compile): never timed.
    warmup = settings["warmup"] + (device.type == "cuda")
    for backend, run in impls:
        row = dict(backend=backend, dtype=settings["dtype_names"][dtype], error=None)
        try:
            out, grads = forward_backward(case, run, leaves, dout)
            if backend != "reference" or dtype != torch.float32:
                row["max_diff_out"] = max_abs_diff(out, truth_out)
                row["max_diff_grad"] = max(max_abs_diff(g, t) for g, t in zip(grads, truth_grads))
            del out, grads

            def fwd():
                with torch.no_grad():
                    run(*case.split(leaves))

            def fwd_bwd():
                forward_backward(case, run, leaves, dout)

            row["fwd_ms"] = time_ms(fwd, device, warmup, settings["iters"])
            row["fwd_bwd_ms"] = time_ms(fwd_bwd, device, warmup, settings["iters"])
        except Exception as e:  # noqa: BLE001  (OOM, compile failures: an error row, not a crash)
            row["error"] = report.error_text(e)
            if device.type == "cuda":
                torch.cuda.empty_cache()
        if row.get("fwd_ms"):
            row["fwd_gbps"] = fwd_bytes / row["fwd_ms"] / 1e6
            row["fwd_tflops"] = fwd_flops / row["fwd_ms"] / 1e9
        if row.get("fwd_bwd_ms"):
            row["fwd_bwd_gbps"] = (fwd_bytes + bwd_bytes) / row["fwd_bwd_ms"] / 1e6
            row["fwd_bwd_tflops"] = 3.5 * fwd_flops / row["fwd_bwd_ms"] / 1e9  # bwd ~ 2.5x fwd
        peak = settings["peak_tbps"]
        for mode in ("fwd", "fwd_bwd"):
            if peak and row.get(f"{mode}_gbps"):
                row[f"{mode}_hbm_frac"] = row[f"{mode}_gbps"] / (peak * 1e3)
        yield row


def implementations(case, device, triton_note, backends):
    """[(backend label, callable(q, k, v))] of those of ``backends`` that run here, and notes on
    the ones left out."""
    impls, notes = [], []
    if "triton" in backends and triton_note is None:
        impls.append(("triton", case.call("triton")))
    if "reference" in backends:
        impls.append(("reference", case.call("reference")))
    for name, make in (("flex", case.flex), ("natten", case.natten)):
        if name not in backends:
            continue
        run, note = make(device)
        if run is not None:
            impls.append((name, run))
        elif note:
            notes.append(note)
    return impls, notes


# ----------------------------------------------------------------------------- reporting

BACKEND_LABELS = {
    "triton": "triton",
    "reference": "reference (SDPA on gathered windows)",
    "flex": "flex (compiled, block mask)",
    "natten": "natten (na2d, stride = window)",
}


def describe_machine(settings):
    device = settings["device"]
    if device.type == "cuda":
        peak = settings["peak_tbps"]
        details = [f"HBM peak {f'{peak:g} TB/s' if peak else '? (GPU not in PEAK_HBM_TBPS)'}",
                   ("TF32" if torch.backends.cuda.matmul.allow_tf32 else "IEEE")
                   + " fp32 matmuls"]
    else:
        details = [f"threads {torch.get_num_threads()}",
                   "Triton interpreter" if ops.interpreter_enabled() else "no Triton interpreter"]
    shapes = "tiny shapes (--tiny)" if settings["tiny"] else "224x224 layer shapes"
    return report.describe_machine(device, *details, shapes, f"warmup {settings['warmup']}, "
                                   f"median of {settings['iters']}")


def markdown_table(rows, settings):
    on_cuda = settings["device"].type == "cuda"
    ms = "ms" if on_cuda else "ms (CPU)"
    header = ["pattern", "shape", "backend", "dtype", f"fwd {ms}", "fwd GB/s"]
    header += ["fwd % HBM"] if on_cuda else []
    header += [f"fwd+bwd {ms}", "fwd+bwd GB/s"]
    header += ["fwd+bwd % HBM"] if on_cuda else []
    header += ["max abs diff out", "max abs diff grads"]
    time_spec, rate_spec = (".3f", ".1f") if on_cuda else (".4g", ".3g")

    def percent(value):
        return "?" if value is None else f"{100 * value:.0f}%"

    cells = []
    for r in rows:
        row = [r["pattern"], r["shape"], r.get(f"{r['backend']}_label") or BACKEND_LABELS[
            r["backend"]], r["dtype"]]
        if r["error"]:
            row += ["error"] + [report.MISSING] * (len(header) - 5)
        else:
            row += [report.cell(r.get("fwd_ms"), time_spec),
                    report.cell(r.get("fwd_gbps"), rate_spec)]
            row += [percent(r.get("fwd_hbm_frac"))] if on_cuda else []
            row += [report.cell(r.get("fwd_bwd_ms"), time_spec),
                    report.cell(r.get("fwd_bwd_gbps"), rate_spec)]
            row += [percent(r.get("fwd_bwd_hbm_frac"))] if on_cuda else []
            row += [report.cell(r.get("max_diff_out"), ".1e"),
                    report.cell(r.get("max_diff_grad"), ".1e")]
        cells.append(row)
    return report.markdown_table(header, cells)


def method_notes(settings, op_classes=(WindowAttention,)):
    notes = [
        "fwd: one forward under torch.no_grad; fwd+bwd: forward plus torch.autograd.grad of "
        "q, k, v (views of the projection outputs, as the models call the op) with a random dO.",
        "GB/s: compulsory bytes / median time. fwd: Q, K, V, O once + fp32 LSE; fwd+bwd adds "
        "Q, K, V, O, dO, LSE, delta read and dQ, dK, dV written (spec ops.md §5.3).",
        "max abs diff: against the reference backend run in fp32 on the same input values "
        "(grads: max over dQ, dK, dV and any learned tables); '–' on the fp32 reference, which is "
        "that truth.",
        "reference = the op's PyTorch definition: F.scaled_dot_product_attention on the gathered "
        "(zero-padded) windows / regions or with the bool mask, i.e. the SDPA baseline, so no "
        "separate SDPA row (HaloNet with rel-pos: matmul + bias + softmax, which SDPA cannot take "
        "fused; neighborhood: explicit softmax on gathered neighborhoods; reversed: matmul + "
        "softmax with the transposed accumulation, which SDPA cannot express).",
    ]
    for cls in op_classes:
        notes += cls.NOTES
    if settings["device"].type == "cuda":
        notes.append("% HBM: of the peak in PEAK_HBM_TBPS for this GPU ('?' if unknown; "
                     "--hbm-tbps sets it). CUDA-event timing, L2 not flushed between calls.")
    return notes


CSV_FIELDS = ["pattern", "layer", "shape", "batch", "heads", "grid", "window", "head_dim",
              "backend", "dtype", "device", "tiny", "fwd_ms", "fwd_bwd_ms", "fwd_gbps",
              "fwd_bwd_gbps", "fwd_hbm_frac", "fwd_bwd_hbm_frac", "fwd_tflops", "fwd_bwd_tflops",
              "max_diff_out", "max_diff_grad", "error"]

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


# ----------------------------------------------------------------------------- main

def parse_args(argv=None):
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--patterns", nargs="+", metavar="NAME",
                   help="pattern names or fnmatch wildcards (default: all): "
                        + ", ".join(pt.name for pt in PATTERNS))
    p.add_argument("--device", choices=("cpu", "cuda"),
                   default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", nargs="+", choices=tuple(DTYPES),
                   help="default bf16 on CUDA, fp32 on the CPU (the only one allowed there)")
    p.add_argument("--backends", nargs="+", choices=tuple(BACKEND_LABELS),
                   default=list(BACKEND_LABELS),
                   help="implementations to time, those that can run here (default: all)")
    p.add_argument("--batch-size", type=int, help="default 128 on CUDA, 1 on the CPU")
    p.add_argument("--tiny", action=argparse.BooleanOptionalAction, default=None,
                   help="shrink grids (about /4, at least 8; routed / halo: the region / block "
                        "grid, keeping region, block, halo, top-k; neighborhood: at least "
                        "kernel x dilation; masked: top-k scaled with the patch count), 1 head, "
                        "batch 1 unless "
                        "--batch-size: for the Triton interpreter; default on for the CPU")
    p.add_argument("--warmup", type=int, default=2,
                   help="untimed calls per case and mode (default 2; on CUDA one more, the "
                        "compiling call, is always added)")
    p.add_argument("--iters", type=int, help="timed calls, median reported (default 10 on "
                                             "CUDA, 3 on the CPU)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads on the CPU (default 1: the tiny shapes gain nothing "
                        "from more, and a thread barrier on a contended host costs milliseconds)")
    p.add_argument("--hbm-tbps", type=float, help="peak HBM bandwidth of this GPU in TB/s "
                                                  "(default: looked up by GPU name)")
    p.add_argument("--markdown", metavar="PATH", help="write the printed report")
    p.add_argument("--csv", metavar="PATH", help="write one row per (pattern, dtype, backend)")
    return p.parse_args(argv)


def make_settings(args):
    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    if on_cuda and not torch.cuda.is_available():
        raise SystemExit(f"{PROG}: error: --device cuda but torch sees no CUDA device")
    dtype_names = args.dtype or (["bf16"] if on_cuda else ["fp32"])
    if not on_cuda and dtype_names != ["fp32"]:
        raise SystemExit(f"{PROG}: error: the CPU runs fp32 only (--dtype fp32)")
    iters = args.iters if args.iters is not None else (10 if on_cuda else 3)
    if iters < 1 or args.warmup < 0 or (args.batch_size is not None and args.batch_size < 1):
        raise SystemExit(f"{PROG}: error: --iters and --batch-size must be >= 1, --warmup >= 0")
    tiny = (not on_cuda) if args.tiny is None else args.tiny
    batch = args.batch_size or (1 if tiny or not on_cuda else 128)
    peak = args.hbm_tbps or (peak_hbm_tbps(torch.cuda.get_device_name(device)) if on_cuda else None)
    return dict(device=device, dtypes=[DTYPES[n] for n in dtype_names],
                dtype_names={DTYPES[n]: n for n in dtype_names}, iters=iters, warmup=args.warmup,
                tiny=tiny, batch=batch, peak_tbps=peak, backends=args.backends)


def concrete_case(pattern, settings):
    """The op instance of a pattern at this run's shape (full or --tiny)."""
    grid, heads, cls = pattern.grid, pattern.heads, OPS[pattern.op]
    if settings["tiny"]:
        grid, heads = cls.tiny_grid(pattern), 1
    return cls(pattern, settings["batch"], heads, grid)


def measure_patterns(patterns, settings, notes):
    """Yield the rows of every pattern x dtype x implementation as they are measured; appends
    what the table cannot say (baselines left out, errors) to ``notes``."""
    device = settings["device"]
    triton_note = triton_status(device) if "triton" in settings["backends"] else None
    if triton_note:
        notes.append(triton_note)
    if device.type == "cuda" and ops.interpreter_enabled():
        notes.append("TRITON_INTERPRET is set: the Triton column ran in the interpreter, its "
                     "timings mean nothing")
    cases = [(p, concrete_case(p, settings)) for p in patterns]
    with tqdm(total=len(cases) * len(settings["dtypes"]), desc="benchmark_ops",
              unit="case") as bar:
        for pattern, case in cases:
            impls, impl_notes = implementations(case, device, triton_note, settings["backends"])
            notes += [n for n in impl_notes if n not in notes]
            if not impls:  # nothing of --backends runs this op here: no reference run either
                bar.update(len(settings["dtypes"]))
                continue
            described = dict(pattern=pattern.name, layer=pattern.layer, shape=case.label(),
                             batch=case.batch, heads=case.heads, head_dim=case.d,
                             grid="x".join(map(str, case.grid)), window=case.window_text,
                             device=str(device), tiny=settings["tiny"],
                             reference_label=case.reference_label, natten_label=case.natten_label)
            for dtype in settings["dtypes"]:
                bar.set_postfix_str(f"{pattern.name} {settings['dtype_names'][dtype]}")
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)  # flex / interpreter chatter
                    for row in benchmark_case(case, impls, dtype, settings):
                        if row["error"]:
                            notes.append(f"{pattern.name} {row['dtype']} {row['backend']}: "
                                         f"{row['error']}")
                        yield dict(row, **described)
                bar.update(1)


def render(rows, notes, patterns, settings):
    """The printed report: machine line, table, method notes and run notes, the patterns."""
    head = [describe_machine(settings)]
    if settings["device"].type == "cpu":
        head.append(f"**{CPU_CAVEAT}**")
    shrunk = ", shrunk by --tiny" if settings["tiny"] else ""
    op_classes = [cls for cls in OPS.values() if any(OPS[p.op] is cls for p in patterns)]
    return report.document(
        "\n".join(head), markdown_table(rows, settings),
        report.bullets(method_notes(settings, op_classes) + notes),
        f"Patterns (224x224 layer shapes{shrunk}):\n"
        + report.bullets(f"{p.name}: {p.layer}" for p in patterns))


def run(argv=None):
    """Run the benchmark; returns one dict per (pattern, dtype, backend), the rows of ``--csv``."""
    args = parse_args(argv)
    patterns = resolve_patterns(args.patterns)
    settings = make_settings(args)
    threads = torch.get_num_threads()
    if settings["device"].type == "cpu":
        torch.set_num_threads(args.threads)
    notes = []
    try:
        rows = list(measure_patterns(patterns, settings, notes))
        text = render(rows, notes, patterns, settings)
    finally:
        torch.set_num_threads(threads)
    rows = [{k: r.get(k) for k in CSV_FIELDS} for r in rows]
    report.publish(text, rows, CSV_FIELDS, args.markdown, args.csv)
    return rows


def main(argv=None):
    """``zoo-benchmark-ops``: :func:`run`, exit status 0."""
    run(argv)


if __name__ == "__main__":
    main()

"""Input checks shared by every op: one wording for one mistake, whichever op catches it."""
import torch

# rank -> (layout, the dims v shares with q)
_LAYOUTS = {4: ("(B, heads, L, dim)", "B, heads, L"), 5: ("(B, heads, H, W, dim)", "B, heads, H, W")}


def check_qkv(q, k, v, rank, same_tokens=True):
    """q, k, v are floating tensors of ``rank`` dims on one device with one dtype; with
    ``same_tokens`` (self-attention on one grid) q and k share a shape and v matches them in every
    dim but the last (``d_v`` may differ from ``d_qk``)."""
    layout, shared = _LAYOUTS[rank]
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != rank:
            raise ValueError(f"{name} must be a {rank}-D tensor {layout}, "
                             f"got {tuple(t.shape) if isinstance(t, torch.Tensor) else type(t)}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if not same_tokens:
        return
    if q.shape != k.shape:
        raise ValueError(f"q and k must have the same shape, got {tuple(q.shape)} and {tuple(k.shape)}")
    if v.shape[:-1] != q.shape[:-1]:
        raise ValueError(f"v must match q in ({shared}), got {tuple(v.shape)} vs {tuple(q.shape)}")


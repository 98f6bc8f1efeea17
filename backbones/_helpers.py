"""Small helpers every family module shares."""
import torch
from timm.layers import register_notrace_function

from ops import fx_leaf

# Order in which wrapper keys of official releases are unwrapped. EMA weights first: they are what
# the papers evaluate (timm's CheckpointSaver and the authors' eval scripts load them), and timm's
# own file loader prefers them too, so a url load and a file load give the same weights.
WRAPPER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model", "net", "params")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def unwrap_checkpoint(checkpoint, prefixes=WRAPPER_PREFIXES):
    """The bare ``{name: tensor}`` dict inside an official checkpoint of any common wrapping."""
    sd = checkpoint
    while isinstance(sd, dict) and not any(isinstance(v, torch.Tensor) for v in sd.values()):
        key = next((k for k in WRAPPER_KEYS if isinstance(sd.get(k), dict)), None)
        if key is None:
            raise ValueError(
                "checkpoint holds no tensors and none of the wrapper keys "
                f"{WRAPPER_KEYS}; top-level keys: {sorted(sd)[:20]}")
        sd = sd[key]
    if not isinstance(sd, dict):
        raise ValueError(f"expected a state_dict (a dict of tensors), got {type(sd).__name__}")
    out = {}
    for k, v in sd.items():
        changed = True
        while changed:
            changed = False
            for p in prefixes:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        out[k] = v
    return out


@register_notrace_function
@fx_leaf
def check_image_input(x, in_chans, model_name, min_size=1):
    """``x``, after failing early and clearly on inputs a backbone cannot take (instead of a
    reshape error deep inside a stage). Under an FX trace it is one node whose output the model
    uses, so the traced graph still checks its inputs."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{model_name} expects a torch.Tensor image batch, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{model_name} expects a 4-D (B, C, H, W) batch, got shape {tuple(x.shape)}"
                         + ("; add a batch dimension with x.unsqueeze(0)" if x.dim() == 3 else ""))
    if not x.is_floating_point():
        raise TypeError(f"{model_name} expects a floating-point image batch, got {x.dtype}; convert "
                        "and normalise it first (timm.data.resolve_data_config + create_transform)")
    if x.shape[1] != in_chans:
        hint = " (is the batch channels-last? use x.permute(0, 3, 1, 2))" if x.shape[-1] == in_chans else ""
        raise ValueError(f"{model_name} was built for {in_chans} input channels, got {x.shape[1]}"
                         f"{hint}; pass in_chans={x.shape[1]} to timm.create_model to adapt it")
    if x.shape[2] < min_size or x.shape[3] < min_size:
        raise ValueError(f"{model_name} needs inputs of at least {min_size}x{min_size} pixels, got "
                         f"{x.shape[2]}x{x.shape[3]}")
    return x

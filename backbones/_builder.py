"""``build_model_with_cfg`` the zoo way: validated feature indices, local-file resolution of
pretrained weights with actionable errors, and a scoped pickle allowlist for official checkpoints."""
import argparse
import pickle

import torch
from timm.models import build_model_with_cfg
from timm.models._builder import resolve_pretrained_cfg

from ._pretrained import PretrainedWeightsError, _how_to_fix, resolve_checkpoint_file


def _check_out_indices(variant, out_indices, num_stages):
    if isinstance(out_indices, int):
        out_indices = (out_indices,)
    out_indices = tuple(out_indices)
    bad = [i for i in out_indices if not isinstance(i, int) or not -num_stages <= i < num_stages]
    if not out_indices or bad:
        raise ValueError(
            f"out_indices={out_indices} is invalid for {variant}: it has {num_stages} feature "
            f"stages, indices must be in [{-num_stages}, {num_stages - 1}] "
            f"(default {tuple(range(num_stages))})")
    return out_indices


def build_zoo_model(model_cls, variant, pretrained=False, *, num_stages, pretrained_filter_fn,
                    feature_cls="getter", **kwargs):
    """Build ``model_cls`` for ``variant`` through timm, loading weights when ``pretrained``.

    Pretrained weights are first resolved to a checked local file (see ``_pretrained``) and then
    handed to timm's own loader as ``pretrained_cfg_overlay['file']``.
    """
    feature_cfg = dict(out_indices=tuple(range(num_stages)), feature_cls=feature_cls)
    if kwargs.get("features_only"):
        feature_cfg["out_indices"] = _check_out_indices(
            variant, kwargs.pop("out_indices", feature_cfg["out_indices"]), num_stages)
    elif "out_indices" in kwargs:
        kwargs.pop("out_indices")  # only meaningful with features_only, as in timm

    checkpoint_file = None
    if pretrained:
        cfg = resolve_pretrained_cfg(variant, pretrained_cfg=kwargs.get("pretrained_cfg"),
                                     pretrained_cfg_overlay=kwargs.get("pretrained_cfg_overlay"))
        cfg = cfg.to_dict()
        checkpoint_file = resolve_checkpoint_file(variant, cfg, cache_dir=kwargs.get("cache_dir"))
        if checkpoint_file is not None:
            overlay = dict(kwargs.get("pretrained_cfg_overlay") or {})
            overlay["file"] = checkpoint_file
            kwargs["pretrained_cfg_overlay"] = overlay

    try:
        # Official releases pickle argparse.Namespace next to the weights (the same allowlist timm
        # applies to local files); nothing else is allowed.
        with torch.serialization.safe_globals([argparse.Namespace]):
            return build_model_with_cfg(
                model_cls, variant, pretrained, pretrained_filter_fn=pretrained_filter_fn,
                feature_cfg=feature_cfg, **kwargs)
    except (pickle.UnpicklingError, EOFError, RuntimeError, KeyError, ValueError) as e:
        if checkpoint_file is None or isinstance(e, PretrainedWeightsError):
            raise
        message = str(e)
        if "size mismatch" in message or "Missing key" in message or "Unexpected key" in message:
            hint = (f"the checkpoint {checkpoint_file} does not fit {variant}: is it the "
                    "checkpoint of another variant, or of another num_classes (pass num_classes= to "
                    "match it)?")
        else:
            hint = (f"the checkpoint {checkpoint_file} could not be read (damaged or not a "
                    "checkpoint); delete it if it is in the cache and call again, or:\n"
                    + _how_to_fix(variant, None, checkpoint_file))
        raise PretrainedWeightsError(f"loading pretrained weights for {variant} failed: {hint}\n"
                                     f"({type(e).__name__}: {message[:2000]})") from e

"""Convert an official checkpoint into a zoo ``.safetensors`` file (the form uploaded to a hub).

    # a standard variant, by zoo name
    python tools/convert.py cswin_tiny_224.pth --model cswin_tiny_224 --output cswin_tiny.safetensors
    # any official config: the official constructor's kwargs (or a golden-style config.json)
    python tools/convert.py ckpt.pth --family cswin --official-kwargs kwargs.json --output x.safetensors

The checkpoint goes through the family's ``checkpoint_filter_fn`` and is loaded strictly; the saved
file is reloaded into a fresh model whose outputs on a random input must equal the first model's.
"""
import argparse
import json
import os

import timm
import torch

import ops

from .. import __version__, get_family
from ..training.checkpoint import CheckpointError, read_checkpoint, sha256_of, write_safetensors


class ConversionError(Exception):
    """A checkpoint that cannot be read or does not fit the requested architecture."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="official checkpoint: .pth / .pt / .bin / .safetensors")
    arch = p.add_mutually_exclusive_group(required=True)
    arch.add_argument("--model", help="zoo model name (a standard variant), e.g. cswin_tiny_224")
    arch.add_argument("--family", help="zoo family, with --official-kwargs for a custom config")
    p.add_argument("--official-kwargs", metavar="JSON",
                   help="file with the official constructor's kwargs, or a config.json holding "
                        "'kwargs' (and 'official_class')")
    p.add_argument("--official-class", help="official class, e.g. models/cswin.py:CSWinTransformer")
    p.add_argument("--num-classes", type=int,
                   help="classifier size (default: the checkpoint's, read from its head weight)")
    p.add_argument("--output", required=True, help="the .safetensors file to write")
    args = p.parse_args(argv)
    if args.family and not args.official_kwargs:
        p.error("--family needs --official-kwargs")
    if args.model and (args.official_kwargs or args.official_class):
        p.error("--official-kwargs/--official-class go with --family, not --model")
    return args


def read_official_config(path, official_class=None):
    """(kwargs, official_class) from a kwargs JSON file or a golden-style config.json."""
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise ConversionError(f"cannot read official kwargs from {path}: {e}") from e
    if not isinstance(config, dict):
        raise ConversionError(f"{path} must hold a JSON object of keyword arguments")
    if isinstance(config.get("kwargs"), dict):
        return config["kwargs"], official_class or config.get("official_class")
    return config, official_class


def classifier_classes(state_dict, pretrained_cfg):
    """Rows of the checkpoint's classifier weight (0 if it has none), by the cfg's classifier name."""
    names = pretrained_cfg.get("classifier") or ()
    for name in [names] if isinstance(names, str) else names:
        weight = state_dict.get(f"{name}.weight")
        if weight is not None:
            return weight.shape[0]
    return 0


def build(args, raw, official):
    """``(make_model, model, state_dict)``: a function building the target architecture (called
    again for the verification model), the model and the checkpoint in zoo layout."""
    try:
        family = get_family(args.model or args.family)
    except KeyError as e:
        raise ConversionError(e.args[0]) from e
    if args.model:
        kwargs = {} if args.num_classes is None else dict(num_classes=args.num_classes)

        def make_model():
            return timm.create_model(args.model, **kwargs)
    else:
        kwargs, official_class = official
        if args.num_classes is not None:
            kwargs = dict(kwargs, num_classes=args.num_classes)

        def make_model():
            try:
                return family.create_from_official(kwargs, official_class)
            except (TypeError, ValueError) as e:
                raise ConversionError(
                    f"cannot build {args.family} from the official kwargs: {e}") from e

    def filtered(model):
        try:
            return family.checkpoint_filter_fn(raw, model)
        except (ValueError, KeyError, TypeError) as e:
            raise ConversionError(
                f"{args.checkpoint} is not a {family.name} checkpoint: {e}") from e

    model = make_model()
    state_dict = filtered(model)
    if args.model and args.num_classes is None:
        found = classifier_classes(state_dict, model.pretrained_cfg)
        if found != model.num_classes:
            print(f"num_classes {found}: read from the checkpoint's classifier (the cfg has "
                  f"{model.num_classes})")
            kwargs["num_classes"] = found
            model = make_model()
            state_dict = filtered(model)
    return make_model, model, state_dict


def verification_input(model, official):
    """A fixed random batch of one image at the model's (or the official config's) input size."""
    if official:
        size = official[0].get("img_size", 224)
        in_chans = official[0].get("in_chans", 3)
    else:
        in_chans, *size = model.pretrained_cfg["input_size"]
    height, width = (size, size) if isinstance(size, int) else tuple(size)[-2:]
    return torch.randn(1, in_chans, height, width, generator=torch.Generator().manual_seed(0))


def _listing(items, n=20, sep=", "):
    return sep.join(items[:n]) + (f"{sep}... ({len(items)} in all)" if len(items) > n else "")


def load_strict(model, state_dict, what):
    hint = ("Is it the checkpoint of another variant (--model) or config (--official-kwargs)? A "
            "classifier of another size needs --num-classes.")
    try:
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as e:  # shape mismatches
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip().startswith("size mismatch")]
        details = _listing(lines or [str(e).strip()], n=5, sep="\n  ")
        raise ConversionError(f"{what} does not fit the model:\n  {details}\n{hint}") from e
    if missing or unexpected:
        raise ConversionError(
            f"{what} does not fit the model:\n  missing keys: {_listing(missing) or 'none'}\n"
            f"  unexpected keys: {_listing(unexpected) or 'none'}\n{hint}")


def verify(make_model, model, path, official):
    """A fresh model loaded strictly from ``path`` must give exactly ``model``'s outputs."""
    fresh = make_model()
    load_strict(fresh, read_checkpoint(path), f"the saved file {path}")
    x = verification_input(model, official)
    with torch.no_grad(), ops.use_backend("reference"):
        expected, actual = model.eval()(x), fresh.eval()(x)
    if not torch.equal(expected, actual):
        raise ConversionError(f"verification failed: the reloaded {path} gives outputs up to "
                              f"{(expected - actual).abs().max().item():.3g} away from the original")


def convert(args):
    """Convert, save and verify; returns a summary dict."""
    official = None
    if args.family:
        official = read_official_config(args.official_kwargs, args.official_class)
    try:
        raw = read_checkpoint(args.checkpoint)
    except (FileNotFoundError, CheckpointError) as e:
        raise ConversionError(str(e)) from e
    make_model, model, state_dict = build(args, raw, official)
    load_strict(model, state_dict, f"checkpoint {args.checkpoint}")

    tensors = {k: v.detach().cpu().clone(memory_format=torch.contiguous_format)
               for k, v in model.state_dict().items()}
    family = args.family or get_family(args.model).name
    metadata = dict(format="pt", architecture=args.model or f"{family}:{type(model).__name__}",
                    family=family, num_classes=str(model.num_classes),
                    source_file=os.path.basename(args.checkpoint),
                    source_sha256=sha256_of(args.checkpoint), zoo_version=__version__)
    if official:
        metadata["official_kwargs"] = json.dumps(official[0], sort_keys=True)
        if official[1]:
            metadata["official_class"] = official[1]
    write_safetensors(tensors, args.output, metadata)

    try:
        verify(make_model, model, args.output, official)
    except ConversionError:
        os.remove(args.output)
        raise
    return dict(output=args.output, architecture=metadata["architecture"],
                params=sum(p.numel() for p in model.parameters()), tensors=len(tensors),
                num_classes=model.num_classes, sha256=sha256_of(args.output),
                bytes=os.path.getsize(args.output))


def run(argv=None):
    """Convert, save, verify and report; returns the summary dict."""
    summary = convert(parse_args(argv))
    print(f"wrote {summary['output']} ({summary['bytes'] / 2 ** 20:.1f} MiB): "
          f"{summary['architecture']}, {summary['params']:,} params, {summary['tensors']} tensors, "
          f"num_classes {summary['num_classes']}\n"
          f"verified: a fresh model loaded from it reproduces the outputs exactly\n"
          f"sha256 {summary['sha256']}")
    return summary


def main(argv=None):
    """Convert; returns the exit status 0 (a conversion error exits with its message)."""
    try:
        run(argv)
    except ConversionError as e:
        raise SystemExit(f"convert.py: error: {e}") from e
    return 0

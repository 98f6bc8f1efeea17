"""Validate any zoo or timm model: top-1 / top-5 on an ImageNet-style folder (``--data-dir``) or,
without one, on the embedded digits held-out split.

    python tools/validate.py --model cswin_tiny_224 --pretrained --data-dir /data/imagenet
    python tools/validate.py --model cswin_tiny_224 --checkpoint output/cswin_digits/cswin_tiny_224.safetensors \\
        --model-kwargs embed_dim=32 "depths=(1,2,2,1)" "num_heads=(2,4,8,8)" "split_sizes=(1,2,2,None)" \\
        --img-size 32 --crop-pct 1.0
    python tools/validate.py --model 'cswin_*' --pretrained --data-dir /data/imagenet --results-file r.csv

Flags are timm validate.py's where they apply. Preprocessing is the model's own pretrained cfg
(input size, crop_pct, interpolation, mean / std) through ``timm.data.resolve_data_config``, each
overridable by its flag; on the digits set the input size defaults to the digits' 32 pixels.
``--checkpoint`` takes ``.safetensors`` or ``.pth`` / ``.pth.tar`` files in the official or the zoo
layout (the family's ``checkpoint_filter_fn`` converts); ``--use-ema`` prefers the EMA weights of a
file that holds both. The class count is ``--num-classes``, else the checkpoint's head, else the
pretrained cfg's (``--pretrained``), else the data set's.

Prints one line per model and, with ``--results-file x.json | x.csv``, writes the results.
Problems with the inputs end the run with exit status 2 and one ``error: ...`` line on stderr.
"""
import argparse
import contextlib
import csv
import difflib
import json
import logging
import os
import sys
import time

from ._common import ParseKwargs, UsageError

_logger = logging.getLogger("backbones.validate")

RESULT_KEYS = ("model", "top1", "top5", "images", "img_size", "crop_pct", "interpolation",
               "param_count")
_WILDCARD = ("*", "?", "[")


def build_parser():
    p = argparse.ArgumentParser(
        prog="tools/validate.py",
        description="Top-1 / top-5 of zoo or timm models on an ImageNet-style folder or on the "
                    "embedded digits held-out split (timm validate.py's flags).")
    p.add_argument("data", nargs="?", metavar="DIR", default=None,
                   help="data root (same as --data-dir)")
    p.add_argument("--data-dir", metavar="DIR", default=None,
                   help="data root holding <split>/<class>/<image>; omit it to validate on the "
                        "embedded digits held-out split (10 classes)")
    p.add_argument("--dataset", default="",
                   help="'' (image folder, default) or a timm dataset name (torch/..., hfds/...)")
    p.add_argument("--split", default="val", help="split folder under the data root (default val)")
    p.add_argument("-m", "--model", required=True, metavar="NAME",
                   help="zoo or timm model name; wildcards (e.g. 'cswin_*') validate every match")
    p.add_argument("--pretrained", action="store_true", help="the model's pretrained weights")
    p.add_argument("--checkpoint", default="", metavar="FILE",
                   help=".safetensors / .pth / .pth.tar weights, official or zoo layout")
    p.add_argument("--use-ema", action="store_true",
                   help="load the EMA weights of a checkpoint that holds both")
    p.add_argument("--num-classes", type=int, default=None,
                   help="class count (default: the checkpoint's head, else the data set's)")
    p.add_argument("--model-kwargs", nargs="*", default={}, action=ParseKwargs, metavar="K=V",
                   help="extra timm.create_model kwargs (Python literals)")
    p.add_argument("--img-size", type=int, default=None, help="input image size")
    p.add_argument("--input-size", type=int, nargs=3, default=None, metavar=("C", "H", "W"),
                   help="input size (overrides --img-size)")
    p.add_argument("--crop-pct", type=float, default=None, help="center crop fraction")
    p.add_argument("--crop-mode", default=None, choices=("center", "squash", "border"),
                   help="crop mode")
    p.add_argument("--interpolation", default=None, help="resize interpolation (bicubic, ...)")
    p.add_argument("--mean", type=float, nargs="+", default=None, metavar="MEAN",
                   help="normalisation mean")
    p.add_argument("--std", type=float, nargs="+", default=None, metavar="STD",
                   help="normalisation std")
    p.add_argument("-b", "--batch-size", type=int, default=64, help="batch size (default 64)")
    p.add_argument("-j", "--workers", type=int, default=2, help="data-loader processes (default 2)")
    p.add_argument("--amp", action="store_true", help="autocast (fp16 on CUDA, bf16 on the CPU)")
    p.add_argument("--amp-dtype", default=None, choices=("float16", "bfloat16"),
                   help="autocast dtype")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    p.add_argument("--device", default=None,
                   help="cpu | cuda | cuda:N (default: cuda when available)")
    p.add_argument("--results-file", default="", metavar="FILE",
                   help="write the results as .json or .csv")
    return p


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------

class EachImageOnce:
    """Evaluation view of the checked image folder: each image is scored once, and a corrupt one
    is named, counted and left out (the training folder substitutes the next image, which here
    would score that one twice). Yields ``None`` for a skipped image; ``collate_present`` drops
    it from its batch."""

    def __init__(self, folder):
        self.folder = folder

    def __len__(self):
        return len(self.folder)

    @property
    def transform(self):
        return self.folder.transform

    @transform.setter
    def transform(self, value):
        self.folder.transform = value

    def __getitem__(self, index):
        from PIL import Image
        f = self.folder
        path = f.reader.filename(index, absolute=True)
        try:
            img, target = f.reader[index][:2]
            img = Image.open(img).convert(f.input_img_mode or "RGB")
        except (OSError, ValueError, SyntaxError) as exc:
            f.skip_counter.add()
            _logger.warning("skipped corrupt image %s (%s: %s)", path, type(exc).__name__, exc)
            return None
        if f.transform is not None:
            img = f.transform(img)
        return img, -1 if target is None else target


def collate_present(batch):
    from torch.utils.data import default_collate
    batch = [b for b in batch if b is not None]
    return default_collate(batch) if batch else None


def build_dataset(args):
    """(data set without its transform, its class count or None, a description, skip counter)."""
    from ..training.data import (DIGITS_CLASSES, CheckedImageFolder, DataError, DigitsDataset,
                                 SkipCounter, create_image_dataset)
    data_dir = args.data_dir or args.data
    if not data_dir:
        size = args.input_size[1] if args.input_size else (args.img_size or 32)
        return DigitsDataset("val", img_size=size), DIGITS_CLASSES, "digits/val", None
    if args.dataset in ("", "folder", "imagefolder") and not os.path.isdir(data_dir):
        raise DataError(f"data directory {data_dir!r} does not exist; pass --data-dir pointing at "
                        f"a folder with {args.split}/<class>/<image> (ImageNet layout), or leave "
                        "it out to validate on the embedded digits held-out split")
    counter = SkipCounter()
    ds = create_image_dataset(args.dataset, data_dir, args.split, transform=None,
                              skip_counter=counter)
    classes = getattr(getattr(ds, "reader", None), "class_to_idx", None)
    if isinstance(ds, CheckedImageFolder):
        ds = EachImageOnce(ds)
    return ds, len(classes) if classes else None, os.path.join(data_dir, args.split), counter


def data_config(args, net, digits):
    from timm.data import resolve_data_config
    img_size = args.img_size
    if digits and img_size is None and args.input_size is None:
        img_size = 32  # the digits' own size; upscaling 32 px digits to 224 informs nothing
    return resolve_data_config(
        dict(input_size=args.input_size, img_size=img_size, crop_pct=args.crop_pct,
             crop_mode=args.crop_mode, interpolation=args.interpolation, mean=args.mean,
             std=args.std),
        model=net)


# ----------------------------------------------------------------------------------------------
# Model and checkpoint
# ----------------------------------------------------------------------------------------------

def model_names(args):
    import timm

    from .. import list_zoo_models
    name = args.model
    if any(c in name for c in _WILDCARD):
        if args.checkpoint:
            raise UsageError(f"--checkpoint loads one model; --model {name!r} is a pattern")
        names = timm.list_models(name, pretrained=args.pretrained)
        if not names:
            raise UsageError(f"no {'pretrained ' if args.pretrained else ''}zoo or timm model "
                             f"matches {name!r} (import backbones is done; zoo models: "
                             f"{list_zoo_models()})")
        return names
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UsageError(f"unknown model {name!r}: not a zoo or timm model name (import backbones "
                         f"is done; zoo models: {list_zoo_models()}){hint}")
    return [name]


def read_checkpoint(path, use_ema):
    """The weights in ``path`` as a flat state dict: the EMA weights first with ``use_ema``, the
    live ones first otherwise."""
    from ..training.checkpoint import CheckpointError, read_state_dict
    try:
        return read_state_dict(path, use_ema=use_ema, what="--checkpoint")
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from exc
    except CheckpointError as exc:
        raise UsageError(f"{str(exc).splitlines()[0]}; expected a .safetensors or .pth state dict "
                         "(mmengine run checkpoints are for --resume: validate the exported "
                         ".safetensors)") from exc


def head_classes(net, state):
    """The class count of the head in ``state`` (in the model's layout), or None."""
    from ..training.checkpoint import head_keys
    for key in head_keys(net, state):
        if key.endswith("weight") and state[key].dim() >= 1:
            return int(state[key].shape[0])
    return None


def create_net(name, args, data_classes):
    import timm

    from ..training.checkpoint import load_weights, to_model_layout
    state = read_checkpoint(args.checkpoint, args.use_ema) if args.checkpoint else None
    num_classes = args.num_classes
    if num_classes is None and not args.pretrained:
        num_classes = data_classes
    kwargs = dict(args.model_kwargs)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    try:
        net = timm.create_model(name, pretrained=args.pretrained, **kwargs)
    except TypeError as exc:
        raise UsageError(f"cannot build {name} with --model-kwargs {args.model_kwargs}: {exc}") \
            from exc
    if state is not None:
        layout = to_model_layout(net, state)
        ckpt_classes = head_classes(net, layout)
        if ckpt_classes is not None and ckpt_classes != net.num_classes:
            if args.num_classes is not None:
                raise UsageError(f"--checkpoint {args.checkpoint} has a {ckpt_classes}-class head "
                                 f"but --num-classes is {args.num_classes}; drop --num-classes "
                                 "to validate the checkpoint's head")
            net.reset_classifier(ckpt_classes)
        try:
            load_weights(net, state, args.checkpoint, num_classes_given=False, flag="--checkpoint")
        except ValueError as exc:
            raise UsageError(f"{exc}; --model-kwargs given: {args.model_kwargs or '(none)'}") \
                from exc
    return net


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------

def evaluate(net, loader, device, amp_dtype=None, channels_last=False):
    """(top1, top5, images) with the training run's metric."""
    import torch

    from ..training.classification import TopKAccuracy
    metric = TopKAccuracy()
    images = 0
    autocast = torch.autocast(device.type, dtype=getattr(torch, amp_dtype)) if amp_dtype \
        else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        for batch in loader:
            if batch is None:  # every image of the batch was corrupt
                continue
            inputs, labels = batch[0].to(device, non_blocking=True), batch[1].to(device)
            if channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            logits = net(inputs).float()
            metric.process(None, [dict(logits=logits, labels=labels)])
            images += labels.numel()
    scores = metric.compute_metrics(metric.results)
    return scores["top1"], scores["top5"], images


def validate_one(name, args, dataset, data_classes, device):
    import torch
    from timm.data import create_transform

    net = create_net(name, args, data_classes)
    net.eval().to(device)
    if args.channels_last:
        net.to(memory_format=torch.channels_last)
    cfg = data_config(args, net, digits=dataset_is_digits(dataset))
    dataset.transform = create_transform(
        cfg["input_size"], is_training=False, interpolation=cfg["interpolation"],
        mean=cfg["mean"], std=cfg["std"], crop_pct=cfg["crop_pct"],
        crop_mode=cfg.get("crop_mode", "center"))
    if data_classes and net.num_classes and data_classes > net.num_classes:
        _logger.warning("%s has %d classes but the data set has %d: labels past the head never "
                        "count as hits", name, net.num_classes, data_classes)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size, shuffle=False, num_workers=args.workers,
        pin_memory=device.type == "cuda", collate_fn=collate_present)
    amp_dtype = None
    if args.amp:
        amp_dtype = args.amp_dtype or ("float16" if device.type == "cuda" else "bfloat16")
    t0 = time.perf_counter()
    top1, top5, images = evaluate(net, loader, device, amp_dtype, args.channels_last)
    seconds = time.perf_counter() - t0
    if images == 0:
        raise UsageError("no image could be decoded: nothing was validated")
    return dict(
        model=name, top1=round(top1, 4), top1_err=round(100 - top1, 4), top5=round(top5, 4),
        top5_err=round(100 - top5, 4), images=images, img_size=cfg["input_size"][-1],
        crop_pct=cfg["crop_pct"], interpolation=cfg["interpolation"],
        param_count=round(sum(p.numel() for p in net.parameters()) / 1e6, 4),
        num_classes=net.num_classes, s_per_img=round(seconds / images, 6),
        checkpoint=args.checkpoint or None, use_ema=bool(args.checkpoint and args.use_ema),
        amp=amp_dtype, device=str(device))


def dataset_is_digits(dataset):
    from ..training.data import DigitsDataset
    return isinstance(dataset, DigitsDataset)


def format_result(r):
    return (f"{r['model']} | top1 {r['top1']:.2f} | top5 {r['top5']:.2f} | {r['images']} images | "
            f"{r['img_size']}px | crop_pct {r['crop_pct']} | {r['interpolation']} | "
            f"{r['s_per_img']:.5f} s/img")


def write_results(path, results):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if path.lower().endswith(".json"):
        with open(path, "w") as f:
            json.dump(results, f, indent=2)
        return
    fields = list(RESULT_KEYS) + [k for r in results for k in r if k not in RESULT_KEYS]
    fields = list(dict.fromkeys(fields))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(results)


def resolve_device(args):
    import torch
    if not args.device:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(args.device)
    except RuntimeError as exc:
        raise UsageError(f"--device {args.device!r}: {exc}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device}: no CUDA device is available; use --device cpu")
    return device


def run(argv=None):
    """Validate every model the command line names; returns the list of result dicts (an
    ``error`` entry for a model of a sweep that failed)."""
    from ..training.data import DataError
    args = build_parser().parse_args(argv)
    if args.results_file and not args.results_file.lower().endswith((".json", ".csv")):
        raise UsageError(f"--results-file {args.results_file!r}: the extension must be .json or "
                         ".csv")
    if args.checkpoint and not os.path.isfile(args.checkpoint):
        raise UsageError(f"checkpoint file {args.checkpoint!r} does not exist")
    names = model_names(args)
    device = resolve_device(args)
    dataset, data_classes, data_desc, skipped = build_dataset(args)
    if len(names) > 1:
        print(f"validating {len(names)} models on {data_desc}: {', '.join(names)}")
    results = []
    for name in names:
        try:
            result = validate_one(name, args, dataset, data_classes, device)
        except (UsageError, DataError, ValueError, RuntimeError) as exc:
            if len(names) == 1:
                raise
            # one model failing (weights not cached, ...) does not stop a sweep
            print(f"error: {name}: {str(exc).splitlines()[0]}", file=sys.stderr)
            results.append(dict(model=name, error=str(exc)))
            continue
        result["data"] = data_desc
        print(format_result(result), flush=True)
        results.append(result)
    if skipped is not None and skipped.value:
        print(f"warning: {skipped.value} corrupt image(s) skipped (named above)", file=sys.stderr)
        for r in results:
            r["skipped_images"] = skipped.value
    if args.results_file:
        write_results(args.results_file, results)
    return results


def main(argv=None):
    """Validate; returns the exit status: 0, 1 when a model of a sweep failed, or 2 after printing
    ``error: ...`` for a problem with the inputs (argparse's own usage errors exit with 2 as
    well)."""
    from .. import PretrainedWeightsError
    from ..training.data import DataError
    try:
        results = run(argv)
    except (UsageError, DataError, PretrainedWeightsError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 1 if any("error" in r for r in results) else 0

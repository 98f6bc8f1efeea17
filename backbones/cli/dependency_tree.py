"""``zoo-dependency-tree``: draw DependencyViT's dependency tree, parts and saliency for images.

    zoo-dependency-tree photo.jpg --checkpoint output/run/dependencyvit_tiny_224.safetensors
    zoo-dependency-tree photo.jpg --model dependencyvit_lite_tiny_224 --layer 11 --num-parts 8
    zoo-dependency-tree a.jpg b.jpg --output-dir figures/      # one PNG per image

(``python tools/dependency_tree.py`` is the same command.)

Each PNG has four panels on the model's input crop (its data config: resize, centre crop):
the image; the dependency tree of one block (every patch joined to its parent, the patch it sends
most of its message to, lines more opaque for stronger edges; roots as rings; patches pruned by
Lite greyed out); the parts (subtrees, one colour each); and the saliency (received message mass)
as a heat map. Without ``--checkpoint`` the model has random weights (no DependencyViT weights
were ever released); the figure's footer says which weights drew it.
"""
import argparse
import os
import sys

from ._common import ParseKwargs, UsageError, load_image, run_cli

PROG = "zoo-dependency-tree"

# Distinct part colours (Tableau 10, then a second, darker cycle).
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
           (15, 60, 90), (128, 64, 7), (22, 80, 22), (107, 20, 20), (74, 52, 95), (70, 43, 38)]


def build_parser():
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", help="image files (anything PIL opens)")
    p.add_argument("--model", default="dependencyvit_tiny_224",
                   help="a DependencyViT zoo model (default: %(default)s)")
    p.add_argument("--checkpoint", help="trained weights (.pth / .safetensors; zoo or reference "
                                        "layout, any wrapper); default: random weights")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    p.add_argument("--layer", type=int, default=-1, help="block whose tree is drawn (default: "
                                                         "the last)")
    p.add_argument("--num-parts", type=int, default=6,
                   help="parts to cut the tree into (default: %(default)s; 0: one per tree)")
    p.add_argument("--output", help="PNG path (one image only); default <image>_dependency.png")
    p.add_argument("--output-dir", help="folder for the PNGs (<image name>_dependency.png)")
    p.add_argument("--scale", type=int, default=2, help="panel size = input size x scale")
    p.add_argument("--model-kwargs", nargs="*", default={}, action=ParseKwargs, metavar="K=V",
                   help="extra timm.create_model kwargs (Python literals)")
    return p


def build_model(args):
    import timm
    import torch

    import backbones
    from backbones.dependencyvit import DependencyViT
    from backbones.training.checkpoint import read_state_dict

    kwargs = dict(args.model_kwargs)
    if args.checkpoint:
        state = read_state_dict(args.checkpoint)
        head = state.get("head.weight")
        overlay = dict(file=args.checkpoint)
        if head is not None:
            overlay["num_classes"] = kwargs.setdefault("num_classes", head.shape[0])
        else:
            kwargs.setdefault("num_classes", 0)
        kwargs.update(pretrained=True, pretrained_cfg_overlay=overlay)
        weights = f"weights: {os.path.basename(args.checkpoint)}"
    else:
        torch.manual_seed(args.seed)
        weights = f"weights: RANDOM (seed {args.seed}; no DependencyViT weights were released)"
    if args.model not in backbones.list_zoo_models("dependencyvit"):
        raise UsageError(f"--model {args.model!r} is not a DependencyViT zoo model; choose one of "
                         f"{backbones.list_zoo_models('dependencyvit')}")
    try:
        model = timm.create_model(args.model, **kwargs).eval()
    except TypeError as e:
        raise UsageError(f"cannot build {args.model} with --model-kwargs {kwargs}: {e}") from e
    if not isinstance(model, DependencyViT):  # pragma: no cover - guarded by the name check
        raise UsageError(f"{args.model} is not a DependencyViT")
    return model, weights


def _heat(value):
    """Black -> red -> yellow -> white ramp for a value in [0, 1]."""
    v = max(0., min(1., float(value)))
    return (int(255 * min(1., 3 * v)), int(255 * min(1., max(0., 3 * v - 1))),
            int(255 * min(1., max(0., 3 * v - 2))))


def draw(image, out, layer, num_parts, scale, title):
    """The four-panel figure (PIL image) for one image's :class:`DependencyOutput` ``out``."""
    from PIL import Image, ImageDraw, ImageFont

    from backbones.dependency_tree import tree_edges

    gh, gw = out.grid_size
    H, W = out.image_size
    size = (W * scale, H * scale)
    base = image.resize(size, Image.BICUBIC)
    px, py = size[0] / gw, size[1] / gh
    k = out.layers.index(layer)
    parents = out.tree(layer)[0]
    block = out.layers[k]

    def centre(p):
        return ((p % gw + 0.5) * px, (p // gw + 0.5) * py)

    # tree
    tree = base.convert("RGBA")
    overlay = Image.new("RGBA", size, (0, 0, 0, 0))
    d = ImageDraw.Draw(overlay)
    for p in range(gh * gw):
        if parents[p] < 0:  # pruned by Lite
            x0, y0 = (p % gw) * px, (p // gw) * py
            d.rectangle([x0, y0, x0 + px, y0 + py], fill=(0, 0, 0, 150))
    edges = tree_edges(parents, out.masks[k][0], out.token_indices[k][0])
    strongest = max((w for _, _, w in edges), default=1.) or 1.
    for child, parent, w in edges:
        alpha = int(80 + 175 * min(1., w / strongest))
        (x0, y0), (x1, y1) = centre(child), centre(parent)
        d.line([x0, y0, x1, y1], fill=(0, 255, 255, alpha), width=max(1, scale))
        d.ellipse([x1 - scale, y1 - scale, x1 + scale, y1 + scale], fill=(0, 255, 255, alpha))
    r = 2.5 * scale
    for p in range(gh * gw):
        if parents[p] == p:
            x, y = centre(p)
            d.ellipse([x - r, y - r, x + r, y + r], outline=(255, 40, 40, 255), width=scale)
    tree = Image.alpha_composite(tree, overlay).convert("RGB")

    # parts
    labels = out.parts(layer, num_parts or None)[0].flatten().tolist()
    part_grid = Image.new("RGB", (gw, gh))
    part_grid.putdata([PALETTE[lab % len(PALETTE)] if lab >= 0 else (0, 0, 0) for lab in labels])
    parts = Image.blend(base, part_grid.resize(size, Image.NEAREST), 0.6)

    # saliency
    sal = out.saliency(layer, image_size=(size[1], size[0]))[0]
    # stretched to the image's own range for display (the API's saliency is divided by the max)
    sal = (sal - sal.min()) / (sal.max() - sal.min()).clamp_min(1e-12)
    heat_grid = Image.new("RGB", size)
    heat_grid.putdata([_heat(v) for v in sal.flatten().tolist()])
    saliency = Image.blend(base, heat_grid, 0.7)

    font = ImageFont.load_default()
    n_parts = len({lab for lab in labels if lab >= 0})
    captions = ["input", f"dependency tree (block {block})", f"parts ({n_parts} subtrees)",
                "saliency (received messages, min-max)"]
    pad, head, foot = 6, 18, 16
    figure = Image.new("RGB", (4 * size[0] + 5 * pad, size[1] + head + foot + pad), "white")
    fd = ImageDraw.Draw(figure)
    for i, (panel, caption) in enumerate(zip((base, tree, parts, saliency), captions)):
        x = pad + i * (size[0] + pad)
        figure.paste(panel, (x, head))
        fd.text((x, 3), caption, fill="black", font=font)
    fd.text((pad, head + size[1] + 3), title, fill="black", font=font)
    return figure


def output_path(args, image_path):
    if args.output:
        return args.output
    stem = os.path.splitext(os.path.basename(image_path))[0] + "_dependency.png"
    folder = args.output_dir or os.path.dirname(os.path.abspath(image_path))
    return os.path.join(folder, stem)


def run(argv=None):
    """Draw every image; returns the PNG paths written."""
    import torch

    args = build_parser().parse_args(argv)
    if args.output and len(args.images) > 1:
        raise UsageError("--output names one file: with several images use --output-dir")
    if args.num_parts < 0:
        raise UsageError(f"--num-parts must be >= 0, got {args.num_parts}")
    model, weights = build_model(args)
    if not -len(model.blocks) <= args.layer < len(model.blocks):
        raise UsageError(f"--layer {args.layer} is out of range: {args.model} has "
                         f"{len(model.blocks)} blocks")
    layer = args.layer % len(model.blocks)
    written = []
    for path in args.images:
        x, image = load_image(path, model)
        with torch.no_grad():
            out = model.forward_dependencies(x, layers=[layer])
        title = f"{args.model}  |  {weights}  |  {os.path.basename(path)}"
        figure = draw(image, out, layer, args.num_parts, args.scale, title)
        dst = output_path(args, path)
        os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
        figure.save(dst)
        written.append(dst)
        print(f"{path} -> {dst}")
    return written


def main(argv=None):
    return run_cli(run, PROG, argv)


if __name__ == "__main__":
    sys.exit(main())

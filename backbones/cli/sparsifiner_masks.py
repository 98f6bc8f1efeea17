"""What a Sparsifiner's connectivity predictor chose: for one query patch of an image, the keys it
attends in every block and head, drawn over the image as a PNG (the paper's figure, for any
checkpoint).

    zoo-sparsifiner-masks sparsifiner_deit_small_224 photo.jpg --query 120,80 --output masks.png
    zoo-sparsifiner-masks sparsifiner_deit_small_224 photo.jpg --checkpoint runs/x/model.safetensors

(``python tools/sparsifiner_masks.py`` is the same command.) One row per block: the image with the
query patch outlined, then one tile per head where the patches the query does not attend are
dimmed (and patches pruned by token pruning, if the model prunes, shaded red), then how many heads
attend each patch. The weights: ``--checkpoint FILE`` (official or zoo layout), else
``--pretrained-tag TAG`` (downloaded, e.g. ``dense_init_in1k``), else random, and the picture says
which. Problems with the inputs end the run with exit status 2 and one ``error:`` line.
"""
import argparse
import sys

import torch
from PIL import Image, ImageDraw

from ._common import ParseKwargs, UsageError, load_image, parse_query

TILE = 112


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="zoo-sparsifiner-masks",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="a zoo Sparsifiner model, e.g. sparsifiner_deit_small_224")
    p.add_argument("image", help="an image file")
    p.add_argument("--query", default=None, metavar="X,Y",
                   help="query pixel in the model's input (after resize and crop); default: the "
                        "centre")
    p.add_argument("--checkpoint", help="weights file (official or zoo layout)")
    p.add_argument("--pretrained-tag", help="download the weights of this pretrained tag")
    p.add_argument("--model-kwargs", nargs="*", default={}, action=ParseKwargs, metavar="K=V",
                   help="extra model kwargs (python literals), e.g. for a trained token-pruning "
                        "model: token_pruning_layers=(2,5,8)")
    p.add_argument("--blocks", nargs="+", type=int, metavar="I",
                   help="blocks to draw (default: every block)")
    p.add_argument("--output", default="sparsifiner_masks.png", help="PNG to write")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    return p.parse_args(argv)


def load_model(args):
    """(model in eval mode, what its weights are)."""
    import timm
    import backbones
    from backbones.sparsifiner import Sparsifiner
    if args.model not in backbones.list_zoo_models("sparsifiner"):
        raise UsageError(f"{args.model!r} is not a Sparsifiner model; choose one of "
                         f"{backbones.list_zoo_models('sparsifiner')}")
    kwargs = dict(args.model_kwargs)
    torch.manual_seed(args.seed)
    if args.checkpoint:
        from backbones.training.checkpoint import read_state_dict
        model = timm.create_model(args.model, **kwargs)
        state = read_state_dict(args.checkpoint, what="--checkpoint")
        model.load_state_dict(backbones.get_family("sparsifiner").checkpoint_filter_fn(state, model))
        source = f"weights: {args.checkpoint}"
    elif args.pretrained_tag:
        model = timm.create_model(f"{args.model}.{args.pretrained_tag}", pretrained=True, **kwargs)
        source = f"weights: pretrained tag {args.pretrained_tag}"
    else:
        model = timm.create_model(args.model, **kwargs)
        source = f"RANDOM weights (seed {args.seed}): the masks show the method, not a trained model"
    assert isinstance(model, Sparsifiner)
    return model.eval(), source


def _tile(image, grid, keys, pruned, query_patch):
    """The image with non-attended patches dimmed, pruned ones red, the query outlined."""
    gh, gw = grid
    tile = image.copy()
    overlay = Image.new("RGBA", tile.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    cell_w, cell_h = TILE / gw, TILE / gh
    for index in range(gh * gw):
        r, c = divmod(index, gw)
        box = [c * cell_w, r * cell_h, (c + 1) * cell_w, (r + 1) * cell_h]
        if pruned is not None and pruned[index]:
            draw.rectangle(box, fill=(200, 0, 0, 150))
        elif keys is not None and not keys[index]:
            draw.rectangle(box, fill=(0, 0, 0, 170))
    tile = Image.alpha_composite(tile.convert("RGBA"), overlay)
    r, c = divmod(query_patch, gw)
    ImageDraw.Draw(tile).rectangle([c * cell_w, r * cell_h, (c + 1) * cell_w - 1,
                                    (r + 1) * cell_h - 1], outline=(255, 255, 0), width=2)
    return tile.convert("RGB")


def _count_tile(counts, heads, grid):
    gh, gw = grid
    values = (counts.float() / heads * 255).round().to(torch.uint8).reshape(gh, gw).numpy()
    return Image.fromarray(values, mode="L").resize((TILE, TILE), Image.NEAREST).convert("RGB")


def draw(model, x, image, query, source, blocks=None):
    """The PNG's image: one row per block (query, one tile per head, heads per patch)."""
    with torch.no_grad():
        trace = model.forward_trace(x)
    depth = len(trace.layers)
    blocks = list(range(depth)) if blocks is None else list(blocks)
    bad = [b for b in blocks if not 0 <= b < depth]
    if bad:
        raise UsageError(f"--blocks {bad}: the model has blocks 0..{depth - 1}")
    gh, gw = model.grid_size
    qx, qy = query
    ph, pw = x.shape[-2] / gh, x.shape[-1] / gw
    query_patch = int(qy // ph) * gw + int(qx // pw)
    heads = trace.layers[0].attn_mask.shape[1]
    label_h = 16
    canvas = Image.new("RGB", ((heads + 2) * TILE, len(blocks) * (TILE + label_h) + 24), "white")
    pen = ImageDraw.Draw(canvas)
    pen.text((4, 4), f"{type(model).__name__} {getattr(model, 'pretrained_cfg', {}).get('architecture', '')}"
                     f" | query patch {query_patch} at ({qx},{qy}); every query also attends the "
                     f"class token | {source}", fill="black")
    alive, row = None, 0
    for i, layer in enumerate(trace.layers):
        if i not in blocks:
            if layer.token_mask is not None:
                alive = layer.token_mask[0]
            continue
        top = 24 + row * (TILE + label_h)
        row += 1
        # keys of patch query q: row q + 1 of the mask, patch columns 1..N-1
        keys = layer.attn_mask[0, :, query_patch + 1, 1:]
        pruned = None if alive is None else ~alive
        canvas.paste(_tile(image, (gh, gw), None, pruned, query_patch), (0, top + label_h))
        pen.text((4, top + 2), f"block {i}: query", fill="black")
        for h in range(heads):
            canvas.paste(_tile(image, (gh, gw), keys[h], pruned, query_patch),
                         ((h + 1) * TILE, top + label_h))
            pen.text(((h + 1) * TILE + 4, top + 2), f"head {h}: {int(keys[h].sum())} patches",
                     fill="black")
        canvas.paste(_count_tile(keys.sum(0), heads, (gh, gw)), ((heads + 1) * TILE, top + label_h))
        pen.text(((heads + 1) * TILE + 4, top + 2), "heads per key", fill="black")
        if layer.token_mask is not None:
            alive = layer.token_mask[0]
    return canvas


def main(argv=None):
    args = parse_args(argv)
    try:
        model, source = load_model(args)
        x, image = load_image(args.image, model)
        image = image.resize((TILE, TILE), Image.BICUBIC)
        query = parse_query(args.query, tuple(x.shape[-2:])[::-1], what="input")
        picture = draw(model, x, image, query, source, args.blocks)
    except (UsageError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    picture.save(args.output)
    print(f"wrote {args.output} ({picture.width}x{picture.height}): {source}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

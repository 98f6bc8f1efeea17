"""``zoo-visualize``: draw, layer by layer, what one query pixel's attention sees and weighs.

    zoo-visualize cswin_tiny_224 photo.jpg --query 240,180 --output cswin.png
    zoo-visualize biformer_tiny_224.in1k photo.jpg --query 240,180 --pretrained --layers all
    zoo-visualize litv2_small_224 photo.jpg --checkpoint runs/x/model.safetensors --layers 0 -1

(``python tools/visualize.py`` is the same command.) The image is resized, whole, to the model's
input size, and ``--query X,Y`` is a pixel of the original image (default: its centre). The PNG
has the input with the query marked, then one panel per attention layer: pixels the query's
attention cannot reach in grey, the others coloured by the weight it gives them (dark purple:
least, yellow: most, within the panel), the query's token at that layer's resolution boxed in
yellow. What a panel shows per family is its ``query_attention`` (``backbones.query_attention``):
CSWin's two stripes, HaloNet's block and halo, the regions BiFormer's router picked for this image,
LITv2's Hi-Fi window beside its Lo-Fi pooled map, SHViT's single head, the keys Sparsifiner's
predictor kept, the message DependencyViT's query sends (and its path up the tree), ELA's and
ULSAM's gate maps.

Weights: ``--pretrained`` (the model name's tag, else its default; downloaded), ``--checkpoint
FILE`` (official or zoo layout), else random (``--seed``); the picture says which. Problems with
the inputs end the run with exit status 2 and one ``error:`` line.
"""
import argparse
import os
import sys

from ._common import ParseKwargs, UsageError, parse_query, run_cli

PROG = "zoo-visualize"
COLUMNS = 4          # panels per row
PAD = 6              # between panels and around the figure
HEADER_H = 34        # two lines of text above the panels
CAPTION_H = 42       # three lines under each panel: layer, what it shows, a note
FOOTER_H = 18        # the legend
DEFAULT_LAYERS = 6   # layers drawn by default in a model without stages
GREY_LEVEL = 0.45    # brightness of pixels outside the support
HEAT_ALPHA = 0.65    # opacity of the weight colours over the image
# dark purple -> red -> orange -> pale yellow (perceptually ordered, like matplotlib's inferno)
RAMP = ((0, 0, 4), (87, 16, 110), (188, 55, 84), (249, 142, 9), (252, 255, 164))
RANDOM_WEIGHTS = "RANDOM weights (seed {seed}): the maps show the mechanism, not what a trained " \
                 "model attends"


def build_parser():
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a zoo model, optionally with a pretrained tag "
                                 "(cswin_tiny_224, cswin_tiny_224.in1k)")
    p.add_argument("image", help="an image file (anything PIL opens)")
    p.add_argument("--query", metavar="X,Y", help="the query pixel of the original image "
                                                  "(default: its centre)")
    p.add_argument("--output", help="PNG to write (default: <model>_attention.png)")
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--pretrained", action="store_true",
                         help="the model's pretrained weights (downloaded)")
    weights.add_argument("--checkpoint", metavar="FILE",
                         help="weights file, official or zoo layout (.pth / .safetensors)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    p.add_argument("--layers", nargs="+", metavar="I",
                   help="attention layers to draw, by index (negative from the end) or 'all' "
                        "(default: the last of every stage, or 6 spread over an isotropic model)")
    p.add_argument("--model-kwargs", nargs="*", default={}, action=ParseKwargs, metavar="K=V",
                   help="extra timm.create_model kwargs (Python literals)")
    p.add_argument("--colors", type=int, metavar="N",
                   help="write a palette PNG of N colours (2..256): a third of the size or less, "
                        "for documentation (default: full colour)")
    return p


# ---------------------------------------------------------------------------------------------
# Inputs

def resolve_family(name):
    """The family record of zoo model ``name``, which must declare ``query_attention``."""
    import backbones
    try:
        family = backbones.get_family(name)
    except KeyError:
        raise UsageError(f"{name!r} is not a zoo model; the zoo's families are "
                         f"{backbones.list_families()} (backbones.list_zoo_models() lists the "
                         "models)") from None
    if family.query_attention is None:
        raise UsageError(f"the {family.name} family declares no query_attention in its Family "
                         "record: there is nothing to draw for its models")
    return family


def load_model(args):
    """(model in eval mode, what its weights are)."""
    import timm
    import torch

    from .._pretrained import PretrainedWeightsError
    kwargs = dict(args.model_kwargs)
    torch.manual_seed(args.seed)
    try:
        model = timm.create_model(args.model, pretrained=args.pretrained, **kwargs)
    except TypeError as e:
        raise UsageError(f"cannot build {args.model} with --model-kwargs {kwargs}: {e}") from e
    except (PretrainedWeightsError, OSError, RuntimeError) as e:
        if not args.pretrained:
            raise
        raise UsageError(f"cannot load the pretrained weights of {args.model}: {e}\n(pass "
                         "--checkpoint FILE for a local file, or neither flag for random "
                         "weights)") from e
    if args.checkpoint:
        from ..training.checkpoint import CheckpointError, load_weights, read_state_dict
        try:
            state = read_state_dict(args.checkpoint, what="--checkpoint")
            # the classifier draws nothing here: a head of another class count is dropped
            load_weights(model, state, args.checkpoint, num_classes_given=True,
                         flag="--checkpoint")
        except (FileNotFoundError, CheckpointError) as e:
            raise UsageError(f"{str(e).splitlines()[0]} (--checkpoint takes a .safetensors / .pth "
                             f"state dict of {args.model}, official or zoo layout; one without a "
                             "classifier needs --model-kwargs num_classes=0)") from e
        weights = f"weights: {os.path.basename(args.checkpoint)}"
    elif args.pretrained:
        cfg = model.pretrained_cfg
        weights = f"pretrained weights: {cfg.get('architecture')}.{cfg.get('tag')}"
    else:
        weights = RANDOM_WEIGHTS.format(seed=args.seed)
    return model.eval(), weights


def load_image(path, model):
    """``(x, shown, original size)``: the whole image resized to the model's input size and
    normalised as its data config says (no crop: every pixel of the original can be a query),
    and the resized image for drawing over."""
    import timm.data
    import torch
    from PIL import Image

    try:
        original = Image.open(path).convert("RGB")
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read image {path}: {e} (give a PNG / JPEG / ... file)") from e
    cfg = timm.data.resolve_data_config({}, model=model)
    height, width = cfg["input_size"][-2:]
    shown = original.resize((width, height), Image.BICUBIC)
    x = torch.frombuffer(bytearray(shown.tobytes()), dtype=torch.uint8).view(height, width, 3)
    x = x.permute(2, 0, 1).float().div(255)
    x = (x - torch.tensor(cfg["mean"]).view(3, 1, 1)) / torch.tensor(cfg["std"]).view(3, 1, 1)
    return x.unsqueeze(0), shown, original.size


def select_layers(maps, chosen=None):
    """The maps of the layers ``chosen`` (indices into the model's attention layers in forward
    order, negative from the end, or ``['all']``); by default the last layer of every stage, or
    ``DEFAULT_LAYERS`` spread evenly over a model without stages."""
    names = list(dict.fromkeys(m.layer for m in maps))
    if chosen is None:
        stages = {m.layer: m.stage for m in maps}
        if any(s is not None for s in stages.values()):
            last = {stages[name]: name for name in names}
            keep = set(last.values())
        else:
            n = min(DEFAULT_LAYERS, len(names))
            keep = {names[round(k * (len(names) - 1) / max(n - 1, 1))] for k in range(n)}
    elif chosen == ["all"]:
        keep = set(names)
    else:
        try:
            indices = [int(i) for i in chosen]
        except ValueError:
            raise UsageError(f"--layers takes layer indices or 'all', got {chosen}") from None
        bad = [i for i in indices if not -len(names) <= i < len(names)]
        if bad:
            raise UsageError(f"--layers {bad}: the model has {len(names)} attention layers, "
                             f"0 ({names[0]}) .. {len(names) - 1} ({names[-1]})")
        keep = {names[i] for i in indices}
    return [m for m in maps if m.layer in keep], len(names)


# ---------------------------------------------------------------------------------------------
# Drawing

def _ramp(values):
    """Colours ``(..., 3)`` in [0, 1] of ``values`` in [0, 1] along ``RAMP``."""
    import torch
    stops = torch.tensor(RAMP, dtype=torch.float32) / 255
    position = values.clamp(0, 1) * (len(RAMP) - 1)
    low = position.floor().long().clamp(max=len(RAMP) - 2)
    t = (position - low)[..., None]
    return stops[low] * (1 - t) + stops[low + 1] * t


def _mark_query(pen, point):
    x, y = point
    for colour, width in (((0, 0, 0), 3), ((255, 255, 255), 1)):
        pen.line([x - 6, y, x + 6, y], fill=colour, width=width)
        pen.line([x, y - 6, x, y + 6], fill=colour, width=width)


def draw_panel(image, result, query):
    """``image`` (the model's input, PIL) with one :class:`QueryAttention` over it."""
    import torch
    from PIL import Image, ImageDraw

    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    pixels = pixels.view(image.height, image.width, 3).float() / 255
    support, weights = result.support, result.weights.float()
    inside = weights[support]
    if inside.numel() and float(inside.max()) > float(inside.min()):
        level = (weights - inside.min()) / (inside.max() - inside.min())
    else:  # a flat map (or an empty support): the middle of the ramp
        level = torch.full_like(weights, 0.5)
    grey = pixels.mean(-1, keepdim=True).expand_as(pixels) * GREY_LEVEL
    heat = pixels * (1 - HEAT_ALPHA) + _ramp(level) * HEAT_ALPHA
    out = torch.where(support[..., None], heat, grey)
    # the support's outline, drawn just outside it: a one-token stripe stays visible inside
    near = torch.nn.functional.max_pool2d(support[None, None].float(), 3, 1, 1)[0, 0] > 0.5
    out[near & ~support] = torch.tensor([0., 1., 1.])
    panel = Image.fromarray((out * 255).round().byte().numpy())
    pen = ImageDraw.Draw(panel)
    if len(result.path) > 1:
        pen.line(result.path, fill=(0, 255, 255), width=2)
        rx, ry = result.path[-1]
        pen.ellipse([rx - 4, ry - 4, rx + 4, ry + 4], outline=(255, 40, 40), width=2)
    x0, y0, x1, y1 = result.query_box
    pen.rectangle([x0, y0, x1 - 1, y1 - 1], outline=(255, 255, 0))
    _mark_query(pen, query)
    return panel


def figure_size(num_panels, panel_size):
    """``(width, height)`` of a figure of ``num_panels`` panels of ``panel_size = (w, h)``
    (the input panel included). Always ``COLUMNS`` panels wide: the header and the legend fit
    however few panels there are."""
    rows = -(-num_panels // COLUMNS)
    width, height = panel_size
    return (PAD + COLUMNS * (width + PAD),
            HEADER_H + rows * (height + CAPTION_H + PAD) + FOOTER_H)


def _fit(text, font, width):
    """``text`` cut (with an ellipsis) to ``width`` pixels."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "...") > width:
        text = text[:-1]
    return text + "..."


def draw(image, maps, query, header):
    """The figure: ``header`` (two lines), the input with the query, then one panel per map,
    captioned."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    width, height = image.size
    panels = [(image.copy(), ["input (the whole image, resized)",
                              f"query pixel ({query[0]},{query[1]}) of the input", ""])]
    ImageDraw.Draw(panels[0][0]).rectangle([0, 0, width - 1, height - 1], outline=(0, 0, 0))
    _mark_query(ImageDraw.Draw(panels[0][0]), query)
    for m in maps:
        panels.append((draw_panel(image, m, query), [m.layer, m.label, m.note]))
    figure = Image.new("RGB", figure_size(len(panels), (width, height)), "white")
    pen = ImageDraw.Draw(figure)
    full = figure.width - 2 * PAD
    for line, text in enumerate(header[:2]):
        pen.text((PAD, 3 + 15 * line), _fit(text, font, full), fill="black", font=font)
    for index, (panel, caption) in enumerate(panels):
        row, column = divmod(index, COLUMNS)
        x, y = PAD + column * (width + PAD), HEADER_H + row * (height + CAPTION_H + PAD)
        figure.paste(panel, (x, y))
        for line, text in enumerate(caption):
            pen.text((x, y + height + 2 + 13 * line), _fit(text, font, width), fill="black",
                     font=font)
    pen.text((PAD, figure.height - FOOTER_H + 3), _fit(
        "grey: out of the query's reach | colour: weight within the panel, dark purple (least) "
        "to yellow (most) | yellow box: the query's token | cyan line: path up the tree",
        font, full), fill="black", font=font)
    return figure


# ---------------------------------------------------------------------------------------------

def run(argv=None):
    """Draw one picture; returns ``(path written, figure)``."""
    args = build_parser().parse_args(argv)
    if args.colors is not None and not 2 <= args.colors <= 256:
        raise UsageError(f"--colors takes 2..256 (a PNG palette), got {args.colors}")
    family = resolve_family(args.model)
    if args.checkpoint and not os.path.isfile(args.checkpoint):
        raise UsageError(f"--checkpoint {args.checkpoint} is not a file")
    model, weights = load_model(args)
    x, shown, original_size = load_image(args.image, model)
    qx, qy = parse_query(args.query, original_size)
    query = (qx * shown.width // original_size[0], qy * shown.height // original_size[1])
    maps = family.query_attention(model, x, query)
    maps, total = select_layers(maps, args.layers)
    header = [f"{args.model} | {weights}",
              f"{os.path.basename(args.image)} ({original_size[0]}x{original_size[1]}), query "
              f"({qx},{qy}) -> ({query[0]},{query[1]}) of the {shown.width}x{shown.height} "
              f"input | {len(maps)} panels from {total} attention layers"]
    figure = draw(shown, maps, query, header)
    if args.colors:
        figure = figure.quantize(colors=args.colors)
    output = args.output or f"{args.model}_attention.png"
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    figure.save(output)
    print(f"wrote {output} ({figure.width}x{figure.height}): {weights}")
    return output, figure


def main(argv=None):
    return run_cli(run, PROG, argv)


if __name__ == "__main__":
    sys.exit(main())

"""What several command lines share: their usage error, ``--model-kwargs`` parsing, and the
picture tools' image loading."""
import argparse
import ast
import sys

__all__ = ["ParseKwargs", "UsageError", "load_image", "parse_query", "run_cli"]


class UsageError(Exception):
    """A problem with the command line or with what it names (exit status 2)."""


class ParseKwargs(argparse.Action):
    """``key=value`` pairs; values are Python literals where they parse (``depths=(1,2,2,1)``,
    ``split_sizes=(1,2,2,None)``, ``drop_rate=0.1``), strings otherwise."""

    def __call__(self, parser, namespace, values, option_string=None):
        kwargs = dict(getattr(namespace, self.dest) or {})
        for item in values:
            key, sep, value = item.partition("=")
            if not sep or not key:
                parser.error(f"{option_string} expects key=value pairs, got {item!r}")
            try:
                kwargs[key] = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                kwargs[key] = value
        setattr(namespace, self.dest, kwargs)


def load_image(path, model):
    """``(x, shown)``: the model's eval input ``(1, C, H, W)`` for the image file ``path`` (its
    pretrained_cfg's resize, crop and normalisation) and the same crop as an RGB PIL image, for
    drawing over."""
    import timm.data
    from PIL import Image

    try:
        image = Image.open(path).convert("RGB")
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read image {path}: {e}") from e
    cfg = timm.data.resolve_data_config({}, model=model)
    x = timm.data.create_transform(**cfg)(image).unsqueeze(0)
    mean = x.new_tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = x.new_tensor(cfg["std"]).view(1, 3, 1, 1)
    shown = ((x * std + mean).clamp(0, 1)[0].permute(1, 2, 0) * 255).round().byte().numpy()
    return x, Image.fromarray(shown)


def parse_query(text, size, what="image"):
    """``--query X,Y`` of an image of ``size = (width, height)`` (default: the centre); ``what``
    names it in errors (the original ``image``, or the model's ``input``)."""
    width, height = size
    if text is None:
        return width // 2, height // 2
    try:
        qx, qy = (int(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"--query takes X,Y in pixels of the image, e.g. --query 120,80; got "
                         f"{text!r}") from None
    if not (0 <= qx < width and 0 <= qy < height):
        raise UsageError(f"--query {qx},{qy} lies outside the {width}x{height} {what}: pick "
                         f"0 <= X < {width} and 0 <= Y < {height}")
    return qx, qy


def run_cli(run, prog, argv=None):
    """A picture tool's exit status: 0, or 2 after one ``<prog>: error: ...`` line for a
    :class:`UsageError`."""
    try:
        run(argv)
    except UsageError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    return 0

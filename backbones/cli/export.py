"""``zoo-export``: zoo models as a ``torch.export`` program (``.pt2``) and an ONNX file, checked
against the eager model on a real photo.

    zoo-export shvit_s1_224 --output exported/
    zoo-export cswin_tiny_224 --checkpoint cswin_tiny.safetensors --output exported/ --formats onnx
    zoo-export ulsam_mobilenetv1_050_e_224 shvit_s1_224 --output exported/ --table export.md
    zoo-export halonet_h0_256 --static-batch 1 --output exported/    # HaloNet: no dynamic batch

(``python tools/export.py`` is the same command; ONNX needs ``pip install -e ".[export]"``.)

Writes ``DIR/<model>.pt2`` and ``DIR/<model>.onnx`` from one ``torch.export`` trace on the ops'
reference path (the Triton kernels are not exportable). Both files carry the model's own
preprocessing (timm's ``resolve_data_config``: input size, mean, std, interpolation, crop_pct), the
model name, the zoo version, the weights and the dynamic axes; :func:`read_metadata` reads them
back (``.pt2``: the ``zoo_metadata.json`` extra file; ONNX: ``metadata_props``, one JSON value a
key). The batch axis is dynamic (1 .. ``--max-batch``, halved where the reference ops' memory
chunking breaks the range); height and width are dynamic (from twice the network's stride to
``--max-size``) where the family takes any input size and torch.export can keep them symbolic,
square only where the graph branches on ``H == W``, static otherwise; the output, the metadata and
the table say which and why (``--table``: one row a file, ``export s`` being the trace plus the
writing of that format).

Each file is read back and run against the eager model on a real photo (``--image``; default
Chelsea the cat, scikit-image's CC0 sample photo, shipped in backbones/cli/data) preprocessed with
the model's transforms, then on a batch of three views of it and, where height / width are
dynamic, on the photo at a second, non-square size. The largest absolute difference is printed;
one above ``--atol + --rtol * max |eager logit|`` fails the run (exit status 1), unless the file
is no further from the eager model in float64 than twice eager float32 is (top-k choices, as
Sparsifiner's, flip near-ties under any float32 rounding, eager's own included). A family whose
record says it cannot export (``backbones.get_family(...).export``) fails with that reason (exit
status 2).

Without ``--pretrained`` / ``--checkpoint`` the weights are random (``--seed``), which checks the
export, not the accuracy; the output says so.
"""
import argparse
import collections
import contextlib
import difflib
import io
import json
import os
import shlex
import sys
import time
import zipfile

from ._common import ParseKwargs, UsageError

PROG = "zoo-export"
FORMATS = ("pt2", "onnx")
DEFAULT_IMAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "chelsea.jpg")
INPUT_NAME, OUTPUT_NAME = "image", "logits"
METADATA_FILE = "zoo_metadata.json"  # the .pt2 archive's extra file
AXIS_NAMES = {0: "batch", 2: "height", 3: "width"}
BATCH_CHECK = 3  # the batch size of the dynamic-batch check: neither the traced 2 nor 1
TABLE_COLUMNS = ("model", "format", "dynamic axes", "file size", "max abs diff vs eager",
                 "export s", "status")

__all__ = ["ExportError", "MismatchError", "build_parser", "export_model", "judge", "main",
           "read_metadata", "run"]


class ExportError(Exception):
    """A model that cannot be exported with the options given (exit status 2)."""


class MismatchError(Exception):
    """An exported file whose output differs from the eager model's (exit status 1)."""

    def __init__(self, message, max_abs_diff=None):
        super().__init__(message)
        self.max_abs_diff = max_abs_diff


def build_parser():
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", metavar="MODEL", help="zoo model names")
    p.add_argument("--output", required=True, metavar="DIR",
                   help="folder for <model>.pt2 and <model>.onnx (created if missing)")
    p.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS),
                   help="what to write (default: both)")
    p.add_argument("--pretrained", action="store_true", help="the model's pretrained weights")
    p.add_argument("--checkpoint", default="", metavar="FILE",
                   help=".safetensors / .pth weights, official or zoo layout (one model only)")
    p.add_argument("--use-ema", action="store_true",
                   help="the EMA weights of a checkpoint that holds both")
    p.add_argument("--num-classes", type=int, default=None,
                   help="class count (default: the checkpoint's head, else the model's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    p.add_argument("--model-kwargs", nargs="*", default={}, action=ParseKwargs, metavar="K=V",
                   help="extra timm.create_model kwargs (Python literals)")
    p.add_argument("--image", default=None, metavar="FILE",
                   help="the photo the files are checked on (default: Chelsea the cat, shipped "
                        "with the zoo)")
    p.add_argument("--atol", type=float, default=1e-6,
                   help="a file fails when max |diff| vs eager exceeds atol + rtol * max |eager "
                        "logit| (default atol %(default)s)")
    p.add_argument("--rtol", type=float, default=1e-4,
                   help="(default %(default)s); beyond it a file still passes when it is no "
                        "further from the eager model in float64 than twice eager float32 is "
                        "(models with top-k choices, e.g. Sparsifiner, differ by their own "
                        "float32 rounding)")
    p.add_argument("--max-batch", type=int, default=32,
                   help="largest batch the files take (default %(default)s); the reference ops "
                        "split large calls in memory-sized chunks, which bounds the range that "
                        "one traced program covers")
    p.add_argument("--static-batch", type=int, default=None, metavar="N",
                   help="export for exactly N images (no dynamic batch): the only way for a "
                        "family whose record says its batch cannot be dynamic")
    p.add_argument("--max-size", type=int, default=None, metavar="PIXELS",
                   help="largest height / width where they are dynamic (default: twice the "
                        "model's input size)")
    p.add_argument("--static-size", action="store_true",
                   help="keep height / width at the model's input size even where they could "
                        "be dynamic (faster: no symbolic-size trace is tried)")
    p.add_argument("--no-onnx-optimize", dest="onnx_optimize", action="store_false",
                   help="skip onnxscript's graph optimisation of the ONNX file (much faster on "
                        "large graphs; onnxruntime optimises the graph when it loads it anyway)")
    p.add_argument("--table", default=None, metavar="FILE.md",
                   help="write a Markdown table of the results")
    return p


# ----------------------------------------------------------------------------------------------
# Model, preprocessing, inputs
# ----------------------------------------------------------------------------------------------

def check_names(names):
    import timm

    import backbones
    zoo = backbones.list_zoo_models()
    for name in names:
        if name not in zoo:
            close = difflib.get_close_matches(name, zoo, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            known = "a timm model, not a zoo model" if timm.is_model(name) else "not a zoo model"
            raise UsageError(f"{name!r} is {known}: zoo-export exports the zoo's models "
                             f"(backbones.list_zoo_models()){hint}")


def build_model(name, args):
    """``(model in eval mode, description of its weights)``."""
    import torch

    from .validate import create_net
    torch.manual_seed(args.seed)
    model = create_net(name, args, None).eval()
    if args.checkpoint:
        weights = f"checkpoint {os.path.basename(args.checkpoint)}"
    elif args.pretrained:
        weights = f"pretrained {model.pretrained_cfg.get('tag') or 'default'}"
    else:
        weights = f"RANDOM (seed {args.seed})"
    return model, weights


def preprocessing(model):
    """The model's own eval preprocessing, as timm resolves it (JSON-able)."""
    import timm.data
    cfg = timm.data.resolve_data_config({}, model=model)
    return dict(input_size=list(cfg["input_size"]), mean=list(cfg["mean"]), std=list(cfg["std"]),
                interpolation=cfg["interpolation"], crop_pct=cfg["crop_pct"],
                crop_mode=cfg.get("crop_mode", "center"))


def load_photo(path):
    from PIL import Image
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read --image {path}: {exc}; pass a photo PIL can open") from exc


def photo_tensor(photo, prep, size=None):
    """``photo`` through the model's eval transform, at ``size`` ``(H, W)`` if given: ``(1, C, H,
    W)``."""
    import timm.data
    input_size = prep["input_size"] if size is None else [prep["input_size"][0], *size]
    transform = timm.data.create_transform(
        input_size=tuple(input_size), interpolation=prep["interpolation"], mean=prep["mean"],
        std=prep["std"], crop_pct=prep["crop_pct"], crop_mode=prep["crop_mode"])
    return transform(photo).unsqueeze(0)


def photo_batch(x, n):
    """``n`` views of the photo ``x`` (itself, mirrored, upside down, ...): a batch of real images
    whose rows differ, so a program that mixed up the rows would show."""
    import torch
    views = [x, x.flip(-1), x.flip(-2), x.flip(-1, -2)]
    return torch.cat([views[i % len(views)] for i in range(n)])


# ----------------------------------------------------------------------------------------------
# torch.export
# ----------------------------------------------------------------------------------------------

def _first_line(exc):
    """The line of an export error that says what went wrong: torch's constraint errors list the
    guards that failed as ``- ...`` lines under a headline."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    detail = next((line for line in lines if line.startswith("- ")), None)
    text = detail[2:] if detail else (lines[0] if lines else "")
    return f"{type(exc).__name__}: {text}"[:300]


def _trace(model, sample, dynamic_shapes):
    import torch

    import ops
    with torch.no_grad(), ops.use_backend("reference"):
        return torch.export.export(model, (sample,), dynamic_shapes=(dynamic_shapes,))


def input_shape(program):
    """The shape of the program's image input (ints, and SymInts for its symbolic axes)."""
    user_inputs = program.graph_signature.user_inputs
    return next(n for n in program.graph.nodes
                if n.op == "placeholder" and n.name in user_inputs).meta["val"].shape


def dynamic_axes_of(program):
    """``{axis: {"name", "min", "max"}}`` of the program's input: the axes it left symbolic, with
    the range torch.export proved it valid for (``max`` None: unbounded)."""
    import torch
    axes = {}
    for axis, size in enumerate(input_shape(program)):
        if isinstance(size, torch.SymInt):
            bounds = program.range_constraints[size.node.expr]
            upper = int(bounds.upper) if bounds.upper.is_finite else None
            axes[axis] = dict(name=AXIS_NAMES.get(axis, f"axis{axis}"), min=int(bounds.lower),
                              max=upper, symbol=str(size.node.expr))
    if 2 in axes and 3 in axes and axes[2]["symbol"] == axes[3]["symbol"]:
        axes[2]["name"] = axes[3]["name"] = "side"  # square inputs: one symbol for both
    return axes


class _Shape:
    """What torch.export's guards read of the input: ``L['x'].size()`` (``x``: the name of the
    forward's argument)."""

    def __init__(self, size):
        self._size = size

    def size(self):
        return self._size


def _axis_samples(axes, axis, traced):
    if axis not in axes:
        return [traced]
    low, high = axes[axis]["min"], axes[axis]["max"] or 4 * traced
    if axis == 0:
        return sorted({low, min(low + 1, high), min(BATCH_CHECK, high), traced, high})
    return sorted({low, low + 1, traced, high - 1, high, *range(low, high + 1, 7)})


def failing_guard(program, channels):
    """A guard torch.export attached to ``program`` beyond its axes' ranges that fails for some
    input within them (e.g. ``H == W`` for a branch on it), or None. The ``.pt2`` module checks
    these on every call; the ONNX file loses them and would be silently wrong there.

    torch keeps them only as Python source (``_guards_code``; where a torch version has none, the
    checks on a second batch and size remain the safeguard), so each is evaluated on sampled sizes:
    the batch's ends, height and width every 7 pixels (a step no stride divides) and at the ends,
    in every combination."""
    import math
    import torch
    guards = list(getattr(program, "_guards_code", None) or [])
    if not guards:
        return None
    axes = dynamic_axes_of(program)
    traced = [None if isinstance(s, torch.SymInt) else int(s) for s in input_shape(program)]
    batches = _axis_samples(axes, 0, traced[0] or 2)
    heights = _axis_samples(axes, 2, traced[2] or axes[2]["min"])
    widths = _axis_samples(axes, 3, traced[3] or axes[3]["min"])
    square = axes.get(2, {}).get("name") == "side"
    compiled = [(text, compile(text, "<torch.export guard>", "eval")) for text in guards]
    for batch in batches:
        for height in heights:
            for width in ([height] if square else widths):
                shape = _Shape((batch, channels, height, width))
                scope = dict(L=collections.defaultdict(lambda: shape), torch=torch, math=math)
                for text, code in compiled:
                    try:
                        holds = eval(code, scope)  # noqa: S307 (torch's own guard source)
                    except Exception:  # a guard on something else than sizes: not provable here
                        holds = False
                    if not holds:
                        return f"{text} (fails at {batch}x{channels}x{height}x{width})"
    return None


def trace_batch(model, sample, args):
    """``(program at the input size, its largest batch, why that is below --max-batch or None)``.

    The reference ops split calls whose memory grows with the batch into chunks (DependencyViT,
    BiFormer), and one traced program holds only while the chunking does not change: where
    torch.export finds that the range breaks it, the range is halved until it holds."""
    from torch.export import Dim
    channels = sample.shape[1]
    if args.static_batch is not None:
        try:
            program = _trace(model, sample, {0: Dim.STATIC})
        except Exception as exc:
            raise ExportError(f"torch.export fails ({_first_line(exc)})") from exc
        return program, args.static_batch, None
    max_batch, note = args.max_batch, None
    while True:
        try:
            program = _trace(model, sample, {0: Dim("batch", min=1, max=max_batch)})
        except Exception as exc:
            reason, range_bound = _first_line(exc), "values of batch" in str(exc)
        else:
            guard = failing_guard(program, channels)
            if guard is None:
                return program, max_batch, note
            reason, range_bound = f"torch.export guards {guard}", "size()[0]" in guard
        if not range_bound or max_batch // 2 < BATCH_CHECK:
            raise ExportError(f"torch.export fails with a dynamic batch ({reason}); pass "
                              "--static-batch N for a fixed batch")
        max_batch //= 2
        note = note or f"batch up to {max_batch}, not {args.max_batch}: {reason}"


def trace_program(model, sample, args, family):
    """``(ExportedProgram, what limits its height / width or None, what limits its batch or
    None)``.

    The batch is symbolic (1 .. ``--max-batch``, see :func:`trace_batch`) unless
    ``--static-batch``. Where the family takes any input size, height and width are then traced
    symbolic from twice the network's stride (a 1x1 last map would specialise broadcasting) to
    ``--max-size``; if the graph holds only for square inputs, one symbolic side; if torch.export
    cannot keep them symbolic at all (windows that must divide the map, ...), the input size."""
    from torch.export import Dim
    program, max_batch, batch_note = trace_batch(model, sample, args)
    shapes = {0: Dim.STATIC if args.static_batch is not None else
              Dim("batch", min=1, max=max_batch)}
    height, width = sample.shape[2:]
    smallest = 2 * max(info["reduction"] for info in model.feature_info)
    largest = args.max_size or 2 * max(height, width)
    if not family.any_input_size:
        return program, f"static: the {family.name} family takes only its input size", batch_note
    if args.static_size:
        return program, "static: --static-size", batch_note
    if not smallest <= min(height, width) <= max(height, width) <= largest:
        return program, f"static: the input size is outside {smallest}-{largest}", batch_note
    try:
        sized = _trace(model, sample, {**shapes, 2: Dim("height", min=smallest, max=largest),
                                       3: Dim("width", min=smallest, max=largest)})
    except Exception as exc:  # torch.export raises many kinds; any means "not symbolic"
        return (program, f"static: torch.export cannot keep them symbolic ({_first_line(exc)})",
                batch_note)
    guard = failing_guard(sized, sample.shape[1])
    if guard is None:
        return sized, None, batch_note
    side = Dim("side", min=smallest, max=largest)
    try:
        square = _trace(model, sample, {**shapes, 2: side, 3: side})
    except Exception:
        square = None
    if square is not None and failing_guard(square, sample.shape[1]) is None:
        return square, f"square only: torch.export guards {guard}", batch_note
    return program, f"static: torch.export guards {guard}", batch_note


# ----------------------------------------------------------------------------------------------
# Files and their metadata
# ----------------------------------------------------------------------------------------------

def _onnx_export(program, sample, path, axes, metadata, optimize=True):
    """The ONNX file of ``program`` with the input / output axes named and ``metadata`` in its
    ``metadata_props`` (one JSON value a key)."""
    try:
        import onnx
        import onnxscript  # noqa: F401  (torch.onnx's exporter needs it; fail here, clearly)
        import torch.onnx
    except ImportError as exc:
        raise UsageError(f"ONNX export needs the export extra ({exc}): pip install -e "
                         "\".[export]\", or pass --formats pt2") from exc
    log = io.StringIO()
    try:  # the exporter narrates every step on stdout
        with contextlib.redirect_stdout(log):
            onnx_program = torch.onnx.export(program, (sample,), input_names=[INPUT_NAME],
                                             output_names=[OUTPUT_NAME], dynamo=True,
                                             optimize=optimize)
    except Exception as exc:
        raise ExportError(f"torch.onnx.export fails: {_first_line(exc)}\n"
                          f"{log.getvalue()[-2000:]}") from exc
    proto = onnx_program.model_proto
    # torch.export's symbols (s77, ...) become the axis names ONNX tools show
    names = {a["symbol"]: a["name"] for a in axes.values()}
    for value in list(proto.graph.input) + list(proto.graph.output) + list(proto.graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in names:
                dim.dim_param = names[dim.dim_param]
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=json.dumps(value))
    onnx.save(proto, path)


def read_metadata(path):
    """The zoo's metadata of an exported ``.pt2`` or ``.onnx`` file: ``model``, ``zoo_version``,
    ``weights``, ``preprocessing`` (input_size, mean, std, interpolation, crop_pct, crop_mode),
    ``dynamic_axes`` (``{"0": {"name": "batch", "min": 1, "max": 32}, ...}``), ``size_note``
    (why height / width are static or square only, else None), ``batch_note`` (why the batch
    range is below ``--max-batch``, else None), ``input_name``, ``output_name``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"exported file {path} does not exist")
    if path.endswith(".pt2"):
        try:
            with zipfile.ZipFile(path) as archive:
                # a PT2 archive keeps extra files under <archive name>/extra/
                member = next((n for n in archive.namelist()
                               if n.endswith(f"/extra/{METADATA_FILE}")), None)
                if member is None:
                    raise ValueError(f"{path} has no {METADATA_FILE}: not written by {PROG}")
                return json.loads(archive.read(member))
        except zipfile.BadZipFile as exc:
            raise ValueError(f"{path} is not a .pt2 archive ({exc})") from exc
    if path.endswith(".onnx"):
        import onnx
        proto = onnx.load(path, load_external_data=False)
        metadata = {p.key: json.loads(p.value) for p in proto.metadata_props}
        if "model" not in metadata:
            raise ValueError(f"{path} has no zoo metadata: not written by {PROG}")
        return metadata
    raise ValueError(f"{path}: expected a .pt2 or .onnx file")


# ----------------------------------------------------------------------------------------------
# Checks against eager
# ----------------------------------------------------------------------------------------------

def check_inputs(photo, prep, axes, static_batch):
    """``[(label, input)]``: the photo, a batch of three views (dynamic batch) and the photo at a
    second size (dynamic height / width; non-square unless the program takes square inputs only),
    each inside the program's ranges."""
    x = photo_tensor(photo, prep)
    if static_batch is not None:
        return [(f"photo x{static_batch}", photo_batch(x, static_batch))]
    checks = [("photo", x), (f"batch {BATCH_CHECK}", photo_batch(x, BATCH_CHECK))]
    if 2 in axes and 3 in axes:
        # odd sides (no stride divides them) between the smallest side and the input size
        height = max(axes[2]["min"], (axes[2]["min"] + prep["input_size"][1]) // 2 | 1)
        width = height if axes[2]["name"] == "side" else \
            max(axes[3]["min"], min(height + 38, axes[3]["max"] or height + 38))
        checks.append((f"{height}x{width} photo", photo_tensor(photo, prep, (height, width))))
    return checks


def judge(got, want, atol, rtol, exact=None):
    """``(max |got - want|, None or why it passes beyond the tolerance)`` for an exported file's
    output ``got`` against the eager float32 output ``want``; raises :class:`MismatchError` when
    they differ.

    The tolerance, ``atol + rtol * max |want|``, scales with the largest logit, not each one:
    logits near zero would fail any relative check, and random-weight heads give logits as small as
    1e-4, where a fixed atol alone passes anything. Beyond it, ``exact()`` (the eager model in
    float64) decides: ``got`` passes when it is no further from the exact output than twice eager
    float32 is. Discrete choices (Sparsifiner's top-k keys) flip near-ties under any float32
    rounding, eager's own included, so such models differ by more than rounding does elsewhere."""
    import torch
    got = torch.as_tensor(got)
    if got.shape != want.shape:
        raise MismatchError(f"output shape {tuple(got.shape)}, eager {tuple(want.shape)}")
    diff = (got - want).abs().max().item()
    scale = want.abs().max().item()
    if diff <= atol + rtol * scale:
        return diff, None
    message = (f"max |diff| {diff:.3g} exceeds --atol {atol:g} + --rtol {rtol:g} x max |eager| "
               f"({scale:.3g})")
    if exact is not None:
        reference = exact().to(want.dtype)
        own, off = (want - reference).abs().max().item(), (got - reference).abs().max().item()
        if off <= 2 * own:
            return diff, (f"{off:.2g} from float64 eager, eager float32 itself {own:.2g}: the "
                          "model's own float32 rounding")
        message += f", and float64 eager is {off:.3g} from it but only {own:.3g} from eager"
    raise MismatchError(message, diff)


def float64_eager(model):
    """``x -> the model's output in float64``: the exact reference of :func:`judge`, built on
    first use (a float64 copy of the model)."""
    import copy

    import torch

    import ops
    copies = []

    def forward(x):
        if not copies:
            copies.append(copy.deepcopy(model).double())
        with torch.no_grad(), ops.use_backend("reference"):
            return copies[0](x.double())
    return forward


def run_pt2(path):
    import torch
    module = torch.export.load(path).module()
    return lambda x: module(x)


def run_onnx(path):
    import onnxruntime
    import torch
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.log_severity_level = 3  # errors only: its optimiser's notes are not the user's business
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0])


RUNNERS = {"pt2": run_pt2, "onnx": run_onnx}


def compare(fmt, path, checks, eager, atol, rtol, exact=None):
    """Run the file ``path`` on every check input; ``([(label, max |diff|)], notes)`` (see
    :func:`judge`). Raises :class:`MismatchError` when an output differs from eager's."""
    import torch
    forward = RUNNERS[fmt](path)
    diffs, notes = [], []
    with torch.no_grad():
        for (label, x), want in zip(checks, eager):
            try:
                got = forward(x)
            except Exception as exc:  # a runtime's own error on an input it claims to take
                raise MismatchError(f"{os.path.basename(path)} fails on the {label} "
                                    f"{tuple(x.shape)}: {_first_line(exc)}") from exc
            try:
                diff, note = judge(got, want, atol, rtol,
                                   exact and (lambda x=x: exact(x)))
            except MismatchError as exc:
                raise MismatchError(f"{os.path.basename(path)} differs from the eager model on "
                                    f"the {label}: {exc}", exc.max_abs_diff) from exc
            diffs.append((label, diff))
            if note:
                notes.append(f"{label}: {note}")
    return diffs, notes


# ----------------------------------------------------------------------------------------------
# One model
# ----------------------------------------------------------------------------------------------

def describe_axes(axes, input_size, static_batch):
    """``batch 1-32, height 64-448, width 64-448`` and the like, for people."""
    parts = [f"batch {static_batch} (static)"] if static_batch is not None else []
    for axis in sorted(axes):
        a = axes[axis]
        if axis == 3 and a["name"] == "side":
            continue
        name = "height = width" if a["name"] == "side" else a["name"]
        parts.append(f"{name} {a['min']}-{a['max'] if a['max'] is not None else 'any'}")
    if 2 not in axes:
        parts.append(f"{input_size[1]}x{input_size[2]} static")
    return ", ".join(parts)


def _size(path):
    size = os.path.getsize(path)
    return f"{size / 2 ** 20:.1f} MB" if size >= 2 ** 20 else f"{size / 2 ** 10:.0f} KB"


def export_model(name, args, photo):
    """Export ``name`` to every format of ``args.formats`` and check each file against eager;
    returns one result dict a format, whose ``status`` is ``'ok'`` (followed by what limits height
    / width, if anything) or ``'error: ...'`` where the file differs from eager. Raises
    :class:`ExportError` (cannot export) or :class:`UsageError`."""
    import torch

    import backbones
    import ops
    from .. import __version__
    family = backbones.get_family(name)
    if family.export is not None and args.static_batch is None:
        raise ExportError(f"{name} cannot be exported: {family.export}")
    model, weights = build_model(name, args)
    print(f"{name}: weights {weights}"
          + ("; random weights check the export, not the accuracy: pass --pretrained or "
             "--checkpoint" if weights.startswith("RANDOM") else ""))
    prep = preprocessing(model)
    sample = photo_batch(photo_tensor(photo, prep), args.static_batch or 2)
    start = time.perf_counter()
    program, size_note, batch_note = trace_program(model, sample, args, family)
    trace_s = time.perf_counter() - start
    axes = dynamic_axes_of(program)
    if args.static_batch is None and 0 not in axes:
        raise ExportError(f"torch.export specialised the batch of {name} to {sample.shape[0]}; "
                          "pass --static-batch N for a fixed batch")
    dynamic = describe_axes(axes, prep["input_size"], args.static_batch)
    limits = ([batch_note] if batch_note else []) + (
        [f"height / width {size_note}"] if size_note else [])
    print(f"{name}: torch.export in {trace_s:.1f} s: {dynamic}"
          + "".join(f"; {limit}" for limit in limits))
    metadata = dict(model=name, zoo_version=__version__, weights=weights, preprocessing=prep,
                    dynamic_axes={str(a): {k: v for k, v in d.items() if k != "symbol"}
                                  for a, d in axes.items()},
                    size_note=size_note, batch_note=batch_note, input_name=INPUT_NAME,
                    output_name=OUTPUT_NAME)

    checks = check_inputs(photo, prep, axes, args.static_batch)
    with torch.no_grad(), ops.use_backend("reference"):
        eager = [model(x) for _, x in checks]
    max_logit = max(y.abs().max().item() for y in eager)
    exact = float64_eager(model)
    os.makedirs(args.output, exist_ok=True)
    results = []
    for fmt in args.formats:
        path = os.path.join(args.output, f"{name}.{fmt}")
        start = time.perf_counter()
        if fmt == "pt2":
            torch.export.save(program, path, extra_files={METADATA_FILE: json.dumps(metadata)})
            seconds = trace_s + time.perf_counter() - start
        else:
            _onnx_export(program, sample, path, axes, metadata, args.onnx_optimize)
            seconds = trace_s + time.perf_counter() - start
        result = dict(model=name, format=fmt, path=path, dynamic_axes=dynamic,
                      file_size=_size(path), export_s=seconds, weights=weights, diffs=None,
                      max_abs_diff=None, max_abs_logit=max_logit, status="ok")
        results.append(result)
        try:
            result["diffs"], notes = compare(fmt, path, checks, eager, args.atol, args.rtol, exact)
        except MismatchError as exc:
            # the file stays for inspection; the run fails (exit status 1)
            result["status"] = f"error: {exc}"
            result["max_abs_diff"] = exc.max_abs_diff
            print(f"{PROG}: error: {exc}", file=sys.stderr, flush=True)
            continue
        result["max_abs_diff"] = max(d for _, d in result["diffs"])
        result["status"] = "; ".join(["ok"] + notes[:1] + limits)
        print(f"{path}: {result['file_size']}, max |diff| vs eager "
              + ", ".join(f"{d:.2e} ({label})" for label, d in result["diffs"]) + " -> ok"
              + "".join(f"\n  {note}" for note in notes), flush=True)
    return results


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------

def write_table(path, results, argv):
    rows = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    for r in results:
        diff, scale = r.get("max_abs_diff"), r.get("max_abs_logit")
        if diff == 0:
            diff = "0 (bit-exact)"
        elif diff is not None and scale:
            diff = f"{diff:.2e} ({diff / scale:.0e} of max logit)"
        cells = (r["model"], r.get("format", "-"), r.get("dynamic_axes", "-"),
                 r.get("file_size", "-"), "-" if diff is None else str(diff),
                 f"{r['export_s']:.1f}" if r.get("export_s") else "-",
                 r["status"].replace("|", "\\|").replace("\n", " "))
        rows.append("| " + " | ".join(cells) + " |")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(f"`{shlex.join([PROG] + list(argv))}`\n\n" + "\n".join(rows) + "\n")


def run(argv=None):
    """Export every model the command line names; returns one result dict a (model, format), and
    one with ``status`` ``'error: ...'`` for a model that failed (the others still run)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    check_names(args.models)
    if args.checkpoint and len(args.models) > 1:
        raise UsageError("--checkpoint holds the weights of one model; export one at a time")
    if args.checkpoint and args.pretrained:
        raise UsageError("--pretrained and --checkpoint both name the weights; pass one")
    if args.checkpoint and not os.path.isfile(args.checkpoint):
        raise UsageError(f"checkpoint file {args.checkpoint!r} does not exist")
    for flag, value in (("--max-batch", args.max_batch), ("--static-batch", args.static_batch)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}")
    if args.max_batch < BATCH_CHECK and args.static_batch is None:
        raise UsageError(f"--max-batch must be >= {BATCH_CHECK} (the batch the export is checked "
                         "on); pass --static-batch N for a fixed batch")
    if args.atol < 0 or args.rtol < 0:
        raise UsageError("--atol and --rtol must be >= 0")
    photo = load_photo(args.image or DEFAULT_IMAGE)
    results = []
    for name in args.models:
        try:
            results += export_model(name, args, photo)
        except ExportError as exc:
            if len(args.models) == 1 and args.table is None:
                raise
            message = str(exc) if str(exc).startswith(name) else f"{name}: {exc}"
            print(f"{PROG}: error: {message}", file=sys.stderr)
            results.append(dict(model=name, status=f"error: {str(exc).splitlines()[0]}"))
    if args.table:
        write_table(args.table, results, argv)
        print(f"table -> {args.table}")
    return results


def main(argv=None):
    """Export; returns the exit status: 0, 1 when an exported file differs from eager (or, with
    several models, when one failed), 2 after ``error: ...`` for a problem with the inputs or a
    model that cannot be exported."""
    from .. import PretrainedWeightsError
    try:
        results = run(argv)
    except (UsageError, ExportError, PretrainedWeightsError, FileNotFoundError, ValueError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    return 1 if any(r["status"].startswith("error") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())

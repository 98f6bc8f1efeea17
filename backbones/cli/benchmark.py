"""Parameters, GMACs, latency, throughput and peak memory of zoo models (and any timm model).

    zoo-benchmark                                  # every zoo model, CPU, batch 1 and 8
    zoo-benchmark --params-only                    # params + GMACs only, quick
    zoo-benchmark --models 'cswin_*' --device cuda --amp bf16 --batch-sizes 1 64 256
    zoo-benchmark --models cswin_tiny_224 --device cuda --amp bf16 --bench train --compile
    zoo-benchmark --models cswin_tiny_224 --compare --paper --csv out.csv
    zoo-benchmark --models biformer_tiny_224 --official ~/src/BiFormer   # beside the authors' code
    zoo-benchmark --models halonet26t_256 shvit_s4_256 --paired --iters 30  # call by call
    zoo-benchmark --families shvit --comparators --plot chart.png   # top-1 against latency
    zoo-benchmark --results results/ --readme README.md   # every model: results/, README table

(``python tools/benchmark.py`` is the same command.)

``--plot PATH.png``: each model's published ImageNet top-1 (the family record's paper_results;
for timm models the comparator table of :mod:`backbones.cli.results`) against its measured latency
at one batch size, or its throughput (``--plot-x``, ``--plot-batch``); see :mod:`.chart`.

``--results DIR``: every zoo model and every comparator (``--models`` / ``--families`` /
``--comparators`` choose fewer), inference at ``--batch-sizes`` then a training step at
``--train-batch``, each in a process of its own, into ``DIR/benchmark-<device>.csv`` (one row per
model, rewritten after each: ``--resume`` goes on with a killed run), rendered into
``benchmark-<device>.md`` and ``.png``; ``--readme README.md`` rewrites the README's table from
every ``DIR/benchmark-*.csv``, ``--report-only`` renders without measuring.

GMACs: fvcore ``FlopCountAnalysis`` at batch 1 and the model's pretrained_cfg input size (or
``--img-size``), one multiply-add counted once (the papers' "FLOPs"), with
``aten::scaled_dot_product_attention`` counted as ``batch * heads * Lq * Lk * (d_qk + d_v)``. It is
always counted on the PyTorch reference path of ``ops`` (the Triton kernels are invisible to a
trace). Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` (weights included); on the CPU the
increase of resident memory over the built model, each model running in its own subprocess.

``--official DIR``: also time the authors' model from a local clone of the official repository
(the family record's ``official_entrypoints``; its own requirements installed), in its own
subprocess. That worker first loads the official model's random weights into ours through the
family's ``checkpoint_filter_fn`` and reports the largest output difference, so both rows time the
same function.

``--paired``: latency of each zoo model and its timm twin (the family record's ``timm_equivalents``),
its official model (with ``--official``) or any ``--versus`` model, pair by pair in one process,
on the same weights and batch, one call of each in turn (who goes first alternates). Both see the
same moments of a shared machine's load, so the median of the per-pair ratios is the robust
comparison where ``--compare``'s medians (separate windows of time) scatter. No memory column.
"""
import argparse
import contextlib
import difflib
import fnmatch
import importlib
import importlib.machinery
import json
import os
import re
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings

import timm
import torch
import torch.nn.functional as F
from tqdm import tqdm

import backbones
import ops
from . import chart, report, results
from ._common import UsageError

PROG = "zoo-benchmark"
WORKER_PREFIX = "@@benchmark-result "
# Ops whose absence from fvcore's count would hide real work (element-wise ones do not matter).
MATMUL_LIKE = re.compile(r"mm\b|matmul|einsum|linear|conv|attention|dot|bilinear")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", metavar="NAME",
                   help="model names or fnmatch patterns (patterns match zoo models, or timm's "
                        "when no zoo model matches); default: every zoo model")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8], metavar="B")
    p.add_argument("--bench", choices=("inference", "train"), default="inference",
                   help="train times forward + backward + an SGD step")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per case (default 1)")
    p.add_argument("--iters", type=int, default=3, help="timed calls per case (default 3)")
    p.add_argument("--max-seconds", type=float, default=20.,
                   help="stop a case's timed calls once they took this long, after at least one "
                        "(default 20; raise it with --iters for steadier numbers on big models)")
    p.add_argument("--rounds", type=int, default=1,
                   help="run the whole list of models this many times, in turn, and pool each "
                        "case's timed calls: rows meant to be compared (--compare, --official) "
                        "then share the machine's load drift (default 1)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--amp", choices=("bf16", "fp16"), help="autocast dtype (default float32)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", nargs="?", const="inductor", metavar="BACKEND",
                   help="time torch.compile(model, backend=BACKEND) (default backend inductor); "
                        "the warm-up calls compile")
    p.add_argument("--backend", choices=("triton", "reference"),
                   help="ops backend (ops.use_backend); default: triton on CUDA, reference on CPU")
    p.add_argument("--img-size", type=int, help="input resolution instead of the model's")
    p.add_argument("--params-only", action="store_true", help="params and GMACs, no timing")
    p.add_argument("--compare", action="store_true",
                   help="also run timm's model of the same architecture, where timm has one")
    p.add_argument("--official", nargs="+", metavar="DIR",
                   help="local clones of official repositories: also time the authors' model of "
                        "each zoo model whose family names one (its record's official_entrypoints)")
    p.add_argument("--paper", action="store_true",
                   help="add the paper's numbers (the family record's paper_results)")
    p.add_argument("--csv", metavar="PATH", help="write one row per (model, batch size)")
    p.add_argument("--markdown", metavar="PATH", help="write the printed table")
    p.add_argument("--paired", action="store_true",
                   help="time each zoo model and its timm twin call by call in turn in one "
                        "process (latency only); report the median of the per-pair time ratios")
    p.add_argument("--versus", nargs="+", metavar="NAME",
                   help="with --paired: also pair each zoo model with these timm / zoo models "
                        "(e.g. the dense model a sparse one starts from), sharing the weights "
                        "both have")
    p.add_argument("--families", nargs="+", metavar="FAMILY",
                   help="the zoo models of these families (backbones.list_families()), besides "
                        "any --models")
    p.add_argument("--comparators", nargs="*", metavar="NAME",
                   help="also run these timm models (none named: every model of the built-in "
                        "comparator table, DeiT / Swin / ConvNeXt / EfficientViT, whose published "
                        "top-1 the chart and results use); --results runs the whole table unless "
                        "--models or --families restrict the run")
    p.add_argument("--plot", metavar="PATH.png",
                   help="draw each model's published top-1 against its measured speed")
    p.add_argument("--plot-x", choices=chart.X_AXES, default="latency",
                   help="the chart's x axis: latency (ms, default) or throughput (images/s)")
    p.add_argument("--plot-batch", type=int, metavar="B",
                   help="the batch size the chart's x axis is measured at (default: the smallest "
                        "of --batch-sizes for latency, the largest for throughput)")
    p.add_argument("--results", metavar="DIR",
                   help="measure every zoo model and comparator (inference at --batch-sizes, a "
                        "training step at --train-batch) into DIR/benchmark-<device>.csv, model "
                        "by model, and render DIR/benchmark-<device>.md and .png from it")
    p.add_argument("--train-batch", type=int, default=8, metavar="B",
                   help="with --results: the training step's batch size (default 8; 0: none)")
    p.add_argument("--resume", action="store_true",
                   help="with --results: skip the models the CSV already has a row for, without "
                        "error (a killed run goes on where it stopped)")
    p.add_argument("--fresh", action="store_true",
                   help="with --results: drop the CSV's rows first (another machine or settings)")
    p.add_argument("--report-only", action="store_true",
                   help="with --results: measure nothing, render the Markdown, chart and "
                        "--readme table from the CSV(s) as they are")
    p.add_argument("--readme", metavar="README.md",
                   help="with --results: rewrite the table between the README's "
                        f"{results.README_START} and {results.README_END} lines from every "
                        "DIR/benchmark-*.csv")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one model, JSON settings
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- model list

def resolve_models(patterns):
    """Zoo models by default; names and fnmatch patterns otherwise. Unknown names exit."""
    zoo = backbones.list_zoo_models()
    if not patterns:
        return zoo
    names = []
    for pattern in patterns:
        if any(c in pattern for c in "*?["):
            found = fnmatch.filter(zoo, pattern) or timm.list_models(pattern)
            if not found:
                raise SystemExit(f"{PROG}: error: no zoo or timm model matches {pattern!r}")
        elif timm.is_model(pattern):
            found = [pattern]
        else:
            close = difflib.get_close_matches(pattern, zoo + timm.list_models(), n=3)
            raise SystemExit(f"{PROG}: error: unknown model {pattern!r}"
                             + (f"; did you mean {', '.join(close)}?" if close else "")
                             + " (zoo models: backbones.list_zoo_models())")
        names += [n for n in found if n not in names]
    return names


def is_zoo_model(name):
    return name.split(".")[0] in backbones.list_zoo_models()


def zoo_family(name):
    """The :class:`backbones.Family` record of zoo model ``name``; None for timm models."""
    return backbones.get_family(name) if is_zoo_model(name) else None


def with_timm_twins(names):
    """``[(name, is_twin)]`` with timm's model of the same architecture after each zoo model that
    has one (the record's ``timm_equivalents``), and notes for those that have none."""
    cases, notes = [], []
    for name in names:
        cases.append((name, False))
        if not is_zoo_model(name):
            continue
        twin = zoo_family(name).timm_equivalents.get(name.split(".")[0])
        if twin:
            cases.append((twin, True))
        else:
            notes.append(f"--compare: timm has no twin of {name} (no timm_equivalents entry in its family record)")
    return cases, notes


def with_official_twins(names, repos):
    """``[(name, official_repo_or_None)]``: each zoo model, then its official twin when one of
    ``repos`` holds the file of its family's ``official_entrypoints`` entry; notes for the rest."""
    cases, notes = [], []
    for name in names:
        cases.append((name, None))
        entry = zoo_family(name).official_entrypoints.get(name.split(".")[0])
        if not entry:
            notes.append(f"--official: no official entrypoint is known for {name}")
            continue
        path = entry.split(":")[0]
        found = [r for r in repos if os.path.isfile(os.path.join(r, path))]
        if not found:
            notes.append(f"--official: {name} needs {path} of "
                         f"{zoo_family(name).official_repo or 'its official repository'}; "
                         f"none of {', '.join(repos)} has it")
            continue
        cases.append((name, os.path.abspath(found[0])))
    return cases, notes


def import_official(repo, module_path):
    """Import ``module_path`` (``models/biformer.py``) from an official repository. Its top-level
    packages may share names with ours (BiFormer has an ``ops``): while it imports, our modules of
    those names are set aside and a finder resolves those names in ``repo`` first (ahead of an
    editable install's finder); afterwards the official modules leave ``sys.modules`` again (the
    imported code keeps its own references)."""
    tops = {n[:-3] if n.endswith(".py") else n for n in os.listdir(repo)
            if n.endswith(".py") or os.path.isdir(os.path.join(repo, n))}

    class RepoFirst:
        @staticmethod
        def find_spec(fullname, path=None, target=None):
            if fullname.split(".")[0] not in tops:
                return None
            return importlib.machinery.PathFinder.find_spec(
                fullname, [repo] if "." not in fullname else path)

    ours = {k: sys.modules.pop(k) for k in list(sys.modules) if k.split(".")[0] in tops}
    finder = RepoFirst()
    sys.meta_path.insert(0, finder)
    try:
        return importlib.import_module(module_path[:-3].replace("/", "."))
    except ImportError as e:
        raise ImportError(f"importing {module_path} from {repo} failed ({e}); install the "
                          "official repository's requirements") from e
    finally:
        sys.meta_path.remove(finder)
        for k in [k for k in sys.modules if k.split(".")[0] in tops]:
            del sys.modules[k]
        sys.modules.update(ours)


def build_official(name, repo):
    """The authors' model of zoo model ``name`` (random weights, eval mode), through the family
    record's ``official_builder`` where their entrypoint needs more than ``pretrained=False``."""
    family = backbones.get_family(name)
    path, fn_name = family.official_entrypoints[name.split(".")[0]].split(":")
    module = import_official(repo, path)
    if family.official_builder is not None:
        return family.official_builder(module, fn_name, name.split(".")[0]).eval()
    return getattr(module, fn_name)(pretrained=False).eval()


def official_difference(name, official):
    """Largest |official - zoo| output at batch 1 once the official model's weights are loaded
    into ours through the family's ``checkpoint_filter_fn``: both rows time the same function."""
    family = backbones.get_family(name)
    official = official.float().cpu().eval()
    zoo = timm.create_model(name).eval()
    zoo.load_state_dict(family.checkpoint_filter_fn(official.state_dict(), zoo))
    x = torch.randn(1, *zoo.pretrained_cfg["input_size"], generator=torch.Generator().manual_seed(0))
    with torch.inference_mode(), ops.use_backend("reference"):
        return (official(x) - zoo(x)).abs().max().item()


# ----------------------------------------------------------------------------- measuring

def count_gmacs(model, input_size):
    """(GMACs at batch 1, sorted uncounted matmul-like ops)."""
    device = next(model.parameters()).device
    x = torch.randn(1, *input_size, device=device)
    was_training = model.training
    model.eval()
    with warnings.catch_warnings(), ops.use_backend("reference"), torch.no_grad():
        warnings.simplefilter("ignore", FutureWarning)  # fvcore's use of torch.jit, deprecated
        from fvcore.nn import FlopCountAnalysis
        analysis = FlopCountAnalysis(model, x)
        analysis.set_op_handle(**ops.flops.fvcore_handles())
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        total = analysis.total()
        uncounted = sorted(op for op in analysis.unsupported_ops()
                           if MATMUL_LIKE.search(op) or not op.startswith(("aten::", "prim::")))
    model.train(was_training)
    return total / 1e9, uncounted


def rss_bytes():
    """Resident memory of this process now (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def max_rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


class PeakRss:
    """Peak resident memory (bytes) of this process while the block runs: ``ru_maxrss`` when the
    block set a new high for the process (exact), else the highest of samples taken every 5 ms."""

    def _sample(self):
        while not self.stop.wait(0.005):
            self.peak = max(self.peak, rss_bytes())

    def __enter__(self):
        self.max_before, self.peak = max_rss_bytes(), rss_bytes()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, rss_bytes())
        if max_rss_bytes() > self.max_before:
            self.peak = max_rss_bytes()


def make_step(model, batch, input_size, settings):
    """A callable running one forward (inference) or one training step on a random batch."""
    device = torch.device(settings["device"])
    x = torch.randn(batch, *input_size, device=device)
    if settings["channels_last"]:
        x = x.contiguous(memory_format=torch.channels_last)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(settings["amp"])

    def autocast():
        return torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)

    model.train(settings["bench"] == "train")
    forward = model
    if settings["compile"]:
        # Each case compiles afresh, as in a process of its own: graphs of earlier cases (other
        # models, modes, batch sizes) would otherwise count against dynamo's recompile limit.
        torch._dynamo.reset()
        forward = torch.compile(model, backend=settings["compile"])

    if settings["bench"] == "inference":
        def step():
            with torch.inference_mode(), autocast():
                forward(x)
        return step

    target = torch.randint(0, model.num_classes, (batch,), device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=settings["amp"] == "fp16")

    def step():
        with autocast():
            loss = F.cross_entropy(forward(x).float(), target)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return step


def time_case(model, batch, input_size, settings, rss_baseline):
    """Median/min ms over the timed calls and the case's peak memory in MB."""
    device = torch.device(settings["device"])
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    backend = (ops.use_backend(settings["backend"]) if settings["backend"]
               else contextlib.nullcontext())
    times = []
    with backend:
        step = make_step(model, batch, input_size, settings)
        # Memory is taken over the warm-up calls only: the 5 ms sampling thread would steal a
        # core from the timed calls (2 OpenMP threads on 2 cores lose up to 50 %).
        with PeakRss() if device.type == "cpu" else contextlib.nullcontext() as rss:
            for _ in range(max(1, settings["warmup"])):
                step()
            sync()
        start = time.perf_counter()
        while len(times) < settings["iters"] and (
                not times or time.perf_counter() - start < settings["max_seconds"]):
            t0 = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - t0)
        del step
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else rss.peak - rss_baseline)
    median = statistics.median(times)
    return dict(median_ms=round(median * 1e3, 3), min_ms=round(min(times) * 1e3, 3),
                img_per_s=round(batch / median, 3), peak_mb=round(peak / 2 ** 20, 1),
                iters=len(times), times_ms=[round(t * 1e3, 3) for t in times])


def paired_latency(name, twin, settings, build_twin=None):
    """Yield per batch size the zoo model's and its twin's median ms over ``iters`` pairs of calls
    (one each, in alternating order) and the median of the per-pair ratios twin / ours. Ours takes
    the twin's weights through the family's ``checkpoint_filter_fn`` (all of them for a timm or
    official twin; the shared backbone for a ``--versus`` model)."""
    torch.set_num_threads(settings["threads"])
    reference = build_twin(twin) if build_twin else timm.create_model(twin)
    reference.eval()
    ours = timm.create_model(name)
    filter_fn = (zoo_family(name).checkpoint_filter_fn if is_zoo_model(name) else None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a dense backbone's "predictor kept" note
        ours.load_state_dict(filter_fn(reference.state_dict(), ours))  # same numbers in both
    in_chans, height, width = ours.pretrained_cfg["input_size"]
    if settings["img_size"]:
        height = width = settings["img_size"]
    device = torch.device(settings["device"])
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for model in (ours, reference):
        model.to(device)
    backend = (ops.use_backend(settings["backend"]) if settings["backend"]
               else contextlib.nullcontext())
    with backend:
        for batch in settings["batch_sizes"]:
            steps = [make_step(m, batch, (in_chans, height, width), settings)
                     for m in (ours, reference)]
            for step in steps:
                for _ in range(max(1, settings["warmup"])):
                    step()
            sync()
            times = ([], [])
            for i in range(settings["iters"]):
                for j in ((0, 1) if i % 2 == 0 else (1, 0)):
                    t0 = time.perf_counter()
                    steps[j]()
                    sync()
                    times[j].append((time.perf_counter() - t0) * 1e3)
            yield dict(model=name, twin=twin, batch_size=batch,
                       resolution=f"{height}x{width}",
                       ours_ms=round(statistics.median(times[0]), 3),
                       twin_ms=round(statistics.median(times[1]), 3),
                       ratio=round(statistics.median(t / o for o, t in zip(*times)), 3),
                       pairs=settings["iters"])


def paired_main(args, settings, names):
    """Each zoo model beside its timm twin, its official model (``--official``) and every
    ``--versus`` model, one pair at a time."""
    pairs, notes = [], []
    official = dict(c for c in with_official_twins(names, args.official)[0] if c[1]) \
        if args.official else {}
    for name in names:
        twin = (zoo_family(name).timm_equivalents.get(name) if is_zoo_model(name) else None)
        if twin:
            pairs.append((name, twin, None))
        elif not args.versus and name not in official:
            notes.append(f"--paired: {name} has no timm twin (no timm_equivalents entry in its family record)")
        if name in official:
            repo = official[name]
            entry = zoo_family(name).official_entrypoints[name.split(".")[0]]
            pairs.append((name, f"official {entry}",
                          lambda _label, name=name, repo=repo: build_official(name, repo)))
        pairs += [(name, versus, None) for versus in args.versus or ()]
    if not pairs:
        raise SystemExit(f"{PROG}: error: --paired needs zoo models with a timm twin "
                         "(timm_equivalents), e.g. halonet26t_256 or shvit_s4_256, or --official "
                         "/ --versus models to pair them with")
    rows = []
    for name, twin, build_twin in tqdm(pairs, desc="paired", unit="pair"):
        rows += list(paired_latency(name, twin, settings, build_twin))
    machine = report.describe_machine(
        settings["device"], *describe_run(settings, timing=False),
        f"warmup {settings['warmup']}, {settings['iters']} pairs of calls in turn")
    table = report.markdown_table(
        ["model", "versus", "resolution", "batch", "ours ms", "theirs ms", "theirs / ours"],
        [[r["model"], r["twin"], r["resolution"], r["batch_size"], f"{r['ours_ms']:.1f}",
          f"{r['twin_ms']:.1f}", f"{r['ratio']:.2f}"] for r in rows])
    notes = ["ms: median over the calls; theirs / ours: median of the per-pair ratios (above 1: "
             "ours faster).", *notes]
    report.publish(report.document(machine, table, report.bullets(notes)), rows, list(rows[0]),
                   args.markdown, args.csv)
    return rows


def merge_rounds(cases):
    """One case record from the same case's records of several rounds: median / min over every
    timed call of every round, the largest peak memory."""
    ok = [c for c in cases if not c["error"]]
    if not ok:
        return cases[-1]
    times = [t for c in ok for t in c["times_ms"]]
    median = statistics.median(times)
    return dict(ok[-1], median_ms=round(median, 3), min_ms=min(times),
                img_per_s=round(ok[-1]["batch_size"] / median * 1e3, 3),
                peak_mb=max(c["peak_mb"] for c in ok), iters=len(times), times_ms=times)


def build_model(name, settings):
    """(model on ``settings["device"]``, its input size ``(C, H, W)``): zoo / timm model ``name``
    (or the authors' one from ``settings["official_repo"]``) at ``settings["img_size"]`` when
    set, else at its pretrained_cfg's size."""
    cfg = timm.models.get_pretrained_cfg(name)
    kwargs = {}
    if settings["img_size"] and cfg is not None and cfg.fixed_input_size:
        kwargs["img_size"] = settings["img_size"]  # e.g. ViTs: position embeddings
    if settings.get("official_repo"):
        model = build_official(name, settings["official_repo"])
    else:
        model = timm.create_model(name, **kwargs)
    in_chans, height, width = (cfg.input_size if settings.get("official_repo")
                               else model.pretrained_cfg["input_size"])
    if settings["img_size"]:
        height = width = settings["img_size"]
    model.to(settings["device"])
    if settings["channels_last"]:
        model.to(memory_format=torch.channels_last)
    return model, (in_chans, height, width)


def benchmark_model(name, settings):
    """Yield ``{"kind": "case", ...}`` per batch size, then ``{"kind": "model", ...}`` (params,
    GMACs, resolution; ``error`` set when the model could not be built)."""
    torch.set_num_threads(settings["threads"])
    info = dict(kind="model", model=name, params=None, gmacs=None, uncounted=[], resolution=None,
                error=None, official_diff=None)
    try:
        model, input_size = build_model(name, settings)
        info.update(params=sum(p.numel() for p in model.parameters()),
                    resolution="x".join(map(str, input_size[1:])))
    except Exception as e:  # noqa: BLE001  (reported as an error row)
        info["error"] = report.error_text(e)
        yield info
        return

    if not settings["params_only"]:
        # Resident memory of the built model, before any forward: the CPU peaks are relative to it.
        rss_baseline = rss_bytes() if settings["device"] == "cpu" else 0
        for batch in settings["batch_sizes"]:
            case = dict(kind="case", model=name, batch_size=batch, error=None)
            try:
                case.update(time_case(model, batch, input_size, settings, rss_baseline))
            except Exception as e:  # noqa: BLE001  (OOM and friends: an error row, not a crash)
                case["error"] = report.error_text(e)
                if settings["device"] == "cuda":
                    torch.cuda.empty_cache()
            yield case
    if settings.get("official_repo"):  # after the timed cases: its forward would raise their memory
        try:
            info["official_diff"] = official_difference(name, model)
        except Exception as e:  # noqa: BLE001
            info["error"] = f"official/zoo output check failed: {report.error_text(e)}"
    try:
        if settings.get("count_gmacs", True):  # --results' training-step run has them already
            info["gmacs"], info["uncounted"] = count_gmacs(model, input_size)
    except ImportError as e:
        info["error"] = f"GMACs need fvcore (pip install fvcore): {report.error_text(e)}"
    except Exception as e:  # noqa: BLE001
        info["error"] = f"GMAC count failed: {report.error_text(e)}"
    family = zoo_family(name) if is_zoo_model(name) and not settings.get("official_repo") else None
    if family is not None and family.mac_breakdown is not None and info["gmacs"] is not None:
        info["mac_breakdown"] = family.mac_breakdown(model, info["gmacs"])
    del model
    yield info


def benchmark_in_subprocess(name, settings):
    """:func:`benchmark_model` in a fresh interpreter (``--worker``), so that resident-memory
    peaks belong to this model alone; a crash (e.g. the OOM killer) becomes an error record."""
    # __spec__.name, not __name__: this module is "__main__" under ``python -m``.
    cmd = [sys.executable, "-m", __spec__.name, "--worker", json.dumps(dict(settings, model=name))]
    # The worker imports the same backbones / ops as this process, installed or not.
    roots = {os.path.dirname(os.path.dirname(os.path.abspath(m.__file__))) for m in (backbones, ops)}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        sorted(roots) + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    seen_model = False
    with tempfile.TemporaryFile("w+") as stderr:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
        for line in proc.stdout:
            if line.startswith(WORKER_PREFIX):
                record = json.loads(line[len(WORKER_PREFIX):])
                seen_model |= record["kind"] == "model"
                yield record
        proc.wait()
        if proc.returncode and not seen_model:
            stderr.seek(0)
            tail = [ln for ln in stderr.read().splitlines() if ln.strip()][-1:]
            reason = (f"killed by signal {-proc.returncode} (out of memory?)" if proc.returncode < 0
                      else f"exit status {proc.returncode}")
            yield dict(kind="model", model=name, params=None, gmacs=None, uncounted=[],
                       resolution=None, error=f"worker {reason}: {' '.join(tail)}"[:300])


def worker_main(spec):
    warnings.filterwarnings("ignore")
    settings = json.loads(spec)
    for record in benchmark_model(settings.pop("model"), settings):
        print(WORKER_PREFIX + json.dumps(record), flush=True)


# ----------------------------------------------------------------------------- reporting

def describe_run(settings, timing=True):
    """The settings of a run, for :func:`report.describe_machine`; ``timing``: with the warm-up
    and timed-call counts."""
    backend = settings["backend"] or (
        f"auto: {ops.current_default_backend(torch.device(settings['device']))}")
    details = [f"threads {settings['threads']}", f"ops backend {backend}"]
    if settings["params_only"]:
        return details + ["GMACs by fvcore on the reference ops path"]
    precision = settings["amp"] or "fp32"
    if settings["channels_last"]:
        precision += " channels-last"
    if settings["compile"]:
        precision += f" torch.compile ({settings['compile']})"
    details += [settings["bench"], precision]
    if timing:
        details.append(f"warmup {settings['warmup']}, iters {settings['iters']} (at most "
                       f"{settings['max_seconds']:g} s)"
                       + (f" per round, {settings['rounds']} rounds in turn, calls pooled"
                          if settings.get("rounds", 1) > 1 else ""))
    return details


def memory_label(settings):
    return "peak alloc MB" if settings["device"] == "cuda" else "peak RSS+ MB"


def memory_note(settings):
    if settings["device"] == "cuda":
        return ("peak alloc MB: torch.cuda.max_memory_allocated over the case (weights included), "
                "after reset_peak_memory_stats.")
    return ("peak RSS+ MB: peak resident memory during the case minus that of the built model, "
            "each model in its own subprocess (ru_maxrss; /proc/self/statm samples when the case "
            "set no new high).")


def paper_cell(name):
    family = zoo_family(name)
    paper = family.paper_results.get(name.split(".")[0]) if family else None
    if not paper:
        return report.MISSING
    cell = " / ".join(f"{getattr(paper, k)}{unit}" if getattr(paper, k) is not None
                      else report.MISSING
                      for k, unit in (("top1", "%"), ("params_m", "M"), ("gflops", "G")))
    return cell if paper.verified else cell + " (unverified)"


def markdown_table(records, settings, paper):
    batches = [] if settings["params_only"] else settings["batch_sizes"]
    header = ["model", "params (M)", "GMACs", "resolution"]
    for b in batches:
        header += [f"b{b} ms", f"b{b} img/s", f"b{b} {memory_label(settings)}"]
    if paper:
        header.append("paper top-1 / params / GFLOPs")
    rows = []
    for rec in records:
        label = rec["model"] + {"timm twin": " (timm)", "official": " (official code)"}.get(
            rec["source"], "")
        row = [label, report.cell(rec["params"] and rec["params"] / 1e6, ".2f"),
               report.cell(rec["gmacs"], ".3f"), rec["resolution"] or report.MISSING]
        for b in batches:
            case = rec["cases"].get(b)
            if case is None or case["error"]:
                row += ["error", report.MISSING, report.MISSING]
            else:
                row += [f"{case['median_ms']:.1f}", f"{case['img_per_s']:.1f}",
                        f"{case['peak_mb']:.0f}"]
        if paper:
            row.append(paper_cell(rec["model"]) if rec["source"] == "zoo" else report.MISSING)
        rows.append(row)
    return report.markdown_table(header, rows)


def report_notes(records, settings):
    notes = [memory_note(settings)] if not settings["params_only"] else []
    for rec in records:
        if rec["error"]:
            notes.append(f"{rec['model']}: {rec['error']}")
        for b, case in rec["cases"].items():
            if case["error"]:
                notes.append(f"{rec['model']} batch {b}: {case['error']}")
        if rec.get("official_diff") is not None:
            notes.append(f"{rec['model']} (official code): same weights in both, largest output "
                         f"difference {rec['official_diff']:.1e} (batch 1, float32, reference ops)")
        if rec.get("mac_breakdown"):
            parts = ", ".join(f"{k} {v:.4g}" for k, v in rec["mac_breakdown"].items())
            notes.append(f"{rec['model']}: GMACs by part (per image; the family record's "
                         f"mac_breakdown): {parts}")
        if rec["uncounted"]:
            notes.append(f"{rec['model']}: GMACs leave out the matmul-like ops "
                         f"{', '.join(rec['uncounted'])}")
    return notes


def csv_rows(records, settings):
    batches = [] if settings["params_only"] else settings["batch_sizes"]
    rows = []
    for rec in records:
        base = dict(model=rec["model"], source=rec["source"],
                    params=rec["params"], gmacs=rec["gmacs"] and round(rec["gmacs"], 4),
                    resolution=rec["resolution"], device=settings["device"],
                    bench=settings["bench"], amp=settings["amp"] or "fp32",
                    channels_last=settings["channels_last"], backend=settings["backend"] or "auto",
                    compile=settings["compile"], threads=settings["threads"],
                    memory=None if settings["params_only"] else memory_label(settings),
                    paper=paper_cell(rec["model"]) if rec["source"] == "zoo" else report.MISSING,
                    error=rec["error"])
        if not batches:
            rows.append(base)
        for b in batches:
            case = rec["cases"].get(b, {})
            rows.append(dict(base, batch_size=b, **{k: case.get(k) for k in CASE_FIELDS},
                             error=case.get("error") or rec["error"]))
    return rows


CASE_FIELDS = ["median_ms", "min_ms", "img_per_s", "peak_mb", "iters"]
CSV_FIELDS = ["model", "source", "params", "gmacs", "resolution", "batch_size", *CASE_FIELDS,
              "memory", "device", "bench", "amp", "channels_last", "backend", "compile", "threads",
              "paper", "error"]


# ----------------------------------------------------------------------------- settings, models

def make_settings(args):
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"{PROG}: error: --device cuda but torch sees no CUDA device")
    if min(args.batch_sizes) < 1 or args.iters < 1 or args.warmup < 0 or args.rounds < 1:
        raise SystemExit(f"{PROG}: error: batch sizes, --iters and --rounds must be >= 1, "
                         "--warmup >= 0")
    return dict(device=args.device, batch_sizes=args.batch_sizes, bench=args.bench,
                warmup=args.warmup, iters=args.iters, max_seconds=args.max_seconds,
                threads=args.threads, amp=args.amp, channels_last=args.channels_last,
                compile=args.compile, backend=args.backend, img_size=args.img_size,
                params_only=args.params_only, rounds=args.rounds)


def check_options(args):
    """Clear errors for options that do not go together, before anything is measured."""
    def named(*pairs):
        return [flag for flag, given in pairs if given]

    needs_results = named(("--resume", args.resume), ("--fresh", args.fresh),
                          ("--report-only", args.report_only), ("--readme", args.readme))
    if needs_results and not args.results:
        raise UsageError(f"{needs_results[0]} goes with --results DIR (the results directory)")
    if args.resume and args.fresh:
        raise UsageError("--resume keeps the CSV's rows and --fresh drops them: pass one of them")
    if args.results:
        clash = named(("--paired", args.paired), ("--params-only", args.params_only),
                      ("--compare", args.compare), ("--official", args.official),
                      ("--bench train", args.bench == "train"), ("--csv", args.csv),
                      ("--markdown", args.markdown), ("--plot", args.plot))
        if clash:
            raise UsageError("--results times inference and a training step and writes "
                             "DIR/benchmark-<device>.csv, .md and .png itself: drop "
                             + ", ".join(clash))
        if args.train_batch < 0:
            raise UsageError(f"--train-batch must be >= 1 (or 0: no training step), "
                             f"got {args.train_batch}")
    if args.plot:
        clash = named(("--paired", args.paired), ("--params-only", args.params_only))
        if clash:
            raise UsageError(f"--plot draws measured speed: drop {', '.join(clash)}")
        if not args.plot.lower().endswith(".png"):
            raise UsageError(f"--plot writes a PNG: give a path ending in .png, got {args.plot!r}")
    if (args.plot_batch is not None and not args.report_only
            and args.plot_batch not in args.batch_sizes):
        raise UsageError(f"--plot-batch {args.plot_batch} is not measured: pick one of "
                         f"--batch-sizes {' '.join(map(str, args.batch_sizes))}")


def select_models(args):
    """The run's models: those of ``--families`` and ``--models`` (every zoo model when neither
    is given), then the ``--comparators`` (with ``--results``: all of them by default, unless
    the run is restricted to some models)."""
    names = []
    if args.families:
        unknown = sorted(set(args.families) - set(backbones.list_families()))
        if unknown:
            raise UsageError(f"unknown families {', '.join(unknown)}; the zoo's families: "
                             f"{', '.join(backbones.list_families())}")
        names = [n for n in backbones.list_zoo_models()
                 if backbones.get_family(n).name in args.families]
    if args.models or not args.families:
        names += [n for n in resolve_models(args.models) if n not in names]
    comparators = args.comparators
    if comparators is None and args.results and not (args.models or args.families):
        comparators = []  # a full --results run: the whole comparator table
    if comparators is not None:
        for name in comparators or results.COMPARATORS:
            if not timm.is_model(name):
                close = difflib.get_close_matches(name, list(results.COMPARATORS), n=3)
                raise UsageError(f"--comparators: {name!r} is not a timm model"
                                 + (f"; did you mean {', '.join(close)}?" if close else ""))
            if name not in names:
                names.append(name)
    return names


def list_cases(args, names):
    """``([(name, is_timm_twin, official_repo_or_None)], notes)``: the models to run, with the
    twins that ``--compare`` and ``--official`` add after each zoo model."""
    cases, notes = with_timm_twins(names) if args.compare else ([(n, False) for n in names], [])
    if not args.official:
        return [(n, twin, None) for n, twin in cases], notes
    zoo_cases = [n for n, twin in cases if not twin and is_zoo_model(n)]
    official, official_notes = with_official_twins(zoo_cases, args.official)
    repos = {}
    for n, repo in official:
        repos.setdefault(n, []).append(repo)
    return [(n, twin, repo) for n, twin in cases
            for repo in (repos.get(n, [None]) if not twin else [None])], notes + official_notes


def measure(cases, settings, progress=True):
    """One record per case: the model's record (params, GMACs, ...) and ``cases``, its timed
    cases by batch size, each merged over ``settings["rounds"]``; ``progress``: a progress bar."""
    # On the CPU each model runs in a fresh interpreter: resident-memory peaks are its own.
    in_subprocess = settings["device"] == "cpu" and not settings["params_only"]
    run_model = benchmark_in_subprocess if in_subprocess else benchmark_model
    records = []
    steps_per_model = 1 if settings["params_only"] else len(settings["batch_sizes"])
    rounds = 1 if settings["params_only"] else settings["rounds"]
    with tqdm(total=rounds * len(cases) * steps_per_model, desc="benchmark", unit="case",
              disable=not progress) as bar:
        for round_index in range(rounds):
            for i, (name, twin, official_repo) in enumerate(cases):
                bar.set_postfix_str(name)
                source = ("official" if official_repo else "timm twin" if twin
                          else "zoo" if is_zoo_model(name) else "timm")
                if round_index == 0:
                    records.append(dict(model=name, twin=twin, cases={}, source=source))
                rec, ran = records[i], 0
                for record in run_model(name, dict(settings, official_repo=official_repo)):
                    if record["kind"] == "case":
                        rec["cases"].setdefault(record["batch_size"], []).append(record)
                        ran += 1
                        bar.update(1)
                    else:
                        rec.update({k: v for k, v in record.items() if k not in ("kind", "model")})
                bar.update(steps_per_model - ran)  # cases a failed model never ran
    for rec in records:
        rec["cases"] = {b: merge_rounds(c) for b, c in rec["cases"].items()}
    return records


# ----------------------------------------------------------------------------- --results

# The options that change what --results measures: a results file records them (its command).
MEASURE_OPTIONS = ("device", "batch_sizes", "train_batch", "img_size", "threads", "warmup", "iters",
                   "max_seconds", "rounds", "amp", "channels_last", "compile", "backend")


def results_command(args):
    """The command that measures ``args.results``' rows with this run's settings (the options
    left at their defaults, and those choosing models, left out)."""
    defaults = parse_args([])
    parts = ["python", "tools/benchmark.py", "--results", args.results]
    for dest in MEASURE_OPTIONS:
        value = getattr(args, dest)
        if value == getattr(defaults, dest):
            continue
        flag = "--" + dest.replace("_", "-")
        parts += [flag] if value is True else [flag, *map(str, value if isinstance(value, list)
                                                          else [value])]
    return shlex.join(parts)


def results_settings(settings, train_batch):
    """The settings column of a results file: what its numbers depend on besides the machine."""
    details = describe_run(settings) + [
        f"inference batch {', '.join(map(str, settings['batch_sizes']))}",
        f"training step (SGD) batch {train_batch}" if train_batch else "no training step",
        f"resolution {settings['img_size'] or 'of each model'}"]
    return " | ".join(details)


def measure_results(args, settings, names):
    """Measure ``names`` into ``DIR/benchmark-<device>.csv``, one model at a time: its inference
    cases, then its training step in a run of its own (its memory peak is its own), the CSV
    rewritten after each model so that a killed run loses one model at most (``--resume``)."""
    os.makedirs(args.results, exist_ok=True)
    path = results.result_paths(args.results, settings["device"])["csv"]
    machine = report.describe_machine(settings["device"])
    settings_text = results_settings(settings, args.train_batch)
    rows = []
    if os.path.exists(path) and not args.fresh:
        rows, _ = results.read_results(path)
        results.check_same_setup(rows, machine, settings_text, path)
    fields = results.result_fields(settings["batch_sizes"]) + ["command"]
    done = {r["model"] for r in rows if not r.get("error")} if args.resume else set()
    todo = [name for name in names if name not in done]
    if len(todo) < len(names):
        print(f"--resume: {len(names) - len(todo)} of {len(names)} models already in {path}")
    command = results_command(args)
    train_settings = dict(settings, bench="train", batch_sizes=[args.train_batch],
                          count_gmacs=False)
    for name in tqdm(todo, desc="results", unit="model"):
        (record,) = measure([(name, False, None)], settings, progress=False)
        train = (measure([(name, False, None)], train_settings, progress=False)[0]
                 if args.train_batch else None)
        row = results.result_row(record, train, args.train_batch or None,
                                 device=settings["device"], machine=machine,
                                 settings_text=settings_text, memory=memory_label(settings))
        rows = results.merge_rows(rows, [dict(row, command=command)])
        report.write_csv(path, rows, fields)


def render_results(args):
    """``benchmark-<device>.md`` and ``.png`` from each results CSV of ``args.results`` (the
    device measured now, or every one with ``--report-only``), then the README's table;
    returns the rendered rows."""
    if args.report_only:
        paths = results.results_files(args.results)
    else:
        paths = [results.result_paths(args.results, args.device)["csv"]]
    paths = [p for p in paths if os.path.exists(p)]
    if not paths:
        raise UsageError(f"no results in {args.results} yet: measure them first with "
                         f"{PROG} --results {args.results}")
    rendered = []
    for path in paths:
        rows, fields = results.read_results(path)
        if not rows:
            continue
        device = rows[0]["device"]
        label = results.DEVICE_LABELS.get(device, device)
        batches = results.batch_sizes_of(fields)
        batch = args.plot_batch or (min if args.plot_x == "latency" else max)(batches)
        if batch not in batches:
            raise UsageError(f"--plot-batch {batch}: {path} has batch sizes "
                             f"{' '.join(map(str, batches))}")
        setup = f"{rows[0]['machine']} | {rows[0]['settings']}"
        command = rows[0].get("command") or f"{PROG} --results {args.results}"
        memory = results.notes(rows, memory_note({"device": device}))
        text = report.document(setup, f"Regenerate: `{command}` (`--resume` goes on with a "
                                      "killed run; --models / --families redo some rows).",
                               results.markdown_table(rows, fields), report.bullets(memory))
        stem = os.path.splitext(path)[0]
        report.write_markdown(f"{stem}.md", text)
        chart.draw(rows, f"{stem}.png", x_axis=args.plot_x, batch=batch, device_label=label,
                   footnote=f"{setup}. {results.CHART_NOTE} Command: {command}")
        print(f"{label}: {path}, {stem}.md, {stem}.png ({len(rows)} models)")
        rendered += rows
    if args.readme:
        block = results.readme_block(results.results_files(args.results),
                                     os.path.dirname(os.path.abspath(args.readme)))
        changed = results.update_readme(args.readme, block)
        print(f"{args.readme}: results table {'updated' if changed else 'unchanged'}")
    return rendered


def chart_row(record, settings, machine):
    """A results row of a record of a plain run, for its ``--plot``; the authors' model and
    timm's twin apart from ours (same name or same top-1), in grey."""
    row = results.result_row(record, device=settings["device"], machine=machine,
                             settings_text="", memory=memory_label(settings))
    if record["source"] == "official":
        row.update(model=f"{row['model']} (official code)", family="official code", source="timm")
    elif record["source"] == "timm twin":
        row.update(model=f"{row['model']} (timm twin)", family="timm twin")
    return row


# ----------------------------------------------------------------------------- main

def run(argv=None):
    """Run the benchmark; returns one dict per (model, batch size) (per model with
    ``--params-only``), the rows of ``--csv``."""
    args = parse_args(argv)
    if args.worker:
        return worker_main(args.worker)
    threads = torch.get_num_threads()
    try:
        return _run(args, sys.argv[1:] if argv is None else list(argv))
    except UsageError as e:
        raise SystemExit(f"{PROG}: error: {e}") from None
    finally:  # run() is also called in-process (tests, notebooks): leave the caller's threads
        torch.set_num_threads(threads)


def _run(args, argv):
    check_options(args)
    if args.results and args.report_only:
        return render_results(args)
    settings = make_settings(args)
    torch.set_num_threads(args.threads)
    names = select_models(args)
    if args.paired:
        return paired_main(args, settings, names)
    if args.results:
        measure_results(args, settings, names)
        return render_results(args)
    cases, notes = list_cases(args, names)
    records = measure(cases, settings)
    machine = report.describe_machine(settings["device"], *describe_run(settings))
    notes += report_notes(records, settings)
    text = report.document(machine, markdown_table(records, settings, args.paper),
                           report.bullets(notes))
    rows = csv_rows(records, settings)
    report.publish(text, rows, CSV_FIELDS, args.markdown, args.csv)
    if args.plot:
        result_rows = [chart_row(rec, settings, machine) for rec in records]
        batch = args.plot_batch or (min if args.plot_x == "latency" else max)(args.batch_sizes)
        chart.draw(result_rows, args.plot, x_axis=args.plot_x, batch=batch,
                   device_label=results.DEVICE_LABELS[settings["device"]],
                   what="training step" if settings["bench"] == "train" else "inference",
                   footnote=f"{machine}. {results.CHART_NOTE} Command: "
                            f"{PROG} {shlex.join(argv)}")
        print(f"chart: {args.plot}")
    return rows


def main(argv=None):
    """``zoo-benchmark``: :func:`run`, exit status 0."""
    run(argv)


if __name__ == "__main__":
    main()

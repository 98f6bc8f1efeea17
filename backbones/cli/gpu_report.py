"""One short GPU window, one report: kernel correctness, op speed and model speed, in 8 minutes.

    zoo-gpu-report                        # CUDA, < 8 minutes: model_cards/gpu/<gpu name>.md
    zoo-gpu-report --dry-run              # every part on the CPU, tiny shapes: a temporary folder
    zoo-gpu-report --parts ops models --time-limit 300 --output /tmp/gpu

(``python tools/gpu_report.py`` is the same command.) GPU time for this project comes in windows of
minutes, so the run is planned to the minute. It has three parts, each in a process of its own
(a CUDA error poisons its process; a part that crashes or hangs costs only its own time):

1. ``kernels``: every pattern of ``zoo-benchmark-ops`` at its layer shape (batch 2), the ops'
   Triton path in fp32, fp16 and bf16, forward and backward, against the reference run in fp32
   on the same values: the max abs differences, and pass / FAIL on the largest difference
   relative to the reference's largest value (:data:`RELATIVE_LIMITS`).
2. ``ops``: ``zoo-benchmark-ops`` at the zoo's layer shapes (bf16, batch 128): Triton and the
   reference (SDPA where the op is SDPA on gathered tokens) for every pattern first, then the
   compiled FlexAttention, pattern by pattern.
3. ``models``: one model per family (:data:`FAMILY_MODELS`), bf16 autocast, inference at batch
   128 and a training step (forward, backward, SGD) at batch 64, on the triton and the reference
   backend: ms, images/s and peak memory; every case eager first, then under ``torch.compile``.

Time: a part gets its share (:data:`SHARES`) of the time left when it starts, so time one part
leaves passes on. It starts no case after its deadline (the report lists the cases left out),
and is killed :data:`GRACE_S` seconds after it, losing only the case it was in. The Markdown is
rewritten every few seconds from what the parts have measured, so a run killed from outside
still leaves its tables; each part also writes a CSV beside it. The exit status is 1 when a
part crashed or was killed (the report quotes the end of its output), else 0.

``--dry-run`` runs every part on the CPU through Triton's interpreter: one pattern per op at tiny
shapes, one model at 64x64, single calls, into a temporary folder (never into ``model_cards``),
in about a minute. What the first GPU minute would otherwise find (a typo, a missing import, a
bad flag) shows up in CI instead; FlexAttention, which has no backward on the CPU, is the one
baseline a dry run leaves out (tests/test_benchmark_ops.py checks its masks on the CPU).
"""
import argparse
import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import warnings

import torch

from . import benchmark, benchmark_ops, report

PROG = "zoo-gpu-report"
# Of an 8-minute window: the parent's start-up, the last part's grace and the final write fit.
TIME_LIMIT_S = 430
DRY_RUN_TIME_LIMIT_S = 240  # far more than a dry run takes (about a minute): a stop, not a plan
SHARES = {"kernels": 0.25, "ops": 0.35, "models": 0.40}
GRACE_S = 20  # a part runs this long past its deadline (the case it is in) before it is killed
POLL_S = 2  # how often the parent rewrites the report while a part runs
LOG_TAIL = 15  # lines of a failed part's output quoted in the report

TITLES = {
    "kernels": "Kernel correctness: the Triton path against the fp32 reference",
    "ops": "Attention ops at the zoo's layer shapes",
    "models": "Models: throughput and peak memory",
}
# Largest |triton - reference| over the largest |reference|, per dtype the kernels ran in:
# rounding of inputs and outputs in that dtype stays far below; a broken kernel is far above.
RELATIVE_LIMITS = {"fp32": 1e-3, "fp16": 1e-2, "bf16": 5e-2}
KERNEL_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# A small model of each family (HaloNet: the one timm has too): every family's ops run.
FAMILY_MODELS = {"cswin": "cswin_tiny_224", "halonet": "halonet26t_256",
                 "biformer": "biformer_tiny_224", "litv2": "litv2_small_224",
                 "shvit": "shvit_s1_224", "sparsifiner": "sparsifiner_deit_small_224",
                 "dependencyvit": "dependencyvit_tiny_224", "ela": "ela_resnet50_b_224",
                 "ulsam": "ulsam_mobilenetv2_100_224"}
DRY_RUN_MODELS = ("shvit_s1_224",)
# The first pattern of each op: what a dry run runs, and what a GPU run runs first (a deadline
# then leaves out variants of an op, never a whole op).
FIRST_PER_OP = [p for i, p in enumerate(benchmark_ops.PATTERNS)
                if p.op not in {q.op for q in benchmark_ops.PATTERNS[:i]}]
PATTERN_ORDER = {p.name: i for i, p in enumerate(benchmark_ops.PATTERNS)}  # the tables' order
MODEL_MODES = {"inference": 128, "train": 64}  # bench -> batch size on the GPU


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true",
                   help="every part on the CPU (Triton interpreter, tiny shapes, few calls)")
    p.add_argument("--output", metavar="DIR",
                   help="where the report goes (default: model_cards/gpu; with --dry-run a new "
                        "temporary folder)")
    p.add_argument("--time-limit", type=float, metavar="SECONDS",
                   help=f"for all parts together (default {TIME_LIMIT_S}; --dry-run "
                        f"{DRY_RUN_TIME_LIMIT_S})")
    p.add_argument("--parts", nargs="+", choices=tuple(SHARES), default=list(SHARES),
                   help="run only these parts (default: all, in this order)")
    # internal: one part in its own process, writing its Markdown fragment and CSV
    p.add_argument("--part", choices=tuple(SHARES), help=argparse.SUPPRESS)
    p.add_argument("--deadline", type=float, help=argparse.SUPPRESS)  # time.time() seconds
    p.add_argument("--fragment", help=argparse.SUPPRESS)
    p.add_argument("--csv", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- one part

class Section:
    """One part's results as they come: rows, notes, the cases left out and the case in
    progress. Every change rewrites the part's Markdown fragment and CSV, so a part killed at
    any point leaves all it measured."""

    def __init__(self, fragment, csv_path, intro, table, fields):
        self.fragment, self.csv_path, self.intro = fragment, csv_path, intro
        self.table, self.fields = table, fields  # table: rows -> Markdown
        self.rows, self.notes, self.left_out, self.running = [], [], [], None
        self.save()

    @contextlib.contextmanager
    def case(self, label):
        """The block measures case ``label``: the fragment names it until the block ends."""
        self.running = label
        self.save()
        try:
            yield
        finally:
            self.running = None
            self.save()

    def add(self, row):
        self.rows.append(row)
        self.save()

    def note(self, *notes):
        self.notes += [n for n in notes if n not in self.notes]
        self.save()

    def leave_out(self, case):
        self.left_out.append(case)
        self.save()

    def save(self):
        status = []
        if self.left_out:
            status.append(f"Left out at the part's deadline: {', '.join(self.left_out)}.")
        if self.running:
            status.append(f"Running: {self.running} (a part stopped here lost this case).")
        report.write_markdown(self.fragment, report.document(
            self.intro, self.table(self.rows) if self.rows else "_No rows yet._",
            report.bullets(self.notes), " ".join(status)))
        report.write_csv(self.csv_path, self.rows, self.fields)


def patterns_to_run(args):
    if args.dry_run:
        return FIRST_PER_OP
    return FIRST_PER_OP + [p for p in benchmark_ops.PATTERNS if p not in FIRST_PER_OP]


def relative_error(a, b):
    """Largest |a - b| over the largest |b|."""
    return benchmark_ops.max_abs_diff(a, b) / max(b.abs().max().item(), torch.finfo().tiny)


def check_kernel(case, dtype_name, device):
    """The Triton path of ``case`` in ``dtype_name`` against the fp32 reference on the same
    values: max abs differences, relative errors (output, worst gradient), pass / FAIL."""
    leaves, dout = benchmark_ops.seeded_inputs(case, KERNEL_DTYPES[dtype_name], device)
    truth_out, truth_grads = benchmark_ops.reference_truth(case, leaves, dout)
    out, grads = benchmark_ops.forward_backward(case, case.call("triton"), leaves, dout)
    rel_out = relative_error(out, truth_out)
    rel_grad = max(relative_error(g, t) for g, t in zip(grads, truth_grads))
    return dict(max_diff_out=benchmark_ops.max_abs_diff(out, truth_out),
                max_diff_grad=max(benchmark_ops.max_abs_diff(g, t)
                                  for g, t in zip(grads, truth_grads)),
                rel_out=rel_out, rel_grad=rel_grad,
                result="pass" if max(rel_out, rel_grad) <= RELATIVE_LIMITS[dtype_name] else "FAIL")


def kernel_table(rows):
    rows = sorted(rows, key=lambda r: PATTERN_ORDER[r["pattern"]])  # stable: dtypes in run order
    return report.markdown_table(
        ["pattern", "shape", "dtype", "max abs diff out", "max abs diff grads",
         "relative out / grads", "limit", "result"],
        [[r["pattern"], r["shape"], r["dtype"], report.cell(r.get("max_diff_out"), ".1e"),
          report.cell(r.get("max_diff_grad"), ".1e"),
          f"{report.cell(r.get('rel_out'), '.1e')} / {report.cell(r.get('rel_grad'), '.1e')}",
          f"{RELATIVE_LIMITS[r['dtype']]:.0e}",
          "**FAIL**" if r["result"] == "FAIL" else r["result"]] for r in rows])


def run_kernels(args, deadline, fragment, csv_path):
    device = torch.device("cpu" if args.dry_run else "cuda")
    batch = 1 if args.dry_run else 2
    patterns = ("One pattern per op of `zoo-benchmark-ops`, at tiny shapes (--tiny)"
                if args.dry_run else "Every pattern of `zoo-benchmark-ops` at its layer shape")
    section = Section(
        fragment, csv_path,
        f"{patterns}, batch {batch}: the Triton path in "
        "fp32, fp16 and bf16, forward and backward (gradients of q, k, v and any learned "
        "tables), against the reference run in fp32 on the same values. result: pass when the "
        "largest difference over the reference's largest value is within the limit, for the "
        "output and for every gradient.",
        kernel_table, ["pattern", "shape", "dtype", "max_diff_out", "max_diff_grad", "rel_out",
                       "rel_grad", "result", "error"])
    unusable = benchmark_ops.triton_status(device)
    if unusable:
        section.note(unusable)
        return
    settings = dict(tiny=args.dry_run, batch=batch)
    for pattern in patterns_to_run(args):
        case = benchmark_ops.concrete_case(pattern, settings)
        for dtype_name in KERNEL_DTYPES:
            label = f"{pattern.name} {dtype_name}"
            if time.time() > deadline:
                section.leave_out(label)
                continue
            row = dict(pattern=pattern.name, shape=case.label(), dtype=dtype_name, error=None)
            with section.case(label):
                try:
                    row.update(check_kernel(case, dtype_name, device))
                except Exception as e:  # noqa: BLE001  (a failing kernel is a row, not a crash)
                    row.update(result="error", error=report.error_text(e))
                    section.note(f"{label}: {row['error']}")
                section.add(row)


def run_ops(args, deadline, fragment, csv_path):
    """Triton and the reference for every pattern, then FlexAttention where time is left: the
    compiled flex calls are the slow ones to start."""
    flags = (["--device", "cpu", "--tiny", "--warmup", "0", "--iters", "1"] if args.dry_run else
             ["--device", "cuda", "--dtype", "bf16", "--batch-size", "128", "--warmup", "2",
              "--iters", "10"])
    settings = benchmark_ops.make_settings(benchmark_ops.parse_args(flags))
    backends = list(benchmark_ops.BACKEND_LABELS)

    def table(rows):
        rows = sorted(rows, key=lambda r: (PATTERN_ORDER[r["pattern"]],
                                           backends.index(r["backend"])))
        return benchmark_ops.markdown_table(rows, settings)

    section = Section(
        fragment, csv_path,
        benchmark_ops.describe_machine(settings) + "\n\n"
        f"`zoo-benchmark-ops {' '.join(flags)}`, Triton and reference first, then "
        "`--backends flex`, pattern by pattern.",
        table, benchmark_ops.CSV_FIELDS)
    section.note(*benchmark_ops.method_notes(settings, benchmark_ops.OPS.values()))
    for backend_set in (["triton", "reference"], ["flex"]):
        pass_settings = dict(settings, backends=backend_set)
        for pattern in patterns_to_run(args):
            label = f"{pattern.name} {'/'.join(backend_set)}"
            if time.time() > deadline:
                section.leave_out(label)
                continue
            notes = []
            with section.case(label):
                for row in benchmark_ops.measure_patterns([pattern], pass_settings, notes):
                    section.add(row)
            section.note(*notes)
    flex = [r for r in section.rows if r["backend"] == "flex"]
    if flex:
        ok = sum(not r["error"] for r in flex)
        section.note(f"FlexAttention (torch.nn.attention.flex_attention, compiled): ran on "
                     f"{ok} of the {len(flex)} patterns it was tried on.")


def model_table(rows):
    def cells(r):
        if r["error"]:
            return ["error", report.MISSING, report.MISSING]
        return [f"{r['median_ms']:.1f}", f"{r['img_per_s']:.0f}", f"{r['peak_mb']:.0f}"]

    return report.markdown_table(
        ["model", "mode", "batch", "backend", "torch.compile", "ms", "img/s", "peak MB"],
        [[r["model"], r["bench"], r["batch_size"], r["backend"], r["compile"] or "off",
          *cells(r)] for r in rows])


def model_cases(names, compile_backend):
    """Every (model, bench, backend) eager, then compiled: compiling is the slow part, and a
    deadline should cut compiled cases, not eager ones. Compiled cases go triton before
    reference and inference before training, across all models, so that each family gets its
    most telling compiled row first."""
    eager = [(n, bench, backend, None) for n in names for bench in MODEL_MODES
             for backend in ("triton", "reference")]
    compiled = [(n, bench, backend, compile_backend) for backend in ("triton", "reference")
                for bench in MODEL_MODES for n in names]
    return eager + compiled


def run_models(args, deadline, fragment, csv_path):
    device = "cpu" if args.dry_run else "cuda"
    # The dry run: one call each at 64x64, batch 2, fp32 (the CPU has no fast bf16), and
    # torch.compile capturing graphs without generating code (inductor would compile C++ for
    # minutes on a small CPU).
    settings = dict(device=device, img_size=64 if args.dry_run else None, channels_last=False,
                    amp=None if args.dry_run else "bf16", warmup=0 if args.dry_run else 3,
                    iters=1 if args.dry_run else 10, max_seconds=3.0)
    compile_backend = "eager" if args.dry_run else "inductor"
    names = DRY_RUN_MODELS if args.dry_run else tuple(FAMILY_MODELS.values())
    section = Section(
        fragment, csv_path,
        report.describe_machine(device, f"{settings['amp']} autocast" if settings["amp"]
                                else "fp32",
                                f"warmup {settings['warmup']}, median of {settings['iters']} "
                                f"(at most {settings['max_seconds']:g} s)")
        + "\n\nms: median of the timed calls; peak MB: "
        + ("torch.cuda.max_memory_allocated over the case (weights included)." if device == "cuda"
           else "resident memory (CPU, not comparable).")
        + f" torch.compile: backend {compile_backend}, default mode; its warm-up calls compile.",
        model_table, ["model", "bench", "batch_size", "backend", "compile", "median_ms",
                      "min_ms", "img_per_s", "peak_mb", "iters", "error"])
    models = {}
    for name, bench, backend, compile_with in model_cases(names, compile_backend):
        batch = 2 if args.dry_run else MODEL_MODES[bench]
        label = f"{name} {bench} {backend}" + (" compiled" if compile_with else "")
        if time.time() > deadline:
            section.leave_out(label)
            continue
        row = dict(model=name, bench=bench, batch_size=batch, backend=backend,
                   compile=compile_with, error=None)
        case = dict(settings, bench=bench, backend=backend, compile=compile_with)
        with section.case(label):
            try:
                if name not in models:
                    models[name] = benchmark.build_model(name, case)
                model, input_size = models[name]
                row.update(benchmark.time_case(model, batch, input_size, case, rss_baseline=0))
            except Exception as e:  # noqa: BLE001  (OOM, compile errors: a row, not a crash)
                row["error"] = report.error_text(e)
                section.note(f"{label}: {row['error']}")
                if device == "cuda":
                    torch.cuda.empty_cache()
            section.add(row)


PART_RUNNERS = {"kernels": run_kernels, "ops": run_ops, "models": run_models}


def run_part(args):
    warnings.filterwarnings("ignore")  # interpreter, flex and compile chatter: the log stays short
    if args.dry_run:
        # Tiny shapes gain nothing from more threads, and on a shared CI host a thread barrier
        # costs milliseconds: two threads made the dry run's calls up to 50x slower.
        torch.set_num_threads(1)
    PART_RUNNERS[args.part](args, args.deadline, args.fragment, args.csv)


# ----------------------------------------------------------------------------- the whole run

def file_stem(device_name):
    return re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-")


def output_dir(args):
    if args.output is None:
        return tempfile.mkdtemp(prefix="zoo-gpu-report-") if args.dry_run else os.path.join(
            "model_cards", "gpu")
    if args.dry_run and "model_cards" in os.path.abspath(args.output).split(os.sep):
        raise SystemExit(f"{PROG}: error: a dry run never writes into model_cards (its numbers "
                         "are not a GPU's)")
    return args.output


class Run:
    """The parent process: starts each part with its deadline, and writes the report from the
    parts' fragments while they run and when they end."""

    def __init__(self, args, argv):
        self.args, self.argv, self.start = args, argv, time.time()
        self.end = self.start + (args.time_limit or (DRY_RUN_TIME_LIMIT_S if args.dry_run
                                                     else TIME_LIMIT_S))
        self.device = "cpu" if args.dry_run else "cuda"
        if self.device == "cuda" and not torch.cuda.is_available():
            raise SystemExit(f"{PROG}: error: torch sees no CUDA device (--dry-run runs every "
                             "part on the CPU)")
        name = torch.cuda.get_device_name() if self.device == "cuda" else "dry run cpu"
        self.output = output_dir(args)
        os.makedirs(self.output, exist_ok=True)
        self.path = os.path.join(self.output, f"{file_stem(name)}.md")
        self.work = tempfile.mkdtemp(prefix="zoo-gpu-report-parts-")
        self.outcomes = {}  # part -> how it ended (budget, time taken, its output if it failed)
        self.failed = []  # parts that crashed or were killed
        self.env = dict(os.environ)
        if args.dry_run:
            self.env["TRITON_INTERPRET"] = "1"  # before the parts import a kernel
        else:
            self.env.pop("TRITON_INTERPRET", None)

    def files(self, part):
        stem = os.path.splitext(self.path)[0]
        return (os.path.join(self.work, f"{part}.md"), f"{stem}.{part}.csv",
                os.path.join(self.work, f"{part}.log"))

    def title(self):
        if self.args.dry_run:
            return (f"# GPU report, dry run on the CPU ({report.cpu_model()}): tiny shapes, "
                    "Triton interpreter; not performance numbers")
        return f"# GPU report: {torch.cuda.get_device_name()}"

    def write(self, finished=False):
        blocks = [self.title(), report.describe_machine(self.device)]
        took = time.time() - self.start
        blocks.append(f"`{' '.join([PROG, *self.argv])}`: "
                      + (f"finished in {took:.0f} s" if finished else f"running, {took:.0f} s in")
                      + f" (time limit {self.end - self.start:.0f} s).")
        for i, part in enumerate(self.args.parts, 1):
            fragment = self.files(part)[0]
            blocks.append(f"## {i}. {TITLES[part]}")
            if os.path.exists(fragment):
                with open(fragment) as f:
                    blocks.append(f.read().strip())
            else:
                blocks.append("_Not started._")
            blocks.append(self.outcomes.get(part))
        report.write_markdown(self.path, report.document(*blocks))

    def run_part(self, part, deadline):
        fragment, csv_path, log = self.files(part)
        cmd = [sys.executable, "-m", __spec__.name, "--part", part, "--deadline", str(deadline),
               "--fragment", fragment, "--csv", csv_path] + (["--dry-run"] if self.args.dry_run
                                                             else [])
        started = time.time()
        with open(log, "w") as log_file:
            # A session of its own: killing it also ends its workers (inductor's compilers).
            proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=self.env,
                                    start_new_session=True)
            while proc.poll() is None and time.time() < deadline + GRACE_S:
                self.write()
                time.sleep(POLL_S)
            killed = proc.poll() is None
            if killed:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        outcome = f"_Budget {deadline - started:.0f} s, took {time.time() - started:.0f} s._"
        if killed or proc.returncode:
            self.failed.append(part)
            with open(log) as f:
                tail = [ln.rstrip() for ln in f if ln.strip()][-LOG_TAIL:]
            outcome += (f" **Killed {GRACE_S} s after its deadline.**" if killed
                        else f" **Exit status {proc.returncode}.**")
            outcome += "\n\n```text\n" + "\n".join(tail) + "\n```"
        self.outcomes[part] = outcome

    def __call__(self):
        print(f"{PROG}: writing {self.path} (part logs in {self.work})", flush=True)
        parts = list(self.args.parts)
        for i, part in enumerate(parts):
            left_share = sum(SHARES[p] for p in parts[i:])
            now = time.time()
            self.run_part(part, now + (self.end - now) * SHARES[part] / left_share)
            self.write()
        self.write(finished=True)
        print(f"{PROG}: wrote {self.path}", flush=True)
        return self.path


def main(argv=None):
    """``zoo-gpu-report``: exit status 1 when a part crashed or was killed, else 0."""
    args = parse_args(argv)
    if args.part:
        return run_part(args)
    run = Run(args, sys.argv[1:] if argv is None else argv)
    run()
    return 1 if run.failed else 0


if __name__ == "__main__":
    sys.exit(main())

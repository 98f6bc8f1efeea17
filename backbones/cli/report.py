"""The one output format of the benchmarks: machine line, Markdown tables, notes, CSV rows.

``zoo-benchmark``, ``zoo-benchmark-ops`` and ``zoo-gpu-report`` print a Markdown document (the
machine it ran on, the tables, bulleted notes), write the same text with ``--markdown`` and one
row per measurement with ``--csv``. The model cards paste these documents as printed.
"""
import contextlib
import csv
import importlib.metadata
import os
import platform

import torch

MISSING = "–"  # a cell with no value (not measured, not applicable)


def cpu_model():
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what ``platform`` knows)."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def _version(package):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def describe_machine(device, *details):
    """One ``|``-separated line: the hardware a run used (the GPU's name on CUDA, else the CPU
    model and its core count), the versions of torch, triton and timm, then ``details`` (the
    run's settings, in the tool's words)."""
    device = torch.device(device)
    cpu = f"{cpu_model()} ({os.cpu_count()} CPUs)"
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu
    versions = [f"torch {torch.__version__}", f"triton {_version('triton')}",
                f"timm {_version('timm')}"]
    return " | ".join([hardware, *versions, *details])


def cell(value, spec):
    """``value`` formatted with ``spec``, or :data:`MISSING` for None."""
    return MISSING if value is None else format(value, spec)


def markdown_table(header, rows):
    """A Markdown table of ``rows`` (sequences of cells, already formatted)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


def bullets(items):
    return "\n".join(f"- {item}" for item in items)


def document(*blocks):
    """Blocks (lines, tables, bullet lists) separated by blank lines; empty blocks left out."""
    return "\n\n".join(block for block in blocks if block)


def error_text(exc):
    """An exception as one short line for a table's notes and the CSV's ``error`` column."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:300]


def write_text(path, text):
    """Write ``text`` to ``path`` through a temporary file: a run killed while writing leaves
    the previous version, never half of one."""
    partial = f"{path}.partial"
    with open(partial, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    os.replace(partial, path)


def write_markdown(path, text):
    """Write ``text`` and a final newline to ``path``, whole or not at all (the GPU report
    rewrites its file after every row)."""
    write_text(path, text + "\n")


def write_csv(path, rows, fields):
    """One CSV line per row (a dict), columns ``fields``; keys outside ``fields`` are left out.
    Whole or not at all: ``zoo-benchmark --results`` rewrites its file after every model."""
    partial = f"{path}.partial"
    with open(partial, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(partial, path)


def publish(text, rows, fields, markdown=None, csv_path=None):
    """Print a tool's report, and write it to ``markdown`` and its rows to ``csv_path``."""
    print(text)
    if markdown:
        write_markdown(markdown, text)
    if csv_path:
        write_csv(csv_path, rows, fields)

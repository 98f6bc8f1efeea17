"""The results files of ``zoo-benchmark --results DIR``: one row per model, and the README's table.

``DIR/benchmark-<device>.csv`` holds one row per model (zoo models and the timm models they are
compared with): params, GMACs, the paper's top-1, latency / throughput / peak memory per inference
batch size and the training step's time and peak memory, with the machine and the settings that
measured them. It is the single source: ``benchmark-<device>.md``, the chart and the README's table
(between :data:`README_START` and :data:`README_END`) are rendered from it, never edited by hand.

A run updates the rows of the models it measured and keeps the others, so a long run can be
resumed or redone model by model; every row of one file comes from the same machine and settings
(:func:`check_same_setup`), else the numbers in it would not be comparable.
"""
import csv
import dataclasses
import glob
import math
import os
import re
from typing import Optional

import backbones
from . import report
from ._common import UsageError

README_START = "<!-- results-table:start -->"
README_END = "<!-- results-table:end -->"
DEVICE_LABELS = {"cpu": "CPU", "cuda": "GPU"}


# ----------------------------------------------------------------------------- top-1

@dataclasses.dataclass(frozen=True)
class Comparator:
    """A timm model the zoo models are compared with, and its published ImageNet-1k top-1."""
    family: str  # legend / table label
    top1: float
    source: str


_DEIT = "DeiT official README (facebookresearch/deit README_deit.md): ImageNet-1k, 224"
_SWIN = "Swin official README (microsoft/Swin-Transformer): ImageNet-1k, 224"
_CONVNEXT = "ConvNeXt official README (facebookresearch/ConvNeXt): ImageNet-1k trained, 224"
_EVIT_M = ("EfficientViT-M (Liu et al., CVPR 2023) official README (microsoft/Cream "
           "EfficientViT/classification): ImageNet-1k, 224")
_EVIT_B = ("EfficientViT-B (Cai et al., ICCV 2023) official README (mit-han-lab/efficientvit "
           "applications/efficientvit_cls): ImageNet-1k, 224")

# The timm architectures people weigh the zoo against, from 2M to 90M parameters, with the top-1
# their authors published for ImageNet-1k training at 224 (each re-read from the official README
# named in ``source``; timm's pip package ships no results files). The benchmark gives them random
# weights: only their speed is measured here.
COMPARATORS = {
    "deit_tiny_patch16_224": Comparator("DeiT", 72.2, _DEIT),
    "deit_small_patch16_224": Comparator("DeiT", 79.9, _DEIT),
    "deit_base_patch16_224": Comparator("DeiT", 81.8, _DEIT),
    "swin_tiny_patch4_window7_224": Comparator("Swin", 81.2, _SWIN),
    "swin_small_patch4_window7_224": Comparator("Swin", 83.2, _SWIN),
    "swin_base_patch4_window7_224": Comparator("Swin", 83.5, _SWIN),
    "convnext_tiny": Comparator("ConvNeXt", 82.1, _CONVNEXT),
    "convnext_small": Comparator("ConvNeXt", 83.1, _CONVNEXT),
    "convnext_base": Comparator("ConvNeXt", 83.8, _CONVNEXT),
    "efficientvit_m0": Comparator("EfficientViT-M", 63.2, _EVIT_M),
    "efficientvit_m2": Comparator("EfficientViT-M", 70.8, _EVIT_M),
    "efficientvit_m4": Comparator("EfficientViT-M", 74.3, _EVIT_M),
    "efficientvit_m5": Comparator("EfficientViT-M", 77.1, _EVIT_M),
    "efficientvit_b1": Comparator("EfficientViT-B", 79.39, _EVIT_B),
    "efficientvit_b2": Comparator("EfficientViT-B", 82.1, _EVIT_B),
    "efficientvit_b3": Comparator("EfficientViT-B", 83.468, _EVIT_B),
}


@dataclasses.dataclass(frozen=True)
class Top1:
    value: Optional[float]
    verified: Optional[bool]
    source: str


def top1_of(name):
    """The published top-1 of model ``name``: a zoo model's family record (``paper_results``), a
    comparator's README, or, for timm's twin of a zoo model, that zoo model's."""
    base = name.split(".")[0]
    if base in backbones.list_zoo_models():
        family = backbones.get_family(base)
        paper = family.paper_results.get(base)
        if paper is None:
            return Top1(None, None, f"none: {family.name}'s record has no paper top-1")
        return Top1(paper.top1, paper.verified, f"{family.name} family record (paper_results)")
    if base in COMPARATORS:
        return Top1(COMPARATORS[base].top1, True, COMPARATORS[base].source)
    for family in map(backbones.get_family, backbones.list_families()):
        for zoo_name, twin in family.timm_equivalents.items():
            if twin == base and zoo_name in family.paper_results:
                paper = family.paper_results[zoo_name]
                return Top1(paper.top1, paper.verified, f"same architecture as {zoo_name}")
    return Top1(None, None, "none known")


def family_label(name):
    """The zoo family of ``name``, ``timm: <family>`` for a comparator, else ``timm``."""
    base = name.split(".")[0]
    if base in backbones.list_zoo_models():
        return backbones.get_family(base).name
    return f"timm: {COMPARATORS[base].family}" if base in COMPARATORS else "timm"


# ----------------------------------------------------------------------------- rows

PER_BATCH = ("latency_ms", "img_per_s", "peak_mem_mb")
FLOAT_FIELDS = {"params_m", "gmacs", "paper_top1", "train_step_ms", "train_step_peak_mem_mb"}
INT_FIELDS = {"train_batch"}
_PER_BATCH_FIELD = re.compile(rf"^({'|'.join(PER_BATCH)})_b(\d+)$")


def result_fields(batch_sizes):
    """The CSV's columns for inference batch sizes ``batch_sizes``."""
    per_batch = [f"{key}_b{b}" for b in batch_sizes for key in PER_BATCH]
    return ["family", "model", "source", "params_m", "gmacs", "resolution", "paper_top1",
            "top1_verified", "top1_source", *per_batch, "train_batch", "train_step_ms",
            "train_step_peak_mem_mb", "memory", "device", "machine", "settings", "error"]


def batch_sizes_of(fields):
    """The inference batch sizes whose columns ``fields`` has, in order."""
    found = [int(m.group(2)) for m in map(_PER_BATCH_FIELD.match, fields) if m]
    return list(dict.fromkeys(found))


def result_row(record, train_record=None, train_batch=None, *, device, machine, settings_text,
               memory):
    """One CSV row from the benchmark's record of a model (``record``: its inference cases by
    batch size) and of its training step at ``train_batch`` (``train_record``; None when not
    measured)."""
    name = record["model"]
    top1 = top1_of(name)
    errors = [record["error"]] if record.get("error") else []
    row = dict(family=family_label(name), model=name,
               source="zoo" if name.split(".")[0] in backbones.list_zoo_models() else "timm",
               params_m=record["params"] and round(record["params"] / 1e6, 3),
               gmacs=record["gmacs"] and round(record["gmacs"], 4),
               resolution=record["resolution"], paper_top1=top1.value,
               top1_verified=top1.verified, top1_source=top1.source, memory=memory,
               device=device, machine=machine, settings=settings_text)
    for batch, case in sorted(record["cases"].items()):
        if case.get("error"):
            errors.append(f"batch {batch}: {case['error']}")
            continue
        row.update({f"latency_ms_b{batch}": round(case["median_ms"], 3),
                    f"img_per_s_b{batch}": round(case["img_per_s"], 2),
                    f"peak_mem_mb_b{batch}": case["peak_mb"]})
    if train_record is not None:
        row["train_batch"] = train_batch
        case = train_record["cases"].get(train_batch)
        if case is not None and not case["error"]:
            row.update(train_step_ms=round(case["median_ms"], 3),
                       train_step_peak_mem_mb=case["peak_mb"])
        else:
            reason = case["error"] if case is not None else train_record.get("error") or "not run"
            if reason != record.get("error"):  # a model that cannot be built says so once
                errors.append(f"train step: {reason}")
    row["error"] = "; ".join(errors) or None
    return row


def sort_rows(rows):
    """Zoo models first, then timm's; by family, then by size."""
    def key(row):
        params = row.get("params_m")
        return (row["source"] != "zoo", row["family"],
                math.inf if params is None else params, row["model"])
    return sorted(rows, key=key)


def merge_rows(old, new):
    """``old`` with the rows of the models in ``new`` replaced (or added), sorted."""
    by_model = {row["model"]: row for row in old}
    by_model.update((row["model"], row) for row in new)
    return sort_rows(by_model.values())


def _parse(field, text):
    if text == "":
        return None
    if field in FLOAT_FIELDS or _PER_BATCH_FIELD.match(field):
        return float(text)
    if field in INT_FIELDS:
        return int(text)
    if field == "top1_verified":
        return text == "True"
    return text


def read_results(path):
    """``(rows, fields)`` of a results CSV, numbers as numbers and missing values as None."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        missing = {"model", "machine", "settings"} - set(fields)
        if missing:
            raise UsageError(f"{path} is not a results file of zoo-benchmark --results (no "
                             f"{', '.join(sorted(missing))} column); pass --fresh to replace it")
        rows = [{k: _parse(k, v) for k, v in row.items()} for row in reader]
    return rows, fields


def check_same_setup(rows, machine, settings_text, path):
    """Refuse to put rows of two different machines or settings in one file."""
    for row in rows:
        if (row["machine"], row["settings"]) != (machine, settings_text):
            raise UsageError(
                f"{path} holds results of another machine or settings ({row['model']}: "
                f"{row['machine']} | {row['settings']}); this run: {machine} | {settings_text}. "
                "Pass --fresh to measure every model of this run anew into it (its other rows "
                "are dropped), or give --results another directory")


def result_paths(directory, device):
    """``{"csv": ..., "md": ..., "png": ...}`` of ``device``'s results in ``directory``."""
    stem = os.path.join(directory, f"benchmark-{device}")
    return {ext: f"{stem}.{ext}" for ext in ("csv", "md", "png")}


def results_files(directory):
    """The results CSVs in ``directory``, the CPU's first."""
    found = glob.glob(os.path.join(directory, "benchmark-*.csv"))
    return sorted(found, key=lambda p: (not p.endswith("benchmark-cpu.csv"), p))


# ----------------------------------------------------------------------------- tables

def top1_cell(row):
    if row.get("paper_top1") is None:
        return report.MISSING
    return f"{row['paper_top1']:g}" + ("" if row.get("top1_verified") else " (unverified)")


def markdown_table(rows, fields):
    """Every column of the results of one device, one row per model."""
    batches = batch_sizes_of(fields)
    train_batch = next((r["train_batch"] for r in rows if r.get("train_batch")), None)
    memory = next((r["memory"] for r in rows if r.get("memory")), "peak MB")
    header = ["family", "model", "params (M)", "GMACs", "resolution", "top-1 (paper)"]
    for b in batches:
        header += [f"b{b} ms", f"b{b} img/s", f"b{b} {memory}"]
    if train_batch:
        header += [f"train b{train_batch} ms", f"train b{train_batch} {memory}"]
    lines = []
    for row in rows:
        line = [row["family"], f"`{row['model']}`", report.cell(row["params_m"], ".2f"),
                report.cell(row["gmacs"], ".3g"), row["resolution"] or report.MISSING,
                top1_cell(row)]
        for b in batches:
            line += [report.cell(row.get(f"latency_ms_b{b}"), ".1f"),
                     report.cell(row.get(f"img_per_s_b{b}"), ".1f"),
                     report.cell(row.get(f"peak_mem_mb_b{b}"), ".0f")]
        if train_batch:
            line += [report.cell(row.get("train_step_ms"), ".0f"),
                     report.cell(row.get("train_step_peak_mem_mb"), ".0f")]
        lines.append(line)
    return report.markdown_table(header, lines)


TOP1_NOTE = ("top-1 (paper): ImageNet-1k validation top-1 as published (zoo models: their "
             "family record's paper_results; timm models: their official READMEs, named below); "
             "(unverified): not yet re-read from its source; –: none published. Every model is "
             "timed with random weights: the numbers here are speed and memory, not accuracy.")


CHART_NOTE = ("Top-1: ImageNet-1k as published (zoo models: their family record's "
              "paper_results; timm models: their official READMEs); hollow: not yet re-read from "
              "its source. Speed: measured here with random weights.")


def notes(rows, memory_note=None, errors_in_full=True):
    """The notes under a results table: memory, top-1 sources, models that failed."""
    items = [memory_note] if memory_note else []
    items.append(TOP1_NOTE)
    sources = sorted({(r["family"], r["top1_source"]) for r in rows
                      if r["source"] == "timm" and r.get("paper_top1") is not None})
    items += [f"{family} top-1: {source}" for family, source in sources]
    failed = [r for r in rows if r.get("error")]
    if errors_in_full:
        items += [f"`{r['model']}`: {r['error']}" for r in failed]
    elif failed:
        items.append("Not (fully) measured, see the CSV's error column: "
                     + ", ".join(f"`{r['model']}`" for r in failed))
    return items


def readme_block(csv_paths, readme_dir):
    """The README's generated block: each device's machine line and chart, then one table of
    every model with each device's latency, throughput and training-step memory."""
    per_device = [(path, *read_results(path)) for path in csv_paths]
    per_device = [(path, rows, fields) for path, rows, fields in per_device if rows]
    if not per_device:
        return "No results yet: run the command above."
    blocks, columns, models = [], [], {}
    for path, rows, fields in per_device:
        device = rows[0]["device"]
        label = DEVICE_LABELS.get(device, device)
        csv_link = _relative(path, readme_dir)
        blocks.append(f"**{label}**: {rows[0]['machine']} | {rows[0]['settings']}. "
                      f"Every column: [`{csv_link}`]({csv_link}).")
        png = os.path.splitext(path)[0] + ".png"
        if os.path.exists(png):
            chart_link = _relative(png, readme_dir)
            blocks.append(f"![ImageNet top-1 against {label} latency]({chart_link})")
        batches = batch_sizes_of(fields)
        columns += [(f"{label} b{min(batches)} ms", device, f"latency_ms_b{min(batches)}", ".1f"),
                    (f"{label} b{max(batches)} img/s", device, f"img_per_s_b{max(batches)}", ".1f")]
        train_batch = next((r["train_batch"] for r in rows if r.get("train_batch")), None)
        if train_batch:
            columns.append((f"{label} train b{train_batch} {rows[0]['memory']}", device,
                            "train_step_peak_mem_mb", ".0f"))
        for row in rows:
            models.setdefault(row["model"], {})[device] = row
    header = ["family", "model", "params (M)", "GMACs", "top-1 (paper)", *(c[0] for c in columns)]
    lines = []
    for first in sort_rows(next(iter(by_device.values())) for by_device in models.values()):
        by_device = models[first["model"]]
        lines.append([first["family"], f"`{first['model']}`", report.cell(first["params_m"], ".2f"),
                      report.cell(first["gmacs"], ".3g"), top1_cell(first)]
                     + [report.cell(by_device.get(device, {}).get(key), spec)
                        for _, device, key, spec in columns])
    blocks.append(report.markdown_table(header, lines))
    all_rows = [row for _, rows, _ in per_device for row in rows]
    blocks.append(report.bullets(notes(all_rows, errors_in_full=False)))
    return report.document(*blocks)


def _relative(path, start):
    return os.path.relpath(path, start).replace(os.sep, "/")


def update_readme(readme, block):
    """Put ``block`` between the README's two marker lines; True when the file changed."""
    with open(readme, encoding="utf-8") as f:
        text = f.read()
    starts, ends = text.count(README_START), text.count(README_END)
    start, end = text.find(README_START), text.find(README_END)
    if (starts, ends) != (1, 1) or end < start:
        reversed_ = starts and ends and end < start
        found = f"found {starts} and {ends}" + (", in the wrong order" if reversed_ else "")
        raise UsageError(f"{readme} needs one line {README_START} and, below it, one line "
                         f"{README_END} around the generated results table ({found}); add them "
                         "where the table goes")
    new = f"{text[:start + len(README_START)]}\n{block}\n{text[end:]}"
    if new == text:
        return False
    report.write_text(readme, new)
    return True

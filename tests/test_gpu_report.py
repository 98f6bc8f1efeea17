"""zoo-gpu-report (backbones/cli/gpu_report.py): the dry run on the CPU does everything the GPU run
does, so the first minute of a GPU window is not spent on a typo."""
import ast
import csv
import importlib
import os
import re
import subprocess
import sys

import pytest

import backbones
from backbones.cli import gpu_report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _sections(text):
    """``{heading: body}`` of the report's ``## `` sections."""
    parts = re.split(r"^## \d+\. (.+)$", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def _table_rows(body):
    """The data rows of the first Markdown table in ``body``, as lists of cells."""
    lines = [ln for ln in body.splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]


@pytest.mark.slow
def test_dry_run_writes_every_section(tmp_path):
    """The real entry (the tools/ shim, argument parsing, the parts' processes, file writing),
    on the CPU: every section has its rows and says what could not run here."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the run sets it
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "gpu_report.py"),
                           "--dry-run", "--output", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report_path = tmp_path / "dry-run-cpu.md"
    text = report_path.read_text()
    assert text.startswith("# GPU report, dry run on the CPU")
    assert "finished in" in text and "Not started" not in text and "Left out" not in text
    assert "Exit status" not in text and "Killed" not in text, text

    sections = _sections(text)
    assert list(sections) == [gpu_report.TITLES[p] for p in gpu_report.SHARES]
    ops_count = len(gpu_report.FIRST_PER_OP)
    assert ops_count == len({p.op for p in gpu_report.benchmark_ops.PATTERNS})  # every op

    kernels = _table_rows(sections[gpu_report.TITLES["kernels"]])
    assert len(kernels) == ops_count * 3 and {r[2] for r in kernels} == {"fp32", "fp16", "bf16"}
    assert all(r[-1] == "pass" for r in kernels), kernels

    ops_body = sections[gpu_report.TITLES["ops"]]
    ops_rows = _table_rows(ops_body)
    assert [r[2] == "triton" for r in ops_rows] == [True, False] * ops_count
    assert all("error" not in r for r in ops_rows), ops_rows
    assert "FlexAttention skipped on the CPU" in ops_body

    models = _table_rows(sections[gpu_report.TITLES["models"]])
    assert {(r[1], r[3], r[4]) for r in models} == {
        (bench, backend, compiled) for bench in ("inference", "train")
        for backend in ("triton", "reference") for compiled in ("off", "eager")}
    assert all(float(r[5]) > 0 for r in models), models

    for part, count in (("kernels", len(kernels)), ("ops", len(ops_rows)),
                        ("models", len(models))):
        with open(tmp_path / f"dry-run-cpu.{part}.csv") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == count and not any(r["error"] for r in rows), rows


def test_parts_killed_at_their_deadline_leave_a_report(tmp_path, monkeypatch):
    """A part that outlives its deadline by GRACE_S is killed; the report says so, quoting its
    output, and the next part still gets its turn."""
    monkeypatch.setattr(gpu_report, "GRACE_S", 0)
    run = gpu_report.Run(gpu_report.parse_args(
        ["--dry-run", "--output", str(tmp_path), "--time-limit", "0.5"]), [])
    text = open(run()).read()
    assert run.failed == list(gpu_report.SHARES)  # main's exit status is 1
    sections = _sections(text)
    assert list(sections) == [gpu_report.TITLES[p] for p in gpu_report.SHARES]
    for body in sections.values():  # killed while importing torch, before any row
        assert "Killed 0 s after its deadline" in body and "```text" in body


def test_a_part_past_its_deadline_lists_what_it_left_out(tmp_path):
    args = gpu_report.parse_args(["--dry-run"])
    fragment = tmp_path / "kernels.md"
    gpu_report.run_kernels(args, 0.0, str(fragment), str(tmp_path / "kernels.csv"))
    text = fragment.read_text()
    assert "_No rows yet._" in text
    left_out = text.split("Left out at the part's deadline: ")[1]
    assert left_out.startswith("cswin_t_s1_v fp32, cswin_t_s1_v fp16, cswin_t_s1_v bf16, ")


def test_one_model_per_family_and_compiled_cases_last():
    assert set(gpu_report.FAMILY_MODELS) == set(backbones.FAMILIES)
    for family, name in gpu_report.FAMILY_MODELS.items():
        assert backbones.get_family(name).name == family
    assert set(gpu_report.DRY_RUN_MODELS) <= set(gpu_report.FAMILY_MODELS.values())
    cases = gpu_report.model_cases(["a", "b"], "inductor")
    assert len(cases) == len(set(cases)) == 2 * 2 * 2 * 2
    eager = [c for c in cases if c[3] is None]
    assert cases[:len(eager)] == eager  # a deadline cuts compiled cases first
    assert cases[len(eager)] == ("a", "inference", "triton", "inductor")
    assert cases[len(eager) + 1] == ("b", "inference", "triton", "inductor")


def test_dry_run_never_writes_into_model_cards(tmp_path):
    with pytest.raises(SystemExit, match="never writes into model_cards"):
        gpu_report.Run(gpu_report.parse_args(
            ["--dry-run", "--output", str(tmp_path / "model_cards" / "gpu")]), [])


def test_every_console_script_has_a_main():
    """setup.py's console scripts name modules of backbones.cli with a ``main``."""
    tree = ast.parse(open(os.path.join(ROOT, "setup.py")).read())
    scripts = next(ast.literal_eval(node.value) for node in tree.body
                   if isinstance(node, ast.Assign)
                   and getattr(node.targets[0], "id", None) == "CONSOLE_SCRIPTS")
    assert len(scripts) == len(set(scripts)) >= 9 and all(s.startswith("zoo-") for s in scripts)
    tools = {f[:-3] for f in os.listdir(os.path.join(ROOT, "tools")) if f.endswith(".py")}
    modules = {s.split("=")[1].split(":")[0].removeprefix("backbones.cli.") for s in scripts}
    assert tools == modules, "every tools/<name>.py shim has its console script and back"
    for script in scripts:
        module, function = script.split("=")[1].split(":")
        assert module.startswith("backbones.cli.") and function == "main", script
        assert callable(getattr(importlib.import_module(module), function)), script

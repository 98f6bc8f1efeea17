"""tools/benchmark_ops.py on the CPU: tiny shapes, Triton through the interpreter (conftest sets
TRITON_INTERPRET=1 when there is no GPU)."""
import csv
import importlib.util
import os

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATTERNS = ["cswin_t_s3_h", "swin_w7_56"]  # a zero-padded stripe and square windows
TINY = ["--device", "cpu", "--tiny", "--iters", "1", "--warmup", "0"]

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="the Triton backend needs TRITON_INTERPRET=1 on the CPU (set by conftest)")


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location(
        "zoo_tools_benchmark_ops", os.path.join(ROOT, "tools", "benchmark_ops.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rows_correctness_and_reports(tool, tmp_path, capsys):
    out_md, out_csv = tmp_path / "ops.md", tmp_path / "ops.csv"
    threads = torch.get_num_threads()
    rows = tool.main(TINY + ["--patterns", *PATTERNS, "--markdown", str(out_md),
                             "--csv", str(out_csv)])
    assert torch.get_num_threads() == threads  # --threads is undone on return

    assert [(r["pattern"], r["backend"]) for r in rows] == [
        (p, b) for p in PATTERNS for b in ("triton", "reference")]
    for r in rows:
        assert r["error"] is None, r
        assert r["dtype"] == "fp32" and r["device"] == "cpu" and r["tiny"] is True
        assert r["batch"] == 1 and r["heads"] == 1
        assert r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0
        assert r["fwd_gbps"] > 0 and r["fwd_bwd_gbps"] > 0
        assert r["fwd_hbm_frac"] is None  # no HBM on the CPU
        if r["backend"] == "triton":
            assert r["max_diff_out"] < 1e-4 and r["max_diff_grad"] < 1e-4
        else:  # the fp32 reference is the truth the others are compared against
            assert r["max_diff_out"] is None and r["max_diff_grad"] is None
    by_pattern = {r["pattern"]: r for r in rows}
    assert by_pattern["cswin_t_s3_h"]["shape"] == "B1 h1 8x8 d32 win 7x8 (padded)"
    assert by_pattern["swin_w7_56"]["shape"] == "B1 h1 14x14 d32 win 7x7"

    printed = capsys.readouterr().out
    text = out_md.read_text()
    assert text.strip() == printed.strip()
    assert f"**{tool.CPU_CAVEAT}**" in text
    header = next(ln for ln in text.splitlines() if ln.startswith("| pattern"))
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "pattern", "shape", "backend", "dtype", "fwd ms (CPU)", "fwd GB/s", "fwd+bwd ms (CPU)",
        "fwd+bwd GB/s", "max abs diff out", "max abs diff grads"]
    table = [ln for ln in text.splitlines() if ln.startswith("| ") and ln != header]
    assert len(table) == 4 and all(ln.count("|") == header.count("|") for ln in table)
    assert any("| reference (SDPA on gathered windows) |" in ln for ln in table)
    assert "FlexAttention skipped on the CPU" in text

    with open(out_csv) as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == tool.CSV_FIELDS
        written = list(reader)
    assert [(w["pattern"], w["backend"]) for w in written] == [
        (r["pattern"], r["backend"]) for r in rows]
    assert float(written[0]["max_diff_out"]) == pytest.approx(rows[0]["max_diff_out"])


def test_reference_only_without_interpreter(tool, monkeypatch, capsys):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    rows = tool.main(TINY + ["--patterns", "cswin_t_s4_full"])
    assert [r["backend"] for r in rows] == ["reference"]
    assert "TRITON_INTERPRET is not set" in capsys.readouterr().out


def test_unknown_pattern_and_bad_settings(tool):
    with pytest.raises(SystemExit, match=r"unknown pattern 'cswin_t_s9_v'.*did you mean"):
        tool.main(TINY + ["--patterns", "cswin_t_s9_v"])
    with pytest.raises(SystemExit, match=r"unknown pattern 'halo_\*'.*known patterns"):
        tool.main(TINY + ["--patterns", "halo_*"])
    with pytest.raises(SystemExit, match="fp32 only"):
        tool.main(TINY + ["--dtype", "bf16"])
    assert [p.name for p in tool.resolve_patterns(["cswin_t_s1_*", "full_14"])] == [
        "cswin_t_s1_v", "cswin_t_s1_h", "full_14"]


def test_pattern_table_and_bandwidth_lookup(tool):
    names = [p.name for p in tool.PATTERNS]
    assert len(names) == len(set(names)) and all(p.op in tool.OPS for p in tool.PATTERNS)
    stage1 = tool.WindowAttention(tool.PATTERNS[0], 128, 1, (56, 56))
    assert stage1.window == (56, 1) and not any(stage1.padding)
    fwd, bwd = stage1.compulsory_bytes(2)  # spec ops.md §5.3: about 209 MB for both branches
    assert 2 * fwd / 1e6 == pytest.approx(209, rel=0.02) and bwd > 1.9 * fwd
    assert tool.peak_hbm_tbps("NVIDIA H100 80GB HBM3") == 3.35
    assert tool.peak_hbm_tbps("NVIDIA H100 PCIe") == 2.0
    assert tool.peak_hbm_tbps("NVIDIA H200") == 4.8
    assert tool.peak_hbm_tbps("NVIDIA A100-SXM4-80GB") == 2.0
    assert tool.peak_hbm_tbps("NVIDIA A100-SXM4-40GB") == 1.55
    assert tool.peak_hbm_tbps("Tesla V100-SXM2-16GB") is None

"""zoo-benchmark-ops (backbones/cli/benchmark_ops.py) on the CPU: tiny shapes, Triton through the
interpreter (conftest sets TRITON_INTERPRET=1 when there is no GPU)."""
import csv
import os

import pytest
import torch

from backbones.cli import benchmark_ops as tool

PATTERNS = ["cswin_t_s3_h", "swin_w7_56"]  # a zero-padded stripe and square windows
TINY = ["--device", "cpu", "--tiny", "--iters", "1", "--warmup", "0"]

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="the Triton backend needs TRITON_INTERPRET=1 on the CPU (set by conftest)")


def test_rows_correctness_and_reports(tmp_path, capsys):
    out_md, out_csv = tmp_path / "ops.md", tmp_path / "ops.csv"
    threads = torch.get_num_threads()
    rows = tool.run(TINY + ["--patterns", *PATTERNS, "--markdown", str(out_md),
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


def test_reference_only_without_interpreter(monkeypatch, capsys):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    rows = tool.run(TINY + ["--patterns", "cswin_t_s4_full"])
    assert [r["backend"] for r in rows] == ["reference"]
    assert "TRITON_INTERPRET is not set" in capsys.readouterr().out


def test_unknown_pattern_and_bad_settings():
    with pytest.raises(SystemExit, match=r"unknown pattern 'cswin_t_s9_v'.*did you mean"):
        tool.run(TINY + ["--patterns", "cswin_t_s9_v"])
    with pytest.raises(SystemExit, match=r"unknown pattern 'litv2_\*'.*known patterns"):
        tool.run(TINY + ["--patterns", "litv2_*"])
    with pytest.raises(SystemExit, match="fp32 only"):
        tool.run(TINY + ["--dtype", "bf16"])
    assert [p.name for p in tool.resolve_patterns(["cswin_t_s1_*", "full_14"])] == [
        "cswin_t_s1_v", "cswin_t_s1_h", "full_14"]
    assert [p.name for p in tool.resolve_patterns(["halonet_h1_*"])] == [
        "halonet_h1_s1", "halonet_h1_s1_norel", "halonet_h1_s2_down"]
    assert [p.name for p in tool.resolve_patterns(["na_*"])] == ["na_7x7_56", "na_7x7_d2_56"]


def test_pattern_table_and_bandwidth_lookup():
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


ROUTED_HALO = ["biformer_s_s1", "halonet_h1_s2_down"]  # top-1 routing; strided halo with rel-pos


def test_routed_and_halo_rows(capsys):
    rows = tool.run(TINY + ["--patterns", *ROUTED_HALO])
    assert [(r["pattern"], r["backend"]) for r in rows] == [
        (p, b) for p in ROUTED_HALO for b in ("triton", "reference")]
    for r in rows:
        assert r["error"] is None, r
        assert r["batch"] == 1 and r["heads"] == 1 and r["tiny"] is True
        assert r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0 and r["fwd_gbps"] > 0
        if r["backend"] == "triton":
            assert r["max_diff_out"] < 1e-4 and r["max_diff_grad"] < 1e-4, r
        else:
            assert r["max_diff_out"] is None and r["max_diff_grad"] is None
    by_pattern = {r["pattern"]: r for r in rows}
    # --tiny keeps region / block / halo / top-k and shrinks the region / block grid.
    assert by_pattern["biformer_s_s1"]["shape"] == "B1 h1 16x16 d32 2x2 regions of 8x8, top-1"
    assert by_pattern["halonet_h1_s2_down"]["shape"] == (
        "B1 h1 16x16 q 8x8 d16 win 14 b8 h3 s2 rel-pos")
    text = capsys.readouterr().out
    assert "| reference (SDPA on gathered regions) |" in text
    assert "| reference (matmul + softmax on unfolded windows) |" in text
    assert "FlexAttention skipped for halo patterns" in text
    assert "FlexAttention skipped on the CPU" in text


def test_routed_and_halo_geometry():
    patterns = {p.name: p for p in tool.PATTERNS}
    for p in tool.PATTERNS:  # every pattern builds at full and at --tiny size
        cls = tool.OPS[p.op]
        for grid in (p.grid, cls.tiny_grid(p)):
            case = cls(p, 2, p.heads, grid)
            assert case.label() and case.forward_flops() > 0
    s1 = tool.RoutedAttention(patterns["biformer_s_s1"], 128, 2, (56, 56))
    s3 = tool.RoutedAttention(patterns["biformer_s_s3"], 128, 8, (14, 14))
    assert (s1.region_grid, s1.topk, s3.region_grid, s3.topk) == ((7, 7), 1, (7, 7), 16)
    assert s1.scale == 64 ** -0.5 and s3.scale == 256 ** -0.5  # BiFormer: qk_dim ** -0.5
    for case in (s1, s3):
        idx = case.region_index_cpu
        assert idx.shape == (128, 49, case.topk) and idx.dtype == torch.int64
        assert 0 <= idx.min() and idx.max() < 49
        assert (idx.sort(-1).values.diff(dim=-1) > 0).all()  # distinct regions per row
    again = tool.RoutedAttention(patterns["biformer_s_s3"], 128, 8, (14, 14))
    assert torch.equal(again.region_index_cpu, s3.region_index_cpu)  # seeded
    # spec ops.md §5.3, bf16, B=128: 209 / 52 MB, 6.6 / 1.6 GFLOP
    assert s1.compulsory_bytes(2)[0] / 1e6 == pytest.approx(209, rel=0.01)
    assert s3.compulsory_bytes(2)[0] / 1e6 == pytest.approx(52, rel=0.01)
    assert s1.forward_flops() / 1e9 == pytest.approx(6.6, rel=0.01)
    assert s3.forward_flops() / 1e9 == pytest.approx(1.64, rel=0.01)

    halo = tool.HaloAttention(patterns["halonet_h1_s1"], 128, 8, (56, 56))
    assert halo.forward_flops() / 1e9 == pytest.approx(20.1, rel=0.01)
    fwd, bwd = halo.compulsory_bytes(2)
    # Q, K, V, O at C=64 (205.5 MB) + fp32 LSE of 8 heads (12.8 MB) + rel tables (0.4 KB)
    assert fwd / 1e6 == pytest.approx(218.3, rel=0.01) and bwd > 1.9 * fwd
    norel = tool.HaloAttention(patterns["halonet_h1_s1_norel"], 128, 8, (56, 56))
    assert fwd - norel.compulsory_bytes(2)[0] == 2 * 27 * 8 * 2
    down = tool.HaloAttention(patterns["halonet_h1_s2_down"], 128, 8, (56, 56))
    assert down.q_grid == (28, 28) and down.output_shape() == (128, 8, 28, 28, 16)
    nq, nk = 128 * 8 * 28 * 28, 128 * 8 * 56 * 56
    assert down.compulsory_bytes(2)[0] == (2 * nq * 16 + 2 * nk * 16) * 2 + 4 * nq + 2 * 27 * 16 * 2


NEW_OPS = ["na_7x7_d2_56", "sparsifiner_s_k40", "dependencyvit_s"]  # one row per new op


def test_neighborhood_masked_reversed_rows(capsys):
    rows = tool.run(TINY + ["--patterns", *NEW_OPS])
    assert [(r["pattern"], r["backend"]) for r in rows] == [
        (p, b) for p in NEW_OPS for b in ("triton", "reference")]
    for r in rows:
        assert r["error"] is None, r
        assert r["batch"] == 1 and r["heads"] == 1 and r["tiny"] is True
        assert r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0 and r["fwd_gbps"] > 0
        if r["backend"] == "triton":
            assert r["max_diff_out"] < 1e-4 and r["max_diff_grad"] < 1e-4, r
        else:
            assert r["max_diff_out"] is None and r["max_diff_grad"] is None
    by_pattern = {r["pattern"]: r for r in rows}
    # --tiny: NA keeps kernel and dilation (grid >= kernel * dilation); masked keeps the keep rate.
    assert by_pattern["na_7x7_d2_56"]["shape"] == "B1 h1 14x14 d32 na 7x7 dil 2"
    assert by_pattern["sparsifiner_s_k40"]["shape"] == (
        "B1 h1 N65 d64 top-13 of 65, cls row dense")
    assert by_pattern["dependencyvit_s"]["shape"] == "B1 h1 N64 d64 dense, weighted"
    text = capsys.readouterr().out
    assert "| reference (explicit softmax on gathered neighborhoods) |" in text
    assert "| reference (SDPA with a bool mask) |" in text
    assert "| reference (matmul + softmax, transposed accumulation) |" in text
    assert "FlexAttention skipped for reversed patterns" in text
    assert "FlexAttention skipped on the CPU" in text


def test_neighborhood_masked_reversed_geometry():
    patterns = {p.name: p for p in tool.PATTERNS}
    # spec ops.md §5.3, bf16, B=128: "7x7 NA, 56x56, C=96": 7.6 GFLOP, 313 MB
    for name, dilation in (("na_7x7_56", 1), ("na_7x7_d2_56", 2)):
        na = tool.NeighborhoodAttention(patterns[name], 128, 3, (56, 56))
        assert (na.kernel, na.dilation) == (7, dilation)
        assert na.forward_flops() == 4 * 128 * 3 * 56 * 56 * 49 * 32
        assert na.forward_flops() / 1e9 == pytest.approx(7.6, rel=0.01)
        fwd, bwd = na.compulsory_bytes(2)
        assert fwd / 1e6 == pytest.approx(313, rel=0.01) and bwd > 1.9 * fwd

    # "Sparsifiner DeiT-S (k=40 of 197)": 1.6 GFLOP, 78 MB (Q, K, V, O + LSE; + the packed mask)
    sp = tool.MaskedAttention(patterns["sparsifiner_s_k40"], 128, 6, (14, 14))
    assert (sp.n, sp.topk, sp.cls_tokens) == (197, 40, 1)
    assert sp.forward_flops() == 2 * 128 * 6 * (197 + 196 * 40) * 128
    assert sp.forward_flops() / 1e9 == pytest.approx(1.6, rel=0.02)
    assert sp.mask_bytes() == 128 * 6 * 197 * 25
    fwd, bwd = sp.compulsory_bytes(2)
    assert (fwd - sp.mask_bytes()) / 1e6 == pytest.approx(78, rel=0.01) and bwd > 1.9 * fwd
    mask = tool.ops.unpack_mask(sp.mask_cpu, 197)
    assert mask.shape == (128, 6, 197, 197) and mask[:, :, 0].all()  # cls row dense
    assert (mask[:, :, 1:].sum(-1) == 40).all()  # distinct top-40 per patch row and head
    again = tool.MaskedAttention(patterns["sparsifiner_s_k40"], 128, 6, (14, 14))
    assert torch.equal(again.mask_cpu, sp.mask_cpu)  # seeded

    # "DependencyViT-S (dense, N=196)": 7.6 GFLOP, 78 MB (+ the (B, heads, N) weights)
    dep = tool.ReversedAttention(patterns["dependencyvit_s"], 128, 6, (14, 14))
    assert dep.n == 196 and dep.forward_flops() == 4 * 128 * 6 * 196 * 196 * 64
    assert dep.forward_flops() / 1e9 == pytest.approx(7.6, rel=0.01)
    fwd, bwd = dep.compulsory_bytes(2)
    weights = 128 * 6 * 196 * 2
    assert (fwd - weights) / 1e6 == pytest.approx(78, rel=0.01) and bwd > 1.9 * fwd
    leaves = dep.__class__(patterns["dependencyvit_s"], 2, 6, (14, 14)).make_inputs(
        torch.float32, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert leaves[1].shape == (2, 6, 196) and (leaves[1] >= 0).all()


@pytest.mark.parametrize("grid, kernel, dilation", [((14, 14), 7, 1), ((14, 11), 5, 2),
                                                    ((9, 12), 3, 3)])
def test_flex_na_mask_is_natten_window(grid, kernel, dilation):
    """The FlexAttention mask_mod (CUDA only) selects exactly ops' NATTEN window."""
    from ops.neighborhood_attention import neighborhood_index
    H, W = grid
    q_idx, kv_idx = torch.arange(H * W)[:, None], torch.arange(H * W)[None, :]
    got = tool.na_mask_mod(grid, kernel, dilation)(0, 0, q_idx, kv_idx)
    iy, ix = neighborhood_index(H, kernel, dilation), neighborhood_index(W, kernel, dilation)
    want = torch.zeros(H, W, H, W, dtype=torch.bool)
    for y in range(H):
        for x in range(W):
            want[y, x, iy[y][:, None], ix[x][None, :]] = True
    assert torch.equal(got, want.view(H * W, H * W))


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_baselines_compute_each_op_on_the_cpu():
    """The FlexAttention baselines (compiled, CUDA only in the tool) compute the op: their masks
    and token orders, run eagerly on the CPU, forward only (FlexAttention has no CPU backward)."""
    checked = []
    for pattern in tool.PATTERNS:
        case = tool.concrete_case(pattern, dict(tiny=True, batch=2))
        run, _ = case.flex_attention(torch.device("cpu"), compiled=False)
        if run is None:
            continue
        leaves, _ = tool.seeded_inputs(case, torch.float32, torch.device("cpu"))
        inputs = case.split([t.detach() for t in leaves])
        got, want = run(*inputs), case.call("reference")(*inputs)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, msg=pattern.name)
        checked.append(pattern.op)
    assert set(checked) == {"window", "routed", "neighborhood", "masked"}


def test_backends_choose_the_columns(capsys):
    rows = tool.run(TINY + ["--patterns", "swin_w7_56", "--backends", "reference", "flex"])
    assert [r["backend"] for r in rows] == ["reference"]
    assert "FlexAttention skipped on the CPU" in capsys.readouterr().out

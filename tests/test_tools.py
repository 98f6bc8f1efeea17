"""tools/benchmark.py and tools/convert.py, on the CPU, without network."""
import csv
import dataclasses
import json
import os
import shutil
import subprocess
import sys

import pytest
import timm
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import backbones
import ops
from conftest import GOLDEN

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def bench_tool():
    import backbones.cli.benchmark
    return backbones.cli.benchmark


@pytest.fixture(scope="module")
def convert_tool():
    import backbones.cli.convert
    return backbones.cli.convert


# ----------------------------------------------------------------------------- benchmark

def _patch_family(monkeypatch, name, **fields):
    """Swap a family's record for a copy with ``fields`` changed, for one test."""
    record = dataclasses.replace(backbones.FAMILIES[name], **fields)
    object.__setattr__(record, "module", backbones.FAMILIES[name].module)
    monkeypatch.setitem(backbones._family._FAMILIES, name, record)


def test_benchmark_params_gmacs_compare_paper(bench_tool, tmp_path, capsys, monkeypatch):
    _patch_family(monkeypatch, "cswin", paper_results={
        "cswin_tiny_224": backbones.PaperResult(top1=82.7, params_m=23, gflops=4.3)})
    out_csv = tmp_path / "params.csv"
    rows = bench_tool.run(["--models", "cswin_tiny_224", "--params-only", "--compare", "--paper",
                          "--csv", str(out_csv)])
    assert len(rows) == 1  # CSWin has no timm twin: no extra row
    assert rows[0]["params"] == 22_320_552
    assert rows[0]["gmacs"] == pytest.approx(4.341, rel=0.01)  # official count by fvcore
    assert rows[0]["error"] is None
    printed = capsys.readouterr().out
    assert "timm has no twin of cswin_tiny_224" in printed
    assert f"| cswin_tiny_224 | 22.32 | {rows[0]['gmacs']:.3f} | 224x224 | 82.7% / 23M / 4.3G |" in printed
    with open(out_csv) as f:
        assert [r["params"] for r in csv.DictReader(f)] == ["22320552"]


def test_benchmark_timed_case_writes_csv_and_markdown(bench_tool, tmp_path):
    out_csv, out_md = tmp_path / "bench.csv", tmp_path / "bench.md"
    rows = bench_tool.run(["--models", "cswin_tiny_224", "--img-size", "64", "--batch-sizes", "1",
                          "--iters", "1", "--warmup", "0", "--csv", str(out_csv),
                          "--markdown", str(out_md)])
    assert len(rows) == 1 and rows[0]["error"] is None, rows
    with open(out_csv) as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == bench_tool.CSV_FIELDS
        (row,) = list(reader)
    assert row["model"] == "cswin_tiny_224" and row["source"] == "zoo"
    assert row["resolution"] == "64x64" and row["batch_size"] == "1" and row["iters"] == "1"
    assert float(row["median_ms"]) > 0 and float(row["img_per_s"]) > 0
    assert float(row["peak_mb"]) >= 0 and row["memory"] == "peak RSS+ MB"
    text = out_md.read_text()
    assert f"torch {torch.__version__}" in text and "threads 2" in text
    assert "| model | params (M) | GMACs | resolution | b1 ms | b1 img/s | b1 peak RSS+ MB |" in text
    assert "| cswin_tiny_224 | 22.32 |" in text


def test_benchmark_rounds_pool_the_timed_calls_of_every_round(bench_tool, capsys):
    rows = bench_tool.run(["--models", "cswin_tiny_224", "--img-size", "32", "--batch-sizes", "1",
                           "--iters", "2", "--warmup", "0", "--rounds", "2"])
    assert len(rows) == 1 and rows[0]["error"] is None, rows
    assert rows[0]["iters"] == 4  # 2 timed calls x 2 rounds, pooled
    assert rows[0]["min_ms"] <= rows[0]["median_ms"]
    assert "2 rounds in turn, calls pooled" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--rounds must be >= 1"):
        bench_tool.run(["--models", "cswin_tiny_224", "--rounds", "0"])


def test_benchmark_paired_times_ours_and_the_timm_twin_call_by_call(bench_tool, capsys,
                                                                   monkeypatch):
    calls = []
    real = bench_tool.make_step

    def logged(model, *args):
        step = real(model, *args)
        name = "zoo" if type(model).__module__.startswith("backbones") else "timm"
        return lambda: (calls.append(name), step())[1]

    monkeypatch.setattr(bench_tool, "make_step", logged)
    rows = bench_tool.run(["--models", "shvit_s1_224", "cswin_tiny_224", "--paired",
                           "--img-size", "64", "--batch-sizes", "1", "--iters", "4",
                           "--warmup", "1"])
    (row,) = rows
    assert (row["model"], row["twin"], row["pairs"]) == ("shvit_s1_224", "shvit_s1", 4)
    assert row["ours_ms"] > 0 and row["twin_ms"] > 0 and row["ratio"] > 0
    # one warm-up each, then pairs in alternating order
    assert calls == ["zoo", "timm", "zoo", "timm", "timm", "zoo", "zoo", "timm", "timm", "zoo"]
    out = capsys.readouterr().out
    assert "4 pairs of calls in turn" in out and "| shvit_s1_224 | shvit_s1 | 64x64 | 1 |" in out
    assert "cswin_tiny_224 has no timm twin" in out
    with pytest.raises(SystemExit, match="--paired needs zoo models with a timm twin"):
        bench_tool.run(["--models", "cswin_tiny_224", "--paired"])


def test_benchmark_failing_model_gets_an_error_row(bench_tool, capsys):
    rows = bench_tool.run(["--models", "cswin_tiny_224", "--params-only", "--img-size", "1"])
    assert rows[0]["params"] == 22_320_552 and rows[0]["gmacs"] is None
    assert "GMAC count failed" in rows[0]["error"]
    assert "cswin_tiny_224: GMAC count failed" in capsys.readouterr().out


def test_benchmark_unknown_model_exits_with_a_message(bench_tool):
    with pytest.raises(SystemExit) as exc:
        bench_tool.run(["--models", "cswin_tinny_224", "--params-only"])
    assert "unknown model 'cswin_tinny_224'" in str(exc.value.code)
    assert "cswin_tiny_224" in str(exc.value.code)  # the close match is suggested


def _fake_official_repo(root):
    """An 'official repository' whose top-level ``ops`` package clashes with ours (as BiFormer's
    does) and whose constructor builds a CSWin-T with its own random weights."""
    (root / "ops").mkdir()
    (root / "ops" / "__init__.py").write_text("WHO = 'official'\n")
    (root / "models").mkdir()
    (root / "models" / "fake_cswin.py").write_text(
        "import timm\nimport torch\nfrom ops import WHO\n\n"
        "def tiny(pretrained=False):\n"
        "    torch.manual_seed(123)\n"
        "    model = timm.create_model('cswin_tiny_224')\n"
        "    model.built_with = WHO\n"
        "    return model\n")
    return root


def test_benchmark_import_official_sees_its_own_ops_and_leaves_ours(bench_tool, tmp_path):
    repo = _fake_official_repo(tmp_path)
    module = bench_tool.import_official(str(repo), "models/fake_cswin.py")
    assert module.WHO == "official"
    import sys
    assert sys.modules["ops"] is ops and hasattr(ops, "routed_attention_2d")
    assert "models" not in sys.modules and "models.fake_cswin" not in sys.modules


def test_benchmark_import_official_missing_requirement_says_what_to_do(bench_tool, tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "m.py").write_text("import fairscale_not_installed_anywhere\n")
    with pytest.raises(ImportError, match="install the official repository's requirements"):
        bench_tool.import_official(str(tmp_path), "models/m.py")


def test_benchmark_official_twin_rows(bench_tool, tmp_path, monkeypatch, capsys):
    (tmp_path / "repo").mkdir()
    repo = _fake_official_repo(tmp_path / "repo")
    _patch_family(monkeypatch, "cswin",
                  official_entrypoints={"cswin_tiny_224": "models/fake_cswin.py:tiny"})
    rows = bench_tool.run(["--models", "cswin_tiny_224", "cswin_small_224", "--params-only",
                           "--official", str(repo)])
    assert [(r["model"], r["source"]) for r in rows] == [
        ("cswin_tiny_224", "zoo"), ("cswin_tiny_224", "official"), ("cswin_small_224", "zoo")]
    assert rows[1]["params"] == 22_320_552 and rows[1]["error"] is None
    printed = capsys.readouterr().out
    assert "| cswin_tiny_224 (official code) | 22.32 |" in printed
    assert "--official: no official entrypoint is known for cswin_small_224" in printed
    diff = float(printed.split("largest output difference ")[1].split()[0])
    assert diff < 1e-5  # its weights went through checkpoint_filter_fn into ours


BENCHMARK_TOOLS = {"benchmark": "zoo-benchmark", "benchmark_ops": "zoo-benchmark-ops",
                   "compile_kernels": "zoo-compile-kernels", "gpu_report": "zoo-gpu-report"}


@pytest.mark.parametrize("tool", sorted(BENCHMARK_TOOLS))
def test_benchmark_tools_run_as_scripts_and_commands(tool):
    """``python tools/<tool>.py`` (the shim) and the installed console script are one command."""
    commands = [[sys.executable, os.path.join(ROOT, "tools", f"{tool}.py")]]
    script = shutil.which(BENCHMARK_TOOLS[tool])
    if script is None:
        pytest.fail(f"{BENCHMARK_TOOLS[tool]} is not installed: pip install -e .")
    commands.append([script])
    for command in commands:
        proc = subprocess.run(command + ["--help"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.startswith(f"usage: {BENCHMARK_TOOLS[tool]} "), proc.stdout[:200]


# ----------------------------------------------------------------------------- convert

@pytest.fixture
def cswin_fixture():
    path = os.path.join(GOLDEN, "cswin")
    if not os.path.isdir(path):
        pytest.fail(f"golden fixture not found at {path}; set BACKBONES_GOLDEN_DIR")
    return path


def test_convert_official_checkpoint_matches_golden(convert_tool, cswin_fixture, tmp_path):
    config_path = os.path.join(cswin_fixture, "config.json")
    with open(config_path) as f:
        config = json.load(f)
    checkpoint = tmp_path / "cswin_official.pth"
    torch.save({config["checkpoint_wrapper_key"]:
                load_file(os.path.join(cswin_fixture, "state_dict.safetensors"))}, checkpoint)
    output = tmp_path / "out" / "cswin_custom.safetensors"
    assert convert_tool.main([str(checkpoint), "--family", "cswin",
                              "--official-kwargs", config_path, "--output", str(output)]) == 0

    model = backbones.cswin.create_from_official(config["kwargs"], config["official_class"])
    model.load_state_dict(load_file(output), strict=True)
    io = load_file(os.path.join(cswin_fixture, "io.safetensors"))
    with torch.no_grad(), ops.use_backend("reference"):
        logits = model.eval()(io["input"])
    assert (logits - io["logits"]).abs().max().item() < 1e-4

    with safe_open(output, "pt") as f:
        meta = f.metadata()
    assert meta["format"] == "pt" and meta["family"] == "cswin"
    assert meta["num_classes"] == str(config["kwargs"]["num_classes"])
    assert meta["source_file"] == checkpoint.name and len(meta["source_sha256"]) == 64
    assert meta["zoo_version"] == backbones.__version__
    assert json.loads(meta["official_kwargs"]) == config["kwargs"]
    assert meta["official_class"] == config["official_class"]


def test_convert_variant_reads_num_classes_from_the_checkpoint(convert_tool, tmp_path):
    checkpoint = tmp_path / "cswin_tiny_10.pth"
    model = timm.create_model("cswin_tiny_224", num_classes=10)
    torch.save({"model": model.state_dict()}, checkpoint)
    output = tmp_path / "cswin_tiny_10.safetensors"
    summary = convert_tool.run([str(checkpoint), "--model", "cswin_tiny_224",
                               "--output", str(output)])
    assert summary["num_classes"] == 10 and summary["params"] == 22_320_552 - 990 * 513
    umask = os.umask(0o022)
    os.umask(umask)
    assert os.stat(output).st_mode & 0o777 == 0o666 & ~umask  # like any new file, as .pth
    with safe_open(output, "pt") as f:
        assert f.metadata()["architecture"] == "cswin_tiny_224"
        assert f.get_slice("head.fc.weight").get_shape() == [10, 512]


def test_convert_wrong_variant_is_a_clear_error(convert_tool, tmp_path):
    model = backbones.cswin.create_from_official(
        dict(embed_dim=8, depth=[1, 1, 1, 1], num_heads=[2, 2, 4, 4], split_size=[1, 2, 7, 7]))
    checkpoint = tmp_path / "wrong_variant.safetensors"
    save_file(model.state_dict(), checkpoint)
    with pytest.raises(SystemExit) as exc:
        convert_tool.main([str(checkpoint), "--model", "cswin_tiny_224", "--output",
                      str(tmp_path / "x.safetensors")])
    message = str(exc.value.code)
    assert "does not fit the model" in message and "size mismatch for stem.conv.weight" in message
    assert "--num-classes" in message and "another variant" in message
    assert not (tmp_path / "x.safetensors").exists()


def test_convert_missing_and_truncated_files(convert_tool, cswin_fixture, tmp_path):
    config_path = os.path.join(cswin_fixture, "config.json")
    args = ["--family", "cswin", "--official-kwargs", config_path,
            "--output", str(tmp_path / "x.safetensors")]
    with pytest.raises(SystemExit) as exc:
        convert_tool.main([str(tmp_path / "absent.pth")] + args)
    assert "does not exist" in str(exc.value.code)

    checkpoint = tmp_path / "cut.pth"
    torch.save({"state_dict_ema": load_file(os.path.join(cswin_fixture, "state_dict.safetensors"))},
               checkpoint)
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[:len(data) // 2])
    with pytest.raises(SystemExit) as exc:
        convert_tool.main([str(checkpoint)] + args)
    assert "truncated" in str(exc.value.code)

    cut = tmp_path / "cut.safetensors"
    save_file(load_file(os.path.join(cswin_fixture, "state_dict.safetensors")), cut)
    cut.write_bytes(cut.read_bytes()[:-100])
    with pytest.raises(SystemExit) as exc:
        convert_tool.main([str(cut)] + args)
    assert "truncated" in str(exc.value.code)


def test_benchmark_paired_versus_a_dense_model_shares_the_backbone(bench_tool, capsys):
    """``--versus``: a zoo model beside any other model, e.g. the dense ViT a sparse one starts
    from; ours takes the other's weights where they fit (here the whole DeiT backbone)."""
    rows = bench_tool.run(["--models", "sparsifiner_deit_small_224", "--paired", "--versus",
                           "deit_small_patch16_224", "--batch-sizes", "1", "--iters", "2",
                           "--warmup", "1"])
    (row,) = rows
    assert (row["model"], row["twin"], row["pairs"]) == ("sparsifiner_deit_small_224",
                                                         "deit_small_patch16_224", 2)
    assert row["ours_ms"] > 0 and row["twin_ms"] > 0
    assert "| sparsifiner_deit_small_224 | deit_small_patch16_224 | 224x224 | 1 |" in \
        capsys.readouterr().out

"""tools/export.py (``zoo-export``): one model per family to ``.pt2`` and ONNX, run again here in
torch and in onnxruntime (CPU) against the eager model, on the CPU, without network.

Each family's smallest registered model; the slow-to-trace ones (CSWin, BiFormer, LITv2,
Sparsifiner) shrunk with ``--model-kwargs``, the others (DependencyViT-Lite, ELA, HaloNet, SHViT,
ULSAM) as registered. CSWin's and BiFormer's symbolic-size traces take minutes and end static
(model_cards, results/export.md), so they run with ``--static-size``; LITv2's shows the fallback.
The tool's own checks are not taken on trust: every file is run here on a batch size (and, where
the metadata says the sides are dynamic, a size) the tool did not check.
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch

import backbones
import ops

try:
    import onnx  # noqa: F401
    import onnxruntime
except ImportError as exc:  # the dev extra installs them: a missing one is a broken install
    raise ImportError(f"{exc}: the export tests need pip install -e '.[export]'") from exc

from backbones.cli import export as export_tool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# family -> (model, extra command-line arguments, what the metadata must say of height / width:
# "dynamic", "square" (one symbolic side) or "static")
SHRUNK = "--model-kwargs"
CASES = {
    "biformer": ("biformer_tiny_224",
                 [SHRUNK, "depths=(1,1,1,1)", "dims=(32,64,128,256)", "--static-size"], "static"),
    "cswin": ("cswin_tiny_224", [SHRUNK, "embed_dim=16", "depths=(1,1,1,1)", "num_heads=(2,2,4,8)",
                                 "--static-size"], "static"),
    # the reference attention chunks its queries once the batch passes ~36: the range is halved
    "dependencyvit": ("dependencyvit_lite_tiny_224", ["--max-batch", "64"], "static"),
    "ela": ("ela_mobilenetv2_100_s_224", [], "square"),
    "halonet": ("halonet_h0_256", ["--static-batch", "1", "--static-size", "--no-onnx-optimize"],
                "static"),
    # traced with symbolic sides first: torch.export cannot keep them (the fallback path)
    "litv2": ("litv2_small_224", [SHRUNK, "embed_dim=32", "depths=(1,1,1,1)",
                                  "num_heads=(1,2,4,8)"], "static"),
    "shvit": ("shvit_s1_224", [], "dynamic"),
    "sparsifiner": ("sparsifiner_deit_small_224", [SHRUNK, "depth=2"], "static"),
    "ulsam": ("ulsam_mobilenetv1_050_e_224", [], "dynamic"),
}
SLOW = {"dependencyvit", "ela", "halonet", "shvit"}  # > 20 s on 2 CPU cores


def test_every_family_has_a_case():
    assert sorted(CASES) == backbones.list_families()
    for family, (model, _, _) in CASES.items():
        assert backbones.get_family(model).name == family


def _kwargs(extra):
    """The ``--model-kwargs`` of a case as create_model kwargs."""
    if SHRUNK not in extra:
        return {}
    parser = export_tool.build_parser()
    return parser.parse_args(["m", "--output", "x"] + extra).model_kwargs


def _eager(model_name, extra):
    """The model the tool exported: its seed, its kwargs."""
    torch.manual_seed(0)
    return timm.create_model(model_name, **_kwargs(extra)).eval()


def _photo_input(model, batch, size=None):
    prep = export_tool.preprocessing(model)
    photo = export_tool.load_photo(export_tool.DEFAULT_IMAGE)
    return export_tool.photo_batch(export_tool.photo_tensor(photo, prep, size), batch)


def _assert_close(got, want, rtol=1e-3):
    got = torch.as_tensor(got)
    assert got.shape == want.shape
    assert (got - want).abs().max().item() <= 1e-6 + rtol * want.abs().max().item()


@pytest.mark.parametrize("family", [pytest.param(f, marks=pytest.mark.slow) if f in SLOW else f
                                    for f in sorted(CASES)])
def test_family_exports_to_pt2_and_onnx(family, tmp_path, capsys):
    name, extra, sides = CASES[family]
    results = export_tool.run([name, "--output", str(tmp_path)] + extra)
    assert [r["format"] for r in results] == ["pt2", "onnx"]
    for status in [r["status"] for r in results]:
        assert status.startswith("ok"), status
        if sides != "dynamic":  # the table's status says why the sides are not free
            assert "; height / width " + ("square only: " if sides == "square" else "static: ") \
                in status, status
    printed = capsys.readouterr().out
    assert f"{name}: weights RANDOM (seed 0)" in printed
    assert "max |diff| vs eager" in printed
    static_batch = "--static-batch" in extra
    for r in results:
        labels = [label for label, _ in r["diffs"]]
        assert labels[0] == ("photo x1" if static_batch else "photo")
        if not static_batch:
            assert labels[1] == "batch 3"  # the dynamic batch, verified by the tool
        assert (len(labels) == 3) == (sides != "static")  # and the second size where dynamic

    pt2, onnx_path = tmp_path / f"{name}.pt2", tmp_path / f"{name}.onnx"
    meta = export_tool.read_metadata(str(pt2))
    assert meta == export_tool.read_metadata(str(onnx_path))
    model = _eager(name, extra)
    cfg = timm.data.resolve_data_config({}, model=model)
    prep = meta["preprocessing"]
    assert tuple(prep["input_size"]) == cfg["input_size"]
    assert tuple(prep["mean"]) == pytest.approx(cfg["mean"]) and \
        tuple(prep["std"]) == pytest.approx(cfg["std"])
    assert (prep["interpolation"], prep["crop_pct"]) == (cfg["interpolation"], cfg["crop_pct"])
    assert meta["model"] == name and meta["zoo_version"] == backbones.__version__
    assert meta["weights"] == "RANDOM (seed 0)"
    axes = meta["dynamic_axes"]
    if static_batch:
        assert "0" not in axes
    else:
        assert axes["0"] == {"name": "batch", "min": 1, "max": 32}
    names = {"dynamic": ("height", "width"), "square": ("side", "side")}.get(sides)
    assert (axes.get("2", {}).get("name"), axes.get("3", {}).get("name")) == (names or (None, None))
    assert (meta["size_note"] is None) == (sides == "dynamic")
    if "--max-batch" in extra:
        assert meta["batch_note"].startswith("batch up to 32, not 64: ")
    else:
        assert meta["batch_note"] is None

    # onnxruntime, as a user runs it: names and metadata from the file, a batch the tool did not
    # check (2), and the sides the metadata claims
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, out.name) == (meta["input_name"], meta["output_name"])
    custom = session.get_modelmeta().custom_metadata_map
    assert json.loads(custom["preprocessing"]) == prep
    expected_dims = [1 if static_batch else "batch", 3] + (
        list(names) if names else list(prep["input_size"][1:]))
    assert inp.shape == expected_dims
    batch = 1 if static_batch else 2
    inputs = [_photo_input(model, batch)]
    if names:
        low = axes["2"]["min"]
        size = (low + 21, low + 21) if sides == "square" else (low + 21, low + 46)
        inputs.append(_photo_input(model, batch, size))
    program = torch.export.load(str(pt2)).module()
    with torch.no_grad(), ops.use_backend("reference"):
        for x in inputs:
            want = model(x)
            _assert_close(session.run(None, {inp.name: x.numpy()})[0], want)
            _assert_close(program(x), want, rtol=0)


def test_table_lists_every_format_with_the_command(tmp_path):
    table = tmp_path / "t" / "export.md"
    argv = ["ulsam_mobilenetv1_050_e_224", "--output", str(tmp_path), "--formats", "onnx",
            "--static-size", "--table", str(table)]
    assert export_tool.main(argv) == 0
    lines = table.read_text().splitlines()
    assert lines[0] == f"`zoo-export {' '.join(argv)}`"
    assert lines[2] == "| model | format | dynamic axes | file size | max abs diff vs eager | " \
                       "export s | status |"
    cells = [c.strip() for c in lines[4].strip("|").split("|")]
    assert cells[:3] == ["ulsam_mobilenetv1_050_e_224", "onnx", "batch 1-32, 224x224 static"]
    diff, relative = cells[4].split(" ", 1)
    assert cells[3].endswith("MB") and float(diff) < 1e-6 and relative.endswith("of max logit)")
    assert float(cells[5]) > 0 and cells[6] == "ok; height / width static: --static-size"
    assert len(lines) == 5


def test_a_file_that_differs_from_eager_fails_loudly(tmp_path, monkeypatch, capsys):
    real = export_tool.RUNNERS["pt2"]
    monkeypatch.setitem(export_tool.RUNNERS, "pt2", lambda path: (
        lambda x, forward=real(path): forward(x) + 1e-2))
    table = tmp_path / "export.md"
    assert export_tool.main(["ulsam_mobilenetv1_050_e_224", "--output", str(tmp_path),
                             "--formats", "pt2", "--static-size", "--table", str(table)]) == 1
    err = capsys.readouterr().err
    assert "ulsam_mobilenetv1_050_e_224.pt2 differs from the eager model on the photo" in err
    assert "max |diff| 0.01 exceeds --atol" in err
    assert "| error: ulsam_mobilenetv1_050_e_224.pt2 differs from the eager model" in \
        table.read_text()


def test_judge_takes_float64_eager_as_the_referee_beyond_the_tolerance():
    want = torch.tensor([[1.0, -2.0, 0.5]])  # eager float32
    assert export_tool.judge(want + 1e-5, want, 1e-6, 1e-4) == (pytest.approx(1e-5, rel=0.01), None)
    exact = torch.tensor([[1.0, -2.0, 0.49]], dtype=torch.float64)  # eager float64: 0.01 away
    # a file as far from eager float32 as float64 eager is: the model's own rounding
    diff, note = export_tool.judge(exact.float(), want, 1e-6, 1e-4, lambda: exact)
    assert diff == pytest.approx(0.01, rel=0.01) and "eager float32 itself 0.01" in note
    # further from float64 eager than twice eager float32 is: an export error
    with pytest.raises(export_tool.MismatchError, match="float64 eager is 0.04 from it"):
        export_tool.judge(want + torch.tensor([[0, 0, 0.03]]), want, 1e-6, 1e-4, lambda: exact)
    with pytest.raises(export_tool.MismatchError, match=r"output shape \(1, 2\), eager \(1, 3\)"):
        export_tool.judge(want[:, :2], want, 1e-6, 1e-4)


def test_unexportable_family_names_its_reason(tmp_path, capsys):
    reason = backbones.get_family("halonet").export
    assert reason and "batch" in reason and "--static-batch" in reason
    assert export_tool.main(["halonet_h0_256", "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"halonet_h0_256 cannot be exported: {reason}" in err
    assert not os.listdir(tmp_path)
    # every other family exports with a dynamic batch: nothing else is recorded
    assert [f for f in backbones.list_families() if backbones.get_family(f).export] == ["halonet"]


def test_checkpoint_errors_are_clear(tmp_path, capsys):
    args = ["ulsam_mobilenetv1_050_e_224", "--output", str(tmp_path / "out"), "--checkpoint"]
    assert export_tool.main(args + [str(tmp_path / "absent.pth")]) == 2
    assert "does not exist" in capsys.readouterr().err

    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"<html>404 Not Found</html>")
    assert export_tool.main(args + [str(junk)]) == 2
    assert "neither a PyTorch checkpoint" in capsys.readouterr().err

    other = tmp_path / "other_model.pth"
    torch.save(timm.create_model("ulsam_mobilenetv1_075_e_224").state_dict(), other)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(other.read_bytes()[:4096])
    assert export_tool.main(args + [str(cut)]) == 2
    assert "damaged or truncated" in capsys.readouterr().err
    assert export_tool.main(args + [str(other)]) == 2
    assert "does not fit" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_checkpoint_weights_are_the_ones_exported(tmp_path):
    torch.manual_seed(7)
    trained = timm.create_model("ulsam_mobilenetv1_050_e_224", num_classes=10).eval()
    checkpoint = tmp_path / "trained.pth"
    torch.save({"state_dict": trained.state_dict()}, checkpoint)
    results = export_tool.run(["ulsam_mobilenetv1_050_e_224", "--checkpoint", str(checkpoint),
                               "--output", str(tmp_path), "--formats", "pt2", "--static-size"])
    assert results[0]["status"].startswith("ok") and \
        results[0]["weights"] == "checkpoint trained.pth"
    program = torch.export.load(str(tmp_path / "ulsam_mobilenetv1_050_e_224.pt2")).module()
    x = _photo_input(trained, 1)
    with torch.no_grad():
        torch.testing.assert_close(program(x), trained(x))  # 10 classes, the file's weights


def test_usage_errors(tmp_path, capsys):
    out = ["--output", str(tmp_path)]
    assert export_tool.main(["ulsam_mobilenetv1_050_e_22"] + out) == 2
    assert "did you mean ulsam_mobilenetv1_050_e_224" in capsys.readouterr().err
    assert export_tool.main(["resnet18"] + out) == 2
    assert "a timm model, not a zoo model" in capsys.readouterr().err
    assert export_tool.main(["ulsam_mobilenetv1_050_e_224", "--max-batch", "2"] + out) == 2
    assert "--max-batch must be >= 3" in capsys.readouterr().err
    assert export_tool.main(["ulsam_mobilenetv1_050_e_224", "--image",
                             str(tmp_path / "none.jpg")] + out) == 2
    assert "cannot read --image" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        export_tool.main(["ulsam_mobilenetv1_050_e_224", "--formats", "tflite"] + out)


def test_read_metadata_rejects_other_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        export_tool.read_metadata(str(tmp_path / "absent.onnx"))
    program = torch.export.export(torch.nn.Linear(2, 2), (torch.randn(1, 2),))
    torch.export.save(program, tmp_path / "plain.pt2")
    with pytest.raises(ValueError, match="not written by zoo-export"):
        export_tool.read_metadata(str(tmp_path / "plain.pt2"))
    (tmp_path / "x.tflite").write_bytes(b"")
    with pytest.raises(ValueError, match="expected a .pt2 or .onnx file"):
        export_tool.read_metadata(str(tmp_path / "x.tflite"))


def test_default_photo_is_a_real_photo():
    photo = export_tool.load_photo(export_tool.DEFAULT_IMAGE)
    assert photo.size == (451, 300)  # scikit-image's chelsea, CC0
    pixels = np.asarray(photo, dtype=np.float32)
    assert pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10_000


def test_runs_as_script_and_command():
    commands = [[sys.executable, os.path.join(ROOT, "tools", "export.py")]]
    script = shutil.which("zoo-export")
    if script is None:
        pytest.fail("zoo-export is not installed: pip install -e .")
    commands.append([script])
    for command in commands:
        proc = subprocess.run(command + ["--help"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.startswith("usage: zoo-export "), proc.stdout[:200]

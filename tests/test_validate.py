"""tools/validate.py (backbones.cli.validate) on the CPU, without network: accuracy against an independent computation,
image folders with a corrupt file, EMA selection, results files and clear input errors."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform

import backbones  # noqa: F401  (registers the zoo models)
from backbones.training.data import DigitsDataset
from backbones.training.checkpoint import write_safetensors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "validate.py")

TINY = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(2, 2, 4, 4), split_sizes=(1, 2, 2, None))
TINY_ARGS = ["--model-kwargs", "embed_dim=16", "depths=(1,1,1,1)", "num_heads=(2,2,4,4)",
             "split_sizes=(1,2,2,None)"]
DIGITS_ARGS = ["--model", "cswin_tiny_224", *TINY_ARGS, "--img-size", "32", "--crop-pct", "1.0",
               "--workers", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def tool():
    import backbones.cli.validate
    return backbones.cli.validate


def _tiny(num_classes=10, seed=0):
    torch.manual_seed(seed)
    return timm.create_model("cswin_tiny_224", num_classes=num_classes, **TINY)


def _eval_transform():
    # cswin_tiny_224's pretrained cfg (bicubic, ImageNet mean / std) at 32 px, crop_pct 1.0
    return create_transform((3, 32, 32), is_training=False, interpolation="bicubic", crop_pct=1.0,
                            mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A tiny CSWin trained for two epochs on the digits train split (so its accuracy is far from
    chance and a preprocessing or loading mistake shows), and an untrained one."""
    out = tmp_path_factory.mktemp("weights")
    untrained = _tiny(seed=1)
    net = _tiny(seed=0)
    train = DigitsDataset("train", img_size=32, transform=_eval_transform())
    loader = torch.utils.data.DataLoader(train, batch_size=64, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    net.train()
    for _ in range(2):
        for x, y in loader:
            loss = torch.nn.functional.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    trained_path = write_safetensors(net, str(out / "tiny.safetensors"),
                                     dict(model="cswin_tiny_224"))
    # an official-style .pth: live and EMA weights under wrapper keys, DDP prefixes
    pth = out / "tiny_ema.pth.tar"
    torch.save({"state_dict": {f"module.{k}": v for k, v in untrained.state_dict().items()},
                "state_dict_ema": {f"module.{k}": v for k, v in net.state_dict().items()},
                "epoch": 2}, pth)
    return dict(trained=trained_path, untrained=untrained, pth=str(pth))


def _reference_accuracy(state_dict):
    """Top-1 / top-5 on the digits val split, computed here without the tool."""
    net = _tiny(seed=123)
    net.load_state_dict(state_dict)
    net.eval()
    ds = DigitsDataset("val", img_size=32, transform=_eval_transform())
    hits1 = hits5 = 0
    with torch.no_grad():
        for i in range(0, len(ds), 100):
            batch = [ds[j] for j in range(i, min(i + 100, len(ds)))]
            x = torch.stack([b[0] for b in batch])
            y = torch.tensor([b[1] for b in batch])
            top = net(x).topk(5, dim=1).indices
            hits1 += (top[:, 0] == y).sum().item()
            hits5 += (top == y[:, None]).any(1).sum().item()
    return 100.0 * hits1 / len(ds), 100.0 * hits5 / len(ds), len(ds)


def test_digits_accuracy_matches_independent_computation(tool, weights, capsys):
    results = tool.run([*DIGITS_ARGS, "--checkpoint", weights["trained"]])
    assert isinstance(results, list) and len(results) == 1
    r = results[0]
    top1, top5, n = _reference_accuracy(load_file(weights["trained"]))
    assert top1 > 30, "the fixture's model should have learnt something"
    assert r["images"] == n == 364
    assert r["top1"] == pytest.approx(top1, abs=1e-3)
    assert r["top5"] == pytest.approx(top5, abs=1e-3)
    assert (r["model"], r["img_size"], r["crop_pct"], r["interpolation"]) == \
        ("cswin_tiny_224", 32, 1.0, "bicubic")
    assert r["param_count"] == pytest.approx(
        sum(p.numel() for p in _tiny().parameters()) / 1e6, abs=1e-4)
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(f"cswin_tiny_224 | top1 {top1:.2f} | top5 {top5:.2f} | 364 images | ")
    assert "bicubic" in line and line.endswith("s/img")


def test_use_ema_picks_the_ema_weights(tool, weights):
    trained = tool.run([*DIGITS_ARGS, "--checkpoint", weights["trained"]])[0]
    ema = tool.run([*DIGITS_ARGS, "--checkpoint", weights["pth"], "--use-ema"])[0]
    live = tool.run([*DIGITS_ARGS, "--checkpoint", weights["pth"]])[0]
    assert ema["top1"] == trained["top1"] and ema["top5"] == trained["top5"]
    top1, top5, _ = _reference_accuracy(weights["untrained"].state_dict())
    assert live["top1"] == pytest.approx(top1, abs=1e-3)
    assert live["top5"] == pytest.approx(top5, abs=1e-3)
    assert live["top1"] != trained["top1"]


def _image_folder(root, classes=("cat", "dog", "fox"), per_class=3):
    rng = np.random.default_rng(0)
    for c in classes:
        d = root / "val" / c
        d.mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(d / f"{c}_{i}.png")
    return root


def test_image_folder_skips_corrupt_image(tool, tmp_path, capsys):
    root = _image_folder(tmp_path / "data")
    (root / "val" / "dog" / "broken.jpg").write_bytes(os.urandom(2048))
    results = tool.run(["--model", "cswin_tiny_224", *TINY_ARGS, "--data-dir", str(root),
                              "--workers", "2", "-b", "4", "--device", "cpu"])
    assert isinstance(results, list), capsys.readouterr().err
    r = results[0]
    assert r["images"] == 9  # 3 classes x 3 images; the corrupt one is not scored
    assert r["skipped_images"] == 1
    assert r["num_classes"] == 3  # from the folder
    assert r["top5"] == 100.0  # 3 classes: the top-3 always hits
    assert r["img_size"] == 224 and r["crop_pct"] == 0.9  # the model's own cfg
    assert "1 corrupt image(s) skipped" in capsys.readouterr().err


def test_results_files(tool, weights, tmp_path):
    out_json, out_csv = tmp_path / "res" / "r.json", tmp_path / "r.csv"
    results = tool.run([*DIGITS_ARGS, "--checkpoint", weights["trained"],
                              "--results-file", str(out_json)])
    with open(out_json) as f:
        written = json.load(f)
    assert written == results
    for key in ("model", "top1", "top5", "images", "img_size", "crop_pct", "interpolation",
                "param_count"):
        assert key in written[0]
    assert tool.main([*DIGITS_ARGS, "--checkpoint", weights["trained"],
                      "--results-file", str(out_csv)]) == 0
    with open(out_csv) as f:
        row = next(csv.DictReader(f))
    assert float(row["top1"]) == results[0]["top1"] and int(row["images"]) == 364


@pytest.mark.parametrize("case", ["empty_class", "unknown_model", "missing_checkpoint",
                                  "num_classes_mismatch", "wrong_architecture", "no_split"])
def test_bad_inputs_fail_clearly(tool, weights, tmp_path, capsys, case):
    root = _image_folder(tmp_path / "data")
    argv = {
        "empty_class": ["--model", "cswin_tiny_224", *TINY_ARGS, "--data-dir", str(root)],
        "unknown_model": ["--model", "cswin_tinyy_224"],
        "missing_checkpoint": ["--model", "cswin_tiny_224", "--checkpoint",
                               str(tmp_path / "nope.safetensors")],
        "num_classes_mismatch": [*DIGITS_ARGS, "--checkpoint", weights["trained"],
                                 "--num-classes", "5"],
        "wrong_architecture": ["--model", "cswin_tiny_224", "--model-kwargs", "embed_dim=32",
                               "depths=(1,1,1,1)", "--checkpoint", weights["trained"]],
        "no_split": ["--model", "cswin_tiny_224", *TINY_ARGS, "--data-dir", str(root),
                     "--split", "test"],
    }[case]
    if case == "empty_class":
        (root / "val" / "empty").mkdir()
    assert tool.main([*argv, "--workers", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    expected = {
        "empty_class": [os.path.join(str(root), "val", "empty"), "holds no images"],
        "unknown_model": ["unknown model 'cswin_tinyy_224'", "import backbones",
                          "did you mean cswin_tiny_224"],
        "missing_checkpoint": ["nope.safetensors", "does not exist"],
        "num_classes_mismatch": ["10-class head", "--num-classes is 5"],
        "wrong_architecture": ["does not fit", "differ in shape", "--model-kwargs"],
        "no_split": ["no 'test' split"],
    }[case]
    for part in expected:
        assert part in err


def test_missing_data_dir_exit_status(tmp_path):
    proc = subprocess.run([sys.executable, TOOL, "--model", "cswin_tiny_224",
                           "--data-dir", str(tmp_path / "missing")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: data directory") and "missing" in proc.stderr
    assert proc.stdout == ""

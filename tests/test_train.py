"""tools/train.py and backbones.training: a few real training steps on a generated image folder and
on the embedded digits, exact resume, DDP on the CPU, the exported weights through timm's
pretrained path, clear errors for bad inputs, and every ImageNet recipe builds."""
import glob
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image

import backbones
from backbones.training.config import build_parser, resolve_config
from backbones.training.data import DigitsDataset

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model", "cswin_tiny_224", "--model-kwargs", "embed_dim=16", "depths=(1,1,1,1)",
        "num_heads=(2,2,2,2)", "split_sizes=(1,2,2,None)"]
TINY_KWARGS = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(2, 2, 2, 2),
                   split_sizes=(1, 2, 2, None))
FAST = ["--img-size", "32", "--crop-pct", "1.0", "--workers", "0", "--batch-size", "8",
        "--warmup-epochs", "0", "--log-interval", "1", "--lr", "1e-3"]


def _image_folder(root, classes=3, train=8, val=3, size=40, seed=0):
    rng = np.random.default_rng(seed)
    for split, n in (("train", train), ("val", val)):
        for c in range(classes):
            d = root / split / f"class_{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
                pixels[..., c % 3] = 200  # a learnable colour cue per class
                Image.fromarray(pixels).save(d / f"{i}.png")
    return root


def _cfg(argv):
    return resolve_config(build_parser().parse_args([str(a) for a in argv]))


def _train(argv):
    from backbones.training.classification import train
    return train(_cfg(argv))


def _final_state(runner):
    from safetensors.torch import load_file
    return load_file(glob.glob(os.path.join(runner.work_dir, "*.safetensors"))[0])


def test_steps_on_image_folder_with_mixup_ema_drop_path(tmp_path):
    data = _image_folder(tmp_path / "data")
    runner = _train(TINY + FAST + ["--data-dir", data, "--output", tmp_path / "out",
                                   "--experiment", "folder", "--epochs", "1", "--mixup", "0.8",
                                   "--cutmix", "1.0", "--model-ema", "--model-ema-decay", "0.5",
                                   "--drop-path", "0.1"])
    net = runner.model.net
    assert net.num_classes == 3 and runner.zoo["steps_per_epoch"] == 3
    # mixup on: the loss is SoftTargetCrossEntropy on mixed targets
    assert runner.model.mixup_fn is not None
    assert type(runner.model.train_loss).__name__ == "SoftTargetCrossEntropy"
    assert not hasattr(net.stages[0].blocks[0].drop_path, "drop_prob")  # linspace starts at 0
    assert net.stages[-1].blocks[-1].drop_path.drop_prob == pytest.approx(0.1)
    # the final export is the EMA, which differs from the live weights
    final = _final_state(runner)
    live = net.state_dict()
    assert final.keys() == live.keys()
    assert any(not torch.equal(final[k], live[k].cpu()) for k in final if k.endswith("weight"))
    # JSON scalars: one record per logged step with loss and lr, and the validation metrics
    scalars = glob.glob(str(tmp_path / "out" / "folder" / "*" / "vis_data" / "scalars.json"))
    records = [json.loads(line) for line in open(scalars[0])]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert any("accuracy/top1" in r for r in records)


def test_exported_weights_load_through_timm_pretrained_path(tmp_path):
    runner = _train(TINY + FAST + ["--output", tmp_path, "--experiment", "digits", "--epochs",
                                   "1", "--max-train-steps", "3", "--model-ema"])
    path = glob.glob(str(tmp_path / "digits" / "cswin_tiny_224.safetensors"))[0]
    from backbones.training.hooks import ModelEmaHook
    ema = timm.create_model("cswin_tiny_224", num_classes=10, **TINY_KWARGS).eval()
    hook = next(h for h in runner.hooks if isinstance(h, ModelEmaHook))
    ema.load_state_dict(dict(ema.state_dict(), **hook.full_ema()))
    loaded = timm.create_model("cswin_tiny_224", pretrained=True, num_classes=10,
                               pretrained_cfg_overlay=dict(file=path, num_classes=10),
                               **TINY_KWARGS).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), ema(x), rtol=0, atol=0)


def test_resume_continues_exactly(tmp_path):
    from mmengine.hooks import Hook

    class Stop(Hook):
        priority = "LOWEST"  # after CheckpointHook wrote epoch_1.pth

        def after_train_epoch(self, runner):
            raise KeyboardInterrupt

    common = TINY + FAST + ["--epochs", "2", "--max-train-steps", "4", "--model-ema",
                            "--model-ema-decay", "0.9", "--drop-path", "0.1", "--mixup", "0.5",
                            "--output", tmp_path]
    unbroken = _train(common + ["--experiment", "unbroken"])

    from backbones.training.classification import build_runner
    interrupted = build_runner(_cfg(common + ["--experiment", "interrupted"]))
    interrupted.register_hook(Stop())
    with pytest.raises(KeyboardInterrupt):
        interrupted.train()
    assert os.path.isfile(tmp_path / "interrupted" / "epoch_1.pth")
    resumed = _train(common + ["--experiment", "interrupted", "--resume",
                               tmp_path / "interrupted"])
    assert resumed.epoch == 2
    a, b = _final_state(unbroken), _final_state(resumed)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    for k, v in unbroken.model.net.state_dict().items():
        torch.testing.assert_close(v, resumed.model.net.state_dict()[k], rtol=0, atol=0)


DIGITS_RECIPE = ROOT / "configs" / "digits" / "cswin_digits.py"
# The README's main job (2 persistent loader workers, EMA, drop path, label smoothing, scale
# jitter, a 3-epoch warm-up, validation every epoch), on a smaller model, 3 steps per epoch and
# 3 epochs: stopping after epoch 1 stops inside the warm-up.
RECIPE_SHAPE = [DIGITS_RECIPE, "--model-kwargs", "embed_dim=16", "depths=(1,1,1,1)",
                "num_heads=(2,2,2,2)", "split_sizes=(1,2,2,None)", "--epochs", "3",
                "--batch-size", "32", "--max-train-steps", "3", "--log-interval", "1"]
KILL_MID_EPOCH_2 = """
import os, signal, sys
sys.path[:0] = [{root!r}]
import torch
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
from mmengine.hooks import Hook
import backbones.training.classification as classification

class KillMidEpoch2(Hook):
    priority = "LOWEST"

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.epoch == 1 and batch_idx == 1:  # the 2nd of 3 steps of the 2nd epoch
            os.kill(os.getpid(), signal.SIGKILL)

build_runner = classification.build_runner

def build_and_arm(cfg):
    runner = build_runner(cfg)
    runner.register_hook(KillMidEpoch2())
    return runner

classification.build_runner = build_and_arm
from backbones.cli.train import main
main(sys.argv[1:])
"""


def _assert_same_weights(a, b):
    from safetensors.torch import load_file
    a, b = load_file(a), load_file(b)
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} of {len(a)} tensors differ, e.g. {differ[:3]}"


@pytest.mark.slow
def test_resume_of_the_readme_recipe_is_bit_exact(tmp_path):
    """The digits recipe's shape stopped after epoch 1 (inside the warm-up) and resumed with
    --resume auto ends with the unbroken run's weights, bit for bit: after a clean
    --stop-after-epochs and after a SIGKILL in the middle of epoch 2."""
    def run(name, *extra):
        return _train(RECIPE_SHAPE + ["--output", tmp_path / name, "--experiment", "job", *extra])

    unbroken = run("unbroken")
    assert unbroken.zoo["total_epochs"] == 3 and unbroken.cfg.workers == 2
    assert unbroken.cfg.warmup_epochs == 3 and unbroken.cfg.model_ema and unbroken.cfg.drop_path
    final = tmp_path / "unbroken" / "job" / "cswin_tiny_224.safetensors"

    run("stopped", "--stop-after-epochs", "1")
    assert not (tmp_path / "stopped" / "job" / "epoch_2.pth").exists()
    resumed = run("stopped", "--resume", "auto")
    assert resumed.epoch == 3
    _assert_same_weights(final, tmp_path / "stopped" / "job" / "cswin_tiny_224.safetensors")
    live = unbroken.model.net.state_dict()
    for k, v in resumed.model.net.state_dict().items():
        assert torch.equal(v, live[k]), k

    # the killed job computes with this process's thread count: floating-point sums are split
    # by thread, so bit-exactness holds between runs with the same count (as on one machine)
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    code = KILL_MID_EPOCH_2.format(root=str(ROOT))
    argv = [str(a) for a in RECIPE_SHAPE + ["--output", tmp_path / "killed", "--experiment", "job"]]
    # output to a file, not a pipe: the orphaned loader workers would hold a pipe open
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.run([sys.executable, "-c", code, *argv], env=env, stdout=log,
                              stderr=subprocess.STDOUT, timeout=300)
    assert proc.returncode == -9, (tmp_path / "killed.log").read_text()[-3000:]
    job = tmp_path / "killed" / "job"
    assert (job / "epoch_1.pth").is_file() and not (job / "epoch_2.pth").exists()
    assert (job / "last_checkpoint").read_text().strip().endswith("epoch_1.pth")
    run("killed", "--resume", "auto")
    _assert_same_weights(final, job / "cswin_tiny_224.safetensors")


def test_augmentation_draws_do_not_depend_on_the_loader_workers(tmp_path):
    """A sample's augmentation is a function of (seed, epoch, position): epoch 2's first batch
    from persistent workers that already served epoch 1 equals a fresh loader's in the
    training process, and loading it leaves the training process's RNG streams untouched."""
    from backbones.training.classification import build_runner
    from backbones.training.data import release_loader_workers

    def loader(workers):
        cfg = _cfg(RECIPE_SHAPE + ["--workers", workers, "--output", tmp_path / str(workers)])
        return build_runner(cfg).train_loop.dataloader

    def first_batch(loader, epoch):
        loader.sampler.set_epoch(epoch)
        return next(iter(loader))

    persistent = loader(2)
    assert persistent.persistent_workers
    epoch1 = first_batch(persistent, 0)
    epoch2 = first_batch(persistent, 1)
    in_process = loader(0)
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    fresh = first_batch(in_process, 1)
    # the loader's own generator gives the worker base seed; the per-sample seeding is undone
    assert torch.equal(torch.random.get_rng_state(), before)
    assert torch.equal(epoch2[0], fresh[0]) and torch.equal(epoch2[1], fresh[1])
    assert not torch.equal(epoch1[0], epoch2[0])
    release_loader_workers(persistent)


def _torchrun(args, timeout=300):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tools" / "train.py")] + [str(a) for a in args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    # progress bars and log lines of the two ranks interleave: search the whole text
    values = dict(re.findall(r"rank (\d+): final weights checksum (\S+)", out))
    assert set(values) == {"0", "1"}, out[-3000:]
    return values


def test_torchrun_two_cpu_processes_agree(tmp_path):
    values = _torchrun(TINY + FAST + ["--epochs", "1", "--max-train-steps", "3",
                                      "--output", tmp_path, "--experiment", "ddp"])
    assert values["0"] == values["1"]


@pytest.mark.slow
def test_fsdp_two_cpu_processes_resume_exactly(tmp_path):
    # FSDP2 over 2 gloo processes, with EMA: the ranks agree, and a job stopped after epoch 1
    # and resumed ends where the unbroken run ends (checkpoints are gathered, then re-sharded)
    common = TINY + FAST + ["--fsdp", "--model-ema", "--model-ema-decay", "0.9", "--epochs", "2",
                            "--max-train-steps", "3", "--output", tmp_path]
    unbroken = _torchrun(common + ["--experiment", "unbroken"])
    assert unbroken["0"] == unbroken["1"]
    _torchrun(common + ["--experiment", "job", "--stop-after-epochs", "1"])
    assert (tmp_path / "job" / "epoch_1.pth").is_file()
    assert not (tmp_path / "job" / "epoch_2.pth").exists()
    resumed = _torchrun(common + ["--experiment", "job", "--resume", tmp_path / "job"])
    assert resumed == unbroken
    from safetensors.torch import load_file
    a = load_file(tmp_path / "unbroken" / "cswin_tiny_224.safetensors")
    b = load_file(tmp_path / "job" / "cswin_tiny_224.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # an FSDP checkpoint is an ordinary one: it loads into a plain model
    ckpt = torch.load(tmp_path / "job" / "epoch_2.pth", map_location="cpu", weights_only=False)
    net = timm.create_model("cswin_tiny_224", num_classes=10, **TINY_KWARGS)
    net.load_state_dict({k[4:]: v for k, v in ckpt["state_dict"].items()})


def test_progress_bar_owns_the_console_and_exports_are_ordinary_files(tmp_path, capsys):
    runner = _train(TINY + FAST + ["--output", tmp_path, "--experiment", "console", "--epochs",
                                   "1", "--max-train-steps", "3"])
    out = capsys.readouterr().out
    log = open(glob.glob(str(Path(runner.work_dir) / "*" / "*.log"))[0]).read()
    # mmengine's every-interval lines (--log-interval 1) and its validation line reach the log
    # file, not the console: there, a bar per epoch and the one-line summary
    assert "Epoch(train) [1][3/3]" in log and "Epoch(val) [1]" in log
    assert "Epoch(train)" not in out and "Epoch(val)" not in out
    assert "epoch 1/1 | train loss" in out and "val top1" in out and "done in" in out
    assert f"work dir: {runner.work_dir}" in out and "config:" not in out
    # the console is whole again once the run ends
    runner.logger.info("after the run")
    assert "after the run" in capsys.readouterr().out
    export = Path(runner.work_dir) / "cswin_tiny_224.safetensors"
    checkpoint = Path(runner.work_dir) / "epoch_1.pth"
    umask = os.umask(0o022)
    os.umask(umask)
    assert export.stat().st_mode & 0o777 == 0o666 & ~umask == checkpoint.stat().st_mode & 0o777


def test_head_init_scale_scales_the_initial_classifier(tmp_path):
    from backbones.training.classification import create_net, scale_head_init
    torch.manual_seed(0)
    plain = create_net(_cfg(TINY + ["--output", tmp_path]))
    torch.manual_seed(0)
    scaled = create_net(_cfg(TINY + ["--head-init-scale", "0.001", "--output", tmp_path]))
    a, b = plain.state_dict(), scaled.state_dict()
    assert torch.equal(b["head.fc.weight"], a["head.fc.weight"] * 0.001)
    assert torch.equal(b["head.fc.bias"], a["head.fc.bias"] * 0.001)
    assert all(torch.equal(a[k], b[k]) for k in a if not k.startswith("head.fc."))
    headless = timm.create_model("cswin_tiny_224", num_classes=0, **TINY_KWARGS)
    with pytest.raises(ValueError, match="no classifier"):
        scale_head_init(headless, 0.1)


# ---------------------------------------------------------------------------- bad inputs


def _error(argv, capsys):
    from backbones.cli.train import main
    assert main([str(a) for a in argv]) == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("tool", ["train", "train_det", "train_seg"])
def test_tools_and_console_scripts_exit_with_the_status(tool, tmp_path):
    """``python tools/<tool>.py`` and the installed ``zoo-<tool>`` command are one command: a bad
    input is one ``error:`` line and exit status 2."""
    import shutil
    script = shutil.which("zoo-" + tool.replace("_", "-"))
    if script is None:
        pytest.fail(f"zoo-{tool.replace('_', '-')} is not installed: pip install -e .")
    args = ["--model", "nope"] if tool == "train" else [str(tmp_path / "nope.py")]
    for command in ([sys.executable, str(ROOT / "tools" / f"{tool}.py")], [script]):
        proc = subprocess.run(command + args + ["--output", str(tmp_path)], capture_output=True,
                              text=True, timeout=300, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr


def test_bce_loss_is_per_class_sigmoid_on_thresholded_mixed_targets():
    """--bce-loss (ResNet Strikes Back, the HaloNet recipes): the loss is the mean per-class
    binary cross-entropy of the logits against mixup's targets binarised at the threshold."""
    from timm.data import Mixup
    from backbones.training.classification import ZooClassifier
    from backbones.training.losses import build_loss, recipe_loss
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5))
    mixup = Mixup(mixup_alpha=0.2, cutmix_alpha=0.0, label_smoothing=0.0, num_classes=5)
    cfg = _cfg(["--bce-loss", "--bce-target-thresh", "0.2", "--smoothing", "0.0"])
    assert cfg.bce_loss is True
    model = ZooClassifier(net, build_loss(recipe_loss(cfg, mixup_active=True)), mixup)
    x, y = torch.randn(4, 3, 2, 2), torch.tensor([0, 1, 2, 3])
    np.random.seed(0)  # timm's Mixup draws lambda with numpy (0.70 here) and mixes in place
    loss = model(x.clone(), y, mode="loss")["loss"]
    np.random.seed(0)
    mixed, soft = mixup(x.clone(), y)
    target = (soft > 0.2).float()
    assert (target.sum(1) == 2).all()  # both mixed classes count as positives
    logits = net(mixed)
    expected = -(target * F.logsigmoid(logits) + (1 - target) * F.logsigmoid(-logits)).mean()
    assert torch.allclose(loss, expected, atol=1e-6)
    # without mixup the hard labels are one-hot (and smoothed when asked)
    plain = ZooClassifier(net, build_loss(recipe_loss(_cfg(["--bce-loss", "--smoothing", "0"]),
                                                      mixup_active=False)))
    onehot = F.one_hot(y, 5).float()
    logits = net(x)
    expected = -(onehot * F.logsigmoid(logits) + (1 - onehot) * F.logsigmoid(-logits)).mean()
    assert torch.allclose(plain(x, y, mode="loss")["loss"], expected, atol=1e-6)


def _distillation_recipe(tmp_path, **extra):
    """A digits recipe (TINY student) distilled from a TINY teacher exported to a file."""
    from backbones.training.checkpoint import write_safetensors
    torch.manual_seed(1)
    teacher = timm.create_model("cswin_tiny_224", num_classes=10, **TINY_KWARGS)
    path = write_safetensors(teacher, str(tmp_path / "teacher.safetensors"))
    recipe = dict(
        model="cswin_tiny_224", model_kwargs=TINY_KWARGS, img_size=32, crop_pct=1.0, workers=0,
        batch_size=8, warmup_epochs=0, lr=1e-3, epochs=1, max_train_steps=2, log_interval=1,
        mixup=0.5, model_ema=True,
        loss=dict(type="distillation", base="soft_target_ce", alpha=0.5, tau=2.0),
        teacher=dict(model="cswin_tiny_224", model_kwargs=TINY_KWARGS, checkpoint=path))
    recipe.update(extra)
    config = tmp_path / "distill.py"
    config.write_text("".join(f"{k} = {v!r}\n" for k, v in recipe.items()))
    return config, teacher


def test_a_recipe_names_a_registered_loss_with_a_frozen_teacher(tmp_path):
    """The distillation recipe trains; the teacher is frozen (eval mode, no gradients, its weights
    untouched) and in no checkpoint or export; the loss terms are logged one by one."""
    config, reference = _distillation_recipe(tmp_path)
    runner = _train([config, "--output", tmp_path, "--experiment", "kd"])
    teacher = runner.model.teacher
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    for k, v in reference.state_dict().items():
        assert torch.equal(teacher.state_dict()[k], v), k
    assert type(runner.model.train_loss).__name__ == "DistillationLoss"
    student_keys = set(runner.model.net.state_dict())
    ckpt = torch.load(tmp_path / "kd" / "epoch_1.pth", map_location="cpu", weights_only=False)
    assert {k[len("net."):] for k in ckpt["state_dict"]} == student_keys
    assert all(k.startswith("net.") for k in ckpt["state_dict"])
    assert set(ckpt["ema_state_dict"]) <= student_keys
    assert set(_final_state(runner)) == student_keys
    scalars = glob.glob(str(tmp_path / "kd" / "*" / "vis_data" / "scalars.json"))
    records = [json.loads(line) for line in open(scalars[0])]
    steps = [r for r in records if "loss_distill" in r]
    assert len(steps) == 2 and all(
        r["loss"] == pytest.approx(r["loss_base"] + r["loss_distill"], abs=1e-3) for r in steps)


@pytest.mark.parametrize("case", ["unknown_loss", "teacher_missing", "teacher_unused"])
def test_bad_loss_recipes_are_clear_errors(tmp_path, capsys, case):
    extra = {"unknown_loss": dict(loss="focal_lossy"),
             "teacher_missing": dict(teacher=None),
             "teacher_unused": dict(loss="soft_target_ce")}[case]
    config, _ = _distillation_recipe(tmp_path, **extra)
    err = _error([config, "--output", tmp_path], capsys)
    expected = {
        "unknown_loss": ["unknown loss 'focal_lossy'", "bce, cross_entropy, distillation, "
                         "label_smoothing_ce, soft_target_ce"],
        "teacher_missing": ["compares the student with a teacher", "teacher = dict("],
        "teacher_unused": ["names a teacher", "'soft_target_ce' uses none"],
    }[case]
    for part in expected:
        assert part in err, err


def test_register_loss_adds_a_name_recipes_can_use():
    from backbones.training.losses import LOSSES, build_loss, register_loss

    @register_loss("test_scaled_ce")
    class ScaledCE(torch.nn.Module):
        def __init__(self, scale=1.0):
            super().__init__()
            self.scale = scale

        def forward(self, outputs, targets):
            return self.scale * F.cross_entropy(outputs, targets)

    try:
        loss = build_loss(dict(type="test_scaled_ce", scale=2.0))
        assert isinstance(loss, ScaledCE) and loss.scale == 2.0
        with pytest.raises(ValueError, match="already registered"):
            register_loss("test_scaled_ce")(ScaledCE)
        with pytest.raises(ValueError, match="test_scaled_ce.*unexpected keyword"):
            build_loss(dict(type="test_scaled_ce", gamma=2))
    finally:
        LOSSES.pop("test_scaled_ce")


def test_steps_per_epoch_counts_the_batches_the_loader_yields(tmp_path):
    """The loader drops the last partial batch: 1433 digits in batches of 100 are 14 steps (the
    lr schedule counts the updates the loop makes)."""
    from backbones.training.classification import build_runner
    runner = build_runner(_cfg(TINY + ["--batch-size", "100", "--workers", "0", "--output",
                                       tmp_path]))
    assert runner.zoo["steps_per_epoch"] == len(runner.train_loop.dataloader) == 14


def test_missing_data_dir_is_a_clear_error(tmp_path, capsys):
    err = _error(TINY + ["--data-dir", tmp_path / "nope", "--output", tmp_path], capsys)
    assert "does not exist" in err and "--data-dir" in err


def test_empty_class_folder_is_a_clear_error(tmp_path, capsys):
    data = _image_folder(tmp_path / "data", classes=2, train=2, val=1)
    (data / "train" / "class_9").mkdir()
    err = _error(TINY + ["--data-dir", data, "--output", tmp_path], capsys)
    assert "class_9" in err and "holds no images" in err


def test_unknown_model_is_a_clear_error(tmp_path, capsys):
    err = _error(["--model", "cswin_tinyy_224", "--output", tmp_path], capsys)
    assert "unknown model 'cswin_tinyy_224'" in err


def test_unknown_config_key_is_a_clear_error(tmp_path, capsys):
    err = _error(TINY + ["--cfg-options", "lerning_rate=1", "--output", tmp_path], capsys)
    assert "lerning_rate" in err


def test_corrupt_image_is_skipped_named_and_counted(tmp_path):
    data = _image_folder(tmp_path / "data", classes=2, train=4, val=2)
    bad = data / "train" / "class_1" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" * 4)
    runner = _train(TINY + FAST + ["--data-dir", data, "--output", tmp_path, "--epochs", "1",
                                   "--batch-size", "2"])
    assert runner.zoo["skip_counter"].value >= 1
    log = open(glob.glob(str(Path(runner.work_dir) / "*" / "*.log"))[0]).read()
    assert "skipped images" in log


def test_initial_checkpoint_class_mismatch(tmp_path, capsys):
    from backbones.training.checkpoint import write_safetensors
    net = timm.create_model("cswin_tiny_224", num_classes=7, **TINY_KWARGS)
    ckpt = write_safetensors(net, str(tmp_path / "seven.safetensors"))
    err = _error(TINY + ["--initial-checkpoint", ckpt, "--output", tmp_path], capsys)
    assert "7-class head" in err and "--num-classes 10" in err
    # with --num-classes given: a new head, the rest of the weights loaded
    runner_cfg = _cfg(TINY + FAST + ["--initial-checkpoint", ckpt, "--num-classes", "10",
                                     "--output", tmp_path])
    from backbones.training.classification import create_net
    fresh = create_net(runner_cfg)
    assert fresh.num_classes == 10
    for k, v in net.state_dict().items():
        if not k.startswith("head.fc."):
            torch.testing.assert_close(fresh.state_dict()[k], v, rtol=0, atol=0)


def test_missing_initial_checkpoint(tmp_path, capsys):
    err = _error(TINY + ["--initial-checkpoint", tmp_path / "none.pth", "--output", tmp_path],
                 capsys)
    assert "none.pth" in err and "does not exist" in err


# ---------------------------------------------------------------------------- configs


def test_no_arguments_is_the_embedded_digits_recipe():
    cfg = _cfg([])
    assert cfg.data_dir is None and cfg.model == "cswin_tiny_224"
    assert cfg.config_file.endswith(os.path.join("configs", "digits", "cswin_digits.py"))
    ds = DigitsDataset("val", img_size=32)
    assert len(ds) == 364 and len(DigitsDataset("train")) == 1433
    assert ds.image(0).size == (32, 32)


@pytest.mark.slow
def test_every_zoo_model_has_a_recipe_that_builds(tmp_path):
    from backbones.training.classification import build_runner
    data = _image_folder(tmp_path / "data", classes=2, train=2, val=1)
    names = backbones.list_zoo_models()
    missing = [n for n in names if not (ROOT / "configs" / "imagenet" / f"{n}.py").is_file()]
    assert not missing, f"no recipe for {missing}"
    for name in names:
        argv = [ROOT / "configs" / "imagenet" / f"{name}.py", "--data-dir", data, "--workers", "0",
                "--output", tmp_path / "out", "--experiment", name, "--batch-size", "2",
                "--num-classes", "2"]
        cfg = _cfg(argv)
        offline = ["--cfg-options", "pretrained=False"]  # no downloads here: random weights
        if cfg.get("teacher"):
            teacher = timm.create_model(cfg.teacher["model"], num_classes=2,
                                        **cfg.teacher.get("model_kwargs", {}))
            path = tmp_path / f"{name}_teacher.pth"
            torch.save(teacher.state_dict(), path)
            offline += [f"teacher.checkpoint={path}", "teacher.pretrained=False"]
            del teacher
        cfg = _cfg(argv + offline)
        assert cfg.model == name
        runner = build_runner(cfg)
        # the recipe reached the model, the optimizer and the schedule
        net = runner.model.net
        # every family scales stochastic depth linearly up to the recipe's rate in its last block
        drop_paths = [m.drop_prob for m in net.modules() if isinstance(m, timm.layers.DropPath)]
        if not drop_paths:  # a family without stochastic depth (SHViT)
            assert not cfg.drop_path
        else:
            assert drop_paths[-1] == pytest.approx(cfg.drop_path)
        assert runner.zoo["total_epochs"] == cfg.epochs + cfg.cooldown_epochs
        lrs = {g.get("lr_scale", 1.0) for g in runner.optim_wrapper.optimizer.param_groups}
        assert lrs == ({1.0, cfg.backbone_lr_scale} if cfg.backbone_lr_scale else {1.0})
        del runner, net


@pytest.mark.slow
def test_wandb_logging_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wandb").mkdir()
    _train(TINY + FAST + ["--output", tmp_path, "--experiment", "wb", "--epochs", "1",
                          "--max-train-steps", "2", "--log-wandb"])
    # mmengine's wandb backend writes under the run's vis_data folder
    runs = glob.glob(str(tmp_path / "wb" / "*" / "vis_data" / "wandb" / "offline-run-*"))
    assert runs and glob.glob(os.path.join(runs[0], "*.wandb"))


def test_cpu_bf16_amp_channels_last_accumulation_clipping(tmp_path):
    runner = _train(TINY + FAST + ["--output", tmp_path, "--epochs", "1", "--max-train-steps",
                                   "4", "--amp", "--channels-last", "--grad-accum-steps", "2",
                                   "--clip-grad", "0.5", "--model-ema"])
    wrapper = runner.optim_wrapper
    assert type(wrapper).__name__ == "CpuAmpOptimWrapper" and wrapper._accumulative_counts == 2
    assert wrapper.clip_grad_kwargs["max_norm"] == 0.5
    # 4 steps accumulated in pairs: 2 optimizer updates, and the lr schedule counted updates
    assert runner.iter == 4
    state = runner.optim_wrapper.optimizer.state
    assert {int(s["step"]) for s in state.values()} == {2}


def test_the_resnet_recipes_divide_the_lr_by_10_every_30_epochs(tmp_path):
    """The ResNet paper's step schedule (ELA's ResNet hosts): lr 0.1 at a batch of 256 for epochs
    0-29, 0.01 for 30-59, 0.001 for 60-89, whatever the update count per epoch."""
    from backbones.training.schedule import create_timm_scheduler
    cfg = _cfg([ROOT / "configs" / "imagenet" / "ela_resnet50_b_224.py", "--data-dir", tmp_path,
                "--lr", "0.1"])
    assert (cfg.sched, cfg.decay_epochs, cfg.decay_rate, cfg.epochs) == ("step", 30, 0.1, 90)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    scheduler, total = create_timm_scheduler(cfg, optimizer, steps_per_epoch=7)
    assert total == 90
    for epoch, lr in ((0, 0.1), (29, 0.1), (30, 0.01), (59, 0.01), (60, 0.001), (89, 0.001)):
        scheduler.step(epoch)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(lr), epoch

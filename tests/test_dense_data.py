"""COCO / ADE20K data, COCO evaluation and a few real training steps of Mask R-CNN and UperNet on
a zoo backbone, on hand-annotated scikit-image photos (tests/data/photos_coco.json)."""
import json
import os
import random

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from backbones.dense import IoUMetric, build_detector, build_segmentor
from backbones.dense.data import (
    ADE20KSegmentation, CocoDetection, VOCSegmentation, coco_evaluate, detection_collate)
from backbones.training.data import DataError

skimage_data = pytest.importorskip("skimage.data")
pytest.importorskip("pycocotools")

ANNOTATIONS = os.path.join(os.path.dirname(__file__), "data", "photos_coco.json")
SMALL = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(2, 2, 4, 4))
NUM_CLASSES = 6


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """COCO layout (images + the JSON) and ADE20K layout (labels rasterised from the same
    polygons: class id = category id, 0 = other) of the four photos, downscaled by 4."""
    from pycocotools.coco import COCO
    root = tmp_path_factory.mktemp("photos")
    with open(ANNOTATIONS) as f:
        coco_json = json.load(f)
    scale = 0.25
    for info in coco_json["images"]:
        info["width"], info["height"] = round(info["width"] * scale), round(info["height"] * scale)
    for ann in coco_json["annotations"]:
        ann["bbox"] = [v * scale for v in ann["bbox"]]
        ann["segmentation"] = [[v * scale for v in poly] for poly in ann["segmentation"]]
        ann["area"] *= scale ** 2
    (root / "coco").mkdir()
    with open(root / "coco" / "instances.json", "w") as f:
        json.dump(coco_json, f)
    coco = COCO(str(root / "coco" / "instances.json"))
    for split in ("training", "validation"):
        (root / "ade" / "images" / split).mkdir(parents=True)
        (root / "ade" / "annotations" / split).mkdir(parents=True)
    for info in coco_json["images"]:
        stem = os.path.splitext(info["file_name"])[0]
        image = Image.fromarray(getattr(skimage_data, stem)()).resize((info["width"], info["height"]))
        image.save(root / "coco" / info["file_name"])
        label = np.zeros((info["height"], info["width"]), np.uint8)
        for ann in coco.imgToAnns[info["id"]]:
            label[coco.annToMask(ann) > 0] = ann["category_id"]
        for split in ("training", "validation"):
            image.convert("RGB").save(root / "ade" / "images" / split / f"{stem}.jpg")
            Image.fromarray(label).save(root / "ade" / "annotations" / split / f"{stem}.png")
        _save_voc(root / "voc" / "VOCdevkit" / "VOC2012", stem, image, label)
    return root


def _save_voc(root, stem, image, label):
    """Pascal VOC 2012 layout: the photo, its labels as a palette PNG with VOC's 255 band along
    the object borders, and the stem in both split lists."""
    from scipy import ndimage
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    image.convert("RGB").save(root / "JPEGImages" / f"{stem}.jpg")
    border = ndimage.binary_dilation(label > 0) & ~ndimage.binary_erosion(label > 0)
    voc = np.where(border, 255, label).astype(np.uint8)
    png = Image.fromarray(voc, mode="P")
    png.putpalette([v for i in range(256) for v in ((i * 37) % 256, (i * 91) % 256, i)])
    png.save(root / "SegmentationClass" / f"{stem}.png")
    for split in ("train", "val"):
        with open(root / "ImageSets" / "Segmentation" / f"{split}.txt", "a") as f:
            f.write(stem + "\n")


# ----------------------------------------------------------------------------- COCO

def test_coco_dataset_items(photos):
    train = CocoDetection(str(photos / "coco"), str(photos / "coco" / "instances.json"),
                          train=True, masks=True)
    val = CocoDetection(str(photos / "coco"), str(photos / "coco" / "instances.json"))
    assert len(val) == 4 and len(train) == 3  # the rocket photo has no objects: training skips it
    assert train.class_names == ["person", "cat", "cup", "spoon", "helmet", "shuttle"]
    image, target = val[1]  # coffee: cup (3) and spoon (4)
    assert image.shape == (3, 100, 150) and 0 <= image.min() and image.max() <= 1
    assert target["labels"].tolist() == [3, 4]
    torch.testing.assert_close(target["boxes"][0], torch.tensor([43.75, 5., 101.25, 75.]))
    empty = val[3][1]
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)
    random.seed(3)
    flips = []
    for _ in range(8):
        img, t = train[1]
        flips.append(t["boxes"][0, 0].item() != 43.75)
        box = t["boxes"][0].round().long().tolist()
        mask = t["masks"][0]
        ys, xs = mask.nonzero(as_tuple=True)
        assert abs(xs.min().item() - box[0]) <= 1 and abs(xs.max().item() + 1 - box[2]) <= 1
    assert any(flips) and not all(flips)  # flipped about half the time, boxes with the masks


def test_coco_bad_inputs_say_what_is_wrong(photos, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        CocoDetection(str(photos / "coco"), str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        CocoDetection(str(photos / "coco"), str(bad))
    with pytest.raises(DataError, match="6 categories but the model is built for num_classes=80"):
        CocoDetection(str(photos / "coco"), str(photos / "coco" / "instances.json"), num_classes=80)
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"images": [{"id": 1, "file_name": "rocket.png", "width": 160,
                                             "height": 107}],
                                 "annotations": [], "categories": [{"id": 1, "name": "x"}]}))
    with pytest.raises(DataError, match="no annotated images"):
        CocoDetection(str(photos / "coco"), str(empty), train=True)
    with pytest.raises(DataError, match="cannot read image"):
        CocoDetection(str(tmp_path), str(photos / "coco" / "instances.json"))[0]


class _Oracle(torch.nn.Module):
    """Returns the ground truth as detections (score 1): COCOeval must give AP 100."""

    def __init__(self, dataset):
        super().__init__()
        self.targets = {t["image_id"]: t for t in (dataset[i][1] for i in range(len(dataset)))}
        self.queue = []

    def forward(self, images):
        out = []
        for _ in images:
            t = self.targets[self.queue.pop(0)]
            out.append(dict(boxes=t["boxes"], labels=t["labels"], scores=torch.ones(len(t["labels"])),
                            masks=t["masks"][:, None].float()))
        return out


def test_coco_evaluate_gives_100_on_perfect_detections(photos):
    val = CocoDetection(str(photos / "coco"), str(photos / "coco" / "instances.json"), masks=True)
    oracle = _Oracle(val)
    oracle.queue = list(val.ids)
    metrics = coco_evaluate(oracle, val)
    assert metrics["bbox_AP"] == pytest.approx(100.0) and metrics["segm_AP"] == pytest.approx(100.0)
    assert metrics["bbox_AP50"] == pytest.approx(100.0)


def test_coco_ap_by_hand(tmp_path):
    """One 10x10 ground-truth box, one detection covering its top 62 %: IoU 0.62 matches at the
    thresholds 0.50, 0.55, 0.60 of COCO's ten, so AP = 3 / 10; AP50 = 100, AP75 = 0; the box is
    'small' (area < 32^2): APs = AP, and no medium / large ground truth exists (NaN)."""
    import types
    from pycocotools.coco import COCO
    from backbones.dense.data import summarize_coco
    ann = tmp_path / "toy.json"
    ann.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "x.png", "width": 20, "height": 20}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [0, 0, 10, 10],
                         "area": 100, "iscrowd": 0}],
        "categories": [{"id": 7, "name": "thing"}]}))
    dataset = types.SimpleNamespace(coco=COCO(str(ann)), ids=[1])
    m = summarize_coco(dataset, [dict(image_id=1, category_id=7, bbox=[0, 0, 10, 6.2], score=0.9)])
    assert m["bbox_AP"] == pytest.approx(30.0) and m["bbox_APs"] == pytest.approx(30.0)
    assert m["bbox_AP50"] == pytest.approx(100.0) and m["bbox_AP75"] == pytest.approx(0.0)
    assert np.isnan(m["bbox_APm"]) and np.isnan(m["bbox_APl"])
    assert summarize_coco(dataset, [])["bbox_AP"] == 0.0  # no detections at all


@pytest.mark.slow
def test_mask_rcnn_trains_on_the_photos_and_is_evaluated(photos):
    torch.manual_seed(0)
    random.seed(0)
    train = CocoDetection(str(photos / "coco"), str(photos / "coco" / "instances.json"),
                          train=True, masks=True, num_classes=NUM_CLASSES)
    val = CocoDetection(str(photos / "coco"), str(photos / "coco" / "instances.json"), masks=True)
    detector = build_detector(
        "mask_rcnn", "cswin_tiny_224", NUM_CLASSES, min_size=96, max_size=128,
        detector_kwargs=dict(rpn_pre_nms_top_n_train=100, rpn_post_nms_top_n_train=50,
                             rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50,
                             box_batch_size_per_image=32, rpn_batch_size_per_image=32), **SMALL)
    optimizer = torch.optim.AdamW(detector.parameters(), lr=1e-4, weight_decay=0.05)
    loader = torch.utils.data.DataLoader(train, batch_size=2, shuffle=True,
                                         collate_fn=detection_collate)
    detector.train()
    totals = []
    for _ in range(2):
        for images, targets in loader:
            losses = detector(list(images), [{k: v for k, v in t.items() if k != "image_id"}
                                             for t in targets])
            loss = sum(losses.values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            totals.append(loss.item())
    assert all(np.isfinite(totals))
    metrics = coco_evaluate(detector, val)
    assert set(metrics) == {f"{t}_{n}" for t in ("bbox", "segm")
                            for n in ("AP", "AP50", "AP75", "APs", "APm", "APl")}
    assert all(0.0 <= v <= 100.0 for v in metrics.values() if not np.isnan(v))


# ----------------------------------------------------------------------------- ADE20K

def test_ade_dataset_reduces_zero_label_and_crops(photos):
    val = ADE20KSegmentation(str(photos / "ade"), "validation", scale=(256, 64))
    image, label = val[2]  # astronaut, chelsea, coffee (150x100 -> fits (256, 64): 96x64), rocket
    assert image.shape == (3, 64, 96) and label.shape == (100, 150)
    assert set(label.unique().tolist()) == {2, 3, 255}  # cup 3 -> 2, spoon 4 -> 3, other -> 255
    random.seed(0)
    train = ADE20KSegmentation(str(photos / "ade"), "training", train=True, scale=(256, 64),
                               crop_size=(48, 48), pad_value=(0.5, 0.25, 0.125))
    for i in range(len(train)):
        image, label = train[i]
        assert image.shape == (3, 48, 48) and label.shape == (48, 48)
    tall = ADE20KSegmentation(str(photos / "ade"), "training", train=True, scale=(32, 16),
                              crop_size=(48, 48), pad_value=(0.5, 0.25, 0.125))
    image, label = tall[0]  # too small for the crop: padded with the pad value and label 255
    assert (label[-1] == 255).all()
    torch.testing.assert_close(image[:, -1, -1], torch.tensor([0.5, 0.25, 0.125]))


def test_ade_bad_inputs(photos, tmp_path):
    with pytest.raises(DataError, match="images/"):
        ADE20KSegmentation(str(tmp_path), "training")
    root = tmp_path / "ade"
    (root / "images" / "training").mkdir(parents=True)
    (root / "annotations" / "training").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "images" / "training" / "a.jpg")
    with pytest.raises(DataError, match="have no label PNG"):
        ADE20KSegmentation(str(root), "training")
    Image.new("L", (8, 8), color=40).save(root / "annotations" / "training" / "a.png")
    with pytest.raises(DataError, match="num_classes=6"):
        ADE20KSegmentation(str(root), "training", num_classes=6)[0]


# ----------------------------------------------------------------------------- Pascal VOC

def test_voc_dataset_reads_palette_labels_pads_and_crops(photos):
    val = VOCSegmentation(str(photos / "voc"), "val")  # finds VOCdevkit/VOC2012 inside
    assert len(val) == 4
    image, label = val[1]  # coffee, 150x100, whole image at its size
    assert image.shape == (3, 100, 150) and label.shape == (100, 150)
    assert set(label.unique().tolist()) == {0, 3, 4, 255}  # background, cup, spoon, borders
    random.seed(0)
    train = VOCSegmentation(str(photos / "voc"), "train", train=True, crop_size=(48, 64))
    for i in range(len(train)):
        image, label = train[i]
        assert image.shape == (3, 48, 64) and label.shape == (48, 64)
    # a crop larger than the image: padded on every side, image 0, label pad_label
    for pad_label in (255, 0):
        big = VOCSegmentation(str(photos / "voc"), "train", train=True, crop_size=(200, 200),
                              ratio_range=(1.0, 1.0), pad_label=pad_label)
        image, label = big[1]
        assert image.shape == (3, 200, 200)
        assert label[0, 0] == pad_label and label[-1, -1] == pad_label
        assert (image[:, 0, 0] == 0).all() and (image[:, -1, -1] == 0).all()
        assert (label == 3).any()  # the cup survived


def test_voc_bad_inputs(photos, tmp_path):
    with pytest.raises(DataError, match="JPEGImages"):
        VOCSegmentation(str(tmp_path), "train")
    root = tmp_path / "VOC2012"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    with pytest.raises(DataError, match="train.txt does not exist"):
        VOCSegmentation(str(root), "train")
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("a\n")
    with pytest.raises(DataError, match="are missing"):
        VOCSegmentation(str(root), "train")
    Image.new("RGB", (8, 8)).save(root / "JPEGImages" / "a.jpg")
    Image.new("RGB", (8, 8)).save(root / "SegmentationClass" / "a.png")
    with pytest.raises(DataError, match="palette images, not RGB renderings"):
        VOCSegmentation(str(root), "train")[0]
    Image.new("L", (8, 8), color=21).save(root / "SegmentationClass" / "a.png")
    with pytest.raises(DataError, match="num_classes=21"):
        VOCSegmentation(str(root), "train")[0]


@pytest.mark.slow
def test_upernet_trains_on_the_photos_and_reports_miou(photos):
    torch.manual_seed(0)
    random.seed(0)
    segmentor = build_segmentor("cswin_tiny_224", NUM_CLASSES, channels=32, **SMALL)
    mean = tuple(segmentor.image_mean.flatten().tolist())
    train = ADE20KSegmentation(str(photos / "ade"), "training", train=True, scale=(256, 64),
                               crop_size=(64, 64), num_classes=NUM_CLASSES, pad_value=mean)
    val = ADE20KSegmentation(str(photos / "ade"), "validation", scale=(256, 64),
                             num_classes=NUM_CLASSES)
    optimizer = torch.optim.AdamW(segmentor.parameters(), lr=1e-3)
    segmentor.train()
    loader = torch.utils.data.DataLoader(train, batch_size=2, shuffle=True)
    losses = []
    for _ in range(3):
        for images, labels in loader:
            loss = sum(segmentor.loss(images, labels).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    assert all(np.isfinite(losses))
    metric = IoUMetric(NUM_CLASSES)
    segmentor.eval()
    with torch.no_grad():
        for image, label in val:
            logits = segmentor(image[None])
            logits = torch.nn.functional.interpolate(logits, size=label.shape, mode="bilinear",
                                                     align_corners=False)
            metric.update(logits, label[None])
    res = metric.compute()
    assert 0.0 <= res["mIoU"] <= 100.0 and 0.0 < res["aAcc"] <= 100.0
    assert len(res["IoU"]) == NUM_CLASSES


# ----------------------------------------------------------------------------- training tools

SMALL_FLAGS = ["--model-kwargs", "embed_dim=16", "depths=(1,1,1,1)", "num_heads=(2,2,4,4)"]


def _train(task, argv):
    from backbones.cli import train_det, train_seg
    return (train_det if task == "detection" else train_seg).run(argv)


@pytest.mark.slow
def test_train_det_tool_runs_the_recipe_on_the_photos(photos, tmp_path):
    runner = _train("detection", [
        "configs/coco/cswin_tiny_224_mask_rcnn_1x.py", "--data-dir", str(photos),
        *SMALL_FLAGS, "--epochs", "2", "--workers", "0", "--output", str(tmp_path),
        "--experiment", "det", "--log-interval", "1", "--cfg-options", "train_images=coco",
        "val_images=coco", "train_ann=coco/instances.json", "val_ann=coco/instances.json",
        "min_size=[96]", "max_size=128", "pretrained=False", "amp=False", "warmup_iters=2",
        "lr_steps=[1]"])
    metrics = runner.val()
    assert {"coco/bbox_AP", "coco/segm_AP"} <= set(metrics)
    assert all(0.0 <= v <= 100.0 for v in metrics.values() if not np.isnan(v))
    assert runner.optim_wrapper.get_lr()["lr"][0] == pytest.approx(1e-5)  # x0.1 after epoch 1
    assert os.path.isfile(tmp_path / "det" / "epoch_2.pth")
    # resume: the finished run's last checkpoint is found and the loop has nothing left to do
    resumed = _train("detection", [
        "configs/coco/cswin_tiny_224_mask_rcnn_1x.py", "--data-dir", str(photos), *SMALL_FLAGS,
        "--epochs", "2", "--workers", "0", "--output", str(tmp_path), "--resume",
        str(tmp_path / "det"), "--cfg-options", "train_images=coco", "val_images=coco",
        "train_ann=coco/instances.json", "val_ann=coco/instances.json", "min_size=[96]",
        "max_size=128", "pretrained=False", "amp=False"])
    assert resumed.epoch == 2


@pytest.mark.slow
def test_train_det_tool_runs_the_cascade_recipe_on_the_photos(photos, tmp_path):
    runner = _train("detection", [
        "configs/coco/cswin_tiny_224_cascade_mask_rcnn_3x.py", "--data-dir", str(photos),
        *SMALL_FLAGS, "--epochs", "1", "--workers", "0", "--output", str(tmp_path),
        "--experiment", "cascade", "--cfg-options", "train_images=coco", "val_images=coco",
        "train_ann=coco/instances.json", "val_ann=coco/instances.json", "min_size=[96,128]",
        "max_size=160", "pretrained=False", "amp=False", "warmup_iters=1"])
    assert type(runner.model.net.roi_heads).__name__ == "CascadeRoIHeads"
    metrics = runner.val()
    assert {"coco/bbox_AP", "coco/segm_AP"} <= set(metrics)  # masks reach the evaluation


@pytest.mark.slow
def test_train_seg_tool_runs_the_recipe_on_the_photos(photos, tmp_path):
    runner = _train("segmentation", [
        "configs/ade20k/cswin_tiny_224_upernet_160k.py", "--data-dir", str(photos / "ade"),
        *SMALL_FLAGS, "--max-iters", "4", "--val-interval", "4", "--warmup-iters", "2",
        "--workers", "0", "--output", str(tmp_path), "--experiment", "seg", "--log-interval", "1",
        "--cfg-options", "scale=[256,64]", "crop_size=[64,64]", "num_classes=6",
        "pretrained=False", "amp=False"])
    metrics = runner.val()
    assert set(metrics) == {"seg/mIoU", "seg/mAcc", "seg/aAcc"}
    assert 0.0 <= metrics["seg/mIoU"] <= 100.0
    assert os.path.isfile(tmp_path / "seg" / "iter_4.pth")


@pytest.mark.slow
def test_train_seg_tool_runs_the_voc_deeplabv3_recipe_on_the_photos(photos, tmp_path):
    """ELA's DeepLabV3 recipe end to end on the VOC-layout photos: the dilated ELA ResNet-18,
    SGD with the backbone at 0.1 x lr, BatchNorm momentum 0.01, weight decay on every parameter,
    two steps, then mIoU on the val list."""
    runner = _train("segmentation", [
        "configs/voc/ela_resnet18_b_224_deeplabv3_60k.py", "--data-dir", str(photos / "voc"),
        "--max-iters", "2", "--val-interval", "2", "--batch-size", "2", "--workers", "0",
        "--output", str(tmp_path), "--experiment", "voc", "--log-interval", "1",
        "--cfg-options", "crop_size=[65,65]", "pretrained=False"])
    net = runner.model.net
    assert net.backbone.strides[-1] == 16 and type(net.decode_head).__name__ == "DeepLabV3Head"
    assert net.decode_head[0].convs[1][0].dilation == (6, 6)  # ASPP rates of output stride 16
    blocks = [m for m in net.backbone.modules() if type(m).__name__ == "ElaBasicBlock"]
    assert blocks and all(b.ela.version == "s" and b.ela_residual for b in blocks)
    bns = [m for m in net.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.momentum == 0.01 for m in bns)
    assert [m.momentum for m in net.decode_head.modules()
            if isinstance(m, torch.nn.BatchNorm2d)][0] == 0.1
    optimizer = runner.optim_wrapper.optimizer
    assert isinstance(optimizer, torch.optim.SGD)
    backbone_ids = {id(p) for p in net.backbone.parameters()}
    for group in optimizer.param_groups:
        in_backbone = {id(p) in backbone_ids for p in group["params"]}
        assert len(in_backbone) == 1 and group["weight_decay"] == 5e-4
        assert group["initial_lr"] == pytest.approx(0.0025 if in_backbone.pop() else 0.025)
    metrics = runner.val()
    assert set(metrics) == {"seg/mIoU", "seg/mAcc", "seg/aAcc"}
    assert 0.0 <= metrics["seg/mIoU"] <= 100.0
    assert os.path.isfile(tmp_path / "voc" / "iter_2.pth")


DET_FLAGS = ["--cfg-options", "train_images=coco", "val_images=coco",
             "train_ann=coco/instances.json", "val_ann=coco/instances.json", "min_size=[96]",
             "max_size=128", "pretrained=False", "amp=False", "warmup_iters=2", "drop_path=0.1"]
SEG_FLAGS = ["--max-iters", "4", "--val-interval", "2", "--warmup-iters", "2", "--cfg-options",
             "scale=[256,64]", "crop_size=[64,64]", "num_classes=6", "pretrained=False",
             "amp=False", "drop_path=0.1"]


@pytest.mark.slow
@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_dense_resume_is_bit_exact(photos, tmp_path, task):
    """A run stopped after its first checkpoint (epoch 1 of 2; iteration 2 of 4) and resumed ends
    with the unbroken run's weights, bit for bit: each sample's augmentation is seeded from its
    position in the sample stream (whatever the persistent workers did before), and the training
    process is reseeded every epoch (every iteration of an iteration-based run)."""
    from mmengine.hooks import Hook
    from backbones.dense.config import build_parser, resolve_config
    from backbones.dense.engine import build_runner

    class Stop(Hook):
        priority = "LOWEST"  # after CheckpointHook wrote the first checkpoint

        def after_train_epoch(self, runner):
            raise KeyboardInterrupt

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            if task == "segmentation" and batch_idx == 1:
                raise KeyboardInterrupt

    if task == "detection":
        argv = ["configs/coco/cswin_tiny_224_mask_rcnn_1x.py", "--data-dir", str(photos),
                "--epochs", "2", *DET_FLAGS, "lr_steps=[1]"]
        first, last = "epoch_1.pth", "epoch_2.pth"
    else:
        argv = ["configs/ade20k/cswin_tiny_224_upernet_160k.py", "--data-dir",
                str(photos / "ade"), *SEG_FLAGS]
        first, last = "iter_2.pth", "iter_4.pth"
    argv = [*argv, *SMALL_FLAGS, "--workers", "2", "--output", str(tmp_path)]
    unbroken = _train(task, argv + ["--experiment", "unbroken"])
    interrupted = build_runner(resolve_config(build_parser(task).parse_args(
        argv + ["--experiment", "job"]), task))
    interrupted.register_hook(Stop())
    with pytest.raises(KeyboardInterrupt):
        interrupted.train()
    assert (tmp_path / "job" / first).is_file() and not (tmp_path / "job" / last).exists()
    resumed = _train(task, argv + ["--experiment", "job", "--resume", str(tmp_path / "job")])
    assert (resumed.epoch, resumed.iter) == (unbroken.epoch, unbroken.iter)
    live = unbroken.model.net.state_dict()
    for k, v in resumed.model.net.state_dict().items():
        assert torch.equal(v, live[k]), k


def test_dense_tools_reject_bad_setups(photos, tmp_path, capsys):
    from backbones.cli import train_det, train_seg
    assert train_seg.main(["configs/coco/cswin_tiny_224_mask_rcnn_1x.py",
                           "--data-dir", str(photos)]) == 2
    assert "is a detection recipe; use tools/train_det.py" in capsys.readouterr().err
    assert train_det.main(["configs/coco/cswin_tiny_224_mask_rcnn_1x.py"]) == 2
    assert "--data-dir is required" in capsys.readouterr().err
    assert train_det.main(["configs/coco/cswin_tiny_224_mask_rcnn_1x.py", "--data-dir",
                           str(tmp_path)]) == 2
    assert "instances_train2017.json does not exist" in capsys.readouterr().err
    assert train_det.main(["configs/coco/nope.py", "--data-dir", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.parametrize("config", sorted(
    os.path.join(folder, f) for folder in ("configs/coco", "configs/ade20k", "configs/voc")
    for f in (os.listdir(os.path.join(os.path.dirname(os.path.dirname(__file__)), folder))
              if os.path.isdir(os.path.join(os.path.dirname(os.path.dirname(__file__)), folder))
              else []) if f.endswith(".py")))
def test_every_transfer_recipe_resolves_and_names_its_paper_result(config):
    import backbones
    from backbones.dense.config import build_parser, resolve_config
    task = "detection" if "coco" in config else "segmentation"
    cfg = resolve_config(build_parser(task).parse_args([config, "--data-dir", "/data"]), task)
    # a zoo model, or a timm model as the plain baseline of a zoo recipe beside it
    assert cfg.model.split(".")[0] in backbones.list_zoo_models() or \
        ("voc" in config and timm.is_model(cfg.model))
    assert cfg.paper and any(ch.isdigit() for ch in cfg.paper)
    assert cfg.drop_path is not None and cfg.pretrained


@pytest.mark.slow
def test_train_seg_under_torchrun_two_cpu_processes_agree(photos, tmp_path):
    import re
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           os.path.join(root, "tools", "train_seg.py"),
           os.path.join(root, "configs", "ade20k", "cswin_tiny_224_semantic_fpn_80k.py"),
           "--data-dir", str(photos / "ade"), *SMALL_FLAGS, "--max-iters", "2",
           "--val-interval", "2", "--warmup-iters", "1", "--batch-size", "1", "--workers", "0",
           "--output", str(tmp_path), "--experiment", "ddp", "--cfg-options", "scale=[256,64]",
           "crop_size=[64,64]", "num_classes=6", "pretrained=False", "amp=False"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    values = dict(re.findall(r"rank (\d+): final weights checksum (\S+)", out))
    assert set(values) == {"0", "1"} and values["0"] == values["1"], out[-3000:]
    assert "seg/mIoU" in out

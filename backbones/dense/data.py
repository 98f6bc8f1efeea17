"""COCO detection and ADE20K segmentation data, with the papers' (mmdet / mmseg) pipelines.

COCO: an instances JSON read through pycocotools; category ids map to contiguous labels
``1..K`` in id order (0 is background); crowd boxes are left out of training targets (mmdet
ignores them), and images without objects are dropped from training only (mmdet's
``filter_empty_gt``). Resizing to (800, 1333) and padding happen inside the torchvision detector;
the dataset flips (p 0.5) while training.

ADE20K: ``images/{training,validation}/*.jpg`` with ``annotations/{training,validation}/*.png``
(class ids 0..150, 0 = "other"; ``reduce_zero_label`` makes it 255 and shifts the rest to
0..149). Training: random rescale of (2048, 512) by 0.5-2.0 keeping the ratio, a 512 crop whose
largest class covers at most 75 % (10 tries), flip, photometric distortion, padding to 512 with
label 255. Evaluation: the
image rescaled to fit (2048, 512), logits resized back to the original label size.

Pascal VOC 2012: ``JPEGImages/*.jpg``, class-id PNGs in ``SegmentationClass`` (palette PNGs, 0 =
background, 1..20 the objects, 255 the ignored object borders; ``SegmentationClassAug`` for the
10,582-image SBD-augmented set) and the split lists ``ImageSets/Segmentation/<split>.txt``. The
pipeline is the DeepLab one of the ELA code (a fork of VainF/DeepLabV3Plus-Pytorch): training
rescales by a factor drawn from 0.5-2.0, pads what is smaller than the 513 crop on every side,
crops at random and flips (p 0.5); evaluation takes the whole image at its size.
"""
import json
import os
import random

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..training.data import DataError

__all__ = ["CocoDetection", "ADE20KSegmentation", "VOCSegmentation", "coco_evaluate", "detection_collate",
           "summarize_coco", "to_coco_results"]

IMAGE_EXTS = (".jpg", ".jpeg", ".png")


def _to_tensor(image):
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.).permute(2, 0, 1)


def detection_collate(batch):
    return tuple(zip(*batch))


class CocoDetection(torch.utils.data.Dataset):
    """COCO-format detection / instance segmentation.

    Items are ``(image (3, H, W) float in [0, 1], target)`` with ``boxes`` (xyxy, pixels),
    ``labels`` (1..K), ``image_id`` and, with ``masks=True``, ``masks`` (N, H, W) uint8.
    """

    def __init__(self, image_dir, annotation_file, train=False, masks=False, num_classes=None):
        try:
            from pycocotools.coco import COCO
        except ImportError as e:
            raise ImportError("COCO data needs pycocotools: pip install -e '.[dense]'") from e
        if not os.path.isfile(annotation_file):
            raise DataError(f"annotation file {annotation_file} does not exist; COCO keeps them in "
                            "annotations/instances_{train,val}2017.json")
        if not os.path.isdir(image_dir):
            raise DataError(f"image folder {image_dir} does not exist")
        try:
            with open(annotation_file) as f:
                json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{annotation_file} is not valid JSON ({e})") from e
        import contextlib
        import io
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            self.coco = COCO(annotation_file)
        for key in ("images", "annotations", "categories"):
            if key not in self.coco.dataset:
                raise DataError(f"{annotation_file} has no '{key}': not a COCO instances file")
        self.cat_ids = sorted(self.coco.getCatIds())
        if num_classes is not None and num_classes != len(self.cat_ids):
            raise DataError(f"{annotation_file} has {len(self.cat_ids)} categories but the model "
                            f"is built for num_classes={num_classes}")
        self.label_of = {cat: i + 1 for i, cat in enumerate(self.cat_ids)}
        self.class_names = [self.coco.cats[c]["name"] for c in self.cat_ids]
        ids = sorted(self.coco.getImgIds())
        if train:
            ids = [i for i in ids if any(not a.get("iscrowd", 0)
                                         for a in self.coco.imgToAnns.get(i, []))]
        if not ids:
            raise DataError(f"{annotation_file} has no {'annotated ' if train else ''}images")
        self.ids, self.image_dir, self.train, self.masks = ids, image_dir, train, masks

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, index):
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        path = os.path.join(self.image_dir, info["file_name"])
        try:
            image = Image.open(path)
            image.load()
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read image {path} ({e})") from e
        W, H = image.size
        anns = [a for a in self.coco.imgToAnns.get(image_id, [])
                if not a.get("iscrowd", 0) and a["bbox"][2] > 0 and a["bbox"][3] > 0]
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)],
                             dtype=torch.float32).reshape(-1, 4)
        target = dict(boxes=boxes, image_id=image_id,
                      labels=torch.tensor([self.label_of[a["category_id"]] for a in anns],
                                          dtype=torch.int64))
        if self.masks:
            target["masks"] = torch.from_numpy(
                np.stack([self.coco.annToMask(a) for a in anns]) if anns
                else np.zeros((0, H, W), np.uint8))
        image = _to_tensor(image)
        if self.train and random.random() < 0.5:
            image = image.flip(-1)
            target["boxes"] = torch.stack([W - boxes[:, 2], boxes[:, 1], W - boxes[:, 0],
                                           boxes[:, 3]], 1) if len(boxes) else boxes
            if self.masks:
                target["masks"] = target["masks"].flip(-1)
        return image, target


def to_coco_results(output, image_id, cat_ids):
    """One image's detector output as COCO result entries: ``{'bbox': [...], 'segm': [...]}``
    (labels 1..K back to category ids; label 0 of the one-stage heads is never a category)."""
    from pycocotools import mask as mask_utils
    results = {"bbox": [], "segm": []}
    for i, (box, score, label) in enumerate(zip(output["boxes"].tolist(), output["scores"].tolist(),
                                                output["labels"].tolist())):
        if label < 1 or label > len(cat_ids):
            continue
        entry = dict(image_id=int(image_id), category_id=cat_ids[label - 1],
                     bbox=[box[0], box[1], box[2] - box[0], box[3] - box[1]], score=score)
        results["bbox"].append(entry)
        if "masks" in output:
            binary = (output["masks"][i, 0] > 0.5).cpu().numpy().astype(np.uint8)
            rle = mask_utils.encode(np.asfortranarray(binary))
            rle["counts"] = rle["counts"].decode("ascii")
            results["segm"].append(dict(entry, segmentation=rle))
    return results


def summarize_coco(dataset, bbox, segm=()):
    """COCOeval of result entries on ``dataset``: ``{'bbox_AP', 'bbox_AP50', ..., 'segm_AP',
    ...}`` in percent (segm only when mask results are given; no detections -> 0; an area range
    without ground truth -> NaN)."""
    import contextlib
    import io
    from pycocotools.cocoeval import COCOeval
    metrics = {}
    names = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    for iou_type, dets in (("bbox", list(bbox)), ("segm", list(segm))):
        if iou_type == "segm" and not dets:
            continue
        stats = [0.0] * 6
        if dets:
            with contextlib.redirect_stdout(io.StringIO()):
                coco_eval = COCOeval(dataset.coco, dataset.coco.loadRes(dets), iou_type)
                coco_eval.params.imgIds = dataset.ids
                coco_eval.evaluate()
                coco_eval.accumulate()
                coco_eval.summarize()
            stats = coco_eval.stats[:6]
        # COCOeval's -1 ("no ground truth in this area range") becomes NaN, not a score of 0
        metrics.update({f"{iou_type}_{n}": 100 * float(v) if v >= 0 else float("nan")
                        for n, v in zip(names, stats)})
    return metrics


@torch.no_grad()
def coco_evaluate(detector, dataset, batch_size=2, device="cpu"):
    """Box (and mask, for Mask R-CNN) AP of ``detector`` on ``dataset`` with pycocotools'
    COCOeval: ``{'bbox_AP': ..., 'bbox_AP50': ..., 'segm_AP': ...}`` in percent."""
    detector.eval().to(device)
    bbox, segm = [], []
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=detection_collate)
    for images, targets in loader:
        for out, target in zip(detector([im.to(device) for im in images]), targets):
            res = to_coco_results(out, target["image_id"], dataset.cat_ids)
            bbox += res["bbox"]
            segm += res["segm"]
    return summarize_coco(dataset, bbox, segm)


def photometric_distortion(image, brightness_delta=32 / 255, contrast=(0.5, 1.5),
                           saturation=(0.5, 1.5), hue_delta=18 / 360):
    """mmseg's ``PhotoMetricDistortion`` on a [0, 1] RGB tensor: each of brightness, contrast,
    saturation and hue changes with probability 0.5, contrast either first or last (p 0.5)."""
    from torchvision.transforms.v2 import functional as TF

    def maybe(fn):
        return fn() if random.random() < 0.5 else image

    image = maybe(lambda: (image + random.uniform(-brightness_delta, brightness_delta)).clamp(0, 1))
    contrast_first = random.random() < 0.5
    if contrast_first:
        image = maybe(lambda: TF.adjust_contrast(image, random.uniform(*contrast)))
    image = maybe(lambda: TF.adjust_saturation(image, random.uniform(*saturation)))
    image = maybe(lambda: TF.adjust_hue(image, random.uniform(-hue_delta, hue_delta)))
    if not contrast_first:
        image = maybe(lambda: TF.adjust_contrast(image, random.uniform(*contrast)))
    return image


class ADE20KSegmentation(torch.utils.data.Dataset):
    """ADE20K-layout semantic segmentation: items are ``(image (3, H, W) float in [0, 1], label
    (H, W) int64)``; training items are 512 crops, evaluation items full images rescaled to fit
    ``scale`` (the label keeps its original size: predictions are resized back to it)."""

    def __init__(self, root, split="training", train=False, scale=(2048, 512), crop_size=(512, 512),
                 ratio_range=(0.5, 2.0), cat_max_ratio=0.75, reduce_zero_label=True,
                 ignore_index=255, num_classes=None, pad_value=(0., 0., 0.)):
        image_dir = os.path.join(root, "images", split)
        label_dir = os.path.join(root, "annotations", split)
        for d in (image_dir, label_dir):
            if not os.path.isdir(d):
                raise DataError(f"{d} does not exist; ADE20K is laid out as "
                                "<root>/images/{training,validation}/*.jpg and "
                                "<root>/annotations/{training,validation}/*.png")
        stems = sorted(os.path.splitext(f)[0] for f in os.listdir(image_dir)
                       if f.lower().endswith(IMAGE_EXTS))
        missing = [s for s in stems if not os.path.isfile(os.path.join(label_dir, s + ".png"))]
        if missing:
            raise DataError(f"{len(missing)} images of {image_dir} have no label PNG in {label_dir}, "
                            f"e.g. {missing[:3]}")
        if not stems:
            raise DataError(f"no images in {image_dir}")
        self.items = [(os.path.join(image_dir, next(f for f in os.listdir(image_dir)
                                                    if os.path.splitext(f)[0] == s)),
                       os.path.join(label_dir, s + ".png")) for s in stems]
        self.train, self.scale, self.crop_size = train, scale, crop_size
        self.ratio_range, self.cat_max_ratio = ratio_range, cat_max_ratio
        self.reduce_zero_label, self.ignore_index = reduce_zero_label, ignore_index
        self.num_classes = num_classes
        # mmseg pads after normalising, with 0: pass the model's mean here, the segmentor
        # normalises inside, and padded pixels come out exactly 0 as well.
        self.pad_value = torch.tensor(pad_value, dtype=torch.float32).view(3, 1, 1)

    def __len__(self):
        return len(self.items)

    def _load(self, index):
        image_path, label_path = self.items[index]
        image = Image.open(image_path).convert("RGB")
        label = np.array(Image.open(label_path), dtype=np.int64)
        if label.ndim != 2:
            raise DataError(f"{label_path} must be a single-channel class-id PNG, got shape "
                            f"{label.shape}")
        if label.shape != (image.height, image.width):
            raise DataError(f"{label_path} is {label.shape[::-1]} but its image is {image.size}")
        label = torch.from_numpy(label)
        if self.reduce_zero_label:
            label = torch.where(label == 0, self.ignore_index, label - 1)
            label[label == self.ignore_index - 1] = self.ignore_index
        if self.num_classes is not None:
            bad = (label != self.ignore_index) & (label >= self.num_classes)
            if bad.any():
                raise DataError(f"{label_path} has class ids >= num_classes={self.num_classes} "
                                f"(after reduce_zero_label={self.reduce_zero_label})")
        return _to_tensor(image), label

    def _rescale_size(self, h, w, scale):
        long_edge, short_edge = max(scale), min(scale)
        factor = min(long_edge / max(h, w), short_edge / min(h, w))
        return int(h * factor + 0.5), int(w * factor + 0.5)

    def __getitem__(self, index):
        image, label = self._load(index)
        h, w = image.shape[1:]
        if not self.train:
            size = self._rescale_size(h, w, self.scale)
            image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
            return image, label
        ratio = random.uniform(*self.ratio_range)
        size = self._rescale_size(h, w, (int(self.scale[0] * ratio), int(self.scale[1] * ratio)))
        image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
        label = F.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0].long()
        ch, cw = self.crop_size
        for _ in range(10):
            y = random.randint(0, max(size[0] - ch, 0))
            x = random.randint(0, max(size[1] - cw, 0))
            crop = label[y:y + ch, x:x + cw]
            ids, counts = crop[crop != self.ignore_index].unique(return_counts=True)
            if len(ids) > 1 and counts.max().item() / counts.sum().item() < self.cat_max_ratio:
                break
        image, label = image[:, y:y + ch, x:x + cw], label[y:y + ch, x:x + cw]
        if random.random() < 0.5:
            image, label = image.flip(-1), label.flip(-1)
        image = photometric_distortion(image)
        pad_h, pad_w = ch - image.shape[1], cw - image.shape[2]
        if pad_h > 0 or pad_w > 0:
            canvas = self.pad_value.expand(3, max(ch, image.shape[1]), max(cw, image.shape[2]))
            canvas = canvas.clone()
            canvas[:, :image.shape[1], :image.shape[2]] = image
            image = canvas
            label = F.pad(label, (0, max(pad_w, 0), 0, max(pad_h, 0)), value=self.ignore_index)
        return image, label


class VOCSegmentation(torch.utils.data.Dataset):
    """Pascal VOC 2012 semantic segmentation: items are ``(image (3, H, W) float in [0, 1], label
    (H, W) int64)`` with labels 0..20 and 255 (ignored).

    Args:
        root: the ``VOC2012`` folder (``JPEGImages``, ``SegmentationClass``, ``ImageSets``), or a
            folder holding ``VOCdevkit/VOC2012``.
        split: a list in ``ImageSets/Segmentation``: ``train`` (1,464 images), ``val`` (1,449),
            ``trainval``, or ``train_aug`` with ``label_dir='SegmentationClassAug'``.
        label_dir: the folder of class-id PNGs.
        train: random rescale by ``ratio_range``, pad to ``crop_size``, random crop, flip;
            otherwise the whole image.
        pad_label: the label of padded pixels. 255 (ignored) by default; the ELA / VainF DeepLab
            code pads labels with 0, i.e. counts the padding as background (its recipe says so).
    """

    def __init__(self, root, split="train", train=False, crop_size=(513, 513),
                 ratio_range=(0.5, 2.0), label_dir="SegmentationClass", num_classes=21,
                 ignore_index=255, pad_label=255):
        nested = os.path.join(root, "VOCdevkit", "VOC2012")
        root = nested if os.path.isdir(nested) else root
        list_file = os.path.join(root, "ImageSets", "Segmentation", f"{split}.txt")
        image_dir, label_dir = os.path.join(root, "JPEGImages"), os.path.join(root, label_dir)
        for path in (image_dir, label_dir):
            if not os.path.isdir(path):
                raise DataError(f"{path} does not exist; Pascal VOC 2012 is laid out as "
                                "<root>/JPEGImages/*.jpg, <root>/SegmentationClass/*.png and "
                                "<root>/ImageSets/Segmentation/{train,val}.txt")
        if not os.path.isfile(list_file):
            lists = os.listdir(os.path.dirname(list_file)) \
                if os.path.isdir(os.path.dirname(list_file)) else []
            raise DataError(f"split list {list_file} does not exist (found: {sorted(lists)}); "
                            "train_aug needs the SBD lists and SegmentationClassAug")
        with open(list_file) as f:
            stems = [line.split()[0] for line in f if line.strip()]
        if not stems:
            raise DataError(f"{list_file} lists no images")
        self.items = [(os.path.join(image_dir, s + ".jpg"), os.path.join(label_dir, s + ".png"))
                      for s in stems]
        missing = [p for item in self.items for p in item if not os.path.isfile(p)]
        if missing:
            raise DataError(f"{len(missing)} files of {list_file} are missing, e.g. {missing[:3]}")
        self.train, self.crop_size, self.ratio_range = train, tuple(crop_size), ratio_range
        self.num_classes, self.ignore_index, self.pad_label = num_classes, ignore_index, pad_label

    def __len__(self):
        return len(self.items)

    def _load(self, index):
        image_path, label_path = self.items[index]
        try:
            image = Image.open(image_path).convert("RGB")
            # palette PNGs: np.array gives the palette indices, i.e. the class ids
            label = np.array(Image.open(label_path), dtype=np.int64)
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read {image_path} / {label_path} ({e})") from e
        if label.ndim != 2:
            raise DataError(f"{label_path} must be a single-channel (palette or grey) class-id "
                            f"PNG, got shape {label.shape}; SegmentationClass PNGs are palette "
                            "images, not RGB renderings")
        if label.shape != (image.height, image.width):
            raise DataError(f"{label_path} is {label.shape[::-1]} but its image is {image.size}")
        label = torch.from_numpy(label)
        bad = (label != self.ignore_index) & (label >= self.num_classes)
        if bad.any():
            raise DataError(f"{label_path} has class ids {label[bad].unique().tolist()[:8]} >= "
                            f"num_classes={self.num_classes}")
        return _to_tensor(image), label

    def __getitem__(self, index):
        image, label = self._load(index)
        if not self.train:
            return image, label
        h, w = image.shape[1:]
        scale = random.uniform(*self.ratio_range)
        size = (int(h * scale), int(w * scale))
        image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False,
                              antialias=scale < 1)[0]
        label = F.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0].long()
        ch, cw = self.crop_size
        # pad every side by half the shortfall, the width first, then the height (the DeepLab
        # code's order: padding for the width also grows the height)
        for axis, target in ((2, cw), (1, ch)):
            if image.shape[axis] < target:
                p = (1 + target - image.shape[axis]) // 2
                image = F.pad(image, (p, p, p, p), value=0.)
                label = F.pad(label, (p, p, p, p), value=self.pad_label)
        y = random.randint(0, image.shape[1] - ch)
        x = random.randint(0, image.shape[2] - cw)
        image, label = image[:, y:y + ch, x:x + cw], label[y:y + ch, x:x + cw]
        if random.random() < 0.5:
            image, label = image.flip(-1), label.flip(-1)
        return image, label

"""Data for training and validation: image folders through timm, the embedded digits set, clear
errors for missing or empty folders, and corrupt images skipped (named and counted) instead of
killing a multi-day run."""
import logging
import multiprocessing
import os

import numpy as np
import torch
from PIL import Image
from timm.data import ImageDataset, create_dataset

_logger = logging.getLogger("backbones.training")

IMG_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
DIGITS_NAME = "digits"
DIGITS_CLASSES = 10


class DataError(ValueError):
    """A data set that cannot be used as given (missing folder, empty class, ...)."""


class SkipCounter:
    """Corrupt samples skipped so far, shared with data-loader worker processes."""

    def __init__(self):
        self._value = multiprocessing.get_context("fork").Value("i", 0) \
            if hasattr(os, "fork") else multiprocessing.Value("i", 0)

    def __deepcopy__(self, memo):
        return self  # mmengine deep-copies data-loader configs; the count must stay shared

    def add(self):
        with self._value.get_lock():
            self._value.value += 1

    @property
    def value(self):
        return self._value.value


class CheckedImageFolder(ImageDataset):
    """timm's ImageDataset that names the file of a sample it cannot decode, counts it, and
    moves on to the next sample (timm logs only the index)."""

    max_consecutive_failures = 20

    def __init__(self, *args, skip_counter=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.skip_counter = skip_counter or SkipCounter()

    def __getitem__(self, index):
        for _ in range(self.max_consecutive_failures):
            path = self.reader.filename(index, absolute=True)
            try:
                img, target = self.reader[index][:2]
                img = Image.open(img).convert(self.input_img_mode or "RGB")
                break
            except (OSError, ValueError, SyntaxError) as exc:
                self.skip_counter.add()
                _logger.warning("skipped corrupt image %s (%s: %s); %d skipped so far", path,
                                type(exc).__name__, exc, self.skip_counter.value)
                index = (index + 1) % len(self.reader)
        else:
            raise DataError(f"{self.max_consecutive_failures} consecutive images failed to "
                            f"decode (last: {path}); is {self.reader.root!r} an image folder?")
        if self.transform is not None:
            img = self.transform(img)
        if target is None:
            target = -1
        elif self.target_transform is not None:
            target = self.target_transform(target)
        return img, target


def check_image_folder(root, split):
    """The class-folder layout timm's folder reader expects, or a DataError saying what is
    wrong: ``root/split/<class>/<image>`` (or ``root/<class>/<image>``)."""
    if not os.path.isdir(root):
        raise DataError(f"data directory {root!r} does not exist; pass --data-dir pointing at a "
                        "folder with train/ and val/ sub-folders of class folders (ImageNet "
                        "layout), or leave --data-dir out to train on the embedded digits set")
    folder = os.path.join(root, split)
    if not os.path.isdir(folder):
        have = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        raise DataError(f"no {split!r} split in {root!r} (sub-folders: {have[:10]}); expected "
                        f"{os.path.join(root, split)}/<class>/<image>")
    classes = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
    if not classes:
        raise DataError(f"{folder!r} has no class folders; expected {folder}/<class>/<image>")
    for name in classes:
        class_dir = os.path.join(folder, name)
        has_image = any(f.lower().endswith(IMG_EXTENSIONS)
                        for _, _, files in os.walk(class_dir) for f in files)
        if not has_image:
            raise DataError(f"class folder {class_dir!r} holds no images ({', '.join(IMG_EXTENSIONS)}); "
                            "remove it or add its images: an empty class would shift every "
                            "label after it")
    return folder, classes


def create_image_dataset(dataset, root, split, transform=None, skip_counter=None, is_training=False,
                         seed=42):
    """An image-folder split (timm's folder reader, checked), or any other data set timm's
    ``create_dataset`` reads (``torch/...``, ``hfds/...``, ``wds/...``; passed through)."""
    if dataset in ("", None, "folder", "imagefolder"):
        folder, _ = check_image_folder(root, split)
        ds = CheckedImageFolder(folder, transform=transform, skip_counter=skip_counter)
        if len(ds) == 0:
            raise DataError(f"no images found under {folder!r}")
        return ds
    ds = create_dataset(dataset, root=root, split=split, is_training=is_training, seed=seed)
    ds.transform = transform
    return ds


def _load_digits():
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise ImportError("the embedded data set is scikit-learn's digits: "
                          "pip install scikit-learn (or install the zoo with [train])") from exc
    digits = load_digits()
    return digits.images.astype(np.float32), digits.target.astype(np.int64)


class DigitsDataset(torch.utils.data.Dataset):
    """scikit-learn's 1,797 hand-written digits (8x8, 10 classes, shipped inside the wheel),
    upscaled to ``img_size`` RGB images: a real, learnable data set with no download.

    The split is fixed and stratified: every fifth image of each class (in file order) is held
    out (``split="val"``, 360 images); the rest (1,437) is ``split="train"``.
    """

    def __init__(self, split="train", img_size=32, transform=None):
        if split not in ("train", "val"):
            raise ValueError(f"digits split must be 'train' or 'val', got {split!r}")
        images, labels = _load_digits()
        held_out = np.zeros(len(labels), dtype=bool)
        for c in range(DIGITS_CLASSES):
            held_out[np.flatnonzero(labels == c)[::5]] = True
        keep = held_out if split == "val" else ~held_out
        self.images, self.labels = images[keep], labels[keep]
        self.img_size, self.transform, self.split = int(img_size), transform, split
        self.classes = [str(c) for c in range(DIGITS_CLASSES)]
        self.metainfo = dict(classes=tuple(self.classes), name="sklearn digits")

    def __len__(self):
        return len(self.labels)

    def image(self, index):
        pixels = (self.images[index] * (255.0 / 16.0)).round().astype(np.uint8)
        img = Image.fromarray(pixels, mode="L").resize((self.img_size, self.img_size),
                                                       Image.BILINEAR)
        return img.convert("RGB")

    def __getitem__(self, index):
        img = self.image(index)
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.labels[index])

"""The data pipeline of training and validation: image folders through timm, the embedded digits
set, the model's transforms, and the loaders, whose random draws are a function of (seed, epoch,
rank, position) so that a resumed run sees exactly the unbroken run's batches. Missing or empty
folders are clear errors; corrupt images are skipped (named and counted) instead of killing a
multi-day run."""
import logging
import multiprocessing
import os
import random

import numpy as np
import torch
from PIL import Image
from timm.data import ImageDataset, create_dataset, create_transform, resolve_data_config

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


# ----------------------------------------------------------------------------------------------
# Per-sample augmentation seeds
# ----------------------------------------------------------------------------------------------

def sample_seed(seed, epoch, rank, position):
    """The seed of one training sample's augmentation: a hash of (run seed, epoch, rank, position
    in the rank's sample stream), so the draws of a sample depend on nothing else."""
    words = [int(seed) % 2 ** 64, int(epoch), int(rank), int(position)]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0] % 2 ** 63)


class SeededSampler(torch.utils.data.Sampler):
    """Yields ``(index, seed)`` pairs for ``SeededDataset``: the indices of ``sampler`` (its epoch
    set through ``set_epoch`` as usual), each with its ``sample_seed``.

    Data-loader workers otherwise draw augmentations from one RNG stream per worker, seeded
    when the worker starts: persistent workers carry that stream across epochs in an unbroken
    run but restart it in a resumed one, and the draws also depend on the number of workers.
    The seed travels with the index to whichever worker loads the sample."""

    def __init__(self, sampler, seed, rank=0):
        self.sampler, self.seed, self.rank, self.epoch = sampler, int(seed), int(rank), 0

    def __deepcopy__(self, memo):
        return self  # mmengine deep-copies loader configs; an InfiniteSampler holds a generator

    def set_epoch(self, epoch):
        self.epoch = int(epoch)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self):
        for position, index in enumerate(self.sampler):
            yield index, sample_seed(self.seed, self.epoch, self.rank, position)

    def __len__(self):
        return len(self.sampler)


class SeededDataset(torch.utils.data.Dataset):
    """``dataset`` read with ``(index, seed)`` keys (from ``SeededSampler``): ``random``, numpy
    and torch's CPU generator are seeded with ``seed`` before the sample is loaded and
    transformed. In the main process (``workers=0``) the three states are restored afterwards,
    so the training step's own draws (mixup, drop path) stay on the per-epoch stream."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getattr__(self, name):
        # metainfo, classes, reader, ... of the wrapped set; "dataset" itself is looked up
        # through __dict__ so that unpickling (spawned workers) cannot recurse here
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            return self.dataset[key]
        index, seed = key
        in_worker = torch.utils.data.get_worker_info() is not None
        saved = None if in_worker else (random.getstate(), np.random.get_state(),
                                        torch.random.get_rng_state())
        random.seed(seed)
        np.random.seed(seed % 2 ** 32)
        # the CPU generator only: torch.manual_seed would also reseed every CUDA generator
        torch.random.default_generator.manual_seed(seed)
        try:
            return self.dataset[index]
        finally:
            if saved is not None:
                random.setstate(saved[0])
                np.random.set_state(saved[1])
                torch.random.set_rng_state(saved[2])


# ----------------------------------------------------------------------------------------------
# Transforms and loaders
# ----------------------------------------------------------------------------------------------

def build_datasets(cfg, net, skip_counter):
    """(train set, val set) of a classification run, with the model's preprocessing (each part
    overridable by its flag) and timm's training augmentation."""
    data_cfg = resolve_data_config(
        args=dict(input_size=(3, cfg.img_size, cfg.img_size) if cfg.img_size else None,
                  crop_pct=cfg.crop_pct, interpolation=cfg.interpolation, mean=cfg.mean,
                  std=cfg.std),
        model=net)
    train_tf = create_transform(
        data_cfg["input_size"], is_training=True, scale=tuple(cfg.scale), ratio=tuple(cfg.ratio),
        hflip=cfg.hflip, color_jitter=cfg.color_jitter, auto_augment=cfg.aa,
        interpolation=cfg.train_interpolation, mean=data_cfg["mean"], std=data_cfg["std"],
        re_prob=cfg.reprob, re_mode=cfg.remode, re_count=cfg.recount)
    val_tf = create_transform(
        data_cfg["input_size"], is_training=False, interpolation=data_cfg["interpolation"],
        mean=data_cfg["mean"], std=data_cfg["std"], crop_pct=data_cfg["crop_pct"],
        crop_mode=data_cfg.get("crop_mode"))
    if cfg.data_dir is None:
        return (DigitsDataset("train", cfg.digits_img_size, train_tf),
                DigitsDataset("val", cfg.digits_img_size, val_tf))
    train = create_image_dataset(cfg.dataset, cfg.data_dir, cfg.train_split, train_tf,
                                 skip_counter, is_training=True, seed=cfg.seed)
    val = create_image_dataset(cfg.dataset, cfg.data_dir, cfg.val_split, val_tf, skip_counter)
    return train, val


def train_sampler(dataset, seed, world_size, rank, aug_repeats=0):
    """This rank's shuffled share of ``dataset`` (timm's repeated-augmentation sampler with
    ``aug_repeats``), reshuffled each epoch from ``seed``."""
    if aug_repeats:
        from timm.data.distributed_sampler import RepeatAugSampler
        return RepeatAugSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True,
                                num_repeats=aug_repeats)
    from mmengine.dataset import DefaultSampler
    return DefaultSampler(dataset, shuffle=True, seed=seed)


def train_loader(dataset, sampler, *, seed, rank, workers, **loader_kwargs):
    """mmengine's config of a training loader whose draws resume exactly: each sample's
    augmentation is seeded from (seed, epoch, rank, position) whatever the workers' lifetime,
    with the same draws for any number of workers."""
    if not isinstance(dataset, torch.utils.data.IterableDataset):
        sampler, dataset = SeededSampler(sampler, seed, rank), SeededDataset(dataset)
    # the loader draws its worker base seed from this generator, not the global one: with
    # persistent workers it draws only in a process's first epoch, which would shift the
    # training process's draws in a resumed run's first epoch against the unbroken run's
    return dict(dataset=dataset, sampler=sampler, num_workers=workers,
                persistent_workers=workers > 0, generator=torch.Generator().manual_seed(seed),
                **loader_kwargs)


def eval_loader(dataset, *, workers, **loader_kwargs):
    """mmengine's config of a validation loader: every sample once, in order."""
    return dict(dataset=dataset, sampler=dict(type="DefaultSampler", shuffle=False),
                drop_last=False, num_workers=workers, persistent_workers=workers > 0,
                **loader_kwargs)


def release_loader_workers(*loaders):
    """End the persistent workers of finished loaders now. Left to garbage collection, they live
    on after the run (a second run in the same process waits on them at exit, ~90 s here)."""
    for loader in loaders:
        if getattr(loader, "_iterator", None) is not None:
            loader._iterator._shutdown_workers()
            loader._iterator = None

"""Backbone Zoo: vision backbones with fused attention ops, registered with timm."""
import os
import re

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _version():
    with open(os.path.join(HERE, "backbones", "version.py")) as f:
        return re.search(r'__version__ = "([^"]+)"', f.read()).group(1)


def _readme():
    with open(os.path.join(HERE, "README.md"), encoding="utf-8") as f:
        return f.read()


FVCORE = "fvcore>=0.1.5.post20221221"  # GMAC counts in tools/benchmark.py (the papers' convention)
# mmengine's Runner drives training; scikit-learn ships the embedded digits data set.
TRAIN = ["mmengine>=0.10.7", "scikit-learn>=1.3", "wandb", FVCORE]
# COCO / ADE20K transfer: pycocotools reads COCO files and computes box / mask AP.
DENSE = ["pycocotools>=2.0.7"]
# tools/export.py: torch.onnx's exporter (onnx, onnxscript) and the runtime that checks its files.
EXPORT = ["onnx>=1.17", "onnxscript>=0.3", "onnxruntime>=1.20"]
EXTRAS = {
    "benchmark": [FVCORE, "matplotlib"],  # matplotlib: zoo-benchmark --plot / --results charts
    "train": TRAIN,
    "dense": TRAIN + DENSE,
    "export": EXPORT,
    # scikit-image ships the photos of the detection / segmentation test fixtures
    "dev": ["pytest>=8", "pytest-xdist", "scikit-image", "matplotlib"] + TRAIN + DENSE + EXPORT,
}
EXTRAS["all"] = sorted({req for reqs in EXTRAS.values() for req in reqs})
# One command per tool (backbones/cli); `python tools/<tool>.py` runs the same main().
CONSOLE_SCRIPTS = [
    "zoo-train=backbones.cli.train:main",
    "zoo-train-det=backbones.cli.train_det:main",
    "zoo-train-seg=backbones.cli.train_seg:main",
    "zoo-validate=backbones.cli.validate:main",
    "zoo-convert=backbones.cli.convert:main",
    "zoo-benchmark=backbones.cli.benchmark:main",
    "zoo-benchmark-ops=backbones.cli.benchmark_ops:main",
    "zoo-compile-kernels=backbones.cli.compile_kernels:main",
    "zoo-gpu-report=backbones.cli.gpu_report:main",
    "zoo-sparsifiner-masks=backbones.cli.sparsifiner_masks:main",
    "zoo-dependency-tree=backbones.cli.dependency_tree:main",
    "zoo-visualize=backbones.cli.visualize:main",
    "zoo-benchmark-ela=backbones.cli.benchmark_ela:main",
    "zoo-benchmark-ulsam=backbones.cli.benchmark_ulsam:main",
    "zoo-export=backbones.cli.export:main",
]

setup(
    name="backbone-zoo",
    version=_version(),
    description="Vision backbones (CSWin, HaloNet, BiFormer, LITv2, SHViT, ...) with fused "
                "Triton attention ops, loading the papers' official weights through timm.",
    long_description=_readme(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["backbones", "backbones.*", "ops", "ops.*"]),
    package_data={"backbones.cli": ["data/*.jpg"]},  # zoo-export's default photo
    install_requires=[
        "torch>=2.4",
        "torchvision",
        "timm>=1.0.31",
        "safetensors",
        "tqdm",
        "triton; platform_system == 'Linux'",
    ],
    extras_require=EXTRAS,
    entry_points={"console_scripts": CONSOLE_SCRIPTS},
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: MIT License",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)

# DependencyViT-Tiny: the assumed DeiT-style recipe of _base_/dependencyvit.py. The reference's
# author trains this model to 72.2 and later "73.X" top-1 (PR #2062 thread).
_base_ = ["./_base_/dependencyvit.py"]
model = "dependencyvit_tiny_224"

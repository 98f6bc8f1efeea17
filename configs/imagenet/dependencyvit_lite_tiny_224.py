# DependencyViT-Lite-Tiny: the assumed DeiT-style recipe of _base_/dependencyvit.py. Dynamic
# pooling after blocks 2, 5, 8, 11 at ratio 0.16 (the reference's Lite; no trained result exists).
_base_ = ["./_base_/dependencyvit.py"]
model = "dependencyvit_lite_tiny_224"

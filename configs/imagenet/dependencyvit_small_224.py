# DependencyViT-Small: the assumed DeiT-style recipe of _base_/dependencyvit.py. No trained
# reference result exists for this size.
_base_ = ["./_base_/dependencyvit.py"]
model = "dependencyvit_small_224"

"""Test-session setup shared by every test file.

Triton reads TRITON_INTERPRET when a kernel is *decorated*, i.e. when the module that defines it is
imported, so it must be set here, before any test imports a kernel module. Without a GPU the Triton
path of every op runs on the CPU through the interpreter; with one, on the GPU.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
# The suite picks backends explicitly; an inherited process-wide choice must not leak into it.
os.environ.pop("BACKBONES_OPS_BACKEND", None)

torch.set_num_threads(min(2, torch.get_num_threads()))

SHARED = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared"))
GOLDEN = os.environ.get("BACKBONES_GOLDEN_DIR", os.path.join(SHARED, "golden"))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a test that takes more than ~20 s on 2 CPU cores")


@pytest.fixture
def golden_dir():
    if not os.path.isdir(GOLDEN):
        pytest.fail(f"golden fixtures not found at {GOLDEN}; set BACKBONES_GOLDEN_DIR")
    return GOLDEN

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

# Under pytest-xdist (the README's `-n auto`) the cores are shared by the workers: more threads
# than cores makes every worker spin.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // _WORKERS)))


def _skip_repeated_interpreter_patching():
    """Triton's interpreter patches ``triton.language`` (``inspect.getmembers`` over tl, tl.core,
    tl.math) when a kernel launches, and again on every call of a ``@triton.jit`` helper from
    inside the kernel, though the launch's patch is still in place: ~1 ms a call, 40 % of an
    interpreted BiFormer forward. The repeat patches the same module objects and is discarded
    unrestored, so skipping it changes nothing the kernels compute. Guarded: any other triton
    layout leaves the interpreter untouched."""
    try:
        import triton.language as tl
        from triton.runtime import interpreter
        patch_lang, empty_scope = interpreter._patch_lang, interpreter._LangPatchScope
        is_builtin = tl.core.is_builtin
    except (ImportError, AttributeError):
        return
    if getattr(patch_lang, "_zoo_wrapped", False):
        return

    def patch_once(fn):
        langs = [v for v in fn.__globals__.values() if v is tl or v is tl.core]
        if langs and not any(is_builtin(lang.load) for lang in langs):
            return empty_scope()  # every triton.language module fn sees is patched already
        return patch_lang(fn)

    patch_once._zoo_wrapped = True
    interpreter._patch_lang = patch_once


if os.environ.get("TRITON_INTERPRET") == "1":
    _skip_repeated_interpreter_patching()

# The fixtures travel with the repository (tests/golden, see its README); BACKBONES_GOLDEN_DIR
# points the suite at another copy.
GOLDEN = os.environ.get("BACKBONES_GOLDEN_DIR",
                        os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden"))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a test that takes more than ~20 s on 2 CPU cores")


@pytest.fixture
def golden_dir():
    if not os.path.isdir(GOLDEN):
        pytest.fail(f"golden fixtures not found at {GOLDEN}; set BACKBONES_GOLDEN_DIR")
    return GOLDEN

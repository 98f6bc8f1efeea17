"""How the ops package is put together: no import cycle between its modules (lazy, in-function
imports included), kernel modules that depend on the glue and the kernel family only, one naming
scheme (``<op>_attention.py`` beside ``_triton_<op>_attention.py``, whose fused op is
``backbones::<op>_attention_*``), and ``import ops`` and every reference without triton.
"""
import ast
import importlib
import subprocess
import sys
from pathlib import Path

import ops

OPS_DIR = Path(ops.__file__).parent
KERNEL_FAMILY = "_triton_blocksparse"


def _module_names():
    return sorted(p.stem for p in OPS_DIR.glob("*.py") if p.stem != "__init__")


def _imports(name):
    """The ops modules ``ops.<name>`` imports, anywhere in its body."""
    found = set()
    for node in ast.walk(ast.parse((OPS_DIR / f"{name}.py").read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:  # from . import x
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ops."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("ops."))
    return found


def test_no_import_cycle():
    graph = {name: _imports(name) for name in _module_names()}
    assert graph["halo_attention"] and all(deps <= set(graph) for deps in graph.values())
    done, path = set(), []

    def visit(name):
        if name in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(name):] + [name]))
        if name in done:
            return
        path.append(name)
        for dep in sorted(graph[name]):
            visit(dep)
        path.pop()
        done.add(name)

    for name in graph:
        visit(name)


def test_kernel_modules_import_only_the_glue_and_the_kernel_family():
    for name in _module_names():
        if name.startswith("_triton_") and name != KERNEL_FAMILY:
            assert _imports(name) <= {"_custom_op", KERNEL_FAMILY}, name


def test_one_naming_scheme():
    """Every fused kernel ``_triton_<op>.py`` sits beside its op module ``<op>.py`` and names its
    custom op ``<op>``; every attention op module has its kernel."""
    names = set(_module_names())
    kernels = {n for n in names if n.startswith("_triton_")} - {KERNEL_FAMILY}
    public = {n for n in names if not n.startswith("_")}
    with_kernels = {n.removeprefix("_triton_") for n in kernels}
    assert with_kernels <= public, f"kernels without an op module: {with_kernels - public}"
    attention = {n for n in public if n.endswith("_attention")}
    assert attention <= with_kernels, f"attention ops without a kernel: {attention - with_kernels}"
    for name in kernels:
        module = importlib.import_module(f"ops.{name}")
        assert module.FUSED_OP.name == name.removeprefix("_triton_")


def test_ops_and_its_references_run_without_triton():
    script = """
import sys
sys.modules["triton"] = None  # an import of triton raises ImportError
import torch
import ops
q = k = torch.randn(1, 2, 8, 8, 4)
v = torch.randn(1, 2, 8, 8, 2)
ops.window_attention_2d(q, k, v, (4, 4))
ops.halo_attention_2d(q, k, v, 4, 1)
ops.neighborhood_attention_2d(q, k, v, 3)
ops.routed_attention_2d(q, k, v, torch.zeros(1, 4, 2, dtype=torch.long), 4)
q, k, v = (t.flatten(2, 3) for t in (q, k, v))
ops.masked_attention(q, k, v, torch.ones(1, 1, 64, 64, dtype=torch.bool))
ops.reversed_attention(q, k, v)
ops.flops.fvcore_handles()
assert ops.current_default_backend("cuda") == "reference"
assert "triton" not in sys.modules or sys.modules["triton"] is None
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, cwd=OPS_DIR.parent)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]

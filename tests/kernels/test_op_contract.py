"""The contract every op of ``ops`` keeps, checked over every entry of op_cases.CASES.

Custom ops pass ``torch.library.opcheck``; ``torch.compile(fullgraph=True)`` matches eager
(outputs and gradients) on every backend; the Triton path in fp16 / bf16 matches the float32
reference (forward and backward); gradients of some inputs only and ``torch.no_grad`` match the
reference; an empty batch gives an empty output (and gradients) of the right shape on every
backend; the op is one leaf node of a ``torch.fx.symbolic_trace``; fvcore counts the fused op
as the reference; ``backend=None`` follows the device; the Triton path refuses float64 clearly.

What an op means (its definition, edge cases, layouts, validation) is tested in its own file.
"""
import importlib
import pkgutil

import pytest
import torch
import torch.fx

import ops
from harness import (DEVICE, assert_backends_match, assert_compiles_like_eager,
                     default_tolerances, fvcore_totals)
from op_cases import CASES


# The checks below, by the names OpCase.known_failures uses.
CHECKS = ("opcheck", "compile", "low_precision", "partial_grad", "no_grad", "empty_batch", "fx",
          "fvcore", "default_backend", "float64")


def _params(check, rows):
    """pytest params ``(case, *rest)`` with readable ids; a case's known failure of ``check``
    becomes a strict xfail."""
    assert check in CHECKS, check
    params = []
    for case, *rest in rows:
        marks = ()
        if check in case.known_failures:
            marks = pytest.mark.xfail(reason=case.known_failures[check], strict=True)
        ids = [case.name] + [getattr(r, "label", None) or str(r).replace("torch.", "")
                             for r in rest]
        params.append(pytest.param(case, *rest, marks=marks, id="-".join(ids)))
    return params


FUSED = [case for case in CASES if case.fused]


def _outputs(out):
    return out if isinstance(out, tuple) else (out,)


def _loss(out):
    """A scalar that depends on every output element, read token-major as models do
    (``(B, heads, *tokens, d)`` -> ``(B, *tokens, heads * d)``)."""
    return sum(o.movedim(1, -2).flatten(-2).float().square().sum() for o in _outputs(out))


# --------------------------------------------------------------------------- coverage


def test_every_op_has_a_case():
    """Every public op (an fx leaf taking tensors) has an entry, and every ``backbones::`` custom
    op is opchecked by one: a new op cannot skip the contract."""
    shape_helpers = {"centered_window_offset", "window_grid"}  # tuples in, tuples out
    public = {name for name in ops.__all__
              if hasattr(getattr(ops, name), "__wrapped_op__")} - shape_helpers
    assert public == {case.op.__name__ for case in CASES}
    assert all(getattr(ops, case.op.__name__) is case.op for case in CASES)

    for module in pkgutil.iter_modules(ops.__path__):  # every kernel module registers its ops
        if module.name.startswith("_triton_"):
            importlib.import_module(f"ops.{module.name}")
    # torch's (private) registry of torch.library.custom_op definitions, and fvcore's rules
    opdefs = getattr(getattr(getattr(torch, "_library", None), "custom_ops", None), "OPDEFS", {})
    registered = {name for name in (*opdefs, *ops.flops.fvcore_handles())
                  if name.startswith("backbones::")}
    checked = {check.qualname for case in CASES for check in case.opchecks}
    assert registered and registered == checked
    counted = {case.op.__name__ for case in CASES if case.macs is not None}
    assert counted == {case.op.__name__ for case in CASES if case.opchecks}
    assert all(set(case.known_failures) <= set(CHECKS) for case in CASES)


# --------------------------------------------------------------------------- custom ops


@pytest.mark.parametrize("case, check", _params(
    "opcheck", [(case, check) for case in CASES for check in case.opchecks]))
def test_opcheck(case, check):
    tensors = case.tensors(case.leaves(grad=True))
    torch.library.opcheck(check.op, check.args(*tensors), test_utils=check.test_utils)


@pytest.mark.parametrize("case, backend", _params(
    "compile", [(case, backend) for case in CASES for backend in case.backends]))
def test_compile_fullgraph_matches_eager(case, backend):
    assert_compiles_like_eager(lambda *leaves: _loss(case.run(leaves, backend)),
                               lambda: case.leaves(grad=True))


# --------------------------------------------------------------------------- triton vs reference


@pytest.mark.parametrize("case, variant, dtype", _params("low_precision", [
    (case, variant, dtype) for case in FUSED for variant in case.variants
    for dtype in case.low_precision]))
def test_triton_low_precision_matches_float32_reference(case, variant, dtype):
    kwargs = case.variants[variant]
    assert_backends_match(lambda *leaves, backend: case.run(leaves, backend, **kwargs),
                          lambda: case.inputs(dtype=dtype), grad=case.backward,
                          reference_dtype=torch.float32, **case.tolerances.get(dtype, {}))


@pytest.mark.parametrize("case, which", _params("partial_grad", [
    (case, which) for case in FUSED if case.backward for which in ("first", "others")]))
def test_triton_gradient_of_some_inputs_only(case, which):
    """Only the first floating input (q: the dQ pass alone), or only the others (the dK/dV pass
    alone) takes a gradient."""
    floats = [i for i, t in enumerate(case.inputs()) if t.is_floating_point()]
    assert_backends_match(lambda *leaves, backend: case.run(leaves, backend), case.inputs,
                          grad=floats[:1] if which == "first" else floats[1:])


@pytest.mark.parametrize("case", _params("no_grad", [(case,) for case in FUSED]))
def test_triton_no_grad_forward(case):
    leaves = case.leaves(grad=True)
    with torch.no_grad():
        outs = _outputs(case.run(leaves, "triton"))
        refs = _outputs(case.run(leaves, "reference"))
    (atol, rtol), _ = default_tolerances(torch.float32)
    for out, ref in zip(outs, refs, strict=True):
        assert not out.requires_grad
        torch.testing.assert_close(out, ref, atol=atol, rtol=rtol)


# --------------------------------------------------------------------------- empty batch


@pytest.mark.parametrize("case, backend", _params(
    "empty_batch", [(case, backend) for case in CASES for backend in case.backends]))
def test_empty_batch(case, backend):
    """B = 0 gives an empty output shaped like the reference's B = 1 output but for the batch,
    and gradients shaped like the inputs (zeros where an input, e.g. a table, is shared by the
    batch)."""
    expected = [(0, *o.shape[1:], o.dtype)
                for o in _outputs(case.run(case.inputs(batch=1), case.backends[0]))]
    leaves = case.leaves(grad=True, batch=0)
    outs = _outputs(case.run(leaves, backend))
    assert [(*o.shape, o.dtype) for o in outs] == expected
    assert all(o.device == leaves[0].device for o in outs)
    if not case.backward:
        return
    wrt = [t for t in leaves if t.requires_grad]
    grads = torch.autograd.grad(_loss(outs), wrt)
    for leaf, g in zip(wrt, grads, strict=True):
        assert g.shape == leaf.shape and not g.any()


# --------------------------------------------------------------------------- torch.fx

# FX traces a forward's named parameters; one Module per arity (no *args: a Proxy cannot be
# unpacked).
_FORWARDS = {
    1: lambda self, a: self.fn(a),
    2: lambda self, a, b: self.fn(a, b),
    3: lambda self, a, b, c: self.fn(a, b, c),
    4: lambda self, a, b, c, d: self.fn(a, b, c, d),
    5: lambda self, a, b, c, d, e: self.fn(a, b, c, d, e),
    6: lambda self, a, b, c, d, e, f: self.fn(a, b, c, d, e, f),
}


def _layer(fn, arity):
    layer = type(f"OpLayer{arity}", (torch.nn.Module,), {"forward": _FORWARDS[arity]})()
    layer.fn = fn
    return layer


@pytest.mark.parametrize("case", _params("fx", [(case,) for case in CASES]))
def test_fx_symbolic_trace_keeps_the_op_a_leaf(case):
    tensors = case.tensors(case.inputs())
    layer = _layer(lambda *t: case.call(*t, backend=None), len(tensors))
    traced = torch.fx.symbolic_trace(layer)
    calls = [node for node in traced.graph.nodes if node.op not in ("placeholder", "output")]
    assert [(node.op, node.target) for node in calls] == [("call_function", case.op)]
    for out, ref in zip(_outputs(traced(*tensors)), _outputs(layer(*tensors)), strict=True):
        torch.testing.assert_close(out, ref, atol=0, rtol=0)


# --------------------------------------------------------------------------- fvcore


@pytest.mark.parametrize("case", _params("fvcore", [(case,) for case in CASES if case.macs]))
def test_fvcore_counts_both_paths_alike(case):
    """ops.flops counts the fused custom op as fvcore counts the reference's own ops."""
    tensors = case.tensors(case.inputs())
    totals = fvcore_totals(_layer(lambda *t: case.call(*t, backend=None), len(tensors)).eval(),
                           tensors)
    assert totals["reference"] == totals["triton"] == case.macs(*tensors) > 0


# --------------------------------------------------------------------------- backends, dtypes


@pytest.mark.parametrize("case", _params("default_backend", [(case,) for case in FUSED]))
def test_default_backend_follows_device(case):
    expected = "triton" if DEVICE.type == "cuda" else "reference"
    assert ops.current_default_backend(DEVICE) == expected
    tensors = case.tensors(case.inputs())
    for out, ref in zip(_outputs(case.call(*tensors, backend=None)),
                        _outputs(case.call(*tensors, backend=expected)), strict=True):
        torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("case", _params("float64", [(case,) for case in FUSED]))
def test_triton_rejects_float64_reference_takes_it(case):
    tensors = case.tensors(case.inputs(dtype=torch.float64))
    with pytest.raises(TypeError, match=r"float32, float16 and bfloat16.*backend='reference'"):
        case.call(*tensors, backend="triton")
    assert all(o.dtype == torch.float64
               for o in _outputs(case.call(*tensors, backend="reference")))

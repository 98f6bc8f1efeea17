"""Backend-agreement harness shared by every op's tests.

Every op in ``ops`` has a PyTorch reference (its definition) and a fused Triton path. A kernel test
is then one call::

    assert_backends_match(op, make_inputs)

``op(*inputs, backend=name)`` runs the op (a lambda can build strided views of the inputs first, so
gradients also flow through those views), ``make_inputs()`` returns the leaf tensors. Both backends
get identical clones of the leaves; outputs and the gradients of every floating leaf (under one
shared random upstream gradient) are compared, and a failure lists the max abs difference of every
tensor, not only the first one that broke.

Import it as ``from harness import ...``: tests/kernels has no ``__init__.py`` on purpose: a
package of test modules must never be importable under a name that shadows the real ``ops``.
"""
import pytest
import torch

import ops

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

# (atol, rtol) for outputs and for gradients, keyed by the dtype the Triton path runs in.
# Low-precision runs are compared against a float32 reference (see reference_dtype).
_TOLERANCES = {
    torch.float32: ((2e-5, 1e-4), (5e-5, 1e-4)),
    torch.float16: ((2e-3, 5e-3), (5e-3, 1e-2)),
    torch.bfloat16: ((1.5e-2, 2e-2), (3e-2, 4e-2)),
}
# fp32 dots on TF32 tensor cores keep a 10-bit mantissa.
_TF32_TOLERANCES = ((2e-3, 2e-3), (5e-3, 5e-3))


def default_tolerances(dtype, device=DEVICE):
    """``((atol, rtol) for outputs, (atol, rtol) for gradients)`` for a candidate in ``dtype``."""
    if (dtype == torch.float32 and torch.device(device).type == "cuda"
            and torch.backends.cuda.matmul.allow_tf32):
        return _TF32_TOLERANCES
    return _TOLERANCES[dtype]


def _as_tuple(x):
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def randn(*shape, dtype=torch.float32, seed=0):
    """Seeded standard normal on :data:`DEVICE` (drawn in float32, then cast: every dtype sees
    the same values up to rounding)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float32).to(dtype).to(DEVICE)


def rand(*shape, dtype=torch.float32, seed=0):
    """Seeded uniform [0, 1) on :data:`DEVICE`, as :func:`randn`."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=gen, dtype=torch.float32).to(dtype).to(DEVICE)


def _clone_leaves(leaves, dtype, grad):
    """Detached clones; floating ones cast to ``dtype`` (if given) and requiring grad when
    ``grad`` is True or lists their index."""
    out = []
    for i, t in enumerate(leaves):
        t = t.detach().clone()
        if t.is_floating_point():
            if dtype is not None:
                t = t.to(dtype)
            t.requires_grad_(grad is True or (grad is not False and i in grad))
        out.append(t)
    return out


def _run(op, leaves, backend, upstream):
    outs = _as_tuple(op(*leaves, backend=backend))
    if upstream is None:
        return outs, None, leaves
    wrt = [t for t in leaves if t.requires_grad]
    grads = torch.autograd.grad(
        outs, wrt, [g.to(o.dtype) for g, o in zip(upstream(outs), outs)], allow_unused=True)
    return outs, grads, leaves


def assert_backends_match(op, make_inputs, *, grad=True, atol=None, rtol=None, grad_atol=None,
                          grad_rtol=None, reference_dtype=None, backends=("reference", "triton"),
                          seed=0):
    """Run ``op`` on both backends and assert outputs (and input gradients) agree.

    Args:
        op: ``op(*inputs, backend=name)`` returning a tensor or a tuple of tensors.
        make_inputs: zero-argument callable returning the leaf tensor(s).
        grad: also compare gradients of every floating leaf under a random upstream gradient;
            a collection of leaf indices differentiates those leaves only (the others take no
            gradient, as when a caller freezes some inputs).
        atol, rtol, grad_atol, grad_rtol: override :func:`default_tolerances` of the candidate's
            dtype. A value passes when ``|cand - ref| <= atol + rtol * |ref|``.
        reference_dtype: run the reference on leaves cast to this dtype (e.g. float32 to judge an
            fp16 kernel against the exact answer rather than against another rounding).
        backends: ``(reference, candidate)`` backend names.
        seed: seed of the upstream gradient.

    Returns:
        ``{tensor name: max abs difference}`` for every compared tensor.
    """
    leaves = _as_tuple(make_inputs())
    floats = [t for t in leaves if t.is_floating_point()]
    cand_dtype = floats[0].dtype if floats else torch.float32
    (o_atol, o_rtol), (g_atol, g_rtol) = default_tolerances(cand_dtype, leaves[0].device)
    o_atol = o_atol if atol is None else atol
    o_rtol = o_rtol if rtol is None else rtol
    g_atol = g_atol if grad_atol is None else grad_atol
    g_rtol = g_rtol if grad_rtol is None else grad_rtol

    cache = {}

    def upstream(outs):
        # One upstream gradient per output, drawn once (in the candidate's dtype, so the
        # reference sees exactly the same values) and reused by both runs.
        if "g" not in cache:
            gen = torch.Generator().manual_seed(seed)
            cache["g"] = [torch.randn(o.shape, generator=gen, dtype=torch.float32)
                          .to(o.dtype).to(o.device) for o in outs]
        return cache["g"]

    ref_name, cand_name = backends
    differentiate = upstream if grad is not False else None
    cand_out, cand_grads, cand_leaves = _run(
        op, _clone_leaves(leaves, None, grad), cand_name, differentiate)
    ref_out, ref_grads, _ = _run(
        op, _clone_leaves(leaves, reference_dtype, grad), ref_name, differentiate)

    pairs = [(f"out[{i}]" if len(cand_out) > 1 else "out", c, r, o_atol, o_rtol)
             for i, (c, r) in enumerate(zip(cand_out, ref_out))]
    if grad is not False:
        names = [f"grad[{i}]" for i, t in enumerate(cand_leaves) if t.requires_grad]
        pairs += [(n, c, r, g_atol, g_rtol) for n, c, r in zip(names, cand_grads, ref_grads)]

    report, failed, diffs = [], [], {}
    for name, c, r, a_tol, r_tol in pairs:
        if c is None or r is None:
            if (c is None) != (r is None):
                failed.append(name)
                report.append(f"  {name}: {cand_name} gave {'None' if c is None else 'a tensor'}, "
                              f"{ref_name} gave {'None' if r is None else 'a tensor'}")
            continue
        if c.shape != r.shape:
            failed.append(name)
            report.append(f"  {name}: shape {tuple(c.shape)} vs {tuple(r.shape)}")
            continue
        c32, r32 = c.detach().float(), r.detach().float()
        diff = (c32 - r32).abs()
        max_diff = diff.max().item() if diff.numel() else 0.0
        ok = bool((diff <= a_tol + r_tol * r32.abs()).all()) if diff.numel() else True
        diffs[name] = max_diff
        mark = "ok  " if ok else "FAIL"
        report.append(f"  {mark} {name}: max|diff|={max_diff:.3e} max|ref|="
                      f"{(r32.abs().max().item() if r32.numel() else 0.0):.3e} "
                      f"(atol={a_tol:g}, rtol={r_tol:g}, dtype={c.dtype})")
        if not ok:
            failed.append(name)
    if failed:
        raise AssertionError(f"{cand_name} vs {ref_name} mismatch in {', '.join(failed)}:\n"
                             + "\n".join(report))
    return diffs


def assert_compiles_like_eager(loss_fn, make_leaves):
    """``torch.compile(loss_fn, fullgraph=True)`` (no graph break allowed) gives eager's scalar loss
    and eager's gradients for every leaf ``make_leaves()`` returns that requires grad (called
    twice: fresh leaves). Without such a leaf only the losses are compared."""
    torch._dynamo.reset()
    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    eager_leaves, compiled_leaves = make_leaves(), make_leaves()
    eager, result = loss_fn(*eager_leaves), compiled(*compiled_leaves)
    torch.testing.assert_close(result, eager)
    pairs = [(a, b) for a, b in zip(eager_leaves, compiled_leaves) if a.requires_grad]
    if not pairs:
        return
    eager.backward()
    result.backward()
    for a, b in pairs:
        torch.testing.assert_close(b.grad, a.grad)


def fvcore_totals(module, inputs):
    """fvcore's total MACs of ``module(*inputs)`` per backend, with ``ops.flops``' rules, after
    checking that no attention op went uncounted."""
    import warnings

    fvcore = pytest.importorskip("fvcore.nn")
    totals = {}
    for backend in ("reference", "triton"):
        with ops.use_backend(backend), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            analysis = fvcore.FlopCountAnalysis(module, inputs)
            analysis.set_op_handle(**ops.flops.fvcore_handles())
            analysis.unsupported_ops_warnings(False)
            totals[backend] = analysis.total()
            uncounted = [op for op in analysis.unsupported_ops() if "attention" in op]
            assert not uncounted, f"fvcore has no rule for {uncounted} on {backend}"
    return totals

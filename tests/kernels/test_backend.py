"""Backend selection (ops._backend): explicit choices (argument, ``ops.use_backend``,
``BACKBONES_OPS_BACKEND``) and their precedence, the kernels' limits (:func:`triton_limit`, checked
directly for CUDA devices), and the capability dispatch of ``backend=None`` over every fused op:
Triton where the kernel takes the call, else the reference with one warning.

Without a GPU, "a GPU call" is simulated by letting ``backend=None`` consider the interpreted CPU a
Triton device (``AUTO_TRITON_DEVICES``): the dispatch then decides exactly as for CUDA tensors.
"""
import warnings

import pytest
import torch

import ops
from ops import _backend, _custom_op
from ops import _triton_window_attention as window_triton
from ops import routed_attention as routed
from ops.window_attention import window_attention_reference
from harness import DEVICE
from op_cases import CASES

FUSED = [case for case in CASES if case.fused]
CUDA = torch.device("cuda")


@pytest.fixture
def no_backend_env(monkeypatch):
    monkeypatch.delenv(_backend.ENV_VAR, raising=False)
    monkeypatch.setattr(_backend, "_warned", set())
    return monkeypatch


@pytest.fixture
def cpu_as_gpu(no_backend_env):
    """backend=None treats the interpreted CPU as it treats CUDA."""
    no_backend_env.setattr(_backend, "AUTO_TRITON_DEVICES", ("cuda", DEVICE.type))
    return no_backend_env


def _qkv(d_qk=16, d_v=8, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(1, 2, 4, 4, d, generator=g).to(dtype).to(DEVICE)
                 for d in (d_qk, d_qk, d_v))


def _fallback_warnings(caught):
    return [w for w in caught if "runs its PyTorch reference" in str(w.message)]


def _count_fused_calls(monkeypatch):
    calls = []
    real = _custom_op.FusedOp.__call__

    def counted(self, *args):
        calls.append(self.name)
        return real(self, *args)

    monkeypatch.setattr(_custom_op.FusedOp, "__call__", counted)
    return calls


# --------------------------------------------------------------------------- explicit choices


def test_triton_on_cpu_without_interpreter_is_a_clear_error(no_backend_env):
    no_backend_env.setenv("TRITON_INTERPRET", "0")
    q, k, v = (t.cpu() for t in _qkv())
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        ops.window_attention_2d(q, k, v, (2, 2), backend="triton")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the CPU's default is the reference, silently
        ops.window_attention_2d(q, k, v, (2, 2))


def test_triton_not_installed_is_a_clear_error(no_backend_env):
    no_backend_env.setattr(_backend, "triton_available", lambda: False)
    q, k, v = _qkv()
    with pytest.raises(RuntimeError, match="pip install triton"):
        ops.window_attention_2d(q, k, v, (2, 2), backend="triton")
    assert ops.current_default_backend(CUDA) == "reference"


def test_default_backend_follows_device(no_backend_env):
    assert ops.current_default_backend() == "reference"  # CPU tensors
    assert ops.current_default_backend(CUDA) == "triton"
    assert ops.current_default_backend(DEVICE) == ("triton" if DEVICE.type == "cuda"
                                                   else "reference")


def test_env_var_and_use_backend_are_honoured(no_backend_env):
    no_backend_env.setenv(_backend.ENV_VAR, "triton")
    assert _backend.explicit_backend(None) == "triton"
    no_backend_env.setenv(_backend.ENV_VAR, " Reference ")
    assert _backend.explicit_backend(None) == "reference"
    with ops.use_backend("triton"):  # the context beats the environment
        assert _backend.explicit_backend(None) == "triton"
        with ops.use_backend("reference"):
            assert _backend.explicit_backend(None) == "reference"
        assert _backend.explicit_backend("reference") == "reference"  # the argument beats both
    assert _backend.explicit_backend(None) == "reference"
    no_backend_env.delenv(_backend.ENV_VAR)
    assert _backend.explicit_backend(None) is None


def test_op_dispatches_on_explicit_backend(no_backend_env):
    calls = []

    def spy(*args):
        calls.append(args[3:])
        return window_attention_reference(*args)

    no_backend_env.setattr(window_triton, "window_attention_triton", spy)
    q, k, v = _qkv(d_v=16)
    no_backend_env.setenv(_backend.ENV_VAR, "triton")
    ops.window_attention_2d(q, k, v, (2, 2))
    no_backend_env.setenv(_backend.ENV_VAR, "reference")
    ops.window_attention_2d(q, k, v, (2, 2))
    with ops.use_backend("triton"):
        ops.window_attention_2d(q, k, v, None, padding="masked")
    assert calls == [((2, 2), (0, 0), "zeros", 0.25), ((4, 4), (0, 0), "masked", 0.25)]


def test_unknown_backend_is_a_value_error(no_backend_env):
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="unknown ops backend 'cuda'"):
        ops.window_attention_2d(q, k, v, (2, 2), backend="cuda")
    with pytest.raises(ValueError, match="unknown ops backend"):
        with ops.use_backend("fast"):
            pass
    no_backend_env.setenv(_backend.ENV_VAR, "tritonn")
    with pytest.raises(ValueError, match="BACKBONES_OPS_BACKEND"):
        ops.window_attention_2d(q, k, v, (2, 2))


# --------------------------------------------------------------------------- the kernels' limits


@pytest.mark.parametrize("dtype, head_dims, error, match", [
    (torch.float32, {"d_qk": 64, "d_v": 64}, None, None),
    (torch.float16, {"d_qk": 1, "d_v": 256}, None, None),
    (torch.bfloat16, {"d_qk": 256, "d_v": 32}, None, None),
    (torch.float64, {"d_qk": 64, "d_v": 64}, TypeError, "float32, float16 and bfloat16"),
    (torch.float16, {"d_qk": 257, "d_v": 64}, ValueError, "head dims 1..256, got d_qk=257"),
    (torch.float32, {"d_qk": 64, "d_v": 512}, ValueError, "d_v=512"),
    (torch.float32, {"d_qk": 0, "d_v": 64}, ValueError, "d_qk=0"),
])
def test_triton_limit_on_cuda(no_backend_env, dtype, head_dims, error, match):
    limit = _backend.triton_limit("some_op", CUDA, dtype, head_dims)
    if error is None:
        assert limit is None
    else:
        assert type(limit) is error and match in str(limit) and "some_op" in str(limit)
        assert "backend='reference'" in str(limit)


def test_triton_limit_devices(no_backend_env):
    no_backend_env.setenv("TRITON_INTERPRET", "0")
    assert "TRITON_INTERPRET=1" in str(
        _backend.triton_limit("op", torch.device("cpu"), torch.float32, {"d_qk": 16}))
    assert _backend.triton_limit("op", CUDA, torch.float32, {"d_qk": 16}) is None
    no_backend_env.setenv("TRITON_INTERPRET", "1")
    assert _backend.triton_limit("op", torch.device("cpu"), torch.float32, {"d_qk": 16}) is None
    no_backend_env.setattr(_backend, "triton_available", lambda: False)
    assert "pip install triton" in str(_backend.triton_limit("op", CUDA, torch.float32, {}))


def test_routed_limit_is_the_nondeterministic_backward():
    previous = (torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        torch.use_deterministic_algorithms(True)
        limit = routed.nondeterministic_backward_limit(CUDA, needs_dkdv=True)
        assert isinstance(limit, RuntimeError) and "not deterministic" in str(limit)
        assert routed.nondeterministic_backward_limit(CUDA, needs_dkdv=False) is None
        # the interpreter runs programs in order: deterministic
        assert routed.nondeterministic_backward_limit(torch.device("cpu"), True) is None
        torch.use_deterministic_algorithms(True, warn_only=True)  # PyTorch's convention: warn
        assert routed.nondeterministic_backward_limit(CUDA, needs_dkdv=True) is None
        torch.use_deterministic_algorithms(False)
        assert routed.nondeterministic_backward_limit(CUDA, needs_dkdv=True) is None
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


# --------------------------------------------------------------------------- capability dispatch


@pytest.mark.parametrize("case", FUSED, ids=str)
def test_auto_runs_triton_where_the_kernel_takes_the_call(cpu_as_gpu, case):
    calls = _count_fused_calls(cpu_as_gpu)
    tensors = case.tensors(case.inputs())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        case.call(*tensors, backend=None)
    assert len(calls) == 1 and not _fallback_warnings(caught)


@pytest.mark.parametrize("case", FUSED, ids=str)
def test_auto_falls_back_to_the_reference_with_one_warning(cpu_as_gpu, case):
    """float64 (no kernel takes it): backend=None runs the reference, warns once however often
    it is called; backend='triton' raises the kernel's error."""
    calls = _count_fused_calls(cpu_as_gpu)
    tensors = case.tensors(case.inputs(dtype=torch.float64))
    expected = case.call(*tensors, backend="reference")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outs = [case.call(*tensors, backend=None) for _ in range(3)]
    assert calls == []
    for out in outs:
        torch.testing.assert_close(out, expected, atol=0, rtol=0)
    (warning,) = _fallback_warnings(caught)
    assert f"ops.{case.op.__name__}" in str(warning.message)
    assert "torch.float64" in str(warning.message)
    with pytest.raises(TypeError, match="float32, float16 and bfloat16"):
        case.call(*tensors, backend="triton")


def test_auto_fallback_warns_once_per_reason(cpu_as_gpu):
    calls = _count_fused_calls(cpu_as_gpu)
    wide = _qkv(d_qk=300, d_v=8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            ops.window_attention_2d(*wide, (2, 2))
            ops.window_attention_2d(*_qkv(dtype=torch.float64), (2, 2))
        ops.window_attention_2d(*_qkv(), (2, 2))  # supported: Triton
    fallbacks = _fallback_warnings(caught)
    assert all(w.filename == __file__ for w in fallbacks)  # they point at the op's caller
    messages = [str(w.message) for w in fallbacks]
    assert len(messages) == 2
    assert "d_qk=300" in messages[0] and "torch.float64" in messages[1]
    assert calls == ["window_attention"]
    with pytest.raises(ValueError, match="head dims 1..256, got d_qk=300"):
        ops.window_attention_2d(*wide, (2, 2), backend="triton")


def test_op_limit_joins_the_dispatch(cpu_as_gpu):
    """An op's own limit (routed: the nondeterministic backward) counts like the shared ones."""
    calls = _count_fused_calls(cpu_as_gpu)
    limit = RuntimeError("not deterministic")
    cpu_as_gpu.setattr(routed, "nondeterministic_backward_limit",
                       lambda device, needs_dkdv: limit if needs_dkdv else None)
    case = next(case for case in FUSED if case.op is ops.routed_attention_2d)
    leaves = case.leaves(grad=True)
    with pytest.warns(UserWarning, match="not deterministic"):
        case.run(leaves, None)
    assert calls == []
    with torch.no_grad():  # no dK/dV will be asked for
        case.run(leaves, None)
    assert calls == ["routed_attention"]
    with pytest.raises(RuntimeError, match="not deterministic"):
        case.run(leaves, "triton")


def test_auto_fallback_compiles_fullgraph(cpu_as_gpu):
    """The fallback's warning cannot be traced: a compiled call falls back silently."""
    q, k, v = _qkv(dtype=torch.float64)
    fn = torch.compile(lambda q, k, v: ops.window_attention_2d(q, k, v, (2, 2)), fullgraph=True,
                       backend="aot_eager")
    torch._dynamo.reset()
    torch.testing.assert_close(fn(q, k, v),
                               ops.window_attention_2d(q, k, v, (2, 2), backend="reference"))

"""Compile the fused ops' Triton kernels for a GPU target on a machine without one.

The CPU tests run the kernels in Triton's interpreter, which executes them as numpy code: it
never type-checks, lays out or lowers them, so a kernel can pass every interpreter test and still
fail to compile for a GPU (a ``tl.dot`` tile under 16, a dtype mix the compiler rejects, a
register-hungry tile). This tool runs each op's real host code on small CPU tensors with the
kernel launches intercepted, and compiles every launched specialisation through Triton's full
pipeline (TTIR -> TTGIR -> LLIR -> PTX -> cubin with the bundled ptxas) for the chosen target:

    zoo-compile-kernels                     # sm_90 (H100), bf16 and fp32
    zoo-compile-kernels --arch 80 --dtypes float16

(``python tools/compile_kernels.py`` is the same command.) It must run with TRITON_INTERPRET
unset (the kernels have to be real JIT functions). Exit status 1 and the compiler's message when
any kernel fails to compile.
"""
import argparse
import contextlib
import importlib
import os
import pkgutil
import sys
import time

import torch

import ops

PROG = "zoo-compile-kernels"


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", type=int, default=90, help="CUDA compute capability x10 (90 = H100)")
    p.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"],
                   choices=["float32", "float16", "bfloat16"])
    p.add_argument("--ops", nargs="+", default=None,
                   help="subset of: window, halo, neighborhood, routed, masked, reversed")
    return p.parse_args(argv)


class _Recorder:
    """Stands in for a JIT kernel: ``kernel[grid](*args, **kwargs)`` records the launch."""

    def __init__(self, kernel, launches):
        self.kernel, self.launches = kernel, launches

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append((self.kernel, args, kwargs))
        return launch


_PTR_TYPES = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16",
              torch.int64: "*i64", torch.int32: "*i32", torch.uint8: "*u8", torch.bool: "*i1"}
_OPTIONS = ("num_warps", "num_stages")


def _signature(kernel, args, kwargs):
    """Triton's (signature, constexprs) for one recorded launch."""
    signature, constexprs = {}, {}
    for param, value in zip(kernel.params, args):
        name = param.name
        if param.is_constexpr:
            signature[name] = "constexpr"
            constexprs[name] = value
        elif isinstance(value, torch.Tensor):
            signature[name] = _PTR_TYPES[value.dtype]
        elif isinstance(value, bool):
            signature[name] = "i1"
        elif isinstance(value, int):
            signature[name] = "i64" if abs(value) >= 2 ** 31 else "i32"
        elif isinstance(value, float):
            signature[name] = "fp32"
        else:
            raise TypeError(f"{kernel.__name__}: cannot type argument {name}={value!r}")
    for name, value in kwargs.items():
        if name in _OPTIONS:
            continue
        signature[name] = "constexpr"
        constexprs[name] = value
    return signature, constexprs


def _cases(dtype):
    """(op name, callable running the op forward and backward on small CPU tensors)."""
    def qkv(B, heads, H, W, d, dv=None, grid_k=None):
        g = torch.Generator().manual_seed(0)
        Hk, Wk = grid_k or (H, W)
        q = torch.randn(B, heads, H, W, d, generator=g).to(dtype).requires_grad_()
        k = torch.randn(B, heads, Hk, Wk, d, generator=g).to(dtype).requires_grad_()
        v = torch.randn(B, heads, Hk, Wk, dv or d, generator=g).to(dtype).requires_grad_()
        return q, k, v

    def run(fn, *tensors):
        out = fn(*tensors)
        out.float().sum().backward()

    def window():  # CSWin stripes (fused dQ) and a Swin window bigger than one key block
        q, k, v = qkv(1, 2, 14, 14, 32)
        run(lambda q, k, v: ops.window_attention_2d(q, k, v, (2, 14), backend="triton"), q, k, v)
        q, k, v = qkv(1, 2, 16, 16, 32)
        run(lambda q, k, v: ops.window_attention_2d(q, k, v, (16, 16), padding="masked",
                                                    backend="triton"), q, k, v)

    def halo():  # HaloNet b8 h3, rel-pos logits, strided queries
        q, k, v = qkv(1, 2, 8, 8, 16, 32, grid_k=(16, 16))
        rel = [torch.randn(27, 16).to(dtype).requires_grad_() for _ in range(2)]
        run(lambda q, k, v: ops.halo_attention_2d(q, k, v, 8, 3, stride=2, rel_pos=rel,
                                                  backend="triton"), q, k, v)

    def neighborhood():
        q, k, v = qkv(1, 2, 14, 14, 32)
        run(lambda q, k, v: ops.neighborhood_attention_2d(q, k, v, 7, dilation=2,
                                                          backend="triton"), q, k, v)

    def routed():  # BiFormer stage 3: 2x2 regions, top-16
        q, k, v = qkv(1, 2, 14, 14, 32)
        idx = torch.randint(0, 49, (1, 49, 16))
        run(lambda q, k, v: ops.routed_attention_2d(q, k, v, idx, (2, 2), backend="triton"),
            q, k, v)

    def masked():  # Sparsifiner: packed bit mask over 197 tokens
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(1, 2, 197, 32, generator=g).to(dtype).requires_grad_()
                   for _ in range(3))
        mask = ops.pack_mask(torch.rand(1, 2, 197, 197, generator=g) < 0.2)
        run(lambda q, k, v: ops.masked_attention(q, k, v, mask, backend="triton"), q, k, v)

    def reversed_():
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(1, 2, 197, 32, generator=g).to(dtype).requires_grad_()
                   for _ in range(3))
        w = torch.rand(1, 2, 197, generator=g).to(dtype).requires_grad_()
        run(lambda q, k, v: ops.reversed_attention(q, k, v, weights=w, backend="triton"),
            q, k, v)

    return dict(window=window, halo=halo, neighborhood=neighborhood, routed=routed,
                masked=masked, reversed=reversed_)


def kernel_functions():
    """``[(module, attribute name)]`` of every Triton JIT kernel the ``ops`` package defines
    (each of its modules imported: the ops import their kernel modules on first use)."""
    from triton.runtime.jit import JITFunction
    found = []
    for info in pkgutil.iter_modules(ops.__path__, f"{ops.__name__}."):
        module = importlib.import_module(info.name)
        found += [(module, name) for name, obj in vars(module).items()
                  if isinstance(obj, JITFunction)]
    return found


@contextlib.contextmanager
def triton_dispatch_on_cpu():
    """Let the ops take their Triton path for CPU tensors, with the kernels imported as real
    JIT functions: the dispatcher reads TRITON_INTERPRET at call time, Triton when a kernel is
    decorated (already done). Nothing launches; the recorder stands in for every kernel."""
    saved = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        yield
    finally:
        if saved is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = saved


def record_launches(op_names, dtype):
    """Every (kernel, args, kwargs) the chosen ops launch forward and backward."""
    launches = []
    kernels = kernel_functions()
    for module, name in kernels:
        setattr(module, name, _Recorder(getattr(module, name), launches))
    try:
        with triton_dispatch_on_cpu():
            cases = _cases(dtype)
            for name in op_names:
                cases[name]()  # nothing really runs: outputs are garbage, only the launches matter
    finally:
        for module, name in kernels:
            setattr(module, name, getattr(module, name).kernel)
    return launches


def compile_launches(launches, arch):
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile as triton_compile

    target = GPUTarget("cuda", arch, 32)
    seen, results = set(), []
    for kernel, args, kwargs in launches:
        signature, constexprs = _signature(kernel, args, kwargs)
        options = {k: kwargs[k] for k in _OPTIONS if k in kwargs}
        key = (kernel.__name__, tuple(sorted(signature.items())),
               tuple(sorted((k, str(v)) for k, v in constexprs.items())),
               tuple(sorted(options.items())))
        if key in seen:
            continue
        seen.add(key)
        start = time.perf_counter()
        try:
            compiled = triton_compile(ASTSource(kernel, signature, constexprs), target=target,
                                      options=options)
            error = None
            shared = compiled.metadata.shared
        except Exception as exc:  # the compiler's message is the useful part
            error, shared = f"{type(exc).__name__}: {str(exc)[-2000:]}", None
        results.append(dict(kernel=kernel.__name__, pattern=constexprs.get("PATTERN"),
                            constexprs=constexprs, options=options, shared=shared,
                            seconds=time.perf_counter() - start, error=error))
    return results


def main(argv=None):
    """``zoo-compile-kernels``: exit status 1 when a kernel fails to compile, else 0."""
    args = parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("unset TRITON_INTERPRET: the interpreter replaces the kernels this tool compiles")
    names = args.ops or ["window", "halo", "neighborhood", "routed", "masked", "reversed"]
    failures = compiled = 0
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        launches = record_launches(names, dtype)
        results = compile_launches(launches, args.arch)
        for r in results:
            status = "ok" if r["error"] is None else "FAILED"
            print(f"sm_{args.arch} {dtype_name:8s} {r['kernel']:12s} pattern={r['pattern']} "
                  f"warps={r['options'].get('num_warps')} stages={r['options'].get('num_stages')} "
                  f"BLOCK_M={r['constexprs'].get('BLOCK_M')} BLOCK_N={r['constexprs'].get('BLOCK_N')} "
                  f"shared={r['shared']} {r['seconds']:.1f}s {status}")
            if r["error"]:
                failures += 1
                print(r["error"])
        compiled += len(results)
    print(f"{compiled} kernel specialisations compiled for sm_{args.arch}, "
          f"{failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

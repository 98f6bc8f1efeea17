"""Every fused kernel specialisation the ops launch compiles for an H100 (sm_90), through Triton's
whole pipeline down to a cubin, on this GPU-less machine. The interpreter tests check what the
kernels compute; only the compiler catches what a GPU would refuse (tile shapes, dtype mixes,
shared-memory overflow)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_every_kernel_compiles_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "compile_kernels.py"),
                           "--arch", "90", "--dtypes", "bfloat16"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    lines = [l for l in proc.stdout.splitlines() if l.startswith("sm_90")]
    kernels = {l.split()[2] for l in lines}
    # forward, both backward passes and the delta pre-pass of the family, and the reversed op's
    assert {"_fwd", "_bwd_dq", "_bwd_dkdv", "_bwd_delta", "_ra_lse", "_ra_col", "_ra_bwd_q",
            "_ra_bwd_k"} <= kernels, proc.stdout
    patterns = {l.split()[3] for l in lines if l.split()[2] == "_fwd"}
    assert patterns == {f"pattern={p}" for p in range(5)}, proc.stdout
    assert all(l.endswith(" ok") for l in lines), proc.stdout


def test_compile_tool_refuses_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "compile_kernels.py")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "unset TRITON_INTERPRET" in proc.stderr

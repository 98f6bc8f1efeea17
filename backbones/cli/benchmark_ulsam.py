"""ULSAM's cost, measured for model_cards/ulsam.md: the zoo module vs the official one (paired),
ULSAM beside timm's SE / ECA / CBAM / CA at the same shape, and each registered host beside its
plain timm twin.

    zoo-benchmark-ulsam --official /path/to/ULSAM-checkout [--threads 2] [--rounds 4]

``--official``: a checkout of Nandan91/ULSAM (commit 9a07d68; ``ulsam.py`` is enough). Its class is
imported from there, never copied (its import-time ``torch.set_default_tensor_type(
torch.cuda.FloatTensor)`` is disabled for the import); it gets our module's weights and must give
our output before it is timed.

Timing: ``torch.set_num_threads(threads)``, eval, ``inference_mode``, float32. One measurement =
2 warm-ups + median of 5 calls; the contenders of a row are measured in turn, in ``--rounds``
interleaved rounds (A, B, A, B, ...), so they share the machine's load drift: "median" = median
of the round medians, "best" = the lowest round median.
"""
import argparse
import importlib.util
import os
import statistics
import sys
import time

import torch



def official_ulsam(checkout):
    original = torch.set_default_tensor_type
    torch.set_default_tensor_type = lambda *a, **k: None  # the file's import-time CUDA default
    try:
        spec = importlib.util.spec_from_file_location("official_ulsam", os.path.join(checkout, "ulsam.py"))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        torch.set_default_tensor_type = original
    return mod.ULSAM


def one(fn, x, warm=2, reps=5):
    with torch.inference_mode():
        for _ in range(warm):
            fn(x)
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            fn(x)
            ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3


def paired(fns, x, rounds):
    res = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            res[k].append(one(fn, x))
    return {k: (statistics.median(v), min(v)) for k, v in res.items()}


def main(argv=None):
    p = argparse.ArgumentParser(prog="zoo-benchmark-ulsam", description=__doc__.splitlines()[0])
    p.add_argument("--official", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--parts", default="official,modules,hosts",
                   help="comma-separated: official (ours vs official), modules (vs SE / ECA / CBAM "
                        "/ CA), hosts (vs the timm twins)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    import timm
    import backbones.ulsam as zoo
    print(f"torch {torch.__version__}, threads {args.threads}, load {os.getloadavg()[0]:.1f}")
    parts = args.parts.split(",")
    C, H = 256, 56
    if "official" in parts:
        Official = official_ulsam(args.official)
        print("\n| g | batch | official median (best) ms | ours median (best) ms | speed-up (median) |")
        print("| ---: | ---: | ---: | ---: | ---: |")
        for g in (1, 4, 8, 16):
            torch.manual_seed(0)
            off = Official(C, C, H, H, g).eval()
            ours = zoo.ULSAM(C, num_splits=g).eval()
            ours.load_state_dict(zoo.checkpoint_filter_fn(off.state_dict(), ours), strict=True)
            for B in (1, 8):
                x = torch.randn(B, C, H, H)
                with torch.inference_mode():
                    assert (ours(x) - off(x)).abs().max() < 1e-4
                r = paired({"official": off, "ours": ours}, x, args.rounds)
                print(f"| {g} | {B} | {r['official'][0]:.2f} ({r['official'][1]:.2f}) | "
                      f"{r['ours'][0]:.2f} ({r['ours'][1]:.2f}) | "
                      f"{r['official'][0] / r['ours'][0]:.1f}x |", flush=True)
    if "modules" in parts:
        from timm.layers import EcaModule
        from timm.layers.cbam import CbamModule
        from timm.layers.coord_attn import CoordAttn
        from timm.layers.squeeze_excite import SEModule
        mods = {"ULSAM g=4 (ours)": zoo.ULSAM(C, num_splits=4), "ULSAM g=16 (ours)": zoo.ULSAM(C, num_splits=16),
                "SE (r=16)": SEModule(C, rd_ratio=1 / 16), "ECA (k=5)": EcaModule(C),
                "CBAM (r=16)": CbamModule(C, rd_ratio=1 / 16), "CA (timm CoordAttn)": CoordAttn(C)}
        mods = {k: m.eval() for k, m in mods.items()}
        from fvcore.nn import FlopCountAnalysis
        import ops
        print(f"\n| module (C={C}, {H}x{H}) | params | fvcore MACs | batch 1 median (best) ms | batch 8 median (best) ms |")
        print("| --- | ---: | ---: | ---: | ---: |")
        rows = {}
        for B in (1, 8):
            x = torch.randn(B, C, H, H)
            rows[B] = paired(mods, x, args.rounds)
        for k, m in mods.items():
            fl = FlopCountAnalysis(m, torch.randn(1, C, H, H))
            fl.set_op_handle(**ops.flops.fvcore_handles())
            fl.unsupported_ops_warnings(False)
            fl.uncalled_modules_warnings(False)
            print(f"| {k} | {sum(q.numel() for q in m.parameters()):,} | {fl.total() / 1e6:.3f} M | "
                  f"{rows[1][k][0]:.2f} ({rows[1][k][1]:.2f}) | {rows[8][k][0]:.2f} ({rows[8][k][1]:.2f}) |", flush=True)
    if "hosts" in parts:
        print("\n| zoo model | timm twin | params | paper-convention MACs | ours B=1 median (best) ms | twin B=1 median (best) ms | overhead |")
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
        for name, (host, width, _, _, twin, _) in zoo._ARCHS.items():
            ours = timm.create_model(name).eval()
            if twin:
                ref = timm.create_model(twin).eval()
            else:  # timm registers no MobileNet-V1 at this width: timm's blocks, built directly
                twin = f"{host} {width}x (timm blocks)"
                ref = zoo.UlsamMobileNet(**zoo.host_kwargs(host, width)).eval()
            x = torch.randn(1, 3, 224, 224)
            r = paired({"ours": ours, "twin": ref}, x, args.rounds)
            params = sum(q.numel() for q in ours.parameters())
            _, macs = zoo.paper_cost(ours)
            print(f"| `{name}` | `{twin}` | {params:,} | {macs / 1e6:.2f} M | {r['ours'][0]:.2f} ({r['ours'][1]:.2f}) | "
                  f"{r['twin'][0]:.2f} ({r['twin'][1]:.2f}) | {100 * (r['ours'][0] / r['twin'][0] - 1):+.1f} % |",
                  flush=True)


if __name__ == "__main__":
    main()

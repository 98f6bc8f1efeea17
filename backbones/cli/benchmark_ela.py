"""ELA's cost, measured for model_cards/ela.md: the module beside timm's channel / spatial
attention layers, ours beside the authors' classes (paired, call by call), and each ELA host
beside its plain timm twin.

    zoo-benchmark-ela --official /path/to/ELA_Code [--rounds 4] [--threads 2]

``--official``: a checkout of Xuwei86/ELA_Code (commit cd4594da; ``git archive`` of
``semantic/network/backbone/attention.py``, ``YOLOF/models/yolof/attention.py`` and
``MbV2/models/attention.py`` is enough). Its classes are imported from there, never copied; they
get our module's weights and must give our output before they are timed. Without it the paired
table is skipped.

Timing: eval, ``torch.inference_mode``, float32, ``--threads`` OpenMP threads. Rows compared with
each other are timed in turn, call by call ("paired"), in ``--rounds`` rounds, so they share the
machine's load drift: the tables give the median time per row and the median of the per-pair
ratios.
"""
import argparse
import importlib.util
import os
import statistics
import sys
import time

import timm
import torch
from timm.layers import get_attn

import backbones  # noqa: F401  (registers the zoo models)
import ops
from backbones.ela import ELA

# version -> (file in the official repository, class): the classes realising the paper's versions
OFFICIAL = {
    "t": ("YOLOF/models/yolof/attention.py", "ELA72"),
    "b": ("semantic/network/backbone/attention.py", "ELA73"),
    "s": ("semantic/network/backbone/attention.py", "ELA72"),
    "l": ("MbV2/models/attention.py", "ELA72"),
}

HOSTS = [("ela_mobilenetv2_100_l_224", "mobilenetv2_100"),
         ("ela_mobilenetv2_100_s_224", "mobilenetv2_100"),
         ("ela_resnet18_b_224", "resnet18"),
         ("ela_resnet50_b_224", "resnet50"),
         ("ela_resnet101_b_224", "resnet101")]


def load_official(root, path, cls):
    spec = importlib.util.spec_from_file_location(f"ela_official_{abs(hash(path))}",
                                                  os.path.join(root, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, cls)


def macs(module, x):
    from fvcore.nn import FlopCountAnalysis
    analysis = FlopCountAnalysis(module, (x,))
    analysis.set_op_handle(**ops.flops.fvcore_handles())
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    return analysis.total()


def paired(fns, x, iters, rounds, warmup=2):
    """{name: (median ms, best ms)}, {name: median ratio to the first fn} over ``rounds`` x
    ``iters`` calls of each fn in turn. On a shared machine the best call is the one least
    disturbed by other jobs."""
    times = {n: [] for n in fns}
    ratios = {n: [] for n in fns}
    with torch.inference_mode():
        for f in fns.values():
            for _ in range(warmup):
                f(x)
        for _ in range(rounds):
            for _ in range(iters):
                pair = {}
                for name, f in fns.items():
                    t0 = time.perf_counter()
                    f(x)
                    pair[name] = (time.perf_counter() - t0) * 1e3
                    times[name].append(pair[name])
                first = next(iter(pair.values()))
                for name in fns:
                    ratios[name].append(pair[name] / first)
    return ({n: (statistics.median(t), min(t)) for n, t in times.items()},
            {n: statistics.median(r) for n, r in ratios.items()})


def module_table(args):
    torch.manual_seed(0)
    mods = {f"ELA-{v.upper()} (ours)": ELA(256, v) for v in "tbsl"}
    mods.update({
        "SE, r = 16 (timm 'se')": get_attn("se")(256),
        "ECA (timm 'eca')": get_attn("eca")(256),
        "CBAM (timm 'cbam')": get_attn("cbam")(256),
        "Coordinate Attention (timm 'coord')": get_attn("coord")(256),
        "timm 'ela' (EfficientLocalAttn; not a paper version)": get_attn("ela")(256),
    })
    rows = []
    x1 = torch.randn(1, 256, 56, 56)
    for batch in args.batch_sizes:
        x = torch.randn(batch, 256, 56, 56)
        fns = {n: m.eval() for n, m in mods.items()}
        t, _ = paired(fns, x, args.iters, args.rounds)
        for n, m in mods.items():
            rows.append((n, batch, sum(p.numel() for p in m.parameters()), macs(m, x1), t[n]))
    print("\n| module | params | MACs (batch 1) | batch | median ms | best ms |"
          "\n| --- | ---: | ---: | ---: | ---: | ---: |")
    for n, b, p, mac, (med, best) in rows:
        print(f"| {n} | {p:,} | {mac:,} | {b} | {med:.3f} | {best:.3f} |")


def official_table(args):
    print("\n| version | official class | batch | ours ms median (best) | official ms median (best) "
          "| official / ours (median of pairs) | official / ours (best) | max abs diff |"
          "\n| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for v, (path, cls) in OFFICIAL.items():
        torch.manual_seed(0)
        ours = ELA(256, v).eval()
        theirs = load_official(args.official, path, cls)(256).eval()
        theirs.load_state_dict(ours.state_dict(), strict=True)
        for batch in args.batch_sizes:
            x = torch.randn(batch, 256, 56, 56)
            with torch.inference_mode():
                diff = (ours(x) - theirs(x)).abs().max().item()
            assert diff < 1e-5, f"ELA-{v}: ours and the official class differ by {diff}"
            t, r = paired({"ours": ours, "official": theirs}, x, args.iters, args.rounds)
            (om, ob), (fm, fb) = t["ours"], t["official"]
            print(f"| ELA-{v.upper()} | `{path}:{cls}` | {batch} | {om:.3f} ({ob:.3f}) | "
                  f"{fm:.3f} ({fb:.3f}) | {r['official']:.2f}x | {fb / ob:.2f}x | {diff:.1e} |")


def host_table(args):
    print("\n| ELA host | params | plain timm twin | params | batch | ELA ms median (best) "
          "| plain ms median (best) | overhead (median of pairs) | overhead (best) |"
          "\n| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, twin in HOSTS:
        if args.hosts and name not in args.hosts:
            continue
        torch.manual_seed(0)
        model, plain = timm.create_model(name).eval(), timm.create_model(twin).eval()
        pm = sum(p.numel() for p in model.parameters())
        pp = sum(p.numel() for p in plain.parameters())
        for batch in args.batch_sizes:
            x = torch.randn(batch, 3, 224, 224)
            t, r = paired({"plain": plain, "ela": model}, x, args.host_iters, args.rounds, warmup=1)
            (em, eb), (pm_, pb) = t["ela"], t["plain"]
            print(f"| `{name}` | {pm:,} | `{twin}` | {pp:,} | {batch} | {em:.1f} ({eb:.1f}) | "
                  f"{pm_:.1f} ({pb:.1f}) | {100 * (r['ela'] - 1):+.1f} % | "
                  f"{100 * (eb / pb - 1):+.1f} % |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", help="checkout of Xuwei86/ELA_Code")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--iters", type=int, default=10, help="paired calls per round (modules)")
    parser.add_argument("--host-iters", type=int, default=3, help="paired calls per round (hosts)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--tables", nargs="+", default=["modules", "official", "hosts"],
                        choices=["modules", "official", "hosts"])
    parser.add_argument("--hosts", nargs="*", help="only these hosts (zoo names)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, timm {timm.__version__}, {args.threads} threads, "
          f"ops backend {ops.current_default_backend()}, load average {os.getloadavg()[0]:.1f}")
    if "modules" in args.tables:
        module_table(args)
    if "official" in args.tables:
        if args.official:
            official_table(args)
        else:
            print("\n(no --official checkout: the ours-vs-official table is skipped)")
    if "hosts" in args.tables:
        host_table(args)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

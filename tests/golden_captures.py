"""What a family's golden fixtures store beyond outputs and features, captured with forward hooks.

``CAPTURES[family](model, config)`` returns ``{fixture tensor name: (submodule, extract)}``: while
the fixture's input runs, ``extract(output)`` of each submodule's forward is recorded under that
name. The models carry no test-only flags; a hook on a named submodule sees what the model computes.
"""

CAPTURES = {}


def _biformer(model, config):
    """Every BRA layer's routing indices (the output of its ``attn.router``: ``(B, regions,
    topk)``), named by the official module path: ``stages.<s>.<b>`` (BiFormer, BiFormer_mm) or
    ``stages.<s>.blocks.<b>`` (the STL classes)."""
    import re

    stl = config.get("official_class", "").split(":")[-1] in ("BiFormerSTL", "nchwBiFormerSTL")
    captures = {}
    for name, module in model.named_modules():
        m = re.match(r"^stages\.(\d+)\.blocks\.(\d+)\.attn\.router$", name)
        if m:
            key = f"routing_idx.stages.{m[1]}.{'blocks.' if stl else ''}{m[2]}"
            captures[key] = (module, lambda indices: indices)
    return captures


CAPTURES["biformer"] = _biformer

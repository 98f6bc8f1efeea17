"""What a family's golden fixtures store beyond outputs and features, captured with forward hooks.

``CAPTURES[family](model, config)`` returns ``{fixture tensor name: (submodule, extract)}``: while
the fixture's input runs, ``extract(output)`` of each submodule's forward is recorded under that
name. The models carry no test-only flags; a hook on a named submodule sees what the model computes.
"""

import torch

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


def _sparsifiner(model, config):
    """Every block's attention mask (``attn.mask_predictor``'s second output) with the rows of
    patch queries pruned before the block blanked, as the fixtures store them (those rows come
    from a top-k over exactly tied scores in the official code and never reach the output); the
    token masks of pruning blocks; the final-norm patch tokens (``features``) or the auxiliary
    head's logits (``aux_logits``); the mean mask sparsity over blocks, class row included."""
    captures, state = {}, {"keep": None, "masks": []}

    def block_output(output):
        state["keep"] = output[1]
        return None if output[1] is None else output[1][:, 1:]

    def attn_mask(output):
        mask = output[1] if output[1].dtype == torch.bool else output[1] == 0  # additive form
        state["masks"].append(mask)
        if state["keep"] is not None:
            mask = mask.clone()
            mask[:, :, 1:] &= state["keep"][:, None, 1:, None]
        return mask

    def sparsity(_output):
        return torch.stack([1.0 - m.float().mean() for m in state["masks"]]).mean()

    for i, block in enumerate(model.blocks):
        captures[f"attn_mask.{i}"] = (block.attn.mask_predictor, attn_mask)
        name = f"token_mask.{i}" if block.prunes_tokens else f"_keep.{i}"
        captures[name] = (block, block_output)
    if model.aux_head is None:
        captures["features"] = (model.norm, lambda tokens: tokens[:, 1:])
    else:
        captures["aux_logits"] = (model.aux_head, lambda logits: logits)
    captures["attn_mask_sparsity"] = (model, sparsity)
    return captures


CAPTURES["sparsifiner"] = _sparsifiner


def _dependencyvit(model, config):
    """Per block: the head selector ``p`` (its output, (B, N, heads) -> (B, heads, N)), the
    cumulative message weight ``m`` and the dependency mask (the attention's output tuple, with
    the reference's ``track_dependency_mask`` switch on, as the fixtures were made); the tokens
    entering each block (the previous block's output index; all patches before block 0); the
    final tokens (the message-scaled norm's output). Token order is ascending patch index in the
    model, as in the fixtures."""
    import torch

    model.track_dependency_mask(True)

    def all_patches(tokens):
        return torch.arange(tokens.shape[1]).expand(tokens.shape[0], -1)

    captures = {"features": (model.norm, lambda out: out),
                "token_index.0": (model.patch_embed, all_patches)}
    for i, block in enumerate(model.blocks):
        captures[f"head_weight.{i}"] = (block.attn.head_selector, lambda p: p.transpose(1, 2))
        captures[f"message_weight.{i}"] = (block.attn, lambda out: out[1])
        captures[f"dependency_mask.{i}"] = (block.attn, lambda out: out[2])
        captures[f"token_index.{i + 1}"] = (
            block, lambda out: out[2] if out[2] is not None else all_patches(out[0]))
    return captures


CAPTURES["dependencyvit"] = _dependencyvit

"""The custom-op / autograd glue of every fused op, written once.

A fused op is two ``torch.library`` custom ops, ``backbones::<name>_fwd`` and
``backbones::<name>_bwd``, tied together by ``register_autograd``: ``torch.compile`` and
``torch.export`` see one opaque node each (shapes from the fake implementations, no graph break),
eager autograd works as with an ``autograd.Function``, and fvcore sees the forward by name
(:mod:`ops.flops` counts it). A kernel module writes only the two kernel calls, with the types
``torch.library`` reads the schemas from::

    def forward(q: Tensor, k: Tensor, ..., <static args>, for_backward: bool)
            -> Tuple[<outputs>]
    def backward(dout: Tensor, q: Tensor, k: Tensor, ..., <saved outputs>, <static args>,
                 needs_input_grad: List[bool]) -> Tuple[<one gradient per differentiable input>]

The forward's leading ``Tensor`` / ``Optional[Tensor]`` parameters are its tensor inputs, the
rest up to ``for_backward`` its static arguments. ``for_backward`` is True when a gradient will be
asked for: keep what the backward needs (the log-sum-exp), skip it otherwise. The backward gets
the gradient of the first output, every tensor input, the outputs named in ``saved``, the static
arguments, and ``needs_input_grad``, one flag per differentiable input (autograd's
``ctx.needs_input_grad``): it computes only the gradients asked for and may return None for the
others (the glue stores an empty placeholder there; autograd gets None).
"""
import inspect
from typing import Optional

import torch

__all__ = ["FusedOp"]

_TENSOR_TYPES = (torch.Tensor, Optional[torch.Tensor])


class FusedOp:
    """One fused op: its forward and backward custom ops and their autograd.

    Args:
        name: the op's name; the custom ops are ``backbones::<name>_fwd`` / ``_bwd``.
        forward, backward: the kernel calls (module docstring).
        forward_fake: ``forward_fake(*forward args)`` -> empty outputs of the right shapes,
            dtypes and strides (the backward's fake is derived: gradients shaped like inputs).
        outputs: names of the forward's outputs, in order.
        results: how many leading outputs the op returns to its caller. The first one is
            differentiable; any others carry no gradient and are returned detached.
        saved: names of the outputs the backward takes, after the tensor inputs.
        differentiable: names of the tensor inputs that take a gradient.
    """

    def __init__(self, name, *, forward, backward, forward_fake, outputs=("out", "lse"),
                 results=1, saved=("out", "lse"), differentiable=("q", "k", "v")):
        params = list(inspect.signature(forward).parameters.values())
        num_tensors = next(i for i, p in enumerate(params) if p.annotation not in _TENSOR_TYPES)
        tensors = [p.name for p in params[:num_tensors]]
        statics = [p.name for p in params[num_tensors:-1]]
        expected = ["dout", *tensors, *saved, *statics, "needs_input_grad"]
        backward_params = list(inspect.signature(backward).parameters)
        if params[-1].name != "for_backward" or backward_params != expected:
            raise TypeError(f"{name}: the forward must end with `for_backward` and the backward "
                            f"take ({', '.join(expected)}), got {backward_params}")
        self.name = name
        self.num_tensors = num_tensors
        self.num_results = results
        self.saved_outputs = tuple(outputs.index(o) for o in saved)
        self.differentiable = tuple(tensors.index(t) for t in differentiable)

        self.forward_op = torch.library.custom_op(f"backbones::{name}_fwd", forward,
                                                  mutates_args=())
        self.forward_op.register_fake(forward_fake)

        def run_backward(*args):
            grads = backward(*args)
            return tuple(g if need and g is not None else args[0].new_empty(0)
                         for g, need in zip(grads, args[-1], strict=True))

        self.backward_op = torch.library.custom_op(
            f"backbones::{name}_bwd", run_backward, mutates_args=(),
            schema=torch.library.infer_schema(backward, mutates_args=()))
        self.backward_op.register_fake(self._backward_fake)
        self.forward_op.register_autograd(self._backward, setup_context=self._setup_context)

    def __call__(self, *args):
        """The forward on ``(*tensor inputs, *static args)``: its results, the first one
        differentiable."""
        tensors = args[:self.num_tensors]
        for_backward = torch.is_grad_enabled() and any(
            tensors[i] is not None and tensors[i].requires_grad for i in self.differentiable)
        outputs = self.forward_op(*args, for_backward)
        if self.num_results == 1:
            return outputs[0]
        return (outputs[0], *(o.detach() for o in outputs[1:self.num_results]))

    def _backward_fake(self, dout, *args):
        tensors, needs = args[:self.num_tensors], args[-1]
        return tuple(torch.empty_like(tensors[i], memory_format=torch.contiguous_format)
                     if need else dout.new_empty(0)
                     for i, need in zip(self.differentiable, needs, strict=True))

    def _setup_context(self, ctx, inputs, output):
        *args, for_backward = inputs
        if not for_backward:  # nothing will ask for a gradient
            return
        ctx.save_for_backward(*args[:self.num_tensors], *(output[i] for i in self.saved_outputs))
        ctx.static_args = args[self.num_tensors:]

    def _backward(self, ctx, dout, *other_output_grads):
        needs = [ctx.needs_input_grad[i] for i in self.differentiable]
        grads = [None] * len(ctx.needs_input_grad)
        if any(needs):
            computed = self.backward_op(dout, *ctx.saved_tensors, *ctx.static_args, needs)
            for i, need, grad in zip(self.differentiable, needs, computed):
                if need:
                    grads[i] = grad
        return tuple(grads)

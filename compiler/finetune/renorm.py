"""BatchNorm put back for the fine-tune, folded away after it.

A compiled graph has its BatchNorms folded into the convolutions (``fold_bn``): the right form for
inference, the wrong one for training. Without the normalisation, a pruned network recovers
more slowly: ``benchmarks/finetune_defaults.py`` on ``vgg5`` pruned by half (channels), three
epochs of distillation (alpha 0.9, T 4, lr 3e-3) from the same compressed weights, reached 90.24%
test accuracy on the folded graph and 90.84% with BatchNorms put back by this module (the
original: 91.93%).

``renormalized(model, batches)`` wraps every convolution with a bias of a BatchNorm-free ``model`` as
``conv -> BatchNorm`` for the duration of a ``with`` block. Each BatchNorm starts as the identity on
the data: its running statistics are the conv's per-channel output mean and variance over the
given batches, and its affine weight and bias undo them (``gamma = sqrt(var + eps)``, ``beta =
mean``), so in eval mode the wrapped model computes what it did, and in train mode it normalises
by the batch as the original's BatchNorms did. On exit each BatchNorm is folded into its conv
(``compiler.ops.fold_into``) and the conv put back where it was: the model's structure is what it
was, its weights the trained ones. Models that already hold a BatchNorm are left as they are.

References
----------
Ioffe & Szegedy, "Batch normalization: accelerating deep network training by reducing internal
covariate shift", 2015.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..ops import fold_into

CONVS = {nn.Conv1d: nn.BatchNorm1d, nn.Conv2d: nn.BatchNorm2d, nn.Conv3d: nn.BatchNorm3d}
NORMS = (nn.modules.batchnorm._BatchNorm,)


class Renormed(nn.Module):
    """``norm(conv(x))``: a convolution with a BatchNorm after it, while training."""

    def __init__(self, conv: nn.Module, norm: nn.Module):
        super().__init__()
        self.conv = conv
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


def convs_to_renormalize(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """``(parent, attribute, conv)`` of every convolution of ``model`` with a bias and registered once, or
    none when ``model`` has a BatchNorm of its own (it trains normalised already). A folded BatchNorm
    leaves a bias on its conv; a conv without one (the inner cores of a factorization) has no
    BatchNorm to put back, and folding one in would add parameters."""
    if any(isinstance(m, NORMS) for m in model.modules()):
        return []
    sites = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
             if type(child) in CONVS and child.bias is not None]
    seen: dict[int, int] = {}
    for _, _, conv in sites:
        seen[id(conv)] = seen.get(id(conv), 0) + 1
    return [s for s in sites if seen[id(s[2])] == 1]  # a conv registered twice would get two norms, folded twice


@torch.no_grad()
def _output_stats(model: nn.Module, convs: list[nn.Module], batches: Iterable) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-channel mean and (biased) variance of each conv's output over ``batches``, in eval mode."""
    sums: dict[int, list] = {}

    def hook(i):
        def record(_m, _inp, out):
            dims = [0, *range(2, out.dim())]
            o = out.detach().double()
            s = sums.setdefault(i, [0.0, 0.0, 0])
            s[0] = s[0] + o.sum(dims)
            s[1] = s[1] + (o * o).sum(dims)
            s[2] += o.numel() // o.shape[1]
        return record

    handles = [c.register_forward_hook(hook(i)) for i, c in enumerate(convs)]
    was = model.training
    model.eval()
    try:
        for inputs in batches:
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    out = []
    for i, c in enumerate(convs):
        if i not in sums:  # never reached on these inputs: start from the identity statistics
            out.append((torch.zeros(c.out_channels), torch.ones(c.out_channels)))
            continue
        s, sq, n = sums[i]
        mean = s / n
        out.append((mean.float(), (sq / n - mean * mean).clamp_min(0).float()))
    return out


@contextmanager
def renormalized(model: nn.Module, batches: Iterable) -> Iterator[int]:
    """Within the block, every conv of a BatchNorm-free ``model`` is followed by a BatchNorm that starts
    as the identity on ``batches`` (input tuples, iterated only when there is a conv to wrap); on exit
    each is folded into its conv.
    Yields how many convs were wrapped (0: the model had a BatchNorm, or no conv)."""
    sites = convs_to_renormalize(model)
    if not sites:
        yield 0
        return
    stats = _output_stats(model, [c for _, _, c in sites], batches)
    for (parent, name, conv), (mean, var) in zip(sites, stats):
        p = next(conv.parameters())
        norm = CONVS[type(conv)](conv.out_channels).to(device=p.device, dtype=p.dtype)
        norm.running_mean.copy_(mean)
        norm.running_var.copy_(var)
        with torch.no_grad():
            norm.weight.copy_(torch.sqrt(var + norm.eps))
            norm.bias.copy_(mean)
        setattr(parent, name, Renormed(conv, norm))
    try:
        yield len(sites)
    finally:
        for parent, name, conv in sites:
            norm = getattr(parent, name).norm
            frozen = not conv.weight.requires_grad
            with torch.no_grad():
                fold_into(conv, norm.running_mean, norm.running_var, norm.weight.detach(), norm.bias.detach(), norm.eps)
            conv.requires_grad_(not frozen)
            setattr(parent, name, conv)

"""The fused-op vocabulary shared by rewrites (``passes/``) and backends (``runtime/``).

A ``FusedOp`` is a conv or linear whose epilogue - bias, an optional residual add, an optional
activation - a backend may run as one kernel::

    y = act(op(x) + residual)        # op carries its own bias

The eager forward below is the definition; backends must match it.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "relu6": F.relu6,
    "hardswish": F.hardswish,
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
}

FUSABLE_OPS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


class FusedOp(nn.Module):
    """``act(op(x) + residual)`` as one unit; ``op`` is a Conv{1,2,3}d or a Linear."""

    def __init__(self, op: nn.Module, activation: str | None = None, residual: bool = False):
        super().__init__()
        if not isinstance(op, FUSABLE_OPS):
            raise TypeError(f"FusedOp wraps {[t.__name__ for t in FUSABLE_OPS]}, got {type(op).__name__}")
        if activation is not None and activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}, known: {sorted(ACTIVATIONS)}")
        self.op = op
        self.activation = activation
        self.residual = residual

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        y = self.op(x)
        if residual is not None:
            y = y + residual
        if self.activation is not None:
            y = ACTIVATIONS[self.activation](y)
        return y

    def extra_repr(self) -> str:
        return f"activation={self.activation}, residual={self.residual}"

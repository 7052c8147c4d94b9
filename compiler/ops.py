"""The fused-op vocabulary shared by rewrites (``passes/``) and backends (``runtime/``).

A ``FusedOp`` is a conv or linear whose epilogue - bias, an optional residual add, an optional
activation - a backend may run as one kernel::

    y = act(op(x) + residual)        # op carries its own bias

The eager forward below is the definition; backends must match it.
"""
from __future__ import annotations

import math
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


class TTLinear(nn.Module):
    r"""A Linear whose weight is a TT-matrix: ``W[(i_1..i_d), (j_1..j_d)] = G_1[i_1, j_1] ... G_d[i_d, j_d]``.

    Cores ``G_k`` have shape ``(r_{k-1}, I_k, J_k, r_k)``, ``out_features = prod I_k``,
    ``in_features = prod J_k``. The forward contracts one core at a time with reshape, permute and
    matmul only - never rebuilding the dense weight - so it traces, exports to ONNX as
    Reshape/Transpose/MatMul, and lowers to plain GEMMs.
    """

    def __init__(self, cores: list[torch.Tensor], bias: torch.Tensor | None = None):
        super().__init__()
        self.cores = nn.ParameterList([nn.Parameter(c.detach().clone()) for c in cores])
        self.out_modes = tuple(c.shape[1] for c in cores)
        self.in_modes = tuple(c.shape[2] for c in cores)
        self.in_features = math.prod(self.in_modes)
        self.out_features = math.prod(self.out_modes)
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        t = x.reshape(-1, 1, self.in_modes[0], self.in_features // self.in_modes[0])  # (M, r, J_k, rest)
        for k, core in enumerate(self.cores):
            m, r, j, n = t.shape
            rank_out, i = core.shape[3], core.shape[1]
            g = core.permute(0, 2, 1, 3).reshape(r * j, i * rank_out)
            t = (t.permute(0, 3, 1, 2).reshape(m * n, r * j) @ g).reshape(m, n, i, rank_out).permute(0, 2, 3, 1)
            if k + 1 < len(self.cores):
                nj = self.in_modes[k + 1]
                t = t.reshape(m * i, rank_out, nj, n // nj)
        y = t.reshape(*lead, self.out_features)
        return y + self.bias if self.bias is not None else y

    def macs(self, rows: int) -> int:
        """Multiply-accumulates for ``rows`` input rows."""
        total, m, n = 0, rows, self.in_features
        for core in self.cores:
            r, i, j, c = core.shape
            n //= j
            total += m * n * r * j * i * c
            m *= i
        return total

    def extra_repr(self) -> str:
        ranks = [c.shape[3] for c in self.cores][:-1]
        return f"in_modes={self.in_modes}, out_modes={self.out_modes}, ranks={ranks}, bias={self.bias is not None}"

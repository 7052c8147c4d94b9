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

# The activation vocabulary of every rewrite and backend: canonical name -> eager definition.
# ``leaky_relu`` carries its slope in the name (``leaky_relu:0.1``); ``activation_fn`` parses it.
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "relu6": F.relu6,
    "hardswish": F.hardswish,
    "hardsigmoid": F.hardsigmoid,
    "silu": F.silu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "mish": F.mish,
    "elu": F.elu,
    "leaky_relu": F.leaky_relu,
}
# the same activations as modules, functions and tensor methods, as traced graphs hold them
ACT_MODULES = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.Hardswish: "hardswish", nn.Hardsigmoid: "hardsigmoid",
               nn.SiLU: "silu", nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.Mish: "mish"}
ACT_FUNCTIONS = {F.relu: "relu", torch.relu: "relu", torch.relu_: "relu", F.relu6: "relu6", F.hardswish: "hardswish",
                 F.hardsigmoid: "hardsigmoid", F.silu: "silu", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid",
                 torch.tanh: "tanh", F.tanh: "tanh", F.mish: "mish"}
ACT_METHODS = {"relu": "relu", "relu_": "relu", "sigmoid": "sigmoid", "sigmoid_": "sigmoid", "tanh": "tanh"}


def leaky_relu_name(slope: float) -> str:
    return f"leaky_relu:{float(slope)!r}"


def activation_fn(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The eager definition of an activation name; ValueError naming the known ones."""
    base, _, arg = name.partition(":")
    if base not in ACTIVATIONS or (arg and base != "leaky_relu"):
        raise ValueError(f"unknown activation {name!r}, known: {sorted(ACTIVATIONS)} (leaky_relu as 'leaky_relu:<slope>')")
    if base == "leaky_relu":
        slope = float(arg) if arg else 0.01
        return lambda x: F.leaky_relu(x, slope)
    return ACTIVATIONS[base]


FUSABLE_OPS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def fold_into(op: nn.Module, mean, var, gamma, beta, eps: float) -> None:
    """Fold normalisation statistics into ``op``'s weight and bias, in place."""
    w = op.weight.detach().double()
    scale = (gamma.double() if gamma is not None else torch.ones_like(var, dtype=torch.float64)) / torch.sqrt(var.double() + eps)
    shift = beta.double() if beta is not None else torch.zeros_like(scale)
    b = op.bias.detach().double() if op.bias is not None else torch.zeros_like(scale)
    dtype = op.weight.dtype
    op.weight = nn.Parameter((w * scale.reshape(-1, *([1] * (w.dim() - 1)))).to(dtype))
    op.bias = nn.Parameter(((b - mean.double()) * scale + shift).to(dtype))


class FusedOp(nn.Module):
    """``act(op(x) + residual)`` as one unit; ``op`` is a Conv{1,2,3}d or a Linear."""

    def __init__(self, op: nn.Module, activation: str | None = None, residual: bool = False):
        super().__init__()
        if not isinstance(op, FUSABLE_OPS):
            raise TypeError(f"FusedOp wraps {[t.__name__ for t in FUSABLE_OPS]}, got {type(op).__name__}")
        if activation is not None:
            activation_fn(activation)  # raises on an unknown name
        self.op = op
        self.activation = activation
        self.residual = residual

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        y = self.op(x)
        if residual is not None:
            y = y + residual
        if self.activation is not None:
            y = activation_fn(self.activation)(y)
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


class Attention(nn.Module):
    r"""Multi-head attention whose inner width ``num_heads * head_dim`` may differ from ``embed_dim``.

    This is what head pruning turns an ``nn.MultiheadAttention`` into (which requires the two to be
    equal)::

        q, k, v = x W_q^T, x W_k^T, x W_v^T        # (N, L, H*D), split into H heads of width D
        y = concat_h(softmax(q_h k_h^T / sqrt(D)) v_h) W_o^T + b_o

    It is called like ``nn.MultiheadAttention`` (same argument names, ``(output, weights)`` result)
    and stays one leaf when traced, so pruning can find its heads again.
    """

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, *, bias: bool = True, batch_first: bool = False):
        super().__init__()
        inner = num_heads * head_dim
        self.embed_dim, self.num_heads, self.head_dim, self.batch_first = embed_dim, num_heads, head_dim, batch_first
        self.q_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.k_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.v_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias)

    @classmethod
    def from_mha(cls, m: nn.MultiheadAttention) -> "Attention":
        """The same attention as ``m`` (packed in-projection, no bias_k/bias_v), with separate q/k/v."""
        e = m.embed_dim
        out = cls(e, m.num_heads, m.head_dim, bias=m.in_proj_bias is not None, batch_first=m.batch_first)
        with torch.no_grad():
            for i, proj in enumerate((out.q_proj, out.k_proj, out.v_proj)):
                proj.weight.copy_(m.in_proj_weight[i * e:(i + 1) * e])
                if m.in_proj_bias is not None:
                    proj.bias.copy_(m.in_proj_bias[i * e:(i + 1) * e])
            out.out_proj.load_state_dict(m.out_proj.state_dict())
        return out.to(m.out_proj.weight.dtype)

    def select_heads(self, heads: list[int]) -> "Attention":
        """A copy that keeps only ``heads``."""
        d = self.head_dim
        out = Attention(self.embed_dim, len(heads), d, bias=self.q_proj.bias is not None, batch_first=self.batch_first)
        rows = torch.cat([torch.arange(h * d, (h + 1) * d) for h in heads])
        with torch.no_grad():
            for new, old in ((out.q_proj, self.q_proj), (out.k_proj, self.k_proj), (out.v_proj, self.v_proj)):
                new.weight.copy_(old.weight[rows])
                if old.bias is not None:
                    new.bias.copy_(old.bias[rows])
            out.out_proj.weight.copy_(self.out_proj.weight[:, rows])
            if self.out_proj.bias is not None:
                out.out_proj.bias.copy_(self.out_proj.bias)
        return out.to(self.out_proj.weight.dtype)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_padding_mask=None,
                need_weights: bool = True, attn_mask=None, average_attn_weights: bool = True, is_causal: bool = False):
        if key_padding_mask is not None or attn_mask is not None or is_causal:
            raise NotImplementedError("fxcompress Attention does not take masks (head pruning leaves masked attention alone)")
        if not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        n, lq, _ = query.shape
        h, d = self.num_heads, self.head_dim
        q = self.q_proj(query).reshape(n, lq, h, d).transpose(1, 2)
        k = self.k_proj(key).reshape(n, key.shape[1], h, d).transpose(1, 2)
        v = self.v_proj(value).reshape(n, value.shape[1], h, d).transpose(1, 2)
        attn = torch.softmax((q * d ** -0.5) @ k.transpose(-2, -1), dim=-1)
        y = self.out_proj((attn @ v).transpose(1, 2).reshape(n, lq, h * d))
        if not self.batch_first:
            y = y.transpose(0, 1)
        weights = (attn.mean(1) if average_attn_weights else attn) if need_weights else None
        return y, weights

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, head_dim={self.head_dim}, batch_first={self.batch_first}"


LEAF_OPS = (Attention,)  # traced as one call_module, so passes see them whole

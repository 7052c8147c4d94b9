r"""Tensor-Train factorizations (Oseledets 2011) of Linear and Conv2d weights.

Linear, as a TT-matrix (Novikov et al. 2015): with ``O = prod I_k`` and ``I = prod J_k``,
``W[(i_1..i_d), (j_1..j_d)] = G_1[i_1, j_1] ... G_d[i_d, j_d]``, cores ``G_k (r_{k-1}, I_k, J_k, r_k)``,
``r_0 = r_d = 1``. "Rank" is ``(r_1, ..., r_{d-1})``; ``r_k`` is at most the rank of the unfolding
that splits modes ``1..k`` from ``k+1..d``.

Conv, TT over the kernel modes ordered ``(C, kh, kw, O)`` - Garipov et al. 2016's construction with
one mode per channel dimension, which keeps every core an ordinary conv::

    W[o, c, h, w] = G_1[c, a] G_2[a, h, b] G_3[b, w, e] G_4[e, o]

a k x k conv becomes 1x1 conv C->r_1, (kh x 1) conv r_1->r_2, (1 x kw) conv r_2->r_3, 1x1 conv r_3->O.

References
----------
Oseledets, "Tensor-Train decomposition", SIAM J. Sci. Comput. 2011.
Novikov et al., "Tensorizing neural networks", NeurIPS 2015.
Garipov et al., "Ultimate tensorization: compressing convolutional and FC layers alike", 2016.
"""
from __future__ import annotations

import math

import torch

from . import _tensorly


def factor_modes(n: int, d: int) -> tuple[int, ...]:
    """Split ``n`` into ``d`` factors as balanced as possible (largest prime factors placed first)."""
    primes, m, p = [], n, 2
    while p * p <= m:
        while m % p == 0:
            primes.append(p)
            m //= p
        p += 1
    if m > 1:
        primes.append(m)
    modes = [1] * d
    for q in sorted(primes, reverse=True):
        modes[modes.index(min(modes))] *= q
    return tuple(sorted(modes, reverse=True))


def tt_matrix_bounds(out_modes: tuple[int, ...], in_modes: tuple[int, ...]) -> tuple[int, ...]:
    sizes = [i * j for i, j in zip(out_modes, in_modes)]
    return tuple(min(math.prod(sizes[: k + 1]), math.prod(sizes[k + 1 :])) for k in range(len(sizes) - 1))


def tt_linear(w: torch.Tensor, ranks: tuple[int, ...], out_modes: tuple[int, ...], in_modes: tuple[int, ...]) -> list[torch.Tensor]:
    """TT-matrix cores ``(r_{k-1}, I_k, J_k, r_k)`` of ``W (O, I)``."""
    if math.prod(out_modes) != w.shape[0] or math.prod(in_modes) != w.shape[1]:
        raise ValueError(f"modes {out_modes} x {in_modes} do not tensorise a {tuple(w.shape)} weight")
    tensor = w.reshape(*out_modes, *in_modes)
    return [c.contiguous() for c in _tensorly.tt_matrix(tensor, [1, *ranks, 1])]


def tt_linear_reconstruct(cores: list[torch.Tensor]) -> torch.Tensor:
    full = cores[0]  # (1, I1, J1, r1)
    for core in cores[1:]:
        r0, i, j, _ = full.shape
        a, i2, j2, b = core.shape
        full = torch.einsum("xijr,rklb->xikjlb", full, core).reshape(r0, i * i2, j * j2, b)
    return full[0, :, :, 0]


def tt_conv_bounds(shape: tuple[int, ...]) -> tuple[int, int, int]:
    o, c, kh, kw = shape
    dims = (c, kh, kw, o)
    return tuple(min(math.prod(dims[: k + 1]), math.prod(dims[k + 1 :])) for k in range(3))


def tt_conv(w: torch.Tensor, ranks: tuple[int, int, int]) -> list[torch.Tensor]:
    """``[first (r1, C, 1, 1), vertical (r2, r1, kh, 1), horizontal (r3, r2, 1, kw), last (O, r3, 1, 1)]``."""
    g1, g2, g3, g4 = _tensorly.tt(w.permute(1, 2, 3, 0).contiguous(), [1, *ranks, 1])
    return [
        g1[0].mT[:, :, None, None].contiguous(),  # (1, C, r1) -> (r1, C, 1, 1)
        g2.permute(2, 0, 1)[:, :, :, None].contiguous(),  # (r1, kh, r2) -> (r2, r1, kh, 1)
        g3.permute(2, 0, 1)[:, :, None, :].contiguous(),  # (r2, kw, r3) -> (r3, r2, 1, kw)
        g4[:, :, 0].mT[:, :, None, None].contiguous(),  # (r3, O, 1) -> (O, r3, 1, 1)
    ]


def tt_conv_reconstruct(f: list[torch.Tensor]) -> torch.Tensor:
    first, vert, horiz, last = f
    return torch.einsum("ac,bah,ebw,oe->ochw", first[:, :, 0, 0], vert[:, :, :, 0], horiz[:, :, 0, :], last[:, :, 0, 0])

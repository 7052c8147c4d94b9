"""The factorization methods as data: for each (method, layer kind), how to bound, count, decompose.

A rank is a tuple with one entry per rank "slot" (one for SVD and CP, two for Tucker-2, one per
inner bond for TT). ``spectra`` gives the singular values that ``energy`` and ``vbmf`` rank
selection read, one matrix unfolding each; ``to_slots`` maps the ranks chosen on them to slots.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import cp as _cp
from . import svd as _svd
from . import tt as _tt
from . import tucker as _tucker

Shape = tuple[int, ...]
Ranks = tuple[int, ...]
Spectrum = tuple[torch.Tensor, tuple[int, int], float]  # singular values, matrix shape, squared norm


@dataclass(frozen=True)
class Method:
    name: str
    kind: str  # "linear" | "conv"
    bounds: Callable[[Shape], Ranks]
    params: Callable[[Shape, Ranks], int]
    unfoldings: Callable[[torch.Tensor], list[torch.Tensor]]
    to_slots: Callable[[list[int]], Ranks]
    decompose: Callable[[torch.Tensor, Ranks], list[torch.Tensor]]
    reconstruct: Callable[[list[torch.Tensor]], torch.Tensor]
    # ranks -> the nearest feasible ranks (TT: each bond at most the previous bond times the mode size)
    feasible: Callable[[Shape, Ranks], Ranks] = lambda s, r: r

    def spectra(self, w: torch.Tensor) -> list[Spectrum]:
        out = []
        for m in self.unfoldings(w):
            out.append((_svd.singular_values(m), tuple(m.shape), float(m.double().pow(2).sum())))
        return out


def tt_modes(shape: Shape) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """How a Linear's (O, I) is tensorised: 3 modes each, 2 for small layers."""
    o, i = shape
    d = 3 if min(o, i) >= 64 else 2
    return _tt.factor_modes(o, d), _tt.factor_modes(i, d)


def _tt_feasible(dims: tuple[int, ...], ranks: Ranks) -> Ranks:
    out, prev = [], 1
    for k, r in enumerate(ranks):
        prev = max(1, min(r, prev * dims[k], math.prod(dims[k + 1 :])))
        out.append(prev)
    return tuple(out)


def _tt_matrix_unfoldings(w: torch.Tensor) -> list[torch.Tensor]:
    om, im = tt_modes(tuple(w.shape))
    d = len(om)
    t = w.reshape(*om, *im).permute(*[x for k in range(d) for x in (k, d + k)])  # I1 J1 I2 J2 ...
    sizes = [a * b for a, b in zip(om, im)]
    return [t.reshape(math.prod(sizes[: k + 1]), -1) for k in range(d - 1)]


def _tt_conv_unfoldings(w: torch.Tensor) -> list[torch.Tensor]:
    t = w.permute(1, 2, 3, 0)
    dims = t.shape
    return [t.reshape(math.prod(dims[: k + 1]), -1) for k in range(3)]


def _conv_mode_unfoldings(w: torch.Tensor) -> list[torch.Tensor]:
    return [w.reshape(w.shape[0], -1), w.transpose(0, 1).reshape(w.shape[1], -1)]


def _cp_bound(s: Shape) -> Ranks:
    # The largest CP rank that still saves parameters: beyond it a CP chain is bigger than the
    # kernel. (The algebraic bound, the product of the three smallest dimensions, is ~4x larger,
    # so fractions of it would ask ALS for ranks that compress nothing.)
    return (max(1, math.prod(s) // sum(s)),)


METHODS: dict[tuple[str, str], Method] = {
    ("svd", "linear"): Method(
        "svd", "linear",
        bounds=lambda s: (min(s),),
        params=lambda s, r: r[0] * (s[0] + s[1]),
        unfoldings=lambda w: [w],
        to_slots=lambda rs: (rs[0],),
        decompose=lambda w, r: _svd.linear_svd(w, r[0]),
        reconstruct=_svd.linear_svd_reconstruct,
    ),
    ("svd", "conv"): Method(
        "svd", "conv",
        bounds=lambda s: (min(s[0], s[1] * s[2] * s[3]),),
        params=lambda s, r: r[0] * (s[1] * s[2] * s[3] + s[0]),
        unfoldings=lambda w: [w.reshape(w.shape[0], -1)],
        to_slots=lambda rs: (rs[0],),
        decompose=lambda w, r: _svd.conv_svd(w, r[0]),
        reconstruct=_svd.conv_svd_reconstruct,
    ),
    ("spatial_svd", "conv"): Method(
        "spatial_svd", "conv",
        bounds=lambda s: (min(s[1] * s[2], s[0] * s[3]),),
        params=lambda s, r: r[0] * (s[1] * s[2] + s[0] * s[3]),
        unfoldings=lambda w: [_svd.spatial_matrix(w)],
        to_slots=lambda rs: (rs[0],),
        decompose=lambda w, r: _svd.spatial_svd(w, r[0]),
        reconstruct=_svd.spatial_svd_reconstruct,
    ),
    ("tucker2", "conv"): Method(
        "tucker2", "conv",
        bounds=lambda s: (min(s[0], s[1] * s[2] * s[3]), min(s[1], s[0] * s[2] * s[3])),
        params=lambda s, r: r[1] * s[1] + r[0] * r[1] * s[2] * s[3] + s[0] * r[0],
        unfoldings=_conv_mode_unfoldings,
        to_slots=lambda rs: (rs[0], rs[1]),
        decompose=lambda w, r: _tucker.tucker2(w, (r[0], r[1])),
        reconstruct=_tucker.tucker2_reconstruct,
        # the core's mode-0 unfolding is r_out x (r_in*kh*kw), and the other way round
        feasible=lambda s, r: (min(r[0], r[1] * s[2] * s[3]), min(r[1], r[0] * s[2] * s[3])),
    ),
    ("cp", "conv"): Method(
        "cp", "conv",
        bounds=_cp_bound,
        params=lambda s, r: r[0] * (s[0] + s[1] + s[2] + s[3]),
        unfoldings=_conv_mode_unfoldings,
        to_slots=lambda rs: (max(rs),),
        decompose=lambda w, r: _cp.cp_conv(w, r[0]),
        reconstruct=_cp.cp_conv_reconstruct,
    ),
    ("tt", "conv"): Method(
        "tt", "conv",
        bounds=_tt.tt_conv_bounds,
        params=lambda s, r: r[0] * s[1] + r[1] * r[0] * s[2] + r[2] * r[1] * s[3] + s[0] * r[2],
        unfoldings=_tt_conv_unfoldings,
        to_slots=tuple,
        decompose=lambda w, r: _tt.tt_conv(w, tuple(r)),
        reconstruct=_tt.tt_conv_reconstruct,
        feasible=lambda s, r: _tt_feasible((s[1], s[2], s[3], s[0]), r),
    ),
    ("tt", "linear"): Method(
        "tt", "linear",
        bounds=lambda s: _tt.tt_matrix_bounds(*tt_modes(s)),
        params=lambda s, r: sum(a * i * j * b for a, i, j, b in zip((1, *r), *tt_modes(s), (*r, 1))),
        unfoldings=_tt_matrix_unfoldings,
        to_slots=tuple,
        decompose=lambda w, r: _tt.tt_linear(w, tuple(r), *tt_modes(tuple(w.shape))),
        reconstruct=_tt.tt_linear_reconstruct,
        feasible=lambda s, r: _tt_feasible(tuple(a * b for a, b in zip(*tt_modes(s))), r),
    ),
}

METHOD_NAMES = tuple(sorted({name for name, _ in METHODS}))


def grouped(method: Method, groups: int) -> Method:
    """``method`` on a grouped conv (RegNet, ResNeXt): each group's ``(O/G, C/G, kh, kw)`` kernel is
    factorized on its own at the same ranks, and the factors are stacked along their output axis,
    so the chain is grouped layers again (grouped 1x1, grouped core, grouped 1x1 for Tucker-2).

    Ranks are per group. Spectrum-based specs (energy, vbmf) read each unfolding as the block
    diagonal of the groups' unfoldings - the layer's spectrum - and share the count among groups.
    """
    if groups == 1:
        return method
    if method.kind != "conv":
        raise ValueError(f"{method.name}: only convs are grouped")
    g = groups

    def per(s: Shape) -> Shape:
        if s[0] % g:
            raise ValueError(f"{s[0]} output channels do not split into {g} groups")
        return (s[0] // g, *s[1:])

    def split(w: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return w.chunk(g, dim=0)

    def unfoldings(w: torch.Tensor) -> list[torch.Tensor]:
        per_group = [method.unfoldings(wg) for wg in split(w)]
        return [torch.block_diag(*ms) for ms in zip(*per_group)]

    def decompose(w: torch.Tensor, r: Ranks) -> list[torch.Tensor]:
        parts = [method.decompose(wg, r) for wg in split(w)]
        return [torch.cat(fs, dim=0) for fs in zip(*parts)]

    def reconstruct(factors: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([method.reconstruct(list(fs)) for fs in zip(*(f.chunk(g, dim=0) for f in factors))], dim=0)

    return Method(
        method.name, "conv",
        bounds=lambda s: method.bounds(per(s)),
        params=lambda s, r: g * method.params(per(s), r),
        unfoldings=unfoldings,
        to_slots=lambda rs: method.to_slots([max(1, math.ceil(x / g)) for x in rs]),
        decompose=decompose,
        reconstruct=reconstruct,
        feasible=lambda s, r: method.feasible(per(s), r),
    )


def for_layer(name: str, kind: str, groups: int = 1) -> Method:
    """The method ``name`` for a layer of ``kind`` ("conv" | "linear") with ``groups`` groups."""
    return grouped(METHODS[(name, kind)], groups)

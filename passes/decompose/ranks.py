"""Rank specifications, normalised in exactly one place.

A rank spec is one of:

- ``int`` r >= 1: the rank of every slot, clipped to that slot's full rank; above the largest
  full rank it is an error;
- ``float`` f in (0, 1]: that fraction of each slot's full rank (at least 1);
- ``"params:p"``, p in (0, 1): the largest uniform fraction whose factors hold at most p times the
  layer's parameters;
- ``"energy:e"``, e in (0, 1]: the smallest ranks keeping a fraction e of the squared singular
  values of each relevant unfolding;
- ``"vbmf"``: Nakajima's analytic EVBMF estimate on each relevant unfolding (Kim et al. 2016).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .methods import Method, Ranks
from .vbmf import evbmf_rank

FORMS = "an int >= 1, a fraction in (0, 1], 'params:<p in (0, 1)>', 'energy:<e in (0, 1]>' or 'vbmf'"


@dataclass(frozen=True)
class RankSpec:
    kind: str  # "int" | "fraction" | "params" | "energy" | "vbmf"
    value: float | int | None = None

    def __str__(self) -> str:
        if self.kind in ("int", "fraction"):
            return str(self.value)
        return self.kind if self.value is None else f"{self.kind}:{self.value:g}"


def parse_rank(spec) -> RankSpec:
    """Validate a user's rank spec; raise ValueError naming the valid forms."""
    if isinstance(spec, RankSpec):
        return spec
    if isinstance(spec, bool):
        raise ValueError(f"rank must be {FORMS}, got {spec!r}")
    if isinstance(spec, int):
        if spec < 1:
            raise ValueError(f"rank must be >= 1, got {spec}")
        return RankSpec("int", spec)
    if isinstance(spec, float):
        if not 0 < spec <= 1:
            raise ValueError(f"a fractional rank must be in (0, 1], got {spec}; for an absolute rank pass an int")
        return RankSpec("fraction", spec)
    if isinstance(spec, str):
        kind, _, value = spec.strip().partition(":")
        if kind == "vbmf" and not value:
            return RankSpec("vbmf")
        if kind in ("energy", "params") and value:
            try:
                v = float(value)
            except ValueError:
                raise ValueError(f"rank '{spec}': '{value}' is not a number") from None
            if kind == "energy" and not 0 < v <= 1:
                raise ValueError(f"energy must be in (0, 1], got {v}")
            if kind == "params" and not 0 < v < 1:
                raise ValueError(f"a parameter ratio must be in (0, 1), got {v}")
            return RankSpec(kind, v)
    raise ValueError(f"rank must be {FORMS}, got {spec!r}")


def resolve_ranks(spec: RankSpec, method: Method, w: torch.Tensor) -> Ranks:
    """The concrete ranks of ``method`` on weight ``w`` for ``spec``."""
    shape = tuple(w.shape)
    bounds = method.bounds(shape)
    clip = lambda rs: method.feasible(shape, tuple(max(1, min(r, b)) for r, b in zip(rs, bounds)))  # noqa: E731
    if spec.kind == "int":
        if spec.value > max(bounds):
            raise ValueError(f"rank {spec.value} is above full rank {max(bounds)} (per-slot full ranks {bounds})")
        return clip([spec.value] * len(bounds))
    if spec.kind == "fraction":
        return clip([round(spec.value * b) for b in bounds])
    if spec.kind == "params":
        budget = spec.value * math.prod(shape)
        lo, hi = 0.0, 1.0
        for _ in range(30):  # bisection on the uniform fraction
            mid = (lo + hi) / 2
            if method.params(shape, clip([round(mid * b) for b in bounds])) <= budget:
                lo = mid
            else:
                hi = mid
        return clip([round(lo * b) for b in bounds])
    spectra = method.spectra(w)
    if spec.kind == "energy":
        ranks = []
        for s, _, _ in spectra:
            e = s.double().pow(2).cumsum(0)
            ranks.append(int(torch.searchsorted(e, spec.value * e[-1] * (1 - 1e-12)).item()) + 1)
        return clip(method.to_slots(ranks))
    if spec.kind == "vbmf":
        return clip(method.to_slots([evbmf_rank(s.cpu().numpy(), shp, total) for s, shp, total in spectra]))
    raise ValueError(f"unknown rank kind {spec.kind!r}")


r"""Tucker-2 factorization of a conv kernel (Kim et al. 2016).

``W (O, C, kh, kw) ~ core (r_out, r_in, kh, kw) x_0 U_out (O, r_out) x_1 U_in (C, r_in)``,
so a k x k conv becomes: 1x1 conv C->r_in, the k x k core conv r_in->r_out (stride, padding and
dilation of the original), 1x1 conv r_out->O (with the bias). "Rank" is the pair
``(r_out, r_in)``; full rank is ``(min(O, C*kh*kw), min(C, O*kh*kw))``.

Computed with TensorLy's ``partial_tucker`` (HOOI, SVD-initialised) over modes 0 and 1.

References
----------
Kim et al., "Compression of deep convolutional neural networks for fast and low power mobile
applications", ICLR 2016.
"""
from __future__ import annotations

import torch

from . import _tensorly

HOOI_ITERS = 10  # HOOI from an SVD start gains little after a few sweeps; caps the cost on 512-ch layers


def tucker2(w: torch.Tensor, ranks: tuple[int, int]) -> list[torch.Tensor]:
    """``[first (r_in, C, 1, 1), core (r_out, r_in, kh, kw), last (O, r_out, 1, 1)]``."""
    r_out, r_in = ranks
    core, (u_out, u_in) = _tensorly.tucker(w, modes=[0, 1], ranks=[r_out, r_in], n_iter_max=HOOI_ITERS)
    return [u_in.mT[:, :, None, None].contiguous(), core.contiguous(), u_out[:, :, None, None].contiguous()]


def tucker2_reconstruct(f: list[torch.Tensor]) -> torch.Tensor:
    first, core, last = f
    return torch.einsum("ab,bchw,cd->adhw", last[:, :, 0, 0], core, first[:, :, 0, 0])

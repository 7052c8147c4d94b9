r"""CP factorization of a conv kernel (Lebedev et al. 2015).

``W[o, c, h, w] ~ sum_r lambda_r A_o[o, r] A_c[c, r] A_h[h, r] A_w[w, r]``: a k x k conv becomes
1x1 conv C->R, depthwise (kh x 1) conv, depthwise (1 x kw) conv, 1x1 conv R->O (with the bias).
"Rank" is R. We take as full rank the largest R that still saves parameters,
``O*C*kh*kw // (O + C + kh + kw)``; ALS need not reach an exact fit there.

Computed with TensorLy's ``parafac`` (ALS), SVD-initialised and capped at ``ALS_ITERS`` sweeps:
here ALS rarely meets its tolerance, and uncapped it spent 84 s on one 512-channel layer.

References
----------
Lebedev et al., "Speeding-up convolutional neural networks using fine-tuned CP-decomposition", ICLR 2015.
"""
from __future__ import annotations

import torch

from . import _tensorly

ALS_ITERS = 25


def cp_conv(w: torch.Tensor, rank: int, *, n_iter_max: int = ALS_ITERS) -> list[torch.Tensor]:
    """``[first (R, C, 1, 1), vertical (R, 1, kh, 1), horizontal (R, 1, 1, kw), last (O, R, 1, 1)]``."""
    weights, (a_o, a_c, a_h, a_w) = _tensorly.cp(w, rank, n_iter_max=n_iter_max)
    return [
        a_c.mT[:, :, None, None].contiguous(),
        a_h.mT[:, None, :, None].contiguous(),
        a_w.mT[:, None, None, :].contiguous(),
        (a_o * weights)[:, :, None, None].contiguous(),
    ]


def cp_conv_reconstruct(f: list[torch.Tensor]) -> torch.Tensor:
    first, vert, horiz, last = f
    return torch.einsum("or,rc,rh,rw->ochw", last[:, :, 0, 0], first[:, :, 0, 0], vert[:, 0, :, 0], horiz[:, 0, 0, :])

r"""SVD-based factorizations of Linear and Conv2d weights.

``linear_svd``: ``W (O, I) ~ W2 (O, r) @ W1 (r, I)``: a Linear becomes Linear(I->r), Linear(r->O).

``conv_svd``: the kernel unfolded as ``(O, C*kh*kw)``: a k x k conv to r channels, then a 1x1 conv.

``spatial_svd`` (Jaderberg et al. 2014, scheme 2; AIMET's spatial SVD): the kernel rearranged as
``M[(c, h), (o, w)]``; rank r gives a (kh x 1) conv C->r then a (1 x kw) conv r->O.
Full rank is ``min(C*kh, O*kw)``.

References
----------
Denton et al., "Exploiting linear structure within convolutional networks", NeurIPS 2014.
Jaderberg, Vedaldi, Zisserman, "Speeding up convolutional neural networks with low rank expansions", BMVC 2014.
"""
from __future__ import annotations

import torch

# Above this size a full SVD is slow (VGG-16's 25088x4096 classifier: 87 s on 2 cores); when the
# rank is far below it, a randomised SVD (Halko et al. 2011) costs a few matmuls instead.
_FULL_SVD_MAX = 2048


def truncated_svd(m: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``m (a, b) ~ left (a, r) @ right (r, b)``, singular values split evenly between the two."""
    small = min(m.shape)
    if not 1 <= rank <= small:
        raise ValueError(f"rank {rank} outside [1, {small}] for a {tuple(m.shape)} matrix")
    if small > _FULL_SVD_MAX and rank <= small // 4:
        u, s, v = torch.svd_lowrank(m, q=min(small, rank + 16), niter=4)
        vh = v.mT
    else:
        u, s, vh = torch.linalg.svd(m, full_matrices=False)
    root = s[:rank].sqrt()
    return u[:, :rank] * root, root[:, None] * vh[:rank]


def singular_values(m: torch.Tensor) -> torch.Tensor:
    """All singular values, descending; through the smaller Gram matrix when ``m`` is large."""
    if min(m.shape) > _FULL_SVD_MAX:
        g = m @ m.mT if m.shape[0] <= m.shape[1] else m.mT @ m
        return torch.linalg.eigvalsh(g.double()).clamp(min=0).sqrt().flip(0).to(m.dtype)
    return torch.linalg.svdvals(m)


def linear_svd(w: torch.Tensor, rank: int) -> list[torch.Tensor]:
    """``[W1 (r, I), W2 (O, r)]``."""
    left, right = truncated_svd(w, rank)
    return [right, left]


def linear_svd_reconstruct(f: list[torch.Tensor]) -> torch.Tensor:
    return f[1] @ f[0]


def conv_svd(w: torch.Tensor, rank: int) -> list[torch.Tensor]:
    """``[W1 (r, C, kh, kw), W2 (O, r, 1, 1)]``."""
    o, c, kh, kw = w.shape
    left, right = truncated_svd(w.reshape(o, -1), rank)
    return [right.reshape(rank, c, kh, kw), left.reshape(o, rank, 1, 1)]


def conv_svd_reconstruct(f: list[torch.Tensor]) -> torch.Tensor:
    w1, w2 = f
    r, c, kh, kw = w1.shape
    return (w2.flatten(1) @ w1.reshape(r, -1)).reshape(-1, c, kh, kw)


def spatial_matrix(w: torch.Tensor) -> torch.Tensor:
    """``W (O, C, kh, kw)`` rearranged to ``M[(c, h), (o, w)]``."""
    o, c, kh, kw = w.shape
    return w.permute(1, 2, 0, 3).reshape(c * kh, o * kw)


def spatial_svd(w: torch.Tensor, rank: int) -> list[torch.Tensor]:
    """``[V (r, C, kh, 1), H (O, r, 1, kw)]``."""
    o, c, kh, kw = w.shape
    left, right = truncated_svd(spatial_matrix(w), rank)  # (c*kh, r), (r, o*kw)
    v = left.reshape(c, kh, rank).permute(2, 0, 1).reshape(rank, c, kh, 1)
    h = right.reshape(rank, o, kw).permute(1, 0, 2).reshape(o, rank, 1, kw)
    return [v, h]


def spatial_svd_reconstruct(f: list[torch.Tensor]) -> torch.Tensor:
    v, h = f
    return torch.einsum("rchx,oryw->ochw", v, h)

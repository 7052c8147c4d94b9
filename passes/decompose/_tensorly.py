"""The one place fxcompress calls TensorLy.

``tensor_train`` silently clips requested ranks; that is handled here, against the version range
pinned in pyproject.toml. Tucker-2 is not TensorLy's: ``tucker.py`` says why (speed, measured).

Every call runs with the PyTorch backend and TensorLy's einsum tensor-algebra backend, set locally.
The default ("core") backend materialises Khatri-Rao products: for a 512-channel 3x3 kernel at CP
rank 572, the (512*512*3) x 572 product of the mode-h MTTKRP alone is 1.8 GB, and ``parafac`` took
121 s here. With the einsum backend, which torch contracts in an optimised order through
opt_einsum, the same call takes 4.6 s (measured on this 2-core machine, 25 ALS sweeps).
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager

import tensorly as tl
import torch
from tensorly.decomposition import parafac, tensor_train, tensor_train_matrix

SUPPORTED = ((0, 9), (0, 11))  # [0.9, 0.11), as pinned in pyproject.toml


def _check_version() -> None:
    v = tuple(int(p) for p in tl.__version__.split(".")[:2])
    if not SUPPORTED[0] <= v < SUPPORTED[1]:
        raise ImportError(f"fxcompress needs tensorly >=0.9,<0.11; found {tl.__version__}")


_check_version()


@contextmanager
def _backends():
    with tl.backend_context("pytorch"), tl.tenalg.backend_context("einsum"):
        yield


def cp(tensor: torch.Tensor, rank: int, *, n_iter_max: int, seed: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """CP by ALS (``parafac``), SVD-initialised: returns ``(weights, factors)``."""
    with _backends(), warnings.catch_warnings():
        # a rank above a mode's size makes TensorLy pad the SVD init (and warn); that is expected here
        warnings.filterwarnings("ignore", message="Trying to compute SVD with n_eigenvecs")
        out = parafac(tensor, rank=rank, n_iter_max=n_iter_max, init="svd", tol=1e-12, random_state=seed)
    weights, factors = out
    return weights, list(factors)


def tt(tensor: torch.Tensor, ranks: list[int]) -> list[torch.Tensor]:
    """TT-SVD; raises instead of clipping ranks silently."""
    with _backends():
        return _checked(list(tensor_train(tensor, rank=ranks)), ranks, tensor, "TT")


def tt_matrix(tensor: torch.Tensor, ranks: list[int]) -> list[torch.Tensor]:
    """TT-matrix decomposition of a tensorised matrix ``(I1..Id, J1..Jd)``: cores ``(r, I_k, J_k, r')``."""
    with _backends():
        return _checked(list(tensor_train_matrix(tensor, rank=ranks)), ranks, tensor, "TT-matrix")


def _checked(cores: list[torch.Tensor], ranks: list[int], tensor: torch.Tensor, what: str) -> list[torch.Tensor]:
    got = [1] + [c.shape[-1] for c in cores]
    if got != list(ranks):
        raise ValueError(f"{what} ranks {ranks} exceed what shape {tuple(tensor.shape)} allows (TensorLy gave {got})")
    return cores

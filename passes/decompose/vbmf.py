r"""Analytic empirical variational Bayesian matrix factorization (EVBMF): a rank estimate.

Given the singular values of an ``L x M`` matrix (``L <= M``), EVBMF estimates the noise variance by
minimising the analytic free energy, then keeps the components above the threshold
``sqrt(M sigma^2 (1 + tau)(1 + alpha / tau))``. Kim et al. 2016 use it to choose Tucker-2 ranks.

References
----------
Nakajima, Sugiyama, Babacan, Tomioka, "Global analytic solution of fully-observed variational
Bayesian matrix factorization", JMLR 2013.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar


def _tau(x: np.ndarray, alpha: float) -> np.ndarray:
    return 0.5 * (x - (1 + alpha) + np.sqrt((x - (1 + alpha)) ** 2 - 4 * alpha))


def _free_energy(sigma2: float, L: int, M: int, s: np.ndarray, residual: float, xubar: float) -> float:
    H = len(s)
    alpha = L / M
    x = s**2 / (M * sigma2)
    z1, z2 = x[x > xubar], x[x <= xubar]
    tau_z1 = _tau(z1, alpha)
    return float(
        np.sum(z2 - np.log(z2)) + np.sum(z1 - tau_z1) + np.sum(np.log((tau_z1 + 1) / z1))
        + alpha * np.sum(np.log(tau_z1 / alpha + 1)) + residual / (M * sigma2) + (L - H) * np.log(sigma2)
    )


def evbmf_rank(singular_values, shape: tuple[int, int], total_energy: float | None = None) -> int:
    """EVBMF rank estimate from the singular values of a matrix of ``shape``.

    ``total_energy`` is the squared Frobenius norm of the matrix (default: the sum of the given
    squared singular values, i.e. all of them were given).
    """
    s = np.asarray(singular_values, dtype=np.float64)
    L, M = sorted(shape)
    s = s[:L]
    H = len(s)
    if H == 0 or not np.all(np.isfinite(s)):
        raise ValueError("EVBMF needs finite singular values")
    alpha = L / M
    tauubar = 2.5129 * np.sqrt(alpha)
    total = float(np.sum(s**2)) if total_energy is None else float(total_energy)
    residual = max(0.0, total - float(np.sum(s**2)))
    xubar = (1 + tauubar) * (1 + alpha / tauubar)
    eh_ub = int(min(np.ceil(L / (1 + alpha)) - 1, H)) - 1
    upper = (np.sum(s**2) + residual) / (L * M)
    tail = s[eh_ub + 1 :] if eh_ub + 1 < H else s[-1:]
    lower = max(s[min(eh_ub + 1, H - 1)] ** 2 / (M * xubar), np.mean(tail**2) / M)
    if not lower < upper:
        return 0
    sigma2 = minimize_scalar(_free_energy, args=(L, M, s, residual, xubar), bounds=(lower, upper), method="bounded").x
    threshold = np.sqrt(M * sigma2 * (1 + tauubar) * (1 + alpha / tauubar))
    return int(np.sum(s > threshold))

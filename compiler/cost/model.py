"""The cost model: predicted kernel time of a layer on a target, from an analytic roofline corrected
by a calibration profile measured on the device.

Analytic: ``max(2 * MACs / peak, bytes / bandwidth)``, with the target's peak and bandwidth
(``compiler.target.Target``, measured by ``runtime.opencl.probe`` or a spec sheet). This is kernel
time, as OpenCL profiling events measure it; a whole model adds the target's ``launch_us`` per launch.

Calibrated: per kernel family, ``log(measured / analytic)`` is fitted as a linear function of the
layer's log-size features (``Layer.features``) by ridge regression whose strength is chosen by
leave-one-out error (closed form, numpy; the features are collinear, MACs being a product of
sizes, and an unregularised fit overfits tens of samples). Why not scikit-learn's
gradient boosting: a calibration here has tens of samples per family, and a linear model in logs
extrapolates smoothly to shapes between and beyond them (trees are flat outside their samples), and
it needs no new dependency. The profile stores the samples, not the fit, so a change of regressor
needs no recalibration.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from ..errors import CalibrationError
from ..fileio import write_text_atomic
from ..target import Target
from .families import WINOGRAD
from .layers import Layer

PROFILE_VERSION = 1


def kernels_fingerprint() -> str:
    """A hash of everything that decides what a layer's kernel does: the .cl and .h sources and the host
    code that picks blockings. A profile made under another fingerprint is stale."""
    h = hashlib.sha256()
    root = resources.files("runtime.opencl")
    for name in sorted(p.name for p in root.joinpath("kernels").iterdir() if p.name.endswith((".cl", ".h"))):
        h.update(name.encode() + root.joinpath("kernels", name).read_bytes())
    for name in ("ops.py", "layers.py", "gemm.py"):
        h.update(name.encode() + root.joinpath(name).read_bytes())
    h.update(resources.files(__package__).joinpath("families.py").read_bytes())
    return h.hexdigest()[:16]


@dataclass
class Profile:
    """Calibration samples of one device: (layer, measured kernel ms) pairs, JSON on disk."""
    device: str
    target: Target
    samples: list[tuple[Layer, float]] = field(default_factory=list)
    kernels: str = field(default_factory=kernels_fingerprint)

    def to_json(self) -> str:
        return json.dumps({"version": PROFILE_VERSION, "device": self.device, "kernels": self.kernels,
                           "target": self.target.to_dict(),
                           "samples": [{"layer": layer.to_dict(), "ms": ms} for layer, ms in self.samples]}, indent=1)

    def save(self, path: str | os.PathLike) -> Path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return write_text_atomic(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str | None = None, allow_stale: bool = False) -> Profile:
        """Read a profile; CalibrationError when it is missing, malformed, for another device than
        ``device``, or stale (unless ``allow_stale``)."""
        hint = "recalibrate with `fxcompress calibrate` (or compiler.cost.calibrate(...).save(path))"
        try:
            d = json.loads(Path(path).read_text())
            if d.get("version") != PROFILE_VERSION:
                raise CalibrationError(f"calibration profile {path} has version {d.get('version')!r}, "
                                       f"this fxcompress reads version {PROFILE_VERSION}; {hint}")
            prof = cls(device=d["device"], target=Target(**d["target"]), kernels=d["kernels"],
                       samples=[(Layer(**s["layer"]), float(s["ms"])) for s in d["samples"]])
        except FileNotFoundError:
            raise CalibrationError(f"no calibration profile at {path}; {hint}") from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CalibrationError(f"calibration profile {path} is malformed ({e}); {hint}") from None
        if device is not None and prof.device != device:
            raise CalibrationError(f"calibration profile {path} was measured on '{prof.device}', not on '{device}'; {hint}")
        if not allow_stale and prof.kernels != kernels_fingerprint():
            raise CalibrationError(f"calibration profile {path} is stale: the OpenCL kernels changed since it was "
                                   f"measured (fingerprint {prof.kernels}, now {kernels_fingerprint()}); {hint}")
        return prof


def analytic_ms(layer: Layer, target: Target) -> float:
    """Roofline kernel time: compute- or memory-bound. Winograd F(2x2, 3x3) does 16 multiply-adds
    per 2x2 output tile where the direct form does 36, over outputs padded to even sizes."""
    macs = layer.macs
    if layer.family == WINOGRAD:
        macs = macs * 16 / 36 * (2 * -(-layer.oh // 2)) * (2 * -(-layer.ow // 2)) / (layer.oh * layer.ow)
    return max(2 * macs / (target.peak_gflops * 1e6), layer.bytes / (target.bandwidth_gbs * 1e6))


ALPHAS = tuple(10.0 ** k for k in range(-6, 4))  # ridge strengths tried by leave-one-out


class CostModel:
    """Predicts a layer's kernel time on ``target``; calibrated when a profile is given."""

    def __init__(self, target: Target, profile: Profile | None = None):
        self.target, self.profile = target, profile
        self.fits: dict[str, np.ndarray] = {}
        if profile is not None:
            by_family: dict[str, list[tuple[Layer, float]]] = {}
            for layer, ms in profile.samples:
                by_family.setdefault(layer.family, []).append((layer, ms))
            for family, samples in by_family.items():
                self.fits[family] = self._fit(samples)

    def _fit(self, samples: list[tuple[Layer, float]]) -> np.ndarray:
        x = np.array([layer.features() for layer, _ in samples])
        y = np.array([math.log(ms / analytic_ms(layer, self.target)) for layer, ms in samples])
        w = np.zeros(x.shape[1])
        w[0] = y.mean()
        if len(samples) < x.shape[1] + 2:  # too few for the slopes: a constant correction only
            return w
        # Ridge on standardised features (the constant column unpenalised), its strength chosen by
        # exact leave-one-out error among ALPHAS and "constant only". Plain least squares over the
        # eight collinear log features overfit 20 samples per family: held-out zoo layers came out
        # worse than the uncalibrated roofline (27% within 10% against 45%).
        z = x[:, 1:]
        mu, sd = z.mean(axis=0), z.std(axis=0)
        sd[sd < 1e-12] = 1.0
        zs, yc, n = (z - mu) / sd, y - y.mean(), len(y)
        best = (float(np.mean((yc * n / (n - 1)) ** 2)), None)  # leave-one-out error of the constant
        for alpha in ALPHAS:
            a = np.linalg.solve(zs.T @ zs + alpha * np.eye(zs.shape[1]), zs.T)
            hat = zs @ a + 1.0 / n
            loo = (yc - zs @ (a @ yc)) / np.clip(1.0 - np.diag(hat), 1e-9, None)
            if float(np.mean(loo ** 2)) < best[0]:
                best = (float(np.mean(loo ** 2)), a @ yc)
        if best[1] is not None:
            slopes = best[1] / sd
            w[1:] = slopes
            w[0] = y.mean() - float(slopes @ mu)
        return w

    def layer_ms(self, layer: Layer) -> float:
        base = analytic_ms(layer, self.target)
        w = self.fits.get(layer.family)
        return base if w is None else base * math.exp(float(np.dot(w, layer.features())))

    def layers_ms(self, layers: list[Layer]) -> float:
        return sum(self.layer_ms(layer) for layer in layers)

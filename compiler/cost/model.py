"""The cost model: predicted kernel time of a layer on a target, from an analytic roofline corrected
by a calibration profile measured on the device.

Analytic: ``max(2 * MACs / peak, bytes / bandwidth)``, with the target's peak and bandwidth
(``compiler.target.Target``, measured by ``runtime.opencl.probe`` or a spec sheet). This is kernel
time, as OpenCL profiling events measure it.

Whole models: ``ms = call_ms + sum over launches of (scale * kernel ms + step_us)``. Uncalibrated,
scale is 1, step_us the target's ``launch_us`` and call_ms 0. Calibrated, the three are fitted
(least squares on relative error) to random whole networks the calibration timed end to end
(``Profile.networks``): in a run, PoCL starts each kernel some microseconds after the last one
ends, and back-to-back kernels find other layers' data in the caches, which one layer timed
alone does not show.

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
from .layers import Layer

PROFILE_VERSION = 3


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


@dataclass(frozen=True)
class Work:
    """What one launch does, as the cost model prices it: a layer's kernel, or ``elements`` float32
    values moved once (copies, elementwise, pooling)."""
    node: str
    kernel: str
    layer: Layer | None = None
    elements: int = 0

    def to_dict(self) -> dict:
        return {"node": self.node, "kernel": self.kernel, "elements": self.elements,
                "layer": self.layer.to_dict() if self.layer else None}

    @classmethod
    def from_dict(cls, d: dict) -> Work:
        return cls(d["node"], d["kernel"], Layer(**d["layer"]) if d["layer"] else None, int(d["elements"]))


@dataclass
class Prediction:
    steps: list[tuple[str, str, float]] = field(default_factory=list)  # (node, kernel family, ms)
    peak_bytes: int | None = None  # device memory at the peak: activations as planned, plus weights

    @property
    def total_ms(self) -> float:
        return sum(ms for *_, ms in self.steps)

    def by_family(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for _, family, ms in self.steps:
            out[family] = out.get(family, 0.0) + ms
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))


@dataclass
class Profile:
    """Calibration samples of one device, JSON on disk: (layer, measured kernel ms) pairs, and
    (a whole network's launches, its measured wall ms) pairs."""
    device: str
    target: Target
    samples: list[tuple[Layer, float]] = field(default_factory=list)
    networks: list[tuple[list[Work], float]] = field(default_factory=list)
    kernels: str = field(default_factory=kernels_fingerprint)

    def to_json(self) -> str:
        return json.dumps({"version": PROFILE_VERSION, "device": self.device, "kernels": self.kernels,
                           "target": self.target.to_dict(),
                           "samples": [{"layer": layer.to_dict(), "ms": ms} for layer, ms in self.samples],
                           "networks": [{"work": [w.to_dict() for w in work], "ms": ms} for work, ms in self.networks]},
                          indent=1)

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
                       samples=[(Layer(**s["layer"]), float(s["ms"])) for s in d["samples"]],
                       networks=[([Work.from_dict(w) for w in s["work"]], float(s["ms"])) for s in d["networks"]])
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
    """Roofline kernel time: compute- or memory-bound, over the multiply-adds the kernel's blocking
    really does (``Layer.blocking``: padded channels and rows; Winograd F(2x2, 3x3) does 16 per 2x2
    output tile where the direct form does 36)."""
    return max(2 * layer.blocking.macs / (target.peak_gflops * 1e6), layer.bytes / (target.bandwidth_gbs * 1e6))


ALPHAS = tuple(10.0 ** k for k in range(-6, 4))  # ridge strengths tried by leave-one-out
OVERHEADS_MS = (0.0, 0.001, 0.002, 0.004)  # fixed kernel time tried by leave-one-out (PoCL's dispatch)


@dataclass(frozen=True)
class Fit:
    """One kernel family's correction: ``ms = overhead_ms + analytic * exp(w . features + offset)``,
    the offset per geometry (``Layer.geometry``: kernel, stride, stem) that the samples had."""
    overhead_ms: float
    w: np.ndarray
    dropped: int = 0  # samples left out as outliers (a measurement a neighbour process slowed)
    offsets: dict[str, float] = field(default_factory=dict)

    def log_ratio(self, layer: Layer) -> float:
        return float(np.dot(self.w, layer.features())) + self.offsets.get(layer.geometry, 0.0)


def _ridge(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ridge fit of y on x (x[:, 0] the constant, unpenalised, the rest standardised), its strength
    chosen by exact leave-one-out error among ALPHAS and "constant only". Returns the weights and
    the leave-one-out residuals. Plain least squares over the collinear log features overfit 20
    samples per family: held-out zoo layers came out worse than the uncalibrated roofline."""
    n = len(y)
    w = np.zeros(x.shape[1])
    w[0] = y.mean()
    yc = y - y.mean()
    best = (yc * n / max(n - 1, 1), None)  # leave-one-out residuals of the constant (one sample: none)
    if n >= x.shape[1] + 2:  # else too few for the slopes: a constant correction only
        z = x[:, 1:]
        mu, sd = z.mean(axis=0), z.std(axis=0)
        sd[sd < 1e-12] = 1.0
        zs = (z - mu) / sd
        for alpha in ALPHAS:
            a = np.linalg.solve(zs.T @ zs + alpha * np.eye(zs.shape[1]), zs.T)
            hat = zs @ a + 1.0 / n
            loo = (yc - zs @ (a @ yc)) / np.clip(1.0 - np.diag(hat), 1e-9, None)
            if float(np.mean(loo ** 2)) < float(np.mean(best[0] ** 2)):
                best = (loo, (a @ yc) / sd, mu)
    if best[1] is not None:
        w[1:] = best[1]
        w[0] = y.mean() - float(best[1] @ best[2])
    return w, best[0]


def _inliers(r: np.ndarray) -> np.ndarray:
    """Which residuals (log of predicted / measured) are within 3 robust deviations of their median,
    or within 30% of it: the rest are outliers (a sample a neighbour process slowed, or a shape the
    fit cannot price, which would drag every other prediction towards it)."""
    d = np.abs(r - np.median(r))
    return d <= max(3 * 1.4826 * float(np.median(d)), math.log(1.3))


class CostModel:
    """Predicts a layer's kernel time on ``target``; calibrated when a profile is given."""

    def __init__(self, target: Target, profile: Profile | None = None):
        self.target, self.profile = target, profile
        self.fits: dict[str, Fit] = {}
        if profile is not None:
            by_family: dict[str, list[tuple[Layer, float]]] = {}
            for layer, ms in profile.samples:
                by_family.setdefault(layer.fit_key, []).append((layer, ms))
            for family, samples in by_family.items():
                self.fits[family] = self._fit(samples)
        self.scale, self.step_us, self.call_ms = 1.0, target.launch_us, 0.0
        self.networks_dropped = 0  # calibration networks left out of the composition fit as outliers
        if profile is not None and len(profile.networks) >= 4:
            self.scale, self.step_us, self.call_ms = self._compose(profile.networks)

    def _compose(self, networks: list[tuple[list[Work], float]]) -> tuple[float, float, float]:
        """(scale, step_us, call_ms) by least squares on the relative error of whole networks'
        predictions, the two costs kept >= 0 (a negative one is dropped and the rest refitted); then
        once more without the outlier networks (``_inliers``). Why: one random network (batch 1 at
        224, 76 launches) ran 1.3x its prediction in every calibration, and alone it lifted the scale
        enough to over-predict MobileNetV2 at batch 8 by 10 to 14%."""
        rows = np.array([[sum(self.work_ms(w) for w in work), len(work) * 1e-3, 1.0] for work, _ in networks])
        wall = np.array([ms for _, ms in networks])

        def solve(keep: np.ndarray) -> np.ndarray:
            free = [0, 1, 2]
            while True:
                coef = np.zeros(3)
                a = rows[keep][:, free] / wall[keep, None]
                coef[free] = np.linalg.lstsq(a, np.ones(int(keep.sum())), rcond=None)[0]
                bad = [i for i in free if i and coef[i] < 0]
                if not bad:
                    return coef
                free.remove(bad[0])

        coef = solve(np.ones(len(wall), bool))
        keep = _inliers(np.log(np.maximum(rows @ coef, 1e-9) / wall))
        if not keep.all() and keep.sum() >= 4:
            coef = solve(keep)
        self.networks_dropped = int((~keep).sum()) if keep.sum() >= 4 else 0
        return float(coef[0]), float(coef[1]), float(coef[2])

    def _fit(self, samples: list[tuple[Layer, float]]) -> Fit:
        """The overhead by leave-one-out error of the predicted times; then once more without the
        samples whose residual is an outlier (beyond 3 robust deviations and 30%)."""
        x = np.array([layer.features() for layer, _ in samples])
        ms = np.array([m for _, m in samples])
        base = np.array([analytic_ms(layer, self.target) for layer, _ in samples])
        keep = np.ones(len(ms), bool)
        for rnd in range(2):
            best = None
            for c0 in OVERHEADS_MS:
                if c0 and (ms[keep] <= c0).any():
                    continue
                y = np.log((ms[keep] - c0) / base[keep])
                w, loo = _ridge(x[keep], y)
                err = np.log((c0 + base[keep] * np.exp(y - loo)) / ms[keep])  # leave-one-out, in log time
                if best is None or float(np.mean(err ** 2)) < best[0]:
                    best = (float(np.mean(err ** 2)), c0, w)
            _, c0, w = best
            if rnd:
                break
            keep = _inliers(np.log((c0 + base * np.exp(x @ w)) / ms))
            if keep.all() or keep.sum() < 3:
                keep[:] = True  # nothing to drop, or too little would be left: the first fit stands
                break
        # Per-geometry offsets: the mean residual of each kernel / stride / stem kind, shrunk towards 0
        # (n / (n + 2)). One slope over "kh * kw" and "stride" could not tell conv.cl's 1x1 stride-2
        # layers (ResNet's downsamples ran 3x the family's trend) from its 3x3 ones.
        y = np.log(np.maximum(ms - c0, 1e-9) / base) - x @ w
        sums: dict[str, list[float]] = {}
        for (layer, _), r, k in zip(samples, y, keep):
            if k:
                sums.setdefault(layer.geometry, []).append(float(r))
        offsets = {g: sum(v) / (len(v) + 2) for g, v in sums.items()} if len(sums) > 1 else {}
        return Fit(c0, w, int((~keep).sum()), offsets)

    def layer_ms(self, layer: Layer) -> float:
        base = analytic_ms(layer, self.target)
        f = self.fits.get(layer.fit_key)
        return base if f is None else f.overhead_ms + base * math.exp(f.log_ratio(layer))

    def work_ms(self, w: Work) -> float:
        """Kernel time of one launch: its layer by the layer model, else its elements moved once."""
        return self.layer_ms(w.layer) if w.layer is not None else 4 * w.elements / (self.target.bandwidth_gbs * 1e6)

    def launch_ms(self, w: Work) -> float:
        """What one launch adds to a run: its kernel time, scaled, plus the cost of a step."""
        return self.scale * self.work_ms(w) + self.step_us * 1e-3

    def predict(self, work: list[Work]) -> Prediction:
        """Latency of a run of ``work``: its launches, and the per-call cost as one more step ("call")."""
        pred = Prediction([(w.node, w.kernel, self.launch_ms(w)) for w in work])
        if self.call_ms:
            pred.steps.append(("call", "host", self.call_ms))
        return pred

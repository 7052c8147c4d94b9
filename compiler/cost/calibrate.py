"""Calibration: run the OpenCL runtime's kernels at sampled layer shapes on the device, record their
kernel times (OpenCL profiling events), and keep them as a ``Profile`` (JSON, one per device)."""
from __future__ import annotations

import logging
import math
import os
import random
import re
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .families import CONV_1X1, DWCONV, FAMILIES, GEMM, WINOGRAD, WINOGRAD_MIN_CHANNELS

from ..errors import InputError, choices
from .layers import Layer, conv_layer, linear_layer
from .graph import compiled_work
from .model import CostModel, Profile, Work

log = logging.getLogger(__name__)

CHANNELS = (8, 512)  # log-uniform, so factorized ranks (odd, small) are sampled as well as zoo widths
SIZES = (7, 14, 28, 56, 112)
STEM_SIZES = (28, 32, 112, 224)  # first layers: 1 or 3 input channels at input resolution
MAX_MACS = 4e8  # per sample: keeps a calibration to a couple of minutes here


def _channels(rng: random.Random, lo: int = CHANNELS[0], hi: int = CHANNELS[1]) -> int:
    """Log-uniform in [lo, hi]; half the time a multiple of 16 as zoo widths are (their kernels run
    full vectors: the free half alone over-predicted MobileNetV2's depthwise layers 1.8x)."""
    c = int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))
    return min(max(16 * round(c / 16), lo, 16), hi) if rng.random() < 0.5 else c


def sample_module(family: str, rng: random.Random) -> tuple[nn.Module, tuple[int, ...]]:
    """A random layer of ``family`` and its input shape, under ``MAX_MACS``."""
    while True:
        n, hw = rng.choice((1, 8)), rng.choice(SIZES)
        if family == GEMM:
            m = nn.Linear(_channels(rng, 16, 4096), _channels(rng, 16, 4096))
            shape = (rng.choice((1, 8, 64, 256)), m.in_features)
            layer = linear_layer(m, shape)
        else:
            cin, cout = _channels(rng), _channels(rng)
            if family == DWCONV:
                k, s = rng.choice((3, 3, 5)), rng.choice((1, 1, 2))
                m = nn.Conv2d(cin, cin, k, s, k // 2, groups=cin)
            elif family == CONV_1X1:
                m = nn.Conv2d(cin, max(cout, 17), 1)
            elif family == WINOGRAD:
                m = nn.Conv2d(_channels(rng, WINOGRAD_MIN_CHANNELS), _channels(rng, WINOGRAD_MIN_CHANNELS), 3, 1, 1)
            elif rng.random() < 0.2:  # a stem: the model's NCHW input, read by conv.cl as it is
                k, s = rng.choice(((3, 2), (7, 2), (3, 1), (5, 1)))
                m, hw = nn.Conv2d(rng.choice((1, 3)), cout, k, s, k // 2), rng.choice(STEM_SIZES)
            else:
                k, s = rng.choice(((3, 1), (3, 1), (3, 2), (5, 1), (7, 2), (1, 2)))
                m = nn.Conv2d(cin, cout, k, s, k // 2)
            shape = (n, m.in_channels, hw, hw)
            layer = conv_layer(m, shape)
        if layer.family == family and layer.macs <= MAX_MACS:
            return m, shape


WARM_S = 0.01  # seconds of back-to-back runs before timing: PoCL's worker threads must be awake
ROUNDS, GAP_S = 3, 0.03  # timing rounds, and the pause between them


def _warm(fn) -> None:
    """Call ``fn`` once, then again until ``WARM_S`` has passed."""
    t_end = time.perf_counter() + WARM_S
    fn()
    while time.perf_counter() < t_end:
        fn()


_SWEEP = None


def _evict_caches() -> None:
    """Write 1.5x the last-level cache (32 MiB here), so the next run starts with cold caches."""
    global _SWEEP
    if _SWEEP is None:
        _SWEEP = np.empty(12 << 20, np.float32)  # 48 MiB
    _SWEEP.fill(1.0)


def measure_ms(m: nn.Module, shape: tuple[int, ...], *, repeats: int = 15, cold: bool = True) -> tuple[Layer, float]:
    """Kernel time of the one layer ``m`` on the OpenCL target: the least of ``repeats`` profiled runs
    of its kernel family's time (layout copies of the input are not the layer's), in ``ROUNDS``
    rounds apart, each after ``WARM_S`` of warm-up runs.

    Why: with one warm-up run and the least of 5 runs, one layer measured in three fresh processes
    differed by up to 2x (PoCL's threads asleep, a shared host), and a calibration taken that way
    over-predicted whole models, whose kernels run back to back, by 15 to 45% (ResNet-18 and
    MobileNetV2 at batch 8). With warm-up, a 2x outlier remained in 2 of 20 layers: a neighbour
    holding a core through a whole burst, which separate rounds get around."""
    from ..api import compile

    x = torch.randn(shape)
    layer = (linear_layer if isinstance(m, nn.Linear) else conv_layer)(m, shape)
    cm = compile(nn.Sequential(m).eval(), x, pipeline=["cleanup"], target="opencl")
    ms, per_round = math.inf, -(-repeats // ROUNDS)
    for r in range(ROUNDS):
        if r:
            time.sleep(GAP_S)
        _warm(lambda: cm._runner.profile(x))  # the first launches also compile work-group functions
        for _ in range(per_round):
            if cold:
                _evict_caches()
            ms = min(ms, cm._runner.profile(x).get(layer.family, math.inf))
    if not math.isfinite(ms):
        raise RuntimeError(f"{m} did not run as a {layer.family} kernel")
    return layer, ms


class _Residual(nn.Module):
    """ResNet's basic block, unnormalised (calibration networks are timed, not trained)."""

    def __init__(self, c: int):
        super().__init__()
        self.a, self.b = nn.Conv2d(c, c, 3, 1, 1), nn.Conv2d(c, c, 3, 1, 1)

    def forward(self, x):
        return torch.relu(x + self.b(torch.relu(self.a(x))))


class _Inverted(nn.Module):
    """MobileNetV2's inverted residual: 1x1 expand, 3x3 depthwise, 1x1 project, skip."""

    def __init__(self, c: int, expand: int):
        super().__init__()
        h = c * expand
        self.f = nn.Sequential(nn.Conv2d(c, h, 1), nn.ReLU6(), nn.Conv2d(h, h, 3, 1, 1, groups=h), nn.ReLU6(),
                               nn.Conv2d(h, c, 1))

    def forward(self, x):
        return x + self.f(x)


def sample_network(rng: random.Random) -> tuple[nn.Module, tuple[int, ...]]:
    """A random CNN and its input shape: a strided stem (and a max pool, sometimes), 3 to 10 blocks drawn from residual,
    inverted-residual, strided and plain convs at sampled widths, pooling and a linear head."""
    c, hw = _channels(rng, 16, 64), rng.choice((32, 56, 112, 224))
    layers, size = [nn.Conv2d(3, c, 3, 2, 1), nn.ReLU()], hw // 2
    if hw >= 112 and rng.random() < 0.5:  # ResNet's stem: a max pool after the strided conv
        layers.append(nn.MaxPool2d(3, 2, 1))
        size //= 2
    for _ in range(rng.randint(3, 10)):
        kind = rng.choice(("residual", "inverted", "down", "conv"))
        if kind == "residual":
            layers.append(_Residual(c))
        elif kind == "inverted":
            layers.append(_Inverted(c, rng.choice((2, 4, 6))))
        else:
            down = kind == "down" and size > 7
            c2 = _channels(rng, c, min(4 * c, 512)) if down else _channels(rng, 16, 512)
            layers += [nn.Conv2d(c, c2, 3, 2, 1) if down else nn.Conv2d(c, c2, rng.choice((1, 3)), 1, "same"), nn.ReLU()]
            c, size = c2, size // 2 if down else size
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10)]
    return nn.Sequential(*layers).eval(), (rng.choice((1, 8)), 3, hw, hw)


def wall_ms(fn, *, rounds: int = 4, per_block: int = 5, gap_s: float = 0.1) -> float:
    """Wall time per call of ``fn``: the least over ``rounds`` blocks (apart by ``gap_s``, each after
    ``WARM_S`` of warm-up calls) of the block's median. Why the least block: on this shared host a
    model's time is bimodal - MobileNetV2 at batch 8 ran 17.8 ms or 27 ms per call, in phases of
    seconds, in the same process - and the cost model predicts the undisturbed device. The
    calibration's networks and benchmarks/cost_model.py's models are both timed by this."""
    best = math.inf
    for r in range(rounds):
        if r:
            time.sleep(gap_s)
        _warm(fn)
        times = []
        for _ in range(per_block):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        best = min(best, statistics.median(times))
    return best


def measure_network(net: nn.Module, shape: tuple[int, ...]) -> tuple[list[Work], float]:
    """A network's launches on the OpenCL target and its wall time per call (``wall_ms``), as a model
    compiled with the default pipeline runs."""
    from ..api import compile

    x = torch.randn(shape)
    cm = compile(net, x, target="opencl")
    return compiled_work(cm), wall_ms(lambda: cm(x))


def calibrate(*, per_family: int = 60, networks: int = 24, families=FAMILIES, seed: int = 0,
              progress: bool = True) -> Profile:
    """Measure ``per_family`` sampled layers of each kernel family, and ``networks`` random whole
    networks, on the OpenCL device the runtime uses (``$FXCOMPRESS_OPENCL_DEVICE`` or PoCL's CPU);
    a minute or two."""
    from runtime.opencl.device import open_device
    from runtime.opencl.probe import measure_target

    bad = [f for f in families if f not in FAMILIES]
    if bad:
        raise InputError(f"unknown kernel families {bad}, valid families are {choices(FAMILIES)}")
    dev = open_device()
    target = measure_target(dev)
    rng = random.Random(seed)
    todo = [(measure_ms, *sample_module(f, rng)) for f in families for _ in range(per_family)]
    todo += [(measure_network, *sample_network(rng)) for _ in range(networks)]
    prof = Profile(device=dev.name, target=target)
    for measure, m, shape in tqdm(todo, desc="calibrating kernels", unit="sample", disable=not progress):
        (prof.samples if measure is measure_ms else prof.networks).append(measure(m, shape))
    return prof


def default_profile_path(device_name: str) -> Path:
    from runtime.opencl.programs import cache_dir

    slug = re.sub(r"[^A-Za-z0-9]+", "-", device_name).strip("-").lower()[:80]
    return cache_dir().parent / "cost" / f"{slug}.json"


def device_cost_model(profile: str | os.PathLike | None = None) -> CostModel:
    """The cost model of the OpenCL device the runtime uses: calibrated from ``profile`` (default:
    this device's profile under the user cache, see ``default_profile_path``) when one exists, else
    the roofline of the device's measured Target alone, with a warning that says how to calibrate.
    No device raises the runtime's NoOpenCLError (with its install hint); a stale or foreign
    profile raises CalibrationError."""
    from runtime.opencl.device import open_device
    from runtime.opencl.probe import measure_target

    dev = open_device()
    path = Path(profile) if profile is not None else default_profile_path(dev.name)
    if profile is not None or path.exists():
        prof = Profile.load(path, device=dev.name)
        return CostModel(prof.target, prof)
    log.warning("no calibration profile for '%s' at %s: predicting from the roofline alone; run "
                "`fxcompress calibrate` (a few minutes) for calibrated predictions", dev.name, path)
    return CostModel(measure_target(dev))

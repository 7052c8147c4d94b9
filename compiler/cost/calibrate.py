"""Calibration: run the OpenCL runtime's kernels at sampled layer shapes on the device, record their
kernel times (OpenCL profiling events), and keep them as a ``Profile`` (JSON, one per device)."""
from __future__ import annotations

import logging
import math
import os
import random
import re
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from .families import CONV_1X1, DWCONV, FAMILIES, GEMM, WINOGRAD, WINOGRAD_MIN_CHANNELS

from ..errors import InputError, choices
from .layers import Layer, conv_layer, linear_layer
from .model import CostModel, Profile

log = logging.getLogger(__name__)

CHANNELS = (8, 512)  # log-uniform, so factorized ranks (odd, small) are sampled as well as zoo widths
SIZES = (7, 14, 28, 56)
MAX_MACS = 4e8  # per sample: keeps a calibration to a couple of minutes here


def _channels(rng: random.Random, lo: int = CHANNELS[0], hi: int = CHANNELS[1]) -> int:
    return int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))


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
                m = nn.Conv2d(max(cin, WINOGRAD_MIN_CHANNELS), max(cout, WINOGRAD_MIN_CHANNELS), 3, 1, 1)
            else:
                k, s = rng.choice(((3, 1), (3, 1), (3, 2), (5, 1), (7, 2), (1, 2)))
                m = nn.Conv2d(cin, cout, k, s, k // 2)
            shape = (n, m.in_channels, hw, hw)
            layer = conv_layer(m, shape)
        if layer.family == family and layer.macs <= MAX_MACS:
            return m, shape


def measure_ms(m: nn.Module, shape: tuple[int, ...], *, repeats: int = 5) -> tuple[Layer, float]:
    """Kernel time of the one layer ``m`` on the OpenCL target: the least over ``repeats`` profiled
    runs of its kernel family's time (layout copies of the input are not the layer's)."""
    from ..api import compile

    x = torch.randn(shape)
    layer = (linear_layer if isinstance(m, nn.Linear) else conv_layer)(m, shape)
    cm = compile(nn.Sequential(m).eval(), x, pipeline=["cleanup"], target="opencl")
    cm._runner.profile(x)  # warm-up: first launches compile work-group functions
    ms = min(cm._runner.profile(x).get(layer.family, math.inf) for _ in range(repeats))
    if not math.isfinite(ms):
        raise RuntimeError(f"{m} did not run as a {layer.family} kernel")
    return layer, ms


def calibrate(*, per_family: int = 30, families=FAMILIES, seed: int = 0, progress: bool = True) -> Profile:
    """Measure ``per_family`` sampled layers of each kernel family on the OpenCL device the runtime
    uses (``$FXCOMPRESS_OPENCL_DEVICE`` or PoCL's CPU); a few minutes."""
    from runtime.opencl.device import open_device
    from runtime.opencl.probe import measure_target

    bad = [f for f in families if f not in FAMILIES]
    if bad:
        raise InputError(f"unknown kernel families {bad}, valid families are {choices(FAMILIES)}")
    dev = open_device()
    target = measure_target(dev)
    rng = random.Random(seed)
    todo = [(f, *sample_module(f, rng)) for f in families for _ in range(per_family)]
    samples = []
    for family, m, shape in tqdm(todo, desc="calibrating kernels", unit="layer", disable=not progress):
        samples.append(measure_ms(m, shape))
    return Profile(device=dev.name, target=target, samples=samples)


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

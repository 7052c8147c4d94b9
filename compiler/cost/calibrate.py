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
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .device import cache_root, open_device
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
# Stems may be larger: few input channels make them cheap per MAC (ResNet-18's 7x7 stem at 224,
# batch 8 is 9.4e8 MACs in 9.5 ms), and with 4e8 no batch-8 stem at 224 was sampled; the model then
# extrapolated that one layer to twice its time.
MAX_STEM_MACS = 1.6e9


def _channels(rng: random.Random, lo: int = CHANNELS[0], hi: int = CHANNELS[1]) -> int:
    """Log-uniform in [lo, hi]; half the time a multiple of 16 as zoo widths are (their kernels run
    full vectors: the free half alone over-predicted MobileNetV2's depthwise layers 1.8x)."""
    c = int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))
    return min(max(16 * round(c / 16), lo, 16), hi) if rng.random() < 0.5 else c


def sample_module(family: str, rng: random.Random) -> tuple[nn.Module, tuple[int, ...]]:
    """A random layer of ``family`` and its input shape, under ``MAX_MACS`` (``MAX_STEM_MACS`` for stems)."""
    while True:
        n, hw, limit = rng.choice((1, 8)), rng.choice(SIZES), MAX_MACS
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
            elif rng.random() < 0.35:  # a stem: the model's NCHW input, read by conv.cl as it is (fit apart)
                k, s = rng.choice(((3, 2), (7, 2), (3, 1), (5, 1)))
                m, hw = nn.Conv2d(rng.choice((1, 3)), cout, k, s, k // 2), rng.choice(STEM_SIZES)
                limit = MAX_STEM_MACS
            else:
                k, s = rng.choice(((3, 1), (3, 1), (3, 2), (5, 1), (7, 2), (1, 2)))
                m = nn.Conv2d(cin, cout, k, s, k // 2)
            shape = (n, m.in_channels, hw, hw)
            layer = conv_layer(m, shape)
        if layer.family == family and layer.macs <= limit:
            return m, shape


WARM_S = 0.01  # seconds of back-to-back runs before timing: PoCL's worker threads must be awake
ROUNDS, GAP_S = 3, 0.03  # timing rounds, and the pause between them
# A calibration times every sample in PASSES passes, a minute or so apart, and keeps the least: this
# host has phases of up to 30 s in which memory-bound kernels run 2x slower (MobileNetV2 at batch 8:
# 57 ms against 32, in the same process; pinning PoCL's threads with POCL_AFFINITY=1 did not help),
# and one sample timed within a fraction of a second, or the networks timed back to back, could fall
# in one whole.
PASSES = 3
LAYER_REPEATS = 15  # profiled runs per layer, over all passes
NETWORK_ROUNDS = 9  # block medians per network (wall_ms_each), over all passes


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


def prepare_layer(m: nn.Module, shape: tuple[int, ...], *, nchw: bool | None = None
                  ) -> tuple[Layer, Callable[[], dict[str, float]]]:
    """The one layer ``m`` compiled for the OpenCL target on a random input of ``shape``, reading it as
    in a network: its Layer, and a profiled run (kernel ms per family, ``Runner.profile``).

    ``nchw``: the input is the model's, which conv.cl reads as uploaded; default: when ``m`` is a
    stem (4 input channels at most). Else another layer writes the input first, as in a network: a
    1x1 conv before a depthwise one, a depthwise 3x3 before the rest (its time is its own family's,
    not counted). Why: written by the layout copy a lone layer gets instead, MobileNetV2's depthwise
    layers at batch 8 took 8.0 ms in all, 5.6 after a 1x1 conv, and 5.0 in the network."""
    from ..api import compile

    x = torch.randn(shape)
    if isinstance(m, nn.Linear):
        layer, net = linear_layer(m, shape), nn.Sequential(m)
    else:
        nchw = m.in_channels <= 4 if nchw is None else nchw
        layer, c = conv_layer(m, shape, nchw=nchw), m.in_channels
        if nchw:
            net = nn.Sequential(m)
        elif layer.family == DWCONV:
            net = nn.Sequential(nn.Conv2d(c, c, 1), m)
        else:
            net = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, groups=c), m)
    cm = compile(net.eval(), x, pipeline=["cleanup"], target="opencl")
    return layer, lambda: cm._runner.profile(x)


def kernel_ms(layer: Layer, run: Callable[[], dict[str, float]], *, repeats: int = 15, rounds: int = ROUNDS,
              cold: bool = True) -> float:
    """The least of ``repeats`` profiled runs of ``layer``'s kernel family time (layout copies of the
    input are not the layer's), in ``rounds`` rounds apart, each after ``WARM_S`` of warm-up runs."""
    ms, per_round = math.inf, -(-repeats // rounds)
    for r in range(rounds):
        if r:
            time.sleep(GAP_S)
        _warm(run)  # the first launches also compile work-group functions
        for _ in range(per_round):
            if cold:
                _evict_caches()
            ms = min(ms, run().get(layer.family, math.inf))
    if not math.isfinite(ms):
        raise RuntimeError(f"{layer} did not run as a {layer.family} kernel")
    return ms


def kernel_ms_pass(runs: list[tuple[Layer, Callable[[], dict[str, float]]]], *, repeats: int,
                   bar=None) -> list[float]:
    """One pass of ``kernel_ms`` over ``prepare_layer``'s runs, one round each. Take the least over
    ``PASSES`` passes with something else between them: a slow phase of the host then spoils one
    pass of a layer, not all of its runs."""
    out = []
    for layer, run in runs:
        out.append(kernel_ms(layer, run, repeats=repeats, rounds=1))
        if bar is not None:
            bar.update()
    return out


def measure_ms(m: nn.Module, shape: tuple[int, ...], *, repeats: int = 15, cold: bool = True) -> tuple[Layer, float]:
    """Kernel time of the one layer ``m`` on the OpenCL target: the least of ``repeats`` profiled runs
    of its kernel family's time (layout copies of the input are not the layer's), in ``ROUNDS``
    rounds apart, each after ``WARM_S`` of warm-up runs.

    Why: with one warm-up run and the least of 5 runs, one layer measured in three fresh processes
    differed by up to 2x (PoCL's threads asleep, a shared host), and a calibration taken that way
    over-predicted whole models, whose kernels run back to back, by 15 to 45% (ResNet-18 and
    MobileNetV2 at batch 8). With warm-up, a 2x outlier remained in 2 of 20 layers: a neighbour
    holding a core through a whole burst, which separate rounds get around."""
    layer, run = prepare_layer(m, shape)
    return layer, kernel_ms(layer, run, repeats=repeats, cold=cold)


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


def wall_ms_each(fns: dict, *, rounds: int = 4, per_block: int = 5, gap_s: float = 0.1,
                 span_s: float = 0.0) -> dict:
    """Wall time per call of each callable: the least over ``rounds`` of its block's median, blocks
    taken in turn (A B C, A B C, ...), each after ``gap_s`` of sleep and ``WARM_S`` of warm-up calls;
    the rounds spread over ``span_s`` seconds at least (sleeping between them when they are quicker).

    Why the least block: on this shared host a model's time is bimodal - MobileNetV2 at batch 8 ran
    17.8 ms or 27 ms per call, ResNet-18 103 or 120 ms, in phases of seconds, in one process - and the
    cost model predicts the undisturbed device. Why interleaved: timed one after another, a model
    whose few blocks all fell in a slow phase came out 15% slower than its neighbours; in turns,
    every callable gets ``rounds`` chances spread over the whole run. The slow phases last up to 30 s
    (see ``PASSES``), hence ``span_s``. The calibration's networks and the benchmarks' models are all
    timed by this."""
    best = {name: math.inf for name in fns}
    start = time.perf_counter()
    for r in range(rounds):
        time.sleep(max(0.0, start + r * span_s / rounds - time.perf_counter()))
        for name, fn in fns.items():
            if r or len(fns) > 1:
                time.sleep(gap_s)
            _warm(fn)
            times = []
            for _ in range(per_block):
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
            best[name] = min(best[name], statistics.median(times))
    return best


def wall_ms(fn: Callable[[], object], **kw) -> float:
    """``wall_ms_each`` of one callable."""
    return wall_ms_each({"fn": fn}, **kw)["fn"]


def compile_network(net: nn.Module, shape: tuple[int, ...]) -> tuple[list[Work], Callable[[], object]]:
    """A network's launches on the OpenCL target, as a model compiled with the default pipeline runs,
    and a call of it on a random input (to time with ``wall_ms_each``)."""
    from ..api import compile

    x = torch.randn(shape)
    cm = compile(net, x, target="opencl")
    return compiled_work(cm), lambda: cm(x)


def calibrate(*, per_family: int = 60, networks: int = 24, families=FAMILIES, seed: int = 0,
              progress: bool = True) -> Profile:
    """Measure ``per_family`` sampled layers of each kernel family, and ``networks`` random whole
    networks, on the OpenCL device the runtime uses (``$FXCOMPRESS_OPENCL_DEVICE`` or PoCL's CPU);
    a minute or two."""
    bad = [f for f in families if f not in FAMILIES]
    if bad:
        raise InputError(f"unknown kernel families {bad}, valid families are {choices(FAMILIES)}")
    dev = open_device()
    target = dev.target()
    rng = random.Random(seed)
    layers = [sample_module(f, rng) for f in families for _ in range(per_family)]
    nets = [sample_network(rng) for _ in range(networks)]
    prof = Profile(device=dev.name, target=target)
    steps = len(layers) + len(nets) + PASSES * (len(layers) + len(nets))
    with tqdm(total=steps, desc="compiling samples", unit="sample", disable=not progress) as bar:
        layer_runs, net_runs = [], {}
        for m, shape in layers:
            layer_runs.append(prepare_layer(m, shape))
            bar.update()
        for i, (net, shape) in enumerate(nets):
            net_runs[i] = compile_network(net, shape)
            bar.update()
        layer_ms, net_ms = [math.inf] * len(layers), dict.fromkeys(net_runs, math.inf)
        for p in range(PASSES):
            bar.set_description(f"timing, pass {p + 1}/{PASSES}")
            got = kernel_ms_pass(layer_runs, repeats=LAYER_REPEATS // PASSES, bar=bar)
            layer_ms = [min(a, b) for a, b in zip(layer_ms, got)]
            got = wall_ms_each({i: call for i, (_, call) in net_runs.items()}, rounds=NETWORK_ROUNDS // PASSES)
            net_ms = {i: min(net_ms[i], got[i]) for i in net_ms}
            bar.update(len(nets))
    prof.samples = [(layer, ms) for (layer, _), ms in zip(layer_runs, layer_ms)]
    prof.networks = [(net_runs[i][0], net_ms[i]) for i in net_runs]
    return prof


def default_profile_path(device_name: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", device_name).strip("-").lower()[:80]
    return cache_root() / "cost" / f"{slug}.json"


def ensure_profile(*, progress: bool = False) -> tuple[Path, float | None]:
    """This OpenCL device's calibration profile (``default_profile_path``), made by ``calibrate``
    first when there is none; and the seconds that took (None when the profile was there)."""
    path = default_profile_path(open_device().name)
    if path.exists():
        return path, None
    t0 = time.perf_counter()
    calibrate(progress=progress).save(path)
    return path, time.perf_counter() - t0


def device_cost_model(profile: str | os.PathLike | None = None) -> CostModel:
    """The cost model of the OpenCL device the runtime uses: calibrated from ``profile`` (default:
    this device's profile under the user cache, see ``default_profile_path``) when one exists, else
    the roofline of the device's measured Target alone, with a warning that says how to calibrate.
    No device raises the runtime's NoOpenCLError (with its install hint); a stale or foreign
    profile raises CalibrationError."""
    dev = open_device()
    path = Path(profile) if profile is not None else default_profile_path(dev.name)
    if profile is not None or path.exists():
        prof = Profile.load(path, device=dev.name)
        return CostModel(prof.target, prof)
    log.warning("no calibration profile for '%s' at %s: predicting from the roofline alone; run "
                "`fxcompress calibrate` (a few minutes) for calibrated predictions", dev.name, path)
    return CostModel(dev.target())

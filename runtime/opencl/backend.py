"""``compile(..., target="opencl")``: lower the graph, plan the arena, and run the steps.

The runner uploads the inputs as they are (NCHW; the lowering's first kernels read or copy them to
NHWC), enqueues every step back to back with one ``finish`` at the end (a synchronised launch costs
about 25 us on PoCL, a queued one about 2 us), and downloads the outputs in their logical layout.
Torch-fallback steps synchronise.
"""
from __future__ import annotations

import statistics
import time

import torch
import torch.fx as fx

from compiler.errors import InputError
from compiler.report import CompileReport

from .device import open_device
from .lower import Lowered, Lowering, Value, download, fold_constants, leaves, upload
from .memory import Interval, plan_arena
from .tiling import CACHE_BYTES, lower_tiled


class OpenCLBackend:
    name = "opencl"

    def __init__(self, device: str | None = None, *, strict: bool = False, profile: bool = False,
                 tile_bytes: int | None = CACHE_BYTES):
        """``tile_bytes``: run the prefix of the graph whose activations exceed this many bytes one batch
        element at a time (``tiling.py``); None never tiles."""
        self.selector, self.strict, self.profile, self.tile_bytes = device, strict, profile, tile_bytes

    def prepare(self, gm: fx.GraphModule, example_inputs: tuple[torch.Tensor, ...], report: CompileReport):
        t0 = time.perf_counter()
        device = open_device(self.selector)
        lowered = None
        if self.tile_bytes is not None:
            lowered = lower_tiled(gm, device, example_inputs, strict=self.strict, cache_bytes=self.tile_bytes)
        if lowered is None:
            lowered = Lowering(gm, device, fold_constants(gm, example_inputs), strict=self.strict).run(example_inputs)
        runner = Runner(device, lowered, example_inputs, profile=self.profile)
        report.backend = {
            "device": device.name, "steps": len(lowered.steps), "fallbacks": [f"{n} ({op})" for n, op in lowered.fallbacks],
            "peak_device_bytes": runner.arena_bytes, "lowering_s": round(time.perf_counter() - t0, 3),
            "batch_tiling": lowered.tiling,
        }
        return runner


def _storages(vs) -> set[int]:
    return {v.storage for v in vs if isinstance(v, Value)}


class Runner:
    """Runs a lowered graph; called like the model."""

    def __init__(self, device, lowered: Lowered, example_inputs, *, profile: bool = False):
        self.device, self.lowered = device, lowered
        self.shapes = [tuple(t.shape) for t in example_inputs]
        steps, first, last = lowered.steps, {}, {}
        for i, s in enumerate(steps):
            i = s.phase if s.phase is not None else i  # repeated steps (batch tiles) share their place in the plan
            for st in _storages(s.writes):
                first.setdefault(st, i)
                last[st] = max(last.get(st, i), i)
            for st in _storages(s.reads):
                last[st] = max(last.get(st, -1), i)
        for st in _storages(lowered.inputs):
            first[st] = -1
        for st in _storages(lowered.output_values):
            last[st] = len(steps)
        intervals = [Interval(st, size, first.get(st, -1), last.get(st, first.get(st, -1)))
                     for st, size in lowered.storage_sizes.items() if size]
        self.offsets, size = plan_arena(intervals)
        self.arena_bytes = 4 * max(size, 1)
        self.arena = device.alloc(self.arena_bytes, what="allocating the activation arena")
        self.queue = device.queue(profiling=profile)

    def __call__(self, *inputs: torch.Tensor):
        if len(inputs) != len(self.shapes) or any(tuple(t.shape) != s for t, s in zip(inputs, self.shapes)):
            got = [tuple(t.shape) for t in inputs]
            raise InputError(f"the OpenCL model was compiled for inputs of shape {self.shapes}, got {got}")
        bad = [str(t.dtype) for t in inputs if t.dtype != torch.float32]
        if bad:
            raise InputError(f"the OpenCL model takes float32 inputs, got {bad}")
        q, arena, offsets = self.queue, self.arena, self.offsets
        for v, t in zip(self.lowered.inputs, inputs):
            upload(q, arena, offsets, v, t)
        for step in self.lowered.steps:
            step.enqueue(q, arena, offsets)
        return self._outputs(self.lowered.outputs)

    def _outputs(self, out):
        if isinstance(out, Value):
            return download(self.queue, self.arena, self.offsets, out, self.lowered.buffers).contiguous()
        if isinstance(out, (list, tuple)):
            return type(out)(self._outputs(o) for o in out)
        return out

    def profile(self, *inputs: torch.Tensor) -> dict[str, float]:
        """Milliseconds per kernel family for one run (``step_ms``). Steps are synchronised one by
        one, so the sum exceeds a normal run's."""
        times: dict[str, float] = {}
        for step, ms in zip(self.lowered.steps, self.step_ms(*inputs)):
            times[step.kernel] = times.get(step.kernel, 0.0) + ms
        return dict(sorted(times.items(), key=lambda kv: -kv[1]))

    def node_ms(self, *inputs: torch.Tensor, repeats: int = 5) -> dict[str, float]:
        """Median milliseconds per graph node over ``repeats`` runs of ``step_ms`` (a node's steps
        added up: its batch tiles, a fallback's copies)."""
        runs = [self.step_ms(*inputs) for _ in range(repeats)]
        out: dict[str, float] = {}
        for step, times in zip(self.lowered.steps, zip(*runs)):
            out[step.node] = out.get(step.node, 0.0) + statistics.median(times)
        return out

    def step_ms(self, *inputs: torch.Tensor) -> list[float]:
        """Milliseconds of each step of one run, synchronised one by one: its OpenCL profiling events,
        or its wall time when it has none (a torch-fallback step)."""
        q = self.device.queue(profiling=True)
        for v, t in zip(self.lowered.inputs, inputs):
            upload(q, self.arena, self.offsets, v, t)
        q.finish()
        out = []
        for step in self.lowered.steps:
            t0 = time.perf_counter()
            events = step.enqueue(q, self.arena, self.offsets)
            q.finish()
            events = [e for e in leaves(events) if e is not None and hasattr(e, "profile")]
            out.append(sum(e.profile.end - e.profile.start for e in events) / 1e6 if events and not step.fallback
                       else (time.perf_counter() - t0) * 1e3)
        return out

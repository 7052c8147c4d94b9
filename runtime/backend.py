"""The backend interface: turn a rewritten GraphModule into something that runs it.

A backend is one module behind this small interface; ``get_backend(name)`` finds it.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
import torch.fx as fx

from compiler.errors import InputError, choices
from compiler.report import CompileReport

Runner = Callable[..., object]


class Backend(Protocol):
    name: str

    def prepare(self, gm: fx.GraphModule, example_inputs: tuple[torch.Tensor, ...], report: CompileReport) -> Runner:
        """Return a callable taking the model's inputs; may add to ``report``."""
        ...


def available_backends() -> dict[str, Backend]:
    from .onnx import OnnxBackend
    from .opencl.backend import OpenCLBackend
    from .reference import TorchBackend

    return {b.name: b for b in (TorchBackend(), OnnxBackend(), OpenCLBackend())}


def get_backend(name: str) -> Backend:
    backends = available_backends()
    if name not in backends:
        raise InputError(f"unknown target '{name}', valid targets are {choices(backends)}")
    return backends[name]


def device_runner(gm: fx.GraphModule, example_inputs: tuple[torch.Tensor, ...]) -> PreparedRun:
    """``gm`` prepared by the OpenCL backend, to run on ``example_inputs``: the
    ``compiler.pass_base.DeviceRunner`` that ``compiler.compile`` gives passes that time on the device."""
    return PreparedRun(get_backend("opencl").prepare(gm, example_inputs, CompileReport()), example_inputs)


class PreparedRun:
    """A prepared runner and its inputs (``compiler.pass_base.DeviceRun``)."""

    def __init__(self, runner, example_inputs: tuple[torch.Tensor, ...]):
        self.runner, self.inputs = runner, example_inputs

    def __call__(self):
        return self.runner(*self.inputs)

    def node_ms(self, repeats: int = 5) -> dict[str, float]:
        return self.runner.node_ms(*self.inputs, repeats=repeats)

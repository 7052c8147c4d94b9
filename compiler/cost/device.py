"""The OpenCL device, as the cost model's calibration sees it: the one place in ``compiler/cost/``
that reaches into the runtime (imports go from runtime/ to compiler/, so these are deferred to the
call). Calibration needs three things from the runtime: which device it runs on, that device's
roofline ``Target`` (measured peak and bandwidth), and where the runtime keeps its caches.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from compiler.target import Target


@dataclass(frozen=True)
class Device:
    """The OpenCL device the runtime uses (``$FXCOMPRESS_OPENCL_DEVICE`` or PoCL's CPU)."""

    name: str
    handle: object  # the runtime's own device object, for measure_target

    def target(self) -> Target:
        """This device's roofline, measured on it (``runtime.opencl.probe``)."""
        from runtime.opencl.probe import measure_target

        return measure_target(self.handle)


def open_device() -> Device:
    """The runtime's OpenCL device; no device raises the runtime's NoOpenCLError (with its install hint)."""
    from runtime.opencl.device import open_device as runtime_device

    dev = runtime_device()
    return Device(dev.name, dev)


def cache_root() -> Path:
    """The folder that holds the runtime's caches (the OpenCL program cache's parent)."""
    from runtime.opencl.programs import cache_dir

    return cache_dir().parent

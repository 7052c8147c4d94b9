"""Choosing the OpenCL device, and the context, queues and buffers that belong to it.

A device is named by a selector: ``"platform_index:device_index"`` (``"0:0"``) or a case-insensitive
substring of the device name, platform name or platform vendor (``"pocl"``, ``"avx512"``). The selector comes from the
argument, else from ``$FXCOMPRESS_OPENCL_DEVICE``, else the default: PoCL's CPU device, the one this
backend's kernels are tuned for.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field

import numpy as np
import pyopencl as cl

from compiler.errors import choices

from .errors import INSTALL_HINT, NoOpenCLError, UnknownDeviceError, out_of_memory, translate

log = logging.getLogger(__name__)

ENV_VAR = "FXCOMPRESS_OPENCL_DEVICE"
_POCL = "portable computing language"


@dataclass(frozen=True)
class DeviceEntry:
    """One device as enumerated: its ``"p:d"`` index, platform and device."""

    index: str
    platform: cl.Platform
    device: cl.Device

    @property
    def searchable(self) -> str:
        return " ".join((self.device.name, self.platform.name, self.platform.vendor)).lower()

    @property
    def label(self) -> str:
        return f"{self.index} {self.device.name.strip()} ({self.platform.name.strip()})"


def list_devices() -> list[DeviceEntry]:
    """Every OpenCL device of every platform. Raises ``NoOpenCLError`` when there is none."""
    try:
        platforms = cl.get_platforms()
    except cl.Error as e:  # no ICD installed: PLATFORM_NOT_FOUND_KHR
        raise NoOpenCLError(f"no OpenCL platform found ({e}); {INSTALL_HINT}") from e
    found, empty = [], []
    for p, platform in enumerate(platforms):
        try:
            devices = platform.get_devices()
        except cl.Error:  # DEVICE_NOT_FOUND: a platform without usable devices
            devices = []
        if not devices:
            empty.append(platform.name.strip())
        found += [DeviceEntry(f"{p}:{d}", platform, dev) for d, dev in enumerate(devices)]
    if not found:
        raise NoOpenCLError(f"no OpenCL device found; platforms without devices: {choices(empty)}; {INSTALL_HINT}")
    return found


def _default(entries: list[DeviceEntry]) -> DeviceEntry:
    def rank(e: DeviceEntry) -> tuple[bool, bool]:
        is_cpu = bool(e.device.type & cl.device_type.CPU)
        return (not (is_cpu and _POCL in e.platform.name.lower()), not is_cpu)

    return min(entries, key=rank)


def select_device(selector: str | None = None) -> DeviceEntry:
    """The device named by ``selector``, else by ``$FXCOMPRESS_OPENCL_DEVICE``, else PoCL's CPU device."""
    entries = list_devices()
    source = ""
    if selector is None and os.environ.get(ENV_VAR):
        selector, source = os.environ[ENV_VAR], f" (from ${ENV_VAR})"
    if selector is None:
        return _default(entries)
    wanted = selector.strip().lower()
    if re.fullmatch(r"\d+:\d+", wanted):
        matches = [e for e in entries if e.index == wanted]
    else:
        matches = [e for e in entries if wanted in e.searchable]
    if not matches:
        raise UnknownDeviceError(
            f"no OpenCL device matches '{selector}'{source}; valid devices are {choices(e.label for e in entries)}"
        )
    if len(matches) > 1:
        log.info("OpenCL selector '%s' matches %d devices, using %s", selector, len(matches), matches[0].label)
    return matches[0]


@dataclass(frozen=True, eq=False)
class Device:
    """A device with its context: what programs, buffers and queues are created against."""

    entry: DeviceEntry
    context: cl.Context = field(repr=False)

    @property
    def cl_device(self) -> cl.Device:
        return self.entry.device

    @property
    def name(self) -> str:
        return self.entry.device.name.strip()

    def queue(self, *, profiling: bool = False) -> cl.CommandQueue:
        props = cl.command_queue_properties.PROFILING_ENABLE if profiling else 0
        return cl.CommandQueue(self.context, self.cl_device, properties=props)

    def alloc(self, nbytes: int | None = None, *, hostbuf: np.ndarray | None = None, what: str = "allocating a buffer",
              flags: int = cl.mem_flags.READ_WRITE) -> cl.Buffer:
        """A buffer of ``nbytes``, or a copy of ``hostbuf``; refusals become ``DeviceOutOfMemoryError``."""
        if hostbuf is not None:
            hostbuf = np.ascontiguousarray(hostbuf)
            nbytes, flags = hostbuf.nbytes, flags | cl.mem_flags.COPY_HOST_PTR
        assert nbytes is not None, "alloc needs nbytes or hostbuf"
        dev = self.cl_device
        # PoCL allocates lazily and accepts sizes it cannot back, so check the device limit here.
        if nbytes > dev.max_mem_alloc_size:
            raise out_of_memory(what=what, device=dev, nbytes=nbytes, code="INVALID_BUFFER_SIZE")
        try:
            return cl.Buffer(self.context, flags, size=0 if hostbuf is not None else nbytes, hostbuf=hostbuf)
        except cl.Error as e:
            raise translate(e, what=what, device=dev, nbytes=nbytes) from e


_open: dict[str, Device] = {}


def open_device(selector: str | None = None) -> Device:
    """The ``Device`` for ``selector`` (see ``select_device``), one context per device per process."""
    entry = select_device(selector)
    if entry.index not in _open:
        try:
            context = cl.Context([entry.device])
        except cl.Error as e:
            raise translate(e, what=f"creating a context on '{entry.label}'") from e
        _open[entry.index] = Device(entry, context)
        log.debug("opened OpenCL device %s", entry.label)
    return _open[entry.index]

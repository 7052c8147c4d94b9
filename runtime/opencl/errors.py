"""Typed OpenCL errors: vendor status codes become messages that say what went wrong and what to do.

Every error here is a ``CompilerError``, so a caller that handles fxcompress errors handles these too.
"""
from __future__ import annotations

import pyopencl as cl

from compiler.errors import CompilerError

INSTALL_HINT = "install an OpenCL driver, e.g. 'apt-get install -y pocl-opencl-icd' for the CPU"

# Why a status code usually happens, in the words a user can act on.
_EXPLAIN = {
    "OUT_OF_HOST_MEMORY": "the host ran out of memory",
    "INVALID_WORK_GROUP_SIZE": "the local work size does not divide the global size or exceeds the device limit",
    "INVALID_KERNEL_ARGS": "a kernel argument was not set",
    "INVALID_ARG_SIZE": "a kernel argument has the wrong size (a Python int passed where np.int32 is needed?)",
    "INVALID_MEM_OBJECT": "a buffer argument is invalid or was released",
    "INVALID_BINARY": "a program binary is not valid for this device",
    "INVALID_BUILD_OPTIONS": "the build options are malformed",
    "INVALID_VALUE": "an argument is out of range",
    "INVALID_BUFFER_SIZE": "a buffer of size 0 or above the device's per-buffer limit was requested",
    "DEVICE_NOT_AVAILABLE": "the device exists but is not available",
}
_OUT_OF_MEMORY = {"OUT_OF_RESOURCES", "MEM_OBJECT_ALLOCATION_FAILURE"}


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"


class OpenCLError(CompilerError):
    """An OpenCL call failed. ``code`` is the status name (``'INVALID_VALUE'``), ``what`` the action."""

    def __init__(self, message: str, *, code: str | None = None, what: str = ""):
        super().__init__(message)
        self.code = code
        self.what = what


class NoOpenCLError(OpenCLError):
    """No OpenCL platform or device is usable. The message lists what was found and how to install one."""


class UnknownDeviceError(NoOpenCLError, KeyError):
    """A device selector matches no device; the message lists the valid devices."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class DeviceOutOfMemoryError(OpenCLError, MemoryError):
    """The device could not hold an allocation. Names the request size and the device's memory."""


class KernelBuildError(OpenCLError):
    """A program failed to compile. ``log`` is the full build log, ``path`` the .cl file's name."""

    def __init__(self, path: str, options: list[str], log: str, device: str):
        super().__init__(
            f"OpenCL build of '{path}' failed on '{device}' (options: {' '.join(options) or 'none'}):\n{log.strip()}",
            code="BUILD_PROGRAM_FAILURE", what=f"building {path}",
        )
        self.path = path
        self.options = options
        self.log = log


class UnsupportedError(CompilerError, ValueError):
    """An op, option or shape the OpenCL backend does not handle; the message lists the valid choices."""


def status_name(err: cl.Error) -> str:
    code = getattr(err, "code", None)
    if isinstance(code, int):
        try:
            return cl.status_code.to_string(code)
        except (ValueError, KeyError):
            return str(code)
    return type(err).__name__


def translate(err: cl.Error, *, what: str, device: cl.Device | None = None, nbytes: int | None = None) -> OpenCLError:
    """The typed error for a pyopencl exception raised while doing ``what`` (e.g. "allocating C")."""
    name = status_name(err)
    too_big = name == "INVALID_BUFFER_SIZE" and device is not None and (nbytes or 0) > device.max_mem_alloc_size
    if device is not None and (name in _OUT_OF_MEMORY or too_big):
        return out_of_memory(what=what, device=device, nbytes=nbytes, code=name)
    hint = _EXPLAIN.get(name)
    message = f"OpenCL error {name} while {what}" + (f": {hint}" if hint else "") + f" [{str(err).strip()}]"
    return OpenCLError(message, code=name, what=what)


def out_of_memory(*, what: str, device: cl.Device, nbytes: int | None, code: str) -> DeviceOutOfMemoryError:
    request = f"{_size(nbytes)} requested" if nbytes is not None else "an allocation"
    return DeviceOutOfMemoryError(
        f"out of device memory while {what}: {request}, device '{device.name.strip()}' has "
        f"{_size(device.global_mem_size)} in total and allows at most {_size(device.max_mem_alloc_size)} "
        f"per buffer ({code})",
        code=code, what=what,
    )
